//! Typed access to the cluster store (etcd), shared by the `kv` provider and the cluster's
//! reconcilers.
//!
//! Every operation is bounded: without a quorum it fails with [`StoreError::Unavailable`] within
//! the configured timeout instead of hanging, and the connection heals by itself once members
//! come back. An entry's **index** is its modification revision; [`Store::put_if`] and
//! [`Store::delete_if`] compare it so that concurrent read-modify-write cycles never lose an
//! update.
//!
//! Locks and elections use the layouts etcd's own tools use, so `etcdctl lock` and
//! `etcdctl elect` see them: a lock is one key bound to a lease (its creation revision is the
//! fencing token); an election is the keys `NAME/LEASE-IN-HEX`, the oldest of which leads.

mod auth;
mod error;
mod members;
mod tasks;
mod watch;

pub use auth::token_records;
pub use error::StoreError;
pub use members::{MemberStatus, StoreMember};
pub use tasks::{provider_main, task_error, LazyStore};
pub use watch::{Watch, WatchBatch, WatchChange};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse,
};
use std::future::Future;
use std::time::Duration;

/// Where the store is and how long an operation may take.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Client URLs of the members (`http://127.0.0.1:2379`); requests are balanced over them.
    pub endpoints: Vec<String>,
    /// The longest one operation may take before it fails as unavailable.
    pub op_timeout: Duration,
    /// Mutual TLS (`https://` endpoints): the cluster CA and this node's certificate.
    pub tls: Option<StoreTls>,
}

impl StoreConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self { endpoints, op_timeout: Duration::from_secs(5), tls: None }
    }
}

/// The PEM files of mutual TLS with the store.
#[derive(Clone)]
pub struct StoreTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for StoreTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("StoreTls").field("ca_bytes", &self.ca_pem.len()).finish_non_exhaustive()
    }
}

impl StoreTls {
    /// Reads the CA, certificate and key files.
    pub fn from_files(ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> Result<Self, StoreError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| StoreError::Invalid(format!("cannot read {}: {e}", path.display())))
        };
        Ok(Self { ca_pem: read(ca)?, cert_pem: read(cert)?, key_pem: read(key)? })
    }

    pub(crate) fn options(&self) -> etcd_client::TlsOptions {
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca_pem))
            .identity(etcd_client::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// One key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// The revision of the last write (the compare-and-swap index).
    pub index: u64,
    /// The revision that created the key (a lock's fencing token).
    pub created: u64,
    pub lease: Option<i64>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// The store's revision the page was read at.
    pub revision: u64,
    pub more: bool,
}

/// A lock or an election's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub key: String,
    pub value: String,
    pub lease: i64,
    /// The creation revision of the holder's key: larger for every later holder.
    pub token: u64,
}

/// Whether a call may be repeated after an ambiguous failure: reads, and writes whose repeat
/// changes nothing more (a plain put, a revoke, a keep-alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Repeatable,
    Write,
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: Client,
    timeout: Duration,
    tls: Option<StoreTls>,
    /// Clients of single members for [`Store::member_status`], kept so a probe every round is
    /// not a TLS handshake every round.
    probes: members::Probes,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix); the
/// empty prefix ranges over everything (`"\0"`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.revision().max(0) as u64)
}

