//! One-time join tokens (issue #17): a boot server mints one into each boot script it serves,
//! bound to the machine that asked and valid for minutes, and signs a node certificate only for
//! a check-in that presents it, once. The script is fetched over plain HTTP, so the token is
//! worth something only until the machine it was minted for redeems it.

use crate::{constant_time_eq, random_id_and_secret, split_id_and_secret, MintError};
use cerana_protocol::tasks::auth::TokenId;

/// What every join token starts with; a scoped API token never does.
pub const JOIN_TOKEN_PREFIX: &str = "cerana-join-";

/// A join token with its secret: in the boot script and on the node's command line only.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: TokenId,
    secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a join token: it must read cerana-join-<12 hex digits>-<64 hex digits>")]
pub struct JoinTokenFormatError;

impl JoinToken {
    /// A new token from the system's randomness.
    pub fn mint() -> Result<Self, MintError> {
        let (id, secret) = random_id_and_secret()?;
        Ok(JoinToken { id, secret })
    }

    pub fn parse(text: &str) -> Result<Self, JoinTokenFormatError> {
        let rest = text.strip_prefix(JOIN_TOKEN_PREFIX).ok_or(JoinTokenFormatError)?;
        let (id, secret) = split_id_and_secret(rest).ok_or(JoinTokenFormatError)?;
        Ok(JoinToken { id, secret })
    }

    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// The hex SHA-256 of the secret: all a boot server keeps.
    pub fn secret_sha256(&self) -> String {
        crate::sha256_hex(self.secret.as_bytes())
    }

    /// Whether this token's secret hashes to `secret_sha256`, in constant time.
    pub fn matches(&self, secret_sha256: &str) -> bool {
        constant_time_eq(self.secret_sha256().as_bytes(), secret_sha256.as_bytes())
    }

    /// The whole token, for the boot script.
    pub fn reveal(&self) -> String {
        format!("{JOIN_TOKEN_PREFIX}{}-{}", self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_are_told_apart_from_api_tokens() {
        let token = JoinToken::mint().unwrap();
        let text = token.reveal();
        assert!(text.starts_with(JOIN_TOKEN_PREFIX) && text.len() == JOIN_TOKEN_PREFIX.len() + 12 + 1 + 64);
        let parsed = JoinToken::parse(&text).unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.matches(&token.secret_sha256()));
        assert!(!JoinToken::mint().unwrap().matches(&token.secret_sha256()));
        assert!(!format!("{token:?}").contains(&text[text.len() - 64..]));
        let api = crate::ApiToken::mint().unwrap().reveal();
        assert!(JoinToken::parse(&api).is_err());
        assert!(crate::ApiToken::parse(&text).is_err());
        for bad in ["", "cerana-join-", "cerana-join-0123456789ab", &text[..text.len() - 1], &text.to_uppercase()] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }
}
