//! The HTTP(S) API for remote clients and peer coordinators.
//!
//! - `POST /v1/tasks[?wait=false]`: run a task (the body is a request; `id` may be omitted).
//! - `GET /v1/tasks[?limit=&task=&state=&before=]`, `GET /v1/tasks/{id}`: the journal, a page
//!   at a time.
//! - `GET /v1/providers`, `GET /v1/catalog`: what is registered and documented.
//! - `GET /metrics`: Prometheus text (coordinator, providers, node and services; see `metrics.rs`).
//! - `POST /v1/streams/{id}`, `GET /v1/streams/{id}`: the two ends of a byte stream.
//! - `GET /health`: liveness, the only path that needs no token.
//!
//! Who may call what: `auth.rs`.
//!
//! Every client error (4xx) is the JSON error shape `{"error": {"code", "message", ...}}`.

use crate::auth::Caller;
use crate::core::{Core, ReplySink};
use crate::streams::{pump_from_unix, Piece, StreamEnd};
use axum::body::Body;
use axum::extract::{Path, Query, Request as AxumRequest, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use cerana_client::ApiErrorBody;
use cerana_protocol::tasks::coordinator::{HistoryArgs, TaskState};
use cerana_protocol::{
    Access, ErrorCode, NodeUrl, Request, RequestId, Response, StreamDirection, StreamHandle, StreamId, TaskError,
    TaskName,
};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Request bodies (other than streams) larger than this are refused.
const MAX_BODY: usize = cerana_protocol::frame::MAX_FRAME_LEN;
/// Bytes of a framework rejection's text (e.g. why a query string is malformed) kept as the
/// message of its JSON error.
const MAX_REJECTION_TEXT: usize = 4 << 10;

#[derive(Clone)]
struct AppState {
    core: Arc<Core>,
}

fn api_error(status: StatusCode, error: TaskError) -> AxumResponse {
    (status, Json(ApiErrorBody { error })).into_response()
}

fn status_for(code: &ErrorCode) -> StatusCode {
    use cerana_protocol::error::ErrorClass::*;
    if *code == ErrorCode::FrameTooLarge {
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    if *code == ErrorCode::PermissionDenied {
        return StatusCode::FORBIDDEN;
    }
    match code.class() {
        BadInput => StatusCode::BAD_REQUEST,
        NotFound => StatusCode::NOT_FOUND,
        Conflict => StatusCode::CONFLICT,
        Timeout => StatusCode::GATEWAY_TIMEOUT,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Auth => StatusCode::UNAUTHORIZED,
        Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn router(core: Arc<Core>) -> Router {
    let state = AppState { core };
    let api = Router::new()
        .route("/v1/tasks", post(post_task).get(list_tasks))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/providers", get(providers))
        .route("/v1/catalog", get(catalog))
        .route("/v1/streams/{id}", post(stream_put).get(stream_get))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .merge(api)
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, TaskError::new(ErrorCode::NotFound, "no such path")) })
        .with_state(state)
        .layer(middleware::from_fn(json_client_errors))
}

/// Gives every client error the API's JSON error shape, the framework's own rejections (a
/// malformed query string, a wrong method) included: their text becomes the message.
async fn json_client_errors(request: AxumRequest, next: Next) -> AxumResponse {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let code = match status {
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::FrameTooLarge,
        _ => ErrorCode::InvalidRequest,
    };
    let (parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, MAX_REJECTION_TEXT).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("client error").to_owned() } else { text };
    let mut json = api_error(status, TaskError::new(code, message));
    // A 405 says which methods the path takes.
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        json.headers_mut().insert(header::ALLOW, allow.clone());
    }
    json
}

