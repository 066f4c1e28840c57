//! The VM operations against libvirt. Every call blocks (libvirt's API is synchronous); the
//! provider runs them on tokio's blocking pool.

use crate::host::{self, HostProbe, NetnsLink};
use crate::xml::{fnv1a, VmRecord, METADATA_URI};
use cerana_protocol::tasks::boot::MacAddr;
use cerana_protocol::tasks::kvm::{
    BootDevice, DiskInfo, DiskSource, KvmConsoleLogResult, KvmDefineArgs, KvmUndefineResult, NicAttach, NicInfo,
    VmInfo, VmName, VmState, VmSummary,
};
use cerana_protocol::tasks::zfs::DatasetName;
use cerana_protocol::{ErrorCode, TaskError};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

/// Where the provider keeps things and how it reaches libvirt.
#[derive(Debug, Clone)]
pub struct Config {
    /// libvirt connection URI (default `qemu:///system`).
    pub uri: String,
    /// Serial console logs, `<dir>/<vm>.log`.
    pub log_dir: PathBuf,
    /// libvirt's QEMU run directory, where `<vm>.pid` tells the uptime.
    pub libvirt_run_dir: PathBuf,
    pub host: HostProbe,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            uri: "qemu:///system".into(),
            log_dir: PathBuf::from("/var/log/cerana/kvm"),
            libvirt_run_dir: PathBuf::from("/run/libvirt/qemu"),
            host: HostProbe::default(),
        }
    }
}

/// ZFS volumes for VM disks; on a node, `zfs-create`/`zfs-destroy` sub-tasks.
pub trait Volumes: Send + Sync {
    /// Creates volume `dataset` of `size_bytes`; returns its block device.
    fn create(&self, dataset: &DatasetName, size_bytes: u64) -> Result<PathBuf, String>;
    fn destroy(&self, dataset: &DatasetName) -> Result<(), String>;
}

/// For callers without a coordinator (tests, the benchmark): zvols are refused.
#[derive(Debug, Clone, Copy)]
pub struct NoVolumes;

impl Volumes for NoVolumes {
    fn create(&self, dataset: &DatasetName, _: u64) -> Result<PathBuf, String> {
        Err(format!("cannot create zvol {dataset}: no zfs provider is reachable"))
    }
    fn destroy(&self, dataset: &DatasetName) -> Result<(), String> {
        Err(format!("cannot destroy zvol {dataset}: no zfs provider is reachable"))
    }
}

const MIB: u64 = 1024 * 1024;
const MAX_VCPUS: u32 = 64;
const MIN_MEMORY_MIB: u64 = 16;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_LOG_TAIL: u64 = 64 * 1024;
const MAX_LOG_TAIL: u64 = 16 * MIB;

/// Why `kvm-define` refused or failed. Nothing it made is left behind.
#[derive(Debug, thiserror::Error)]
pub enum DefineError {
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("a VM named {0} exists already")]
    Exists(VmName),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NoKvm(#[from] host::NoKvm),
    #[error("{asked_mib} MiB asked for, only {available_mib} MiB of memory is available on this node")]
    InsufficientMemory { asked_mib: u64, available_mib: u64 },
    #[error("disk {0} does not exist (give create_bytes to create it)")]
    DiskMissing(String),
    #[error("disk {0} exists already; drop create_bytes to use it as it is")]
    DiskExists(String),
    #[error("bridge {0} does not exist on this node")]
    BridgeMissing(String),
    #[error("network namespace {0} does not exist (/run/netns/{0})")]
    NetnsMissing(String),
    #[error("cannot create {what}: {detail}")]
    Create { what: String, detail: String },
    #[error("libvirt refused the definition: {0}")]
    Libvirt(virt::error::Error),
}

