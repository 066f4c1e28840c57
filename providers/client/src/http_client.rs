//! The HTTP(S) client for a coordinator's API.

use crate::ClientError;
use bytes::Bytes;
use cerana_protocol::{NodeUrl, Request, Response, StreamId, TaskError};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use std::path::Path;

type Body = BoxBody<Bytes, std::io::Error>;

/// The body of an HTTP error that is not a task's response (e.g. a missing token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: TaskError,
}

/// A coordinator's HTTP API.
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: NodeUrl,
    token: Option<String>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
}

/// A client certificate and its key (PEM files): how a node proves which node it is.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))
}

fn tls_config(
    ca_file: Option<&Path>,
    identity: Option<ClientIdentity<'_>>,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = read_pem(path)?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
                roots.add(cert).map_err(|e| ClientError::Tls(e.to_string()))?;
            }
        }
        None => {
            for cert in rustls_native_certs().into_iter() {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let Some(identity) = identity else { return Ok(builder.with_no_client_auth()) };
    let pem = read_pem(identity.cert)?;
    let chain = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Tls(format!("{}: {e}", identity.cert.display())))?;
    let pem = read_pem(identity.key)?;
    let key = rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| ClientError::Tls(format!("{}: {e}", identity.key.display())))?
        .ok_or_else(|| ClientError::Tls(format!("{}: no private key", identity.key.display())))?;
    builder.with_client_auth_cert(chain, key).map_err(|e| ClientError::Tls(e.to_string()))
}

/// The system's CA bundle, if there is one; https to a self-signed coordinator needs `--ca-cert`.
fn rustls_native_certs() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let Ok(pem) = std::fs::read("/etc/ssl/certs/ca-certificates.crt") else { return Vec::new() };
    rustls_pemfile::certs(&mut &pem[..]).filter_map(Result::ok).collect()
}

impl HttpClient {
    /// A client for the coordinator at `base`, sending `token` as a bearer token.
    /// `ca_file` (PEM) is trusted for https; otherwise the system's CA bundle.
    pub fn new(base: NodeUrl, token: Option<String>, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        Self::with_identity(base, token, ca_file, None)
    }

    /// [`HttpClient::new`] that also presents `identity` to https servers that ask for a
    /// client certificate.
    pub fn with_identity(
        base: NodeUrl,
        token: Option<String>,
        ca_file: Option<&Path>,
        identity: Option<ClientIdentity<'_>>,
    ) -> Result<Self, ClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(ca_file, identity)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { base, token, client })
    }

    /// A client for the coordinator at `base` that shares this one's connection pool, TLS
    /// configuration and token: cheap, where [`HttpClient::new`] builds all of them.
    pub fn with_base(&self, base: NodeUrl) -> Self {
        Self { base, token: self.token.clone(), client: self.client.clone() }
    }

    pub fn base(&self) -> &NodeUrl {
        &self.base
    }

    fn request(&self, method: http::Method, url: &str, body: Body) -> Result<http::Request<Body>, ClientError> {
        let mut builder = http::Request::builder().method(method).uri(url);
        if let Some(token) = &self.token {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        builder
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| ClientError::Protocol(format!("bad URL {url}: {e}")))
    }

    async fn send(&self, request: http::Request<Body>) -> Result<http::Response<Incoming>, ClientError> {
        let target = request.uri().to_string();
        self.client
            .request(request)
            .await
            .map_err(|e| ClientError::Connect { target, source: std::io::Error::other(error_chain(&e)) })
    }

    fn full(bytes: Vec<u8>) -> Body {
        Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed()
    }

    /// Runs `request` and waits for its response.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let url = format!("{}/v1/tasks?wait=true", self.base);
        let response = self.send(self.request(http::Method::POST, &url, Self::full(body))?).await?;
        let (status, bytes) = read_body(response).await?;
        decode_response(status, &bytes)
    }

    /// Submits `request` without waiting; its outcome is in the journal (`get_json("/v1/tasks/ID")`).
    pub async fn submit(&self, request: &Request) -> Result<(), ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let url = format!("{}/v1/tasks?wait=false", self.base);
        let response = self.send(self.request(http::Method::POST, &url, Self::full(body))?).await?;
        let (status, bytes) = read_body(response).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(status, &bytes))
        }
    }

    /// GETs a JSON document from the API, e.g. `/v1/providers`.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self.send(self.request(http::Method::GET, &url, Self::full(Vec::new()))?).await?;
        let (status, bytes) = read_body(response).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("malformed JSON from {url}: {e}")))
    }

    /// Opens the reading end of a stream: the response body carries the stream's bytes and ends
    /// with an error if the producer vanished.
    pub async fn stream_get(&self, id: StreamId) -> Result<Incoming, ClientError> {
        let url = format!("{}/v1/streams/{id}", self.base);
        let response = self.send(self.request(http::Method::GET, &url, Self::full(Vec::new()))?).await?;
        if !response.status().is_success() {
            let (status, bytes) = read_body(response).await?;
            return Err(api_error(status, &bytes));
        }
        Ok(response.into_body())
    }

    /// Writes a stream's bytes from `body`; an erroring body marks the stream as broken.
    pub async fn stream_put(&self, id: StreamId, body: Body) -> Result<(), ClientError> {
        let url = format!("{}/v1/streams/{id}", self.base);
        let response = self.send(self.request(http::Method::POST, &url, body)?).await?;
        let (status, bytes) = read_body(response).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(status, &bytes))
        }
    }

    /// POSTs a response to a `reply_to` URL.
    pub async fn post_response(&self, url: &str, response: &Response) -> Result<(), ClientError> {
        let body = serde_json::to_vec(response).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let reply = self.send(self.request(http::Method::POST, url, Self::full(body))?).await?;
        let status = reply.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ClientError::Http { status: status.as_u16(), body: String::new() })
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Largest non-stream response body read into memory.
const MAX_RESPONSE_BODY: usize = cerana_protocol::frame::MAX_FRAME_LEN;

async fn read_body(response: http::Response<Incoming>) -> Result<(http::StatusCode, Bytes), ClientError> {
    let status = response.status();
    let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BODY);
    let bytes =
        limited.collect().await.map_err(|e| ClientError::Protocol(format!("reading response body: {e}")))?.to_bytes();
    Ok((status, bytes))
}

fn api_error(status: http::StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ApiErrorBody>(bytes) {
        Ok(body) => ClientError::Api(body.error),
        Err(_) => ClientError::Http {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
        },
    }
}

/// A task's response comes back with any status; other errors carry an [`ApiErrorBody`].
fn decode_response(status: http::StatusCode, bytes: &[u8]) -> Result<Response, ClientError> {
    match serde_json::from_slice::<Response>(bytes) {
        Ok(response) => Ok(response),
        Err(_) => Err(api_error(status, bytes)),
    }
}
