//! The unix socket: local clients, providers, and stream ends.

use crate::conn::ConnSender;
use crate::core::{now_ms, Core, ReplySink};
use crate::registry::{ProviderEntry, Registry};
use crate::streams::{producer_vanished, pump_from_unix, pump_to_unix, StreamEnd, Verdict};
use cerana_netlimits::{Admission, Permit, Refused};
use cerana_protocol::frame::{encode_json_into, read_frame, write_queued_frames, FrameError, MAX_FRAME_LEN};
use cerana_protocol::{
    ErrorCode, FromCoordinator, ProviderHello, Response, StreamDirection, StreamHandle, TaskError, ToCoordinator,
    Welcome, PROTOCOL_VERSION,
};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// A peer must say who it is within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Characters of a client's self-given name kept in its caller string.
const MAX_CALLER_NAME: usize = 64;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Why the unix socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another coordinator is already serving {0}")]
    InUse(String),
    #[error("cannot create {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Binds the socket, replacing a stale file left by a dead coordinator but never a live one.
pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    // Owner and group only: anyone who can connect can run any task.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err)?;
    Ok(listener)
}

/// Serves the socket; connections over `admission`'s cap are refused with `busy` and closed
/// at once, so a flood cannot use up the descriptors the HTTP listener and streams need.
pub async fn serve(core: Arc<Core>, listener: UnixListener, admission: Admission) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match admission.admit_local() {
                Ok(permit) => {
                    let core = core.clone();
                    tokio::spawn(async move { handle(core, stream, permit).await });
                }
                Err(refused) => refuse_over_cap(&admission, stream, &refused),
            },
            Err(e) => {
                tracing::warn!("accept on the unix socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Says `busy` without waiting, and closes (`Admission::turn_away`).
fn refuse_over_cap(admission: &Admission, stream: UnixStream, refused: &Refused) {
    let mut frame = Vec::new();
    let error = TaskError::new(ErrorCode::Busy, refused.to_string());
    let encoded = encode_json_into(&mut frame, &FromCoordinator::Refused(error)).is_ok();
    admission.turn_away(stream, encoded.then_some(&frame[..]));
}

async fn send_now(stream: &mut UnixStream, message: &FromCoordinator) -> io::Result<()> {
    let mut frame = Vec::new();
    encode_json_into(&mut frame, message).map_err(io::Error::other)?;
    stream.write_all(&frame).await
}

async fn refuse(stream: &mut UnixStream, error: TaskError) {
    tracing::info!("refusing a connection: {error}");
    let _ = send_now(stream, &FromCoordinator::Refused(error)).await;
}

fn frame_error(e: &FrameError) -> TaskError {
    match e {
        FrameError::TooLarge { .. } => TaskError::new(ErrorCode::FrameTooLarge, e.to_string()),
        _ => TaskError::new(ErrorCode::InvalidRequest, e.to_string()),
    }
}

fn welcome(core: &Core) -> FromCoordinator {
    FromCoordinator::Welcome(Welcome {
        coordinator: core.config.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: PROTOCOL_VERSION,
    })
}

/// Serves one connection; its slot (`permit`) is given back when the connection's last task
/// ends.
async fn handle(core: Arc<Core>, mut stream: UnixStream, permit: Permit) {
    let cred = stream.peer_cred().ok();
    let pid = cred.as_ref().and_then(|c| c.pid()).map(|p| p as u32);
    let uid = cred.as_ref().map(|c| c.uid());
    let mut buf = Vec::new();
    let first = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut stream, &mut buf, MAX_FRAME_LEN)).await;
    let hello = match first {
        Err(_) => return refuse(&mut stream, TaskError::new(ErrorCode::InvalidRequest, "no hello in time")).await,
        Ok(Ok(false)) => return,
        Ok(Err(e)) => return refuse(&mut stream, frame_error(&e)).await,
        Ok(Ok(true)) => match serde_json::from_slice::<ToCoordinator>(&buf) {
            Ok(hello) => hello,
            Err(e) => {
                let error = TaskError::new(ErrorCode::InvalidRequest, format!("malformed hello: {e}"));
                return refuse(&mut stream, error).await;
            }
        },
    };
    // A client names itself freely; its name goes into every journal entry of its requests.
    let who = |name: &str| {
        let name: String = name.chars().take(MAX_CALLER_NAME).collect();
        format!("unix:pid={},uid={},name={name}", opt(pid), opt(uid))
    };
    match hello {
        ToCoordinator::ClientHello { name, protocol } => {
            if let Err(e) = check_protocol(protocol) {
                return refuse(&mut stream, e).await;
            }
            if send_now(&mut stream, &welcome(&core)).await.is_err() {
                return;
            }
            let conn_id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
            client_connection(core, stream, conn_id, who(&name), permit).await;
        }
        ToCoordinator::ProviderHello(hello) => {
            if let Err(e) = check_protocol(hello.protocol) {
                return refuse(&mut stream, e).await;
            }
            let conn_id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
            let caller = who(hello.name.as_str());
            provider_connection(core, stream, conn_id, caller, hello, pid).await;
        }
        ToCoordinator::StreamOpen { stream: handle, direction, accept_pipe } => {
            stream_connection(core, stream, handle, direction, accept_pipe).await;
        }
        other => {
            let error =
                TaskError::new(ErrorCode::InvalidRequest, format!("expected a hello first, got {}", kind(&other)));
            refuse(&mut stream, error).await;
        }
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn kind(message: &ToCoordinator) -> &'static str {
    match message {
        ToCoordinator::ClientHello { .. } => "client_hello",
        ToCoordinator::ProviderHello(_) => "provider_hello",
        ToCoordinator::StreamOpen { .. } => "stream_open",
        ToCoordinator::Request(_) => "request",
        ToCoordinator::Response(_) => "response",
        ToCoordinator::Cancel { .. } => "cancel",
        ToCoordinator::StreamEnd { .. } => "stream_end",
    }
}

fn check_protocol(protocol: u32) -> Result<(), TaskError> {
    if protocol == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(TaskError::new(
            ErrorCode::InvalidRequest,
            format!("protocol version {protocol} is not supported (this coordinator speaks {PROTOCOL_VERSION})"),
        ))
    }
}

