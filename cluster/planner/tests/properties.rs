//! The planners' properties over generated clusters (issue #18): after convergence never more
//! than `redundancy` replicas and never two on one node and none outdated, no healthy replica
//! moved without a reason, a changed definition rolled out one replica at a time, nothing placed beyond a node's room, the same plan for the same state in any order,
//! and the last copy of a dataset never destroyed.

use cerana_planner::datasets::{plan_datasets, DatasetAction, DatasetDemand, NodeDatasets};
use cerana_planner::{plan, Action, BundleDemand, NodeState, Plan, StopReason};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const DATASETS: [&str; 4] = ["d0", "d1", "d2", "d3"];
/// Bundle ids the nodes may run: the declared ones are among the first 8, so 8 and 9 are
/// always leftovers of deleted bundles.
const BUNDLES: usize = 10;

fn subset(names: &[&str], mask: u8) -> BTreeSet<String> {
    names.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| n.to_string()).collect()
}

fn bundle_ids(mask: u16) -> BTreeSet<String> {
    (0..BUNDLES).filter(|i| mask & (1 << i) != 0).map(|i| format!("b{i}")).collect()
}

fn arb_node() -> impl Strategy<Value = (bool, u64, u64, u8, u16, u16)> {
    (prop::bool::weighted(0.8), 0u64..16, 0u64..8000, any::<u8>(), 0u16..(1 << BUNDLES), any::<u16>())
}

fn arb_cluster() -> impl Strategy<Value = (Vec<BundleDemand>, Vec<NodeState>)> {
    let bundles = prop::collection::btree_map(0usize..8, (1u32..5, 0u64..5, 0u64..2500, any::<u8>()), 0..8);
    let nodes = prop::collection::vec(arb_node(), 0..8);
    (bundles, nodes).prop_map(|(bundles, nodes)| {
        let bundles = bundles
            .into_iter()
            .map(|(i, (redundancy, memory, cpu_millis, datasets))| BundleDemand {
                id: format!("b{i}"),
                redundancy,
                memory,
                cpu_millis,
                datasets: subset(&DATASETS, datasets & 0x0f),
                // Some publish one of two ports.
                published: match datasets >> 4 & 3 {
                    0 | 1 => BTreeSet::new(),
                    n => BTreeSet::from([8000 + u16::from(n)]),
                },
            })
            .collect();
        let nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(i, (healthy, memory_free, cpu_millis_free, datasets, running, outdated))| NodeState {
                id: format!("n{i}"),
                healthy,
                memory_free,
                cpu_millis_free,
                datasets: subset(&DATASETS, datasets & 0x0f),
                running: bundle_ids(running),
                outdated: bundle_ids(running & outdated),
            })
            .collect();
        (bundles, nodes)
    })
}

/// The nodes after `plan` ran: starts take room and bring the bundle's datasets, stops give
/// the room back.
fn apply(bundles: &[BundleDemand], nodes: &[NodeState], plan: &Plan) -> Vec<NodeState> {
    let demand: BTreeMap<&str, &BundleDemand> = bundles.iter().map(|b| (b.id.as_str(), b)).collect();
    let mut nodes = nodes.to_vec();
    for action in &plan.actions {
        let (bundle, node_id, start) = match action {
            Action::Start { bundle, node } => (bundle, node, true),
            Action::Stop { bundle, node, .. } => (bundle, node, false),
            Action::Update { bundle, node } => {
                let node = nodes.iter_mut().find(|n| &n.id == node).expect("actions name known nodes");
                assert!(node.running.contains(bundle) && node.outdated.remove(bundle), "{action} on {node:?}");
                continue;
            }
        };
        let node = nodes.iter_mut().find(|n| &n.id == node_id).expect("actions name known nodes");
        node.outdated.remove(bundle);
        let (memory, cpu) = demand.get(bundle.as_str()).map_or((0, 0), |b| (b.memory, b.cpu_millis));
        if start {
            assert!(node.memory_free >= memory && node.cpu_millis_free >= cpu, "{action} beyond {node:?}");
            node.memory_free -= memory;
            node.cpu_millis_free -= cpu;
            node.datasets.extend(demand[bundle.as_str()].datasets.iter().cloned());
            assert!(node.running.insert(bundle.clone()), "{action}: already running there");
        } else {
            node.memory_free += memory;
            node.cpu_millis_free += cpu;
            assert!(node.running.remove(bundle), "{action}: not running there");
        }
    }
    nodes
}

