//! `zfs send` into a Task API stream, and a Task API stream into `zfs receive`.
//!
//! When the coordinator hands over a pipe (both ends are local and accept one), `zfs send`
//! writes straight into it and `zfs receive` reads it through a kernel-side splice that only
//! counts the bytes: nothing is copied through a provider or the coordinator. Otherwise the
//! bytes travel as chunk frames.

use crate::error::ZfsError;
use cerana_protocol::stream::{ChunkReader, ChunkWriter};
use cerana_protocol::tasks::zfs::ZfsErrorReason;
use cerana_provider_sdk::{PipeVerdict, TaskError};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes gathered from `zfs send`'s pipe before a chunk goes out (a pipe read yields 64 KiB at
/// most; fewer, larger chunks cost the coordinator less).
const CHUNK: usize = 1024 * 1024;

/// Pipe buffer for zfs send/receive: 1 MiB instead of 64 KiB, so a chunk moves in one wake-up.
const PIPE_BYTES: i32 = 1024 * 1024;

/// Enlarges a pipe's buffer; a refusal (e.g. above /proc/sys/fs/pipe-max-size) only costs speed.
fn widen_pipe(fd: std::os::fd::RawFd) {
    if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES)) {
        tracing::debug!("F_SETPIPE_SZ: {e}");
    }
}

fn spawn_failed(e: std::io::Error) -> ZfsError {
    ZfsError::new(ZfsErrorReason::Unavailable, format!("cannot run zfs: {e}"))
}

fn spawn_zfs(args: &[String], stdin: Stdio, stdout: Stdio) -> Result<tokio::process::Child, ZfsError> {
    tokio::process::Command::new("zfs")
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_failed)
}

/// Reads a child's stderr to the end in the background (so it can never block the child).
fn collect_stderr(mut stderr: tokio::process::ChildStderr) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    })
}

/// Starts `zfs <send args>`; [`pump_send`] then moves its output.
pub fn spawn_send(args: &[String]) -> Result<tokio::process::Child, ZfsError> {
    spawn_zfs(args, Stdio::null(), Stdio::piped())
}

/// Fills `buf` from `input` until it is full or the input ends; returns the bytes read.
async fn fill<R: AsyncRead + Unpin>(input: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Copies `zfs send`'s output into the stream and ends the stream only when `zfs send`
/// succeeded: on any failure the stream is dropped unfinished, so the reader sees a broken
/// stream instead of a short one. Returns the bytes sent.
pub async fn pump_send<W: AsyncWrite + Unpin>(
    mut child: tokio::process::Child,
    mut out: ChunkWriter<W>,
) -> Result<u64, ZfsError> {
    let mut stdout = child.stdout.take().expect("stdout is piped");
    widen_pipe(std::os::fd::AsRawFd::as_raw_fd(&stdout));
    let stderr = child.stderr.take().expect("stderr is piped");
    let errors = collect_stderr(stderr);
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let copied: Result<(), String> = async {
        loop {
            let n = fill(&mut stdout, &mut buf).await.map_err(|e| format!("reading zfs send: {e}"))?;
            if n == 0 {
                return Ok(());
            }
            out.write_chunk(&buf[..n]).await.map_err(|e| format!("the stream's reader went away: {e}"))?;
            total += n as u64;
        }
    }
    .await;
    if let Err(message) = copied {
        let _ = child.kill().await;
        return Err(ZfsError::new(ZfsErrorReason::Failed, message));
    }
    let status = child.wait().await.map_err(spawn_failed)?;
    let stderr = errors.await.unwrap_or_default();
    if !status.success() {
        return Err(ZfsError::from_stderr(&stderr));
    }
    out.finish().await.map_err(|e| ZfsError::new(ZfsErrorReason::Failed, format!("ending the stream: {e}")))?;
    Ok(total)
}

/// Feeds the stream into `zfs <receive args>`. A stream that breaks off kills `zfs receive`
/// (which then keeps nothing of it); a stream ZFS rejects comes back as `stream-corrupt`.
pub async fn receive<R: AsyncRead + Unpin>(args: &[String], mut input: ChunkReader<R>) -> Result<u64, ZfsError> {
    let mut child = spawn_zfs(args, Stdio::piped(), Stdio::null())?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    widen_pipe(std::os::fd::AsRawFd::as_raw_fd(&stdin));
    let stderr = child.stderr.take().expect("stderr is piped");
    let errors = collect_stderr(stderr);
    let mut total = 0u64;
    let mut broken = None;
    loop {
        match input.next_chunk().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                // zfs receive stopping early (a corrupt stream) closes the pipe: its own
                // message below says why.
                if stdin.write_all(chunk).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                broken = Some(e);
                break;
            }
        }
    }
    drop(stdin);
    if let Some(e) = broken {
        let _ = child.kill().await;
        let _ = child.wait().await;
        return Err(ZfsError::new(
            ZfsErrorReason::StreamCorrupt,
            format!("the stream broke off after {total} bytes ({e}); nothing was received"),
        ));
    }
    let status = child.wait().await.map_err(spawn_failed)?;
    let stderr = errors.await.unwrap_or_default();
    if status.success() {
        Ok(total)
    } else {
        let mut e = ZfsError::from_stderr(&stderr);
        // Whatever zfs receive says about a stream it could not use, the stream is at fault.
        if matches!(e.reason, ZfsErrorReason::Failed | ZfsErrorReason::InvalidArgument) && stderr.contains("stream") {
            e.reason = ZfsErrorReason::StreamCorrupt;
        }
        Err(e)
    }
}

