//! Host integration tests: the real init binary in a fresh PID namespace (as root), real
//! service processes (`cerana-init-testkit service ...`). Assertions are on the lifecycle
//! events init writes; every wait is bounded.

use std::path::Path;
use std::time::Duration;

use cerana_protocol::events::{LifecycleEvent as E, ShutdownAction};
use cerana_protocol::tasks::init::{ControlReply, ControlRequest, ServiceList, ServiceLogs, ServiceState, SignalWhom};
use cerana_testbed::init::{why_cannot_run, RunningInit};

const INIT: &str = env!("CARGO_BIN_EXE_cerana-init");
const KIT: &str = env!("CARGO_BIN_EXE_cerana-init-testkit");
const WAIT: Duration = Duration::from_secs(20);

/// Where PID namespaces are not available: fails under `make test`, skips elsewhere.
macro_rules! require_pid_namespace {
    () => {
        cerana_testbed::require!(why_cannot_run());
    };
}

/// A `[service.NAME]` entry running the test service with `args`, plus extra TOML lines.
fn svc(name: &str, args: &[&str], extra: &str) -> String {
    let args: Vec<String> = std::iter::once("service").chain(args.iter().copied()).map(|a| format!("{a:?}")).collect();
    format!("[service.{name}]\ncommand = {KIT:?}\nargs = [{}]\n{extra}\n\n", args.join(", "))
}

fn start(dir: &Path, table: &str, extra: &[&str]) -> RunningInit {
    RunningInit::start(Path::new(INIT), dir, table, extra).expect("start init")
}

fn position(events: &[E], want: impl Fn(&E) -> bool) -> usize {
    events.iter().position(want).unwrap_or_else(|| panic!("event missing in {events:#?}"))
}

fn started(name: &'static str) -> impl Fn(&E) -> bool {
    move |e| matches!(e, E::ServiceStarted { service, .. } if service == name)
}

fn ready(name: &'static str) -> impl Fn(&E) -> bool {
    move |e| matches!(e, E::ServiceReady { service, .. } if service == name)
}

fn node_ready(e: &E) -> bool {
    matches!(e, E::NodeReady { .. })
}

fn shutdown_complete(e: &E) -> bool {
    matches!(e, E::ShutdownComplete { .. })
}

fn ok<T: serde::de::DeserializeOwned>(reply: ControlReply) -> T {
    match reply {
        ControlReply::Ok(v) => serde_json::from_value(v).expect("reply type"),
        ControlReply::Error { code, message } => panic!("control error {code:?}: {message}"),
    }
}

fn poweroff(init: &mut RunningInit) {
    init.signal(nix::sys::signal::Signal::SIGTERM);
    init.wait_for("shutdown_complete", WAIT, shutdown_complete);
    assert_eq!(init.wait_exit(WAIT), Some(0), "init exits 0 off PID 1 after a shutdown");
}

