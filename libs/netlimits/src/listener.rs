//! Accepting TCP connections through an [`Admission`], and turning away the rest at once.

use crate::admission::{Admission, Permit, Refused};
use cerana_protocol::{ErrorCode, TaskError};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};

/// Pause after a failed accept (e.g. out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most this much of what a refused peer already sent is read and dropped at once.
const DRAIN_BYTES: usize = 16 * 1024;
/// Refused connections per listener kept open a moment after their answer.
pub const MAX_LINGERING: usize = 32;
/// How long at most.
pub const LINGER: Duration = Duration::from_secs(1);

/// What an HTTP client over the cap is told: 503 with the JSON error shape
/// `{"error": {"code": "busy", "message": ...}}`, and that the connection closes.
pub fn busy_http_response(refused: &Refused) -> Vec<u8> {
    let error = TaskError::new(ErrorCode::Busy, refused.to_string());
    let body = serde_json::json!({ "error": error }).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `answer` to a connection that is being turned away, without waiting (a peer that
/// does not read loses the answer, not a slot), and ends the sending side; the caller then
/// drops the connection.
pub fn refuse_now(connection: &impl AsFd, answer: &[u8]) {
    let socket = socket2::SockRef::from(connection);
    let mut socket: &socket2::Socket = &socket;
    // What the peer already sent is read first: closing with unread bytes resets the connection,
    // and the reset could overtake the answer.
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_BYTES {
        match socket.read(&mut scratch) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
    let _ = socket.write(answer);
    let _ = socket.shutdown(Shutdown::Write);
}

impl Admission {
    /// Gives a refused connection `answer` at once (see [`refuse_now`]) and closes it. Up to
    /// [`MAX_LINGERING`] refused connections per listener are kept open for at most [`LINGER`]
    /// first, reading and dropping what their peers send: a peer that writes its request after
    /// the answer then still reads the answer, instead of a broken pipe or a reset. Beyond that
    /// they are closed at once, so a flood of refusals holds few descriptors.
    pub fn turn_away<S>(&self, connection: S, answer: Option<&[u8]>)
    where
        S: AsyncRead + AsFd + Unpin + Send + 'static,
    {
        let Some(answer) = answer else { return };
        refuse_now(&connection, answer);
        let lingering = &self.shared.lingering;
        if lingering.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
            lingering.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut connection = connection;
            let mut scratch = [0u8; 1024];
            let until_closed = async { while let Ok(1..) = connection.read(&mut scratch).await {} };
            let _ = tokio::time::timeout(LINGER, until_closed).await;
            drop(connection);
            shared.lingering.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Accepts connections on `listener` until `admission` admits one, and returns it with its
/// permit. A refused connection is given `answer(refusal)` when there is one and closed
/// ([`Admission::turn_away`]), else closed at once.
pub async fn accept_admitted(
    listener: &TcpListener,
    admission: &Admission,
    answer: impl Fn(&Refused) -> Option<Vec<u8>>,
) -> (TcpStream, SocketAddr, Permit) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(listener = admission.name(), "accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        match admission.admit(peer.ip()) {
            Ok(permit) => return (stream, peer, permit),
            Err(refused) => {
                tracing::debug!(listener = admission.name(), %peer, "refused: {refused}");
                admission.turn_away(stream, answer(&refused).as_deref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::ConnectionLimits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_busy_answer_is_a_closing_503_with_the_json_error_shape() {
        let response = String::from_utf8(busy_http_response(&Refused::Total { limit: 3 })).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "busy");
        assert!(json["error"]["message"].as_str().unwrap().contains("3 connections"));
    }

    #[tokio::test]
    async fn a_peer_that_writes_after_being_turned_away_still_reads_the_answer() {
        let (server, mut peer) = tokio::net::UnixStream::pair().unwrap();
        let admission = Admission::new("test", ConnectionLimits { total: 1, per_source: 1 });
        admission.turn_away(server, Some(b"busy"));
        peer.write_all(b"hello, anyone there?").await.expect("the socket is still open");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut answer)).await.unwrap().unwrap();
        assert_eq!(answer, b"busy");
        // The server's end closes once the peer does.
        drop(peer);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while admission.shared.lingering.load(Ordering::Relaxed) > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the refused connection lingers on");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_answered_and_closed_while_admitted_ones_stay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admission = Admission::new("test", ConnectionLimits { total: 1, per_source: 1 });
        let mut first = TcpStream::connect(addr).await.unwrap();
        let (mut admitted, _, _permit) = accept_admitted(&listener, &admission, |r| Some(busy_http_response(r))).await;

        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        // The refusal happens inside the next accept; it returns only for an admitted one.
        let next = tokio::spawn(async move {
            let _ = accept_admitted(&listener, &admission, |r| Some(busy_http_response(r))).await;
        });
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut answer)).await.unwrap().unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&answer));

        first.write_all(b"still here").await.unwrap();
        let mut got = [0u8; 10];
        admitted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still here");
        next.abort();
    }
}
