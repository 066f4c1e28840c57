//! The readiness handshake between init and the services it supervises: init passes the write
//! end of a pipe and names it in [`crate::READY_FD_ENV`]; the service writes `READY\n` once it
//! serves.

use std::io::Write;
use std::os::fd::FromRawFd;

/// Tells the supervisor this service is ready, if it asked to be told. Safe to call more than
/// once: the variable is removed on the first call, so the fd is used only once.
pub fn notify_ready() {
    let Some(fd) = std::env::var(crate::READY_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()) else {
        return;
    };
    std::env::remove_var(crate::READY_FD_ENV);
    if fd < 3 {
        return;
    }
    // SAFETY: the supervisor passed this fd for us to own and nothing else in the process uses
    // it; the File closes it when dropped.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = file.write_all(b"READY\n");
}
