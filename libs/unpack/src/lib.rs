//! Unpacking a tar archive (plain, gzip or zstd) into a directory safely (issue #18's
//! `import-dataset`: `tar c` of a root filesystem, `docker export`), keeping ownership, modes
//! and times.
//!
//! Every path is resolved beneath the target with `openat2(RESOLVE_BENEATH)`: an entry that would
//! land outside it — `..`, an absolute path, or a path through a symlink that points out — is
//! refused with the entry named, as are device nodes and an archive that expands past its budget
//! (counted in decompressed bytes, so a small gzip bomb cannot fill the pool). Nothing is ever
//! written through a link: an entry whose name is taken by a symlink or a hard link replaces it
//! (unlink, then create with `O_EXCL | O_NOFOLLOW`), and ownership, modes and times are set
//! through the file's own descriptor, never by path. Directories get their modes last, so a
//! read-only directory in the archive still receives its contents.
//!
//! On an error the target holds what was unpacked so far: the caller (import-dataset) destroys
//! the dataset it unpacked into, so nothing half-imported stays.

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use std::cell::Cell;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// What an archive may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Decompressed bytes of the whole archive (headers and contents): the dataset's quota.
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Limits {
    /// A budget of `max_bytes`, and at most a million entries.
    pub fn new(max_bytes: u64) -> Self {
        Limits { max_bytes, max_entries: 1_000_000 }
    }
}

/// How the archive is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Plain,
    Gzip,
    /// One zstd frame (what `zstd` and `tar --zstd` write).
    Zstd,
}

/// The compression `head` (the archive's first bytes) starts with.
pub fn detect(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::Plain,
    }
}

/// What was unpacked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub compression: Option<Compression>,
    pub entries: u64,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub fifos: u64,
    /// Decompressed bytes read.
    pub bytes: u64,
}

/// Why an archive was refused or could not be unpacked. Entries are named as the archive spells
/// them (lossily, if not UTF-8).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {entry:?} would land outside the target ({why}): refused")]
    Escapes { entry: String, why: &'static str },
    #[error("entry {entry:?} is a device node: refused")]
    Device { entry: String },
    #[error("entry {entry:?}: the archive expands past its budget of {limit} bytes")]
    TooLarge { entry: String, limit: u64 },
    #[error("the archive has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("entry {entry:?}: {kind} entries are not supported")]
    Unsupported { entry: String, kind: String },
    #[error("entry {entry:?}: {why}")]
    Conflict { entry: String, why: String },
    #[error("the archive is malformed{}: {reason}", after.as_ref().map(|e| format!(" after entry {e:?}")).unwrap_or_default())]
    Malformed { after: Option<String>, reason: String },
    #[error("entry {entry:?}: {source}")]
    Io { entry: String, source: io::Error },
    #[error("the target {}: {source}", path.display())]
    Target { path: PathBuf, source: io::Error },
}

/// The decompressed bytes read so far, shared with the reader that counts them.
#[derive(Debug, Clone)]
struct Budget {
    used: Rc<Cell<u64>>,
    limit: u64,
}

impl Budget {
    fn exceeded(&self) -> bool {
        self.used.get() > self.limit
    }
}

/// Counts what passes through, and fails once past the budget.
struct Counted<R> {
    inner: R,
    budget: Budget,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.budget.exceeded() {
            return Err(io::Error::other("over budget"));
        }
        let n = self.inner.read(buf)?;
        self.budget.used.set(self.budget.used.get() + n as u64);
        if self.budget.exceeded() {
            return Err(io::Error::other("over budget"));
        }
        Ok(n)
    }
}

/// An entry's path as components beneath the target (empty: the target itself).
fn components(entry: &str, path: &Path) -> Result<Vec<OsString>, UnpackError> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => parts.push(name.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnpackError::Escapes { entry: entry.into(), why: "a .. component" }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::Escapes { entry: entry.into(), why: "an absolute path" })
            }
        }
    }
    Ok(parts)
}

fn join(parts: &[OsString]) -> PathBuf {
    parts.iter().collect()
}

/// What is applied to a directory once everything is unpacked.
struct DirMeta {
    entry: String,
    parts: Vec<OsString>,
    meta: Meta,
}

#[derive(Clone, Copy)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
}

