//! `make bench-zfs`: in one CeranaOS guest, zfs-create / zfs-snapshot / zfs-clone through the
//! Task API against the `zfs` command, and a 256 MiB zfs-send → zfs-receive through two tasks
//! and the coordinator's stream against `zfs send | zfs receive` in a shell pipe. Both sides
//! run inside the guest (the provider's test-only `zfs-test-bench` task, enabled by
//! `cerana_zfs.test_tasks=1` on the kernel command line), alternating which goes first.

#[path = "../tests/common/mod.rs"]
mod common;

use common::Node;
use serde_json::json;
use std::process::ExitCode;

const MIB: u64 = 1 << 20;

fn main() -> ExitCode {
    let image = match cerana_testbed::image_dir() {
        Ok(image) => image,
        Err(why) => {
            eprintln!("zfs-bench: {why}");
            return ExitCode::FAILURE;
        }
    };
    let iterations: u32 = std::env::var("ZFS_BENCH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let rounds: u32 = std::env::var("ZFS_BENCH_STREAM_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let n = Node::boot(
        &image,
        "zfs-bench",
        &[4096 * MIB],
        &[],
        "be0cbe0c-0000-4000-8000-00000000be0c",
        "cerana.zfs_config=auto",
    );
    n.ok("zfs-create", json!({ "name": "data/source" }));
    n.ok("zfs-test-write", json!({ "dataset": "data/source", "file": "blob", "bytes": 256 * MIB, "seed": 5 }));
    n.ok("zfs-snapshot", json!({ "name": "data/source", "snapname": "s" }));
    let r = n.ok(
        "zfs-test-bench",
        json!({ "scratch": "data/bench", "iterations": iterations, "stream_snapshot": "data/source@s", "stream_rounds": rounds }),
    );
    println!(
        "\nzfs provider benchmark (one TCG guest, medians; {iterations} iterations, {rounds} stream rounds of {} MiB)",
        r["stream_bytes"].as_u64().unwrap_or(0) / MIB
    );
    println!("{:<14} {:>12} {:>14} {:>8}  target", "operation", "task API ms", "zfs command ms", "ratio");
    let mut worst: f64 = 0.0;
    for op in ["zfs-create", "zfs-snapshot", "zfs-clone", "send|receive"] {
        let task = r["task_ms"][op].as_f64().unwrap_or(f64::NAN);
        let cmd = r["command_ms"][op].as_f64().unwrap_or(f64::NAN);
        let ratio = task / cmd;
        worst = worst.max(ratio);
        println!("{op:<14} {task:>12.1} {cmd:>14.1} {ratio:>8.2}  <= 1.20");
    }
    n.powerdown();
    println!("worst ratio {worst:.2}");
    ExitCode::SUCCESS
}
