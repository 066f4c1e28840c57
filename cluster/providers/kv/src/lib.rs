//! The `kv` provider: the cluster store's keys, leases, locks, elections and watches as tasks
//! (`kv-*`, see `cerana_protocol::tasks::kv`), on every node, over [`cerana_store`].
//!
//! It connects to the store on first use ([`LazyStore::from_env`]): a node whose store is not up
//! yet still registers, and answers `unavailable` until it is.

use cerana_protocol::tasks::kv::{self as t, KvLease, Leadership, MAX_CAMPAIGN_WAIT_MS, MAX_PAGE};
use cerana_protocol::{ErrorCode, NoOutput, TaskError};
use cerana_provider_sdk::Provider;
pub use cerana_store::LazyStore;
use cerana_store::{store_task, task_error, Holder, WatchChange};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Watches one provider serves at once; each holds a store stream and a coordinator stream.
pub const MAX_WATCHES: usize = 256;
/// A watch whose reader stops taking lines for this long is dropped.
const WATCH_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a quiet watch reports progress (and finds out its reader has gone).
const WATCH_PROGRESS_EVERY: Duration = Duration::from_secs(10);

fn holder_to_leadership(name: &str, holder: Holder) -> Leadership {
    Leadership { name: name.to_owned(), value: holder.value, lease: holder.lease, index: holder.token }
}

fn page_limit(limit: Option<u32>) -> Result<u32, TaskError> {
    match limit.unwrap_or(MAX_PAGE) {
        0 => Err(TaskError::new(ErrorCode::InvalidArgument, "limit must be at least 1")),
        n if n > MAX_PAGE => {
            Err(TaskError::new(ErrorCode::InvalidArgument, format!("limit may be at most {MAX_PAGE}")))
        }
        n => Ok(n),
    }
}

fn entry(e: cerana_store::Entry) -> t::KvEntry {
    t::KvEntry { key: e.key, value: e.value, index: e.index, created: e.created, lease: e.lease }
}

/// The whole `cerana-kv` program.
pub fn main() -> std::process::ExitCode {
    cerana_store::provider_main("kv", |store| provider_with(store).main())
}

