//! `make bench-boot`: time to node_ready of the CeranaOS image against the floor (the same
//! kernel with a busybox-only initramfs reaching userspace), under the same QEMU settings;
//! image sizes against the budget.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use cerana_protocol::events::LifecycleEvent;
use cerana_testbed::{default_log_dir, Accel, Boot, Network, Vm, VmConfig};
use clap::Parser;

#[derive(Parser)]
struct Cli {
    /// The CeranaOS image directory (make image).
    #[arg(long, default_value = "out/image/base")]
    base: PathBuf,
    /// The busybox-only floor image directory (make image IMAGE_PROFILE=floor).
    #[arg(long, default_value = "out/image/floor")]
    floor: PathBuf,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

const FLOOR_MARKER: &str = "CERANA-FALLBACK-INIT";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn image_env(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(dir.join("image.env")).with_context(|| format!("{}/image.env", dir.display()))?;
    Ok(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect())
}

/// Host seconds from QEMU start to the floor's userspace marker.
fn floor_run(dir: &Path) -> anyhow::Result<f64> {
    let mut config = VmConfig::new(
        "bench-floor",
        Boot::Direct {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            cmdline: "cerana.fallback=poweroff".into(),
        },
        default_log_dir(),
    );
    config.network = Network::None;
    let mut vm = Vm::boot(&config)?;
    vm.wait_for_text(FLOOR_MARKER, Duration::from_secs(180))?;
    let secs = vm.elapsed().as_secs_f64();
    vm.wait_exit(Duration::from_secs(60), "the floor guest to power off")?;
    Ok(secs)
}

struct BaseRun {
    secs: f64,
    uptime_ms: u64,
    /// MemTotal - MemAvailable from node-info right after node_ready.
    used_bytes: u64,
    /// PID 1's resident memory, from node-info.
    init_rss_bytes: u64,
}

/// Host seconds from QEMU start to node_ready, the guest's own uptime then, memory in use.
fn base_run(dir: &Path) -> anyhow::Result<BaseRun> {
    let mut vm = Vm::boot(&VmConfig::direct("bench-base", dir, default_log_dir()))?;
    let ready = vm.wait_for_event("node_ready", Duration::from_secs(300))?;
    let secs = vm.elapsed().as_secs_f64();
    let LifecycleEvent::NodeReady { uptime_ms } = ready else { bail!("unexpected event {ready:?}") };
    let info = vm.run_task("node-info", serde_json::json!({}), Duration::from_secs(60))?;
    let mem = &info["result"]["memory"];
    let used_bytes =
        mem["total_bytes"].as_u64().unwrap_or(0).saturating_sub(mem["available_bytes"].as_u64().unwrap_or(0));
    let init_rss_bytes = info["result"]["init_rss_bytes"].as_u64().unwrap_or(0);
    vm.powerdown(Duration::from_secs(120))?;
    Ok(BaseRun { secs, uptime_ms, used_bytes, init_rss_bytes })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let accel = Accel::detect();
    let mut floor = Vec::new();
    let mut base = Vec::new();
    let mut guest = Vec::new();
    let mut used = Vec::new();
    let mut init_rss = Vec::new();
    for run in 1..=cli.runs {
        let f = floor_run(&cli.floor)?;
        let b = base_run(&cli.base)?;
        let up = b.uptime_ms as f64 / 1000.0;
        eprintln!("run {run}: floor {f:.2} s, node_ready {:.2} s (guest uptime {up:.2} s)", b.secs);
        floor.push(f);
        base.push(b.secs);
        guest.push(up);
        used.push(b.used_bytes as f64);
        init_rss.push(b.init_rss_bytes as f64);
    }
    let (f, b) = (median(floor), median(base));
    println!("boot time under {accel:?}, median of {} runs, from QEMU start (host clock):", cli.runs);
    println!("  floor (same kernel, busybox-only initramfs) to userspace: {f:8.2} s");
    println!(
        "  CeranaOS base image to node_ready:                        {b:8.2} s (guest uptime {:.2} s)",
        median(guest)
    );
    println!("  ratio: {:.2}x (goal <= 1.50x)", b / f);
    let env = image_env(&cli.base)?;
    let num = |k: &str| env.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mb = |b: u64| b as f64 / 1_048_576.0;
    let (kernel, initrd, unpacked, budget) =
        (num("kernel_bytes"), num("initrd_bytes"), num("initrd_unpacked_bytes"), num("budget_bytes"));
    println!("sizes of the base image ({}):", env.get("compression").map_or("?", String::as_str));
    println!(
        "  kernel {:.2} MiB + initramfs {:.2} MiB compressed = {:.2} MiB of {:.2} MiB budget ({:.0}%)",
        mb(kernel),
        mb(initrd),
        mb(kernel + initrd),
        mb(budget),
        100.0 * (kernel + initrd) as f64 / budget as f64
    );
    println!("  initramfs unpacked {:.2} MiB", mb(unpacked));
    println!(
        "memory in use at node_ready (MemTotal - MemAvailable: kernel, tmpfs root, all services): {:.1} MiB",
        median(used) / 1_048_576.0
    );
    println!(
        "init RSS at node_ready (PID 1's VmRSS, from node-info): {:.0} kB (target < 2048 kB)",
        median(init_rss) / 1024.0
    );
    Ok(())
}
