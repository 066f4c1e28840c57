//! The image root assembled on disk: files are taken from a sysroot (the unpacked packages)
//! together with the symlinks leading to them and, for ELF files, their shared-library closure.

use std::collections::BTreeSet;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::cpio::{Entry, EntryKind};
use crate::elf;

#[derive(Debug, Error)]
pub enum RootfsError {
    #[error("{0} is not in any package of the manifest")]
    NotInPackages(String),
    #[error("library {lib} needed by {by} is not in any package of the manifest")]
    MissingLibrary { lib: String, by: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Elf { path: String, source: elf::ElfError },
    #[error("symlink loop at {0}")]
    SymlinkLoop(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io { path: path.to_owned(), source }
}

/// Library directories searched for DT_NEEDED names (Debian's multiarch layout, not merged-/usr).
const LIBRARY_DIRS: &[&str] = &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib", "/lib64"];

/// Joins an absolute image path under a root directory.
pub fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Lexically normalises an absolute path (`..` and `.` removed).
fn normalise(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

#[derive(Debug)]
pub struct Rootfs {
    pub root: PathBuf,
    sysroot: PathBuf,
    done: BTreeSet<String>,
}

impl Rootfs {
    pub fn new(root: PathBuf, sysroot: PathBuf) -> Result<Self, RootfsError> {
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(io(&root))?;
        }
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(Self { root, sysroot, done: BTreeSet::new() })
    }

    pub fn mkdir(&self, abs: &str, mode: u32) -> Result<(), RootfsError> {
        let p = under(&self.root, abs);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io(&p))
    }

    /// Places a file from anywhere (e.g. a binary built in this workspace) at `abs`.
    pub fn install(&mut self, src: &Path, abs: &str, mode: u32) -> Result<(), RootfsError> {
        let dst = under(&self.root, abs);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::copy(src, &dst).map_err(io(src))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).map_err(io(&dst))?;
        self.done.insert(abs.to_owned());
        Ok(())
    }