/// The provider over `store`.
pub fn provider_with(store: LazyStore) -> Provider {
    let provider = Provider::new("kv", env!("CARGO_PKG_VERSION"));
    let provider = store_task!(provider, store, t::KvGet, |s, args| {
        match s.get(args.key.as_str()).await.map_err(task_error)? {
            Some(e) => Ok(entry(e)),
            None => Err(TaskError::new(ErrorCode::NotFound, format!("key {} does not exist", args.key))),
        }
    });
    let provider = store_task!(provider, store, t::KvGetAll, |s, args| {
        let limit = page_limit(args.limit)?;
        let after = args.after.as_ref().map(|k| k.as_str());
        let page = s.list(args.prefix.as_str(), after, limit, false).await.map_err(task_error)?;
        Ok(t::KvList { entries: page.entries.into_iter().map(entry).collect(), index: page.revision, more: page.more })
    });
    let provider = store_task!(provider, store, t::KvKeys, |s, args| {
        let limit = page_limit(args.limit)?;
        let after = args.after.as_ref().map(|k| k.as_str());
        let page = s.list(args.prefix.as_str(), after, limit, true).await.map_err(task_error)?;
        Ok(t::KvKeyList {
            keys: page.entries.into_iter().map(|e| e.key).collect(),
            index: page.revision,
            more: page.more,
        })
    });
    let provider = store_task!(provider, store, t::KvSet, |s, args| {
        Ok(t::KvIndex { index: s.put(args.key.as_str(), args.value.as_str()).await.map_err(task_error)?, lease: None })
    });
    let provider = store_task!(provider, store, t::KvUpdate, |s, args| {
        let (key, value) = (args.key.as_str(), args.value.as_str());
        match args.ttl_ms {
            None => Ok(t::KvIndex { index: s.put_if(key, value, args.index).await.map_err(task_error)?, lease: None }),
            Some(ttl) => {
                let (lease, index) =
                    s.put_if_ephemeral(key, value, args.index, ttl.seconds()).await.map_err(task_error)?;
                Ok(t::KvIndex { index, lease: Some(lease) })
            }
        }
    });
    let provider = store_task!(provider, store, t::KvDelete, |s, args| {
        let (deleted, index) = s.delete(args.key.as_str(), args.recursive).await.map_err(task_error)?;
        Ok(t::KvDeleted { deleted, index })
    });
    let provider = store_task!(provider, store, t::KvRemove, |s, args| {
        let index = s.delete_if(args.key.as_str(), args.index).await.map_err(task_error)?;
        Ok(t::KvDeleted { deleted: 1, index })
    });
    let provider = store_task!(provider, store, t::KvEphemeralSet, |s, args| {
        let (lease, index) =
            s.put_ephemeral(args.key.as_str(), args.value.as_str(), args.ttl_ms.seconds()).await.map_err(task_error)?;
        Ok(KvLease { lease, ttl_ms: args.ttl_ms.seconds() as u64 * 1000, index })
    });
    let provider = store_task!(provider, store, t::KvEphemeralRefresh, |s, args| {
        let ttl = s.keep_alive(args.lease).await.map_err(task_error)?;
        Ok(KvLease { lease: args.lease, ttl_ms: ttl as u64 * 1000, index: 0 })
    });
    let provider = store_task!(provider, store, t::KvEphemeralDestroy, |s, args| {
        s.revoke(args.lease).await.map_err(task_error)?;
        Ok(NoOutput {})
    });
    let provider = store_task!(provider, store, t::KvLock, |s, args| {
        let held = s.lock(args.key.as_str(), args.ttl_ms.seconds()).await.map_err(task_error)?;
        Ok(t::LockHeld {
            key: held.key,
            lease: held.lease,
            ttl_ms: args.ttl_ms.seconds() as u64 * 1000,
            token: held.token,
        })
    });
    let provider = store_task!(provider, store, t::KvRenew, |s, args| {
        let ttl = s.keep_alive(args.lease).await.map_err(task_error)?;
        Ok(KvLease { lease: args.lease, ttl_ms: ttl as u64 * 1000, index: 0 })
    });
    let provider = store_task!(provider, store, t::KvUnlock, |s, args| {
        s.unlock(args.key.as_str(), args.token).await.map_err(task_error)?;
        Ok(NoOutput {})
    });
    let provider = store_task!(provider, store, t::KvCampaign, |s, args| {
        if args.wait_ms > MAX_CAMPAIGN_WAIT_MS {
            return Err(TaskError::new(
                ErrorCode::InvalidArgument,
                format!("wait_ms may be at most {MAX_CAMPAIGN_WAIT_MS}"),
            ));
        }
        let wait = Duration::from_millis(args.wait_ms);
        let name = args.name.as_str();
        let holder = s.campaign(name, args.value.as_str(), args.ttl_ms.seconds(), wait).await.map_err(task_error)?;
        Ok(holder_to_leadership(name, holder))
    });
    let provider = store_task!(provider, store, t::KvResign, |s, args| {
        s.resign(args.name.as_str(), args.lease).await.map_err(task_error)?;
        Ok(NoOutput {})
    });
    let provider = store_task!(provider, store, t::KvLeader, |s, args| {
        match s.leader(args.name.as_str()).await.map_err(task_error)? {
            Some(holder) => Ok(holder_to_leadership(args.name.as_str(), holder)),
            None => Err(TaskError::new(ErrorCode::NotFound, format!("election {} has no leader", args.name))),
        }
    });
    let provider = store_task!(provider, store, t::KvIsLeader, |s, args| {
        Ok(t::IsLeader { leader: s.is_leader(args.name.as_str(), args.lease).await.map_err(task_error)? })
    });
    let provider = store_task!(provider, store, t::KvMembers, |s, _args| members(s).await);
    let watches = Arc::new(Semaphore::new(MAX_WATCHES));
    provider.task::<t::KvWatch, _, _>(move |ctx, args: t::WatchArgs| {
        let (lazy, watches) = (store.clone(), watches.clone());
        async move {
            let permit = watches.try_acquire_owned().map_err(|_| {
                TaskError::new(ErrorCode::Busy, format!("this node already serves {MAX_WATCHES} watches"))
            })?;
            let s = lazy.get().await?;
            let watch = s.watch(args.prefix.as_str(), args.from_index).await.map_err(task_error)?;
            let start_index = watch.start();
            let writer = ctx.output_stream().await?;
            tokio::spawn(async move {
                let _permit = permit;
                follow(watch, writer).await;
            });
            Ok(t::WatchStarted { start_index })
        }
    })
}

