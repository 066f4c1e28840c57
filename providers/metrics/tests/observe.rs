//! The metrics provider behind a real coordinator: its tasks over the unix socket, and the
//! coordinator's HTTP `/metrics` parsed by a Prometheus text parser.

use cerana_client::{CallError, UnixClient};
use cerana_coordinator::{Config, Coordinator};
use cerana_metrics::Source;
use cerana_protocol::tasks::coordinator::{CoordinatorProviders, ProvidersResult};
use cerana_protocol::tasks::metrics::{
    DiskArgs, MetricsCpu, MetricsDisk, MetricsHost, MetricsMemory, MetricsNetwork, MetricsService, ServiceMetricsArgs,
};
use cerana_protocol::tasks::node::{EchoArgs, NodeEcho};
use cerana_protocol::{ErrorCode, NoArgs};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn coordinator(dir: &Path) -> Coordinator {
    let mut config = Config::new(dir.join("coordinator.sock"));
    config.name = "observe-test".into();
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    Coordinator::start(config).await.expect("coordinator starts")
}

async fn client_with_provider(socket: &Path, provider: &str) -> UnixClient {
    let client = UnixClient::connect(socket, "test").await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ProvidersResult { providers } = client.run::<CoordinatorProviders>(&NoArgs {}).await.unwrap();
        if providers.iter().any(|p| p.name.as_str() == provider) {
            return client;
        }
        assert!(Instant::now() < deadline, "provider {provider} never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET `path`; the status line and the body.
async fn http_get(port: u16, path: &str) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw)).await.expect("answered in time").unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "the test reads plain bodies only:\n{head}"
    );
    (head.to_owned(), body.to_owned())
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses")
}

fn families(scrape: &prometheus_parse::Scrape) -> BTreeSet<String> {
    scrape.samples.iter().map(|s| s.metric.clone()).collect()
}

