//! `make bench-boot-net` must leave nothing behind (issue #15): it once exited 0 with dnsmasq,
//! Kea and the bootserver still running in namespaces it had deleted. This runs the benchmark
//! script itself, briefly, and then looks for any process or namespace that came from it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every process whose command line or working directory mentions `needle`: (pid, cmdline).
fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if cmdline.contains(needle) || cwd.to_string_lossy().contains(needle) {
            found.push((pid, cmdline.trim().to_owned()));
        }
    }
    found
}

fn bench_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/net.sh")
}

#[test]
fn bench_boot_net_leaves_no_process_or_namespace() {
    require!("perfdhcp", "kea-dhcp4", "dnsmasq", "in.tftpd", "nginx", "curl");
    let tmp = tempfile::Builder::new().prefix("cerana-bench-leftovers-").tempdir().expect("tempdir");
    let marker = tmp.path().to_string_lossy().into_owned();
    // Output to a file: a pipe nobody reads while the script runs could fill and stall it.
    let log_path = tmp.path().join("bench.log");
    let log = std::fs::File::create(&log_path).expect("bench log");
    // Every server once, briefly: one DHCP rate, a 1 MiB initrd, one download each.
    let mut child = Command::new("bash")
        .arg(bench_script())
        .arg(env!("CARGO_BIN_EXE_cerana-bootserver"))
        .env("TMPDIR", tmp.path())
        .env("DHCP_SECS", "1")
        .env("DHCP_RATES", "200")
        .env("INITRD_MB", "1")
        .env("RUNS", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("bench log"))
        .stderr(log)
        .spawn()
        .expect("run boot/bench/net.sh");
    let script_pid = child.id();
    let mut status = common::wait_for(Duration::from_secs(300), || child.try_wait().ok().flatten());
    if status.is_none() {
        // SIGTERM, so the script's own cleanup trap runs.
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(script_pid as i32), nix::sys::signal::Signal::SIGTERM);
        status = common::wait_for(Duration::from_secs(15), || child.try_wait().ok().flatten());
        let _ = child.kill();
        let _ = child.wait();
    }

    // A server killed with SIGTERM may take a moment to go; none may still be there after 5 s.
    // Whatever is left is killed before any assertion, so a failure leaves nothing running.
    let clean = common::wait_for(Duration::from_secs(5), || processes_mentioning(&marker).is_empty().then_some(()));
    let left = processes_mentioning(&marker);
    for (pid, _) in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
    }

    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "the benchmark failed ({status:?}):\n{output}");
    // It measured every peer, or it did not run what it claims to clean up after.
    for peer in ["dnsmasq", "Kea", "tftpd-hpa", "nginx"] {
        assert!(output.contains(peer), "no {peer} figure in the table:\n{output}");
    }
    let left: Vec<String> = left.iter().map(|(pid, cmdline)| format!("{pid}: {cmdline}")).collect();
    assert!(clean.is_some(), "processes outlived the benchmark:\n{}", left.join("\n"));

    let namespaces = common::run(&["ip", "netns", "list"]);
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    let prefix = format!("cbsb-{script_pid}-");
    assert!(!namespaces.contains(&prefix), "namespaces outlived the benchmark:\n{namespaces}");
}