fn running_on_healthy(nodes: &[NodeState], bundle: &str) -> usize {
    nodes.iter().filter(|n| n.healthy && n.running.contains(bundle)).count()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_stop_has_a_reason_and_every_start_a_free_distinct_node((bundles, nodes) in arb_cluster()) {
        let p = plan(&bundles, &nodes);
        let declared: BTreeMap<&str, &BundleDemand> = bundles.iter().map(|b| (b.id.as_str(), b)).collect();
        let by_id: BTreeMap<&str, &NodeState> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let mut started: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut updated: BTreeSet<&str> = BTreeSet::new();
        let changing: BTreeSet<&str> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { bundle, .. } | Action::Stop { bundle, reason: StopReason::Surplus, .. } => {
                    Some(bundle.as_str())
                }
                _ => None,
            })
            .collect();
        for action in &p.actions {
            match action {
                Action::Stop { bundle, node, reason } => {
                    let n = by_id[node.as_str()];
                    prop_assert!(n.healthy, "{action}: an unreachable node is not asked");
                    match (reason, declared.get(bundle.as_str())) {
                        (StopReason::Deleted, None) => {}
                        (StopReason::Surplus, Some(b)) => {
                            prop_assert!(running_on_healthy(&nodes, bundle) > b.redundancy as usize, "{action}")
                        }
                        _ => prop_assert!(false, "{action}: no reason to stop a healthy replica"),
                    }
                }
                Action::Start { bundle, node } => {
                    let n = by_id[node.as_str()];
                    prop_assert!(n.healthy && !n.running.contains(bundle), "{action} on {n:?}");
                    prop_assert!(started.insert((bundle.as_str(), node.as_str())), "{action} twice");
                    prop_assert!(declared.contains_key(bundle.as_str()), "{action}: not declared");
                    // Never beside a bundle (running or started now) that publishes a port it does.
                    let mine = &declared[bundle.as_str()].published;
                    let beside = n.running.iter().map(String::as_str).chain(
                        started.iter().filter(|(b, at)| at == node && b != bundle).map(|(b, _)| *b),
                    );
                    for other in beside.filter_map(|b| declared.get(b)) {
                        prop_assert!(mine.is_disjoint(&other.published), "{action}: a port of {} taken", other.id);
                    }
                }
                // Only an outdated replica, one per bundle, and none while replicas of the
                // bundle start or stop.
                Action::Update { bundle, node } => {
                    let n = by_id[node.as_str()];
                    prop_assert!(n.healthy && n.outdated.contains(bundle), "{action} on {n:?}");
                    prop_assert!(updated.insert(bundle.as_str()), "{action}: a second replica at once");
                    prop_assert!(declared.contains_key(bundle.as_str()), "{action}: not declared");
                    prop_assert!(!changing.contains(bundle.as_str()), "{action} while replicas start or stop");
                }
            }
        }
    }

    #[test]
    fn applied_plans_converge_to_exactly_redundancy_or_explain_the_rest((bundles, nodes) in arb_cluster()) {
        let mut state = nodes.clone();
        let mut last = plan(&bundles, &state);
        // Placement settles in 3 ticks; updates take one more per outdated replica (at most 4).
        for _ in 0..8 {
            state = apply(&bundles, &state, &last);
            last = plan(&bundles, &state);
            if last.actions.is_empty() {
                break;
            }
        }
        prop_assert!(last.actions.is_empty(), "not settled after 8 ticks: {last:?}");
        let declared: BTreeSet<&str> = bundles.iter().map(|b| b.id.as_str()).collect();
        for node in state.iter().filter(|n| n.healthy) {
            prop_assert!(node.running.iter().all(|b| declared.contains(b.as_str())), "leftovers on {node:?}");
            prop_assert!(node.outdated.is_empty(), "outdated replicas left on {node:?}");
        }
        for bundle in &bundles {
            let running = running_on_healthy(&state, &bundle.id);
            let wanted = bundle.redundancy as usize;
            prop_assert!(running <= wanted, "{}: {running} replicas, redundancy {wanted}", bundle.id);
            let unplaced = last.unplaced.iter().find(|u| u.bundle == bundle.id);
            match unplaced {
                None => prop_assert_eq!(running, wanted, "{} short and unexplained", &bundle.id),
                Some(u) => {
                    prop_assert_eq!(u.missing as usize, wanted - running);
                    prop_assert!(!u.to_string().is_empty() && (u.nodes == 0 || !u.rejected.is_empty()), "{u:?}");
                }
            }
        }
    }

    #[test]
    fn the_same_state_in_any_order_gives_the_same_plan((bundles, nodes) in arb_cluster(), seed in any::<u64>()) {
        let (mut b2, mut n2) = (bundles.clone(), nodes.clone());
        // A deterministic shuffle: rotate and reverse by the seed.
        if !b2.is_empty() {
            let by = seed as usize % b2.len();
            b2.rotate_left(by);
        }
        if !n2.is_empty() {
            let by = (seed >> 8) as usize % n2.len();
            n2.rotate_left(by);
        }
        if seed & 1 == 1 {
            n2.reverse();
        }
        prop_assert_eq!(plan(&bundles, &nodes), plan(&b2, &n2));
    }
}

