//! The services of this node: creating them, one supervising task each (restart with backoff,
//! logs), restart and removal.

use crate::cgroup::Layout;
use crate::definition::{NodeCapacity, ServiceDef, ServiceKey};
use crate::error::ServiceError;
use crate::logs::LogBuffer;
use crate::rootfs::{self, Rootfs, Zfs};
use crate::shim::{ShimArgs, ShimEvent};
use crate::spec::{self, Placement};
use cerana_protocol::tasks::health::HealthCheck;
use cerana_protocol::tasks::service::{
    CreateArgs, ExitInfo, LogStream, LogsArgs, LogsResult, RestartMode, ServiceInfo, ServiceState,
};
use cerana_protocol::tasks::zfs::SnapshotName;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

/// A run longer than this resets the restart backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// How long a shim may take to report that the container runs.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the provider keeps its state and how it runs containers.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bundles, overlay layers, clone mountpoints, libcontainer state.
    pub run_dir: PathBuf,
    /// The executable re-run as the shim (the provider's own, `/proc/self/exe`).
    pub shim_exe: PathBuf,
    /// Where named network namespaces are (`ip netns` uses /run/netns).
    pub netns_dir: PathBuf,
    /// SIGTERM to SIGKILL when stopping a container.
    pub stop_timeout: Duration,
    pub log_lines: usize,
    pub log_bytes: usize,
}

/// Environment variable naming [`Config::run_dir`] (default /run/cerana/service).
pub const RUN_DIR_ENV: &str = "CERANA_SERVICE_DIR";
/// Environment variable setting [`Config::stop_timeout`] in milliseconds (default 5000).
pub const STOP_TIMEOUT_ENV: &str = "CERANA_SERVICE_STOP_TIMEOUT_MS";

impl Config {
    /// The defaults, with `run_dir` and `stop_timeout` from [`RUN_DIR_ENV`] and
    /// [`STOP_TIMEOUT_ENV`] when set.
    pub fn from_env() -> Self {
        let mut config = Self::default();
        if let Some(dir) = std::env::var_os(RUN_DIR_ENV) {
            config.run_dir = PathBuf::from(dir);
        }
        if let Some(ms) = std::env::var(STOP_TIMEOUT_ENV).ok().and_then(|v| v.parse().ok()) {
            config.stop_timeout = Duration::from_millis(ms);
        }
        config
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("/run/cerana/service"),
            shim_exe: PathBuf::from("/proc/self/exe"),
            netns_dir: PathBuf::from("/run/netns"),
            stop_timeout: Duration::from_secs(5),
            log_lines: 2000,
            log_bytes: 256 << 10,
        }
    }
}

/// Whether pivot_root is impossible: the root is the initramfs (rootfs, ramfs or tmpfs that
/// was never mounted over), which cannot be unmounted. Then libcontainer must use MS_MOVE.
pub fn root_is_initramfs() -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { return false };
        fields.get(4) == Some(&"/") && matches!(fields.get(sep + 1), Some(&"rootfs") | Some(&"ramfs"))
    })
}

#[derive(Debug)]
struct Status {
    state: ServiceState,
    pid: Option<u32>,
    started: Option<Instant>,
    restarts: u32,
    last_exit: Option<ExitInfo>,
    last_error: Option<String>,
    rootfs: Option<Rootfs>,
}

