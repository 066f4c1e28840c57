//! `service-*`: services in containers, served by the `service` provider (issue #7).
//!
//! A service is identified by `(bundle_id, id)`, like the original's `"{bundleID}:{id}"` units.
//! Its root filesystem is a fresh copy of `dataset` on every start: a ZFS clone (the default),
//! or, where no pool exists, an overlay over a host directory or the directory itself, chosen
//! explicitly with `rootfs`. Every error carries a stable reason in `details.reason`
//! ([`ServiceErrorReason`]), e.g. `{"reason": "binary-missing"}`.

use crate::tasks::health::{HealthCheck, HealthReport};
use crate::{ErrorCode, TaskError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

crate::declare_tasks! {
    ServiceCreate = "service-create", Write, "Creates a service and starts it in a container on a fresh clone of its dataset; returns once its process runs", CreateArgs => ServiceInfo;
    ServiceGet = "service-get", Read, "One service: state, PID, restarts, last exit", ServiceRef => ServiceInfo;
    ServiceList = "service-list", Read, "Every service on this node (or one bundle's)", ListArgs => ListResult;
    ServiceRestart = "service-restart", Write, "Stops a service's container and starts it again on a fresh clone", ServiceRef => ServiceInfo;
    ServiceRemove = "service-remove", Write, "Stops a service, destroys its clone and forgets it", ServiceRef => ServiceRef;
    ServiceLogs = "service-logs", Read, "The kept lines of a service's stdout and stderr (bounded, across restarts)", LogsArgs => LogsResult;
}

/// Stable reasons for service failures, in `TaskError.details.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceErrorReason {
    /// A service with this `(bundle_id, id)` exists and `overwrite` was not set.
    Exists,
    /// No service with this `(bundle_id, id)`.
    NotFound,
    /// `cmd[0]` is not an executable file in the service's root filesystem.
    BinaryMissing,
    /// The dataset (or, for `overlay`/`directory`, the host directory) does not exist.
    DatasetMissing,
    /// A limit (cpu, memory, processes) outside its allowed range.
    LimitOutOfRange,
    /// The named network namespace (`/run/netns/NAME`) does not exist.
    NetnsMissing,
    /// A malformed id, path, map or environment variable.
    InvalidArgument,
    /// The host lacks something containers need (cgroup controllers, overlayfs).
    Unavailable,
    /// The root filesystem could not be cloned or mounted.
    RootfsFailed,
    /// The container runtime refused or failed to start the container.
    StartFailed,
}

impl ServiceErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exists => "exists",
            Self::NotFound => "not-found",
            Self::BinaryMissing => "binary-missing",
            Self::DatasetMissing => "dataset-missing",
            Self::LimitOutOfRange => "limit-out-of-range",
            Self::NetnsMissing => "netns-missing",
            Self::InvalidArgument => "invalid-argument",
            Self::Unavailable => "unavailable",
            Self::RootfsFailed => "rootfs-failed",
            Self::StartFailed => "start-failed",
        }
    }

    /// The Task API code this reason travels under.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::Exists => ErrorCode::AlreadyExists,
            Self::NotFound | Self::BinaryMissing | Self::DatasetMissing | Self::NetnsMissing => ErrorCode::NotFound,
            Self::LimitOutOfRange | Self::InvalidArgument => ErrorCode::InvalidArgument,
            Self::Unavailable => ErrorCode::Unavailable,
            Self::RootfsFailed | Self::StartFailed => ErrorCode::Failed,
        }
    }
}

impl fmt::Display for ServiceErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a service's root filesystem comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootfsKind {
    /// `dataset` is a ZFS dataset (its snapshot `@service-<id>` is taken once) or a snapshot;
    /// every start clones it afresh through `zfs-clone` and destroys the clone afterwards.
    #[default]
    Zfs,
    /// `dataset` is an absolute host directory, the read-only lower layer of an overlay whose
    /// upper layer is new on every start (a fresh copy, as a clone would be).
    Overlay,
    /// `dataset` is an absolute host directory used as it is (shared, not fresh).
    Directory,
}

/// Resource limits, each optional. Checked against the node: out of range is `limit-out-of-range`.
/// Strict although [`ServiceInfo`] returns it: a limit this version does not know must be
/// refused in [`CreateArgs`], not silently dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU time in thousandths of a CPU (1000 = one full CPU), 10 ..= 1000 × the node's CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Memory in bytes (cgroup `memory.max`), 4 MiB ..= the node's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Most processes and threads at once (`pids.max`), 1 ..= 4194304.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
}

/// One range of a uid or gid map: `size` ids from `container_id` map onto `host_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRange {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// Who the service runs as. With maps, the container gets its own user namespace (1 to 5
/// ranges each, as the kernel allows; both maps are then required).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uid_map: Vec<IdRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gid_map: Vec<IdRange>,
}

/// When an exited service is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// After every exit (the original's `Restart=always`).
    #[default]
    Always,
    /// After an exit with a non-zero status or a signal.
    OnFailure,
    Never,
}

/// Restart policy with exponential backoff: `delay_ms`, doubled after each quick exit up to
/// `max_delay_ms`; a run longer than 10 s resets it. Strict although [`ServiceInfo`] returns it:
/// it is part of [`CreateArgs`], where an unknown setting must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    #[serde(default)]
    pub mode: RestartMode,
    #[serde(default = "default_delay_ms")]
    pub delay_ms: u64,
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
}