fn arb_datasets() -> impl Strategy<Value = (Vec<DatasetDemand>, Vec<NodeDatasets>, u64)> {
    let demands = prop::collection::btree_map(0usize..4, (1u32..4, any::<u8>()), 0..4);
    let node = (prop::bool::weighted(0.8), 0u64..1000, prop::collection::vec(0usize..4, 4), any::<u8>());
    let nodes = prop::collection::vec(node, 0..6);
    (demands, nodes, 0u64..3).prop_map(|(demands, nodes, since)| {
        let node_names: Vec<String> = (0..nodes.len()).map(|i| format!("n{i}")).collect();
        let names: Vec<&str> = node_names.iter().map(String::as_str).collect();
        let demands = demands
            .into_iter()
            .map(|(i, (redundancy, needed))| DatasetDemand {
                id: DATASETS[i].into(),
                redundancy,
                needed_on: subset(&names, needed),
            })
            .collect();
        let nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(i, (healthy, disk_free, snapshots, in_use))| NodeDatasets {
                id: format!("n{i}"),
                healthy,
                disk_free,
                // Dataset k holds snapshots s1..sN (0: not held): histories that share a prefix.
                held: snapshots
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| (DATASETS[k].to_string(), (1..=*n).map(|s| format!("s{s}")).collect()))
                    .collect(),
                in_use: subset(&DATASETS, in_use & 0x0f),
            })
            .collect();
        (demands, nodes, since)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_last_copy_is_never_destroyed_and_copies_are_sound((demands, nodes, since) in arb_datasets()) {
        // Every unneeded copy unneeded since 0, 1 or 2 graces ago.
        let grace = 60_000;
        let now = 10 * grace;
        let mut unneeded = BTreeMap::new();
        for d in &demands {
            for n in &nodes {
                unneeded.insert((d.id.clone(), n.id.clone()), now - since * grace);
            }
        }
        let p = plan_datasets(&demands, &nodes, &unneeded, now, grace);
        let by_id: BTreeMap<&str, &NodeDatasets> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let mut destroyed: BTreeSet<(&str, &str)> = BTreeSet::new();
        for action in &p.actions {
            match action {
                DatasetAction::Copy { dataset, from, to, snapshot, base } => {
                    let (src, dst) = (by_id[from.as_str()], by_id[to.as_str()]);
                    prop_assert!(src.healthy && dst.healthy && from != to, "{action}");
                    prop_assert!(src.held[dataset].contains(snapshot), "{action}: the source lacks it");
                    if let Some(base) = base {
                        prop_assert!(src.held[dataset].contains(base), "{action}");
                        prop_assert!(dst.held.get(dataset).is_some_and(|s| s.contains(base)), "{action}");
                    }
                }
                DatasetAction::Destroy { dataset, node } => {
                    let n = by_id[node.as_str()];
                    prop_assert!(n.healthy && !n.in_use.contains(dataset), "{action}: in use");
                    let demand = demands.iter().find(|d| &d.id == dataset).unwrap();
                    prop_assert!(!demand.needed_on.contains(node), "{action}: a bundle needs it there");
                    prop_assert!(since >= 1, "{action}: before its grace");
                    destroyed.insert((dataset.as_str(), node.as_str()));
                }
            }
        }
        for demand in &demands {
            let held_before = nodes.iter().any(|n| n.healthy && n.held.get(&demand.id).is_some_and(|s| !s.is_empty()));
            let newest = nodes
                .iter()
                .filter(|n| n.healthy)
                .filter_map(|n| n.held.get(&demand.id))
                .max_by_key(|s| s.len())
                .and_then(|s| s.last());
            // A current copy (the newest snapshot) stays on a healthy node.
            let current_after = nodes.iter().any(|n| {
                n.healthy
                    && !destroyed.contains(&(demand.id.as_str(), n.id.as_str()))
                    && n.held.get(&demand.id).and_then(|s| s.last()) == newest
            });
            prop_assert!(!held_before || current_after, "{}: its last current copy destroyed: {p:?}", &demand.id);
        }
    }
}
