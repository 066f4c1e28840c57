//! One connection's outgoing queue: what the router answers on and the registry keeps per
//! provider.

use cerana_protocol::frame::encode_json_into;
use cerana_protocol::FromCoordinator;
use tokio::sync::mpsc;

/// Frames queued for one connection's writer.
#[derive(Debug, Clone)]
pub struct ConnSender(mpsc::UnboundedSender<Vec<u8>>);

impl ConnSender {
    pub fn new(tx: mpsc::UnboundedSender<Vec<u8>>) -> Self {
        Self(tx)
    }

    /// Queues `message`; false when the connection is gone.
    pub fn send(&self, message: &FromCoordinator) -> bool {
        let mut frame = Vec::with_capacity(256);
        if let Err(e) = encode_json_into(&mut frame, message) {
            tracing::error!("cannot encode a message: {e}");
            return false;
        }
        self.0.send(frame).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}
