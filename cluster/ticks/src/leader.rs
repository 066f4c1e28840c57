//! The cluster ticks, on the node elected under `LEADER`: every tick reads the cluster, plans
//! (`state::Cluster::decide`), copies datasets between nodes, sends each node its `bundle-apply`
//! orders with this leader's term, and journals the run with a write fenced on the term. A
//! leader that loses its lease or finds another in its place stops at once; its orders already
//! on the way are refused by the nodes (see `apply`).

use crate::caller::Caller;
use crate::report::now_ms;
use crate::settings::Settings;
use crate::state::Cluster;
use cerana_planner::addresses::AddressAction;
use cerana_planner::datasets::DatasetAction;
use cerana_planner::Action;
use cerana_protocol::tasks::clusterconf::DATASETS_ON_POOL;
use cerana_protocol::tasks::ticks::{
    ActionOutcome, AddressRecord, ApplyAction, ApplyArgs, BundleApply, SubnetRecord, TickRun, ADDRESSES, JOURNAL,
    JOURNAL_RUNS, LEADER, REPORTS, SUBNETS,
};
use cerana_protocol::tasks::zfs::{
    CreateArgs, DatasetType, DestroyArgs, ListArgs as ZfsListArgs, ReceiveArgs, SendArgs, ZfsCreate, ZfsDestroy,
    ZfsList, ZfsReceive, ZfsSend,
};
use cerana_protocol::{ErrorCode, NodeUrl, TaskError};
use cerana_store::{Holder, LazyStore, Store, StoreError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const APPLY_TIMEOUT: Duration = Duration::from_secs(180);
const COPY_TIMEOUT: Duration = Duration::from_secs(1800);
const SHORT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node waits in line for the leadership before it stands again (its place in line
/// kept meanwhile: the store renews its campaign's lease).
const CAMPAIGN_WAIT: Duration = Duration::from_secs(300);

/// What the leader keeps between ticks.
#[derive(Debug)]
pub struct Ticks {
    name: String,
    settings: Settings,
    caller: Arc<Caller>,
    /// Copies nothing needs, since when (the dataset planner's memory).
    unneeded_since: BTreeMap<(String, String), u64>,
    runs: u64,
}

/// Campaigns forever; while elected, ticks.
pub async fn run(lazy: LazyStore, caller: Arc<Caller>, name: String, settings: Settings) {
    let mut ticks = Ticks { name, settings, caller, unneeded_since: BTreeMap::new(), runs: 0 };
    loop {
        let store = match lazy.get().await {
            Ok(store) => store,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match store.campaign(LEADER, &ticks.name, settings.lease_secs(), CAMPAIGN_WAIT).await {
            Ok(holder) => {
                tracing::info!(term = holder.token, key = %holder.key, "leading the cluster ticks");
                ticks.lead(&store, &holder).await;
                let _ = store.revoke(holder.lease).await;
                tracing::info!(term = holder.token, "no longer leading the cluster ticks");
            }
            Err(StoreError::Held { .. }) => {}
            Err(e) => {
                tracing::debug!("campaign for the cluster ticks: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Keeps `holder`'s lease alive; sets `lost` once it cannot have lived (no keep-alive for its
/// TTL) or the store says it ended.
async fn keep_alive(store: Store, holder: Holder, ttl: Duration, lost: Arc<AtomicBool>) {
    let mut last = Instant::now();
    while !lost.load(Ordering::SeqCst) {
        tokio::time::sleep(ttl / 3).await;
        match store.keep_alive(holder.lease).await {
            Ok(ttl) if ttl > 0 => last = Instant::now(),
            Ok(_) | Err(StoreError::NotFound { .. }) => lost.store(true, Ordering::SeqCst),
            Err(_) if last.elapsed() >= ttl => lost.store(true, Ordering::SeqCst),
            Err(_) => {}
        }
    }
}

/// How often an action in flight checks on its nodes' heartbeats and on the leadership.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Runs `action` unless one of `nodes` dies (its report, on its heartbeat lease, is gone) or
/// this leader loses its lease first: an action is not waited on for its whole timeout when
/// the node at the other end lost power mid-way (its connection just hangs), and a deposed
/// leader stops at once. The store unreachable is not taken for either.
async fn while_alive<const N: usize>(
    store: &Store,
    nodes: [&str; N],
    lost: &AtomicBool,
    action: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    let gone = async {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            if lost.load(Ordering::SeqCst) {
                return "this leader lost its lease".to_owned();
            }
            for node in nodes {
                if let Ok(None) = store.get(&format!("{REPORTS}/{node}")).await {
                    return format!("{node}'s heartbeat lapsed");
                }
            }
        }
    };
    tokio::select! {
        done = action => done,
        why = gone => Err(format!("abandoned: {why} while it ran")),
    }
}

fn failed(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Ticks {
    async fn lead(&mut self, store: &Store, holder: &Holder) {
        let lost = Arc::new(AtomicBool::new(false));
        let ttl = Duration::from_secs(self.settings.lease_secs() as u64);
        // Stopped with the leadership, however it ends (also when this task is aborted).
        let _keeper = crate::AbortOnDrop(tokio::spawn(keep_alive(store.clone(), holder.clone(), ttl, lost.clone())));
        while !lost.load(Ordering::SeqCst) {
            let next = Instant::now() + self.settings.tick;
            match self.tick(store, holder, &lost).await {
                Ok(()) => {}
                Err(StoreError::Deposed { .. }) => break,
                // No quorum, say: nothing acted on, tried again next tick.
                Err(e) => tracing::warn!("cluster tick: {e}"),
            }
            if let Ok(false) = store.still_leads(holder).await {
                break;
            }
            tokio::time::sleep_until(next.into()).await;
        }
        lost.store(true, Ordering::SeqCst);
    }

    fn url(&self, cluster: &Cluster, node: &str) -> Result<Option<NodeUrl>, String> {
        if node == self.name {
            return Ok(None);
        }
        let url =
            cluster.nodes.get(node).and_then(|n| n.api_url.clone()).ok_or_else(|| format!("{node} has no API URL"))?;
        NodeUrl::new(url).map(Some).map_err(|e| format!("{node}'s API URL: {e}"))
    }

    /// One run: read, plan, act, journal.
    async fn tick(&mut self, store: &Store, holder: &Holder, lost: &AtomicBool) -> Result<(), StoreError> {
        let started = Instant::now();
        let started_ms = now_ms();
        let mut cluster = Cluster::read(store).await?;
        if !store.still_leads(holder).await? {
            return Err(StoreError::Deposed { key: holder.key.clone(), term: holder.token });
        }
        let grace_ms = self.settings.dataset_grace.as_millis() as u64;
        let decisions = cluster.decide(&self.unneeded_since, started_ms, grace_ms);
        self.unneeded_since = decisions.datasets.unneeded_since.clone();
        let (desired_hash, observed_hash) = cluster.hashes();
        let mut outcomes = Vec::new();
        let mut record = |action: String, outcome: Result<(), String>| {
            let outcome = match outcome {
                Ok(()) => "ok".to_string(),
                Err(e) => {
                    tracing::warn!(%action, "failed: {e}");
                    e
                }
            };
            outcomes.push(ActionOutcome { action, outcome });
        };
        for action in &decisions.datasets.actions {
            if lost.load(Ordering::SeqCst) {
                break;
            }
            let done = match action {
                DatasetAction::Copy { dataset, from, to, snapshot, base } => {
                    let copy = self.copy(&cluster, dataset, from, to, snapshot, base.as_deref());
                    let copied = while_alive(store, [from.as_str(), to.as_str()], lost, copy).await;
                    if copied.is_ok() {
                        // The bundles started below may use it at once.
                        if let Some(report) = cluster.reports.get_mut(to) {
                            report.datasets.entry(dataset.clone()).or_default().push(snapshot.clone());
                        }
                    }
                    copied
                }
                DatasetAction::Destroy { dataset, node } => {
                    while_alive(store, [node.as_str()], lost, self.destroy(&cluster, dataset, node)).await
                }
            };
            record(action.to_string(), done);
        }
        // Subnets and addresses before the starts that use them; their release after the stops.
        let (assign, release) = decisions.addresses.before_and_after();
        for action in assign {
            let done = address(store, holder, action).await;
            if done.is_ok() {
                cluster.addressed(action);
            }
            record(action.to_string(), done);
        }
        for action in &decisions.bundles.actions {
            if lost.load(Ordering::SeqCst) {
                break;
            }
            let (bundle, node, order) = match action {
                Action::Stop { bundle, node, .. } => (bundle, node, Ok(ApplyAction::Stop)),
                Action::Start { bundle, node } | Action::Update { bundle, node } => {
                    (bundle, node, cluster.run_args(bundle, node))
                }
            };
            let done = match order {
                Ok(order) => {
                    let apply = self.apply(&cluster, holder, bundle, node, order);
                    while_alive(store, [node.as_str()], lost, apply).await
                }
                Err(waiting) => Err(waiting),
            };
            record(action.to_string(), done);
        }
        for action in release {
            if lost.load(Ordering::SeqCst) {
                break;
            }
            record(action.to_string(), address(store, holder, action).await);
        }
        let run = TickRun {
            leader: self.name.clone(),
            term: holder.token,
            revision: cluster.revision,
            started_ms,
            duration_ms: started.elapsed().as_millis() as u64,
            desired_hash,
            observed_hash,
            actions: outcomes,
            unplaced: decisions.bundles.unplaced.iter().map(ToString::to_string).collect(),
        };
        self.journal(store, holder, &run).await
    }

    async fn apply(
        &self,
        cluster: &Cluster,
        holder: &Holder,
        bundle: &str,
        node: &str,
        action: ApplyAction,
    ) -> Result<(), String> {
        let url = self.url(cluster, node)?;
        let args = ApplyArgs { bundle: bundle.to_owned(), leader_key: holder.key.clone(), term: holder.token, action };
        let done = self.caller.call::<BundleApply>(url.as_ref(), &args, None, APPLY_TIMEOUT).await.map_err(failed)?;
        if !done.output.changed.is_empty() {
            tracing::info!(bundle, node, services = ?done.output.changed, "applied");
        }
        Ok(())
    }

    async fn copy(
        &self,
        cluster: &Cluster,
        dataset: &str,
        from: &str,
        to: &str,
        snapshot: &str,
        base: Option<&str>,
    ) -> Result<(), String> {
        let (source, target) = (self.url(cluster, from)?, self.url(cluster, to)?);
        let parent = CreateArgs {
            name: DATASETS_ON_POOL.into(),
            kind: DatasetType::Filesystem,
            volsize: None,
            properties: BTreeMap::new(),
        };
        match self.caller.call::<ZfsCreate>(target.as_ref(), &parent, None, SHORT_TIMEOUT).await {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::AlreadyExists => {}
            Err(e) => return Err(format!("{DATASETS_ON_POOL} on {to}: {e}")),
        }
        let name = format!("{DATASETS_ON_POOL}/{dataset}");
        if base.is_none() {
            // A full copy goes only where there is none: a node whose report is older than a
            // copy made since must not have it destroyed as a failed one.
            let probe = ZfsListArgs { name: Some(name.clone()), types: vec![DatasetType::Filesystem], depth: Some(0) };
            match self.caller.call::<ZfsList>(target.as_ref(), &probe, None, SHORT_TIMEOUT).await {
                Ok(_) => return Err(format!("{name} is on {to} already; waiting for its report")),
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(format!("zfs-list on {to}: {e}")),
            }
        }
        let send = SendArgs { name: format!("{name}@{snapshot}"), from: base.map(|b| format!("{name}@{b}")) };
        let sent = self.caller.call::<ZfsSend>(source.as_ref(), &send, None, SHORT_TIMEOUT).await.map_err(failed)?;
        let mut stream = sent.stream.ok_or("zfs-send returned no stream")?;
        if stream.node.is_none() {
            // Sent here: the target's coordinator pulls it from this node.
            stream.node = Some(self.own_url(cluster)?);
        }
        let receive = ReceiveArgs { name: name.clone(), force: base.is_some() };
        let received = self.caller.call::<ZfsReceive>(target.as_ref(), &receive, Some(stream), COPY_TIMEOUT).await;
        if let Err(e) = received {
            // A full copy cut halfway leaves nothing behind; the next tick tries again.
            if base.is_none() {
                let _ = self.destroy(cluster, dataset, to).await;
            }
            return Err(format!("zfs-receive on {to}: {e}"));
        }
        tracing::info!(dataset, from, to, snapshot, ?base, "copied");
        Ok(())
    }

    fn own_url(&self, cluster: &Cluster) -> Result<NodeUrl, String> {
        let url = cluster
            .nodes
            .get(&self.name)
            .and_then(|n| n.api_url.clone())
            .ok_or_else(|| format!("this node ({}) has no API URL to serve its stream from", self.name))?;
        NodeUrl::new(url).map_err(|e| e.to_string())
    }

    async fn destroy(&self, cluster: &Cluster, dataset: &str, node: &str) -> Result<(), String> {
        let url = self.url(cluster, node)?;
        let args = DestroyArgs {
            name: format!("{DATASETS_ON_POOL}/{dataset}"),
            defer: false,
            recursive: true,
            recursive_clones: false,
            force_unmount: true,
        };
        match self.caller.call::<ZfsDestroy>(url.as_ref(), &args, None, SHORT_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Records `run` (fenced on the term) and keeps the journal to its last [`JOURNAL_RUNS`].
    async fn journal(&mut self, store: &Store, holder: &Holder, run: &TickRun) -> Result<(), StoreError> {
        let value =
            serde_json::to_string(run).map_err(|e| StoreError::Failed { op: "journal", reason: e.to_string() })?;
        store.put_fenced(holder, &format!("{JOURNAL}/{:015}", run.started_ms), &value).await?;
        self.runs += 1;
        if self.runs % 50 == 1 {
            let prefix = format!("{JOURNAL}/");
            let page = store.list(&prefix, None, (JOURNAL_RUNS + 1000) as u32, true).await?;
            let surplus = page.entries.len().saturating_sub(JOURNAL_RUNS);
            for entry in &page.entries[..surplus] {
                store.delete_fenced(holder, &entry.key).await?;
            }
        }
        Ok(())
    }
}

/// Writes one addressing action, fenced on the leader's term.
async fn address(store: &Store, holder: &Holder, action: &AddressAction) -> Result<(), String> {
    let record = |value: serde_json::Value| value.to_string();
    let done = match action {
        AddressAction::Assign { bundle, subnet } => {
            let value = record(serde_json::json!(SubnetRecord { subnet: subnet.to_string() }));
            store.put_fenced(holder, &format!("{SUBNETS}/{bundle}"), &value).await
        }
        AddressAction::Bind { slot: (bundle, node, service), ip } => {
            let value = record(serde_json::json!(AddressRecord { ip: *ip }));
            store.put_fenced(holder, &format!("{ADDRESSES}/{bundle}/{node}/{service}"), &value).await
        }
        AddressAction::Unbind { slot: (bundle, node, service), .. } => {
            store.delete_fenced(holder, &format!("{ADDRESSES}/{bundle}/{node}/{service}")).await
        }
        AddressAction::Release { bundle, .. } => store.delete_fenced(holder, &format!("{SUBNETS}/{bundle}")).await,
    };
    done.map(|_| ()).map_err(|e| e.to_string())
}

/// Reads the journal, newest first.
pub async fn history(store: &Store, limit: usize) -> Result<Vec<TickRun>, TaskError> {
    let (entries, _) =
        store.list_all(&format!("{JOURNAL}/"), JOURNAL_RUNS + 1000).await.map_err(cerana_store::task_error)?;
    Ok(entries.iter().rev().filter_map(|e| serde_json::from_str(&e.value).ok()).take(limit).collect())
}