#[derive(Debug)]
enum Control {
    Restart(oneshot::Sender<Result<(), ServiceError>>),
    Remove(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Service {
    def: ServiceDef,
    /// The fingerprint of what it was created with.
    definition: String,
    cgroup: String,
    /// The snapshot create took (a ZFS dataset given), destroyed on removal.
    own_snapshot: Option<SnapshotName>,
    status: Mutex<Status>,
    logs: Mutex<LogBuffer>,
    control: mpsc::UnboundedSender<Control>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    layout: Layout,
    no_pivot: bool,
    node: NodeCapacity,
    zfs: Arc<dyn Zfs>,
    table: Mutex<BTreeMap<ServiceKey, Arc<Service>>>,
    /// Creates and removals of one key one at a time (they share its clone's name); different
    /// keys change in parallel, so a bundle's services stop together.
    changes: KeyLocks,
}

/// One lock per service key, held while that key is created or removed; an entry lives only
/// while someone holds or waits for it.
#[derive(Debug, Default)]
struct KeyLocks {
    locks: Mutex<BTreeMap<ServiceKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// The hold on one key's lock; dropping it lets the next waiter in.
struct KeyHold<'a> {
    locks: &'a KeyLocks,
    key: ServiceKey,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    async fn lock(&self, key: &ServiceKey) -> KeyHold<'_> {
        let lock = self.locks.lock().expect("key locks").entry(key.clone()).or_default().clone();
        KeyHold { locks: self, key: key.clone(), guard: Some(lock.lock_owned().await) }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.locks.lock().expect("key locks").len()
    }
}

impl Drop for KeyHold<'_> {
    fn drop(&mut self) {
        let mut locks = self.locks.locks.lock().expect("key locks");
        drop(self.guard.take());
        // Nobody else holds or waits for it when the map's is the only reference left.
        if locks.get(&self.key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&self.key);
        }
    }
}

/// The node's services.
#[derive(Debug, Clone)]
pub struct Services {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Services {
    pub fn new(config: Config, zfs: Arc<dyn Zfs>) -> Self {
        let inner = Inner {
            config,
            layout: Layout::detect(),
            no_pivot: root_is_initramfs(),
            node: NodeCapacity::of_this_node(),
            zfs,
            table: Mutex::default(),
            changes: KeyLocks::default(),
        };
        Self { inner: Arc::new(inner) }
    }

    pub fn layout(&self) -> Layout {
        self.inner.layout
    }

    fn get(&self, key: &ServiceKey) -> Result<Arc<Service>, ServiceError> {
        self.inner
            .table
            .lock()
            .expect("table lock")
            .get(key)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(key.to_string()))
    }

    pub async fn create(&self, args: &CreateArgs) -> Result<ServiceInfo, ServiceError> {
        let def = ServiceDef::check(args, self.inner.node)?;
        let missing = self.inner.layout.missing_controllers();
        let wants = [
            ("cpu", def.limits.cpu.is_some()),
            ("memory", def.limits.memory.is_some()),
            ("pids", def.limits.processes.is_some()),
        ];
        if let Some((controller, _)) = wants.iter().find(|(c, wanted)| *wanted && missing.contains(c)) {
            return Err(ServiceError::Unavailable(format!(
                "the {controller} cgroup controller is not available on this node"
            )));
        }
        let _change = self.inner.changes.lock(&def.key).await;
        if self.inner.table.lock().expect("table lock").contains_key(&def.key) {
            if !args.overwrite {
                return Err(ServiceError::Exists(def.key.to_string()));
            }
            self.remove_locked(&def.key).await?;
        }
        if let Some(ns) = &def.netns {
            if !self.inner.config.netns_dir.join(ns).exists() {
                return Err(ServiceError::NetnsMissing(ns.clone()));
            }
        }
        if let Some(m) = def.mounts.iter().find(|m| !Path::new(&m.source).exists()) {
            return Err(ServiceError::DatasetMissing(format!("{} (mount source)", m.source)));
        }
        let zfs = self.inner.zfs.as_ref();
        let own_snapshot = rootfs::check_source(&def.rootfs, &def.key, zfs).await?;
        let (control, control_rx) = mpsc::unbounded_channel();
        let service = Arc::new(Service {
            cgroup: self.inner.layout.container_path(&def.key.to_string()),
            def,
            definition: args.definition(),
            own_snapshot,
            status: Mutex::new(Status {
                state: ServiceState::Starting,
                pid: None,
                started: None,
                restarts: 0,
                last_exit: None,
                last_error: None,
                rootfs: None,
            }),
            logs: Mutex::new(LogBuffer::new(self.inner.config.log_lines, self.inner.config.log_bytes)),
            control,
        });
        let run = match start(&self.inner, &service, 0).await {
            Ok(run) => run,
            Err(e) => {
                forget(&self.inner, &service).await;
                return Err(e);
            }
        };
        self.inner.table.lock().expect("table lock").insert(service.def.key.clone(), service.clone());
        let info = info(&service);
        tokio::spawn(supervise(self.inner.clone(), service, run, control_rx));
        Ok(info)
    }

