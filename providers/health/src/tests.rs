use super::*;
use cerana_protocol::tasks::health::{FileMode, HealthStatus};
use tokio::net::TcpListener;

fn checker() -> Checker {
    Checker::new("/proc", "/nonexistent/services")
}

fn file_args(path: &Path) -> FileArgs {
    FileArgs {
        path: path.display().to_string(),
        not_exist: false,
        mode: None,
        min_size: None,
        max_size: None,
        timeout_ms: None,
    }
}

fn tcp_args(address: String, body: Option<&str>, regexp: Option<&str>, timeout_ms: u64) -> TcpResponseArgs {
    TcpResponseArgs {
        address,
        body: body.map(Into::into),
        regexp: regexp.map(Into::into),
        timeout_ms: Some(timeout_ms),
    }
}

#[tokio::test]
async fn file_checks_existence_mode_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"12345").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let c = checker();
    let report = c
        .file(&FileArgs {
            mode: Some(FileMode::new(0o640).unwrap()),
            min_size: Some(5),
            max_size: Some(5),
            ..file_args(&path)
        })
        .await
        .unwrap();
    assert!(report.passed(), "{report:?}");
    assert!(report.message.contains("0640"));
    let fail = |args: FileArgs| {
        let c = c.clone();
        async move { c.file(&args).await.unwrap().reason }
    };
    assert_eq!(
        fail(FileArgs { mode: Some(FileMode::new(0o644).unwrap()), ..file_args(&path) }).await,
        Some(FailReason::WrongMode)
    );
    assert_eq!(fail(FileArgs { min_size: Some(6), ..file_args(&path) }).await, Some(FailReason::TooSmall));
    assert_eq!(fail(FileArgs { max_size: Some(4), ..file_args(&path) }).await, Some(FailReason::TooLarge));
    assert_eq!(fail(FileArgs { not_exist: true, ..file_args(&path) }).await, Some(FailReason::Exists));
    let missing = dir.path().join("missing");
    assert_eq!(fail(file_args(&missing)).await, Some(FailReason::Missing));
    assert_eq!(fail(FileArgs { not_exist: true, ..file_args(&missing) }).await, None);
    let bad = c.file(&FileArgs { path: "relative".into(), ..file_args(&path) }).await.unwrap_err();
    assert!(bad.0.contains("not absolute"));
}

#[tokio::test]
async fn tcp_passes_on_connect_and_on_a_matching_response() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // Answers "PONG <what it got>" to whatever it receives, then closes.
    let server = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let _ = socket.write_all(format!("PONG {}\n", String::from_utf8_lossy(&buf[..n])).as_bytes()).await;
            });
        }
    });
    let c = checker();
    assert!(c.tcp_response(&tcp_args(address.clone(), None, None, 2000)).await.unwrap().passed());
    let matched = c.tcp_response(&tcp_args(address.clone(), Some("ping"), Some(r"^PONG \w+"), 2000)).await.unwrap();
    assert!(matched.passed(), "{matched:?}");
    let unmatched = c.tcp_response(&tcp_args(address.clone(), Some("ping"), Some("^HELLO"), 2000)).await.unwrap();
    assert_eq!(unmatched.reason, Some(FailReason::NoMatch), "{unmatched:?}");
    assert!(unmatched.message.contains("PONG ping"), "what was received is shown: {unmatched:?}");
    let bad = c.tcp_response(&tcp_args(address, None, Some("(unclosed"), 2000)).await.unwrap_err();
    assert!(bad.0.contains("regexp"), "{bad}");
    server.abort();
}

#[tokio::test]
async fn tcp_fails_on_a_closed_port_and_times_out_on_a_silent_one() {
    // A port that was just free: bind, note it, close.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let c = checker();
    let refused = c.tcp_response(&tcp_args(closed, None, None, 2000)).await.unwrap();
    assert_eq!(refused.reason, Some(FailReason::Refused), "{refused:?}");

    // Accepts, sends a little, then says nothing more.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(b"hello").await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let started = Instant::now();
    let silent = c.tcp_response(&tcp_args(address, None, Some("never"), 300)).await.unwrap();
    assert_eq!(silent.status, HealthStatus::Fail);
    assert_eq!(silent.reason, Some(FailReason::Timeout), "{silent:?}");
    assert!(silent.message.contains("hello"), "partial response shown: {silent:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout holds");
    server.abort();
}

#[tokio::test]
async fn uptime_of_a_pid_a_cgroup_and_a_service() {
    let c = checker();
    let me = UptimeArgs { target: ProcessTarget::Pid(std::process::id()), min_uptime_ms: 0, timeout_ms: None };
    assert!(c.uptime(&me).await.unwrap().passed());
    let young = c.uptime(&UptimeArgs { min_uptime_ms: 86_400_000 * 365, ..me.clone() }).await.unwrap();
    assert_eq!(young.reason, Some(FailReason::TooYoung), "{young:?}");
    // Pids wrap well below this.
    let gone = c.uptime(&UptimeArgs { target: ProcessTarget::Pid(u32::MAX - 1), ..me.clone() }).await.unwrap();
    assert_eq!(gone.reason, Some(FailReason::NotRunning));
    assert!(c.uptime(&UptimeArgs { target: ProcessTarget::Pid(0), ..me.clone() }).await.is_err());

    // A services cgroup laid out as files: the oldest process counts, vanished ones are skipped.
    let services = tempfile::tempdir().unwrap();
    let web = services.path().join("web");
    std::fs::create_dir_all(web.join("payload")).unwrap();
    std::fs::write(web.join("cgroup.procs"), format!("{}\n", u32::MAX - 1)).unwrap();
    std::fs::write(web.join("payload/cgroup.procs"), format!("{}\n1\n", std::process::id())).unwrap();
    std::fs::create_dir_all(services.path().join("empty")).unwrap();
    std::fs::write(services.path().join("empty/cgroup.procs"), "").unwrap();
    let c = Checker::new("/proc", services.path());
    let service = |id: &str, min_uptime_ms| UptimeArgs {
        target: ProcessTarget::Service(id.into()),
        min_uptime_ms,
        timeout_ms: None,
    };
    let report = c.uptime(&service("web", 1)).await.unwrap();
    assert!(report.passed(), "pid 1 has been up longer than this test: {report:?}");
    assert_eq!(c.uptime(&service("empty", 0)).await.unwrap().reason, Some(FailReason::NotRunning));
    let none = c.uptime(&service("none", 0)).await.unwrap();
    assert_eq!(none.reason, Some(FailReason::NotRunning));
    assert!(none.message.contains("no cgroup"), "{none:?}");
    let missing_cgroup = UptimeArgs { target: ProcessTarget::Cgroup("/sys/fs/cgroup/cerana-no-such".into()), ..me };
    assert_eq!(c.uptime(&missing_cgroup).await.unwrap().reason, Some(FailReason::NotRunning));
}

#[test]
fn excerpts_are_short_and_quoted() {
    assert_eq!(excerpt("ab\n"), "\"ab\\n\"");
    assert!(excerpt(&"é".repeat(500)).ends_with("..."));
}
