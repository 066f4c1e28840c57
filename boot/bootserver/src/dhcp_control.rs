//! DHCP that can be switched on, off or between modes while the bootserver runs (`boot-dhcp`).
//!
//! Only one DHCP server may answer on a segment, but every node can serve its image over HTTP
//! and TFTP. So a cluster member answers DHCP only while elected the segment's responder
//! (`cluster_dhcp`), and an operator may move DHCP by hand (`boot-dhcp`) — importing the
//! previous server's leases so it does not hand out addresses that are in use.

use crate::cluster_dhcp::ClusterLeaseStore;
use crate::config::{DhcpMode, PoolConfig};
use crate::dhcp::{self, BootFiles, DhcpService, Port};
use crate::events::EventLog;
use crate::kv_tasks::KvTasks;
use crate::lease::{Allocator, FileLeaseStore, Lease, LeaseStore, LeaseStoreError, MemoryLeaseStore};
use crate::net;
use cerana_protocol::tasks::boot::MacAddr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;
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
    #[error("the previous DHCP serving loop did not stop within {0:?}")]
    StillServing(Duration),
    #[error("switching off the async runtime's context")]
    NoRuntime,
}

/// How long a switch waits for the old serving loops to let go of their sockets.
const STOP_WAIT: Duration = Duration::from_secs(5);

struct Server {
    task: JoinHandle<()>,
    /// Disconnects once the serving loop's future (and with it its socket) is dropped.
    gone: std_mpsc::Receiver<()>,
}

struct Running {
    service: Arc<DhcpService>,
    servers: Vec<Server>,
}

