//! A deterministic cpio "newc" archive writer: the format the kernel unpacks as an initramfs.
//!
//! Every entry gets the same owner (root), the same mtime and a sequential inode number, and
//! entries are written in the order given (the caller sorts them), so the same tree always gives
//! the same bytes.

use std::io::{self, Write};

/// What one archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// One path in the archive (relative, without a leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub kind: EntryKind,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Writes `entries` and the trailer; returns the number of bytes written.
pub fn write_newc<W: Write>(out: &mut W, entries: &[Entry], mtime: u32) -> io::Result<u64> {
    let mut w = Counting { inner: out, written: 0 };
    for (index, entry) in entries.iter().enumerate() {
        let (type_bits, data): (u32, &[u8]) = match &entry.kind {
            EntryKind::Dir => (S_IFDIR, &[]),
            EntryKind::File(bytes) => (S_IFREG, bytes),
            EntryKind::Symlink(target) => (S_IFLNK, target.as_bytes()),
        };
        let nlink = if matches!(entry.kind, EntryKind::Dir) { 2 } else { 1 };
        let ino = u32::try_from(index + 1).map_err(|_| io::Error::other("too many entries"))?;
        write_record(&mut w, ino, type_bits | (entry.mode & 0o7777), nlink, mtime, &entry.path, data)?;
    }
    write_record(&mut w, 0, 0, 1, 0, "TRAILER!!!", &[])?;
    Ok(w.written)
}

fn write_record<W: Write>(
    w: &mut Counting<W>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let size = u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{name}: file over 4 GiB")))?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| io::Error::other("name too long"))?;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, 0, 0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.pad4()?;
    w.write_all(data)?;
    w.pad4()
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Counting<'_, W> {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.write_all(&[0u8; 3][..pad])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry { path: "bin".into(), mode: 0o755, kind: EntryKind::Dir },
            Entry { path: "bin/sh".into(), mode: 0o777, kind: EntryKind::Symlink("busybox".into()) },
            Entry { path: "init".into(), mode: 0o755, kind: EntryKind::File(b"#!/bin/sh\n".to_vec()) },
        ]
    }

    #[test]
    fn archive_is_aligned_and_ends_with_trailer() {
        let mut buf = Vec::new();
        let n = write_newc(&mut buf, &sample(), 1_700_000_000).unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("bin/sh\0"));
    }

    #[test]
    fn same_entries_give_same_bytes_and_mtime_is_recorded() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_newc(&mut a, &sample(), 42).unwrap();
        write_newc(&mut b, &sample(), 42).unwrap();
        assert_eq!(a, b);
        // The first header's mtime field (7th 8-hex field after the magic).
        assert_eq!(&a[6 + 8 * 5..6 + 8 * 6], b"0000002a");
    }

    #[test]
    fn cpio_tool_lists_what_was_written() {
        cerana_testbed::require!(cerana_testbed::require::missing_program(&["cpio"]));
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        let mut buf = Vec::new();
        write_newc(&mut buf, &sample(), 0).unwrap();
        std::fs::write(&archive, &buf).unwrap();
        let out = std::process::Command::new("cpio").args(["-t", "--quiet", "-F"]).arg(&archive).output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "bin\nbin/sh\ninit\n");
    }
}
