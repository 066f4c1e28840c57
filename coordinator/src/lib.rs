//! The CeranaOS node coordinator.
//!
//! Routes named tasks from clients to the providers that serve them (by priority, failing over
//! when one is gone), acknowledges at once and delivers results later, enforces timeouts,
//! forwards tasks aimed at other nodes to their coordinators, brokers byte streams, and keeps a
//! bounded journal of what it did. See `README.md` in this folder.

pub mod address;
pub mod auth;
pub mod builtin;
pub mod command;
pub mod config;
pub mod conn;
pub mod core;
pub mod counters;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod node_tls;
pub mod peers;
pub mod registry;
pub mod streams;
pub mod unix;

pub use address::Advertise;
pub use config::{Config, ConfigError, TlsFiles};
pub use peers::PeerPolicy;

use cerana_netlimits::{Admission, ConnectionLimits, DescriptorBudget};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How late a timeout may fire.
const TIMEOUT_RESOLUTION: Duration = Duration::from_millis(20);

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] unix::BindError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
}

/// A running coordinator. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Coordinator {
    core: Arc<core::Core>,
    tasks: Vec<JoinHandle<()>>,
    http_addr: Option<SocketAddr>,
    socket: PathBuf,
}

impl Coordinator {
    /// Binds the unix socket (and the HTTP listener when configured) and starts serving.
    pub async fn start(mut config: Config) -> Result<Self, StartError> {
        config.validate()?;
        let tls = match &config.tls {
            Some(files) => Some(
                http::tls_acceptor(&files.cert, &files.key, config.client_ca.as_deref()).map_err(StartError::Tls)?,
            ),
            None => None,
        };
        let unix_listener = unix::bind(&config.socket).await?;
        let tcp = match config.listen {
            Some(addr) => {
                Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })?)
            }
            None => None,
        };
        let http_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        // The bound address (a port 0 is now a real one): how the coordinator knows its own URL.
        if http_addr.is_some() {
            config.listen = http_addr;
        }
        let socket = config.socket.clone();
        let (http_admission, unix_admission) = admissions(&config, tcp.is_some());
        let core = core::Core::new(config);
        // The node's certificate before the first connection: a coordinator restarted on a node
        // that has one must never answer a TLS client in plain HTTP.
        if let Some(watch) = &core.node_tls {
            refresh_node_tls(watch);
        }
        let mut tasks = vec![tokio::spawn(unix::serve(core.clone(), unix_listener, unix_admission))];
        if let Some(tcp) = tcp {
            tasks.push(tokio::spawn(http::serve(core.clone(), tcp, tls, http_admission)));
        }
        if core.node_tls.is_some() {
            tasks.push(every(&core, NODE_TLS_POLL, |core, _| {
                if let Some(watch) = &core.node_tls {
                    refresh_node_tls(watch);
                }
            }));
        }
        tasks.push(every(&core, TIMEOUT_RESOLUTION, |core, ticks| {
            core.expire_due();
            if ticks.is_multiple_of(50) {
                let dropped = core.streams.sweep();
                if dropped > 0 {
                    tracing::info!(dropped, "dropped streams whose other end never arrived");
                }
            }
        }));
        tracing::info!(socket = %socket.display(), http = ?http_addr, "coordinator serving");
        Ok(Self { core, tasks, http_addr, socket })
    }

    /// The bound HTTP address (useful with port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn core(&self) -> &Arc<core::Core> {
        &self.core
    }

    /// Stops serving and removes the socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Runs `work` every `period` (with the count of rounds) while the coordinator lives.
fn every(
    core: &Arc<core::Core>,
    period: Duration,
    work: impl Fn(&Arc<core::Core>, u64) + Send + 'static,
) -> JoinHandle<()> {
    let core = Arc::downgrade(core);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 1u64.. {
            tick.tick().await;
            let Some(core) = core.upgrade() else { return };
            work(&core, round);
        }
    })
}

/// How often the node's TLS directory is looked at.
const NODE_TLS_POLL: Duration = Duration::from_secs(1);

fn refresh_node_tls(watch: &node_tls::NodeTlsWatch) {
    match watch.refresh() {
        Ok(true) => {
            tracing::info!(cert = %watch.cert().display(), "the node's certificate is in force: HTTPS off loopback")
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(cert = %watch.cert().display(), "the node's TLS files cannot be used: {e}"),
    }
}

/// The connection caps of the HTTP listener (when there is one) and the unix socket, lowered
/// together to fit this process's descriptor limit.
fn admissions(config: &Config, http: bool) -> (Admission, Admission) {
    let budget = DescriptorBudget::of_this_process();
    let wanted_http = if http { config.http_max_connections } else { 0 };
    let [http_total, unix_total] = budget.fit([wanted_http, config.unix_max_connections]);
    let http_limits =
        ConnectionLimits { total: config.http_max_connections, per_source: config.http_max_connections_per_source }
            .shrunk_to(http_total.max(1));
    if http_total < wanted_http || unix_total < config.unix_max_connections {
        tracing::warn!(
            soft_limit = budget.soft_limit,
            reserve = budget.reserve,
            "RLIMIT_NOFILE is too low for the configured connection caps: lowered them"
        );
    }
    tracing::info!(
        http_total = http_limits.total,
        http_per_source = http_limits.per_source,
        unix_total,
        "connection caps"
    );
    (
        Admission::new("coordinator HTTP", http_limits),
        Admission::new("coordinator unix socket", ConnectionLimits { total: unix_total, per_source: unix_total }),
    )
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop();
    }
}
