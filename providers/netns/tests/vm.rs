//! On a booted CeranaOS node (QEMU): the netns provider runs under init, builds two namespaces
//! with a veth and addresses, and applies, lists and removes bundle firewalls with the image's
//! own `nft` and kernel modules. `make test-netns-vm` builds the image and sets
//! CERANA_IMAGE_DIR; without it the test says so and skips. Everything happens inside the guest.

use cerana_testbed::http::post_json;
use cerana_testbed::{default_log_dir, Vm, VmConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const TASK_TIMEOUT: Duration = Duration::from_secs(120);

fn image_dir() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("CERANA_IMAGE_DIR").map(PathBuf::from) else {
        eprintln!("skipping: CERANA_IMAGE_DIR is not set (`make test-netns-vm` builds the image and sets it)");
        return None;
    };
    assert!(dir.join("vmlinuz").exists() && dir.join("initrd.img").exists(), "{} has no image", dir.display());
    Some(dir)
}

/// Runs a task; `Ok(result)` or `Err((code, reason, message))`.
fn run(vm: &Vm, task: &str, args: Value) -> Result<Value, (String, String, String)> {
    let body = json!({ "task": task, "args": args }).to_string();
    let started = Instant::now();
    let response = loop {
        match post_json(vm.api_addr().expect("API forwarded"), "/v1/tasks", vm.token(), body.as_bytes(), TASK_TIMEOUT) {
            Ok(r) => break r,
            Err(e) if started.elapsed() < TASK_TIMEOUT => {
                eprintln!("{task}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("{task}: {e}"),
        }
    };
    let value: Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{task}: not JSON ({e}): {}", String::from_utf8_lossy(&response.body)));
    eprintln!("{task} -> {} in {:.2} s", response.status, started.elapsed().as_secs_f64());
    match value.get("error").filter(|e| !e.is_null()) {
        None if response.status == 200 => Ok(value["result"].clone()),
        error => {
            let e = error.cloned().unwrap_or(Value::Null);
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            Err((text(&e["code"]), text(&e["details"]["reason"]), text(&e["message"])))
        }
    }
}

fn ok(vm: &Vm, task: &str, args: Value) -> Value {
    run(vm, task, args.clone())
        .unwrap_or_else(|e| panic!("{task} {args} failed: {e:?}; console {}", vm.log_path().display()))
}

fn fails(vm: &Vm, task: &str, args: Value, code: &str, reason: &str) {
    match run(vm, task, args.clone()) {
        Ok(v) => panic!("{task} {args} succeeded, expected {code}/{reason}: {v}"),
        Err((c, r, m)) => assert_eq!((c.as_str(), r.as_str()), (code, reason), "{task}: {m}"),
    }
}

#[test]
fn a_node_builds_bundle_networks_and_firewalls() {
    let Some(image) = image_dir() else { return };
    let config = VmConfig::direct("netns", &image, default_log_dir());
    let mut vm = Vm::boot(&config).expect("QEMU starts");
    // The netns service being ready is what this test needs (not every other service's).
    vm.wait_for_text(r#"{"event":"service_ready","service":"netns""#, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));

    for name in ["web", "api"] {
        ok(&vm, "netns-create", json!({ "name": name }));
    }
    let listed = ok(&vm, "netns-list", json!({}));
    assert_eq!(listed["namespaces"].as_array().unwrap().len(), 2, "{listed}");
    let pair = ok(
        &vm,
        "netns-veth-add",
        json!({
        "end": { "name": "web0", "netns": "web" }, "peer": { "name": "api0", "netns": "api" } }),
    );
    assert_eq!(pair["end"]["up"], true, "{pair}");
    ok(&vm, "netns-address-add", json!({ "link": "web0", "netns": "web", "address": "10.50.0.1/24" }));
    ok(&vm, "netns-address-add", json!({ "link": "api0", "netns": "api", "address": "10.50.0.2/24" }));
    fails(
        &vm,
        "netns-address-add",
        json!({ "link": "web0", "netns": "web", "address": "10.50.0.9/16" }),
        "already_exists",
        "address-overlap",
    );
    fails(
        &vm,
        "netns-veth-add",
        json!({
        "end": { "name": "web-0123456789ab", "netns": "web" }, "peer": { "name": "x", "netns": "api" } }),
        "name_too_long",
        "link-name-too-long",
    );

    ok(&vm, "firewall-apply", json!({ "bundle": "api", "netns": "api" }));
    let firewall = ok(
        &vm,
        "firewall-apply",
        json!({ "bundle": "web", "netns": "web", "ports": [
        { "port": 5432, "connected_bundles": ["api"] }, { "port": 443, "public": true } ] }),
    );
    assert_eq!(firewall["policy"], "drop", "{firewall}");
    let rules = firewall["rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["kind"] == "connected" && r["sources"] == json!(["10.50.0.2"])), "{firewall}");
    assert!(rules.iter().any(|r| r["kind"] == "public" && r["port"] == 443), "{firewall}");
    fails(
        &vm,
        "firewall-apply",
        json!({ "bundle": "db", "netns": "api", "ports": [
        { "port": 1, "connected_bundles": ["nobody"] } ] }),
        "not_found",
        "unknown-bundle",
    );
    let all = ok(&vm, "firewall-list", json!({}));
    assert_eq!(all["firewalls"].as_array().unwrap().len(), 2, "{all}");
    fails(&vm, "firewall-remove", json!({ "bundle": "api" }), "busy", "bundle-referenced");
    for bundle in ["web", "api"] {
        ok(&vm, "firewall-remove", json!({ "bundle": bundle }));
    }
    for name in ["web", "api"] {
        ok(&vm, "netns-delete", json!({ "name": name }));
    }
    fails(&vm, "netns-delete", json!({ "name": "web" }), "not_found", "netns-not-found");

    let status = vm.powerdown(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exit status {status}");
}