impl Running {
    /// Aborts the serving loops and waits until their sockets are closed. Abort alone is not
    /// enough: a loop in the middle of a poll goes on until its next await, and could answer
    /// one more request after the switch has returned.
    fn stop(self) -> Result<(), DhcpSwitchError> {
        for server in &self.servers {
            server.task.abort();
        }
        let deadline = std::time::Instant::now() + STOP_WAIT;
        for server in &self.servers {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if let Err(std_mpsc::RecvTimeoutError::Timeout) = server.gone.recv_timeout(left) {
                return Err(DhcpSwitchError::StillServing(STOP_WAIT));
            }
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for server in &self.servers {
            server.task.abort();
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
    /// Set while `boot-dhcp` overrides the cluster's election of the DHCP responder.
    overridden: Arc<AtomicBool>,
    /// Whether this server takes part in the cluster's DHCP (see `cluster_dhcp`).
    clustered: AtomicBool,
    /// The cluster store, once known: full mode keeps its leases there even when `boot-dhcp`
    /// decided it.
    cluster_kv: Mutex<Option<Arc<KvTasks>>>,
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
        let control = DhcpControl {
            interface,
            server_ip,
            pool,
            state_dir,
            boot,
            events,
            running: Mutex::new(None),
            overridden: Arc::new(AtomicBool::new(false)),
            clustered: AtomicBool::new(false),
            cluster_kv: Mutex::new(None),
            failures,
        };
        (control, DhcpFailures(rx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The leases this server knows: its DHCP's; with DHCP off, a cluster member's copy of the
    /// cluster's leases.
    pub fn leases(&self) -> Vec<Lease> {
        if let Some(service) = self.service() {
            return service.leases();
        }
        match (&self.state_dir, self.is_clustered()) {
            (Some(dir), true) => FileLeaseStore::read(&crate::cluster_dhcp::copy_dir(dir)).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the node's copy of the cluster's leases is unreadable");
                Vec::new()
            }),
            _ => Vec::new(),
        }
    }

    /// [`Self::leases`] for async code, on a blocking thread: the locks it takes may be held by
    /// a DHCP request or a switch waiting on the cluster store, whose answers need the runtime's
    /// workers (a node may have one), so taking them on a worker can deadlock.
    pub async fn leases_off_runtime(self: &Arc<Self>) -> Vec<Lease> {
        let control = self.clone();
        tokio::task::spawn_blocking(move || control.leases()).await.unwrap_or_default()
    }

    /// The `cerana.mgmt_*` settings of `mac`'s lease, for async code (see
    /// [`Self::leases_off_runtime`]).
    pub async fn mgmt_settings_off_runtime(self: &Arc<Self>, mac: MacAddr) -> Option<String> {
        let control = self.clone();
        tokio::task::spawn_blocking(move || control.service().and_then(|d| d.mgmt_settings(mac))).await.ok().flatten()
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
    /// off, since the old sockets had to close first. It returns only once the old sockets are
    /// closed, so nothing answers in the old mode afterwards; call it off the async runtime.
    pub fn switch(&self, mode: DhcpMode, imported: &[Lease]) -> Result<(DhcpMode, usize), DhcpSwitchError> {
        let mut running = self.lock();
        let previous = running.as_ref().map_or(DhcpMode::Off, |r| r.service.mode());
        let (allocator, count) = match mode {
            DhcpMode::Full => {
                let pool = self.pool.clone().ok_or(DhcpSwitchError::NoPool)?;
                let (allocator, count) = self.allocator(pool, imported)?;
                (Some(allocator), count)
            }
            _ => (None, 0),
        };
        self.start(&mut running, mode, allocator)?;
        tracing::info!(?previous, ?mode, imported = count, "DHCP switched");
        Ok((previous, count))
    }

    /// Stops what runs and starts `mode` (its allocator given in full mode).
    fn start(
        &self,
        running: &mut Option<Running>,
        mode: DhcpMode,
        allocator: Option<Allocator>,
    ) -> Result<(), DhcpSwitchError> {
        // The old sockets go first: the new ones bind the same ports.
        if let Some(old) = running.take() {
            old.stop()?;
        }
        if mode == DhcpMode::Off {
            return Ok(());
        }
        let service =
            Arc::new(DhcpService::new(self.server_ip, mode, allocator, self.boot.clone(), self.events.clone()));
        let mut servers = vec![self.serve(&service, dhcp::SERVER_PORT, Port::Dhcp, "DHCP socket")?];
        if mode == DhcpMode::Proxy {
            servers.push(self.serve(&service, dhcp::PXE_PORT, Port::Pxe, "PXE socket (4011)")?);
        }
        *running = Some(Running { service, servers });
        Ok(())
    }

    /// Marks this server as taking part in the cluster's DHCP; returns the flag `boot-dhcp`
    /// sets while it overrides the election.
    pub fn join_cluster(&self) -> Arc<AtomicBool> {
        self.clustered.store(true, Ordering::SeqCst);
        self.overridden.clone()
    }

    /// Where the cluster's leases are (the node's coordinator).
    pub fn set_cluster_store(&self, kv: Arc<KvTasks>) {
        *self.cluster_kv.lock().unwrap_or_else(|e| e.into_inner()) = Some(kv);
    }

    /// While the store is out of reach: full mode from the node's copy of the cluster's leases
    /// in `dir`, answering only clients holding one — unless `boot-dhcp` decides, DHCP runs
    /// already (as the responder), or the copy holds no active lease. Returns whether it
    /// switched.
    pub fn switch_to_copy(&self, dir: &std::path::Path) -> Result<bool, DhcpSwitchError> {
        let mut running = self.lock();
        if self.overridden.load(Ordering::SeqCst) || running.is_some() {
            return Ok(false);
        }
        let pool = self.pool.clone().ok_or(DhcpSwitchError::NoPool)?;
        let now = crate::events::now_ms() / 1000;
        if !FileLeaseStore::read(dir)?.iter().any(|l| l.is_active(now)) {
            return Ok(false);
        }
        let store = Box::new(FileLeaseStore::open(dir)?);
        let allocator = Allocator::new(pool, store, vec![self.server_ip]).known_clients_only();
        self.start(&mut running, DhcpMode::Full, Some(allocator))?;
        Ok(true)
    }

    pub fn is_clustered(&self) -> bool {
        self.clustered.load(Ordering::SeqCst)
    }

    /// `boot-dhcp` with a mode: the election no longer decides (until [`Self::follow_election`]).
    pub fn override_election(&self) {
        self.overridden.store(true, Ordering::SeqCst);
    }

    /// `boot-dhcp {mode: cluster}`: DHCP off here until this server is elected.
    pub fn follow_election(&self) -> Result<DhcpMode, DhcpSwitchError> {
        let mut running = self.lock();
        let previous = running.as_ref().map_or(DhcpMode::Off, |r| r.service.mode());
        self.start(&mut running, DhcpMode::Off, None)?;
        self.overridden.store(false, Ordering::SeqCst);
        Ok(previous)
    }

    /// The elected responder serves full mode from the cluster's `store` — unless `boot-dhcp`
    /// overrode the election meanwhile (checked under the switch lock, so an override is never
    /// undone by a term that began before it).
    pub fn switch_to_store(&self, store: Box<dyn LeaseStore>) -> Result<bool, DhcpSwitchError> {
        let mut running = self.lock();
        if self.overridden.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let pool = self.pool.clone().ok_or(DhcpSwitchError::NoPool)?;
        self.start(&mut running, DhcpMode::Full, Some(Allocator::new(pool, store, vec![self.server_ip])))?;
        tracing::info!("DHCP answers as the segment's elected responder");
        Ok(true)
    }

    /// A term ended: DHCP off, unless `boot-dhcp` decides what runs now.
    pub fn stop_unless_overridden(&self) -> Result<(), DhcpSwitchError> {
        let mut running = self.lock();
        if self.overridden.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.start(&mut running, DhcpMode::Off, None)
    }

    fn allocator(&self, pool: PoolConfig, imported: &[Lease]) -> Result<(Allocator, usize), DhcpSwitchError> {
        let cluster_kv = self.cluster_kv.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut store: Box<dyn LeaseStore> = match (cluster_kv, &self.state_dir) {
            // A cluster member keeps its leases in the cluster store whoever decided it answers.
            (Some(kv), dir) => {
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| DhcpSwitchError::NoRuntime)?;
                let copy = dir.as_deref().map(crate::cluster_dhcp::copy_dir);
                Box::new(runtime.block_on(ClusterLeaseStore::load(kv, None, copy.as_deref()))?)
            }
            (None, Some(dir)) => Box::new(FileLeaseStore::open(dir)?),
            (None, None) => Box::new(MemoryLeaseStore::new()),
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let first = u32::from(pool.range[0]);
        let last = u32::from(pool.range[1]);
        let mut count = 0;
        for lease in imported {
            let in_pool = (first..=last).contains(&u32::from(lease.ip));
            // Our own address is never a client's, whatever the old server believed.
            let held = store.by_ip(lease.ip)?.is_some_and(|l| l.mac != lease.mac && l.is_active(now));
            if lease.is_active(now) && in_pool && lease.ip != self.server_ip && !held {
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
    ) -> Result<Server, DhcpSwitchError> {
        let any = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        let socket = net::udp_on_interface(&self.interface, any, true, what)?;
        let socket = tokio::net::UdpSocket::from_std(socket).map_err(DhcpSwitchError::Runtime)?;
        let service = service.clone();
        let failures = self.failures.clone();
        let (alive, gone) = std_mpsc::channel();
        let task = tokio::spawn(async move {
            let _alive: std_mpsc::Sender<()> = alive;
            if let Err(e) = dhcp::serve(service, socket, which).await {
                tracing::error!(error = %e, "{what}: DHCP stopped serving");
                // Nobody listening means the bootserver is going away anyway.
                let _ = failures.send(format!("{what}: {e}"));
            }
        });
        Ok(Server { task, gone })
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

    #[test]
    fn stopping_waits_for_a_loop_caught_in_the_middle_of_a_poll() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let (polling, polled) = std_mpsc::channel();
        let (alive, gone) = std_mpsc::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let finished_in_task = finished.clone();
        let task = runtime.spawn(async move {
            let _alive: std_mpsc::Sender<()> = alive;
            polling.send(()).unwrap();
            // Stands for a loop that has a request in hand: abort cannot cut it short.
            std::thread::sleep(Duration::from_millis(200));
            finished_in_task.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        });
        polled.recv().unwrap();
        let boot = BootFiles::new(&crate::config::BootConfig::default(), Ipv4Addr::LOCALHOST, 8080);
        let service =
            Arc::new(DhcpService::new(Ipv4Addr::LOCALHOST, DhcpMode::Proxy, None, boot, Arc::new(EventLog::new())));
        Running { service, servers: vec![Server { task, gone }] }.stop().unwrap();
        assert!(finished.load(Ordering::SeqCst), "stop returned while the loop was still running");
    }
}