/// Authenticates every API request (see `auth.rs`) and hands the handlers its [`Caller`].
/// Task requests are checked against their task once the body is read; a stream upload needs
/// `write` access, anything else `read`.
async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    mut request: AxumRequest,
    next: Next,
) -> AxumResponse {
    if request.uri().query().is_some_and(crate::auth::query_has_credential) {
        let message = "credentials go in the Authorization header, never in a URL (URLs are logged)";
        return api_error(StatusCode::BAD_REQUEST, TaskError::new(ErrorCode::InvalidRequest, message));
    }
    let node = request.extensions().get::<PeerNode>();
    let caller = match crate::auth::authenticate(&state.core, node, bearer_token(&headers)) {
        Ok(caller) => caller,
        Err(e) => return api_error(status_for(&e.code), e),
    };
    let path = request.uri().path();
    let is_task = path == "/v1/tasks" && request.method() == http::Method::POST;
    if !is_task {
        let access = if path.starts_with("/v1/streams/") && request.method() == http::Method::POST {
            Access::Write
        } else {
            Access::Read
        };
        if let Err(e) = caller.may_run(path, access) {
            return api_error(status_for(&e.code), e);
        }
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 7235).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A request as HTTP callers send it: like [`Request`], but the id is optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTaskRequest {
    #[serde(default)]
    id: Option<RequestId>,
    task: TaskName,
    #[serde(default)]
    args: Option<Box<RawValue>>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    node: Option<NodeUrl>,
    #[serde(default)]
    stream: Option<StreamHandle>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    parent: Option<RequestId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    #[serde(default)]
    wait: Option<bool>,
}

async fn post_task(
    State(state): State<AppState>,
    Query(query): Query<WaitQuery>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Body,
) -> AxumResponse {
    let read = http_body_util::Limited::new(body, MAX_BODY).collect();
    let bytes = match tokio::time::timeout(state.core.config.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => return body_error(&*e),
        Err(elapsed) => return body_error(&elapsed),
    };
    let parsed: HttpTaskRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                TaskError::new(ErrorCode::InvalidRequest, format!("malformed request: {e}")),
            )
        }
    };
    let request = Request {
        id: parsed.id.unwrap_or_else(RequestId::random),
        task: parsed.task,
        args: parsed.args.unwrap_or_else(|| RawValue::from_string("{}".into()).expect("literal")),
        timeout_ms: parsed.timeout_ms,
        node: parsed.node,
        stream: parsed.stream,
        reply_to: parsed.reply_to,
        parent: parsed.parent,
    };
    let id = request.id;
    let denied = caller.may_run(request.task.as_str(), cerana_protocol::tasks::access_of(request.task.as_str())).err();
    let label = format!("http:{peer} {}", caller.identity);
    if query.wait == Some(false) {
        if let Some(error) = denied {
            state.core.reject(request, label, ReplySink::Detached, error.clone());
            return api_error(status_for(&error.code), error);
        }
        state.core.submit(request, label, ReplySink::Detached);
        return (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": id }))).into_response();
    }
    let (tx, rx) = oneshot::channel();
    match denied {
        Some(error) => state.core.reject(request, label, ReplySink::Waiter(tx), error),
        None => state.core.submit(request, label, ReplySink::Waiter(tx)),
    }
    match rx.await {
        Ok(response) => task_response(response),
        Err(_) => {
            api_error(StatusCode::INTERNAL_SERVER_ERROR, TaskError::new(ErrorCode::Internal, "the request was dropped"))
        }
    }
}

/// Why a request body could not be read: too slow (408, and the connection closes, since
/// the rest of the body may still be on its way), too large (413), or broken off (400).
fn body_error(error: &(dyn std::error::Error + 'static)) -> AxumResponse {
    if cerana_netlimits::is_body_timeout(error) {
        let error = TaskError::new(ErrorCode::Timeout, format!("the request body did not arrive in time: {error}"));
        let mut response = api_error(StatusCode::REQUEST_TIMEOUT, error);
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        response
    } else if error.is::<http_body_util::LengthLimitError>() {
        api_error(StatusCode::PAYLOAD_TOO_LARGE, TaskError::new(ErrorCode::FrameTooLarge, error.to_string()))
    } else {
        api_error(StatusCode::BAD_REQUEST, TaskError::new(ErrorCode::InvalidRequest, format!("request body: {error}")))
    }
}

fn task_response(response: Response) -> AxumResponse {
    let status = response.error().map_or(StatusCode::OK, |e| status_for(&e.code));
    match serde_json::to_vec(&response) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, TaskError::new(ErrorCode::Internal, e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Any size is taken and clamped to the page size.
    limit: Option<u64>,
    task: Option<TaskName>,
    state: Option<TaskState>,
    before: Option<u64>,
}

/// One page of the journal: `{"entries": [...], "next_before": N}` (`next_before` only when
/// older entries may follow; pass it as `before=`).
async fn list_tasks(State(state): State<AppState>, Query(q): Query<HistoryQuery>) -> AxumResponse {
    let limit = q.limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX));
    let args = HistoryArgs { limit, task: q.task, state: q.state, before: q.before };
    let page = state.core.journal.lock().expect("journal lock").query(&args);
    Json(page).into_response()
}