    pub fn get_info(&self, key: &ServiceKey) -> Result<ServiceInfo, ServiceError> {
        Ok(info(self.get(key)?.as_ref()))
    }

    /// The service's health checks.
    pub fn health_checks(&self, key: &ServiceKey) -> Result<Vec<HealthCheck>, ServiceError> {
        Ok(self.get(key)?.def.health_checks.clone())
    }

    pub fn list(&self, bundle_id: Option<&str>) -> Vec<ServiceInfo> {
        let table = self.inner.table.lock().expect("table lock");
        table.values().filter(|s| bundle_id.is_none_or(|b| s.def.key.bundle_id == b)).map(|s| info(s)).collect()
    }

    pub async fn restart(&self, key: &ServiceKey) -> Result<ServiceInfo, ServiceError> {
        let service = self.get(key)?;
        let (tx, rx) = oneshot::channel();
        service.control.send(Control::Restart(tx)).map_err(|_| ServiceError::NotFound(key.to_string()))?;
        rx.await.map_err(|_| ServiceError::NotFound(key.to_string()))??;
        Ok(info(&service))
    }

    pub async fn remove(&self, key: &ServiceKey) -> Result<(), ServiceError> {
        let _change = self.inner.changes.lock(key).await;
        self.remove_locked(key).await
    }

    async fn remove_locked(&self, key: &ServiceKey) -> Result<(), ServiceError> {
        let service = self.get(key)?;
        let (tx, rx) = oneshot::channel();
        if service.control.send(Control::Remove(tx)).is_ok() {
            let _ = rx.await;
        }
        self.inner.table.lock().expect("table lock").remove(key);
        forget(&self.inner, &service).await;
        Ok(())
    }

    pub fn logs(&self, args: &LogsArgs) -> Result<LogsResult, ServiceError> {
        let service = self.get(&ServiceKey::new(&args.bundle_id, &args.id)?)?;
        let logs = service.logs.lock().expect("logs lock");
        Ok(logs.read(args.after, args.tail))
    }

    /// Stops every service (on shutdown), in parallel.
    pub async fn stop_all(&self) {
        let keys: Vec<ServiceKey> = self.inner.table.lock().expect("table lock").keys().cloned().collect();
        for (key, result) in keys.iter().zip(futures_util::future::join_all(keys.iter().map(|k| self.remove(k))).await)
        {
            if let Err(e) = result {
                tracing::warn!(service = %key, "stopping at shutdown: {e}");
            }
        }
    }
}

fn info(s: &Service) -> ServiceInfo {
    let st = s.status.lock().expect("status lock");
    ServiceInfo {
        id: s.def.key.id.clone(),
        bundle_id: s.def.key.bundle_id.clone(),
        dataset: s.def.dataset.clone(),
        rootfs: s.def.rootfs_kind,
        rootfs_path: st.rootfs.as_ref().map(|r| r.path.display().to_string()),
        clone: st.rootfs.as_ref().and_then(|r| r.clone.clone()),
        cmd: s.def.cmd.clone(),
        limits: s.def.limits,
        netns: s.def.netns.clone(),
        restart: s.def.restart,
        state: st.state,
        pid: st.pid,
        uptime_ms: st.started.map(|t| t.elapsed().as_millis() as u64),
        restarts: st.restarts,
        last_exit: st.last_exit,
        last_error: st.last_error.clone(),
        cgroup: s.cgroup.clone(),
        health: None,
        definition: Some(s.definition.clone()),
    }
}

fn service_dir(inner: &Inner, key: &ServiceKey) -> PathBuf {
    inner.config.run_dir.join("services").join(key.to_string())
}

fn state_root(inner: &Inner) -> PathBuf {
    inner.config.run_dir.join("containers")
}

/// Removes what a service left on the node besides its runs: its directory and its snapshot.
async fn forget(inner: &Inner, service: &Service) {
    let _ = std::fs::remove_dir_all(service_dir(inner, &service.def.key));
    if let Some(snap) = &service.own_snapshot {
        if let Err(e) = inner.zfs.destroy(snap.as_str()).await {
            tracing::warn!(service = %service.def.key, "cannot destroy {snap}: {e}");
        }
    }
}

