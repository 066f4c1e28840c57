//! The 3-node cluster in QEMU (root, TCG): node 1 boots directly with cerana.cluster_bootstrap,
//! node 2 PXE-boots on BIOS (the NIC's iPXE ROM), node 3 on UEFI (OVMF PXE → snponly.efi →
//! iPXE), all from node 1's bootserver; every node reaches node_ready and node 1's boot events
//! show each PXE node's timeline; then the cluster store's quorum, with a 4th node booted
//! later to replace a voter whose power is cut. Without root, QEMU, OVMF or a built image it fails under `make test` (skips elsewhere).
use cerana_testbed::cluster::{Cluster, Layout};
use cerana_testbed::qemu::{OVMF_BIOS, QEMU_SYSTEM};
use cerana_testbed::require::{is_root, missing_program};
use cerana_testbed::require_ok;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Stops the VMs and removes the network whatever happens to the test.
struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = cerana_testbed::cluster::down(&self.0);
        if std::thread::panicking() {
            // The consoles (nodeN.log) tell what went wrong.
            eprintln!("cluster state kept for inspection: {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The image to boot, or why the test cannot run here.
fn prerequisites() -> Result<PathBuf, String> {
    if !is_root() {
        return Err("needs root (network namespaces, taps)".into());
    }
    if let Some(why) = missing_program(&[QEMU_SYSTEM, "ip", "tar"]) {
        return Err(why);
    }
    if !Path::new(OVMF_BIOS).exists() {
        return Err(format!("needs {OVMF_BIOS} (Debian package ovmf)"));
    }
    cerana_testbed::image_dir()
}

/// A node's `boot-join` one-shot fetched its image from `server` (checked by hash) and checked in.
fn assert_replicated(console: &str, server: &str, node: usize) {
    let joined = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("[boot-join] "))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| panic!("node {node}: no boot-join result on its console"));
    assert_eq!(joined["checked_in"], true, "node {node}: {joined}");
    let cmdline_server = format!("cerana.boot_server=http://{server}/");
    assert!(console.contains(&cmdline_server), "node {node} was booted by {server}");
    assert!(
        joined["image_dir"].as_str().is_some_and(|d| d.ends_with(joined["initrd"].as_str().unwrap_or("?"))),
        "node {node}: {joined}"
    );
}

/// The one-time join token on the last kernel command line of a node's console.
fn join_token_of(console: &str) -> Option<String> {
    let at = console.rfind("cerana.join_token=")? + "cerana.join_token=".len();
    let token: String = console[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    token.starts_with("cerana-join-").then_some(token)
}

/// A 3-node layout named `cerana-<tag><pid>` on `<subnet>.0/24` with a copy of the image (it
/// may be rebuilt while the test runs), and the guard that removes it all.
fn layout_for(tag: &str, subnet: &str, uefi_nodes: Vec<usize>, data_disk_mb: u64, image: &Path) -> (Layout, Down) {
    let state = std::env::temp_dir().join(format!("cerana-{tag}-test-{}", std::process::id()));
    std::fs::create_dir_all(state.join("image")).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(image.join(f), state.join("image").join(f)).unwrap();
    }
    let layout = Layout {
        netns: format!("cerana-{tag}{}", std::process::id()),
        host_if: format!("cerana-{tag}0"),
        subnet: subnet.into(),
        nodes: 3,
        uefi_nodes,
        memory_mb: 1024,
        data_disk_mb,
        image_dir: state.join("image"),
        state_dir: state.clone(),
        bootstrap_args: vec![],
    };
    (layout, Down(state))
}

#[test]
fn three_nodes_bootstrap_bios_pxe_and_uefi_pxe_all_reach_node_ready() {
    let image = require_ok!(prerequisites());
    // With data disks: node 1's cerana.zfs_config=auto reaches the PXE nodes through its scripts.
    let (mut layout, _down) = layout_for("ct", "10.98.0", vec![3], 1024, &image);
    // A 4th node, booted later, to replace a lost voter; a short grace period for that.
    layout.nodes = 4;
    layout.bootstrap_args =
        vec![format!("cerana.etcd_grace={}", QUORUM_GRACE.as_secs()), format!("cerana.tick_ms={}", TICK.as_millis())];
    let start = Instant::now();
    let cluster = Cluster::up(layout).expect("cluster up");
    cluster.wait_ready([1], Duration::from_secs(180)).expect("node 1");
    eprintln!("node 1 (bootstrap) ready after {:.1} s", start.elapsed().as_secs_f64());
    let node1 = cluster.layout.bootstrap_ip();
    let responder = cluster.wait_dhcp_responder(&node1, |r| r == node1, Duration::from_secs(120));
    responder.expect("node 1 answers DHCP");
    eprintln!("node 1 elected the segment's DHCP responder after {:.1} s", start.elapsed().as_secs_f64());
    cluster.start_pxe_node(2).unwrap();
    cluster.start_pxe_node(3).unwrap();
    for (node, after) in cluster.wait_ready([2, 3], Duration::from_secs(300)).expect("PXE nodes") {
        eprintln!("node {node} ready {:.1} s after it started", after.as_secs_f64());
    }
    let machines = cluster.bootserver_get("/machines").expect("node 1's /machines");
    eprintln!("boot-machines on node 1: {machines}");
    for node in [2, 3] {
        let mac = cluster.layout.mac(node);
        let events = cluster.bootserver_get(&format!("/events?mac={mac}")).expect("events");
        let kinds: Vec<&str> =
            events["events"].as_array().into_iter().flatten().filter_map(|e| e["event"].as_str()).collect();
        eprintln!("node {node} ({mac}) timeline: {kinds:?}");
        let mut at = 0;
        for want in ["dhcp_discover", "dhcp_ack", "http_script", "http_kernel", "http_initrd", "checked_in"] {
            at += kinds[at..]
                .iter()
                .position(|k| *k == want)
                .unwrap_or_else(|| panic!("node {node}: {want} missing or out of order in {kinds:?}"));
        }
        // The script gave the node its lease as cerana.mgmt_ip, and init configured it.
        let ip = machines["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mac"] == mac.as_str())
            .and_then(|m| m["ip"].as_str())
            .unwrap_or_else(|| panic!("node {node} has no lease in {machines}"));
        let console = std::fs::read_to_string(cluster.layout.console(node)).unwrap_or_default();
        assert!(
            console.lines().any(|l| l.starts_with("CERANA-EVENT ")
                && l.contains("network_configured")
                && l.contains(&format!("\"{ip}/24\""))),
            "node {node} did not configure its leased address {ip}"
        );
        assert_replicated(&console, &cluster.layout.bootstrap_ip(), node);
        assert!(join_token_of(&console).is_some(), "node {node}'s boot script carried no join token");
        if cluster.layout.uefi_nodes.contains(&node) {
            assert!(kinds.contains(&"tftp_file"), "UEFI node {node} fetched snponly.efi by TFTP: {kinds:?}");
        }
        assert_pool_on_data_disk(&cluster, ip, node);
        inventory_of(&cluster, ip, node);
    }
    assert_pool_on_data_disk(&cluster, &cluster.layout.bootstrap_ip(), 1);
    let ips: Vec<String> = [2, 3].iter().map(|n| cluster.leased_ip(*n).unwrap()).collect();
    replicate_across_nodes(&cluster, &cluster.layout.bootstrap_ip(), &ips[0], &ips[1]);
    no_shared_secret_and_https_only(&cluster, &ips[0]);
    hostile_probes_on_node_1(&cluster);
    quorum_forms_survives_a_reboot_and_replaces_a_lost_voter(
        &cluster,
        [cluster.layout.bootstrap_ip(), ips[0].clone(), ips[1].clone()],
    );
    // Node 3 is off now: the ticks place, replace and collect on nodes 1, 2 and 4.
    let live =
        [1, 2, 4].map(|n| (n, if n == 1 { cluster.layout.bootstrap_ip() } else { cluster.leased_ip(n).unwrap() }));
    let cut = bundles_are_placed_replaced_and_collected(&cluster, &live);
    // Last, as it restarts every daemon of node 1 many times. It measures node 1 alone: the
    // other nodes (and their etcd members) would only compete with it for the host's two cores
    // under TCG. Node 1's etcd, without its quorum then, is restarted with its agent all the same.
    for node in [2, 4].into_iter().filter(|n| *n != cut) {
        cluster.power_off(node).expect("powering off the other nodes");
    }
    kill_every_daemon_under_load(&cluster, kill_rounds());
    eprintln!("cluster test: {:.1} s", start.elapsed().as_secs_f64());
}

/// The grace period the cluster test gives an unreachable voter, set through node 1's command
/// line to the others. Longer than a reboot, which must find its member still there: under TCG
/// on 2 cores node 2's PXE reboot to a running etcd member takes 40 to 62 s, too close to the
/// default 60 s; with KVM it is a few seconds.
const QUORUM_GRACE: Duration = Duration::from_secs(90);

/// The cluster ticks' interval in this test (the default, said explicitly: the scenario's limits
/// are counted in ticks).
const TICK: Duration = Duration::from_secs(5);

/// The services of bundle `pair` on each of `nodes` (those running, by id), read through the
/// node itself.
fn pair_services(cluster: &Cluster, nodes: &[(usize, String)]) -> Vec<(usize, Vec<String>, Vec<String>)> {
    use serde_json::json;
    nodes
        .iter()
        .map(|(n, ip)| {
            let listed = cluster.task(ip, "service-list", json!({ "bundle_id": "pair" }));
            let services = listed.as_ref().map(|l| l["services"].as_array().cloned().unwrap_or_default());
            let services = services.unwrap_or_else(|e| panic!("service-list on node {n}: {e}"));
            let running = services.iter().filter(|s| s["state"] == "running").filter_map(|s| s["id"].as_str());
            let clones = services.iter().filter_map(|s| s["clone"].as_str().map(str::to_owned)).collect();
            (*n, running.map(str::to_owned).collect(), clones)
        })
        .collect()
}

/// The nodes running the whole of bundle `pair` (both services).
fn pair_replicas(cluster: &Cluster, nodes: &[(usize, String)]) -> Vec<usize> {
    let seen = pair_services(cluster, nodes);
    seen.iter().filter(|(_, running, _)| running.len() == 2).map(|(n, _, _)| *n).collect()
}