async fn provider_connection(
    core: Arc<Core>,
    mut stream: UnixStream,
    conn_id: u64,
    caller: String,
    hello: ProviderHello,
    pid: Option<u32>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sender = ConnSender::new(tx);
    let name = hello.name.clone();
    let tasks = hello.tasks.len();
    let entry = ProviderEntry { conn_id, hello, sender: sender.clone(), pid, connected_at_ms: now_ms() };
    if let Err(e) = Registry::validate(&entry.hello) {
        return refuse(&mut stream, TaskError::new(ErrorCode::InvalidRequest, e.to_string())).await;
    }
    // Welcome first, then register: a request routed here must not overtake the welcome.
    if send_now(&mut stream, &welcome(&core)).await.is_err() {
        return;
    }
    let registered = core.registry.write().expect("registry lock").register(entry);
    if let Err(e) = registered {
        return refuse(&mut stream, TaskError::new(ErrorCode::InvalidRequest, e.to_string())).await;
    }
    tracing::info!(provider = %name, tasks, ?pid, "provider registered");
    let (read, write) = stream.into_split();
    let writer = tokio::spawn(write_queued_frames(write, rx));
    read_loop(&core, read, conn_id, &caller, true, &sender).await;
    // Unregistering drops the registry's sender; the writer has nobody left to write to.
    core.provider_gone(conn_id);
    writer.abort();
}

async fn client_connection(core: Arc<Core>, stream: UnixStream, conn_id: u64, caller: String, permit: Permit) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sender = ConnSender::new(tx);
    let (read, write) = stream.into_split();
    // The writer outlives the read side while replies are pending (a client may half-close);
    // it ends when the last pending reply is delivered or a write fails, and holds the slot
    // until then.
    tokio::spawn(async move {
        let _permit = permit;
        write_queued_frames(write, rx).await
    });
    read_loop(&core, read, conn_id, &caller, false, &sender).await;
}

async fn read_loop(
    core: &Arc<Core>,
    read: OwnedReadHalf,
    conn_id: u64,
    caller: &str,
    is_provider: bool,
    sender: &ConnSender,
) {
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let mut buf = Vec::new();
    loop {
        match read_frame(&mut read, &mut buf, MAX_FRAME_LEN).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                // After a bad length the framing is lost: say why and close.
                sender.send(&FromCoordinator::Refused(frame_error(&e)));
                return;
            }
        }
        let message = match serde_json::from_slice::<ToCoordinator>(&buf) {
            Ok(m) => m,
            Err(e) => {
                answer_malformed(sender, &buf, e);
                continue;
            }
        };
        match message {
            ToCoordinator::Request(request) => {
                core.submit(request, caller.to_owned(), ReplySink::Conn(sender.clone()));
            }
            ToCoordinator::Response(response) if is_provider => core.complete(response, Some(conn_id)),
            ToCoordinator::Cancel { id } => core.cancel(id),
            other => {
                let error = TaskError::new(
                    ErrorCode::InvalidRequest,
                    format!("unexpected {} on this connection", kind(&other)),
                );
                sender.send(&FromCoordinator::Refused(error));
            }
        }
    }
}

