//! One QEMU guest: started, watched and always cleaned up.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cerana_protocol::events::LifecycleEvent;
use thiserror::Error;

use crate::console::{Console, WaitEnd};
use crate::http::{self, HttpError};
use crate::qemu::{Firmware, MissingFile, QemuCommand, QEMU_SYSTEM};
use crate::qmp::{Qmp, QmpError};

/// The guest port the coordinator's HTTP API listens on.
pub const GUEST_API_PORT: u16 = 8080;
/// QEMU user-mode networking's fixed guest address, gateway and the NIC's MAC, passed to init
/// as `cerana.mgmt_mac`, `cerana.mgmt_ip`, `cerana.mgmt_gw`.
pub const GUEST_MAC: &str = "52:54:00:ce:7a:01";
pub const GUEST_IP: &str = "10.0.2.15";
pub const GUEST_GW: &str = "10.0.2.2";

#[derive(Debug, Error)]
pub enum VmError {
    #[error("{0} not found; install it (`make deps` installs qemu-system-x86, ovmf)")]
    Missing(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what} within {secs} s; console tail ({log}):\n{tail}")]
    TimedOut { what: String, secs: u64, log: String, tail: String },
    #[error("QEMU exited ({status}) while waiting for {what}; console tail ({log}):\n{tail}")]
    Exited { what: String, status: String, log: String, tail: String },
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("task {task}: {source}")]
    Http { task: String, source: HttpError },
    #[error("task {task} answered HTTP {status}: {body}")]
    TaskFailed { task: String, status: u16, body: String },
    #[error("this VM was started without API port forwarding")]
    NoApi,
    #[error(transparent)]
    MissingFile(#[from] MissingFile),
    #[error("{0}")]
    Invalid(String),
}

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// `-kernel`/`-initrd` with the given extra command line.
    Direct { kernel: PathBuf, initrd: PathBuf, cmdline: String },
    /// The hybrid ISO as a CD on SeaBIOS.
    IsoBios(PathBuf),
    /// The hybrid ISO as a CD on OVMF (UEFI).
    IsoUefi(PathBuf),
    /// From the network, on the NIC of [`Network::Tap`], with this firmware.
    Pxe(Firmware),
}

/// How the guest is networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No NIC at all.
    None,
    /// QEMU user-mode networking with a loopback port forwarded to the guest's API and a random
    /// token passed to the node: the guest's NAT and DHCP live inside QEMU.
    UserApi,
    /// A virtio NIC on a tap inside a network namespace the test made (bridged to its servers).
    Tap { netns: String, ifname: String, mac: String },
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub boot: Boot,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Sizes of the raw virtio disks to create, in bytes (removed with the VM).
    pub disks: Vec<u64>,
    /// Existing raw disk files attached after `disks`, kept when the VM ends: a later VM with
    /// the same files (and `uuid`) is the same machine booting again.
    pub disk_files: Vec<PathBuf>,
    /// The SMBIOS system UUID (`-uuid`); init derives the machine-id and the ZFS hostid from it.
    /// `None`: QEMU's default.
    pub uuid: Option<String>,
    pub network: Network,
    /// `-machine`; `None`: QEMU's default (i440fx), as firmware-only PXE guests use.
    pub machine: Option<String>,
    /// Where the console log is kept (`<name>-<pid>-<n>.log`).
    pub log_dir: PathBuf,
    /// The QEMU program, looked up in PATH unless it contains a `/`.
    pub qemu: String,
}

impl VmConfig {
    pub fn new(name: &str, boot: Boot, log_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            boot,
            memory_mib: 1536,
            cpus: 2,
            disks: Vec::new(),
            disk_files: Vec::new(),
            uuid: None,
            network: Network::UserApi,
            machine: Some("q35".into()),
            log_dir: log_dir.into(),
            qemu: QEMU_SYSTEM.into(),
        }
    }

    /// Direct boot of an image directory (`vmlinuz`, `initrd.img`) as written by `make image`.
    pub fn direct(name: &str, image_dir: &Path, log_dir: impl Into<PathBuf>) -> Self {
        let boot = Boot::Direct {
            kernel: image_dir.join("vmlinuz"),
            initrd: image_dir.join("initrd.img"),
            cmdline: String::new(),
        };
        Self::new(name, boot, log_dir)
    }
}

