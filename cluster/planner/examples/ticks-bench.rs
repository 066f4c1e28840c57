//! `make bench-ticks` (issue #18): the bundle planner over 1k, 5k and 10k bundles on 1,000
//! simulated nodes — tick duration, placement decisions per second, and how the cost grows —
//! and the steady etcd load that 1,000 nodes' heartbeats make, as a share of the write capacity
//! of the same 3-member etcd measured in the same run.
//!
//! Anchors: the Kubernetes scheduler's SLO of 100 pods/s and Nomad's C1M (3,750 containers/s);
//! goals ≥ 1,000 decisions/s, cost growing no faster than linearly, heartbeats ≤ 20% of the
//! store's write capacity.

use anyhow::{anyhow, Context, Result};
use cerana_planner::{plan, Action, BundleDemand, NodeState};
use cerana_testbed::etcd::EtcdCluster;
use etcd_client::{Client, PutOptions};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: usize = 1000;
const GIB: u64 = 1 << 30;
/// A node entry as the heartbeat writes it (cpu, memory, disk, image, versions, providers).
const ENTRY_BYTES: usize = 400;

/// A deterministic generator (no dependency for a benchmark's inputs).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below.max(1)
    }
}

fn cluster(bundles: usize) -> (Vec<BundleDemand>, Vec<NodeState>) {
    let mut rng = Lcg(42);
    let datasets: Vec<String> = (0..200).map(|i| format!("ds{i}")).collect();
    let nodes = (0..NODES)
        .map(|i| NodeState {
            id: format!("node-{i:04}"),
            healthy: rng.next(100) < 98,
            memory_free: (32 + rng.next(96)) * GIB,
            cpu_millis_free: (16 + rng.next(48)) * 1000,
            datasets: (0..3).map(|_| datasets[rng.next(200) as usize].clone()).collect(),
            running: BTreeSet::new(),
            outdated: BTreeSet::new(),
        })
        .collect();
    let bundles = (0..bundles)
        .map(|i| BundleDemand {
            id: format!("bundle-{i:05}"),
            redundancy: 1 + rng.next(3) as u32,
            memory: (1 + rng.next(4)) * GIB / 4,
            cpu_millis: 100 + rng.next(400),
            datasets: (0..rng.next(2)).map(|_| datasets[rng.next(200) as usize].clone()).collect(),
            published: BTreeSet::new(),
        })
        .collect();
    (bundles, nodes)
}

struct PlannerFigures {
    bundles: usize,
    first_tick: Duration,
    starts: usize,
    steady_tick: Duration,
}

fn bench_planner(bundles: usize) -> PlannerFigures {
    let (demands, mut nodes) = cluster(bundles);
    let began = Instant::now();
    let first = plan(&demands, &nodes);
    let first_tick = began.elapsed();
    let starts = first.actions.iter().filter(|a| matches!(a, Action::Start { .. })).count();
    // The converged cluster: every start applied. A steady tick decides that nothing moves.
    for action in &first.actions {
        if let Action::Start { bundle, node } = action {
            let d = &demands[bundle.trim_start_matches("bundle-").parse::<usize>().expect("bundle ids")];
            let n = nodes.iter_mut().find(|n| &n.id == node).expect("known node");
            n.memory_free -= d.memory;
            n.cpu_millis_free -= d.cpu_millis;
            n.running.insert(bundle.clone());
        }
    }
    let began = Instant::now();
    let steady = plan(&demands, &nodes);
    let steady_tick = began.elapsed();
    assert!(steady.actions.is_empty(), "a converged cluster needs no action: {:?}", &steady.actions[..1]);
    PlannerFigures { bundles, first_tick, starts, steady_tick }
}

/// Puts of node-entry-sized values from `concurrency` clients for `period`: puts per second.
async fn write_capacity(client: &Client, concurrency: usize, period: Duration) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + period;
    let value = "x".repeat(ENTRY_BYTES);
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (mut kv, done, value) = (client.kv_client(), done.clone(), value.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let put = kv.put(format!("/bench/capacity/{w}/{}", i % 16), value.as_str(), None);
                tokio::time::timeout(Duration::from_secs(10), put).await.map_err(|_| anyhow!("a put took 10 s"))??;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / period.as_secs_f64())
}

struct HeartbeatFigures {
    writes_per_s: f64,
    renewals_per_s: f64,
    late_renewals: u64,
}