/// A frame that is not a valid message: answer the request it claims to be when it carries
/// an id, so the caller's wait ends; otherwise report it on the connection.
fn answer_malformed(sender: &ConnSender, frame: &[u8], error: serde_json::Error) {
    let id = serde_json::from_slice::<serde_json::Value>(frame)
        .ok()
        .and_then(|v| v.get("request")?.get("id")?.as_str()?.parse().ok());
    let error = TaskError::new(ErrorCode::InvalidRequest, format!("malformed message: {error}"));
    match id {
        Some(id) => sender.send(&FromCoordinator::Response(Response::err(id, error))),
        None => sender.send(&FromCoordinator::Refused(error)),
    };
}

async fn stream_connection(
    core: Arc<Core>,
    mut stream: UnixStream,
    handle: StreamHandle,
    direction: StreamDirection,
    accept_pipe: bool,
) {
    if let Some(node) = handle.node.clone().filter(|n| !core.is_own_url(n)) {
        return crate::http::remote_stream_to_unix(core, stream, node, handle.id, direction).await;
    }
    let end = match core.streams.claim(handle.id, direction, accept_pipe) {
        Ok(end) => end,
        Err(e) => return refuse(&mut stream, e).await,
    };
    match end {
        StreamEnd::Producer(tx) => {
            if send_now(&mut stream, &welcome(&core)).await.is_ok() {
                pump_from_unix(stream, tx).await;
            }
        }
        StreamEnd::Consumer(rx) => {
            if send_now(&mut stream, &welcome(&core)).await.is_ok() {
                pump_to_unix(stream, rx).await;
            }
        }
        StreamEnd::PipeProducer { pipe, verdict } => {
            if hand_over_pipe(&core, &mut stream, pipe).await {
                let _ = verdict.send(producer_verdict(&mut stream).await);
            }
        }
        StreamEnd::PipeConsumer { pipe, verdict } => {
            if hand_over_pipe(&core, &mut stream, pipe).await {
                relay_verdict(stream, verdict).await;
            }
        }
    }
}

/// Sends the pipe welcome with the pipe attached, and closes the coordinator's copy: the stream
/// sees end of file only when no copy of the write side is left open.
async fn hand_over_pipe(core: &Core, stream: &mut UnixStream, pipe: std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsFd;
    let FromCoordinator::Welcome(welcome) = welcome(core) else { unreachable!("welcome() is a welcome") };
    let mut frame = Vec::new();
    if encode_json_into(&mut frame, &FromCoordinator::StreamPipe(welcome)).is_err() {
        return false;
    }
    match cerana_protocol::fd_frame::write_frame_with_fd(stream, &frame, pipe.as_fd()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::info!("handing a stream pipe over failed: {e}");
            false
        }
    }
}

/// Waits for a pipe producer's verdict; a connection that closes without one is a producer
/// that vanished.
async fn producer_verdict(stream: &mut UnixStream) -> Verdict {
    let mut buf = Vec::new();
    match read_frame(stream, &mut buf, MAX_FRAME_LEN).await {
        Ok(true) => match serde_json::from_slice::<ToCoordinator>(&buf) {
            Ok(ToCoordinator::StreamEnd { error: None }) => Ok(()),
            Ok(ToCoordinator::StreamEnd { error: Some(e) }) => Err(e),
            Ok(other) => Err(TaskError::new(
                ErrorCode::StreamError,
                format!("the stream's producer sent {} instead of stream_end", kind(&other)),
            )),
            Err(e) => Err(TaskError::new(ErrorCode::StreamError, format!("malformed stream_end: {e}"))),
        },
        Ok(false) | Err(_) => Err(producer_vanished()),
    }
}

/// Tells a pipe consumer how the stream ended, unless it leaves first.
async fn relay_verdict(mut stream: UnixStream, verdict: tokio::sync::oneshot::Receiver<Verdict>) {
    let mut probe = [0u8; 1];
    let outcome = tokio::select! {
        outcome = verdict => outcome.unwrap_or_else(|_| Err(producer_vanished())),
        // A consumer sends nothing on this connection: any read result means it is gone.
        _ = stream.read(&mut probe) => return,
    };
    let _ = send_now(&mut stream, &FromCoordinator::StreamEnd { error: outcome.err() }).await;
    let _ = stream.shutdown().await;
}
