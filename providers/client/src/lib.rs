//! Clients for a CeranaOS coordinator.
//!
//! [`UnixClient`] speaks the framed protocol on the node's socket and multiplexes many requests
//! over one connection. [`HttpClient`] talks to a coordinator's HTTP(S) API, as remote users and
//! peer coordinators do. [`Client`] is either, for tools that take `--node` or `--socket`.
//! [`init_control`] asks init's control socket (not the coordinator) directly.

mod http_client;
pub mod init_control;
mod pipe_stream;
mod unix_client;

pub use http_client::{ApiErrorBody, ClientIdentity, HttpClient};
pub use pipe_stream::{open_input, open_output, InputEnd, OutputEnd, PipeFinish, PipeVerdict};
pub use unix_client::{handshake, open_stream, UnixClient};

use cerana_protocol::{Request, Response, Task, TaskError};

/// Why a call to a coordinator failed before producing a task response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: std::io::Error },
    #[error("the coordinator refused the connection: {0}")]
    Refused(TaskError),
    #[error("the coordinator closed the connection before answering")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Api(TaskError),
    #[error("HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The structured error, when the coordinator gave one.
    pub fn task_error(&self) -> Option<&TaskError> {
        match self {
            ClientError::Refused(e) | ClientError::Api(e) => Some(e),
            _ => None,
        }
    }
}

/// A failed typed call: the transport failed, or the task did.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Task(#[from] TaskError),
}

/// A coordinator reached over its unix socket or over HTTP(S).
#[derive(Debug)]
pub enum Client {
    Unix(UnixClient),
    // Boxed: an HTTP client (TLS config, connection pool) is far larger than a unix one.
    Http(Box<HttpClient>),
}

impl Client {
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        match self {
            Client::Unix(c) => c.call(request).await,
            Client::Http(c) => c.call(&request).await,
        }
    }

    /// Runs a typed task and decodes its result.
    pub async fn run<T: Task>(&self, args: &T::Args) -> Result<T::Output, CallError> {
        let request =
            Request::for_task::<T>(args).map_err(|e| ClientError::Protocol(format!("cannot encode arguments: {e}")))?;
        Ok(self.call(request).await?.decode()?)
    }
}
