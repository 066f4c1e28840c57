//! The cluster's DHCP (issue #19): leases live in the cluster store, so any node's boot server
//! can answer, and one responder per management segment is elected through the store.
//!
//! - A lease is the key `LEASES<ip>` (the [`Lease`] as JSON), bound to a store lease that runs
//!   out [`KEEP_SECS`] after the DHCP lease does; an offer is `OFFERS<ip>` for
//!   [`crate::lease::OFFER_HOLD_SECS`]. Each is written by a compare-and-swap on the index the responder
//!   read, so of two servers believing they lead, only one can give an address away.
//! - The responder campaigns in `RESPONDER<segment>`, keeps its campaign alive, and asks the
//!   store whether it still leads before every answer; when it stops leading (or its node
//!   dies) DHCP is switched off there, and another node's campaign wins within the TTL.
//! - `boot-dhcp` with a mode overrides the election (the server resigns and does as told);
//!   `boot-dhcp {mode: cluster}` hands it back.
//! - The leases of the node's own file journal are imported once, on its first term.
//! - Every member keeps a copy of the leases (the responder as it writes them, the others every
//!   [`COPY_REFRESH`]), from which it answers known clients while the store is out of reach.
//!
//! [`ClusterLeaseStore`] answers the allocator synchronously from its copy of the records
//! and writes through to the store; DHCP requests are handled on blocking threads, so it
//! blocks on its tasks there.

use crate::config::PoolConfig;
use crate::dhcp_control::DhcpControl;
use crate::kv_tasks::{KvTasks, Unavailable};
use crate::lease::{FileLeaseStore, Lease, LeaseStore, LeaseStoreError, MemoryLeaseStore};
use cerana_protocol::tasks::boot::MacAddr;
use cerana_protocol::tasks::kv::{
    CampaignArgs, KvCampaign, KvEphemeralDestroy, KvGet, KvGetAll, KvIsLeader, KvKey, KvPrefix, KvRemove, KvRenew,
    KvResign, KvUpdate, KvValue, Leadership, LeaseArgs, ListArgs, RemoveArgs, ResignArgs, TtlMs, UpdateArgs,
};
use cerana_protocol::{ErrorCode, Task, TaskError};
use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `<ip>` → the lease.
pub const LEASES: &str = "/cerana/v1/dhcp/leases/";
/// `<ip>` → the offer (a lease whose `expires` is the end of the hold).
pub const OFFERS: &str = "/cerana/v1/dhcp/offers/";
/// `<segment>`: the election of the segment's responder.
pub const RESPONDER: &str = "/cerana/v1/dhcp/responder/";
/// How long a dead responder's segment waits for the next one.
pub const RESPONDER_TTL: Duration = Duration::from_secs(10);
/// How long a record outlives its lease, so a returning client gets its address again.
pub const KEEP_SECS: u64 = 3600;
/// The store's longest lease.
const MAX_TTL_SECS: u64 = 86_400;
/// Records read per page.
const PAGE: u32 = 1000;
/// How often a member that does not answer brings its copy of the leases up to date.
const COPY_REFRESH: Duration = Duration::from_secs(15);
/// At most this many records are loaded (a pool is at most a /16).
const MAX_RECORDS: usize = 70_000;

/// The election of the responder for the management network `net` (`10.98.0.0-24`).
pub fn responder_election(pool: &PoolConfig) -> String {
    format!("{RESPONDER}{}-{}", pool.net.network(), pool.net.prefix_len())
}

/// The TTL a record written at `now` gets: until `KEEP_SECS` past `expires`, 1 s to a day.
pub fn record_ttl_secs(expires: u64, now: u64) -> u64 {
    (expires.saturating_sub(now) + KEEP_SECS).clamp(1, MAX_TTL_SECS)
}

fn unavailable(Unavailable(why): Unavailable) -> LeaseStoreError {
    LeaseStoreError::Unavailable(why)
}

