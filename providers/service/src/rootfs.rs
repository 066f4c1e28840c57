//! A service's root filesystem for one start: a fresh ZFS clone (through `zfs-*` sub-tasks),
//! an overlay with a fresh upper layer over a host directory, or a host directory as it is.

use crate::definition::{RootfsSource, ServiceKey};
use crate::error::ServiceError;
use cerana_protocol::tasks::zfs::{
    CloneArgs, CreateArgs as ZfsCreateArgs, DatasetName, DatasetType, DestroyArgs, NameArgs, SnapshotArgs,
    SnapshotName, ZfsClone, ZfsCreate, ZfsDestroy, ZfsErrorReason, ZfsExists, ZfsSnapshot,
};
use cerana_protocol::TaskError;
use cerana_provider_sdk::Context;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The ZFS operations a start needs; served by the zfs provider through sub-tasks.
pub trait Zfs: Send + Sync + std::fmt::Debug {
    fn exists<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, TaskError>>;
    fn create_filesystem<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), TaskError>>;
    fn snapshot<'a>(&'a self, dataset: &'a str, snapname: &'a str) -> BoxFuture<'a, Result<(), TaskError>>;
    fn clone_to<'a>(
        &'a self,
        origin: &'a str,
        name: &'a str,
        mountpoint: &'a Path,
    ) -> BoxFuture<'a, Result<(), TaskError>>;
    fn destroy<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), TaskError>>;
}

/// [`Zfs`] through the coordinator, with the context of the latest request this provider got
/// (restarts happen between requests; a sub-task needs a live connection, not a live request).
#[derive(Debug, Clone, Default)]
pub struct ZfsTasks {
    latest: Arc<Mutex<Option<Context>>>,
}

impl ZfsTasks {
    pub fn remember(&self, ctx: &Context) {
        *self.latest.lock().expect("context lock") = Some(ctx.clone());
    }

    fn ctx(&self) -> Result<Context, TaskError> {
        self.latest.lock().expect("context lock").clone().ok_or_else(|| {
            TaskError::new(cerana_protocol::ErrorCode::Unavailable, "no connection to the coordinator yet")
        })
    }
}

impl Zfs for ZfsTasks {
    fn exists<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, TaskError>> {
        Box::pin(async move { Ok(self.ctx()?.call::<ZfsExists>(&NameArgs { name: name.to_owned() }).await?.exists) })
    }
    fn create_filesystem<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(async move {
            let args = ZfsCreateArgs {
                name: name.to_owned(),
                kind: DatasetType::Filesystem,
                volsize: None,
                properties: BTreeMap::from([("canmount".to_owned(), "off".to_owned())]),
            };
            self.ctx()?.call::<ZfsCreate>(&args).await.map(|_| ())
        })
    }
    fn snapshot<'a>(&'a self, dataset: &'a str, snapname: &'a str) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(async move {
            let args = SnapshotArgs { name: dataset.to_owned(), snapname: snapname.to_owned(), recursive: false };
            self.ctx()?.call::<ZfsSnapshot>(&args).await.map(|_| ())
        })
    }
    fn clone_to<'a>(
        &'a self,
        origin: &'a str,
        name: &'a str,
        mountpoint: &'a Path,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(async move {
            let properties = BTreeMap::from([("mountpoint".to_owned(), mountpoint.display().to_string())]);
            let args = CloneArgs { name: name.to_owned(), origin: origin.to_owned(), properties };
            self.ctx()?.call::<ZfsClone>(&args).await.map(|_| ())
        })
    }
    fn destroy<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(async move {
            let args = DestroyArgs { name: name.to_owned(), force_unmount: true, ..Default::default() };
            self.ctx()?.call::<ZfsDestroy>(&args).await.map(|_| ())
        })
    }
}

fn zfs_reason(e: &TaskError) -> Option<String> {
    e.details.as_ref()?.get("reason")?.as_str().map(str::to_owned)
}

fn is_reason(e: &TaskError, reason: ZfsErrorReason) -> bool {
    zfs_reason(e).as_deref() == Some(reason.as_str())
}

