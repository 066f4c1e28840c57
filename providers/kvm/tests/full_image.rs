//! The `full` image in the QEMU harness: init starts libvirtd and the kvm provider, and
//! `kvm-list` answers through the node's API (an empty list on a fresh node).
//!
//! `make test-kvm` builds the full image and sets CERANA_FULL_IMAGE_DIR; without it the test
//! fails under `make test` and skips elsewhere; a stale image is never booted by accident.
//!
//! With CERANA_KVM_NESTED=1 (and CERANA_IMAGE_DIR naming the base image) it also runs a nested
//! TCG guest inside the node: the project's kernel travels as a raw virtio disk (QEMU boots a
//! kernel from a block device as from a file, but cannot map an initrd from one, and the node
//! has no way yet to receive plain files), so the guest runs kernel-only: `kvm-define` +
//! `kvm-start` through the API, its kernel's boot log read back with `kvm-console-log` up to
//! the point where it looks for a root filesystem, then `kvm-destroy`. TCG inside TCG is slow,
//! so `make test-kvm` leaves this out.

use cerana_kvm::testbed;
use cerana_testbed::{default_log_dir, Vm, VmConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `src` zero-padded to whole 512-byte sectors at `dst`, to be attached as a raw disk.
fn as_disk(src: &Path, dst: &Path) -> PathBuf {
    let mut bytes = std::fs::read(src).unwrap();
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    std::fs::write(dst, bytes).unwrap();
    dst.to_owned()
}

#[test]
fn the_full_image_runs_libvirtd_and_answers_kvm_list() {
    let image = cerana_testbed::require_ok!(cerana_testbed::image_dir_from(cerana_testbed::image::FULL_IMAGE_DIR_ENV));
    let mut config = VmConfig::direct("kvm-full", &image, default_log_dir());
    config.memory_mib = 2048;
    let nested = std::env::var_os("CERANA_KVM_NESTED").is_some_and(|v| v == "1");
    let work = tempfile::tempdir().unwrap();
    if nested {
        let base = std::env::var_os("CERANA_IMAGE_DIR")
            .map(PathBuf::from)
            .expect("CERANA_IMAGE_DIR (the base image) for the nested guest");
        let guest = testbed::test_guest(&base, work.path()).unwrap();
        // vda: the kernel.
        config.disk_files = vec![as_disk(&guest.kernel, &work.path().join("kernel.raw"))];
    }
    let mut vm = Vm::boot(&config).expect("QEMU starts");
    // The kvm service being ready is what this test is about (node_ready also waits for
    // services of other areas).
    vm.wait_for_text(r#"{"event":"service_ready","service":"kvm""#, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "full image: kvm service ready {:.1} s after QEMU started; log {}",
        vm.elapsed().as_secs_f64(),
        vm.log_path().display()
    );

    // The kvm provider registers once libvirtd's socket is up; until then: no_provider.
    let started = Instant::now();
    let reply = loop {
        let reply =
            vm.run_task("kvm-list", serde_json::json!({}), Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        let unready = reply["error"]["code"] == "no_provider";
        if !unready || started.elapsed() > Duration::from_secs(120) {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(reply["error"].is_null(), "kvm-list failed: {reply}; log {}", vm.log_path().display());
    assert_eq!(reply["result"], serde_json::json!({ "vms": [] }), "{reply}");
    eprintln!("full image: kvm-list answered {:.1} s after boot", vm.elapsed().as_secs_f64());

    if nested {
        let args = serde_json::json!({"name": "nested", "vcpus": 1, "memory_mib": 128, "virt_type": "tcg",
            "direct_kernel": {"kernel": "/dev/vda", "cmdline": "console=ttyS0 panic=0"}});
        let defined = vm.ok("kvm-define", args);
        eprintln!("nested: defined, hypervisor {}", defined["hypervisor"]);
        let started = Instant::now();
        vm.ok("kvm-start", serde_json::json!({"name": "nested"}));
        let mut seen_kernel = None;
        loop {
            let log = vm.ok("kvm-console-log", serde_json::json!({"name": "nested"}));
            let text = log["text"].as_str().unwrap_or_default();
            if seen_kernel.is_none() && text.contains("Linux version") {
                seen_kernel = Some(started.elapsed());
                eprintln!(
                    "nested: the guest kernel's banner on its serial console {:.1} s after kvm-start",
                    started.elapsed().as_secs_f64()
                );
            }
            if text.contains("VFS: Unable to mount root") || text.contains("Kernel panic") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "the nested guest did not get to its root mount: {log}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        eprintln!(
            "nested: TCG guest inside the TCG node reached its root mount {:.1} s after kvm-start",
            started.elapsed().as_secs_f64()
        );
        let got = vm.ok("kvm-get", serde_json::json!({"name": "nested"}));
        assert_eq!((got["state"].as_str(), got["hypervisor"].as_str()), (Some("running"), Some("tcg")), "{got}");
        vm.ok("kvm-destroy", serde_json::json!({"name": "nested"}));
        vm.ok("kvm-undefine", serde_json::json!({"name": "nested"}));
    }

    let status = vm.powerdown(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exit status {status}");
}
