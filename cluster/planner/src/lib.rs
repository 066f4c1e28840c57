//! The bundle tick's planner (issue #18): a pure function from what is declared (bundles, with
//! what their services need), what the nodes report (health, free memory and CPU, datasets held,
//! bundles running) to the actions that run every bundle on exactly `redundancy` distinct
//! healthy nodes — and, for every replica it cannot place, which filter turned how many nodes
//! away. The tick around it only reads the store, calls [`plan`] and sends the actions, so the
//! planner is tested and benchmarked without etcd or VMs.
//!
//! Level-triggered: the plan depends on the state alone, never on what an earlier tick did, and
//! the same state gives the same plan (nodes and bundles are taken in id order).
//!
//! - Replicas running on healthy nodes stay where they are (no needless moves); a replica on a
//!   node whose heartbeat expired does not count, and is replaced elsewhere.
//! - New replicas go to nodes that pass every filter ([`Filter`], in order), preferring nodes
//!   that already hold the bundle's datasets, then the least loaded.
//! - Replicas beyond `redundancy`, and every replica of a bundle no longer declared, are stopped
//!   (on healthy nodes; an unreachable node's are stopped once it is back); outdated ones first.
//! - A replica running an older definition than the declared one is updated in place, one
//!   replica of a bundle per plan, and only while none of its replicas is missing.

pub mod addresses;
pub mod datasets;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What one replica of a bundle needs from a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleDemand {
    pub id: String,
    /// How many nodes run it (at least 1).
    pub redundancy: u32,
    /// Bytes: the sum of its services' memory limits.
    pub memory: u64,
    /// Thousandths of a CPU: the sum of its services' CPU limits.
    pub cpu_millis: u64,
    /// The cluster datasets its services mount.
    pub datasets: BTreeSet<String>,
    /// The ports it publishes on the management address of each node running it.
    pub published: BTreeSet<u16>,
}

/// A node as its heartbeats report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub id: String,
    /// Its heartbeat is fresh.
    pub healthy: bool,
    /// Bytes not yet promised to anything.
    pub memory_free: u64,
    /// Thousandths of a CPU not yet promised.
    pub cpu_millis_free: u64,
    /// Cluster datasets it holds.
    pub datasets: BTreeSet<String>,
    /// Bundles with a replica running here.
    pub running: BTreeSet<String>,
    /// Of those, the ones whose replica here runs another definition than the declared one.
    pub outdated: BTreeSet<String>,
}

/// Why a replica is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopReason {
    /// The bundle is no longer declared.
    Deleted,
    /// The bundle runs on more nodes than its `redundancy`.
    Surplus,
}

/// One thing the tick asks a node to do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Start {
        bundle: String,
        node: String,
    },
    Stop {
        bundle: String,
        node: String,
        reason: StopReason,
    },
    /// Run the declared definition in place of the replica's older one.
    Update {
        bundle: String,
        node: String,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Start { bundle, node } => write!(f, "+ {bundle} on {node}"),
            Action::Stop { bundle, node, reason: StopReason::Deleted } => {
                write!(f, "- {bundle} on {node} (no longer declared)")
            }
            Action::Stop { bundle, node, reason: StopReason::Surplus } => {
                write!(f, "- {bundle} on {node} (more replicas than its redundancy)")
            }
            Action::Update { bundle, node } => write!(f, "~ {bundle} on {node} (its definition changed)"),
        }
    }
}

/// The checks a node must pass to take a new replica, in the order they are made: a node is
/// counted against the first it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Filter {
    /// Its heartbeat expired.
    Unhealthy,
    /// It already runs a replica of the bundle (replicas go to distinct nodes).
    AlreadyRunning,
    /// Less free memory than the bundle's services need.
    Memory,
    /// Less free CPU than the bundle's services need.
    Cpu,
    /// A dataset the bundle mounts is neither on the node nor on any healthy node to copy it from.
    Datasets,
    /// Another bundle there publishes a port this one publishes.
    PortTaken,
}

impl Filter {
    fn says(self) -> &'static str {
        match self {
            Filter::Unhealthy => "unhealthy",
            Filter::AlreadyRunning => "already running it",
            Filter::Memory => "memory short",
            Filter::Cpu => "cpu short",
            Filter::Datasets => "datasets unavailable",
            Filter::PortTaken => "a port it publishes taken by another bundle",
        }
    }
}

/// Replicas of a bundle that could not be placed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub bundle: String,
    pub wanted: u32,
    pub missing: u32,
    /// Of `nodes`, how many each filter turned away.
    pub rejected: BTreeMap<Filter, u32>,
    pub nodes: u32,
}

