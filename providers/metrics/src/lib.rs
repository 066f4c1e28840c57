//! The `metrics` provider: CPU, memory, disk, network and host facts read from /proc, /sys and
//! `statvfs`, each service's resource usage from its cgroup v2, and all of it as Prometheus
//! text for the coordinator's `/metrics`. See README.md for the tasks.

use cerana_observe::exposition::{Exposition, Kind};
use cerana_observe::procfs::{self, ParseError};
use cerana_observe::{read_file, ticks_per_second, ReadError};
use cerana_protocol::tasks::metrics::{
    check_service_id, CpuMetrics, DiskArgs, DiskMetrics, Filesystem, FsUsage, HostMetrics, Interface, InterfaceAddress,
    MemoryMetrics, MetricsCpu, MetricsDisk, MetricsHost, MetricsMemory, MetricsNetwork, MetricsPrometheus,
    MetricsService, NetworkMetrics, PrometheusText, ServiceUsage, SERVICES_CGROUP, SERVICES_CGROUP_ENV,
};
use cerana_protocol::{ErrorCode, Task, TaskError};
use cerana_provider_sdk::Provider;
use std::io;
use std::path::{Path, PathBuf};

/// Why a service's usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidId(String),
    #[error("service {service} has no cgroup at {}", path.display())]
    NotFound { service: String, path: PathBuf },
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl From<ServiceError> for TaskError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidId(message) => TaskError::new(ErrorCode::InvalidArgs, message),
            ServiceError::NotFound { .. } => TaskError::new(ErrorCode::NotFound, e.to_string()),
            ServiceError::Read(e) => e.into(),
        }
    }
}

/// Lists interface addresses (by interface name); `getifaddrs(3)` on a node.
pub type AddressLister = fn() -> io::Result<Vec<(String, InterfaceAddress)>>;

/// The addresses of this network namespace's interfaces, from `getifaddrs(3)`.
pub fn system_addresses() -> io::Result<Vec<(String, InterfaceAddress)>> {
    let mut out = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let (Some(address), netmask) = (ifaddr.address, ifaddr.netmask) else { continue };
        let prefix = |bits: u32| bits.count_ones() as u8;
        let entry = if let Some(v4) = address.as_sockaddr_in() {
            let len = netmask.and_then(|m| m.as_sockaddr_in().map(|m| prefix(m.ip().to_bits()))).unwrap_or(32);
            InterfaceAddress { address: v4.ip().into(), prefix_len: len }
        } else if let Some(v6) = address.as_sockaddr_in6() {
            let len =
                netmask.and_then(|m| m.as_sockaddr_in6().map(|m| m.ip().to_bits().count_ones() as u8)).unwrap_or(128);
            InterfaceAddress { address: v6.ip().into(), prefix_len: len }
        } else {
            continue;
        };
        out.push((ifaddr.interface_name, entry));
    }
    Ok(out)
}

/// Where the metrics are read from: `/` and the services cgroup on a node, fixture trees in tests.
#[derive(Debug, Clone)]
pub struct Source {
    root: PathBuf,
    services_cgroup: PathBuf,
    addresses: AddressLister,
}

impl Source {
    /// The running system; the services cgroup from `CERANA_SERVICES_CGROUP` or the default.
    pub fn system() -> Self {
        let services_cgroup =
            std::env::var_os(SERVICES_CGROUP_ENV).map_or_else(|| PathBuf::from(SERVICES_CGROUP), PathBuf::from);
        Self { root: PathBuf::from("/"), services_cgroup, addresses: system_addresses }
    }

    /// A tree laid out like `/` (proc/, sys/, etc/) and a services cgroup directory.
    pub fn at(root: impl Into<PathBuf>, services_cgroup: impl Into<PathBuf>, addresses: AddressLister) -> Self {
        Self { root: root.into(), services_cgroup: services_cgroup.into(), addresses }
    }

