//! The `full` image in the QEMU harness: init starts libvirtd and the kvm provider, and
//! `kvm-list` answers through the node's API (an empty list on a fresh node).
//!
//! `make test-kvm` builds the full image and sets CERANA_FULL_IMAGE_DIR; without it the test
//! says so and skips, so a stale image is never booted by accident.

use cerana_qemu::{default_log_dir, Vm, VmConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[test]
fn the_full_image_runs_libvirtd_and_answers_kvm_list() {
    let Some(image) = std::env::var_os("CERANA_FULL_IMAGE_DIR").map(PathBuf::from) else {
        eprintln!("skipping: CERANA_FULL_IMAGE_DIR is not set (make test-kvm sets it after building the full image)");
        return;
    };
    assert!(image.join("initrd.img").is_file(), "no full image at {}", image.display());
    let mut config = VmConfig::direct("kvm-full", &image, default_log_dir());
    config.memory_mib = 2048;
    let mut vm = Vm::boot(&config).expect("QEMU starts");
    vm.wait_for_event("node_ready", Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("full image: node_ready after {:.1} s; log {}", vm.elapsed().as_secs_f64(), vm.log_path().display());

    // The kvm provider registers once libvirtd's socket is up; until then: no_provider.
    let started = Instant::now();
    let reply = loop {
        let reply = vm.run_task("kvm-list", serde_json::json!({}), Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        let unready = reply["error"]["code"] == "no_provider";
        if !unready || started.elapsed() > Duration::from_secs(120) {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(reply["error"].is_null(), "kvm-list failed: {reply}; log {}", vm.log_path().display());
    assert_eq!(reply["result"], serde_json::json!({ "vms": [] }), "{reply}");
    eprintln!("full image: kvm-list answered {:.1} s after boot", vm.elapsed().as_secs_f64());

    let status = vm.powerdown(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exit status {status}");
}
