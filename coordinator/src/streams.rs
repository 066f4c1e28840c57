//! The stream broker: pairs the producer and the consumer of a byte stream and moves chunks
//! between them through a small bounded channel, so gigabytes pass with bounded memory and a
//! slow consumer slows the producer down.

use bytes::Bytes;
use cerana_protocol::{ErrorCode, StreamDirection, StreamId, TaskError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Chunks buffered per stream; with 256 KiB chunks that is 2 MiB at most.
const CHANNEL_CHUNKS: usize = 8;

/// What travels from producer to consumer. A closed channel without `End` means the producer
/// vanished.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    End,
}

/// The end of a stream a connection obtained.
#[derive(Debug)]
pub enum StreamEnd {
    Producer(mpsc::Sender<Piece>),
    Consumer(mpsc::Receiver<Piece>),
}

#[derive(Debug)]
struct Slot {
    tx: Option<mpsc::Sender<Piece>>,
    rx: Option<mpsc::Receiver<Piece>>,
    created: Instant,
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
    pub fn claim(&self, id: StreamId, direction: StreamDirection) -> Result<StreamEnd, TaskError> {
        let mut slots = self.slots.lock().expect("streams lock");
        let slot = slots.entry(id).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
            Slot { tx: Some(tx), rx: Some(rx), created: Instant::now() }
        });
        let end = match direction {
            StreamDirection::Put => slot.tx.take().map(StreamEnd::Producer),
            StreamDirection::Get => slot.rx.take().map(StreamEnd::Consumer),
        };
        if slot.tx.is_none() && slot.rx.is_none() {
            slots.remove(&id);
        }
        end.ok_or_else(|| {
            TaskError::new(ErrorCode::StreamError, format!("stream {id} already has a {direction:?} end").to_lowercase())
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ends_pair_once_and_unpaired_streams_expire() {
        let broker = StreamBroker::new(Duration::from_millis(10));
        let id = StreamId::random();
        let StreamEnd::Consumer(mut rx) = broker.claim(id, StreamDirection::Get).unwrap() else { panic!() };
        assert!(broker.claim(id, StreamDirection::Get).is_err(), "a second consumer is refused");
        let StreamEnd::Producer(tx) = broker.claim(id, StreamDirection::Put).unwrap() else { panic!() };
        assert_eq!(broker.waiting(), 0, "a paired stream leaves the broker");
        tx.send(Piece::Data(Bytes::from_static(b"x"))).await.unwrap();
        assert!(matches!(rx.recv().await, Some(Piece::Data(_))));

        let lonely = StreamId::random();
        let StreamEnd::Consumer(mut rx) = broker.claim(lonely, StreamDirection::Get).unwrap() else { panic!() };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(broker.sweep(), 1);
        assert!(rx.recv().await.is_none(), "the consumer sees the producer never came");
    }
}
