//! Stream ends that take a pipe when the coordinator offers one.
//!
//! A process that can hand a file descriptor to a child (`zfs send`'s stdout, `zfs receive`'s
//! stdin) opens its end with [`open_output`] or [`open_input`]. When the coordinator pairs it
//! with another pipe end, the bytes flow through one kernel pipe between the two processes and
//! the connection carries only the verdict: the producer says how the stream ended once its
//! write side is closed, and the consumer must hear that verdict before it trusts what it read.
//! Otherwise the end speaks chunk frames as before.

use crate::unix_client::connect;
use crate::ClientError;
use cerana_protocol::fd_frame::read_frame_with_fd;
use cerana_protocol::frame::{encode_json_into, read_frame, MAX_FRAME_LEN};
use cerana_protocol::stream::{ChunkReader, ChunkWriter, StreamError};
use cerana_protocol::{FromCoordinator, StreamDirection, StreamHandle, TaskError, ToCoordinator};
use std::os::fd::OwnedFd;
use std::path::Path;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// The consumer end of a stream.
#[derive(Debug)]
pub enum InputEnd {
    Chunks(ChunkReader<UnixStream>),
    /// Read the pipe to its end of file, then ask [`PipeVerdict::wait`] whether that was the
    /// whole stream.
    Pipe {
        pipe: OwnedFd,
        verdict: PipeVerdict,
    },
}

/// The producer end of a stream.
#[derive(Debug)]
pub enum OutputEnd {
    Chunks(ChunkWriter<UnixStream>),
    /// Write the pipe, close every copy of it, then say how it went with [`PipeFinish::finish`].
    Pipe {
        pipe: OwnedFd,
        finish: PipeFinish,
    },
}

/// Where a pipe consumer hears how the stream ended.
#[derive(Debug)]
pub struct PipeVerdict(UnixStream);

impl PipeVerdict {
    /// Waits for the producer's verdict. A producer that vanished or failed is an error: the
    /// bytes read from the pipe are then not the whole stream.
    pub async fn wait(mut self) -> Result<(), StreamError> {
        let mut buf = Vec::new();
        match read_frame(&mut self.0, &mut buf, MAX_FRAME_LEN).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Err(StreamError::PeerVanished),
        }
        match serde_json::from_slice::<FromCoordinator>(&buf) {
            Ok(FromCoordinator::StreamEnd { error: None }) => Ok(()),
            Ok(FromCoordinator::StreamEnd { error: Some(e) }) => Err(StreamError::ProducerFailed(e)),
            Ok(_) | Err(_) => Err(StreamError::PeerVanished),
        }
    }
}

/// Where a pipe producer says how the stream ended.
#[derive(Debug)]
pub struct PipeFinish(UnixStream);

impl PipeFinish {
    /// Sends the verdict. Call it only after the pipe's write side is closed everywhere (the
    /// child that wrote it has exited), so the consumer has seen every byte by the time it
    /// hears the stream is complete.
    pub async fn finish(mut self, outcome: Result<(), TaskError>) -> Result<(), ClientError> {
        let mut frame = Vec::new();
        encode_json_into(&mut frame, &ToCoordinator::StreamEnd { error: outcome.err() })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.0.write_all(&frame).await?;
        self.0.shutdown().await?;
        Ok(())
    }
}

/// Opens an end with `accept_pipe`; the pipe is there when the coordinator gave one.
async fn open_accepting_pipe(
    path: &Path,
    stream: StreamHandle,
    direction: StreamDirection,
) -> Result<(UnixStream, Option<OwnedFd>), ClientError> {
    let mut socket = connect(path).await?;
    let mut hello = Vec::new();
    encode_json_into(&mut hello, &ToCoordinator::StreamOpen { stream, direction, accept_pipe: true })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    socket.write_all(&hello).await?;
    let mut buf = Vec::new();
    let fd = match read_frame_with_fd(&mut socket, &mut buf).await {
        Ok(Some(fd)) => fd,
        Ok(None) => return Err(ClientError::Closed),
        Err(e) => return Err(ClientError::Protocol(e.to_string())),
    };
    match serde_json::from_slice::<FromCoordinator>(&buf) {
        Ok(FromCoordinator::Welcome(_)) => Ok((socket, None)),
        Ok(FromCoordinator::StreamPipe(_)) => match fd {
            Some(fd) => Ok((socket, Some(fd))),
            None => Err(ClientError::Protocol("a pipe welcome arrived without its pipe".into())),
        },
        Ok(FromCoordinator::Refused(e)) => Err(ClientError::Refused(e)),
        Ok(other) => Err(ClientError::Protocol(format!("expected a welcome, got {other:?}"))),
        Err(e) => Err(ClientError::Protocol(format!("malformed welcome: {e}"))),
    }
}

/// Opens the consumer end of `stream`, as a pipe when the coordinator can give one.
pub async fn open_input(path: &Path, stream: StreamHandle) -> Result<InputEnd, ClientError> {
    Ok(match open_accepting_pipe(path, stream, StreamDirection::Get).await? {
        (socket, None) => InputEnd::Chunks(ChunkReader::new(socket)),
        (socket, Some(pipe)) => InputEnd::Pipe { pipe, verdict: PipeVerdict(socket) },
    })
}

/// Opens the producer end of `stream`, as a pipe when the coordinator can give one.
pub async fn open_output(path: &Path, stream: StreamHandle) -> Result<OutputEnd, ClientError> {
    Ok(match open_accepting_pipe(path, stream, StreamDirection::Put).await? {
        (socket, None) => OutputEnd::Chunks(ChunkWriter::new(socket)),
        (socket, Some(pipe)) => OutputEnd::Pipe { pipe, finish: PipeFinish(socket) },
    })
}
