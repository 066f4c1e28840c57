//! `kv-*`: the cluster store (etcd) as tasks, served by the `kv` provider (`cerana-kv`) on every
//! node (issue #16). The names are the original Cerana's.
//!
//! An **index** is the store's revision: every write gets a new, cluster-wide increasing one,
//! and a key's index is the revision that last modified it (the original's `modIndex`). A
//! compare-and-swap (`kv-update`, `kv-remove`) names the index the caller read; a stale one fails
//! with `conflict`, whose `details.current_index` is the key's index now (0: absent).
//!
//! Values are UTF-8 strings (JSON where the caller stores JSON). Keys are checked on the way in
//! ([`KvKey`]): 1 to [`MAX_KEY_BYTES`] bytes, no control characters.
//!
//! `kv-watch` answers with a stream of JSON lines ([`WatchEvent`]); a caller that lost it resumes
//! with `from_index` = the last event's index + 1, and gets every later event exactly once. A
//! start older than the store keeps (compacted) fails with `compacted`: list again, then watch
//! from the list's index.

use crate::task::{NoArgs, NoOutput};
use serde::{Deserialize, Serialize};

crate::declare_tasks! {
    KvGet = "kv-get", Read, "Reads one key: its value and index", KeyArgs => KvEntry;
    KvGetAll = "kv-getall", Read, "Reads the keys under a prefix with their values and indexes (paged)", ListArgs => KvList;
    KvKeys = "kv-keys", Read, "Lists the keys under a prefix (paged)", ListArgs => KvKeyList;
    KvSet = "kv-set", Write, "Writes a key whatever it holds; returns the new index", SetArgs => KvIndex;
    KvUpdate = "kv-update", Write, "Writes a key if its index is still `index` (0: only if absent); returns the new index", UpdateArgs => KvIndex;
    KvDelete = "kv-delete", Write, "Deletes a key, or with `recursive` the key and everything under `key/`", DeleteArgs => KvDeleted;
    KvRemove = "kv-remove", Write, "Deletes a key if its index is still `index`", RemoveArgs => KvDeleted;
    KvEphemeralSet = "kv-ephemeral-set", Write, "Writes a key that lives as long as a lease of `ttl_ms` (kept by kv-ephemeral-refresh)", EphemeralSetArgs => KvLease;
    KvEphemeralRefresh = "kv-ephemeral-refresh", Write, "Renews a lease for another TTL", LeaseArgs => KvLease;
    KvEphemeralDestroy = "kv-ephemeral-destroy", Write, "Revokes a lease; its keys are deleted", LeaseArgs => NoOutput;
    KvWatch = "kv-watch", Read, "Streams the changes under a prefix as JSON lines, from an index", WatchArgs => WatchStarted;
    KvLock = "kv-lock", Write, "Takes a lock (a key bound to a lease); its token fences later writes", LockArgs => LockHeld;
    KvRenew = "kv-renew", Write, "Renews a lock's lease for another TTL", LeaseArgs => KvLease;
    KvUnlock = "kv-unlock", Write, "Releases a lock if `token` still holds it", UnlockArgs => NoOutput;
    KvCampaign = "kv-campaign", Write, "Campaigns in an election, waiting up to `wait_ms` to lead", CampaignArgs => Leadership;
    KvResign = "kv-resign", Write, "Gives up an election (revokes the campaign's lease)", ResignArgs => NoOutput;
    KvLeader = "kv-leader", Read, "The current leader of an election", ElectionArgs => Leadership;
    KvIsLeader = "kv-is-leader", Read, "Whether a campaign's lease leads its election", ResignArgs => IsLeader;
    KvMembers = "kv-members", Read, "The store's members: voter or learner, healthy, leader", NoArgs => KvMemberList;
}

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value accepted, in bytes (etcd refuses requests over 1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The most entries one `kv-getall`/`kv-keys` page holds.
pub const MAX_PAGE: u32 = 10_000;
/// Lease TTL bounds.
pub const MIN_TTL_MS: u64 = 1_000;
pub const MAX_TTL_MS: u64 = 24 * 3600 * 1000;
/// The longest a `kv-campaign` waits to lead before giving up.
pub const MAX_CAMPAIGN_WAIT_MS: u64 = 50_000;

/// Why a string is not a [`KvKey`], a [`KvPrefix`] or a [`KvValue`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvKeyError {
    #[error("a key may not be empty")]
    Empty,
    #[error("a key may be at most {MAX_KEY_BYTES} bytes; this one is {0}")]
    TooLong(usize),
    #[error("a key may not hold control characters (found U+{0:04X})")]
    Control(u32),
    #[error("a value may be at most {MAX_VALUE_BYTES} bytes; this one is {0}")]
    ValueTooLarge(usize),
}

