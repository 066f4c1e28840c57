//! `auth-*`: the cluster's scoped API tokens (issue #17), served by the `clusterconf` provider
//! over the cluster store.
//!
//! A token is `cerana-<id>-<secret>`: the id (12 hex digits) names it in lists, revocations and
//! the journal; the secret (64 hex digits) is shown once, by `auth-token-create`, and only its
//! SHA-256 is stored, under [`TOKENS_PREFIX`]`/<id>`. Every node's quorum agent copies the
//! live records to the node's tokens file, which its coordinator checks callers against.

use crate::task::{Access, NoArgs, NoOutput};
use serde::{Deserialize, Serialize};

crate::declare_tasks! {
    AuthTokenCreate = "auth-token-create", Admin, "Mints an API token with a role (read, operator, admin) and a lifetime; its secret is shown only in this result", TokenCreateArgs => TokenCreated;
    AuthTokenList = "auth-token-list", Admin, "The cluster's API tokens (id, role, lifetime; never their secrets)", NoArgs => TokenList;
    AuthTokenRevoke = "auth-token-revoke", Admin, "Revokes an API token: every node refuses it within seconds", TokenIdArgs => NoOutput;
}

/// Where the token records live in the cluster store.
pub const TOKENS_PREFIX: &str = "/cerana/v1/auth/tokens";
/// The longest lifetime a token may be given: a year.
pub const MAX_TTL_SECONDS: u64 = 366 * 24 * 3600;
/// The shortest: a minute.
pub const MIN_TTL_SECONDS: u64 = 60;
/// Tokens the cluster holds at most (a runaway script cannot grow every node's tokens file).
pub const MAX_TOKENS: usize = 1024;
/// Longest description kept with a token.
pub const MAX_DESCRIPTION_LEN: usize = 200;

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `Read` tasks only: monitoring, dashboards.
    Read,
    /// `Read` and `Write` tasks: running the cluster, not managing its credentials.
    Operator,
    /// Everything, credentials included.
    Admin,
}

impl Role {
    /// Whether this role may run a task of `access`.
    pub fn allows(self, access: Access) -> bool {
        match self {
            Role::Read => access == Access::Read,
            Role::Operator => access != Access::Admin,
            Role::Admin => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("{other:?} is not a role: read, operator or admin")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a token id: 12 lowercase hex digits")]
pub struct BadTokenId(pub String);

crate::names::validated_name!(
    /// A token's public name: 12 lowercase hex digits.
    TokenId,
    BadTokenId,
    |id: String| {
        if id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(id)
        } else {
            Err(BadTokenId(id))
        }
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateArgs {
    pub role: Role,
    /// Lifetime in seconds, [`MIN_TTL_SECONDS`] to [`MAX_TTL_SECONDS`].
    pub ttl_seconds: u64,
    /// What the token is for, shown in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl TokenCreateArgs {
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&self.ttl_seconds) {
            return Err(format!("ttl_seconds: {} is outside {MIN_TTL_SECONDS}..={MAX_TTL_SECONDS}", self.ttl_seconds));
        }
        if let Some(d) = &self.description {
            if d.len() > MAX_DESCRIPTION_LEN || d.chars().any(char::is_control) {
                return Err(format!("description: at most {MAX_DESCRIPTION_LEN} bytes without control characters"));
            }
        }
        Ok(())
    }
}

/// The minted token: `token` is the only copy of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: TokenId,
    pub token: String,
    pub role: Role,
    /// Unix seconds.
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIdArgs {
    pub id: TokenId,
}

/// A token as the cluster store holds it: its secret's SHA-256, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: TokenId,
    pub role: Role,
    /// Hex SHA-256 of the token's secret part.
    pub secret_sha256: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A token as listed: the record without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSummary {
    pub id: TokenId,
    pub role: Role,
    pub created_at: u64,
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl From<&TokenRecord> for TokenSummary {
    fn from(r: &TokenRecord) -> Self {
        TokenSummary {
            id: r.id.clone(),
            role: r.role,
            created_at: r.created_at,
            expires_at: r.expires_at,
            description: r.description.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_their_access_classes() {
        assert!(Role::Read.allows(Access::Read));
        assert!(!Role::Read.allows(Access::Write));
        assert!(!Role::Read.allows(Access::Admin));
        assert!(Role::Operator.allows(Access::Write));
        assert!(!Role::Operator.allows(Access::Admin));
        assert!(Role::Admin.allows(Access::Admin));
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().unwrap_err().contains("not a role"));
    }

    #[test]
    fn create_args_are_checked() {
        let ok = TokenCreateArgs { role: Role::Read, ttl_seconds: 3600, description: Some("grafana".into()) };
        assert_eq!(ok.validate(), Ok(()));
        for ttl in [0, 59, MAX_TTL_SECONDS + 1] {
            let err = TokenCreateArgs { ttl_seconds: ttl, ..ok.clone() }.validate().unwrap_err();
            assert!(err.starts_with("ttl_seconds"), "{err}");
        }
        let err = TokenCreateArgs { description: Some("a\nb".into()), ..ok.clone() }.validate().unwrap_err();
        assert!(err.starts_with("description"), "{err}");
        let raw = r#"{"role":"superuser","ttl_seconds":60}"#;
        assert!(serde_json::from_str::<TokenCreateArgs>(raw).is_err());
        assert!(TokenId::new("0123456789ab").is_ok());
        for bad in ["0123456789AB", "0123456789a", "../../etc/pa"] {
            assert!(TokenId::new(bad).is_err(), "{bad}");
        }
    }
}
