//! `metrics-*`: CPU, memory, disk, network and host facts, and per-service resource usage from
//! cgroup v2, served by the `metrics` provider (`cerana-metrics`, issue #7). The coordinator's
//! HTTP `/metrics` includes [`MetricsPrometheus`]'s text.

use crate::task::NoArgs;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The parent cgroup (v2) under which the `service` provider puts each service's cgroup,
/// `<SERVICES_CGROUP>/<bundle_id>.<id>` (the container id). Providers take another one from
/// [`SERVICES_CGROUP_ENV`].
pub const SERVICES_CGROUP: &str = "/sys/fs/cgroup/cerana-services";

/// Environment variable overriding [`SERVICES_CGROUP`] (tests, other layouts).
pub const SERVICES_CGROUP_ENV: &str = "CERANA_SERVICES_CGROUP";

crate::declare_tasks! {
    MetricsCpu = "metrics-cpu", Read, "CPU model and count, load averages, and seconds spent per mode (all CPUs and each CPU)", NoArgs => CpuMetrics;
    MetricsMemory = "metrics-memory", Read, "Physical memory and swap, in bytes", NoArgs => MemoryMetrics;
    MetricsDisk = "metrics-disk", Read, "Mounted filesystems with their usage (pseudo filesystems only with all=true) and I/O counters per block device", DiskArgs => DiskMetrics;
    MetricsNetwork = "metrics-network", Read, "Network interfaces with index, MAC, MTU, state, addresses and traffic counters", NoArgs => NetworkMetrics;
    MetricsHost = "metrics-host", Read, "Hostname, OS, kernel, architecture, machine id, boot time, uptime and process count", NoArgs => HostMetrics;
    MetricsService = "metrics-service", Read, "One service's resource usage from its cgroup v2: CPU, memory, pids, I/O, OOM kills", ServiceMetricsArgs => ServiceUsage;
    MetricsPrometheus = "metrics-prometheus", Read, "The node's and every service's metrics in the Prometheus text exposition format", NoArgs => PrometheusText;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuMetrics {
    pub info: CpuInfo,
    pub load: LoadAverage,
    /// First the sum over all CPUs (`cpu` = "all"), then each CPU ("cpu0", "cpu1", ...).
    pub times: Vec<CpuTimes>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub model: String,
    pub logical_cpus: u32,
    /// Current clock of the first CPU, when the kernel reports it.
    pub mhz: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    pub load_1m: f64,
    pub load_5m: f64,
    pub load_15m: f64,
}

/// Seconds a CPU spent in each mode since boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuTimes {
    pub cpu: String,
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryMetrics {
    pub memory: RamUsage,
    pub swap: SwapUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RamUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// total - free - buffers - cached (what processes hold).
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub buffers_bytes: u64,
    /// Page cache plus reclaimable slab; on a RAM-resident node this includes the tmpfs root.
    pub cached_bytes: u64,
    /// tmpfs and shared memory.
    pub shared_bytes: u64,
    /// (total - available) / total, in percent.
    pub used_percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapUsage {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub used_percent: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskArgs {
    /// Also list pseudo filesystems (proc, sysfs, cgroup2, devpts, ...).
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskMetrics {
    pub filesystems: Vec<Filesystem>,
    /// Block devices that have done any I/O since boot.
    pub io: Vec<DiskIo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filesystem {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub read_only: bool,
    /// Absent when `statvfs` on the mountpoint failed (e.g. a stale network mount).
    pub usage: Option<FsUsage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FsUsage {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Free to unprivileged users.
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub used_percent: f64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// Counters of one block device from /proc/diskstats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskIo {
    pub device: String,
    pub reads: u64,
    pub read_bytes: u64,
    pub read_time_ms: u64,
    pub writes: u64,
    pub written_bytes: u64,
    pub write_time_ms: u64,
    pub in_progress: u64,
    pub io_time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMetrics {
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// `aa:bb:cc:dd:ee:ff`; absent for interfaces without one (e.g. tun).
    pub mac: Option<String>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The kernel's operstate: "up", "down", "unknown", ...
    pub operstate: String,
    pub loopback: bool,
    pub addresses: Vec<InterfaceAddress>,
    pub counters: InterfaceCounters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
}

/// Counters of one interface from /proc/net/dev.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostMetrics {
    /// Also the node's serial in the cluster (as in the original).
    pub hostname: String,
    /// `PRETTY_NAME` of /etc/os-release, when present.
    pub os: Option<String>,
    pub kernel_release: String,
    pub kernel_version: String,
    pub arch: String,
    /// /etc/machine-id, when present.
    pub machine_id: Option<String>,
    /// Unix time the node booted, in seconds.
    pub boot_time: u64,
    pub uptime_seconds: f64,
    pub processes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceMetricsArgs {
    /// The service's container id `<bundle_id>.<id>`: its cgroup is `<services cgroup>/<service>`.
    pub service: String,
}

/// Checks that `id` can name a service's cgroup directory: non-empty, at most 128 bytes,
/// letters, digits, `-`, `_`, `.` and `@`, and not `.` or `..`.
pub fn check_service_id(id: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@');
    if id.is_empty() || id.len() > 128 || id == "." || id == ".." || !id.chars().all(valid_char) {
        return Err(format!("{id:?} is not a service id (1-128 letters, digits, '-', '_', '.', '@'; not '.' or '..')"));
    }
    Ok(())
}

/// A service's resource usage, read from its cgroup v2 files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceUsage {
    pub service: String,
    pub cgroup: String,
    /// cpu.stat usage_usec, user_usec, system_usec.
    pub cpu_seconds: f64,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    /// memory.current, memory.peak (kernels ≥ 5.19), memory.max ("max" is none).
    pub memory_bytes: u64,
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// pids.current and pids.max.
    pub pids: u64,
    pub pids_limit: Option<u64>,
    /// Sums over io.stat's devices.
    pub io_read_bytes: u64,
    pub io_written_bytes: u64,
    /// memory.events oom_kill.
    pub oom_kills: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrometheusText {
    /// Text exposition format 0.0.4: `# HELP`, `# TYPE` and sample lines.
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ids_that_could_leave_the_cgroup_are_refused() {
        for ok in ["web", "bundle-1.web", "a.b-c_d@1", "0f6c1a8e-5a7e-4d3c-9a52-0c9d8c1f1a2b"] {
            check_service_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(check_service_id(bad).is_err(), "{bad:?}");
        }
        let args: DiskArgs = serde_json::from_str("{}").unwrap();
        assert!(!args.all);
        assert!(serde_json::from_str::<DiskArgs>(r#"{"al":true}"#).is_err());
    }
}