    pub fn services_cgroup(&self) -> &Path {
        &self.services_cgroup
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn read(&self, rel: &str) -> Result<String, ReadError> {
        read_file(&self.path(rel))
    }

    fn parsed<T>(&self, rel: &str, parse: impl FnOnce(&str) -> Result<T, ParseError>) -> Result<T, ReadError> {
        let path = self.path(rel);
        let text = read_file(&path)?;
        parse(&text).map_err(|source| ReadError::Parse { path, source })
    }

    fn optional(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
    }

    pub fn cpu(&self) -> Result<CpuMetrics, ReadError> {
        let ticks = ticks_per_second();
        let stat = self.parsed("proc/stat", |t| procfs::parse_stat(t, ticks))?;
        Ok(CpuMetrics {
            info: procfs::parse_cpuinfo(&self.read("proc/cpuinfo")?),
            load: self.parsed("proc/loadavg", procfs::parse_loadavg)?,
            times: stat.times,
        })
    }

    pub fn memory(&self) -> Result<MemoryMetrics, ReadError> {
        let (memory, swap) = self.parsed("proc/meminfo", procfs::parse_meminfo)?;
        Ok(MemoryMetrics { memory, swap })
    }

    pub fn disk(&self, args: DiskArgs) -> Result<DiskMetrics, ReadError> {
        let mut mounts = self.parsed("proc/self/mounts", procfs::parse_mounts)?;
        // A mount stacked on a mountpoint hides the ones below it (and statvfs sees only it).
        let mut seen = std::collections::HashSet::new();
        mounts.reverse();
        mounts.retain(|m| seen.insert(m.mountpoint.clone()));
        mounts.reverse();
        let filesystems = mounts
            .into_iter()
            .filter(|m| args.all || !procfs::is_pseudo_fs(&m.fstype))
            .map(|m| {
                let usage = fs_usage(&self.root.join(m.mountpoint.trim_start_matches('/')));
                Filesystem {
                    device: m.device,
                    mountpoint: m.mountpoint,
                    fstype: m.fstype,
                    read_only: m.read_only,
                    usage,
                }
            })
            .collect();
        // Some containers and old kernels have no diskstats; that is no I/O to report, not an error.
        let io = match self.parsed("proc/diskstats", procfs::parse_diskstats) {
            Err(ReadError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Vec::new(),
            other => other?,
        };
        Ok(DiskMetrics { filesystems, io })
    }

    pub fn network(&self) -> Result<NetworkMetrics, ReadError> {
        let counters = self.parsed("proc/net/dev", procfs::parse_net_dev)?;
        let addresses = (self.addresses)().map_err(ReadError::Addresses)?;
        let interfaces = counters
            .into_iter()
            .map(|(name, counters)| {
                let sys = |file: &str| self.optional(&format!("sys/class/net/{name}/{file}"));
                let flags =
                    sys("flags").and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok()).unwrap_or(0);
                const IFF_UP: u32 = 0x1;
                const IFF_LOOPBACK: u32 = 0x8;
                Interface {
                    index: sys("ifindex").and_then(|i| i.parse().ok()).unwrap_or(0),
                    mac: sys("address").filter(|mac| mac.bytes().any(|b| b != b'0' && b != b':')),
                    mtu: sys("mtu").and_then(|m| m.parse().ok()).unwrap_or(0),
                    up: flags & IFF_UP != 0,
                    operstate: sys("operstate").unwrap_or_else(|| "unknown".into()),
                    loopback: flags & IFF_LOOPBACK != 0,
                    addresses: addresses.iter().filter(|(n, _)| *n == name).map(|(_, a)| *a).collect(),
                    counters,
                    name,
                }
            })
            .collect();
        Ok(NetworkMetrics { interfaces })
    }

    pub fn host(&self) -> Result<HostMetrics, ReadError> {
        let ticks = ticks_per_second();
        let stat = self.parsed("proc/stat", |t| procfs::parse_stat(t, ticks))?;
        let proc_dir = self.path("proc");
        let processes = std::fs::read_dir(&proc_dir)
            .map_err(|source| ReadError::Io { path: proc_dir, source })?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
            .count() as u32;
        Ok(HostMetrics {
            hostname: self.read("proc/sys/kernel/hostname")?.trim().to_owned(),
            os: self.optional("etc/os-release").and_then(|t| procfs::os_release_value(&t, "PRETTY_NAME")),
            kernel_release: self.read("proc/sys/kernel/osrelease")?.trim().to_owned(),
            kernel_version: self.read("proc/sys/kernel/version")?.trim().to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            machine_id: self.optional("etc/machine-id"),
            boot_time: stat.boot_time,
            uptime_seconds: self.parsed("proc/uptime", procfs::parse_uptime)?,
            processes,
        })
    }

    /// The cgroup directory of service `id`.
    pub fn service_cgroup(&self, id: &str) -> Result<PathBuf, ServiceError> {
        check_service_id(id).map_err(ServiceError::InvalidId)?;
        Ok(self.services_cgroup.join(id))
    }

    pub fn service(&self, id: &str) -> Result<ServiceUsage, ServiceError> {
        let dir = self.service_cgroup(id)?;
        if !dir.is_dir() {
            return Err(ServiceError::NotFound { service: id.to_owned(), path: dir });
        }
        Ok(cgroup_usage(id, &dir)?)
    }

    /// Every service with a cgroup, by id; none when the services cgroup does not exist yet.
    pub fn services(&self) -> Result<Vec<ServiceUsage>, ReadError> {
        let entries = match std::fs::read_dir(&self.services_cgroup) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ReadError::Io { path: self.services_cgroup.clone(), source }),
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| check_service_id(id).is_ok())
            .collect();
        ids.sort();
        let mut usage = Vec::with_capacity(ids.len());
        for id in ids {
            match cgroup_usage(&id, &self.services_cgroup.join(&id)) {
                Ok(u) => usage.push(u),
                // Removed between the listing and the read.
                Err(ReadError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(usage)
    }

    /// The node's and every service's metrics as Prometheus text. A part that cannot be read is
    /// left out and counted in `cerana_node_scrape_errors`, so one bad file does not blank the rest.
    pub fn prometheus(&self) -> String {
        let mut out = Exposition::new();
        let mut failed: Vec<(&str, String)> = Vec::new();
        let mut part = |name: &'static str, result: Result<(), ReadError>| {
            if let Err(e) = result {
                tracing::warn!(part = name, "metrics: {e}");
                failed.push((name, e.to_string()));
            }
        };
        part("cpu", self.cpu().map(|m| render_cpu(&mut out, &m)));
        part("memory", self.memory().map(|m| render_memory(&mut out, &m)));
        part("disk", self.disk(DiskArgs::default()).map(|m| render_disk(&mut out, &m)));
        part("network", self.network().map(|m| render_network(&mut out, &m)));
        part("host", self.host().map(|m| render_host(&mut out, &m)));
        part("services", self.services().map(|s| render_services(&mut out, &s)));
        out.family(
            "cerana_node_scrape_errors",
            Kind::Gauge,
            "1 for each part of the node's metrics that could not be read",
        );
        for part in ["cpu", "memory", "disk", "network", "host", "services"] {
            let value = if failed.iter().any(|(p, _)| *p == part) { 1.0 } else { 0.0 };
            out.sample("cerana_node_scrape_errors", &[("part", part)], value);
        }
        out.finish()
    }
}

fn fs_usage(mountpoint: &Path) -> Option<FsUsage> {
    let st = nix::sys::statvfs::statvfs(mountpoint).ok()?;
    let unit = st.fragment_size() as u64;
    let total = st.blocks() as u64 * unit;
    let free = st.blocks_free() as u64 * unit;
    let available = st.blocks_available() as u64 * unit;
    let used = total.saturating_sub(free);
    // As df: used / (used + available), since reserved blocks are not available to users.
    let used_percent = if used + available == 0 { 0.0 } else { used as f64 * 100.0 / (used + available) as f64 };
    Some(FsUsage {
        total_bytes: total,
        free_bytes: free,
        available_bytes: available,
        used_bytes: used,
        used_percent,
        inodes_total: st.files() as u64,
        inodes_free: st.files_free() as u64,
    })
}

/// Usage of the cgroup v2 directory `dir`. Files of controllers that are not enabled for it
/// (no memory.current without the memory controller) count as zero / no limit.
pub fn cgroup_usage(service: &str, dir: &Path) -> Result<ServiceUsage, ReadError> {
    let read = |file: &str| -> Result<Option<String>, ReadError> {
        let path = dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ReadError::Io { path, source }),
        }
    };
    let parse_error = |file: &str, source| ReadError::Parse { path: dir.join(file), source };
    let counter = |file: &str| -> Result<u64, ReadError> {
        match read(file)? {
            None => Ok(0),
            Some(text) => text
                .trim()
                .parse()
                .map_err(|_| parse_error(file, ParseError { what: format!("not a number: {:?}", text.trim()) })),
        }
    };
    let limit = |file: &str| -> Result<Option<u64>, ReadError> {
        match read(file)? {
            None => Ok(None),
            Some(text) => procfs::parse_limit(&text).map_err(|e| parse_error(file, e)),
        }
    };
    if !dir.is_dir() {
        return Err(ReadError::Io { path: dir.to_owned(), source: io::ErrorKind::NotFound.into() });
    }
    let cpu = read("cpu.stat")?.unwrap_or_default();
    let usec = |key| procfs::keyed_value(&cpu, key).unwrap_or(0) as f64 / 1e6;
    let (io_read_bytes, io_written_bytes) = procfs::parse_io_stat(&read("io.stat")?.unwrap_or_default());
    let memory_peak_bytes = match read("memory.peak")? {
        Some(_) => Some(counter("memory.peak")?),
        None => None,
    };
    Ok(ServiceUsage {
        service: service.to_owned(),
        cgroup: dir.display().to_string(),
        cpu_seconds: usec("usage_usec"),
        cpu_user_seconds: usec("user_usec"),
        cpu_system_seconds: usec("system_usec"),
        memory_bytes: counter("memory.current")?,
        memory_peak_bytes,
        memory_limit_bytes: limit("memory.max")?,
        pids: counter("pids.current")?,
        pids_limit: limit("pids.max")?,
        io_read_bytes,
        io_written_bytes,
        oom_kills: read("memory.events")?.and_then(|t| procfs::keyed_value(&t, "oom_kill")).unwrap_or(0),
    })
}

