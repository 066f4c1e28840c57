//! `cerana-init-testkit`: the configurable service the integration tests and the benchmark
//! (`cerana-init-bench` in testing/testbed) supervise.
//!
//! ```text
//! cerana-init-testkit service [--delay-ms N] [--notify] [--unix PATH] [--tcp PORT]
//!                             [--ignore-term] [--orphan-ms N] [--exit CODE] [--say TEXT]
//! ```

use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("service") => service(&args[1..]),
        _ => {
            eprintln!("usage: cerana-init-testkit service [...]");
            2
        }
    };
    std::process::exit(code);
}

fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn has(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| a == flag)
}

fn service(args: &[String]) -> i32 {
    if has(args, "--ignore-term") {
        // SAFETY: installs SIG_IGN for SIGTERM; no handler code runs.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }
    if let Some(text) = value(args, "--say") {
        println!("{text}");
    }
    if let Some(ms) = value(args, "--orphan-ms").and_then(|v| v.parse::<u64>().ok()) {
        double_fork(ms);
    }
    if let Some(ms) = value(args, "--delay-ms").and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Some(code) = value(args, "--exit").and_then(|v| v.parse::<i32>().ok()) {
        return code;
    }
    let _unix = value(args, "--unix").map(|p| {
        let _ = std::fs::remove_file(p);
        std::os::unix::net::UnixListener::bind(p).expect("bind unix socket")
    });
    let _tcp = value(args, "--tcp")
        .map(|port| std::net::TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind tcp port"));
    if has(args, "--notify") {
        let fd: i32 = std::env::var(cerana_protocol::READY_FD_ENV)
            .expect("CERANA_READY_FD is set")
            .parse()
            .expect("CERANA_READY_FD is a number");
        // SAFETY: the supervisor passed this fd to us for exactly this use; we own it now.
        let mut ready = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = ready.write_all(b"READY\n");
    }
    println!("serving");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Leaves a grandchild behind (reparented to the nearest subreaper) that prints its pid as
/// /proc sees it, lives `ms`, and exits.
fn double_fork(ms: u64) {
    let _ = std::io::stdout().flush();
    // SAFETY: the process is single-threaded here; the children only sleep, print and _exit.
    unsafe {
        let child = libc::fork();
        if child == 0 {
            if libc::fork() == 0 {
                let me = std::fs::read_link("/proc/self").map(|p| p.display().to_string()).unwrap_or_default();
                println!("orphan procpid={me}");
                let _ = std::io::stdout().flush();
                std::thread::sleep(Duration::from_millis(ms));
                libc::_exit(0);
            }
            libc::_exit(0);
        }
        if child > 0 {
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }
}
