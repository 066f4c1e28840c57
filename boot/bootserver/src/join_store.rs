//! Join tokens in the cluster store (issue #17): a boot server with the node's coordinator at
//! hand keeps the records of the tokens it mints under [`PREFIX`] in etcd, through the `kv-*`
//! tasks, so the check-in may come to another boot server than the one that served the boot
//! script. A token is spent by a compare-and-swap on its record's index: of two boot servers
//! redeeming one token at once, one wins and the other reads it spent.
//!
//! [`JoinStore`] is the seam: [`KvJoinStore`] is the real one; tests use an in-memory double.

use crate::join_tokens::JoinRecord;
use crate::kv_tasks::{KvTasks, Unavailable};
use cerana_protocol::tasks::auth::TokenId;
use cerana_protocol::tasks::kv::{
    KeyArgs, KvGet, KvGetAll, KvKey, KvPrefix, KvRemove, KvUpdate, KvValue, ListArgs, RemoveArgs, UpdateArgs,
};
use cerana_protocol::{ErrorCode, Task, TaskError};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

/// Where the records live: `<PREFIX><token id>`, JSON, the secret's SHA-256 only.
pub const PREFIX: &str = "/cerana/v1/join-tokens/";
/// Records read per page when sweeping.
const PAGE: u32 = 500;

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the cluster store is unavailable: {0}")]
    Unavailable(String),
    #[error("the cluster store's record of join token {id} is malformed: {reason}")]
    Malformed { id: String, reason: String },
}

/// A record with the store's index of it (what a compare-and-swap names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub record: JoinRecord,
    pub index: u64,
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The records of join tokens, shared by every boot server of the cluster.
pub trait JoinStore: Send + Sync + std::fmt::Debug {
    /// Adds a new record (its id must not be taken).
    fn create<'a>(&'a self, record: &'a JoinRecord) -> StoreFuture<'a, ()>;
    fn get<'a>(&'a self, id: &'a TokenId) -> StoreFuture<'a, Option<Stored>>;
    /// Replaces the record if it is still at `index`; `false` when another write came first.
    fn swap<'a>(&'a self, record: &'a JoinRecord, index: u64) -> StoreFuture<'a, bool>;
    /// Deletes the record if it is still at `index`.
    fn remove<'a>(&'a self, id: &'a TokenId, index: u64) -> StoreFuture<'a, bool>;
    /// Up to a page of records in id order after `after`, and whether more follow. Records that
    /// do not parse are skipped.
    fn page<'a>(&'a self, after: Option<&'a TokenId>) -> StoreFuture<'a, (Vec<Stored>, bool)>;
}

/// The store through the node's coordinator socket.
#[derive(Debug)]
pub struct KvJoinStore {
    kv: KvTasks,
}

fn key(id: &TokenId) -> Result<KvKey, StoreError> {
    KvKey::new(format!("{PREFIX}{id}")).map_err(|e| StoreError::Unavailable(format!("key of {id}: {e}")))
}

fn parse(id: &str, value: &str) -> Result<JoinRecord, StoreError> {
    serde_json::from_str(value).map_err(|e| StoreError::Malformed { id: id.to_string(), reason: e.to_string() })
}

fn value(record: &JoinRecord) -> Result<KvValue, StoreError> {
    let json = serde_json::to_string(record).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    KvValue::new(json).map_err(|e| StoreError::Unavailable(e.to_string()))
}

impl KvJoinStore {
    /// The store behind the coordinator listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { kv: KvTasks::new(socket, "bootserver-join-tokens") }
    }

    async fn run<T: Task>(&self, args: &T::Args) -> Result<Result<T::Output, TaskError>, StoreError> {
        self.kv.run::<T>(args).await.map_err(|Unavailable(why)| StoreError::Unavailable(why))
    }
}

/// Any other error of a task the store's answers do not expect.
fn unexpected(task: &str, e: TaskError) -> StoreError {
    StoreError::Unavailable(format!("{task}: {e}"))
}

