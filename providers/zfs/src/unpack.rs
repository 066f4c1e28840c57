//! `zfs-unpack`: a tar archive from the request's stream unpacked into a mounted filesystem
//! with `cerana-unpack` (nothing lands outside it, no device nodes, links never written
//! through), within the space the dataset has. The archive is read in a blocking thread from a
//! pipe: the stream's own pipe when the coordinator hands one over, otherwise one this fills
//! from the stream's chunks.

use crate::error::ZfsError;
use cerana_protocol::stream::ChunkReader;
use cerana_protocol::tasks::zfs::ZfsErrorReason;
use cerana_provider_sdk::InputEnd;
use cerana_unpack::{Limits, UnpackError, Unpacked};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt};

/// How long, after the archive's end, the sender's verdict on its stream is waited for.
const VERDICT_WAIT: Duration = Duration::from_secs(30);

/// The task error for an archive refused or failed.
pub fn zfs_error(e: UnpackError) -> ZfsError {
    let reason = match &e {
        UnpackError::Escapes { .. }
        | UnpackError::Device { .. }
        | UnpackError::TooLarge { .. }
        | UnpackError::TooManyEntries { .. }
        | UnpackError::Unsupported { .. }
        | UnpackError::Conflict { .. } => ZfsErrorReason::InvalidArgument,
        UnpackError::Malformed { .. } => ZfsErrorReason::StreamCorrupt,
        UnpackError::Target { .. } => ZfsErrorReason::NotFound,
        UnpackError::Io { .. } => ZfsErrorReason::Failed,
    };
    ZfsError::new(reason, format!("{e}; the dataset keeps what was unpacked before: destroy it"))
}

/// Unpacks what `pipe` carries into `root`, in a blocking thread.
async fn from_pipe(pipe: OwnedFd, root: PathBuf, limits: Limits) -> Result<Unpacked, ZfsError> {
    let flags = rustix::fs::fcntl_getfl(&pipe).map_err(|e| ZfsError::new(ZfsErrorReason::Failed, e.to_string()))?;
    // Read blocking, in its own thread: the stream's pipe may come non-blocking.
    rustix::fs::fcntl_setfl(&pipe, flags - rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| ZfsError::new(ZfsErrorReason::Failed, e.to_string()))?;
    tokio::task::spawn_blocking(move || cerana_unpack::unpack(std::fs::File::from(pipe), &root, &limits))
        .await
        .map_err(|e| ZfsError::new(ZfsErrorReason::Failed, format!("the unpacking thread failed: {e}")))?
        .map_err(zfs_error)
}

/// Copies the stream's chunks into `pipe`; the archive's reader stopping early (a refusal) is
/// no error of the stream's.
async fn feed<R: AsyncRead + Unpin>(mut input: ChunkReader<R>, pipe: OwnedFd) -> Result<u64, ZfsError> {
    let mut sender = tokio::net::unix::pipe::Sender::from_owned_fd(pipe)
        .map_err(|e| ZfsError::new(ZfsErrorReason::Failed, format!("cannot feed the archive: {e}")))?;
    let mut total = 0u64;
    loop {
        match input.next_chunk().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if sender.write_all(chunk).await.is_err() {
                    return Ok(total);
                }
            }
            Ok(None) => return Ok(total),
            Err(e) => {
                return Err(ZfsError::new(
                    ZfsErrorReason::StreamCorrupt,
                    format!("the stream broke off after {total} bytes ({e})"),
                ))
            }
        }
    }
}

/// Unpacks the request's stream into `root` within `limits`.
pub async fn unpack(input: InputEnd, root: PathBuf, limits: Limits) -> Result<Unpacked, ZfsError> {
    match input {
        InputEnd::Pipe { pipe, verdict } => {
            let unpacked = from_pipe(pipe, root, limits).await?;
            match tokio::time::timeout(VERDICT_WAIT, verdict.wait()).await {
                Ok(Ok(())) => Ok(unpacked),
                Ok(Err(e)) => Err(ZfsError::new(ZfsErrorReason::StreamCorrupt, format!("the sender failed: {e}"))),
                Err(_) => {
                    Err(ZfsError::new(ZfsErrorReason::StreamCorrupt, "the sender never said how its stream ended"))
                }
            }
        }
        InputEnd::Chunks(reader) => {
            let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| ZfsError::new(ZfsErrorReason::Unavailable, format!("cannot make a pipe: {e}")))?;
            let (fed, unpacked) = tokio::join!(feed(reader, write_end), from_pipe(read_end, root, limits));
            // A broken stream explains a truncated archive better than the archive's error.
            fed?;
            unpacked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::stream::ChunkWriter;
    use tokio::net::UnixStream;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let files: Vec<(&str, u32, &[u8])> = entries.iter().map(|(name, data)| (*name, 0o644, *data)).collect();
        cerana_testbed::archive::files(&files)
    }

    /// The stream's consumer end, fed `bytes` in 64 KiB chunks (and ended properly if `finish`).
    fn stream(bytes: Vec<u8>, finish: bool) -> (InputEnd, tokio::task::JoinHandle<()>) {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let writer = tokio::spawn(async move {
            let mut out = ChunkWriter::new(mine);
            for chunk in bytes.chunks(64 << 10) {
                if out.write_chunk(chunk).await.is_err() {
                    return;
                }
            }
            if finish {
                let _ = out.finish().await;
            }
        });
        (InputEnd::Chunks(ChunkReader::new(theirs)), writer)
    }

    #[tokio::test]
    async fn a_streamed_archive_unpacks_and_a_hostile_or_broken_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (input, writer) = stream(archive(&[("etc/hostname", b"cerana\n"), ("big", &[5u8; 300_000])]), true);
        let done = unpack(input, dir.path().to_path_buf(), Limits::new(1 << 20)).await.unwrap();
        writer.await.unwrap();
        assert_eq!((done.files, done.entries), (2, 2));
        assert_eq!(std::fs::read(dir.path().join("etc/hostname")).unwrap(), b"cerana\n");

        // Refused at its first entry while megabytes more are on the way: the feeder stops too.
        let mut hostile = archive(&[("../escape", b"x")]);
        hostile.extend(archive(&[("filler", &vec![0u8; 4 << 20])]));
        let (input, writer) = stream(hostile, true);
        let err = unpack(input, dir.path().to_path_buf(), Limits::new(64 << 20)).await.unwrap_err();
        assert_eq!(err.reason, ZfsErrorReason::InvalidArgument, "{err}");
        assert!(err.to_string().contains("\"../escape\""), "{err}");
        writer.await.unwrap();
        assert!(!dir.path().parent().unwrap().join("escape").exists());

        // Past the space the dataset has.
        let (input, _) = stream(archive(&[("big2", &[1u8; 300_000])]), true);
        let err = unpack(input, dir.path().to_path_buf(), Limits::new(100_000)).await.unwrap_err();
        assert!(err.reason == ZfsErrorReason::InvalidArgument && err.to_string().contains("budget"), "{err}");

        // The sender vanishing mid-archive: the stream's fault, said so.
        let full = archive(&[("cut", &[2u8; 200_000])]);
        let (input, _) = stream(full[..100_000].to_vec(), false);
        let err = unpack(input, dir.path().to_path_buf(), Limits::new(1 << 20)).await.unwrap_err();
        assert_eq!(err.reason, ZfsErrorReason::StreamCorrupt, "{err}");
    }
}
