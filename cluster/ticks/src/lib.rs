//! `cerana-ticks`: the Cerana Platform's reconcilers (issue #18), one process per node, run by
//! init as the `ticks` service.
//!
//! - **The node tick** (`report`): every heartbeat, what this node runs and holds, on a lease
//!   of the heartbeat TTL.
//! - **The cluster ticks** (`leader`), on the node elected through the store: the pure planners
//!   (`cerana_planner`) over the declared objects and the reports (`state`), then the actions,
//!   each carrying the leader's term.
//! - **The `ticks` provider**: `bundle-apply` (the node's side of an action, refused for any term
//!   but the current one: `apply`), `ticks-plan` (what the next tick would do), `ticks-history`.
//!
//! Intervals come from the kernel command line (`settings`).

pub mod apply;
pub mod caller;
pub mod leader;
pub mod network;
pub mod report;
pub mod settings;
pub mod state;
pub mod volumes;

use cerana_protocol::tasks::ticks::{self as t, History, JOURNAL_RUNS, LEADER};
use cerana_provider_sdk::{ErrorCode, Provider, TaskError};
use cerana_store::{store_task, task_error, LazyStore};
use settings::Settings;
use std::sync::Arc;

/// The whole `cerana-ticks` program.
pub fn main() -> std::process::ExitCode {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (settings, problems) = Settings::parse(&cmdline);
    cerana_store::provider_main("ticks", |store| {
        let name = match nix::unistd::gethostname().map(|h| h.into_string()) {
            Ok(Ok(name)) => name,
            _ => {
                eprintln!("cerana-ticks: this node has no usable host name");
                return std::process::ExitCode::from(2);
            }
        };
        let loops = store.clone();
        let fence = Arc::new(apply::Fence::default());
        let orders = fence.clone();
        provider(store, fence).main_with(move |socket| async move {
            for problem in problems {
                tracing::warn!("{problem}");
            }
            tracing::info!(node = %name, heartbeat_ms = settings.heartbeat.as_millis() as u64,
                ttl_ms = settings.heartbeat_ttl.as_millis() as u64, tick_ms = settings.tick.as_millis() as u64, "ticks");
            run_loops(loops, socket, name, settings, orders).await;
        })
    })
}

/// Aborts its task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The node tick and the campaign for the cluster ticks, until the process ends; dropped, it
/// stops both (a node whose loops stop must not stay in line for the leadership).
pub async fn run_loops(
    store: LazyStore,
    socket: std::path::PathBuf,
    name: String,
    settings: Settings,
    fence: Arc<apply::Fence>,
) {
    let caller = Arc::new(caller::Caller::new(socket));
    let leader = AbortOnDrop(tokio::spawn(leader::run(store.clone(), caller.clone(), name.clone(), settings)));
    let mut reporter = report::Reporter::new(name.clone(), settings);
    let mut network = network::NetworkTick::default();
    let mut beats = 0u32;
    let mut every = tokio::time::interval(settings.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if leader.0.is_finished() {
            tracing::error!("the cluster ticks' loop ended");
            return;
        }
        beats = beats.wrapping_add(1);
        match store.get().await {
            Ok(s) => {
                reporter.beat(&s, &caller).await;
                // The network every other beat: it reads the whole cluster.
                if beats.is_multiple_of(2) {
                    if let Err(e) = network.run(&s, &caller, &name, fence.orders()).await {
                        tracing::warn!("the network tick: {e}");
                    }
                }
            }
            Err(e) => tracing::debug!("no store for the node tick: {e}"),
        }
    }
}

/// The `ticks` provider over `store`.
pub fn provider(store: LazyStore, fence: Arc<apply::Fence>) -> Provider {
    let apply_store = store.clone();
    let p = Provider::new("ticks", env!("CARGO_PKG_VERSION")).task::<t::BundleApply, _, _>(move |ctx, args| {
        let (fence, store) = (fence.clone(), apply_store.clone());
        async move { fence.apply(&ctx, &store, args).await }
    });
    let p = store_task!(p, store, t::TicksPlan, |s, args| {
        args.validate().map_err(|e| TaskError::new(ErrorCode::InvalidArgs, e))?;
        let mut cluster = state::Cluster::read(s).await.map_err(task_error)?;
        cluster.assume(args);
        let leader = s.leader(LEADER).await.map_err(task_error)?.map(|h| h.value);
        let decisions = cluster.decide(&Default::default(), report::now_ms(), u64::MAX);
        Ok(cluster.preview(&decisions, leader))
    });
    store_task!(p, store, t::TicksHistory, |s, args| {
        let limit = args.limit.map_or(20, |l| (l as usize).min(JOURNAL_RUNS));
        Ok(History { runs: leader::history(s, limit).await? })
    })
}
