//! The stream broker: pairs the producer and the consumer of a byte stream.
//!
//! Two ways to carry the bytes:
//! - **channel**: the coordinator moves chunks between the two connections through a small
//!   bounded channel, so gigabytes pass with bounded memory and a slow consumer slows the
//!   producer down. Remote (HTTP) ends and clients that only speak chunk frames use it.
//! - **pipe**: when the first end to arrive accepts a pipe, the broker makes one and hands that
//!   end its side at once. A second end that accepts a pipe gets the other side, and from then
//!   on the bytes go from process to process without passing through the coordinator; only
//!   the producer's verdict (did the stream end cleanly?) is relayed. A second end that cannot
//!   take a pipe is joined to it by a pump in the coordinator.
//!
//! The pumps between a channel and a unix connection (chunk frames) live here too; the unix
//! socket and the HTTP API's remote streams both use them.

use bytes::{Bytes, BytesMut};
use cerana_protocol::stream::{DEFAULT_CHUNK_LEN, MAX_CHUNK_LEN};
use cerana_protocol::{ErrorCode, StreamDirection, StreamId, TaskError};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// Chunks buffered per stream; with 256 KiB chunks that is 2 MiB at most.
const CHANNEL_CHUNKS: usize = 8;

/// A pipe stream's buffer: 1 MiB instead of 64 KiB, so producer and consumer wake up less.
const PIPE_BYTES: usize = 1024 * 1024;

/// What travels from producer to consumer. A closed channel without `End` means the producer
/// vanished.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    End,
}

/// How a pipe stream ended, as its producer said.
pub type Verdict = Result<(), TaskError>;

pub fn producer_vanished() -> TaskError {
    TaskError::new(ErrorCode::StreamError, "the stream's producer vanished before the end of the stream")
}

/// The end of a stream a connection obtained.
#[derive(Debug)]
pub enum StreamEnd {
    Producer(mpsc::Sender<Piece>),
    Consumer(mpsc::Receiver<Piece>),
    /// The write side of the stream's pipe; the producer's verdict goes to `verdict`.
    PipeProducer {
        pipe: OwnedFd,
        verdict: oneshot::Sender<Verdict>,
    },
    /// The read side of the stream's pipe; the producer's verdict arrives on `verdict`.
    PipeConsumer {
        pipe: OwnedFd,
        verdict: oneshot::Receiver<Verdict>,
    },
}

/// What a stream keeps for the end that has not arrived yet.
#[derive(Debug)]
enum Waiting {
    Channel {
        tx: Option<mpsc::Sender<Piece>>,
        rx: Option<mpsc::Receiver<Piece>>,
    },
    /// The first end was a pipe producer: the read side waits for the consumer.
    PipeRead {
        pipe: OwnedFd,
        verdict: oneshot::Receiver<Verdict>,
    },
    /// The first end was a pipe consumer: the write side waits for the producer.
    PipeWrite {
        pipe: OwnedFd,
        verdict: oneshot::Sender<Verdict>,
    },
}

#[derive(Debug)]
struct Slot {
    waiting: Waiting,
    created: Instant,
}

/// Why a stream end could not be claimed.
fn already_claimed(id: StreamId, direction: StreamDirection) -> TaskError {
    TaskError::new(ErrorCode::StreamError, format!("stream {id} already has a {direction:?} end").to_lowercase())
}

#[derive(Debug)]
pub struct StreamBroker {
    slots: Mutex<HashMap<StreamId, Slot>>,
    rendezvous: Duration,
}

impl StreamBroker {
    pub fn new(rendezvous: Duration) -> Self {
        Self { slots: Mutex::new(HashMap::new()), rendezvous }
    }

