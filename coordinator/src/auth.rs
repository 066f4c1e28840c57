//! Who is calling the HTTP API, and what they may run (issue #17).
//!
//! A caller presents `Authorization: Bearer <token>`: the cluster's own token (role admin; the
//! nodes forward with it) or a scoped token minted with `auth-token-create`, checked against
//! the node's tokens file. A task runs only if the caller's role allows its access class
//! (`cerana_protocol::tasks::access_of`). Credentials in a URL are refused outright: URLs end up
//! in logs and shell histories.

use crate::core::Core;
use crate::http::PeerNode;
use cerana_credentials::ApiToken;
use cerana_protocol::tasks::auth::Role;
use cerana_protocol::{Access, ErrorCode, TaskError};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// How the journal names them: `node:<name>` (a cluster node's certificate),
    /// `cluster-token`, `token:<id>`, or `open` on an API without credentials (loopback only).
    pub identity: String,
    pub role: Role,
}

impl Caller {
    /// Refuses `what` (a task, or an API path) of `access` when this caller's role does not
    /// allow it.
    pub fn may_run(&self, what: &str, access: Access) -> Result<(), TaskError> {
        if self.role.allows(access) {
            return Ok(());
        }
        Err(TaskError::new(
            ErrorCode::PermissionDenied,
            format!("{} (role {}) may not run {what}: it needs {access} access", self.identity, self.role),
        ))
    }
}

/// Query parameters that would carry a credential.
const CREDENTIAL_PARAMS: &[&str] = &["token", "access_token", "api_token", "auth", "authorization", "bearer"];

/// Whether a query string names a credential parameter.
pub fn query_has_credential(query: &str) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        CREDENTIAL_PARAMS.iter().any(|p| name.eq_ignore_ascii_case(p))
    })
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Who is calling: `node`, the node a verified client certificate names (the TLS handshake
/// refused any other certificate), or else whoever presents `bearer` (the token of the
/// request's `Authorization: Bearer` header, if any).
pub fn authenticate(core: &Core, node: Option<&PeerNode>, bearer: Option<&str>) -> Result<Caller, TaskError> {
    let unauthenticated = |message: String| TaskError::new(ErrorCode::Unauthenticated, message);
    match node {
        Some(PeerNode::Named(node)) => return Ok(Caller { identity: format!("node:{node}"), role: Role::Admin }),
        Some(PeerNode::Elsewhere { name, from }) => {
            return Err(unauthenticated(format!(
                "the certificate of node {name} was presented from {from}, an address it does not name"
            )))
        }
        None => {}
    }
    let cluster_token = core.config.token.as_deref();
    if cluster_token.is_none() && core.tokens.is_none() && core.node_tls.is_none() {
        return Ok(Caller { identity: "open".into(), role: Role::Admin });
    }
    let Some(bearer) = bearer else {
        return Err(unauthenticated(
            "this API needs an Authorization: Bearer token (or a node's certificate from the cluster CA)".into(),
        ));
    };
    // The cluster's own token first: it may be any string, even one shaped like a scoped token.
    if cluster_token.is_some_and(|expected| token_matches(bearer.as_bytes(), expected.as_bytes())) {
        return Ok(Caller { identity: "cluster-token".into(), role: Role::Admin });
    }
    if !ApiToken::looks_like(bearer) {
        return Err(unauthenticated("wrong bearer token".into()));
    }
    let Some(tokens) = &core.tokens else {
        return Err(unauthenticated("this node takes no scoped tokens (no tokens file)".into()));
    };
    let table = tokens.table().map_err(|e| {
        tracing::warn!("scoped tokens unavailable: {e}");
        TaskError::new(ErrorCode::Unavailable, "this node cannot read its tokens file")
    })?;
    match table.verify(bearer, cerana_credentials::unix_now()) {
        Ok(verified) => Ok(Caller { identity: format!("token:{}", verified.id), role: verified.role }),
        Err(refusal) => Err(unauthenticated(refusal.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_query_string_are_spotted() {
        for q in ["token=x", "wait=true&access_token=x", "Token", "a=1&AUTHORIZATION=Bearer%20x"] {
            assert!(query_has_credential(q), "{q}");
        }
        for q in ["", "wait=false", "limit=5&task=token-create", "tokens=1"] {
            assert!(!query_has_credential(q), "{q}");
        }
    }

    #[test]
    fn roles_gate_tasks_by_access() {
        let reader = Caller { identity: "token:0123456789ab".into(), role: Role::Read };
        assert!(reader.may_run("node-info", Access::Read).is_ok());
        let e = reader.may_run("zfs-create", Access::Write).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(e.message.contains("token:0123456789ab (role read) may not run zfs-create"), "{e}");
        let operator = Caller { identity: "token:0123456789ab".into(), role: Role::Operator };
        assert!(operator.may_run("zfs-create", Access::Write).is_ok());
        assert!(operator.may_run("auth-token-create", Access::Admin).is_err());
    }
}
