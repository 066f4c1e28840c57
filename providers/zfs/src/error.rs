//! ZFS failures with a stable reason, and the mapping from what `zfs`/`zpool` print to it.

use cerana_protocol::tasks::zfs::{NameError, ZfsErrorReason};
use cerana_protocol::TaskError;

/// A failed ZFS operation: a stable reason and the tool's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ZfsError {
    pub reason: ZfsErrorReason,
    pub message: String,
}

impl ZfsError {
    pub fn new(reason: ZfsErrorReason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ZfsErrorReason::InvalidArgument, message)
    }

    /// Classifies what a failed `zfs`/`zpool` command wrote to stderr.
    pub fn from_stderr(stderr: &str) -> Self {
        let message = stderr.trim().to_owned();
        Self { reason: classify(&message), message: if message.is_empty() { "zfs failed".into() } else { message } }
    }
}

impl From<NameError> for ZfsError {
    fn from(e: NameError) -> Self {
        Self::new(e.reason(), e.to_string())
    }
}

impl From<ZfsError> for TaskError {
    fn from(e: ZfsError) -> Self {
        TaskError::new(e.reason.code(), e.message).with_details(serde_json::json!({ "reason": e.reason }))
    }
}

/// libzfs's messages (lib/libzfs/libzfs_util.c, libzfs_dataset.c, libzfs_sendrecv.c of 2.1),
/// most specific first: "filesystem has children" must win over a generic "cannot destroy".
const PATTERNS: &[(&str, ZfsErrorReason)] = &[
    ("no such pool", ZfsErrorReason::PoolMissing),
    ("pool is unavailable", ZfsErrorReason::PoolMissing),
    ("has children", ZfsErrorReason::HasDependants),
    ("has dependent clones", ZfsErrorReason::HasDependants),
    ("more recent snapshots", ZfsErrorReason::HasDependants),
    ("use '-r' to", ZfsErrorReason::HasDependants),
    ("use '-r'", ZfsErrorReason::HasDependants),
    ("use '-R'", ZfsErrorReason::HasDependants),
    ("invalid backup stream", ZfsErrorReason::StreamCorrupt),
    ("checksum mismatch", ZfsErrorReason::StreamCorrupt),
    ("incomplete stream", ZfsErrorReason::StreamCorrupt),
    ("failed to read from stream", ZfsErrorReason::StreamCorrupt),
    ("invalid stream", ZfsErrorReason::StreamCorrupt),
    ("bad magic number", ZfsErrorReason::StreamCorrupt),
    ("stream is corrupt", ZfsErrorReason::StreamCorrupt),
    ("most recent snapshot of", ZfsErrorReason::Busy),
    ("destination has been modified", ZfsErrorReason::Busy),
    ("already exists", ZfsErrorReason::Exists),
    ("destination exists", ZfsErrorReason::Exists),
    ("name is too long", ZfsErrorReason::NameTooLong),
    ("name too long", ZfsErrorReason::NameTooLong),
    ("does not exist", ZfsErrorReason::NotFound),
    ("no such", ZfsErrorReason::NotFound),
    ("could not find any snapshots", ZfsErrorReason::NotFound),
    ("not currently mounted", ZfsErrorReason::InvalidArgument),
    ("is busy", ZfsErrorReason::Busy),
    ("target is busy", ZfsErrorReason::Busy),
    ("device is busy", ZfsErrorReason::Busy),
    ("dataset is busy", ZfsErrorReason::Busy),
    ("tag already exists", ZfsErrorReason::Exists),
    ("snapshot is held", ZfsErrorReason::Busy),
    ("is part of", ZfsErrorReason::DiskInUse),
    ("contains a filesystem", ZfsErrorReason::DiskInUse),
    ("in use", ZfsErrorReason::DiskInUse),
    ("previously in use from another system", ZfsErrorReason::DiskInUse),
    ("invalid", ZfsErrorReason::InvalidArgument),
    ("bad numeric value", ZfsErrorReason::InvalidArgument),
    ("bad property", ZfsErrorReason::InvalidArgument),
    ("read-only property", ZfsErrorReason::InvalidArgument),
    ("readonly property", ZfsErrorReason::InvalidArgument),
    ("not supported", ZfsErrorReason::InvalidArgument),
    ("operation not applicable", ZfsErrorReason::InvalidArgument),
    ("can only be set", ZfsErrorReason::InvalidArgument),
    ("must be", ZfsErrorReason::InvalidArgument),
    ("not a snapshot", ZfsErrorReason::InvalidArgument),
    ("/dev/zfs", ZfsErrorReason::Unavailable),
    ("modules are not loaded", ZfsErrorReason::Unavailable),
    ("kernel module", ZfsErrorReason::Unavailable),
];