    /// Claims one end of stream `id`, creating the stream when this is the first end to arrive.
    /// `accept_pipe` says the end can take a pipe instead of a channel. Pumps that join a pipe
    /// to a channel are spawned on the current tokio runtime.
    pub fn claim(&self, id: StreamId, direction: StreamDirection, accept_pipe: bool) -> Result<StreamEnd, TaskError> {
        let mut slots = self.slots.lock().expect("streams lock");
        let Some(slot) = slots.remove(&id) else {
            let (end, waiting) = first_end(direction, accept_pipe)?;
            slots.insert(id, Slot { waiting, created: Instant::now() });
            return Ok(end);
        };
        let created = slot.created;
        let keep = |slots: &mut HashMap<StreamId, Slot>, waiting| {
            slots.insert(id, Slot { waiting, created });
        };
        match (slot.waiting, direction) {
            (Waiting::Channel { tx, rx }, StreamDirection::Put) => match tx {
                Some(tx) => {
                    if rx.is_some() {
                        keep(&mut slots, Waiting::Channel { tx: None, rx });
                    }
                    Ok(StreamEnd::Producer(tx))
                }
                None => {
                    keep(&mut slots, Waiting::Channel { tx, rx });
                    Err(already_claimed(id, direction))
                }
            },
            (Waiting::Channel { tx, rx }, StreamDirection::Get) => match rx {
                Some(rx) => {
                    if tx.is_some() {
                        keep(&mut slots, Waiting::Channel { tx, rx: None });
                    }
                    Ok(StreamEnd::Consumer(rx))
                }
                None => {
                    keep(&mut slots, Waiting::Channel { tx, rx });
                    Err(already_claimed(id, direction))
                }
            },
            (Waiting::PipeRead { pipe, verdict }, StreamDirection::Get) if accept_pipe => {
                Ok(StreamEnd::PipeConsumer { pipe, verdict })
            }
            (Waiting::PipeRead { pipe, verdict }, StreamDirection::Get) => {
                Ok(StreamEnd::Consumer(pump_pipe_to_channel(pipe, verdict)?))
            }
            (Waiting::PipeWrite { pipe, verdict }, StreamDirection::Put) if accept_pipe => {
                Ok(StreamEnd::PipeProducer { pipe, verdict })
            }
            (Waiting::PipeWrite { pipe, verdict }, StreamDirection::Put) => {
                Ok(StreamEnd::Producer(pump_channel_to_pipe(pipe, verdict)?))
            }
            (waiting, direction) => {
                keep(&mut slots, waiting);
                Err(already_claimed(id, direction))
            }
        }
    }

    /// Drops streams whose second end never arrived in time; the waiting end then sees the
    /// stream fail instead of hanging.
    pub fn sweep(&self) -> usize {
        let mut slots = self.slots.lock().expect("streams lock");
        let before = slots.len();
        slots.retain(|_, slot| slot.created.elapsed() < self.rendezvous);
        before - slots.len()
    }

    pub fn waiting(&self) -> usize {
        self.slots.lock().expect("streams lock").len()
    }
}

fn pipe_failure(e: std::io::Error) -> TaskError {
    TaskError::new(ErrorCode::Internal, format!("cannot make a pipe for the stream: {e}"))
}

/// The end the first arrival gets, and what the stream keeps for the second.
fn first_end(direction: StreamDirection, accept_pipe: bool) -> Result<(StreamEnd, Waiting), TaskError> {
    if !accept_pipe {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        return Ok(match direction {
            StreamDirection::Put => (StreamEnd::Producer(tx), Waiting::Channel { tx: None, rx: Some(rx) }),
            StreamDirection::Get => (StreamEnd::Consumer(rx), Waiting::Channel { tx: Some(tx), rx: None }),
        });
    }
    let (read, write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| pipe_failure(e.into()))?;
    if let Err(e) = rustix::pipe::fcntl_setpipe_size(&write, PIPE_BYTES) {
        // Above /proc/sys/fs/pipe-max-size: the default size only costs speed.
        tracing::debug!("F_SETPIPE_SZ on a stream pipe: {e}");
    }
    let (verdict_tx, verdict_rx) = oneshot::channel();
    Ok(match direction {
        StreamDirection::Put => (
            StreamEnd::PipeProducer { pipe: write, verdict: verdict_tx },
            Waiting::PipeRead { pipe: read, verdict: verdict_rx },
        ),
        StreamDirection::Get => (
            StreamEnd::PipeConsumer { pipe: read, verdict: verdict_rx },
            Waiting::PipeWrite { pipe: write, verdict: verdict_tx },
        ),
    })
}