#[test]
fn dependency_order_and_readiness_gating() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("b.sock");
    let port = 20000 + (std::process::id() % 20000) as u16;
    let table = [
        svc("prep", &["--delay-ms", "150", "--exit", "0"], "oneshot = true"),
        svc("a", &["--delay-ms", "200", "--notify"], "ready = \"notify\"\nrequires = [\"prep\"]"),
        svc(
            "b",
            &["--delay-ms", "200", "--unix", sock.to_str().unwrap()],
            &format!("ready = {{ unix_socket = {:?} }}\nrequires = [\"a\"]", sock.to_str().unwrap()),
        ),
        svc(
            "c",
            &["--delay-ms", "200", "--tcp", &port.to_string()],
            &format!("ready = {{ tcp_port = {port} }}\nrequires = [\"b\"]"),
        ),
        svc("d", &[], "requires = [\"a\", \"c\"]"),
    ]
    .concat();
    let mut init = start(dir.path(), &table, &[]);
    init.wait_for("node_ready", WAIT, node_ready);
    let ev = init.events();
    // Each service starts only after everything it requires is ready.
    assert!(position(&ev, ready("prep")) < position(&ev, started("a")));
    assert!(position(&ev, ready("a")) < position(&ev, started("b")));
    assert!(position(&ev, ready("b")) < position(&ev, started("c")));
    assert!(position(&ev, ready("c")) < position(&ev, started("d")));
    assert!(position(&ev, ready("d")) < position(&ev, node_ready));
    // Readiness took the services' delays, not just their start.
    for name in ["a", "b", "c"] {
        let after = ev.iter().find_map(|e| match e {
            E::ServiceReady { service, after_ms } if service == name => Some(*after_ms),
            _ => None,
        });
        assert!(after.unwrap() >= 150, "{name} ready after {after:?} ms");
    }
    let list: ServiceList = ok(init.control(&ControlRequest::List));
    let states: Vec<(String, ServiceState)> = list.services.iter().map(|s| (s.name.clone(), s.state)).collect();
    assert!(states.contains(&("prep".into(), ServiceState::Done)), "{states:?}");
    assert!(states.contains(&("d".into(), ServiceState::Running)), "{states:?}");
    // A finished one-shot task can be run again on request.
    let _: serde_json::Value = ok(init.control(&ControlRequest::Start { service: "prep".into() }));
    init.wait_for("prep again", WAIT, started("prep"));
    init.wait_for("prep done again", WAIT, ready("prep"));
    poweroff(&mut init);
}

#[test]
fn crash_loop_restarts_with_growing_backoff_and_the_node_stays_up() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let table =
        [svc("flaky", &["--exit", "3"], "restart_delay_ms = 40\nrestart_delay_max_ms = 320"), svc("steady", &[], "")]
            .concat();
    let mut init = start(dir.path(), &table, &[]);
    let mut delays = Vec::new();
    for _ in 0..6 {
        let e =
            init.wait_for("flaky exit", WAIT, |e| matches!(e, E::ServiceExited { service, .. } if service == "flaky"));
        let E::ServiceExited { code, restart_in_ms, .. } = e else { unreachable!() };
        assert_eq!(code, Some(3));
        delays.push(restart_in_ms.expect("always restarted"));
    }
    assert_eq!(delays, [40, 80, 160, 320, 320, 320]);
    let list: ServiceList = ok(init.control(&ControlRequest::List));
    let flaky = list.services.iter().find(|s| s.name == "flaky").unwrap();
    assert!(flaky.restarts >= 5, "{flaky:?}");
    let steady = list.services.iter().find(|s| s.name == "steady").unwrap();
    assert_eq!(steady.state, ServiceState::Running);
    poweroff(&mut init);
}

