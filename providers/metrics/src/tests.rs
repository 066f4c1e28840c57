use super::*;
use std::net::{IpAddr, Ipv4Addr};

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn source(&self) -> Source {
        Source::at(self.dir.path(), self.dir.path().join("cgroup/services"), fixture_addresses)
    }
}

fn fixture_addresses() -> io::Result<Vec<(String, InterfaceAddress)>> {
    Ok(vec![("eth0".into(), InterfaceAddress { address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), prefix_len: 24 })])
}

/// A node-like fixture: proc files, one interface in sysfs, a mount of the tree itself.
fn node_tree() -> Tree {
    let tree = Tree::new();
    tree.write("proc/stat", "cpu  100 0 50 1000 0 0 0 0\ncpu0 100 0 50 1000 0 0 0 0\nbtime 1700000000\n");
    tree.write("proc/cpuinfo", "processor\t: 0\nmodel name\t: Fixture CPU\n");
    tree.write("proc/loadavg", "0.01 0.02 0.03 1/10 99\n");
    tree.write("proc/uptime", "42.5 80.0\n");
    tree.write("proc/meminfo", "MemTotal: 2048 kB\nMemFree: 1024 kB\nMemAvailable: 1536 kB\n");
    tree.write("proc/sys/kernel/hostname", "node-1\n");
    tree.write("proc/sys/kernel/osrelease", "6.1.0-fixture\n");
    tree.write("proc/sys/kernel/version", "#1 SMP\n");
    tree.write("proc/1/stat", "1 (init) S 0 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 5 100 10 0\n");
    tree.write("proc/77/stat", "77 (x) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 5 100 10 0\n");
    tree.write("etc/os-release", "PRETTY_NAME=\"CeranaOS\"\n");
    tree.write("etc/machine-id", "abc123\n");
    tree.write("proc/self/mounts", "rootfs / rootfs rw 0 0\ntmpfs / tmpfs rw 0 0\nproc /proc proc rw 0 0\n");
    tree.write("proc/diskstats", "253 0 vda 10 0 80 1 0 0 0 0 0 2 3 0 0 0 0\n");
    tree.write(
        "proc/net/dev",
        "h\nh\n    lo: 1 2 0 0 0 0 0 0 1 2 0 0 0 0 0 0\n  eth0: 100 3 0 0 0 0 0 0 200 4 0 0 0 0 0 0\n",
    );
    for (name, index, flags, mac) in
        [("lo", "1", "0x9", "00:00:00:00:00:00"), ("eth0", "2", "0x1003", "52:54:00:12:34:56")]
    {
        tree.write(&format!("sys/class/net/{name}/ifindex"), index);
        tree.write(&format!("sys/class/net/{name}/flags"), flags);
        tree.write(&format!("sys/class/net/{name}/address"), mac);
        tree.write(&format!("sys/class/net/{name}/mtu"), "1500\n");
        tree.write(&format!("sys/class/net/{name}/operstate"), "up\n");
    }
    tree
}

