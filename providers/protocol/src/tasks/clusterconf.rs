//! The cluster's declared configuration (issue #16), served by the `clusterconf` provider
//! (`cerana-clusterconf`) over the cluster store. Task names are the original Cerana's.
//!
//! Every object is plain JSON under a versioned prefix that `etcdctl` can read
//! ([`PREFIX`]`/datasets/ID`, `…/services/ID`, `…/bundles/ID`, `…/nodes/ID`,
//! `…/cluster/defaults`, `…/cluster/dhcp`). An object's `mod_index` is its key's index in the
//! store (not stored in the JSON): an update without one (0) only creates, an update with a
//! stale one fails with `conflict` carrying the current index in `details.current_index`.
//!
//! Objects check themselves ([`Dataset::validate`], …) and errors name the field. Unlike the
//! original: a bundle dataset's `quota` is `quota` (not `type`), ports really are read, deletes
//! say `recursive`, and `nfs` is its own setting.

use crate::task::{NoArgs, NoOutput};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

crate::declare_tasks! {
    GetDataset = "get-dataset", Read, "A dataset's declaration", IdArgs => Dataset;
    ListDatasets = "list-datasets", Read, "Every declared dataset", NoArgs => DatasetList;
    UpdateDataset = "update-dataset", Write, "Creates (mod_index 0) or replaces (current mod_index) a dataset", Strict<Dataset> => Dataset;
    DeleteDataset = "delete-dataset", Write, "Deletes a dataset no bundle uses (if mod_index is given, only unchanged)", DeleteArgs => NoOutput;
    GetService = "get-service", Read, "A service's declaration", IdArgs => Service;
    ListServices = "list-services", Read, "Every declared service", NoArgs => ServiceList;
    UpdateService = "update-service", Write, "Creates (mod_index 0) or replaces (current mod_index) a service", Strict<Service> => Service;
    DeleteService = "delete-service", Write, "Deletes a service no bundle uses (if mod_index is given, only unchanged)", DeleteArgs => NoOutput;
    GetBundle = "get-bundle", Read, "A bundle; with overlay, each service as the bundle runs it", GetBundleArgs => BundleView;
    ListBundles = "list-bundles", Read, "Every bundle; with overlay, each service as the bundle runs it", ListBundlesArgs => BundleList;
    UpdateBundle = "update-bundle", Write, "Creates (mod_index 0) or replaces a bundle; its services, datasets and connected bundles must exist", Strict<Bundle> => Bundle;
    DeleteBundle = "delete-bundle", Write, "Deletes a bundle no other bundle connects to (if mod_index is given, only unchanged)", DeleteArgs => NoOutput;
    GetNode = "get-node", Read, "A node as its last heartbeat reported it", IdArgs => Node;
    ListNodes = "list-nodes", Read, "Every node with a live heartbeat", NoArgs => NodeList;
    GetNodesHistory = "get-nodes-history", Read, "Nodes' past figures (one a minute, kept a day), newest first; filtered by node and time", NodesHistoryArgs => NodesHistory;
    GetDefaultOptions = "get-default-options", Read, "The cluster's defaults", NoArgs => ClusterDefaults;
    SetDefaultOptions = "set-default-options", Write, "Sets the cluster's defaults (mod_index as for updates)", Strict<ClusterDefaults> => ClusterDefaults;
    GetDhcpConfig = "get-dhcp-config", Read, "The cluster's DHCP settings", NoArgs => DhcpConfig;
    SetDhcpConfig = "set-dhcp-config", Write, "Sets the cluster's DHCP settings (mod_index as for updates)", Strict<DhcpConfig> => DhcpConfig;
    ImportDataset = "import-dataset", Write, "Imports the request's stream (a tar archive, plain, gzip or zstd, or a ZFS send stream) as a new dataset on a node, snapshots it and declares it", ImportDatasetArgs => ImportedDataset;
}

/// Where the cluster's objects live in the store.
pub const PREFIX: &str = "/cerana/v1";
/// The largest object accepted, as stored JSON.
pub const MAX_OBJECT_BYTES: usize = 256 * 1024;
/// Entries a map or list of an object may hold (services of a bundle, env vars, …).
pub const MAX_ENTRIES: usize = 1024;

