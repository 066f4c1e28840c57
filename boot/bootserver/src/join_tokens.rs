//! The one-time join tokens this boot server minted (issue #17): one per boot script, bound to
//! the machine that asked for it (MAC, and SMBIOS UUID when iPXE knew one) and valid for
//! `ttl_secs`, and those an operator mints for a machine that boots from USB or ISO
//! (`boot-join-token-create`, bound to a MAC or to none); redeemed by the check-in that asks for
//! a node certificate. Only the secret's
//! SHA-256 is kept, in memory and in `<state_dir>/join-tokens.json`, so a restarted boot server
//! still knows which tokens are out and which are spent.

use cerana_credentials::{JoinToken, MintError};
use cerana_protocol::tasks::auth::TokenId;
use cerana_protocol::tasks::boot::MacAddr;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Mutex;

/// At most this many tokens are remembered: one live token per machine, and the spent ones
/// until an hour past their expiry (so a replay is named as one).
pub const MAX_JOIN_TOKENS: usize = 4096;
/// How long past its expiry a token is remembered.
const REMEMBER_SECS: u64 = 3600;
const FILE_NAME: &str = "join-tokens.json";

/// Who a token was minted for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinKind {
    /// A boot script this server served: the machine also needs this server's DHCP lease.
    #[default]
    BootScript,
    /// An operator, for a machine that does not boot from the network (its own address).
    Operator,
}

/// What is kept of a minted token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRecord {
    pub id: TokenId,
    #[serde(default)]
    pub kind: JoinKind,
    /// The machine it is bound to; any machine for an operator's token minted without one.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
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
    #[error("join token {0} was not minted here (or is long expired)")]
    Unknown(TokenId),
    #[error("join token {0} does not match its record")]
    WrongSecret(TokenId),
    #[error("join token {id} was minted for {minted_for}, not {presented_by}")]
    OtherMachine { id: TokenId, minted_for: String, presented_by: String },
    #[error("join token {id} expired at {expires_at} (unix seconds)")]
    Expired { id: TokenId, expires_at: u64 },
    #[error("join token {id} was already used at {redeemed_at} (unix seconds): a join token works once")]
    Used { id: TokenId, redeemed_at: u64 },
}

/// Whom a redemption is for: the node's public key, as sent at check-in.
#[derive(Debug)]
pub struct Redeemer<'a> {
    pub mac: MacAddr,
    pub uuid: Option<uuid::Uuid>,
    pub public_key: &'a str,
}

/// The table, persisted in the state directory when there is one.
#[derive(Debug)]
pub struct JoinTokens {
    ttl_secs: u64,
    file: Option<PathBuf>,
    records: Mutex<Vec<JoinRecord>>,
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
        JoinTokens { ttl_secs, file, records: Mutex::new(records) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<JoinRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the table through a temporary file (0600), so a crash never leaves half of it.
    fn persist(&self, records: &[JoinRecord]) {
        let Some(path) = &self.file else { return };
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&serde_json::to_vec(records).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the join tokens");
        }
    }

    /// A new token for the machine `mac` (`uuid`) at `now` (unix seconds). It replaces any
    /// unspent token of that machine: the newest boot script is the one booting.
    pub fn mint(&self, mac: MacAddr, uuid: Option<uuid::Uuid>, now: u64) -> Result<JoinToken, MintError> {
        let uuid = uuid.filter(|u| !u.is_nil());
        self.insert(JoinKind::BootScript, Some(mac), uuid, self.ttl_secs, now)
    }

    /// A new token an operator asked for, valid `ttl_secs`, for the machine `mac` or any.
    pub fn mint_for_operator(&self, mac: Option<MacAddr>, ttl_secs: u64, now: u64) -> Result<JoinToken, MintError> {
        self.insert(JoinKind::Operator, mac, None, ttl_secs, now)
    }