fn task_failed<T: Task>(e: cerana_protocol::TaskError) -> LeaseStoreError {
    LeaseStoreError::Unavailable(format!("{}: {e}", T::name()))
}

fn kv_key(key: String) -> Result<KvKey, LeaseStoreError> {
    KvKey::new(key).map_err(|e| LeaseStoreError::Unavailable(e.to_string()))
}

fn record_value(lease: &Lease) -> Result<KvValue, LeaseStoreError> {
    KvValue::new(serde_json::to_string(lease).expect("leases serialize"))
        .map_err(|e| LeaseStoreError::Unavailable(e.to_string()))
}

fn ttl(secs: u64) -> Option<TtlMs> {
    TtlMs::new(secs * 1000).ok()
}

/// Where a record is in the store: its index (for the next compare-and-swap) and its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    index: u64,
    lease: Option<i64>,
}

/// A responder's term: the election it leads and its campaign's lease there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub election: String,
    pub lease: i64,
}

/// Every record under `prefix` with where it is; records that do not parse are skipped (and
/// logged), the store's own errors are errors.
async fn read_records(kv: &KvTasks, prefix: &str) -> Result<Vec<(Lease, Stored)>, LeaseStoreError> {
    let mut records = Vec::new();
    let mut after = None;
    loop {
        let listed = KvPrefix::new(prefix.to_string()).map_err(|e| LeaseStoreError::Unavailable(e.to_string()))?;
        let args = ListArgs { prefix: listed, after: after.take(), limit: Some(PAGE) };
        let page = kv.run::<KvGetAll>(&args).await.map_err(unavailable)?.map_err(task_failed::<KvGetAll>)?;
        for entry in &page.entries {
            match serde_json::from_str::<Lease>(&entry.value) {
                Ok(lease) if entry.key.ends_with(&lease.ip.to_string()) => {
                    records.push((lease, Stored { index: entry.index, lease: entry.lease }))
                }
                Ok(_) => tracing::warn!(key = %entry.key, "a DHCP record under another address's key, skipped"),
                Err(e) => tracing::warn!(key = %entry.key, error = %e, "an unreadable DHCP record, skipped"),
            }
        }
        if records.len() > MAX_RECORDS {
            return Err(LeaseStoreError::Unavailable(format!("more than {MAX_RECORDS} records under {prefix}")));
        }
        match page.entries.last() {
            Some(last) if page.more => after = Some(kv_key(last.key.clone())?),
            _ => return Ok(records),
        }
    }
}

/// The leases of the cluster store, as the elected responder sees them; see the module docs.
pub struct ClusterLeaseStore {
    kv: Arc<KvTasks>,
    runtime: tokio::runtime::Handle,
    /// None: `boot-dhcp` decided this server answers, not the election.
    term: Option<Term>,
    /// The node's own copy of the store's leases, answered from while the store is out of reach.
    copy: Option<FileLeaseStore>,
    leases: MemoryLeaseStore,
    stored: HashMap<Ipv4Addr, Stored>,
    /// Offers in the store: address → (the offer, where it is).
    offers: HashMap<Ipv4Addr, (Lease, Stored)>,
}

impl std::fmt::Debug for ClusterLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLeaseStore").field("term", &self.term).field("records", &self.stored.len()).finish()
    }
}

impl ClusterLeaseStore {
    /// Reads every lease and offer of the store, for the responder of `term`, and makes the
    /// node's copy in `copy_dir` the same. Its writes block on the runtime: use it from blocking
    /// threads only.
    pub async fn load(
        kv: Arc<KvTasks>,
        term: Option<Term>,
        copy_dir: Option<&std::path::Path>,
    ) -> Result<Self, LeaseStoreError> {
        let mut leases = MemoryLeaseStore::new();
        let mut stored = HashMap::new();
        for (lease, at) in read_records(&kv, LEASES).await? {
            stored.insert(lease.ip, at);
            leases.put(lease)?;
        }
        let offers = read_records(&kv, OFFERS).await?.into_iter().map(|(l, at)| (l.ip, (l, at))).collect();
        let copy = copy_dir.map(|dir| Self::copy_of(&leases, dir)).transpose()?;
        Ok(Self { kv, runtime: tokio::runtime::Handle::current(), term, copy, leases, stored, offers })
    }

