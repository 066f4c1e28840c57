//! The service supervisor: starts services in dependency order once their dependencies are
//! ready, watches readiness, restarts with exponential backoff, reaps every child, stops
//! services (stop signal, then SIGKILL), and runs the orderly shutdown.
//!
//! It is driven by the event loop: [`Supervisor::reap`] after SIGCHLD, [`Supervisor::on_readable`]
//! for its pipes, [`Supervisor::tick`] on every wake-up. It never blocks.

use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cerana_protocol::events::{LifecycleEvent, ShutdownAction};
use cerana_protocol::tasks::init::{ServiceState, ServiceStatus, SignalWhom};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::logbuf::LogBuffer;
use crate::output::Output;
use crate::spawn::{self, cloexec_pipe, Stdio3};
use crate::table::{Entry, Readiness, RestartPolicy, ServiceSpec, Table};

/// A run that was ready at least this long resets the backoff: the service served, it was not
/// crash-looping, so its next restart comes after the first delay again (a daemon killed now
/// and then is back at once). Restarts of a service that dies within this of becoming ready
/// back off exponentially.
pub const BACKOFF_RESET_AFTER_READY: Duration = Duration::from_secs(2);
/// Per-service log ring size.
pub const LOG_CAPACITY: usize = 64 * 1024;
/// How often unix-socket and TCP readiness are probed while a service starts.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// After services are stopped: time the remaining processes get between SIGTERM and SIGKILL,
/// and after SIGKILL before init gives up waiting for them.
pub const REST_TERM_GRACE: Duration = Duration::from_secs(3);
pub const REST_KILL_GRACE: Duration = Duration::from_secs(2);

/// The delay before the `failures`-th consecutive restart (1-based): doubles each time up to
/// the cap.
pub fn backoff_delay(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(31);
    initial.saturating_mul(1u32 << exp).min(max)
}

/// Why a service is being stopped, which decides what happens when it has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// Asked to stop: it stays stopped.
    Requested,
    /// Asked to restart: start again as soon as dependencies allow.
    Restart,
    /// It missed its readiness deadline: counts as a failure (backoff per policy).
    NotReady,
    /// Node shutdown.
    Shutdown,
}

/// What wakes the event loop for a service fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeKind {
    Log,
    Ready,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub entry: Entry,
    pub state: ServiceState,
    pid: Option<Pid>,
    started_at: Option<Instant>,
    ready_at: Option<Instant>,
    restarts: u32,
    failures_in_row: u32,
    next_start: Option<Instant>,
    ready_deadline: Option<Instant>,
    next_probe: Option<Instant>,
    stop_deadline: Option<Instant>,
    stop_reason: Option<StopReason>,
    killed: bool,
    detail: Option<String>,
    log: LogBuffer,
    log_pipe: Option<(OwnedFd, OwnedFd)>,
    ready_read: Option<OwnedFd>,
    ready_buf: Vec<u8>,
}

impl Service {
    /// Schedules the next start after the backoff its failures so far earn.
    fn back_off(&mut self, spec: &ServiceSpec, now: Instant) -> Duration {
        let delay = backoff_delay(spec.restart_delay, spec.restart_delay_max, self.failures_in_row);
        self.state = ServiceState::Backoff;
        self.next_start = Some(now + delay);
        delay
    }

    fn new(name: String, entry: Entry) -> Self {
        let (state, detail) = match &entry {
            Entry::Enabled(_) => (ServiceState::Waiting, None),
            Entry::Disabled { reason, .. } => (ServiceState::Disabled, Some(reason.clone())),
            Entry::Invalid { reason } => (ServiceState::Invalid, Some(reason.clone())),
        };
        Self {
            name,
            entry,
            state,
            pid: None,
            started_at: None,
            ready_at: None,
            restarts: 0,
            failures_in_row: 0,
            next_start: None,
            ready_deadline: None,
            next_probe: None,
            stop_deadline: None,
            stop_reason: None,
            killed: false,
            detail,
            log: LogBuffer::new(LOG_CAPACITY),
            log_pipe: None,
            ready_read: None,
            ready_buf: Vec::new(),
        }
    }

