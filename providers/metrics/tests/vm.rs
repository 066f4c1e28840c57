//! On a booted CeranaOS node (QEMU): init starts the metrics and health providers from the
//! multi-call binary, their tasks answer through the node's API, and `GET /metrics` (with the
//! node's token) parses with every family, the node's included. `make test-observe-vm` builds
//! the image and sets CERANA_IMAGE_DIR; without it the test fails under `make test` (skips elsewhere).

use cerana_protocol::events::LifecycleEvent;
use cerana_testbed::{default_log_dir, image_dir, require_ok, Vm, VmConfig};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);

/// The task's result; panics with the error and where the console log is.
fn result(vm: &Vm, task: &str, args: Value) -> Value {
    vm.ok(task, args)
}

/// A check's status and reason.
fn check(vm: &Vm, task: &str, args: Value) -> (String, Option<String>) {
    let report = result(vm, task, args);
    let text = |v: &Value| v.as_str().map(str::to_owned);
    (text(&report["status"]).unwrap_or_default(), text(&report["reason"]))
}

/// `GET path` on the node's API with its token: the status and the body.
fn get(vm: &Vm, path: &str) -> (u16, String) {
    let addr = vm.api_addr().expect("API forwarded");
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to the API");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        vm.token()
    );
    tcp.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).expect("read the response");
    let response = cerana_testbed::http::parse_response(&raw).expect("an HTTP response");
    (response.status, String::from_utf8(response.body).expect("UTF-8 body"))
}

#[test]
fn metrics_and_health_run_on_a_booted_node() {
    let image = require_ok!(image_dir());
    let mut vm = Vm::boot(&VmConfig::direct("observe", &image, default_log_dir())).expect("QEMU starts");
    // Both providers ready is what this test needs; node_ready (every service) is test-vm's.
    let ready = |service: &str, e: &LifecycleEvent| matches!(e, LifecycleEvent::ServiceReady { service: s, .. } if s == service);
    let both = vm.console().wait(BOOT_TIMEOUT, |state| {
        let up = |name| state.events.iter().any(|e| ready(name, e));
        (up("metrics") && up("health")).then_some(())
    });
    assert!(
        both.is_ok(),
        "metrics and health not ready within {BOOT_TIMEOUT:?}: {both:?}; console {}",
        vm.log_path().display()
    );
    eprintln!(
        "metrics and health ready after {:.1} s; console {}",
        vm.elapsed().as_secs_f64(),
        vm.log_path().display()
    );

    let host = result(&vm, "metrics-host", json!({}));
    assert!(host["boot_time"].as_u64().unwrap() > 0 && host["processes"].as_u64().unwrap() > 5, "{host}");
    let memory = result(&vm, "metrics-memory", json!({}));
    assert!(memory["memory"]["total_bytes"].as_u64().unwrap() > 512 << 20, "{memory}");
    let disk = result(&vm, "metrics-disk", json!({}));
    let root = disk["filesystems"].as_array().unwrap().iter().find(|f| f["mountpoint"] == "/").cloned();
    assert!(root.is_some_and(|r| r["usage"]["total_bytes"].as_u64() > Some(0)), "the RAM root has a size: {disk}");
    let network = result(&vm, "metrics-network", json!({}));
    assert!(network["interfaces"].as_array().unwrap().iter().any(|i| i["name"] == "lo"), "{network}");

    // Checks against the node itself: init, the coordinator's port and health path, a file.
    assert_eq!(check(&vm, "health-uptime", json!({"target": {"pid": 1}, "min_uptime_ms": 1000})).0, "pass");
    assert_eq!(check(&vm, "health-tcp-response", json!({"address": "127.0.0.1:8080"})).0, "pass");
    let refused = check(&vm, "health-tcp-response", json!({"address": "127.0.0.1:1"}));
    assert_eq!(refused, ("fail".into(), Some("refused".into())));
    assert_eq!(check(&vm, "health-http-status", json!({"url": "http://127.0.0.1:8080/health"})).0, "pass");
    assert_eq!(check(&vm, "health-file", json!({"path": "/etc/cerana/services.toml", "min_size": 1})).0, "pass");
    let missing = check(&vm, "health-file", json!({"path": "/no/such/file"}));
    assert_eq!(missing, ("fail".into(), Some("missing".into())));

    let (status, body) = get(&vm, "/metrics");
    assert_eq!(status, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    let families: BTreeSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for family in [
        "cerana_coordinator_tasks_total",
        "process_resident_memory_bytes",
        "cerana_provider_resident_memory_bytes",
        "cerana_node_cpu_seconds_total",
        "cerana_node_memory_available_bytes",
        "cerana_node_filesystem_size_bytes",
        "cerana_node_network_receive_bytes_total",
        "cerana_node_info",
    ] {
        assert!(families.contains(family), "{family} missing from the node's /metrics: {families:?}");
    }
    let providers: BTreeSet<&str> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "cerana_provider_connections")
        .filter_map(|s| s.labels.get("provider"))
        .collect();
    assert!(providers.contains("metrics") && providers.contains("health"), "{providers:?}");
    let up = scrape.samples.iter().find(|s| s.metric == "cerana_metrics_provider_up").map(|s| format!("{:?}", s.value));
    assert_eq!(up.as_deref(), Some("Gauge(1.0)"));
    for provider in ["metrics", "health"] {
        let rss = scrape.samples.iter().find(|s| {
            s.metric == "cerana_provider_resident_memory_bytes" && s.labels.get("provider") == Some(provider)
        });
        eprintln!("{provider} provider RSS in the VM: {:?}", rss.map(|s| &s.value));
    }
    let (status, _) = {
        // Without the token: refused, like every API path but /health.
        let addr = vm.api_addr().unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).unwrap();
        let r = cerana_testbed::http::parse_response(&raw).unwrap();
        (r.status, r.body)
    };
    assert_eq!(status, 401);
    let status = vm.powerdown(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exit status {status}");
}