fn classify(message: &str) -> ZfsErrorReason {
    let lower = message.to_ascii_lowercase();
    // "destination 'data/x' exists / must specify -F to overwrite it"
    if lower.contains("must specify -f to overwrite") {
        return ZfsErrorReason::Exists;
    }
    PATTERNS
        .iter()
        .find(|(needle, _)| lower.contains(&needle.to_ascii_lowercase()))
        .map_or(ZfsErrorReason::Failed, |(_, reason)| *reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ZfsErrorReason::*;

    #[test]
    fn libzfs_messages_map_to_stable_reasons() {
        let cases = [
            ("cannot create 'data/x': dataset already exists", Exists),
            ("cannot open 'data/nope': dataset does not exist", NotFound),
            ("cannot create 'nopool/x': no such pool 'nopool'", PoolMissing),
            ("cannot create 'data/a/b': parent does not exist", NotFound),
            (
                "cannot destroy 'data/p': filesystem has children\nuse '-r' to destroy the following datasets:\ndata/p/c",
                HasDependants,
            ),
            (
                "cannot destroy 'data/p@s': snapshot has dependent clones\nuse '-R' to destroy the following datasets:\ndata/c",
                HasDependants,
            ),
            (
                "cannot rollback to 'data/p@a': more recent snapshots or bookmarks exist\nuse '-r' to force deletion of the following snapshots and bookmarks:\ndata/p@b",
                HasDependants,
            ),
            ("cannot unmount '/data/x': pool or dataset is busy", Busy),
            ("umount: /data/x: target is busy.", Busy),
            ("cannot receive new filesystem stream: checksum mismatch or incomplete stream", StreamCorrupt),
            ("cannot receive: invalid stream (bad magic number)", StreamCorrupt),
            ("cannot receive: failed to read from stream", StreamCorrupt),
            ("cannot create 'data/x': invalid property 'bogus'", InvalidArgument),
            ("cannot create 'data/x': 'volsize' must be a multiple of volume block size (8K)", InvalidArgument),
            ("cannot create 'data/x': bad numeric value 'lots'", InvalidArgument),
            ("invalid vdev specification\nuse '-f' to override the following errors:\n/dev/vdb1 is part of potentially active pool 'data'", DiskInUse),
            ("The ZFS modules are not loaded.\nTry running '/sbin/modprobe zfs' as root to load them.", Unavailable),
            ("Failed to initialize the libzfs library: /dev/zfs missing", Unavailable),
            ("cannot receive new filesystem stream: destination 'data/x' exists\nmust specify -F to overwrite it", Exists),
            ("something odd happened", Failed),
        ];
        for (stderr, want) in cases {
            assert_eq!(ZfsError::from_stderr(stderr).reason, want, "{stderr}");
        }
    }

    #[test]
    fn task_errors_carry_the_reason_in_details() {
        let e: TaskError = ZfsError::new(HasDependants, "filesystem has children").into();
        assert_eq!(e.code, cerana_protocol::ErrorCode::Busy);
        assert_eq!(e.details.unwrap()["reason"], "has-dependants");
        let name: ZfsError = cerana_protocol::tasks::zfs::DatasetName::new("a".repeat(300)).unwrap_err().into();
        assert_eq!(name.reason, NameTooLong);
        assert!(ZfsError::from_stderr("").message.contains("zfs failed"));
    }
}