/// One start's root filesystem; [`Rootfs::release`] undoes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    pub path: PathBuf,
    /// The clone dataset (ZFS).
    pub clone: Option<String>,
    /// The overlay's scratch directory (upper, work, merged).
    scratch: Option<PathBuf>,
}

/// The snapshot a ZFS service clones from when given a dataset rather than a snapshot.
pub fn service_snapshot(dataset: &DatasetName, key: &ServiceKey) -> Result<SnapshotName, ServiceError> {
    SnapshotName::of(dataset, &format!("service-{}", key.id)).map_err(|e| ServiceError::invalid(e.to_string()))
}

/// The clone of one service: `<pool>/running-clones/<bundle>.<id>` (the original's layout).
pub fn clone_name(pool: &str, key: &ServiceKey) -> Result<DatasetName, ServiceError> {
    DatasetName::new(format!("{pool}/running-clones/{key}")).map_err(|e| ServiceError::invalid(e.to_string()))
}

/// Checks that the source exists (before anything is made), and for a ZFS dataset takes its
/// snapshot once. Returns what to release when the service is removed.
pub async fn check_source(
    source: &RootfsSource,
    key: &ServiceKey,
    zfs: &dyn Zfs,
) -> Result<Option<SnapshotName>, ServiceError> {
    let zfs_failed = |e: TaskError| ServiceError::Rootfs(format!("zfs: {e}"));
    match source {
        RootfsSource::Overlay(dir) | RootfsSource::Directory(dir) => {
            if dir.is_dir() {
                Ok(None)
            } else {
                Err(ServiceError::DatasetMissing(dir.display().to_string()))
            }
        }
        RootfsSource::ZfsSnapshot(snap) => {
            if zfs.exists(snap.as_str()).await.map_err(zfs_failed)? {
                Ok(None)
            } else {
                Err(ServiceError::DatasetMissing(snap.to_string()))
            }
        }
        RootfsSource::ZfsDataset(dataset) => {
            if !zfs.exists(dataset.as_str()).await.map_err(zfs_failed)? {
                return Err(ServiceError::DatasetMissing(dataset.to_string()));
            }
            let snap = service_snapshot(dataset, key)?;
            match zfs.snapshot(dataset.as_str(), snap.snapshot()).await {
                Ok(()) => Ok(Some(snap)),
                // Kept from an earlier create of the same service (overwrite): clone it.
                Err(e) if is_reason(&e, ZfsErrorReason::Exists) => Ok(None),
                Err(e) => Err(zfs_failed(e)),
            }
        }
    }
}

/// Makes a fresh root filesystem under `scratch_dir` (for an overlay) or at `mountpoint` (for a
/// clone).
pub async fn prepare(
    source: &RootfsSource,
    key: &ServiceKey,
    run_dir: &Path,
    zfs: &dyn Zfs,
) -> Result<Rootfs, ServiceError> {
    match source {
        RootfsSource::Directory(dir) => Ok(Rootfs { path: dir.clone(), clone: None, scratch: None }),
        RootfsSource::Overlay(lower) => prepare_overlay(lower, &run_dir.join("overlay")),
        RootfsSource::ZfsSnapshot(snap) => prepare_clone(snap, key, run_dir, zfs).await,
        RootfsSource::ZfsDataset(dataset) => prepare_clone(&service_snapshot(dataset, key)?, key, run_dir, zfs).await,
    }
}

async fn prepare_clone(
    snap: &SnapshotName,
    key: &ServiceKey,
    run_dir: &Path,
    zfs: &dyn Zfs,
) -> Result<Rootfs, ServiceError> {
    let failed = |what: &str, e: TaskError| ServiceError::Rootfs(format!("{what}: {e}"));
    let pool = snap.dataset().pool().to_owned();
    let clone = clone_name(&pool, key)?;
    if let Some(parent) = clone.parent() {
        if !zfs.exists(parent.as_str()).await.map_err(|e| failed("zfs-exists", e))? {
            match zfs.create_filesystem(parent.as_str()).await {
                Ok(()) => {}
                Err(e) if is_reason(&e, ZfsErrorReason::Exists) => {}
                Err(e) => return Err(failed("zfs-create", e)),
            }
        }
    }
    // A clone left by a provider that died mid-run is stale: start from the snapshot again.
    match zfs.destroy(clone.as_str()).await {
        Ok(()) => {}
        Err(e) if is_reason(&e, ZfsErrorReason::NotFound) => {}
        Err(e) => return Err(failed("zfs-destroy of the old clone", e)),
    }
    let mountpoint = run_dir.join("rootfs");
    zfs.clone_to(snap.as_str(), clone.as_str(), &mountpoint).await.map_err(|e| failed("zfs-clone", e))?;
    Ok(Rootfs { path: mountpoint, clone: Some(clone.to_string()), scratch: None })
}