/// The target, and how paths are resolved beneath it.
struct Target {
    root: OwnedFd,
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

impl Target {
    /// The directory `parts` names beneath the target, made (0755, then the archive's mode at
    /// the end) where missing. A symlink on the way is followed only while it stays beneath.
    fn directory(&self, entry: &str, parts: &[OsString]) -> Result<OwnedFd, UnpackError> {
        let open = |parts: &[OsString]| {
            let path = if parts.is_empty() { PathBuf::from(".") } else { join(parts) };
            rfs::openat2(
                &self.root,
                &path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                beneath(),
            )
        };
        let mut at = match open(parts) {
            Ok(fd) => return Ok(fd),
            Err(_) => self.root.try_clone().map_err(|source| UnpackError::Io { entry: entry.into(), source })?,
        };
        for (i, name) in parts.iter().enumerate() {
            at = match open(&parts[..=i]) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    match rfs::mkdirat(&at, name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(UnpackError::Io { entry: entry.into(), source: e.into() }),
                    }
                    open(&parts[..=i]).map_err(|e| self.resolve_error(entry, e))?
                }
                Err(e) => return Err(self.resolve_error(entry, e)),
            };
        }
        Ok(at)
    }

    fn resolve_error(&self, entry: &str, e: rustix::io::Errno) -> UnpackError {
        match e {
            rustix::io::Errno::XDEV | rustix::io::Errno::LOOP => {
                UnpackError::Escapes { entry: entry.into(), why: "through a symlink that points out" }
            }
            rustix::io::Errno::NOTDIR => {
                UnpackError::Conflict { entry: entry.into(), why: "a component of its path is not a directory".into() }
            }
            e => UnpackError::Io { entry: entry.into(), source: e.into() },
        }
    }
}

/// Removes what holds `name` in `dir` (never following it), unless it is a directory.
fn clear(dir: &OwnedFd, name: &OsString, entry: &str) -> Result<(), UnpackError> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => Err(UnpackError::Conflict {
            entry: entry.into(),
            why: "a directory of that name was unpacked before".into(),
        }),
        Ok(_) => rfs::unlinkat(dir, name, AtFlags::empty())
            .map_err(|e| UnpackError::Io { entry: entry.into(), source: e.into() }),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(UnpackError::Io { entry: entry.into(), source: e.into() }),
    }
}

/// Owner, then mode (a chown clears set-id bits), then times, on the open file itself.
fn apply(fd: impl AsFd, meta: Meta, entry: &str) -> Result<(), UnpackError> {
    let io = |e: rustix::io::Errno| UnpackError::Io { entry: entry.into(), source: e.into() };
    let fd = fd.as_fd();
    rfs::fchown(fd, Some(rfs::Uid::from_raw(meta.uid)), Some(rfs::Gid::from_raw(meta.gid))).map_err(io)?;
    rfs::fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777)).map_err(io)?;
    let at = Timespec { tv_sec: meta.mtime.min(i64::MAX as u64) as i64, tv_nsec: 0 };
    rfs::futimens(fd, &Timestamps { last_access: at, last_modification: at }).map_err(io)
}

/// What a symlink or hard link entry points at.
fn link_target<R: Read>(entry: &tar::Entry<R>, name: &str) -> Result<PathBuf, UnpackError> {
    let malformed = |reason: String| UnpackError::Malformed { after: Some(name.into()), reason };
    match entry.link_name() {
        Ok(Some(link)) => Ok(link.into_owned()),
        Ok(None) => Err(malformed("a link without a target".into())),
        Err(e) => Err(malformed(e.to_string())),
    }
}