/// The node leading the cluster ticks, as node `ip` sees it; waits up to `limit` for one.
fn leader_of(cluster: &Cluster, ip: &str, limit: Duration) -> Option<String> {
    let t = Instant::now();
    loop {
        let plan = cluster.task(ip, "ticks-plan", serde_json::json!({}));
        if let Some(leader) = plan.as_ref().ok().and_then(|p| p["leader"].as_str()) {
            return Some(leader.to_owned());
        }
        if t.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Polls where `pair` runs on `nodes` until `done` says so, asserting throughout that it never
/// runs on more than `most`; the time it took.
fn watch_pair(
    cluster: &Cluster,
    nodes: &[(usize, String)],
    most: usize,
    limit: Duration,
    mut done: impl FnMut(&[usize]) -> bool,
) -> Duration {
    let t = Instant::now();
    loop {
        let on = pair_replicas(cluster, nodes);
        assert!(on.len() <= most, "pair runs on more than {most} nodes: {on:?}");
        if done(&on) {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "pair after {limit:?}: {:?}", pair_services(cluster, nodes));
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The journal's runs at or after revision `from` that acted, and whether each action went.
fn acting_runs(cluster: &Cluster, ip: &str, from: u64) -> Vec<serde_json::Value> {
    let history = cluster.task(ip, "ticks-history", serde_json::json!({ "limit": 1000 })).expect("ticks-history");
    let runs = history["runs"].as_array().cloned().unwrap_or_default();
    runs.into_iter()
        .filter(|r| r["revision"].as_u64().unwrap_or(0) >= from)
        .filter(|r| r["actions"].as_array().is_some_and(|a| !a.is_empty()))
        .collect()
}

/// The Cerana Platform's ticks (issue #18) on three live nodes: a busybox root filesystem,
/// tarred on the host, imported with `import-dataset`; a bundle of 2 services with redundancy
/// 2 placed on 2 distinct nodes within 2 acting ticks, the dataset copied to them; one of them
/// cut off the network past its heartbeat TTL, replaced on the third node, then back to exactly
/// 2 replicas by the second tick that reads its report again; the leader's node, running a replica, powered off:
/// leadership moves within the lease TTL, the replica is replaced on the third node (timed), and
/// none runs twice; the bundle's deletion removing its services and clones from every live node
/// (ordered within 2 ticks). Returns the node whose power was cut.
fn bundles_are_placed_replaced_and_collected(cluster: &Cluster, nodes: &[(usize, String); 3]) -> usize {
    use serde_json::json;
    let node1 = nodes[0].1.as_str();
    // Every node reports, and one leads the ticks.
    let t = Instant::now();
    loop {
        let reports = cluster.task(node1, "kv-keys", json!({ "prefix": "/cerana/v1/ticks/reports/" }));
        let plan = cluster.task(node1, "ticks-plan", json!({}));
        let reporting = reports.as_ref().map_or(0, |r| r["keys"].as_array().map_or(0, Vec::len));
        let leader = plan.as_ref().ok().and_then(|p| p["leader"].as_str().map(str::to_owned));
        if reporting == 3 && leader.is_some() {
            eprintln!("ticks: 3 nodes report, {leader:?} leads ({:.1} s)", t.elapsed().as_secs_f64());
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "ticks not running: reports {reports:?}, plan {plan:?}");
        std::thread::sleep(Duration::from_secs(1));
    }

    // A root filesystem made on the host: busybox-static and its applets.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../providers/service/scripts/test-rootfs.sh");
    let out = std::process::Command::new(&script).output().expect("running test-rootfs.sh");
    assert!(out.status.success(), "test-rootfs.sh: {}", String::from_utf8_lossy(&out.stderr));
    let root = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let tar = std::process::Command::new("tar")
        .args(["-C", &root, "--owner=0", "--group=0", "--numeric-owner", "-czf", "-", "."])
        .output()
        .expect("tar");
    assert!(tar.status.success(), "tar: {}", String::from_utf8_lossy(&tar.stderr));
    let t = Instant::now();
    let import = json!({ "task": "import-dataset", "timeout_ms": 600_000,
        "args": { "id": "busybox", "format": "tar", "redundancy": 1, "read_only": true, "quota": 268_435_456 } });
    let imported = cluster.request_with_upload(node1, &import, tar.stdout.clone()).expect("import-dataset");
    let result = &imported["result"];
    assert_eq!(result["snapshot"], "data/datasets/busybox@import", "{imported}");
    eprintln!(
        "ticks: imported a {} byte tar of busybox ({} bytes unpacked) on {} in {:.1} s",
        tar.stdout.len(),
        result["bytes"],
        result["node"],
        t.elapsed().as_secs_f64()
    );

    for service in [
        json!({ "id": "sleeper", "dataset": "busybox", "cmd": ["/bin/sleep", "1000000"], "limits": { "memory": 33_554_432 } }),
        // It ends at once (and is restarted, which the rollout below refuses) unless the bundle's
        // scratch volume is mounted, writable, at /scratch.
        json!({ "id": "ticker", "dataset": "busybox",
                "cmd": ["/bin/sh", "-c", "touch /scratch/up && test -x /scratch/bin/busybox || exit 3; while true; do sleep 1; done"],
                "limits": { "memory": 33_554_432 } }),
    ] {
        cluster.task(node1, "update-service", service).expect("update-service");
    }
    let bundle = json!({ "id": "pair", "redundancy": 2,
        "datasets": { "scratch": { "id": "busybox", "type": "temp_zfs", "quota": 16_777_216 } },
        "services": { "a": { "id": "sleeper" }, "b": { "id": "ticker", "datasets": { "scratch": { "mount_point": "/scratch" } } } } });
    let declared = cluster.task(node1, "update-bundle", bundle).expect("update-bundle");
    let revision = declared["mod_index"].as_u64().expect("mod_index");
    let t = Instant::now();
    let placed = loop {
        let on = pair_replicas(cluster, nodes);
        assert!(on.len() <= 2, "pair runs on more than 2 nodes: {on:?}");
        if on.len() == 2 {
            break on;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "pair not on 2 nodes: {:?}", pair_services(cluster, nodes));
        std::thread::sleep(Duration::from_millis(500));
    };
    let placed_in = t.elapsed();
    // The run that made the second replica is journaled once its actions are done.
    let started_ok = |runs: &[serde_json::Value]| {
        let actions = runs.iter().flat_map(|r| r["actions"].as_array().cloned().unwrap_or_default());
        actions
            .filter(|a| a["outcome"] == "ok" && a["action"].as_str().is_some_and(|x| x.starts_with("+ pair on")))
            .count()
    };
    let journaled = Instant::now();
    let runs = loop {
        let runs = acting_runs(cluster, node1, revision);
        if started_ok(&runs) >= 2 || journaled.elapsed() > TICK * 4 {
            break runs;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(started_ok(&runs), 2, "the starts of pair's replicas in the journal: {runs:#?}");
    eprintln!(
        "ticks: pair runs on nodes {placed:?} {:.1} s after it was declared, in {} acting ticks: {runs:#?}",
        placed_in.as_secs_f64(),
        runs.len()
    );
    assert!(runs.len() <= 2, "placing pair took {} acting ticks", runs.len());
    for (n, ip) in nodes.iter().filter(|(n, _)| placed.contains(n)) {
        let held = cluster.task(ip, "zfs-list", json!({ "name": "data/datasets/busybox", "types": ["snapshot"] }));
        let held = held.unwrap_or_else(|e| panic!("node {n} runs pair without its dataset: {e}"));
        assert_eq!(held["datasets"][0]["name"], "data/datasets/busybox@import", "node {n}: {held}");
        assert_eq!(zfs_under(cluster, ip, "data/scratch/pair."), ["data/scratch/pair.scratch"], "node {n}");
    }
    let plan = cluster.task(nodes[1].1.as_str(), "ticks-plan", json!({})).expect("ticks-plan");
    eprintln!("ticks: the plan through node {} once settled: {plan}", nodes[1].0);
    // The bundle's subnet, and an address for each service of each replica, all different.
    let status = &plan["bundles"][0];
    assert_eq!(status["subnet"], "10.224.0.0/24", "{plan}");
    let addresses = status["addresses"].as_object().cloned().unwrap_or_default();
    let ips: std::collections::BTreeSet<&str> = addresses
        .values()
        .flat_map(|s| s.as_object().into_iter().flatten())
        .filter_map(|(_, ip)| ip.as_str())
        .collect();
    assert_eq!((addresses.len(), ips.len()), (2, 4), "{plan}");

    // A changed definition rolls out one replica at a time: service a is made again with its
    // new command on each node while the other replica keeps running; service b is left alone.
    let on_placed: Vec<(usize, String)> = nodes.iter().filter(|(n, _)| placed.contains(n)).cloned().collect();
    let declared = cluster.task(node1, "get-service", json!({ "id": "sleeper" })).expect("get-service");
    let sleeper = json!({ "id": "sleeper", "dataset": "busybox", "cmd": ["/bin/sleep", "1000001"],
        "limits": { "memory": 33_554_432 }, "mod_index": declared["mod_index"] });
    cluster.task(node1, "update-service", sleeper).expect("update-service");
    let t = Instant::now();
    loop {
        let mut updated = 0;
        let mut serving = 0;
        for (n, ip) in &on_placed {
            let listed = cluster.task(ip, "service-list", json!({ "bundle_id": "pair" }));
            let services = listed.unwrap_or_else(|e| panic!("service-list on node {n}: {e}"))["services"].clone();
            let services = services.as_array().cloned().unwrap_or_default();
            let get = |id: &str| services.iter().find(|s| s["id"] == id).cloned().unwrap_or_default();
            let (a, b) = (get("a"), get("b"));
            assert_eq!(b["restarts"], 0, "node {n}: service b was touched: {b}");
            let b_up = b["uptime_ms"].as_u64().unwrap_or(0);
            assert!(b_up as u128 >= t.elapsed().as_millis(), "node {n}: service b started again: {b}");
            if a["state"] == "running" && b["state"] == "running" {
                serving += 1;
                updated += usize::from(a["cmd"][1] == "1000001");
            }
        }
        assert!(serving >= 1, "no replica of pair serving during the rollout ({:?})", t.elapsed());
        if updated == 2 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "rollout not done: {:?}", pair_services(cluster, nodes));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "ticks: service a's new command rolled out to nodes {placed:?} in {:.1} s, one replica at a time",
        t.elapsed().as_secs_f64()
    );
    bundle_networks_connect_refuse_publish_and_go(cluster, nodes);
    // Where pair runs now: a node whose report lapsed under the network scenario's load (TCG)
    // has its replica moved, so the placement above may be stale (CI saw pair go to node 2).
    let t = Instant::now();
    let placed = loop {
        let on = pair_replicas(cluster, nodes);
        if on.len() == 2 {
            break on;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "pair not on 2 nodes: {:?}", pair_services(cluster, nodes));
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("ticks: pair runs on nodes {placed:?} after the network scenario");

    // A node running it cut off the network (not node 1, the boot server), longer than its
    // heartbeat TTL: replaced on the third node; reconnected, back to exactly 2 replicas.
    let cut = *placed.iter().find(|n| **n != 1).expect("a replica off node 1");
    let spare = nodes.iter().map(|(n, _)| *n).find(|n| !placed.contains(n)).expect("a spare node");
    let others: Vec<(usize, String)> = nodes.iter().filter(|(n, _)| *n != cut).cloned().collect();
    let cut_ip = &nodes.iter().find(|(n, _)| *n == cut).expect("the cut node").1;
    let cut_report = format!("/cerana/v1/ticks/reports/{}", hostname(cluster, cut_ip));
    let created = |cluster: &Cluster| {
        let report = cluster.task(node1, "kv-get", json!({ "key": cut_report }));
        report.as_ref().ok().and_then(|r| r["created"].as_u64())
    };
    let reported_before = created(cluster).expect("the cut node's report");
    cluster.disconnect(cut).expect("disconnect");
    let replaced = watch_pair(cluster, &others, 2, Duration::from_secs(180), |on| on.contains(&spare));
    eprintln!(
        "ticks: node {cut} cut off the network; its replica of pair running on node {spare} {:.1} s later",
        replaced.as_secs_f64()
    );
    cluster.reconnect(cut).expect("reconnect");
    let back = Instant::now();
    // The index at which its report was made again: the ticks that read from there on see it.
    let back_at = loop {
        if let Some(index) = created(cluster).filter(|c| *c > reported_before) {
            break index;
        }
        assert!(back.elapsed() < Duration::from_secs(120), "node {cut} does not report again");
        std::thread::sleep(Duration::from_millis(250));
    };
    let reporting = back.elapsed();
    // Its replica ran on, cut off (nothing told it otherwise): 3 until the ticks see it again,
    // then exactly 2, counted on every node, by the second tick that reads its report. (A tick
    // under TCG can take seconds: the wall-clock limit only bounds the wait.)
    let settled = watch_pair(cluster, nodes, 3, reporting + TICK * 2 + Duration::from_secs(60), |on| {
        on.len() == 2 && !pair_services(cluster, nodes).iter().any(|(_, running, _)| running.len() == 1)
    });
    // The run that removed it is journaled when its actions are done, which may be after the
    // replica is gone.
    let journaled = Instant::now();
    let (since, surplus) = loop {
        let history = cluster.task(node1, "ticks-history", json!({ "limit": 1000 })).expect("ticks-history");
        let mut since: Vec<serde_json::Value> = history["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["revision"].as_u64().unwrap_or(0) >= back_at)
            .collect();
        since.sort_by_key(|r| r["started_ms"].as_u64());
        let surplus = since.iter().position(|r| {
            r["actions"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["action"].as_str().is_some_and(|t| t.starts_with("- pair on") && t.contains("more replicas"))
                })
            })
        });
        if surplus.is_some() || journaled.elapsed() > TICK * 4 {
            break (since, surplus);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        surplus.is_some_and(|i| i < 2),
        "the surplus replica not removed by the 2nd tick after node {cut} reported again (at index {back_at}): \
         {since:#?}"
    );
    eprintln!(
        "ticks: node {cut} reconnected, reporting again after {:.1} s; pair on exactly 2 nodes {:.1} s after \
         reconnecting",
        reporting.as_secs_f64(),
        settled.as_secs_f64()
    );

    // The power cut of the leader's node, one running a replica (not node 1): leadership moves
    // within the lease TTL, the replica is replaced on the third node, none runs twice.
    let names: Vec<(usize, String)> = nodes.iter().map(|(n, ip)| (*n, hostname(cluster, ip))).collect();
    let number = |name: &str| names.iter().find(|(_, h)| h == name).map(|(n, _)| *n);
    let placed = pair_replicas(cluster, nodes);
    let doomed = *placed.iter().find(|n| **n != 1).expect("a replica off node 1");
    let spare = nodes.iter().map(|(n, _)| *n).find(|n| !placed.contains(n)).expect("a spare node");
    // Leadership passes on when the leader's ticks restart (its election key lapses with its
    // lease); a few rounds bring it to the doomed node.
    let mut moves = 0;
    let leader = loop {
        let leader = leader_of(cluster, node1, Duration::from_secs(60)).expect("a leader");
        if number(&leader) == Some(doomed) {
            break leader;
        }
        assert!(moves < 8, "leadership never reached node {doomed} (last {leader})");
        moves += 1;
        let ip = &nodes.iter().find(|(n, _)| Some(*n) == number(&leader)).expect("the leader is a node").1;
        cluster.task(ip, "init-service-restart", json!({ "service": "ticks" })).expect("restarting the leader's ticks");
        let t = Instant::now();
        while leader_of(cluster, node1, Duration::from_secs(60)).as_deref() == Some(leader.as_str()) {
            assert!(t.elapsed() < Duration::from_secs(30), "{leader} still leads after its ticks restarted");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let live: Vec<(usize, String)> = nodes.iter().filter(|(n, _)| *n != doomed).cloned().collect();
    let off = Instant::now();
    cluster.power_off(doomed).expect("power cut");
    let mut moved = None;
    let replaced = watch_pair(cluster, &live, 2, Duration::from_secs(180), |on| {
        if moved.is_none() {
            let now = leader_of(cluster, node1, Duration::ZERO);
            if now.as_ref().is_some_and(|l| *l != leader) {
                moved = Some((off.elapsed(), now.unwrap()));
            }
        }
        on.contains(&spare) && moved.is_some()
    });
    let (moved_after, new_leader) = moved.expect("a new leader");
    // The heartbeat TTL, 3 s, as etcd grants it: at least 1.5 election timeouts (the nodes' 2.5 s).
    let ttl = Duration::from_secs(4);
    eprintln!(
        "ticks: leader {leader} (node {doomed}) powered off; {new_leader} leads {:.1} s later (lease TTL {} s); \
         its replica of pair running on node {spare} {:.1} s after the power cut (goal 20 s under TCG; heartbeat \
         TTL 3 s, tick {} s)",
        moved_after.as_secs_f64(),
        ttl.as_secs(),
        replaced.as_secs_f64(),
        TICK.as_secs()
    );
    // The lease TTL; when the node held etcd's raft leader, an election first (2.5 s timeout,
    // more under TCG) after which the new raft leader renews every lease to its full TTL once
    // (a CI run measured 10.4 s so); and this loop's polling.
    assert!(moved_after < ttl * 2 + Duration::from_secs(6), "leadership took {moved_after:?} to move");

    // Deleted: its services and their clones go from every live node.
    let clones: Vec<(usize, Vec<String>)> =
        pair_services(cluster, &live).into_iter().map(|(n, _, clones)| (n, clones)).collect();
    cluster.task(node1, "delete-bundle", json!({ "id": "pair" })).expect("delete-bundle");
    let t = Instant::now();
    loop {
        let left = pair_services(cluster, &live);
        // The bundle's volumes go after its services, in the same order.
        let scratch: Vec<_> = live.iter().map(|(n, ip)| (*n, zfs_under(cluster, ip, "data/scratch/pair."))).collect();
        if left.iter().all(|(_, running, clones)| running.is_empty() && clones.is_empty())
            && scratch.iter().all(|(_, kept)| kept.is_empty())
        {
            break;
        }
        // Ordered within 2 ticks; the bundle's services then stop together as any does: their
        // PID 1 (sleep, sh) ignores SIGTERM, so SIGKILL after the 5 s stop timeout, and each
        // clone, then each volume, is destroyed once the kernel lets go of its mount (each
        // retried for up to 10 s).
        if t.elapsed() > TICK * 2 + Duration::from_secs(5 + 10 + 10) + Duration::from_secs(30) {
            let (n, ip) = live
                .iter()
                .find(|(n, _)| {
                    left.iter().any(|(m, running, clones)| m == n && !(running.is_empty() && clones.is_empty()))
                        || scratch.iter().any(|(m, kept)| m == n && !kept.is_empty())
                })
                .expect("a node keeps something of pair");
            let log = |service: &str| {
                let logs = cluster.task(ip, "init-service-logs", json!({ "service": service, "lines": 400 }));
                logs.map(|l| l.to_string()).unwrap_or_else(|e| e.to_string())
            };
            panic!(
                "node {n} keeps {left:?}, scratch {scratch:?} (it had {clones:?}); its service provider's log: {}; \
                 its ticks' log: {}",
                log("service"),
                log("ticks")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "ticks: pair's services removed from nodes {:?} in {:.1} s",
        live.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        t.elapsed().as_secs_f64()
    );
    doomed
}

/// The nodes running `bundle` and its services' addresses there, from the plan through `ip`.
fn bundle_addresses(cluster: &Cluster, ip: &str, bundle: &str) -> BTreeMap<String, Vec<String>> {
    let plan = cluster.task(ip, "ticks-plan", serde_json::json!({})).expect("ticks-plan");
    let status = plan["bundles"].as_array().into_iter().flatten().find(|b| b["id"] == bundle).cloned();
    let Some(status) = status else { return BTreeMap::new() };
    let running = status["running_on"].as_object().cloned().unwrap_or_default();
    let addresses = status["addresses"].as_object().cloned().unwrap_or_default();
    addresses
        .iter()
        .filter(|(node, _)| running.get(*node) == Some(&serde_json::Value::Bool(true)))
        .map(|(node, ips)| {
            let ips = ips.as_object().into_iter().flatten().filter_map(|(_, ip)| ip.as_str().map(String::from));
            (node.clone(), ips.collect())
        })
        .collect()
}

/// The subnet of `bundle`, from the plan through `ip`.
fn bundle_subnet(cluster: &Cluster, ip: &str, bundle: &str) -> Option<String> {
    let plan = cluster.task(ip, "ticks-plan", serde_json::json!({})).expect("ticks-plan");
    let status = plan["bundles"].as_array().into_iter().flatten().find(|b| b["id"] == bundle).cloned()?;
    status["subnet"].as_str().map(String::from)
}

/// The last `tail` lines of a bundle's service on node `ip`.
fn service_lines(cluster: &Cluster, ip: &str, bundle: &str, id: &str) -> Vec<String> {
    let logs = cluster.task(ip, "service-logs", serde_json::json!({ "id": id, "bundle_id": bundle, "tail": 200 }));
    let lines = logs.map(|l| l["lines"].as_array().cloned().unwrap_or_default()).unwrap_or_default();
    lines.iter().filter_map(|l| l["line"].as_str().map(String::from)).collect()
}

/// Bundle networks (issue #19) on the three live nodes: `web` (redundancy 2, port 80 public as
/// 18080, connected from `client`), `client` and `other` (redundancy 1 each) probing both web
/// replicas' addresses over HTTP every second: `client` reaches both (at least one on another
/// node, over the management network), `other` reaches neither (web's firewall drops it), and
/// port 18080 of each node running web answers the host. Then all three are deleted and no
/// namespace, link, route, firewall or published port of theirs is left on any node.
fn bundle_networks_connect_refuse_publish_and_go(cluster: &Cluster, nodes: &[(usize, String); 3]) {
    use serde_json::json;
    let node1 = nodes[0].1.as_str();
    let name_of: BTreeMap<String, (usize, String)> =
        nodes.iter().map(|(n, ip)| (hostname(cluster, ip), (*n, ip.clone()))).collect();
    let services = [
        json!({ "id": "httpd", "dataset": "busybox", "limits": { "memory": 33_554_432 },
                "cmd": ["/bin/sh", "-c", "mkdir -p /www && echo web > /www/index.html && exec httpd -f -p 80 -h /www"] }),
        // `reach T` when a TCP connection to T (`ip`, port 80, or `ip:port`) is made, `fail T`
        // when it is refused or times out (busybox's static wget crashes without NSS: nc).
        json!({ "id": "prober", "dataset": "busybox", "limits": { "memory": 33_554_432 },
                "cmd": ["/bin/sh", "-c", "while true; do for t in $TARGETS; do \
                         case $t in *:*) h=${t%:*}; p=${t#*:};; *) h=$t; p=80;; esac; \
                         if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 $h $p >/dev/null 2>&1; \
                         then echo reach $t; else echo fail $t; fi; done; sleep 1; done"] }),
    ];
    for service in services {
        cluster.task(node1, "update-service", service).expect("update-service");
    }
    let prober = |id: &str, targets: &str, index: u64| {
        json!({ "id": id, "redundancy": 1, "mod_index": index,
                "services": { "p": { "id": "prober", "overrides": { "env": { "TARGETS": targets } } } } })
    };
    let mut indexes = BTreeMap::new();
    for id in ["client", "other"] {
        let declared = cluster.task(node1, "update-bundle", prober(id, "", 0)).expect("update-bundle");
        indexes.insert(id, declared["mod_index"].as_u64().expect("mod_index"));
    }
    let web = json!({ "id": "web", "redundancy": 2, "services": { "h": { "id": "httpd" } },
        "ports": { "80": { "public": true, "external_port": 18080, "connected_bundles": ["client"] } } });
    cluster.task(node1, "update-bundle", web).expect("update-bundle web");
    let t = Instant::now();
    let web_on = loop {
        let on = bundle_addresses(cluster, node1, "web");
        if on.len() == 2 && on.values().all(|ips| ips.len() == 1) {
            break on;
        }
        assert!(t.elapsed() < Duration::from_secs(240), "web not on 2 nodes with addresses: {on:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let targets: Vec<String> = web_on.values().flatten().cloned().collect();
    eprintln!("network: web runs at {web_on:?} {:.1} s after it was declared", t.elapsed().as_secs_f64());
    // The client also tries its gateway's coordinator port and node 1's boot server: a bundle
    // reaches bundles only, not its node nor the management network.
    let client_net = bundle_subnet(cluster, node1, "client").expect("client's subnet");
    let gateway = {
        let base: std::net::Ipv4Addr = client_net.split('/').next().unwrap().parse().unwrap();
        std::net::Ipv4Addr::from(u32::from(base) + 1)
    };
    let guarded = [format!("{gateway}:8080"), format!("{node1}:80")];
    let client_targets: Vec<String> = targets.iter().chain(&guarded).cloned().collect();
    for (id, to) in [("client", client_targets.join(" ")), ("other", targets.join(" "))] {
        cluster.task(node1, "update-bundle", prober(id, &to, indexes[id])).expect("update-bundle");
    }

    // The probes, read from each prober's log wherever it runs.
    let t = Instant::now();
    let probes = |bundle: &str| -> (String, Vec<String>) {
        let on = bundle_addresses(cluster, node1, bundle);
        let Some(node) = on.keys().next() else { return (String::new(), vec![]) };
        let (_, ip) = &name_of[node];
        (node.clone(), service_lines(cluster, ip, bundle, "p"))
    };
    let reached = |lines: &[String], ip: &str| lines.iter().any(|l| *l == format!("reach {ip}"));
    let failed = |lines: &[String], ip: &str| lines.iter().filter(|l| **l == format!("fail {ip}")).count();
    let client_on = loop {
        let (on, lines) = probes("client");
        assert!(!guarded.iter().any(|t| reached(&lines, t)), "client, on {on}, reaches its node or beyond: {lines:?}");
        if targets.iter().all(|ip| reached(&lines, ip)) && guarded.iter().all(|t| failed(&lines, t) >= 2) {
            break on;
        }
        assert!(t.elapsed() < Duration::from_secs(180), "client on {on:?} does not reach {targets:?}: {lines:?}");
        std::thread::sleep(Duration::from_secs(1));
    };
    let reach_in = t.elapsed();
    let other_on = loop {
        let (on, lines) = probes("other");
        assert!(!targets.iter().any(|ip| reached(&lines, ip)), "other, on {on}, reaches web: {lines:?}");
        if targets.iter().all(|ip| failed(&lines, ip) >= 3) {
            break on;
        }
        assert!(t.elapsed() < Duration::from_secs(180), "other on {on:?} probes nothing: {lines:?}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        web_on.keys().any(|n| *n != client_on),
        "client ({client_on}) and both web replicas ({web_on:?}) on one node: nothing crossed nodes"
    );
    eprintln!(
        "network: client on {client_on} reaches web at {targets:?} {:.1} s after being told them; not {guarded:?}; other on {other_on} is refused",
        reach_in.as_secs_f64()
    );

    // Port 80 published as 18080 on each node running web, from the host.
    let t = Instant::now();
    for node in web_on.keys() {
        let (n, ip) = &name_of[node];
        loop {
            let addr = format!("{ip}:18080").parse().expect("an address");
            let answer = cerana_testbed::http::request(addr, "GET", "/", None, b"", Duration::from_secs(5));
            match answer {
                Ok(a) if a.status == 200 && String::from_utf8_lossy(&a.body).trim() == "web" => break,
                other => assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "node {n}'s port 18080: {:?}",
                    other.map(|a| (a.status, String::from_utf8_lossy(&a.body).into_owned()))
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("network: port 18080 answers on nodes running web ({:.1} s)", t.elapsed().as_secs_f64());

    // Deleted (web first: it names client): nothing of theirs is left on any node.
    let t = Instant::now();
    for id in ["web", "client", "other"] {
        cluster.task(node1, "delete-bundle", json!({ "id": id })).expect("delete-bundle");
    }
    let gone = ["web", "client", "other"];
    let links: Vec<String> = gone.iter().map(|b| cerana_protocol::tasks::ticks::bundle_link(b)).collect();
    loop {
        // Read again each round, every address the ticks hold for pair (starting replicas too):
        // under load a replica may move (a report lapsed) and its new addresses are routed as
        // they should be.
        let plan = cluster.task(node1, "ticks-plan", json!({})).expect("ticks-plan");
        let status = plan["bundles"].as_array().into_iter().flatten().find(|b| b["id"] == "pair").cloned();
        let pair: Vec<String> = status
            .iter()
            .flat_map(|s| s["addresses"].as_object().cloned().unwrap_or_default())
            .flat_map(|(_, ips)| ips.as_object().cloned().unwrap_or_default())
            .filter_map(|(_, ip)| ip.as_str().map(String::from))
            .collect();
        let mut left = Vec::new();
        for (n, ip) in nodes {
            let namespaces = cluster.task(ip, "netns-list", json!({})).expect("netns-list");
            for ns in namespaces["namespaces"].as_array().into_iter().flatten() {
                let name = ns["name"].as_str().unwrap_or_default();
                if gone.iter().any(|b| name == format!("bundle-{b}")) {
                    left.push(format!("node {n}: namespace {name}"));
                }
            }
            let host = cluster.task(ip, "netns-link-list", json!({})).expect("netns-link-list");
            for link in host["links"].as_array().into_iter().flatten() {
                let name = link["name"].as_str().unwrap_or_default();
                if links.iter().any(|l| l == name) {
                    left.push(format!("node {n}: link {name}"));
                }
            }
            let routes = cluster.task(ip, "netns-route-list", json!({})).expect("netns-route-list");
            for route in routes["routes"].as_array().into_iter().flatten() {
                let dest = route["destination"].as_str().unwrap_or_default();
                let addr = dest.split('/').next().unwrap_or_default();
                if dest.starts_with("10.224.") && !pair.iter().any(|p| p == addr) {
                    left.push(format!("node {n}: route {route}"));
                }
            }
            let firewalls = cluster.task(ip, "firewall-list", json!({})).expect("firewall-list");
            for fw in firewalls["firewalls"].as_array().into_iter().flatten() {
                if gone.iter().any(|b| fw["bundle"] == *b) {
                    left.push(format!("node {n}: firewall of {}", fw["bundle"]));
                }
            }
            let published = cluster.task(ip, "publish-list", json!({})).expect("publish-list");
            for p in published["published"].as_array().into_iter().flatten() {
                left.push(format!("node {n}: published {p}"));
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "left behind: {left:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "network: web, client and other gone without a trace {:.1} s after their deletion",
        t.elapsed().as_secs_f64()
    );
}

/// The datasets on node `ip` whose names start with `prefix` (`parent/…`); none when the parent
/// does not exist.
fn zfs_under(cluster: &Cluster, ip: &str, prefix: &str) -> Vec<String> {
    let parent = prefix.rsplit_once('/').map_or(prefix, |(p, _)| p);
    let listed = match cluster.task(ip, "zfs-list", serde_json::json!({ "name": parent })) {
        Ok(listed) => listed,
        Err(e) if e.to_string().contains("not_found") || e.to_string().contains("does not exist") => return vec![],
        Err(e) => panic!("zfs-list {parent} on {ip}: {e}"),
    };
    let names = listed["datasets"].as_array().cloned().unwrap_or_default();
    names.iter().filter_map(|d| d["name"].as_str()).filter(|n| n.starts_with(prefix)).map(String::from).collect()
}

fn hostname(cluster: &Cluster, ip: &str) -> String {
    let info = cluster.task(ip, "node-info", serde_json::json!({})).expect("node-info");
    info["hostname"].as_str().unwrap_or_else(|| panic!("no hostname in {info}")).to_string()
}

fn member<'a>(members: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    members["members"].as_array().into_iter().flatten().find(|m| m["name"] == name)
}

/// The cluster store (issue #16): nodes 1-3 form 3 voters by themselves; a value set through
/// node 3 reads back through node 1; node 2 rebooted on its disks rejoins as the same member
/// while writes go on; node 4 boots as a client, and when node 3 loses power node 4 replaces
/// it as a voter within the grace period plus 30 s.
fn quorum_forms_survives_a_reboot_and_replaces_a_lost_voter(cluster: &Cluster, ips: [String; 3]) {
    use serde_json::json;
    let node1 = ips[0].as_str();
    let t = Instant::now();
    let members = cluster.wait_quorum(node1, 3, Duration::from_secs(240)).expect("3 voters");
    eprintln!("quorum: 3 healthy voters ({:.1} s after the nodes were ready): {members}", t.elapsed().as_secs_f64());
    let names: Vec<String> = ips.iter().map(|ip| hostname(cluster, ip)).collect();
    for (name, ip) in names.iter().zip(&ips) {
        let m = member(&members, name).unwrap_or_else(|| panic!("{name} is not a member: {members}"));
        assert_eq!(m["peer_urls"][0], format!("https://{ip}:2380"), "{m}");
        assert_eq!(m["voter"], true, "{m}");
    }
    // Mutual TLS with certificates from the cluster CA: nodes 2 and 3 got theirs at their
    // check-in with node 1's boot server (their timelines say so), and a client without one
    // gets nothing from a member.
    let events = cluster.task(node1, "boot-events", json!({})).expect("boot-events on node 1");
    for name in &names[1..] {
        let issued = events["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["event"] == "certificate_issued" && e["name"] == name.as_str());
        assert!(issued, "no certificate_issued for {name} in node 1's boot events: {events}");
    }
    for ip in &ips {
        let member: std::net::SocketAddr = format!("{ip}:2379").parse().unwrap();
        let plain = cerana_testbed::http::request(member, "GET", "/version", None, b"", Duration::from_secs(10));
        if let Ok(answer) = &plain {
            let body = String::from_utf8_lossy(&answer.body);
            assert!(!body.contains("etcdserver"), "plain HTTP to {member} was answered: {} {body}", answer.status);
        }
        eprintln!("quorum: plain HTTP to {member} refused: {:?}", plain.map(|a| a.status));
    }

    cluster
        .task(&ips[2], "kv-set", json!({"key": "/test/quorum", "value": "set on node 3"}))
        .expect("kv-set on node 3");
    let got = cluster.task(node1, "kv-get", json!({"key": "/test/quorum"})).expect("kv-get on node 1");
    assert_eq!(got["value"], "set on node 3", "{got}");
    scoped_tokens_work_on_every_node(cluster, &ips);

    // Node 2 reboots on the same disks while node 1 takes writes all along.
    let id2 = member(&members, &names[1]).map(|m| m["id"].clone()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (written, failures) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let (mut written, mut failures) = (0u32, Vec::new());
            for i in 0..2000u32 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match cluster.task(node1, "kv-set", json!({"key": "/test/during-reboot", "value": i.to_string()})) {
                    Ok(_) => written += 1,
                    Err(e) => failures.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (written, failures)
        });
        // However this ends (a failed assertion too), the writer stops with it.
        struct StopWriter<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopWriter<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let stop_writer = StopWriter(&stop);
        let rebooted = Instant::now();
        cluster.power_off(2).expect("node 2 off");
        cluster.start_pxe_node(2).expect("node 2 on");
        cluster.wait_ready([2], Duration::from_secs(300)).expect("node 2 back");
        let back = cluster.wait_quorum(node1, 3, Duration::from_secs(120)).expect("3 voters after node 2's reboot");
        let m2 = member(&back, &names[1]).unwrap_or_else(|| panic!("node 2 is no longer a member: {back}"));
        if m2["id"] != id2 {
            let plan = cluster.task(node1, "kv-get", json!({"key": "/cerana/v1/quorum/plan"}));
            let console = std::fs::read_to_string(cluster.layout.console(2)).unwrap_or_default();
            let agent: Vec<&str> =
                console.lines().filter(|l| l.contains("[quorum]") || l.contains("[boot-join]")).collect();
            panic!(
                "node 2 came back as another member ({} s after its power was cut): {back}\nleader's plan: {plan:?}\n\
                 node 2's agent:\n{}",
                rebooted.elapsed().as_secs(),
                agent.join("\n")
            );
        }
        eprintln!("quorum: node 2 rebooted and back as the same member in {:.1} s", rebooted.elapsed().as_secs_f64());
        drop(stop_writer);
        writer.join().unwrap()
    });
    eprintln!("quorum: {written} writes through node 1 during node 2's reboot, {} failed", failures.len());
    assert!(written > 0 && failures.is_empty(), "the quorum was lost during node 2's reboot: {failures:#?}");

    // Node 4 boots as a client: 3 voters already.
    cluster.start_pxe_node(4).expect("node 4");
    cluster.wait_ready([4], Duration::from_secs(300)).expect("node 4 ready");
    let ip4 = cluster.leased_ip(4).unwrap();
    let name4 = hostname(cluster, &ip4);
    // Its agent finds the voters within a few rounds of its start (until then: unavailable).
    let t4 = Instant::now();
    let got = loop {
        match cluster.task(&ip4, "kv-get", json!({"key": "/test/quorum"})) {
            Ok(got) => break got,
            Err(e) if e.to_string().contains("unavailable") && t4.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("kv-get through client node 4: {e}"),
        }
    };
    eprintln!("quorum: client node 4 reached the store {:.1} s after node_ready", t4.elapsed().as_secs_f64());
    assert_eq!(got["value"], "set on node 3", "{got}");
    let members = cluster.task(node1, "kv-members", json!({})).unwrap();
    assert!(member(&members, &name4).is_none(), "node 4 stays a client while there are 3 voters: {members}");

    // Node 3 loses power: node 4 takes its place.
    let off = Instant::now();
    cluster.power_off(3).expect("node 3 off");
    let limit = QUORUM_GRACE + Duration::from_secs(30);
    let replaced = loop {
        let members = cluster.task(node1, "kv-members", json!({}));
        if let Ok(list) = &members {
            let voters: Vec<&str> = list["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["voter"] == true && m["healthy"] == true)
                .filter_map(|m| m["name"].as_str())
                .collect();
            let all = list["members"].as_array().map_or(0, Vec::len);
            if all == 3 && voters.len() == 3 && voters.contains(&name4.as_str()) {
                break off.elapsed();
            }
        }
        assert!(
            off.elapsed() < limit,
            "node 3's voter not replaced by node 4 within {} s (grace {} s + 30 s); kv-members: {members:?}",
            limit.as_secs(),
            QUORUM_GRACE.as_secs()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "quorum: node 3's voter replaced by node 4 in {:.1} s after its power was cut (grace {} s, limit {} s)",
        replaced.as_secs_f64(),
        QUORUM_GRACE.as_secs(),
        limit.as_secs()
    );
    let got = cluster.task(&ip4, "kv-get", json!({"key": "/test/quorum"})).expect("kv-get on node 4");
    assert_eq!(got["value"], "set on node 3", "{got}");
}

/// A dataset snapshotted on `source` is sent there by a task forwarded from `via`, and
/// received on `target`, whose coordinator pulls the stream from `source`'s.
fn replicate_across_nodes(cluster: &Cluster, via: &str, source: &str, target: &str) {
    use serde_json::json;
    // Over mutual TLS: each coordinator presents its node's certificate to the other.
    let node = |ip: &str| format!("https://{ip}:8080");
    // A coordinator forwards only to members: the nodes' entries in the cluster store, which
    // each node's agent writes once it reaches the store (seconds after node_ready).
    for (from, to) in [(via, source), (via, target), (target, source)] {
        let t = Instant::now();
        loop {
            let response = cluster.request(from, &json!({ "task": "node-info", "node": node(to) })).unwrap();
            if response.get("result").is_some() {
                eprintln!("{from} forwards to member {to} ({:.1} s)", t.elapsed().as_secs_f64());
                break;
            }
            assert_eq!(response["error"]["code"], "permission_denied", "{from} -> {to}: {response}");
            assert!(t.elapsed() < Duration::from_secs(60), "{to} never became a member for {from}: {response}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let on = |ip: &str, task: &str, args: serde_json::Value| {
        let response = cluster.request(via, &json!({ "task": task, "args": args, "node": node(ip) })).unwrap();
        assert!(response.get("result").is_some(), "{task} on {ip}: {response}");
        response
    };
    on(source, "zfs-create", json!({ "name": "data/replicated", "properties": { "compression": "lz4" } }));
    on(source, "zfs-snapshot", json!({ "name": "data/replicated", "snapname": "s" }));
    let sent = on(source, "zfs-send", json!({ "name": "data/replicated@s" }));
    let stream = sent["stream"].clone();
    assert_eq!(stream["node"], node(source), "the stream names the node it lives on: {sent}");
    let received = cluster
        .request(target, &json!({ "task": "zfs-receive", "args": { "name": "data/replicated" }, "stream": stream }))
        .unwrap();
    let bytes = received["result"]["bytes"].as_u64().unwrap_or_else(|| panic!("zfs-receive on {target}: {received}"));
    assert!(bytes > 0, "{received}");
    let copy = on(target, "zfs-list", json!({ "name": "data/replicated", "types": ["snapshot"] }));
    let names: Vec<&str> =
        copy["result"]["datasets"].as_array().into_iter().flatten().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["data/replicated@s"], "{copy}");
    eprintln!("replicated data/replicated@s from {source} to {target}: {bytes} stream bytes");
}

/// A read token minted on node 1 works on node 2 within a few agent rounds, for read tasks
/// only, and stops working there once revoked on node 3.
fn scoped_tokens_work_on_every_node(cluster: &Cluster, ips: &[String; 3]) {
    use serde_json::json;
    let created = cluster
        .task(&ips[0], "auth-token-create", json!({"role": "read", "ttl_seconds": 600, "description": "vm test"}))
        .expect("auth-token-create on node 1");
    let token = created["token"].as_str().expect("a token").to_owned();
    let id = created["id"].as_str().expect("an id").to_owned();
    // The minting result is never kept in the journal.
    let journal = cluster.task(&ips[0], "coordinator-history", json!({"task": "auth-token-create"})).unwrap();
    assert!(!journal.to_string().contains(&token), "the journal kept the secret: {journal}");
    let node_info = json!({"task": "node-info"});
    let t = Instant::now();
    loop {
        let response = cluster.request_as(&ips[1], &token, &node_info).unwrap();
        if response.get("result").is_some() {
            eprintln!("tokens: read token {id} works on node 2 {:.1} s after it was minted", t.elapsed().as_secs_f64());
            break;
        }
        assert_eq!(response["error"]["code"], "unauthenticated", "{response}");
        assert!(t.elapsed() < Duration::from_secs(30), "node 2 never took the token: {response}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let write = json!({"task": "zfs-create", "args": {"name": "data/not-by-a-reader"}});
    let refused = cluster.request_as(&ips[1], &token, &write).unwrap();
    assert_eq!(refused["error"]["code"], "permission_denied", "{refused}");
    let journal = cluster.task(&ips[1], "coordinator-history", json!({"task": "zfs-create", "limit": 5})).unwrap();
    let recorded = journal["entries"].as_array().into_iter().flatten().any(|e| {
        e["caller"].as_str().is_some_and(|c| c.ends_with(&format!("token:{id}")))
            && e["error"]["code"] == "permission_denied"
    });
    assert!(recorded, "node 2's journal does not say who was refused: {journal}");
    cluster.task(&ips[2], "auth-token-revoke", json!({"id": id})).expect("auth-token-revoke on node 3");
    let t = Instant::now();
    loop {
        let response = cluster.request_as(&ips[1], &token, &node_info).unwrap();
        if response["error"]["code"] == "unauthenticated" {
            eprintln!("tokens: revoked on node 3, refused on node 2 {:.1} s later", t.elapsed().as_secs_f64());
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "node 2 still takes the revoked token: {response}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Issue #17: node 2's boot script carried no reusable secret (its join token is spent); its
/// API refuses plain HTTP from the host, HTTPS without a credential, and the cluster's token
/// (node 1's alone); the admin token minted on node 1 works.
fn no_shared_secret_and_https_only(cluster: &Cluster, ip2: &str) {
    let console = std::fs::read_to_string(cluster.layout.console(2)).unwrap_or_default();
    // What iPXE and the kernel show of the script's command line.
    let lines: Vec<&str> = console.lines().filter(|l| l.contains("cerana.join_token=")).collect();
    assert!(!lines.is_empty(), "node 2's console shows no command line with a join token");
    for line in lines {
        assert!(!line.contains("api_token") && !line.contains(&cluster.token), "a reusable secret: {line}");
    }
    let api: std::net::SocketAddr = format!("{ip2}:8080").parse().unwrap();
    let token = Some(cluster.token.as_str());
    let plain = cerana_testbed::http::request(api, "GET", "/v1/providers", token, b"", Duration::from_secs(10))
        .expect("an answer to plain HTTP");
    let text = String::from_utf8_lossy(&plain.body).into_owned();
    assert!(plain.status == 403 && text.contains("HTTPS"), "plain HTTP to node 2: {} {text}", plain.status);
    let tls = cluster.https(Duration::from_secs(10)).unwrap();
    let get = |token: Option<&str>| {
        let answer = cerana_testbed::http::request_over(
            api,
            Some(&tls),
            "GET",
            "/v1/providers",
            token,
            b"",
            Duration::from_secs(10),
        )
        .expect("an HTTPS answer");
        (answer.status, String::from_utf8_lossy(&answer.body).into_owned())
    };
    let (status, text) = get(None);
    assert_eq!(status, 401, "no credential: {text}");
    let (status, text) = get(token);
    assert_eq!(status, 401, "the cluster's token is node 1's alone: {text}");
    let admin = cluster.admin_token().unwrap();
    let (status, text) = get(Some(&admin));
    assert_eq!(status, 200, "the admin token minted on node 1: {text}");
    eprintln!(
        "node 2: plain HTTP refused (403), HTTPS without a credential or with the cluster token 401, admin token 200"
    );
}

/// Self-replication: node 2 boots from node 1, keeps its image, takes DHCP over (with node 1's
/// leases), and node 3 then boots entirely from node 2.
#[test]
fn a_pxe_booted_node_serves_its_image_to_the_next_node() {
    let image = require_ok!(prerequisites());
    let (mut layout, _down) = layout_for("cr", "10.97.0", vec![], 0, &image);
    // A 4th machine PXE-boots once node 1 is off.
    layout.nodes = 4;
    let state = layout.state_dir.clone();
    let start = Instant::now();
    let cluster = Cluster::up(layout).expect("cluster up");
    cluster.wait_ready([1], Duration::from_secs(180)).expect("node 1");
    let node1 = cluster.layout.bootstrap_ip();
    cluster.wait_dhcp_responder(&node1, |r| r == node1, Duration::from_secs(120)).expect("node 1 answers DHCP");
    cluster.start_pxe_node(2).unwrap();
    cluster.wait_ready([2], Duration::from_secs(300)).expect("node 2");
    let node2 = cluster.leased_ip(2).unwrap();
    eprintln!("node 2 ({node2}) ready after {:.1} s", start.elapsed().as_secs_f64());

    // Node 2 already serves the image it booted, with DHCP off.
    let manifest = cluster
        .bootserver_get_at(&node2, &format!("/images/{}/manifest", initrd_hash(&state.join("image/initrd.img"))))
        .expect("node 2 serves its image");
    assert!(manifest["kernel"].as_str().is_some_and(|k| k.starts_with("sha256-")), "{manifest}");
    // DHCP moves: on at node 2 (importing node 1's leases), then off at node 1.
    let on = cluster
        .task(&node2, "boot-dhcp", serde_json::json!({"mode": "full", "import_leases_from": format!("http://{node1}")}))
        .expect("boot-dhcp full on node 2");
    assert_eq!((on["previous"].as_str(), on["mode"].as_str()), (Some("off"), Some("full")), "{on}");
    let off = cluster.task(&node1, "boot-dhcp", serde_json::json!({"mode": "off"})).expect("boot-dhcp off on node 1");
    assert_eq!(off["previous"], "full", "{off}");
    let bad = cluster.task(&node2, "boot-dhcp", serde_json::json!({"mode": "sideways"})).unwrap_err();
    assert!(bad.to_string().contains("invalid_args") || bad.to_string().contains("unknown variant"), "{bad}");

    let third = Instant::now();
    cluster.start_pxe_node(3).unwrap();
    if let Err(e) = cluster.wait_ready([3], Duration::from_secs(300)) {
        let logs = cluster.task(
            &node2,
            "init-service-logs",
            serde_json::json!({"service": "bootserver-replica", "lines": 60}),
        );
        panic!("node 3 did not boot from node 2: {e:?}\nnode 2's boot server: {logs:?}");
    }
    eprintln!("node 3 ready {:.1} s after it started, booted by node 2", third.elapsed().as_secs_f64());
    let mac3 = cluster.layout.mac(3);
    let events = cluster.bootserver_get_at(&node2, &format!("/events?mac={mac3}")).expect("node 2's events");
    let kinds: Vec<&str> =
        events["events"].as_array().into_iter().flatten().filter_map(|e| e["event"].as_str()).collect();
    let mut at = 0;
    for want in ["dhcp_discover", "dhcp_ack", "http_script", "http_kernel", "http_initrd", "checked_in"] {
        at += kinds[at..]
            .iter()
            .position(|k| *k == want)
            .unwrap_or_else(|| panic!("node 3 on node 2: {want} missing or out of order in {kinds:?}"));
    }
    let on_node1 = cluster.bootserver_get(&format!("/events?mac={mac3}")).expect("node 1's events");
    assert!(
        !on_node1["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["event"] == "dhcp_ack" || e["event"] == "http_initrd"),
        "node 1 (DHCP off) must not have booted node 3: {on_node1}"
    );
    let console = std::fs::read_to_string(cluster.layout.console(3)).unwrap_or_default();
    assert_replicated(&console, &node2, 3);
    certified_by_node1_with_node2s_token(&cluster, &console, &node1, &node2);
    let node3 = lease3_on(&cluster, &node2);
    boots_with_node_1_off_and_leases_no_address_twice(&cluster, [&node1, &node2, &node3]);
    eprintln!("self-replication test: {:.1} s", start.elapsed().as_secs_f64());
}

/// Node 3's address, from node 2's `/leases` (node 2 leased it).
fn lease3_on(cluster: &Cluster, node2: &str) -> String {
    let mac3 = cluster.layout.mac(3);
    let leases = cluster.bootserver_get_at(node2, "/leases").expect("node 2's leases");
    let lease3 = leases.as_array().into_iter().flatten().find(|l| l["mac"] == mac3.as_str());
    lease3.and_then(|l| l["ip"].as_str()).unwrap_or_else(|| panic!("node 3 has no lease on node 2: {leases}")).into()
}

/// Issue #19's cluster DHCP: node 1, the elected responder, loses power; another member takes
/// the segment over within the election's TTL, a new machine PXE-boots from it, and every lease
/// in the cluster store names one machine, each machine once.
fn boots_with_node_1_off_and_leases_no_address_twice(cluster: &Cluster, [node1, node2, node3]: [&str; 3]) {
    use serde_json::json;
    // The overrides handed back, node 1 first so that it is the responder to lose.
    for ip in [node2, node3] {
        cluster.task(ip, "boot-dhcp", json!({"mode": "off"})).expect("boot-dhcp off");
    }
    let back = cluster.task(node1, "boot-dhcp", json!({"mode": "cluster"})).expect("boot-dhcp cluster on node 1");
    assert_eq!(back["mode"], "cluster", "{back}");
    // Nodes 2 and 3 resign within a third of the election's TTL; node 1 is the only candidate.
    cluster.wait_dhcp_responder(node1, |r| r == node1, Duration::from_secs(60)).expect("node 1 elected");
    for ip in [node2, node3] {
        cluster.task(ip, "boot-dhcp", json!({"mode": "cluster"})).expect("boot-dhcp cluster");
    }
    // Two voters must remain once node 1 is gone.
    cluster.wait_quorum(node2, 3, Duration::from_secs(180)).expect("3 voters");
    cluster.wait_dhcp_responder(node2, |r| r == node1, Duration::from_secs(10)).expect("node 1 still elected");

    let off = Instant::now();
    cluster.power_off(1).expect("node 1 off");
    let responder =
        cluster.wait_dhcp_responder(node2, |r| r != node1, Duration::from_secs(90)).expect("a new responder");
    eprintln!(
        "cluster DHCP: {responder} took the segment over {:.1} s after node 1 lost power",
        off.elapsed().as_secs_f64()
    );
    assert!([node2, node3].contains(&responder.as_str()), "{responder}");

    let started = Instant::now();
    cluster.start_pxe_node(4).expect("node 4");
    let mac4 = cluster.layout.mac(4);
    let wanted = ["dhcp_discover", "dhcp_ack", "http_script", "http_kernel", "http_initrd", "checked_in"];
    let mut kinds: Vec<String> = Vec::new();
    while started.elapsed() < Duration::from_secs(300) {
        if let Ok(events) = cluster.bootserver_get_at(&responder, &format!("/events?mac={mac4}")) {
            kinds = events["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["event"].as_str().map(str::to_string))
                .collect();
            if kinds.iter().any(|k| k == "checked_in") {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut at = 0;
    for want in wanted {
        match kinds[at..].iter().position(|k| k == want) {
            Some(found) => at += found,
            None => {
                let logs = cluster.task(
                    &responder,
                    "init-service-logs",
                    json!({"service": "bootserver-replica", "lines": 60}),
                );
                panic!("node 4 on {responder}: {want} missing or out of order in {kinds:?}\nits boot server: {logs:?}");
            }
        }
    }
    eprintln!(
        "cluster DHCP: node 4 PXE-booted from {responder} with node 1 off, checked in {:.1} s after it started",
        started.elapsed().as_secs_f64()
    );

    // Every lease in the store: one per address (the key), one per machine, each PXE machine's once.
    let page = cluster
        .task(node2, "kv-getall", json!({"prefix": "/cerana/v1/dhcp/leases/", "limit": 1000}))
        .expect("the leases in the store");
    let leases: Vec<serde_json::Value> = page["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| serde_json::from_str(e["value"].as_str().unwrap_or_default()).expect("a lease record"))
        .collect();
    let mut macs: Vec<&str> = leases.iter().filter_map(|l| l["mac"].as_str()).collect();
    let mut ips: Vec<&str> = leases.iter().filter_map(|l| l["ip"].as_str()).collect();
    assert_eq!((macs.len(), ips.len()), (leases.len(), leases.len()), "{page}");
    macs.sort_unstable();
    macs.dedup();
    ips.sort_unstable();
    ips.dedup();
    assert_eq!((macs.len(), ips.len()), (leases.len(), leases.len()), "a machine or an address twice: {page}");
    for node in [2, 3, 4] {
        let mac = cluster.layout.mac(node);
        assert!(macs.contains(&mac.as_str()), "node {node} ({mac}) has no lease in the store: {page}");
    }
    eprintln!("cluster DHCP: {} leases in the store, each address and machine once", leases.len());
}

/// Issue #17: node 2 (no CA) served node 3's boot script with a one-time join token recorded in
/// the cluster store and sent its check-in to node 1, which holds the CA: node 1 issued node 3's
/// certificate for a token it never minted, spent it there, and a replay is refused as spent.
fn certified_by_node1_with_node2s_token(cluster: &Cluster, console: &str, node1: &str, node2: &str) {
    assert!(console.contains(&format!("cerana.join_server=http://{node1}/")), "node 3 was not sent to node 1");
    let token = join_token_of(console).expect("node 3's boot script from node 2 carried a join token");
    let mac3 = cluster.layout.mac(3);
    let ip3 = lease3_on(cluster, node2);
    let name3 = hostname(cluster, &ip3);
    let events = cluster.bootserver_get(&format!("/events?mac={mac3}")).expect("node 1's events");
    let issued = events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["event"] == "certificate_issued" && e["name"] == name3.as_str());
    assert!(issued, "node 1 issued no certificate to node 3 ({name3}): {events}");
    let key = format!("04{}", "22".repeat(64));
    let body = serde_json::json!({
        "mac": mac3, "uuid": cluster.layout.uuid(3), "hostname": "intruder", "public_key": key, "join_token": token,
    });
    let text = refused_as_spent(&check_in_at(node1.parse().unwrap(), &body), &token);
    eprintln!("node 3: certificate from node 1 for node 2's join token; its replay refused ({text})");
}

/// `POST /checkin` with `body` to the boot server at `server`.
fn check_in_at(server: std::net::Ipv4Addr, body: &serde_json::Value) -> cerana_testbed::http::HttpResponse {
    let server = std::net::SocketAddr::from((server, 80));
    let posted = cerana_testbed::http::request(
        server,
        "POST",
        "/checkin",
        None,
        body.to_string().as_bytes(),
        Duration::from_secs(10),
    );
    posted.expect("checkin answered")
}

/// Asserts a replayed join token's check-in was refused as spent, issuing nothing and not
/// repeating the secret; the refusal's text.
fn refused_as_spent(response: &cerana_testbed::http::HttpResponse, token: &str) -> String {
    let text = String::from_utf8_lossy(&response.body).into_owned();
    assert_eq!(response.status, 403, "{text}");
    assert!(text.contains("already used") && !text.contains("CERTIFICATE"), "{text}");
    assert!(!text.contains(&token[token.len() - 64..]), "the refusal repeats the secret: {text}");
    text
}

/// Opens `n` TCP connections to `server` from `from` and holds them (sending nothing).
fn hold_connections(from: std::net::Ipv4Addr, server: std::net::SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    (0..n)
        .filter_map(|_| {
            let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).ok()?;
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(std::net::SocketAddrV4::new(from, 0))).ok()?;
            let std::net::SocketAddr::V4(v4) = server else { return None };
            connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4)).ok()?;
            Some(std::net::TcpStream::from(fd))
        })
        .collect()
}

/// Whether the server closed `stream` without a byte of answer (a held connection it had taken
/// and then timed out), as opposed to one it answered 503 over its caps or still holds open.
fn dropped_unanswered(stream: &std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut byte = [0u8; 1];
    stream.set_nonblocking(true).is_ok() && matches!((&*stream).read(&mut byte), Ok(0))
}

/// `GET path` from the address `from`, with a deadline; the status line.
fn get_from(from: std::net::Ipv4Addr, server: std::net::SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut held = hold_connections(from, server, 1);
    let mut stream = held.pop().ok_or("no connection")?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

/// Issue #15's probes against a booted node, from the host as an attacker on the management
/// network: connection floods on the coordinator's and the bootserver's ports from one address
/// leave both serving another address, and a check-in carrying terminal escapes is refused.
fn hostile_probes_on_node_1(cluster: &Cluster) {
    use std::net::{Ipv4Addr, SocketAddr};
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if soft < 8192 {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard.min(8192), hard).unwrap();
    }
    let attacker: Ipv4Addr = cluster.layout.host_ip().parse().unwrap();
    // A second host address on the test network plays the other machines.
    let other: Ipv4Addr = format!("{}.250", cluster.layout.subnet).parse().unwrap();
    let added = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{other}/24"), "dev", &cluster.layout.host_if])
        .status()
        .unwrap();
    assert!(added.success(), "adding {other} to {}", cluster.layout.host_if);
    let node1: Ipv4Addr = cluster.layout.bootstrap_ip().parse().unwrap();
    for (port, flood) in [(80u16, 300usize), (8080, 1200)] {
        let server = SocketAddr::from((node1, port));
        let held = hold_connections(attacker, server, flood);
        // The held connections are all open (the caps answer 503 and close, they never make
        // the kernel refuse), and another machine is served at once.
        // The coordinator answers plain HTTP from off the node with 403 (HTTPS only): an
        // answer all the same.
        let served = if port == 8080 { "HTTP/1.1 403" } else { "HTTP/1.1 200" };
        let status = get_from(other, server, "/health").unwrap_or_else(|e| panic!("port {port}: {e}"));
        assert!(status.starts_with(served), "port {port} while {} are held: {status}", held.len());
        let refused = get_from(attacker, server, "/health").unwrap_or_else(|e| e);
        if refused.starts_with(served) {
            // Legitimate only when the server had dropped some of the held connections that it
            // took (no answer, unlike the 503s over the cap): their header timeout (10 s) ran out
            // while a slow guest was still answering the rest of the flood.
            let expired = held.iter().filter(|s| dropped_unanswered(s)).count();
            assert!(expired > 0, "port {port}: the flooding address got a slot more while it held all of its own");
            eprintln!(
                "port {port}: {expired} of the flood's held connections timed out before the probe; a slot was free"
            );
        }
        eprintln!(
            "port {port}: {} connections held from {attacker}; {other} served ({status}); {attacker} told {refused:?}",
            held.len()
        );
    }
    // A check-in whose host name would drive an operator's terminal is refused with a JSON error.
    let check_in = |body: serde_json::Value| check_in_at(node1, &body);
    let response = check_in(
        serde_json::json!({"mac": "52:54:00:c1:00:77", "ip": other.to_string(), "hostname": "evil\u{1b}]0;owned\u{7}"}),
    );
    assert_eq!(response.status, 400, "{}", String::from_utf8_lossy(&response.body));
    let error: serde_json::Value = serde_json::from_slice(&response.body).expect("a JSON error");
    assert!(error["code"].is_string(), "{error}");
    // A machine that did not boot from node 1 asks for a node certificate: refused, recorded.
    let mac = "52:54:00:c1:00:78";
    let key = format!("04{}", "11".repeat(64));
    let response = check_in(
        serde_json::json!({"mac": mac, "ip": attacker.to_string(), "hostname": "intruder", "public_key": key}),
    );
    let text = String::from_utf8_lossy(&response.body);
    assert_eq!(response.status, 403, "{text}");
    assert!(!text.contains("CERTIFICATE"), "{text}");
    let events = cluster.task(&node1.to_string(), "boot-events", serde_json::json!({"mac": mac})).expect("boot-events");
    let refused = events["events"].as_array().into_iter().flatten().any(|e| e["event"] == "certificate_refused");
    assert!(refused, "the refusal is not in the machine's timeline: {events}");
    // Node 2's join token, replayed once node 2 has joined, for another key: refused as spent,
    // and node 2's timeline shows it.
    let console = std::fs::read_to_string(cluster.layout.console(2)).unwrap_or_default();
    let token = join_token_of(&console).expect("node 2's join token on its console");
    let mac2 = cluster.layout.mac(2);
    let response = check_in(serde_json::json!({
        "mac": mac2, "uuid": cluster.layout.uuid(2), "hostname": "intruder", "public_key": key, "join_token": token,
    }));
    let text = refused_as_spent(&response, &token);
    let events =
        cluster.task(&node1.to_string(), "boot-events", serde_json::json!({"mac": mac2})).expect("boot-events");
    let replay_shown = events["events"].as_array().into_iter().flatten().any(|e| {
        e["event"] == "certificate_refused" && e["reason"].as_str().is_some_and(|r| r.contains("already used"))
    });
    assert!(replay_shown, "the replay is not in node 2's timeline: {events}");
    eprintln!("node 2's join token replayed: refused ({text})");
    // Node 1 sends its credentials to members only: a task forwarded to, or a result delivered
    // to, the attacker's listener is refused and the listener sees no connection.
    let listener = std::net::TcpListener::bind((attacker, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let trap = format!("http://{}", listener.local_addr().unwrap());
    let ip1 = node1.to_string();
    for request in [
        serde_json::json!({"task": "node-info", "node": trap}),
        serde_json::json!({"task": "node-info", "reply_to": format!("{trap}/results")}),
    ] {
        let response = cluster.request(&ip1, &request).expect("an answer");
        assert_eq!(response["error"]["code"], "permission_denied", "{request}: {response}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let reached = listener.accept();
    assert!(
        matches!(&reached, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "node 1 connected to the attacker's listener: {reached:?}"
    );
}

/// Kills per daemon in the cluster test; `make bench-kill` asks for more.
fn kill_rounds() -> u32 {
    std::env::var("CERANA_KILL_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

/// How soon a SIGKILLed daemon must be serving again (init's restart delay plus its start):
/// 1 s, at the median and every time, on KVM. Under TCG an emulated CPU's speed follows the
/// host's load: on this 2-core machine the same image's medians were 0.3-0.6 s in one run and
/// 0.6-1.2 s in another an hour later (node 1's boot 31 s, then 39 s), so there the median may
/// be 2 s and a single start 3 s.
const BACK_WITHIN_MS: u64 = 1000;
const TCG_MEDIAN_BACK_MS: u64 = 2000;
const TCG_WORST_BACK_MS: u64 = 3000;

/// Node 1's daemons (coordinator, every provider, the bootserver) are SIGKILLed `rounds` times
/// each while tasks run against its coordinator: each is back within [`BACK_WITHIN_MS`], every
/// task ends with a result or a typed error, and the pool and the bootserver's lease journal
/// come through intact.
fn kill_every_daemon_under_load(cluster: &Cluster, rounds: u32) {
    use cerana_testbed::chaos;
    let ip = cluster.layout.bootstrap_ip();
    let list = cluster.task(&ip, "init-service-list", serde_json::json!({})).expect("init-service-list");
    let daemons: Vec<String> = list["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] == "running" && s["oneshot"] == false && s["name"] != "udevd")
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    for must in
        ["coordinator", "init-provider", "node-info", "metrics", "health", "zfs", "service", "netns", "bootserver"]
    {
        assert!(daemons.iter().any(|d| d == must), "{must} is not running on node 1: {list}");
    }
    let macs = |leases: serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> =
            leases.as_array().into_iter().flatten().filter_map(|l| l["mac"].as_str().map(str::to_string)).collect();
        v.sort();
        v
    };
    let leases_before = macs(cluster.bootserver_get("/leases").expect("leases"));
    let target = chaos::Target {
        coordinator: format!("{ip}:8080").parse().unwrap(),
        tls: Some(cluster.https(Duration::from_secs(10)).expect("the cluster CA")),
        token: cluster.token.clone(),
        console: cluster.layout.console(1),
    };
    let report = chaos::kill_daemons(&target, &daemons, rounds, chaos::default_load()).expect("kill run");
    eprintln!("daemons SIGKILLed {rounds} times each on node 1 under load:\n{}", report.table());
    let (median_allowed, worst_allowed) = match cerana_testbed::Accel::detect() {
        cerana_testbed::Accel::Kvm => (BACK_WITHIN_MS, BACK_WITHIN_MS),
        cerana_testbed::Accel::Tcg => (TCG_MEDIAN_BACK_MS, TCG_WORST_BACK_MS),
    };
    let slow: Vec<String> = daemons
        .iter()
        .filter(|d| {
            let r = &report.recoveries[*d];
            r.kills != rounds || r.median_ms() > median_allowed || r.worst_ms() > worst_allowed
        })
        .map(|d| {
            // What the daemon said last, to see where its start went.
            let logs = cluster.task(&ip, "init-service-logs", serde_json::json!({"service": d, "lines": 15}));
            format!(
                "{d}: {:?}\n{}",
                report.recoveries[d],
                logs.map_or_else(|e| e.to_string(), |l| l["lines"].to_string())
            )
        })
        .collect();
    assert!(
        slow.is_empty(),
        "daemons slow to come back (median > {median_allowed} ms or worst > {worst_allowed} ms):\n{}",
        slow.join("\n")
    );
    assert!(report.load.failures.is_empty(), "tasks lost or hung: {:#?}", report.load.failures);
    assert!(report.load.results > 0, "the load ran: {:?}", report.load);
    // Nothing on disk is corrupt: the pool is healthy with its layout, and the restarted
    // bootserver read its lease journal back whole.
    assert_pool_on_data_disk(cluster, &ip, 1);
    let layout = cluster.task(&ip, "zfs-list", serde_json::json!({"name": "data", "depth": 1})).expect("zfs-list");
    assert!(layout.to_string().contains("data/config"), "{layout}");
    assert_eq!(macs(cluster.bootserver_get("/leases").expect("leases")), leases_before);
}

/// `node-info`'s inventory facts of a PXE node (`cerana inventory`): its NIC with its MAC, its
/// firmware, the initrd it booted, its data disk.
fn inventory_of(cluster: &Cluster, ip: &str, node: usize) {
    let facts = cluster.task(ip, "node-info", serde_json::json!({})).unwrap_or_else(|e| panic!("node {node}: {e}"));
    let mac = cluster.layout.mac(node);
    let nics = facts["nics"].as_array().cloned().unwrap_or_default();
    assert!(nics.iter().any(|n| n["mac"] == mac.as_str() && n["state"] == "up"), "node {node}: {facts}");
    let firmware = if cluster.layout.uefi_nodes.contains(&node) { "uefi" } else { "bios" };
    assert_eq!(facts["firmware"]["kind"], firmware, "node {node}: {facts}");
    assert_eq!(facts["firmware"]["vendor"], "QEMU", "node {node}: {facts}");
    let hash = initrd_hash(&cluster.layout.image_dir.join("initrd.img"));
    assert_eq!(facts["os"]["initrd_hash"], hash.as_str(), "node {node}: {facts}");
    let disk = cluster.layout.data_disk_mb << 20;
    let disks = facts["disks"].as_array().cloned().unwrap_or_default();
    assert!(disks.iter().any(|d| d["size_bytes"] == disk), "node {node}: its {disk}-byte data disk: {facts}");
    eprintln!("node {node} inventory: {} NIC(s), {} disk(s), {firmware}", nics.len(), disks.len());
}

/// The node made its pool `data` on its data disk alone (never on node 1's boot-image disk).
fn assert_pool_on_data_disk(cluster: &Cluster, ip: &str, node: usize) {
    let pool =
        cluster.task(ip, "zfs-pool-status", serde_json::json!({})).unwrap_or_else(|e| panic!("node {node}: {e}"));
    eprintln!("node {node} pool: {pool}");
    assert_eq!(
        (pool["imported"].as_bool(), pool["health"].as_str()),
        (Some(true), Some("ONLINE")),
        "node {node}: {pool}"
    );
    assert_eq!(pool["disks"].as_array().map(Vec::len), Some(1), "node {node}: one data disk: {pool}");
}

/// `sha256-<hex>` of a file, as the bootserver names images.
fn initrd_hash(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().expect("sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    format!("sha256-{}", text.split_whitespace().next().unwrap_or_default())
}