fn prepare_overlay(lower: &Path, scratch: &Path) -> Result<Rootfs, ServiceError> {
    let io = |what: &str, e: std::io::Error| ServiceError::Rootfs(format!("{what} {}: {e}", scratch.display()));
    // A fresh upper layer on every start: whatever the last run wrote is gone.
    release_overlay(scratch);
    let (upper, work, merged) = (scratch.join("upper"), scratch.join("work"), scratch.join("merged"));
    for dir in [&upper, &work, &merged] {
        std::fs::create_dir_all(dir).map_err(|e| io("mkdir", e))?;
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    if let Err(e) = mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(options.as_str())) {
        let _ = std::fs::remove_dir_all(scratch);
        return Err(if e == nix::errno::Errno::ENODEV {
            ServiceError::Unavailable("overlayfs is not available in this kernel".into())
        } else {
            ServiceError::Rootfs(format!("mount overlay on {}: {e}", merged.display()))
        });
    }
    Ok(Rootfs { path: merged, clone: None, scratch: Some(scratch.to_owned()) })
}

fn release_overlay(scratch: &Path) {
    let merged = scratch.join("merged");
    let _ = umount2(&merged, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(scratch);
}

/// How long a busy clone is retried on release.
const RELEASE_BUSY_FOR: Duration = Duration::from_secs(10);

impl Rootfs {
    /// A clone on its own, to release one whose run has ended.
    pub fn of_clone(clone: String) -> Self {
        Self { path: PathBuf::new(), clone: Some(clone), scratch: None }
    }

    /// Unmounts and removes the overlay, or destroys the clone.
    pub async fn release(&self, zfs: &dyn Zfs) -> Result<(), ServiceError> {
        if let Some(scratch) = &self.scratch {
            release_overlay(scratch);
        }
        if let Some(clone) = &self.clone {
            // A container just killed can keep its mount of the clone for a moment while the
            // kernel tears its mount namespace down: busy is retried, for a few seconds.
            let mut wait = Duration::from_millis(100);
            let deadline = tokio::time::Instant::now() + RELEASE_BUSY_FOR;
            loop {
                match zfs.destroy(clone).await {
                    Ok(()) => break,
                    Err(e) if is_reason(&e, ZfsErrorReason::NotFound) => break,
                    Err(e) if is_reason(&e, ZfsErrorReason::Busy) && tokio::time::Instant::now() + wait < deadline => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => return Err(ServiceError::Rootfs(format!("zfs-destroy {clone}: {e}"))),
                }
            }
        }
        Ok(())
    }
}

/// Finds `cmd0` in the root filesystem as the container will (a bare name through `path`),
/// resolving symlinks inside the root, and checks that it is an executable file.
pub fn find_binary(root: &Path, cmd0: &str, path: &str) -> Result<(), ServiceError> {
    let candidates: Vec<String> = if cmd0.contains('/') {
        vec![cmd0.to_owned()]
    } else {
        path.split(':').filter(|d| d.starts_with('/')).map(|d| format!("{d}/{cmd0}")).collect()
    };
    let root_fd =
        std::fs::File::open(root).map_err(|e| ServiceError::Rootfs(format!("open {}: {e}", root.display())))?;
    for candidate in &candidates {
        if let Some(mode) = stat_in_root(&root_fd, candidate) {
            let is_file = mode & libc::S_IFMT == libc::S_IFREG;
            if is_file && mode & 0o111 != 0 {
                return Ok(());
            }
            return Err(ServiceError::BinaryMissing {
                binary: cmd0.to_owned(),
                detail: format!(" ({candidate} is not an executable file)"),
            });
        }
    }
    let detail = if cmd0.contains('/') { String::new() } else { format!(" (searched {path})") };
    Err(ServiceError::BinaryMissing { binary: cmd0.to_owned(), detail })
}

/// The mode of `path` resolved with `root` as `/` (openat2 RESOLVE_IN_ROOT), None when absent.
fn stat_in_root(root: &std::fs::File, path: &str) -> Option<u32> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let c_path = std::ffi::CString::new(path).ok()?;
    // SAFETY: open_how is plain data; all zeroes is its empty value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: valid fd, NUL-terminated path and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: openat2 just returned this fd and nothing else owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| m.mode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn binaries_are_resolved_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("busybox"), b"x").unwrap();
        std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink("/bin/busybox", bin.join("sh")).unwrap();
        std::fs::write(bin.join("data"), b"x").unwrap();
        find_binary(root.path(), "/bin/sh", "/bin").unwrap();
        find_binary(root.path(), "sh", "/usr/bin:/bin").unwrap();
        let e = find_binary(root.path(), "/bin/nope", "/bin").unwrap_err();
        assert_eq!(e.reason().as_str(), "binary-missing");
        let e = find_binary(root.path(), "/bin/data", "/bin").unwrap_err();
        assert!(e.to_string().contains("not an executable"), "{e}");
        let e = find_binary(root.path(), "nope", "/usr/bin:/bin").unwrap_err();
        assert!(e.to_string().contains("searched"), "{e}");
        // An absolute link must not escape to the host's /usr/bin/env.
        symlink("/usr/bin/env", bin.join("escape")).unwrap();
        assert!(find_binary(root.path(), "/bin/escape", "/bin").is_err());
    }

    /// ZFS as the zfs provider answers (the kernel module cannot load on a build host): a set
    /// of names and the reasons of its errors; records every call.
    #[derive(Debug, Default)]
    struct RecordingZfs {
        names: Mutex<std::collections::BTreeSet<String>>,
        calls: Mutex<Vec<String>>,
        busy: Mutex<u32>,
    }

    fn zfs_error(reason: ZfsErrorReason, name: &str) -> TaskError {
        TaskError::new(reason.code(), format!("{name}: {reason}"))
            .with_details(serde_json::json!({ "reason": reason.as_str() }))
    }

    impl RecordingZfs {
        fn with(names: &[&str]) -> Self {
            let zfs = Self::default();
            zfs.names.lock().unwrap().extend(names.iter().map(|n| n.to_string()));
            zfs
        }
        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
        fn add(&self, name: &str) -> Result<(), TaskError> {
            if self.names.lock().unwrap().insert(name.to_owned()) {
                Ok(())
            } else {
                Err(zfs_error(ZfsErrorReason::Exists, name))
            }
        }
    }

    impl Zfs for RecordingZfs {
        fn exists<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, TaskError>> {
            self.record(format!("exists {name}"));
            Box::pin(async move { Ok(self.names.lock().unwrap().contains(name)) })
        }
        fn create_filesystem<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), TaskError>> {
            self.record(format!("create {name}"));
            Box::pin(async move { self.add(name) })
        }
        fn snapshot<'a>(&'a self, dataset: &'a str, snapname: &'a str) -> BoxFuture<'a, Result<(), TaskError>> {
            self.record(format!("snapshot {dataset}@{snapname}"));
            Box::pin(async move { self.add(&format!("{dataset}@{snapname}")) })
        }
        fn clone_to<'a>(
            &'a self,
            origin: &'a str,
            name: &'a str,
            mountpoint: &'a Path,
        ) -> BoxFuture<'a, Result<(), TaskError>> {
            self.record(format!("clone {origin} {name} {}", mountpoint.display()));
            Box::pin(async move {
                if !self.names.lock().unwrap().contains(origin) {
                    return Err(zfs_error(ZfsErrorReason::NotFound, origin));
                }
                self.add(name)
            })
        }
        fn destroy<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), TaskError>> {
            self.record(format!("destroy {name}"));
            Box::pin(async move {
                let mut busy = self.busy.lock().unwrap();
                if *busy > 0 {
                    *busy -= 1;
                    return Err(zfs_error(ZfsErrorReason::Busy, name));
                }
                if self.names.lock().unwrap().remove(name) {
                    Ok(())
                } else {
                    Err(zfs_error(ZfsErrorReason::NotFound, name))
                }
            })
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    }

    #[test]
    fn a_clone_busy_for_a_moment_is_destroyed_on_release() {
        let zfs = RecordingZfs::with(&["data", "data/img", "data/img@service-web"]);
        let key = ServiceKey::new("b1", "web").unwrap();
        let source = RootfsSource::ZfsDataset(DatasetName::new("data/img").unwrap());
        let rootfs = block_on(prepare(&source, &key, Path::new("/run/x"), &zfs)).unwrap();
        *zfs.busy.lock().unwrap() = 3;
        block_on(rootfs.release(&zfs)).unwrap();
        assert!(!zfs.names.lock().unwrap().contains("data/running-clones/b1.web"));
        let tries = zfs.calls.lock().unwrap().iter().filter(|c| *c == "destroy data/running-clones/b1.web").count();
        assert_eq!(tries, 1 + 4, "one destroy before the clone, then 3 busy and the one that went");
    }

    #[test]
    fn a_dataset_is_snapshotted_once_and_cloned_afresh_on_every_start() {
        let zfs = RecordingZfs::with(&["data", "data/img"]);
        let key = ServiceKey::new("b1", "web").unwrap();
        let source = RootfsSource::ZfsDataset(DatasetName::new("data/img").unwrap());
        let taken = block_on(check_source(&source, &key, &zfs)).unwrap();
        assert_eq!(taken.unwrap().as_str(), "data/img@service-web");
        let run_dir = Path::new("/run/cerana/service/services/b1.web");
        let first = block_on(prepare(&source, &key, run_dir, &zfs)).unwrap();
        assert_eq!(first.clone.as_deref(), Some("data/running-clones/b1.web"));
        assert_eq!(first.path, run_dir.join("rootfs"));
        block_on(first.release(&zfs)).unwrap();
        let second = block_on(prepare(&source, &key, run_dir, &zfs)).unwrap();
        block_on(second.release(&zfs)).unwrap();
        let calls = zfs.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                "exists data/img",
                "snapshot data/img@service-web",
                "exists data/running-clones",
                "create data/running-clones",
                "destroy data/running-clones/b1.web",
                "clone data/img@service-web data/running-clones/b1.web /run/cerana/service/services/b1.web/rootfs",
                "destroy data/running-clones/b1.web",
                "exists data/running-clones",
                "destroy data/running-clones/b1.web",
                "clone data/img@service-web data/running-clones/b1.web /run/cerana/service/services/b1.web/rootfs",
                "destroy data/running-clones/b1.web",
            ]
        );
        assert!(!zfs.names.lock().unwrap().contains("data/running-clones/b1.web"));
        // Created again with overwrite: the snapshot exists and is reused, not taken again.
        assert_eq!(block_on(check_source(&source, &key, &zfs)).unwrap(), None);
    }

    #[test]
    fn a_missing_dataset_or_snapshot_is_dataset_missing_and_makes_nothing() {
        let zfs = RecordingZfs::with(&["data"]);
        let key = ServiceKey::new("b1", "web").unwrap();
        for source in [
            RootfsSource::ZfsDataset(DatasetName::new("data/none").unwrap()),
            RootfsSource::ZfsSnapshot(SnapshotName::new("data/none@v1").unwrap()),
            RootfsSource::Overlay("/nonexistent/dir".into()),
        ] {
            let err = block_on(check_source(&source, &key, &zfs)).unwrap_err();
            assert_eq!(err.reason().as_str(), "dataset-missing", "{source:?}");
        }
        assert_eq!(*zfs.names.lock().unwrap(), ["data".to_owned()].into());
    }

    #[test]
    fn clone_names_follow_the_original_layout() {
        let key = ServiceKey::new("b1", "web").unwrap();
        assert_eq!(clone_name("data", &key).unwrap().as_str(), "data/running-clones/b1.web");
        let snap = service_snapshot(&DatasetName::new("data/img").unwrap(), &key).unwrap();
        assert_eq!(snap.as_str(), "data/img@service-web");
    }
}