#[test]
fn orphans_double_forked_by_a_service_are_reaped() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let table = svc("forker", &["--orphan-ms", "300"], "");
    let mut init = start(dir.path(), &table, &[]);
    init.wait_for("node_ready", WAIT, node_ready);
    // The orphan prints the pid /proc knows it by (the host's, since /proc is not remounted).
    let deadline = std::time::Instant::now() + WAIT;
    let orphan: i32 = loop {
        let logs: ServiceLogs = ok(init.control(&ControlRequest::Logs { service: "forker".into(), lines: None }));
        if let Some(pid) = logs.lines.iter().find_map(|l| l.strip_prefix("orphan procpid=")) {
            break pid.parse().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no orphan line in {logs:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let status = std::fs::read_to_string(format!("/proc/{orphan}/status")).unwrap_or_default();
    let ppid_line = status.lines().find(|l| l.starts_with("PPid:")).unwrap_or("");
    assert!(
        status.is_empty() || ppid_line.ends_with(&format!("\t{}", init.pid)),
        "the orphan is reparented to init: {ppid_line}"
    );
    // Once it exits, init reaps it: its /proc entry disappears instead of staying a zombie.
    loop {
        if !Path::new(&format!("/proc/{orphan}")).exists() {
            break;
        }
        let state = std::fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap_or_default();
        assert!(std::time::Instant::now() < deadline, "orphan {orphan} not reaped: {state}");
        std::thread::sleep(Duration::from_millis(10));
    }
    poweroff(&mut init);
}

#[test]
fn a_service_ignoring_sigterm_is_killed_after_its_timeout() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let table = [
        // Ready only once SIGTERM is ignored, so the test cannot race the service's setup.
        svc("stubborn", &["--ignore-term", "--notify"], "stop_timeout_ms = 300\nready = \"notify\""),
        svc("polite", &[], ""),
    ]
    .concat();
    let mut init = start(dir.path(), &table, &[]);
    init.wait_for("node_ready", WAIT, node_ready);
    // Stop on request: TERM is ignored, KILL follows.
    let _: serde_json::Value = ok(init.control(&ControlRequest::Stop { service: "stubborn".into() }));
    let e = init.wait_for(
        "stubborn stopped",
        WAIT,
        |e| matches!(e, E::ServiceStopped { service, .. } if service == "stubborn"),
    );
    assert_eq!(e, E::ServiceStopped { service: "stubborn".into(), killed: true });
    let exited = init
        .events()
        .into_iter()
        .find(|e| matches!(e, E::ServiceExited { service, .. } if service == "stubborn"))
        .unwrap();
    assert!(matches!(exited, E::ServiceExited { signal: Some(9), .. }), "{exited:?}");
    // Stopped stays stopped (no restart) and can be started again.
    let list: ServiceList = ok(init.control(&ControlRequest::List));
    let s = list.services.iter().find(|s| s.name == "stubborn").unwrap();
    assert_eq!(s.state, ServiceState::Stopped);
    let _: serde_json::Value = ok(init.control(&ControlRequest::Start { service: "stubborn".into() }));
    init.wait_for("stubborn ready again", WAIT, ready("stubborn"));
    // At shutdown the same escalation happens, and the polite one stops on TERM.
    init.signal(nix::sys::signal::Signal::SIGTERM);
    init.wait_for("shutdown_complete", WAIT, shutdown_complete);
    let ev = init.events();
    let stopped: Vec<(String, bool)> = ev
        .iter()
        .filter_map(|e| match e {
            E::ServiceStopped { service, killed } => Some((service.clone(), *killed)),
            _ => None,
        })
        .collect();
    assert!(stopped.contains(&("polite".into(), false)), "{stopped:?}");
    assert_eq!(stopped.iter().filter(|(s, k)| s == "stubborn" && *k).count(), 2);
    assert_eq!(init.wait_exit(WAIT), Some(0));
}

#[test]
fn shutdown_stops_services_in_reverse_dependency_order() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let table = [
        svc("base", &[], ""),
        svc("mid", &[], "requires = [\"base\"]"),
        svc("top", &[], "requires = [\"mid\"]"),
        svc("leaf", &[], "requires = [\"base\"]"),
    ]
    .concat();
    let mut init = start(dir.path(), &table, &[]);
    init.wait_for("node_ready", WAIT, node_ready);
    let reply: serde_json::Value = ok(init.control(&ControlRequest::Poweroff));
    assert_eq!(reply["action"], "poweroff");
    let e = init.wait_for("shutdown_complete", WAIT, shutdown_complete);
    assert_eq!(e, E::ShutdownComplete { action: ShutdownAction::Poweroff });
    let ev = init.events();
    let stopped =
        |name: &'static str| position(&ev, move |e| matches!(e, E::ServiceStopped { service, .. } if service == name));
    assert!(stopped("top") < stopped("mid"));
    assert!(stopped("mid") < stopped("base"));
    assert!(stopped("leaf") < stopped("base"));
    assert!(position(&ev, |e| matches!(e, E::ShutdownStarted { .. })) < stopped("top"));
    assert_eq!(init.wait_exit(WAIT), Some(0));
}

