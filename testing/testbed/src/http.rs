//! A small HTTP/1.1 client for the node's coordinator API (one request per connection), over
//! TLS to a cluster node that has its certificate ([`TlsClient`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("talking to {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// HTTPS that trusts one CA only (the cluster's), checked against the server's address.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl TlsClient {
    /// Trusting the CA certificate `ca_pem`.
    pub fn trusting(ca_pem: &str) -> Result<Self, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.map_err(|e| HttpError::Tls(e.to_string()))?).map_err(|e| HttpError::Tls(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(HttpError::Tls("no CA certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { config: Arc::new(config) })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `POST path` with a bearer token and a JSON body.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    token: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    request(addr, "POST", path, Some(token), body, timeout)
}

/// One request on its own connection (`Connection: close`); the body is sent as JSON when
/// there is one.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    request_over(addr, None, method, path, token, body, timeout)
}

/// [`request`] over TLS when `tls` is given.
pub fn request_over(
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|source| HttpError::Connect { addr, source })?;
    let io = |source| HttpError::Io { addr, source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let raw = match tls {
        None => exchange(stream, head.as_bytes(), body).map_err(io)?,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let conn =
                rustls::ClientConnection::new(tls.config.clone(), name).map_err(|e| HttpError::Tls(e.to_string()))?;
            exchange(rustls::StreamOwned::new(conn, stream), head.as_bytes(), body).map_err(io)?
        }
    };
    parse_response(&raw)
}

/// Writes the request and reads the answer to its end. A TLS peer that closes without a
/// close_notify after its answer has still answered (`Connection: close`).
fn exchange(mut stream: impl Read + Write, head: &[u8], body: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(head)?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e),
    }
}

pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, HttpError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| HttpError::Malformed(format!("no end of headers in {} bytes", raw.len())))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| HttpError::Malformed("headers are not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {status_line:?}")))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let eol =
            body.windows(2).position(|w| w == b"\r\n").ok_or_else(|| HttpError::Malformed("chunk size line".into()))?;
        let size_text = std::str::from_utf8(&body[..eol]).unwrap_or("");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size_text:?}")))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or_else(|| HttpError::Malformed("chunk past end".into()))?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_responses_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (401, &b"abcde"[..]));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn posts_to_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone").unwrap();
            req
        });
        let r = post_json(addr, "/v1/tasks", "t0k", b"{\"task\":\"x\"}", Duration::from_secs(5)).unwrap();
        assert_eq!(r.body, b"done");
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /v1/tasks HTTP/1.1\r\n"));
        assert!(req.contains("Authorization: Bearer t0k\r\n"));
        assert!(req.ends_with("{\"task\":\"x\"}"));
    }
}