async fn get_task(State(state): State<AppState>, Path(id): Path<String>) -> AxumResponse {
    let Ok(id) = id.parse::<RequestId>() else {
        return api_error(
            StatusCode::BAD_REQUEST,
            TaskError::new(ErrorCode::InvalidRequest, format!("{id:?} is not a task id")),
        );
    };
    let journal = state.core.journal.lock().expect("journal lock");
    match journal.find(id) {
        Some(entry) => Json(entry.clone()).into_response(),
        None => api_error(
            StatusCode::NOT_FOUND,
            TaskError::new(ErrorCode::NotFound, format!("no task {id} in the journal")),
        ),
    }
}

fn builtin(state: &AppState, task: &str) -> AxumResponse {
    let task = TaskName::new(task).expect("builtin names are valid");
    match crate::builtin::run(&*state.core, &task, "{}") {
        Ok(raw) => ([(header::CONTENT_TYPE, "application/json")], raw.get().to_owned()).into_response(),
        Err(e) => api_error(status_for(&e.code), e),
    }
}

async fn metrics(State(state): State<AppState>) -> AxumResponse {
    let text = crate::metrics::render(&state.core).await;
    ([(header::CONTENT_TYPE, cerana_observe::exposition::CONTENT_TYPE)], text).into_response()
}

async fn providers(State(state): State<AppState>) -> AxumResponse {
    builtin(&state, "coordinator-providers")
}

async fn catalog(State(state): State<AppState>) -> AxumResponse {
    builtin(&state, "coordinator-tasks")
}

fn parse_stream_id(id: &str) -> Result<StreamId, AxumResponse> {
    id.parse::<StreamId>().map_err(|_| {
        api_error(
            StatusCode::BAD_REQUEST,
            TaskError::new(ErrorCode::InvalidRequest, format!("{id:?} is not a stream id")),
        )
    })
}

/// The body of `POST /v1/streams/{id}` is the stream's bytes; a body that ends with an error
/// (the producer vanished) ends the stream without its end marker.
async fn stream_put(State(state): State<AppState>, Path(id): Path<String>, body: Body) -> AxumResponse {
    let id = match parse_stream_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let tx = match state.core.streams.claim(id, StreamDirection::Put, false) {
        Ok(StreamEnd::Producer(tx)) => tx,
        Ok(_) => unreachable!("claimed a channel's put end"),
        Err(e) => return api_error(StatusCode::CONFLICT, e),
    };
    let mut body = body.into_data_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) if bytes.is_empty() => {}
            Ok(bytes) => {
                if tx.send(Piece::Data(bytes)).await.is_err() {
                    return api_error(
                        StatusCode::BAD_GATEWAY,
                        TaskError::new(ErrorCode::StreamError, "the stream's reader went away"),
                    );
                }
            }
            Err(e) if cerana_netlimits::is_body_timeout(&e) => return body_error(&e),
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    TaskError::new(ErrorCode::StreamError, format!("upload broke off: {e}")),
                )
            }
        }
    }
    let _ = tx.send(Piece::End).await;
    StatusCode::NO_CONTENT.into_response()
}

/// Turns the consumer end of a stream into a body that errors (aborting the response) if the
/// producer vanishes, so the reader can tell a truncated stream from a complete one.
fn consumer_stream(rx: mpsc::Receiver<Piece>) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Piece::Data(bytes)) => Some((Ok(bytes), Some(rx))),
            Some(Piece::End) => None,
            None => Some((Err(std::io::Error::other("stream producer vanished")), None)),
        }
    })
}

fn consumer_body(rx: mpsc::Receiver<Piece>) -> Body {
    Body::from_stream(consumer_stream(rx))
}

async fn stream_get(State(state): State<AppState>, Path(id): Path<String>) -> AxumResponse {
    let id = match parse_stream_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match state.core.streams.claim(id, StreamDirection::Get, false) {
        Ok(StreamEnd::Consumer(rx)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], consumer_body(rx)).into_response()
        }
        Ok(_) => unreachable!("claimed a channel's get end"),
        Err(e) => api_error(StatusCode::CONFLICT, e),
    }
}