/// `NODES` nodes beating for `period`: each keeps its lease (TTL 3 s) alive every second over
/// its own keep-alive stream, and writes its entry on that lease every `entry_every`.
async fn heartbeats(client: &Client, period: Duration, entry_every: Duration) -> Result<HeartbeatFigures> {
    let (writes, renewals, late) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + period;
    let value = "y".repeat(ENTRY_BYTES);
    let mut nodes = Vec::new();
    for n in 0..NODES {
        let (client, value) = (client.clone(), value.clone());
        let (writes, renewals, late) = (writes.clone(), renewals.clone(), late.clone());
        nodes.push(tokio::spawn(async move {
            let mut lease_client = client.lease_client();
            let lease = lease_client.grant(3, None).await?.id();
            let (mut keeper, mut stream) = lease_client.keep_alive(lease).await?;
            let mut kv = client.kv_client();
            // Staggered: the nodes did not all boot in the same millisecond.
            tokio::time::sleep(Duration::from_millis((n as u64 * 997) % 1000)).await;
            let every_beats = entry_every.as_secs().max(1);
            let mut beats = 0u64;
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < deadline {
                beat.tick().await;
                let began = Instant::now();
                keeper.keep_alive().await?;
                stream.message().await?.context("keep-alive stream ended")?;
                renewals.fetch_add(1, Ordering::Relaxed);
                beats += 1;
                if (beats - 1).is_multiple_of(every_beats) {
                    let options = PutOptions::new().with_lease(lease);
                    kv.put(format!("/bench/nodes/node-{n:04}"), value.as_str(), Some(options)).await?;
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                if began.elapsed() > Duration::from_millis(500) {
                    late.fetch_add(1, Ordering::Relaxed);
                }
            }
            lease_client.revoke(lease).await?;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for node in nodes {
        node.await??;
    }
    let secs = period.as_secs_f64();
    Ok(HeartbeatFigures {
        writes_per_s: writes.load(Ordering::Relaxed) as f64 / secs,
        renewals_per_s: renewals.load(Ordering::Relaxed) as f64 / secs,
        late_renewals: late.load(Ordering::Relaxed),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    println!("planner: {NODES} nodes (98% healthy), bundles of redundancy 1-3, release build");
    println!(
        "{:>8} {:>12} {:>10} {:>14} {:>12} {:>14}",
        "bundles", "first tick", "starts", "decisions/s", "steady tick", "cost per bundle"
    );
    let mut figures = Vec::new();
    for bundles in [1_000, 5_000, 10_000] {
        let f = bench_planner(bundles);
        let per_bundle = f.first_tick.as_secs_f64() * 1e6 / f.bundles as f64;
        println!(
            "{:>8} {:>10.1} ms {:>10} {:>14.0} {:>9.1} ms {:>11.1} µs",
            f.bundles,
            f.first_tick.as_secs_f64() * 1e3,
            f.starts,
            f.starts as f64 / f.first_tick.as_secs_f64(),
            f.steady_tick.as_secs_f64() * 1e3,
            per_bundle
        );
        figures.push(f);
    }
    let (small, large) = (&figures[0], &figures[2]);
    let growth = large.first_tick.as_secs_f64() / small.first_tick.as_secs_f64();
    let slowest = figures.iter().map(|f| f.starts as f64 / f.first_tick.as_secs_f64()).fold(f64::MAX, f64::min);
    println!(
        "planner: 10x the bundles took {growth:.1}x the time (linear: 10x); slowest {slowest:.0} decisions/s = \
         {:.0}x the Kubernetes scheduler's 100 pods/s, {:.1}x Nomad's C1M 3,750/s (goal >= 1,000/s)",
        slowest / 100.0,
        slowest / 3750.0
    );

    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await?.map_err(|e| anyhow!("etcd: {e}"))?;
    let client = Client::connect(etcd.endpoints(), None).await.context("connecting to etcd")?;
    let capacity = write_capacity(&client, 64, Duration::from_secs(5)).await?;
    println!("etcd (3 members, loopback, same machine): write capacity {capacity:.0} puts/s of {ENTRY_BYTES} B at 64 clients");
    for (label, every) in [("entry every beat", Duration::from_secs(1)), ("entry every 10 s", Duration::from_secs(10))]
    {
        let hb = heartbeats(&client, Duration::from_secs(20), every).await?;
        println!(
            "heartbeats, {NODES} nodes, {label}: {:.0} writes/s = {:.1}% of capacity (goal <= 20%); \
             {:.0} lease renewals/s (leader-only, no raft entry); {} beats over 500 ms",
            hb.writes_per_s,
            100.0 * hb.writes_per_s / capacity,
            hb.renewals_per_s,
            hb.late_renewals
        );
    }
    Ok(())
}