/// An object as a caller sends it: every field must be one this version knows. The object
/// types themselves tolerate unknown fields, so that what a newer node stored or answers still
/// reads here during a rolling upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strict<T>(pub T);

impl<T: Serialize> Serialize for Strict<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Serialize + serde::de::DeserializeOwned> Deserialize<'de> for Strict<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let given = serde_json::Value::deserialize(deserializer)?;
        let value: T = serde_json::from_value(given.clone()).map_err(serde::de::Error::custom)?;
        let kept = serde_json::to_value(&value).map_err(serde::de::Error::custom)?;
        if let Some(path) = unknown_field(&given, &kept, "") {
            return Err(serde::de::Error::custom(format!("unknown field `{path}`")));
        }
        Ok(Strict(value))
    }
}

/// The first field of `given` (a path, `services.app.oops`) that did not survive decoding.
fn unknown_field(given: &serde_json::Value, kept: &serde_json::Value, at: &str) -> Option<String> {
    let (serde_json::Value::Object(given), serde_json::Value::Object(kept)) = (given, kept) else {
        return None;
    };
    for (name, value) in given {
        let path = if at.is_empty() { name.clone() } else { format!("{at}.{name}") };
        match kept.get(name) {
            Some(inner) => {
                if let Some(deeper) = unknown_field(value, inner, &path) {
                    return Some(deeper);
                }
            }
            // Optional fields left out of the encoding when empty.
            None if value.is_null() => {}
            None => return Some(path),
        }
    }
    None
}

/// The key of an object.
pub fn key(kind: &str, id: &ObjectId) -> String {
    format!("{PREFIX}/{kind}/{id}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an id: 1 to 64 of A-Z a-z 0-9 _ . -, not starting with . or -")]
pub struct BadObjectId(pub String);

crate::names::validated_name!(
    /// An object's id: 1 to 64 of `A-Z a-z 0-9 _ . -`, not starting with `.` or `-` (UUIDs fit).
    ObjectId,
    BadObjectId,
    |id: String| {
        let ok = (1..=64).contains(&id.len())
            && !id.starts_with(['.', '-'])
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok {
            Ok(id)
        } else {
            Err(BadObjectId(id))
        }
    }
);

/// Why an object is refused; `field` is a path into it (`services.web.datasets.data`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

/// A bundle dataset's name: 1 to 64 of `A-Z a-z 0-9 _ -` (no dot: a node names its volume
/// `<bundle>.<name>`).
pub fn is_volume_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), problem: problem.into() }
}

fn check_len(field: &str, len: usize) -> Result<(), Invalid> {
    if len > MAX_ENTRIES {
        return Err(invalid(field, format!("at most {MAX_ENTRIES} entries; this has {len}")));
    }
    Ok(())
}

fn check_redundancy(redundancy: u32) -> Result<(), Invalid> {
    if redundancy < 1 {
        return Err(invalid("redundancy", "must be at least 1"));
    }
    Ok(())
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdArgs {
    pub id: ObjectId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteArgs {
    pub id: ObjectId,
    #[serde(default)]
    pub mod_index: Option<u64>,
}

/// A dataset the cluster keeps `redundancy` copies of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub id: ObjectId,
    /// The dataset this one is a clone of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ObjectId>,
    /// Copies go only where the parent is.
    #[serde(default)]
    pub parent_same_machine: bool,
    #[serde(default)]
    pub read_only: bool,
    /// Shared over NFS.
    #[serde(default)]
    pub nfs: bool,
    #[serde(default = "one")]
    pub redundancy: u32,
    /// Bytes; none: no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    #[serde(default)]
    pub mod_index: u64,
}

impl Dataset {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_redundancy(self.redundancy)?;
        if self.quota == Some(0) {
            return Err(invalid("quota", "must be at least 1 byte (leave it out for none)"));
        }
        if self.parent.as_ref() == Some(&self.id) {
            return Err(invalid("parent", "a dataset cannot be its own parent"));
        }
        Ok(())
    }
}

/// A service's limits are the node's (`service-create`), so that a bundle runs as declared.
pub use crate::tasks::service::Limits;

