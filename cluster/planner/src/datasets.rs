//! The dataset tick's planner (issue #18): from the declared datasets (how many copies, and
//! which nodes run bundles that mount them) and what the nodes hold (snapshots, in use), the
//! copies to make — incremental from the newest snapshot both ends share — and the copies to
//! collect once nothing has needed them for a grace period. The last copy is never destroyed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What is declared about one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetDemand {
    pub id: String,
    /// Copies the cluster keeps (at least 1).
    pub redundancy: u32,
    /// Nodes running (or about to run) a bundle that mounts it: they need a copy.
    pub needed_on: BTreeSet<String>,
}

/// What one node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDatasets {
    pub id: String,
    pub healthy: bool,
    /// Bytes free on its pool: new copies go where there is most.
    pub disk_free: u64,
    /// Each dataset's snapshots, oldest first (a copy with none is not usable as a source).
    pub held: BTreeMap<String, Vec<String>>,
    /// Datasets a running bundle uses here.
    pub in_use: BTreeSet<String>,
}

/// One thing the dataset tick does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DatasetAction {
    /// `zfs-send` of `snapshot` on `from` into `zfs-receive` on `to`, incremental from `base`
    /// when both hold it.
    Copy { dataset: String, from: String, to: String, snapshot: String, base: Option<String> },
    /// `zfs-destroy` of a copy nothing needs any more.
    Destroy { dataset: String, node: String },
}

impl fmt::Display for DatasetAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetAction::Copy { dataset, from, to, snapshot, base: Some(base) } => {
                write!(f, "~ {dataset}@{snapshot} from {from} to {to} (incremental from @{base})")
            }
            DatasetAction::Copy { dataset, from, to, snapshot, base: None } => {
                write!(f, "+ {dataset}@{snapshot} from {from} to {to}")
            }
            DatasetAction::Destroy { dataset, node } => write!(f, "- {dataset} on {node} (not needed)"),
        }
    }
}

/// The dataset tick's plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetPlan {
    pub actions: Vec<DatasetAction>,
    /// Copies nothing needs, with when they stopped being needed (kept from the previous plan,
    /// or now): the tick stores this for the next run.
    pub unneeded_since: BTreeMap<(String, String), u64>,
    /// Datasets that cannot be made whole, and why.
    pub problems: Vec<String>,
}

/// See the module docs. `unneeded_since` is the previous plan's; copies unneeded for `grace_ms`
/// by `now_ms` are destroyed.
pub fn plan_datasets(
    datasets: &[DatasetDemand],
    nodes: &[NodeDatasets],
    unneeded_since: &BTreeMap<(String, String), u64>,
    now_ms: u64,
    grace_ms: u64,
) -> DatasetPlan {
    let mut datasets: Vec<&DatasetDemand> = datasets.iter().collect();
    datasets.sort_by(|a, b| a.id.cmp(&b.id));
    let mut nodes: Vec<&NodeDatasets> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut plan = DatasetPlan::default();
    for dataset in datasets {
        let id = dataset.id.as_str();
        let holders: Vec<&NodeDatasets> =
            nodes.iter().copied().filter(|n| n.healthy && n.held.get(id).is_some_and(|s| !s.is_empty())).collect();
        // The source: the healthy copy with the longest history (snapshot names do not order
        // themselves; a copy is made of its source's newest), the first by id among equals.
        let Some(source) = holders.iter().copied().max_by(|a, b| {
            let (sa, sb) = (&a.held[id], &b.held[id]);
            (sa.len(), std::cmp::Reverse(&a.id)).cmp(&(sb.len(), std::cmp::Reverse(&b.id)))
        }) else {
            plan.problems.push(format!("{id}: no healthy node holds a snapshot of it"));
            continue;
        };
        let newest = source.held[id].last().expect("holders have snapshots").clone();
        let current = |n: &NodeDatasets| n.held.get(id).and_then(|s| s.last()) == Some(&newest);
        // Targets: the nodes that need it, then more until `redundancy` healthy nodes hold it.
        let mut targets: BTreeSet<&str> = BTreeSet::new();
        for node in nodes.iter().filter(|n| n.healthy && dataset.needed_on.contains(&n.id)) {
            targets.insert(node.id.as_str());
        }
        let wanted = dataset.redundancy.max(1) as usize;
        let mut keepers: BTreeSet<&str> = targets.clone();
        // Healthy copies already there count first (no needless copies), the newest first.
        let mut present: Vec<&NodeDatasets> = holders.clone();
        present.sort_by_key(|n| (std::cmp::Reverse(current(n)), std::cmp::Reverse(n.held[id].len()), n.id.clone()));
        for node in present {
            if keepers.len() >= wanted {
                break;
            }
            keepers.insert(node.id.as_str());
        }
        if keepers.len() < wanted {
            let mut spare: Vec<&NodeDatasets> =
                nodes.iter().copied().filter(|n| n.healthy && !keepers.contains(n.id.as_str())).collect();
            spare.sort_by_key(|n| (std::cmp::Reverse(n.disk_free), n.id.clone()));
            for node in spare.into_iter().take(wanted - keepers.len()) {
                keepers.insert(node.id.as_str());
            }
            if keepers.len() < wanted {
                let healthy = nodes.iter().filter(|n| n.healthy).count();
                plan.problems
                    .push(format!("{id}: {} of {wanted} copies possible ({healthy} healthy nodes)", keepers.len()));
            }
        }
        for node in nodes.iter().filter(|n| keepers.contains(n.id.as_str()) && !current(n)) {
            let base = newest_common(&source.held[id], node.held.get(id).map(Vec::as_slice).unwrap_or_default());
            plan.actions.push(DatasetAction::Copy {
                dataset: id.to_string(),
                from: source.id.clone(),
                to: node.id.clone(),
                snapshot: newest.clone(),
                base,
            });
        }
        // Copies beyond the keepers, on healthy nodes, not in use: collected after the grace,
        // and never while they would be the last current copy.
        let current_keepers = nodes.iter().filter(|n| keepers.contains(n.id.as_str()) && current(n)).count();
        for node in nodes.iter().filter(|n| n.healthy && n.held.contains_key(id) && !keepers.contains(n.id.as_str())) {
            if node.in_use.contains(id) {
                continue;
            }
            let key = (id.to_string(), node.id.clone());
            let since = unneeded_since.get(&key).copied().unwrap_or(now_ms);
            if current_keepers > 0 && now_ms.saturating_sub(since) >= grace_ms {
                plan.actions.push(DatasetAction::Destroy { dataset: id.to_string(), node: node.id.clone() });
            } else {
                plan.unneeded_since.insert(key, since);
            }
        }
    }
    plan.actions.sort();
    plan
}

