//! Daemons killed mid-work (issue #15): every daemon of a booted node is SIGKILLed in turn,
//! round after round, through `init-service-signal`, while a load of tasks runs against the
//! node's coordinator. How long each took to come back is read from init's lifecycle events on
//! the node's console (`service_exited` → `service_ready`: the restart delay plus the time to
//! ready), and every task of the load must end with a result or a typed error; a call that
//! hangs past its timeout, or a connection cut while the coordinator was not being killed, is a
//! failure. The cluster test runs a few rounds; the soak benchmark runs many.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cerana_protocol::events::LifecycleEvent;
use serde_json::{json, Value};

use crate::http::{request_over, HttpError, TlsClient};

/// What every load task is given to finish; the HTTP call waits this plus [`HANG_SLACK`].
pub const LOAD_TASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Beyond its timeout, how long an answer may take (a TCG guest under load) before the call
/// counts as hung.
pub const HANG_SLACK: Duration = Duration::from_secs(25);
/// How long a killed daemon may take to be ready again before the run gives up on it.
const BACK_LIMIT: Duration = Duration::from_secs(60);
/// Between two kills of one daemon it serves at least this long, so init's backoff (reset
/// after 2 s ready) restarts it after its first delay, as it would after a one-off crash.
const SERVE_BETWEEN_KILLS: Duration = Duration::from_millis(2500);

/// A node under test: its coordinator's address, the API token, its console log.
#[derive(Debug, Clone)]
pub struct Target {
    pub coordinator: SocketAddr,
    /// HTTPS to a cluster node (its coordinator serves plain HTTP to loopback only).
    pub tls: Option<TlsClient>,
    pub token: String,
    pub console: PathBuf,
}

/// Per daemon: how many kills, and how long it took to be ready again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub kills: u32,
    pub back_ms: Vec<u64>,
}

impl Recovery {
    pub fn worst_ms(&self) -> u64 {
        self.back_ms.iter().copied().max().unwrap_or(0)
    }
    pub fn median_ms(&self) -> u64 {
        let mut v = self.back_ms.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }
}

/// How the load's tasks ended.
#[derive(Debug, Clone, Default)]
pub struct LoadTally {
    pub results: u64,
    /// Typed errors by code (`provider_lost` when a provider was killed under its task, ...).
    pub errors: BTreeMap<String, u64>,
    /// Refused connections while the coordinator was down: never acknowledged, nothing lost.
    pub refused: u64,
    /// Connections cut by a coordinator kill while the call was in flight.
    pub cut_by_coordinator_kill: u64,
    /// Anything else: hangs, cut connections with no coordinator kill, answers that are not
    /// a result or a typed error.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct KillReport {
    pub recoveries: BTreeMap<String, Recovery>,
    pub load: LoadTally,
    pub took: Duration,
}

impl KillReport {
    /// One line per daemon and a line for the load, for the test log and the README.
    pub fn table(&self) -> String {
        let mut s = format!("{:<20} {:>6} {:>10} {:>10}\n", "daemon", "kills", "median ms", "worst ms");
        for (name, r) in &self.recoveries {
            s.push_str(&format!("{name:<20} {:>6} {:>10} {:>10}\n", r.kills, r.median_ms(), r.worst_ms()));
        }
        let l = &self.load;
        s.push_str(&format!(
            "load: {} results, typed errors {:?}, {} refused while the coordinator was down, {} cut by a coordinator kill, {} failures; {:.0} s\n",
            l.results,
            l.errors,
            l.refused,
            l.cut_by_coordinator_kill,
            l.failures.len(),
            self.took.as_secs_f64()
        ));
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("killing {service}: {why}")]
    Kill { service: String, why: String },
    #[error("{service} was not ready again {secs} s after kill {kill}")]
    NotBack { service: String, kill: u32, secs: u64 },
    #[error("reading the console {path}: {source}")]
    Console { path: PathBuf, source: std::io::Error },
}

/// The tasks the load cycles through: cheap ones on every provider the daemons serve.
pub fn default_load() -> Vec<(String, Value)> {
    [
        ("node-echo", json!({"data": "chaos"})),
        ("node-info", json!({})),
        ("init-service-list", json!({})),
        ("metrics-memory", json!({})),
        ("health-uptime", json!({"target": {"pid": 1}})),
        ("zfs-list", json!({"name": "data", "depth": 1})),
        ("netns-list", json!({})),
        ("service-list", json!({})),
        ("boot-machines", json!({})),
        ("coordinator-status", json!({})),
    ]
    .into_iter()
    .map(|(t, a)| (t.to_string(), a))
    .collect()
}

