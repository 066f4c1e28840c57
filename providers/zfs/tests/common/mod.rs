//! Booting CeranaOS guests for the zfs VM tests and benchmark, and talking to their API.

#![allow(dead_code)]

use cerana_testbed::http::{post_json, request};
use cerana_testbed::{default_log_dir, Vm, VmConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The word that enables the provider's test-only tasks (src/testing.rs).
pub const TEST_TASKS: &str = "cerana_zfs.test_tasks=1";
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
pub const LONG: Duration = Duration::from_secs(900);

pub use cerana_testbed::TaskFailure as Failure;

pub struct Node {
    pub vm: Vm,
    pub name: String,
}

/// A sparse raw disk file of `bytes`.
pub fn disk_file(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
}

impl Node {
    /// Boots the image with `disks` new disks, `files` kept disk files, a fixed machine UUID,
    /// and `cmdline`, then waits for node_ready.
    pub fn boot(image: &Path, name: &str, disks: &[u64], files: &[PathBuf], uuid: &str, cmdline: &str) -> Node {
        let mut config = VmConfig::direct(name, image, default_log_dir());
        config.disks = disks.to_vec();
        config.disk_files = files.to_vec();
        config.uuid = Some(uuid.into());
        if let cerana_testbed::Boot::Direct { cmdline: extra, .. } = &mut config.boot {
            *extra = format!("{cmdline} {TEST_TASKS}");
        }
        let started = Instant::now();
        let mut vm = Vm::boot(&config).unwrap();
        vm.wait_for_event("node_ready", BOOT_TIMEOUT).unwrap();
        eprintln!(
            "[{name}] node_ready after {:.1} s (console: {})",
            started.elapsed().as_secs_f64(),
            vm.log_path().display()
        );
        Node { vm, name: name.into() }
    }

    /// Runs a task, optionally with an input stream; returns the whole response object.
    pub fn request(&self, task: &str, args: Value, stream: Option<&str>) -> Result<Value, Failure> {
        let mut body = json!({ "task": task, "args": args, "timeout_ms": LONG.as_millis() as u64 });
        if let Some(id) = stream {
            body["stream"] = json!({ "id": id });
        }
        eprint!("[{}] {args} ", self.name, args = body["args"]);
        self.vm.call(&body, LONG)
    }

    /// Runs a task that must succeed; returns its result.
    pub fn ok(&self, task: &str, args: Value) -> Value {
        match self.request(task, args.clone(), None) {
            Ok(v) => v["result"].clone(),
            Err(e) => panic!("[{}] {task} {args} failed: {e}", self.name),
        }
    }

    /// Runs a task that must fail with `code` and ZFS reason `reason`.
    pub fn fails(&self, task: &str, args: Value, code: &str, reason: Option<&str>) -> Failure {
        match self.request(task, args.clone(), None) {
            Ok(v) => panic!("[{}] {task} {args} succeeded, expected {code}/{reason:?}: {v}", self.name),
            Err(e) => {
                assert_eq!(
                    (e.code.as_str(), e.reason.as_deref()),
                    (code, reason),
                    "[{}] {task} {args}: {e}",
                    self.name
                );
                e
            }
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        self.ok("zfs-exists", json!({ "name": name }))["exists"].as_bool().unwrap()
    }

    /// Reads a stream off the node (`GET /v1/streams/{id}`).
    pub fn read_stream(&self, id: &str) -> Vec<u8> {
        let addr = self.vm.api_addr().unwrap();
        let r = request(addr, "GET", &format!("/v1/streams/{id}"), Some(self.vm.token()), b"", LONG).unwrap();
        assert_eq!(r.status, 200, "GET stream {id}: {}", String::from_utf8_lossy(&r.body));
        r.body
    }

    /// Runs `task` with `bytes` as its input stream, uploaded from the host.
    pub fn request_with_upload(&self, task: &str, args: Value, bytes: Vec<u8>) -> Result<Value, Failure> {
        let id = cerana_protocol::StreamId::random().to_string();
        let addr = self.vm.api_addr().unwrap();
        let token = self.vm.token().to_owned();
        let path = format!("/v1/streams/{id}");
        let upload = std::thread::spawn(move || post_json(addr, &path, &token, &bytes, LONG).map(|r| r.status));
        let result = self.request(task, args, Some(&id));
        let upload_status = upload.join().unwrap();
        eprintln!("[{}] upload for {task}: {upload_status:?}", self.name);
        result
    }

    pub fn powerdown(mut self) {
        let status = self.vm.powerdown(Duration::from_secs(180)).unwrap();
        eprintln!("[{}] powered off ({status})", self.name);
        let events = self.vm.events();
        assert!(events.iter().any(|e| e.name() == "shutdown_complete"), "[{}] no shutdown_complete", self.name);
    }
}