    /// The node's copy in `dir`, made equal to `leases`.
    fn copy_of(leases: &MemoryLeaseStore, dir: &std::path::Path) -> Result<FileLeaseStore, LeaseStoreError> {
        let mut copy = FileLeaseStore::open(dir)?;
        let now = leases.all()?;
        for old in copy.all()? {
            if !now.contains(&old) {
                copy.remove(&old.mac)?;
            }
        }
        for lease in now {
            if copy.by_mac(&lease.mac)?.as_ref() != Some(&lease) {
                copy.put(lease)?;
            }
        }
        Ok(copy)
    }

    /// Follows a change in the node's copy; a failure there costs only the answers given while
    /// the store is out of reach, so it is logged.
    fn copy_change(&mut self, change: impl FnOnce(&mut FileLeaseStore) -> Result<(), LeaseStoreError>) {
        if let Some(copy) = self.copy.as_mut() {
            if let Err(e) = change(copy) {
                tracing::warn!(error = %e, "the node's copy of the cluster's leases is behind");
            }
        }
    }

    fn block<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Re-reads the record of `ip` after a lost compare-and-swap, so the next answer sees it.
    fn reread(&mut self, ip: Ipv4Addr) {
        let Ok(key) = kv_key(format!("{LEASES}{ip}")) else { return };
        let kv = self.kv.clone();
        match self.block(async move { kv.run::<KvGet>(&cerana_protocol::tasks::kv::KeyArgs { key }).await }) {
            Ok(Ok(entry)) => {
                if let Ok(lease) = serde_json::from_str::<Lease>(&entry.value) {
                    if lease.ip == ip {
                        self.stored.insert(ip, Stored { index: entry.index, lease: entry.lease });
                        let _ = self.leases.put(lease);
                    }
                }
            }
            Ok(Err(e)) if e.code == ErrorCode::NotFound => {
                self.stored.remove(&ip);
                if let Ok(Some(old)) = self.leases.by_ip(ip) {
                    let _ = self.leases.remove(&old.mac);
                }
            }
            _ => {}
        }
    }

    /// Revokes a record's old store lease once the record moved to a new one (it would hold
    /// nothing until it ran out).
    fn revoke(&self, lease: Option<i64>) {
        if let Some(lease) = lease {
            let kv = self.kv.clone();
            let _ = self.block(async move { kv.run::<KvEphemeralDestroy>(&LeaseArgs { lease }).await });
        }
    }

    /// Writes `lease` under `prefix` over the record at `at` (none: a new one).
    fn swap(&self, prefix: &str, lease: &Lease, at: Option<Stored>, ttl_secs: u64) -> Result<Stored, LeaseStoreError> {
        let args = UpdateArgs {
            key: kv_key(format!("{prefix}{}", lease.ip))?,
            value: record_value(lease)?,
            index: at.map_or(0, |s| s.index),
            ttl_ms: ttl(ttl_secs),
        };
        let kv = self.kv.clone();
        match self.block(async move { kv.run::<KvUpdate>(&args).await }).map_err(unavailable)? {
            Ok(done) => Ok(Stored { index: done.index, lease: done.lease }),
            Err(e) if e.code == ErrorCode::Conflict => Err(LeaseStoreError::Taken { ip: lease.ip }),
            Err(e) => Err(task_failed::<KvUpdate>(e)),
        }
    }

