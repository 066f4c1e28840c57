//! A service's definition, checked: ids, command, environment, limits against the node, user
//! maps, namespace name, root filesystem source.

use crate::error::ServiceError;
use cerana_protocol::tasks::health::HealthCheck;
use cerana_protocol::tasks::service::{
    BindMount, CreateArgs, IdRange, Limits, RestartPolicy, RootfsKind, ServiceRef, User,
};
use cerana_protocol::tasks::zfs::{DatasetName, SnapshotName};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// `bundle_id` + `id`, both checked; `Display` is the container id `bundle_id.id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub bundle_id: String,
    pub id: String,
}

fn check_id(what: &str, id: &str) -> Result<(), ServiceError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(format!("{what} {id:?}: use 1 to 64 letters, digits and '-', not starting with '-'")))
    }
}

impl ServiceKey {
    pub fn new(bundle_id: &str, id: &str) -> Result<Self, ServiceError> {
        check_id("bundle_id", bundle_id)?;
        check_id("id", id)?;
        Ok(Self { bundle_id: bundle_id.to_owned(), id: id.to_owned() })
    }

    pub fn from_ref(r: &ServiceRef) -> Result<Self, ServiceError> {
        Self::new(&r.bundle_id, &r.id)
    }

    pub fn to_ref(&self) -> ServiceRef {
        ServiceRef { id: self.id.clone(), bundle_id: self.bundle_id.clone() }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.bundle_id, self.id)
    }
}

/// The root filesystem's source, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// Clone this snapshot on every start.
    ZfsSnapshot(SnapshotName),
    /// Snapshot this dataset once (`@service-<id>`), then clone that.
    ZfsDataset(DatasetName),
    Overlay(PathBuf),
    Directory(PathBuf),
}

/// What the node offers, against which limits are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCapacity {
    pub cpus: u32,
    pub memory_bytes: u64,
}

impl NodeCapacity {
    pub fn of_this_node() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        // SAFETY: sysconf only reads configuration values.
        let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        let memory_bytes = (pages.max(0) as u64).saturating_mul(page_size.max(0) as u64);
        Self { cpus, memory_bytes }
    }
}

pub const MIN_MEMORY: u64 = 4 << 20;
pub const MIN_CPU: u32 = 10;
pub const MAX_PROCESSES: u32 = 4_194_304;
const MAX_ID_RANGES: usize = 5;
const MAX_RESTART_DELAY_MS: u64 = 3_600_000;

/// A checked `service-create`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDef {
    pub key: ServiceKey,
    pub dataset: String,
    pub rootfs: RootfsSource,
    pub rootfs_kind: RootfsKind,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    pub limits: Limits,
    pub user: User,
    pub mounts: Vec<BindMount>,
    pub netns: Option<String>,
    pub restart: RestartPolicy,
    pub health_checks: Vec<HealthCheck>,
}

