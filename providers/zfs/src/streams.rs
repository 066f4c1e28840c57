//! `zfs send` into a Task API stream, and a Task API stream into `zfs receive`.

use crate::error::ZfsError;
use cerana_protocol::stream::{ChunkReader, ChunkWriter};
use cerana_protocol::tasks::zfs::ZfsErrorReason;
use std::process::Stdio;
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
pub async fn pump_send<W: AsyncWrite + Unpin>(mut child: tokio::process::Child, mut out: ChunkWriter<W>) -> Result<u64, ZfsError> {
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