/// One start of a service: its shim, its root filesystem.
#[derive(Debug)]
struct Run {
    shim: Child,
    events: tokio::io::Lines<BufReader<pipe::Receiver>>,
    rootfs: Rootfs,
    started: Instant,
}

impl Run {
    /// Waits for PID 1 of the container to end (or the shim to die).
    async fn exited(&mut self) -> ExitInfo {
        let mut exit = ExitInfo { code: None, signal: None, oom_killed: false, ran_ms: 0 };
        while let Ok(Some(line)) = self.events.next_line().await {
            if let Ok(ShimEvent::Exited { code, signal, oom_killed }) = serde_json::from_str(&line) {
                exit = ExitInfo { code, signal, oom_killed, ran_ms: 0 };
                break;
            }
        }
        let _ = self.shim.wait().await;
        exit.ran_ms = self.started.elapsed().as_millis() as u64;
        exit
    }

    async fn stop(&mut self, timeout: Duration) -> ExitInfo {
        if let Some(pid) = self.shim.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(timeout + Duration::from_secs(5), self.exited()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::error!("a shim did not stop its container in time; killing the shim");
                let _ = self.shim.kill().await;
                ExitInfo {
                    code: None,
                    signal: Some(libc::SIGKILL),
                    oom_killed: false,
                    ran_ms: self.started.elapsed().as_millis() as u64,
                }
            }
        }
    }
}

fn shim_failed(what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::StartFailed(format!("{what}: {e}"))
}

/// Starts run number `number` of `service`: fresh root filesystem, spec, shim; returns once
/// the container's process runs. A failure leaves nothing of this run behind.
async fn start(inner: &Inner, service: &Arc<Service>, number: u32) -> Result<Run, ServiceError> {
    let def = &service.def;
    let dir = service_dir(inner, &def.key);
    std::fs::create_dir_all(&dir).map_err(|e| ServiceError::Rootfs(format!("mkdir {}: {e}", dir.display())))?;
    let netns_path = match &def.netns {
        Some(ns) => {
            let path = inner.config.netns_dir.join(ns);
            if !path.exists() {
                return Err(ServiceError::NetnsMissing(ns.clone()));
            }
            Some(path)
        }
        None => None,
    };
    let rootfs = rootfs::prepare(&def.rootfs, &def.key, &dir, inner.zfs.as_ref()).await?;
    match launch(inner, service, number, &dir, &rootfs, netns_path).await {
        Ok((shim, events)) => {
            let mut st = service.status.lock().expect("status lock");
            st.rootfs = Some(rootfs.clone());
            Ok(Run { shim, events, rootfs, started: Instant::now() })
        }
        Err(e) => {
            let _ = rootfs.release(inner.zfs.as_ref()).await;
            Err(e)
        }
    }
}

type Launched = (Child, tokio::io::Lines<BufReader<pipe::Receiver>>);