    fn delete(&self, prefix: &str, ip: Ipv4Addr, at: Stored) -> Result<(), LeaseStoreError> {
        let args = RemoveArgs { key: kv_key(format!("{prefix}{ip}"))?, index: at.index };
        let kv = self.kv.clone();
        match self.block(async move { kv.run::<KvRemove>(&args).await }).map_err(unavailable)? {
            Ok(_) => Ok(()),
            Err(e) if e.code == ErrorCode::NotFound => Ok(()),
            Err(e) if e.code == ErrorCode::Conflict => Err(LeaseStoreError::Taken { ip }),
            Err(e) => Err(task_failed::<KvRemove>(e)),
        }
    }

    fn now() -> u64 {
        crate::events::now_ms() / 1000
    }
}

impl LeaseStore for ClusterLeaseStore {
    fn by_mac(&self, mac: &MacAddr) -> Result<Option<Lease>, LeaseStoreError> {
        self.leases.by_mac(mac)
    }

    fn by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, LeaseStoreError> {
        self.leases.by_ip(ip)
    }

    fn put(&mut self, lease: Lease) -> Result<(), LeaseStoreError> {
        // The client's lease on another address goes first: one address per client.
        if self.leases.by_mac(&lease.mac)?.is_some_and(|old| old.ip != lease.ip) {
            self.remove(&lease.mac)?;
        }
        let at = self.stored.get(&lease.ip).copied();
        match self.swap(LEASES, &lease, at, record_ttl_secs(lease.expires, Self::now())) {
            Ok(now_at) => {
                self.stored.insert(lease.ip, now_at);
                self.revoke(at.and_then(|a| a.lease));
                let copied = lease.clone();
                self.copy_change(|copy| copy.put(copied));
                self.leases.put(lease)
            }
            Err(e) => {
                self.reread(lease.ip);
                Err(e)
            }
        }
    }

    fn remove(&mut self, mac: &MacAddr) -> Result<(), LeaseStoreError> {
        let Some(old) = self.leases.by_mac(mac)? else { return Ok(()) };
        if let Some(at) = self.stored.get(&old.ip).copied() {
            if let Err(e) = self.delete(LEASES, old.ip, at) {
                self.reread(old.ip);
                return Err(e);
            }
            self.stored.remove(&old.ip);
            self.revoke(at.lease);
        }
        self.copy_change(|copy| copy.remove(mac));
        self.leases.remove(mac)
    }

    fn all(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        self.leases.all()
    }

    fn check_term(&self) -> Result<(), LeaseStoreError> {
        let Some(term) = &self.term else { return Ok(()) };
        let args = ResignArgs { name: kv_key(term.election.clone())?, lease: term.lease };
        let kv = self.kv.clone();
        match self.block(async move { kv.run::<KvIsLeader>(&args).await }).map_err(unavailable)? {
            Ok(answer) if answer.leader => Ok(()),
            Ok(_) => Err(LeaseStoreError::NotResponder { election: term.election.clone() }),
            Err(e) => Err(task_failed::<KvIsLeader>(e)),
        }
    }

    fn hold(&mut self, mac: MacAddr, ip: Ipv4Addr, until: u64) -> Result<(), LeaseStoreError> {
        let offer = Lease { mac, ip, expires: until };
        // A hold that ran out went from the store with its lease: the next one is a new record.
        let now = Self::now();
        self.offers.retain(|_, (held, _)| held.expires > now);
        let at = self.offers.get(&ip).map(|(_, at)| *at);
        match self.swap(OFFERS, &offer, at, until.saturating_sub(now).max(1)) {
            Ok(now_at) => {
                self.revoke(at.and_then(|a| a.lease));
                self.offers.insert(ip, (offer, now_at));
                Ok(())
            }
            Err(e) => {
                // Learn who holds it, so the next offer goes elsewhere.
                if let Ok(records) = self.block(read_records(&self.kv, OFFERS)) {
                    self.offers = records.into_iter().map(|(l, at)| (l.ip, (l, at))).collect();
                }
                Err(e)
            }
        }
    }

