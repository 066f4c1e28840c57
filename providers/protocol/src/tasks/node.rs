//! `node-*`: facts about the node, served by the `node-info` provider.

use crate::task::NoArgs;
use serde::{Deserialize, Serialize};

crate::declare_tasks! {
    NodeInfo = "node-info", Read, "Hostname, kernel, uptime, CPU and memory of this node (from /proc)", NoArgs => NodeFacts;
    NodeEcho = "node-echo", Read, "Returns its argument unchanged: a no-op for latency checks", EchoArgs => EchoArgs;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub hostname: String,
    pub kernel_release: String,
    pub kernel_version: String,
    pub machine_id: Option<String>,
    pub uptime_seconds: f64,
    pub cpu: CpuFacts,
    pub memory: MemoryFacts,
    /// Resident memory of PID 1 (on a CeranaOS node, cerana-init), when readable.
    pub init_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuFacts {
    pub model: String,
    pub count: u32,
    pub load_1m: f64,
    pub load_5m: f64,
    pub load_15m: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFacts {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
}

/// Argument and result of `node-echo`. Strict on both sides: the result is the argument the
/// caller sent, so it carries no field the caller does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoArgs {
    pub data: String,
}