fn entry(kv: &KeyValue) -> Result<Entry, StoreError> {
    let key = kv.key_str().map_err(|_| StoreError::Invalid(format!("a key is not UTF-8: {:?}", kv.key())))?;
    let value = kv.value_str().map_err(|_| StoreError::Invalid(format!("the value of {key} is not UTF-8")))?;
    Ok(Entry {
        key: key.to_owned(),
        value: value.to_owned(),
        index: kv.mod_revision().max(0) as u64,
        created: kv.create_revision().max(0) as u64,
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

impl Store {
    /// A store client over `config.endpoints`. Connecting is lazy: this does not fail because
    /// no member answers yet; the first operations do, as unavailable.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Invalid("no store endpoints configured".into()));
        }
        let mut options = ConnectOptions::new()
            .with_timeout(config.op_timeout)
            .with_connect_timeout(config.op_timeout.min(Duration::from_secs(2)))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from the quorum answers "no leader" at once instead of stalling.
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls.options());
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| StoreError::from_client("connect", e))?;
        Ok(Self { client, timeout: config.op_timeout, tls: config.tls.clone(), probes: Default::default() })
    }

    /// Runs `attempt` until it succeeds, fails for good, or the operation's time is up. Only
    /// failures that cannot have changed anything (no leader, no connection) are retried, and
    /// for reads any unavailability: so a write is never applied twice.
    async fn call<T, F, Fut>(&self, op: &'static str, kind: Kind, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // A repeatable call gets half the time per attempt, so that one lost on its way
            // (a proposal forwarded to a leader that just died) is tried again in time.
            let this_try = match kind {
                Kind::Repeatable => left.min(self.timeout / 2).max(Duration::from_millis(1)),
                Kind::Write => left,
            };
            match tokio::time::timeout(this_try, attempt(self.client.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => {
                    let retry = error::retryable(&e, kind == Kind::Repeatable);
                    if !retry || tokio::time::Instant::now() + backoff >= deadline {
                        return Err(StoreError::from_client(op, e));
                    }
                    tracing::debug!(op, error = %e, "store call failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                }
                Err(_) if kind == Kind::Repeatable && tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(op, "store call unanswered; retrying");
                }
                Err(_) => return Err(StoreError::timed_out(op, self.timeout)),
            }
        }
    }

    async fn txn(&self, op: &'static str, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.call(op, Kind::Write, |c| {
            let txn = txn.clone();
            async move { c.kv_client().txn(txn).await }
        })
        .await
    }

    /// The entry at `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let response =
            self.call("get", Kind::Repeatable, |c| async move { c.kv_client().get(key, None).await }).await?;
        response.kvs().first().map(entry).transpose()
    }

    /// Up to `limit` entries under `prefix` in key order, after `after` if given; `keys_only`
    /// leaves the values empty.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
        keys_only: bool,
    ) -> Result<Page, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let start: Vec<u8> = match after {
            // The smallest key after `after`.
            Some(after) if after.as_bytes() >= prefix.as_bytes() => [after.as_bytes(), &[0]].concat(),
            _ if prefix.is_empty() => vec![0],
            _ => prefix.as_bytes().to_vec(),
        };
        let mut options = GetOptions::new().with_range(end).with_limit(i64::from(limit));
        if keys_only {
            options = options.with_keys_only();
        }
        let response = self
            .call("list", Kind::Repeatable, |c| {
                let (start, options) = (start.clone(), options.clone());
                async move { c.kv_client().get(start, Some(options)).await }
            })
            .await?;
        let entries = response.kvs().iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        Ok(Page { entries, revision: revision(response.header()), more: response.more() })
    }

    /// Every entry under `prefix` in key order, a page at a time, at most `max` of them (the
    /// bool says whether more were left).
    pub async fn list_all(&self, prefix: &str, max: usize) -> Result<(Vec<Entry>, bool), StoreError> {
        const PAGE: u32 = 256;
        let mut entries: Vec<Entry> = Vec::new();
        loop {
            let after = entries.last().map(|e| e.key.clone());
            let page = self.list(prefix, after.as_deref(), PAGE, false).await?;
            let more = page.more;
            entries.extend(page.entries);
            if entries.len() > max {
                entries.truncate(max);
                return Ok((entries, true));
            }
            if !more || entries.is_empty() {
                return Ok((entries, false));
            }
        }
    }

    /// Writes `key` whatever it holds; returns the new index. Writing the same value again
    /// changes nothing but the index, so this one is retried when its outcome is unknown.
    pub async fn put(&self, key: &str, value: &str) -> Result<u64, StoreError> {
        let response =
            self.call("put", Kind::Repeatable, |c| async move { c.kv_client().put(key, value, None).await }).await?;
        Ok(revision(response.header()))
    }

    /// Writes `key` if its index is still `index` (0: only if it does not exist); returns the
    /// new index, or [`StoreError::Conflict`] with the current one.
    pub async fn put_if(&self, key: &str, value: &str, index: u64) -> Result<u64, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, index as i64)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        self.txn_or_conflict("put-if", key, txn).await
    }

    /// [`Store::put_if`] with the key bound to a new lease of `ttl_secs`; returns the lease and
    /// the new index. The lease is revoked again when the write does not happen.
    pub async fn put_if_ephemeral(
        &self,
        key: &str,
        value: &str,
        index: u64,
        ttl_secs: i64,
    ) -> Result<(i64, u64), StoreError> {
        let lease = self.grant(ttl_secs).await?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, index as i64)])
            .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        match self.txn_or_conflict("put-if", key, txn).await {
            Ok(index) => Ok((lease, index)),
            Err(e) => {
                let _ = self.revoke(lease).await;
                Err(e)
            }
        }
    }

    /// Deletes `key` if its index is still `index`; returns the new index.
    pub async fn delete_if(&self, key: &str, index: u64) -> Result<u64, StoreError> {
        if index == 0 {
            return Err(StoreError::Invalid("a conditional delete needs the index read (not 0)".into()));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, index as i64)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        self.txn_or_conflict("delete-if", key, txn).await
    }

    async fn txn_or_conflict(&self, op: &'static str, key: &str, txn: Txn) -> Result<u64, StoreError> {
        let response = self.txn(op, txn).await?;
        if response.succeeded() {
            return Ok(revision(response.header()));
        }
        let current = match response.op_responses().first() {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map_or(0, |kv| kv.mod_revision().max(0) as u64),
            _ => 0,
        };
        Err(StoreError::Conflict { key: key.to_owned(), current })
    }

    /// Deletes `key`, and with `recursive` every key under `key/`; returns how many went and
    /// the new index.
    pub async fn delete(&self, key: &str, recursive: bool) -> Result<(u64, u64), StoreError> {
        if !recursive {
            let response =
                self.call("delete", Kind::Write, |c| async move { c.kv_client().delete(key, None).await }).await?;
            return Ok((response.deleted().max(0) as u64, revision(response.header())));
        }
        let under = format!("{}/", key.trim_end_matches('/'));
        let txn = Txn::new().and_then([
            TxnOp::delete(key, None),
            TxnOp::delete(under.as_str(), Some(DeleteOptions::new().with_range(prefix_end(under.as_bytes())))),
        ]);
        let response = self.txn("delete", txn).await?;
        let deleted = response
            .op_responses()
            .iter()
            .map(|r| match r {
                TxnOpResponse::Delete(d) => d.deleted().max(0) as u64,
                _ => 0,
            })
            .sum();
        Ok((deleted, revision(response.header())))
    }

    /// Up to `limit` entries with keys in `start..end`, newest key first when `descending`.
    pub async fn range(&self, start: &str, end: &str, limit: u32, descending: bool) -> Result<Vec<Entry>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let order = if descending { SortOrder::Descend } else { SortOrder::Ascend };
        let options = GetOptions::new().with_range(end).with_limit(i64::from(limit)).with_sort(SortTarget::Key, order);
        let response = self
            .call("range", Kind::Repeatable, |c| {
                let options = options.clone();
                async move { c.kv_client().get(start, Some(options)).await }
            })
            .await?;
        response.kvs().iter().map(entry).collect()
    }

    /// Deletes every key in `start..end`; returns how many went.
    pub async fn delete_range(&self, start: &str, end: &str) -> Result<u64, StoreError> {
        if start >= end {
            return Ok(0);
        }
        let options = DeleteOptions::new().with_range(end);
        let response = self
            .call("delete-range", Kind::Write, |c| {
                let options = options.clone();
                async move { c.kv_client().delete(start, Some(options)).await }
            })
            .await?;
        Ok(response.deleted().max(0) as u64)
    }

    /// A new lease of `ttl_secs`.
    pub async fn grant(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        let response = self
            .call("lease-grant", Kind::Write, |c| async move { c.lease_client().grant(ttl_secs, None).await })
            .await?;
        Ok(response.id())
    }

    /// Renews `lease` once; returns its TTL in seconds, or not found if it has expired.
    pub async fn keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        let renew = |c: Client| async move {
            let (mut keeper, mut stream) = c.lease_client().keep_alive(id).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        match self.call("lease-keep-alive", Kind::Repeatable, renew).await? {
            Some(response) if response.ttl() > 0 => Ok(response.ttl()),
            _ => Err(StoreError::NotFound { what: format!("lease {id}") }),
        }
    }

    /// Revokes `lease`; its keys are deleted.
    pub async fn revoke(&self, id: i64) -> Result<(), StoreError> {
        self.call("lease-revoke", Kind::Repeatable, |c| async move { c.lease_client().revoke(id).await })
            .await
            .map(drop)
    }

    /// Writes `key` bound to a new lease of `ttl_secs`; returns the lease and the index.
    pub async fn put_ephemeral(&self, key: &str, value: &str, ttl_secs: i64) -> Result<(i64, u64), StoreError> {
        let lease = self.grant(ttl_secs).await?;
        let put =
            |c: Client| async move { c.kv_client().put(key, value, Some(PutOptions::new().with_lease(lease))).await };
        match self.call("put", Kind::Write, put).await {
            Ok(response) => Ok((lease, revision(response.header()))),
            Err(e) => {
                let _ = self.revoke(lease).await;
                Err(e)
            }
        }
    }

    /// Writes `key` bound to the existing `lease` (its keys all go when it expires).
    pub async fn put_on_lease(&self, key: &str, value: &str, lease: i64) -> Result<u64, StoreError> {
        let put =
            |c: Client| async move { c.kv_client().put(key, value, Some(PutOptions::new().with_lease(lease))).await };
        let response = self.call("put", Kind::Repeatable, put).await?;
        Ok(revision(response.header()))
    }

    /// Takes the lock `key` with a lease of `ttl_secs`, or fails with [`StoreError::Held`].
    pub async fn lock(&self, key: &str, ttl_secs: i64) -> Result<Holder, StoreError> {
        let lease = self.grant(ttl_secs).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, lease.to_string(), Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let outcome = self.txn("lock", txn).await;
        let response = match outcome {
            Ok(response) => response,
            Err(e) => {
                let _ = self.revoke(lease).await;
                return Err(e);
            }
        };
        if response.succeeded() {
            let token = revision(response.header());
            return Ok(Holder { key: key.to_owned(), value: lease.to_string(), lease, token });
        }
        let _ = self.revoke(lease).await;
        match response.op_responses().first() {
            Some(TxnOpResponse::Get(get)) if !get.kvs().is_empty() => {
                let kv = &get.kvs()[0];
                Err(StoreError::Held { key: key.to_owned(), holder: kv.lease(), token: kv.create_revision() as u64 })
            }
            // Released between the compare and the read: the caller may simply try again.
            _ => Err(StoreError::Conflict { key: key.to_owned(), current: 0 }),
        }
    }

    /// Releases the lock `key` if `token` still holds it (and revokes its lease).
    pub async fn unlock(&self, key: &str, token: u64) -> Result<(), StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, token as i64)])
            .and_then([TxnOp::get(key, None), TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn("unlock", txn).await?;
        let found = match response.op_responses().first() {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| (kv.lease(), kv.create_revision() as u64)),
            _ => None,
        };
        match (response.succeeded(), found) {
            (true, Some((lease, _))) => {
                if lease != 0 {
                    // The key is gone already; a failed revoke only leaves a lease to expire.
                    let _ = self.revoke(lease).await;
                }
                Ok(())
            }
            (_, None) => Err(StoreError::NotFound { what: format!("lock {key}") }),
            (false, Some((_, current))) => Err(StoreError::Conflict { key: key.to_owned(), current }),
        }
    }

    /// The candidates of election `name`, oldest (the leader) first.
    async fn candidates(&self, name: &str, limit: i64) -> Result<Vec<Entry>, StoreError> {
        let prefix = format!("{name}/");
        let options = GetOptions::new()
            .with_range(prefix_end(prefix.as_bytes()))
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(limit);
        let response = self
            .call("election", Kind::Repeatable, |c| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move { c.kv_client().get(prefix, Some(options)).await }
            })
            .await?;
        response.kvs().iter().map(entry).collect()
    }

    /// The leader of election `name`, if any.
    pub async fn leader(&self, name: &str) -> Result<Option<Holder>, StoreError> {
        Ok(self.candidates(name, 1).await?.into_iter().next().map(|e| Holder {
            key: e.key,
            value: e.value,
            lease: e.lease.unwrap_or(0),
            token: e.created,
        }))
    }

    /// Campaigns in election `name` with a new lease of `ttl_secs`, waiting up to `wait` to
    /// lead. If another still leads then, the campaign is withdrawn and [`StoreError::Held`]
    /// names the leader.
    pub async fn campaign(&self, name: &str, value: &str, ttl_secs: i64, wait: Duration) -> Result<Holder, StoreError> {
        let lease = self.grant(ttl_secs).await?;
        // Kept alive while waiting, so that a waiter keeps its place in line and takes over as
        // soon as the leader's key goes.
        let renew_every = Duration::from_millis((ttl_secs.max(1) as u64) * 1000 / 3);
        let outcome = self.campaign_with(name, value, lease, wait, renew_every).await;
        if outcome.is_err() {
            let _ = self.revoke(lease).await;
        }
        outcome
    }

    async fn campaign_with(
        &self,
        name: &str,
        value: &str,
        lease: i64,
        wait: Duration,
        renew_every: Duration,
    ) -> Result<Holder, StoreError> {
        let key = format!("{name}/{lease:x}");
        let put = |c: Client| {
            let key = key.clone();
            async move { c.kv_client().put(key, value, Some(PutOptions::new().with_lease(lease))).await }
        };
        let response = self.call("campaign", Kind::Write, put).await?;
        let token = revision(response.header());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let leader = self.leader(name).await?;
            match leader {
                Some(leader) if leader.lease == lease => {
                    return Ok(Holder { key, value: value.to_owned(), lease, token: leader.token });
                }
                Some(leader) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Err(StoreError::Held {
                            key: name.to_owned(),
                            holder: leader.lease,
                            token: leader.token,
                        });
                    }
                    // Wait for the leader's key to go (or the time to run out), renewing this
                    // campaign's lease, then look again.
                    let mut watch = self.watch_key(&leader.key, token + 1).await?;
                    let until = tokio::time::Instant::now() + left;
                    loop {
                        let slice = until.saturating_duration_since(tokio::time::Instant::now()).min(renew_every);
                        if slice.is_zero() || tokio::time::timeout(slice, watch.next_delete()).await.is_ok() {
                            break;
                        }
                        if self.keep_alive(lease).await? <= 0 {
                            return Err(StoreError::NotFound { what: format!("lease {lease}") });
                        }
                    }
                }
                // Our own key is gone: the lease expired under us.
                None => return Err(StoreError::NotFound { what: format!("lease {lease}") }),
            }
        }
    }

    /// Writes `key` only while `leader` still leads its election: in one transaction with the
    /// comparison that its election key is still the one it created (`leader.token`, its term).
    /// A leader that lost its lease, or was replaced, writes nothing ([`StoreError::Deposed`]):
    /// a lock or an election alone does not stop a paused old leader's late write; the fence
    /// does.
    pub async fn put_fenced(&self, leader: &Holder, key: &str, value: &str) -> Result<u64, StoreError> {
        self.fenced("put-fenced", leader, TxnOp::put(key, value, None)).await
    }

    /// Deletes `key` only while `leader` still leads (see [`Store::put_fenced`]).
    pub async fn delete_fenced(&self, leader: &Holder, key: &str) -> Result<u64, StoreError> {
        self.fenced("delete-fenced", leader, TxnOp::delete(key, None)).await
    }

    /// Whether `leader` still leads its election: its key is still the one it created.
    pub async fn still_leads(&self, leader: &Holder) -> Result<bool, StoreError> {
        Ok(self.get(&leader.key).await?.is_some_and(|e| e.created == leader.token && e.lease == Some(leader.lease)))
    }

    async fn fenced(&self, op: &'static str, leader: &Holder, write: TxnOp) -> Result<u64, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(leader.key.as_str(), CompareOp::Equal, leader.token as i64)])
            .and_then([write]);
        let response = self.txn(op, txn).await?;
        if response.succeeded() {
            Ok(revision(response.header()))
        } else {
            Err(StoreError::Deposed { key: leader.key.clone(), term: leader.token })
        }
    }

    /// Withdraws `lease`'s campaign in election `name` (leader or not) by revoking the lease.
    pub async fn resign(&self, name: &str, lease: i64) -> Result<(), StoreError> {
        if self.get(&format!("{name}/{lease:x}")).await?.is_none() {
            return Err(StoreError::NotFound { what: format!("a campaign of lease {lease} in {name}") });
        }
        self.revoke(lease).await
    }

    /// Whether `lease` leads election `name`.
    pub async fn is_leader(&self, name: &str, lease: i64) -> Result<bool, StoreError> {
        Ok(self.leader(name).await?.is_some_and(|leader| leader.lease == lease))
    }

    /// Whether revision `at` of the range `key..end` is compacted away.
    async fn is_compacted(&self, key: &[u8], end: &[u8], at: u64) -> Result<bool, StoreError> {
        let options = GetOptions::new().with_range(end).with_revision(at as i64).with_count_only();
        let read = |c: Client| {
            let (key, options) = (key.to_vec(), options.clone());
            async move { c.kv_client().get(key, Some(options)).await }
        };
        match self.call("watch", Kind::Repeatable, read).await {
            Ok(_) => Ok(false),
            Err(StoreError::Failed { reason, .. }) if reason.contains("future revision") => Ok(false),
            Err(StoreError::Failed { reason, .. }) if reason.contains("compacted") => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Follows the changes under `prefix` from revision `from` (inclusive; `None`: from now).
    pub async fn watch(&self, prefix: &str, from: Option<u64>) -> Result<Watch, StoreError> {
        let key: Vec<u8> = if prefix.is_empty() { vec![0] } else { prefix.as_bytes().to_vec() };
        watch::start(self, key, prefix_end(prefix.as_bytes()), from).await
    }

    async fn watch_key(&self, key: &str, from: u64) -> Result<Watch, StoreError> {
        let mut end = key.as_bytes().to_vec();
        end.push(0);
        watch::start(self, key.as_bytes().to_vec(), end, Some(from)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