/// The kill epoch: bumped before every kill of the coordinator, so a load call can tell a cut
/// it caused from one it did not.
#[derive(Debug, Default)]
struct Epoch {
    coordinator_kills: AtomicU64,
    killing_coordinator: AtomicBool,
}

fn post_task(target: &Target, body: &Value, timeout: Duration) -> Result<(u16, Value), HttpError> {
    let raw = body.to_string();
    let response = request_over(
        target.coordinator,
        target.tls.as_ref(),
        "POST",
        "/v1/tasks",
        Some(&target.token),
        raw.as_bytes(),
        timeout,
    )?;
    let value = serde_json::from_slice(&response.body).unwrap_or_else(|_| {
        Value::String(format!(
            "not JSON: {}",
            String::from_utf8_lossy(&response.body).chars().take(200).collect::<String>()
        ))
    });
    Ok((response.status, value))
}

fn run_load(target: Target, tasks: Vec<(String, Value)>, stop: Arc<AtomicBool>, epoch: Arc<Epoch>) -> LoadTally {
    let mut tally = LoadTally::default();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (task, args) = &tasks[i % tasks.len()];
        i += 1;
        let body = json!({"task": task, "args": args, "timeout_ms": LOAD_TASK_TIMEOUT.as_millis() as u64});
        let before = epoch.coordinator_kills.load(Ordering::SeqCst);
        let started = Instant::now();
        match post_task(&target, &body, LOAD_TASK_TIMEOUT + HANG_SLACK) {
            Ok((_, v)) if v.get("result").is_some() => tally.results += 1,
            Ok((_, v)) if v["error"]["code"].is_string() => {
                *tally.errors.entry(v["error"]["code"].as_str().unwrap_or_default().to_string()).or_default() += 1;
            }
            Ok((status, v)) => {
                tally.failures.push(format!("{task}: HTTP {status} without a result or typed error: {v}"))
            }
            Err(HttpError::Connect { .. }) => {
                tally.refused += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                let killed = epoch.coordinator_kills.load(Ordering::SeqCst) != before
                    || epoch.killing_coordinator.load(Ordering::SeqCst);
                let hung = started.elapsed() >= LOAD_TASK_TIMEOUT + HANG_SLACK;
                if killed && !hung {
                    tally.cut_by_coordinator_kill += 1;
                } else {
                    tally.failures.push(format!("{task}: {e} after {:.1} s", started.elapsed().as_secs_f64()));
                }
            }
        }
    }
    tally
}

/// Init's events on the console, from byte `from` on.
fn events_since(console: &Path, from: usize) -> Result<Vec<LifecycleEvent>, ChaosError> {
    let raw = std::fs::read(console).map_err(|source| ChaosError::Console { path: console.into(), source })?;
    let text = String::from_utf8_lossy(raw.get(from..).unwrap_or_default()).into_owned();
    Ok(text.lines().filter_map(LifecycleEvent::parse_line).filter_map(Result::ok).collect())
}

fn console_len(console: &Path) -> usize {
    std::fs::metadata(console).map_or(0, |m| m.len() as usize)
}

/// After a kill: the service's exit by signal and its next readiness, as restart delay plus
/// time to ready.
fn back_after(events: &[LifecycleEvent], service: &str) -> Option<u64> {
    let exit = events
        .iter()
        .position(|e| matches!(e, LifecycleEvent::ServiceExited { service: s, signal: Some(_), .. } if s == service))?;
    let LifecycleEvent::ServiceExited { restart_in_ms, .. } = &events[exit] else { return None };
    events[exit..].iter().find_map(|e| match e {
        LifecycleEvent::ServiceReady { service: s, after_ms } if s == service => {
            Some(restart_in_ms.unwrap_or(0) + after_ms)
        }
        _ => None,
    })
}

