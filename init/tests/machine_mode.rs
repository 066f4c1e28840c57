//! Init as the PID 1 of a "machine" without a VM: the real binary in a chroot with its own
//! mount, UTS, network and PID namespaces, so the early boot (mounts, console, lo, identity,
//! hostname, API token, modules) and the final reboot(2) run for real but touch nothing of the
//! host. reboot(2) in a child PID namespace ends that namespace's init with SIGINT (poweroff).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cerana_protocol::events::{LifecycleEvent as E, ShutdownAction};
use cerana_testbed::init::{why_cannot_run, RunningInit};

const INIT: &str = env!("CARGO_BIN_EXE_cerana-init");
const KIT: &str = env!("CARGO_BIN_EXE_cerana-init-testkit");
const WAIT: Duration = Duration::from_secs(30);

/// Copies `bin` into `root` at `at`, with the shared libraries `ldd` names at their paths.
fn install(root: &Path, bin: &str, at: &str) {
    let dest = root.join(at.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(bin, &dest).unwrap();
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let lib = line.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from);
        if let Some(lib) = lib {
            let dest = root.join(lib.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&lib, &dest).unwrap();
        }
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname().unwrap().release().to_string_lossy().into_owned()
}

/// A named network namespace with a veth pair (`eth7` with a fixed MAC, and its peer).
struct NetNs {
    name: String,
}

