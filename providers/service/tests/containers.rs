//! Services in real containers on this host (root): PID 1, limits, OOM kill and restart with
//! backoff, logs, a fresh root filesystem per start, a named network namespace reached over a
//! veth, and every bad input with nothing left behind.
//!
//! Root filesystem: busybox-static from scripts/test-rootfs.sh (or $CERANA_SERVICE_TEST_ROOTFS),
//! used as the lower layer of an overlay (`rootfs: overlay`, there being no ZFS pool here).

use cerana_protocol::tasks::service::{BindMount, CreateArgs, LogsArgs, ServiceErrorReason, ServiceInfo, ServiceState};
use cerana_service::cgroup::Layout;
use cerana_service::definition::ServiceKey;
use cerana_service::rootfs::ZfsTasks;
use cerana_service::{Config, Services};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Host {
    services: Services,
    run_dir: tempfile::TempDir,
    rootfs: PathBuf,
}

/// No host: the test fails under `make test`, skips elsewhere.
fn skip(why: &str) -> Option<Host> {
    cerana_testbed::require::missing("containers", why);
    None
}

/// The test host, or None (printing why) when it cannot run containers.
fn host() -> Option<Host> {
    if !nix::unistd::geteuid().is_root() {
        return skip("not root: containers need root");
    }
    let missing = Layout::detect().missing_controllers();
    if !missing.is_empty() {
        return skip(&format!("cgroup controllers missing: {missing:?}"));
    }
    let rootfs = match std::env::var_os("CERANA_SERVICE_TEST_ROOTFS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-rootfs.sh");
            let out = Command::new(&script).output().expect("run test-rootfs.sh");
            if !out.status.success() {
                return skip(&format!("no busybox-static root filesystem: {}", String::from_utf8_lossy(&out.stderr)));
            }
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        }
    };
    let run_dir = tempfile::Builder::new().prefix("cerana-service-test").tempdir_in("/run").unwrap();
    let config = Config {
        run_dir: run_dir.path().to_owned(),
        shim_exe: PathBuf::from(env!("CARGO_BIN_EXE_cerana-service")),
        stop_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let services = Services::new(config, Arc::new(ZfsTasks::default()));
    Some(Host { services, run_dir, rootfs })
}

impl Host {
    fn args(&self, id: &str, script: &str) -> CreateArgs {
        let mut args: CreateArgs = serde_json::from_value(serde_json::json!({
            "id": id, "bundle_id": "test", "dataset": self.rootfs, "rootfs": "overlay",
            "cmd": ["/bin/sh", "-c", script],
        }))
        .unwrap();
        args.restart.delay_ms = 100;
        args.restart.max_delay_ms = 400;
        args
    }

    fn logs(&self, id: &str) -> Vec<(u32, u64, String)> {
        let r =
            self.services.logs(&LogsArgs { id: id.into(), bundle_id: "test".into(), after: 0, tail: None }).unwrap();
        r.lines.into_iter().map(|l| (l.run, l.time_ms, l.line)).collect()
    }