/// The newest snapshot `source` has that `target` has too.
fn newest_common(source: &[String], target: &[String]) -> Option<String> {
    source.iter().rev().find(|s| target.contains(s)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, held: &[(&str, &[&str])]) -> NodeDatasets {
        NodeDatasets {
            id: id.into(),
            healthy: true,
            disk_free: 100,
            held: held.iter().map(|(d, s)| (d.to_string(), s.iter().map(|s| s.to_string()).collect())).collect(),
            in_use: BTreeSet::new(),
        }
    }

    fn demand(id: &str, redundancy: u32, needed_on: &[&str]) -> DatasetDemand {
        DatasetDemand { id: id.into(), redundancy, needed_on: needed_on.iter().map(|n| n.to_string()).collect() }
    }

    fn plan(d: &[DatasetDemand], n: &[NodeDatasets]) -> DatasetPlan {
        plan_datasets(d, n, &BTreeMap::new(), 1_000, 60_000)
    }

    #[test]
    fn copies_go_where_bundles_need_them_and_up_to_redundancy() {
        let mut nodes = vec![node("a", &[("site", &["s1"])]), node("b", &[]), node("c", &[])];
        nodes[2].disk_free = 500;
        let p = plan(&[demand("site", 2, &["b"])], &nodes);
        assert_eq!(p.actions.iter().map(ToString::to_string).collect::<Vec<_>>(), ["+ site@s1 from a to b"]);
        let p = plan(&[demand("site", 3, &[])], &nodes);
        assert_eq!(p.actions.len(), 2, "{p:?}");
        let p = plan(&[demand("site", 2, &[])], &nodes);
        assert_eq!(p.actions[0].to_string(), "+ site@s1 from a to c", "the most free disk: {p:?}");
        let settled = [node("a", &[("site", &["s1"])]), node("b", &[("site", &["s1"])])];
        assert_eq!(plan(&[demand("site", 2, &["b"])], &settled), DatasetPlan::default());
    }

    #[test]
    fn a_stale_copy_is_brought_up_to_date_incrementally() {
        let nodes = [node("a", &[("site", &["s1", "s2", "s3"])]), node("b", &[("site", &["s1", "s2"])])];
        let p = plan(&[demand("site", 2, &[])], &nodes);
        assert_eq!(p.actions[0].to_string(), "~ site@s3 from a to b (incremental from @s2)");
    }

    #[test]
    fn unneeded_copies_go_after_the_grace_and_the_last_one_never() {
        let nodes = [node("a", &[("site", &["s1"])]), node("b", &[("site", &["s1"])]), node("c", &[("site", &["s1"])])];
        let first = plan_datasets(&[demand("site", 1, &["b"])], &nodes, &BTreeMap::new(), 1_000, 60_000);
        assert!(first.actions.is_empty(), "within the grace: {first:?}");
        assert_eq!(first.unneeded_since.len(), 2);
        let later = plan_datasets(&[demand("site", 1, &["b"])], &nodes, &first.unneeded_since, 61_000, 60_000);
        let gone: Vec<String> = later.actions.iter().map(ToString::to_string).collect();
        assert_eq!(gone, ["- site on a (not needed)", "- site on c (not needed)"]);
        // In use: kept.
        let mut busy = nodes.clone();
        busy[0].in_use.insert("site".into());
        let kept = plan_datasets(&[demand("site", 1, &["b"])], &busy, &first.unneeded_since, 61_000, 60_000);
        assert_eq!(kept.actions.len(), 1, "{kept:?}");
        // The only current copy is on a node that is not a keeper: it is copied, never destroyed.
        let only = [node("a", &[("site", &["s1"])]), node("b", &[])];
        let p = plan_datasets(&[demand("site", 1, &["b"])], &only, &first.unneeded_since, 61_000, 60_000);
        assert_eq!(p.actions.iter().map(ToString::to_string).collect::<Vec<_>>(), ["+ site@s1 from a to b"]);
    }

    #[test]
    fn a_dataset_no_healthy_node_holds_is_a_problem_not_an_action() {
        let mut nodes = vec![node("a", &[("site", &["s1"])]), node("b", &[])];
        nodes[0].healthy = false;
        let p = plan(&[demand("site", 1, &["b"]), demand("empty", 1, &[])], &nodes);
        assert!(p.actions.is_empty());
        assert_eq!(
            p.problems,
            ["empty: no healthy node holds a snapshot of it", "site: no healthy node holds a snapshot of it"]
        );
        let p = plan(&[demand("site", 3, &[])], &[node("a", &[("site", &["s1"])]), node("b", &[])]);
        assert_eq!(p.problems, ["site: 2 of 3 copies possible (2 healthy nodes)"]);
    }
}
