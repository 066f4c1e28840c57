//! The health provider behind a real coordinator: every check passing and failing as it should
//! against real loopback servers, files, processes and (as root) cgroups; bad arguments as errors.

use cerana_client::{CallError, UnixClient};
use cerana_coordinator::{Config, Coordinator};
use cerana_health::Checker;
use cerana_protocol::tasks::coordinator::{CoordinatorProviders, ProvidersResult};
use cerana_protocol::tasks::health::{
    FailReason, FileArgs, FileMode, HealthCheck, HealthFile, HealthHttpStatus, HealthReport, HealthTcpResponse,
    HealthUptime, HttpStatusArgs, ProcessTarget, TcpResponseArgs, UptimeArgs,
};
use cerana_protocol::{ErrorCode, NoArgs, Request, TaskError};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Harness {
    _dir: tempfile::TempDir,
    _coordinator: Coordinator,
    provider: tokio::task::JoinHandle<()>,
    client: UnixClient,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.provider.abort();
    }
}

async fn harness(checker: Checker) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("coordinator.sock"));
    config.name = "health-test".into();
    let coordinator = Coordinator::start(config).await.expect("coordinator starts");
    let socket = coordinator.socket().to_owned();
    let provider = tokio::spawn(async move {
        cerana_health::provider_with(checker).serve(socket).await.expect("provider serves");
    });
    let client = UnixClient::connect(coordinator.socket(), "test").await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ProvidersResult { providers } = client.run::<CoordinatorProviders>(&NoArgs {}).await.unwrap();
        if providers.iter().any(|p| p.name.as_str() == "health") {
            break;
        }
        assert!(Instant::now() < deadline, "the health provider never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Harness { _dir: dir, _coordinator: coordinator, provider, client }
}

fn task_error<T: std::fmt::Debug>(result: Result<T, CallError>) -> TaskError {
    match result {
        Err(CallError::Task(e)) => e,
        other => panic!("expected a task error, got {other:?}"),
    }
}

fn assert_fails(report: &HealthReport, reason: FailReason) {
    assert_eq!(report.reason, Some(reason), "{report:?}");
    assert!(!report.passed());
}

/// A tiny HTTP server on loopback: /ok answers 200, /fail 500, /slow never answers.
async fn http_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request);
                let status = match request.split_whitespace().nth(1) {
                    Some("/ok") => "200 OK",
                    Some("/fail") => "500 Internal Server Error",
                    Some("/slow") => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    _ => "404 Not Found",
                };
                let response = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (base, server)
}

fn http(url: String, status_code: Option<u16>, timeout_ms: Option<u64>) -> HttpStatusArgs {
    HttpStatusArgs { url, method: None, body: None, status_code, timeout_ms }
}

fn tcp(address: String, body: Option<&str>, regexp: Option<&str>) -> TcpResponseArgs {
    TcpResponseArgs { address, body: body.map(Into::into), regexp: regexp.map(Into::into), timeout_ms: Some(2_000) }
}