#[test]
fn bad_tables_are_reported_and_the_good_services_still_run() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let table = [
        svc("loop1", &[], "requires = [\"loop2\"]"),
        svc("loop2", &[], "requires = [\"loop1\"]"),
        "[service.ghost]\ncommand = \"/nonexistent/daemon\"\n\n".to_string(),
        svc("typo", &[], "restrat = \"always\""),
        svc("after-ghost", &[], "requires = [\"ghost\"]"),
        svc("fine", &[], ""),
        svc("cluster-only", &[], "when = [\"cerana.cluster_bootstrap\"]"),
    ]
    .concat();
    let mut init = start(dir.path(), &table, &[]);
    init.wait_for("node_ready", WAIT, node_ready);
    let ev = init.events();
    let problems: Vec<(String, String)> = ev
        .iter()
        .filter_map(|e| match e {
            E::TableProblem { service, error } => Some((service.clone().unwrap_or_default(), error.clone())),
            _ => None,
        })
        .collect();
    let problem = |name: &str| {
        problems
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, e)| e.as_str())
            .unwrap_or_else(|| panic!("no problem reported for {name}: {problems:?}"))
    };
    assert!(problem("loop1").contains("dependency cycle"));
    assert!(problem("loop2").contains("dependency cycle"));
    assert!(problem("ghost").contains("/nonexistent/daemon does not exist"));
    assert!(problem("typo").contains("unknown field `restrat`"));
    assert!(problem("after-ghost").contains("requires invalid service ghost"));
    assert!(ev.iter().any(|e| matches!(e, E::ServiceSkipped { service, .. } if service == "cluster-only")));
    assert!(ev.iter().any(started("fine")));
    let started_names: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            E::ServiceStarted { service, .. } => Some(service.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started_names, ["fine"]);
    let list: ServiceList = ok(init.control(&ControlRequest::List));
    let state = |n: &str| list.services.iter().find(|s| s.name == n).unwrap().state;
    assert_eq!(state("ghost"), ServiceState::Invalid);
    assert_eq!(state("cluster-only"), ServiceState::Disabled);
    // Asking to start an invalid entry is refused clearly.
    match init.control(&ControlRequest::Start { service: "ghost".into() }) {
        ControlReply::Error { message, .. } => assert!(message.contains("cannot run"), "{message}"),
        other => panic!("{other:?}"),
    }
    poweroff(&mut init);
}

#[test]
fn unparsable_table_and_garbage_cmdline_leave_init_up() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(
        &cmdline,
        b"console=ttyS0 cerana.bogus=1 cerana.mgmt_mac=zz \xff\xfe cerana.api_token=0123456789abcdef0123 cerana.cluster_bootstrap\n",
    )
    .unwrap();
    let mut init = start(dir.path(), "[service.broken\ncommand = ", &["--cmdline", cmdline.to_str().unwrap()]);
    let e = init.wait_for("cmdline_parsed", WAIT, |e| matches!(e, E::CmdlineParsed { .. }));
    let E::CmdlineParsed { warnings } = e else { unreachable!() };
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("cerana.bogus"));
    assert!(warnings[1].starts_with("cerana.mgmt_mac"));
    init.wait_for(
        "table problem",
        WAIT,
        |e| matches!(e, E::TableProblem { error, .. } if error.starts_with("not valid TOML")),
    );
    // An empty node is ready at once, and still answers.
    init.wait_for("node_ready", WAIT, node_ready);
    let list: ServiceList = ok(init.control(&ControlRequest::List));
    assert!(list.services.is_empty());
    // The token from the command line is written for the coordinator, 0600.
    let token = dir.path().join("run/api-token");
    assert_eq!(std::fs::read_to_string(&token).unwrap(), "0123456789abcdef0123\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600);
    poweroff(&mut init);
}

