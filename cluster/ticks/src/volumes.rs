//! A bundle's volumes on this node, its declared datasets: ZFS clones of a cluster dataset's
//! snapshot, kept (`rw_zfs`, under `data/volumes`) or thrown away when the bundle stops here
//! (`temp_zfs`, under `data/scratch`), and RAM disks (a tmpfs of the quota's size). They are
//! made before the bundle's services, which bind-mount them from `<root>/<bundle>/<kind>/<name>`,
//! and removed after them. What a volume is, is read back from where it lives (its dataset's
//! parent, or a tmpfs mount), so a stop needs no list.

use cerana_protocol::tasks::clusterconf::{is_volume_name, DatasetKind};
use cerana_protocol::tasks::ticks::{kind_name, Volume, RAM_DISK_DEFAULT, SCRATCH_ON_POOL, VOLUMES, VOLUMES_ON_POOL};
use cerana_protocol::tasks::zfs::{
    CloneArgs, CreateArgs, Dataset, DatasetType, DestroyArgs, ListArgs, MountArgs, ZfsClone, ZfsCreate, ZfsDestroy,
    ZfsList, ZfsMount,
};
use cerana_protocol::{ErrorCode, TaskError};
use cerana_provider_sdk::Context;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where this node makes volumes.
#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
}

impl Default for Volumes {
    fn default() -> Self {
        Self { root: PathBuf::from(VOLUMES) }
    }
}

fn failed(what: String) -> TaskError {
    TaskError::new(ErrorCode::Internal, what)
}

/// How long, and how often, a volume still busy on removal is tried again.
const BUSY_FOR: std::time::Duration = std::time::Duration::from_secs(10);
const BUSY_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The parents of the ZFS volumes: kept, then thrown away.
const PARENTS: [(&str, DatasetKind); 2] =
    [(VOLUMES_ON_POOL, DatasetKind::RwZfs), (SCRATCH_ON_POOL, DatasetKind::TempZfs)];

impl Volumes {
    fn path(&self, bundle: &str, kind: DatasetKind, name: &str) -> PathBuf {
        self.root.join(bundle).join(kind_name(kind)).join(name)
    }