fn check_prefix(s: String) -> Result<String, KvKeyError> {
    if s.len() > MAX_KEY_BYTES {
        return Err(KvKeyError::TooLong(s.len()));
    }
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(KvKeyError::Control(c as u32)),
        None => Ok(s),
    }
}

crate::names::validated_name!(
    /// A key of the store: 1 to [`MAX_KEY_BYTES`] bytes of UTF-8 without control characters.
    KvKey,
    KvKeyError,
    |key: String| if key.is_empty() { Err(KvKeyError::Empty) } else { check_prefix(key) }
);

crate::names::validated_name!(
    /// A key prefix: like a [`KvKey`] but may be empty (the whole store).
    KvPrefix,
    KvKeyError,
    check_prefix
);

// validated_name! declares the struct, so the derive cannot go on it.
#[allow(clippy::derivable_impls)]
impl Default for KvPrefix {
    fn default() -> Self {
        Self(String::new())
    }
}

crate::names::validated_name!(
    /// A value: UTF-8, at most [`MAX_VALUE_BYTES`].
    KvValue,
    KvKeyError,
    |value: String| {
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvKeyError::ValueTooLarge(value.len()));
        }
        Ok(value)
    }
);

/// A lease TTL in milliseconds, [`MIN_TTL_MS`] to [`MAX_TTL_MS`] (etcd counts whole seconds:
/// rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct TtlMs(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ttl_ms must be {MIN_TTL_MS} to {MAX_TTL_MS}; got {0}")]
pub struct TtlOutOfRange(pub u64);

impl TtlMs {
    pub fn new(ms: u64) -> Result<Self, TtlOutOfRange> {
        if (MIN_TTL_MS..=MAX_TTL_MS).contains(&ms) {
            Ok(Self(ms))
        } else {
            Err(TtlOutOfRange(ms))
        }
    }

    pub fn millis(self) -> u64 {
        self.0
    }

    /// Whole seconds, rounded up, as etcd takes them.
    pub fn seconds(self) -> i64 {
        self.0.div_ceil(1000) as i64
    }
}

impl TryFrom<u64> for TtlMs {
    type Error = TtlOutOfRange;
    fn try_from(ms: u64) -> Result<Self, Self::Error> {
        Self::new(ms)
    }
}