#[tokio::test]
async fn http_and_tcp_checks_pass_and_fail_as_they_should() {
    let h = harness(Checker::system()).await;
    let (base, server) = http_server().await;

    let ok = h.client.run::<HealthHttpStatus>(&http(format!("{base}/ok"), None, None)).await.unwrap();
    assert!(ok.passed(), "{ok:?}");
    let fail = h.client.run::<HealthHttpStatus>(&http(format!("{base}/fail"), None, None)).await.unwrap();
    assert_fails(&fail, FailReason::WrongStatus);
    assert!(fail.message.contains("500"), "{fail:?}");
    let expected_500 = h.client.run::<HealthHttpStatus>(&http(format!("{base}/fail"), Some(500), None)).await.unwrap();
    assert!(expected_500.passed(), "an expected 500 passes: {expected_500:?}");
    let started = Instant::now();
    let slow = h.client.run::<HealthHttpStatus>(&http(format!("{base}/slow"), None, Some(300))).await.unwrap();
    assert_fails(&slow, FailReason::Timeout);
    assert!(started.elapsed() < Duration::from_secs(3), "the check's timeout holds");

    // The server's port is open; a port just released is closed.
    let open = base.trim_start_matches("http://").to_owned();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    assert!(h.client.run::<HealthTcpResponse>(&tcp(open.clone(), None, None)).await.unwrap().passed());
    let refused = h.client.run::<HealthTcpResponse>(&tcp(closed.clone(), None, None)).await.unwrap();
    assert_fails(&refused, FailReason::Refused);
    let http_refused =
        h.client.run::<HealthHttpStatus>(&http(format!("http://{closed}/ok"), None, None)).await.unwrap();
    assert_fails(&http_refused, FailReason::Refused);
    // Speaking HTTP over the TCP check, with a regexp on the status line.
    let request = "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let matched =
        h.client.run::<HealthTcpResponse>(&tcp(open.clone(), Some(request), Some(r"^HTTP/1\.1 200"))).await.unwrap();
    assert!(matched.passed(), "{matched:?}");
    let unmatched =
        h.client.run::<HealthTcpResponse>(&tcp(open.clone(), Some(request), Some(r"^HTTP/1\.1 5\d\d"))).await.unwrap();
    assert_fails(&unmatched, FailReason::NoMatch);

    // A check as a service definition carries it, run through its own request.
    let check: HealthCheck = serde_json::from_value(serde_json::json!({
        "type": "health-http-status", "args": {"url": format!("{base}/ok"), "timeout_ms": 1000}
    }))
    .unwrap();
    let report: HealthReport = h.client.call(check.request().unwrap()).await.unwrap().decode().unwrap();
    assert!(report.passed(), "{report:?}");

    // Bad arguments are errors, not failed checks: from the coordinator (types) or the provider.
    let bad_regexp = task_error(h.client.run::<HealthTcpResponse>(&tcp(open, None, Some("(unclosed"))).await);
    assert_eq!(bad_regexp.code, ErrorCode::InvalidArgs, "{bad_regexp}");
    let bad_url = task_error(h.client.run::<HealthHttpStatus>(&http("ftp://x".into(), None, None)).await);
    assert_eq!(bad_url.code, ErrorCode::InvalidArgs, "{bad_url}");
    let mut unknown_field = Request::for_task::<HealthTcpResponse>(&tcp(closed, None, None)).unwrap();
    unknown_field.args =
        serde_json::value::RawValue::from_string(r#"{"address":"127.0.0.1:1","regex":"x"}"#.into()).unwrap();
    let error = h.client.call(unknown_field).await.unwrap().error().cloned().unwrap();
    assert_eq!(error.code, ErrorCode::InvalidArgs, "{error}");
    assert!(error.message.contains("unknown field"), "{error}");
    server.abort();
}

#[tokio::test]
async fn file_checks_through_the_coordinator() {
    let h = harness(Checker::system()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    std::fs::write(&path, "x".repeat(100)).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let args = |path: &Path| FileArgs {
        path: path.display().to_string(),
        not_exist: false,
        mode: None,
        min_size: None,
        max_size: None,
        timeout_ms: None,
    };
    let run = |args: FileArgs| {
        let client = &h.client;
        async move { client.run::<HealthFile>(&args).await.unwrap() }
    };
    let mode = |bits| Some(FileMode::new(bits).unwrap());
    assert!(run(FileArgs { mode: mode(0o600), min_size: Some(100), max_size: Some(100), ..args(&path) })
        .await
        .passed());
    assert_fails(&run(FileArgs { mode: mode(0o644), ..args(&path) }).await, FailReason::WrongMode);
    assert_fails(&run(FileArgs { min_size: Some(101), ..args(&path) }).await, FailReason::TooSmall);
    assert_fails(&run(FileArgs { max_size: Some(99), ..args(&path) }).await, FailReason::TooLarge);
    let missing = dir.path().join("missing");
    assert_fails(&run(args(&missing)).await, FailReason::Missing);
    assert!(run(FileArgs { not_exist: true, ..args(&missing) }).await.passed());
    assert_fails(&run(FileArgs { not_exist: true, ..args(&path) }).await, FailReason::Exists);
    let both =
        task_error(h.client.run::<HealthFile>(&FileArgs { min_size: Some(2), max_size: Some(1), ..args(&path) }).await);
    assert_eq!(both.code, ErrorCode::InvalidArgs);
}

/// A `sleep` child, killed and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Self {
        Self(Command::new("sleep").arg("30").spawn().expect("spawn sleep"))
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn uptime(target: ProcessTarget, min_uptime_ms: u64) -> UptimeArgs {
    UptimeArgs { target, min_uptime_ms, timeout_ms: None }
}

#[tokio::test]
async fn uptime_of_a_process_by_pid() {
    let h = harness(Checker::system()).await;
    let mut sleeper = Sleeper::start();
    let pid = sleeper.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let up = h.client.run::<HealthUptime>(&uptime(ProcessTarget::Pid(pid), 100)).await.unwrap();
    assert!(up.passed(), "{up:?}");
    let young = h.client.run::<HealthUptime>(&uptime(ProcessTarget::Pid(pid), 60_000)).await.unwrap();
    assert_fails(&young, FailReason::TooYoung);
    sleeper.0.kill().unwrap();
    sleeper.0.wait().unwrap();
    let gone = h.client.run::<HealthUptime>(&uptime(ProcessTarget::Pid(pid), 0)).await.unwrap();
    assert_fails(&gone, FailReason::NotRunning);
    let bad = task_error(h.client.run::<HealthUptime>(&uptime(ProcessTarget::Cgroup("/tmp".into()), 0)).await);
    assert_eq!(bad.code, ErrorCode::InvalidArgs);
}

/// A real cgroup v2 directory for the test, removed on drop (its processes killed first).
struct TestCgroup {
    parent: PathBuf,
    service: PathBuf,
}

impl TestCgroup {
    /// `<cgroup2 mount>/cerana-health-test-<pid>/b1.web`, where cgroup v2 is mounted: at
    /// /sys/fs/cgroup on a node, at /sys/fs/cgroup/unified on a hybrid host.
    fn create() -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root".into());
        }
        let mount = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|m| m.join("cgroup.procs").exists() && m.join("cgroup.controllers").exists())
            .ok_or("no cgroup v2 mount")?;
        let parent = mount.join(format!("cerana-health-test-{}", std::process::id()));
        let service = parent.join("b1.web");
        std::fs::create_dir_all(&service).map_err(|e| format!("{}: {e}", service.display()))?;
        Ok(Self { parent, service })
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.service.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.service);
        let _ = std::fs::remove_dir(&self.parent);
    }
}