impl NetNs {
    fn create() -> Self {
        let name = format!("cerana-init-test-{}", std::process::id());
        let ns = Self { name };
        let run = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false);
            assert!(ok, "ip {args:?} failed");
        };
        run(&["netns", "add", &ns.name]);
        run(&[
            "-n",
            &ns.name,
            "link",
            "add",
            "eth7",
            "address",
            "52:54:00:12:34:56",
            "type",
            "veth",
            "peer",
            "name",
            "eth7p",
        ]);
        run(&["-n", &ns.name, "link", "set", "eth7p", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["-n", &self.name]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[test]
fn machine_mode_boots_in_a_chroot_and_powers_off_with_reboot() {
    cerana_testbed::require!(why_cannot_run());
    cerana_testbed::require!(cerana_testbed::require::missing_program(&["ldd", "ip"]));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    install(root, INIT, "/init");
    install(root, KIT, "/usr/bin/testkit");
    std::fs::create_dir_all(root.join("etc/cerana")).unwrap();
    std::fs::write(
        root.join("etc/cerana/services.toml"),
        "[service.svc]\ncommand = \"/usr/bin/testkit\"\nargs = [\"service\", \"--notify\", \"--say\", \"up\"]\nready = \"notify\"\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/cerana/modules"), "fake_driver\n").unwrap();
    let modules = root.join("lib/modules").join(kernel_release());
    std::fs::create_dir_all(modules.join("kernel")).unwrap();
    std::fs::write(modules.join("kernel/fake_driver.ko"), b"not a module").unwrap();
    std::fs::write(modules.join("modules.dep"), "kernel/fake_driver.ko:\n").unwrap();
    std::fs::write(
        root.join("cmdline"),
        "console=ttyS0 cerana.hostname=testnode cerana.api_token=0123456789abcdef0123 cerana.bogus \
         cerana.mgmt_mac=52:54:00:12:34:56 cerana.mgmt_ip=10.77.0.2/24 cerana.mgmt_gw=10.77.0.1\n",
    )
    .unwrap();
    // A network namespace with a NIC for cerana.mgmt_* (a veth: the host cannot load the
    // dummy driver); removed on every exit path.
    let netns = NetNs::create();
    let root_arg = format!("--root={}", root.display());
    let init_args: Vec<std::ffi::OsString> =
        ["/init", "--cmdline", "/cmdline", "--events", "/events", "--console", "/console.log"]
            .iter()
            .map(Into::into)
            .collect();
    let mut init = RunningInit::spawn_in(
        &["ip", "netns", "exec", &netns.name],
        &["--mount", "--uts", &root_arg],
        &init_args,
        root.join("events"),
        root.join("run/cerana/init.sock"),
        dir.path().join("unshare.out"),
    )
    .unwrap();
    init.wait_for("early_boot_done", WAIT, |e| matches!(e, E::EarlyBootDone { .. }));
    let warned = init.wait_for("cmdline_parsed", WAIT, |e| matches!(e, E::CmdlineParsed { .. }));
    assert!(
        matches!(&warned, E::CmdlineParsed { warnings } if warnings.len() == 1 && warnings[0].starts_with("cerana.bogus")),
        "{warned:?}"
    );
    let failed = init.wait_for("module_failed", WAIT, |e| matches!(e, E::ModuleFailed { .. }));
    assert!(
        matches!(&failed, E::ModuleFailed { module, error } if module == "fake_driver" && error.contains("the kernel refused")),
        "{failed:?}"
    );
    let net = init.wait_for("network", WAIT, |e| matches!(e, E::NetworkConfigured { .. } | E::NetworkFailed { .. }));
    assert_eq!(
        net,
        E::NetworkConfigured {
            interface: "eth7".into(),
            address: "10.77.0.2/24".into(),
            gateway: Some("10.77.0.1".into()),
        }
    );
    init.wait_for("node_ready", WAIT, |e| matches!(e, E::NodeReady { .. }));
    let addrs = netns.ip(&["-4", "-o", "addr", "show", "dev", "eth7"]);
    assert!(addrs.contains("inet 10.77.0.2/24"), "{addrs}");
    let routes = netns.ip(&["-4", "route", "show", "default"]);
    assert!(routes.contains("default via 10.77.0.1 dev eth7"), "{routes}");

    // What init set up, seen through its own /proc entry (its mount and network namespaces).
    let proc_root = PathBuf::from(format!("/proc/{}/root", init.pid));
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", init.pid)).unwrap();
    for (fstype, point) in [
        ("devtmpfs", "/dev"),
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devpts", "/dev/pts"),
        ("tmpfs", "/dev/shm"),
        ("tmpfs", "/run"),
        ("tmpfs", "/tmp"),
        ("cgroup2", "/sys/fs/cgroup"),
    ] {
        assert!(
            mounts.lines().any(|l| l.split(' ').nth(1) == Some(point) && l.split(' ').nth(2) == Some(fstype)),
            "{fstype} on {point} missing:\n{mounts}"
        );
    }
    let lo_flags = std::fs::read_to_string(proc_root.join("sys/class/net/lo/flags")).unwrap();
    let lo_flags = u32::from_str_radix(lo_flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(lo_flags & 1, 1, "lo is up");
    let machine_id = std::fs::read_to_string(root.join("etc/machine-id")).unwrap();
    assert_eq!(machine_id.trim().len(), 32);
    let hostid = std::fs::read(root.join("etc/hostid")).unwrap();
    assert_eq!(hostid.len(), 4);
    assert_eq!(
        u32::from_ne_bytes(hostid.try_into().unwrap()),
        u32::from_str_radix(&machine_id[..8], 16).unwrap(),
        "hostid is the machine-id's first 4 bytes"
    );
    if let Some(uuid) = std::fs::read_to_string("/sys/class/dmi/id/product_uuid")
        .ok()
        .and_then(|u| cerana_init::boot::machine_id_from_uuid(&u))
    {
        assert_eq!(machine_id.trim(), uuid, "machine-id comes from the SMBIOS product UUID");
    }
    assert_eq!(std::fs::read_to_string(root.join("etc/hostname")).unwrap(), "testnode\n");
    let uts = Command::new("nsenter").args(["-t", &init.pid.to_string(), "--uts", "hostname"]).output();
    if let Ok(uts) = uts {
        assert_eq!(String::from_utf8_lossy(&uts.stdout).trim(), "testnode");
    }
    let token = proc_root.join("run/cerana/api-token");
    assert_eq!(std::fs::read_to_string(&token).unwrap(), "0123456789abcdef0123\n");
    assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600);
    let console = std::fs::read_to_string(root.join("console.log")).unwrap();
    assert!(console.contains("[svc] up"), "{console}");
    assert!(console.contains("CERANA-EVENT {\"event\":\"node_ready\""), "{console}");

    // SIGTERM: orderly poweroff ending in reboot(2), which ends the namespace's init.
    init.signal(nix::sys::signal::Signal::SIGTERM);
    init.wait_for("svc stopped", WAIT, |e| matches!(e, E::ServiceStopped { service, .. } if service == "svc"));
    let done = init.wait_for("shutdown_complete", WAIT, |e| matches!(e, E::ShutdownComplete { .. }));
    assert_eq!(done, E::ShutdownComplete { action: ShutdownAction::Poweroff });
    let status = init.wait_status(WAIT).expect("the namespace ends");
    assert!(
        status.signal() == Some(libc::SIGINT) || status.code() == Some(128 + libc::SIGINT),
        "reboot(RB_POWER_OFF) in a PID namespace ends its init with SIGINT: {status:?}"
    );
}