impl ServiceDef {
    /// Checks everything that needs no look at the system beyond the node's capacity.
    pub fn check(args: &CreateArgs, node: NodeCapacity) -> Result<Self, ServiceError> {
        let key = ServiceKey::new(&args.bundle_id, &args.id)?;
        if args.cmd.is_empty() || args.cmd[0].is_empty() {
            return Err(ServiceError::invalid("cmd is empty: give the program and its arguments"));
        }
        if args.cmd.iter().any(|a| a.contains('\0')) {
            return Err(ServiceError::invalid("cmd contains a NUL byte"));
        }
        for (name, value) in &args.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0') {
                return Err(ServiceError::invalid(format!("environment variable {name:?}: bad name or value")));
            }
            if name.starts_with("_CERANA_") {
                return Err(ServiceError::invalid(format!(
                    "environment variable {name:?}: _CERANA_ names are reserved"
                )));
            }
        }
        let cwd = args.cwd.clone().unwrap_or_else(|| "/".to_owned());
        if !cwd.starts_with('/') {
            return Err(ServiceError::invalid(format!("cwd {cwd:?} is not an absolute path")));
        }
        check_limits(&args.limits, node)?;
        check_user(&args.user)?;
        check_mounts(&args.mounts)?;
        for check in &args.health_checks {
            check.validate().map_err(|e| ServiceError::invalid(format!("health check {}: {e}", check.task())))?;
        }
        if let Some(ns) = &args.netns {
            check_netns_name(ns)?;
        }
        let r = args.restart;
        if r.delay_ms > r.max_delay_ms || r.max_delay_ms > MAX_RESTART_DELAY_MS {
            return Err(ServiceError::invalid(format!(
                "restart: need delay_ms <= max_delay_ms <= {MAX_RESTART_DELAY_MS} (got {} and {})",
                r.delay_ms, r.max_delay_ms
            )));
        }
        let rootfs = rootfs_source(args.rootfs, &args.dataset)?;
        Ok(Self {
            key,
            dataset: args.dataset.clone(),
            rootfs,
            rootfs_kind: args.rootfs,
            cmd: args.cmd.clone(),
            env: args.env.clone(),
            cwd,
            limits: args.limits,
            user: args.user.clone(),
            mounts: args.mounts.clone(),
            netns: args.netns.clone(),
            restart: args.restart,
            health_checks: args.health_checks.clone(),
        })
    }

    /// The environment as `NAME=value`, with a default `PATH`.
    pub fn env_list(&self) -> Vec<String> {
        let mut env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !self.env.contains_key("PATH") {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        env
    }

    pub fn search_path(&self) -> &str {
        self.env.get("PATH").map(String::as_str).unwrap_or(DEFAULT_PATH)
    }
}

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn out_of_range(field: &'static str, value: u64, lo: u64, hi: u64) -> ServiceError {
    ServiceError::LimitOutOfRange { field, value, range: format!("{lo} ..= {hi}") }
}

fn check_limits(limits: &Limits, node: NodeCapacity) -> Result<(), ServiceError> {
    if let Some(cpu) = limits.cpu {
        let max = node.cpus.saturating_mul(1000);
        if !(MIN_CPU..=max).contains(&cpu) {
            return Err(out_of_range("limits.cpu", cpu.into(), MIN_CPU.into(), max.into()));
        }
    }
    if let Some(memory) = limits.memory {
        if !(MIN_MEMORY..=node.memory_bytes).contains(&memory) {
            return Err(out_of_range("limits.memory", memory, MIN_MEMORY, node.memory_bytes));
        }
    }
    if let Some(processes) = limits.processes {
        if !(1..=MAX_PROCESSES).contains(&processes) {
            return Err(out_of_range("limits.processes", processes.into(), 1, MAX_PROCESSES.into()));
        }
    }
    Ok(())
}

fn check_map(what: &str, map: &[IdRange]) -> Result<(), ServiceError> {
    if map.is_empty() || map.len() > MAX_ID_RANGES {
        return Err(ServiceError::invalid(format!("{what}: 1 to {MAX_ID_RANGES} ranges (got {})", map.len())));
    }
    for r in map {
        let fits = |start: u32| u64::from(start) + u64::from(r.size) <= 1 << 32;
        if r.size == 0 || !fits(r.container_id) || !fits(r.host_id) {
            return Err(ServiceError::invalid(format!("{what}: range {r:?} is empty or runs past 2^32")));
        }
    }
    let mut sorted: Vec<_> = map.iter().map(|r| (r.container_id, r.size)).collect();
    sorted.sort();
    if sorted.windows(2).any(|w| u64::from(w[0].0) + u64::from(w[0].1) > u64::from(w[1].0)) {
        return Err(ServiceError::invalid(format!("{what}: container ranges overlap")));
    }
    Ok(())
}

fn maps_id(map: &[IdRange], id: u32) -> bool {
    map.iter().any(|r| id >= r.container_id && u64::from(id) < u64::from(r.container_id) + u64::from(r.size))
}