/// Connects a local stream end to a stream that lives on another node's coordinator.
pub async fn remote_stream_to_unix(
    core: Arc<Core>,
    mut stream: UnixStream,
    node: NodeUrl,
    id: StreamId,
    direction: StreamDirection,
) {
    use tokio::io::AsyncWriteExt;
    let client = match core.peer(&node) {
        Ok(c) => c,
        Err(e) => {
            let error = TaskError::new(ErrorCode::PeerUnreachable, e.to_string()).with_node(node.to_string());
            let _ = write_message(&mut stream, &cerana_protocol::FromCoordinator::Refused(error)).await;
            return;
        }
    };
    let welcome = cerana_protocol::FromCoordinator::Welcome(cerana_protocol::Welcome {
        coordinator: core.config.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: cerana_protocol::PROTOCOL_VERSION,
    });
    match direction {
        StreamDirection::Get => {
            let body = match client.stream_get(id).await {
                Ok(body) => body,
                Err(e) => {
                    let error = TaskError::new(ErrorCode::StreamError, e.to_string()).with_node(node.to_string());
                    let _ = write_message(&mut stream, &cerana_protocol::FromCoordinator::Refused(error)).await;
                    return;
                }
            };
            if write_message(&mut stream, &welcome).await.is_err() {
                return;
            }
            let mut body = body;
            loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            for piece in data.chunks(cerana_protocol::stream::MAX_CHUNK_LEN) {
                                let header = (piece.len() as u32).to_be_bytes();
                                if stream.write_all(&header).await.is_err() || stream.write_all(piece).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Some(Err(_)) => return, // remote producer vanished: no end marker
                    None => {
                        let _ = stream.write_all(&[0, 0, 0, 0]).await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
            }
        }
        StreamDirection::Put => {
            if write_message(&mut stream, &welcome).await.is_err() {
                return;
            }
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(pump_from_unix(stream, tx));
            let frames = futures_util::TryStreamExt::map_ok(consumer_stream(rx), hyper::body::Frame::data);
            let body = BodyExt::boxed(http_body_util::StreamBody::new(frames));
            if let Err(e) = client.stream_put(id, body).await {
                tracing::warn!(%node, %id, "remote stream upload failed: {e}");
            }
        }
    }
}

async fn write_message(stream: &mut UnixStream, message: &cerana_protocol::FromCoordinator) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut frame = Vec::new();
    cerana_protocol::frame::encode_json_into(&mut frame, message).map_err(std::io::Error::other)?;
    stream.write_all(&frame).await
}

/// Serves the API on `listener`, over TLS when `tls` is given. Connections over `admission`'s
/// caps are answered 503 `busy` (plain HTTP; over TLS they are only closed) and closed at once;
/// every request body fails when its bytes stop coming for `body_idle_timeout`.
pub async fn serve(
    core: Arc<Core>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    admission: cerana_netlimits::Admission,
) {
    let limits = ConnectionLimits::of(&core.config);
    let app = router(core.clone());
    let plain = tls.is_none();
    loop {
        let (tcp, peer, permit) = cerana_netlimits::accept_admitted(&listener, &admission, |refused| {
            plain.then(|| cerana_netlimits::busy_http_response(refused))
        })
        .await;
        let _ = tcp.set_nodelay(true);
        let (app, tls, core) = (app.clone(), tls.clone(), core.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let acceptor = match (tls, core.node_tls.as_ref().and_then(|watch| watch.current())) {
                (Some(acceptor), _) => Some(acceptor),
                // Before the node has its certificate: plain HTTP, as a node outside a cluster.
                (None, None) => None,
                (None, Some(loaded)) => match first_byte(&tcp, limits).await {
                    None => return,
                    Some(first) => match crate::node_tls::admit(first, peer.ip().is_loopback()) {
                        crate::node_tls::Admit::Tls => Some(loaded.acceptor.clone()),
                        crate::node_tls::Admit::Plain => None,
                        crate::node_tls::Admit::RefusePlain => return refuse_plain_http(tcp, peer).await,
                    },
                },
            };
            let result = match acceptor {
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let node = peer_node(&stream, peer.ip());
                        serve_connection_of(app, stream, peer, node, limits).await
                    }
                    Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                },
                None => serve_connection(app, tcp, peer, limits).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
}

/// The first byte a client sends, without taking it; none if nothing comes in time.
async fn first_byte(tcp: &tokio::net::TcpStream, limits: ConnectionLimits) -> Option<u8> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.header_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0]),
        _ => None,
    }
}

