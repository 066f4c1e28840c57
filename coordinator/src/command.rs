//! The `cerana-coordinator` command line: the node's task router. See `coordinator/README.md`.

use crate::{config, Config, Coordinator, TlsFiles};
use anyhow::Context;
use cerana_protocol::NodeUrl;
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
    /// File holding the bearer token the HTTP API requires.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM certificate chain for HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// This node's name (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// Timeout in seconds of requests that name none.
    #[arg(long, default_value_t = 60)]
    default_timeout: u64,
    /// Journal entries kept.
    #[arg(long, default_value_t = 10_000)]
    journal_capacity: usize,
    /// URL peers use to reach this coordinator.
    #[arg(long)]
    advertise_url: Option<NodeUrl>,
    /// File holding the bearer token sent to peer coordinators.
    #[arg(long)]
    peer_token_file: Option<PathBuf>,
    /// CA certificate (PEM) trusted for https peers.
    #[arg(long)]
    peer_ca: Option<PathBuf>,
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
    let mut config = Config::new(args.socket);
    if let Some(name) = args.name {
        config.name = name;
    }
    config.listen = (!args.no_http).then_some(args.listen);
    config.token = args.token_file.as_ref().map(read_token).transpose()?;
    config.tls = args.tls_cert.zip(args.tls_key).map(|(cert, key)| TlsFiles { cert, key });
    config.default_timeout = Duration::from_secs(args.default_timeout);
    config.journal_capacity = args.journal_capacity;
    config.advertise_url = args.advertise_url;
    config.peer_token = args.peer_token_file.as_ref().map(read_token).transpose()?;
    config.peer_ca = args.peer_ca;
    config.http_max_connections = args.http_max_connections;
    config.http_max_connections_per_source = args.http_max_connections_per_source;
    config.unix_max_connections = args.unix_max_connections;
    config.header_timeout = Duration::from_secs(args.header_timeout);
    config.body_timeout = Duration::from_secs(args.body_timeout);
    config.body_idle_timeout = Duration::from_secs(args.body_idle_timeout);

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