    pub fn spec(&self) -> Option<&ServiceSpec> {
        match &self.entry {
            Entry::Enabled(spec) => Some(spec),
            _ => None,
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    pub fn log(&self) -> &LogBuffer {
        &self.log
    }

    pub fn status(&self, now: Instant) -> ServiceStatus {
        ServiceStatus {
            name: self.name.clone(),
            state: self.state,
            pid: self.pid.map(|p| p.as_raw() as u32),
            uptime_ms: self.started_at.filter(|_| self.pid.is_some()).map(|t| now.duration_since(t).as_millis() as u64),
            restarts: self.restarts,
            oneshot: self.spec().is_some_and(|s| s.oneshot),
            detail: self.detail.clone(),
        }
    }

    /// Ready for dependants: running and ready, or a one-shot task that succeeded.
    fn satisfies_dependants(&self) -> bool {
        matches!(self.state, ServiceState::Running | ServiceState::Done)
    }

    fn signal_group(&self, sig: Signal) {
        if let Some(pid) = self.pid {
            // Its own session and process group (setsid), so grandchildren get it too; the
            // leader gets it directly in case it left its group.
            let _ = kill(Pid::from_raw(-pid.as_raw()), sig);
            let _ = kill(pid, sig);
        }
    }
}

/// Progress of an orderly shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShutdownPhase {
    StopServices,
    /// Services are gone; the remaining processes got SIGTERM (`killed`: and SIGKILL).
    KillRest {
        deadline: Instant,
        killed: bool,
    },
    Done,
}

/// How leftover processes are signalled at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestScope {
    /// PID 1 (of the machine or of a PID namespace): `kill(-1)` reaches everything else.
    AllProcesses,
    /// A subreaper that is not PID 1: only its own children (orphans reparented to it).
    OwnChildren,
}

#[derive(Debug)]
pub struct Supervisor {
    services: Vec<Service>,
    shutdown: Option<(ShutdownAction, ShutdownPhase)>,
    node_ready_sent: bool,
    children_left: bool,
    rest_scope: RestScope,
    console: Option<File>,
}

impl Supervisor {
    /// Takes over a checked table and reports its problems and skipped entries.
    pub fn new(table: Table, rest_scope: RestScope, console: Option<File>, out: &mut Output) -> Self {
        for p in &table.problems {
            out.error(&format!("service table: {p}"));
            out.event(LifecycleEvent::TableProblem { service: p.service.clone(), error: p.message.clone() });
        }
        let services: Vec<Service> = table.entries.into_iter().map(|e| Service::new(e.name, e.entry)).collect();
        for s in &services {
            if let Entry::Disabled { reason, .. } = &s.entry {
                out.info(&format!("{}: not started: {reason}", s.name));
                out.event(LifecycleEvent::ServiceSkipped { service: s.name.clone(), reason: reason.clone() });
            }
        }
        Self { services, shutdown: None, node_ready_sent: false, children_left: true, rest_scope, console }
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn find(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// The action to carry out once the shutdown has finished.
    pub fn shutdown_finished(&self) -> Option<ShutdownAction> {
        match self.shutdown {
            Some((action, ShutdownPhase::Done)) => Some(action),
            _ => None,
        }
    }

    /// Every fd the event loop should watch for this supervisor, with its owner.
    pub fn watched_fds(&self) -> Vec<(RawFd, usize, PipeKind)> {
        let mut fds = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            if let Some((r, _)) = &s.log_pipe {
                fds.push((r.as_raw_fd(), i, PipeKind::Log));
            }
            if let Some(r) = &s.ready_read {
                fds.push((r.as_raw_fd(), i, PipeKind::Ready));
            }
        }
        fds
    }

    /// The earliest moment [`tick`](Self::tick) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut times: Vec<Instant> = Vec::new();
        for s in &self.services {
            times.extend([s.next_start, s.ready_deadline, s.next_probe, s.stop_deadline].into_iter().flatten());
        }
        if let Some((_, ShutdownPhase::KillRest { deadline, .. })) = self.shutdown {
            times.push(deadline);
        }
        times.into_iter().min()
    }

