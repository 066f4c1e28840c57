//! Byte streams as chunk frames.
//!
//! A stream connection carries frames of raw bytes; an empty frame marks the clean end. A
//! connection that closes without that end marker means the producer vanished, so a consumer
//! never mistakes a truncated `zfs send` for a complete one.

/// Largest chunk a stream may carry in one frame.
pub const MAX_CHUNK_LEN: usize = 1024 * 1024;

/// Chunk size writers use by default: large enough to amortise syscalls, small enough to keep
/// memory bounded when many streams are in flight.
pub const DEFAULT_CHUNK_LEN: usize = 256 * 1024;

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream peer vanished before the end of the stream")]
    PeerVanished,
    #[error("stream chunk of {len} bytes exceeds the limit of {max}")]
    ChunkTooLarge { len: usize, max: usize },
    #[error("stream refused: {0}")]
    Refused(crate::TaskError),
    #[error("the stream's producer failed: {0}")]
    ProducerFailed(crate::TaskError),
    #[error("stream i/o error: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(feature = "tokio")]
mod io {
    use super::*;
    use crate::frame::{read_frame, write_frame, FrameError};
    use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

    impl From<FrameError> for StreamError {
        fn from(err: FrameError) -> Self {
            match err {
                FrameError::Truncated => StreamError::PeerVanished,
                FrameError::TooLarge { len, max } => StreamError::ChunkTooLarge { len, max },
                FrameError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => StreamError::PeerVanished,
                FrameError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset => StreamError::PeerVanished,
                FrameError::Io(e) => StreamError::Io(e),
            }
        }
    }

    /// Reads chunks until the end marker.
    #[derive(Debug)]
    pub struct ChunkReader<R> {
        inner: R,
        buf: Vec<u8>,
        done: bool,
    }

    impl<R: AsyncRead + Unpin> ChunkReader<R> {
        pub fn new(inner: R) -> Self {
            Self { inner, buf: Vec::new(), done: false }
        }

        /// The next chunk, or `None` after the clean end.
        pub async fn next_chunk(&mut self) -> Result<Option<&[u8]>, StreamError> {
            if self.done {
                return Ok(None);
            }
            if !read_frame(&mut self.inner, &mut self.buf, MAX_CHUNK_LEN).await? {
                return Err(StreamError::PeerVanished);
            }
            if self.buf.is_empty() {
                self.done = true;
                return Ok(None);
            }
            Ok(Some(&self.buf))
        }

        /// Copies the whole stream into `out`, returning the byte count.
        pub async fn copy_to<W: AsyncWrite + Unpin>(&mut self, out: &mut W) -> Result<u64, StreamError> {
            let mut total = 0u64;
            while let Some(chunk) = self.next_chunk().await? {
                total += chunk.len() as u64;
                out.write_all(chunk).await?;
            }
            out.flush().await?;
            Ok(total)
        }

        pub fn into_inner(self) -> R {
            self.inner
        }
    }

    /// Writes chunks and, on [`ChunkWriter::finish`], the end marker.
    #[derive(Debug)]
    pub struct ChunkWriter<W> {
        inner: W,
    }

    impl<W: AsyncWrite + Unpin> ChunkWriter<W> {
        pub fn new(inner: W) -> Self {
            Self { inner }
        }

        pub async fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StreamError> {
            for piece in chunk.chunks(MAX_CHUNK_LEN) {
                write_frame(&mut self.inner, piece).await?;
            }
            Ok(())
        }

        /// Copies everything from `input` as chunks, without finishing.
        pub async fn copy_from<R: AsyncRead + Unpin>(&mut self, input: &mut R) -> Result<u64, StreamError> {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; DEFAULT_CHUNK_LEN];
            let mut total = 0u64;
            loop {
                let n = input.read(&mut buf).await?;
                if n == 0 {
                    return Ok(total);
                }
                self.write_chunk(&buf[..n]).await?;
                total += n as u64;
            }
        }

        pub fn into_inner(self) -> W {
            self.inner
        }

        /// Writes the end marker and flushes.
        pub async fn finish(mut self) -> Result<W, StreamError> {
            write_frame(&mut self.inner, &[]).await?;
            self.inner.flush().await?;
            Ok(self.inner)
        }
    }
}

#[cfg(feature = "tokio")]
pub use io::{ChunkReader, ChunkWriter};

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_finished_stream_reads_back_whole() {
        let mut writer = ChunkWriter::new(Vec::new());
        writer.write_chunk(b"abc").await.unwrap();
        writer.write_chunk(b"def").await.unwrap();
        let wire = writer.finish().await.unwrap();
        let mut out = Vec::new();
        let n = ChunkReader::new(&wire[..]).copy_to(&mut out).await.unwrap();
        assert_eq!((n, &out[..]), (6, &b"abcdef"[..]));
    }

    #[tokio::test]
    async fn a_stream_without_end_marker_is_a_vanished_peer() {
        let mut writer = ChunkWriter::new(Vec::new());
        writer.write_chunk(b"abc").await.unwrap();
        let wire = writer.into_inner();
        let mut reader = ChunkReader::new(&wire[..]);
        assert_eq!(reader.next_chunk().await.unwrap(), Some(&b"abc"[..]));
        assert!(matches!(reader.next_chunk().await, Err(StreamError::PeerVanished)));
    }
}
