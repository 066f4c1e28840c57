//! `make bench-init`: boots init (off PID 1, in a PID namespace) with a table of services that
//! signal readiness through the notify fd in a dependency tree, and reports
//! - exec of init -> `node_ready` (init's own clock, from the event),
//! - init's own CPU time until then (its share of start-up; the rest is the services),
//! - init's resident memory after boot (VmRSS) and its peak (VmHWM).
//!
//! ```text
//! cerana-init-bench [--services N] [--rounds N] [--init PATH] [--testkit PATH]
//! ```
//!
//! `--init` and `--testkit` (the services: `cerana-init-testkit service`) default to the
//! binaries of those names beside this one.

use std::path::PathBuf;
use std::time::Duration;

use cerana_protocol::events::LifecycleEvent;
use cerana_testbed::init::{why_cannot_run, RunningInit};

const RSS_TARGET_KB: u64 = 2048;
const CPU_TARGET_MS: f64 = 50.0;

fn arg(args: &[String], flag: &str, default: usize) -> Result<usize, String> {
    match args.iter().position(|a| a == flag) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a positive number")),
    }
}

/// Services s00..sNN: s00 is the root, every other one requires its parent in a binary tree;
/// one one-shot task runs first.
fn table(services: usize, testkit: &str) -> String {
    let mut t = format!(
        "[service.prepare]\ncommand = \"{testkit}\"\nargs = [\"service\", \"--exit\", \"0\"]\noneshot = true\n"
    );
    for i in 0..services {
        let requires = if i == 0 { "\"prepare\"".to_string() } else { format!("\"s{:02}\"", (i - 1) / 2) };
        t.push_str(&format!(
            "\n[service.s{i:02}]\ncommand = \"{testkit}\"\nargs = [\"service\", \"--notify\"]\nready = \"notify\"\nrequires = [{requires}]\n"
        ));
    }
    t
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = bench(&args) {
        eprintln!("bench-init: {e}");
        std::process::exit(1);
    }
}

/// The path after `flag`, or the binary `name` beside this one.
fn binary(args: &[String], flag: &str, name: &str) -> Result<PathBuf, String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => Ok(PathBuf::from(args.get(i + 1).ok_or_else(|| format!("{flag} needs a path"))?)),
        None => Ok(std::env::current_exe().map_err(|e| e.to_string())?.with_file_name(name)),
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let services = arg(args, "--services", 12)?;
    let rounds = arg(args, "--rounds", 7)?;
    if let Some(why) = why_cannot_run() {
        println!("bench-init: skipped: {why}");
        return Ok(());
    }
    let testkit = binary(args, "--testkit", "cerana-init-testkit")?;
    let init_bin = binary(args, "--init", "cerana-init")?;
    for bin in [&init_bin, &testkit] {
        if !bin.exists() {
            return Err(format!("{} not built", bin.display()));
        }
    }
    let table = table(services, &testkit.display().to_string());
    let (mut ready_ms, mut cpu_ms, mut rss_kb, mut hwm_kb) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let dir: PathBuf = std::env::temp_dir().join(format!("cerana-init-bench-{}-{round}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut init = RunningInit::start(&init_bin, &dir, &table, &[]).map_err(|e| e.to_string())?;
        let ready =
            init.wait_for("node_ready", Duration::from_secs(20), |e| matches!(e, LifecycleEvent::NodeReady { .. }));
        let LifecycleEvent::NodeReady { uptime_ms } = ready else {
            unreachable!("wait_for returns the matching event")
        };
        ready_ms.push(uptime_ms as f64);
        cpu_ms.push(init.cpu_time().unwrap_or_default().as_secs_f64() * 1000.0);
        rss_kb.push(init.status_kb("VmRSS").unwrap_or(0) as f64);
        hwm_kb.push(init.status_kb("VmHWM").unwrap_or(0) as f64);
        init.signal(nix::sys::signal::Signal::SIGTERM);
        let code = init.wait_exit(Duration::from_secs(20));
        drop(init);
        let _ = std::fs::remove_dir_all(&dir);
        if code != Some(0) {
            return Err(format!("round {round}: init exited with {code:?} after SIGTERM"));
        }
    }
    let (ready_med, ready_max) = stats(ready_ms);
    let (cpu_med, cpu_max) = stats(cpu_ms);
    let (rss_med, rss_max) = stats(rss_kb);
    let (hwm_med, hwm_max) = stats(hwm_kb);
    println!("bench-init: {}", init_bin.display());
    println!(
        "bench-init: {services} services + 1 one-shot (notify readiness, dependency tree of depth {}), {rounds} rounds",
        (services as f64).log2().floor() as u32 + 2
    );
    println!("  exec -> node_ready          median {ready_med:7.1} ms   max {ready_max:7.1} ms   (includes the services' own start-up)");
    println!(
        "  init CPU until node_ready   median {cpu_med:7.2} ms   max {cpu_max:7.2} ms   target < {CPU_TARGET_MS} ms"
    );
    println!(
        "  init VmRSS after boot       median {rss_med:7.0} kB   max {rss_max:7.0} kB   target < {RSS_TARGET_KB} kB"
    );
    println!("  init VmHWM (peak RSS)       median {hwm_med:7.0} kB   max {hwm_max:7.0} kB");
    let mut missed = Vec::new();
    if cpu_med >= CPU_TARGET_MS {
        missed.push("init's start-up CPU time");
    }
    if rss_med >= RSS_TARGET_KB as f64 {
        missed.push("init's RSS");
    }
    if missed.is_empty() {
        println!("  targets met");
        Ok(())
    } else {
        Err(format!("target missed: {}", missed.join(", ")))
    }
}
