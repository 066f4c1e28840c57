//! The cluster's scoped API tokens (issue #17).
//!
//! An [`ApiToken`] is `cerana-<id>-<secret>`. It is minted by the `clusterconf` provider, which
//! stores a [`TokenRecord`] holding only the secret's SHA-256; every node's quorum agent copies
//! the live records into the node's tokens file ([`write_tokens_file`]); the coordinator checks
//! each caller's bearer token against that file ([`TokensFile`], [`TokenTable::verify`]).
//! The secret has 256 random bits, so one unsalted SHA-256 is enough to keep a stolen record
//! from being used.

use cerana_protocol::tasks::auth::{Role, TokenCreateArgs, TokenId, TokenRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What every token starts with, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "cerana-";
const SECRET_HEX_LEN: usize = 64;

/// A token with its secret: only ever in the minting result and in the caller's hands.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    id: TokenId,
    secret: String,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("not a cerana API token: it must read cerana-<12 hex digits>-<64 hex digits>")]
    Shape,
}

#[derive(Debug, thiserror::Error)]
#[error("no randomness for a new token: {0}")]
pub struct MintError(String);

mod join;
pub use join::{JoinToken, JoinTokenFormatError, JOIN_TOKEN_PREFIX};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A new token's public id and secret, from the system's randomness.
fn random_id_and_secret() -> Result<(TokenId, String), MintError> {
    let mut bytes = [0u8; 6 + SECRET_HEX_LEN / 2];
    getrandom::getrandom(&mut bytes).map_err(|e| MintError(e.to_string()))?;
    Ok((TokenId::new(hex(&bytes[..6])).expect("12 hex digits"), hex(&bytes[6..])))
}

/// `<id>-<secret>`, both well formed.
fn split_id_and_secret(text: &str) -> Option<(TokenId, String)> {
    let (id, secret) = text.split_once('-')?;
    let id = TokenId::new(id).ok()?;
    (secret.len() == SECRET_HEX_LEN && is_lower_hex(secret)).then(|| (id, secret.to_owned()))
}

impl ApiToken {
    /// A new token from the system's randomness.
    pub fn mint() -> Result<Self, MintError> {
        let (id, secret) = random_id_and_secret()?;
        Ok(ApiToken { id, secret })
    }

    pub fn parse(text: &str) -> Result<Self, TokenFormatError> {
        let rest = text.strip_prefix(TOKEN_PREFIX).ok_or(TokenFormatError::Shape)?;
        let (id, secret) = split_id_and_secret(rest).ok_or(TokenFormatError::Shape)?;
        Ok(ApiToken { id, secret })
    }

    /// Whether `text` is shaped like a scoped token (and not, say, the cluster's own token).
    pub fn looks_like(text: &str) -> bool {
        text.starts_with(TOKEN_PREFIX)
    }

    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// The hex SHA-256 of the secret: what the cluster stores.
    pub fn secret_sha256(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }

    /// The whole token, to hand to its owner once.
    pub fn reveal(&self) -> String {
        format!("{TOKEN_PREFIX}{}-{}", self.id, self.secret)
    }

    /// The record the cluster keeps of this token.
    pub fn record(&self, args: &TokenCreateArgs, now: u64) -> TokenRecord {
        TokenRecord {
            id: self.id.clone(),
            role: args.role,
            secret_sha256: self.secret_sha256(),
            created_at: now,
            expires_at: now.saturating_add(args.ttl_seconds),
            description: args.description.clone(),
        }
    }
}

/// Who a verified token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: TokenId,
    pub role: Role,
}

/// Why a presented token is refused. The messages never repeat the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Malformed(#[from] TokenFormatError),
    #[error("token {0} is not known to this cluster (never minted, or revoked)")]
    Unknown(TokenId),
    #[error("token {id} expired at {expires_at} (unix seconds)")]
    Expired { id: TokenId, expires_at: u64 },
    #[error("token {0} does not match its record")]
    WrongSecret(TokenId),
}

/// The tokens file: every live token's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensDocument {
    pub tokens: Vec<TokenRecord>,
}