/// How long a consumer waits, after `zfs receive` exited, for the producer's verdict: the
/// producer sends it as soon as its `zfs send` has exited, which has happened by then.
const VERDICT_WAIT: Duration = Duration::from_secs(30);

/// Starts `zfs <send args>` writing into the stream's pipe; [`wait_send`] then says how it went.
pub fn spawn_send_into(args: &[String], pipe: OwnedFd) -> Result<tokio::process::Child, ZfsError> {
    spawn_zfs(args, Stdio::null(), Stdio::from(pipe))
}

/// Waits for a `zfs send` started by [`spawn_send_into`]: its verdict for the stream.
pub async fn wait_send(mut child: tokio::process::Child) -> Result<(), ZfsError> {
    let errors = collect_stderr(child.stderr.take().expect("stderr is piped"));
    let status = child.wait().await.map_err(spawn_failed)?;
    let stderr = errors.await.unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(ZfsError::from_stderr(&stderr))
    }
}

/// The verdict a producer sends for its stream.
pub fn verdict(outcome: &Result<(), ZfsError>) -> Result<(), TaskError> {
    outcome.as_ref().map(|_| ()).map_err(|e| TaskError::from(e.clone()))
}

/// Bytes one splice may move: the pipe's size.
const SPLICE_BYTES: usize = PIPE_BYTES as usize;

/// Moves everything from `input` to `output` inside the kernel and counts it: the bytes moved,
/// and how it ended. Input that is ready (data or its end) is moved before `stop` is looked at;
/// only an idle input stops when `stop` becomes readable or hangs up (its writer was dropped).
fn splice_all(input: &OwnedFd, output: &OwnedFd, stop: &OwnedFd) -> (u64, std::io::Result<()>) {
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::pipe::{splice, SpliceFlags};
    let mut total = 0u64;
    loop {
        let mut fds = [PollFd::new(input, PollFlags::IN), PollFd::new(stop, PollFlags::IN)];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return (total, Err(e.into())),
        }
        if fds[0].revents().is_empty() {
            if !fds[1].revents().is_empty() {
                return (total, Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "stopped")));
            }
            continue;
        }
        match splice(input, None, output, None, SPLICE_BYTES, SpliceFlags::MOVE) {
            Ok(0) => return (total, Ok(())),
            Ok(n) => total += n as u64,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return (total, Err(e.into())),
        }
    }
}

