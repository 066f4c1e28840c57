//! The framed unix-socket client.

use crate::ClientError;
use cerana_protocol::frame::{encode_json_into, read_frame, write_queued_frames, MAX_FRAME_LEN};
use cerana_protocol::{
    FromCoordinator, Request, RequestId, Response, StreamDirection, StreamHandle, ToCoordinator, Welcome,
    PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

type PendingMap = Arc<Mutex<HashMap<RequestId, oneshot::Sender<Response>>>>;

/// Sends `hello` and waits for the coordinator's welcome.
pub async fn handshake(stream: &mut UnixStream, hello: &ToCoordinator) -> Result<Welcome, ClientError> {
    let mut out = Vec::new();
    encode_json_into(&mut out, hello).map_err(|e| ClientError::Protocol(e.to_string()))?;
    // A coordinator over its connection cap answers `refused` and closes before reading the
    // hello: the write then fails, but the refusal is still there to read and says why.
    let written = stream.write_all(&out).await;
    let mut buf = Vec::new();
    match read_frame(stream, &mut buf, MAX_FRAME_LEN).await {
        Ok(true) => {}
        Ok(false) => return Err(written.err().map_or(ClientError::Closed, ClientError::from)),
        Err(e) => return Err(written.err().map_or_else(|| ClientError::Protocol(e.to_string()), ClientError::from)),
    }
    match serde_json::from_slice::<FromCoordinator>(&buf) {
        Ok(FromCoordinator::Welcome(w)) => Ok(w),
        Ok(FromCoordinator::Refused(e)) => Err(ClientError::Refused(e)),
        Ok(other) => Err(ClientError::Protocol(format!("expected a welcome, got {other:?}"))),
        Err(e) => Err(ClientError::Protocol(format!("malformed welcome: {e}"))),
    }
}

pub(crate) async fn connect(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect { target: path.display().to_string(), source })
}

/// Opens one end of a byte stream on the coordinator at `path`. The returned socket carries
/// chunk frames (see `cerana_protocol::stream`).
pub async fn open_stream(
    path: &Path,
    stream: StreamHandle,
    direction: StreamDirection,
) -> Result<UnixStream, ClientError> {
    let mut socket = connect(path).await?;
    handshake(&mut socket, &ToCoordinator::StreamOpen { stream, direction, accept_pipe: false }).await?;
    Ok(socket)
}

/// A client connection multiplexing any number of concurrent requests.
#[derive(Debug, Clone)]
pub struct UnixClient {
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    pending: PendingMap,
    welcome: Welcome,
    socket: PathBuf,
}

impl UnixClient {
    /// Connects and says hello as a client called `name`.
    pub async fn connect(path: impl AsRef<Path>, name: &str) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let mut stream = connect(path).await?;
        let welcome =
            handshake(&mut stream, &ToCoordinator::ClientHello { name: name.to_owned(), protocol: PROTOCOL_VERSION })
                .await?;
        let (read, write) = stream.into_split();
        let pending: PendingMap = Arc::default();
        let (outgoing, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_queued_frames(write, rx));
        tokio::spawn(read_loop(BufReader::with_capacity(64 * 1024, read), pending.clone()));
        Ok(Self { outgoing, pending, welcome, socket: path.to_owned() })
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `request` and waits for its response.
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let mut frame = Vec::with_capacity(256);
        let id = request.id;
        encode_json_into(&mut frame, &ToCoordinator::Request(request))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        if self.outgoing.send(frame).is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(ClientError::Closed);
        }
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Asks the coordinator to give up on `id`.
    pub fn cancel(&self, id: RequestId) -> Result<(), ClientError> {
        let mut frame = Vec::new();
        encode_json_into(&mut frame, &ToCoordinator::Cancel { id })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.outgoing.send(frame).map_err(|_| ClientError::Closed)
    }

    /// Runs a typed task.
    pub async fn run<T: cerana_protocol::Task>(&self, args: &T::Args) -> Result<T::Output, crate::CallError> {
        let request =
            Request::for_task::<T>(args).map_err(|e| ClientError::Protocol(format!("cannot encode arguments: {e}")))?;
        Ok(self.call(request).await?.decode()?)
    }
}

async fn read_loop(mut read: BufReader<tokio::net::unix::OwnedReadHalf>, pending: PendingMap) {
    let mut buf = Vec::new();
    loop {
        match read_frame(&mut read, &mut buf, MAX_FRAME_LEN).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::warn!("coordinator connection failed: {e}");
                break;
            }
        }
        match serde_json::from_slice::<FromCoordinator>(&buf) {
            Ok(FromCoordinator::Response(response)) => {
                let waiter = pending.lock().expect("pending lock").remove(&response.id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(response);
                }
            }
            Ok(FromCoordinator::Ack { .. }) => {}
            Ok(other) => tracing::warn!("unexpected message from coordinator: {other:?}"),
            Err(e) => tracing::warn!("malformed message from coordinator: {e}"),
        }
    }
    // Dropping the waiters makes every outstanding call return `Closed`.
    pending.lock().expect("pending lock").clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::{ErrorCode, TaskError};

    /// A coordinator over its cap answers and closes before it reads the hello.
    #[tokio::test]
    async fn a_refusal_sent_before_the_hello_was_read_is_still_heard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut frame = Vec::new();
            let busy = FromCoordinator::Refused(TaskError::new(ErrorCode::Busy, "over the cap"));
            encode_json_into(&mut frame, &busy).unwrap();
            stream.write_all(&frame).await.unwrap();
        });
        let mut stream = connect(&path).await.unwrap();
        server.await.unwrap();
        let hello = ToCoordinator::ClientHello { name: "late".into(), protocol: PROTOCOL_VERSION };
        match handshake(&mut stream, &hello).await {
            Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::Busy),
            other => panic!("expected the refusal, got {other:?}"),
        }
    }
}
