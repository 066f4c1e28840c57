//! One connection's outgoing queue: what the router answers on and the registry keeps per
//! provider.

use cerana_protocol::frame::{encode_json_into, FrameError};
use cerana_protocol::FromCoordinator;
use tokio::sync::mpsc;

/// Frames queued for one connection's writer.
#[derive(Debug, Clone)]
pub struct ConnSender(mpsc::UnboundedSender<Vec<u8>>);

impl ConnSender {
    pub fn new(tx: mpsc::UnboundedSender<Vec<u8>>) -> Self {
        Self(tx)
    }

    /// Queues `message`; false when the connection is gone or it cannot be framed.
    pub fn send(&self, message: &FromCoordinator) -> bool {
        match encode(message) {
            Ok(frame) => self.send_frame(frame).is_ok(),
            Err(e) => {
                tracing::error!("cannot encode a message: {e}");
                false
            }
        }
    }

    /// Queues an encoded frame; gives it back when the connection is gone.
    pub fn send_frame(&self, frame: Vec<u8>) -> Result<(), Vec<u8>> {
        self.0.send(frame).map_err(|e| e.0)
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// `message` as one frame; [`FrameError::TooLarge`] when it exceeds the frame limit.
pub fn encode(message: &FromCoordinator) -> Result<Vec<u8>, FrameError> {
    let mut frame = Vec::with_capacity(256);
    encode_json_into(&mut frame, message)?;
    Ok(frame)
}
