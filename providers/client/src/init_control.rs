//! A client for init's control socket (`/run/cerana/init.sock` on a node): one length-prefixed
//! JSON [`ControlRequest`] frame per connection, answered by one [`ControlReply`] frame. Init
//! serves the socket (`init/src/control.rs`); the `init` provider and the test harness ask.

use std::path::Path;
use std::time::Duration;

use cerana_protocol::frame::{encode_json_into, read_frame, FrameError, MAX_FRAME_LEN};
use cerana_protocol::tasks::init::{ControlReply, ControlRequest};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Why a control request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("cannot encode the request: {0}")]
    Encode(FrameError),
    #[error("cannot send the request: {0}")]
    Send(std::io::Error),
    #[error("cannot read the reply: {0}")]
    Receive(FrameError),
    #[error("init closed the connection without replying")]
    Closed,
    #[error("malformed reply: {0}")]
    Malformed(serde_json::Error),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

/// Sends `req` to init's control socket at `socket` and returns its reply; connecting, sending
/// and receiving together take at most `timeout`. Replies over [`MAX_FRAME_LEN`] are refused.
pub async fn request(socket: &Path, req: &ControlRequest, timeout: Duration) -> Result<ControlReply, ControlError> {
    tokio::time::timeout(timeout, exchange(socket, req)).await.map_err(|_| ControlError::Timeout(timeout))?
}

async fn exchange(socket: &Path, req: &ControlRequest) -> Result<ControlReply, ControlError> {
    let mut frame = Vec::new();
    encode_json_into(&mut frame, req).map_err(ControlError::Encode)?;
    let mut stream = UnixStream::connect(socket).await.map_err(ControlError::Connect)?;
    stream.write_all(&frame).await.map_err(ControlError::Send)?;
    let mut payload = Vec::new();
    if !read_frame(&mut stream, &mut payload, MAX_FRAME_LEN).await.map_err(ControlError::Receive)? {
        return Err(ControlError::Closed);
    }
    serde_json::from_slice(&payload).map_err(ControlError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A one-shot server: reads whatever arrives first, then answers with `reply` (raw bytes).
    fn serve_once(listener: UnixListener, reply: Vec<u8>) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            read_frame(&mut conn, &mut request, MAX_FRAME_LEN).await.unwrap();
            conn.write_all(&reply).await.unwrap();
            request
        })
    }

    #[tokio::test]
    async fn sends_one_frame_and_decodes_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("init.sock");
        let mut reply = Vec::new();
        encode_json_into(&mut reply, &ControlReply::Ok(serde_json::json!({"services": []}))).unwrap();
        let server = serve_once(UnixListener::bind(&socket).unwrap(), reply);
        let answer = request(&socket, &ControlRequest::List, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer, ControlReply::Ok(serde_json::json!({"services": []})));
        let sent: ControlRequest = serde_json::from_slice(&server.await.unwrap()).unwrap();
        assert_eq!(sent, ControlRequest::List);
    }

    #[tokio::test]
    async fn no_socket_an_oversized_or_missing_reply_and_silence_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("init.sock");
        let error = request(&socket, &ControlRequest::List, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(error, ControlError::Connect(_)), "{error}");

        let listener = UnixListener::bind(&socket).unwrap();
        let server = serve_once(listener, ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec());
        let error = request(&socket, &ControlRequest::List, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(error, ControlError::Receive(FrameError::TooLarge { .. })), "{error}");
        drop(server);

        std::fs::remove_file(&socket).unwrap();
        let listener = UnixListener::bind(&socket).unwrap();
        let server = serve_once(listener, Vec::new());
        let error = request(&socket, &ControlRequest::List, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(error, ControlError::Closed), "{error}");
        drop(server);

        std::fs::remove_file(&socket).unwrap();
        let listener = UnixListener::bind(&socket).unwrap();
        let silent = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = conn.read_to_end(&mut sink).await;
        });
        let error = request(&socket, &ControlRequest::List, Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(error, ControlError::Timeout(_)), "{error}");
        silent.abort();
    }
}
