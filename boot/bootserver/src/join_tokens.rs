//! The one-time join tokens this boot server minted (issue #17): one per boot script, bound to
//! the machine that asked for it (MAC, SMBIOS UUID when iPXE knew one, and the address this
//! server leased it) and valid for `ttl_secs`, and those an operator mints for a machine that
//! boots from USB or ISO (`boot-join-token-create`, bound to a MAC or to none); redeemed by the
//! check-in that asks for a node certificate.
//!
//! Where the cluster store can be reached ([`JoinStore`]), the records live there, so a token
//! minted by one boot server is redeemed at another, once: spending is a compare-and-swap. A boot
//! server that issues certificates itself keeps a token in its own table when the store cannot
//! take it (the bootstrap node's first seconds, before its etcd runs). Only the secret's SHA-256
//! is kept, in the store, in memory and in `<state_dir>/join-tokens.json`, so a restarted boot
//! server still knows which tokens are out and which are spent.

use crate::join_store::{JoinStore, StoreError};
use cerana_credentials::{JoinToken, MintError};
use cerana_protocol::tasks::auth::TokenId;
use cerana_protocol::tasks::boot::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// At most this many tokens are remembered: one live token per machine, and the spent ones
/// until an hour past their expiry (so a replay is named as one). The same bounds the records
/// one boot server keeps in the store.
pub const MAX_JOIN_TOKENS: usize = 4096;
/// How long past its expiry a token is remembered.
pub const REMEMBER_SECS: u64 = 3600;
const FILE_NAME: &str = "join-tokens.json";

/// Who a token was minted for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinKind {
    /// A boot script a boot server served: the machine also checks in from the address that
    /// server leased it.
    #[default]
    BootScript,
    /// An operator, for a machine that does not boot from the network (its own address).
    Operator,
}

/// What is kept of a minted token. Unknown fields are tolerated: a newer boot server may have
/// written the record to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRecord {
    pub id: TokenId,
    #[serde(default)]
    pub kind: JoinKind,
    /// The machine it is bound to; any machine for an operator's token minted without one.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
    /// The address the minting boot server's DHCP leased the machine: the check-in must come
    /// from it. Without one, the issuing server's own lease is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    pub secret_sha256: String,
    pub expires_at: u64,
    #[serde(default)]
    pub redeemed_at: Option<u64>,
    /// The public key the certificate was issued for: the same check-in again (its answer
    /// lost on the way) is answered again; any other is a replay.
    #[serde(default)]
    pub redeemed_for: Option<String>,
}

