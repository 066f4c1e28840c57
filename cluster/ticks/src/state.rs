//! The cluster as one tick sees it — the declared objects and the nodes' reports — and the
//! pure step from it to the planners' inputs and the plan (`cerana_planner`).

use cerana_planner::addresses::{plan_addresses, AddressAction, AddressPlan, AddressState, BundleRange, Subnet};
use cerana_planner::datasets::{plan_datasets, DatasetAction, DatasetDemand, DatasetPlan, NodeDatasets};
use cerana_planner::{plan, Action, BundleDemand, NodeState, Plan};
use cerana_protocol::tasks::clusterconf::{self as c, DATASETS_ON_POOL, PREFIX};
use cerana_protocol::tasks::health::HealthCheck;
use cerana_protocol::tasks::service::{BindMount, CreateArgs, RootfsKind};
use cerana_protocol::tasks::ticks::{
    bundle_netns, AddressRecord, ApplyAction, BundleStatus, NodeReport, PlannedAction, ReplicaNetwork, SubnetRecord,
    TickPlan, Volume, ADDRESSES, REPORTS, SUBNETS,
};
use cerana_store::{Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Objects of one kind read at most (a cluster with more is refused, not half-planned).
const MAX_OBJECTS: usize = 100_000;

/// What one tick reads.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// The newest store revision among the reads.
    pub revision: u64,
    pub datasets: BTreeMap<String, c::Dataset>,
    pub services: BTreeMap<String, c::Service>,
    pub bundles: BTreeMap<String, c::Bundle>,
    /// Nodes with a live entry (`/cerana/v1/nodes/`).
    pub nodes: BTreeMap<String, c::Node>,
    /// Nodes with a live report.
    pub reports: BTreeMap<String, NodeReport>,
    /// Entries that did not parse, by key (skipped, and said).
    pub unreadable: Vec<String>,
    pub defaults: c::ClusterDefaults,
    /// The management network, from the DHCP configuration.
    pub management: Option<String>,
    /// Subnets held, by bundle.
    pub subnets: BTreeMap<String, Subnet>,
    /// Addresses held, by (bundle, node, service).
    pub addresses: BTreeMap<(String, String, String), std::net::Ipv4Addr>,
}

/// Both planners' output.
#[derive(Debug, Clone, Default)]
pub struct Decisions {
    pub bundles: Plan,
    pub datasets: DatasetPlan,
    pub addresses: AddressPlan,
}

/// Every entry under `prefix` that parses as `T`, with its key and index; the others are said
/// in `unreadable`.
async fn read_all<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: &str,
    revision: &mut u64,
    unreadable: &mut Vec<String>,
) -> Result<Vec<(String, T, u64)>, StoreError> {
    let (entries, more) = store.list_all(prefix, MAX_OBJECTS).await?;
    if more {
        return Err(StoreError::Failed {
            op: "list",
            reason: format!("more than {MAX_OBJECTS} entries under {prefix}: the ticks do not plan a partial view"),
        });
    }
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        *revision = (*revision).max(entry.index);
        match serde_json::from_str::<T>(&entry.value) {
            Ok(value) => out.push((entry.key, value, entry.index)),
            Err(e) => unreadable.push(format!("{}: {e}", entry.key)),
        }
    }
    Ok(out)
}

impl Cluster {
    /// Plans `objects` as if declared, each in place of the stored one with its id (a dry run:
    /// nothing is written).
    pub fn assume(&mut self, objects: cerana_protocol::tasks::ticks::PlanArgs) {
        for c::Strict(d) in objects.datasets {
            self.datasets.insert(d.id.to_string(), d);
        }
        for c::Strict(s) in objects.services {
            self.services.insert(s.id.to_string(), s);
        }
        for c::Strict(b) in objects.bundles {
            self.bundles.insert(b.id.to_string(), b);
        }
    }

