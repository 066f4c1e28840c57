//! Read-only TFTP (async-tftp) for the iPXE loaders: blksize, tsize and windowsize come from
//! async-tftp, bounded by [`TftpLimits`]; this module decides which file a request may read and
//! how many transfers run at once ([`TransferSlots`]).
//!
//! A request's sender is unverified (UDP): async-tftp sends an OACK (or, without options, the
//! first block) and waits for its ACK before any window, and gives up after `max_retries`.

use crate::config::TftpLimits;
use crate::events::{EventLog, EventSource};
use async_tftp::packet;
use async_tftp::server::{Handler, TftpServer, TftpServerBuilder};
use cerana_protocol::tasks::boot::BootEventKind;
use futures_lite::AsyncRead;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
    /// RFC 1350: 1 "File not found", 2 "Access violation" (async-tftp sends its own text for
    /// both; the reason is logged and recorded).
    fn to_tftp(&self) -> packet::Error {
        match self {
            PathRefusal::NotFound | PathRefusal::NotAFile => packet::Error::FileNotFound,
            _ => packet::Error::PermissionDenied,
        }
    }
}

/// Why a transfer got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefusal {
    #[error("too many TFTP transfers from {address} (at most {max} at once)")]
    PerSource { address: IpAddr, max: usize },
    #[error("too many TFTP transfers (at most {max} at once)")]
    Total { max: usize },
}

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Transfers running at once, in all and per source address: a transfer holds a
/// [`TransferSlot`] until it ends.
#[derive(Debug, Clone)]
pub struct TransferSlots {
    max_total: usize,
    max_per_source: usize,
    counts: Arc<Mutex<SlotCounts>>,
}

/// One running transfer's place; dropping it frees the place.
#[derive(Debug)]
pub struct TransferSlot {
    source: IpAddr,
    counts: Arc<Mutex<SlotCounts>>,
}

fn lock_counts(counts: &Mutex<SlotCounts>) -> std::sync::MutexGuard<'_, SlotCounts> {
    // Plain counters: a panic elsewhere cannot leave them half-updated.
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

impl TransferSlots {
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        TransferSlots { max_total, max_per_source, counts: Arc::default() }
    }

    pub fn acquire(&self, source: IpAddr) -> Result<TransferSlot, SlotRefusal> {
        let mut counts = lock_counts(&self.counts);
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            return Err(SlotRefusal::PerSource { address: source, max: self.max_per_source });
        }
        if counts.total >= self.max_total {
            return Err(SlotRefusal::Total { max: self.max_total });
        }
        counts.total += 1;
        counts.per_source.insert(source, from_source + 1);
        Ok(TransferSlot { source, counts: self.counts.clone() })
    }

    /// Transfers holding a slot.
    pub fn in_use(&self) -> usize {
        lock_counts(&self.counts).total
    }
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        let mut counts = lock_counts(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.per_source.remove(&self.source);
            }
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
    slots: TransferSlots,
    max_transfer: Duration,
}

impl ReadOnlyDir {
    pub fn new(root: &Path, events: Arc<EventLog>, limits: &TftpLimits) -> std::io::Result<Self> {
        Ok(ReadOnlyDir {
            root: root.canonicalize()?,
            events,
            slots: TransferSlots::new(limits.max_transfers, limits.max_transfers_per_source),
            max_transfer: Duration::from_secs(limits.max_transfer_secs),
        })
    }

    fn record(&self, client: &SocketAddr, kind: BootEventKind) {
        if let IpAddr::V4(ip) = client.ip() {
            if let Some(mac) = self.events.mac_for_ip(ip) {
                self.events.record(EventSource::Peer(client.ip()), mac, kind);
            }
        }
    }
}

/// Counts what a transfer read and records it when the transfer ends; holds the transfer's
/// slot and ends it (a read error) once it has run for `max_transfer_secs`.
pub struct CountingReader {
    inner: blocking::Unblock<std::fs::File>,
    read: u64,
    size: u64,
    path: String,
    client: SocketAddr,
    events: Arc<EventLog>,
    deadline: Instant,
    _slot: TransferSlot,
}

