//! Following the changes of a key range.

use crate::{Store, StoreError};
use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchChange {
    Put { key: String, value: String, index: u64 },
    Delete { key: String, index: u64 },
}

/// What one message of a watch carried: the changes of one or more revisions, or none (a
/// progress report: nothing changed up to `revision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub changes: Vec<WatchChange>,
    pub revision: u64,
}

/// A running watch; dropping it cancels it.
pub struct Watch {
    stream: WatchStream,
    /// Where the watch started: the revision the store was at when it was created, for a watch
    /// "from now".
    start: u64,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("start", &self.start).finish_non_exhaustive()
    }
}

pub(crate) async fn start(store: &Store, key: Vec<u8>, end: Vec<u8>, from: Option<u64>) -> Result<Watch, StoreError> {
    let mut options = WatchOptions::new().with_range(end.clone());
    if let Some(from) = from {
        options = options.with_start_revision(from as i64);
    }
    // The first message says whether the watch exists: a start before the compaction point is
    // refused right there.
    let open = |c: etcd_client::Client| {
        let (key, options) = (key.clone(), options.clone());
        async move {
            let mut stream = c.watch_client().watch(key, Some(options)).await?;
            let first = stream.message().await?;
            Ok((stream, first))
        }
    };
    let (mut stream, first) = store.call("watch", crate::Kind::Repeatable, open).await?;
    let closed = || StoreError::Unavailable { op: "watch", reason: "the watch stream closed".into() };
    let first = first.ok_or_else(closed)?;
    check(&first, from)?;
    if let Some(from) = from {
        // etcd creates a watch from compacted history and cancels it right after, naming the
        // compaction point: wait for that here so the caller gets a typed error, not a stream
        // that ends at once.
        if store.is_compacted(&key, &end, from).await? {
            let cancel = tokio::time::timeout(store.timeout, stream.message()).await;
            if let Ok(Ok(Some(response))) = cancel {
                check(&response, Some(from))?;
            }
            return Err(StoreError::Compacted { requested: from, compacted: from });
        }
    }
    let now = crate::revision(first.header());
    let start = from.unwrap_or(now + 1);
    Ok(Watch { stream, start })
}

fn check(response: &WatchResponse, from: Option<u64>) -> Result<(), StoreError> {
    if !response.canceled() {
        return Ok(());
    }
    if response.compact_revision() > 0 {
        return Err(StoreError::Compacted {
            requested: from.unwrap_or(0),
            compacted: response.compact_revision() as u64 - 1,
        });
    }
    Err(StoreError::Unavailable {
        op: "watch",
        reason: format!("the store cancelled the watch: {}", response.cancel_reason()),
    })
}

impl Watch {
    /// The first revision this watch reports.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The next message: changes, or a progress report after [`Watch::request_progress`].
    /// Not bounded by the store's timeout: a quiet range is not a failure. A stream the store
    /// ends is unavailable.
    pub async fn next(&mut self) -> Result<WatchBatch, StoreError> {
        let response = self
            .stream
            .message()
            .await
            .map_err(|e| StoreError::from_client("watch", e))?
            .ok_or_else(|| StoreError::Unavailable { op: "watch", reason: "the watch stream closed".into() })?;
        check(&response, Some(self.start))?;
        let mut changes = Vec::with_capacity(response.events().len());
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let entry = crate::entry(kv)?;
            changes.push(match event.event_type() {
                EventType::Put => WatchChange::Put { key: entry.key, value: entry.value, index: entry.index },
                EventType::Delete => WatchChange::Delete { key: entry.key, index: entry.index },
            });
        }
        Ok(WatchBatch { changes, revision: crate::revision(response.header()) })
    }

    /// Asks the store to report how far it is (answered by a [`WatchBatch`] without changes).
    pub async fn request_progress(&mut self) -> Result<(), StoreError> {
        self.stream.request_progress().await.map_err(|e| StoreError::from_client("watch-progress", e))
    }

    /// Waits until a change deletes a key of the range.
    pub(crate) async fn next_delete(&mut self) -> Result<(), StoreError> {
        loop {
            let batch = self.next().await?;
            if batch.changes.iter().any(|c| matches!(c, WatchChange::Delete { .. })) {
                return Ok(());
            }
        }
    }
}