    /// Reaps every exited child (SIGCHLD coalesces, so loop until none is left) and matches
    /// supervised pids to their services; anything else is an orphan and just reaped.
    pub fn reap(&mut self, out: &mut Output) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    self.children_left = true;
                    return;
                }
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid, Some(code), None, out),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.on_exit(pid, None, Some(sig as i32), out),
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    self.children_left = false;
                    return;
                }
                Err(e) => {
                    out.error(&format!("waitpid: {e}"));
                    return;
                }
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, code: Option<i32>, signal: Option<i32>, out: &mut Output) {
        let Some(i) = self.services.iter().position(|s| s.pid == Some(pid)) else {
            out.debug(&format!("reaped orphan {pid}"));
            return;
        };
        self.drain_log(i, out);
        let now = Instant::now();
        let shutting_down = self.shutting_down();
        let s = &mut self.services[i];
        let ran = s.started_at.map_or(Duration::ZERO, |t| now.duration_since(t));
        s.pid = None;
        s.ready_read = None;
        s.ready_deadline = None;
        s.next_probe = None;
        s.stop_deadline = None;
        let how = match (code, signal) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(sig)) => {
                format!("killed by {}", Signal::try_from(sig).map_or(sig.to_string(), |s| s.as_str().to_string()))
            }
            _ => "ended".to_string(),
        };
        let success = code == Some(0);
        let Some(spec) = s.spec().cloned() else {
            return;
        };
        let name = s.name.clone();
        let exited = |restart_in: Option<Duration>| LifecycleEvent::ServiceExited {
            service: name.clone(),
            pid: pid.as_raw() as u32,
            code,
            signal,
            restart_in_ms: restart_in.map(|d| d.as_millis() as u64),
        };
        match s.stop_reason.take() {
            Some(reason @ (StopReason::Requested | StopReason::Shutdown | StopReason::Restart)) => {
                out.event(exited(None));
                out.info(&format!("{}: stopped ({how})", s.name));
                out.event(LifecycleEvent::ServiceStopped { service: s.name.clone(), killed: s.killed });
                s.detail = Some(format!("stopped; {how}"));
                s.state = if reason == StopReason::Restart && !shutting_down {
                    s.restarts += 1;
                    s.failures_in_row = 0;
                    ServiceState::Waiting
                } else {
                    ServiceState::Stopped
                };
                return;
            }
            Some(StopReason::NotReady) | None => {}
        }
        if spec.oneshot && success {
            s.state = ServiceState::Done;
            s.detail = Some(how);
            out.event(exited(None));
            out.event(LifecycleEvent::ServiceReady { service: s.name.clone(), after_ms: ran.as_millis() as u64 });
            return;
        }
        let restart = !shutting_down
            && match spec.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !success,
                RestartPolicy::Never => false,
            };
        if s.ready_at.take().is_some_and(|t| now.duration_since(t) >= BACKOFF_RESET_AFTER_READY) {
            s.failures_in_row = 0;
        }
        if restart {
            s.failures_in_row += 1;
            let delay = s.back_off(&spec, now);
            s.detail = Some(format!("{how}; restarting in {} ms", delay.as_millis()));
            out.warn(&format!("{}: {how}; restarting in {} ms", s.name, delay.as_millis()));
            out.event(exited(Some(delay)));
        } else {
            out.event(exited(None));
            if success {
                s.state = ServiceState::Stopped;
                s.detail = Some(how);
                out.info(&format!("{}: {}", s.name, s.detail.as_deref().unwrap_or("")));
            } else {
                s.state = ServiceState::Failed;
                s.detail = Some(how.clone());
                out.error(&format!("{}: {how}; not restarted", s.name));
                if !shutting_down {
                    out.event(LifecycleEvent::ServiceFailed {
                        service: s.name.clone(),
                        error: format!("{how}; restart policy leaves it down"),
                    });
                }
            }
        }
    }

    /// Reads what is available on one of a service's pipes.
    pub fn on_readable(&mut self, index: usize, kind: PipeKind, out: &mut Output) {
        match kind {
            PipeKind::Log => self.drain_log(index, out),
            PipeKind::Ready => self.read_ready(index, out),
        }
    }

    fn drain_log(&mut self, i: usize, out: &mut Output) {
        let s = &mut self.services[i];
        let Some((r, _)) = &s.log_pipe else {
            return;
        };
        let mut file = File::from(match r.try_clone() {
            Ok(fd) => fd,
            Err(_) => return,
        });
        let mut buf = [0u8; 4096];
        // Bounded so one chatty service cannot starve the loop; the rest comes next wake-up.
        for _ in 0..16 {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for line in s.log.feed(&buf[..n]) {
                        out.service_line(&s.name, &line);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    fn read_ready(&mut self, i: usize, out: &mut Output) {
        let s = &mut self.services[i];
        let Some(r) = &s.ready_read else {
            return;
        };
        let mut file = File::from(match r.try_clone() {
            Ok(fd) => fd,
            Err(_) => return,
        });
        let mut buf = [0u8; 64];
        let eof = loop {
            match file.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    s.ready_buf.extend_from_slice(&buf[..n]);
                    if s.ready_buf.len() > 256 {
                        break true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        };
        let said_ready = s.ready_buf.split(|b| *b == b'\n').any(|l| l == b"READY");
        if said_ready {
            s.ready_read = None;
            self.mark_ready(i, out);
        } else if eof {
            s.ready_read = None;
            if s.state == ServiceState::Starting {
                let msg = format!("closed {} without writing READY", cerana_protocol::READY_FD_ENV);
                self.fail_readiness(i, &msg, out);
            }
        }
    }

    fn mark_ready(&mut self, i: usize, out: &mut Output) {
        let s = &mut self.services[i];
        if s.state != ServiceState::Starting {
            return;
        }
        s.state = ServiceState::Running;
        s.ready_at = Some(Instant::now());
        s.ready_deadline = None;
        s.next_probe = None;
        s.detail = None;
        let after = s.started_at.map_or(0, |t| t.elapsed().as_millis() as u64);
        out.info(&format!("{}: ready after {after} ms", s.name));
        out.event(LifecycleEvent::ServiceReady { service: s.name.clone(), after_ms: after });
    }

    fn fail_readiness(&mut self, i: usize, why: &str, out: &mut Output) {
        let s = &mut self.services[i];
        out.error(&format!("{}: {why}", s.name));
        out.event(LifecycleEvent::ServiceFailed { service: s.name.clone(), error: why.to_string() });
        s.detail = Some(why.to_string());
        s.ready_deadline = None;
        s.next_probe = None;
        // Killed at once: a service that missed its deadline has had its grace period.
        s.stop_reason = Some(StopReason::NotReady);
        s.state = ServiceState::Stopping;
        s.killed = true;
        s.stop_deadline = Some(Instant::now() + Duration::from_secs(5));
        s.signal_group(Signal::SIGKILL);
    }

    fn start(&mut self, i: usize, out: &mut Output) {
        let now = Instant::now();
        let console = self.console.as_ref();
        let s = &mut self.services[i];
        let Some(spec) = s.spec().cloned() else {
            return;
        };
        s.next_start = None;
        s.killed = false;
        s.ready_buf.clear();
        if s.log_pipe.is_none() && !spec.console {
            match cloexec_pipe() {
                Ok(p) => s.log_pipe = Some(p),
                Err(e) => {
                    out.error(&format!("{}: cannot create its log pipe: {e}", s.name));
                }
            }
        }
        let stdio = match (&s.log_pipe, spec.console) {
            (Some((_, w)), false) => Stdio3::Log(w),
            _ => Stdio3::Console(console),
        };
        match spawn::spawn(&spec, stdio) {
            Ok(spawned) => {
                s.pid = Some(spawned.pid);
                s.started_at = Some(now);
                s.ready_at = None;
                s.ready_read = spawned.ready_read;
                s.state = ServiceState::Starting;
                s.detail = None;
                out.info(&format!("{}: started, pid {}", s.name, spawned.pid));
                out.event(LifecycleEvent::ServiceStarted { service: s.name.clone(), pid: spawned.pid.as_raw() as u32 });
                if !spec.oneshot {
                    match spec.ready {
                        Readiness::Started => self.mark_ready(i, out),
                        Readiness::Notify => self.services[i].ready_deadline = Some(now + spec.ready_timeout),
                        Readiness::UnixSocket(_) | Readiness::TcpPort(_) => {
                            let s = &mut self.services[i];
                            s.ready_deadline = Some(now + spec.ready_timeout);
                            s.next_probe = Some(now);
                        }
                    }
                }
            }
            Err(e) => {
                let why = format!("cannot start {}: {e}", spec.command.display());
                out.error(&format!("{}: {why}", s.name));
                out.event(LifecycleEvent::ServiceFailed { service: s.name.clone(), error: why.clone() });
                s.failures_in_row += 1;
                if spec.restart == RestartPolicy::Never {
                    s.state = ServiceState::Failed;
                    s.detail = Some(why);
                } else {
                    let delay = s.back_off(&spec, now);
                    s.detail = Some(format!("{why}; retrying in {} ms", delay.as_millis()));
                }
            }
        }
    }

    fn probe(spec: &ServiceSpec) -> bool {
        match &spec.ready {
            Readiness::UnixSocket(path) => unix_socket_accepts(path),
            Readiness::TcpPort(port) => {
                TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, *port)), Duration::from_millis(100))
                    .is_ok()
            }
            Readiness::Started | Readiness::Notify => false,
        }
    }

    fn deps_satisfied(&self, i: usize) -> Result<(), String> {
        let Some(spec) = self.services[i].spec() else {
            return Err("not startable".into());
        };
        for dep in &spec.requires {
            match self.find(dep) {
                Some(d) if d.satisfies_dependants() => {}
                Some(d) => return Err(format!("waiting for {dep} ({:?})", d.state)),
                None => return Err(format!("requires unknown service {dep}")),
            }
        }
        Ok(())
    }

    /// Does whatever is due: starts, probes, deadlines, shutdown steps.
    pub fn tick(&mut self, out: &mut Output) {
        let now = Instant::now();
        for i in 0..self.services.len() {
            let s = &self.services[i];
            if s.stop_deadline.is_some_and(|d| d <= now) && s.pid.is_some() {
                let s = &mut self.services[i];
                if s.killed {
                    // SIGKILL did not end it (uninterruptible sleep?): keep waiting, say so once.
                    out.error(&format!("{}: still alive after SIGKILL", s.name));
                    s.stop_deadline = None;
                } else {
                    out.warn(&format!("{}: ignored its stop signal; sending SIGKILL", s.name));
                    s.killed = true;
                    s.stop_deadline = Some(now + REST_KILL_GRACE);
                    s.signal_group(Signal::SIGKILL);
                }
                continue;
            }
            if self.shutting_down() {
                continue;
            }
            match s.state {
                ServiceState::Starting => {
                    if s.next_probe.is_some_and(|t| t <= now) {
                        let spec = s.spec().cloned();
                        if spec.as_ref().is_some_and(Self::probe) {
                            self.mark_ready(i, out);
                            continue;
                        }
                        self.services[i].next_probe = Some(now + PROBE_INTERVAL);
                    }
                    let s = &self.services[i];
                    if s.ready_deadline.is_some_and(|d| d <= now) {
                        let ms = s.spec().map_or(0, |sp| sp.ready_timeout.as_millis());
                        self.fail_readiness(i, &format!("not ready within {ms} ms"), out);
                    }
                }
                ServiceState::Waiting => match self.deps_satisfied(i) {
                    Ok(()) => self.start(i, out),
                    Err(why) => self.services[i].detail = Some(why),
                },
                ServiceState::Backoff if s.next_start.is_some_and(|t| t <= now) => {
                    let s = &mut self.services[i];
                    s.restarts += 1;
                    s.state = ServiceState::Waiting;
                    s.next_start = None;
                    if self.deps_satisfied(i).is_ok() {
                        self.start(i, out);
                    }
                }
                _ => {}
            }
        }
        if !self.shutting_down() && !self.node_ready_sent && self.all_ready() {
            self.node_ready_sent = true;
            out.info("node ready: every enabled service is ready");
            out.event(LifecycleEvent::NodeReady { uptime_ms: out.uptime_ms() });
        }
        self.shutdown_step(out);
    }

    /// Node readiness: every enabled service is ready (one-shot tasks done). Invalid and
    /// disabled entries do not hold the node back; they were reported already.
    fn all_ready(&self) -> bool {
        self.services.iter().filter(|s| s.spec().is_some()).all(Service::satisfies_dependants)
    }

    fn send_stop(&mut self, i: usize, reason: StopReason) {
        let s = &mut self.services[i];
        let Some(spec) = s.spec() else {
            return;
        };
        let (sig, timeout) = (spec.stop_signal, spec.stop_timeout);
        s.stop_reason = Some(reason);
        s.state = ServiceState::Stopping;
        s.ready_deadline = None;
        s.next_probe = None;
        s.killed = false;
        s.stop_deadline = Some(Instant::now() + timeout);
        s.signal_group(sig);
    }

    /// Starts a service that is stopped, failed or backing off, or runs a finished one-shot
    /// task again. Its dependencies gate it.
    pub fn request_start(&mut self, name: &str) -> Result<ServiceStatus, ControlError> {
        let i = self.control_target(name)?;
        let s = &mut self.services[i];
        match s.state {
            ServiceState::Stopped | ServiceState::Failed | ServiceState::Backoff | ServiceState::Done => {
                s.state = ServiceState::Waiting;
                s.next_start = None;
                s.failures_in_row = 0;
            }
            _ => {}
        }
        Ok(self.services[i].status(Instant::now()))
    }

    /// Stops a service; it stays stopped until started again.
    pub fn request_stop(&mut self, name: &str) -> Result<ServiceStatus, ControlError> {
        let i = self.control_target(name)?;
        let s = &mut self.services[i];
        if s.pid.is_some() {
            if s.state != ServiceState::Stopping {
                self.send_stop(i, StopReason::Requested);
            } else {
                s.stop_reason = Some(StopReason::Requested);
            }
        } else if matches!(s.state, ServiceState::Waiting | ServiceState::Backoff) {
            s.state = ServiceState::Stopped;
            s.next_start = None;
            s.detail = Some("stopped on request".into());
        }
        Ok(self.services[i].status(Instant::now()))
    }

    /// Sends `sig` to a running service, as a crash or an operator's `kill` would: init then
    /// treats its exit like any other (restart policy, backoff), not as a requested stop.
    pub fn request_signal(&mut self, name: &str, sig: Signal, whom: SignalWhom) -> Result<ServiceStatus, ControlError> {
        let i = self.control_target(name)?;
        let s = &self.services[i];
        let Some(pid) = s.pid else {
            return Err(ControlError::NotRunning(name.to_string(), s.state));
        };
        match whom {
            SignalWhom::Main => {
                let _ = kill(pid, sig);
            }
            SignalWhom::Group => s.signal_group(sig),
        }
        Ok(s.status(Instant::now()))
    }

    /// Stops a running service and starts it again; starts it if it is not running.
    pub fn request_restart(&mut self, name: &str) -> Result<ServiceStatus, ControlError> {
        let i = self.control_target(name)?;
        if self.services[i].pid.is_some() {
            if self.services[i].state == ServiceState::Stopping {
                self.services[i].stop_reason = Some(StopReason::Restart);
            } else {
                self.send_stop(i, StopReason::Restart);
            }
            Ok(self.services[i].status(Instant::now()))
        } else {
            self.request_start(name)
        }
    }

    fn control_target(&self, name: &str) -> Result<usize, ControlError> {
        let i = self.index(name).ok_or_else(|| ControlError::NotFound(name.to_string()))?;
        if self.shutting_down() {
            return Err(ControlError::ShuttingDown);
        }
        match &self.services[i].entry {
            Entry::Enabled(_) => Ok(i),
            Entry::Disabled { reason, .. } | Entry::Invalid { reason } => {
                Err(ControlError::NotStartable(name.to_string(), reason.clone()))
            }
        }
    }

    /// Begins an orderly shutdown (idempotent: a second request keeps the first action).
    pub fn begin_shutdown(&mut self, action: ShutdownAction, reason: &str, out: &mut Output) {
        if self.shutdown.is_some() {
            out.info(&format!("shutdown already under way; ignoring {reason}"));
            return;
        }
        out.info(&format!("shutdown ({action:?}): {reason}"));
        out.event(LifecycleEvent::ShutdownStarted { action, reason: reason.to_string() });
        self.shutdown = Some((action, ShutdownPhase::StopServices));
        for s in &mut self.services {
            s.next_start = None;
            s.next_probe = None;
            s.ready_deadline = None;
            if s.pid.is_none() && matches!(s.state, ServiceState::Waiting | ServiceState::Backoff) {
                s.state = ServiceState::Stopped;
                s.detail = Some("not started: shutdown".into());
            }
        }
        self.shutdown_step(out);
    }

    /// Services are stopped in reverse dependency order: one is stopped only when nothing
    /// alive still requires it.
    fn shutdown_step(&mut self, out: &mut Output) {
        let Some((action, phase)) = self.shutdown else {
            return;
        };
        let now = Instant::now();
        match phase {
            ShutdownPhase::StopServices => {
                for i in stop_order_ready(&self.services) {
                    self.send_stop(i, StopReason::Shutdown);
                    out.info(&format!("{}: stopping", self.services[i].name));
                }
                if self.services.iter().all(|s| s.pid.is_none()) {
                    let n = signal_rest(self.rest_scope, Signal::SIGTERM);
                    if n > 0 {
                        out.info("sending SIGTERM to the remaining processes");
                    }
                    self.shutdown =
                        Some((action, ShutdownPhase::KillRest { deadline: now + REST_TERM_GRACE, killed: false }));
                    self.reap(out);
                    self.shutdown_step(out);
                }
            }
            ShutdownPhase::KillRest { deadline, killed } => {
                if !self.children_left {
                    self.shutdown = Some((action, ShutdownPhase::Done));
                } else if now >= deadline && !killed {
                    out.warn("processes left after SIGTERM; sending SIGKILL");
                    signal_rest(self.rest_scope, Signal::SIGKILL);
                    self.shutdown =
                        Some((action, ShutdownPhase::KillRest { deadline: now + REST_KILL_GRACE, killed: true }));
                } else if now >= deadline {
                    out.error("processes survived SIGKILL; shutting down anyway");
                    self.shutdown = Some((action, ShutdownPhase::Done));
                }
            }
            ShutdownPhase::Done => {}
        }
    }
}