    async fn wait_for_log(&self, id: &str, want: &str, within: Duration) -> Vec<(u32, u64, String)> {
        let deadline = Instant::now() + within;
        loop {
            let logs = self.logs(id);
            if logs.iter().any(|(_, _, l)| l.contains(want)) {
                return logs;
            }
            assert!(Instant::now() < deadline, "no {want:?} in the logs of {id} within {within:?}: {logs:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn get(&self, id: &str) -> ServiceInfo {
        self.services.get_info(&ServiceKey::new("test", id).unwrap()).unwrap()
    }

    async fn remove(&self, id: &str) {
        self.services.remove(&ServiceKey::new("test", id).unwrap()).await.unwrap();
    }

    /// Nothing of `id` is left: its directory, libcontainer state, overlay mount, cgroup.
    fn assert_nothing_left(&self, id: &str, cgroup: &str) {
        let name = format!("test.{id}");
        assert!(!self.run_dir.path().join("services").join(&name).exists(), "service dir of {id} left");
        assert!(!self.run_dir.path().join("containers").join(&name).exists(), "container state of {id} left");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&format!("/{name}/")), "a mount of {id} left");
        for controller in ["memory", "pids", "cpu"] {
            let dir = Layout::detect().controller_dir(controller, cgroup);
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
    }
}

impl Drop for Host {
    /// A failed test leaves its services running: their shims stop the containers when this
    /// thread ends (PDEATHSIG); the overlays are this process's to unmount.
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.run_dir.path().display().to_string();
        for target in mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|t| t.starts_with(&prefix)) {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn cgroup_file(controller: &str, cgroup: &str, v1: &str, v2: &str) -> String {
    let layout = Layout::detect();
    let file = if layout == Layout::Unified { v2 } else { v1 };
    let dir = layout.controller_dir(controller, cgroup);
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
        .trim()
        .to_owned()
}

fn reason(e: &cerana_service::ServiceError) -> ServiceErrorReason {
    e.reason()
}

#[tokio::test]
async fn a_service_runs_as_pid_1_with_its_limits_and_its_output_is_kept() {
    let Some(h) = host() else { return };
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("hello.txt"), "from-the-host\n").unwrap();
    let mut args = h.args(
        "limits",
        "echo pid=$$; cat /srv/in/hello.txt; touch /srv/in/x 2>/dev/null || echo read-only; echo to-stderr >&2; exec sleep 600",
    );
    args.mounts =
        vec![BindMount { source: shared.path().display().to_string(), destination: "/srv/in".into(), read_only: true }];
    args.limits.cpu = Some(500);
    args.limits.memory = Some(64 << 20);
    args.limits.processes = Some(32);
    let info = h.services.create(&args).await.unwrap();
    assert_eq!(info.state, ServiceState::Running);
    let pid = info.pid.unwrap();
    let logs = h.wait_for_log("limits", "to-stderr", Duration::from_secs(5)).await;
    for want in ["pid=1", "from-the-host", "read-only"] {
        assert!(logs.iter().any(|(_, _, l)| l == want), "no {want:?} in {logs:?}");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.ends_with("\t1"), "not PID 1 in its namespace: {nspid}");
    let proc_cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(proc_cgroups.contains(&format!("/{}", info.cgroup.trim_start_matches('/'))), "{proc_cgroups}");
    assert_eq!(cgroup_file("memory", &info.cgroup, "memory.limit_in_bytes", "memory.max"), "67108864");
    assert_eq!(cgroup_file("pids", &info.cgroup, "pids.max", "pids.max"), "32");
    if Layout::detect() == Layout::Unified {
        assert_eq!(cgroup_file("cpu", &info.cgroup, "", "cpu.max"), "50000 100000");
    } else {
        assert_eq!(cgroup_file("cpu", &info.cgroup, "cpu.cfs_quota_us", ""), "50000");
    }
    let listed = h.services.list(Some("test"));
    assert!(listed.iter().any(|s| s.id == "limits" && s.pid == Some(pid)));
    assert!(h.services.list(Some("other")).is_empty());
    h.remove("limits").await;
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "PID {pid} outlived its service");
    h.assert_nothing_left("limits", &info.cgroup);
    let gone = h.services.get_info(&ServiceKey::new("test", "limits").unwrap()).unwrap_err();
    assert_eq!(reason(&gone), ServiceErrorReason::NotFound);
}