/// Unpacks the archive read from `input` into the directory `target` (which must exist), within
/// `limits`. See the crate docs.
pub fn unpack(input: impl Read, target: &Path, limits: &Limits) -> Result<Unpacked, UnpackError> {
    let target_error = |source: io::Error| UnpackError::Target { path: target.to_path_buf(), source };
    let root = rfs::open(target, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| target_error(e.into()))?;
    let target_fd = Target { root };
    let mut input = BufReader::new(input);
    let compression =
        detect(input.fill_buf().map_err(|e| UnpackError::Malformed { after: None, reason: e.to_string() })?);
    let decompressed: Box<dyn Read> = match compression {
        Compression::Plain => Box::new(input),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| UnpackError::Malformed { after: None, reason: format!("zstd: {e}") })?,
        ),
    };
    let budget = Budget { used: Rc::new(Cell::new(0)), limit: limits.max_bytes };
    let mut archive = tar::Archive::new(Counted { inner: decompressed, budget: budget.clone() });
    let mut out = Unpacked { compression: Some(compression), ..Unpacked::default() };
    let mut last = None::<String>;
    // An error while reading: past the budget, or a malformed archive.
    let read_error = |e: io::Error, entry: Option<&String>| {
        if budget.exceeded() {
            UnpackError::TooLarge { entry: entry.cloned().unwrap_or_default(), limit: budget.limit }
        } else {
            UnpackError::Malformed { after: entry.cloned(), reason: e.to_string() }
        }
    };
    let mut directories: Vec<DirMeta> = Vec::new();
    let entries = archive.entries().map_err(|e| read_error(e, None))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(e, last.as_ref()))?;
        out.entries += 1;
        if out.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries { limit: limits.max_entries });
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        last = Some(name.clone());
        let path =
            entry.path().map_err(|e| UnpackError::Malformed { after: Some(name.clone()), reason: e.to_string() })?;
        let parts = components(&name, &path)?;
        let header = entry.header();
        let kind = header.entry_type();
        let size = entry.size();
        if budget.used.get().saturating_add(size) > budget.limit {
            return Err(UnpackError::TooLarge { entry: name, limit: budget.limit });
        }
        let field = |v: io::Result<u64>| {
            v.map_err(|e| UnpackError::Malformed { after: Some(name.clone()), reason: e.to_string() })
        };
        let meta = Meta {
            uid: field(header.uid())? as u32,
            gid: field(header.gid())? as u32,
            mode: field(header.mode().map(u64::from))? as u32,
            mtime: field(header.mtime())?,
        };
        if kind.is_character_special() || kind.is_block_special() {
            return Err(UnpackError::Device { entry: name });
        }
        let Some((last_part, parent)) = parts.split_last() else {
            // The target itself (`.` or `./`): only a directory, whose metadata it takes.
            if kind.is_dir() {
                directories.push(DirMeta { entry: name, parts, meta });
                out.directories += 1;
                continue;
            }
            return Err(UnpackError::Escapes { entry: name, why: "a `.` entry that is not a directory" });
        };
        let dir = target_fd.directory(&name, parent)?;
        let io = |e: rustix::io::Errno| UnpackError::Io { entry: name.clone(), source: e.into() };
        if kind.is_file() || kind == tar::EntryType::Continuous {
            clear(&dir, last_part, &name)?;
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rfs::openat(&dir, last_part, flags, Mode::from_bits_truncate(0o600)).map_err(io)?;
            let mut file = std::fs::File::from(fd);
            io::copy(&mut entry, &mut file).map_err(|e| {
                if budget.exceeded() {
                    UnpackError::TooLarge { entry: name.clone(), limit: budget.limit }
                } else {
                    UnpackError::Io { entry: name.clone(), source: e }
                }
            })?;
            apply(&file, meta, &name)?;
            out.files += 1;
        } else if kind.is_dir() {
            match rfs::mkdirat(&dir, last_part, Mode::from_bits_truncate(0o700)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {
                    let stat = rfs::statat(&dir, last_part, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
                    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                        // A link or file in its place is replaced, never followed.
                        rfs::unlinkat(&dir, last_part, AtFlags::empty()).map_err(io)?;
                        rfs::mkdirat(&dir, last_part, Mode::from_bits_truncate(0o700)).map_err(io)?;
                    }
                }
                Err(e) => return Err(io(e)),
            }
            directories.push(DirMeta { entry: name, parts, meta });
            out.directories += 1;
        } else if kind.is_symlink() {
            let link = link_target(&entry, &name)?;
            clear(&dir, last_part, &name)?;
            rfs::symlinkat(link.as_os_str(), &dir, last_part).map_err(io)?;
            let (uid, gid) = (rfs::Uid::from_raw(meta.uid), rfs::Gid::from_raw(meta.gid));
            rfs::chownat(&dir, last_part, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
            out.symlinks += 1;
        } else if kind.is_hard_link() {
            let link = link_target(&entry, &name)?;
            let target_parts = components(&name, &link)?;
            let Some((target_name, target_parent)) = target_parts.split_last() else {
                return Err(UnpackError::Conflict { entry: name, why: "a hard link to the target itself".into() });
            };
            let from = target_fd.directory(&name, target_parent)?;
            clear(&dir, last_part, &name)?;
            // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, not what it names.
            rfs::linkat(&from, target_name, &dir, last_part, AtFlags::empty()).map_err(io)?;
            out.hard_links += 1;
        } else if kind.is_fifo() {
            clear(&dir, last_part, &name)?;
            let mode = Mode::from_bits_truncate(meta.mode & 0o7777);
            rfs::mknodat(&dir, last_part, FileType::Fifo, mode, 0).map_err(io)?;
            let (uid, gid) = (rfs::Uid::from_raw(meta.uid), rfs::Gid::from_raw(meta.gid));
            rfs::chownat(&dir, last_part, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
            // The fifo just made here (the umask trimmed mknod's mode); no descriptor of a fifo
            // can be opened without a peer.
            rfs::chmodat(&dir, last_part, mode, AtFlags::empty()).map_err(io)?;
            out.fifos += 1;
        } else {
            return Err(UnpackError::Unsupported { entry: name, kind: format!("{kind:?}") });
        }
    }
    // Deepest first, so a directory made read-only is not needed writable afterwards.
    for dir in directories.iter().rev() {
        let path = if dir.parts.is_empty() { PathBuf::from(".") } else { join(&dir.parts) };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat2(&target_fd.root, &path, flags, Mode::empty(), beneath())
            .map_err(|e| target_fd.resolve_error(&dir.entry, e))?;
        apply(&fd, dir.meta, &dir.entry)?;
    }
    out.bytes = budget.used.get();
    Ok(out)
}