impl JoinStore for KvJoinStore {
    fn create<'a>(&'a self, record: &'a JoinRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let args = UpdateArgs { key: key(&record.id)?, value: value(record)?, index: 0, ttl_ms: None };
            match self.run::<KvUpdate>(&args).await? {
                Ok(_) => Ok(()),
                Err(e) => Err(unexpected("kv-update", e)),
            }
        })
    }

    fn get<'a>(&'a self, id: &'a TokenId) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(async move {
            match self.run::<KvGet>(&KeyArgs { key: key(id)? }).await? {
                Ok(entry) => Ok(Some(Stored { record: parse(id.as_str(), &entry.value)?, index: entry.index })),
                Err(e) if e.code == ErrorCode::NotFound => Ok(None),
                Err(e) => Err(unexpected("kv-get", e)),
            }
        })
    }

    fn swap<'a>(&'a self, record: &'a JoinRecord, index: u64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let args = UpdateArgs { key: key(&record.id)?, value: value(record)?, index, ttl_ms: None };
            match self.run::<KvUpdate>(&args).await? {
                Ok(_) => Ok(true),
                Err(e) if e.code == ErrorCode::Conflict => Ok(false),
                Err(e) => Err(unexpected("kv-update", e)),
            }
        })
    }

    fn remove<'a>(&'a self, id: &'a TokenId, index: u64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            match self.run::<KvRemove>(&RemoveArgs { key: key(id)?, index }).await? {
                Ok(deleted) => Ok(deleted.deleted > 0),
                Err(e) if e.code == ErrorCode::Conflict || e.code == ErrorCode::NotFound => Ok(false),
                Err(e) => Err(unexpected("kv-remove", e)),
            }
        })
    }

    fn page<'a>(&'a self, after: Option<&'a TokenId>) -> StoreFuture<'a, (Vec<Stored>, bool)> {
        Box::pin(async move {
            let prefix = KvPrefix::new(PREFIX.to_string()).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let args = ListArgs { prefix, after: after.map(key).transpose()?, limit: Some(PAGE) };
            let list = self.run::<KvGetAll>(&args).await?.map_err(|e| unexpected("kv-getall", e))?;
            let records = list
                .entries
                .iter()
                .filter_map(|entry| {
                    let id = entry.key.strip_prefix(PREFIX).unwrap_or(&entry.key);
                    parse(id, &entry.value)
                        .inspect_err(|e| tracing::warn!(error = %e, "skipping a join token record"))
                        .ok()
                        .map(|record| Stored { record, index: entry.index })
                })
                .collect();
            Ok((records, list.more))
        })
    }
}

/// An in-memory [`JoinStore`] with etcd's compare-and-swap semantics, for tests; it can be
/// made unavailable.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryJoinStore {
    state: std::sync::Mutex<(u64, std::collections::BTreeMap<String, Stored>)>,
    pub down: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl MemoryJoinStore {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut u64, &mut std::collections::BTreeMap<String, Stored>) -> T,
    ) -> Result<T, StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("no quorum".into()));
        }
        let mut state = self.state.lock().unwrap();
        let (revision, map) = &mut *state;
        Ok(f(revision, map))
    }

    pub fn records(&self) -> usize {
        self.state.lock().unwrap().1.len()
    }
}

#[cfg(test)]
impl JoinStore for MemoryJoinStore {
    fn create<'a>(&'a self, record: &'a JoinRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.with(|revision, map| {
                if map.contains_key(record.id.as_str()) {
                    return Err(StoreError::Unavailable("exists".into()));
                }
                *revision += 1;
                map.insert(record.id.to_string(), Stored { record: record.clone(), index: *revision });
                Ok(())
            })?
        })
    }

    fn get<'a>(&'a self, id: &'a TokenId) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(async move { self.with(|_, map| map.get(id.as_str()).cloned()) })
    }

    fn swap<'a>(&'a self, record: &'a JoinRecord, index: u64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.with(|revision, map| match map.get_mut(record.id.as_str()) {
                Some(stored) if stored.index == index => {
                    *revision += 1;
                    *stored = Stored { record: record.clone(), index: *revision };
                    true
                }
                _ => false,
            })
        })
    }

    fn remove<'a>(&'a self, id: &'a TokenId, index: u64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.with(|_, map| match map.get(id.as_str()) {
                Some(stored) if stored.index == index => map.remove(id.as_str()).is_some(),
                _ => false,
            })
        })
    }

    fn page<'a>(&'a self, after: Option<&'a TokenId>) -> StoreFuture<'a, (Vec<Stored>, bool)> {
        Box::pin(async move {
            self.with(|_, map| {
                let from = after.map(|a| a.to_string()).unwrap_or_default();
                let mut rest = map.iter().filter(|(k, _)| after.is_none() || **k > from).map(|(_, v)| v.clone());
                let page: Vec<Stored> = rest.by_ref().take(PAGE as usize).collect();
                (page, rest.next().is_some())
            })
        })
    }
}
