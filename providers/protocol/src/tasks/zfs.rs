//! `zfs-*`: datasets, snapshots, clones, send/receive and the pool, served by the `zfs` provider (issue #5).
//!
//! Names travel as strings and are checked by the provider (see [`DatasetName`]), so that a bad
//! name comes back with its precise code (`name_too_long`, `invalid_argument`) rather than as a
//! generic argument error. Every error carries a stable ZFS reason in `details.reason`
//! ([`ZfsErrorReason`]), e.g. `{"reason": "has-dependants"}`.

use crate::task::NoArgs;
use crate::ErrorCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

crate::declare_tasks! {
    ZfsCreate = "zfs-create", Write, "Creates a filesystem, or a volume of `volsize` bytes, with optional properties", CreateArgs => NameResult;
    ZfsClone = "zfs-clone", Write, "Clones a snapshot (`origin`) into a new dataset `name`", CloneArgs => NameResult;
    ZfsDestroy = "zfs-destroy", Write, "Destroys a dataset or snapshot (defer, recursive, recursive_clones, force_unmount)", DestroyArgs => NameResult;
    ZfsExists = "zfs-exists", Read, "Whether a dataset, volume or snapshot exists", NameArgs => ExistsResult;
    ZfsGet = "zfs-get", Read, "One dataset with all its properties (value and source)", NameArgs => GetResult;
    ZfsHolds = "zfs-holds", Read, "The user holds on a snapshot", NameArgs => HoldsResult;
    ZfsList = "zfs-list", Read, "Datasets under `name` (or all), filtered by type", ListArgs => ListResult;
    ZfsMount = "zfs-mount", Write, "Mounts a filesystem at its mountpoint (`overlay` mounts over a non-empty directory)", MountArgs => NameResult;
    ZfsUnmount = "zfs-unmount", Write, "Unmounts a filesystem (`force` even when busy)", UnmountArgs => NameResult;
    ZfsRename = "zfs-rename", Write, "Renames `origin` to `name` (`recursive`: a snapshot of every descendant)", RenameArgs => NameResult;
    ZfsRollback = "zfs-rollback", Write, "Rolls a dataset back to a snapshot (`destroy_recent` destroys later snapshots)", RollbackArgs => NameResult;
    ZfsSnapshot = "zfs-snapshot", Write, "Snapshots `name` as `name@snapname` (`recursive`: every descendant too)", SnapshotArgs => NameResult;
    ZfsSend = "zfs-send", Read, "Sends a snapshot as a stream (incremental from `from`); the stream comes with the response", SendArgs => SendResult;
    ZfsReceive = "zfs-receive", Write, "Receives the request's stream into `name`", ReceiveArgs => ReceiveResult;
    ZfsUnpack = "zfs-unpack", Write, "Unpacks the request's stream, a tar archive (plain, gzip or zstd), into the mounted filesystem `name`, within the space it has", UnpackArgs => UnpackResult;
    ZfsPoolStatus = "zfs-pool-status", Read, "The node's pool: layout, health, space, and what the boot-time bootstrap did", NoArgs => PoolStatus;
}

/// Stable reasons for ZFS failures, in `TaskError.details.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZfsErrorReason {
    /// The dataset, snapshot or pool to create exists already.
    Exists,
    /// The named dataset or snapshot does not exist.
    NotFound,
    /// Mounted, in use, held, or otherwise busy.
    Busy,
    /// A name longer than ZFS allows (255 bytes, pool included).
    NameTooLong,
    /// A name with characters ZFS refuses, a bad property, a wrong type for the operation.
    InvalidArgument,
    /// Children, clones or later snapshots exist and the request was not recursive.
    HasDependants,
    /// A received stream was truncated, corrupt or not a ZFS stream.
    StreamCorrupt,
    /// The pool the name lives in is not imported on this node.
    PoolMissing,
    /// A disk carries another pool or other data and was left alone.
    DiskInUse,
    /// The ZFS module or tools are not available.
    Unavailable,
    /// Anything else ZFS refused; the message says what.
    Failed,
}