impl fmt::Display for Unplaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} of {} replicas unplaced", self.bundle, self.missing, self.wanted)?;
        if self.nodes == 0 {
            return write!(f, ": no nodes");
        }
        let reasons: Vec<String> =
            self.rejected.iter().map(|(filter, n)| format!("{}: {n} of {} nodes", filter.says(), self.nodes)).collect();
        write!(f, " ({})", reasons.join("; "))
    }
}

/// What the tick should do, and what it cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Stops first (they free room), then starts, then updates; each group in bundle and node
    /// order.
    pub actions: Vec<Action>,
    pub unplaced: Vec<Unplaced>,
}

impl Plan {
    /// Nothing to do and nothing unplaced.
    pub fn is_settled(&self) -> bool {
        self.actions.is_empty() && self.unplaced.is_empty()
    }
}

/// A node's room while the plan is made: what new replicas already took of it.
struct Room<'a> {
    node: &'a NodeState,
    memory: u64,
    cpu: u64,
    replicas: usize,
    /// Ports published there.
    published: BTreeSet<u16>,
}

/// See the crate docs.
pub fn plan(bundles: &[BundleDemand], nodes: &[NodeState]) -> Plan {
    let mut bundles: Vec<&BundleDemand> = bundles.iter().collect();
    bundles.sort_by(|a, b| a.id.cmp(&b.id));
    let mut nodes: Vec<&NodeState> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let declared: BTreeSet<&str> = bundles.iter().map(|b| b.id.as_str()).collect();
    let mut stops = Vec::new();
    let mut starts = Vec::new();
    let mut updates = Vec::new();
    let mut unplaced = Vec::new();

    // Replicas of bundles no longer declared go, wherever a node can be asked.
    for node in nodes.iter().filter(|n| n.healthy) {
        for bundle in node.running.iter().filter(|b| !declared.contains(b.as_str())) {
            stops.push(Action::Stop { bundle: bundle.clone(), node: node.id.clone(), reason: StopReason::Deleted });
        }
    }

    // Datasets that some healthy node can send.
    let available: BTreeSet<&str> =
        nodes.iter().filter(|n| n.healthy).flat_map(|n| n.datasets.iter().map(String::as_str)).collect();
    let demands: BTreeMap<&str, &BundleDemand> = bundles.iter().map(|b| (b.id.as_str(), *b)).collect();
    let mut rooms: Vec<Room> = nodes
        .iter()
        .map(|n| Room {
            node: n,
            memory: n.memory_free,
            cpu: n.cpu_millis_free,
            replicas: n.running.len(),
            published: n
                .running
                .iter()
                .filter_map(|b| demands.get(b.as_str()))
                .flat_map(|d| d.published.iter().copied())
                .collect(),
        })
        .collect();

    // Where each bundle runs on a healthy node, found once rather than per bundle and node.
    let mut running_on: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, room) in rooms.iter().enumerate().filter(|(_, r)| r.node.healthy) {
        for bundle in &room.node.running {
            running_on.entry(bundle.as_str()).or_default().push(i);
        }
    }

    for bundle in bundles {
        let wanted = bundle.redundancy.max(1) as usize;
        // Running replicas on healthy nodes stay; the surplus goes from the busiest nodes.
        let mut kept: Vec<usize> = running_on.get(bundle.id.as_str()).cloned().unwrap_or_default();
        let outdated = |i: usize| rooms[i].node.outdated.contains(&bundle.id);
        if kept.len() > wanted {
            // Outdated replicas go first: what stays then needs no update.
            kept.sort_by_key(|&i| (!outdated(i), std::cmp::Reverse(rooms[i].replicas), rooms[i].node.id.clone()));
            for &i in &kept[..kept.len() - wanted] {
                let node = rooms[i].node.id.clone();
                stops.push(Action::Stop { bundle: bundle.id.clone(), node, reason: StopReason::Surplus });
                rooms[i].replicas -= 1;
            }
            continue;
        }
        let mut missing = wanted - kept.len();
        // A changed definition rolls out one replica per tick, and not while new replicas start:
        // the others keep serving meanwhile.
        let update = kept
            .iter()
            .find(|&&i| outdated(i))
            .map(|&i| Action::Update { bundle: bundle.id.clone(), node: rooms[i].node.id.clone() });
        if missing == 0 {
            updates.extend(update);
            continue;
        }
        let mut rejected: BTreeMap<Filter, u32> = BTreeMap::new();
        let mut fitting: Vec<usize> = Vec::new();
        for (i, room) in rooms.iter().enumerate() {
            match first_failed(bundle, room, &available) {
                Some(filter) => *rejected.entry(filter).or_default() += 1,
                None => fitting.push(i),
            }
        }
        // Nodes holding the datasets first (nothing to copy), then the emptiest. Only the best
        // `missing` are wanted: selected, then ordered, without sorting every node.
        let rank = |i: usize| {
            let room = &rooms[i];
            let lacking = bundle.datasets.iter().filter(|d| !room.node.datasets.contains(*d)).count();
            (lacking, room.replicas, std::cmp::Reverse(room.memory), room.node.id.as_str())
        };
        let mut ranked: Vec<_> = fitting.iter().map(|&i| (rank(i), i)).collect();
        if ranked.len() > missing {
            ranked.select_nth_unstable(missing);
            ranked.truncate(missing);
        }
        ranked.sort_unstable();
        let fitting: Vec<usize> = ranked.into_iter().map(|(_, i)| i).collect();
        for &i in fitting.iter().take(missing) {
            let room = &mut rooms[i];
            room.memory -= bundle.memory;
            room.cpu -= bundle.cpu_millis;
            room.replicas += 1;
            room.published.extend(bundle.published.iter().copied());
            starts.push(Action::Start { bundle: bundle.id.clone(), node: room.node.id.clone() });
            missing -= 1;
        }
        if fitting.is_empty() {
            updates.extend(update);
        }
        if missing > 0 {
            // Those that passed every filter were all used: what is left is what the filters say.
            rejected.remove(&Filter::AlreadyRunning);
            unplaced.push(Unplaced {
                bundle: bundle.id.clone(),
                wanted: wanted as u32,
                missing: missing as u32,
                nodes: rooms.iter().filter(|r| !r.node.running.contains(&bundle.id)).count() as u32,
                rejected,
            });
        }
    }
    stops.sort();
    starts.sort();
    updates.sort();
    Plan { actions: stops.into_iter().chain(starts).chain(updates).collect(), unplaced }
}

