//! What a handler gets besides its arguments: the request's identity, its input stream, and a
//! way to send sub-tasks through the coordinator.

use cerana_client::{open_input, open_output, open_stream, InputEnd, OutputEnd};
use cerana_protocol::frame::encode_json_into;
use cerana_protocol::stream::{ChunkReader, ChunkWriter};
use cerana_protocol::{
    ErrorCode, NodeUrl, Request, RequestId, Response, StreamDirection, StreamHandle, StreamId, Task, TaskError,
    ToCoordinator,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

pub(crate) type SubTaskWaiters = Arc<Mutex<HashMap<RequestId, oneshot::Sender<Response>>>>;

/// The provider's connection, shared by all handlers.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub outgoing: mpsc::UnboundedSender<Vec<u8>>,
    pub waiters: SubTaskWaiters,
    pub socket: PathBuf,
}

/// Per-request context passed to handlers.
#[derive(Debug, Clone)]
pub struct Context {
    request_id: RequestId,
    input: Option<StreamHandle>,
    output: Arc<Mutex<Option<StreamHandle>>>,
    link: Link,
}

fn stream_failure(e: impl std::fmt::Display) -> TaskError {
    TaskError::new(ErrorCode::StreamError, e.to_string())
}

impl Context {
    pub(crate) fn new(request_id: RequestId, input: Option<StreamHandle>, link: Link) -> Self {
        Self { request_id, input, output: Arc::default(), link }
    }

    pub fn request_id(&self) -> RequestId {
        self.request_id
    }

    /// The stream the caller attached to the request, if any.
    pub fn input_stream_handle(&self) -> Option<&StreamHandle> {
        self.input.as_ref()
    }

    pub(crate) fn take_output(&self) -> Option<StreamHandle> {
        self.output.lock().expect("output lock").take()
    }

    /// Runs a typed sub-task through the coordinator.
    pub async fn call<T: Task>(&self, args: &T::Args) -> Result<T::Output, TaskError> {
        let request = Request::for_task::<T>(args)
            .map_err(|e| TaskError::new(ErrorCode::Internal, format!("cannot encode arguments of {}: {e}", T::NAME)))?;
        self.call_request(request).await?.decode()
    }

    /// Runs a typed sub-task on another node, through both coordinators.
    pub async fn call_on<T: Task>(&self, node: NodeUrl, args: &T::Args) -> Result<T::Output, TaskError> {
        let mut request = Request::for_task::<T>(args)
            .map_err(|e| TaskError::new(ErrorCode::Internal, format!("cannot encode arguments of {}: {e}", T::NAME)))?;
        request.node = Some(node);
        self.call_request(request).await?.decode()
    }

    /// Sends a prepared sub-task request (its `parent` is set to this request).
    pub async fn call_request(&self, mut request: Request) -> Result<Response, TaskError> {
        request.parent = Some(self.request_id);
        let id = request.id;
        let mut frame = Vec::with_capacity(256);
        encode_json_into(&mut frame, &ToCoordinator::Request(request))
            .map_err(|e| TaskError::new(ErrorCode::Internal, e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.link.waiters.lock().expect("waiters lock").insert(id, tx);
        let lost = || TaskError::new(ErrorCode::Unavailable, "the connection to the coordinator was lost");
        if self.link.outgoing.send(frame).is_err() {
            self.link.waiters.lock().expect("waiters lock").remove(&id);
            return Err(lost());
        }
        rx.await.map_err(|_| lost())
    }

    /// Opens the request's input stream for reading.
    pub async fn input_stream(&self) -> Result<ChunkReader<UnixStream>, TaskError> {
        let handle = self
            .input
            .clone()
            .ok_or_else(|| TaskError::new(ErrorCode::InvalidArgs, "this task needs an input stream"))?;
        let socket = open_stream(&self.link.socket, handle, StreamDirection::Get).await.map_err(stream_failure)?;
        Ok(ChunkReader::new(socket))
    }

    /// Opens the request's input stream, as a pipe when the coordinator can give one (see
    /// [`InputEnd`]): for handlers that feed the stream to a child process.
    pub async fn input(&self) -> Result<InputEnd, TaskError> {
        let handle = self
            .input
            .clone()
            .ok_or_else(|| TaskError::new(ErrorCode::InvalidArgs, "this task needs an input stream"))?;
        open_input(&self.link.socket, handle).await.map_err(stream_failure)
    }

    /// Opens a new output stream, as a pipe when the coordinator can give one (see
    /// [`OutputEnd`]); its handle is returned to the caller with the result.
    pub async fn output(&self) -> Result<OutputEnd, TaskError> {
        let handle = StreamHandle::local(StreamId::random());
        let end = open_output(&self.link.socket, handle.clone()).await.map_err(stream_failure)?;
        *self.output.lock().expect("output lock") = Some(handle);
        Ok(end)
    }

    /// Opens a new output stream; its handle is returned to the caller with the result. Write
    /// it from a spawned task and return: the caller starts reading after it gets the result.
    pub async fn output_stream(&self) -> Result<ChunkWriter<UnixStream>, TaskError> {
        let handle = StreamHandle::local(StreamId::random());
        let socket =
            open_stream(&self.link.socket, handle.clone(), StreamDirection::Put).await.map_err(stream_failure)?;
        *self.output.lock().expect("output lock") = Some(handle);
        Ok(ChunkWriter::new(socket))
    }
}
