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

/// Connections the HTTP listener serves at once, unless configured otherwise.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 512;
/// Of those, from one source address.
pub const DEFAULT_HTTP_MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// Connections the unix socket serves at once (providers, clients, stream ends).
pub const DEFAULT_UNIX_MAX_CONNECTIONS: usize = 256;
/// Time to send a request head, on a new connection or an idle kept-alive one.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a whole task request body to arrive.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause in any request body, streams included.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name, used in errors and the status task.
    pub name: String,
    /// The unix socket for providers and local clients.
    pub socket: PathBuf,
    /// Where the HTTP API listens; `None` serves only the unix socket.
    pub listen: Option<SocketAddr>,
    /// The cluster's own bearer token (role admin; nodes forward with it); mandatory for any
    /// non-loopback address.
    pub token: Option<String>,
    /// Scoped API tokens (`cerana-…`, minted with `auth-token-create`) are checked against
    /// this file, which the node's quorum agent keeps.
    pub tokens_file: Option<PathBuf>,
    pub tls: Option<TlsFiles>,
    /// With `tls`: the CA (PEM) whose client certificates the HTTPS listener accepts, each
    /// naming a cluster node, whose bearer runs tasks as that node (role admin). Clients
    /// without one still authenticate with a bearer token; one from another CA is refused.
    pub client_ca: Option<PathBuf>,
    /// The certificate this coordinator presents to https peers that ask for one.
    pub peer_identity: Option<TlsFiles>,
    /// The node's TLS directory (`ca.crt`, `node.key`, `node.crt`), watched: once it holds a
    /// certificate, the API takes HTTPS (plain HTTP from loopback only), the cluster CA's
    /// client certificates, and peers are called with it (`node_tls.rs`). Instead of `tls`,
    /// `client_ca`, `peer_identity` and `peer_ca`.
    pub node_tls: Option<PathBuf>,
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
    /// Which coordinators tasks are forwarded to, results delivered to and streams pulled
    /// from (each carries `peer_token`).
    pub peers: crate::PeerPolicy,
    /// Connections the HTTP listener serves at once; lowered at start to fit the descriptor
    /// limit (`cerana_netlimits::DescriptorBudget`). More are answered 503 and closed.
    pub http_max_connections: usize,
    /// Connections one source address may hold on the HTTP listener.
    pub http_max_connections_per_source: usize,
    /// Connections the unix socket serves at once; lowered like `http_max_connections`. More
    /// are refused with `busy` and closed.
    pub unix_max_connections: usize,
    /// A client must send a request head within this; hyper starts the clock when it waits
    /// for a head, so it also closes kept-alive connections idle this long.
    pub header_timeout: Duration,
    /// A task request body (`POST /v1/tasks`) must arrive whole within this, else 408.
    pub body_timeout: Duration,
    /// Any request body, streams included, fails (408) when no bytes come for this long: a
    /// progress timeout, so a long stream that keeps moving is never cut off.
    pub body_idle_timeout: Duration,
}

impl Config {
    /// Defaults for a coordinator on `socket` with no HTTP listener.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            name: hostname(),
            socket: socket.into(),
            listen: None,
            token: None,
            tokens_file: None,
            tls: None,
            client_ca: None,
            peer_identity: None,
            node_tls: None,
            default_timeout: Duration::from_secs(60),
            max_timeout: Duration::from_secs(3600),
            journal_capacity: 10_000,
            journal_result_limit: 64 * 1024,
            journal_max_bytes: 16 << 20,
            stream_rendezvous: Duration::from_secs(30),
            advertise: Advertise::default(),
            peer_token: None,
            peer_ca: None,
            peers: crate::PeerPolicy::Any,
            http_max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            http_max_connections_per_source: DEFAULT_HTTP_MAX_CONNECTIONS_PER_SOURCE,
            unix_max_connections: DEFAULT_UNIX_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(addr) = self.listen {
            // A node's certificate authenticates it to its peers; operators then need the
            // cluster's token or a scoped one.
            let credentials = self.node_tls.is_some() && self.tokens_file.is_some();
            if !addr.ip().is_loopback() && self.token.as_deref().is_none_or(str::is_empty) && !credentials {
                return Err(ConfigError::TokenRequired { addr });
            }
        }
        let static_tls = self.tls.is_some() || self.client_ca.is_some() || self.peer_identity.is_some();
        if self.node_tls.is_some() && (static_tls || self.peer_ca.is_some()) {
            return Err(ConfigError::Invalid(
                "--node-tls takes the certificates from the node's TLS directory: not with --tls-cert, --client-ca, \
                 --peer-cert or --peer-ca"
                    .into(),
            ));
        }
        if self.client_ca.is_some() && self.tls.is_none() {
            return Err(ConfigError::Invalid("client certificates (--client-ca) need HTTPS (--tls-cert)".into()));
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
        if self.http_max_connections == 0 || self.unix_max_connections == 0 {
            return Err(ConfigError::Invalid("connection caps must be at least 1".into()));
        }
        if self.http_max_connections_per_source == 0
            || self.http_max_connections_per_source >= self.http_max_connections
        {
            return Err(ConfigError::Invalid(format!(
                "the HTTP connection cap per source must be at least 1 and below the total ({})",
                self.http_max_connections
            )));
        }
        if [self.header_timeout, self.body_timeout, self.body_idle_timeout].iter().any(Duration::is_zero) {
            return Err(ConfigError::Invalid("header and body timeouts must be positive".into()));
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
        OwnAddress {
            listen: self.listen,
            https: self.tls.is_some(),
            dual: self.node_tls.is_some(),
            advertise: self.advertise.clone(),
        }
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

    #[test]
    fn connection_caps_and_timeouts_must_make_sense() {
        let valid = Config::new("/tmp/x.sock");
        valid.validate().unwrap();
        let mut config = valid.clone();
        config.http_max_connections_per_source = config.http_max_connections;
        assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))));
        let mut config = valid.clone();
        config.unix_max_connections = 0;
        assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))));
        let mut config = valid;
        config.body_idle_timeout = Duration::ZERO;
        assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))));
    }
}