/// Why a start, shutdown, destroy or undefine failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("no VM named {0}")]
    NotFound(VmName),
    #[error("VM {0} is running")]
    Running(VmName),
    #[error("VM {0} is not running")]
    NotRunning(VmName),
    #[error("VM {name} did not power off within {waited_ms} ms of the ACPI request; it keeps running (kvm-destroy stops it)")]
    ShutdownTimeout { name: VmName, waited_ms: u64 },
    #[error("VM {0} has no provider record in its metadata; it was not defined by kvm-define")]
    Foreign(VmName),
    #[error("cannot remove {what}: {detail}")]
    Remove { what: String, detail: String },
    #[error("libvirt: {0}")]
    Libvirt(virt::error::Error),
}

/// Why a VM or its console log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("no VM named {0}")]
    NotFound(VmName),
    #[error("VM {0} has no provider record in its metadata; it was not defined by kvm-define")]
    Foreign(VmName),
    #[error("VM {name} has no console log yet at {path} (it has not run since it was defined)")]
    NoLog { name: VmName, path: String },
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("libvirt: {0}")]
    Libvirt(virt::error::Error),
}

/// libvirt cannot be reached: no libvirtd on this node, or it is not running.
#[derive(Debug, thiserror::Error)]
#[error("libvirt is not available on this node: cannot connect to {uri}: {detail} (the base image profile carries no libvirt; VMs need the full profile with libvirtd running)")]
pub struct Unavailable {
    pub uri: String,
    pub detail: String,
}

fn task_error(code: ErrorCode, kind: &str, message: String) -> TaskError {
    TaskError::new(code, message).with_details(serde_json::json!({ "reason": kind }))
}

impl From<DefineError> for TaskError {
    fn from(e: DefineError) -> Self {
        let (code, kind) = match &e {
            DefineError::Unavailable(_) => (ErrorCode::Unavailable, "libvirt-unavailable"),
            DefineError::Exists(_) => (ErrorCode::AlreadyExists, "vm-exists"),
            DefineError::Invalid(_) => (ErrorCode::InvalidArgument, "invalid-argument"),
            DefineError::NoKvm(_) => (ErrorCode::Unavailable, "kvm-unavailable"),
            DefineError::InsufficientMemory { .. } => (ErrorCode::InvalidArgument, "insufficient-memory"),
            DefineError::DiskMissing(_) => (ErrorCode::NotFound, "disk-missing"),
            DefineError::DiskExists(_) => (ErrorCode::AlreadyExists, "disk-exists"),
            DefineError::BridgeMissing(_) => (ErrorCode::NotFound, "bridge-missing"),
            DefineError::NetnsMissing(_) => (ErrorCode::NotFound, "netns-missing"),
            DefineError::Create { .. } => (ErrorCode::Failed, "create-failed"),
            DefineError::Libvirt(_) => (ErrorCode::Failed, "libvirt"),
        };
        task_error(code, kind, e.to_string())
    }
}

impl From<ControlError> for TaskError {
    fn from(e: ControlError) -> Self {
        let (code, kind) = match &e {
            ControlError::Unavailable(_) => (ErrorCode::Unavailable, "libvirt-unavailable"),
            ControlError::NotFound(_) => (ErrorCode::NotFound, "vm-not-found"),
            ControlError::Running(_) => (ErrorCode::Busy, "running"),
            ControlError::NotRunning(_) => (ErrorCode::Busy, "not-running"),
            ControlError::ShutdownTimeout { .. } => (ErrorCode::Timeout, "shutdown-timeout"),
            ControlError::Foreign(_) => (ErrorCode::InvalidArgument, "foreign-vm"),
            ControlError::Remove { .. } => (ErrorCode::Failed, "remove-failed"),
            ControlError::Libvirt(_) => (ErrorCode::Failed, "libvirt"),
        };
        task_error(code, kind, e.to_string())
    }
}

impl From<ReadError> for TaskError {
    fn from(e: ReadError) -> Self {
        let (code, kind) = match &e {
            ReadError::Unavailable(_) => (ErrorCode::Unavailable, "libvirt-unavailable"),
            ReadError::NotFound(_) => (ErrorCode::NotFound, "vm-not-found"),
            ReadError::Foreign(_) => (ErrorCode::InvalidArgument, "foreign-vm"),
            ReadError::NoLog { .. } => (ErrorCode::NotFound, "no-console-log"),
            ReadError::Io { .. } => (ErrorCode::Failed, "io"),
            ReadError::Libvirt(_) => (ErrorCode::Failed, "libvirt"),
        };
        task_error(code, kind, e.to_string())
    }
}