async fn launch(
    inner: &Inner,
    service: &Arc<Service>,
    number: u32,
    dir: &Path,
    rootfs: &Rootfs,
    netns_path: Option<PathBuf>,
) -> Result<Launched, ServiceError> {
    let def = &service.def;
    rootfs::find_binary(&rootfs.path, &def.cmd[0], def.search_path())?;
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(|e| shim_failed("mkdir bundle", e))?;
    let place = Placement { rootfs: &rootfs.path, cgroup: &service.cgroup, netns_path };
    let spec = spec::build(def, &place).map_err(|e| shim_failed("spec", e))?;
    spec.save(bundle.join("config.json")).map_err(|e| shim_failed("write config.json", e))?;

    let args = ShimArgs {
        state_root: state_root(inner),
        container_id: def.key.to_string(),
        bundle,
        cgroup: service.cgroup.clone(),
        no_pivot: inner.no_pivot,
        stop_timeout: inner.config.stop_timeout,
    };
    let mut command = Command::new(&inner.config.shim_exe);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(false);
    let status_rx = crate::shim::prepare_command(command.as_std_mut(), &args).map_err(|e| shim_failed("pipe", e))?;
    let spawned = command.spawn();
    // The parent's copy of the write end lives in the command; dropping it lets EOF arrive.
    drop(command);
    let mut shim = spawned.map_err(|e| shim_failed(&format!("spawn {}", inner.config.shim_exe.display()), e))?;
    if let Some(out) = shim.stdout.take() {
        tokio::spawn(keep_lines(service.clone(), LogStream::Stdout, number, out));
    }
    if let Some(err) = shim.stderr.take() {
        tokio::spawn(keep_lines(service.clone(), LogStream::Stderr, number, err));
    }
    let receiver = pipe::Receiver::from_owned_fd(status_rx).map_err(|e| shim_failed("status pipe", e))?;
    let mut events = BufReader::new(receiver).lines();
    let first = tokio::time::timeout(START_TIMEOUT, events.next_line()).await;
    let failure = match first {
        Ok(Ok(Some(line))) => match serde_json::from_str::<ShimEvent>(&line) {
            Ok(ShimEvent::Started { pid }) => {
                let mut st = service.status.lock().expect("status lock");
                st.pid = Some(pid);
                st.started = Some(Instant::now());
                st.state = ServiceState::Running;
                return Ok((shim, events));
            }
            Ok(ShimEvent::Failed { message }) => message,
            Ok(other) => format!("the shim reported {other:?} before starting"),
            Err(e) => format!("the shim said {line:?}: {e}"),
        },
        Ok(Ok(None)) | Ok(Err(_)) => "the shim exited without a word".to_owned(),
        Err(_) => {
            let _ = shim.start_kill();
            format!("no answer from the shim within {} s", START_TIMEOUT.as_secs())
        }
    };
    let status = shim.wait().await;
    Err(ServiceError::StartFailed(match status {
        Ok(s) if !s.success() && failure.starts_with("the shim exited") => format!("{failure} ({s})"),
        _ => failure,
    }))
}

async fn keep_lines(service: Arc<Service>, stream: LogStream, run: u32, from: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                service.logs.lock().expect("logs lock").push(stream, run, now_ms(), text);
            }
        }
    }
}

/// How long, and how often, a clone still busy after its release is tried again.
const COLLECT_FOR: Duration = Duration::from_secs(600);
const COLLECT_EVERY: Duration = Duration::from_secs(5);

/// Destroys a clone that was busy when its run ended, once whatever held it lets go, so that no
/// removed service leaves its clone behind. A new start of the same service makes its clone
/// afresh under the key's lock, so this gives way to one.
async fn collect_clone(inner: Arc<Inner>, key: ServiceKey, clone: String) {
    let deadline = tokio::time::Instant::now() + COLLECT_FOR;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(COLLECT_EVERY).await;
        let _hold = inner.changes.lock(&key).await;
        if inner.table.lock().expect("table lock").contains_key(&key) {
            return;
        }
        let rootfs = Rootfs::of_clone(clone.clone());
        match rootfs.release(inner.zfs.as_ref()).await {
            Ok(()) => {
                tracing::info!(service = %key, "destroyed {clone}, busy when the service ended");
                return;
            }
            Err(e) => tracing::debug!(service = %key, "{e}"),
        }
    }
    tracing::warn!(service = %key, "gave up destroying {clone}: busy for {COLLECT_FOR:?}");
}

fn should_restart(mode: RestartMode, exit: &ExitInfo) -> bool {
    match mode {
        RestartMode::Always => true,
        RestartMode::OnFailure => !exit.success(),
        RestartMode::Never => false,
    }
}

/// What ended a run, recorded on the service; the run's root filesystem is released.
async fn ended(inner: &Arc<Inner>, service: &Service, run: Run, exit: ExitInfo) {
    if let Err(e) = run.rootfs.release(inner.zfs.as_ref()).await {
        tracing::warn!(service = %service.def.key, "{e}");
        if let Some(clone) = run.rootfs.clone.clone() {
            tokio::spawn(collect_clone(inner.clone(), service.def.key.clone(), clone));
        }
    }
    let mut st = service.status.lock().expect("status lock");
    st.pid = None;
    st.started = None;
    st.rootfs = None;
    st.last_exit = Some(exit);
}