#[test]
fn a_module_the_kernel_refuses_is_reported_and_boot_goes_on() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let modules = dir.path().join("modules");
    std::fs::create_dir_all(modules.join("kernel")).unwrap();
    std::fs::write(modules.join("kernel/broken.ko"), b"this is not an ELF module").unwrap();
    std::fs::write(modules.join("kernel/needs_broken.ko.xz"), b"not xz either").unwrap();
    std::fs::write(modules.join("modules.dep"), "kernel/broken.ko:\nkernel/needs_broken.ko.xz: kernel/broken.ko\n")
        .unwrap();
    let list = dir.path().join("module-list");
    std::fs::write(&list, "needs-broken\nnot_in_tree\n").unwrap();
    let mut init = start(
        dir.path(),
        &svc("fine", &[], ""),
        &["--modules-dir", modules.to_str().unwrap(), "--module-list", list.to_str().unwrap()],
    );
    init.wait_for("node_ready", WAIT, node_ready);
    let failed: Vec<(String, String)> = init
        .events()
        .into_iter()
        .filter_map(|e| match e {
            E::ModuleFailed { module, error } => Some((module, error)),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_eq!(failed[0].0, "not_in_tree");
    assert!(failed[0].1.contains("not found in modules.dep"));
    assert_eq!(failed[1].0, "broken");
    assert!(failed[1].1.contains("the kernel refused"), "{}", failed[1].1);
    assert_eq!(failed[2], ("needs_broken".into(), "needs broken, which failed".into()));
    poweroff(&mut init);
}

#[test]
fn control_socket_restart_logs_and_errors() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let table = svc("talker", &["--say", "hello from talker", "--notify"], "ready = \"notify\"");
    let mut init = start(dir.path(), &table, &[]);
    init.wait_for("node_ready", WAIT, node_ready);
    let first_pid = match init.events().into_iter().find(started("talker")) {
        Some(E::ServiceStarted { pid, .. }) => pid,
        _ => unreachable!(),
    };
    let _: serde_json::Value = ok(init.control(&ControlRequest::Restart { service: "talker".into() }));
    init.wait_for("stopped", WAIT, |e| matches!(e, E::ServiceStopped { service, .. } if service == "talker"));
    let again = init.wait_for("started again", WAIT, started("talker"));
    assert!(matches!(again, E::ServiceStarted { pid, .. } if pid != first_pid));
    init.wait_for("ready again", WAIT, ready("talker"));
    let logs: ServiceLogs = ok(init.control(&ControlRequest::Logs { service: "talker".into(), lines: Some(10) }));
    assert_eq!(logs.lines.iter().filter(|l| *l == "hello from talker").count(), 2, "{logs:?}");
    let list: ServiceList = ok(init.control(&ControlRequest::List));
    assert_eq!(list.services[0].restarts, 1);
    assert!(list.services[0].uptime_ms.is_some());
    match init.control(&ControlRequest::Stop { service: "nobody".into() }) {
        ControlReply::Error { code, .. } => assert_eq!(code, cerana_protocol::ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    // Garbage on the socket gets an error frame, and init carries on.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&init.socket).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&[0, 0, 0, 5]).unwrap();
    s.write_all(b"nope!").unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    let reply: ControlReply = serde_json::from_slice(&body).unwrap();
    assert!(matches!(reply, ControlReply::Error { code: cerana_protocol::ErrorCode::InvalidRequest, .. }));
    let mut s = std::os::unix::net::UnixStream::connect(&init.socket).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    s.read_exact(&mut len).unwrap();
    let _: ServiceList = ok(init.control(&ControlRequest::List));
    poweroff(&mut init);
}

#[test]
fn rescue_mode_runs_a_shell_instead_of_the_services() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "cerana.rescue").unwrap();
    let mut init = start(dir.path(), &svc("normal", &[], ""), &["--cmdline", cmdline.to_str().unwrap()]);
    init.wait_for("rescue shell", WAIT, started("rescue-shell"));
    assert!(!init.events().iter().any(started("normal")));
    // SIGINT (what the kernel sends for Ctrl-Alt-Del) means reboot.
    init.signal(nix::sys::signal::Signal::SIGINT);
    let done = init.wait_for("shutdown_complete", WAIT, shutdown_complete);
    assert_eq!(done, E::ShutdownComplete { action: ShutdownAction::Reboot });
    assert_eq!(init.wait_exit(WAIT), Some(0));
}

