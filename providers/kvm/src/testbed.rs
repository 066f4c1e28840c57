//! What the host tests and the benchmark run on: a tiny guest, and a private libvirtd.
//!
//! The guest is the project's own kernel (`out/image/base/vmlinuz`) with an initrd of busybox
//! and the ACPI button and evdev modules taken from the base image: its /init prints
//! [`GUEST_MARKER`] on the serial console, waits for the power button and powers off.
//!
//! The daemon is Debian's libvirtd, started with its
//! state, run and config directories on tmpfs inside a network and mount namespace of its own,
//! so nothing system-wide is touched or left running.
//!
//! [`run_isolated`] re-runs the current program inside a fresh network namespace (through
//! `ip netns exec`, which also gives it a private mount namespace); the inner run calls
//! [`PrivateLibvirtd::start`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The argument the inner run gets.
pub const INNER_FLAG: &str = "--inside-test-netns";

/// Set by [`run_isolated`] to the mount namespace it was started from.
const OUTER_MNT_ENV: &str = "CERANA_TESTBED_OUTER_MNT";

/// Directories libvirtd (privileged) uses, each hidden under a tmpfs.
const LIBVIRT_DIRS: &[&str] =
    &["/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt"];

/// Debian's libvirt QEMU driver module.
const QEMU_DRIVER: &str = "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so";

/// The libvirtd binary this machine has, if any.
pub fn libvirtd_binary() -> Option<PathBuf> {
    ["/usr/sbin/libvirtd", "/usr/bin/libvirtd"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// Why the tests or the benchmark cannot run here, or `None`.
pub fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("not root (libvirtd, namespaces and tmpfs mounts need it)".into());
    }
    if libvirtd_binary().is_none() {
        return Some("no libvirtd (apt-get install libvirt-daemon libvirt-daemon-driver-qemu)".into());
    }
    // The driver finds the emulator itself, and names it when it is missing.
    if !Path::new(QEMU_DRIVER).exists() {
        return Some(format!("no {QEMU_DRIVER} (apt-get install libvirt-daemon-driver-qemu qemu-system-x86)"));
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no ip (iproute2)".into());
    }
    None
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Why the private daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "refusing to mount over libvirt's directories outside a private mount namespace (start through run_isolated)"
    )]
    NotIsolated,
    #[error("{what}: {detail}")]
    Setup { what: String, detail: String },
    #[error("libvirtd did not answer on {uri} within {secs} s; its log:\n{log}")]
    NotReady { uri: String, secs: u64, log: String },
}

fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |e| DaemonError::Setup { what, detail: e.to_string() }
}

