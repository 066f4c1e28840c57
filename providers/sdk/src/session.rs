//! One connection to the coordinator: hello, then requests in, responses out.

use crate::context::{Context, Link, SubTaskWaiters};
use crate::Provider;
use cerana_client::{handshake, ClientError};
use cerana_protocol::frame::{encode_json_into, read_frame, write_queued_frames, MAX_FRAME_LEN};
use cerana_protocol::{
    ErrorCode, FromCoordinator, ProviderHello, Request, RequestId, Response, TaskError, TaskRegistration,
    ToCoordinator, PROTOCOL_VERSION,
};
use futures_util::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("{0}")]
    Refused(TaskError),
    #[error("{0}")]
    Client(ClientError),
}

type Running = Arc<Mutex<HashMap<RequestId, AbortHandle>>>;

pub(crate) async fn run(provider: Arc<Provider>, socket: &Path) -> Result<(), SessionError> {
    let mut stream = UnixStream::connect(socket).await.map_err(|source| {
        SessionError::Client(ClientError::Connect { target: socket.display().to_string(), source })
    })?;
    let hello = ProviderHello {
        name: provider.name.clone(),
        version: provider.version.clone(),
        protocol: PROTOCOL_VERSION,
        priority: provider.priority,
        tasks: provider
            .handlers
            .iter()
            .map(|(task, registered)| TaskRegistration { task: task.clone(), priority: registered.priority })
            .collect(),
    };
    match handshake(&mut stream, &ToCoordinator::ProviderHello(hello)).await {
        Ok(welcome) => {
            tracing::info!(coordinator = %welcome.coordinator, tasks = provider.handlers.len(), "registered")
        }
        Err(ClientError::Refused(e)) => return Err(SessionError::Refused(e)),
        Err(e) => return Err(SessionError::Client(e)),
    }
    cerana_protocol::readiness::notify_ready();

    let (read, write) = stream.into_split();
    let (outgoing, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(write_queued_frames(write, rx));
    // However this session ends (even by being dropped), the socket must close: handlers still
    // running hold senders that would otherwise keep the writer, and so the socket, alive.
    let _writer = AbortOnDrop(writer.abort_handle());
    let waiters: SubTaskWaiters = Arc::default();
    let link = Link { outgoing, waiters: waiters.clone(), socket: socket.to_owned() };
    let running: Running = Arc::default();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let mut buf = Vec::new();
    let result = loop {
        match read_frame(&mut read, &mut buf, MAX_FRAME_LEN).await {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(SessionError::Client(ClientError::Protocol(e.to_string()))),
        }
        let message = match serde_json::from_slice::<FromCoordinator>(&buf) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("malformed message from the coordinator: {e}");
                continue;
            }
        };
        match message {
            FromCoordinator::Request(request) => start(&provider, &link, &running, request),
            FromCoordinator::Response(response) => {
                let waiter = waiters.lock().expect("waiters lock").remove(&response.id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(response);
                }
            }
            FromCoordinator::Cancel { id } => {
                if let Some(handle) = running.lock().expect("running lock").remove(&id) {
                    tracing::info!(%id, "request cancelled by the coordinator");
                    handle.abort();
                }
            }
            FromCoordinator::Ack { .. } | FromCoordinator::Welcome(_) => {}
            FromCoordinator::Refused(e) => tracing::warn!("the coordinator reported: {e}"),
            FromCoordinator::StreamPipe(_) | FromCoordinator::StreamEnd { .. } => {
                tracing::warn!("a stream message arrived on the provider connection")
            }
        }
    };
    // Sub-tasks in flight can no longer be answered on this connection.
    waiters.lock().expect("waiters lock").clear();
    result
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn start(provider: &Arc<Provider>, link: &Link, running: &Running, request: Request) {
    let id = request.id;
    let Some(registered) = provider.handlers.get(&request.task) else {
        let error = TaskError::new(ErrorCode::UnknownTask, format!("this provider does not serve {}", request.task));
        send(link, Response::err(id, error));
        return;
    };
    let handler = registered.handler.clone();
    let ctx = Context::new(id, request.stream.clone(), link.clone());
    let link = link.clone();
    let running_for_task = running.clone();
    let mut guard = running.lock().expect("running lock");
    let task = tokio::spawn(async move {
        let outcome = AssertUnwindSafe(handler(ctx.clone(), request.args)).catch_unwind().await;
        running_for_task.lock().expect("running lock").remove(&id);
        let outcome = outcome.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(TaskError::new(ErrorCode::Internal, format!("the handler panicked: {what}")))
        });
        let mut response = Response { id, outcome, stream: None };
        if response.outcome.is_ok() {
            response.stream = ctx.take_output();
        }
        send(&link, response);
    });
    guard.insert(id, task.abort_handle());
}

fn send(link: &Link, response: Response) {
    let mut frame = Vec::with_capacity(256);
    match encode_json_into(&mut frame, &ToCoordinator::Response(response)) {
        Ok(()) => {
            let _ = link.outgoing.send(frame);
        }
        Err(e) => tracing::error!("cannot encode a response: {e}"),
    }
}
