//! `cerana-bench task-api`: no-op task round trips through the coordinator (client → coordinator
//! → provider → coordinator → client, over unix sockets) beside the floor, a raw unix-socket
//! ping-pong of the same bytes, measured in the same run. Also a 1 GiB stream through the
//! coordinator beside a raw socket copy, with the coordinator's peak RSS.

use anyhow::{bail, Context, Result};
use cerana_client::{open_stream, UnixClient};
use cerana_protocol::frame::{encode_json_into, read_frame, MAX_FRAME_LEN};
use cerana_protocol::stream::{ChunkReader, ChunkWriter};
use cerana_protocol::tasks::node::{EchoArgs, NodeEcho};
use cerana_protocol::{Request, StreamDirection, StreamHandle, StreamId, ToCoordinator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};

/// One timed round trip, as each client variant makes it.
type Op = Box<dyn FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>> + Send>;
use tokio::net::{UnixListener, UnixStream};

const MEASURE: Duration = Duration::from_secs(3);
const WARMUP: Duration = Duration::from_millis(500);
const PAYLOAD: &str = "0123456789abcdef0123456789abcdef";

struct Figures {
    tasks_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[index]) / 10.0
}

/// One operation may take at most this long; a hung path fails the benchmark (and its child
/// processes are killed on the way out) instead of hanging it.
const OP_LIMIT: Duration = Duration::from_secs(10);

async fn bounded(op: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::time::timeout(OP_LIMIT, op).await.map_err(|_| anyhow::anyhow!("an operation took over {OP_LIMIT:?}"))?
}

/// Runs `concurrency` workers, each calling `op` in a loop; latencies in tenths of µs.
async fn measure<F, Fut>(concurrency: usize, make: F) -> Result<Figures>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<
        Output = Result<
            Box<dyn FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>> + Send>,
        >,
    >,
{
    let mut workers = Vec::new();
    for i in 0..concurrency {
        let mut op = make(i).await?;
        workers.push(tokio::spawn(async move {
            let warm_until = Instant::now() + WARMUP;
            while Instant::now() < warm_until {
                bounded(op()).await?;
            }
            let mut latencies = Vec::with_capacity(100_000);
            let start = Instant::now();
            while start.elapsed() < MEASURE {
                let t = Instant::now();
                bounded(op()).await?;
                latencies.push((t.elapsed().as_nanos() / 100) as u32);
            }
            Ok::<_, anyhow::Error>((latencies, start.elapsed()))
        }));
    }
    let mut all = Vec::new();
    let mut longest = Duration::ZERO;
    for w in workers {
        let (lat, elapsed) = w.await??;
        all.extend(lat);
        longest = longest.max(elapsed);
    }
    all.sort_unstable();
    Ok(Figures {
        tasks_per_s: all.len() as f64 / longest.as_secs_f64(),
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
    })
}

/// The exact frame a client sends for one no-op task.
fn echo_request_frame() -> Result<Vec<u8>> {
    let request = Request::for_task::<NodeEcho>(&EchoArgs { data: PAYLOAD.into() })?;
    let mut frame = Vec::new();
    encode_json_into(&mut frame, &ToCoordinator::Request(request))?;
    Ok(frame)
}