    pub fn write(&mut self, abs: &str, bytes: &[u8], mode: u32) -> Result<(), RootfsError> {
        let dst = under(&self.root, abs);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&dst, bytes).map_err(io(&dst))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).map_err(io(&dst))?;
        self.done.insert(abs.to_owned());
        Ok(())
    }

    pub fn symlink(&mut self, abs: &str, target: &str) -> Result<(), RootfsError> {
        let dst = under(&self.root, abs);
        if dst.symlink_metadata().is_ok() {
            return Ok(());
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        symlink(target, &dst).map_err(io(&dst))?;
        self.done.insert(abs.to_owned());
        Ok(())
    }

    pub fn exists(&self, abs: &str) -> bool {
        under(&self.root, abs).symlink_metadata().is_ok()
    }

    /// Copies `abs` (file, symlink or whole directory) from the sysroot; ELF files bring their
    /// libraries.
    pub fn take(&mut self, abs: &str) -> Result<(), RootfsError> {
        self.take_depth(abs, 0, true)
    }

    /// Copies `abs` as it is: ELF files in it (e.g. firmware for other machines) are data.
    pub fn take_data(&mut self, abs: &str) -> Result<(), RootfsError> {
        self.take_depth(abs, 0, false)
    }

    fn take_depth(&mut self, abs: &str, depth: usize, libraries: bool) -> Result<(), RootfsError> {
        if depth > 40 {
            return Err(RootfsError::SymlinkLoop(abs.into()));
        }
        if !self.done.insert(abs.to_owned()) {
            return Ok(());
        }
        let src = under(&self.sysroot, abs);
        let meta = src.symlink_metadata().map_err(|_| RootfsError::NotInPackages(abs.into()))?;
        let dst = under(&self.root, abs);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src).map_err(io(&src))?;
            symlink(&target, &dst).map_err(io(&dst))?;
            let resolved = if target.is_absolute() {
                normalise(&target)
            } else {
                normalise(&Path::new(abs).parent().unwrap_or(Path::new("/")).join(&target))
            };
            return self.take_depth(&resolved, depth + 1, libraries);
        }
        if meta.is_dir() {
            std::fs::create_dir_all(&dst).map_err(io(&dst))?;
            let mut names: Vec<String> = std::fs::read_dir(&src)
                .map_err(io(&src))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                self.take_depth(&format!("{}/{name}", abs.trim_end_matches('/')), depth, libraries)?;
            }
            return Ok(());
        }
        std::fs::copy(&src, &dst).map_err(io(&src))?;
        if libraries {
            self.add_libraries_of(&dst, abs)?;
        }
        Ok(())
    }

    /// Adds the interpreter and DT_NEEDED closure of an ELF file already in the root.
    pub fn add_libraries_of(&mut self, file_in_root: &Path, abs: &str) -> Result<(), RootfsError> {
        let bytes = std::fs::read(file_in_root).map_err(io(file_in_root))?;
        if !elf::is_elf(&bytes) {
            return Ok(());
        }
        let dynamic = elf::parse(&bytes).map_err(|source| RootfsError::Elf { path: abs.into(), source })?;
        if let Some(interp) = &dynamic.interpreter {
            self.take(interp)?;
        }
        let origin = Path::new(abs).parent().unwrap_or(Path::new("/")).to_string_lossy().into_owned();
        for lib in &dynamic.needed {
            let mut dirs: Vec<String> = dynamic.runpath.iter().map(|r| r.replace("$ORIGIN", &origin)).collect();
            dirs.extend(LIBRARY_DIRS.iter().map(|d| (*d).to_owned()));
            let found = dirs
                .iter()
                .map(|d| format!("{}/{lib}", d.trim_end_matches('/')))
                .find(|candidate| under(&self.sysroot, candidate).exists());
            match found {
                Some(path) => self.take(&path)?,
                None => return Err(RootfsError::MissingLibrary { lib: lib.clone(), by: abs.into() }),
            }
        }
        Ok(())
    }

    /// Every path in the root as archive entries, parents before children, names sorted.
    pub fn entries(&self) -> Result<Vec<Entry>, RootfsError> {
        let mut out = Vec::new();
        walk(&self.root, "", &mut out)?;
        Ok(out)
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> Result<(), RootfsError> {
    let mut names: Vec<std::ffi::OsString> =
        std::fs::read_dir(dir).map_err(io(dir))?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = format!("{prefix}{}", name.to_string_lossy());
        let meta = path.symlink_metadata().map_err(io(&path))?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            out.push(Entry { path: rel, mode: 0o777, kind: EntryKind::Symlink(target.to_string_lossy().into_owned()) });
        } else if meta.is_dir() {
            out.push(Entry { path: rel.clone(), mode, kind: EntryKind::Dir });
            walk(&path, &format!("{rel}/"), out)?;
        } else {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            out.push(Entry { path: rel, mode, kind: EntryKind::File(bytes) });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_binary_brings_its_library_closure_and_symlinks() {
        // The host itself serves as the sysroot: a Debian system has the same layout.
        let dir = tempfile::tempdir().unwrap();
        let mut fs = Rootfs::new(dir.path().join("root"), PathBuf::from("/")).unwrap();
        fs.take("/bin/ls").unwrap();
        assert!(fs.exists("/lib64/ld-linux-x86-64.so.2"));
        assert!(fs.exists("/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(fs.exists("/lib/x86_64-linux-gnu/libselinux.so.1"));
        let entries = fs.entries().unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "parents come before children in name order");
    }

    #[test]
    fn missing_files_and_libraries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let sysroot = dir.path().join("sys");
        std::fs::create_dir_all(sysroot.join("bin")).unwrap();
        std::fs::copy("/bin/true", sysroot.join("bin/true")).unwrap();
        let mut fs = Rootfs::new(dir.path().join("root"), sysroot).unwrap();
        let err = fs.take("/bin/nope").unwrap_err().to_string();
        assert!(err.contains("/bin/nope"), "{err}");
        let err = fs.take("/bin/true").unwrap_err().to_string();
        assert!(err.contains("ld-linux") || err.contains("libc.so.6"), "{err}");
    }

    #[test]
    fn data_files_are_not_treated_as_programs() {
        let dir = tempfile::tempdir().unwrap();
        let sysroot = dir.path().join("sys");
        std::fs::create_dir_all(sysroot.join("usr/share/qemu")).unwrap();
        let mut elf32 = vec![0u8; 64];
        elf32[..5].copy_from_slice(b"\x7fELF\x01");
        std::fs::write(sysroot.join("usr/share/qemu/hppa-firmware.img"), &elf32).unwrap();
        let mut fs = Rootfs::new(dir.path().join("root"), sysroot).unwrap();
        fs.take_data("/usr/share/qemu").unwrap();
        assert!(fs.exists("/usr/share/qemu/hppa-firmware.img"));
        let mut fs2 = Rootfs::new(dir.path().join("root2"), dir.path().join("sys")).unwrap();
        assert!(matches!(fs2.take("/usr/share/qemu/hppa-firmware.img"), Err(RootfsError::Elf { .. })));
    }

    #[test]
    fn relative_symlinks_are_resolved_lexically() {
        assert_eq!(normalise(Path::new("/lib64/../lib/x86_64-linux-gnu/./ld.so")), "/lib/x86_64-linux-gnu/ld.so");
    }
}
