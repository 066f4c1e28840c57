//! `ticks-*` and `bundle-apply`: the Cerana Platform's reconcilers (issue #18), served by every
//! node's `ticks` provider.
//!
//! Every node reports what it runs and holds under [`REPORTS`], on a lease that ends with its
//! heartbeat. One node, elected under [`LEADER`], runs the cluster ticks: it plans from the
//! declared objects and the reports, copies datasets between nodes and sends each node the
//! bundles to run or stop with `bundle-apply`, carrying its term. A node carries out an action
//! only while that term is the election's current one, so a deposed leader's late action is
//! refused. Each run is recorded under [`JOURNAL`].

use crate::tasks::service::CreateArgs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

crate::declare_tasks! {
    BundleApply = "bundle-apply", Write, "Runs or stops one bundle's services on this node for the cluster tick's leader of `term` (refused for any other term)", ApplyArgs => Applied;
    TicksPlan = "ticks-plan", Read, "What the next cluster tick would do, and every bundle's desired and running replicas", crate::NoArgs => TickPlan;
    TicksHistory = "ticks-history", Read, "The cluster ticks' journal, newest first", HistoryArgs => History;
}

/// The election of the node that runs the cluster ticks.
pub const LEADER: &str = "/cerana/v1/ticks/leader";
/// Each node's report, `REPORTS/NODE` ([`NodeReport`]).
pub const REPORTS: &str = "/cerana/v1/ticks/reports";
/// The journal, `JOURNAL/<revision, 20 digits>` ([`TickRun`]).
pub const JOURNAL: &str = "/cerana/v1/ticks/journal";
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
    Run { services: Vec<CreateArgs> },
    /// Stop and remove every service of the bundle here, clones included.
    Stop,
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
    /// `+` start, `-` stop or destroy, `~` copy.
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
        assert_eq!(args.action, ApplyAction::Run { services: vec![] });
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
}