async fn supervise(
    inner: Arc<Inner>,
    service: Arc<Service>,
    first: Run,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let policy = service.def.restart;
    let mut delay = Duration::from_millis(policy.delay_ms);
    let mut run = Some(first);
    let mut number = 0u32;
    loop {
        let command = if let Some(current) = run.as_mut() {
            tokio::select! {
                exit = current.exited() => {
                    tracing::info!(service = %service.def.key, ?exit, "container exited");
                    if exit.ran_ms >= STABLE_RUN.as_millis() as u64 {
                        delay = Duration::from_millis(policy.delay_ms);
                    }
                    let restart = should_restart(policy.mode, &exit);
                    ended(&inner, &service, run.take().expect("a run"), exit).await;
                    service.status.lock().expect("status lock").state =
                        if restart { ServiceState::Restarting } else { ServiceState::Exited };
                    continue;
                }
                command = control.recv() => command,
            }
        } else {
            let waiting = matches!(
                service.status.lock().expect("status lock").state,
                ServiceState::Restarting | ServiceState::Failed
            );
            tokio::select! {
                _ = tokio::time::sleep(delay), if waiting => {
                    delay = (delay * 2).min(Duration::from_millis(policy.max_delay_ms));
                    number += 1;
                    run = restart_now(&inner, &service, number).await.ok();
                    continue;
                }
                command = control.recv() => command,
            }
        };
        if let Some(mut current) = run.take() {
            let exit = current.stop(inner.config.stop_timeout).await;
            ended(&inner, &service, current, exit).await;
        }
        match command {
            Some(Control::Restart(reply)) => {
                delay = Duration::from_millis(policy.delay_ms);
                number += 1;
                run = restart_now(&inner, &service, number).await.ok();
                let _ = reply.send(match &run {
                    Some(_) => Ok(()),
                    None => Err(ServiceError::StartFailed(
                        service.status.lock().expect("status lock").last_error.clone().unwrap_or_default(),
                    )),
                });
            }
            Some(Control::Remove(reply)) => {
                let _ = reply.send(());
                return;
            }
            None => return,
        }
    }
}

/// A start after the first; a failure is recorded (state `failed`) and retried by the caller.
async fn restart_now(inner: &Inner, service: &Arc<Service>, number: u32) -> Result<Run, ()> {
    service.status.lock().expect("status lock").state = ServiceState::Starting;
    match start(inner, service, number).await {
        Ok(run) => {
            let mut st = service.status.lock().expect("status lock");
            st.restarts += 1;
            st.last_error = None;
            Ok(run)
        }
        Err(e) => {
            tracing::warn!(service = %service.def.key, "restart failed: {e}");
            let mut st = service.status.lock().expect("status lock");
            st.state = ServiceState::Failed;
            st.last_error = Some(e.to_string());
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_modes() {
        let ok = ExitInfo { code: Some(0), signal: None, oom_killed: false, ran_ms: 1 };
        let killed = ExitInfo { code: None, signal: Some(9), oom_killed: true, ran_ms: 1 };
        assert!(should_restart(RestartMode::Always, &ok));
        assert!(!should_restart(RestartMode::OnFailure, &ok));
        assert!(should_restart(RestartMode::OnFailure, &killed));
        assert!(!should_restart(RestartMode::Never, &killed));
    }

    #[test]
    fn keys_change_one_at_a_time_and_different_keys_together() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let locks = KeyLocks::default();
            let (a, b) = (ServiceKey::new("pair", "a").unwrap(), ServiceKey::new("pair", "b").unwrap());
            let held_a = locks.lock(&a).await;
            // Another key is free while `a` is held.
            let held_b = tokio::time::timeout(Duration::from_millis(100), locks.lock(&b)).await;
            assert!(held_b.is_ok(), "b waited for a");
            // The same key waits until `a` is let go.
            let again = tokio::time::timeout(Duration::from_millis(100), locks.lock(&a)).await;
            assert!(again.is_err(), "a was taken twice");
            assert_eq!(locks.held(), 2);
            drop(held_a);
            drop(held_b);
            assert_eq!(locks.held(), 0, "entries outlive their holders");
            let _a = locks.lock(&a).await;
            assert_eq!(locks.held(), 1);
        });
    }
}
