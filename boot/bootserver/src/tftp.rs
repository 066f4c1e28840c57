//! Read-only TFTP (async-tftp) for the iPXE loaders: blksize, tsize and windowsize come from
//! async-tftp; this module decides which file a request may read.

use crate::events::{EventLog, EventSource};
use async_tftp::packet;
use async_tftp::server::{Handler, TftpServer, TftpServerBuilder};
use cerana_protocol::tasks::boot::BootEventKind;
use futures_lite::AsyncRead;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathRefusal {
    #[error("empty file name")]
    Empty,
    #[error("absolute paths are refused")]
    Absolute,
    #[error("'..', '.' and other non-plain components are refused")]
    NotPlain,
    #[error("control characters or backslashes in the file name")]
    BadCharacter,
    #[error("the path leaves the served directory (symlink)")]
    Escapes,
    #[error("no such file")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
}

impl PathRefusal {
    fn to_tftp(&self) -> packet::Error {
        match self {
            PathRefusal::NotFound => packet::Error::FileNotFound,
            other => packet::Error::Msg(format!("access violation: {other}")),
        }
    }
}

/// Checks a requested name without touching the file system.
pub fn check_name(requested: &str) -> Result<&Path, PathRefusal> {
    if requested.is_empty() {
        return Err(PathRefusal::Empty);
    }
    if requested.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathRefusal::BadCharacter);
    }
    let path = Path::new(requested);
    if path.is_absolute() {
        return Err(PathRefusal::Absolute);
    }
    if requested.split('/').any(|part| part == "." || part == "..")
        || !path.components().all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(PathRefusal::NotPlain);
    }
    Ok(path)
}

/// The file `requested` names under `root` (canonical), after resolving symlinks; refused if
/// it is outside `root` or not a regular file.
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, PathRefusal> {
    let relative = check_name(requested)?;
    let full = root.join(relative).canonicalize().map_err(|_| PathRefusal::NotFound)?;
    if !full.starts_with(root) {
        return Err(PathRefusal::Escapes);
    }
    if !full.metadata().map_err(|_| PathRefusal::NotFound)?.is_file() {
        return Err(PathRefusal::NotAFile);
    }
    Ok(full)
}

/// async-tftp handler over one directory.
#[derive(Debug)]
pub struct ReadOnlyDir {
    root: PathBuf,
    events: Arc<EventLog>,
}

impl ReadOnlyDir {
    pub fn new(root: &Path, events: Arc<EventLog>) -> std::io::Result<Self> {
        Ok(ReadOnlyDir { root: root.canonicalize()?, events })
    }

    fn record(&self, client: &SocketAddr, kind: BootEventKind) {
        if let IpAddr::V4(ip) = client.ip() {
            if let Some(mac) = self.events.mac_for_ip(ip) {
                self.events.record(EventSource::Peer(client.ip()), mac, kind);
            }
        }
    }
}

/// Counts what a transfer read and records it when the transfer ends.
pub struct CountingReader {
    inner: blocking::Unblock<std::fs::File>,
    read: u64,
    size: u64,
    path: String,
    client: SocketAddr,
    events: Arc<EventLog>,
}

impl std::fmt::Debug for CountingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingReader").field("path", &self.path).field("read", &self.read).finish()
    }
}

impl AsyncRead for CountingReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.read += *n as u64;
        }
        poll
    }
}

impl Drop for CountingReader {
    fn drop(&mut self) {
        let complete = self.read >= self.size;
        tracing::info!(client = %self.client, path = %self.path, bytes = self.read, complete, "TFTP transfer ended");
        if let IpAddr::V4(ip) = self.client.ip() {
            if let Some(mac) = self.events.mac_for_ip(ip) {
                self.events.record(
                    EventSource::Peer(self.client.ip()),
                    mac,
                    BootEventKind::TftpFile { path: self.path.clone(), bytes: self.read, complete },
                );
            }
        }
    }
}

impl Handler for ReadOnlyDir {
    type Reader = CountingReader;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let requested = path.to_string_lossy().into_owned();
        let refuse = |why: PathRefusal| {
            tracing::warn!(%client, path = %requested, reason = %why, "TFTP read refused");
            self.record(client, BootEventKind::TftpRefused { path: requested.clone(), reason: why.to_string() });
            why.to_tftp()
        };
        let full = resolve(&self.root, &requested).map_err(refuse)?;
        let file = std::fs::File::open(&full).map_err(|_| refuse(PathRefusal::NotFound))?;
        let size = file.metadata().map(|m| m.len()).map_err(|_| refuse(PathRefusal::NotFound))?;
        tracing::info!(%client, path = %requested, size, "TFTP read");
        let reader = CountingReader {
            inner: blocking::Unblock::new(file),
            read: 0,
            size,
            path: requested,
            client: *client,
            events: self.events.clone(),
        };
        Ok((reader, Some(size)))
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        let requested = path.to_string_lossy().into_owned();
        tracing::warn!(%client, path = %requested, "TFTP write request refused: the server is read-only");
        self.record(client, BootEventKind::TftpRefused { path: requested, reason: "write request".into() });
        Err(packet::Error::Msg("access violation: this server is read-only".into()))
    }
}

/// Builds the server on an already bound socket.
pub async fn server(socket: std::net::UdpSocket, handler: ReadOnlyDir) -> async_tftp::Result<TftpServer<ReadOnlyDir>> {
    TftpServerBuilder::with_handler(handler).std_socket(socket)?.build().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_the_file_system() {
        for (bad, why) in [
            ("", PathRefusal::Empty),
            ("/etc/passwd", PathRefusal::Absolute),
            ("../etc/passwd", PathRefusal::NotPlain),
            ("a/../../b", PathRefusal::NotPlain),
            ("./a", PathRefusal::NotPlain),
            ("a\\..\\b", PathRefusal::BadCharacter),
            ("a\nb", PathRefusal::BadCharacter),
        ] {
            assert_eq!(check_name(bad).err(), Some(why), "{bad:?}");
        }
        assert!(check_name("undionly.kpxe").is_ok());
        assert!(check_name("efi/snponly.efi").is_ok());
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("link")).unwrap();
        std::os::unix::fs::symlink("undionly.kpxe", root.join("inside")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        let root = root.canonicalize().unwrap();
        assert_eq!(resolve(&root, "link"), Err(PathRefusal::Escapes));
        assert_eq!(resolve(&root, "inside").unwrap(), root.join("undionly.kpxe"));
        assert_eq!(resolve(&root, "sub"), Err(PathRefusal::NotAFile));
        assert_eq!(resolve(&root, "missing"), Err(PathRefusal::NotFound));
    }
}
