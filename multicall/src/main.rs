//! `cerana-multicall`: every Rust service and tool of a node in one executable, run through
//! symlinks named after them (`/usr/bin/cerana-coordinator -> cerana-multicall`), as busybox does.
//!
//! Why: each of these programs carries the same runtime (tokio, serde, the protocol). Linked
//! once, the image is several MiB smaller and, since the node's processes map the same file,
//! its text pages sit in RAM once instead of once per service — on a RAM-resident OS both count.

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

/// A program's whole `main`.
type Applet = fn() -> ExitCode;

/// The programs this binary can be, by the name it is run as.
const APPLETS: &[(&str, Applet)] = &[
    ("cerana", cerana_cli::main),
    ("cerana-bootserver", cerana_bootserver::command::main),
    ("cerana-clusterconf", cerana_clusterconf::main),
    ("cerana-coordinator", cerana_coordinator::command::main),
    ("cerana-health", cerana_health::main),
    ("cerana-init-provider", cerana_init_provider::main),
    ("cerana-kv", cerana_kv::main),
    ("cerana-metrics", cerana_metrics::main),
    ("cerana-netns", cerana_netns::main),
    ("cerana-node-info", cerana_node_info::main),
    ("cerana-quorum", cerana_quorum::main),
    ("cerana-service", cerana_service::main),
    ("cerana-ticks", cerana_ticks::main),
    ("cerana-zfs", cerana_zfs::main),
];

fn applet(argv0: &OsStr) -> Option<fn() -> ExitCode> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    APPLETS.iter().find(|(applet, _)| *applet == name).map(|(_, main)| *main)
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if let Some(main) = applet(&argv0) {
        return main();
    }
    let names: Vec<&str> = APPLETS.iter().map(|(name, _)| *name).collect();
    if std::env::args().nth(1).as_deref() == Some("--list") {
        println!("{}", names.join("\n"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "cerana-multicall: run me through a link named after one of: {}\n(`cerana-multicall --list` prints them)",
        names.join(", ")
    );
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applets_are_found_by_file_name_only() {
        assert!(applet(OsStr::new("/usr/bin/cerana-coordinator")).is_some());
        assert!(applet(OsStr::new("cerana")).is_some());
        assert!(applet(OsStr::new("/usr/bin/cerana-multicall")).is_none());
        assert!(applet(OsStr::new("/cerana-coordinator/x")).is_none());
    }

    #[test]
    fn applet_names_are_unique() {
        let mut names: Vec<_> = APPLETS.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), APPLETS.len());
    }
}