/// A health check: a task (`health-http-status`, say) run with `args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub task: String,
    #[serde(default)]
    pub args: serde_json::Value,
}

/// A service: a command run in a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: ObjectId,
    pub dataset: ObjectId,
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub health_checks: BTreeMap<String, HealthCheck>,
    #[serde(default)]
    pub mod_index: u64,
}

fn check_cmd(field: &str, cmd: &[String]) -> Result<(), Invalid> {
    if cmd.is_empty() || cmd[0].is_empty() {
        return Err(invalid(field, "needs a program to run"));
    }
    check_len(field, cmd.len())
}

fn check_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), Invalid> {
    check_len(field, env.len())?;
    for name in env.keys() {
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(invalid(format!("{field}.{name}"), "is not a variable name (A-Z a-z 0-9 _)"));
        }
        if name.starts_with("_CERANA_") {
            return Err(invalid(format!("{field}.{name}"), "_CERANA_ variables are reserved"));
        }
    }
    Ok(())
}

fn check_health(field: &str, checks: &BTreeMap<String, HealthCheck>) -> Result<(), Invalid> {
    check_len(field, checks.len())?;
    for (name, check) in checks {
        if crate::TaskName::new(check.task.as_str()).is_err() {
            return Err(invalid(format!("{field}.{name}.task"), format!("{:?} is not a task name", check.task)));
        }
    }
    Ok(())
}

impl Service {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_cmd("cmd", &self.cmd)?;
        check_env("env", &self.env)?;
        check_health("health_checks", &self.health_checks)
    }

    /// The service as a bundle runs it: the bundle's overrides on top.
    pub fn overlaid(&self, overrides: &ServiceOverrides) -> Service {
        let mut merged = self.clone();
        if let Some(cmd) = &overrides.cmd {
            merged.cmd = cmd.clone();
        }
        merged.env.extend(overrides.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(limits) = &overrides.limits {
            merged.limits = *limits;
        }
        merged.health_checks.extend(overrides.health_checks.iter().map(|(k, v)| (k.clone(), v.clone())));
        merged
    }
}

/// How a bundle dataset is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// A clone of the declared dataset, kept.
    RwZfs,
    /// A clone thrown away when the bundle stops.
    TempZfs,
    RamDisk,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleDataset {
    /// The declared dataset.
    pub id: ObjectId,
    #[serde(rename = "type")]
    pub kind: DatasetKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
}

/// Where a bundle dataset is mounted in a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceMount {
    pub mount_point: String,
    #[serde(default)]
    pub read_only: bool,
}

/// What a bundle changes about a service (merged by `overlay`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub health_checks: BTreeMap<String, HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleService {
    /// The declared service.
    pub id: ObjectId,
    #[serde(default)]
    pub overrides: ServiceOverrides,
    /// Bundle datasets (by their name in the bundle) mounted into this service.
    #[serde(default)]
    pub datasets: BTreeMap<String, ServiceMount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundlePort {
    /// Reachable from outside the cluster.
    #[serde(default)]
    pub public: bool,
    /// Bundles allowed to connect to this port.
    #[serde(default)]
    pub connected_bundles: Vec<ObjectId>,
    /// The port outside, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_port: Option<u16>,
}

/// The ports a node serves on its management address itself, which no bundle may publish there.
pub const NODE_PORTS: [(u16, &str); 7] = [
    (67, "the boot server's DHCP"),
    (69, "the boot server's TFTP"),
    (80, "the boot server's HTTP"),
    (2379, "etcd's clients"),
    (2380, "etcd's peers"),
    (4011, "the boot server's PXE"),
    (8080, "the coordinator's API"),
];

/// Services run together, with their datasets and ports, on `redundancy` nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub id: ObjectId,
    /// By name within the bundle.
    #[serde(default)]
    pub datasets: BTreeMap<String, BundleDataset>,
    /// By name within the bundle.
    pub services: BTreeMap<String, BundleService>,
    #[serde(default = "one")]
    pub redundancy: u32,
    /// By port number (as a string: JSON keys are strings).
    #[serde(default)]
    pub ports: BTreeMap<String, BundlePort>,
    #[serde(default)]
    pub mod_index: u64,
}

