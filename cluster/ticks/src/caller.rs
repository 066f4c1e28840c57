//! Tasks the ticks send: to this node's coordinator, and through it to other nodes.

use cerana_client::UnixClient;
use cerana_protocol::{ErrorCode, NodeUrl, Request, StreamHandle, Task, TaskError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One connection to the node's coordinator, made again after it fails.
#[derive(Debug)]
pub struct Caller {
    socket: PathBuf,
    client: tokio::sync::Mutex<Option<Arc<UnixClient>>>,
}

/// A task's result and the stream it returned, if any.
#[derive(Debug)]
pub struct Answer<O> {
    pub output: O,
    pub stream: Option<StreamHandle>,
}

impl Caller {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), client: tokio::sync::Mutex::new(None) }
    }

    async fn client(&self) -> Result<Arc<UnixClient>, TaskError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let connect = UnixClient::connect(&self.socket, "ticks");
        let client = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(client)) => Arc::new(client),
            Ok(Err(e)) => return Err(TaskError::new(ErrorCode::Unavailable, format!("the coordinator: {e}"))),
            Err(_) => return Err(TaskError::new(ErrorCode::Unavailable, "the coordinator does not answer")),
        };
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `T` on `node` (this node: `None`) with `stream` as its input, within `timeout`.
    pub async fn call<T: Task>(
        &self,
        node: Option<&NodeUrl>,
        args: &T::Args,
        stream: Option<StreamHandle>,
        timeout: Duration,
    ) -> Result<Answer<T::Output>, TaskError> {
        let client = self.client().await?;
        let mut request = Request::for_task::<T>(args)
            .map_err(|e| TaskError::new(ErrorCode::Internal, format!("cannot encode {}: {e}", T::NAME)))?;
        request.node = node.cloned();
        request.stream = stream;
        request.timeout_ms = Some(timeout.as_millis() as u64);
        let answer = tokio::time::timeout(timeout + Duration::from_secs(2), client.call(request)).await;
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                *self.client.lock().await = None;
                return Err(TaskError::new(ErrorCode::Unavailable, format!("{}: {e}", T::NAME)));
            }
            Err(_) => return Err(TaskError::new(ErrorCode::Timeout, format!("{} did not answer in time", T::NAME))),
        };
        let stream = response.stream.clone();
        Ok(Answer { output: response.decode()?, stream })
    }
}