fn render_cpu(out: &mut Exposition, m: &CpuMetrics) {
    out.single("cerana_node_cpus", Kind::Gauge, "Logical CPUs", f64::from(m.info.logical_cpus));
    out.family("cerana_node_cpu_seconds_total", Kind::Counter, "Seconds each CPU spent in each mode");
    for t in m.times.iter().filter(|t| t.cpu != "all") {
        for (mode, value) in [
            ("user", t.user),
            ("nice", t.nice),
            ("system", t.system),
            ("idle", t.idle),
            ("iowait", t.iowait),
            ("irq", t.irq),
            ("softirq", t.softirq),
            ("steal", t.steal),
        ] {
            out.sample("cerana_node_cpu_seconds_total", &[("cpu", &t.cpu), ("mode", mode)], value);
        }
    }
    out.single("cerana_node_load1", Kind::Gauge, "1-minute load average", m.load.load_1m);
    out.single("cerana_node_load5", Kind::Gauge, "5-minute load average", m.load.load_5m);
    out.single("cerana_node_load15", Kind::Gauge, "15-minute load average", m.load.load_15m);
}

fn render_memory(out: &mut Exposition, m: &MemoryMetrics) {
    let r = &m.memory;
    for (name, help, value) in [
        ("cerana_node_memory_total_bytes", "Physical memory", r.total_bytes),
        ("cerana_node_memory_available_bytes", "Memory available for new work without swapping", r.available_bytes),
        ("cerana_node_memory_free_bytes", "Unused memory", r.free_bytes),
        ("cerana_node_memory_buffers_bytes", "Block device buffers", r.buffers_bytes),
        (
            "cerana_node_memory_cached_bytes",
            "Page cache and reclaimable slab (includes the tmpfs root)",
            r.cached_bytes,
        ),
        ("cerana_node_memory_shared_bytes", "tmpfs and shared memory", r.shared_bytes),
        ("cerana_node_swap_total_bytes", "Swap space", m.swap.total_bytes),
        ("cerana_node_swap_free_bytes", "Unused swap space", m.swap.free_bytes),
    ] {
        out.single(name, Kind::Gauge, help, value as f64);
    }
}