/// Feeds a pipe stream into `zfs <receive args>`, then checks the producer's verdict: a
/// stream its producer did not finish is `stream-corrupt` even if `zfs receive` took it.
pub async fn receive_from_pipe(args: &[String], input: OwnedFd, verdict: PipeVerdict) -> Result<u64, ZfsError> {
    let pipe_failed =
        |e: std::io::Error| ZfsError::new(ZfsErrorReason::Unavailable, format!("cannot make a pipe: {e}"));
    let (child_stdin, feed) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| pipe_failed(e.into()))?;
    widen_pipe(std::os::fd::AsRawFd::as_raw_fd(&feed));
    let (stop_rx, stop_tx) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| pipe_failed(e.into()))?;
    let mut child = spawn_zfs(args, Stdio::from(child_stdin), Stdio::null())?;
    let errors = collect_stderr(child.stderr.take().expect("stderr is piped"));
    // Dropping `stop_tx` (this future ending or being cancelled) releases the splicing thread;
    // the thread drops `feed` when it ends, which is zfs receive's end of input.
    let spliced = tokio::task::spawn_blocking(move || splice_all(&input, &feed, &stop_rx));
    let status = child.wait().await.map_err(spawn_failed);
    drop(stop_tx);
    let status = status?;
    // Bytes moved before the splice ended, however it ended (zfs receive may exit right after
    // the stream's last record).
    let total = spliced.await.map_or(0, |(moved, _)| moved);
    let stderr = errors.await.unwrap_or_default();
    let heard = match tokio::time::timeout(VERDICT_WAIT, verdict.wait()).await {
        Ok(heard) => heard,
        Err(_) => Err(cerana_protocol::stream::StreamError::PeerVanished),
    };
    if status.success() {
        return match heard {
            Ok(()) => Ok(total),
            Err(e) => Err(ZfsError::new(
                ZfsErrorReason::StreamCorrupt,
                format!("zfs receive took the stream but its producer did not finish it ({e})"),
            )),
        };
    }
    let mut e = ZfsError::from_stderr(&stderr);
    // A specific refusal (the target exists, the pool is missing) stands; otherwise the stream
    // is at fault, and a producer that did not finish it says why.
    if matches!(e.reason, ZfsErrorReason::Failed | ZfsErrorReason::InvalidArgument) {
        if let Err(broken) = heard {
            return Err(ZfsError::new(
                ZfsErrorReason::StreamCorrupt,
                format!("the stream broke off after {total} bytes ({broken}); nothing was received"),
            ));
        }
        if stderr.contains("stream") {
            e.reason = ZfsErrorReason::StreamCorrupt;
        }
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn splicing_moves_and_counts_every_byte_and_stops_when_asked() {
        let (input, mut source) = {
            let (r, w) = rustix::pipe::pipe().unwrap();
            (r, std::fs::File::from(w))
        };
        let (mut sink, output) = {
            let (r, w) = rustix::pipe::pipe().unwrap();
            (std::fs::File::from(r), w)
        };
        let (stop_rx, stop_tx) = rustix::pipe::pipe().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn({
            let data = data.clone();
            move || {
                source.write_all(&data).unwrap();
            }
        });
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            sink.read_to_end(&mut out).unwrap();
            out
        });
        let (moved, ended) = splice_all(&input, &output, &stop_rx);
        ended.unwrap();
        writer.join().unwrap();
        drop(output);
        assert_eq!(moved, data.len() as u64);
        assert_eq!(reader.join().unwrap(), data);

        // A producer that never writes nor closes: dropping the stop pipe releases the thread.
        let (idle_input, _idle_writer) = rustix::pipe::pipe().unwrap();
        let (_r, idle_output) = rustix::pipe::pipe().unwrap();
        let (stop_rx2, stop_tx2) = rustix::pipe::pipe().unwrap();
        let stuck = std::thread::spawn(move || splice_all(&idle_input, &idle_output, &stop_rx2));
        drop(stop_tx2);
        let (moved, outcome) = stuck.join().unwrap();
        assert_eq!((moved, outcome.unwrap_err().kind()), (0, std::io::ErrorKind::Interrupted));
        drop(stop_tx);
    }

    #[test]
    fn input_already_there_is_moved_even_when_stop_came_first() {
        // zfs receive exited (so the stop pipe hung up) before the splicer saw the stream's end.
        let (input, writer) = rustix::pipe::pipe().unwrap();
        let (mut sink, output) = {
            let (r, w) = rustix::pipe::pipe().unwrap();
            (std::fs::File::from(r), w)
        };
        let (stop_rx, stop_tx) = rustix::pipe::pipe().unwrap();
        std::fs::File::from(writer).write_all(&[7u8; 10_000]).unwrap();
        drop(stop_tx);
        let (moved, ended) = splice_all(&input, &output, &stop_rx);
        assert_eq!(moved, 10_000);
        ended.unwrap();
        drop(output);
        let mut out = Vec::new();
        sink.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 10_000);
    }
}