/// Serves a channel consumer from a pipe producer: chunks as they come, and the end marker
/// only when the producer says the stream ended cleanly.
fn pump_pipe_to_channel(
    pipe: OwnedFd,
    verdict: oneshot::Receiver<Verdict>,
) -> Result<mpsc::Receiver<Piece>, TaskError> {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe).map_err(pipe_failure)?;
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(async move {
        loop {
            let mut chunk = BytesMut::with_capacity(DEFAULT_CHUNK_LEN);
            match pipe.read_buf(&mut chunk).await {
                Ok(0) => break,
                Ok(_) => {
                    if tx.send(Piece::Data(chunk.freeze())).await.is_err() {
                        return; // consumer gone: dropping the pipe tells the producer
                    }
                }
                Err(e) => {
                    tracing::warn!("reading a stream pipe: {e}");
                    return;
                }
            }
        }
        match verdict.await {
            Ok(Ok(())) => {
                let _ = tx.send(Piece::End).await;
            }
            Ok(Err(e)) => tracing::info!("a stream's producer failed: {e}"),
            Err(_) => tracing::info!("a stream's producer vanished"),
        }
    });
    Ok(rx)
}

/// Feeds a pipe consumer from a channel producer, then tells it how the stream ended.
fn pump_channel_to_pipe(pipe: OwnedFd, verdict: oneshot::Sender<Verdict>) -> Result<mpsc::Sender<Piece>, TaskError> {
    let mut pipe = tokio::net::unix::pipe::Sender::from_owned_fd(pipe).map_err(pipe_failure)?;
    let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(async move {
        let outcome = loop {
            match rx.recv().await {
                Some(Piece::Data(bytes)) => {
                    if let Err(e) = pipe.write_all(&bytes).await {
                        // The consumer stopped reading; closing the channel tells the producer.
                        break Err(TaskError::new(
                            ErrorCode::StreamError,
                            format!("the stream's consumer stopped reading: {e}"),
                        ));
                    }
                }
                Some(Piece::End) => break Ok(()),
                None => break Err(producer_vanished()),
            }
        };
        // End of file first, then the verdict that says what it means.
        drop(pipe);
        drop(rx);
        let _ = verdict.send(outcome);
    });
    Ok(tx)
}