fn exited_restart_in(e: &E, name: &str) -> Option<Option<u64>> {
    match e {
        E::ServiceExited { service, restart_in_ms, .. } if service == name => Some(*restart_in_ms),
        _ => None,
    }
}

fn signal(init: &RunningInit, service: &str, sig: &str) -> ControlReply {
    init.control(&ControlRequest::Signal { service: service.into(), signal: sig.into(), whom: SignalWhom::Group })
}

fn error_code(reply: ControlReply) -> cerana_protocol::ErrorCode {
    match reply {
        ControlReply::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_killed_service_comes_back_after_its_first_delay_once_it_has_served() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let table = svc("victim", &["--notify"], "ready = \"notify\"\nrestart_delay_ms = 50\nrestart_delay_max_ms = 5000");
    let mut init = start(dir.path(), &table, &[]);
    init.wait_for("node_ready", WAIT, node_ready);
    let delays = |init: &RunningInit| -> Vec<u64> {
        init.events().iter().filter_map(|e| exited_restart_in(e, "victim")).map(|d| d.expect("restarted")).collect()
    };
    let readies = |init: &RunningInit| init.events().iter().filter(|e| ready("victim")(e)).count();
    // Killed right after it became ready, twice: that is a crash loop, so the delay doubles.
    for n in 1..=2 {
        let _: serde_json::Value = ok(signal(&init, "victim", "KILL"));
        let deadline = std::time::Instant::now() + WAIT;
        while readies(&init) < n + 1 {
            assert!(std::time::Instant::now() < deadline, "victim not back: {:#?}", init.events());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(delays(&init), [50, 100]);
    // After it has served for a while, a kill is a one-off: the first delay again.
    std::thread::sleep(cerana_init::supervisor::BACKOFF_RESET_AFTER_READY + Duration::from_millis(300));
    let _: serde_json::Value = ok(signal(&init, "victim", "9"));
    let deadline = std::time::Instant::now() + WAIT;
    while delays(&init).len() < 3 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(delays(&init), [50, 100, 50]);
    while readies(&init) < 4 {
        assert!(std::time::Instant::now() < deadline, "victim not back: {:#?}", init.events());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Errors: a signal that does not exist, a service that does not, one with no process.
    assert_eq!(error_code(signal(&init, "victim", "SIGNOPE")), cerana_protocol::ErrorCode::InvalidArgument);
    assert_eq!(error_code(signal(&init, "nobody", "KILL")), cerana_protocol::ErrorCode::NotFound);
    let _: serde_json::Value = ok(init.control(&ControlRequest::Stop { service: "victim".into() }));
    init.wait_for("stopped", WAIT, |e| matches!(e, E::ServiceStopped { service, .. } if service == "victim"));
    assert_eq!(error_code(signal(&init, "victim", "KILL")), cerana_protocol::ErrorCode::Failed);
    poweroff(&mut init);
}

#[test]
fn limit_nofile_from_the_table_reaches_the_service() {
    require_pid_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let table = r#"
[service.wide]
command = "sh"
args = ["-c", "echo soft=$(ulimit -Sn) hard=$(ulimit -Hn); exec sleep 1000"]
limit_nofile = 4242

[service.plain]
command = "sh"
args = ["-c", "echo soft=$(ulimit -Sn); exec sleep 1000"]
"#;
    let mut init = start(dir.path(), table, &[]);
    init.wait_for("node_ready", WAIT, node_ready);
    let said = |service: &str| -> Vec<String> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let logs: ServiceLogs = ok(init.control(&ControlRequest::Logs { service: service.into(), lines: None }));
            if !logs.lines.is_empty() || std::time::Instant::now() > deadline {
                return logs.lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(said("wide"), ["soft=4242 hard=4242"]);
    assert_ne!(said("plain"), ["soft=4242"], "a service without the key keeps init's limit");
    poweroff(&mut init);
}