/// The alive, not yet stopping services that no alive service requires.
fn stop_order_ready(services: &[Service]) -> Vec<usize> {
    let alive = |s: &Service| s.pid.is_some();
    services
        .iter()
        .enumerate()
        .filter(|(_, s)| alive(s) && s.state != ServiceState::Stopping)
        .filter(|(_, s)| {
            !services.iter().any(|other| alive(other) && other.spec().is_some_and(|sp| sp.requires.contains(&s.name)))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Signals every process init is responsible for besides itself; returns how many it found
/// (for `AllProcesses`, 1 when the signal went out).
fn signal_rest(scope: RestScope, sig: Signal) -> usize {
    match scope {
        RestScope::AllProcesses => usize::from(kill(Pid::from_raw(-1), sig).is_ok()),
        RestScope::OwnChildren => {
            let me = std::process::id() as i32;
            let children = children_of(me);
            for pid in &children {
                let _ = kill(Pid::from_raw(*pid), sig);
            }
            children.len()
        }
    }
}

/// Pids whose parent is `parent`, from /proc.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
                // The comm field may hold spaces and parentheses: parse after the last ')'.
                let rest = &stat[stat.rfind(')')? + 2..];
                rest.split(' ').nth(1)?.parse::<i32>().ok()
            }) == Some(parent)
        })
        .collect()
}

