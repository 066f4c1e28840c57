//! The `cerana-coordinator` command line: the node's task router. See `coordinator/README.md`.

use crate::{config, Advertise, Config, Coordinator, TlsFiles};
use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "CeranaOS node coordinator: routes named tasks to providers and peers")]
struct Args {
    /// Unix socket for providers and local clients.
    #[arg(long, env = "CERANA_COORDINATOR_SOCKET", default_value = cerana_protocol::DEFAULT_COORDINATOR_SOCKET)]
    socket: PathBuf,
    /// HTTP API address; a non-loopback address requires --token-file.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Serve only the unix socket.
    #[arg(long, conflicts_with = "listen")]
    no_http: bool,
    /// File holding the cluster's bearer token (role admin) the HTTP API requires (with
    /// --node-tls, a missing file means none).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The scoped API tokens' records (JSON, kept by the quorum agent): their bearers get
    /// their token's role.
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// PEM certificate chain for HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With --tls-cert: accept client certificates from this CA (PEM); a client whose
    /// certificate names a node runs tasks as that node.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// PEM certificate presented to https peers that ask for one (with --peer-key).
    #[arg(long, requires = "peer_key")]
    peer_cert: Option<PathBuf>,
    #[arg(long, requires = "peer_cert")]
    peer_key: Option<PathBuf>,
    /// The node's TLS directory (ca.crt, node.key, node.crt), watched: once its certificate is
    /// there the API takes HTTPS off loopback and the cluster CA's client certificates, and
    /// peers are called with it. Not with --tls-cert, --client-ca, --peer-cert, --peer-ca.
    #[arg(long)]
    node_tls: Option<PathBuf>,
    /// This node's name (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// Timeout in seconds of requests that name none.
    #[arg(long, default_value_t = 60)]
    default_timeout: u64,
    /// Journal entries kept.
    #[arg(long, default_value_t = 10_000)]
    journal_capacity: usize,
    /// Estimated bytes the journal keeps (results, then entries, are dropped oldest first).
    #[arg(long, default_value_t = 16 << 20)]
    journal_max_bytes: usize,
    /// URL peers use to reach this coordinator (for the streams of tasks it forwards), or
    /// `auto`: the address of the route to each peer when --listen is a wildcard. Default: the
    /// --listen address when it is not a wildcard.
    #[arg(long)]
    advertise_url: Option<Advertise>,
    /// File holding the bearer token sent to peer coordinators.
    #[arg(long)]
    peer_token_file: Option<PathBuf>,
    /// CA certificate (PEM) trusted for https peers.
    #[arg(long)]
    peer_ca: Option<PathBuf>,
    /// A member of the cluster (a coordinator's base URL; repeated): with --peers-file, tasks are
    /// forwarded, results delivered and streams pulled only to members. Without either, to any
    /// address a caller names.
    #[arg(long = "peer")]
    peers: Vec<cerana_protocol::NodeUrl>,
    /// File of the cluster members' base URLs, one per line, read at each use (the quorum
    /// agent keeps it).
    #[arg(long)]
    peers_file: Option<PathBuf>,
    /// HTTP connections served at once (lowered to fit RLIMIT_NOFILE); more get 503 busy.
    #[arg(long, default_value_t = config::DEFAULT_HTTP_MAX_CONNECTIONS)]
    http_max_connections: usize,
    /// HTTP connections one source address may hold.
    #[arg(long, default_value_t = config::DEFAULT_HTTP_MAX_CONNECTIONS_PER_SOURCE)]
    http_max_connections_per_source: usize,
    /// Unix socket connections served at once (lowered to fit RLIMIT_NOFILE); more are refused busy.
    #[arg(long, default_value_t = config::DEFAULT_UNIX_MAX_CONNECTIONS)]
    unix_max_connections: usize,
    /// Seconds a client has to send a request head (also the keep-alive idle limit).
    #[arg(long, default_value_t = config::DEFAULT_HEADER_TIMEOUT.as_secs())]
    header_timeout: u64,
    /// Seconds a task request body has to arrive whole; slower ones get 408.
    #[arg(long, default_value_t = config::DEFAULT_BODY_TIMEOUT.as_secs())]
    body_timeout: u64,
    /// Seconds any request body (streams included) may pause before it is cut off with 408.
    #[arg(long, default_value_t = config::DEFAULT_BODY_IDLE_TIMEOUT.as_secs())]
    body_idle_timeout: u64,
}