/// Reads chunk frames from a producer's connection into the stream.
pub async fn pump_from_unix(stream: UnixStream, tx: mpsc::Sender<Piece>) {
    let mut reader = BufReader::with_capacity(MAX_CHUNK_LEN + 4, stream);
    loop {
        let mut header = [0u8; 4];
        if reader.read_exact(&mut header).await.is_err() {
            return; // producer vanished: dropping tx tells the consumer
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_CHUNK_LEN {
            tracing::warn!(len, "stream chunk over the limit; dropping the stream");
            return;
        }
        if len == 0 {
            let _ = tx.send(Piece::End).await;
            let mut stream = reader.into_inner();
            let _ = stream.shutdown().await;
            return;
        }
        let mut chunk = BytesMut::zeroed(len);
        if reader.read_exact(&mut chunk).await.is_err() {
            return;
        }
        if tx.send(Piece::Data(chunk.freeze())).await.is_err() {
            return; // consumer gone: closing tells the producer
        }
    }
}

/// Writes the stream's chunks to a consumer's connection; no end marker if the producer vanished.
pub async fn pump_to_unix(mut stream: UnixStream, mut rx: mpsc::Receiver<Piece>) {
    while let Some(piece) = rx.recv().await {
        let chunk = match &piece {
            Piece::Data(bytes) => &bytes[..],
            Piece::End => &[][..],
        };
        let header = (chunk.len() as u32).to_be_bytes();
        if stream.write_all(&header).await.is_err() || stream.write_all(chunk).await.is_err() {
            return;
        }
        if matches!(piece, Piece::End) {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ends_pair_once_and_unpaired_streams_expire() {
        let broker = StreamBroker::new(Duration::from_millis(10));
        let id = StreamId::random();
        let StreamEnd::Consumer(mut rx) = broker.claim(id, StreamDirection::Get, false).unwrap() else { panic!() };
        assert!(broker.claim(id, StreamDirection::Get, false).is_err(), "a second consumer is refused");
        let StreamEnd::Producer(tx) = broker.claim(id, StreamDirection::Put, false).unwrap() else { panic!() };
        assert_eq!(broker.waiting(), 0, "a paired stream leaves the broker");
        tx.send(Piece::Data(Bytes::from_static(b"x"))).await.unwrap();
        assert!(matches!(rx.recv().await, Some(Piece::Data(_))));

        let lonely = StreamId::random();
        let StreamEnd::Consumer(mut rx) = broker.claim(lonely, StreamDirection::Get, false).unwrap() else { panic!() };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(broker.sweep(), 1);
        assert!(rx.recv().await.is_none(), "the consumer sees the producer never came");
    }

    fn write_all(fd: &OwnedFd, bytes: &[u8]) {
        use std::io::Write;
        std::fs::File::from(fd.try_clone().unwrap()).write_all(bytes).unwrap();
    }

    fn read_to_end(fd: OwnedFd) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn two_pipe_ends_share_one_pipe_and_the_verdict_is_relayed() {
        let broker = StreamBroker::new(Duration::from_secs(10));
        let id = StreamId::random();
        let StreamEnd::PipeProducer { pipe: write, verdict: said } =
            broker.claim(id, StreamDirection::Put, true).unwrap()
        else {
            panic!()
        };
        assert!(broker.claim(id, StreamDirection::Put, true).is_err(), "a second producer is refused");
        write_all(&write, b"straight through");
        drop(write);
        let StreamEnd::PipeConsumer { pipe: read, verdict: heard } =
            broker.claim(id, StreamDirection::Get, true).unwrap()
        else {
            panic!()
        };
        assert_eq!(broker.waiting(), 0);
        assert_eq!(read_to_end(read), b"straight through");
        said.send(Err(TaskError::new(ErrorCode::Failed, "zfs send failed"))).unwrap();
        assert_eq!(heard.await.unwrap().unwrap_err().message, "zfs send failed");
    }

    #[tokio::test]
    async fn a_channel_consumer_of_a_pipe_producer_gets_the_end_marker_only_on_success() {
        for success in [true, false] {
            let broker = StreamBroker::new(Duration::from_secs(10));
            let id = StreamId::random();
            let StreamEnd::PipeProducer { pipe, verdict } = broker.claim(id, StreamDirection::Put, true).unwrap()
            else {
                panic!()
            };
            let StreamEnd::Consumer(mut rx) = broker.claim(id, StreamDirection::Get, false).unwrap() else { panic!() };
            write_all(&pipe, b"abc");
            drop(pipe);
            verdict.send(if success { Ok(()) } else { Err(producer_vanished()) }).unwrap();
            let mut data = Vec::new();
            let mut ended = false;
            while let Some(piece) = rx.recv().await {
                match piece {
                    Piece::Data(bytes) => data.extend_from_slice(&bytes),
                    Piece::End => ended = true,
                }
            }
            assert_eq!((data.as_slice(), ended), (&b"abc"[..], success));
        }
    }

    #[tokio::test]
    async fn a_pipe_consumer_of_a_channel_producer_hears_how_it_ended() {
        for finish in [true, false] {
            let broker = StreamBroker::new(Duration::from_secs(10));
            let id = StreamId::random();
            let StreamEnd::PipeConsumer { pipe, verdict } = broker.claim(id, StreamDirection::Get, true).unwrap()
            else {
                panic!()
            };
            let StreamEnd::Producer(tx) = broker.claim(id, StreamDirection::Put, false).unwrap() else { panic!() };
            tx.send(Piece::Data(Bytes::from_static(b"chunk"))).await.unwrap();
            if finish {
                tx.send(Piece::End).await.unwrap();
            }
            drop(tx);
            let data = tokio::task::spawn_blocking(move || read_to_end(pipe)).await.unwrap();
            assert_eq!(data, b"chunk");
            assert_eq!(verdict.await.unwrap().is_ok(), finish);
        }
    }

    #[tokio::test]
    async fn an_unpaired_pipe_stream_expires_and_its_end_sees_end_of_file() {
        let broker = StreamBroker::new(Duration::from_millis(10));
        let StreamEnd::PipeConsumer { pipe, verdict } =
            broker.claim(StreamId::random(), StreamDirection::Get, true).unwrap()
        else {
            panic!()
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(broker.sweep(), 1);
        assert!(read_to_end(pipe).is_empty());
        assert!(verdict.await.is_err(), "no producer ever said the stream ended");
    }
}