fn check_user(user: &User) -> Result<(), ServiceError> {
    match (user.uid_map.is_empty(), user.gid_map.is_empty()) {
        (true, true) => Ok(()),
        (false, false) => {
            check_map("user.uid_map", &user.uid_map)?;
            check_map("user.gid_map", &user.gid_map)?;
            if !maps_id(&user.uid_map, user.uid) || !maps_id(&user.gid_map, user.gid) {
                return Err(ServiceError::invalid(format!(
                    "user: uid {} / gid {} must lie inside the maps",
                    user.uid, user.gid
                )));
            }
            Ok(())
        }
        _ => Err(ServiceError::invalid("user: give both uid_map and gid_map, or neither")),
    }
}

const MAX_MOUNTS: usize = 16;

fn absolute_clean(path: &str) -> bool {
    path.starts_with('/') && !path.contains('\0') && !path.split('/').any(|c| c == "..")
}

fn check_mounts(mounts: &[BindMount]) -> Result<(), ServiceError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(ServiceError::invalid(format!("at most {MAX_MOUNTS} mounts (got {})", mounts.len())));
    }
    for m in mounts {
        if !absolute_clean(&m.source) || !absolute_clean(&m.destination) || m.destination == "/" {
            return Err(ServiceError::invalid(format!(
                "mount {} -> {}: both must be absolute paths without '..', the destination not /",
                m.source, m.destination
            )));
        }
    }
    Ok(())
}

/// A name `ip netns` accepts: one path component.
pub fn check_netns_name(name: &str) -> Result<(), ServiceError> {
    if name.is_empty() || name.len() > 255 || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(ServiceError::invalid(format!("netns {name:?} is not a namespace name")));
    }
    Ok(())
}

fn host_dir(kind: &str, dataset: &str) -> Result<PathBuf, ServiceError> {
    let path = Path::new(dataset);
    if !path.is_absolute() {
        return Err(ServiceError::invalid(format!("rootfs {kind}: dataset {dataset:?} must be an absolute directory")));
    }
    Ok(path.to_owned())
}