/// The configuration `args` give, but for the tokens (read from their files).
fn config(args: &Args) -> Config {
    let mut config = Config::new(&args.socket);
    if let Some(name) = &args.name {
        config.name = name.clone();
    }
    config.listen = (!args.no_http).then_some(args.listen);
    config.tls = args.tls_cert.clone().zip(args.tls_key.clone()).map(|(cert, key)| TlsFiles { cert, key });
    config.default_timeout = Duration::from_secs(args.default_timeout);
    config.journal_capacity = args.journal_capacity;
    config.journal_max_bytes = args.journal_max_bytes;
    config.advertise = args.advertise_url.clone().unwrap_or_default();
    config.peer_ca = args.peer_ca.clone();
    if !args.peers.is_empty() || args.peers_file.is_some() {
        config.peers = crate::PeerPolicy::Members { listed: args.peers.clone(), file: args.peers_file.clone() };
    }
    config.http_max_connections = args.http_max_connections;
    config.http_max_connections_per_source = args.http_max_connections_per_source;
    config.unix_max_connections = args.unix_max_connections;
    config.tokens_file = args.tokens_file.clone();
    config.client_ca = args.client_ca.clone();
    config.node_tls = args.node_tls.clone();
    config.peer_identity = match (&args.peer_cert, &args.peer_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.clone(), key: key.clone() }),
        _ => None,
    };
    config.header_timeout = Duration::from_secs(args.header_timeout);
    config.body_timeout = Duration::from_secs(args.body_timeout);
    config.body_idle_timeout = Duration::from_secs(args.body_idle_timeout);
    config
}

fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading token file {}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// The whole program: parses `std::env::args()`, serves until SIGTERM.
pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cerana-coordinator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CERANA_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = config(&args);
    // On a cluster node the cluster's token is only where an operator put it (the bootstrap
    // node's command line): the other nodes prove themselves with their certificates.
    let read = |path: &Option<PathBuf>| match path {
        Some(path) if args.node_tls.is_some() && !path.exists() => {
            tracing::info!(file = %path.display(), "no token file: node certificates and scoped tokens only");
            Ok(None)
        }
        Some(path) => read_token(path).map(Some),
        None => Ok(None),
    };
    config.token = read(&args.token_file)?;
    config.peer_token = read(&args.peer_token_file)?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let coordinator = Coordinator::start(config).await?;
        cerana_protocol::readiness::notify_ready();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        coordinator.shutdown();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn read_toml(path: &Path) -> toml::Value {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Issue #15: the image's service table (the one its manifest installs) starts the
    /// coordinator so that it can name its own streams to a peer when it forwards a task.
    #[test]
    fn the_shipped_service_table_lets_the_coordinator_forward_with_local_streams() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let manifest = read_toml(&workspace.join("image/manifest.toml"));
        let table_path = manifest["project"]["services"].as_str().expect("[project] services");
        let table = read_toml(&workspace.join(table_path));
        let service = &table["service"]["coordinator"];
        assert_eq!(service["command"].as_str(), Some("/usr/bin/cerana-coordinator"));
        let words = service["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("a string"));
        let args = Args::try_parse_from(std::iter::once("cerana-coordinator").chain(words)).expect("args parse");
        let config = config(&args);
        let peer = "10.99.0.3".parse().unwrap();
        let url = config.own_address().for_peer(peer, |_| Ok("10.99.0.2".parse().unwrap()));
        let port = config.listen.expect("the table serves HTTP").port();
        assert_eq!(url.as_ref().map(|u| u.as_str()), Ok(format!("http://10.99.0.2:{port}").as_str()));
    }
}