    fn held(&self) -> Vec<Lease> {
        self.offers.values().map(|(l, _)| l.clone()).collect()
    }
}

/// What a node's boot server needs to take part in the cluster's DHCP.
#[derive(Debug, Clone)]
pub struct ClusterDhcp {
    pub kv: Arc<KvTasks>,
    /// The election (see [`responder_election`]).
    pub election: String,
    /// What the responder announces: this server's address.
    pub announce: Ipv4Addr,
    /// The campaign's TTL: how long a dead responder's segment waits for the next.
    pub ttl: Duration,
    /// The node's file journal of leases (imported on its first term) and its copy of the
    /// cluster's (`cluster-leases/`).
    pub state_dir: Option<PathBuf>,
    /// Set while `boot-dhcp` overrides the election.
    pub overridden: Arc<AtomicBool>,
}

/// Copies the active leases of the file journal in `dir` into the store (creating only: a
/// lease the store has already wins), then renames the journal so it is done once. Returns
/// how many were copied.
pub async fn import_file_leases(kv: &KvTasks, dir: &std::path::Path, now: u64) -> Result<usize, LeaseStoreError> {
    let journal = dir.join("leases.jsonl");
    if !journal.exists() {
        return Ok(0);
    }
    let file = FileLeaseStore::open(dir)?;
    let mut copied = 0;
    for lease in file.all()?.into_iter().filter(|l| l.is_active(now)) {
        let args = UpdateArgs {
            key: kv_key(format!("{LEASES}{}", lease.ip))?,
            value: record_value(&lease)?,
            index: 0,
            ttl_ms: ttl(record_ttl_secs(lease.expires, now)),
        };
        match kv.run::<KvUpdate>(&args).await.map_err(unavailable)? {
            Ok(_) => copied += 1,
            Err(e) if e.code == ErrorCode::Conflict => {}
            Err(e) => return Err(task_failed::<KvUpdate>(e)),
        }
    }
    drop(file);
    let done = dir.join("leases.jsonl.imported");
    std::fs::rename(&journal, &done).map_err(|source| LeaseStoreError::Io { path: journal, source })?;
    Ok(copied)
}

/// Makes the node's copy in `dir` equal to the store's leases: a member that does not answer
/// keeps it current, so it can still answer the clients holding one when the store goes.
/// Returns how many leases it holds.
pub async fn refresh_copy(kv: &KvTasks, dir: PathBuf) -> Result<usize, LeaseStoreError> {
    let mut leases = MemoryLeaseStore::new();
    for (lease, _) in read_records(kv, LEASES).await? {
        leases.put(lease)?;
    }
    let held = leases.all()?.len();
    tokio::task::spawn_blocking(move || ClusterLeaseStore::copy_of(&leases, &dir).map(drop))
        .await
        .map_err(|e| LeaseStoreError::Unavailable(format!("writing the copy: {e}")))??;
    Ok(held)
}

/// [`refresh_copy`] when the last one is [`COPY_REFRESH`] old; a failure is retried next time.
async fn refresh_when_due(kv: &KvTasks, copy: Option<&PathBuf>, refreshed: &mut Option<std::time::Instant>) {
    let Some(dir) = copy.filter(|_| refreshed.is_none_or(|at| at.elapsed() >= COPY_REFRESH)) else { return };
    match refresh_copy(kv, dir.clone()).await {
        Ok(held) => {
            tracing::debug!(leases = held, "copy of the cluster's leases refreshed");
            *refreshed = Some(std::time::Instant::now());
        }
        Err(e) => tracing::warn!(error = %e, "cannot refresh the copy of the cluster's leases"),
    }
}

/// Where a node keeps its copy of the cluster's leases, under its state directory.
pub fn copy_dir(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("cluster-leases")
}

