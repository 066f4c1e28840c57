//! The `init-*` tasks end to end: a coordinator in this process, the init provider in this
//! process, and a real `cerana-init` in a PID namespace (as root) behind its control socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cerana_client::{CallError, UnixClient};
use cerana_coordinator::{Config, Coordinator};
use cerana_protocol::events::{LifecycleEvent, ShutdownAction};
use cerana_protocol::tasks::init::{
    InitPoweroff, InitServiceList, InitServiceLogs, InitServiceRestart, InitServiceSignal, InitServiceStart,
    InitServiceStop, ServiceArgs, ServiceLogsArgs, ServiceSignalArgs, ServiceState, SignalWhom,
};
use cerana_protocol::{ErrorCode, NoArgs};
use cerana_testbed::init::{why_cannot_run, RunningInit};

/// `cerana-init` as built beside this test (`make test-init` builds both packages together).
fn init_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("cerana-init");
    path.exists().then_some(path)
}

async fn coordinator_with_provider(dir: &Path, init_socket: PathBuf) -> (Coordinator, UnixClient) {
    let socket = dir.join("coordinator.sock");
    let coordinator = Coordinator::start(Config::new(&socket)).await.expect("coordinator");
    let provider = cerana_init_provider::provider(init_socket);
    let serve_socket = socket.clone();
    tokio::spawn(async move {
        let _ = provider.serve(serve_socket).await;
    });
    let client = UnixClient::connect(&socket, "test").await.expect("client");
    // Bounded wait until the provider has registered its tasks.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.run::<InitServiceList>(&NoArgs {}).await {
            Err(CallError::Task(e)) if matches!(e.code, ErrorCode::NoProvider | ErrorCode::UnknownTask) => {
                assert!(Instant::now() < deadline, "provider never registered: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => break,
        }
    }
    (coordinator, client)
}

#[tokio::test]
async fn an_unreachable_init_is_a_clear_unavailable_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-init.sock");
    let (_coordinator, client) = coordinator_with_provider(dir.path(), missing.clone()).await;
    match client.run::<InitServiceList>(&NoArgs {}).await {
        Err(CallError::Task(e)) => {
            assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
            assert!(e.message.contains(missing.to_str().unwrap()), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    // Malformed arguments are refused before they reach init.
    let raw = serde_json::value::to_raw_value(&serde_json::json!({"service": 3})).unwrap();
    let task = cerana_protocol::TaskName::new("init-service-stop").unwrap();
    let response = client.call(cerana_protocol::Request::new(task, raw)).await.unwrap();
    assert!(response.error().is_some_and(|e| e.code == ErrorCode::InvalidArgs), "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_tasks_drive_a_real_init() {
    cerana_testbed::require!(why_cannot_run());
    let init_bin = cerana_testbed::require_ok!(
        init_binary().ok_or("cerana-init is not built beside this test (run `make test-init`)")
    );
    let dir = tempfile::tempdir().unwrap();
    let table = r#"
[service.alpha]
command = "sh"
args = ["-c", "echo hello from alpha; exec sleep 1000"]
"#;
    let mut init = RunningInit::start(&init_bin, dir.path(), table, &[]).unwrap();
    init.wait_for("node_ready", Duration::from_secs(20), |e| matches!(e, LifecycleEvent::NodeReady { .. }));
    let (_coordinator, client) = coordinator_with_provider(dir.path(), init.socket.clone()).await;

    let list = client.run::<InitServiceList>(&NoArgs {}).await.unwrap();
    assert_eq!(list.services.len(), 1);
    assert_eq!(list.services[0].state, ServiceState::Running);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let args = ServiceLogsArgs { service: "alpha".into(), lines: Some(5) };
        let logs = client.run::<InitServiceLogs>(&args).await.unwrap();
        if logs.lines.iter().any(|l| l == "hello from alpha") {
            break;
        }
        assert!(Instant::now() < deadline, "{logs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let alpha = ServiceArgs { service: "alpha".into() };
    let stopping = client.run::<InitServiceStop>(&alpha).await.unwrap();
    assert_eq!(stopping.state, ServiceState::Stopping);
    init.wait_for(
        "alpha stopped",
        Duration::from_secs(20),
        |e| matches!(e, LifecycleEvent::ServiceStopped { service, .. } if service == "alpha"),
    );
    client.run::<InitServiceStart>(&alpha).await.unwrap();
    init.wait_for(
        "alpha started",
        Duration::from_secs(20),
        |e| matches!(e, LifecycleEvent::ServiceStarted { service, .. } if service == "alpha"),
    );
    client.run::<InitServiceRestart>(&alpha).await.unwrap();
    init.wait_for(
        "alpha restarted",
        Duration::from_secs(20),
        |e| matches!(e, LifecycleEvent::ServiceStarted { service, .. } if service == "alpha"),
    );

    let kill = ServiceSignalArgs { service: "alpha".into(), signal: "KILL".into(), whom: SignalWhom::Main };
    let signalled = client.run::<InitServiceSignal>(&kill).await.unwrap();
    init.wait_for("alpha killed", Duration::from_secs(20), |e| {
        matches!(e, LifecycleEvent::ServiceExited { service, signal: Some(9), restart_in_ms: Some(_), pid, .. }
            if service == "alpha" && Some(*pid) == signalled.pid)
    });
    let bad = ServiceSignalArgs { signal: "NOPE".into(), ..kill };
    match client.run::<InitServiceSignal>(&bad).await {
        Err(CallError::Task(e)) => assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}"),
        other => panic!("{other:?}"),
    }

    match client.run::<InitServiceStop>(&ServiceArgs { service: "ghost".into() }).await {
        Err(CallError::Task(e)) => assert_eq!(e.code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }

    let accepted = client.run::<InitPoweroff>(&NoArgs {}).await.unwrap();
    assert_eq!(accepted.action, ShutdownAction::Poweroff);
    init.wait_for("shutdown_complete", Duration::from_secs(20), |e| {
        matches!(e, LifecycleEvent::ShutdownComplete { .. })
    });
    assert_eq!(init.wait_exit(Duration::from_secs(20)), Some(0));
}