/// Why a control request on a service was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("no service named {0:?}")]
    NotFound(String),
    #[error("service {0} cannot run: {1}")]
    NotStartable(String, String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("service {0} has no process to signal (it is {1:?})")]
    NotRunning(String, ServiceState),
}

/// Whether something listens on the unix socket at `path`. Stream sockets are the common case;
/// some daemons listen on a seqpacket socket (systemd-udevd's /run/udev/control), where a
/// stream connect fails with EPROTOTYPE.
fn unix_socket_accepts(path: &std::path::Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    match UnixStream::connect(path) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {
            let Ok(addr) = UnixAddr::new(path) else { return false };
            socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
                .is_ok_and(|fd| connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).is_ok())
        }
        Err(_) => false,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_by_unix_socket_accepts_stream_and_seqpacket_listeners() {
        use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
        let dir = tempfile::tempdir().unwrap();
        let stream = dir.path().join("stream");
        let _stream_listener = std::os::unix::net::UnixListener::bind(&stream).unwrap();
        assert!(unix_socket_accepts(&stream));
        let seqpacket = dir.path().join("seqpacket");
        let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(&seqpacket).unwrap()).unwrap();
        assert!(!unix_socket_accepts(&seqpacket), "bound but not listening");
        listen(&fd, Backlog::new(4).unwrap()).unwrap();
        assert!(unix_socket_accepts(&seqpacket), "udevd's kind of control socket");
        assert!(!unix_socket_accepts(&dir.path().join("nothing")));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        let delays: Vec<u128> = (1..=8).map(|n| backoff_delay(ms(100), ms(2000), n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(backoff_delay(ms(100), ms(2000), u32::MAX), ms(2000));
    }

    #[test]
    fn shutdown_stops_dependants_first() {
        let table = crate::table::load(
            r#"
[service.base]
command = "true"
[service.mid]
command = "true"
requires = ["base"]
[service.top]
command = "true"
requires = ["mid"]
[service.side]
command = "true"
requires = ["base"]
"#,
            &Default::default(),
        );
        let mut services: Vec<Service> = table.entries.into_iter().map(|e| Service::new(e.name, e.entry)).collect();
        for (n, s) in services.iter_mut().enumerate() {
            s.pid = Some(Pid::from_raw(1000 + n as i32));
        }
        let names = |v: &[usize], s: &[Service]| -> Vec<String> { v.iter().map(|&i| s[i].name.clone()).collect() };
        let first = stop_order_ready(&services);
        assert_eq!(names(&first, &services), ["side", "top"]);
        for i in first {
            services[i].pid = None;
        }
        let second = stop_order_ready(&services);
        assert_eq!(names(&second, &services), ["mid"]);
        services[second[0]].pid = None;
        assert_eq!(names(&stop_order_ready(&services), &services), ["base"]);
    }

    #[test]
    fn children_of_finds_our_own_child() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let found = children_of(std::process::id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&(child.id() as i32)), "{found:?}");
    }
}
