//! `GET /metrics`: the coordinator's own counters, its providers' processes, and the node's and
//! services' metrics (the `metrics` provider's `metrics-prometheus` task), in the Prometheus
//! text exposition format. If the metrics provider is down or slow, the coordinator's part is
//! still served, with `cerana_metrics_provider_up 0`.

use crate::core::{Core, ReplySink};
use cerana_observe::exposition::{Exposition, Kind};
use cerana_observe::procfs::{parse_process_stat, parse_stat, ProcessStat};
use cerana_observe::{page_size, ticks_per_second};
use cerana_protocol::tasks::metrics::{MetricsPrometheus, PrometheusText};
use cerana_protocol::{ErrorCode, NoArgs, Request, TaskError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long `/metrics` waits for the node's metrics from the metrics provider.
pub const NODE_METRICS_TIMEOUT: Duration = Duration::from_millis(2_000);

fn process_stat(pid: &str) -> Option<ProcessStat> {
    parse_process_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).ok()
}

/// The whole exposition.
pub async fn render(core: &Arc<Core>) -> String {
    let mut out = Exposition::new();
    render_coordinator(core, &mut out);
    render_providers(core, &mut out);
    render_process(&mut out);
    let node = node_metrics(core).await;
    if let Err(e) = &node {
        tracing::debug!("/metrics without the node's metrics: {e}");
    }
    let up = if node.is_ok() { 1.0 } else { 0.0 };
    out.single(
        "cerana_metrics_provider_up",
        Kind::Gauge,
        "1 when the metrics provider answered metrics-prometheus",
        up,
    );
    if let Ok(text) = node {
        out.append(&text);
    }
    out.finish()
}

fn render_coordinator(core: &Arc<Core>, out: &mut Exposition) {
    out.family("cerana_coordinator_info", Kind::Gauge, "The coordinator's name and version, as labels").sample(
        "cerana_coordinator_info",
        &[("name", &core.config.name), ("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    out.single(
        "cerana_coordinator_uptime_seconds",
        Kind::Gauge,
        "Seconds since the coordinator started",
        core.started.elapsed().as_secs_f64(),
    );
    out.single("cerana_coordinator_in_flight", Kind::Gauge, "Tasks accepted and not finished", core.in_flight() as f64);
    let journal = core.journal.lock().expect("journal lock").len();
    out.single("cerana_coordinator_journal_entries", Kind::Gauge, "Tasks kept in the journal", journal as f64);
    out.single(
        "cerana_coordinator_streams_waiting",
        Kind::Gauge,
        "Streams waiting for their second end",
        core.streams.waiting() as f64,
    );
    core.task_counters.render(out);
}

fn render_providers(core: &Arc<Core>, out: &mut Exposition) {
    let counts = core.in_flight_by_provider();
    let providers =
        core.registry.read().expect("registry lock").providers(|conn| counts.get(&conn).copied().unwrap_or(0));
    // One provider may be registered more than once (a reconnect racing the old connection).
    let mut by_name: BTreeMap<String, (u32, u32, Option<u32>)> = BTreeMap::new();
    for p in &providers {
        let entry = by_name.entry(p.name.to_string()).or_insert((0, 0, p.pid));
        entry.0 += 1;
        entry.1 += p.in_flight;
    }
    out.single("cerana_coordinator_providers", Kind::Gauge, "Provider connections", providers.len() as f64);
    out.family("cerana_provider_connections", Kind::Gauge, "Connections of each provider");
    for (name, (connections, _, _)) in &by_name {
        out.sample("cerana_provider_connections", &[("provider", name)], f64::from(*connections));
    }
    out.family("cerana_provider_in_flight", Kind::Gauge, "Tasks each provider is handling");
    for (name, (_, in_flight, _)) in &by_name {
        out.sample("cerana_provider_in_flight", &[("provider", name)], f64::from(*in_flight));
    }
    let stats: Vec<(&String, String, ProcessStat)> = by_name
        .iter()
        .filter_map(|(name, (_, _, pid))| {
            let pid = (*pid)?.to_string();
            let stat = process_stat(&pid)?;
            Some((name, pid, stat))
        })
        .collect();
    let (ticks, page) = (ticks_per_second(), page_size());
    out.family("cerana_provider_resident_memory_bytes", Kind::Gauge, "Resident memory of each provider's process");
    for (name, pid, stat) in &stats {
        out.sample(
            "cerana_provider_resident_memory_bytes",
            &[("provider", name), ("pid", pid)],
            (stat.rss_pages * page) as f64,
        );
    }
    out.family("cerana_provider_cpu_seconds_total", Kind::Counter, "CPU seconds of each provider's process");
    for (name, pid, stat) in &stats {
        out.sample("cerana_provider_cpu_seconds_total", &[("provider", name), ("pid", pid)], stat.cpu_seconds(ticks));
    }
}

/// The standard `process_*` families for the coordinator's own process.
fn render_process(out: &mut Exposition) {
    let Some(stat) = process_stat("self") else { return };
    let ticks = ticks_per_second();
    out.single(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size in bytes",
        (stat.rss_pages * page_size()) as f64,
    );
    out.single(
        "process_cpu_seconds_total",
        Kind::Counter,
        "User and system CPU time in seconds",
        stat.cpu_seconds(ticks),
    );
    out.single("process_threads", Kind::Gauge, "OS threads", stat.threads as f64);
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.single("process_open_fds", Kind::Gauge, "Open file descriptors", fds.count() as f64);
    }
    let boot_time =
        std::fs::read_to_string("/proc/stat").ok().and_then(|t| parse_stat(&t, ticks).ok()).map(|s| s.boot_time);
    if let Some(boot_time) = boot_time {
        let start = boot_time as f64 + stat.start_ticks as f64 / ticks;
        out.single("process_start_time_seconds", Kind::Gauge, "Start time of the process since the Unix epoch", start);
    }
}

/// The node's and services' metrics through the metrics provider, within [`NODE_METRICS_TIMEOUT`].
async fn node_metrics(core: &Arc<Core>) -> Result<String, TaskError> {
    let mut request = Request::for_task::<MetricsPrometheus>(&NoArgs {})
        .map_err(|e| TaskError::new(ErrorCode::Internal, e.to_string()))?;
    request.timeout_ms = Some(NODE_METRICS_TIMEOUT.as_millis() as u64);
    let (tx, rx) = tokio::sync::oneshot::channel();
    core.submit(request, "internal:/metrics".into(), ReplySink::Waiter(tx));
    let response = rx.await.map_err(|_| TaskError::new(ErrorCode::Internal, "the metrics request was dropped"))?;
    Ok(response.decode::<PrometheusText>()?.text)
}