/// The answer to plain HTTP from off a node that speaks TLS: a JSON error saying so. The
/// request is read (up to 64 KiB, for a second) before the connection closes, so the close
/// does not reset it under the answer.
async fn refuse_plain_http(mut tcp: tokio::net::TcpStream, peer: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tracing::debug!(%peer, "plain HTTP from off the node refused: HTTPS only");
    let error = TaskError::new(
        ErrorCode::PermissionDenied,
        "this node's API takes HTTPS (a certificate from the cluster CA); plain HTTP only from the node itself",
    );
    let body = serde_json::to_string(&ApiErrorBody { error }).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut drained = 0usize;
        let mut buf = [0u8; 4096];
        while drained < 64 * 1024 {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The clocks of one HTTP connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// For each request head, and so for a kept-alive connection's idle time.
    pub header_timeout: Duration,
    /// The longest pause within any request body.
    pub body_idle_timeout: Duration,
}

impl ConnectionLimits {
    pub fn of(config: &crate::Config) -> Self {
        ConnectionLimits { header_timeout: config.header_timeout, body_idle_timeout: config.body_idle_timeout }
    }
}

/// Serves the API's HTTP/1.1 on one admitted connection (after TLS, if any) until it ends: the
/// listener's TCP and TLS connections, and the fuzz target's in-memory pipes.
pub async fn serve_connection<I>(app: Router, io: I, peer: SocketAddr, limits: ConnectionLimits) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_of(app, io, peer, None, limits).await
}

/// [`serve_connection`] for a client that proved, with its certificate, to be `node`.
async fn serve_connection_of<I>(
    app: Router,
    io: I,
    peer: SocketAddr,
    node: Option<PeerNode>,
    limits: ConnectionLimits,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let body_idle_timeout = limits.body_idle_timeout;
    let service = TowerToHyperService::new(tower::ServiceExt::map_request(
        app,
        move |req: http::Request<hyper::body::Incoming>| {
            let mut req = req.map(|body| Body::new(cerana_netlimits::ProgressTimeout::new(body, body_idle_timeout)));
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            if let Some(node) = &node {
                req.extensions_mut().insert(node.clone());
            }
            req
        },
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A client may shut its sending side once its request is out (`printf ... | nc -N`): it
    // still gets the answer (RFC 9112 §9.6); the clocks and caps bound what it holds.
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).half_close(true);
    builder.serve_connection(TokioIo::new(io), service).await
}

/// Loads a rustls server configuration from PEM files; with `client_ca`, client certificates
/// from that CA are asked for (not required: bearer-token clients have none) and verified.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &certs[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for ca in rustls_pemfile::certs(&mut &pem[..]) {
                roots.add(ca.map_err(|e| format!("{}: {e}", path.display()))?).map_err(|e| e.to_string())?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The node a TLS client proved to be: the first DNS name of its verified certificate (the
/// cluster CA names each node certificate after its node and its addresses). A certificate
/// presented from an address it does not name is another node's, or a stolen one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerNode {
    Named(String),
    Elsewhere { name: String, from: IpAddr },
}

fn peer_node<IO>(stream: &tokio_rustls::server::TlsStream<IO>, from: IpAddr) -> Option<PeerNode> {
    let der = stream.get_ref().1.peer_certificates()?.first()?;
    certified_node(der, from)
}

/// [`PeerNode`] of a verified certificate presented from `from` (loopback: the node itself).
pub fn certified_node(der: &rustls::pki_types::CertificateDer<'_>, from: IpAddr) -> Option<PeerNode> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    let name = cert.valid_dns_names().next()?.to_owned();
    let address = rustls::pki_types::ServerName::IpAddress(from.into());
    if from.is_loopback() || cert.verify_is_valid_for_subject_name(&address).is_ok() {
        Some(PeerNode::Named(name))
    } else {
        Some(PeerNode::Elsewhere { name, from })
    }
}