#[tokio::test]
async fn uptime_of_a_service_by_its_real_cgroup() {
    let cgroup = cerana_testbed::require_ok!(TestCgroup::create());
    let h = harness(Checker::new("/proc", &cgroup.parent)).await;
    let service = |min| uptime(ProcessTarget::Service("b1.web".into()), min);
    let empty = h.client.run::<HealthUptime>(&service(0)).await.unwrap();
    assert_fails(&empty, FailReason::NotRunning);
    {
        let sleeper = Sleeper::start();
        cgroup.enter(sleeper.pid());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(h.client.run::<HealthUptime>(&service(100)).await.unwrap().passed());
        assert_fails(&h.client.run::<HealthUptime>(&service(60_000)).await.unwrap(), FailReason::TooYoung);
        let by_path = uptime(ProcessTarget::Cgroup(cgroup.parent.display().to_string()), 100);
        let report = h.client.run::<HealthUptime>(&by_path).await.unwrap();
        assert!(report.passed(), "the parent counts its child cgroups' processes: {report:?}");
    }
    // The sleeper is gone: its cgroup is empty again.
    let after = h.client.run::<HealthUptime>(&service(0)).await.unwrap();
    assert_fails(&after, FailReason::NotRunning);
    assert_fails(
        &h.client.run::<HealthUptime>(&uptime(ProcessTarget::Service("b1.db".into()), 0)).await.unwrap(),
        FailReason::NotRunning,
    );
}