impl ZfsErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exists => "exists",
            Self::NotFound => "not-found",
            Self::Busy => "busy",
            Self::NameTooLong => "name-too-long",
            Self::InvalidArgument => "invalid-argument",
            Self::HasDependants => "has-dependants",
            Self::StreamCorrupt => "stream-corrupt",
            Self::PoolMissing => "pool-missing",
            Self::DiskInUse => "disk-in-use",
            Self::Unavailable => "unavailable",
            Self::Failed => "failed",
        }
    }

    /// The Task API code this reason travels under.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::Exists => ErrorCode::AlreadyExists,
            Self::NotFound | Self::PoolMissing => ErrorCode::NotFound,
            Self::Busy | Self::HasDependants | Self::DiskInUse => ErrorCode::Busy,
            Self::NameTooLong => ErrorCode::NameTooLong,
            Self::InvalidArgument | Self::StreamCorrupt => ErrorCode::InvalidArgument,
            Self::Unavailable => ErrorCode::Unavailable,
            Self::Failed => ErrorCode::Failed,
        }
    }
}

impl fmt::Display for ZfsErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a dataset or snapshot name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("{name:?} is {len} bytes long; ZFS allows at most 255 (pool included)")]
    TooLong { name: String, len: usize },
    #[error("{name:?}: {what}")]
    Invalid { name: String, what: &'static str },
}

impl NameError {
    pub fn reason(&self) -> ZfsErrorReason {
        match self {
            Self::TooLong { .. } => ZfsErrorReason::NameTooLong,
            Self::Empty | Self::Invalid { .. } => ZfsErrorReason::InvalidArgument,
        }
    }
}

/// ZFS_MAX_DATASET_NAME_LEN is 256 including the terminating NUL.
pub const MAX_NAME_LEN: usize = 255;

fn component_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':' | b' ')
}

fn check_component(full: &str, part: &str, what: &'static str) -> Result<(), NameError> {
    let invalid = |what| NameError::Invalid { name: full.to_owned(), what };
    if part.is_empty() {
        return Err(invalid(what));
    }
    if part == "." || part == ".." {
        return Err(invalid("a component may not be \".\" or \"..\""));
    }
    if !part.bytes().all(component_ok) {
        return Err(invalid("only letters, digits, '_', '-', '.', ':' and ' ' are allowed"));
    }
    Ok(())
}

fn check_dataset(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { name: name.to_owned(), len: name.len() });
    }
    let pool = name.split('/').next().unwrap_or_default();
    if !pool.as_bytes().first().is_some_and(u8::is_ascii_alphabetic) {
        return Err(NameError::Invalid { name: name.to_owned(), what: "the pool name must start with a letter" });
    }
    for part in name.split('/') {
        check_component(name, part, "empty component (leading, trailing or double '/')")?;
    }
    Ok(())
}

crate::names::validated_name!(
    /// A filesystem or volume name as OpenZFS accepts it: `pool[/child...]`, at most 255 bytes,
    /// components of letters, digits, `_ - . : ` and space, the pool starting with a letter.
    DatasetName,
    NameError,
    check_dataset_name
);

fn check_dataset_name(name: String) -> Result<String, NameError> {
    if name.contains('@') || name.contains('#') {
        return Err(NameError::Invalid { name, what: "a dataset name has no '@' or '#'" });
    }
    check_dataset(&name)?;
    Ok(name)
}

impl DatasetName {
    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }
    /// The parent dataset, `None` for a pool's root.
    pub fn parent(&self) -> Option<DatasetName> {
        self.0.rsplit_once('/').map(|(parent, _)| Self(parent.to_owned()))
    }
    /// `self/child`, checked.
    pub fn child(&self, child: &str) -> Result<DatasetName, NameError> {
        Self::new(format!("{}/{child}", self.0))
    }
}

crate::names::validated_name!(
    /// `dataset@snapshot`, at most 255 bytes in all.
    SnapshotName,
    NameError,
    check_snapshot_name
);

fn check_snapshot_name(name: String) -> Result<String, NameError> {
    let Some((dataset, snap)) = name.split_once('@') else {
        return Err(NameError::Invalid { name, what: "a snapshot name is dataset@snapshot" });
    };
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { name: name.to_owned(), len: name.len() });
    }
    check_dataset_name(dataset.to_owned()).map_err(|e| match e {
        NameError::Invalid { what, .. } => NameError::Invalid { name: name.to_owned(), what },
        other => other,
    })?;
    check_component(&name, snap, "empty snapshot name after '@'")?;
    Ok(name)
}