/// The members, each probed for its own status at once.
async fn members(s: &cerana_store::Store) -> Result<t::KvMemberList, TaskError> {
    let members = s.members().await.map_err(task_error)?;
    let mut probes = Vec::new();
    for member in &members {
        let (s, url) = (s.clone(), member.client_urls.first().cloned());
        probes.push(tokio::spawn(async move {
            match url {
                Some(url) => s.member_status(&url).await.ok().filter(|status| status.errors.is_empty()),
                None => None,
            }
        }));
    }
    let mut statuses = Vec::new();
    for probe in probes {
        statuses.push(probe.await.ok().flatten());
    }
    let leader = statuses.iter().flatten().map(|status| status.leader).find(|&id| id != 0).unwrap_or(0);
    let members = members
        .into_iter()
        .zip(statuses)
        .map(|(m, status)| t::KvMember {
            id: format!("{:x}", m.id),
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            voter: !m.learner,
            healthy: status.is_some(),
            leader: m.id == leader,
        })
        .collect();
    Ok(t::KvMemberList { members })
}

/// Copies a watch's changes to its stream as JSON lines until the reader goes or the store
/// ends the watch (then a last `error` line says why).
async fn follow<W>(mut watch: cerana_store::Watch, mut writer: cerana_protocol::stream::ChunkWriter<W>)
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut progress = tokio::time::interval(WATCH_PROGRESS_EVERY);
    progress.tick().await;
    loop {
        let lines = tokio::select! {
            batch = watch.next() => match batch {
                Ok(batch) if batch.changes.is_empty() => vec![t::WatchEvent::Progress { index: batch.revision }],
                Ok(batch) => batch.changes.into_iter().map(|c| match c {
                    WatchChange::Put { key, value, index } => t::WatchEvent::Put { key, value, index },
                    WatchChange::Delete { key, index } => t::WatchEvent::Delete { key, index },
                }).collect(),
                Err(e) => {
                    let e = task_error(e);
                    let line = t::WatchEvent::Error { code: e.code, message: e.message };
                    let _ = write_lines(&mut writer, &[line]).await;
                    let _ = tokio::time::timeout(WATCH_WRITE_TIMEOUT, writer.finish()).await;
                    return;
                }
            },
            _ = progress.tick() => {
                if watch.request_progress().await.is_err() {
                    tracing::debug!("cannot ask the store for watch progress");
                }
                continue;
            }
        };
        if write_lines(&mut writer, &lines).await.is_err() {
            tracing::debug!("a watch's reader went away");
            return;
        }
    }
}

async fn write_lines<W>(writer: &mut cerana_protocol::stream::ChunkWriter<W>, lines: &[t::WatchEvent]) -> Result<(), ()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut chunk = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut chunk, line).map_err(drop)?;
        chunk.push(b'\n');
    }
    match tokio::time::timeout(WATCH_WRITE_TIMEOUT, writer.write_chunk(&chunk)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
