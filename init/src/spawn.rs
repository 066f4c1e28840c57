//! Starting one service process.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use nix::unistd::{pipe2, Pid};

use crate::table::{Readiness, ServiceSpec, DEFAULT_PATH};

/// The fd number a service finds its readiness pipe on (named in `CERANA_READY_FD`).
pub const READY_FD: RawFd = 3;

/// A freshly spawned service.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    /// Read end of the readiness pipe, for `ready = "notify"`.
    pub ready_read: Option<OwnedFd>,
}

/// A pipe whose ends are close-on-exec in init; the read end does not block.
pub fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(r.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((r, w))
}

/// Where a service's stdin/stdout/stderr go.
#[derive(Debug)]
pub enum Stdio3<'a> {
    /// stdin from /dev/null, stdout and stderr into init's log pipe for the service.
    Log(&'a OwnedFd),
    /// All three on the console (interactive shells); `None` inherits init's own.
    Console(Option<&'a File>),
}

/// Spawns `spec` in its own session (so its process group can be signalled as a whole), with
/// a clean environment, signals unblocked and default dispositions.
pub fn spawn(spec: &ServiceSpec, stdio: Stdio3<'_>) -> io::Result<Spawned> {
    let console = matches!(stdio, Stdio3::Console(_));
    let mut cmd = Command::new(&spec.command);
    cmd.args(&spec.args).env_clear().env("PATH", DEFAULT_PATH).env("HOME", "/");
    if !console {
        // Output goes to a ring buffer and a serial console: no colour escapes.
        cmd.env("NO_COLOR", "1");
    }
    cmd.envs(&spec.env);
    match stdio {
        Stdio3::Log(w) => {
            cmd.stdin(Stdio::null()).stdout(Stdio::from(w.try_clone()?)).stderr(Stdio::from(w.try_clone()?));
        }
        Stdio3::Console(Some(tty)) => {
            cmd.stdin(Stdio::from(tty.try_clone()?))
                .stdout(Stdio::from(tty.try_clone()?))
                .stderr(Stdio::from(tty.try_clone()?))
                .env("TERM", "linux");
        }
        Stdio3::Console(None) => {}
    }
    let ready = if spec.ready == Readiness::Notify {
        let (r, w) = cloexec_pipe()?;
        cmd.env(cerana_protocol::READY_FD_ENV, READY_FD.to_string());
        Some((r, w))
    } else {
        None
    };
    let ready_write_fd = ready.as_ref().map(|(_, w)| w.as_raw_fd());
    let limit_nofile = spec.limit_nofile;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (sigprocmask, signal, setsid, ioctl, dup2, fcntl, setrlimit) on
    // fds that stay open until exec.
    unsafe {
        cmd.pre_exec(move || {
            child_setup(ready_write_fd, console);
            if let Some(n) = limit_nofile {
                // A limit the table asks for and cannot get fails the start (reported), rather
                // than running a daemon sized for more descriptors than it has.
                let limit = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    // Dropping `Child` neither waits nor kills; init reaps every pid in its WNOHANG loop.
    drop(child);
    Ok(Spawned { pid, ready_read: ready.map(|(r, _w)| r) })
}

/// Runs in the child between fork and exec.
fn child_setup(ready_write_fd: Option<RawFd>, console: bool) {
    // SAFETY: plain syscalls on the child's own state; every pointer refers to a local that
    // outlives the call. Failures are ignored on purpose: the exec that follows still runs.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for sig in [libc::SIGPIPE, libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::setsid();
        if console {
            libc::ioctl(0, libc::TIOCSCTTY, 1);
        }
        if let Some(fd) = ready_write_fd {
            if fd == READY_FD {
                // dup2 onto itself keeps FD_CLOEXEC, so clear it by hand.
                libc::fcntl(fd, libc::F_SETFD, 0);
            } else {
                libc::dup2(fd, READY_FD);
            }
        }
    }
}