    /// Reads everything the ticks plan from.
    pub async fn read(store: &Store) -> Result<Self, StoreError> {
        let mut cluster = Cluster::default();
        let (mut revision, mut unreadable) = (0, Vec::new());
        let (rev, bad) = (&mut revision, &mut unreadable);
        for (_, mut d, index) in read_all::<c::Dataset>(store, &format!("{PREFIX}/datasets/"), rev, bad).await? {
            d.mod_index = index;
            cluster.datasets.insert(d.id.to_string(), d);
        }
        for (_, mut s, index) in read_all::<c::Service>(store, &format!("{PREFIX}/services/"), rev, bad).await? {
            s.mod_index = index;
            cluster.services.insert(s.id.to_string(), s);
        }
        for (_, mut b, index) in read_all::<c::Bundle>(store, &format!("{PREFIX}/bundles/"), rev, bad).await? {
            b.mod_index = index;
            cluster.bundles.insert(b.id.to_string(), b);
        }
        for (_, n, _) in read_all::<c::Node>(store, &format!("{PREFIX}/nodes/"), rev, bad).await? {
            cluster.nodes.insert(n.id.clone(), n);
        }
        for (_, r, _) in read_all::<NodeReport>(store, &format!("{REPORTS}/"), rev, bad).await? {
            cluster.reports.insert(r.node.clone(), r);
        }
        // The cluster's settings: its defaults and its DHCP configuration (the management network).
        for name in ["defaults", "dhcp"] {
            let Some(entry) = store.get(&format!("{PREFIX}/cluster/{name}")).await? else { continue };
            *rev = (*rev).max(entry.index);
            let parsed = if name == "defaults" {
                serde_json::from_str(&entry.value).map(|d| cluster.defaults = d)
            } else {
                serde_json::from_str::<c::DhcpConfig>(&entry.value).map(|d| cluster.management = Some(d.net))
            };
            if let Err(e) = parsed {
                bad.push(format!("{}: {e}", entry.key));
            }
        }
        for (key, record, _) in read_all::<SubnetRecord>(store, &format!("{SUBNETS}/"), rev, bad).await? {
            match (key.strip_prefix(&format!("{SUBNETS}/")), record.subnet.parse::<Subnet>()) {
                (Some(bundle), Ok(subnet)) => drop(cluster.subnets.insert(bundle.to_owned(), subnet)),
                (_, Err(e)) => bad.push(format!("{key}: {e}")),
                (None, _) => {}
            }
        }
        for (key, record, _) in read_all::<AddressRecord>(store, &format!("{ADDRESSES}/"), rev, bad).await? {
            let path = key.strip_prefix(&format!("{ADDRESSES}/")).unwrap_or_default();
            match path.split('/').collect::<Vec<_>>()[..] {
                [bundle, node, service] => {
                    cluster.addresses.insert((bundle.into(), node.into(), service.into()), record.ip);
                }
                _ => bad.push(format!("{key}: not {ADDRESSES}/BUNDLE/NODE/SERVICE")),
            }
        }
        cluster.revision = revision;
        cluster.unreadable = unreadable;
        Ok(cluster)
    }

    /// A node counts when both its entry (its coordinator's URL, its figures) and its report
    /// are live.
    pub fn healthy(&self, node: &str) -> bool {
        self.reports.contains_key(node) && self.nodes.get(node).is_some_and(|n| n.api_url.is_some())
    }

    /// The service `name` of `bundle` as the bundle runs it (base merged with overrides).
    fn bundle_services(&self, bundle: &c::Bundle) -> Vec<(String, Option<c::Service>)> {
        bundle
            .services
            .iter()
            .map(|(name, entry)| {
                (name.clone(), self.services.get(entry.id.as_str()).map(|base| base.overlaid(&entry.overrides)))
            })
            .collect()
    }

