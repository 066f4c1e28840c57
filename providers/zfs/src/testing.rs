//! Test-only tasks, registered only when the kernel command line carries
//! `cerana_zfs.test_tasks=1` (the VM tests and the benchmark pass it; a node never does).
//! They write and checksum files in datasets and time the task API against the `zfs` command
//! in the same guest. They run nothing but fixed operations: no commands from the caller.

use crate::error::ZfsError;
use crate::ops::Zfs;
use cerana_protocol::tasks::zfs::{
    CloneArgs, CreateArgs, DatasetName, DatasetType, DestroyArgs, ReceiveArgs, SendArgs, SnapshotArgs, ZfsClone,
    ZfsCreate, ZfsErrorReason, ZfsReceive, ZfsSend, ZfsSnapshot,
};
use cerana_protocol::{ErrorCode, Request, Task, TaskError};
use cerana_provider_sdk::{Context, Provider};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The command-line word that turns these tasks on.
pub const ENABLE_WORD: &str = "cerana_zfs.test_tasks=1";

pub fn enabled(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == ENABLE_WORD)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteArgs {
    pub dataset: String,
    pub file: String,
    pub bytes: u64,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileArgs {
    pub dataset: String,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchArgs {
    /// Datasets are made under this one (created, destroyed at the end).
    pub scratch: String,
    pub iterations: u32,
    /// A snapshot to send for the send|receive comparison.
    pub stream_snapshot: String,
    pub stream_rounds: u32,
}

/// Median milliseconds of each measured operation, per path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub task_ms: BTreeMap<String, f64>,
    pub command_ms: BTreeMap<String, f64>,
    pub stream_bytes: u64,
}

cerana_protocol::declare_tasks! {
    ZfsTestWrite = "zfs-test-write", Write, "TEST ONLY: writes `bytes` pseudo-random bytes (from `seed`) to a file in a mounted dataset", WriteArgs => FileSum;
    ZfsTestRead = "zfs-test-read", Write, "TEST ONLY: size and SHA-256 of a file in a mounted dataset", FileArgs => FileSum;
    ZfsTestBench = "zfs-test-bench", Write, "TEST ONLY: times zfs-create/snapshot/clone and send|receive through the task API and the zfs command", BenchArgs => BenchResult;
}

async fn file_path(zfs: &Zfs, dataset: &str, file: &str) -> Result<PathBuf, TaskError> {
    let name_ok = !file.is_empty()
        && file.len() <= 200
        && file.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !file.starts_with('.');
    if !name_ok {
        return Err(ZfsError::invalid(format!("bad file name {file:?}")).into());
    }
    let ds = zfs.dataset(dataset).await?;
    match (ds.mounted, ds.mountpoint) {
        (Some(true), Some(mp)) if mp.starts_with('/') => Ok(PathBuf::from(mp).join(file)),
        _ => Err(ZfsError::invalid(format!("{dataset} is not a mounted filesystem")).into()),
    }
}

fn io_error(e: std::io::Error) -> TaskError {
    TaskError::new(ErrorCode::Failed, e.to_string())
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// xorshift64*: fast, deterministic, incompressible enough for ZFS.
fn fill_random(state: &mut u64, buf: &mut [u8]) {
    for word in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        word.copy_from_slice(&v[..word.len()]);
    }
}

fn write_file(path: PathBuf, bytes: u64, seed: u64) -> std::io::Result<FileSum> {
    use std::io::Write;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let mut hasher = Sha256::new();
    let mut state = (seed ^ 0x9e37_79b9_7f4a_7c15).max(1);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill_random(&mut state, &mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(FileSum { bytes, sha256: hex(&hasher.finalize()) })
}

fn read_file(path: PathBuf) -> std::io::Result<FileSum> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum { bytes, sha256: hex(&hasher.finalize()) })
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn command(args: &[&str]) -> Result<Duration, TaskError> {
    let start = Instant::now();
    let out = tokio::process::Command::new(args[0]).args(&args[1..]).output().await.map_err(io_error)?;
    if !out.status.success() {
        return Err(TaskError::new(ErrorCode::Failed, format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(start.elapsed())
}

async fn timed<T: Task>(ctx: &Context, args: &T::Args) -> Result<Duration, TaskError> {
    let start = Instant::now();
    ctx.call::<T>(args).await?;
    Ok(start.elapsed())
}

/// zfs-send then zfs-receive of its stream, both through the coordinator.
async fn send_receive_by_tasks(ctx: &Context, snapshot: &str, target: &str) -> Result<Duration, TaskError> {
    let start = Instant::now();
    let mut send = Request::for_task::<ZfsSend>(&SendArgs { name: snapshot.into(), from: None })
        .map_err(|e| TaskError::new(ErrorCode::Internal, e.to_string()))?;
    send.timeout_ms = Some(600_000);
    let sent = ctx.call_request(send).await?;
    sent.decode::<cerana_protocol::tasks::zfs::SendResult>()?;
    let stream = sent.stream.ok_or_else(|| TaskError::new(ErrorCode::Internal, "zfs-send returned no stream"))?;
    let mut recv = Request::for_task::<ZfsReceive>(&ReceiveArgs { name: target.into(), force: false })
        .map_err(|e| TaskError::new(ErrorCode::Internal, e.to_string()))?;
    recv.timeout_ms = Some(600_000);
    recv.stream = Some(stream);
    ctx.call_request(recv).await?.decode::<cerana_protocol::tasks::zfs::ReceiveResult>()?;
    Ok(start.elapsed())
}

async fn bench(ctx: Context, zfs: Zfs, a: BenchArgs) -> Result<BenchResult, TaskError> {
    let scratch = DatasetName::new(&a.scratch).map_err(ZfsError::from)?;
    let create =
        |name: String| CreateArgs { name, kind: DatasetType::Filesystem, volsize: None, properties: BTreeMap::new() };
    zfs.create(&create(scratch.to_string())).await?;
    type Samples<'a> = BTreeMap<&'a str, Vec<Duration>>;
    let (mut task, mut cmd): (Samples, Samples) = Default::default();
    let result: Result<u64, TaskError> = async {
        for i in 0..a.iterations {
            let (t, c) = (format!("{scratch}/t{i}"), format!("{scratch}/c{i}"));
            // Alternate which path goes first, so neither profits from the other's warm caches.
            for first_task in [i % 2 == 0, i % 2 != 0] {
                if first_task {
                    task.entry("zfs-create").or_default().push(timed::<ZfsCreate>(&ctx, &create(t.clone())).await?);
                    let snap = SnapshotArgs { name: t.clone(), snapname: "s".into(), recursive: false };
                    task.entry("zfs-snapshot").or_default().push(timed::<ZfsSnapshot>(&ctx, &snap).await?);
                    let clone =
                        CloneArgs { name: format!("{t}-clone"), origin: format!("{t}@s"), properties: BTreeMap::new() };
                    task.entry("zfs-clone").or_default().push(timed::<ZfsClone>(&ctx, &clone).await?);
                } else {
                    cmd.entry("zfs-create").or_default().push(command(&["zfs", "create", &c]).await?);
                    cmd.entry("zfs-snapshot")
                        .or_default()
                        .push(command(&["zfs", "snapshot", &format!("{c}@s")]).await?);
                    cmd.entry("zfs-clone")
                        .or_default()
                        .push(command(&["zfs", "clone", &format!("{c}@s"), &format!("{c}-clone")]).await?);
                }
            }
        }
        let bytes = zfs.dataset(&a.stream_snapshot).await?.referenced;
        // One untimed read first: the first timed round would otherwise read the snapshot from
        // disk while the others find it in the ARC.
        command(&["sh", "-c", &format!("zfs send {} | cat > /dev/null", a.stream_snapshot)]).await?;
        for round in 0..a.stream_rounds {
            let (t, c) = (format!("{scratch}/recv-t{round}"), format!("{scratch}/recv-c{round}"));
            let pipe = format!("zfs send {} | zfs receive {c}", a.stream_snapshot);
            for first_task in [round % 2 == 0, round % 2 != 0] {
                if first_task {
                    task.entry("send|receive")
                        .or_default()
                        .push(send_receive_by_tasks(&ctx, &a.stream_snapshot, &t).await?);
                } else {
                    cmd.entry("send|receive").or_default().push(command(&["sh", "-c", &pipe]).await?);
                }
            }
        }
        Ok(bytes)
    }
    .await;
    let cleanup = DestroyArgs {
        name: scratch.to_string(),
        recursive: true,
        recursive_clones: true,
        force_unmount: true,
        defer: false,
    };
    if let Err(e) = zfs.destroy(&cleanup).await {
        tracing::warn!("benchmark cleanup of {scratch}: {e}");
    }
    let stream_bytes = result?;
    let medians = |m: BTreeMap<&str, Vec<Duration>>| m.into_iter().map(|(k, v)| (k.to_owned(), median(v))).collect();
    Ok(BenchResult { task_ms: medians(task), command_ms: medians(cmd), stream_bytes })
}

/// Adds the test-only tasks to `provider`.
pub fn register(provider: Provider, zfs: Zfs) -> Provider {
    let (z1, z2, z3) = (zfs.clone(), zfs.clone(), zfs);
    provider
        .task::<ZfsTestWrite, _, _>(move |_ctx, a: WriteArgs| {
            let zfs = z1.clone();
            async move {
                let path = file_path(&zfs, &a.dataset, &a.file).await?;
                tokio::task::spawn_blocking(move || write_file(path, a.bytes, a.seed))
                    .await
                    .map_err(|e| TaskError::new(ErrorCode::Internal, e.to_string()))?
                    .map_err(io_error)
            }
        })
        .task::<ZfsTestRead, _, _>(move |_ctx, a: FileArgs| {
            let zfs = z2.clone();
            async move {
                let path = file_path(&zfs, &a.dataset, &a.file).await?;
                let result = tokio::task::spawn_blocking(move || read_file(path))
                    .await
                    .map_err(|e| TaskError::new(ErrorCode::Internal, e.to_string()))?;
                result.map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => ZfsError::new(ZfsErrorReason::NotFound, e.to_string()).into(),
                    _ => io_error(e),
                })
            }
        })
        .task::<ZfsTestBench, _, _>(move |ctx, a: BenchArgs| bench(ctx, z3.clone(), a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_word_enables_test_tasks() {
        assert!(enabled("console=ttyS0 cerana_zfs.test_tasks=1 quiet"));
        assert!(!enabled("console=ttyS0"));
        assert!(!enabled("cerana_zfs.test_tasks=0"));
        assert!(!enabled("xcerana_zfs.test_tasks=1"));
    }

    #[test]
    fn written_files_read_back_with_the_same_sum() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let written = write_file(path.clone(), 3 * (1 << 20) + 5, 42).unwrap();
        assert_eq!(read_file(path).unwrap(), written);
        let other = write_file(tmp.path().join("g"), 3 * (1 << 20) + 5, 43).unwrap();
        assert_ne!(other.sha256, written.sha256);
    }
}