impl Bundle {
    /// Checks what the bundle says about itself (the provider checks that what it names exists).
    pub fn validate(&self) -> Result<(), Invalid> {
        check_redundancy(self.redundancy)?;
        check_len("datasets", self.datasets.len())?;
        if let Some(name) = self.datasets.keys().find(|n| !is_volume_name(n)) {
            return Err(invalid(format!("datasets.{name}"), "a name is 1 to 64 of A-Z a-z 0-9 _ -"));
        }
        if let Some((name, _)) = self.datasets.iter().find(|(_, d)| d.quota == Some(0)) {
            return Err(invalid(format!("datasets.{name}.quota"), "must be more than 0 bytes"));
        }
        check_len("services", self.services.len())?;
        check_len("ports", self.ports.len())?;
        if self.services.is_empty() {
            return Err(invalid("services", "a bundle runs at least one service"));
        }
        for (name, service) in &self.services {
            let field = format!("services.{name}");
            if let Some(cmd) = &service.overrides.cmd {
                check_cmd(&format!("{field}.overrides.cmd"), cmd)?;
            }
            check_env(&format!("{field}.overrides.env"), &service.overrides.env)?;
            check_health(&format!("{field}.overrides.health_checks"), &service.overrides.health_checks)?;
            for (dataset, mount) in &service.datasets {
                if !self.datasets.contains_key(dataset) {
                    return Err(invalid(format!("{field}.datasets.{dataset}"), "is not a dataset of this bundle"));
                }
                if !mount.mount_point.starts_with('/') || mount.mount_point.split('/').any(|p| p == "..") {
                    return Err(invalid(
                        format!("{field}.datasets.{dataset}.mount_point"),
                        "must be an absolute path without ..",
                    ));
                }
            }
        }
        let mut ids: Vec<&ObjectId> = self.services.values().map(|s| &s.id).collect();
        ids.sort();
        if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid("services", format!("service {} is named twice", pair[0])));
        }
        for (port, spec) in &self.ports {
            let field = format!("ports.{port}");
            match port.parse::<u16>() {
                Ok(p) if p >= 1 => {}
                _ => return Err(invalid(field, "a port is 1 to 65535")),
            }
            if spec.external_port == Some(0) {
                return Err(invalid(format!("{field}.external_port"), "a port is 1 to 65535"));
            }
            let outside = spec.external_port.unwrap_or_else(|| port.parse::<u16>().unwrap_or(0));
            if let (true, Some((_, what))) = (spec.public, NODE_PORTS.iter().find(|(p, _)| *p == outside)) {
                return Err(invalid(
                    format!("{field}.external_port"),
                    format!("{outside} is the node's own ({what}): publish the port as another external_port"),
                ));
            }
            check_len(&format!("{field}.connected_bundles"), spec.connected_bundles.len())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetBundleArgs {
    pub id: ObjectId,
    #[serde(default)]
    pub overlay: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListBundlesArgs {
    #[serde(default)]
    pub overlay: bool,
}

/// A bundle, and with `overlay` each of its services as the bundle runs it (by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleView {
    pub bundle: Bundle,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Service>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetList {
    pub datasets: Vec<Dataset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleList {
    pub bundles: Vec<BundleView>,
}

/// A node as its heartbeat reports it (written by the node ticks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub heartbeat_ms: u64,
    #[serde(default)]
    pub memory_total: u64,
    #[serde(default)]
    pub memory_free: u64,
    #[serde(default)]
    pub cpu_cores: u32,
    #[serde(default)]
    pub cpu_load: f64,
    #[serde(default)]
    pub disk_total: u64,
    #[serde(default)]
    pub disk_free: u64,
    /// The base URL of the node's coordinator: peers forward tasks to members listed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default)]
    pub mod_index: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

/// Where each node's past figures are kept: `NODES_HISTORY/NODE/<heartbeat_ms, 15 digits>`.
pub const NODES_HISTORY: &str = "/cerana/v1/nodes-history";
/// A node adds to its history this often ...
pub const NODE_HISTORY_EVERY_MS: u64 = 60_000;
/// ... and drops what is older than this: a day, 1,440 entries a node.
pub const NODE_HISTORY_KEEP_MS: u64 = 86_400_000;
/// Where `node`'s history entries are, the prefix of each of their keys.
pub fn node_history_prefix(node: &str) -> String {
    format!("{NODES_HISTORY}/{node}/")
}

/// The key of `node`'s history entry at `at_ms`; keys sort by time within a node.
pub fn node_history_key(node: &str, at_ms: u64) -> String {
    format!("{}{at_ms:015}", node_history_prefix(node))
}

/// The most entries one node's history answers with.
pub const NODE_HISTORY_MAX: u32 = 1440;
/// The most nodes one `get-nodes-history` answers for.
pub const NODES_HISTORY_MAX_NODES: usize = 4096;

/// Which history `get-nodes-history` returns: every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesHistoryArgs {
    /// Only these nodes (every node with a history when empty).
    #[serde(default)]
    pub nodes: Vec<ObjectId>,
    /// Only entries at or after this time (milliseconds since the epoch).
    #[serde(default)]
    pub after_ms: Option<u64>,
    /// Only entries before this time.
    #[serde(default)]
    pub before_ms: Option<u64>,
    /// At most this many entries a node, the newest (default 60, at most [`NODE_HISTORY_MAX`]).
    #[serde(default)]
    pub limit: Option<u32>,
}

impl NodesHistoryArgs {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let (Some(after), Some(before)) = (self.after_ms, self.before_ms) {
            if after >= before {
                return Err(invalid("before_ms", format!("{before} is not after after_ms ({after})")));
            }
        }
        if let Some(limit) = self.limit {
            if limit == 0 || limit > NODE_HISTORY_MAX {
                return Err(invalid("limit", format!("{limit}: from 1 to {NODE_HISTORY_MAX}")));
            }
        }
        if self.nodes.len() > NODES_HISTORY_MAX_NODES {
            return Err(invalid("nodes", format!("at most {NODES_HISTORY_MAX_NODES}")));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodesHistory {
    /// Each node's entries, newest first.
    pub nodes: BTreeMap<String, Vec<Node>>,
}

/// Cluster-wide defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDefaults {
    /// Nodes leave their disks alone; an operator sets up ZFS.
    #[serde(default)]
    pub zfs_manual: bool,
    /// Where bundles' subnets come from (CIDR); [`DEFAULT_BUNDLE_NET`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_net: Option<String>,
    /// The prefix length of each bundle's subnet; [`DEFAULT_BUNDLE_PREFIX`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_prefix: Option<u8>,
    #[serde(default)]
    pub mod_index: u64,
}

/// The inter-bundle range unless the defaults say otherwise: 4,096 bundles of /24.
pub const DEFAULT_BUNDLE_NET: &str = "10.224.0.0/12";
pub const DEFAULT_BUNDLE_PREFIX: u8 = 24;

impl ClusterDefaults {
    /// The inter-bundle range and each bundle's prefix length.
    pub fn bundle_range(&self) -> Result<((Ipv4Addr, u8), u8), Invalid> {
        let net = parse_cidr("bundle_net", self.bundle_net.as_deref().unwrap_or(DEFAULT_BUNDLE_NET), 8..=28)?;
        let prefix = self.bundle_prefix.unwrap_or(DEFAULT_BUNDLE_PREFIX);
        if !(net.1..=28).contains(&prefix) {
            return Err(invalid("bundle_prefix", format!("must be {} (the range's) to 28", net.1)));
        }
        Ok((net, prefix))
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        self.bundle_range().map(|_| ())
    }
}

/// `a.b.c.d/len` with `len` in `lengths` and no host bits set.
pub fn parse_cidr(field: &str, text: &str, lengths: std::ops::RangeInclusive<u8>) -> Result<(Ipv4Addr, u8), Invalid> {
    let (addr, len) = text.split_once('/').ok_or_else(|| invalid(field, "is not CIDR (a.b.c.d/len)"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| invalid(field, "is not CIDR (a.b.c.d/len)"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| lengths.contains(l))
        .ok_or_else(|| invalid(field, format!("prefix length must be {} to {}", lengths.start(), lengths.end())))?;
    let mask = u32::MAX << (32 - u32::from(len));
    if u32::from(addr) & !mask != 0 {
        return Err(invalid(field, "has host bits set"));
    }
    Ok((addr, len))
}

/// DHCP for the management network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpConfig {
    /// The network, as CIDR (`10.0.0.0/24`).
    pub net: String,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Lease length, 1 h to 24 h.
    pub lease_secs: u32,
    #[serde(default)]
    pub mod_index: u64,
}

impl DhcpConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let (addr, len) = parse_cidr("net", &self.net, 8..=30)?;
        let mask = u32::MAX << (32 - u32::from(len));
        if u32::from(self.gateway) & mask != u32::from(addr) {
            return Err(invalid("gateway", format!("is not inside {}", self.net)));
        }
        if !(3600..=86_400).contains(&self.lease_secs) {
            return Err(invalid("lease_secs", "must be 3600 (1 h) to 86400 (24 h)"));
        }
        check_len("dns", self.dns.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(json: serde_json::Value) -> Bundle {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_bundle_range_defaults_and_is_checked() {
        let defaults = ClusterDefaults::default();
        assert_eq!(defaults.bundle_range(), Ok(((Ipv4Addr::new(10, 224, 0, 0), 12), 24)));
        let with = |net: &str, prefix: Option<u8>| ClusterDefaults {
            bundle_net: Some(net.into()),
            bundle_prefix: prefix,
            ..Default::default()
        };
        assert_eq!(with("172.20.0.0/16", Some(26)).bundle_range(), Ok(((Ipv4Addr::new(172, 20, 0, 0), 16), 26)));
        assert!(with("172.20.0.1/16", None).validate().unwrap_err().to_string().contains("host bits"));
        assert!(with("172.20.0.0", None).validate().unwrap_err().to_string().contains("is not CIDR"));
        assert!(with("172.20.0.0/30", None).validate().unwrap_err().to_string().contains("8 to 28"));
        assert!(with("172.20.0.0/16", Some(12)).validate().unwrap_err().to_string().starts_with("bundle_prefix"));
        assert!(with("172.20.0.0/16", Some(29)).validate().is_err());
        // Older defaults (no bundle fields) read, and write back without them.
        let old: ClusterDefaults = serde_json::from_str(r#"{"zfs_manual":true}"#).unwrap();
        assert_eq!(serde_json::to_string(&old).unwrap(), r#"{"zfs_manual":true,"mod_index":0}"#);
    }

    #[test]
    fn ids_are_checked() {
        assert!(ObjectId::new("0b6e5f4c-1f2a-4a53-9d2e-3b1c0f9a7e11").is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(ObjectId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bundles_name_the_bad_field() {
        let base = serde_json::json!({
            "id": "web",
            "datasets": {"data": {"id": "d1", "type": "rw_zfs", "quota": 1024}},
            "services": {"app": {"id": "s1", "datasets": {"data": {"mount_point": "/srv"}}}},
            "ports": {"80": {"public": true, "connected_bundles": ["db"], "external_port": 8081}},
        });
        let ok = bundle(base.clone());
        ok.validate().unwrap();
        assert_eq!(ok.datasets["data"].quota, Some(1024), "quota is quota, not type");
        assert_eq!(ok.redundancy, 1);

        let cases = [
            ("/redundancy", serde_json::json!(0), "redundancy: must be at least 1"),
            ("/ports", serde_json::json!({"0": {}}), "ports.0: a port is 1 to 65535"),
            (
                "/ports",
                serde_json::json!({"80": {"public": true}}),
                "ports.80.external_port: 80 is the node's own (the boot server's HTTP): publish the port as another external_port",
            ),
            (
                "/ports",
                serde_json::json!({"443": {"public": true, "external_port": 8080}}),
                "ports.443.external_port: 8080 is the node's own (the coordinator's API): publish the port as another external_port",
            ),
            ("/ports", serde_json::json!({"70000": {}}), "ports.70000: a port is 1 to 65535"),
            ("/ports", serde_json::json!({"http": {}}), "ports.http: a port is 1 to 65535"),
            (
                "/services/app/datasets",
                serde_json::json!({"logs": {"mount_point": "/l"}}),
                "services.app.datasets.logs",
            ),
            ("/services/app/datasets/data/mount_point", serde_json::json!("../etc"), "mount_point"),
            ("/services/app/overrides", serde_json::json!({"env": {"_CERANA_X": "1"}}), "reserved"),
        ];
        for (pointer, value, says) in cases {
            let mut json = base.clone();
            match json.pointer_mut(pointer) {
                Some(slot) => *slot = value,
                None => {
                    let (parent, field) = pointer.rsplit_once('/').unwrap();
                    json.pointer_mut(parent).unwrap()[field] = value;
                }
            }
            let err = bundle(json).validate().unwrap_err();
            assert!(err.to_string().contains(says), "{pointer}: {err}");
        }
        let mut twice = base.clone();
        twice["services"]["again"] = serde_json::json!({"id": "s1"});
        assert!(bundle(twice).validate().unwrap_err().to_string().contains("named twice"));
        let mut extra = base.clone();
        extra["services"]["app"]["overrides"] = serde_json::json!({"oops": 1});
        let err = serde_json::from_value::<Strict<Bundle>>(extra.clone()).unwrap_err();
        assert!(err.to_string().contains("unknown field `services.app.overrides.oops`"), "{err}");
        assert!(serde_json::from_value::<Bundle>(extra).is_ok(), "what a newer node stored still reads");
        let err =
            serde_json::from_value::<Strict<Bundle>>(serde_json::json!({"id": "x", "services": {}, "firewall": 1}));
        assert!(err.unwrap_err().to_string().contains("unknown field `firewall`"));
    }

    #[test]
    fn overlay_merges_a_bundles_overrides() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "id": "s1", "dataset": "d1", "cmd": ["/bin/app"], "env": {"A": "1", "B": "2"},
        }))
        .unwrap();
        let overrides: ServiceOverrides =
            serde_json::from_value(serde_json::json!({"env": {"B": "3"}, "limits": {"memory": 1024}})).unwrap();
        let merged = service.overlaid(&overrides);
        assert_eq!(merged.env["A"], "1");
        assert_eq!(merged.env["B"], "3");
        assert_eq!(merged.limits.memory, Some(1024));
        assert_eq!(merged.cmd, ["/bin/app"]);
    }

    #[test]
    fn dhcp_settings_are_checked() {
        let dhcp = |net: &str, gw: &str, secs: u32| DhcpConfig {
            net: net.into(),
            gateway: gw.parse().unwrap(),
            dns: vec![],
            lease_secs: secs,
            mod_index: 0,
        };
        dhcp("10.0.0.0/24", "10.0.0.1", 3600).validate().unwrap();
        assert!(dhcp("10.0.0.5/24", "10.0.0.1", 3600).validate().unwrap_err().to_string().contains("host bits"));
        assert!(dhcp("10.0.0.0/24", "10.1.0.1", 3600).validate().unwrap_err().to_string().starts_with("gateway"));
        assert!(dhcp("10.0.0.0/24", "10.0.0.1", 60).validate().unwrap_err().to_string().starts_with("lease_secs"));
        assert!(dhcp("10.0.0.0", "10.0.0.1", 3600).validate().unwrap_err().to_string().starts_with("net"));
    }
}

/// What the stream of an `import-dataset` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportFormat {
    /// A tar archive, plain, gzip or zstd (`tar c` of a root filesystem, `docker export`).
    Tar,
    /// A full ZFS send stream.
    Zfs,
}

/// Where the datasets of the cluster live on a node's pool: `data/datasets/<id>`.
pub const DATASETS_ON_POOL: &str = "data/datasets";
/// The snapshot an import takes: what the dataset tick copies from.
pub const IMPORT_SNAPSHOT: &str = "import";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportDatasetArgs {
    pub id: ObjectId,
    pub format: ImportFormat,
    #[serde(default = "one")]
    pub redundancy: u32,
    #[serde(default)]
    pub read_only: bool,
    /// Bytes; the archive may expand to at most this much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// The node (its id, as `list-nodes` shows it) to import on; otherwise the node with a live
    /// heartbeat and the most free disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A dataset imported: declared, and held by `node` with the snapshot `snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedDataset {
    pub dataset: Dataset,
    pub node: String,
    /// `data/datasets/<id>@import`.
    pub snapshot: String,
    /// Bytes of stream consumed (decompressed, for an archive).
    pub bytes: u64,
}