fn render_disk(out: &mut Exposition, m: &DiskMetrics) {
    let fs: Vec<(&Filesystem, &FsUsage)> = m.filesystems.iter().filter_map(|f| Some((f, f.usage.as_ref()?))).collect();
    type FsField = fn(&FsUsage) -> u64;
    let fs_families: [(&str, &str, FsField); 5] = [
        ("cerana_node_filesystem_size_bytes", "Filesystem size", |u| u.total_bytes),
        ("cerana_node_filesystem_free_bytes", "Free bytes, including those reserved for root", |u| u.free_bytes),
        ("cerana_node_filesystem_avail_bytes", "Bytes available to unprivileged users", |u| u.available_bytes),
        ("cerana_node_filesystem_files", "Inodes", |u| u.inodes_total),
        ("cerana_node_filesystem_files_free", "Free inodes", |u| u.inodes_free),
    ];
    for (name, help, field) in fs_families {
        out.family(name, Kind::Gauge, help);
        for (f, usage) in &fs {
            let labels =
                [("device", f.device.as_str()), ("mountpoint", f.mountpoint.as_str()), ("fstype", f.fstype.as_str())];
            out.sample(name, &labels, field(usage) as f64);
        }
    }
    type IoField = fn(&cerana_protocol::tasks::metrics::DiskIo) -> f64;
    let io_families: [(&str, &str, IoField); 5] = [
        ("cerana_node_disk_reads_completed_total", "Reads completed", |d| d.reads as f64),
        ("cerana_node_disk_read_bytes_total", "Bytes read", |d| d.read_bytes as f64),
        ("cerana_node_disk_writes_completed_total", "Writes completed", |d| d.writes as f64),
        ("cerana_node_disk_written_bytes_total", "Bytes written", |d| d.written_bytes as f64),
        ("cerana_node_disk_io_time_seconds_total", "Seconds spent doing I/O", |d| d.io_time_ms as f64 / 1000.0),
    ];
    for (name, help, field) in io_families {
        out.family(name, Kind::Counter, help);
        for d in &m.io {
            out.sample(name, &[("device", &d.device)], field(d));
        }
    }
}