    pub fn bundle_demands(&self) -> Vec<BundleDemand> {
        self.bundles
            .values()
            .map(|bundle| {
                let services = self.bundle_services(bundle);
                let present = || services.iter().filter_map(|(_, s)| s.as_ref());
                BundleDemand {
                    id: bundle.id.to_string(),
                    redundancy: bundle.redundancy,
                    memory: present().map(|s| s.limits.memory.unwrap_or(0)).sum(),
                    cpu_millis: present().map(|s| u64::from(s.limits.cpu.unwrap_or(0))).sum(),
                    datasets: present()
                        .map(|s| s.dataset.to_string())
                        .chain(
                            bundle
                                .datasets
                                .values()
                                .filter(|d| d.kind != c::DatasetKind::RamDisk)
                                .map(|d| d.id.to_string()),
                        )
                        .collect(),
                    published: bundle
                        .ports
                        .iter()
                        .filter(|(_, p)| p.public)
                        .filter_map(|(port, p)| p.external_port.or_else(|| port.parse().ok()))
                        .collect(),
                }
            })
            .collect()
    }

    pub fn node_states(&self, demands: &[BundleDemand]) -> Vec<NodeState> {
        let cpu_of: BTreeMap<&str, u64> = demands.iter().map(|d| (d.id.as_str(), d.cpu_millis)).collect();
        let mut ids: BTreeSet<&str> = self.nodes.keys().map(String::as_str).collect();
        ids.extend(self.reports.keys().map(String::as_str));
        ids.into_iter()
            .map(|id| {
                let node = self.nodes.get(id);
                let report = self.reports.get(id);
                let running: BTreeSet<String> = report.map(|r| r.bundles.keys().cloned().collect()).unwrap_or_default();
                let promised: u64 = running.iter().filter_map(|b| cpu_of.get(b.as_str())).sum();
                NodeState {
                    id: id.to_owned(),
                    healthy: self.healthy(id),
                    memory_free: node.map_or(0, |n| n.memory_free),
                    cpu_millis_free: node.map_or(0, |n| u64::from(n.cpu_cores) * 1000).saturating_sub(promised),
                    datasets: report
                        .map(|r| r.datasets.iter().filter(|(_, s)| !s.is_empty()).map(|(d, _)| d.clone()).collect())
                        .unwrap_or_default(),
                    outdated: running.iter().filter(|b| self.outdated(b, id)).cloned().collect(),
                    running,
                }
            })
            .collect()
    }

    /// Whether `bundle`'s replica on `node` runs other services, or other definitions of them,
    /// than the declared ones. A node that does not report definitions (an older version), or
    /// a declaration the node cannot run yet, is not taken as outdated.
    fn outdated(&self, bundle: &str, node: &str) -> bool {
        let Some(running) = self.reports.get(node).and_then(|r| r.bundles.get(bundle)) else { return false };
        let Ok(ApplyAction::Run { services: wanted, .. }) = self.run_args(bundle, node) else { return false };
        if running.values().any(|s| s.definition.is_none()) {
            return false;
        }
        running.len() != wanted.len()
            || wanted.iter().any(|w| running.get(&w.id).and_then(|s| s.definition.as_ref()) != Some(&w.definition()))
    }