fn service_cgroup(tree: &Tree, id: &str) {
    let dir = format!("cgroup/services/{id}");
    tree.write(&format!("{dir}/cgroup.procs"), "77\n");
    tree.write(&format!("{dir}/cpu.stat"), "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n");
    tree.write(&format!("{dir}/memory.current"), "1048576\n");
    tree.write(&format!("{dir}/memory.peak"), "2097152\n");
    tree.write(&format!("{dir}/memory.max"), "max\n");
    tree.write(&format!("{dir}/memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
    tree.write(&format!("{dir}/pids.current"), "4\n");
    tree.write(&format!("{dir}/pids.max"), "64\n");
    tree.write(&format!("{dir}/io.stat"), "253:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n");
}

#[test]
fn every_task_reads_its_fixture() {
    let tree = node_tree();
    let source = tree.source();
    let cpu = source.cpu().unwrap();
    assert_eq!(cpu.info.model, "Fixture CPU");
    assert_eq!(cpu.times.len(), 2);
    assert_eq!(cpu.load.load_5m, 0.02);
    let memory = source.memory().unwrap();
    assert_eq!(memory.memory.available_bytes, 1536 * 1024);
    let disk = source.disk(DiskArgs::default()).unwrap();
    assert_eq!(disk.filesystems.len(), 1, "proc and the hidden rootfs are left out: {disk:?}");
    assert_eq!((disk.filesystems[0].mountpoint.as_str(), disk.filesystems[0].fstype.as_str()), ("/", "tmpfs"));
    assert!(disk.filesystems[0].usage.as_ref().unwrap().total_bytes > 0, "statvfs of the fixture root");
    assert_eq!(source.disk(DiskArgs { all: true }).unwrap().filesystems.len(), 2);
    assert_eq!(disk.io[0].read_bytes, 80 * 512);
    let network = source.network().unwrap();
    let eth0 = &network.interfaces[1];
    assert_eq!((eth0.name.as_str(), eth0.index, eth0.up, eth0.loopback), ("eth0", 2, true, false));
    assert_eq!(eth0.mac.as_deref(), Some("52:54:00:12:34:56"));
    assert_eq!(eth0.addresses[0].prefix_len, 24);
    assert_eq!(eth0.counters.tx_bytes, 200);
    assert!(network.interfaces[0].loopback && network.interfaces[0].mac.is_none());
    let host = source.host().unwrap();
    assert_eq!(host.hostname, "node-1");
    assert_eq!(host.os.as_deref(), Some("CeranaOS"));
    assert_eq!(host.machine_id.as_deref(), Some("abc123"));
    assert_eq!((host.boot_time, host.uptime_seconds, host.processes), (1_700_000_000, 42.5, 2));
}

#[test]
fn a_missing_or_malformed_file_is_named() {
    let tree = node_tree();
    tree.write("proc/meminfo", "MemTotal: lots kB\n");
    let err = tree.source().memory().unwrap_err();
    assert!(err.to_string().contains("proc/meminfo") && err.to_string().contains("MemTotal"), "{err}");
    let task_error = TaskError::from(err);
    assert_eq!(task_error.code, ErrorCode::Failed);
    assert!(task_error.details.unwrap()["path"].as_str().unwrap().ends_with("proc/meminfo"));
    std::fs::remove_file(tree.dir.path().join("proc/loadavg")).unwrap();
    assert!(tree.source().cpu().unwrap_err().to_string().contains("proc/loadavg"));
    std::fs::remove_file(tree.dir.path().join("proc/diskstats")).unwrap();
    assert!(tree.source().disk(DiskArgs::default()).unwrap().io.is_empty(), "no diskstats is no I/O");
}

#[test]
fn service_usage_comes_from_the_cgroup_files() {
    let tree = node_tree();
    let source = tree.source();
    assert!(source.services().unwrap().is_empty(), "no services cgroup yet is no services");
    service_cgroup(&tree, "web");
    // A service whose cgroup has no controllers enabled: only cgroup.procs.
    tree.write("cgroup/services/bare/cgroup.procs", "");
    let usage = source.service("web").unwrap();
    assert_eq!(usage.cpu_seconds, 2.5);
    assert_eq!(usage.cpu_system_seconds, 0.5);
    assert_eq!((usage.memory_bytes, usage.memory_peak_bytes, usage.memory_limit_bytes), (1 << 20, Some(2 << 20), None));
    assert_eq!((usage.pids, usage.pids_limit, usage.oom_kills), (4, Some(64), 1));
    assert_eq!((usage.io_read_bytes, usage.io_written_bytes), (4096, 8192));
    let bare = source.service("bare").unwrap();
    assert_eq!((bare.memory_bytes, bare.memory_limit_bytes, bare.cpu_seconds), (0, None, 0.0));
    let all = source.services().unwrap();
    assert_eq!(all.iter().map(|s| s.service.as_str()).collect::<Vec<_>>(), ["bare", "web"]);

    let missing = TaskError::from(source.service("db").unwrap_err());
    assert_eq!(missing.code, ErrorCode::NotFound);
    let bad = TaskError::from(source.service("../etc").unwrap_err());
    assert_eq!(bad.code, ErrorCode::InvalidArgs);
    tree.write("cgroup/services/web/memory.max", "lots\n");
    assert!(source.service("web").unwrap_err().to_string().contains("memory.max"));
}

#[test]
fn the_exposition_has_node_and_service_families_and_survives_a_bad_part() {
    let tree = node_tree();
    service_cgroup(&tree, "web");
    let text = tree.source().prometheus();
    for needle in [
        "cerana_node_cpu_seconds_total{cpu=\"cpu0\",mode=\"user\"} 1\n",
        "cerana_node_memory_total_bytes 2097152\n",
        "cerana_node_filesystem_size_bytes{device=\"tmpfs\",mountpoint=\"/\",fstype=\"tmpfs\"}",
        "cerana_node_network_receive_bytes_total{interface=\"eth0\"} 100\n",
        "cerana_node_info{hostname=\"node-1\"",
        "cerana_service_memory_bytes{service=\"web\"} 1048576\n",
        "cerana_service_pids_limit{service=\"web\"} 64\n",
        "cerana_service_oom_kills_total{service=\"web\"} 1\n",
        "cerana_node_scrape_errors{part=\"cpu\"} 0\n",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    assert!(!text.contains("cerana_service_memory_limit_bytes{"), "an unlimited service has no limit sample");
    std::fs::remove_file(tree.dir.path().join("proc/meminfo")).unwrap();
    let text = tree.source().prometheus();
    assert!(text.contains("cerana_node_scrape_errors{part=\"memory\"} 1\n"));
    assert!(!text.contains("cerana_node_memory_total_bytes"));
    assert!(text.contains("cerana_node_load1 0.01\n"), "the other parts are still there");
}

#[test]
fn the_live_system_reads() {
    let source = Source::system();
    let cpu = source.cpu().unwrap();
    assert!(cpu.info.logical_cpus >= 1 && cpu.times.len() > 1);
    assert!(source.memory().unwrap().memory.total_bytes > 0);
    let disk = source.disk(DiskArgs::default()).unwrap();
    assert!(disk.filesystems.iter().any(|f| f.mountpoint == "/" && f.usage.is_some()), "{disk:?}");
    let network = source.network().unwrap();
    let lo = network.interfaces.iter().find(|i| i.name == "lo").expect("lo");
    assert!(lo.loopback && lo.addresses.iter().any(|a| a.address.is_loopback()), "{lo:?}");
    assert!(source.host().unwrap().processes > 1);
}
