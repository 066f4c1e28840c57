//! `ticks-*` and `bundle-apply`: the Cerana Platform's reconcilers (issue #18), served by every
//! node's `ticks` provider.
//!
//! Every node reports what it runs and holds under [`REPORTS`], on a lease that ends with its
//! heartbeat. One node, elected under [`LEADER`], runs the cluster ticks: it plans from the
//! declared objects and the reports, copies datasets between nodes and sends each node the
//! bundles to run or stop with `bundle-apply`, carrying its term. A node carries out an action
//! only while that term is the election's current one, so a deposed leader's late action is
//! refused. Each run is recorded under [`JOURNAL`].

use crate::tasks::clusterconf::{
    is_volume_name, Bundle, Dataset, DatasetKind, ObjectId, Service, Strict, DATASETS_ON_POOL, MAX_ENTRIES,
};
use crate::tasks::service::CreateArgs;
use crate::tasks::zfs::SnapshotName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

crate::declare_tasks! {
    BundleApply = "bundle-apply", Write, "Runs or stops one bundle's services on this node for the cluster tick's leader of `term` (refused for any other term)", ApplyArgs => Applied;
    TicksPlan = "ticks-plan", Read, "What the next cluster tick would do, and every bundle's desired and running replicas; with objects, as if they were declared (nothing is written)", PlanArgs => TickPlan;
    TicksHistory = "ticks-history", Read, "The cluster ticks' journal, newest first", HistoryArgs => History;
}

/// The election of the node that runs the cluster ticks.
pub const LEADER: &str = "/cerana/v1/ticks/leader";
/// Each node's report, `REPORTS/NODE` ([`NodeReport`]).
pub const REPORTS: &str = "/cerana/v1/ticks/reports";
/// The journal, `JOURNAL/<revision, 20 digits>` ([`TickRun`]).
pub const JOURNAL: &str = "/cerana/v1/ticks/journal";
/// Each bundle's subnet, `SUBNETS/<bundle>` ([`SubnetRecord`]), written by the leader.
pub const SUBNETS: &str = "/cerana/v1/network/subnets";
/// Each replica service's address, `ADDRESSES/<bundle>/<node>/<service>` ([`AddressRecord`]).
pub const ADDRESSES: &str = "/cerana/v1/network/addresses";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRecord {
    /// CIDR.
    pub subnet: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    pub ip: std::net::Ipv4Addr,
}

/// Runs the journal keeps.
pub const JOURNAL_RUNS: usize = 1000;

/// What a node runs and holds, as its node tick reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// Milliseconds since the epoch when the node observed this.
    pub at_ms: u64,
    /// Bundles with services here: bundle → service → its state.
    #[serde(default)]
    pub bundles: BTreeMap<String, BTreeMap<String, ServiceReport>>,
    /// Cluster datasets held here (`data/datasets/ID`): their snapshots, oldest first.
    #[serde(default)]
    pub datasets: BTreeMap<String, Vec<String>>,
}

/// One service as its node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// `running`, `starting`, `restarting`, `exited`, `failed`.
    pub state: String,
    /// The outcome of its health checks; none declared: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// The clone its root filesystem is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<String>,
    /// The fingerprint of its definition ([`CreateArgs::definition`]); absent from older
    /// nodes, which are then taken as current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
}

/// What the leader asks of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ApplyAction {
    /// Run these services and only these: those already there with the same definition stay as
    /// they are, those with another are created again, others of the bundle are removed.
    Run {
        services: Vec<CreateArgs>,
        /// The bundle's datasets, made here before its services (which mount them from
        /// [`Volume::path`]); volumes of the bundle not listed are removed after them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        volumes: Vec<Volume>,
        /// The replica's network: made here before its services, which run in it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<ReplicaNetwork>,
    },
    /// Stop and remove every service of the bundle here, clones included, and its volumes but
    /// the kept ones (`rw_zfs`).
    Stop,
}

