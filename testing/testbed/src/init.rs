//! Running a built `cerana-init` off PID 1 for host tests and the benchmark: in a fresh PID
//! namespace (`unshare --pid --fork`, as root) with `--no-mount`, events to a file, a private
//! control socket (asked through `cerana_client::init_control`). Waits are bounded and poll the
//! event file; nothing sleeps for a fixed time. This crate does not depend on `cerana-init`: it
//! runs the binary it is given.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cerana_protocol::events::LifecycleEvent;
use cerana_protocol::tasks::init::{ControlReply, ControlRequest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Why init cannot be run in a PID namespace here, or `None` when it can.
pub fn why_cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (PID namespaces)".into());
    }
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Some("`unshare --pid --fork` does not work here (util-linux missing?)".into());
    }
    None
}

/// A running init in its own PID namespace.
#[derive(Debug)]
pub struct RunningInit {
    unshare: Child,
    /// Init's pid as the host sees it.
    pub pid: i32,
    pub events: PathBuf,
    pub socket: PathBuf,
    pub console: PathBuf,
    seen: usize,
}

impl RunningInit {
    /// Starts `init_bin --no-mount --table <dir>/services.toml ...` plus `extra` args, with
    /// the given table text, under `unshare --pid --fork`. Init's console goes to
    /// `<dir>/console`.
    pub fn start(init_bin: &Path, dir: &Path, table: &str, extra: &[&str]) -> std::io::Result<Self> {
        let table_path = dir.join("services.toml");
        std::fs::write(&table_path, table)?;
        let socket = dir.join("init.sock");
        let mut args: Vec<std::ffi::OsString> = vec![init_bin.into(), "--no-mount".into()];
        for (flag, value) in [
            ("--table", table_path),
            ("--events", dir.join("events")),
            ("--control-socket", socket.clone()),
            ("--run-dir", dir.join("run")),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args.extend(extra.iter().map(Into::into));
        Self::spawn(&[], &args, dir.join("events"), socket, dir.join("console"))
    }

    /// Runs `unshare --pid --fork --kill-child <unshare_args> <init_args>`; init's stdout and
    /// stderr go to `console`.
    pub fn spawn(
        unshare_args: &[&str],
        init_args: &[std::ffi::OsString],
        events: PathBuf,
        socket: PathBuf,
        console: PathBuf,
    ) -> std::io::Result<Self> {
        Self::spawn_in(&[], unshare_args, init_args, events, socket, console)
    }

    /// Like [`spawn`](Self::spawn), with `prefix` run first (a program that execs the rest,
    /// e.g. `ip netns exec NAME`).
    pub fn spawn_in(
        prefix: &[&str],
        unshare_args: &[&str],
        init_args: &[std::ffi::OsString],
        events: PathBuf,
        socket: PathBuf,
        console: PathBuf,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&events);
        let out = std::fs::File::create(&console)?;
        let (program, prefix_args) = match prefix.split_first() {
            Some((p, rest)) => (*p, rest.to_vec()),
            None => ("unshare", Vec::new()),
        };
        let mut cmd = Command::new(program);
        cmd.args(&prefix_args);
        if !prefix.is_empty() {
            cmd.arg("unshare");
        }
        let unshare = cmd
            .args(["--pid", "--fork", "--kill-child"])
            .args(unshare_args)
            .args(init_args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let unshare_pid = unshare.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children")).unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next().and_then(|p| p.parse().ok()) {
                break pid;
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("init did not appear under unshare"));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        Ok(Self { unshare, pid, events, socket, console, seen: 0 })
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<LifecycleEvent> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| LifecycleEvent::parse_line(l)?.ok())
            .collect()
    }

    /// Waits (at most `timeout`) for the first event after the last one returned by this
    /// method that matches `want`; returns it. Panics with everything seen on timeout.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&LifecycleEvent) -> bool,
    ) -> LifecycleEvent {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            if let Some(pos) = events.iter().skip(self.seen).position(&want) {
                self.seen += pos + 1;
                return events[self.seen - 1].clone();
            }
            if Instant::now() > deadline {
                let console = std::fs::read_to_string(&self.console).unwrap_or_default();
                panic!("timed out after {timeout:?} waiting for {what}\nevents: {events:#?}\nconsole:\n{console}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One control request (10 s timeout). Blocks; callable from async code too (the request
    /// runs on a current-thread runtime of its own, on a thread of its own).
    pub fn control(&self, req: &ControlRequest) -> ControlReply {
        let ask = || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime
                .block_on(cerana_client::init_control::request(&self.socket, req, Duration::from_secs(10)))
                .map_err(std::io::Error::other)
        };
        std::thread::scope(|s| s.spawn(ask).join())
            .unwrap_or_else(|_| panic!("control request {req:?}: the request thread panicked"))
            .unwrap_or_else(|e| panic!("control request {req:?}: {e}"))
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid), sig);
    }

    /// Waits (bounded) for init and its namespace to end; returns init's exit code as
    /// `unshare` reports it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.wait_status(timeout).and_then(|s| s.code())
    }

    /// Waits (bounded) for `unshare` to end; `None` on timeout.
    pub fn wait_status(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.unshare.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A field of /proc/<init>/status, e.g. `VmRSS` (kB).
    pub fn status_kb(&self, field: &str) -> Option<u64> {
        proc_status_kb(self.pid, field)
    }

    /// CPU time init has used so far (from /proc/<pid>/schedstat, nanoseconds).
    pub fn cpu_time(&self) -> Option<Duration> {
        let s = std::fs::read_to_string(format!("/proc/{}/schedstat", self.pid)).ok()?;
        Some(Duration::from_nanos(s.split_whitespace().next()?.parse().ok()?))
    }
}

/// A `kB` field of /proc/<pid>/status.
pub fn proc_status_kb(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

impl Drop for RunningInit {
    fn drop(&mut self) {
        if let Ok(None) = self.unshare.try_wait() {
            // Killing the namespace's init kills everything in the namespace.
            self.signal(Signal::SIGKILL);
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}