    fn insert(
        &self,
        kind: JoinKind,
        mac: Option<MacAddr>,
        uuid: Option<uuid::Uuid>,
        ttl_secs: u64,
        now: u64,
    ) -> Result<JoinToken, MintError> {
        let token = JoinToken::mint()?;
        let mut records = self.lock();
        let replaced =
            |r: &JoinRecord| kind == JoinKind::BootScript && r.kind == kind && r.mac == mac && r.redeemed_at.is_none();
        records.retain(|r| now < r.expires_at.saturating_add(REMEMBER_SECS) && !replaced(r));
        if records.len() >= MAX_JOIN_TOKENS {
            // The oldest go first; a live one among them only makes its machine boot again.
            records.sort_by_key(|r| r.expires_at);
            let excess = records.len() + 1 - MAX_JOIN_TOKENS;
            records.drain(..excess);
        }
        records.push(JoinRecord {
            id: token.id().clone(),
            kind,
            mac,
            uuid,
            secret_sha256: token.secret_sha256(),
            expires_at: now.saturating_add(ttl_secs),
            redeemed_at: None,
            redeemed_for: None,
        });
        self.persist(&records);
        Ok(token)
    }

    /// Checks `presented` for `who` at `now` without spending it.
    pub fn check(&self, presented: Option<&str>, who: &Redeemer, now: u64) -> Result<JoinRecord, JoinRefusal> {
        let token = JoinToken::parse(presented.ok_or(JoinRefusal::Missing)?)?;
        let records = self.lock();
        let record =
            records.iter().find(|r| &r.id == token.id()).ok_or_else(|| JoinRefusal::Unknown(token.id().clone()))?;
        Self::verify(record, &token, who, now)?;
        Ok(record.clone())
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

    /// Spends `presented` for `who` at `now`: it works once (for one key).
    pub fn redeem(&self, presented: Option<&str>, who: &Redeemer, now: u64) -> Result<TokenId, JoinRefusal> {
        let token = JoinToken::parse(presented.ok_or(JoinRefusal::Missing)?)?;
        let mut records = self.lock();
        let record =
            records.iter_mut().find(|r| &r.id == token.id()).ok_or_else(|| JoinRefusal::Unknown(token.id().clone()))?;
        Self::verify(record, &token, who, now)?;
        if record.redeemed_at.is_none() {
            record.redeemed_at = Some(now);
            record.redeemed_for = Some(who.public_key.to_string());
        }
        let id = record.id.clone();
        self.persist(&records);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0xc1, 0, last])
    }

    #[test]
    fn a_join_token_works_once_for_its_machine_within_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let uuid: uuid::Uuid = "c3a00002-0000-4000-8000-000000000002".parse().unwrap();
        let tokens = JoinTokens::load(Some(dir.path()), 600);
        let token = tokens.mint(mac(2), Some(uuid), NOW).unwrap().reveal();
        let node = |mac: MacAddr, uuid: Option<uuid::Uuid>| Redeemer { mac, uuid, public_key: "04aa" };
        let id = tokens.check(Some(&token), &node(mac(2), Some(uuid)), NOW + 1).unwrap().id;

        let other = |r| matches!(r, Err(JoinRefusal::OtherMachine { .. }));
        assert!(other(tokens.redeem(Some(&token), &node(mac(3), Some(uuid)), NOW + 1)));
        let other_uuid: uuid::Uuid = "c3a00003-0000-4000-8000-000000000003".parse().unwrap();
        assert!(other(tokens.redeem(Some(&token), &node(mac(2), Some(other_uuid)), NOW + 1)));
        assert!(other(tokens.redeem(Some(&token), &node(mac(2), None), NOW + 1)));
        assert!(matches!(
            tokens.redeem(Some(&token), &node(mac(2), Some(uuid)), NOW + 600),
            Err(JoinRefusal::Expired { .. })
        ));
        let forged = format!("{}{}", &token[..token.len() - 64], "0".repeat(64));
        assert!(matches!(
            tokens.redeem(Some(&forged), &node(mac(2), Some(uuid)), NOW + 1),
            Err(JoinRefusal::WrongSecret(_))
        ));
        assert!(matches!(tokens.redeem(None, &node(mac(2), Some(uuid)), NOW + 1), Err(JoinRefusal::Missing)));
        assert!(matches!(
            tokens.redeem(Some("cerana-join-x"), &node(mac(2), None), NOW),
            Err(JoinRefusal::Malformed(_))
        ));
        let unknown = JoinToken::mint().unwrap().reveal();
        assert!(matches!(tokens.redeem(Some(&unknown), &node(mac(2), None), NOW), Err(JoinRefusal::Unknown(_))));

        // None of that spent it; the byte-swapped spelling of the UUID is the same machine.
        let swapped: uuid::Uuid = "0200a0c3-0000-0040-8000-000000000002".parse().unwrap();
        assert_eq!(tokens.redeem(Some(&token), &node(mac(2), Some(swapped)), NOW + 2).unwrap(), id);
        let attacker = Redeemer { public_key: "04bb", ..node(mac(2), Some(uuid)) };
        let replay = tokens.redeem(Some(&token), &attacker, NOW + 3).unwrap_err();
        assert_eq!(replay, JoinRefusal::Used { id: id.clone(), redeemed_at: NOW + 2 });
        assert!(replay.to_string().contains("works once"), "{replay}");
        assert!(!replay.to_string().contains(&token[token.len() - 64..]));

        // A restarted boot server still knows it was spent; the file holds no secret.
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains(&token[token.len() - 64..]));
        let restarted = JoinTokens::load(Some(dir.path()), 600);
        let replay = restarted.redeem(Some(&token), &attacker, NOW + 4);
        assert!(matches!(replay, Err(JoinRefusal::Used { .. })), "{replay:?}");
        // The node's own check-in again (its answer lost) is answered again.
        let again = Redeemer { public_key: "04aa", ..node(mac(2), Some(uuid)) };
        assert_eq!(restarted.redeem(Some(&token), &again, NOW + 5).unwrap(), id);
    }

    #[test]
    fn a_new_boot_script_replaces_the_machines_unspent_token_and_the_table_is_capped() {
        let tokens = JoinTokens::load(None, 600);
        let node = |mac: MacAddr, uuid: Option<uuid::Uuid>| Redeemer { mac, uuid, public_key: "04aa" };
        let first = tokens.mint(mac(2), None, NOW).unwrap().reveal();
        let second = tokens.mint(mac(2), None, NOW + 1).unwrap().reveal();
        assert!(matches!(tokens.redeem(Some(&first), &node(mac(2), None), NOW + 2), Err(JoinRefusal::Unknown(_))));
        tokens.redeem(Some(&second), &node(mac(2), None), NOW + 2).unwrap();
        for i in 0..(MAX_JOIN_TOKENS as u32 + 10) {
            let b = i.to_be_bytes();
            tokens.mint(MacAddr([2, 0, b[0], b[1], b[2], b[3]]), None, NOW + 3).unwrap();
        }
        assert_eq!(tokens.lock().len(), MAX_JOIN_TOKENS);
        // Long past their expiry, tokens are forgotten.
        tokens.mint(mac(9), None, NOW + 600 + REMEMBER_SECS + 10).unwrap();
        assert_eq!(tokens.lock().len(), 1);
    }

    #[test]
    fn an_operators_token_binds_to_a_mac_or_to_none_and_works_once() {
        let tokens = JoinTokens::load(None, 600);
        let node = |mac: MacAddr, uuid: Option<uuid::Uuid>| Redeemer { mac, uuid, public_key: "04aa" };
        // An operator's token: any machine, not replaced by boot scripts, once.
        let operator = tokens.mint_for_operator(None, 60, NOW).unwrap().reveal();
        tokens.mint(mac(7), None, NOW).unwrap();
        let record = tokens.check(Some(&operator), &node(mac(7), None), NOW + 4).unwrap();
        assert_eq!((record.kind, record.mac), (JoinKind::Operator, None));
        tokens.redeem(Some(&operator), &node(mac(7), None), NOW + 4).unwrap();
        let replay = Redeemer { public_key: "04bb", ..node(mac(8), None) };
        assert!(matches!(tokens.redeem(Some(&operator), &replay, NOW + 5), Err(JoinRefusal::Used { .. })));
        let bound = tokens.mint_for_operator(Some(mac(7)), 60, NOW).unwrap().reveal();
        let err = tokens.check(Some(&bound), &node(mac(8), None), NOW + 4).unwrap_err();
        assert!(err.to_string().contains("minted for 52:54:00:c1:00:07, not 52:54:00:c1:00:08"), "{err}");
        assert!(matches!(tokens.check(Some(&bound), &node(mac(7), None), NOW + 63), Err(JoinRefusal::Expired { .. })));
    }
}