/// The floor's server: echoes every frame back on the same connection.
async fn echo_server(socket: PathBuf) -> Result<()> {
    let listener = UnixListener::bind(&socket)?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            let mut buf = Vec::new();
            let mut out = Vec::new();
            while let Ok(true) = read_frame(&mut read, &mut buf, MAX_FRAME_LEN).await {
                out.clear();
                cerana_protocol::frame::encode_into(&mut out, &buf).ok();
                if write.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

struct Process(Child);
impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no parent")?.join(name);
    if !path.exists() {
        bail!("{} not found: build it first (make bench builds it)", path.display());
    }
    Ok(path)
}

fn spawn(program: &Path, args: &[&str]) -> Result<Process> {
    let child = Command::new(program)
        .args(args)
        .env("CERANA_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(Process(child))
}

async fn wait_for_socket(path: &Path) -> Result<()> {
    for _ in 0..500 {
        if UnixStream::connect(path).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{} never came up", path.display())
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn task_api() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let floor_socket = dir.path().join("floor.sock");
    let coord_socket = dir.path().join("coordinator.sock");
    let me = std::env::current_exe()?;
    let _floor = spawn(&me, &["echo-server", floor_socket.to_str().context("path")?])?;
    let coordinator =
        spawn(&sibling("cerana-coordinator")?, &["--socket", coord_socket.to_str().context("path")?, "--no-http"])?;
    wait_for_socket(&floor_socket).await?;
    wait_for_socket(&coord_socket).await?;
    let _provider = spawn(&sibling("cerana-node-info")?, &["--coordinator", coord_socket.to_str().context("path")?])?;
    let probe = UnixClient::connect(&coord_socket, "bench").await?;
    for _ in 0..500 {
        if probe.run::<NodeEcho>(&EchoArgs { data: "x".into() }).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let frame = echo_request_frame()?;
    println!(
        "task-api: no-op task (node-echo, {} B request frame) on {} cores",
        frame.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<34} {:>5} {:>10} {:>9} {:>9}", "path", "conc", "tasks/s", "p50 µs", "p99 µs");
    let mut results = Vec::new();
    let levels: Vec<usize> = std::env::var("CERANA_BENCH_CONCURRENCY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 64]);
    for &concurrency in &levels {
        let floor = measure(concurrency, |_| {
            let socket = floor_socket.clone();
            let frame = frame.clone();
            async move {
                let stream = UnixStream::connect(&socket).await?;
                let (read, write) = stream.into_split();
                let state = std::sync::Arc::new(tokio::sync::Mutex::new((BufReader::new(read), write, Vec::new())));
                let op: Op = Box::new(move || {
                    let state = state.clone();
                    let frame = frame.clone();
                    Box::pin(async move {
                        let mut guard = state.lock().await;
                        let (read, write, buf) = &mut *guard;
                        write.write_all(&frame).await?;
                        if !read_frame(read, buf, MAX_FRAME_LEN).await? {
                            bail!("floor server closed");
                        }
                        Ok(())
                    })
                });
                Ok(op)
            }
        })
        .await?;
        let through = measure(concurrency, |_| {
            let socket = coord_socket.clone();
            async move {
                let client = UnixClient::connect(&socket, "bench").await?;
                let op: Op = Box::new(move || {
                    let client = client.clone();
                    Box::pin(async move {
                        client.run::<NodeEcho>(&EchoArgs { data: PAYLOAD.into() }).await?;
                        Ok(())
                    })
                });
                Ok(op)
            }
        })
        .await?;
        for (name, f) in [("raw unix ping-pong (floor)", &floor), ("through the coordinator", &through)] {
            println!("{:<34} {:>5} {:>10.0} {:>9.1} {:>9.1}", name, concurrency, f.tasks_per_s, f.p50_us, f.p99_us);
        }
        results.push((concurrency, floor, through));
    }
    println!();
    for (concurrency, floor, through) in &results {
        println!(
            "ratio coordinator/floor at conc {concurrency}: throughput {:.2}x slower, p50 {:.2}x, p99 {:.2}x",
            floor.tasks_per_s / through.tasks_per_s,
            through.p50_us / floor.p50_us,
            through.p99_us / floor.p99_us
        );
    }
    let (_, _, c1) = &results[0];
    let (_, f64_, c64) = &results[1];
    println!(
        "targets: >= 20000 tasks/s at conc 64: {} ({:.0}); p99 < 1 ms at conc 1: {} ({:.0} µs); within 4x of the floor's throughput at conc 64: {} ({:.2}x)",
        verdict(c64.tasks_per_s >= 20_000.0),
        c64.tasks_per_s,
        verdict(c1.p99_us < 1000.0),
        c1.p99_us,
        verdict(f64_.tasks_per_s / c64.tasks_per_s <= 4.0),
        f64_.tasks_per_s / c64.tasks_per_s
    );

    stream_bench(&coord_socket, coordinator.0.id()).await
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// 1 GiB through the coordinator's stream broker vs a direct unix socket copy.
async fn stream_bench(coord_socket: &Path, coordinator_pid: u32) -> Result<()> {
    const TOTAL: usize = 1 << 30;
    const CHUNK: usize = 256 * 1024;
    let chunk = vec![0x5au8; CHUNK];

    let (a, b) = UnixStream::pair()?;
    let start = Instant::now();
    let writer = tokio::spawn({
        let chunk = chunk.clone();
        async move {
            let mut w = ChunkWriter::new(a);
            for _ in 0..TOTAL / CHUNK {
                w.write_chunk(&chunk).await?;
            }
            w.finish().await?;
            Ok::<_, anyhow::Error>(())
        }
    });
    let got = ChunkReader::new(b).copy_to(&mut tokio::io::sink()).await?;
    writer.await??;
    let direct = TOTAL as f64 / start.elapsed().as_secs_f64() / 1e6;
    assert_eq!(got as usize, TOTAL);

    let handle = StreamHandle::local(StreamId::random());
    let start = Instant::now();
    let producer = open_stream(coord_socket, handle.clone(), StreamDirection::Put).await?;
    let writer = tokio::spawn(async move {
        let mut w = ChunkWriter::new(producer);
        for _ in 0..TOTAL / CHUNK {
            w.write_chunk(&chunk).await?;
        }
        w.finish().await?;
        Ok::<_, anyhow::Error>(())
    });
    let consumer = open_stream(coord_socket, handle, StreamDirection::Get).await?;
    let got = ChunkReader::new(consumer).copy_to(&mut tokio::io::sink()).await?;
    writer.await??;
    let brokered = TOTAL as f64 / start.elapsed().as_secs_f64() / 1e6;
    assert_eq!(got as usize, TOTAL);
    println!();
    println!("stream: 1 GiB direct unix socket {direct:.0} MB/s; through the coordinator {brokered:.0} MB/s ({:.2}x of direct)", brokered / direct);
    println!("coordinator peak RSS after the whole run: {:.1} MiB (target < 64 MiB)", peak_rss_mib(coordinator_pid));
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("task-api") => runtime.block_on(task_api()),
        Some("echo-server") => {
            let socket = args.get(1).context("echo-server needs a socket path")?;
            runtime.block_on(echo_server(PathBuf::from(socket)))
        }
        _ => bail!("usage: cerana-bench task-api"),
    }
}
