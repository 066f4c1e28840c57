//! The `zfs` provider: the `zfs-*` tasks over OpenZFS's `zfs`/`zpool` commands (machine-readable
//! `-Hp` output), send/receive through Task API streams, and the node's pool bootstrap, which
//! runs at start-up before the provider reports ready. See README.md.

pub mod error;
pub mod ops;
pub mod pool;
pub mod runner;
pub mod streams;
pub mod testing;
pub mod unpack;

use crate::error::ZfsError;
use crate::ops::Zfs;
use crate::pool::Machine;
use cerana_protocol::tasks::zfs::{
    CloneArgs, CreateArgs, DestroyArgs, ExistsResult, HoldsResult, ListArgs, ListResult, MountArgs, NameArgs,
    PoolConfigMode, ReceiveArgs, ReceiveResult, RenameArgs, RollbackArgs, SendArgs, SendResult, SnapshotArgs,
    UnmountArgs, UnpackArgs, UnpackResult, ZfsClone, ZfsCreate, ZfsDestroy, ZfsExists, ZfsGet, ZfsHolds, ZfsList,
    ZfsMount, ZfsPoolStatus, ZfsReceive, ZfsRename, ZfsRollback, ZfsSend, ZfsSnapshot, ZfsUnmount, ZfsUnpack,
};
use cerana_protocol::TaskError;
use cerana_provider_sdk::{InputEnd, OutputEnd, Provider};
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Registers task `T` with a handler that gets the operations and the arguments.
fn serve<T, F, Fut>(provider: Provider, zfs: &Zfs, handler: F) -> Provider
where
    T: cerana_protocol::Task,
    F: Fn(Zfs, T::Args) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T::Output, ZfsError>> + Send + 'static,
{
    let zfs = zfs.clone();
    provider.task::<T, _, _>(move |_ctx, args| {
        let fut = handler(zfs.clone(), args);
        async move { fut.await.map_err(TaskError::from) }
    })
}

/// The provider with every `zfs-*` task over `zfs`; `machine` says where the pool report is.
pub fn provider_with(zfs: Zfs, machine: Machine) -> Provider {
    let p = Provider::new("zfs", env!("CARGO_PKG_VERSION"));
    let p = serve::<ZfsCreate, _, _>(p, &zfs, |z, a: CreateArgs| async move { z.create(&a).await });
    let p = serve::<ZfsClone, _, _>(p, &zfs, |z, a: CloneArgs| async move { z.clone_snapshot(&a).await });
    let p = serve::<ZfsDestroy, _, _>(p, &zfs, |z, a: DestroyArgs| async move { z.destroy(&a).await });
    let p = serve::<ZfsExists, _, _>(p, &zfs, |z, a: NameArgs| async move {
        Ok(ExistsResult { exists: z.exists(&a.name).await? })
    });
    let p = serve::<ZfsGet, _, _>(p, &zfs, |z, a: NameArgs| async move { z.get(&a.name).await });
    let p =
        serve::<ZfsHolds, _, _>(
            p,
            &zfs,
            |z, a: NameArgs| async move { Ok(HoldsResult { holds: z.holds(&a.name).await? }) },
        );
    let p =
        serve::<ZfsList, _, _>(p, &zfs, |z, a: ListArgs| async move { Ok(ListResult { datasets: z.list(&a).await? }) });
    let p = serve::<ZfsMount, _, _>(p, &zfs, |z, a: MountArgs| async move { z.mount(&a).await });
    let p = serve::<ZfsUnmount, _, _>(p, &zfs, |z, a: UnmountArgs| async move { z.unmount(&a).await });
    let p = serve::<ZfsRename, _, _>(p, &zfs, |z, a: RenameArgs| async move { z.rename(&a).await });
    let p = serve::<ZfsRollback, _, _>(p, &zfs, |z, a: RollbackArgs| async move { z.rollback(&a).await });
    let p = serve::<ZfsSnapshot, _, _>(p, &zfs, |z, a: SnapshotArgs| async move { z.snapshot(&a).await });
    let status_zfs = zfs.clone();
    let p = p.task::<ZfsPoolStatus, _, _>(move |_ctx, _args| {
        let (zfs, machine) = (status_zfs.clone(), machine.clone());
        async move { Ok(pool::status(zfs.runner(), &machine).await) }
    });
    let send_zfs = zfs.clone();
    let p = p.task::<ZfsSend, _, _>(move |ctx, a: SendArgs| {
        let zfs = send_zfs.clone();
        async move {
            let cmd = zfs.send_command(&a.name, a.from.as_deref()).await?;
            let name = a.name.clone();
            match ctx.output().await? {
                OutputEnd::Pipe { pipe, finish } => {
                    let child = streams::spawn_send_into(&cmd, pipe)?;
                    tokio::spawn(async move {
                        let outcome = streams::wait_send(child).await;
                        match &outcome {
                            Ok(()) => tracing::info!("sent {name} through a pipe"),
                            Err(e) => tracing::warn!("sending {name} failed: {e}"),
                        }
                        if let Err(e) = finish.finish(streams::verdict(&outcome)).await {
                            tracing::warn!("cannot report how sending {name} ended: {e}");
                        }
                    });
                }
                OutputEnd::Chunks(out) => {
                    let child = streams::spawn_send(&cmd)?;
                    tokio::spawn(async move {
                        match streams::pump_send(child, out).await {
                            Ok(bytes) => tracing::info!("sent {name}: {bytes} bytes"),
                            Err(e) => tracing::warn!("sending {name} failed: {e}"),
                        }
                    });
                }
            }
            Ok(SendResult { name: a.name, from: a.from })
        }
    });
    let unpack_zfs = zfs.clone();
    let p = p.task::<ZfsUnpack, _, _>(move |ctx, a: UnpackArgs| {
        let zfs = unpack_zfs.clone();
        async move {
            let (target, root, budget) = zfs.unpack_target(&a.name, a.max_bytes).await?;
            let done = unpack::unpack(ctx.input().await?, root, cerana_unpack::Limits::new(budget)).await?;
            tracing::info!(dataset = %target, entries = done.entries, bytes = done.bytes, "archive unpacked");
            Ok(UnpackResult {
                dataset: zfs.dataset(target.as_str()).await?,
                entries: done.entries,
                files: done.files,
                directories: done.directories,
                symlinks: done.symlinks,
                hard_links: done.hard_links,
                bytes: done.bytes,
            })
        }
    });
    let recv_zfs = zfs;
    p.task::<ZfsReceive, _, _>(move |ctx, a: ReceiveArgs| {
        let zfs = recv_zfs.clone();
        async move {
            let (target, cmd) = zfs.receive_command(&a.name, a.force).await?;
            let bytes = match ctx.input().await? {
                InputEnd::Pipe { pipe, verdict } => streams::receive_from_pipe(&cmd, pipe, verdict).await?,
                InputEnd::Chunks(input) => streams::receive(&cmd, input).await?,
            };
            Ok(ReceiveResult { dataset: zfs.dataset(target.as_str()).await?, bytes })
        }
    })
}