impl From<TtlMs> for u64 {
    fn from(t: TtlMs) -> u64 {
        t.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyArgs {
    pub key: KvKey,
}

/// A page of the keys under `prefix`, in key order, starting after `after` (exclusive; the last
/// key of the previous page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    #[serde(default)]
    pub prefix: KvPrefix,
    #[serde(default)]
    pub after: Option<KvKey>,
    /// At most this many (default and maximum [`MAX_PAGE`]).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetArgs {
    pub key: KvKey,
    pub value: KvValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateArgs {
    pub key: KvKey,
    pub value: KvValue,
    /// The index the caller read; 0 means the key must not exist.
    pub index: u64,
    /// Binds the key to a new lease of this TTL (gone when it runs out); none: a plain key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<TtlMs>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteArgs {
    pub key: KvKey,
    /// Also every key under `key/`.
    #[serde(default)]
    pub recursive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveArgs {
    pub key: KvKey,
    pub index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EphemeralSetArgs {
    pub key: KvKey,
    pub value: KvValue,
    pub ttl_ms: TtlMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseArgs {
    pub lease: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchArgs {
    #[serde(default)]
    pub prefix: KvPrefix,
    /// The first index to report (inclusive); `None`: changes from now on.
    #[serde(default)]
    pub from_index: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockArgs {
    pub key: KvKey,
    pub ttl_ms: TtlMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockArgs {
    pub key: KvKey,
    pub token: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignArgs {
    pub name: KvKey,
    /// What the leader announces (its address, say).
    pub value: KvValue,
    pub ttl_ms: TtlMs,
    /// How long to wait to lead; 0 returns at once (default 0, at most [`MAX_CAMPAIGN_WAIT_MS`]).
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionArgs {
    pub name: KvKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResignArgs {
    pub name: KvKey,
    pub lease: i64,
}

// Results come back from other nodes: no deny_unknown_fields, so a newer node may add fields.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    pub value: String,
    pub index: u64,
    /// The index at which the key was created (since it last did not exist); 0 from a node that
    /// does not say.
    #[serde(default)]
    pub created: u64,
    /// The lease the key is bound to (ephemeral keys, locks), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvList {
    pub entries: Vec<KvEntry>,
    /// The store's revision the page was read at: watch from `index + 1` to follow it.
    pub index: u64,
    /// More keys follow: ask again with `after` = the last key.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvKeyList {
    pub keys: Vec<String>,
    pub index: u64,
    pub more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvIndex {
    pub index: u64,
    /// The lease the key was bound to (`kv-update` with `ttl_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvDeleted {
    pub deleted: u64,
    pub index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvLease {
    pub lease: i64,
    pub ttl_ms: u64,
    /// The index of the write, for `kv-ephemeral-set`; 0 for a refresh.
    #[serde(default)]
    pub index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStarted {
    /// The index the watch starts from; events carry their own.
    pub start_index: u64,
}

/// One line of a `kv-watch` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    Put {
        key: String,
        value: String,
        index: u64,
    },
    Delete {
        key: String,
        index: u64,
    },
    /// Nothing changed up to `index`: the stream is alive.
    Progress {
        index: u64,
    },
    /// The watch ended (the store went away, say); resume from the last event's index + 1.
    Error {
        code: crate::ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHeld {
    pub key: String,
    pub lease: i64,
    pub ttl_ms: u64,
    /// The lock's fencing token (its key's creation index): larger for every later holder.
    pub token: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    pub name: String,
    pub value: String,
    pub lease: i64,
    /// The campaign key's creation index: a fencing token for the term.
    pub index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsLeader {
    pub leader: bool,
}

/// One member of the store (named after the node that hosts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvMember {
    /// etcd's member id, in hex as etcdctl shows it.
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// A voter, or a learner catching up.
    pub voter: bool,
    /// It answered a status probe within a second, without errors.
    pub healthy: bool,
    pub leader: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvMemberList {
    pub members: Vec<KvMember>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_on_the_way_in() {
        assert!(serde_json::from_str::<KeyArgs>(r#"{"key":"/cerana/v1/nodes/a"}"#).is_ok());
        let err = serde_json::from_str::<KeyArgs>(r#"{"key":""}"#).unwrap_err();
        assert!(err.to_string().contains("may not be empty"), "{err}");
        let long = format!(r#"{{"key":"{}"}}"#, "k".repeat(MAX_KEY_BYTES + 1));
        assert!(serde_json::from_str::<KeyArgs>(&long).unwrap_err().to_string().contains("at most 1024"));
        let err = serde_json::from_str::<KeyArgs>(r#"{"key":"a\u0000b"}"#).unwrap_err();
        assert!(err.to_string().contains("control"), "{err}");
        assert!(serde_json::from_str::<KeyArgs>(r#"{"key":"a","recursive":true}"#).is_err());
        assert_eq!(serde_json::from_str::<ListArgs>("{}").unwrap().prefix.as_str(), "");
    }

    #[test]
    fn values_and_ttls_are_bounded() {
        let big = format!(r#"{{"key":"k","value":"{}"}}"#, "v".repeat(MAX_VALUE_BYTES + 1));
        assert!(serde_json::from_str::<SetArgs>(&big).unwrap_err().to_string().contains("at most 1048576"));
        let err = serde_json::from_str::<EphemeralSetArgs>(r#"{"key":"k","value":"v","ttl_ms":10}"#).unwrap_err();
        assert!(err.to_string().contains("ttl_ms must be"), "{err}");
        assert_eq!(TtlMs::new(1500).unwrap().seconds(), 2);
    }

    #[test]
    fn watch_events_are_tagged_json_lines() {
        let line = serde_json::to_string(&WatchEvent::Put { key: "a".into(), value: "1".into(), index: 7 }).unwrap();
        assert_eq!(line, r#"{"type":"put","key":"a","value":"1","index":7}"#);
        let back: WatchEvent = serde_json::from_str(r#"{"type":"delete","key":"a","index":8}"#).unwrap();
        assert_eq!(back, WatchEvent::Delete { key: "a".into(), index: 8 });
    }
}
