//! Init's control socket: one length-prefixed JSON [`ControlRequest`] per connection, answered
//! by one [`ControlReply`] frame. Non-blocking inside the event loop; a slow or broken client
//! cannot stall init (bounded read buffer, send timeout). The client side is
//! `cerana_client::init_control` (the `init` provider and the test harness use it).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cerana_protocol::events::ShutdownAction;
use cerana_protocol::tasks::init::{ControlReply, ControlRequest, ServiceList, ServiceLogs, ShutdownAccepted};
use cerana_protocol::ErrorCode;

use crate::supervisor::{ControlError, Supervisor};

/// Largest request accepted; requests are tiny.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A client that has not sent its whole request by then is dropped.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    since: Instant,
}

#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
}

/// What the event loop must do after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followup {
    None,
    Shutdown(ShutdownAction),
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket) with mode 0600.
    pub fn bind(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, path: path.to_path_buf(), clients: Vec::new() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn client_fds(&self) -> Vec<RawFd> {
        self.clients.iter().map(|c| c.stream.as_raw_fd()).collect()
    }

    /// The earliest client deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|c| c.since + CLIENT_DEADLINE).min()
    }

    pub fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                self.clients.push(Client { stream, buf: Vec::new(), since: Instant::now() });
            }
        }
    }

    /// Reads from ready clients, answers complete requests, drops finished or stale ones.
    pub fn service_clients(&mut self, supervisor: &mut Supervisor) -> Followup {
        let mut followup = Followup::None;
        let now = Instant::now();
        let mut keep = Vec::with_capacity(self.clients.len());
        for mut c in std::mem::take(&mut self.clients) {
            let mut chunk = [0u8; 4096];
            let closed = loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break true,
                }
                if c.buf.len() > MAX_REQUEST + 4 {
                    break false;
                }
            };
            let reply = match frame_payload(&c.buf) {
                FrameState::Incomplete if closed => None,
                FrameState::Incomplete if now.duration_since(c.since) > CLIENT_DEADLINE => None,
                FrameState::Incomplete => {
                    keep.push(c);
                    continue;
                }
                FrameState::TooLarge(n) => {
                    Some(error(ErrorCode::FrameTooLarge, format!("request of {n} bytes; at most {MAX_REQUEST}")))
                }
                FrameState::Complete(payload) => {
                    let (reply, f) = match serde_json::from_slice::<ControlRequest>(payload) {
                        Ok(req) => handle(req, supervisor),
                        Err(e) => (error(ErrorCode::InvalidRequest, format!("bad request: {e}")), Followup::None),
                    };
                    if f != Followup::None {
                        followup = f;
                    }
                    Some(reply)
                }
            };
            if let Some(reply) = reply {
                send_reply(&mut c.stream, &reply);
            }
        }
        self.clients = keep;
        followup
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

enum FrameState<'a> {
    Incomplete,
    TooLarge(usize),
    Complete(&'a [u8]),
}

fn frame_payload(buf: &[u8]) -> FrameState<'_> {
    if buf.len() < 4 {
        return FrameState::Incomplete;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_REQUEST {
        return FrameState::TooLarge(len);
    }
    match buf.get(4..4 + len) {
        Some(p) => FrameState::Complete(p),
        None => FrameState::Incomplete,
    }
}

fn send_reply(stream: &mut UnixStream, reply: &ControlReply) {
    let mut frame = Vec::new();
    if cerana_protocol::frame::encode_json_into(&mut frame, reply).is_err() {
        return;
    }
    // Replies can be large (logs): write them blocking, but never for long.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(&frame);
}

fn error(code: ErrorCode, message: String) -> ControlReply {
    ControlReply::Error { code, message }
}

fn ok<T: serde::Serialize>(value: T) -> ControlReply {
    match serde_json::to_value(value) {
        Ok(v) => ControlReply::Ok(v),
        Err(e) => error(ErrorCode::Internal, e.to_string()),
    }
}

fn from_control(result: Result<impl serde::Serialize, ControlError>) -> ControlReply {
    match result {
        Ok(v) => ok(v),
        Err(e) => {
            let code = match e {
                ControlError::NotFound(_) => ErrorCode::NotFound,
                ControlError::NotStartable(..) => ErrorCode::Failed,
                ControlError::ShuttingDown => ErrorCode::Unavailable,
                ControlError::NotRunning(..) => ErrorCode::Failed,
            };
            error(code, e.to_string())
        }
    }
}

/// Carries out one request.
pub fn handle(req: ControlRequest, sup: &mut Supervisor) -> (ControlReply, Followup) {
    let now = Instant::now();
    let reply = match req {
        ControlRequest::List => ok(ServiceList { services: sup.services().iter().map(|s| s.status(now)).collect() }),
        ControlRequest::Start { service } => from_control(sup.request_start(&service)),
        ControlRequest::Stop { service } => from_control(sup.request_stop(&service)),
        ControlRequest::Restart { service } => from_control(sup.request_restart(&service)),
        ControlRequest::Signal { service, signal, whom } => match crate::table::parse_signal(&signal) {
            Ok(sig) => from_control(sup.request_signal(&service, sig, whom)),
            Err(why) => error(ErrorCode::InvalidArgument, why),
        },
        ControlRequest::Logs { service, lines } => match sup.find(&service) {
            Some(s) => ok(ServiceLogs {
                service: s.name.clone(),
                lines: s.log().tail(lines.map(|n| n as usize)),
                dropped_lines: s.log().dropped(),
            }),
            None => from_control(Err::<(), _>(ControlError::NotFound(service))),
        },
        ControlRequest::Poweroff | ControlRequest::Reboot => {
            let action =
                if req == ControlRequest::Poweroff { ShutdownAction::Poweroff } else { ShutdownAction::Reboot };
            return (ok(ShutdownAccepted { action }), Followup::Shutdown(action));
        }
    };
    (reply, Followup::None)
}