/// Why a check-in's join token is refused. The messages name the token's id, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("a node certificate needs the join token its boot script carried (cerana.join_token)")]
    Missing,
    #[error(transparent)]
    Malformed(#[from] cerana_credentials::JoinTokenFormatError),
    #[error("join token {0} was not minted in this cluster (or is long expired)")]
    Unknown(TokenId),
    #[error("join token {0} does not match its record")]
    WrongSecret(TokenId),
    #[error("join token {id} was minted for {minted_for}, not {presented_by}")]
    OtherMachine { id: TokenId, minted_for: String, presented_by: String },
    #[error("join token {id} expired at {expires_at} (unix seconds)")]
    Expired { id: TokenId, expires_at: u64 },
    #[error("join token {id} was already used at {redeemed_at} (unix seconds): a join token works once")]
    Used { id: TokenId, redeemed_at: u64 },
    /// The record cannot be read now: the check-in is asked to come again.
    #[error("join token records: {0}")]
    Store(StoreError),
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum JoinMintError {
    #[error(transparent)]
    Mint(#[from] MintError),
    #[error("the join token could not be recorded: {0}")]
    Store(#[from] StoreError),
}

/// Whom a redemption is for: the node's public key, as sent at check-in.
#[derive(Debug)]
pub struct Redeemer<'a> {
    pub mac: MacAddr,
    pub uuid: Option<uuid::Uuid>,
    pub public_key: &'a str,
}

/// The table, persisted in the state directory when there is one, and the store when there is
/// one.
#[derive(Debug)]
pub struct JoinTokens {
    ttl_secs: u64,
    file: Option<PathBuf>,
    records: Mutex<Vec<JoinRecord>>,
    store: Option<Arc<dyn JoinStore>>,
    /// Whether a token may stay in the local table when the store cannot take it: only where
    /// this server redeems tokens itself (a server whose check-ins go elsewhere would hand out
    /// a token nobody knows).
    local_fallback: bool,
    /// The tokens this server put in the store, oldest first, with their machine: capped, and
    /// a machine's unspent one is replaced by its next.
    in_store: Mutex<VecDeque<(TokenId, Option<MacAddr>)>>,
}

/// Whether two SMBIOS UUIDs name the same machine. Firmware tables older than SMBIOS 2.6 store
/// the first three fields in the other byte order, and iPXE and Linux may read one table each
/// way: both orders are accepted (the UUID binds, it is no secret).
fn same_machine_uuid(a: &uuid::Uuid, b: &uuid::Uuid) -> bool {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let swapped = uuid::Uuid::from_bytes([
        x[3], x[2], x[1], x[0], x[5], x[4], x[7], x[6], x[8], x[9], x[10], x[11], x[12], x[13], x[14], x[15],
    ]);
    a == b || swapped.as_bytes() == y
}

/// Compare-and-swap attempts before a redemption gives up (each lost one re-reads the record,
/// which then says who spent it).
const SWAP_ATTEMPTS: u32 = 3;

impl JoinTokens {
    /// The table in `state_dir` (empty if absent or unreadable, which is logged), minting tokens
    /// valid for `ttl_secs`.
    pub fn load(state_dir: Option<&std::path::Path>, ttl_secs: u64) -> Self {
        let file = state_dir.map(|d| d.join(FILE_NAME));
        let records = match file.as_deref().map(std::fs::read) {
            Some(Ok(bytes)) => serde_json::from_slice::<Vec<JoinRecord>>(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "join tokens file is malformed: starting without its tokens");
                Vec::new()
            }),
            Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, "cannot read the join tokens file: starting without its tokens");
                Vec::new()
            }
            _ => Vec::new(),
        };
        JoinTokens {
            ttl_secs,
            file,
            records: Mutex::new(records),
            store: None,
            local_fallback: true,
            in_store: Mutex::new(VecDeque::new()),
        }
    }

    /// Records new tokens in `store`; with `local_fallback`, in the local table while the
    /// store cannot take them.
    pub fn with_store(mut self, store: Arc<dyn JoinStore>, local_fallback: bool) -> Self {
        self.store = Some(store);
        self.local_fallback = local_fallback;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<JoinRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the table through a temporary file (0600), so a crash never leaves half of it.
    fn persist(&self, records: &[JoinRecord]) {
        let Some(path) = &self.file else { return };
        let written = serde_json::to_vec(records)
            .map_err(|e| e.to_string())
            .and_then(|json| cerana_pki::write_file(path, &json, 0o600).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the join tokens");
        }
    }

    /// A new token for the machine `mac` (`uuid`), which this server leased `address`, at
    /// `now` (unix seconds). It replaces any unspent token of that machine: the newest boot
    /// script is the one booting.
    pub async fn mint(
        &self,
        mac: MacAddr,
        uuid: Option<uuid::Uuid>,
        address: Option<Ipv4Addr>,
        now: u64,
    ) -> Result<JoinToken, JoinMintError> {
        let uuid = uuid.filter(|u| !u.is_nil());
        self.insert(JoinKind::BootScript, Some(mac), uuid, address, self.ttl_secs, now).await
    }

    /// A new token an operator asked for, valid `ttl_secs`, for the machine `mac` or any.
    pub async fn mint_for_operator(
        &self,
        mac: Option<MacAddr>,
        ttl_secs: u64,
        now: u64,
    ) -> Result<JoinToken, JoinMintError> {
        self.insert(JoinKind::Operator, mac, None, None, ttl_secs, now).await
    }

    async fn insert(
        &self,
        kind: JoinKind,
        mac: Option<MacAddr>,
        uuid: Option<uuid::Uuid>,
        address: Option<Ipv4Addr>,
        ttl_secs: u64,
        now: u64,
    ) -> Result<JoinToken, JoinMintError> {
        let token = JoinToken::mint()?;
        let record = JoinRecord {
            id: token.id().clone(),
            kind,
            mac,
            uuid,
            address,
            secret_sha256: token.secret_sha256(),
            expires_at: now.saturating_add(ttl_secs),
            redeemed_at: None,
            redeemed_for: None,
        };
        if let Some(store) = &self.store {
            match store.create(&record).await {
                Ok(()) => {
                    self.retire_in_store(store.as_ref(), &record).await;
                    return Ok(token);
                }
                Err(e) if self.local_fallback => {
                    tracing::warn!(error = %e, id = %record.id, "join token kept by this boot server only");
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.insert_local(record, now);
        Ok(token)
    }

    /// Notes `record` as this server's in the store, and deletes what it replaces: the
    /// machine's earlier unspent boot-script token, and the oldest beyond the cap.
    async fn retire_in_store(&self, store: &dyn JoinStore, record: &JoinRecord) {
        let retired: Vec<TokenId> = {
            let mut in_store = self.in_store.lock().unwrap_or_else(|e| e.into_inner());
            let mut retired = Vec::new();
            if record.kind == JoinKind::BootScript {
                in_store.retain(|(id, mac)| {
                    let same = *mac == record.mac;
                    if same {
                        retired.push(id.clone());
                    }
                    !same
                });
            }
            in_store
                .push_back((record.id.clone(), if record.kind == JoinKind::BootScript { record.mac } else { None }));
            while in_store.len() > MAX_JOIN_TOKENS {
                retired.extend(in_store.pop_front().map(|(id, _)| id));
            }
            retired
        };
        for id in retired {
            // A spent one stays (a replay is named as one); the sweep takes it later.
            match store.get(&id).await {
                Ok(Some(stored)) if stored.record.redeemed_at.is_none() => {
                    let _ = store.remove(&id, stored.index).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, %id, "cannot retire a replaced join token"),
            }
        }
    }

    fn insert_local(&self, record: JoinRecord, now: u64) {
        let mut records = self.lock();
        let replaced = |r: &JoinRecord| {
            record.kind == JoinKind::BootScript
                && r.kind == record.kind
                && r.mac == record.mac
                && r.redeemed_at.is_none()
        };
        records.retain(|r| now < r.expires_at.saturating_add(REMEMBER_SECS) && !replaced(r));
        if records.len() >= MAX_JOIN_TOKENS {
            // The oldest go first; a live one among them only makes its machine boot again.
            records.sort_by_key(|r| r.expires_at);
            let excess = records.len() + 1 - MAX_JOIN_TOKENS;
            records.drain(..excess);
        }
        records.push(record);
        self.persist(&records);
    }

    /// The record of `token`: this server's own table first, then the store.
    async fn find(&self, token: &JoinToken) -> Result<Found, JoinRefusal> {
        if let Some(record) = self.lock().iter().find(|r| &r.id == token.id()) {
            return Ok(Found::Local(record.clone()));
        }
        let Some(store) = &self.store else { return Err(JoinRefusal::Unknown(token.id().clone())) };
        match store.get(token.id()).await {
            Ok(Some(stored)) => Ok(Found::Stored(stored)),
            Ok(None) => Err(JoinRefusal::Unknown(token.id().clone())),
            Err(e) => Err(JoinRefusal::Store(e)),
        }
    }

    /// Checks `presented` for `who` at `now` without spending it.
    pub async fn check(
        &self,
        presented: Option<&str>,
        who: &Redeemer<'_>,
        now: u64,
    ) -> Result<JoinRecord, JoinRefusal> {
        let token = JoinToken::parse(presented.ok_or(JoinRefusal::Missing)?)?;
        let record = match self.find(&token).await? {
            Found::Local(record) => record,
            Found::Stored(stored) => stored.record,
        };
        Self::verify(&record, &token, who, now)?;
        Ok(record)
    }

    fn verify(record: &JoinRecord, token: &JoinToken, who: &Redeemer, now: u64) -> Result<(), JoinRefusal> {
        let id = record.id.clone();
        if !token.matches(&record.secret_sha256) {
            return Err(JoinRefusal::WrongSecret(id));
        }
        let uuid_differs = match (&record.uuid, who.uuid.filter(|u| !u.is_nil())) {
            (Some(minted), Some(presented)) => !same_machine_uuid(minted, &presented),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if record.mac.is_some_and(|mac| mac != who.mac) || uuid_differs {
            let name = |mac: &MacAddr, uuid: Option<&uuid::Uuid>| match uuid {
                Some(u) => format!("{mac} ({u})"),
                None => mac.to_string(),
            };
            let minted_for = record.mac.map_or_else(|| "any machine".to_string(), |m| name(&m, record.uuid.as_ref()));
            return Err(JoinRefusal::OtherMachine { id, minted_for, presented_by: name(&who.mac, who.uuid.as_ref()) });
        }
        match (record.redeemed_at, &record.redeemed_for) {
            (Some(_), Some(key)) if key == who.public_key => return Ok(()),
            (Some(redeemed_at), _) => return Err(JoinRefusal::Used { id, redeemed_at }),
            (None, _) => {}
        }
        if now >= record.expires_at {
            return Err(JoinRefusal::Expired { id, expires_at: record.expires_at });
        }
        Ok(())
    }

    /// Spends `presented` for `who` at `now`: it works once (for one key), whichever boot
    /// server redeems it.
    pub async fn redeem(&self, presented: Option<&str>, who: &Redeemer<'_>, now: u64) -> Result<TokenId, JoinRefusal> {
        let token = JoinToken::parse(presented.ok_or(JoinRefusal::Missing)?)?;
        for _ in 0..SWAP_ATTEMPTS {
            let mut stored = match self.find(&token).await? {
                Found::Local(_) => return self.redeem_local(&token, who, now),
                Found::Stored(stored) => stored,
            };
            Self::verify(&stored.record, &token, who, now)?;
            if stored.record.redeemed_at.is_some() {
                return Ok(stored.record.id);
            }
            stored.record.redeemed_at = Some(now);
            stored.record.redeemed_for = Some(who.public_key.to_string());
            let store = self.store.as_ref().ok_or_else(|| JoinRefusal::Unknown(token.id().clone()))?;
            match store.swap(&stored.record, stored.index).await {
                Ok(true) => return Ok(stored.record.id),
                // Another boot server wrote it first: read what it did.
                Ok(false) => continue,
                Err(e) => return Err(JoinRefusal::Store(e)),
            }
        }
        Err(JoinRefusal::Store(StoreError::Unavailable(format!(
            "join token {} changed under {SWAP_ATTEMPTS} attempts to spend it",
            token.id()
        ))))
    }

    fn redeem_local(&self, token: &JoinToken, who: &Redeemer, now: u64) -> Result<TokenId, JoinRefusal> {
        let mut records = self.lock();
        let record =
            records.iter_mut().find(|r| &r.id == token.id()).ok_or_else(|| JoinRefusal::Unknown(token.id().clone()))?;
        Self::verify(record, token, who, now)?;
        if record.redeemed_at.is_none() {
            record.redeemed_at = Some(now);
            record.redeemed_for = Some(who.public_key.to_string());
        }
        let id = record.id.clone();
        self.persist(&records);
        Ok(id)
    }

    /// Deletes the store's records past their expiry by [`REMEMBER_SECS`] (whichever boot
    /// server minted them); how many.
    pub async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        let Some(store) = &self.store else { return Ok(0) };
        let (mut after, mut removed) = (None::<TokenId>, 0);
        loop {
            let (page, more) = store.page(after.as_ref()).await?;
            for stored in &page {
                if now >= stored.record.expires_at.saturating_add(REMEMBER_SECS)
                    && store.remove(&stored.record.id, stored.index).await?
                {
                    removed += 1;
                }
            }
            match page.last() {
                Some(last) if more => after = Some(last.record.id.clone()),
                _ => return Ok(removed),
            }
        }
    }
}

/// Where a token's record was found.
enum Found {
    Local(JoinRecord),
    Stored(crate::join_store::Stored),
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0xc1, 0, last])
    }

    #[tokio::test]
    async fn a_join_token_works_once_for_its_machine_within_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let uuid: uuid::Uuid = "c3a00002-0000-4000-8000-000000000002".parse().unwrap();
        let tokens = JoinTokens::load(Some(dir.path()), 600);
        let token = tokens.mint(mac(2), Some(uuid), None, NOW).await.unwrap().reveal();
        let node = |mac: MacAddr, uuid: Option<uuid::Uuid>| Redeemer { mac, uuid, public_key: "04aa" };
        let id = tokens.check(Some(&token), &node(mac(2), Some(uuid)), NOW + 1).await.unwrap().id;

        let other = |r| matches!(r, Err(JoinRefusal::OtherMachine { .. }));
        assert!(other(tokens.redeem(Some(&token), &node(mac(3), Some(uuid)), NOW + 1).await));
        let other_uuid: uuid::Uuid = "c3a00003-0000-4000-8000-000000000003".parse().unwrap();
        assert!(other(tokens.redeem(Some(&token), &node(mac(2), Some(other_uuid)), NOW + 1).await));
        assert!(other(tokens.redeem(Some(&token), &node(mac(2), None), NOW + 1).await));
        assert!(matches!(
            tokens.redeem(Some(&token), &node(mac(2), Some(uuid)), NOW + 600).await,
            Err(JoinRefusal::Expired { .. })
        ));
        let forged = format!("{}{}", &token[..token.len() - 64], "0".repeat(64));
        assert!(matches!(
            tokens.redeem(Some(&forged), &node(mac(2), Some(uuid)), NOW + 1).await,
            Err(JoinRefusal::WrongSecret(_))
        ));
        assert!(matches!(tokens.redeem(None, &node(mac(2), Some(uuid)), NOW + 1).await, Err(JoinRefusal::Missing)));
        assert!(matches!(
            tokens.redeem(Some("cerana-join-x"), &node(mac(2), None), NOW).await,
            Err(JoinRefusal::Malformed(_))
        ));
        let unknown = JoinToken::mint().unwrap().reveal();
        assert!(matches!(tokens.redeem(Some(&unknown), &node(mac(2), None), NOW).await, Err(JoinRefusal::Unknown(_))));

        // None of that spent it; the byte-swapped spelling of the UUID is the same machine.
        let swapped: uuid::Uuid = "0200a0c3-0000-0040-8000-000000000002".parse().unwrap();
        assert_eq!(tokens.redeem(Some(&token), &node(mac(2), Some(swapped)), NOW + 2).await.unwrap(), id);
        let attacker = Redeemer { public_key: "04bb", ..node(mac(2), Some(uuid)) };
        let replay = tokens.redeem(Some(&token), &attacker, NOW + 3).await.unwrap_err();
        assert_eq!(replay, JoinRefusal::Used { id: id.clone(), redeemed_at: NOW + 2 });
        assert!(replay.to_string().contains("works once"), "{replay}");
        assert!(!replay.to_string().contains(&token[token.len() - 64..]));

        // A restarted boot server still knows it was spent; the file holds no secret.
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains(&token[token.len() - 64..]));
        let restarted = JoinTokens::load(Some(dir.path()), 600);
        let replay = restarted.redeem(Some(&token), &attacker, NOW + 4).await;
        assert!(matches!(replay, Err(JoinRefusal::Used { .. })), "{replay:?}");
        // The node's own check-in again (its answer lost) is answered again.
        let again = Redeemer { public_key: "04aa", ..node(mac(2), Some(uuid)) };
        assert_eq!(restarted.redeem(Some(&token), &again, NOW + 5).await.unwrap(), id);
    }

    #[tokio::test]
    async fn a_new_boot_script_replaces_the_machines_unspent_token_and_the_table_is_capped() {
        let tokens = JoinTokens::load(None, 600);
        let node = |mac: MacAddr, uuid: Option<uuid::Uuid>| Redeemer { mac, uuid, public_key: "04aa" };
        let first = tokens.mint(mac(2), None, None, NOW).await.unwrap().reveal();
        let second = tokens.mint(mac(2), None, None, NOW + 1).await.unwrap().reveal();
        assert!(matches!(
            tokens.redeem(Some(&first), &node(mac(2), None), NOW + 2).await,
            Err(JoinRefusal::Unknown(_))
        ));
        tokens.redeem(Some(&second), &node(mac(2), None), NOW + 2).await.unwrap();
        for i in 0..(MAX_JOIN_TOKENS as u32 + 10) {
            let b = i.to_be_bytes();
            tokens.mint(MacAddr([2, 0, b[0], b[1], b[2], b[3]]), None, None, NOW + 3).await.unwrap();
        }
        assert_eq!(tokens.lock().len(), MAX_JOIN_TOKENS);
        // Long past their expiry, tokens are forgotten.
        tokens.mint(mac(9), None, None, NOW + 600 + REMEMBER_SECS + 10).await.unwrap();
        assert_eq!(tokens.lock().len(), 1);
    }

    #[tokio::test]
    async fn an_operators_token_binds_to_a_mac_or_to_none_and_works_once() {
        let tokens = JoinTokens::load(None, 600);
        let node = |mac: MacAddr, uuid: Option<uuid::Uuid>| Redeemer { mac, uuid, public_key: "04aa" };
        // An operator's token: any machine, not replaced by boot scripts, once.
        let operator = tokens.mint_for_operator(None, 60, NOW).await.unwrap().reveal();
        tokens.mint(mac(7), None, None, NOW).await.unwrap();
        let record = tokens.check(Some(&operator), &node(mac(7), None), NOW + 4).await.unwrap();
        assert_eq!((record.kind, record.mac), (JoinKind::Operator, None));
        tokens.redeem(Some(&operator), &node(mac(7), None), NOW + 4).await.unwrap();
        let replay = Redeemer { public_key: "04bb", ..node(mac(8), None) };
        assert!(matches!(tokens.redeem(Some(&operator), &replay, NOW + 5).await, Err(JoinRefusal::Used { .. })));
        let bound = tokens.mint_for_operator(Some(mac(7)), 60, NOW).await.unwrap().reveal();
        let err = tokens.check(Some(&bound), &node(mac(8), None), NOW + 4).await.unwrap_err();
        assert!(err.to_string().contains("minted for 52:54:00:c1:00:07, not 52:54:00:c1:00:08"), "{err}");
        assert!(matches!(
            tokens.check(Some(&bound), &node(mac(7), None), NOW + 63).await,
            Err(JoinRefusal::Expired { .. })
        ));
    }
}