/// A libvirt connection, opened on first use and reopened when it has died.
struct Link {
    conn: Option<Connect>,
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = c.close();
        }
    }
}

/// The VMs of one libvirt daemon.
pub struct Vms {
    config: Config,
    link: Mutex<Link>,
    /// Serialises definitions and undefinitions, so two defines of one name cannot both pass
    /// the existence check.
    defining: Mutex<()>,
}

impl std::fmt::Debug for Vms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vms").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Things made during a define, undone in reverse unless the define succeeds.
struct Undo<'a> {
    volumes: &'a dyn Volumes,
    steps: Vec<Made>,
}

enum Made {
    File(PathBuf),
    Zvol(DatasetName),
    Link(NetnsLink),
}

impl Undo<'_> {
    fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        for step in self.steps.drain(..).rev() {
            let result = match &step {
                Made::File(path) => std::fs::remove_file(path).map_err(|e| e.to_string()),
                Made::Zvol(ds) => self.volumes.destroy(ds),
                Made::Link(link) => link.delete().map_err(|e| e.to_string()),
            };
            if let Err(e) = result {
                tracing::warn!("undoing a failed define: {e}");
            }
        }
    }
}

fn state_of(raw: virt::sys::virDomainState) -> VmState {
    match raw {
        virt::sys::VIR_DOMAIN_RUNNING => VmState::Running,
        virt::sys::VIR_DOMAIN_BLOCKED => VmState::Blocked,
        virt::sys::VIR_DOMAIN_PAUSED => VmState::Paused,
        virt::sys::VIR_DOMAIN_SHUTDOWN => VmState::ShuttingDown,
        virt::sys::VIR_DOMAIN_SHUTOFF => VmState::Shutoff,
        virt::sys::VIR_DOMAIN_CRASHED => VmState::Crashed,
        virt::sys::VIR_DOMAIN_PMSUSPENDED => VmState::Suspended,
        _ => VmState::Other,
    }
}

fn disk_target(index: usize) -> String {
    // vda..vdz, then vdaa...: more than 26 disks is refused earlier.
    format!("vd{}", (b'a' + index as u8) as char)
}

