//! The `cerana` binary against a real coordinator with the node-info provider.

use cerana_coordinator::{Config, Coordinator};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cerana(socket: &Path, args: &[&str]) -> Run {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(env!("CARGO_BIN_EXE_cerana"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env_remove("CERANA_NODE")
            .env_remove("CERANA_TOKEN_FILE")
            .env_remove("CERANA_TOKEN")
            .output(),
    )
    .await
    .expect("cerana finishes")
    .expect("cerana runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn node(dir: &Path, token: Option<&str>) -> (Coordinator, std::path::PathBuf) {
    let socket = dir.join("c.sock");
    let mut config = Config::new(&socket);
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.token = token.map(str::to_owned);
    let coordinator = Coordinator::start(config).await.unwrap();
    let provider_socket = socket.clone();
    tokio::spawn(async move { cerana_node_info::provider().serve(provider_socket).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = cerana(&socket, &["providers", "-o", "json"]).await;
        if run.stdout.contains("\"node-info\"") {
            break;
        }
        assert!(Instant::now() < deadline, "node-info never registered: {}", run.stderr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (coordinator, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_tasks_and_shows_history() {
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, socket) = node(dir.path(), None).await;

    let run = cerana(&socket, &["task", "run", "node-info"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        run.stdout.contains(&format!("hostname {}", hostname.trim())) || run.stdout.contains(hostname.trim()),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("memory.total_bytes"), "{}", run.stdout);

    let run = cerana(&socket, &["task", "run", "node-echo", "data=hello", "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(value["data"], "hello");

    let run = cerana(&socket, &["task", "history", "--limit", "5"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", run.stdout);
    assert!(run.stdout.contains("node-info") && run.stdout.contains("done"), "{}", run.stdout);
    // A page with older entries after it is still a table; the next page is one flag away.
    let run = cerana(&socket, &["task", "history", "--limit", "1"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("ID") && run.stdout.lines().count() == 2, "{}", run.stdout);
    let before = run.stderr.trim().rsplit(' ').next().unwrap_or_default();
    let run = cerana(&socket, &["task", "history", "--limit", "1", "--before", before]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("ID"), "{}", run.stdout);

    let run = cerana(&socket, &["task", "list"]).await;
    assert!(run.stdout.lines().any(|l| l.starts_with("node-info ") && l.contains("node-info(50)")), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_follow_the_error_class() {
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, socket) = node(dir.path(), None).await;
    let run = cerana(&socket, &["task", "run", "no-such-task"]).await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("unknown_task"), "{}", run.stderr);
    let run = cerana(&socket, &["task", "run", "node-echo", "data=1"]).await;
    assert_eq!(run.code, 3, "a number is not a string: {}", run.stderr);
    assert!(run.stderr.contains("invalid_args"), "{}", run.stderr);
    let run = cerana(&socket, &["task", "run", "node-echo", "oops"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = cerana(&socket, &["task", "run", "Bad/Name"]).await;
    assert_eq!(run.code, 2, "clap rejects invalid task names: {}", run.stderr);
    let run = cerana(&socket, &["task", "get", "00000000-0000-4000-8000-000000000000"]).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    let run = cerana(&dir.path().join("absent.sock"), &["status"]).await;
    assert_eq!(run.code, 7, "{}", run.stderr);
    let help = cerana(&socket, &["--help"]).await;
    assert!(help.stdout.contains("EXIT CODES") && help.stdout.contains("key=value"), "{}", help.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_to_a_remote_node_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = "cli-test-token-0123456789";
    let (coordinator, socket) = node(dir.path(), Some(token)).await;
    let url = format!("http://{}", coordinator.http_addr().unwrap());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    let run = cerana(&socket, &["--node", &url, "task", "run", "node-info", "-o", "json"]).await;
    assert_eq!(run.code, 8, "no token: {}", run.stderr);
    let run = cerana(
        &socket,
        &["--node", &url, "--token-file", token_file.to_str().unwrap(), "task", "run", "node-info", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(value["cpu"]["count"].as_u64().unwrap() >= 1);

    let run = cerana(
        &socket,
        &[
            "--node",
            &url,
            "--token-file",
            token_file.to_str().unwrap(),
            "task",
            "run",
            "node-echo",
            "data=later",
            "--no-wait",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap()["id"].as_str().unwrap().to_owned();
    let run = cerana(
        &socket,
        &["--node", &url, "--token-file", token_file.to_str().unwrap(), "task", "get", &id, "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let entry: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(entry["result"]["data"], "later");

    // A cluster's configuration gives its credential to --node as well.
    let config = dir.path().join("cerana.toml");
    std::fs::write(&config, "cluster = \"lab\"\nnodes = [\"http://127.0.0.1:1\"]\ntoken_file = \"token\"\n").unwrap();
    let config = config.to_str().unwrap();
    let run = cerana(&socket, &["--config", config, "--node", &url, "task", "run", "node-info", "-o", "json"]).await;
    assert_eq!(run.code, 0, "--node with the configuration's token: {}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_never_reach_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, socket) = node(dir.path(), None).await;
    // Sets the window title, rings the bell and clears the screen when printed raw.
    let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m";
    let run = cerana(&socket, &["task", "run", "node-echo", &format!("data={hostile}")]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.chars().any(|c| c.is_control() && c != '\n'), "raw control characters: {:?}", run.stdout);
    assert!(run.stdout.contains(r"\x1b]0;pwned\x07\x1b[2J\u{9b}31m"), "{:?}", run.stdout);
    // JSON output escapes them itself.
    let run = cerana(&socket, &["task", "run", "node-echo", &format!("data={hostile}"), "-o", "json"]).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap()["data"], hostile);
    // Error messages carry what the caller or a peer sent.
    let unknown_field = serde_json::json!({ "data": "x", hostile: 1 }).to_string();
    let run = cerana(&socket, &["task", "run", "node-echo", &unknown_field]).await;
    assert_ne!(run.code, 0);
    assert!(!run.stderr.chars().any(|c| c.is_control() && c != '\n'), "raw control characters: {:?}", run.stderr);
    assert!(run.stderr.contains(r"\x1b]0;pwned"), "{:?}", run.stderr);
}
