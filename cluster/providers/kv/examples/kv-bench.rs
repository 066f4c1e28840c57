//! `make bench-kv`: `kv-set`, `kv-get` and `kv-update` through the task API (client →
//! coordinator → kv provider → etcd) beside the same operations made with `etcd-client`
//! directly, against the same 3-member etcd on loopback, in the same run: latency at
//! concurrency 1 and throughput at concurrency 64, with their ratios.

use anyhow::{anyhow, Context, Result};
use cerana_client::{CallError, UnixClient};
use cerana_coordinator::{Config, Coordinator};
use cerana_kv::{provider_with, LazyStore};
use cerana_protocol::tasks::kv::{KeyArgs, KvGet, KvKey, KvSet, KvUpdate, KvValue, SetArgs, UpdateArgs};
use cerana_store::StoreConfig;
use cerana_testbed::etcd::EtcdCluster;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MEASURE: Duration = Duration::from_secs(3);
const WARMUP: Duration = Duration::from_millis(500);
const OP_LIMIT: Duration = Duration::from_secs(10);
const VALUE: &str = "0123456789abcdef0123456789abcdef";

type OpFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;
type Op = Box<dyn FnMut() -> OpFuture + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Set,
    Get,
    Update,
}

struct Figures {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn measure(ops: Vec<Op>) -> Result<Figures> {
    let mut workers = Vec::new();
    for mut op in ops {
        workers.push(tokio::spawn(async move {
            let bounded = |f: OpFuture| async move {
                tokio::time::timeout(OP_LIMIT, f).await.map_err(|_| anyhow!("an operation took over {OP_LIMIT:?}"))?
            };
            let warm = Instant::now() + WARMUP;
            while Instant::now() < warm {
                bounded(op()).await?;
            }
            let mut latencies = Vec::with_capacity(10_000);
            let start = Instant::now();
            while start.elapsed() < MEASURE {
                let t = Instant::now();
                bounded(op()).await?;
                latencies.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>((latencies, start.elapsed()))
        }));
    }
    let (mut all, mut longest) = (Vec::new(), Duration::ZERO);
    for worker in workers {
        let (latencies, elapsed) = worker.await??;
        all.extend(latencies);
        longest = longest.max(elapsed);
    }
    all.sort_unstable();
    let pick = |p: f64| all.get(((all.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0) as f64;
    Ok(Figures { ops_per_s: all.len() as f64 / longest.as_secs_f64(), p50_us: pick(0.5), p99_us: pick(0.99) })
}

fn key(worker: usize) -> String {
    format!("/bench/{worker}")
}

fn task_error(e: CallError) -> anyhow::Error {
    anyhow!("{e}")
}

/// One worker's operation through the task API. Each worker owns its key, so the index it
/// wrote last is always current and every update succeeds.
async fn task_op(socket: &std::path::Path, kind: Kind, worker: usize) -> Result<Op> {
    let client = UnixClient::connect(socket, "bench").await?;
    let (k, v) = (KvKey::new(key(worker))?, KvValue::new(VALUE)?);
    let first = client.run::<KvSet>(&SetArgs { key: k.clone(), value: v.clone() }).await.map_err(task_error)?;
    let index = Arc::new(AtomicU64::new(first.index));
    Ok(Box::new(move || {
        let (client, k, v, index) = (client.clone(), k.clone(), v.clone(), index.clone());
        Box::pin(async move {
            match kind {
                Kind::Set => client.run::<KvSet>(&SetArgs { key: k, value: v }).await.map(drop),
                Kind::Get => client.run::<KvGet>(&KeyArgs { key: k }).await.map(drop),
                Kind::Update => {
                    let args = UpdateArgs { key: k, value: v, index: index.load(Ordering::Relaxed), ttl_ms: None };
                    client.run::<KvUpdate>(&args).await.map(|r| index.store(r.index, Ordering::Relaxed))
                }
            }
            .map_err(task_error)
        })
    }))
}

/// The same operation with etcd-client directly.
async fn direct_op(client: &etcd_client::Client, kind: Kind, worker: usize) -> Result<Op> {
    let k = key(worker);
    let first = client.kv_client().put(k.as_str(), VALUE, None).await?;
    let index = Arc::new(AtomicU64::new(first.header().map_or(0, |h| h.revision() as u64)));
    let client = client.clone();
    Ok(Box::new(move || {
        let (client, k, index) = (client.clone(), k.clone(), index.clone());
        Box::pin(async move {
            let mut kv = client.kv_client();
            match kind {
                Kind::Set => kv.put(k, VALUE, None).await.map(drop)?,
                Kind::Get => kv.get(k, None).await.map(drop)?,
                Kind::Update => {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            k.as_str(),
                            CompareOp::Equal,
                            index.load(Ordering::Relaxed) as i64,
                        )])
                        .and_then([TxnOp::put(k.as_str(), VALUE, None)]);
                    let response = kv.txn(txn).await?;
                    if !response.succeeded() {
                        return Err(anyhow!("a direct update lost its compare"));
                    }
                    index.store(response.header().map_or(0, |h| h.revision() as u64), Ordering::Relaxed);
                }
            }
            Ok(())
        })
    }))
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run())
}