/// A bundle replica's network on its node: the namespace [`bundle_netns`] its services share,
/// reached from the node through the veth [`bundle_link`] whose node end holds the subnet's
/// gateway (its first host), and each service's address (a /32 in the namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaNetwork {
    /// The bundle's subnet (CIDR).
    pub subnet: String,
    /// By service id.
    pub addresses: BTreeMap<String, Ipv4Addr>,
}

impl ReplicaNetwork {
    /// The subnet's network address and prefix length, checked.
    pub fn parsed_subnet(&self) -> Result<(Ipv4Addr, u8), String> {
        let (addr, prefix) =
            self.subnet.split_once('/').ok_or_else(|| format!("subnet {} is not a CIDR", self.subnet))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("subnet {}: {e}", self.subnet))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("subnet {}: {e}", self.subnet))?;
        if !(1..=30).contains(&prefix) || u32::from(addr) & !Self::mask(prefix) != 0 {
            return Err(format!("subnet {} is not a network of 1 to 30 prefix bits", self.subnet));
        }
        Ok((addr, prefix))
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX << (32 - u32::from(prefix))
    }

    /// The gateway: the subnet's first host, held by the node end of the veth.
    pub fn gateway(&self) -> Result<Ipv4Addr, String> {
        let (addr, _) = self.parsed_subnet()?;
        Ok(Ipv4Addr::from(u32::from(addr) + 1))
    }

    /// Checks the subnet and that each address is a host of it other than the gateway.
    pub fn validate(&self) -> Result<(), String> {
        let (net, prefix) = self.parsed_subnet()?;
        let gateway = self.gateway()?;
        let broadcast = u32::from(net) | !Self::mask(prefix);
        for (service, ip) in &self.addresses {
            ObjectId::new(service.clone()).map_err(|e| e.to_string())?;
            let inside = u32::from(*ip) & Self::mask(prefix) == u32::from(net);
            if !inside || *ip == net || *ip == gateway || u32::from(*ip) == broadcast {
                return Err(format!(
                    "address {ip} of service {service} is not a host of {} but its gateway",
                    self.subnet
                ));
            }
        }
        let mut seen: Vec<&Ipv4Addr> = self.addresses.values().collect();
        seen.sort();
        if let Some(twice) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("address {} is given twice", twice[0]));
        }
        Ok(())
    }
}

/// The network namespace of a bundle's services on a node.
pub fn bundle_netns(bundle: &str) -> String {
    format!("{BUNDLE_NETNS_PREFIX}{bundle}")
}

/// What every bundle namespace's name starts with.
pub const BUNDLE_NETNS_PREFIX: &str = "bundle-";

/// The node end of a bundle's veth: `cb` and 12 hex digits of the bundle id's 64-bit FNV-1a
/// hash (a link name holds 15 bytes, a bundle id 64; every node computes the same name).
pub fn bundle_link(bundle: &str) -> String {
    let hash = bundle.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{BUNDLE_LINK_PREFIX}{:012x}", hash >> 16)
}

/// What the node end of every bundle veth is called first.
pub const BUNDLE_LINK_PREFIX: &str = "cb";

/// The namespace end of a bundle's veth.
pub const BUNDLE_LINK_INSIDE: &str = "eth0";

/// Where a node makes a bundle's volumes: `VOLUMES/<bundle>/<kind>/<name>`.
pub const VOLUMES: &str = "/run/cerana/volumes";
/// The ZFS datasets of kept volumes (`rw_zfs`): `VOLUMES_ON_POOL/<bundle>.<name>` (a volume's
/// name has no dot).
pub const VOLUMES_ON_POOL: &str = "data/volumes";
/// The ZFS datasets of volumes thrown away when their bundle stops (`temp_zfs`):
/// `SCRATCH_ON_POOL/<bundle>.<name>`.
pub const SCRATCH_ON_POOL: &str = "data/scratch";