#[tokio::test]
async fn a_memory_hog_is_oom_killed_and_restarted_with_backoff() {
    let Some(h) = host() else { return };
    let mut args = h.args("hog", "echo run; tail /dev/zero");
    args.limits.memory = Some(16 << 20);
    let info = h.services.create(&args).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let now = loop {
        let now = h.get("hog");
        if now.restarts >= 3 {
            break now;
        }
        assert!(Instant::now() < deadline, "fewer than 3 restarts in 30 s: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exit = now.last_exit.unwrap();
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    // Each run printed "run"; the gaps between runs grow with the backoff (100, 200, 400 ms).
    let logs = h.wait_for_log("hog", "run", Duration::from_secs(5)).await;
    let mut starts: Vec<(u32, u64)> = logs.iter().filter(|(_, _, l)| l == "run").map(|(r, t, _)| (*r, *t)).collect();
    starts.dedup_by_key(|(r, _)| *r);
    assert!(starts.len() >= 4, "{logs:?}");
    for (i, pair) in starts.windows(2).take(3).enumerate() {
        let gap = pair[1].1 - pair[0].1;
        let backoff = 100u64 << i;
        assert!(gap >= backoff, "run {} started {gap} ms after run {}, backoff {backoff} ms", pair[1].0, pair[0].0);
    }
    h.remove("hog").await;
    h.assert_nothing_left("hog", &info.cgroup);
}

#[tokio::test]
async fn every_start_gets_a_fresh_root_filesystem() {
    let Some(h) = host() else { return };
    let args = h.args("fresh", "[ -e /marker ] && echo marker-seen; touch /marker; echo wrote; exec sleep 600");
    h.services.create(&args).await.unwrap();
    h.wait_for_log("fresh", "wrote", Duration::from_secs(5)).await;
    let restarted = h.services.restart(&ServiceKey::new("test", "fresh").unwrap()).await.unwrap();
    assert_eq!((restarted.state, restarted.restarts), (ServiceState::Running, 1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !h.logs("fresh").iter().any(|(run, _, l)| *run == 1 && l == "wrote") {
        assert!(Instant::now() < deadline, "{:?}", h.logs("fresh"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!h.logs("fresh").iter().any(|(_, _, l)| l == "marker-seen"), "the second run saw the first run's file");
    assert!(!h.rootfs.join("marker").exists(), "the lower directory was written to");
    h.remove("fresh").await;
}

/// Network namespaces made with `ip`, deleted on drop (also when the test fails).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_service_in_a_named_netns_is_reachable_over_a_veth() {
    let Some(h) = host() else { return };
    cerana_testbed::require!(cerana_testbed::require::missing_program(&["ip"]));
    let tag = std::process::id() % 100_000;
    let (svc_ns, client_ns) = (format!("cst{tag}svc"), format!("cst{tag}cli"));
    let namespaces = Namespaces(vec![svc_ns.clone(), client_ns.clone()]);
    for ns in &namespaces.0 {
        ip(&["netns", "add", ns]);
    }
    let (veth_svc, veth_cli) = (format!("cst{tag}s"), format!("cst{tag}c"));
    ip(&["link", "add", &veth_svc, "netns", &svc_ns, "type", "veth", "peer", "name", &veth_cli, "netns", &client_ns]);
    ip(&["-n", &svc_ns, "addr", "add", "10.250.7.1/24", "dev", &veth_svc]);
    ip(&["-n", &client_ns, "addr", "add", "10.250.7.2/24", "dev", &veth_cli]);
    for (ns, dev) in [(&svc_ns, &veth_svc), (&client_ns, &veth_cli)] {
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let mut args = h.args(
        "web",
        "mkdir -p /www && echo hello-from-the-service > /www/index.html && ip -o addr show; exec httpd -f -p 8080 -h /www",
    );
    args.netns = Some(svc_ns.clone());
    h.services.create(&args).await.unwrap();
    let logs = h.wait_for_log("web", "10.250.7.1", Duration::from_secs(5)).await;
    assert!(logs.iter().any(|(_, _, l)| l.contains(&veth_svc)), "{logs:?}");
    // The client: busybox-static's nc speaking HTTP/1.0 (its wget crashes in name lookup on
    // some hosts, being static).
    let busybox = h.rootfs.join("bin/busybox").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let mut nc = Command::new("ip")
            .args(["netns", "exec", &client_ns, &busybox, "nc", "-w", "2", "10.250.7.1", "8080"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run nc");
        use std::io::Write;
        let _ = nc.stdin.take().unwrap().write_all(b"GET / HTTP/1.0\r\n\r\n");
        let out = nc.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("200 OK") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "service not reachable ({}): {} {text}; its logs: {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            h.logs("web")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.trim_end().ends_with("hello-from-the-service"), "{body}");
    h.remove("web").await;
    drop(namespaces);
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_leaves_nothing_behind() {
    let Some(h) = host() else { return };
    let cgroup = |id: &str| Layout::detect().container_path(&format!("test.{id}"));
    let expect = |id: &str, result: Result<ServiceInfo, cerana_service::ServiceError>, want: ServiceErrorReason| {
        let err = result.expect_err(&format!("{id}: created"));
        assert_eq!(reason(&err), want, "{id}: {err}");
        h.assert_nothing_left(id, &cgroup(id));
        assert!(h.services.get_info(&ServiceKey::new("test", id).unwrap()).is_err(), "{id} is listed");
        err.to_string()
    };

    let args = h.args("nobin", "true");
    let mut args = CreateArgs { cmd: vec!["/bin/no-such-program".into()], ..args };
    let msg = expect("nobin", h.services.create(&args).await, ServiceErrorReason::BinaryMissing);
    assert!(msg.contains("/bin/no-such-program"), "{msg}");
    args.cmd = vec!["no-such-program".into()];
    expect("nobin", h.services.create(&args).await, ServiceErrorReason::BinaryMissing);

    let mut args = h.args("nodata", "true");
    args.dataset = "/nonexistent/rootfs".into();
    expect("nodata", h.services.create(&args).await, ServiceErrorReason::DatasetMissing);
    let mut args = h.args("nodata", "true");
    args.mounts = vec![BindMount { source: "/nonexistent/data".into(), destination: "/data".into(), read_only: false }];
    expect("nodata", h.services.create(&args).await, ServiceErrorReason::DatasetMissing);

    for (cpu, memory, processes) in [(Some(1), None, None), (None, Some(1024), None), (None, None, Some(0))] {
        let mut args = h.args("limit", "true");
        args.limits.cpu = cpu;
        args.limits.memory = memory;
        args.limits.processes = processes;
        expect("limit", h.services.create(&args).await, ServiceErrorReason::LimitOutOfRange);
    }
    let mut args = h.args("limit", "true");
    args.limits.memory = Some(u64::MAX);
    expect("limit", h.services.create(&args).await, ServiceErrorReason::LimitOutOfRange);

    let mut args = h.args("nons", "true");
    args.netns = Some(format!("cst-missing-{}", std::process::id()));
    let msg = expect("nons", h.services.create(&args).await, ServiceErrorReason::NetnsMissing);
    assert!(msg.contains("/run/netns/cst-missing"), "{msg}");

    // Fails inside the runtime, after the overlay is mounted and the shim runs.
    let mut args = h.args("nocwd", "true");
    args.cwd = Some("/no/such/dir".into());
    let msg = expect("nocwd", h.services.create(&args).await, ServiceErrorReason::StartFailed);
    assert!(msg.contains("did not start"), "{msg}");

    let mut args = h.args("bad-id", "true");
    args.id = "a/b".into();
    assert_eq!(reason(&h.services.create(&args).await.unwrap_err()), ServiceErrorReason::InvalidArgument);

    let args = h.args("twice", "exec sleep 600");
    h.services.create(&args).await.unwrap();
    let err = h.services.create(&args).await.unwrap_err();
    assert_eq!(reason(&err), ServiceErrorReason::Exists);
    let replaced = h.services.create(&CreateArgs { overwrite: true, ..args }).await.unwrap();
    assert_eq!(replaced.restarts, 0);
    h.remove("twice").await;
    let err = h.services.remove(&ServiceKey::new("test", "twice").unwrap()).await.unwrap_err();
    assert_eq!(reason(&err), ServiceErrorReason::NotFound);
}