fn rootfs_source(kind: RootfsKind, dataset: &str) -> Result<RootfsSource, ServiceError> {
    let bad_name = |e: cerana_protocol::tasks::zfs::NameError| ServiceError::invalid(format!("dataset: {e}"));
    Ok(match kind {
        RootfsKind::Zfs if dataset.contains('@') => {
            RootfsSource::ZfsSnapshot(SnapshotName::new(dataset).map_err(bad_name)?)
        }
        RootfsKind::Zfs => RootfsSource::ZfsDataset(DatasetName::new(dataset).map_err(bad_name)?),
        RootfsKind::Overlay => RootfsSource::Overlay(host_dir("overlay", dataset)?),
        RootfsKind::Directory => RootfsSource::Directory(host_dir("directory", dataset)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::tasks::service::ServiceErrorReason;

    const NODE: NodeCapacity = NodeCapacity { cpus: 2, memory_bytes: 1 << 30 };

    fn args() -> CreateArgs {
        serde_json::from_str(
            r#"{"id":"web","bundle_id":"b1","dataset":"/srv/root","rootfs":"overlay","cmd":["/bin/sh"]}"#,
        )
        .unwrap()
    }

    fn reason(args: &CreateArgs) -> ServiceErrorReason {
        ServiceDef::check(args, NODE).unwrap_err().reason()
    }

    #[test]
    fn a_plain_definition_passes_with_defaults() {
        let def = ServiceDef::check(&args(), NODE).unwrap();
        assert_eq!(def.key.to_string(), "b1.web");
        assert_eq!(def.cwd, "/");
        assert_eq!(def.rootfs, RootfsSource::Overlay("/srv/root".into()));
        assert!(def.env_list().iter().any(|e| e.starts_with("PATH=")));
    }

    #[test]
    fn limits_are_checked_against_the_node() {
        for (cpu, memory, processes) in [
            (Some(5), None, None),
            (Some(2001), None, None),
            (None, Some(1 << 20), None),
            (None, Some(2 << 30), None),
            (None, None, Some(0)),
            (None, None, Some(MAX_PROCESSES + 1)),
        ] {
            let mut a = args();
            a.limits = Limits { cpu, memory, processes };
            assert_eq!(reason(&a), ServiceErrorReason::LimitOutOfRange, "{:?}", a.limits);
        }
        let mut a = args();
        a.limits = Limits { cpu: Some(2000), memory: Some(64 << 20), processes: Some(10) };
        ServiceDef::check(&a, NODE).unwrap();
    }

    #[test]
    fn bad_ids_commands_env_and_names_are_invalid_arguments() {
        type Mutation = Box<dyn Fn(&mut CreateArgs)>;
        let mut cases: Vec<Mutation> = vec![
            Box::new(|a| a.id = "a/b".into()),
            Box::new(|a| a.bundle_id = String::new()),
            Box::new(|a| a.id = "x".repeat(65)),
            Box::new(|a| a.cmd.clear()),
            Box::new(|a| {
                a.env.insert("_CERANA_X".into(), "1".into());
            }),
            Box::new(|a| {
                a.env.insert("A=B".into(), "1".into());
            }),
            Box::new(|a| a.cwd = Some("rel".into())),
            Box::new(|a| a.netns = Some("../x".into())),
            Box::new(|a| a.dataset = "relative".into()),
            Box::new(|a| {
                a.rootfs = RootfsKind::Zfs;
                a.dataset = "data//x".into();
            }),
            Box::new(|a| a.restart.delay_ms = a.restart.max_delay_ms + 1),
            Box::new(|a| {
                a.mounts =
                    vec![BindMount { source: "/srv".into(), destination: "/a/../../etc".into(), read_only: false }]
            }),
            Box::new(|a| {
                a.mounts = vec![BindMount { source: "rel".into(), destination: "/x".into(), read_only: false }]
            }),
        ];
        for (i, change) in cases.drain(..).enumerate() {
            let mut a = args();
            change(&mut a);
            assert_eq!(reason(&a), ServiceErrorReason::InvalidArgument, "case {i}");
        }
    }

    #[test]
    fn user_maps_follow_the_kernel_rules() {
        let range = |c, h, s| IdRange { container_id: c, host_id: h, size: s };
        let mut a = args();
        a.user.uid_map = vec![range(0, 100000, 65536)];
        assert_eq!(reason(&a), ServiceErrorReason::InvalidArgument, "gid_map missing");
        a.user.gid_map = vec![range(0, 100000, 65536)];
        ServiceDef::check(&a, NODE).unwrap();
        a.user.gid_map = vec![range(0, 1, 1); 6];
        assert_eq!(reason(&a), ServiceErrorReason::InvalidArgument, "six ranges");
        a.user.gid_map = vec![range(0, 1, 0)];
        assert_eq!(reason(&a), ServiceErrorReason::InvalidArgument, "empty range");
        a.user.gid_map = vec![range(0, 1, 10), range(5, 100, 10)];
        assert_eq!(reason(&a), ServiceErrorReason::InvalidArgument, "overlap");
        a.user.gid_map = vec![range(0, 100000, 65536)];
        a.user.uid = 70000;
        assert_eq!(reason(&a), ServiceErrorReason::InvalidArgument, "uid outside the map");
    }

    #[test]
    fn zfs_sources_are_a_snapshot_or_a_dataset() {
        let mut a = args();
        a.rootfs = RootfsKind::Zfs;
        a.dataset = "data/web@v1".into();
        assert!(matches!(ServiceDef::check(&a, NODE).unwrap().rootfs, RootfsSource::ZfsSnapshot(_)));
        a.dataset = "data/web".into();
        assert!(matches!(ServiceDef::check(&a, NODE).unwrap().rootfs, RootfsSource::ZfsDataset(_)));
    }
}
