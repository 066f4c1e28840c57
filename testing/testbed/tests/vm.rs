//! VM tests: boot the built image in QEMU (direct, ISO on BIOS, ISO on UEFI), reach node_ready,
//! run `node-info` through the coordinator API from the host, and power off cleanly.
//!
//! `make test-vm` builds the image and the ISO and runs these with CERANA_IMAGE_DIR and
//! CERANA_ISO set; without them a plain `cargo test` says so and skips (a stale image is never
//! booted by accident), and under `make test` they fail naming what is missing.

use std::path::PathBuf;
use std::time::Duration;

use cerana_protocol::events::{LifecycleEvent, ShutdownAction};
use cerana_testbed::image::{file_from, ISO_ENV};
use cerana_testbed::require::missing_program;
use cerana_testbed::{default_log_dir, image_dir, require_ok, Boot, Network, Vm, VmConfig, QEMU_SYSTEM};

const READY_TIMEOUT: Duration = Duration::from_secs(300);
const POWERDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// The image directory or the ISO a test boots, checked, or why it cannot run.
fn runnable(found: Result<PathBuf, String>) -> Result<PathBuf, String> {
    if let Some(why) = missing_program(&[QEMU_SYSTEM]) {
        return Err(why);
    }
    found
}

/// The whole life of a node: ready, answers node-info over the API, orderly poweroff.
fn boot_run_node_info_and_power_off(config: VmConfig) {
    let mut vm = Vm::boot(&config).expect("QEMU starts");
    let ready = vm.wait_for_event("node_ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{}: node_ready after {:.1} s ({ready:?}); log {}",
        config.name,
        vm.elapsed().as_secs_f64(),
        vm.log_path().display()
    );

    let reply =
        vm.run_task("node-info", serde_json::json!({}), Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}"));
    let text = reply.to_string();
    assert!(reply.get("error").is_none_or(|e| e.is_null()), "node-info failed: {text}");
    let result = reply.get("result").unwrap_or_else(|| panic!("no result in {text}"));
    assert!(result.is_object(), "node-info result is not an object: {text}");

    let status = vm.powerdown(POWERDOWN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exit status {status}");
    // udevd names every group its rules use that /etc/group lacks.
    let console = std::fs::read_to_string(vm.log_path()).unwrap_or_default();
    assert!(
        !console.contains("Unknown group"),
        "udev rules name groups the image lacks; log {}",
        vm.log_path().display()
    );
    let events = vm.events();
    assert!(
        events.iter().any(|e| matches!(e, LifecycleEvent::ShutdownComplete { action: ShutdownAction::Poweroff })),
        "no shutdown_complete(poweroff) event; log {}",
        vm.log_path().display()
    );
}

#[test]
fn direct_boot_reaches_ready_answers_node_info_and_powers_off() {
    let image = require_ok!(runnable(image_dir()));
    let mut config = VmConfig::direct("direct", &image, default_log_dir());
    config.disks = vec![1 << 30];
    boot_run_node_info_and_power_off(config);
}

#[test]
fn iso_on_bios_reaches_ready_and_powers_off() {
    let iso = require_ok!(runnable(file_from(ISO_ENV)));
    boot_run_node_info_and_power_off(VmConfig::new("iso-bios", Boot::IsoBios(iso), default_log_dir()));
}

#[test]
fn iso_on_uefi_reaches_ready_and_powers_off() {
    let iso = require_ok!(runnable(file_from(ISO_ENV)));
    boot_run_node_info_and_power_off(VmConfig::new("iso-uefi", Boot::IsoUefi(iso), default_log_dir()));
}

#[test]
fn a_boot_that_never_gets_ready_times_out_with_the_console_tail() {
    let image = require_ok!(runnable(image_dir()));
    let mut config = VmConfig::direct("no-ready", &image, default_log_dir());
    // No init at all: the kernel panics, QEMU exits (-no-reboot), and the harness says so.
    config.boot = Boot::Direct {
        kernel: image.join("vmlinuz"),
        initrd: image.join("initrd.img"),
        cmdline: "rdinit=/does-not-exist init=/does-not-exist-either".into(),
    };
    config.network = Network::None;
    let mut vm = Vm::boot(&config).expect("QEMU starts");
    let err = vm.wait_for_event("node_ready", READY_TIMEOUT).expect_err("there is no init to get ready");
    let text = err.to_string();
    assert!(text.contains("event node_ready"), "{text}");
    assert!(text.contains("Kernel panic") || text.contains("/does-not-exist"), "console tail missing: {text}");
}
