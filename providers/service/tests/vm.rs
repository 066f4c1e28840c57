//! The service provider on a booted CeranaOS node with a real ZFS pool (`make test-service-vm`;
//! without `CERANA_IMAGE_DIR` it fails under `make test`, skips elsewhere): a service runs on a clone of a dataset, restarts on a
//! fresh clone, and is removed cleanly, its clone destroyed; a service still running when the
//! node powers off is stopped by the provider on its way down, so the node boots again (same
//! disk) with no clone left on the pool.
//!
//! The dataset is filled by a first service: an overlay over the node's /bin (busybox) with the
//! dataset's mountpoint bind-mounted in, which copies busybox into it.

use cerana_testbed::{default_log_dir, image_dir, require_ok, Vm, VmConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const TASK_TIMEOUT: Duration = Duration::from_secs(120);

struct Node {
    vm: Vm,
}

impl Node {
    /// The response object of a task: `Ok(result)` or `Err(error)`.
    fn run(&self, task: &str, args: Value) -> Result<Value, Value> {
        let request = json!({ "task": task, "args": args, "timeout_ms": TASK_TIMEOUT.as_millis() as u64 });
        self.vm.call(&request, TASK_TIMEOUT).map(|v| v["result"].clone()).map_err(|e| e.error)
    }

    fn ok(&self, task: &str, args: Value) -> Value {
        self.vm.ok(task, args)
    }

    fn exists(&self, name: &str) -> bool {
        self.ok("zfs-exists", json!({ "name": name }))["exists"].as_bool().unwrap()
    }

    fn logs(&self, id: &str) -> Vec<(u64, String)> {
        let r = self.ok("service-logs", json!({ "id": id, "bundle_id": "vm" }));
        r["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["run"].as_u64().unwrap(), l["line"].as_str().unwrap().to_owned()))
            .collect()
    }

    fn wait_for_line(&self, id: &str, run: u64, want: &str) -> Vec<(u64, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let logs = self.logs(id);
            if logs.iter().any(|(r, l)| *r == run && l == want) {
                return logs;
            }
            assert!(Instant::now() < deadline, "no {want:?} from run {run} of {id}: {logs:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[test]
fn a_service_runs_on_a_fresh_zfs_clone_on_every_start_and_is_removed_cleanly() {
    let image = require_ok!(image_dir());
    // A disk file of our own (kept between the two boots of this node, removed at the end).
    let disk = std::env::temp_dir().join(format!("cerana-service-vm-{}.img", std::process::id()));
    let _disk = RemoveOnDrop(disk.clone());
    std::fs::File::create(&disk).and_then(|f| f.set_len(1 << 30)).unwrap();
    let boot = || {
        let mut config = VmConfig::direct("service-zfs", &image, default_log_dir());
        config.disk_files = vec![disk.clone()];
        config.uuid = Some("5e41ce00-0000-4000-8000-000000000001".into());
        if let cerana_testbed::Boot::Direct { cmdline, .. } = &mut config.boot {
            *cmdline = "cerana.zfs_config=auto".into();
        }
        let mut vm = Vm::boot(&config).unwrap();
        vm.wait_for_event("node_ready", BOOT_TIMEOUT).unwrap();
        Node { vm }
    };
    let node = boot();

    // The image dataset, filled with busybox by a seeding service.
    node.ok("zfs-create", json!({ "name": "data/datasets/img" }));
    let seed = "/busybox mkdir -p /mnt/img/bin && /busybox cp /busybox /mnt/img/bin/busybox && \
                for a in sh sleep touch echo; do /busybox ln -s busybox /mnt/img/bin/$a; done && /busybox echo seeded";
    node.ok(
        "service-create",
        json!({
            "id": "seed", "bundle_id": "vm", "dataset": "/bin", "rootfs": "overlay",
            "cmd": ["/busybox", "sh", "-c", seed],
            "mounts": [{ "source": "/data/datasets/img", "destination": "/mnt/img" }],
            "restart": { "mode": "never" },
        }),
    );
    node.wait_for_line("seed", 0, "seeded");
    node.ok("service-remove", json!({ "id": "seed", "bundle_id": "vm" }));
    node.ok("zfs-snapshot", json!({ "name": "data/datasets/img", "snapname": "v1" }));

    let script = "[ -e /marker ] && echo marker-seen; touch /marker; echo running; exec sleep 600";
    let info = node.ok(
        "service-create",
        json!({
            "id": "web", "bundle_id": "vm", "dataset": "data/datasets/img@v1",
            "cmd": ["/bin/sh", "-c", script], "limits": { "memory": 67108864, "processes": 32 },
        }),
    );
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["clone"], "data/running-clones/vm.web", "{info}");
    let clone = node.ok("zfs-get", json!({ "name": "data/running-clones/vm.web" }));
    assert_eq!(clone["dataset"]["origin"], "data/datasets/img@v1", "{clone}");
    node.wait_for_line("web", 0, "running");

    let restarted = node.ok("service-restart", json!({ "id": "web", "bundle_id": "vm" }));
    assert_eq!(
        (restarted["state"].as_str(), restarted["restarts"].as_u64()),
        (Some("running"), Some(1)),
        "{restarted}"
    );
    let logs = node.wait_for_line("web", 1, "running");
    assert!(!logs.iter().any(|(_, l)| l == "marker-seen"), "run 1 saw run 0's file: the clone was not fresh: {logs:?}");
    assert!(node.exists("data/running-clones/vm.web"));

    node.ok("service-remove", json!({ "id": "web", "bundle_id": "vm" }));
    assert!(!node.exists("data/running-clones/vm.web"), "the clone outlived its service");
    assert!(node.exists("data/datasets/img@v1"), "the given snapshot is not the provider's to destroy");
    let err = node.run("service-get", json!({ "id": "web", "bundle_id": "vm" })).unwrap_err();
    assert_eq!(
        (err["code"].as_str(), err["details"]["reason"].as_str()),
        (Some("not_found"), Some("not-found")),
        "{err}"
    );
    let err = node
        .run(
            "service-create",
            json!({ "id": "x", "bundle_id": "vm", "dataset": "data/datasets/none@v1", "cmd": ["/bin/sh"] }),
        )
        .unwrap_err();
    assert_eq!(err["details"]["reason"], "dataset-missing", "{err}");
    let listed = node.ok("zfs-list", json!({ "name": "data/running-clones" }));
    let clones: Vec<&str> = listed["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .filter(|n| n.starts_with("data/running-clones/"))
        .collect();
    assert!(clones.is_empty(), "clones left: {clones:?}");

    // Still running at poweroff: the provider's shutdown stops it and destroys its clone.
    node.ok(
        "service-create",
        json!({ "id": "left", "bundle_id": "vm", "dataset": "data/datasets/img@v1", "cmd": ["/bin/sleep", "600"] }),
    );
    assert!(node.exists("data/running-clones/vm.left"));
    let mut vm = node.vm;
    assert!(vm.powerdown(Duration::from_secs(120)).unwrap().success());
    let console = std::fs::read_to_string(vm.log_path()).unwrap_or_default();
    assert!(
        console.contains("init: service: stopped (exited with status 0)"),
        "the service provider did not stop cleanly; log {}",
        vm.log_path().display()
    );
    drop(vm);
    let node = boot();
    assert!(node.exists("data/datasets/img@v1"), "the pool came back");
    assert!(!node.exists("data/running-clones/vm.left"), "a clone outlived the node's shutdown");
    let mut vm = node.vm;
    let _ = vm.powerdown(Duration::from_secs(120));
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