/// Why a round of the responder ended.
#[derive(Debug, thiserror::Error)]
enum RoundEnd {
    #[error("{0}")]
    Store(#[from] LeaseStoreError),
    #[error("the term ended: {0}")]
    TermEnded(String),
    #[error("boot-dhcp overrides the election")]
    Overridden,
}

/// Runs a switch of DHCP on a blocking thread (it waits for the old sockets to close).
async fn switched<T: Send + 'static>(
    what: &'static str,
    switch: impl FnOnce() -> Result<T, crate::dhcp_control::DhcpSwitchError> + Send + 'static,
) -> Option<T> {
    let outcome = tokio::task::spawn_blocking(switch).await.map_err(|e| e.to_string());
    match outcome.and_then(|switched| switched.map_err(|e| e.to_string())) {
        Ok(done) => Some(done),
        Err(e) => {
            tracing::error!(error = %e, "{what}");
            None
        }
    }
}

/// How long one campaign waits for the election before it is made again.
const CAMPAIGN_WAIT: Duration = Duration::from_secs(5);

/// One campaign of `announce` in the election `name`: the term, or `Busy` once
/// [`CAMPAIGN_WAIT`] passed with another responder leading.
pub async fn campaign(
    kv: &KvTasks,
    name: &KvKey,
    announce: Ipv4Addr,
    ttl: TtlMs,
) -> Result<Result<Leadership, TaskError>, Unavailable> {
    let args = CampaignArgs {
        name: name.clone(),
        value: KvValue::new(announce.to_string()).expect("an address is a value"),
        ttl_ms: ttl,
        wait_ms: CAMPAIGN_WAIT.as_millis() as u64,
    };
    kv.run_waiting::<KvCampaign>(&args, CAMPAIGN_WAIT).await
}

