//! The coordinator's settings and their validation.

use crate::address::{Advertise, OwnAddress};
use crate::journal::JournalLimits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Certificate chain and key (PEM) for serving HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name, used in errors and the status task.
    pub name: String,
    /// The unix socket for providers and local clients.
    pub socket: PathBuf,
    /// Where the HTTP API listens; `None` serves only the unix socket.
    pub listen: Option<SocketAddr>,
    /// Bearer token the HTTP API requires; mandatory for any non-loopback address.
    pub token: Option<String>,
    pub tls: Option<TlsFiles>,
    /// Timeout of a request that names none.
    pub default_timeout: Duration,
    /// Upper bound on any request's timeout.
    pub max_timeout: Duration,
    pub journal_capacity: usize,
    /// Results larger than this are not kept in the journal.
    pub journal_result_limit: usize,
    /// Estimated bytes the journal may hold; beyond it old results, then old entries, go.
    pub journal_max_bytes: usize,
    /// How long one end of a stream waits for the other.
    pub stream_rendezvous: Duration,
    /// How peers reach this coordinator (for streams of forwarded tasks).
    pub advertise: Advertise,
    /// Bearer token sent to peer coordinators when forwarding.
    pub peer_token: Option<String>,
    /// CA certificate (PEM) trusted for https peers.
    pub peer_ca: Option<PathBuf>,
}

impl Config {
    /// Defaults for a coordinator on `socket` with no HTTP listener.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            name: hostname(),
            socket: socket.into(),
            listen: None,
            token: None,
            tls: None,
            default_timeout: Duration::from_secs(60),
            max_timeout: Duration::from_secs(3600),
            journal_capacity: 10_000,
            journal_result_limit: 64 * 1024,
            journal_max_bytes: 16 << 20,
            stream_rendezvous: Duration::from_secs(30),
            advertise: Advertise::default(),
            peer_token: None,
            peer_ca: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(addr) = self.listen {
            if !addr.ip().is_loopback() && self.token.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::TokenRequired { addr });
            }
        }
        if self.journal_capacity == 0 {
            return Err(ConfigError::Invalid("journal capacity must be at least 1".into()));
        }
        if self.journal_max_bytes < self.journal_result_limit {
            return Err(ConfigError::Invalid("the journal's byte budget must hold at least one kept result".into()));
        }
        if self.default_timeout.is_zero() || self.default_timeout > self.max_timeout {
            return Err(ConfigError::Invalid("default timeout must be positive and within the maximum".into()));
        }
        if let Some(token) = &self.token {
            if token.len() < 16 || token.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(ConfigError::Invalid(
                    "API token must be at least 16 printable ASCII characters without spaces".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn journal_limits(&self) -> JournalLimits {
        JournalLimits {
            entries: self.journal_capacity,
            result_bytes: self.journal_result_limit,
            total_bytes: self.journal_max_bytes,
        }
    }

    pub fn own_address(&self) -> OwnAddress {
        OwnAddress { listen: self.listen, https: self.tls.is_some(), advertise: self.advertise.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("listening on {addr}, which is not loopback, requires a bearer token (--token-file)")]
    TokenRequired { addr: SocketAddr },
    #[error("{0}")]
    Invalid(String),
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_listen_requires_a_token() {
        let mut config = Config::new("/tmp/x.sock");
        config.listen = Some("0.0.0.0:8080".parse().unwrap());
        assert!(matches!(config.validate(), Err(ConfigError::TokenRequired { .. })));
        config.token = Some("short".into());
        assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))));
        config.token = Some("0123456789abcdef0123".into());
        config.validate().unwrap();
        config.token = None;
        config.listen = Some("127.0.0.1:8080".parse().unwrap());
        config.validate().unwrap();
        config.listen = Some("[::1]:8080".parse().unwrap());
        config.validate().unwrap();
    }
}