impl SnapshotName {
    pub fn of(dataset: &DatasetName, snap: &str) -> Result<Self, NameError> {
        Self::new(format!("{dataset}@{snap}"))
    }
    pub fn dataset(&self) -> DatasetName {
        DatasetName(self.0.split_once('@').map(|(d, _)| d).unwrap_or_default().to_owned())
    }
    pub fn snapshot(&self) -> &str {
        self.0.split_once('@').map(|(_, s)| s).unwrap_or_default()
    }
}

/// A dataset or a snapshot: what most tasks accept as `name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AnyName {
    Dataset(DatasetName),
    Snapshot(SnapshotName),
}

impl AnyName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.contains('@') {
            SnapshotName::new(name).map(Self::Snapshot)
        } else {
            DatasetName::new(name).map(Self::Dataset)
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Self::Dataset(d) => d.as_str(),
            Self::Snapshot(s) => s.as_str(),
        }
    }
    pub fn pool(&self) -> String {
        match self {
            Self::Dataset(d) => d.pool().to_owned(),
            Self::Snapshot(s) => s.dataset().pool().to_owned(),
        }
    }
}

impl fmt::Display for AnyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetType {
    Filesystem,
    Volume,
    Snapshot,
    Bookmark,
}

impl DatasetType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filesystem => "filesystem",
            Self::Volume => "volume",
            Self::Snapshot => "snapshot",
            Self::Bookmark => "bookmark",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameArgs {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    pub name: String,
    /// `filesystem` (default) or `volume`.
    #[serde(default = "default_create_type", rename = "type")]
    pub kind: DatasetType,
    /// Size in bytes, required for a volume, refused for a filesystem.
    #[serde(default)]
    pub volsize: Option<u64>,
    /// ZFS properties, e.g. `{"compression": "lz4", "quota": "1073741824"}`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_create_type() -> DatasetType {
    DatasetType::Filesystem
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneArgs {
    /// The new dataset.
    pub name: String,
    /// The snapshot it is cloned from.
    pub origin: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyArgs {
    pub name: String,
    /// A snapshot with holds or clones is destroyed once they are gone (`zfs destroy -d`).
    #[serde(default)]
    pub defer: bool,
    /// Children (and for a snapshot, the same snapshot of every descendant) too (`-r`).
    #[serde(default)]
    pub recursive: bool,
    /// Every dependant, clones outside the hierarchy included (`-R`).
    #[serde(default)]
    pub recursive_clones: bool,
    /// Unmount even when busy (`-f`).
    #[serde(default)]
    pub force_unmount: bool,
}

/// What a changing task acted on. It does not re-read the dataset (that would cost a second
/// ZFS call per task); `zfs-get` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameResult {
    /// The dataset or snapshot created, changed or destroyed.
    pub name: String,
    /// A new volume's block device under /dev/zvol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistsResult {
    pub exists: bool,
}

/// A dataset as `zfs list -Hp` reports it. Sizes in bytes, times in seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: DatasetType,
    pub guid: u64,
    pub creation: u64,
    pub used: u64,
    /// Not for snapshots.
    pub available: Option<u64>,
    pub referenced: u64,
    /// Filesystems only (`none`, `legacy` or a path).
    pub mountpoint: Option<String>,
    /// Filesystems only.
    pub mounted: Option<bool>,
    /// The snapshot a clone came from.
    pub origin: Option<String>,
    /// Volumes only.
    pub volsize: Option<u64>,
    /// Volumes only: the block device under /dev/zvol, once udev has made it.
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Property {
    pub value: String,
    /// `default`, `local`, `inherited from X`, `temporary`, `received`, or `-`.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetResult {
    pub dataset: Dataset,
    pub properties: BTreeMap<String, Property>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub tag: String,
    /// When the hold was placed, as `zfs holds` prints it (OpenZFS 2.1 has no `-p` for holds).
    pub created: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldsResult {
    pub holds: Vec<Hold>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// List this dataset and its descendants; every pool's datasets when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Only these types; filesystems and volumes when empty.
    #[serde(default)]
    pub types: Vec<DatasetType>,
    /// At most this many levels below `name` (0: only `name`).
    #[serde(default)]
    pub depth: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResult {
    pub datasets: Vec<Dataset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountArgs {
    pub name: String,
    #[serde(default)]
    pub overlay: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmountArgs {
    pub name: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameArgs {
    /// The new name.
    pub name: String,
    /// The current name.
    pub origin: String,
    /// Snapshots only: rename this snapshot of every descendant too.
    #[serde(default)]
    pub recursive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackArgs {
    /// The snapshot to roll back to.
    pub name: String,
    /// Destroy snapshots newer than it (otherwise their existence is `has-dependants`).
    #[serde(default)]
    pub destroy_recent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotArgs {
    /// The dataset.
    pub name: String,
    pub snapname: String,
    #[serde(default)]
    pub recursive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendArgs {
    /// The snapshot to send.
    pub name: String,
    /// Send only the changes since this earlier snapshot of the same dataset (`zfs send -i`).
    #[serde(default)]
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResult {
    pub name: String,
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveArgs {
    /// The dataset to create (or, for an incremental stream, to update).
    pub name: String,
    /// Roll `name` back to its latest snapshot first (`zfs receive -F`).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveResult {
    pub dataset: Dataset,
    /// Bytes of stream consumed.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnpackArgs {
    /// A mounted filesystem: the archive's root is its mountpoint.
    pub name: String,
    /// At most this many decompressed bytes; the dataset's available space (its quota, or the
    /// pool's free space) bounds it in any case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// What `zfs-unpack` unpacked. An archive refused (an entry that would land outside the
/// dataset, a device node, past the budget: `invalid-argument`; malformed: `stream-corrupt`)
/// leaves what was unpacked before it: the caller destroys the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackResult {
    pub dataset: Dataset,
    pub entries: u64,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    /// Decompressed bytes of archive read.
    pub bytes: u64,
}

/// How the pool's disks are arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolLayout {
    Stripe,
    Mirror,
    Raidz1,
    Raidz2,
}

impl PoolLayout {
    /// The auto layout for `disks` unused disks: 1 stripe, 2 mirror, 3-5 raidz, 6+ raidz2.
    pub fn for_disks(disks: usize) -> Option<Self> {
        match disks {
            0 => None,
            1 => Some(Self::Stripe),
            2 => Some(Self::Mirror),
            3..=5 => Some(Self::Raidz1),
            _ => Some(Self::Raidz2),
        }
    }
}

/// `cerana.zfs_config`: what the bootstrap may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolConfigMode {
    /// Import `data`, or create it from every unused disk.
    Auto,
    /// Import `data` when it is there; never create; report what is found.
    Manual,
}

/// A disk the bootstrap looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    pub device: String,
    pub size_bytes: u64,
    /// Why it was not used, e.g. `carries pool "data" (last used by host 1a2b3c4d)`.
    pub in_use: Option<String>,
}

/// What the bootstrap did at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapReport {
    pub mode: PoolConfigMode,
    /// `imported`, `already-imported`, `created`, or `none`.
    pub action: String,
    pub disks: Vec<DiskReport>,
    /// Problems found (a foreign pool, a failed import, no disks), for people.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Whether the pool `data` is imported.
    pub imported: bool,
    pub name: String,
    pub health: Option<String>,
    pub layout: Option<PoolLayout>,
    /// The pool's disks (`/dev/...`).
    pub disks: Vec<String>,
    pub size_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub bootstrap: Option<BootstrapReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_follow_openzfs_rules() {
        for ok in ["data", "data/a", "data/a-b_c.d:e f", "Data9/x/y/z"] {
            DatasetName::new(ok).unwrap();
        }
        for bad in ["", "/data", "data/", "data//x", "9data", "data/a*b", "data/x@s", "data/./x", "data/../x", "data/é"]
        {
            let err = DatasetName::new(bad).unwrap_err();
            assert_eq!(err.reason(), ZfsErrorReason::InvalidArgument, "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_length_limit_counts_the_pool() {
        let ok = format!("data/{}", "a".repeat(MAX_NAME_LEN - 5));
        assert_eq!(ok.len(), 255);
        DatasetName::new(&ok).unwrap();
        let long = format!("data/{}", "a".repeat(252));
        assert_eq!(long.len(), 257);
        let err = DatasetName::new(&long).unwrap_err();
        assert_eq!(err.reason(), ZfsErrorReason::NameTooLong);
        assert!(err.to_string().contains("257 bytes"), "{err}");
        let snap = format!("data/{}@s", "a".repeat(249));
        assert_eq!(SnapshotName::new(&snap).unwrap_err().reason(), ZfsErrorReason::NameTooLong);
    }

    #[test]
    fn snapshot_names_split_and_check_both_halves() {
        let s = SnapshotName::new("data/x@monday").unwrap();
        assert_eq!((s.dataset().as_str(), s.snapshot()), ("data/x", "monday"));
        for bad in ["data/x", "data/x@", "@s", "data/x@a@b", "data/x@a/b", "data/x@a*"] {
            assert!(SnapshotName::new(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(AnyName::new("data/x@s").unwrap(), AnyName::Snapshot(_)));
        assert_eq!(AnyName::new("data/x").unwrap().pool(), "data");
        assert_eq!(DatasetName::new("data/a/b").unwrap().parent().unwrap().as_str(), "data/a");
        assert!(DatasetName::new("data").unwrap().parent().is_none());
    }

    #[test]
    fn names_deserialize_through_the_checks() {
        assert!(serde_json::from_str::<DatasetName>("\"data/x\"").is_ok());
        let err = serde_json::from_str::<DatasetName>("\"data/x*\"").unwrap_err();
        assert!(err.to_string().starts_with(&DatasetName::new("data/x*").unwrap_err().to_string()), "{err}");
        let err = serde_json::from_str::<SnapshotName>("\"data/x\"").unwrap_err();
        assert!(err.to_string().starts_with("\"data/x\": a snapshot name is dataset@snapshot"), "{err}");
        let snap: SnapshotName = "data/x@s".parse().unwrap();
        assert_eq!((snap.as_ref(), String::from(snap.clone())), ("data/x@s", "data/x@s".to_owned()));
        assert_eq!(DatasetName::new("data").unwrap().child("x").unwrap().as_str(), "data/x");
    }

    #[test]
    fn auto_layout_by_disk_count() {
        assert_eq!(PoolLayout::for_disks(0), None);
        assert_eq!(PoolLayout::for_disks(1), Some(PoolLayout::Stripe));
        assert_eq!(PoolLayout::for_disks(2), Some(PoolLayout::Mirror));
        for n in 3..=5 {
            assert_eq!(PoolLayout::for_disks(n), Some(PoolLayout::Raidz1));
        }
        assert_eq!(PoolLayout::for_disks(6), Some(PoolLayout::Raidz2));
        assert_eq!(PoolLayout::for_disks(12), Some(PoolLayout::Raidz2));
    }

    #[test]
    fn reasons_have_stable_strings_and_codes() {
        assert_eq!(serde_json::to_value(ZfsErrorReason::HasDependants).unwrap(), "has-dependants");
        assert_eq!(ZfsErrorReason::NameTooLong.code(), ErrorCode::NameTooLong);
        assert_eq!(ZfsErrorReason::PoolMissing.code(), ErrorCode::NotFound);
        assert_eq!(ZfsErrorReason::Exists.as_str(), "exists");
    }

    #[test]
    fn create_args_default_to_a_filesystem_and_refuse_unknown_fields() {
        let a: CreateArgs = serde_json::from_str(r#"{"name":"data/x"}"#).unwrap();
        assert_eq!(a.kind, DatasetType::Filesystem);
        let v: CreateArgs = serde_json::from_str(r#"{"name":"data/v","type":"volume","volsize":1048576}"#).unwrap();
        assert_eq!((v.kind, v.volsize), (DatasetType::Volume, Some(1 << 20)));
        assert!(serde_json::from_str::<CreateArgs>(r#"{"name":"data/x","size":1}"#).is_err());
    }
}
