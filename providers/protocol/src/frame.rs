//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! This is the only framing on unix sockets: messages are JSON in frames, and byte streams are
//! chunk frames (see [`crate::stream`]).

/// Largest frame accepted; larger ones are refused before any allocation.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Appends one frame holding `payload` to `out`.
pub fn encode_into(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN });
    }
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Serializes `message` as JSON straight into a frame appended to `out`.
pub fn encode_json_into<T: serde::Serialize>(out: &mut Vec<u8>, message: &T) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *out, message).map_err(std::io::Error::other)?;
    let len = out.len() - start - 4;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

#[cfg(feature = "tokio")]
mod io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Reads one frame into `buf` (replacing its contents), up to `max` bytes.
    /// Returns `Ok(false)` on a clean end of stream before any byte of a new frame.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        reader: &mut R,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> Result<bool, FrameError> {
        let mut header = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let n = reader.read(&mut header[got..]).await?;
            if n == 0 {
                return if got == 0 { Ok(false) } else { Err(FrameError::Truncated) };
            }
            got += n;
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        buf.clear();
        buf.resize(len, 0);
        match reader.read_exact(buf).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes already-encoded frames from `queue` until it closes or a write fails, coalescing
    /// whatever is queued into one write: under load many frames cost one syscall.
    pub async fn write_queued_frames<W: AsyncWrite + Unpin>(
        mut writer: W,
        mut queue: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        const BATCH: usize = 256 * 1024;
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Some(frame) = queue.recv().await {
            batch.clear();
            batch.extend_from_slice(&frame);
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if writer.write_all(&batch).await.is_err() {
                return;
            }
        }
    }

    /// Writes one frame holding `payload` (not flushed).
    pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, payload: &[u8]) -> Result<(), FrameError> {
        if payload.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN });
        }
        writer.write_all(&(payload.len() as u32).to_be_bytes()).await?;
        writer.write_all(payload).await?;
        Ok(())
    }
}

#[cfg(feature = "tokio")]
pub use io::{read_frame, write_frame, write_queued_frames};

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let mut wire = Vec::new();
        encode_into(&mut wire, b"hello").unwrap();
        encode_json_into(&mut wire, &serde_json::json!({"a": 1})).unwrap();
        let mut reader = &wire[..];
        let mut buf = Vec::new();
        assert!(read_frame(&mut reader, &mut buf, MAX_FRAME_LEN).await.unwrap());
        assert_eq!(buf, b"hello");
        assert!(read_frame(&mut reader, &mut buf, MAX_FRAME_LEN).await.unwrap());
        assert_eq!(buf, br#"{"a":1}"#);
        assert!(!read_frame(&mut reader, &mut buf, MAX_FRAME_LEN).await.unwrap());

        // Oversized length is refused without reading (or allocating) the body.
        let huge = (u32::MAX).to_be_bytes();
        let err = read_frame(&mut &huge[..], &mut buf, MAX_FRAME_LEN).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");

        // A header or body cut short is a truncation, not a clean end.
        let err = read_frame(&mut &[0u8, 0][..], &mut buf, MAX_FRAME_LEN).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");
        let err = read_frame(&mut &[0u8, 0, 0, 9, 1][..], &mut buf, MAX_FRAME_LEN).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");
    }
}