/// A bundle dataset as its node provides it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Its name in the bundle.
    pub name: String,
    pub kind: DatasetKind,
    /// The snapshot a ZFS volume is cloned from (`data/datasets/ID@SNAP`); none for a RAM disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Bytes: the ZFS volume's `refquota`, the RAM disk's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
}

/// How `kind` is written (`rw_zfs`, `temp_zfs`, `ram_disk`).
pub fn kind_name(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::RwZfs => "rw_zfs",
        DatasetKind::TempZfs => "temp_zfs",
        DatasetKind::RamDisk => "ram_disk",
    }
}

/// The RAM disk's size when its bundle gives no quota.
pub const RAM_DISK_DEFAULT: u64 = 64 << 20;

impl Volume {
    /// Checks it can be made for `bundle`; the message names what is wrong.
    pub fn validate(&self, bundle: &str) -> Result<(), String> {
        ObjectId::new(bundle.to_owned()).map_err(|e| e.to_string())?;
        if !is_volume_name(&self.name) {
            return Err(format!("volume {:?}: a name is 1 to 64 of A-Z a-z 0-9 _ -", self.name));
        }
        let origin = self.origin.as_deref();
        match (self.kind, origin) {
            (DatasetKind::RamDisk, None) => {}
            (DatasetKind::RamDisk, Some(_)) => return Err(format!("volume {}: a RAM disk has no origin", self.name)),
            (_, None) => return Err(format!("volume {}: a ZFS volume needs its origin", self.name)),
            (_, Some(origin)) => {
                let snapshot = SnapshotName::new(origin).ok();
                let dataset = snapshot.as_ref().map(SnapshotName::dataset);
                let id = dataset.as_ref().and_then(|d| d.as_str().strip_prefix(DATASETS_ON_POOL)?.strip_prefix('/'));
                if id.is_none_or(|id| ObjectId::new(id.to_owned()).is_err()) {
                    return Err(format!(
                        "volume {}: origin {origin:?} is not a snapshot under {DATASETS_ON_POOL}",
                        self.name
                    ));
                }
            }
        }
        if self.quota == Some(0) {
            return Err(format!("volume {}: a quota of 0 bytes", self.name));
        }
        Ok(())
    }

    /// Where its services find it: `VOLUMES/<bundle>/<kind>/<name>`. (With its kind in the
    /// path, a kind changed changes the services' mounts, so they are made again on the new.)
    pub fn path(&self, bundle: &str) -> String {
        format!("{VOLUMES}/{bundle}/{}/{}", kind_name(self.kind), self.name)
    }