/// The provider over the system's `zfs` tools.
pub fn provider() -> Provider {
    provider_with(Zfs::new(Arc::new(runner::SystemRunner)), Machine::default())
}

const USAGE: &str = "cerana-zfs: the zfs provider (zfs-* tasks) and the node's pool bootstrap

Usage: cerana-zfs [--coordinator PATH] [--no-bootstrap]

  --coordinator PATH  the coordinator's unix socket (env CERANA_COORDINATOR_SOCKET,
                      default /run/cerana/coordinator.sock)
  --no-bootstrap      serve without importing or creating the pool first

At start-up the pool `data` is imported, or with cerana.zfs_config=auto on the kernel command
line created from every unused disk, before the provider registers (and reports ready).
The kernel command-line word cerana_zfs.test_tasks=1 adds the test-only zfs-test-* tasks.";

#[derive(Debug, PartialEq, Eq)]
struct Options {
    socket: PathBuf,
    bootstrap: bool,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        socket: std::env::var_os(cerana_protocol::COORDINATOR_SOCKET_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(cerana_protocol::DEFAULT_COORDINATOR_SOCKET)),
        bootstrap: true,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--coordinator" => options.socket = args.next().ok_or("--coordinator needs a socket path")?.into(),
            "--no-bootstrap" => options.bootstrap = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("cerana-zfs {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => return Err(format!("unexpected argument {other:?} (see --help)")),
        }
    }
    Ok(Some(options))
}

/// The `cerana-zfs` program: bootstrap the pool, then serve.
pub fn main() -> ExitCode {
    cerana_provider_sdk::init_logging();
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cerana-zfs: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cerana-zfs: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let machine = Machine::default();
    let cmdline = std::fs::read_to_string(&machine.cmdline).unwrap_or_default();
    let zfs = Zfs::new(Arc::new(runner::SystemRunner));
    if options.bootstrap {
        // Without cerana.zfs_config the node imports an existing pool but never creates one.
        let mode = pool::mode_from_cmdline(&cmdline).unwrap_or(PoolConfigMode::Manual);
        runtime.block_on(pool::bootstrap(zfs.runner(), &machine, mode));
    }
    let mut provider = provider_with(zfs.clone(), machine);
    if testing::enabled(&cmdline) {
        tracing::warn!("test-only zfs-test-* tasks are enabled ({})", testing::ENABLE_WORD);
        provider = testing::register(provider, zfs);
    }
    match runtime.block_on(provider.serve(options.socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_or_fail_clearly() {
        let parse = |a: &[&str]| parse_options(a.iter().map(|s| s.to_string()));
        let o = parse(&["--coordinator", "/tmp/c.sock", "--no-bootstrap"]).unwrap().unwrap();
        assert_eq!(o, Options { socket: "/tmp/c.sock".into(), bootstrap: false });
        assert!(parse(&[]).unwrap().unwrap().bootstrap);
        assert!(parse(&["--coordinator"]).unwrap_err().contains("needs a socket path"));
        assert!(parse(&["--bogus"]).unwrap_err().contains("--bogus"));
    }

    #[test]
    fn every_zfs_task_in_the_catalog_is_served() {
        let provider = provider();
        let served = format!("{provider:?}");
        for info in cerana_protocol::tasks::zfs::TASKS {
            assert!(served.contains(info.name), "{} is not served: {served}", info.name);
        }
    }
}