fn default_delay_ms() -> u64 {
    200
}
fn default_max_delay_ms() -> u64 {
    10_000
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self { mode: RestartMode::Always, delay_ms: default_delay_ms(), max_delay_ms: default_max_delay_ms() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// The service's id: letters, digits and '-', 1 to 64 characters.
    pub id: String,
    /// The bundle it belongs to, same rules as `id`.
    pub bundle_id: String,
    /// A ZFS dataset or snapshot, or a host directory (see `rootfs`).
    pub dataset: String,
    #[serde(default)]
    pub rootfs: RootfsKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The command and its arguments; `cmd[0]` must exist in the root filesystem (a bare name
    /// is looked up in the `PATH` of `env`, or /usr/sbin:/usr/bin:/sbin:/bin).
    pub cmd: Vec<String>,
    /// Environment; names starting `_CERANA_` are reserved.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub user: User,
    /// Host directories bind-mounted into the container (e.g. a dataset's mountpoint, like the
    /// original's per-service bundle datasets), at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<BindMount>,
    /// A named network namespace (`/run/netns/NAME`, from `ip netns add` or the netns
    /// provider); without it the container gets a new empty one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Checks `service-get` runs (as `health-*` sub-tasks, in parallel) for the service's
    /// health, e.g. `{"type": "health-tcp-response", "args": {"address": "10.0.0.2:80"}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<HealthCheck>,
    /// Replace an existing service of the same `(bundle_id, id)`.
    #[serde(default)]
    pub overwrite: bool,
}

/// A host directory seen inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindMount {
    /// Absolute host path; must exist.
    pub source: String,
    /// Absolute path in the container (made if missing).
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Names one service. Strict although `service-remove` returns it: the result is the reference
/// the caller sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    pub id: String,
    pub bundle_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only this bundle's services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResult {
    pub services: Vec<ServiceInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Its root filesystem is being cloned or its container created.
    Starting,
    Running,
    /// Exited; waiting out the backoff before the next start.
    Restarting,
    /// Exited and not restarted (policy `never`, or `on-failure` after a clean exit).
    Exited,
    /// A restart failed to start the container; retried with backoff.
    Failed,
}

/// How a service's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit status, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of its cgroup.
    pub oom_killed: bool,
    /// Milliseconds it ran.
    pub ran_ms: u64,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0) && self.signal.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub id: String,
    pub bundle_id: String,
    pub dataset: String,
    pub rootfs: RootfsKind,
    /// Where the current start's root filesystem is mounted on the node.
    pub rootfs_path: Option<String>,
    /// The current clone (ZFS only).
    pub clone: Option<String>,
    pub cmd: Vec<String>,
    pub limits: Limits,
    pub netns: Option<String>,
    pub restart: RestartPolicy,
    pub state: ServiceState,
    /// The container's PID 1 as the node sees it.
    pub pid: Option<u32>,
    /// Milliseconds since the current process started.
    pub uptime_ms: Option<u64>,
    /// Starts after the first.
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
    /// Why the last start failed, if it did.
    pub last_error: Option<String>,
    /// The container's cgroup (relative to the cgroup mount).
    pub cgroup: String,
    /// The outcome of the service's health checks (`service-get` only; none defined: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// [`CreateArgs::definition`] of what it was created with (absent from older nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
}

impl CreateArgs {
    /// A fingerprint of the definition (everything but `overwrite`): equal for the same
    /// definition on every node and version, so the cluster ticks tell a replica running an
    /// older definition from a current one. 64-bit FNV-1a over the JSON form, in hex: change
    /// detection, not a security check.
    pub fn definition(&self) -> String {
        let json = serde_json::to_string(&Self { overwrite: false, ..self.clone() }).unwrap_or_default();
        let hash =
            json.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{hash:016x}")
    }
}

/// A service's health: every check passed, or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    pub checks: Vec<CheckOutcome>,
}

/// One health check: the report of the `health-*` task, or why it could not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<HealthReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    pub id: String,
    pub bundle_id: String,
    /// Only lines numbered above this (from an earlier answer's `next`), for following.
    #[serde(default)]
    pub after: u64,
    /// At most this many of the newest lines (default all kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// 1, 2, ... over the service's life, across restarts.
    pub seq: u64,
    pub stream: LogStream,
    /// Milliseconds since the Unix epoch when the line was read.
    pub time_ms: u64,
    /// Which start of the service wrote it (0 = the first).
    pub run: u32,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsResult {
    pub lines: Vec<LogLine>,
    /// Lines dropped because the buffer was full.
    pub dropped: u64,
    /// Pass as `after` to get only newer lines.
    pub next: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_args_have_defaults_and_refuse_unknown_fields() {
        let a: CreateArgs =
            serde_json::from_str(r#"{"id":"web","bundle_id":"b1","dataset":"data/web@v1","cmd":["/bin/httpd"]}"#)
                .unwrap();
        assert_eq!(a.rootfs, RootfsKind::Zfs);
        assert_eq!(a.restart, RestartPolicy::default());
        assert_eq!(a.limits, Limits::default());
        assert!(a.netns.is_none() && !a.overwrite);
        let bad = r#"{"id":"web","bundle_id":"b1","dataset":"d","cmd":["x"],"limits":{"cpus":1}}"#;
        assert!(serde_json::from_str::<CreateArgs>(bad).unwrap_err().to_string().contains("unknown field"));
        let r: RestartPolicy = serde_json::from_str(r#"{"mode":"on-failure"}"#).unwrap();
        assert_eq!((r.mode, r.delay_ms, r.max_delay_ms), (RestartMode::OnFailure, 200, 10_000));
    }

    #[test]
    fn reasons_have_stable_strings_and_codes() {
        assert_eq!(serde_json::to_value(ServiceErrorReason::BinaryMissing).unwrap(), "binary-missing");
        assert_eq!(ServiceErrorReason::LimitOutOfRange.code(), ErrorCode::InvalidArgument);
        assert_eq!(ServiceErrorReason::NetnsMissing.code(), ErrorCode::NotFound);
        assert_eq!(ServiceErrorReason::Exists.as_str(), "exists");
    }
}