    /// Makes `volume` of `bundle` unless it is there.
    pub async fn make(&self, ctx: &Context, bundle: &str, volume: &Volume) -> Result<(), TaskError> {
        let path = self.path(bundle, volume.kind, &volume.name);
        let Some(dataset) = volume.dataset(bundle) else {
            return ram_disk(&path, volume.quota.unwrap_or(RAM_DISK_DEFAULT)).map(drop);
        };
        let parent = dataset.rsplit_once('/').map_or(dataset.as_str(), |(p, _)| p);
        let here = children(ctx, parent).await?;
        if let Some(there) = here.iter().find(|d| d.name == dataset) {
            // A kept volume from before the node restarted may not be mounted yet.
            if there.mounted == Some(false) {
                ctx.call::<ZfsMount>(&MountArgs { name: dataset, overlay: false }).await?;
            }
            return Ok(());
        }
        if here.is_empty() {
            // The parent only holds; each volume mounts where its services find it.
            let properties = BTreeMap::from([("mountpoint".to_owned(), "none".to_owned())]);
            let args = CreateArgs { name: parent.to_owned(), kind: DatasetType::Filesystem, volsize: None, properties };
            match ctx.call::<ZfsCreate>(&args).await {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let mut properties = BTreeMap::from([("mountpoint".to_owned(), path.display().to_string())]);
        if let Some(quota) = volume.quota {
            properties.insert("refquota".to_owned(), quota.to_string());
        }
        let origin = volume.origin.clone().ok_or_else(|| failed(format!("volume {} has no origin", volume.name)))?;
        ctx.call::<ZfsClone>(&CloneArgs { name: dataset, origin, properties }).await?;
        Ok(())
    }

    /// The volumes of `bundle` here.
    pub async fn here(&self, ctx: &Context, bundle: &str) -> Result<Vec<(DatasetKind, String)>, TaskError> {
        let mut found = Vec::new();
        for (parent, kind) in PARENTS {
            let prefix = format!("{parent}/{bundle}.");
            for dataset in children(ctx, parent).await? {
                if let Some(name) = dataset.name.strip_prefix(&prefix).filter(|n| is_volume_name(n)) {
                    found.push((kind, name.to_owned()));
                }
            }
        }
        let dir = self.root.join(bundle).join(kind_name(DatasetKind::RamDisk));
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(failed(format!("{}: {e}", dir.display()))),
        };
        for entry in entries.flatten() {
            if is_ram_disk(&entry.path()) {
                found.push((DatasetKind::RamDisk, entry.file_name().to_string_lossy().into_owned()));
            }
        }
        Ok(found)
    }

    /// Removes volume `name` of `bundle`, and the bundle's directories once they are empty.
    pub async fn remove(&self, ctx: &Context, bundle: &str, kind: DatasetKind, name: &str) -> Result<(), TaskError> {
        let path = self.path(bundle, kind, name);
        let volume = Volume { name: name.to_owned(), kind, origin: None, quota: None };
        match volume.dataset(bundle) {
            Some(dataset) => {
                let args = DestroyArgs { name: dataset, recursive: true, force_unmount: true, ..Default::default() };
                // A service's mount namespace can hold the mount a moment after the service
                // has gone.
                let deadline = tokio::time::Instant::now() + BUSY_FOR;
                loop {
                    match ctx.call::<ZfsDestroy>(&args).await {
                        Ok(_) => break,
                        Err(e) if e.code == ErrorCode::NotFound => break,
                        Err(e) if e.code == ErrorCode::Busy && tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(BUSY_EVERY).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            None if is_ram_disk(&path) => {
                // Nothing in it is kept; a mount still held elsewhere goes when let go.
                nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(|e| failed(format!("unmounting {}: {e}", path.display())))?;
            }
            None => {}
        }
        let _ = std::fs::remove_dir(&path);
        let _ = std::fs::remove_dir(self.root.join(bundle).join(kind_name(kind)));
        let _ = std::fs::remove_dir(self.root.join(bundle));
        Ok(())
    }
}

/// The datasets under `parent` (none when it does not exist).
async fn children(ctx: &Context, parent: &str) -> Result<Vec<Dataset>, TaskError> {
    let args = ListArgs { name: Some(parent.to_owned()), types: vec![DatasetType::Filesystem], depth: Some(1) };
    match ctx.call::<ZfsList>(&args).await {
        Ok(list) => Ok(list.datasets.into_iter().filter(|d| d.name != parent).collect()),
        Err(e) if e.code == ErrorCode::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Whether `path` is a tmpfs mounted on its own (not the tmpfs its parent lives on).
fn is_ram_disk(path: &Path) -> bool {
    let own_mount = match (std::fs::metadata(path), path.parent().map(std::fs::metadata)) {
        (Ok(here), Some(Ok(parent))) => here.dev() != parent.dev(),
        _ => false,
    };
    own_mount && nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Mounts a tmpfs of `size` bytes at `path` unless one is there; `true` when mounted now.
fn ram_disk(path: &Path, size: u64) -> Result<bool, TaskError> {
    std::fs::create_dir_all(path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    if is_ram_disk(path) {
        return Ok(false);
    }
    let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
    let options = format!("size={size},mode=0755");
    nix::mount::mount(Some("tmpfs"), path, Some("tmpfs"), flags, Some(options.as_str()))
        .map_err(|e| failed(format!("mounting a RAM disk at {}: {e}", path.display())))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RAM disk is a tmpfs of its size, mounted once and found again by what it is. (It
    /// mounts: root only, as `make test` runs.)
    #[test]
    fn a_ram_disk_is_mounted_once_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web").join("tmp");
        assert!(ram_disk(&path, 1 << 20).unwrap());
        let mounted = Unmount(path.clone());
        assert!(is_ram_disk(&path));
        assert!(!ram_disk(&path, 1 << 20).unwrap(), "mounted twice");
        let fs = nix::sys::statfs::statfs(&path).unwrap();
        assert_eq!(fs.blocks() * fs.block_size() as u64, 1 << 20);
        // A plain directory beside it is not one.
        std::fs::create_dir_all(dir.path().join("web").join("plain")).unwrap();
        assert!(!is_ram_disk(&dir.path().join("web").join("plain")));
        drop(mounted);
        assert!(!is_ram_disk(&path));
    }

    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