/// The responder loop of a node's boot server: campaign, serve while leading, stop serving when
/// the term ends, campaign again. While the store is out of reach (no quorum: a cold start of
/// the whole cluster, a partition) it answers the clients its copy says hold a lease, with that
/// lease unchanged, and nobody else. Runs until the task is dropped.
pub async fn respond(control: Arc<DhcpControl>, cluster: ClusterDhcp) {
    let ttl = ttl(cluster.ttl.as_secs().max(1)).unwrap_or_else(|| TtlMs::new(10_000).expect("10 s is a TTL"));
    let Ok(name) = kv_key(cluster.election.clone()) else {
        tracing::error!(election = %cluster.election, "not a key: no cluster DHCP");
        return;
    };
    let copy = cluster.state_dir.as_ref().map(|d| copy_dir(d));
    // Whether DHCP runs from the node's copy now, and since when the store is out of reach.
    let mut degraded = false;
    let mut unreachable: Option<std::time::Instant> = None;
    let mut refreshed: Option<std::time::Instant> = None;
    loop {
        if cluster.overridden.load(Ordering::SeqCst) {
            degraded = false;
            unreachable = None;
            tokio::time::sleep(Duration::from_millis(500)).await;
            refresh_when_due(&cluster.kv, copy.as_ref(), &mut refreshed).await;
            continue;
        }
        let led = match campaign(&cluster.kv, &name, cluster.announce, ttl).await {
            Ok(Ok(led)) => led,
            Ok(Err(e)) => {
                unreachable = None;
                if degraded {
                    // The store answers again, and someone else leads.
                    let c = control.clone();
                    switched("switching DHCP off", move || c.stop_unless_overridden()).await;
                    degraded = false;
                }
                if e.code != ErrorCode::Busy {
                    tracing::warn!(error = %e, "DHCP responder campaign refused");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                refresh_when_due(&cluster.kv, copy.as_ref(), &mut refreshed).await;
                continue;
            }
            Err(Unavailable(why)) => {
                let since = *unreachable.get_or_insert_with(std::time::Instant::now);
                tracing::debug!(%why, "no cluster store for the DHCP responder");
                if !degraded && since.elapsed() >= cluster.ttl {
                    if let Some(dir) = copy.clone() {
                        let c = control.clone();
                        degraded =
                            switched("answering known clients", move || c.switch_to_copy(&dir)).await.unwrap_or(false);
                        if degraded {
                            tracing::warn!("the cluster store is out of reach: answering only clients holding a lease");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        unreachable = None;
        degraded = false;
        let term = Term { election: cluster.election.clone(), lease: led.lease };
        tracing::info!(election = %term.election, lease = term.lease, index = led.index, "leading the segment's DHCP");
        let end = lead(&control, &cluster, term.clone(), ttl).await;
        tracing::warn!(election = %term.election, "no longer answering the segment's DHCP: {end}");
        let c = control.clone();
        switched("switching DHCP off", move || c.stop_unless_overridden()).await;
        let resign = ResignArgs { name: name.clone(), lease: term.lease };
        let _ = cluster.kv.run::<KvResign>(&resign).await;
    }
}

/// One term: load the leases, serve, keep the campaign alive until it ends.
async fn lead(control: &Arc<DhcpControl>, cluster: &ClusterDhcp, term: Term, ttl: TtlMs) -> RoundEnd {
    if let Some(dir) = &cluster.state_dir {
        match import_file_leases(&cluster.kv, dir, crate::events::now_ms() / 1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(leases = n, "file leases imported into the cluster store"),
            Err(e) => return e.into(),
        }
    }
    let copy = cluster.state_dir.as_ref().map(|d| copy_dir(d));
    let store = match ClusterLeaseStore::load(cluster.kv.clone(), Some(term.clone()), copy.as_deref()).await {
        Ok(store) => store,
        Err(e) => return e.into(),
    };
    let c = control.clone();
    match switched("answering as the responder", move || c.switch_to_store(Box::new(store))).await {
        Some(true) => {}
        Some(false) => return RoundEnd::Overridden,
        None => return RoundEnd::TermEnded("DHCP could not be switched on".into()),
    }
    // Renew well within the TTL; a renewal refused, or none possible for a whole TTL, means
    // the term is over (another node may lead by now).
    let every = Duration::from_millis(ttl.seconds() as u64 * 1000 / 3);
    let mut renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        if cluster.overridden.load(Ordering::SeqCst) {
            return RoundEnd::Overridden;
        }
        match cluster.kv.run::<KvRenew>(&LeaseArgs { lease: term.lease }).await {
            Ok(Ok(_)) => renewed = std::time::Instant::now(),
            Ok(Err(e)) => return RoundEnd::TermEnded(e.to_string()),
            // Each answer checks the term meanwhile, so none is given while this lasts.
            Err(Unavailable(why)) if renewed.elapsed() < cluster.ttl => {
                tracing::warn!(%why, "cannot renew the DHCP responder's term")
            }
            Err(Unavailable(why)) => return RoundEnd::TermEnded(format!("the store is out of reach: {why}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_outlive_their_lease_by_an_hour_within_the_stores_bounds() {
        assert_eq!(record_ttl_secs(1000 + 600, 1000), 600 + KEEP_SECS);
        assert_eq!(record_ttl_secs(500, 1000), KEEP_SECS, "an expired lease is kept an hour");
        assert_eq!(record_ttl_secs(1000 + 90_000, 1000), MAX_TTL_SECS);
    }

    #[test]
    fn the_election_is_named_after_the_segment() {
        let pool = PoolConfig {
            net: "10.98.0.0/24".parse().unwrap(),
            range: [Ipv4Addr::new(10, 98, 0, 100), Ipv4Addr::new(10, 98, 0, 200)],
            gateway: None,
            dns: vec![],
            lease_secs: 3600,
        };
        assert_eq!(responder_election(&pool), "/cerana/v1/dhcp/responder/10.98.0.0-24");
    }
}
