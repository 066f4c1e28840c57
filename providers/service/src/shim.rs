//! The shim: one single-threaded process per start of a service, which creates and starts the
//! container with libcontainer, waits for its PID 1 (the container's init is the shim's child),
//! stops it on SIGTERM, reads the OOM count and deletes the container.
//!
//! Why a process of its own: libcontainer forks with raw clone(2), which skips the C library's
//! fork handlers; done from the provider's multi-threaded runtime, a child could inherit a lock
//! held by another thread. The shim is the provider's own executable re-run as
//! `cerana-service shim ...`; it reports on fd 3 in JSON lines ([`ShimEvent`]). Its stdout and
//! stderr are the container's.

use crate::cgroup::Layout;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The fd the shim reports on.
pub const STATUS_FD: i32 = 3;
/// argv[1] that makes the provider's executable a shim.
pub const SUBCOMMAND: &str = "shim";

/// What the shim reports, one JSON object per line. Strict: the shim is this same executable, so
/// it never speaks a newer version than the provider reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ShimEvent {
    /// The container's process runs; `pid` as the node sees it.
    Started { pid: u32 },
    /// The container could not be created or started; nothing of it is left.
    Failed { message: String },
    /// PID 1 of the container ended; the container is deleted.
    Exited { code: Option<i32>, signal: Option<i32>, oom_killed: bool },
}

/// The shim's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    pub state_root: PathBuf,
    pub container_id: String,
    pub bundle: PathBuf,
    pub cgroup: String,
    pub no_pivot: bool,
    pub stop_timeout: Duration,
}

impl ShimArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            SUBCOMMAND.to_owned(),
            "--state-root".into(),
            self.state_root.display().to_string(),
            "--id".into(),
            self.container_id.clone(),
            "--bundle".into(),
            self.bundle.display().to_string(),
            "--cgroup".into(),
            self.cgroup.clone(),
            "--stop-timeout-ms".into(),
            self.stop_timeout.as_millis().to_string(),
        ];
        if self.no_pivot {
            args.push("--no-pivot".into());
        }
        args
    }

    /// Parses what follows the `shim` subcommand.
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let (mut state_root, mut id, mut bundle, mut cgroup) = (None, None, None, None);
        let (mut no_pivot, mut stop_timeout) = (false, Duration::from_secs(5));
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--state-root" => state_root = Some(PathBuf::from(value()?)),
                "--id" => id = Some(value()?),
                "--bundle" => bundle = Some(PathBuf::from(value()?)),
                "--cgroup" => cgroup = Some(value()?),
                "--stop-timeout-ms" => {
                    let ms = value()?;
                    stop_timeout =
                        Duration::from_millis(ms.parse().map_err(|_| format!("bad --stop-timeout-ms {ms:?}"))?);
                }
                "--no-pivot" => no_pivot = true,
                other => return Err(format!("unexpected argument {other:?}")),
            }
        }
        fn need<T>(v: Option<T>, name: &str) -> Result<T, String> {
            v.ok_or_else(|| format!("{name} is required"))
        }
        Ok(Self {
            state_root: need(state_root, "--state-root")?,
            container_id: need(id, "--id")?,
            bundle: need(bundle, "--bundle")?,
            cgroup: need(cgroup, "--cgroup")?,
            no_pivot,
            stop_timeout,
        })
    }
}

/// Makes `command` run the shim with `args`: argv0 `cerana-service`, and a new pipe's write
/// end as fd 3 (and PDEATHSIG=SIGTERM). Returns the read end. The write end stays in the
/// command's closure until the command is dropped: drop it after spawning to see EOF.
pub fn prepare_command(command: &mut std::process::Command, args: &ShimArgs) -> nix::Result<OwnedFd> {
    use std::os::unix::process::CommandExt;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    command.arg0("cerana-service").args(args.to_args());
    // SAFETY: between fork and exec the closure only calls dup2, fcntl and prctl, which are
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let fd = write.as_raw_fd();
            if fd == STATUS_FD {
                let flags = libc::fcntl(STATUS_FD, libc::F_GETFD);
                libc::fcntl(STATUS_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, STATUS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The provider gone, its containers stop instead of running unmanaged.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    Ok(read)
}

struct Reporter(File);

impl Reporter {
    fn send(&mut self, event: &ShimEvent) {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        // The provider going away is no reason to leave the container unmanaged: go on.
        let _ = self.0.write_all(&line);
    }
}

/// The shim's whole program (after `shim`).
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    // SAFETY: the provider hands the shim fd 3 open for writing, and nothing else owns it.
    let mut report = Reporter(unsafe { File::from_raw_fd(STATUS_FD) });
    let args = match ShimArgs::parse(args) {
        Ok(args) => args,
        Err(message) => {
            report.send(&ShimEvent::Failed { message: format!("shim: {message}") });
            return ExitCode::from(2);
        }
    };
    let pid = match create_and_start(&args) {
        Ok(pid) => pid,
        Err(message) => {
            remove_container(&args);
            report.send(&ShimEvent::Failed { message });
            return ExitCode::FAILURE;
        }
    };
    // Signals are taken by sigtimedwait below. Blocked only now: the container's processes
    // inherit the mask, and libcontainer does not reset it. The provider sends SIGTERM only
    // after `started`, so none arrives earlier.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    report.send(&ShimEvent::Started { pid: pid.as_raw() as u32 });
    let status = wait_for_exit(pid, &signals, args.stop_timeout);
    let layout = Layout::detect();
    let oom_killed = layout.oom_kills(&args.cgroup).unwrap_or(0) > 0;
    remove_container(&args);
    let (code, signal) = match status {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, signal, _) => (None, Some(signal as i32)),
        _ => (None, None),
    };
    report.send(&ShimEvent::Exited { code, signal, oom_killed });
    ExitCode::SUCCESS
}