fn render_network(out: &mut Exposition, m: &NetworkMetrics) {
    type Field = fn(&Interface) -> u64;
    let families: [(&str, &str, Field); 8] = [
        ("cerana_node_network_receive_bytes_total", "Bytes received", |i| i.counters.rx_bytes),
        ("cerana_node_network_receive_packets_total", "Packets received", |i| i.counters.rx_packets),
        ("cerana_node_network_receive_errs_total", "Receive errors", |i| i.counters.rx_errors),
        ("cerana_node_network_receive_drop_total", "Received packets dropped", |i| i.counters.rx_dropped),
        ("cerana_node_network_transmit_bytes_total", "Bytes sent", |i| i.counters.tx_bytes),
        ("cerana_node_network_transmit_packets_total", "Packets sent", |i| i.counters.tx_packets),
        ("cerana_node_network_transmit_errs_total", "Transmit errors", |i| i.counters.tx_errors),
        ("cerana_node_network_transmit_drop_total", "Sent packets dropped", |i| i.counters.tx_dropped),
    ];
    for (name, help, field) in families {
        out.family(name, Kind::Counter, help);
        for i in &m.interfaces {
            out.sample(name, &[("interface", &i.name)], field(i) as f64);
        }
    }
    out.family("cerana_node_network_up", Kind::Gauge, "1 when the interface is administratively up");
    for i in &m.interfaces {
        out.sample("cerana_node_network_up", &[("interface", &i.name)], if i.up { 1.0 } else { 0.0 });
    }
}

fn render_host(out: &mut Exposition, m: &HostMetrics) {
    out.family("cerana_node_info", Kind::Gauge, "Facts about the node, as labels").sample(
        "cerana_node_info",
        &[
            ("hostname", &m.hostname),
            ("kernel_release", &m.kernel_release),
            ("arch", &m.arch),
            ("os", m.os.as_deref().unwrap_or("")),
        ],
        1.0,
    );
    out.single("cerana_node_boot_time_seconds", Kind::Gauge, "Unix time the node booted", m.boot_time as f64);
    out.single("cerana_node_uptime_seconds", Kind::Gauge, "Seconds since boot", m.uptime_seconds);
    out.single("cerana_node_processes", Kind::Gauge, "Processes on the node", f64::from(m.processes));
}