/// A running guest. Dropping it kills QEMU and removes its disks and sockets; logs stay.
#[derive(Debug)]
pub struct Vm {
    child: Option<Child>,
    console: Console,
    qmp_path: PathBuf,
    work: PathBuf,
    log_path: PathBuf,
    api: Option<SocketAddr>,
    token: String,
    started: Instant,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// OVMF's code and variable store templates from Debian's `ovmf` package.
pub fn ovmf_files() -> Result<(PathBuf, PathBuf), VmError> {
    for (code, vars) in [
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ] {
        if Path::new(code).exists() && Path::new(vars).exists() {
            return Ok((code.into(), vars.into()));
        }
    }
    Err(VmError::Missing("OVMF firmware (/usr/share/OVMF)".into()))
}

/// 32 random hex digits from the kernel's CSPRNG.
pub fn random_token() -> Result<String, VmError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("reading /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn free_loopback_port() -> Result<u16, VmError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("finding a free port"))?;
    Ok(listener.local_addr().map_err(io("finding a free port"))?.port())
}

/// A 1.44 MB FAT image holding `/cerana-extra.cfg` (`set cerana_extra="..."`), made with mtools.
pub fn make_seed_disk(path: &Path, extra_cmdline: &str) -> Result<(), VmError> {
    if crate::find_in_path("mformat").is_none() {
        return Err(VmError::Missing("mformat (mtools)".into()));
    }
    let cfg = path.with_extension("cfg");
    std::fs::write(&cfg, format!("set cerana_extra=\"{extra_cmdline}\"\n")).map_err(io("writing the seed config"))?;
    let _ = std::fs::remove_file(path);
    for args in [
        vec![
            "-i".to_owned(),
            path.display().to_string(),
            "-C".into(),
            "-f".into(),
            "1440".into(),
            "-v".into(),
            "CERANASEED".into(),
            "::".into(),
        ],
        vec!["-i".to_owned(), path.display().to_string(), cfg.display().to_string(), "::/cerana-extra.cfg".into()],
    ] {
        let tool = if args.len() > 5 { "mformat" } else { "mcopy" };
        let out = Command::new(tool).args(&args).output().map_err(io(tool))?;
        if !out.status.success() {
            return Err(VmError::Io {
                what: format!("{tool} for the seed disk"),
                source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            });
        }
    }
    Ok(())
}

impl Vm {
    /// Starts QEMU; returns once the process runs (not once the guest is up).
    pub fn boot(config: &VmConfig) -> Result<Self, VmError> {
        let qemu = if config.qemu.contains('/') {
            Some(PathBuf::from(&config.qemu)).filter(|p| p.is_file())
        } else {
            crate::find_in_path(&config.qemu)
        };
        let qemu = qemu.ok_or_else(|| VmError::Missing(config.qemu.clone()))?;
        std::fs::create_dir_all(&config.log_dir).map_err(io(format!("creating {}", config.log_dir.display())))?;
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let unique = format!("{}-{}-{stamp}", config.name, std::process::id());
        let log_path = config.log_dir.join(format!("{unique}.log"));
        let work = std::env::temp_dir().join(format!("cerana-vm-{unique}"));
        std::fs::create_dir_all(&work).map_err(io(format!("creating {}", work.display())))?;
        let mut vm = Self {
            child: None,
            console: Console::default(),
            qmp_path: work.join("qmp.sock"),
            work: work.clone(),
            log_path: log_path.clone(),
            api: None,
            token: random_token()?,
            started: Instant::now(),
        };
        let mut qemu = QemuCommand::new(&qemu.display().to_string(), config.memory_mib, config.cpus);
        if let Network::Tap { netns, .. } = &config.network {
            qemu = qemu.in_netns(netns);
        }
        qemu.arg("-no-user-config");
        if let Some(machine) = &config.machine {
            qemu.args(["-machine", machine]);
        }
        qemu.args(["-serial", "stdio", "-no-reboot", "-qmp"]);
        qemu.arg(format!("unix:{},server=on,wait=off", vm.qmp_path.display()));
        qemu.args(["-device", "virtio-rng-pci"]);
        // Node settings for the kernel command line (direct boot) or the ISO's seed disk.
        let mut node_args = format!("cerana.api_token={}", vm.token);
        if config.network == Network::UserApi {
            node_args.push_str(&format!(
                " cerana.mgmt_mac={GUEST_MAC} cerana.mgmt_ip={GUEST_IP}/24 cerana.mgmt_gw={GUEST_GW}"
            ));
        }
        let mut cmdline = format!("console=ttyS0,115200 panic=-1 {node_args}");
        match &config.network {
            Network::None => {}
            Network::UserApi => {
                let port = free_loopback_port()?;
                vm.api = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
                // Only loopback is exposed.
                qemu.arg("-netdev").arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_API_PORT}"));
                qemu.arg("-device").arg(format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC}"));
            }
            Network::Tap { ifname, mac, .. } => {
                let pxe = match config.boot {
                    Boot::Pxe(firmware) => Some(firmware),
                    _ => None,
                };
                qemu.tap_nic(ifname, mac, pxe);
            }
        }
        for (i, size) in config.disks.iter().enumerate() {
            let disk = work.join(format!("disk{i}.raw"));
            let file = std::fs::File::create(&disk).map_err(io(format!("creating {}", disk.display())))?;
            file.set_len(*size).map_err(io(format!("sizing {}", disk.display())))?;
            qemu.arg("-drive").arg(format!("file={},format=raw,if=virtio,cache=unsafe", disk.display()));
        }
        for disk in &config.disk_files {
            if !disk.is_file() {
                return Err(VmError::Missing(disk.display().to_string()));
            }
            // writeback, not unsafe: what the guest flushed must be on the file for the next boot.
            qemu.arg("-drive").arg(format!("file={},format=raw,if=virtio,cache=writeback", disk.display()));
        }
        if let Some(uuid) = &config.uuid {
            qemu.args(["-uuid", uuid]);
        }
        match &config.boot {
            Boot::Direct { kernel, initrd, cmdline: extra } => {
                for f in [kernel, initrd] {
                    if !f.exists() {
                        return Err(VmError::Missing(f.display().to_string()));
                    }
                }
                if !extra.is_empty() {
                    cmdline.push(' ');
                    cmdline.push_str(extra);
                }
                qemu.args([
                    "-kernel".into(),
                    kernel.display().to_string(),
                    "-initrd".into(),
                    initrd.display().to_string(),
                ]);
                qemu.args(["-append".into(), cmdline]);
            }
            Boot::IsoBios(iso) | Boot::IsoUefi(iso) => {
                if !iso.exists() {
                    return Err(VmError::Missing(iso.display().to_string()));
                }
                qemu.args(["-drive".into(), format!("file={},media=cdrom,readonly=on,if=ide", iso.display())]);
                qemu.args(["-boot", "d"]);
                // The ISO's grub menu looks for /cerana-extra.cfg on every disk and appends its
                // `cerana_extra` to the kernel command line: that is how the API token gets in.
                let seed = work.join("seed.img");
                make_seed_disk(&seed, &node_args)?;
                qemu.args(["-drive".into(), format!("file={},format=raw,if=ide,index=1", seed.display())]);
                if matches!(config.boot, Boot::IsoUefi(_)) {
                    let (code, vars) = ovmf_files()?;
                    let vars_copy = work.join("OVMF_VARS.fd");
                    std::fs::copy(&vars, &vars_copy).map_err(io("copying the OVMF variable store"))?;
                    qemu.args([
                        "-drive".into(),
                        format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()),
                    ]);
                    qemu.args(["-drive".into(), format!("if=pflash,format=raw,unit=1,file={}", vars_copy.display())]);
                }
            }
            Boot::Pxe(firmware) => {
                if !matches!(config.network, Network::Tap { .. }) {
                    return Err(VmError::Invalid("a PXE boot needs a tap network (Network::Tap)".into()));
                }
                if *firmware == Firmware::Uefi {
                    qemu.uefi_bios()?;
                }
            }
        }
        let log = std::fs::File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
        std::fs::write(work.join("qemu.args"), qemu.arguments().join("\n")).map_err(io("writing qemu.args"))?;
        let mut cmd = qemu.command();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent;
        // it makes the kernel kill QEMU if the test process dies without running Drop.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io("starting qemu-system-x86_64"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        vm.console.spawn_reader(stdout, log);
        // QEMU's own complaints go into the same tail as the guest's console.
        vm.console.spawn_reader(stderr, std::io::sink());
        vm.child = Some(child);
        vm.started = Instant::now();
        Ok(vm)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn console(&self) -> &Console {
        &self.console
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn failure(&mut self, what: &str, end: WaitEnd, timeout: Duration) -> VmError {
        let tail = self.console.with(|s| s.tail_text());
        let log = self.log_path.display().to_string();
        match end {
            WaitEnd::TimedOut => VmError::TimedOut { what: what.into(), secs: timeout.as_secs(), log, tail },
            WaitEnd::Closed => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.wait().ok())
                    .map_or_else(|| "unknown status".into(), |s| s.to_string());
                VmError::Exited { what: what.into(), status, log, tail }
            }
        }
    }

    /// Waits for the first lifecycle event with this name (`node_ready`, ...), seen at any time
    /// since boot.
    pub fn wait_for_event(&mut self, name: &str, timeout: Duration) -> Result<LifecycleEvent, VmError> {
        let r = self.console.wait(timeout, |s| s.events.iter().find(|e| e.name() == name).cloned());
        r.map_err(|end| self.failure(&format!("event {name}"), end, timeout))
    }

    /// Waits for a plain text marker on the console.
    pub fn wait_for_text(&mut self, needle: &str, timeout: Duration) -> Result<(), VmError> {
        let r = self.console.wait(timeout, |s| s.contains(needle).then_some(()));
        r.map_err(|end| self.failure(&format!("console text {needle:?}"), end, timeout))
    }

    pub fn events(&self) -> Vec<LifecycleEvent> {
        self.console.with(|s| s.events.clone())
    }

    /// Runs a task through the node's coordinator HTTP API (`POST /v1/tasks`) and returns the
    /// response body. Connection failures are retried until `timeout` (the guest's network may
    /// still be coming up); an HTTP error status is returned at once.
    pub fn run_task(
        &self,
        task: &str,
        args: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, VmError> {
        let addr = self.api.ok_or(VmError::NoApi)?;
        let body = serde_json::json!({ "task": task, "args": args }).to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = http::post_json(addr, "/v1/tasks", &self.token, body.as_bytes(), Duration::from_secs(30));
            match attempt {
                Ok(resp) if resp.status == 200 => {
                    return serde_json::from_slice(&resp.body).map_err(|e| VmError::TaskFailed {
                        task: task.into(),
                        status: resp.status,
                        body: format!("not JSON ({e}): {}", String::from_utf8_lossy(&resp.body)),
                    });
                }
                Ok(resp) => {
                    return Err(VmError::TaskFailed {
                        task: task.into(),
                        status: resp.status,
                        body: String::from_utf8_lossy(&resp.body).into_owned(),
                    })
                }
                Err(e) if Instant::now() >= deadline => return Err(VmError::Http { task: task.into(), source: e }),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Presses the ACPI power button (QMP `system_powerdown`) and waits for QEMU to exit.
    pub fn powerdown(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        Qmp::connect(&self.qmp_path)?.execute("system_powerdown")?;
        self.wait_exit(timeout, "QEMU to exit after system_powerdown")
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration, what: &str) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("child present until drop");
            if let Some(status) = child.try_wait().map_err(io("waiting for QEMU"))? {
                // Let the reader drain the last console bytes.
                let _ = self.console.wait(Duration::from_secs(2), |s| s.closed.then_some(()));
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.failure(what, WaitEnd::TimedOut, timeout));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_qemu_or_kernel_is_named_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = VmConfig::direct("t", dir.path(), dir.path().join("logs"));
        config.qemu = "/nonexistent/qemu-system-x86_64".into();
        let err = Vm::boot(&config).unwrap_err();
        assert!(matches!(&err, VmError::Missing(p) if p.contains("/nonexistent/")), "{err}");
        assert!(err.to_string().contains("make deps"), "{err}");
        // With a QEMU that exists (any file will do for the check), the missing kernel is named.
        config.qemu = "/bin/true".into();
        let err = Vm::boot(&config).unwrap_err().to_string();
        assert!(err.contains("vmlinuz"), "{err}");
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
