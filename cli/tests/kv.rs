//! `cerana kv …` and `cerana get|describe|delete|set` against a coordinator with the kv and
//! clusterconf providers and a real etcd.

use cerana_coordinator::{Config, Coordinator};
use cerana_kv::{provider_with, LazyStore};
use cerana_store::StoreConfig;
use cerana_testbed::etcd::EtcdCluster;
use cerana_testbed::require_ok;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

fn cerana(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cerana"));
    command.arg("--socket").arg(socket).args(args).env_remove("CERANA_NODE").kill_on_drop(true);
    command
}

async fn run(socket: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), cerana(socket, args).output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), value, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_get_set_ls_watch_rm() {
    let etcd = require_ok!(tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("c.sock");
    let _coordinator = Coordinator::start(Config::new(&socket)).await.unwrap();
    let store = LazyStore::new(StoreConfig::new(etcd.endpoints()));
    tokio::spawn(provider_with(store.clone()).serve(socket.clone()));
    tokio::spawn(cerana_clusterconf::provider_with(store).serve(socket.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let index = loop {
        let (code, value, stderr) = run(&socket, &["kv", "set", "/app/a", "1", "-o", "json"]).await;
        if code == 0 {
            break value["index"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "kv never answered: {stderr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let (code, value, _) = run(&socket, &["kv", "get", "/app/a", "-o", "json"]).await;
    assert_eq!((code, value["value"].as_str(), value["index"].as_u64()), (0, Some("1"), Some(index)));
    let (code, _, stderr) = run(&socket, &["kv", "set", "/app/a", "2", "--index", "1"]).await;
    assert_eq!(code, 5, "a stale index is a conflict: {stderr}");
    assert!(stderr.contains("conflict"), "{stderr}");
    let (code, _, _) = run(&socket, &["kv", "set", "/app/a", "2", "--index", &index.to_string()]).await;
    assert_eq!(code, 0);
    run(&socket, &["kv", "set", "/app/b/c", "3"]).await;
    let (code, value, _) = run(&socket, &["kv", "ls", "/app/", "-o", "json"]).await;
    assert_eq!(code, 0);
    assert_eq!(value["keys"], serde_json::json!([{ "key": "/app/a" }, { "key": "/app/b/c" }]));
    let (_, value, _) = run(&socket, &["kv", "ls", "/app/", "--values", "-o", "json"]).await;
    assert_eq!(value["entries"][1]["value"], "3");
    let table = cerana(&socket, &["kv", "ls", "/app/"]).output().await.unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("/app/a") && table.contains("/app/b/c"), "{table}");

    let mut watch = cerana(&socket, &["kv", "watch", "/app/"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    tokio::time::sleep(Duration::from_millis(500)).await;
    run(&socket, &["kv", "set", "/app/a", "watched"]).await;
    let (code, value, _) = run(&socket, &["kv", "rm", "/app/b", "-r", "-o", "json"]).await;
    assert_eq!((code, value["deleted"].as_u64()), (0, Some(1)));
    let mut events = Vec::new();
    while events.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["type"] != "progress" {
            events.push(event);
        }
    }
    assert_eq!((events[0]["type"].as_str(), events[0]["value"].as_str()), (Some("put"), Some("watched")));
    assert_eq!((events[1]["type"].as_str(), events[1]["key"].as_str()), (Some("delete"), Some("/app/b/c")));
    watch.kill().await.unwrap();

    let (code, _, _) = run(&socket, &["kv", "rm", "/app/a"]).await;
    assert_eq!(code, 0);
    let (code, _, stderr) = run(&socket, &["kv", "get", "/app/a"]).await;
    assert_eq!(code, 4, "{stderr}");
    let (code, value, _) = run(&socket, &["kv", "members", "-o", "json"]).await;
    assert_eq!(code, 0);
    assert_eq!(value["members"][0]["leader"], true, "{value}");
    assert_eq!(value["members"][0]["healthy"], true, "{value}");
    let (code, _, stderr) = run(&socket, &["kv", "get", ""]).await;
    assert_eq!(code, 3, "an empty key is bad input: {stderr}");
}

/// A coordinator with the clusterconf provider over `etcd`, in a temporary directory.
struct ClusterconfLab {
    dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    _coordinator: Coordinator,
}

impl ClusterconfLab {
    async fn start(etcd: &EtcdCluster) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("c.sock");
        let coordinator = Coordinator::start(Config::new(&socket)).await.unwrap();
        let store = LazyStore::new(StoreConfig::new(etcd.endpoints()));
        tokio::spawn(cerana_clusterconf::provider_with(store).serve(socket.clone()));
        Self { dir, socket, _coordinator: coordinator }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_objects_from_files_and_back() {
    let etcd = require_ok!(tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await.unwrap());
    let lab = ClusterconfLab::start(&etcd).await;
    let (dir, socket) = (&lab.dir, lab.socket.clone());
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let dataset = file("d1.toml", "id = \"d1\"\nredundancy = 2\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, value, stderr) = run(&socket, &["set", "dataset", "-f", &dataset, "-o", "json"]).await;
        if code == 0 {
            assert_eq!(value["redundancy"], 2);
            break;
        }
        assert!(Instant::now() < deadline, "clusterconf never answered: {stderr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let service = file("s1.json", r#"{"id":"s1","dataset":"d1","cmd":["/bin/app"],"env":{"MODE":"prod"}}"#);
    assert_eq!(run(&socket, &["set", "service", "-f", &service]).await.0, 0);
    let bundle = file(
        "web.toml",
        "id = \"web\"\n[services.app]\nid = \"s1\"\n[services.app.overrides.env]\nMODE = \"canary\"\n[ports.443]\npublic = true\n",
    );
    let (code, _, stderr) = run(&socket, &["set", "bundle", "-f", &bundle]).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(&socket, &["set", "bundle", "-f", &bundle]).await;
    assert_eq!(code, 5, "a second create is a conflict: {stderr}");
    // --replace replaces whatever is declared now (and creates what is not).
    let (code, value, stderr) = run(&socket, &["set", "bundle", "--replace", "-f", &bundle, "-o", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(value["id"], "web");
    let changed = file("s1b.json", r#"{"id":"s1","dataset":"d1","cmd":["/bin/app2"],"env":{"MODE":"prod"}}"#);
    let (code, _, stderr) = run(&socket, &["set", "service", "--replace", "-f", &changed]).await;
    assert_eq!(code, 0, "{stderr}");
    let (_, value, _) = run(&socket, &["get", "service", "s1", "-o", "json"]).await;
    assert_eq!(value["cmd"][0], "/bin/app2");
    let fresh = file("s2.json", r#"{"id":"s2","dataset":"d1","cmd":["/bin/other"]}"#);
    assert_eq!(run(&socket, &["set", "service", "--replace", "-f", &fresh]).await.0, 0);
    assert_eq!(run(&socket, &["delete", "service", "s2"]).await.0, 0);

    let (code, value, _) = run(&socket, &["get", "bundles", "-o", "json"]).await;
    assert_eq!((code, value["bundles"][0]["id"].as_str()), (0, Some("web")));
    let (code, value, _) = run(&socket, &["get", "dataset", "d1", "-o", "json"]).await;
    assert_eq!((code, value["redundancy"].as_u64()), (0, Some(2)));
    let (code, value, _) = run(&socket, &["describe", "bundle", "web"]).await;
    assert_eq!(code, 0);
    assert_eq!(value["services"]["app"]["env"]["MODE"], "canary", "described with its services as run");
    let (code, _, stderr) = run(&socket, &["delete", "service", "s1"]).await;
    assert_eq!(code, 5, "a service a bundle uses stays: {stderr}");
    assert!(stderr.contains("bundle web"), "{stderr}");
    assert_eq!(run(&socket, &["delete", "bundle", "web"]).await.0, 0);
    assert_eq!(run(&socket, &["delete", "service", "s1"]).await.0, 0);
    let (code, value, _) = run(&socket, &["get", "nodes", "-o", "json"]).await;
    assert_eq!((code, value["nodes"].as_array().map(Vec::len)), (0, Some(0)));

    let broken = file("broken.toml", "id = \n");
    let (code, _, stderr) = run(&socket, &["set", "dataset", "-f", &broken]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("neither JSON"), "{stderr}");
    let wrong = file("wrong.json", r#"{"id":"d9","redundancy":0}"#);
    let (code, _, stderr) = run(&socket, &["set", "dataset", "-f", &wrong]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("redundancy: must be at least 1"), "{stderr}");
}

/// Output and exit code of `cerana` with text output (what an operator reads).
async fn run_text(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), cerana(socket, args).output()).await.unwrap().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `cerana plan|apply|delete -f`: a directory of files planned (exit 2, `+` lines), applied,
/// planned again (exit 0), changed (`~` with the field), refused at a stale revision, applied,
/// deleted; a bad file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_apply_and_delete_from_files() {
    let etcd = require_ok!(tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await.unwrap());
    let lab = ClusterconfLab::start(&etcd).await;
    let (dir, socket) = (&lab.dir, lab.socket.clone());
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("data.json"), r#"{"dataset": [{"id": "files", "redundancy": 2}]}"#).unwrap();
    let web = "[[service]]\nid = \"httpd\"\ndataset = \"files\"\ncmd = [\"/bin/httpd\", \"-f\"]\n\n\
               [[bundle]]\nid = \"web\"\n[bundle.services.httpd]\nid = \"httpd\"\n[bundle.ports.80]\npublic = true\n\
               external_port = 18080\n";
    std::fs::write(site.join("web.toml"), web).unwrap();
    let site = site.to_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, text) = loop {
        let (code, text, stderr) = run_text(&socket, &["plan", "-f", &site]).await;
        if code != 1 {
            break (code, text);
        }
        assert!(Instant::now() < deadline, "clusterconf never answered: {stderr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, 2, "changes to make: {text}");
    assert!(text.contains("+ dataset/files\n+ service/httpd\n+ bundle/web\n"), "{text}");
    assert!(text.contains("3 to create, 0 to change, 0 unchanged"), "{text}");
    assert!(text.contains("(placement not previewed: "), "no ticks provider here: {text}");

    let (code, text, stderr) = run_text(&socket, &["apply", "-f", &site]).await;
    assert_eq!(code, 0, "{text}{stderr}");
    assert!(text.starts_with("+ dataset/files (index ") && text.contains("+ bundle/web (index "), "{text}");
    let (code, text, _) = run_text(&socket, &["plan", "-f", &site]).await;
    assert_eq!(code, 0, "nothing left to change: {text}");
    let (_, plan, _) = run(&socket, &["plan", "-f", &site, "-o", "json"]).await;
    let revision = plan["revision"].as_u64().expect("a revision");
    assert!(revision > 0, "{plan}");

    // One field changed: planned as such, refused at a revision that is not the cluster's.
    std::fs::write(dir.path().join("site/data.json"), r#"{"dataset": [{"id": "files", "redundancy": 3}]}"#).unwrap();
    let (code, text, _) = run_text(&socket, &["plan", "-f", &site]).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("~ dataset/files\n    redundancy: 2 → 3\n"), "{text}");
    let stale = (revision - 1).to_string();
    let (code, _, stderr) = run_text(&socket, &["apply", "-f", &site, "--check-index", &stale]).await;
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("nothing applied"), "{stderr}");
    let (_, value, _) = run(&socket, &["get", "dataset", "files", "-o", "json"]).await;
    assert_eq!(value["redundancy"], 2, "the refused apply wrote nothing");
    let (code, text, stderr) = run_text(&socket, &["apply", "-f", &site, "--check-index", &revision.to_string()]).await;
    assert_eq!(code, 0, "{text}{stderr}");
    assert!(text.starts_with("~ dataset/files (index "), "only what changed is written: {text}");
    let (_, value, _) = run(&socket, &["get", "dataset", "files", "-o", "json"]).await;
    assert_eq!(value["redundancy"], 3);

    // A bad file: a clear error, nothing planned or written.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[dataset]]\nid = \"other\"\nredundancy = 2\nsize = 10\n").unwrap();
    let bad = bad.to_str().unwrap();
    let (code, _, stderr) = run_text(&socket, &["plan", "-f", bad]).await;
    assert!(code == 1 && stderr.contains("bad.toml") && stderr.contains("size"), "{code} {stderr}");
    let (code, _, stderr) = run_text(&socket, &["apply", "-f", bad]).await;
    assert_eq!(code, 3, "{stderr}");
    let (code, _, _) = run_text(&socket, &["get", "dataset", "other"]).await;
    assert_eq!(code, 4, "nothing written");

    // Deleted bundles first; twice is harmless.
    let (code, text, stderr) = run_text(&socket, &["delete", "-f", &site]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(text, "- bundle/web (deleted)\n- service/httpd (deleted)\n- dataset/files (deleted)\n");
    let (code, text, _) = run_text(&socket, &["delete", "-f", &site]).await;
    assert_eq!(code, 0);
    assert!(text.contains("- dataset/files (already gone)"), "{text}");
    let (code, text, _) = run_text(&socket, &["plan", "-f", &site]).await;
    assert_eq!(code, 2, "{text}");
}

/// `cerana inventory` without node heartbeats (a lone node): this node's hardware and software
/// from its own node-info and providers, and each declared dataset with where its copies are
/// (from the nodes' reports in the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_and_history_across_the_cluster() {
    let etcd = require_ok!(tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await.unwrap());
    let lab = ClusterconfLab::start(&etcd).await;
    let socket = lab.socket.clone();
    let store = LazyStore::new(StoreConfig::new(etcd.endpoints()));
    tokio::spawn(provider_with(store).serve(socket.clone()));
    let info_socket = socket.clone();
    tokio::spawn(async move { cerana_node_info::provider().serve(info_socket).await });
    let report = r#"{"node": "node-x", "at_ms": 1, "datasets": {"files": ["files@import"]}}"#;
    let dataset = lab.dir.path().join("files.toml");
    std::fs::write(&dataset, "id = \"files\"\nredundancy = 2\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for args in [
        vec!["kv", "set", "/cerana/v1/ticks/reports/node-x", report],
        vec!["set", "dataset", "-f", dataset.to_str().unwrap()],
    ] {
        loop {
            let (code, _, stderr) = run(&socket, &args).await;
            if code == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{args:?} never answered: {stderr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let (code, inventory, stderr) = run(&socket, &["inventory", "-o", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let node = &inventory["nodes"][0];
    assert!(node["facts"]["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{inventory}");
    assert!(node["facts"]["disks"].is_array() && node["facts"]["nics"].is_array(), "{inventory}");
    assert!(["uefi", "bios"].contains(&node["facts"]["firmware"]["kind"].as_str().unwrap_or("")), "{inventory}");
    assert!(node["providers"]["node-info"].is_string() && node["providers"]["kv"].is_string(), "{inventory}");
    let files = &inventory["datasets"][0];
    assert_eq!((files["id"].as_str(), files["copies"].as_u64()), (Some("files"), Some(1)), "{inventory}");
    assert_eq!(files["on"], serde_json::json!(["node-x"]));
    let (code, text, _) = run_text(&socket, &["inventory"]).await;
    assert_eq!(code, 0);
    assert!(text.starts_with("NODE") && text.contains("FIRMWARE") && text.contains("files"), "{text}");

    // The history: what changed something, newest first; reads only with --all.
    let (code, history, stderr) = run(&socket, &["history", "-o", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let tasks: Vec<&str> = history["entries"].as_array().unwrap().iter().filter_map(|e| e["task"].as_str()).collect();
    assert_eq!(tasks.first(), Some(&"update-dataset"), "{history}");
    assert!(tasks.contains(&"kv-set") && !tasks.contains(&"node-info"), "{tasks:?}");
    let (_, history, _) = run(&socket, &["history", "--all", "--limit", "500", "-o", "json"]).await;
    let all: Vec<&str> = history["entries"].as_array().unwrap().iter().filter_map(|e| e["task"].as_str()).collect();
    assert!(all.contains(&"node-info") && all.contains(&"kv-set"), "{all:?}");
    let (code, text, _) = run_text(&socket, &["history"]).await;
    assert!(code == 0 && text.starts_with("AT") && text.contains("update-dataset"), "{text}");
}