fn render_services(out: &mut Exposition, services: &[ServiceUsage]) {
    type Field = fn(&ServiceUsage) -> Option<f64>;
    let families: [(&str, Kind, &str, Field); 10] = [
        ("cerana_service_cpu_seconds_total", Kind::Counter, "CPU seconds used by the service's cgroup", |s| {
            Some(s.cpu_seconds)
        }),
        ("cerana_service_cpu_user_seconds_total", Kind::Counter, "User-mode CPU seconds", |s| Some(s.cpu_user_seconds)),
        ("cerana_service_cpu_system_seconds_total", Kind::Counter, "Kernel-mode CPU seconds", |s| {
            Some(s.cpu_system_seconds)
        }),
        ("cerana_service_memory_bytes", Kind::Gauge, "Memory charged to the cgroup", |s| Some(s.memory_bytes as f64)),
        ("cerana_service_memory_peak_bytes", Kind::Gauge, "Highest memory charged to the cgroup", |s| {
            s.memory_peak_bytes.map(|v| v as f64)
        }),
        ("cerana_service_memory_limit_bytes", Kind::Gauge, "memory.max (absent: no limit)", |s| {
            s.memory_limit_bytes.map(|v| v as f64)
        }),
        ("cerana_service_pids", Kind::Gauge, "Processes and threads in the cgroup", |s| Some(s.pids as f64)),
        ("cerana_service_pids_limit", Kind::Gauge, "pids.max (absent: no limit)", |s| s.pids_limit.map(|v| v as f64)),
        ("cerana_service_io_read_bytes_total", Kind::Counter, "Bytes read from block devices", |s| {
            Some(s.io_read_bytes as f64)
        }),
        ("cerana_service_io_written_bytes_total", Kind::Counter, "Bytes written to block devices", |s| {
            Some(s.io_written_bytes as f64)
        }),
    ];
    out.single("cerana_services", Kind::Gauge, "Services with a cgroup on this node", services.len() as f64);
    for (name, kind, help, field) in families {
        out.family(name, kind, help);
        for s in services {
            if let Some(value) = field(s) {
                out.sample(name, &[("service", &s.service)], value);
            }
        }
    }
    out.family("cerana_service_oom_kills_total", Kind::Counter, "Processes of the service the OOM killer killed");
    for s in services {
        out.sample("cerana_service_oom_kills_total", &[("service", &s.service)], s.oom_kills as f64);
    }
}

/// Serves task `T` by running `read` on `source` off the runtime's worker threads (file reads
/// and `statvfs` block).
fn serve<T: Task>(
    provider: Provider,
    source: &Source,
    read: fn(&Source, T::Args) -> Result<T::Output, TaskError>,
) -> Provider {
    let source = source.clone();
    provider.task::<T, _, _>(move |_ctx, args| {
        let source = source.clone();
        async move {
            tokio::task::spawn_blocking(move || read(&source, args))
                .await
                .unwrap_or_else(|e| Err(TaskError::new(ErrorCode::Internal, format!("the metrics reader failed: {e}"))))
        }
    })
}

/// The whole `cerana-metrics` program (see [`Provider::main`]).
pub fn main() -> std::process::ExitCode {
    provider().main()
}

/// The provider reading the running system.
pub fn provider() -> Provider {
    provider_reading(Source::system())
}

/// The provider reading `source`.
pub fn provider_reading(source: Source) -> Provider {
    let provider = Provider::new("metrics", env!("CARGO_PKG_VERSION"));
    let provider = serve::<MetricsCpu>(provider, &source, |s, _| Ok(s.cpu()?));
    let provider = serve::<MetricsMemory>(provider, &source, |s, _| Ok(s.memory()?));
    let provider = serve::<MetricsDisk>(provider, &source, |s, args| Ok(s.disk(args)?));
    let provider = serve::<MetricsNetwork>(provider, &source, |s, _| Ok(s.network()?));
    let provider = serve::<MetricsHost>(provider, &source, |s, _| Ok(s.host()?));
    let provider = serve::<MetricsService>(provider, &source, |s, args| Ok(s.service(&args.service)?));
    serve::<MetricsPrometheus>(provider, &source, |s, _| Ok(PrometheusText { text: s.prometheus() }))
}

#[cfg(test)]
mod tests;
