//! The CeranaOS bootserver: DHCPv4 (full, proxy, relayed), read-only TFTP for the iPXE loaders,
//! HTTP for iPXE scripts and kernel/initrd by hash, IPv6 router advertisements to spare iPXE
//! its IPv6 wait, and a per-MAC boot event log.
//!
//! [`Bootserver::start`] binds everything on the configured interface and runs it on the
//! current tokio runtime; the binary `cerana-bootserver` is a thin wrapper around it.

pub mod bootstrap;
pub mod certificates;
pub mod cluster_dhcp;
pub mod command;
pub mod config;
pub mod dhcp;
pub mod dhcp_control;
pub mod events;
pub mod http;
pub mod join;
pub mod join_store;
pub mod join_tokens;
pub mod kv_tasks;
pub mod lease;
pub mod net;
pub mod provider;
pub mod ra;
pub mod replicate;
pub mod tftp;

use config::Config;
use dhcp::BootFiles;
use dhcp_control::{DhcpControl, DhcpSwitchError};
use events::EventLog;
use join_store::JoinStore;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use tokio::task::JoinSet;

/// How often the cluster store's join token records are swept of the long-expired.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Sweeps for as long as the server runs (a store that is down is tried again next round).
async fn sweep_join_tokens(tokens: Arc<join_tokens::JoinTokens>) -> (&'static str, std::io::Result<()>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        match tokens.sweep(events::now_ms() / 1000).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "long-expired join tokens removed from the cluster store"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep the join tokens"),
        }
    }
}

/// Why the bootserver cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Image(#[from] http::ImageError),
    #[error("DHCP: {0}")]
    Dhcp(#[from] DhcpSwitchError),
    #[error("TFTP root {path}: {source}")]
    TftpRoot { path: String, source: std::io::Error },
    #[error("TFTP server: {0}")]
    Tftp(String),
    #[error("cannot register a socket with the runtime: {0}")]
    Runtime(std::io::Error),
}

/// What [`Bootserver::run_cluster_dhcp`] starts with.
#[derive(Debug)]
struct ClusterDhcpPlan {
    election: String,
    state_dir: Option<std::path::PathBuf>,
    overridden: Arc<std::sync::atomic::AtomicBool>,
}