/// Sends SIGKILL to `service`'s main process through the coordinator, retrying while the
/// coordinator or the init provider is itself coming back.
fn kill(target: &Target, service: &str, epoch: &Epoch) -> Result<(), ChaosError> {
    let body = json!({"task": "init-service-signal", "args": {"service": service, "signal": "KILL", "whom": "main"}});
    let deadline = Instant::now() + BACK_LIMIT;
    let fatal = |why: String| ChaosError::Kill { service: service.into(), why };
    // The answer to a kill of the coordinator or of the init provider may die with it.
    let self_kill = matches!(service, "coordinator" | "init-provider");
    if service == "coordinator" {
        epoch.killing_coordinator.store(true, Ordering::SeqCst);
        epoch.coordinator_kills.fetch_add(1, Ordering::SeqCst);
    }
    loop {
        match post_task(target, &body, Duration::from_secs(30)) {
            Ok((_, v)) if v.get("result").is_some() => return Ok(()),
            Ok((_, v)) if self_kill && v["error"]["code"] == "provider_lost" => return Ok(()),
            Ok((_, v))
                if matches!(v["error"]["code"].as_str(), Some("no_provider" | "unknown_task" | "unavailable")) => {}
            Ok((status, v)) => return Err(fatal(format!("HTTP {status}: {v}"))),
            Err(HttpError::Connect { .. }) => {}
            Err(_) if self_kill => return Ok(()),
            Err(e) => return Err(fatal(e.to_string())),
        }
        if Instant::now() > deadline {
            return Err(fatal("the coordinator or the init provider did not come back to take the kill".into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills each of `services` `rounds` times, in turn, under `load`; returns how each came back
/// and how the load's tasks ended.
pub fn kill_daemons(
    target: &Target,
    services: &[String],
    rounds: u32,
    load: Vec<(String, Value)>,
) -> Result<KillReport, ChaosError> {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Arc::new(Epoch::default());
    let loaders: Vec<_> = (0..2)
        .map(|n| {
            let (target, stop, epoch) = (target.clone(), stop.clone(), epoch.clone());
            let mut tasks = load.clone();
            let half = n * tasks.len() / 2;
            tasks.rotate_left(half);
            std::thread::spawn(move || run_load(target, tasks, stop, epoch))
        })
        .collect();
    // The load threads stop whatever happens below.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let guard = StopOnDrop(stop.clone());
    let mut recoveries = BTreeMap::<String, Recovery>::new();
    let mut last_ready: BTreeMap<String, Instant> = BTreeMap::new();
    for round in 1..=rounds {
        for service in services {
            if let Some(wait) = last_ready.get(service).and_then(|t| SERVE_BETWEEN_KILLS.checked_sub(t.elapsed())) {
                std::thread::sleep(wait);
            }
            let from = console_len(&target.console);
            kill(target, service, &epoch)?;
            let deadline = Instant::now() + BACK_LIMIT;
            let back = loop {
                if let Some(ms) = back_after(&events_since(&target.console, from)?, service) {
                    break ms;
                }
                if Instant::now() > deadline {
                    return Err(ChaosError::NotBack {
                        service: service.clone(),
                        kill: round,
                        secs: BACK_LIMIT.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            epoch.killing_coordinator.store(false, Ordering::SeqCst);
            last_ready.insert(service.clone(), Instant::now());
            let entry = recoveries.entry(service.clone()).or_default();
            entry.kills += 1;
            entry.back_ms.push(back);
        }
    }
    drop(guard);
    let mut load = LoadTally::default();
    for t in loaders {
        let tally = t
            .join()
            .unwrap_or_else(|_| LoadTally { failures: vec!["a load thread panicked".into()], ..Default::default() });
        load.results += tally.results;
        load.refused += tally.refused;
        load.cut_by_coordinator_kill += tally.cut_by_coordinator_kill;
        load.failures.extend(tally.failures);
        for (code, n) in tally.errors {
            *load.errors.entry(code).or_default() += n;
        }
    }
    Ok(KillReport { recoveries, load, took: started.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_time_is_the_restart_delay_plus_the_time_to_ready() {
        let events = vec![
            LifecycleEvent::ServiceReady { service: "zfs".into(), after_ms: 999 },
            LifecycleEvent::ServiceExited {
                service: "zfs".into(),
                pid: 7,
                code: None,
                signal: Some(9),
                restart_in_ms: Some(100),
            },
            LifecycleEvent::ServiceStarted { service: "zfs".into(), pid: 8 },
            LifecycleEvent::ServiceReady { service: "metrics".into(), after_ms: 5 },
            LifecycleEvent::ServiceReady { service: "zfs".into(), after_ms: 340 },
        ];
        assert_eq!(back_after(&events, "zfs"), Some(440));
        assert_eq!(back_after(&events, "metrics"), None, "no exit seen");
        assert_eq!(back_after(&events[..3], "zfs"), None, "not ready yet");
    }

    #[test]
    fn recovery_figures() {
        let r = Recovery { kills: 3, back_ms: vec![300, 100, 200] };
        assert_eq!((r.median_ms(), r.worst_ms()), (200, 300));
    }
}