/// The records a coordinator checks callers against, by id.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    by_id: HashMap<TokenId, TokenRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("reading tokens file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("tokens file {path} is malformed: {source}")]
    Malformed { path: PathBuf, source: serde_json::Error },
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenTable {
    pub fn new(records: impl IntoIterator<Item = TokenRecord>) -> Self {
        TokenTable { by_id: records.into_iter().map(|r| (r.id.clone(), r)).collect() }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Checks `presented` at `now` (unix seconds).
    pub fn verify(&self, presented: &str, now: u64) -> Result<Verified, Refusal> {
        let token = ApiToken::parse(presented)?;
        let record = self.by_id.get(&token.id).ok_or_else(|| Refusal::Unknown(token.id.clone()))?;
        if !constant_time_eq(token.secret_sha256().as_bytes(), record.secret_sha256.as_bytes()) {
            return Err(Refusal::WrongSecret(token.id));
        }
        if now >= record.expires_at {
            return Err(Refusal::Expired { id: token.id, expires_at: record.expires_at });
        }
        Ok(Verified { id: token.id, role: record.role })
    }
}

/// Writes the tokens file atomically (0600, then renamed over the old one), leaving out the
/// expired; an unchanged file is not rewritten. Returns whether it changed.
pub fn write_tokens_file(path: &Path, records: &[TokenRecord], now: u64) -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut live: Vec<TokenRecord> = records.iter().filter(|r| r.expires_at > now).cloned().collect();
    live.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    let text = serde_json::to_vec_pretty(&TokensDocument { tokens: live }).map_err(std::io::Error::other)?;
    if std::fs::read(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// What identifies one version of a file, so it is parsed again only when it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

/// The tokens file as a coordinator reads it: parsed again when it changes (it is replaced by
/// rename, so a new version has a new inode); a missing file is an empty table.
#[derive(Debug)]
pub struct TokensFile {
    path: PathBuf,
    cache: Mutex<Option<(Option<Stamp>, Arc<TokenTable>)>>,
}

impl TokensFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TokensFile { path: path.into(), cache: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn table(&self) -> Result<Arc<TokenTable>, TableError> {
        use std::os::unix::fs::MetadataExt;
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => Some(Stamp { inode: m.ino(), len: m.len(), modified: m.modified().ok() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(TableError::Read { path: self.path.clone(), source }),
        };
        let mut cache = self.cache.lock().expect("tokens cache lock");
        if let Some((cached, table)) = cache.as_ref() {
            if *cached == stamp {
                return Ok(table.clone());
            }
        }
        let table = match stamp {
            None => TokenTable::default(),
            Some(_) => {
                let text =
                    std::fs::read(&self.path).map_err(|source| TableError::Read { path: self.path.clone(), source })?;
                let doc: TokensDocument = serde_json::from_slice(&text)
                    .map_err(|source| TableError::Malformed { path: self.path.clone(), source })?;
                TokenTable::new(doc.tokens)
            }
        };
        let table = Arc::new(table);
        *cache = Some((stamp, table.clone()));
        Ok(table)
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(role: Role, ttl_seconds: u64) -> TokenCreateArgs {
        TokenCreateArgs { role, ttl_seconds, description: None }
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let token = ApiToken::mint().unwrap();
        let text = token.reveal();
        assert!(text.starts_with("cerana-") && text.len() == 7 + 12 + 1 + 64, "{text}");
        assert_eq!(ApiToken::parse(&text).unwrap(), token);
        assert!(!format!("{token:?}").contains(&token.secret), "Debug shows no secret");
        let record = token.record(&args(Role::Read, 600), 1_000);
        assert_eq!(record.expires_at, 1_600);
        assert!(!serde_json::to_string(&record).unwrap().contains(&token.secret));
        let table = TokenTable::new([record]);
        assert_eq!(table.verify(&text, 1_599), Ok(Verified { id: token.id().clone(), role: Role::Read }));
        assert_eq!(table.verify(&text, 1_600), Err(Refusal::Expired { id: token.id().clone(), expires_at: 1_600 }));
    }

    #[test]
    fn forged_unknown_and_malformed_tokens_are_refused() {
        let token = ApiToken::mint().unwrap();
        let table = TokenTable::new([token.record(&args(Role::Admin, 600), 0)]);
        // Same id, another secret.
        let forged = format!("cerana-{}-{}", token.id(), "0".repeat(64));
        assert_eq!(table.verify(&forged, 1), Err(Refusal::WrongSecret(token.id().clone())));
        let other = ApiToken::mint().unwrap();
        assert_eq!(table.verify(&other.reveal(), 1), Err(Refusal::Unknown(other.id().clone())));
        let long = "cerana-".to_owned() + &"a".repeat(100_000);
        for bad in ["", "cerana-", "Bearer x", "cerana-0123456789ab-short", &long, "cerana-0123456789ab-ABCD"] {
            assert_eq!(table.verify(bad, 1), Err(Refusal::Malformed(TokenFormatError::Shape)), "{bad:.40}");
        }
    }

    #[test]
    fn the_tokens_file_follows_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-tokens");
        let file = TokensFile::new(&path);
        assert!(file.table().unwrap().is_empty(), "missing file: no tokens");
        let (a, b) = (ApiToken::mint().unwrap(), ApiToken::mint().unwrap());
        let records = [a.record(&args(Role::Read, 600), 100), b.record(&args(Role::Operator, 60), 100)];
        assert!(write_tokens_file(&path, &records, 100).unwrap());
        assert!(!write_tokens_file(&path, &records, 100).unwrap(), "unchanged: not rewritten");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(file.table().unwrap().len(), 2);
        // b expired by the next write; a revoked one simply is not written.
        assert!(write_tokens_file(&path, &records, 200).unwrap());
        let table = file.table().unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.verify(&b.reveal(), 150), Err(Refusal::Unknown(b.id().clone())));
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(file.table(), Err(TableError::Malformed { .. })));
    }
}