    /// Both plans: the bundles', then the datasets' for where bundles run and will run.
    pub fn decide(&self, unneeded_since: &BTreeMap<(String, String), u64>, now_ms: u64, grace_ms: u64) -> Decisions {
        let demands = self.bundle_demands();
        let states = self.node_states(&demands);
        let bundles = plan(&demands, &states);
        let datasets_of: BTreeMap<&str, &BTreeSet<String>> =
            demands.iter().map(|d| (d.id.as_str(), &d.datasets)).collect();
        // Where each bundle will run: where it runs on healthy nodes, less stops, plus starts.
        let mut placed: BTreeSet<(String, String)> = states
            .iter()
            .filter(|n| n.healthy)
            .flat_map(|n| n.running.iter().map(move |b| (b.clone(), n.id.clone())))
            .collect();
        for action in &bundles.actions {
            match action {
                Action::Start { bundle, node } => placed.insert((bundle.clone(), node.clone())),
                Action::Stop { bundle, node, .. } => placed.remove(&(bundle.clone(), node.clone())),
                Action::Update { .. } => false,
            };
        }
        let mut needed_on: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut in_use: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (bundle, node) in &placed {
            for dataset in datasets_of.get(bundle.as_str()).into_iter().flat_map(|d| d.iter()) {
                needed_on.entry(dataset.as_str()).or_default().insert(node.clone());
            }
        }
        for state in states.iter().filter(|n| n.healthy) {
            for bundle in &state.running {
                for dataset in datasets_of.get(bundle.as_str()).into_iter().flat_map(|d| d.iter()) {
                    in_use.entry(state.id.as_str()).or_default().insert(dataset.clone());
                }
            }
        }
        let dataset_demands: Vec<DatasetDemand> = self
            .datasets
            .values()
            .map(|d| DatasetDemand {
                id: d.id.to_string(),
                redundancy: d.redundancy,
                needed_on: needed_on.get(d.id.as_str()).cloned().unwrap_or_default(),
            })
            .collect();
        let holders: Vec<NodeDatasets> = states
            .iter()
            .map(|n| NodeDatasets {
                id: n.id.clone(),
                healthy: n.healthy,
                disk_free: self.nodes.get(&n.id).map_or(0, |e| e.disk_free),
                held: self.reports.get(&n.id).map(|r| r.datasets.clone()).unwrap_or_default(),
                in_use: in_use.get(n.id.as_str()).cloned().unwrap_or_default(),
            })
            .collect();
        let datasets = plan_datasets(&dataset_demands, &holders, unneeded_since, now_ms, grace_ms);
        let addresses = self.plan_addresses(&bundles);
        Decisions { bundles, datasets, addresses }
    }

    /// The inter-bundle range the defaults and the DHCP configuration make.
    pub(crate) fn bundle_range(&self) -> Result<BundleRange, String> {
        let ((base, len), prefix) = self.defaults.bundle_range().map_err(|e| format!("cluster defaults: {e}"))?;
        let range = Subnet::new(base, len).ok_or_else(|| format!("cluster defaults: {base}/{len}"))?;
        let management = self.management.as_deref().and_then(|m| m.parse::<Subnet>().ok());
        Ok(BundleRange { range, prefix, management })
    }

    /// Subnets and addresses for the bundles as they run and are about to start.
    fn plan_addresses(&self, bundles: &Plan) -> AddressPlan {
        let range = match self.bundle_range() {
            Ok(range) => range,
            Err(problem) => return AddressPlan { actions: Vec::new(), problems: vec![problem] },
        };
        let state = AddressState {
            bundles: self.bundles.iter().map(|(id, b)| (id.clone(), b.services.keys().cloned().collect())).collect(),
            reporting: self
                .reports
                .iter()
                .map(|(node, report)| (node.clone(), report.bundles.keys().cloned().collect()))
                .collect(),
            starting: bundles
                .actions
                .iter()
                .filter_map(|a| match a {
                    Action::Start { bundle, node } => Some((bundle.clone(), node.clone())),
                    _ => None,
                })
                .collect(),
            subnets: self.subnets.clone(),
            addresses: self.addresses.clone(),
        };
        plan_addresses(&range, &state)
    }

