//! On a booted CeranaOS node (QEMU): the netns provider runs under init, builds two namespaces
//! with a veth and addresses, and applies, lists and removes bundle firewalls with the image's
//! own `nft` and kernel modules. `make test-netns-vm` builds the image and sets
//! CERANA_IMAGE_DIR; without it the test fails under `make test` (skips elsewhere). Everything happens inside the guest.

use cerana_testbed::{default_log_dir, image_dir, require_ok, Vm, VmConfig};
use serde_json::json;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
#[test]
fn a_node_builds_bundle_networks_and_firewalls() {
    let image = require_ok!(image_dir());
    let config = VmConfig::direct("netns", &image, default_log_dir());
    let mut vm = Vm::boot(&config).expect("QEMU starts");
    // The netns service being ready is what this test needs (not every other service's).
    vm.wait_for_text(r#"{"event":"service_ready","service":"netns""#, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));

    for name in ["web", "api"] {
        vm.ok("netns-create", json!({ "name": name }));
    }
    let listed = vm.ok("netns-list", json!({}));
    assert_eq!(listed["namespaces"].as_array().unwrap().len(), 2, "{listed}");
    let pair = vm.ok(
        "netns-veth-add",
        json!({
        "end": { "name": "web0", "netns": "web" }, "peer": { "name": "api0", "netns": "api" } }),
    );
    assert_eq!(pair["end"]["up"], true, "{pair}");
    vm.ok("netns-address-add", json!({ "link": "web0", "netns": "web", "address": "10.50.0.1/24" }));
    vm.ok("netns-address-add", json!({ "link": "api0", "netns": "api", "address": "10.50.0.2/24" }));
    vm.fails(
        "netns-address-add",
        json!({ "link": "web0", "netns": "web", "address": "10.50.0.9/16" }),
        "already_exists",
        Some("address-overlap"),
    );
    vm.fails(
        "netns-veth-add",
        json!({
        "end": { "name": "web-0123456789ab", "netns": "web" }, "peer": { "name": "x", "netns": "api" } }),
        "name_too_long",
        Some("link-name-too-long"),
    );

    vm.ok("firewall-apply", json!({ "bundle": "api", "netns": "api" }));
    let firewall = vm.ok(
        "firewall-apply",
        json!({ "bundle": "web", "netns": "web", "ports": [
        { "port": 5432, "connected_bundles": ["api"] }, { "port": 443, "public": true } ] }),
    );
    assert_eq!(firewall["policy"], "drop", "{firewall}");
    let rules = firewall["rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["kind"] == "connected" && r["sources"] == json!(["10.50.0.2"])), "{firewall}");
    assert!(rules.iter().any(|r| r["kind"] == "public" && r["port"] == 443), "{firewall}");
    vm.fails(
        "firewall-apply",
        json!({ "bundle": "db", "netns": "api", "ports": [
        { "port": 1, "connected_bundles": ["nobody"] } ] }),
        "not_found",
        Some("unknown-bundle"),
    );
    let all = vm.ok("firewall-list", json!({}));
    assert_eq!(all["firewalls"].as_array().unwrap().len(), 2, "{all}");
    vm.fails("firewall-remove", json!({ "bundle": "api" }), "busy", Some("bundle-referenced"));
    for bundle in ["web", "api"] {
        vm.ok("firewall-remove", json!({ "bundle": bundle }));
    }
    for name in ["web", "api"] {
        vm.ok("netns-delete", json!({ "name": name }));
    }
    vm.fails("netns-delete", json!({ "name": "web" }), "not_found", Some("netns-not-found"));

    let status = vm.powerdown(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exit status {status}");
}