/// A running bootserver.
#[derive(Debug)]
pub struct Bootserver {
    pub server_ip: Ipv4Addr,
    pub http_addr: SocketAddr,
    pub events: Arc<EventLog>,
    /// DHCP, switchable at run time (`boot-dhcp`).
    pub dhcp: Arc<DhcpControl>,
    /// What `boot-join-token-create` mints with.
    pub joins: provider::JoinIssuer,
    cluster_dhcp: Option<ClusterDhcpPlan>,
    tasks: JoinSet<(&'static str, std::io::Result<()>)>,
}

impl Bootserver {
    /// Binds DHCP (67, and 4011 in proxy mode; none when off), TFTP (69), HTTP and router
    /// advertisements on `config.interface` and starts serving. Join tokens are recorded in
    /// `join_store` (the cluster store) when there is one.
    pub async fn start(config: Config, join_store: Option<Arc<dyn JoinStore>>) -> Result<Self, StartError> {
        let iface = net::Interface::lookup(&config.interface)?;
        let server_ip = match config.server_ip.or(iface.ipv4) {
            Some(ip) => ip,
            None => return Err(net::NetError::NoAddress(iface.name.clone()).into()),
        };
        let events = Arc::new(EventLog::new());
        let images = http::ImageStore::load(&config)?;
        let mut tasks = JoinSet::new();

        let boot = BootFiles::new(&config.boot, server_ip, config.http_port);
        let (dhcp, mut dhcp_failures) = DhcpControl::new(
            iface.name.clone(),
            server_ip,
            config.dhcp.pool.clone(),
            config.state_dir.clone(),
            boot,
            events.clone(),
        );
        let dhcp = Arc::new(dhcp);
        // A cluster member answers only once elected (`run_cluster_dhcp`).
        let cluster_dhcp = match (&config.dhcp.pool, config.dhcp.cluster) {
            (Some(pool), true) => Some(ClusterDhcpPlan {
                election: cluster_dhcp::responder_election(pool),
                state_dir: config.state_dir.clone(),
                overridden: dhcp.join_cluster(),
            }),
            _ => {
                dhcp.switch(config.dhcp.mode, &[])?;
                None
            }
        };
        tasks.spawn(async move { ("DHCP", Err(dhcp_failures.next().await)) });

        let tftp_socket =
            net::udp_on_interface(&iface.name, SocketAddr::V4(SocketAddrV4::new(server_ip, 69)), false, "TFTP socket")?;
        let handler = tftp::ReadOnlyDir::new(&config.tftp_root, events.clone(), &config.tftp_limits)
            .map_err(|source| StartError::TftpRoot { path: config.tftp_root.display().to_string(), source })?;
        let tftp = tftp::server(tftp_socket, handler, &config.tftp_limits)
            .await
            .map_err(|e| StartError::Tftp(e.to_string()))?;
        tasks.spawn(async move { ("TFTP", tftp.serve().await.map_err(std::io::Error::other)) });

        if config.router_advertisements {
            match ra::socket(&iface.name, iface.index) {
                Ok(socket) => {
                    let index = iface.index;
                    tasks.spawn(async move { ("router advertisements", ra::serve(socket, index).await) });
                }
                // IPv6 may be disabled on the node: iPXE then only loses its IPv6 wait.
                Err(e) => tracing::warn!(error = %e, "no IPv6 router advertisements"),
            }
        }

        let http_addr = SocketAddr::V4(SocketAddrV4::new(server_ip, config.http_port));
        let listener = net::tcp_listener(&iface.name, http_addr)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(StartError::Runtime)?;
        let http_addr = listener.local_addr().map_err(StartError::Runtime)?;
        let base = if http_addr.port() == 80 {
            format!("http://{server_ip}")
        } else {
            format!("http://{server_ip}:{}", http_addr.port())
        };
        let limits = config.http_limits.clone();
        let mut join_tokens = join_tokens::JoinTokens::load(config.state_dir.as_deref(), config.join_token_ttl_secs);
        if let Some(store) = join_store {
            // A server that redeems tokens itself keeps them while the store cannot.
            join_tokens = join_tokens.with_store(store, config.ca_dir.is_some());
        }
        let join_tokens = Arc::new(join_tokens);
        if config.ca_dir.is_some() || config.join_server.is_some() {
            tasks.spawn(sweep_join_tokens(join_tokens.clone()));
        }
        let check_in_at = match (&config.ca_dir, &config.join_server) {
            (Some(_), _) => Some(base.clone()),
            (None, Some(server)) => Some(server.clone()),
            (None, None) => None,
        };
        let joins = provider::JoinIssuer {
            tokens: join_tokens.clone(),
            check_in_at,
            cluster_ips: http::cluster_ips(&config, server_ip),
        };
        let state = Arc::new(http::HttpState {
            config,
            base,
            server_ip,
            images,
            events: events.clone(),
            dhcp: dhcp.clone(),
            join_tokens,
        });
        let app = http::router(state);
        tasks.spawn(async move { ("HTTP", http::serve(listener, app, limits).await) });

        tracing::info!(interface = %iface.name, %server_ip, %http_addr, "bootserver serving");
        Ok(Bootserver { server_ip, http_addr, events, dhcp, joins, cluster_dhcp, tasks })
    }

    /// Takes part in the cluster's DHCP through `kv` (the node's coordinator), when the
    /// configuration says so: campaigns for the segment and answers while elected.
    pub fn run_cluster_dhcp(&mut self, kv: Arc<kv_tasks::KvTasks>, ttl: std::time::Duration) {
        let Some(plan) = self.cluster_dhcp.take() else { return };
        self.dhcp.set_cluster_store(kv.clone());
        let cluster = cluster_dhcp::ClusterDhcp {
            kv,
            election: plan.election,
            announce: self.server_ip,
            ttl,
            state_dir: plan.state_dir,
            overridden: plan.overridden,
        };
        let dhcp = self.dhcp.clone();
        self.tasks.spawn(async move {
            cluster_dhcp::respond(dhcp, cluster).await;
            ("cluster DHCP", Ok(()))
        });
    }

    /// Waits until one of the servers stops (it only does on a socket error) and returns why.
    pub async fn wait(&mut self) -> std::io::Error {
        match self.tasks.join_next().await {
            Some(Ok((what, Ok(())))) => std::io::Error::other(format!("{what} server stopped")),
            Some(Ok((what, Err(e)))) => std::io::Error::other(format!("{what} server failed: {e}")),
            Some(Err(e)) => std::io::Error::other(format!("a server task panicked: {e}")),
            None => std::io::Error::other("no server running"),
        }
    }
}