    /// The services `bundle` runs on `node`, as `service-create` takes them: each on a clone of
    /// the newest snapshot of its dataset the node holds. `Err` names a dataset the node does
    /// not hold yet, or a service no longer declared.
    pub fn run_args(&self, bundle: &str, node: &str) -> Result<ApplyAction, String> {
        let declared = self.bundles.get(bundle).ok_or_else(|| format!("bundle {bundle} is not declared"))?;
        let held = self.reports.get(node).map(|r| &r.datasets);
        let newest = |dataset: &str| {
            held.and_then(|h| h.get(dataset))
                .and_then(|s| s.last())
                .map(|snapshot| format!("{DATASETS_ON_POOL}/{dataset}@{snapshot}"))
                .ok_or_else(|| format!("waiting for dataset {dataset} on {node}"))
        };
        let mut volumes = Vec::new();
        for (name, d) in &declared.datasets {
            let origin = match d.kind {
                c::DatasetKind::RamDisk => None,
                _ => Some(newest(d.id.as_str())?),
            };
            volumes.push(Volume { name: name.clone(), kind: d.kind, origin, quota: d.quota });
        }
        let network = self.replica_network(bundle, node)?;
        let mut services = Vec::new();
        for (name, service) in self.bundle_services(declared) {
            let service = service.ok_or_else(|| format!("service {name} of bundle {bundle} is not declared"))?;
            let health_checks = service
                .health_checks
                .values()
                .map(|check| {
                    serde_json::from_value::<HealthCheck>(serde_json::json!({ "type": check.task, "args": check.args }))
                        .map_err(|e| format!("service {name}: health check {}: {e}", check.task))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mounts = declared.services.get(&name).map(|s| &s.datasets).into_iter().flatten();
            let mounts = mounts
                .filter_map(|(name, mount)| {
                    let volume = volumes.iter().find(|v| v.name == *name)?;
                    Some(BindMount {
                        source: volume.path(bundle),
                        destination: mount.mount_point.clone(),
                        read_only: mount.read_only,
                    })
                })
                .collect();
            services.push(CreateArgs {
                id: name,
                bundle_id: bundle.to_owned(),
                dataset: newest(service.dataset.as_str())?,
                rootfs: RootfsKind::Zfs,
                description: Some(format!("bundle {bundle}, service {}", service.id)),
                cmd: service.cmd.clone(),
                env: service.env.clone(),
                cwd: None,
                limits: service.limits,
                user: Default::default(),
                mounts,
                netns: Some(bundle_netns(bundle)),
                restart: Default::default(),
                health_checks,
                overwrite: false,
            });
        }
        Ok(ApplyAction::Run { services, volumes, network: Some(network) })
    }

    /// The replica's subnet and its services' addresses, all of them given out first.
    fn replica_network(&self, bundle: &str, node: &str) -> Result<ReplicaNetwork, String> {
        let declared = self.bundles.get(bundle).ok_or_else(|| format!("bundle {bundle} is not declared"))?;
        let subnet = self.subnets.get(bundle).ok_or_else(|| format!("waiting for a subnet for bundle {bundle}"))?;
        let mut addresses = BTreeMap::new();
        for service in declared.services.keys() {
            let ip = self
                .addresses
                .get(&(bundle.to_owned(), node.to_owned(), service.clone()))
                .ok_or_else(|| format!("waiting for an address for {bundle}/{service} on {node}"))?;
            addresses.insert(service.clone(), *ip);
        }
        Ok(ReplicaNetwork { subnet: subnet.to_string(), addresses })
    }

    /// Takes in what a tick has just written about addresses, for the orders that follow.
    pub fn addressed(&mut self, action: &AddressAction) {
        match action {
            AddressAction::Assign { bundle, subnet } => drop(self.subnets.insert(bundle.clone(), *subnet)),
            AddressAction::Bind { slot, ip } => drop(self.addresses.insert(slot.clone(), *ip)),
            AddressAction::Unbind { slot, .. } => drop(self.addresses.remove(slot)),
            AddressAction::Release { bundle, .. } => drop(self.subnets.remove(bundle)),
        }
    }

    /// Hashes of what is declared and of what is observed (the first 16 hex digits of SHA-256
    /// over their JSON): two runs with equal hashes planned from the same state.
    pub fn hashes(&self) -> (String, String) {
        let hash = |value: serde_json::Value| {
            let digest = Sha256::digest(value.to_string().as_bytes());
            digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>()
        };
        let desired = serde_json::json!([self.datasets, self.services, self.bundles]);
        let mut reports = self.reports.clone();
        for report in reports.values_mut() {
            report.at_ms = 0;
        }
        let live: Vec<(&String, bool)> = self.nodes.keys().map(|n| (n, self.healthy(n))).collect();
        (hash(desired), hash(serde_json::json!([reports, live])))
    }

    /// What `ticks-plan` answers: the actions, and every bundle's desired and running replicas.
    pub fn preview(&self, decisions: &Decisions, leader: Option<String>) -> TickPlan {
        let mut actions: Vec<PlannedAction> = Vec::new();
        for action in &decisions.datasets.actions {
            let sign = match action {
                DatasetAction::Copy { .. } => "~",
                DatasetAction::Destroy { .. } => "-",
            };
            actions.push(PlannedAction { sign: sign.into(), text: action.to_string() });
        }
        let (assign, release) = decisions.addresses.before_and_after();
        for action in assign {
            actions.push(PlannedAction { sign: "+".into(), text: action.to_string() });
        }
        for action in &decisions.bundles.actions {
            let sign = match action {
                Action::Start { .. } => "+",
                Action::Stop { .. } => "-",
                Action::Update { .. } => "~",
            };
            actions.push(PlannedAction { sign: sign.into(), text: action.to_string() });
        }
        for action in release {
            actions.push(PlannedAction { sign: "-".into(), text: action.to_string() });
        }
        let unplaced: BTreeMap<&str, String> =
            decisions.bundles.unplaced.iter().map(|u| (u.bundle.as_str(), u.to_string())).collect();
        let bundles = self
            .bundles
            .values()
            .map(|bundle| {
                let id = bundle.id.to_string();
                let running_on = self
                    .reports
                    .iter()
                    .filter(|(node, _)| self.healthy(node))
                    .filter_map(|(node, report)| {
                        let services = report.bundles.get(&id)?;
                        let healthy = services.values().all(|s| s.state == "running" && s.healthy != Some(false));
                        Some((node.clone(), healthy))
                    })
                    .collect();
                let mut addresses: BTreeMap<String, BTreeMap<String, std::net::Ipv4Addr>> = BTreeMap::new();
                for ((_, node, service), ip) in self.addresses.iter().filter(|((b, _, _), _)| *b == id) {
                    addresses.entry(node.clone()).or_default().insert(service.clone(), *ip);
                }
                BundleStatus {
                    id: id.clone(),
                    redundancy: bundle.redundancy,
                    running_on,
                    unplaced: unplaced.get(id.as_str()).cloned(),
                    subnet: self.subnets.get(&id).map(ToString::to_string),
                    addresses,
                }
            })
            .collect();
        let mut problems = decisions.datasets.problems.clone();
        problems.extend(decisions.addresses.problems.iter().cloned());
        problems.extend(self.unreadable.iter().map(|u| format!("unreadable: {u}")));
        TickPlan { revision: self.revision, leader, actions, bundles, problems }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::tasks::ticks::ServiceReport;

    fn id(s: &str) -> c::ObjectId {
        c::ObjectId::new(s).unwrap()
    }

    fn node(name: &str) -> c::Node {
        c::Node {
            id: name.into(),
            heartbeat_ms: 1,
            memory_total: 4 << 30,
            memory_free: 2 << 30,
            cpu_cores: 2,
            cpu_load: 0.1,
            disk_total: 10 << 30,
            disk_free: 5 << 30,
            api_url: Some(format!("https://{name}:8080")),
            mod_index: 0,
        }
    }

    fn cluster() -> Cluster {
        let mut cluster = Cluster::default();
        let dataset: c::Dataset =
            serde_json::from_value(serde_json::json!({"id": "busybox", "read_only": true, "redundancy": 1})).unwrap();
        cluster.datasets.insert("busybox".into(), dataset);
        let service: c::Service = serde_json::from_value(serde_json::json!({
            "id": "sleeper", "dataset": "busybox", "cmd": ["/bin/sleep", "1000"],
            "limits": {"memory": 67108864, "cpu": 100},
            "health_checks": {"up": {"task": "health-uptime", "args": {"target": {"service": "pair.a"}, "min_uptime_ms": 1000}}}
        }))
        .unwrap();
        cluster.services.insert("sleeper".into(), service);
        let bundle: c::Bundle = serde_json::from_value(serde_json::json!({
            "id": "pair", "redundancy": 2,
            "services": {"a": {"id": "sleeper"}, "b": {"id": "sleeper", "overrides": {"cmd": ["/bin/sleep", "2000"]}}}
        }))
        .unwrap();
        cluster.bundles.insert("pair".into(), bundle);
        for n in ["n1", "n2", "n3"] {
            cluster.nodes.insert(n.into(), node(n));
            cluster.reports.insert(n.into(), NodeReport { node: n.into(), at_ms: 1, ..Default::default() });
        }
        cluster.reports.get_mut("n1").unwrap().datasets.insert("busybox".into(), vec!["import".into()]);
        cluster
    }

    #[test]
    fn a_new_bundle_is_placed_and_its_dataset_copied_there() {
        let cluster = cluster();
        let demands = cluster.bundle_demands();
        assert_eq!(demands[0].memory, 2 * 67108864);
        assert_eq!(demands[0].cpu_millis, 200);
        let decisions = cluster.decide(&BTreeMap::new(), 1000, 600_000);
        let starts: Vec<String> = decisions.bundles.actions.iter().map(ToString::to_string).collect();
        // The node holding the dataset first, then the least loaded.
        assert_eq!(starts, ["+ pair on n1", "+ pair on n2"]);
        let copies: Vec<String> = decisions.datasets.actions.iter().map(ToString::to_string).collect();
        assert_eq!(copies, ["+ busybox@import from n1 to n2"]);

        // Nothing starts before the replica's addresses are given out, which the tick does first.
        assert_eq!(cluster.run_args("pair", "n1").unwrap_err(), "waiting for a subnet for bundle pair");
        let mut cluster = cluster;
        for action in &decisions.addresses.actions {
            cluster.addressed(action);
        }
        // n1 holds it: services on clones of its newest snapshot, overrides applied, in the
        // bundle's namespace.
        let Ok(ApplyAction::Run { services: args, volumes, network }) = cluster.run_args("pair", "n1") else {
            panic!()
        };
        assert!(volumes.is_empty());
        let network = network.unwrap();
        assert_eq!(network.subnet, "10.224.0.0/24");
        let ips: Vec<String> = network.addresses.iter().map(|(s, ip)| format!("{s}={ip}")).collect();
        assert_eq!(ips, ["a=10.224.0.2", "b=10.224.0.3"]);
        network.validate().unwrap();
        assert!(args.iter().all(|a| a.netns.as_deref() == Some("bundle-pair")));
        assert_eq!(args.len(), 2);
        assert_eq!(args[0].dataset, "data/datasets/busybox@import");
        assert_eq!((args[0].id.as_str(), args[0].bundle_id.as_str()), ("a", "pair"));
        assert_eq!(args[1].cmd, ["/bin/sleep", "2000"]);
        assert_eq!(args[0].health_checks.len(), 1);
        // n2 does not hold it yet.
        assert_eq!(cluster.run_args("pair", "n2").unwrap_err(), "waiting for dataset busybox on n2");
        assert!(cluster.run_args("gone", "n1").unwrap_err().contains("not declared"));
    }

    #[test]
    fn a_bundles_datasets_are_copied_where_it_runs_and_mounted_into_its_services() {
        let mut cluster = cluster();
        let bundle: c::Bundle = serde_json::from_value(serde_json::json!({
            "id": "pair", "redundancy": 1,
            "datasets": {"site": {"id": "content", "type": "temp_zfs", "quota": 1048576},
                         "tmp": {"id": "content", "type": "ram_disk"}},
            "services": {"a": {"id": "sleeper", "datasets": {"site": {"mount_point": "/srv", "read_only": true},
                                                             "tmp": {"mount_point": "/tmp"}}}}
        }))
        .unwrap();
        bundle.validate().unwrap();
        cluster.bundles.insert("pair".into(), bundle);
        cluster.datasets.insert(
            "content".into(),
            serde_json::from_value(serde_json::json!({"id": "content", "read_only": true, "redundancy": 1})).unwrap(),
        );
        assert_eq!(cluster.bundle_demands()[0].datasets, BTreeSet::from(["busybox".into(), "content".into()]));
        // n1 lacks content: nothing runs until it is there.
        assert_eq!(cluster.run_args("pair", "n1").unwrap_err(), "waiting for dataset content on n1");
        cluster.reports.get_mut("n1").unwrap().datasets.insert("content".into(), vec!["v1".into(), "v2".into()]);
        cluster.subnets.insert("pair".into(), "10.224.0.0/24".parse().unwrap());
        assert_eq!(cluster.run_args("pair", "n1").unwrap_err(), "waiting for an address for pair/a on n1");
        cluster.addresses.insert(("pair".into(), "n1".into(), "a".into()), "10.224.0.2".parse().unwrap());
        let Ok(ApplyAction::Run { services, volumes, .. }) = cluster.run_args("pair", "n1") else { panic!() };
        let site = Volume {
            name: "site".into(),
            kind: c::DatasetKind::TempZfs,
            origin: Some("data/datasets/content@v2".into()),
            quota: Some(1048576),
        };
        let tmp = Volume { name: "tmp".into(), kind: c::DatasetKind::RamDisk, origin: None, quota: None };
        assert_eq!(volumes, [site, tmp]);
        let mounts: Vec<(&str, &str, bool)> =
            services[0].mounts.iter().map(|m| (m.source.as_str(), m.destination.as_str(), m.read_only)).collect();
        assert_eq!(
            mounts,
            [
                ("/run/cerana/volumes/pair/temp_zfs/site", "/srv", true),
                ("/run/cerana/volumes/pair/ram_disk/tmp", "/tmp", false)
            ]
        );
    }

    #[test]
    fn a_silent_node_does_not_count_and_its_replica_moves() {
        let mut cluster = cluster();
        for n in ["n1", "n2"] {
            let report = cluster.reports.get_mut(n).unwrap();
            report.datasets.insert("busybox".into(), vec!["import".into()]);
            let running = ServiceReport { state: "running".into(), healthy: Some(true), clone: None, definition: None };
            report.bundles.insert("pair".into(), [("a".to_string(), running)].into());
        }
        let settled = cluster.decide(&BTreeMap::new(), 1000, 600_000);
        assert!(settled.bundles.is_settled(), "{:?}", settled.bundles);
        let status = cluster.preview(&settled, Some("n1".into()));
        assert_eq!(status.bundles[0].running_on.keys().collect::<Vec<_>>(), ["n1", "n2"]);

        // n2's report lapses: its replica goes to n3, and the dataset with it.
        cluster.reports.remove("n2");
        let moved = cluster.decide(&BTreeMap::new(), 1000, 600_000);
        let actions: Vec<String> = moved.bundles.actions.iter().map(ToString::to_string).collect();
        assert_eq!(actions, ["+ pair on n3"]);
        assert_eq!(moved.datasets.actions.len(), 1, "{:?}", moved.datasets);
        let preview = cluster.preview(&moved, None);
        let texts: Vec<&str> = preview.actions.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(preview.actions[0].sign, "~");
        // Its subnet and addresses come before the start that uses them (n2's are not given out).
        assert_eq!(texts[1], "+ subnet 10.224.0.0/24 for pair");
        assert!(texts.contains(&"+ 10.224.0.2 for pair/a on n1"), "{texts:?}");
        assert!(texts.contains(&"+ 10.224.0.4 for pair/a on n3"), "{texts:?}");
        assert_eq!(texts.last(), Some(&"+ pair on n3"));

        // Deleted: its replicas stop wherever they run.
        cluster.bundles.clear();
        let stops = cluster.decide(&BTreeMap::new(), 1000, 600_000);
        let actions: Vec<String> = stops.bundles.actions.iter().map(ToString::to_string).collect();
        assert_eq!(actions, ["- pair on n1 (no longer declared)"]);
    }

    #[test]
    fn hashes_follow_the_state_not_the_clock() {
        let mut cluster = cluster();
        let before = cluster.hashes();
        cluster.reports.get_mut("n1").unwrap().at_ms = 99;
        assert_eq!(cluster.hashes(), before, "a fresher report of the same state");
        cluster.reports.remove("n3");
        assert_eq!(cluster.hashes().0, before.0);
        assert_ne!(cluster.hashes().1, before.1);
        assert_eq!(id("busybox").as_str(), "busybox");
    }
}
