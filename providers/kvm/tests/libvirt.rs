//! The kvm provider against Debian's libvirtd, as root: a TCG guest running the project's own
//! kernel through define, start, ACPI shutdown, destroy and undefine, its serial console read
//! back through `kvm-console-log`, and every bad input of issue #8.
//!
//! The test re-runs itself inside a network namespace of its own (`ip netns exec`), where it
//! starts a private libvirtd (tmpfs over libvirt's directories) and stops it at the end. The
//! guest's NICs go to a bridge and a second namespace, both made inside that namespace; nothing
//! touches the machine's interfaces. Needs the base image (`make image`) in CERANA_IMAGE_DIR.

use cerana_kvm::testbed::{self, PrivateLibvirtd, TestGuest, GUEST_MARKER, GUEST_POWER_MARKER, INNER_FLAG};
use cerana_kvm::vm::NoVolumes;
use cerana_kvm::{Config, Vms};
use cerana_protocol::tasks::kvm::{
    DirectKernel, DiskSource, DiskSpec, Hypervisor, KvmDefineArgs, NicAttach, NicSpec, VirtType, VmName, VmState,
};
use cerana_protocol::{ErrorCode, TaskError};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// The base image from CERANA_IMAGE_DIR (checked before the inner run starts).
fn image_dir() -> PathBuf {
    cerana_testbed::image_dir().unwrap_or_else(|why| panic!("{why}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == INNER_FLAG) {
        return inner();
    }
    if args.iter().any(|a| a == "--list") {
        println!("libvirt: test");
        return ExitCode::SUCCESS;
    }
    // Under `make test` a missing component fails (panics) here; elsewhere the test skips.
    if let Some(why) = testbed::skip_reason().or_else(|| cerana_testbed::image_dir().err()) {
        cerana_testbed::require::missing("libvirt", &why);
        return ExitCode::SUCCESS;
    }
    match testbed::run_isolated("kvm-test", &[]) {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("libvirt tests FAILED ({status})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("libvirt tests could not run: {e}");
            ExitCode::FAILURE
        }
    }
}

fn inner() -> ExitCode {
    let work = tempfile::Builder::new().prefix("cerana-kvm-test-").tempdir().expect("tempdir");
    let started = Instant::now();
    let guest = testbed::test_guest(&image_dir(), work.path()).expect("test guest");
    let mut daemon = PrivateLibvirtd::start(&work.path().join("libvirt")).expect("private libvirtd");
    println!("libvirtd up in {:.1} s", started.elapsed().as_secs_f64());
    let peer_ns = format!("cerana-kvm-peer-{}", std::process::id());
    let result = std::panic::catch_unwind(|| scenario(&daemon, &guest, work.path(), &peer_ns));
    let _ = Command::new("ip").args(["netns", "del", &peer_ns]).status();
    if result.is_err() {
        eprintln!("--- libvirtd log ---\n{}", std::fs::read_to_string(&daemon.log).unwrap_or_default());
    }
    daemon.stop();
    match result {
        Ok(()) => {
            println!("libvirt tests passed in {:.1} s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::FAILURE,
    }
}

fn sh(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(status.success(), "{cmd}: {status}");
}

fn name(s: &str) -> VmName {
    VmName::new(s).unwrap()
}

fn expect_err<T: std::fmt::Debug>(what: &str, r: Result<T, impl Into<TaskError>>, code: ErrorCode, reason: &str) {
    let err: TaskError = match r {
        Ok(v) => panic!("{what}: expected {code}, got {v:?}"),
        Err(e) => e.into(),
    };
    let got = err.details.as_ref().and_then(|d| d["reason"].as_str()).unwrap_or_default().to_owned();
    assert_eq!((&err.code, got.as_str()), (&code, reason), "{what}: {err}");
    println!("ok: {what}: {err}");
}

fn wait_for_console(vms: &Vms, vm: &VmName, text: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(log) = vms.console_log(vm, None) {
            if log.text.contains(text) {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < limit,
            "{text:?} not on {vm}'s console within {limit:?}: {:?}",
            vms.console_log(vm, None).map(|l| l.text)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn host_links() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).into_owned()
}

fn scenario(daemon: &PrivateLibvirtd, guest: &TestGuest, work: &Path, peer_ns: &str) {
    let vms = Vms::new(Config { uri: daemon.uri.clone(), log_dir: work.join("consoles"), ..Config::default() });
    assert!(vms.list().unwrap().is_empty());
    // Inside this test's namespace: a bridge, and a second namespace for the veth NIC.
    sh("ip link add kvtest-br0 type bridge && ip link set kvtest-br0 up");
    sh(&format!("ip netns add {peer_ns}"));
    let disk = work.join("guest.img");
    let args = KvmDefineArgs {
        name: name("guest"),
        vcpus: 1,
        memory_mib: 128,
        disks: vec![DiskSpec {
            source: DiskSource::File { path: disk.display().to_string() },
            create_bytes: Some(8 << 20),
            read_only: false,
        }],
        nics: vec![
            NicSpec {
                attach: NicAttach::Bridge { bridge: "kvtest-br0".into() },
                mac: Some("52:54:00:aa:00:01".parse().unwrap()),
            },
            NicSpec { attach: NicAttach::Netns { netns: peer_ns.into(), ifname: Some("guest0".into()) }, mac: None },
        ],
        boot: vec![],
        direct_kernel: Some(DirectKernel {
            kernel: guest.kernel.display().to_string(),
            initrd: Some(guest.initrd.display().to_string()),
            cmdline: guest.cmdline.clone(),
        }),
        virt_type: VirtType::Auto,
    };

    let t = Instant::now();
    let info = vms.define(&args, &NoVolumes).unwrap();
    println!("ok: define in {} ms", t.elapsed().as_millis());
    assert_eq!(info.state, VmState::Shutoff);
    let no_kvm = !testbed_cpu_has_virt();
    if no_kvm {
        assert_eq!(info.hypervisor, Hypervisor::Tcg, "no vmx/svm here: auto must give TCG");
    }
    assert_eq!(disk.metadata().unwrap().len(), 8 << 20);
    assert!(info.disks[0].created);
    let veth = info.nics[1].host_ifname.clone().unwrap();
    assert!(host_links().contains(&veth));
    sh(&format!("ip -n {peer_ns} link show guest0"));
    let listed = vms.list().unwrap();
    assert_eq!((listed.len(), listed[0].state), (1, VmState::Shutoff));

    // Bad input, each with its code; a refused define changes and leaves nothing.
    expect_err("duplicate name", vms.define(&args, &NoVolumes), ErrorCode::AlreadyExists, "vm-exists");
    assert_eq!(vms.get(&name("guest")).unwrap().uuid, info.uuid);
    let mut bad = args.clone();
    bad.name = name("bad");
    bad.disks = vec![DiskSpec {
        source: DiskSource::File { path: work.join("none.img").display().to_string() },
        create_bytes: None,
        read_only: false,
    }];
    expect_err("missing disk", vms.define(&bad, &NoVolumes), ErrorCode::NotFound, "disk-missing");
    let mut bad = args.clone();
    bad.name = name("bad");
    bad.memory_mib = cerana_kvm::host::HostProbe::default().available_memory().unwrap() / (1 << 20) + 1024;
    expect_err(
        "memory beyond available",
        vms.define(&bad, &NoVolumes),
        ErrorCode::InvalidArgument,
        "insufficient-memory",
    );
    let mut bad = args.clone();
    bad.name = name("bad");
    bad.nics = vec![NicSpec { attach: NicAttach::Bridge { bridge: "nosuchbr".into() }, mac: None }];
    expect_err("missing bridge", vms.define(&bad, &NoVolumes), ErrorCode::NotFound, "bridge-missing");
    bad.nics = vec![NicSpec { attach: NicAttach::Netns { netns: "no-such-ns".into(), ifname: None }, mac: None }];
    expect_err("missing namespace", vms.define(&bad, &NoVolumes), ErrorCode::NotFound, "netns-missing");
    if no_kvm {
        bad.nics = vec![];
        bad.virt_type = VirtType::Kvm;
        expect_err("kvm without vmx/svm", vms.define(&bad, &NoVolumes), ErrorCode::Unavailable, "kvm-unavailable");
    }
    // Fails at its second NIC, after a disk file and the first veth were made: both go again.
    let mut bad = args.clone();
    bad.name = name("bad");
    let bad_disk = work.join("bad.img");
    bad.disks[0].source = DiskSource::File { path: bad_disk.display().to_string() };
    bad.nics = vec![
        NicSpec { attach: NicAttach::Netns { netns: peer_ns.into(), ifname: Some("dup0".into()) }, mac: None },
        NicSpec { attach: NicAttach::Netns { netns: peer_ns.into(), ifname: Some("dup0".into()) }, mac: None },
    ];
    let links_before = host_links().lines().count();
    expect_err("define failing half-way", vms.define(&bad, &NoVolumes), ErrorCode::Failed, "create-failed");
    assert!(!bad_disk.exists(), "the half-made define left its disk file");
    assert_eq!(host_links().lines().count(), links_before, "the half-made define left a veth:\n{}", host_links());
    expect_err("left no domain", vms.get(&name("bad")), ErrorCode::NotFound, "vm-not-found");
    expect_err("destroy of a stopped VM", vms.destroy(&name("guest")), ErrorCode::Busy, "not-running");
    expect_err(
        "console log before any run",
        vms.console_log(&name("guest"), None),
        ErrorCode::NotFound,
        "no-console-log",
    );
    expect_err("start of an unknown VM", vms.start(&name("nobody")), ErrorCode::NotFound, "vm-not-found");

    // Boot, read the marker back, ACPI shutdown.
    let t = Instant::now();
    let info = vms.start(&name("guest")).unwrap();
    println!("ok: start returned in {} ms, state {:?}", t.elapsed().as_millis(), info.state);
    assert_eq!(info.state, VmState::Running);
    expect_err("start of a running VM", vms.start(&name("guest")), ErrorCode::Busy, "running");
    expect_err(
        "undefine of a running VM",
        vms.undefine(&name("guest"), false, false, &NoVolumes),
        ErrorCode::Busy,
        "running",
    );
    let booted = wait_for_console(&vms, &name("guest"), GUEST_MARKER, Duration::from_secs(120));
    println!("ok: guest marker on the serial console {:.1} s after start (TCG)", booted.as_secs_f64());
    let info = vms.get(&name("guest")).unwrap();
    assert_eq!(info.state, VmState::Running);
    assert!(info.uptime_seconds.is_some(), "{info:?}");
    let tail = vms.console_log(&name("guest"), Some(64)).unwrap();
    assert!(tail.truncated && tail.text.len() <= 64 && tail.size_bytes > 64, "{tail:?}");
    let t = Instant::now();
    let info = vms.shutdown(&name("guest"), Some(Duration::from_secs(60))).unwrap();
    assert_eq!(info.state, VmState::Shutoff);
    println!("ok: ACPI shutdown took {:.1} s", t.elapsed().as_secs_f64());
    assert!(vms.console_log(&name("guest"), None).unwrap().text.contains(GUEST_POWER_MARKER));
    expect_err("shutdown of a stopped VM", vms.shutdown(&name("guest"), None), ErrorCode::Busy, "not-running");

    // Hard stop, then a forced undefine of a running VM that removes its storage.
    vms.start(&name("guest")).unwrap();
    assert_eq!(vms.destroy(&name("guest")).unwrap().state, VmState::Shutoff);
    vms.start(&name("guest")).unwrap();
    let gone = vms.undefine(&name("guest"), true, true, &NoVolumes).unwrap();
    assert_eq!(gone.removed_storage, [disk.display().to_string()]);
    assert!(!disk.exists());
    assert!(!host_links().contains(&veth), "veth {veth} left behind");
    assert!(vms.list().unwrap().is_empty());
    expect_err("get after undefine", vms.get(&name("guest")), ErrorCode::NotFound, "vm-not-found");

    // Without remove_storage the disk stays.
    let kept = work.join("kept.img");
    let mut plain = args.clone();
    plain.name = name("kept");
    plain.nics = vec![];
    plain.disks[0].source = DiskSource::File { path: kept.display().to_string() };
    vms.define(&plain, &NoVolumes).unwrap();
    assert!(vms.undefine(&name("kept"), false, false, &NoVolumes).unwrap().removed_storage.is_empty());
    assert!(kept.exists());
}

fn testbed_cpu_has_virt() -> bool {
    cerana_kvm::host::cpu_has_virt_flags(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}
