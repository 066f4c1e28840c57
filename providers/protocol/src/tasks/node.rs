//! `node-*`: facts about the node, served by the `node-info` provider.

use crate::task::NoArgs;
use serde::{Deserialize, Serialize};

crate::declare_tasks! {
    NodeInfo = "node-info", Read, "Hostname, kernel, uptime, CPU, memory, disks, network interfaces, firmware and image of this node (from /proc and /sys)", NoArgs => NodeFacts;
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
    /// Block devices with a backing device (no loop, RAM or device-mapper disks); absent from
    /// nodes older than the inventory.
    #[serde(default)]
    pub disks: Vec<DiskFacts>,
    /// Network interfaces with a device behind them (no loopback, bridge or veth).
    #[serde(default)]
    pub nics: Vec<NicFacts>,
    #[serde(default)]
    pub firmware: FirmwareFacts,
    #[serde(default)]
    pub os: OsFacts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFacts {
    /// `vda`, `nvme0n1`.
    pub name: String,
    pub size_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Spinning (true), solid state (false), as the kernel says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicFacts {
    pub name: String,
    pub mac: String,
    /// `up`, `down`, …
    pub state: String,
    /// Link speed; none while down or when the driver does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareFacts {
    /// `uefi` or `bios`.
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_version: Option<String>,
}

/// The software the node booted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsFacts {
    /// `PRETTY_NAME` of `/etc/os-release`.
    #[serde(default)]
    pub name: String,
    /// `VERSION_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The initrd's hash, on a node booted from the network (`cerana.initrd_hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_hash: Option<String>,
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