fn first_failed(bundle: &BundleDemand, room: &Room, available: &BTreeSet<&str>) -> Option<Filter> {
    let node = room.node;
    if !node.healthy {
        Some(Filter::Unhealthy)
    } else if node.running.contains(&bundle.id) {
        Some(Filter::AlreadyRunning)
    } else if bundle.published.iter().any(|p| room.published.contains(p)) {
        Some(Filter::PortTaken)
    } else if room.memory < bundle.memory {
        Some(Filter::Memory)
    } else if room.cpu < bundle.cpu_millis {
        Some(Filter::Cpu)
    } else if bundle.datasets.iter().any(|d| !node.datasets.contains(d) && !available.contains(d.as_str())) {
        Some(Filter::Datasets)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(id: &str, memory_gib: u64, running: &[&str]) -> NodeState {
        NodeState {
            id: id.into(),
            healthy: true,
            memory_free: memory_gib * GIB,
            cpu_millis_free: 4000,
            datasets: BTreeSet::new(),
            running: running.iter().map(|b| b.to_string()).collect(),
            outdated: BTreeSet::new(),
        }
    }

    fn bundle(id: &str, redundancy: u32, memory_gib: u64) -> BundleDemand {
        BundleDemand {
            id: id.into(),
            redundancy,
            memory: memory_gib * GIB,
            cpu_millis: 500,
            datasets: BTreeSet::new(),
            published: BTreeSet::new(),
        }
    }

    fn starts(plan: &Plan) -> Vec<(String, String)> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { bundle, node } => Some((bundle.clone(), node.clone())),
                _ => None,
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(b, n)| (b.to_string(), n.to_string())).collect()
    }

    #[test]
    fn bundles_publishing_one_port_never_share_a_node_and_the_rest_is_explained() {
        let published =
            |id: &str, redundancy: u32| BundleDemand { published: BTreeSet::from([8080]), ..bundle(id, redundancy, 1) };
        let nodes = [node("a", 8, &["web"]), node("b", 8, &[]), node("c", 8, &[])];
        let p = plan(&[published("web", 1), published("api", 3)], &nodes);
        let starts: Vec<String> = p.actions.iter().map(ToString::to_string).collect();
        assert_eq!(starts, ["+ api on b", "+ api on c"]);
        assert_eq!(
            p.unplaced[0].to_string(),
            "api: 1 of 3 replicas unplaced (a port it publishes taken by another bundle: 1 of 3 nodes)"
        );
    }

    #[test]
    fn a_bundle_runs_on_exactly_redundancy_distinct_nodes_spread_out() {
        let nodes = [node("a", 8, &[]), node("b", 8, &[]), node("c", 8, &[])];
        let plan = plan(&[bundle("web", 2, 1), bundle("db", 2, 1)], &nodes);
        assert!(plan.unplaced.is_empty(), "{plan:?}");
        // db first (id order) on a and b; web then on the emptiest: c, then a.
        assert_eq!(starts(&plan), pairs(&[("db", "a"), ("db", "b"), ("web", "a"), ("web", "c")]));
        let settled = [node("a", 6, &["db", "web"]), node("b", 7, &["db"]), node("c", 7, &["web"])];
        assert!(super::plan(&[bundle("web", 2, 1), bundle("db", 2, 1)], &settled).is_settled());
    }

    #[test]
    fn running_replicas_stay_put_and_lost_ones_are_replaced() {
        let mut nodes = vec![node("a", 1, &["web"]), node("b", 64, &[]), node("c", 64, &[])];
        assert!(plan(&[bundle("web", 1, 1)], &nodes).is_settled(), "no move to an emptier node");
        nodes[0].healthy = false;
        let replanned = plan(&[bundle("web", 1, 1)], &nodes);
        assert_eq!(starts(&replanned), pairs(&[("web", "b")]));
        assert!(replanned.actions.iter().all(|a| matches!(a, Action::Start { .. })), "a lost node is not asked");
    }

    #[test]
    fn surplus_and_deleted_replicas_are_stopped() {
        let nodes = [node("a", 8, &["web", "old"]), node("b", 8, &["web"]), node("c", 8, &["web", "x", "y"])];
        let plan = plan(&[bundle("web", 2, 1)], &nodes);
        assert_eq!(
            plan.actions,
            vec![
                Action::Stop { bundle: "old".into(), node: "a".into(), reason: StopReason::Deleted },
                Action::Stop { bundle: "web".into(), node: "c".into(), reason: StopReason::Surplus },
                Action::Stop { bundle: "x".into(), node: "c".into(), reason: StopReason::Deleted },
                Action::Stop { bundle: "y".into(), node: "c".into(), reason: StopReason::Deleted },
            ]
        );
        assert_eq!(plan.actions[1].to_string(), "- web on c (more replicas than its redundancy)");
    }

    #[test]
    fn every_unplaced_replica_is_explained() {
        let mut nodes = vec![node("a", 1, &[]), node("b", 1, &[]), node("c", 8, &[])];
        nodes[1].healthy = false;
        let plan = plan(&[bundle("big", 3, 4)], &nodes);
        assert_eq!(starts(&plan), pairs(&[("big", "c")]));
        let unplaced = &plan.unplaced[0];
        assert_eq!((unplaced.wanted, unplaced.missing, unplaced.nodes), (3, 2, 3));
        assert_eq!(
            unplaced.to_string(),
            "big: 2 of 3 replicas unplaced (unhealthy: 1 of 3 nodes; memory short: 1 of 3 nodes)"
        );
        let nowhere = super::plan(&[bundle("web", 1, 1)], &[]);
        assert_eq!(nowhere.unplaced[0].to_string(), "web: 1 of 1 replicas unplaced: no nodes");
    }

    #[test]
    fn room_taken_in_one_plan_counts_for_the_next_bundle() {
        let nodes = [node("a", 3, &[])];
        let plan = plan(&[bundle("one", 1, 2), bundle("two", 1, 2)], &nodes);
        assert_eq!(starts(&plan), pairs(&[("one", "a")]));
        assert_eq!(plan.unplaced[0].to_string(), "two: 1 of 1 replicas unplaced (memory short: 1 of 1 nodes)");
        let mut cpu_bound = bundle("spin", 1, 0);
        cpu_bound.cpu_millis = 5000;
        assert_eq!(super::plan(&[cpu_bound], &nodes).unplaced[0].rejected, BTreeMap::from([(Filter::Cpu, 1)]));
    }

    #[test]
    fn datasets_are_found_where_they_are_or_copied_from_a_healthy_node() {
        let mut nodes = vec![node("a", 8, &[]), node("b", 8, &[]), node("c", 8, &[])];
        nodes[2].datasets.insert("site".into());
        let mut web = bundle("web", 1, 1);
        web.datasets.insert("site".into());
        assert_eq!(starts(&plan(std::slice::from_ref(&web), &nodes)), pairs(&[("web", "c")]), "no copy needed");
        web.redundancy = 2;
        assert_eq!(starts(&plan(std::slice::from_ref(&web), &nodes)), pairs(&[("web", "a"), ("web", "c")]));
        nodes[2].healthy = false;
        let plan = plan(&[web], &nodes);
        assert_eq!(plan.unplaced[0].rejected, BTreeMap::from([(Filter::Unhealthy, 1), (Filter::Datasets, 2)]));
    }

    #[test]
    fn the_same_state_gives_the_same_plan_in_any_order() {
        let nodes = [node("c", 8, &["gone"]), node("a", 8, &[]), node("b", 2, &[])];
        let bundles = [bundle("z", 2, 1), bundle("m", 3, 3)];
        let reversed: Vec<NodeState> = nodes.iter().rev().cloned().collect();
        let bundles_reversed: Vec<BundleDemand> = bundles.iter().rev().cloned().collect();
        assert_eq!(plan(&bundles, &nodes), plan(&bundles_reversed, &reversed));
    }
}