fn value(scrape: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// A services cgroup laid out as files: service `b1.web` with usage, as cgroup v2 shows it.
fn services_fixture(dir: &Path) -> std::path::PathBuf {
    let web = dir.join("services/b1.web");
    std::fs::create_dir_all(&web).unwrap();
    for (file, text) in [
        ("cgroup.procs", "1\n"),
        ("cpu.stat", "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"),
        ("memory.current", "4194304\n"),
        ("memory.max", "67108864\n"),
        ("memory.events", "oom 0\noom_kill 0\n"),
        ("pids.current", "3\n"),
        ("pids.max", "max\n"),
    ] {
        std::fs::write(web.join(file), text).unwrap();
    }
    dir.join("services")
}

fn err<T: std::fmt::Debug>(result: Result<T, CallError>) -> cerana_protocol::TaskError {
    match result {
        Err(CallError::Task(e)) => e,
        other => panic!("expected a task error, got {other:?}"),
    }
}

#[tokio::test]
async fn tasks_answer_and_metrics_parse_with_every_family() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = coordinator(dir.path()).await;
    let source = Source::at("/", services_fixture(dir.path()), cerana_metrics::system_addresses);
    let provider = tokio::spawn(cerana_metrics::provider_reading(source).serve(coordinator.socket().to_owned()));
    let client = client_with_provider(coordinator.socket(), "metrics").await;

    let cpu = client.run::<MetricsCpu>(&NoArgs {}).await.unwrap();
    assert!(cpu.info.logical_cpus >= 1 && cpu.times[0].cpu == "all");
    assert!(client.run::<MetricsMemory>(&NoArgs {}).await.unwrap().memory.total_bytes > 0);
    let disk = client.run::<MetricsDisk>(&DiskArgs::default()).await.unwrap();
    assert!(disk.filesystems.iter().any(|f| f.mountpoint == "/"));
    let network = client.run::<MetricsNetwork>(&NoArgs {}).await.unwrap();
    assert!(network.interfaces.iter().any(|i| i.loopback));
    let host = client.run::<MetricsHost>(&NoArgs {}).await.unwrap();
    assert!(!host.hostname.is_empty() && host.boot_time > 1_000_000_000);
    let web = client.run::<MetricsService>(&ServiceMetricsArgs { service: "b1.web".into() }).await.unwrap();
    assert_eq!((web.memory_bytes, web.memory_limit_bytes, web.pids_limit), (4 << 20, Some(64 << 20), None));

    // Bad input: typed errors, through the coordinator.
    let missing = err(client.run::<MetricsService>(&ServiceMetricsArgs { service: "b1.db".into() }).await);
    assert_eq!(missing.code, ErrorCode::NotFound, "{missing}");
    let bad = err(client.run::<MetricsService>(&ServiceMetricsArgs { service: "../x".into() }).await);
    assert_eq!(bad.code, ErrorCode::InvalidArgs, "{bad}");

    // Some traffic for the counters: a task nobody serves.
    let none = err(client.run::<NodeEcho>(&EchoArgs { data: "x".into() }).await);
    assert_eq!(none.code, ErrorCode::NoProvider);

    let port = coordinator.http_addr().unwrap().port();
    let (head, body) = http_get(port, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    if std::env::var_os("SHOW_METRICS").is_some() {
        eprintln!("{body}");
    }
    let scrape = parse(&body);
    let mut series = BTreeSet::new();
    for sample in &scrape.samples {
        let mut labels: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        assert!(series.insert((sample.metric.clone(), labels.join(","))), "duplicate series {sample:?}");
    }
    let names = families(&scrape);
    for family in [
        // The coordinator and its providers.
        "cerana_coordinator_info",
        "cerana_coordinator_uptime_seconds",
        "cerana_coordinator_tasks_total",
        "cerana_coordinator_task_seconds_total",
        "cerana_coordinator_in_flight",
        "cerana_coordinator_providers",
        "cerana_provider_connections",
        "cerana_provider_resident_memory_bytes",
        "cerana_provider_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "cerana_metrics_provider_up",
        // The node, from the metrics provider.
        "cerana_node_cpu_seconds_total",
        "cerana_node_load1",
        "cerana_node_memory_available_bytes",
        "cerana_node_filesystem_size_bytes",
        "cerana_node_network_receive_bytes_total",
        "cerana_node_info",
        "cerana_node_boot_time_seconds",
        // The services, from their cgroups.
        "cerana_service_cpu_seconds_total",
        "cerana_service_memory_bytes",
        "cerana_service_memory_limit_bytes",
        "cerana_service_pids",
    ] {
        assert!(names.contains(family), "{family} missing; families: {names:?}");
    }
    assert_eq!(value(&scrape, "cerana_metrics_provider_up", None), Some(1.0));
    assert_eq!(value(&scrape, "cerana_service_memory_bytes", Some(("service", "b1.web"))), Some(4194304.0));
    assert_eq!(value(&scrape, "cerana_service_cpu_seconds_total", Some(("service", "b1.web"))), Some(1.5));
    assert_eq!(value(&scrape, "cerana_provider_connections", Some(("provider", "metrics"))), Some(1.0));
    let done = scrape.samples.iter().find(|s| {
        s.metric == "cerana_coordinator_tasks_total"
            && s.labels.get("task") == Some("metrics-service")
            && s.labels.get("outcome") == Some("failed")
    });
    assert!(done.is_some(), "the failed metrics-service calls are counted");
    assert_eq!(value(&scrape, "cerana_coordinator_tasks_total", Some(("task", "node-echo"))), Some(1.0));
    assert!(value(&scrape, "cerana_node_scrape_errors", Some(("part", "cpu"))) == Some(0.0));
    provider.abort();
}

#[tokio::test]
async fn metrics_answers_without_the_metrics_provider() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = coordinator(dir.path()).await;
    let started = Instant::now();
    let (head, body) = http_get(coordinator.http_addr().unwrap().port(), "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(1), "no provider is known at once, not waited for");
    let scrape = parse(&body);
    assert_eq!(value(&scrape, "cerana_metrics_provider_up", None), Some(0.0));
    assert!(families(&scrape).contains("cerana_coordinator_uptime_seconds"));
    assert!(!families(&scrape).iter().any(|f| f.starts_with("cerana_node_")));
}