fn run(cmd: &mut Command) -> Result<(), DaemonError> {
    let out = cmd.output().map_err(setup(format!("{cmd:?}")))?;
    if !out.status.success() {
        return Err(DaemonError::Setup {
            what: format!("{cmd:?}"),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Runs this program again with [`INNER_FLAG`] inside a network namespace named
/// `cerana-<tag>-<pid>` that is deleted afterwards, whatever happens inside.
pub fn run_isolated(tag: &str, extra_args: &[String]) -> Result<ExitStatus, DaemonError> {
    let ns = format!("cerana-{tag}-{}", std::process::id());
    run(Command::new("ip").args(["netns", "add", &ns]))?;
    let exe = std::env::current_exe().map_err(setup("current_exe"))?;
    let outer = std::fs::read_link("/proc/self/ns/mnt").map_err(setup("/proc/self/ns/mnt"))?;
    let status = Command::new("ip")
        .env(OUTER_MNT_ENV, outer)
        .args(["netns", "exec", &ns])
        .arg(exe)
        .arg(INNER_FLAG)
        .args(extra_args)
        .status()
        .map_err(setup("ip netns exec"));
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    status
}

/// A running private libvirtd; stopping it (or dropping it) destroys its domains first.
#[derive(Debug)]
pub struct PrivateLibvirtd {
    child: Option<Child>,
    pub uri: String,
    pub log: PathBuf,
    /// Where this daemon's VMs' files (console logs, disks) go.
    pub work: PathBuf,
}

const QEMU_CONF: &str = r#"# CeranaOS test libvirtd: QEMU runs as root, without security labels or per-VM namespaces,
# and writes its stdio to a file (no virtlogd).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
cgroup_controllers = []
stdio_handler = "file"
"#;

impl PrivateLibvirtd {
    /// Starts libvirtd with tmpfs over its directories. Needs a private mount namespace.
    pub fn start(work: &Path) -> Result<Self, DaemonError> {
        // run_isolated names the mount namespace it started from; this one must differ.
        let own = std::fs::read_link("/proc/self/ns/mnt").map_err(setup("/proc/self/ns/mnt"))?;
        match std::env::var_os(OUTER_MNT_ENV) {
            Some(outer) if Path::new(&outer) != own => {}
            _ => return Err(DaemonError::NotIsolated),
        }
        for dir in LIBVIRT_DIRS {
            std::fs::create_dir_all(dir).map_err(setup(format!("mkdir {dir}")))?;
            run(Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0755", "cerana-test-libvirt", dir]))?;
        }
        std::fs::create_dir_all(work).map_err(setup(format!("mkdir {}", work.display())))?;
        add_qemu_user(work)?;
        std::fs::write("/etc/libvirt/qemu.conf", QEMU_CONF).map_err(setup("/etc/libvirt/qemu.conf"))?;
        std::fs::write("/etc/libvirt/libvirtd.conf", "log_outputs = \"3:stderr\"\n")
            .map_err(setup("/etc/libvirt/libvirtd.conf"))?;
        let log = work.join("libvirtd.log");
        let log_file = std::fs::File::create(&log).map_err(setup(log.display().to_string()))?;
        let binary =
            libvirtd_binary().ok_or(DaemonError::Setup { what: "libvirtd".into(), detail: "not installed".into() })?;
        let child = Command::new(binary)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(setup("log"))?)
            .stderr(log_file)
            .spawn()
            .map_err(setup("spawn libvirtd"))?;
        let mut daemon = Self { child: Some(child), uri: "qemu:///system".into(), log, work: work.to_owned() };
        daemon.wait_ready(Duration::from_secs(60))?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), DaemonError> {
        let started = Instant::now();
        virt::error::clear_error_callback();
        while started.elapsed() < limit {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                break;
            }
            if Path::new("/run/libvirt/libvirt-sock").exists() {
                if let Ok(mut conn) = virt::connect::Connect::open(Some(&self.uri)) {
                    let _ = conn.close();
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        self.stop();
        Err(DaemonError::NotReady { uri: self.uri.clone(), secs: limit.as_secs(), log })
    }

    /// Destroys every running domain, stops libvirtd (TERM, then KILL after 10 s), kills any
    /// QEMU it left, and unmounts its directories.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(mut conn) = virt::connect::Connect::open(Some(&self.uri)) {
            for dom in conn.list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE).unwrap_or_default() {
                let _ = dom.destroy();
            }
            let _ = conn.close();
        }
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        if let Ok(entries) = std::fs::read_dir("/run/libvirt/qemu") {
            for entry in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "pid")) {
                if let Ok(pid) = std::fs::read_to_string(entry.path()) {
                    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
                }
            }
        }
        for dir in LIBVIRT_DIRS.iter().rev().chain(&["/etc/passwd", "/etc/group"]) {
            let _ = Command::new("umount").args(["-l", dir]).status();
        }
    }
}

/// Debian's libvirtd refuses to start unless its compiled-in QEMU user and group
/// (`libvirt-qemu`) exist, even when qemu.conf says root; libvirt-daemon-system would add them.
/// Copies of /etc/passwd and /etc/group with them are bind-mounted in this mount namespace.
fn add_qemu_user(work: &Path) -> Result<(), DaemonError> {
    for (file, line) in [
        ("passwd", "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"),
        ("group", "libvirt-qemu:x:64055:\nkvm:x:64056:\n"),
    ] {
        let etc = format!("/etc/{file}");
        let mut text = std::fs::read_to_string(&etc).map_err(setup(etc.clone()))?;
        if text.contains("libvirt-qemu:") {
            continue;
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(line);
        let copy = work.join(file);
        std::fs::write(&copy, text).map_err(setup(copy.display().to_string()))?;
        run(Command::new("mount").arg("--bind").arg(&copy).arg(&etc))?;
    }
    Ok(())
}

impl Drop for PrivateLibvirtd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the test guest prints on its serial console once its /init runs.
pub const GUEST_MARKER: &str = "CERANA-KVM-TEST-GUEST up";
/// What it prints when the ACPI power button was pressed, before powering off.
pub const GUEST_POWER_MARKER: &str = "CERANA-KVM-TEST-GUEST power button";

const GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
insmod /button.ko
insmod /evdev.ko
echo "CERANA-KVM-TEST-GUEST up at $(cut -d' ' -f1 /proc/uptime) s" > /dev/ttyS0
for e in /sys/class/input/event*; do
  if [ "$(cat $e/device/name)" = "Power Button" ]; then
    (dd if=/dev/${e##*/} of=/dev/null bs=24 count=1 2>/dev/null; touch /tmp/pressed) &
  fi
done
while [ ! -e /tmp/pressed ]; do sleep 0.2; done
echo "CERANA-KVM-TEST-GUEST power button" > /dev/ttyS0
poweroff -f
"#;

/// The test guest's kernel and initrd.
#[derive(Debug, Clone)]
pub struct TestGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

/// Builds the test guest from a built base image (`vmlinuz`, `initrd.img`) into `work`.
pub fn test_guest(image_dir: &Path, work: &Path) -> Result<TestGuest, DaemonError> {
    let kernel = image_dir.join("vmlinuz");
    let image_initrd = image_dir.join("initrd.img");
    for p in [&kernel, &image_initrd] {
        if !p.is_file() {
            return Err(DaemonError::Setup { what: p.display().to_string(), detail: "missing (make image)".into() });
        }
    }
    let stage = work.join("guest-root");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(setup(stage.display().to_string()))?;
    let script = format!(
        "zstd -dc {} | cpio -idm --quiet bin/busybox 'lib/modules/*/kernel/drivers/acpi/button.ko' \
         'lib/modules/*/kernel/drivers/input/evdev.ko'",
        shell_quote(&image_initrd)
    );
    run(Command::new("sh").arg("-c").arg(&script).current_dir(&stage))?;
    for (name, pattern) in [("button.ko", "acpi/button.ko"), ("evdev.ko", "input/evdev.ko")] {
        let found = find_file(&stage.join("lib/modules"), pattern)
            .ok_or_else(|| DaemonError::Setup { what: name.into(), detail: "not in the base image's initrd".into() })?;
        std::fs::rename(&found, stage.join(name)).map_err(setup(name))?;
    }
    let _ = std::fs::remove_dir_all(stage.join("lib"));
    let init = stage.join("init");
    std::fs::write(&init, GUEST_INIT).map_err(setup("init"))?;
    run(Command::new("chmod").arg("755").arg(&init))?;
    std::fs::create_dir_all(stage.join("dev")).map_err(setup("dev"))?;
    let initrd = work.join("guest-initrd.cpio");
    let script = format!("find . | cpio -o -H newc --quiet > {}", shell_quote(&initrd));
    run(Command::new("sh").arg("-c").arg(&script).current_dir(&stage))?;
    Ok(TestGuest { kernel, initrd, cmdline: "console=ttyS0 panic=-1".into() })
}

fn find_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, suffix) {
                return Some(found);
            }
        } else if path.to_string_lossy().ends_with(suffix) {
            return Some(path);
        }
    }
    None
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}