async fn run() -> Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await?.context("start a 3-member etcd")?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("coordinator.sock");
    let coordinator = Coordinator::start(Config::new(&socket)).await?;
    let store = StoreConfig::new(etcd.endpoints());
    let provider = tokio::spawn(provider_with(LazyStore::new(store)).serve(socket.clone()));
    let direct = etcd_client::Client::connect(etcd.endpoints(), None).await?;
    // Wait until the provider is registered and the store answers through it.
    let probe = UnixClient::connect(&socket, "bench").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let probe_args = SetArgs { key: KvKey::new("/bench/probe")?, value: KvValue::new("x")? };
    while let Err(e) = probe.run::<KvSet>(&probe_args).await {
        if Instant::now() > deadline {
            return Err(anyhow!("the kv provider never answered: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!(
        "kv benchmark: 3-member etcd on loopback, {} s per figure, value {} bytes",
        MEASURE.as_secs(),
        VALUE.len()
    );
    println!(
        "{:<10} {:>4} {:>26} {:>26} {:>8}",
        "operation", "conc", "task API (ops/s p50 p99)", "etcd-client direct", "ratio"
    );
    let mut verdicts = Vec::new();
    for (name, kind) in [("kv-set", Kind::Set), ("kv-get", Kind::Get), ("kv-update", Kind::Update)] {
        for concurrency in [1usize, 64] {
            let mut ops = Vec::new();
            for w in 0..concurrency {
                ops.push(task_op(&socket, kind, w).await?);
            }
            let task = measure(ops).await?;
            let mut ops = Vec::new();
            for w in 0..concurrency {
                ops.push(direct_op(&direct, kind, w).await?);
            }
            let peer = measure(ops).await?;
            // Latency at 1 (lower is better: task/direct), throughput at 64 (task/direct).
            let (ratio, what, ok) = if concurrency == 1 {
                let r = task.p50_us / peer.p50_us.max(1.0);
                (r, "p50 latency", r <= 1.3)
            } else {
                let r = task.ops_per_s / peer.ops_per_s.max(1.0);
                (r, "throughput", r >= 0.8)
            };
            println!(
                "{name:<10} {concurrency:>4} {:>10.0} {:>7.0}µs {:>6.0}µs {:>10.0} {:>7.0}µs {:>6.0}µs {ratio:>7.2}x",
                task.ops_per_s, task.p50_us, task.p99_us, peer.ops_per_s, peer.p50_us, peer.p99_us
            );
            verdicts.push(format!(
                "{name} at {concurrency}: {what} ratio {ratio:.2} ({})",
                if ok { "meets the goal" } else { "MISSES the goal" }
            ));
        }
    }
    for verdict in verdicts {
        println!("{verdict}");
    }
    println!("goals: latency ratio <= 1.3 at concurrency 1, throughput ratio >= 0.8 at 64");
    provider.abort();
    coordinator.shutdown();
    drop(etcd);
    Ok(())
}
