//! Named network namespaces as bind mounts under /run/netns (what `ip netns` and containers use),
//! and running code inside one.
//!
//! A namespace is created by a short-lived dedicated thread that unshares its own network
//! namespace and bind-mounts `/proc/thread-self/ns/net` onto the name. rtnetlink's
//! `NetworkNamespace::add` forks instead, which is unsafe inside a multi-threaded async runtime.
//! Work inside a namespace (opening a netlink socket, running `nft`) likewise happens on a fresh
//! thread that `setns`es first and ends afterwards, so no runtime thread ever changes namespace.

use crate::names::{NameError, NetnsName};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const DEFAULT_NETNS_DIR: &str = "/run/netns";

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("network namespace {0} exists already")]
    Exists(NetnsName),
    #[error("network namespace {0} does not exist")]
    NotFound(NetnsName),
    #[error("{0} is not a network namespace (no namespace is mounted there)")]
    NotANamespace(PathBuf),
    #[error("cannot {op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("cannot {op}: {source}")]
    Sys { op: &'static str, source: nix::Error },
    #[error("the worker thread for namespace work could not run: {0}")]
    Thread(String),
}

/// The named namespaces in one directory (`/run/netns` on a node).
#[derive(Debug)]
pub struct Namespaces {
    dir: PathBuf,
    dir_ready: OnceLock<()>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::at(DEFAULT_NETNS_DIR)
    }
}

impl Namespaces {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), dir_ready: OnceLock::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &NetnsName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// Makes the directory a shared mount (as `ip netns` does), so namespaces mounted later are
    /// seen by mount namespaces created after it, such as containers'.
    fn prepare_dir(&self) -> Result<(), NamespaceError> {
        if self.dir_ready.get().is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| NamespaceError::Io {
            op: "create",
            path: self.dir.clone(),
            source,
        })?;
        let shared =
            || mount(None::<&str>, &self.dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
        if let Err(nix::Error::EINVAL) = shared() {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(Some(&self.dir), &self.dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(
                |source| NamespaceError::Sys { op: "bind-mount the namespace directory onto itself", source },
            )?;
            shared().map_err(|source| NamespaceError::Sys { op: "make the namespace directory shared", source })?;
        }
        let _ = self.dir_ready.set(());
        Ok(())
    }

    /// Creates the namespace `name`; nothing is left behind when it fails.
    pub async fn create(&self, name: &NetnsName) -> Result<PathBuf, NamespaceError> {
        self.prepare_dir()?;
        let path = self.path(name);
        std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                NamespaceError::Exists(name.clone())
            } else {
                NamespaceError::Io { op: "create", path: path.clone(), source }
            }
        })?;
        let target = path.clone();
        let made = run_on_thread(move || -> Result<(), NamespaceError> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|source| NamespaceError::Sys { op: "unshare a network namespace", source })?;
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|source| NamespaceError::Sys { op: "bind-mount the new namespace", source })
        })
        .await
        .and_then(|r| r);
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Unmounts and removes the namespace `name`. Its links go when nothing else holds it.
    pub fn delete(&self, name: &NetnsName) -> Result<PathBuf, NamespaceError> {
        let path = self.path(name);
        if !path.exists() {
            return Err(NamespaceError::NotFound(name.clone()));
        }
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(source) => return Err(NamespaceError::Sys { op: "unmount the namespace", source }),
        }
        std::fs::remove_file(&path).map_err(|source| NamespaceError::Io {
            op: "remove",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// The namespaces present, sorted; files with names this provider would refuse are skipped.
    pub fn list(&self) -> Result<Vec<NetnsName>, NamespaceError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(NamespaceError::Io { op: "read", path: self.dir.clone(), source }),
        };
        let mut names: Vec<NetnsName> =
            entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| NetnsName::new(n).ok())).collect();
        names.sort();
        Ok(names)
    }

    /// Opens the namespace `name`, or the provider's own for `None`.
    pub fn open(&self, name: Option<&NetnsName>) -> Result<File, NamespaceError> {
        let Some(name) = name else {
            let own = Path::new("/proc/self/ns/net");
            return File::open(own).map_err(|source| NamespaceError::Io { op: "open", path: own.into(), source });
        };
        let path = self.path(name);
        File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                NamespaceError::NotFound(name.clone())
            } else {
                NamespaceError::Io { op: "open", path, source }
            }
        })
    }

    /// Runs `work` on a fresh thread inside the namespace `name` (the provider's own for `None`).
    pub async fn run_in<T, F>(&self, name: Option<&NetnsName>, work: F) -> Result<T, NamespaceError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let file = self.open(name)?;
        let path = name.map(|n| self.path(n)).unwrap_or_else(|| "/proc/self/ns/net".into());
        run_on_thread(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| match source {
                nix::Error::EINVAL => NamespaceError::NotANamespace(path),
                source => NamespaceError::Sys { op: "enter the namespace", source },
            })?;
            Ok(work())
        })
        .await?
    }
}

/// Runs `work` on a new OS thread that ends with it, awaiting its result.
async fn run_on_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, NamespaceError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-worker".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| NamespaceError::Thread(e.to_string()))?;
    rx.await.map_err(|_| NamespaceError::Thread("it panicked".into()))
}