fn create_and_start(args: &ShimArgs) -> Result<Pid, String> {
    let mut container = ContainerBuilder::new(args.container_id.clone(), SyscallType::default())
        .with_root_path(&args.state_root)
        .and_then(|b| b.validate_id())
        .map_err(|e| format!("container id {}: {e}", args.container_id))?
        .as_init(&args.bundle)
        .with_systemd(false)
        .with_detach(true)
        .with_no_pivot(args.no_pivot)
        .build()
        .map_err(|e| format!("create: {}", error_chain(&e)))?;
    container.start().map_err(|e| format!("start: {}", error_chain(&e)))?;
    container.pid().ok_or_else(|| "the started container has no pid".to_owned())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Deletes the container's state and cgroup, whatever state it reached.
fn remove_container(args: &ShimArgs) {
    let dir = args.state_root.join(&args.container_id);
    if let Ok(mut container) = Container::load(dir.clone()) {
        let _ = container.delete(true);
    }
    let _ = std::fs::remove_dir_all(&dir);
    // A create that failed before libcontainer saved its state may still have made the cgroup.
    let layout = Layout::detect();
    for controller in ["memory", "cpu", "cpuacct", "pids", "cpuset", "devices", "freezer", "blkio", "hugetlb"] {
        let _ = std::fs::remove_dir(layout.controller_dir(controller, &args.cgroup));
        if layout == Layout::Unified {
            break;
        }
    }
}

fn wait_for_exit(pid: Pid, signals: &SigSet, stop_timeout: Duration) -> WaitStatus {
    let mut kill_at: Option<Instant> = None;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return status,
            // Not our child any more (cannot happen) or gone: nothing to wait for.
            Err(_) => return WaitStatus::StillAlive,
        }
        let wait = match kill_at {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(1),
        };
        match sigtimedwait(signals, wait) {
            Some(Signal::SIGTERM) | Some(Signal::SIGINT) if kill_at.is_none() => {
                // PID 1 of a namespace ignores signals it has no handler for; SIGKILL follows.
                let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
                kill_at = Some(Instant::now() + stop_timeout);
            }
            _ => {
                if kill_at.is_some_and(|at| Instant::now() >= at) {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                }
            }
        }
    }
}

fn sigtimedwait(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts =
        libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    let raw: &libc::sigset_t = set.as_ref();
    // SAFETY: `raw` and `ts` are valid for the call; a null siginfo pointer is allowed.
    let signo = unsafe { libc::sigtimedwait(raw, std::ptr::null_mut(), &ts) };
    Signal::try_from(signo).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_and_bad_ones_are_named() {
        let args = ShimArgs {
            state_root: "/run/s".into(),
            container_id: "b.s".into(),
            bundle: "/run/b".into(),
            cgroup: "cerana-services/b.s".into(),
            no_pivot: true,
            stop_timeout: Duration::from_millis(1500),
        };
        let line = args.to_args();
        assert_eq!(line[0], SUBCOMMAND);
        assert_eq!(ShimArgs::parse(line.into_iter().skip(1)).unwrap(), args);
        let err = ShimArgs::parse(["--id".to_owned()].into_iter()).unwrap_err();
        assert!(err.contains("--id needs a value"), "{err}");
        let err = ShimArgs::parse(["--bogus".to_owned()].into_iter()).unwrap_err();
        assert!(err.contains("--bogus"), "{err}");
    }

    #[test]
    fn events_are_one_json_object_each() {
        let e = ShimEvent::Exited { code: None, signal: Some(9), oom_killed: true };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"exited":{"code":null,"signal":9,"oom_killed":true}}"#);
        assert_eq!(serde_json::from_str::<ShimEvent>(&text).unwrap(), e);
    }
}
