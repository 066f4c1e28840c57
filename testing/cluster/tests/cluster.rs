//! The 3-node cluster in QEMU (root, TCG): node 1 boots directly with cerana.cluster_bootstrap,
//! node 2 PXE-boots on BIOS (the NIC's iPXE ROM), node 3 on UEFI (OVMF PXE → snponly.efi →
//! iPXE), all from node 1's bootserver; every node reaches node_ready and node 1's boot events
//! show each PXE node's timeline. Skips without root, QEMU, OVMF or a built image.
use cerana_cluster::{Cluster, Layout};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn image_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CERANA_IMAGE_DIR").map(PathBuf::from),
        std::env::var_os("OUT_DIR").map(|d| PathBuf::from(d).join("image/base")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../out/image/base")),
    ];
    candidates.into_iter().flatten().find(|d| d.join("vmlinuz").is_file() && d.join("initrd.img").is_file())
}

/// Stops the VMs and removes the network whatever happens to the test.
struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = cerana_cluster::down(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn three_nodes_bootstrap_bios_pxe_and_uefi_pxe_all_reach_node_ready() {
    let root = std::fs::read_to_string("/proc/self/status").unwrap_or_default().lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let qemu = std::process::Command::new("qemu-system-x86_64").arg("--version").output().is_ok();
    let Some(image) = image_dir() else {
        eprintln!("SKIP: no built image (make image, or CERANA_IMAGE_DIR=dir with vmlinuz and initrd.img)");
        return;
    };
    if !root || !qemu || !Path::new(cerana_cluster::OVMF).exists() {
        eprintln!("SKIP: needs root, qemu-system-x86_64 and {}", cerana_cluster::OVMF);
        return;
    }
    let state = std::env::temp_dir().join(format!("cerana-cluster-test-{}", std::process::id()));
    // Copies: the image may be rebuilt while the test runs.
    std::fs::create_dir_all(state.join("image")).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(image.join(f), state.join("image").join(f)).unwrap();
    }
    let _down = Down(state.clone());
    let layout = Layout {
        netns: format!("cerana-ct{}", std::process::id()),
        host_if: "cerana-ct0".into(),
        subnet: "10.98.0".into(),
        nodes: 3,
        uefi_nodes: vec![3],
        memory_mb: 1024,
        image_dir: state.join("image"),
        state_dir: state.clone(),
    };
    let start = Instant::now();
    let cluster = Cluster::up(layout).expect("cluster up");
    cluster.wait_ready([1], Duration::from_secs(180)).expect("node 1");
    eprintln!("node 1 (bootstrap) ready after {:.1} s", start.elapsed().as_secs_f64());
    cluster.start_pxe_nodes().unwrap();
    for (node, after) in cluster.wait_ready([2, 3], Duration::from_secs(300)).expect("PXE nodes") {
        eprintln!("node {node} ready {:.1} s after it started", after.as_secs_f64());
    }
    let machines = cluster.bootserver_get("/machines").expect("node 1's /machines");
    eprintln!("boot-machines on node 1: {machines}");
    for node in [2, 3] {
        let mac = cluster.layout.mac(node);
        let events = cluster.bootserver_get(&format!("/events?mac={mac}")).expect("events");
        let kinds: Vec<&str> = events["events"].as_array().into_iter().flatten().filter_map(|e| e["event"].as_str()).collect();
        eprintln!("node {node} ({mac}) timeline: {kinds:?}");
        let mut at = 0;
        for want in ["dhcp_discover", "dhcp_ack", "http_script", "http_kernel", "http_initrd"] {
            at += kinds[at..].iter().position(|k| *k == want).unwrap_or_else(|| panic!("node {node}: {want} missing or out of order in {kinds:?}"));
        }
        // The script gave the node its lease as cerana.mgmt_ip, and init configured it.
        let ip = machines["machines"].as_array().into_iter().flatten().find(|m| m["mac"] == mac.as_str()).and_then(|m| m["ip"].as_str()).unwrap_or_else(|| panic!("node {node} has no lease in {machines}"));
        let console = std::fs::read_to_string(cluster.layout.console(node)).unwrap_or_default();
        assert!(console.lines().any(|l| l.starts_with("CERANA-EVENT ") && l.contains("network_configured") && l.contains(&format!("\"{ip}/24\""))), "node {node} did not configure its leased address {ip}");
        if cluster.layout.uefi_nodes.contains(&node) {
            assert!(kinds.contains(&"tftp_file"), "UEFI node {node} fetched snponly.efi by TFTP: {kinds:?}");
        }
    }
    eprintln!("cluster test: {:.1} s", start.elapsed().as_secs_f64());
}