impl std::fmt::Debug for CountingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingReader").field("path", &self.path).field("read", &self.read).finish()
    }
}

impl AsyncRead for CountingReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "longer than max_transfer_secs",
            )));
        }
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
        tracing::info!(client = %self.client, path = ?self.path, bytes = self.read, complete, "TFTP transfer ended");
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
        let slot = self.slots.acquire(client.ip()).map_err(|why| {
            tracing::warn!(%client, path = ?requested, reason = %why, "TFTP read refused");
            self.record(client, BootEventKind::TftpRefused { path: requested.clone(), reason: why.to_string() });
            packet::Error::Msg(why.to_string())
        })?;
        let refuse = |why: PathRefusal| {
            tracing::warn!(%client, path = ?requested, reason = %why, "TFTP read refused");
            self.record(client, BootEventKind::TftpRefused { path: requested.clone(), reason: why.to_string() });
            why.to_tftp()
        };
        let full = resolve(&self.root, &requested).map_err(refuse)?;
        let file = std::fs::File::open(&full).map_err(|_| refuse(PathRefusal::NotFound))?;
        let size = file.metadata().map(|m| m.len()).map_err(|_| refuse(PathRefusal::NotFound))?;
        tracing::info!(%client, path = ?requested, size, "TFTP read");
        let reader = CountingReader {
            inner: blocking::Unblock::new(file),
            read: 0,
            size,
            path: requested,
            client: *client,
            events: self.events.clone(),
            deadline: Instant::now() + self.max_transfer,
            _slot: slot,
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
        tracing::warn!(%client, path = ?requested, "TFTP write request refused: the server is read-only");
        self.record(client, BootEventKind::TftpRefused { path: requested, reason: "write request".into() });
        Err(packet::Error::PermissionDenied)
    }
}

/// Builds the server on an already bound socket.
pub async fn server(
    socket: std::net::UdpSocket,
    handler: ReadOnlyDir,
    limits: &TftpLimits,
) -> async_tftp::Result<TftpServer<ReadOnlyDir>> {
    TftpServerBuilder::with_handler(handler)
        .std_socket(socket)?
        .block_size_limit(limits.max_block_size)
        .window_size_limit(limits.max_window)
        .timeout(Duration::from_secs(limits.timeout_secs))
        .ignore_client_timeout()
        .max_send_retries(limits.max_retries)
        .build()
        .await
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
    fn slots_are_bounded_per_source_and_in_all() {
        let slots = TransferSlots::new(3, 2);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let a1 = slots.acquire(a).unwrap();
        let _a2 = slots.acquire(a).unwrap();
        assert_eq!(slots.acquire(a).err(), Some(SlotRefusal::PerSource { address: a, max: 2 }));
        let _b1 = slots.acquire(b).unwrap();
        assert_eq!(slots.acquire(c).err(), Some(SlotRefusal::Total { max: 3 }));
        drop(a1);
        assert_eq!(slots.in_use(), 2);
        let _c1 = slots.acquire(c).unwrap();
        assert!(slots.acquire(a).is_err());
    }

    #[test]
    fn a_transfer_holds_its_slot_until_it_ends_and_stops_at_its_deadline() {
        use futures_lite::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        let client: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let limits = TftpLimits { max_transfers_per_source: 1, ..TftpLimits::default() };
        let mut dir_handler = ReadOnlyDir::new(dir.path(), Arc::new(EventLog::new()), &limits).unwrap();
        futures_lite::future::block_on(async {
            let (mut reader, _) = dir_handler.read_req_open(&client, Path::new("f")).await.unwrap();
            let refused = dir_handler.read_req_open(&client, Path::new("f")).await.err();
            assert!(matches!(refused, Some(packet::Error::Msg(m)) if m.contains("too many")));
            let mut buf = Vec::new();
            reader.read_to_end(&mut buf).await.unwrap();
            drop(reader);
            assert_eq!(dir_handler.slots.in_use(), 0);

            dir_handler.max_transfer = Duration::ZERO;
            let (mut reader, _) = dir_handler.read_req_open(&client, Path::new("f")).await.unwrap();
            let err = reader.read(&mut [0u8; 8]).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        });
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