impl Vms {
    pub fn new(config: Config) -> Self {
        virt::error::clear_error_callback();
        Self { config, link: Mutex::new(Link { conn: None }), defining: Mutex::new(()) }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs `f` with a live connection (opened or reopened as needed).
    fn with_conn<T, E: From<Unavailable>>(&self, f: impl FnOnce(&Connect) -> Result<T, E>) -> Result<T, E> {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if link.conn.as_ref().is_some_and(|c| !c.is_alive().unwrap_or(false)) {
            if let Some(mut dead) = link.conn.take() {
                let _ = dead.close();
            }
        }
        if link.conn.is_none() {
            let conn = Connect::open(Some(&self.config.uri))
                .map_err(|e| Unavailable { uri: self.config.uri.clone(), detail: e.message().to_owned() })?;
            link.conn = Some(conn);
        }
        f(link.conn.as_ref().expect("connection was just opened"))
    }

    fn lookup(conn: &Connect, name: &VmName) -> Result<Option<Domain>, virt::error::Error> {
        match Domain::lookup_by_name(conn, name.as_str()) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.code() == ErrorNumber::NoDomain => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn record_of(dom: &Domain) -> Option<VmRecord> {
        let element = dom.get_metadata(virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(METADATA_URI), 0).ok()?;
        VmRecord::from_metadata(&element).ok()
    }

    /// Checks `args` against itself and the node, makes the disks and NICs it asks for, and
    /// defines the domain; on any failure, removes what it made.
    pub fn define(&self, args: &KvmDefineArgs, volumes: &dyn Volumes) -> Result<VmInfo, DefineError> {
        let hypervisor = self.config.host.resolve(args.virt_type)?;
        check_shape(args)?;
        let asked = args.memory_mib.saturating_mul(MIB);
        if let Some(available) = self.config.host.available_memory() {
            if asked > available {
                return Err(DefineError::InsufficientMemory {
                    asked_mib: args.memory_mib,
                    available_mib: available / MIB,
                });
            }
        }
        for nic in &args.nics {
            match &nic.attach {
                NicAttach::Bridge { bridge } if !self.config.host.bridge_exists(bridge) => {
                    return Err(DefineError::BridgeMissing(bridge.clone()))
                }
                NicAttach::Netns { netns, .. } if !self.config.host.netns_exists(netns) => {
                    return Err(DefineError::NetnsMissing(netns.clone()))
                }
                _ => {}
            }
        }
        let _defining = self.defining.lock().unwrap_or_else(|p| p.into_inner());
        self.with_conn(|conn| match Self::lookup(conn, &args.name) {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(DefineError::Exists(args.name.clone())),
            Err(e) => Err(DefineError::Libvirt(e)),
        })?;

        let mut undo = Undo { volumes, steps: Vec::new() };
        let mut disks = Vec::with_capacity(args.disks.len());
        for (i, spec) in args.disks.iter().enumerate() {
            let (path, created) = match (&spec.source, spec.create_bytes) {
                (DiskSource::File { path }, None) => {
                    if !Path::new(path).exists() {
                        return Err(DefineError::DiskMissing(path.clone()));
                    }
                    (path.clone(), false)
                }
                (DiskSource::File { path }, Some(size)) => {
                    create_image_file(Path::new(path), size)?;
                    undo.steps.push(Made::File(path.into()));
                    (path.clone(), true)
                }
                (DiskSource::Zvol { dataset }, None) => {
                    let dev = format!("/dev/zvol/{dataset}");
                    if !Path::new(&dev).exists() {
                        return Err(DefineError::DiskMissing(dataset.clone()));
                    }
                    (dev, false)
                }
                (DiskSource::Zvol { dataset }, Some(size)) => {
                    let ds = DatasetName::new(dataset).map_err(|e| DefineError::Invalid(e.to_string()))?;
                    let dev = volumes
                        .create(&ds, size)
                        .map_err(|detail| DefineError::Create { what: format!("zvol {dataset}"), detail })?;
                    undo.steps.push(Made::Zvol(ds));
                    (dev.display().to_string(), true)
                }
            };
            disks.push(DiskInfo {
                target: disk_target(i),
                source: spec.source.clone(),
                path,
                read_only: spec.read_only,
                created,
            });
        }

        let name_hash = fnv1a(&[args.name.as_str().as_bytes()]);
        let mut nics = Vec::with_capacity(args.nics.len());
        for (i, spec) in args.nics.iter().enumerate() {
            let mac = spec.mac.unwrap_or_else(|| default_mac(&args.name, i));
            let host_ifname = match &spec.attach {
                NicAttach::Bridge { .. } => None,
                NicAttach::Netns { netns, ifname } => {
                    let link = NetnsLink::new(&format!("{name_hash:08x}-{i}"));
                    let ns_end = ifname.clone().unwrap_or_else(|| "vm0".into());
                    link.create(netns, &ns_end).map_err(|e| DefineError::Create {
                        what: format!("veth {} into namespace {netns} as {ns_end}", link.veth),
                        detail: e.to_string(),
                    })?;
                    undo.steps.push(Made::Link(link.clone()));
                    Some(link.veth)
                }
            };
            nics.push(NicInfo { mac, attach: spec.attach.clone(), host_ifname });
        }

        let boot = if args.boot.is_empty() {
            let mut b = vec![BootDevice::Disk];
            if !nics.is_empty() {
                b.push(BootDevice::Network);
            }
            b
        } else {
            args.boot.clone()
        };
        let console_log = self.config.log_dir.join(format!("{}.log", args.name));
        std::fs::create_dir_all(&self.config.log_dir).map_err(|e| DefineError::Create {
            what: format!("log directory {}", self.config.log_dir.display()),
            detail: e.to_string(),
        })?;
        let record = VmRecord {
            name: args.name.clone(),
            vcpus: args.vcpus,
            memory_mib: args.memory_mib,
            virt_type: args.virt_type,
            hypervisor,
            disks,
            nics,
            boot,
            direct_kernel: args.direct_kernel.clone(),
            console_log: console_log.display().to_string(),
        };
        let xml = record.domain_xml();
        let info = self.with_conn(|conn| {
            let dom = Domain::define_xml(conn, &xml).map_err(DefineError::Libvirt)?;
            Ok::<_, DefineError>(self.info_of(&dom, record))
        })?;
        undo.commit();
        // A log from an earlier VM of this name would be mistaken for this one's.
        let _ = std::fs::remove_file(&console_log);
        Ok(info)
    }

    fn info_of(&self, dom: &Domain, record: VmRecord) -> VmInfo {
        let state = dom.get_state().map(|(s, _)| state_of(s)).unwrap_or(VmState::Other);
        let uptime_seconds = if state == VmState::Running || state == VmState::Paused {
            qemu_uptime(&self.config.libvirt_run_dir.join(format!("{}.pid", record.name)))
        } else {
            None
        };
        VmInfo {
            name: record.name,
            uuid: dom.get_uuid_string().unwrap_or_default(),
            state,
            uptime_seconds,
            vcpus: record.vcpus,
            memory_mib: record.memory_mib,
            virt_type: record.virt_type,
            hypervisor: record.hypervisor,
            disks: record.disks,
            nics: record.nics,
            boot: record.boot,
            console_log: record.console_log,
        }
    }

    /// Looks a VM up with its record, for the control operations.
    fn control<T>(
        &self,
        name: &VmName,
        f: impl FnOnce(&Domain, VmRecord) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        self.with_conn(|conn| {
            let dom = Self::lookup(conn, name)
                .map_err(ControlError::Libvirt)?
                .ok_or_else(|| ControlError::NotFound(name.clone()))?;
            let record = Self::record_of(&dom).ok_or_else(|| ControlError::Foreign(name.clone()))?;
            f(&dom, record)
        })
    }

    pub fn start(&self, name: &VmName) -> Result<VmInfo, ControlError> {
        self.control(name, |dom, record| {
            if dom.is_active().map_err(ControlError::Libvirt)? {
                return Err(ControlError::Running(name.clone()));
            }
            dom.create().map_err(ControlError::Libvirt)?;
            Ok(self.info_of(dom, record))
        })
    }

    pub fn destroy(&self, name: &VmName) -> Result<VmInfo, ControlError> {
        self.control(name, |dom, record| {
            if !dom.is_active().map_err(ControlError::Libvirt)? {
                return Err(ControlError::NotRunning(name.clone()));
            }
            dom.destroy().map_err(ControlError::Libvirt)?;
            Ok(self.info_of(dom, record))
        })
    }

    /// Sends the ACPI power button and waits (polling, without holding the connection lock
    /// between polls) until the VM is off or `timeout` has passed.
    pub fn shutdown(&self, name: &VmName, timeout: Option<Duration>) -> Result<VmInfo, ControlError> {
        let timeout = timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        self.control(name, |dom, _| {
            if !dom.is_active().map_err(ControlError::Libvirt)? {
                return Err(ControlError::NotRunning(name.clone()));
            }
            dom.shutdown().map(|_| ()).map_err(ControlError::Libvirt)
        })?;
        let started = Instant::now();
        loop {
            let done = self.control(name, |dom, record| {
                Ok((!dom.is_active().map_err(ControlError::Libvirt)?).then(|| self.info_of(dom, record)))
            })?;
            if let Some(info) = done {
                return Ok(info);
            }
            if started.elapsed() >= timeout {
                return Err(ControlError::ShutdownTimeout {
                    name: name.clone(),
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn undefine(
        &self,
        name: &VmName,
        remove_storage: bool,
        force: bool,
        volumes: &dyn Volumes,
    ) -> Result<KvmUndefineResult, ControlError> {
        let _defining = self.defining.lock().unwrap_or_else(|p| p.into_inner());
        let record = self.control(name, |dom, record| {
            if dom.is_active().map_err(ControlError::Libvirt)? {
                if !force {
                    return Err(ControlError::Running(name.clone()));
                }
                dom.destroy().map_err(ControlError::Libvirt)?;
            }
            dom.undefine().map_err(ControlError::Libvirt)?;
            Ok(record)
        })?;
        let mut failures = Vec::new();
        for nic in &record.nics {
            if let Some(host_end) = &nic.host_ifname {
                if let Err(e) = NetnsLink::of_veth(host_end).delete() {
                    failures.push(format!("{host_end}: {e}"));
                }
            }
        }
        let _ = std::fs::remove_file(&record.console_log);
        let mut removed = Vec::new();
        if remove_storage {
            for disk in record.disks.iter().filter(|d| d.created) {
                let result = match &disk.source {
                    DiskSource::File { path } => {
                        std::fs::remove_file(path).map(|()| path.clone()).map_err(|e| e.to_string())
                    }
                    DiskSource::Zvol { dataset } => DatasetName::new(dataset)
                        .map_err(|e| e.to_string())
                        .and_then(|ds| volumes.destroy(&ds).map(|()| dataset.clone())),
                };
                match result {
                    Ok(what) => removed.push(what),
                    Err(e) => failures.push(format!("{}: {e}", disk.path)),
                }
            }
        }
        if !failures.is_empty() {
            return Err(ControlError::Remove {
                what: format!("parts of undefined VM {name}"),
                detail: failures.join("; "),
            });
        }
        Ok(KvmUndefineResult { name: name.clone(), removed_storage: removed })
    }

    pub fn get(&self, name: &VmName) -> Result<VmInfo, ReadError> {
        self.with_conn(|conn| {
            let dom = Self::lookup(conn, name)
                .map_err(ReadError::Libvirt)?
                .ok_or_else(|| ReadError::NotFound(name.clone()))?;
            let record = Self::record_of(&dom).ok_or_else(|| ReadError::Foreign(name.clone()))?;
            Ok(self.info_of(&dom, record))
        })
    }

    pub fn list(&self) -> Result<Vec<VmSummary>, ReadError> {
        self.with_conn(|conn| {
            let domains = conn.list_all_domains(0).map_err(ReadError::Libvirt)?;
            let mut vms: Vec<VmSummary> = domains
                .iter()
                .filter_map(|dom| {
                    let name = VmName::new(dom.get_name().ok()?).ok()?;
                    let state = dom.get_state().map(|(s, _)| state_of(s)).unwrap_or(VmState::Other);
                    Some(VmSummary { name, state, hypervisor: Self::record_of(dom).map(|r| r.hypervisor) })
                })
                .collect();
            vms.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(vms)
        })
    }

    pub fn console_log(&self, name: &VmName, max_bytes: Option<u64>) -> Result<KvmConsoleLogResult, ReadError> {
        let info = self.get(name)?;
        let max = max_bytes.unwrap_or(DEFAULT_LOG_TAIL).min(MAX_LOG_TAIL);
        let path = info.console_log;
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReadError::NoLog { name: name.clone(), path })
            }
            Err(source) => return Err(ReadError::Io { path, source }),
        };
        let io = |source| ReadError::Io { path: path.clone(), source };
        let size = file.metadata().map_err(io)?.len();
        let start = size.saturating_sub(max);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut bytes = Vec::with_capacity((size - start) as usize);
        file.take(max).read_to_end(&mut bytes).map_err(io)?;
        Ok(KvmConsoleLogResult {
            name: name.clone(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
            path,
            size_bytes: size,
            truncated: start > 0,
        })
    }
}

/// Checks of the arguments alone, before anything on the node is looked at.
fn check_shape(args: &KvmDefineArgs) -> Result<(), DefineError> {
    let invalid = |m: String| Err(DefineError::Invalid(m));
    if args.vcpus == 0 || args.vcpus > MAX_VCPUS {
        return invalid(format!("vcpus must be 1 to {MAX_VCPUS}, not {}", args.vcpus));
    }
    if args.memory_mib < MIN_MEMORY_MIB {
        return invalid(format!("memory_mib must be at least {MIN_MEMORY_MIB}, not {}", args.memory_mib));
    }
    if args.disks.len() > 26 {
        return invalid(format!("at most 26 disks, not {}", args.disks.len()));
    }
    for disk in &args.disks {
        match &disk.source {
            DiskSource::File { path } => {
                if !path.starts_with('/') || path.split('/').any(|c| c == "..") || path.ends_with('/') {
                    return invalid(format!("disk file {path:?} must be an absolute path without '..'"));
                }
            }
            DiskSource::Zvol { dataset } => {
                DatasetName::new(dataset).map_err(|e| DefineError::Invalid(format!("zvol: {e}")))?;
            }
        }
        if let Some(size) = disk.create_bytes {
            if size == 0 || size % 512 != 0 {
                return invalid(format!("create_bytes must be a positive multiple of 512, not {size}"));
            }
        }
    }
    let mut macs = Vec::new();
    for (i, nic) in args.nics.iter().enumerate() {
        let mac = nic.mac.unwrap_or_else(|| default_mac(&args.name, i));
        if mac.0[0] & 1 != 0 {
            return invalid(format!("NIC MAC {mac} is a multicast address"));
        }
        if mac.0 == [0; 6] {
            return invalid("NIC MAC 00:00:00:00:00:00 is not an address".into());
        }
        if macs.contains(&mac) {
            return invalid(format!("two NICs have MAC {mac}"));
        }
        macs.push(mac);
        match &nic.attach {
            NicAttach::Bridge { bridge } if !host::valid_ifname(bridge) => {
                return invalid(format!("bridge name {bridge:?} is not an interface name"))
            }
            NicAttach::Netns { netns, ifname } => {
                if !host::valid_netns_name(netns) {
                    return invalid(format!("network namespace name {netns:?} is not a plain name"));
                }
                if let Some(ifname) = ifname {
                    if !host::valid_ifname(ifname) {
                        return invalid(format!("ifname {ifname:?} is not an interface name"));
                    }
                }
            }
            _ => {}
        }
    }
    if args.boot.contains(&BootDevice::Network) && args.nics.is_empty() {
        return invalid("network boot needs a NIC".into());
    }
    if let Some(k) = &args.direct_kernel {
        for path in std::iter::once(&k.kernel).chain(&k.initrd) {
            if !path.starts_with('/') {
                return invalid(format!("direct_kernel path {path:?} must be absolute"));
            }
            // A file, or a block device holding the image (QEMU reads either).
            let usable = std::fs::metadata(path).is_ok_and(|m| m.is_file() || m.file_type().is_block_device());
            if !usable {
                return Err(DefineError::DiskMissing(path.clone()));
            }
        }
    }
    Ok(())
}

/// `52:54:00` (QEMU's prefix) and three bytes from the VM's name and the NIC's index.
pub fn default_mac(name: &VmName, index: usize) -> MacAddr {
    let h = fnv1a(&[name.as_str().as_bytes(), &index.to_le_bytes()]).to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, h[1], h[2], h[3]])
}

fn create_image_file(path: &Path, size: u64) -> Result<(), DefineError> {
    let file = match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(DefineError::DiskExists(path.display().to_string()))
        }
        Err(e) => {
            return Err(DefineError::Create { what: format!("image file {}", path.display()), detail: e.to_string() })
        }
    };
    if let Err(e) = file.set_len(size) {
        let _ = std::fs::remove_file(path);
        return Err(DefineError::Create { what: format!("image file {}", path.display()), detail: e.to_string() });
    }
    Ok(())
}

/// Seconds since the process in `pid_file` started (from /proc: its start time in clock ticks
/// after boot, against the system's uptime).
fn qemu_uptime(pid_file: &Path) -> Option<u64> {
    let pid: u32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime) counted after the ")" that ends the command name.
    let after = &stat[stat.rfind(')')? + 2..];
    let start_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI the image runs on.
    Some((uptime - start_ticks as f64 / 100.0).max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::tasks::kvm::{DiskSpec, NicSpec, VirtType};

    fn args() -> KvmDefineArgs {
        KvmDefineArgs {
            name: VmName::new("t1").unwrap(),
            vcpus: 1,
            memory_mib: 64,
            disks: vec![],
            nics: vec![],
            boot: vec![],
            direct_kernel: None,
            virt_type: VirtType::Tcg,
        }
    }

    #[test]
    fn bad_shapes_are_refused_with_the_reason() {
        let check = |f: &dyn Fn(&mut KvmDefineArgs)| {
            let mut a = args();
            f(&mut a);
            check_shape(&a).unwrap_err().to_string()
        };
        assert!(check(&|a| a.vcpus = 0).contains("vcpus"));
        assert!(check(&|a| a.memory_mib = 1).contains("memory_mib"));
        let file = |p: &str, size| DiskSpec {
            source: DiskSource::File { path: p.into() },
            create_bytes: size,
            read_only: false,
        };
        assert!(check(&|a| a.disks = vec![file("rel.img", None)]).contains("absolute"));
        assert!(check(&|a| a.disks = vec![file("/a/../b", None)]).contains("absolute"));
        assert!(check(&|a| a.disks = vec![file("/a.img", Some(1000))]).contains("multiple of 512"));
        let zvol =
            DiskSpec { source: DiskSource::Zvol { dataset: "bad@name".into() }, create_bytes: None, read_only: false };
        assert!(check(&|a| a.disks = vec![zvol.clone()]).contains("zvol"));
        let nic =
            |mac: &str| NicSpec { attach: NicAttach::Bridge { bridge: "br0".into() }, mac: Some(mac.parse().unwrap()) };
        assert!(check(&|a| a.nics = vec![nic("01:00:5e:00:00:01")]).contains("multicast"));
        assert!(check(&|a| a.nics = vec![nic("52:54:00:00:00:01"), nic("52:54:00:00:00:01")]).contains("two NICs"));
        assert!(check(&|a| a.boot = vec![BootDevice::Network]).contains("needs a NIC"));
        let ns = NicSpec { attach: NicAttach::Netns { netns: "../x".into(), ifname: None }, mac: None };
        assert!(check(&|a| a.nics = vec![ns.clone()]).contains("plain name"));
        check_shape(&args()).unwrap();
    }

    #[test]
    fn default_macs_are_stable_unicast_and_distinct() {
        let name = VmName::new("web").unwrap();
        let (a, b) = (default_mac(&name, 0), default_mac(&name, 1));
        assert_eq!(a, default_mac(&name, 0));
        assert_ne!(a, b);
        assert_eq!(a.0[..3], [0x52, 0x54, 0x00]);
    }

    #[test]
    fn errors_carry_stable_codes_and_reasons() {
        let e: TaskError = DefineError::Exists(VmName::new("a").unwrap()).into();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        assert_eq!(e.details.unwrap()["reason"], "vm-exists");
        let e: TaskError = ControlError::Running(VmName::new("a").unwrap()).into();
        assert_eq!((e.code, e.details.unwrap()["reason"].as_str()), (ErrorCode::Busy, Some("running")));
        let e: TaskError =
            ReadError::Unavailable(Unavailable { uri: "qemu:///system".into(), detail: "no socket".into() }).into();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("full profile"), "{}", e.message);
    }

    #[test]
    fn an_unreachable_libvirt_is_reported_as_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("qemu:///system?socket={}/none.sock", dir.path().display());
        let vms = Vms::new(Config { uri, log_dir: dir.path().into(), ..Config::default() });
        let err: TaskError = vms.list().unwrap_err().into();
        assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
        assert!(err.message.contains("none.sock") || err.message.contains("connect"), "{err}");
    }

    #[test]
    fn image_files_are_made_once_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        create_image_file(&path, 1 << 30).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(matches!(create_image_file(&path, 512), Err(DefineError::DiskExists(_))));
    }
}
