//! DHCP that can be switched on, off or between modes while the bootserver runs (`boot-dhcp`).
//!
//! Only one DHCP server may answer on a segment, but every node can serve its image over HTTP
//! and TFTP. So a node that joined the cluster runs its bootserver with DHCP off, and takes DHCP
//! over when an operator moves it there — importing the previous server's leases so it does not
//! hand out addresses that are in use.

use crate::config::{DhcpMode, PoolConfig};
use crate::dhcp::{self, BootFiles, DhcpService, Port};
use crate::events::EventLog;
use crate::lease::{Allocator, FileLeaseStore, Lease, LeaseStore, LeaseStoreError, MemoryLeaseStore};
use crate::net;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Why DHCP could not be switched.
#[derive(Debug, thiserror::Error)]
pub enum DhcpSwitchError {
    #[error("full mode needs an address pool, and this server's configuration has none")]
    NoPool,
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("leases: {0}")]
    Leases(#[from] LeaseStoreError),
    #[error("cannot register the DHCP socket with the runtime: {0}")]
    Runtime(std::io::Error),
}

struct Running {
    service: Arc<DhcpService>,
    servers: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

/// The DHCP side of a bootserver; see the module docs.
pub struct DhcpControl {
    interface: String,
    server_ip: Ipv4Addr,
    pool: Option<PoolConfig>,
    state_dir: Option<PathBuf>,
    boot: BootFiles,
    events: Arc<EventLog>,
    running: Mutex<Option<Running>>,
    /// A serving loop that dies says why here; the bootserver then stops with that error, so
    /// its supervisor restarts it instead of leaving a node that silently answers no DHCP.
    failures: mpsc::UnboundedSender<String>,
}

impl std::fmt::Debug for DhcpControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhcpControl").field("interface", &self.interface).field("mode", &self.mode()).finish()
    }
}

impl DhcpControl {
    pub fn new(
        interface: String,
        server_ip: Ipv4Addr,
        pool: Option<PoolConfig>,
        state_dir: Option<PathBuf>,
        boot: BootFiles,
        events: Arc<EventLog>,
    ) -> (Self, DhcpFailures) {
        let (failures, rx) = mpsc::unbounded_channel();
        let control =
            DhcpControl { interface, server_ip, pool, state_dir, boot, events, running: Mutex::new(None), failures };
        (control, DhcpFailures(rx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The DHCP service answering now, if any.
    pub fn service(&self) -> Option<Arc<DhcpService>> {
        self.lock().as_ref().map(|r| r.service.clone())
    }

    pub fn mode(&self) -> DhcpMode {
        self.lock().as_ref().map_or(DhcpMode::Off, |r| r.service.mode())
    }

    /// Stops whatever DHCP runs and starts `mode`; in full mode `imported` leases (active ones
    /// inside the pool) are added to the store first. Returns the mode before and how many
    /// leases were imported. An error found before the sockets change (no pool, the lease
    /// store) leaves the previous mode running; a failure to bind the new sockets leaves DHCP
    /// off, since the old sockets had to close first.
    pub fn switch(&self, mode: DhcpMode, imported: &[Lease]) -> Result<(DhcpMode, usize), DhcpSwitchError> {
        let mut running = self.lock();
        let previous = running.as_ref().map_or(DhcpMode::Off, |r| r.service.mode());
        if mode == DhcpMode::Off {
            *running = None;
            return Ok((previous, 0));
        }
        let (allocator, count) = match mode {
            DhcpMode::Full => {
                let pool = self.pool.clone().ok_or(DhcpSwitchError::NoPool)?;
                let (allocator, count) = self.allocator(pool, imported)?;
                (Some(allocator), count)
            }
            _ => (None, 0),
        };
        // The old sockets go first: the new ones bind the same ports.
        *running = None;
        let service =
            Arc::new(DhcpService::new(self.server_ip, mode, allocator, self.boot.clone(), self.events.clone()));
        let mut servers = vec![self.serve(&service, dhcp::SERVER_PORT, Port::Dhcp, "DHCP socket")?];
        if mode == DhcpMode::Proxy {
            servers.push(self.serve(&service, dhcp::PXE_PORT, Port::Pxe, "PXE socket (4011)")?);
        }
        tracing::info!(?previous, ?mode, imported = count, "DHCP switched");
        *running = Some(Running { service, servers });
        Ok((previous, count))
    }

    fn allocator(&self, pool: PoolConfig, imported: &[Lease]) -> Result<(Allocator, usize), DhcpSwitchError> {
        let mut store: Box<dyn LeaseStore> = match &self.state_dir {
            Some(dir) => Box::new(FileLeaseStore::open(dir)?),
            None => Box::new(MemoryLeaseStore::new()),
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let first = u32::from(pool.range[0]);
        let last = u32::from(pool.range[1]);
        let mut count = 0;
        for lease in imported {
            let in_pool = (first..=last).contains(&u32::from(lease.ip));
            // Our own address is never a client's, whatever the old server believed.
            if lease.is_active(now) && in_pool && lease.ip != self.server_ip {
                store.put(lease.clone())?;
                count += 1;
            }
        }
        Ok((Allocator::new(pool, store, vec![self.server_ip]), count))
    }

    fn serve(
        &self,
        service: &Arc<DhcpService>,
        port: u16,
        which: Port,
        what: &'static str,
    ) -> Result<JoinHandle<()>, DhcpSwitchError> {
        let any = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        let socket = net::udp_on_interface(&self.interface, any, true, what)?;
        let socket = tokio::net::UdpSocket::from_std(socket).map_err(DhcpSwitchError::Runtime)?;
        let service = service.clone();
        let failures = self.failures.clone();
        Ok(tokio::spawn(async move {
            if let Err(e) = dhcp::serve(service, socket, which).await {
                tracing::error!(error = %e, "{what}: DHCP stopped serving");
                // Nobody listening means the bootserver is going away anyway.
                let _ = failures.send(format!("{what}: {e}"));
            }
        }))
    }

    #[cfg(test)]
    fn report_failure(&self, why: &str) {
        let _ = self.failures.send(why.to_owned());
    }
}

/// Where a [`DhcpControl`]'s serving loops report that they died.
#[derive(Debug)]
pub struct DhcpFailures(mpsc::UnboundedReceiver<String>);

impl DhcpFailures {
    /// The first failure of a DHCP serving loop; pending for as long as DHCP is healthy (or off).
    pub async fn next(&mut self) -> std::io::Error {
        match self.0.recv().await {
            Some(why) => std::io::Error::other(why),
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dying_serving_loop_is_reported() {
        let boot = BootFiles::new(&crate::config::BootConfig::default(), Ipv4Addr::LOCALHOST, 8080);
        let (control, mut failures) =
            DhcpControl::new("lo".into(), Ipv4Addr::LOCALHOST, None, None, boot, Arc::new(EventLog::new()));
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(50), failures.next()).await;
        assert!(quiet.is_err(), "no failure while nothing failed");
        control.report_failure("DHCP socket: gone");
        let err = tokio::time::timeout(std::time::Duration::from_secs(5), failures.next()).await.unwrap();
        assert_eq!(err.to_string(), "DHCP socket: gone");
    }
}