    /// Its ZFS dataset; none for a RAM disk.
    pub fn dataset(&self, bundle: &str) -> Option<String> {
        match self.kind {
            DatasetKind::RwZfs => Some(format!("{VOLUMES_ON_POOL}/{bundle}.{}", self.name)),
            DatasetKind::TempZfs => Some(format!("{SCRATCH_ON_POOL}/{bundle}.{}", self.name)),
            DatasetKind::RamDisk => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyArgs {
    pub bundle: String,
    /// The leader's election key (under [`LEADER`]) and its creation revision, the term.
    pub leader_key: String,
    pub term: u64,
    pub action: ApplyAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub bundle: String,
    /// Services created (Run) or removed (Stop); empty: it was so already.
    pub changed: Vec<String>,
}

/// One planned action, as `cerana plan` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAction {
    /// `+` start or address, `-` stop, destroy or release, `~` copy or update.
    pub sign: String,
    /// The action in words: `+ web on node-2`.
    pub text: String,
}

/// A bundle: desired against running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleStatus {
    pub id: String,
    pub redundancy: u32,
    /// Nodes with a live heartbeat running it, and whether its services there are all healthy.
    pub running_on: BTreeMap<String, bool>,
    /// Why replicas are missing, when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaced: Option<String>,
    /// Its subnet (CIDR), once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Each replica's services' addresses: node → service → address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<String, BTreeMap<String, std::net::Ipv4Addr>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickPlan {
    /// The store revision the plan was made at.
    pub revision: u64,
    /// The node running the cluster ticks, if one is elected.
    #[serde(default)]
    pub leader: Option<String>,
    pub actions: Vec<PlannedAction>,
    pub bundles: Vec<BundleStatus>,
    /// Datasets that cannot be kept whole, and why.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// `ticks-plan`'s arguments: objects to plan as if declared, each in place of the stored one
/// with its id (`cerana plan -f`'s dry run). None: the cluster as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanArgs {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<Strict<Dataset>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Strict<Service>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<Strict<Bundle>>,
}

impl PlanArgs {
    /// Each object's own checks, and at most [`MAX_ENTRIES`] of each kind.
    pub fn validate(&self) -> Result<(), String> {
        let too_many =
            [("datasets", self.datasets.len()), ("services", self.services.len()), ("bundles", self.bundles.len())]
                .into_iter()
                .find(|(_, n)| *n > MAX_ENTRIES);
        if let Some((what, n)) = too_many {
            return Err(format!("{what}: {n} given, at most {MAX_ENTRIES}"));
        }
        let named = |kind: &str, id: &ObjectId, e: crate::tasks::clusterconf::Invalid| format!("{kind} {id}: {e}");
        for Strict(d) in &self.datasets {
            d.validate().map_err(|e| named("dataset", &d.id, e))?;
        }
        for Strict(s) in &self.services {
            s.validate().map_err(|e| named("service", &s.id, e))?;
        }
        for Strict(b) in &self.bundles {
            b.validate().map_err(|e| named("bundle", &b.id, e))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryArgs {
    /// At most this many runs (default 20, at most [`JOURNAL_RUNS`]).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One action a tick took, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub action: String,
    /// `ok`, or the error.
    pub outcome: String,
}

/// One run of the cluster ticks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickRun {
    pub leader: String,
    pub term: u64,
    /// The store revision it read.
    pub revision: u64,
    pub started_ms: u64,
    pub duration_ms: u64,
    /// SHA-256 (hex, first 16 digits) of the declared objects and of the reports it planned from.
    pub desired_hash: String,
    pub observed_hash: String,
    pub actions: Vec<ActionOutcome>,
    #[serde(default)]
    pub unplaced: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub runs: Vec<TickRun>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apply_is_strict_and_a_report_tolerant() {
        let run =
            r#"{"bundle":"web","leader_key":"/cerana/v1/ticks/leader/1f","term":7,"action":{"run":{"services":[]}}}"#;
        let args: ApplyArgs = serde_json::from_str(run).unwrap();
        assert_eq!(args.action, ApplyAction::Run { services: vec![], volumes: vec![], network: None });
        let stop: ApplyArgs = serde_json::from_str(
            r#"{"bundle":"web","leader_key":"/cerana/v1/ticks/leader/1f","term":7,"action":"stop"}"#,
        )
        .unwrap();
        assert_eq!(stop.action, ApplyAction::Stop);
        let unknown = r#"{"bundle":"web","leader_key":"k","term":7,"action":"stop","force":true}"#;
        assert!(serde_json::from_str::<ApplyArgs>(unknown).unwrap_err().to_string().contains("force"));
        // A newer node's report reads on an older one.
        let report: NodeReport =
            serde_json::from_str(r#"{"node":"n1","at_ms":5,"bundles":{},"datasets":{},"gpus":2}"#).unwrap();
        assert_eq!(report.node, "n1");
    }

    #[test]
    fn a_volume_says_what_is_wrong_with_it() {
        let zfs = |origin: Option<&str>| Volume {
            name: "scratch".into(),
            kind: DatasetKind::TempZfs,
            origin: origin.map(String::from),
            quota: None,
        };
        assert_eq!(zfs(Some("data/datasets/busybox@import")).validate("web"), Ok(()));
        assert!(zfs(None).validate("web").unwrap_err().contains("needs its origin"));
        for bad in
            ["data/other/x@s", "data/datasets/x", "data/datasets/../x@s", "data/datasets/x@", "data/datasets/x@a/b"]
        {
            assert!(zfs(Some(bad)).validate("web").unwrap_err().contains("is not a snapshot"), "{bad}");
        }
        assert!(zfs(Some("data/datasets/x@s")).validate("../web").is_err());
        let ram =
            |name: &str| Volume { name: name.into(), kind: DatasetKind::RamDisk, origin: None, quota: Some(1 << 20) };
        assert_eq!(ram("tmp").validate("web"), Ok(()));
        for bad in ["", "a.b", "a/b", "..", &"x".repeat(65)] {
            assert!(ram(bad).validate("web").unwrap_err().contains("a name is"), "{bad:?}");
        }
        assert!(Volume { quota: Some(0), ..ram("tmp") }.validate("web").unwrap_err().contains("0 bytes"));
        assert_eq!(ram("tmp").path("web"), "/run/cerana/volumes/web/ram_disk/tmp");
        for kind in [DatasetKind::RwZfs, DatasetKind::TempZfs, DatasetKind::RamDisk] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind_name(kind));
        }
        assert_eq!(ram("tmp").dataset("web"), None);
        assert_eq!(zfs(None).dataset("web").as_deref(), Some("data/scratch/web.scratch"));
        let kept = Volume { kind: DatasetKind::RwZfs, ..zfs(None) };
        assert_eq!(kept.dataset("web").as_deref(), Some("data/volumes/web.scratch"));
        // Strict: an older node refuses what it cannot do rather than run without it.
        let unknown = r#"{"name":"tmp","kind":"ram_disk","size":5}"#;
        assert!(serde_json::from_str::<Volume>(unknown).is_err());
    }

    #[test]
    fn a_replica_network_is_checked_and_its_names_fit_the_kernel() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let net = |subnet: &str, addresses: &[(&str, &str)]| ReplicaNetwork {
            subnet: subnet.into(),
            addresses: addresses.iter().map(|(s, a)| ((*s).to_owned(), ip(a))).collect(),
        };
        let ok = net("10.224.3.0/24", &[("a", "10.224.3.2"), ("b", "10.224.3.254")]);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.gateway(), Ok(ip("10.224.3.1")));
        for (bad, why) in [
            (net("10.224.3.1/24", &[]), "not a network"),
            (net("10.224.3.0", &[]), "not a CIDR"),
            (net("10.224.3.0/31", &[]), "not a network"),
            (net("10.224.3.0/24", &[("a", "10.224.3.1")]), "but its gateway"),
            (net("10.224.3.0/24", &[("a", "10.224.3.255")]), "but its gateway"),
            (net("10.224.3.0/24", &[("a", "10.224.4.2")]), "but its gateway"),
            (net("10.224.3.0/24", &[("a", "10.224.3.2"), ("b", "10.224.3.2")]), "given twice"),
            (net("10.224.3.0/24", &[("../x", "10.224.3.2")]), "is not an id"),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // Strict: a node that cannot make a replica's network refuses the order.
        let unknown = r#"{"subnet":"10.224.3.0/24","addresses":{},"mtu":9000}"#;
        assert!(serde_json::from_str::<ReplicaNetwork>(unknown).is_err());
        let long = "b".repeat(64);
        for bundle in ["web", long.as_str()] {
            let link = bundle_link(bundle);
            assert!(link.len() <= 15 && link.starts_with(BUNDLE_LINK_PREFIX), "{link}");
            assert_eq!(link, bundle_link(bundle), "the same on every node");
            // The netns provider takes names of up to 80 bytes.
            assert!(bundle_netns(bundle).len() <= 80);
        }
        assert_ne!(bundle_link("web"), bundle_link("weB"));
    }
}
