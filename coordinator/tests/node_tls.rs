//! Nodes prove who they are with certificates from the cluster CA (issue #17): a coordinator
//! serving HTTPS with `client_ca` runs a forwarded task as the node the forwarder's certificate
//! names, with no shared token; a client with another CA's certificate does not get past the
//! handshake; one with no certificate still needs a bearer token. With `node_tls` the
//! certificate is taken from the node's TLS directory when it arrives.

mod common;

use cerana_client::{ClientIdentity, HttpClient};
use cerana_pki::{ClusterCa, NodeTls};
use cerana_protocol::tasks::node::{EchoArgs, NodeEcho};
use cerana_protocol::{ErrorCode, NodeUrl, Request};
use cerana_provider_sdk::Provider;
use common::*;
use std::net::Ipv4Addr;

fn node_tls(dir: &std::path::Path, ca: &ClusterCa, name: &str) -> NodeTls {
    let tls = NodeTls::new(dir.join(name));
    tls.issue_own(ca, name, &[Ipv4Addr::LOCALHOST.into()]).unwrap();
    tls
}

fn files(tls: &NodeTls) -> cerana_coordinator::TlsFiles {
    cerana_coordinator::TlsFiles { cert: tls.cert(), key: tls.key() }
}

#[tokio::test]
async fn nodes_forward_to_each_other_with_their_certificates() {
    let dir = TestDir::new();
    let root = dir.dir.path();
    let ca = ClusterCa::load_or_create(&root.join("ca")).unwrap();
    let (a, b) = (node_tls(root, &ca, "node-a"), node_tls(root, &ca, "node-b"));

    // Node B: HTTPS with its certificate, node certificates accepted, a cluster token for people.
    let mut b_config = config(&dir.socket("b"));
    b_config.name = "node-b".into();
    b_config.listen = Some("127.0.0.1:0".parse().unwrap());
    b_config.token = Some("cluster-token-0123456789abcdef".into());
    b_config.tls = Some(files(&b));
    b_config.client_ca = Some(b.ca());
    let node_b = start(b_config).await;
    let echo = Provider::new("echo", "test").task::<NodeEcho, _, _>(|_ctx, args: EchoArgs| async move { Ok(args) });
    let _echo = spawn_provider(echo, &dir.socket("b"));
    wait_for_provider(&client(&dir.socket("b")).await, "echo", 1).await;
    let b_url = NodeUrl::new(format!("https://127.0.0.1:{}", node_b.http_addr().unwrap().port())).unwrap();

    // Node A forwards with its certificate and no token at all.
    let mut a_config = config(&dir.socket("a"));
    a_config.name = "node-a".into();
    a_config.peer_ca = Some(a.ca());
    a_config.peer_identity = Some(files(&a));
    let _node_a = start(a_config).await;
    let via_a = client(&dir.socket("a")).await;
    let mut request = Request::for_task::<NodeEcho>(&EchoArgs { data: "hello".into() }).unwrap();
    request.node = Some(b_url.clone());
    let id = request.id;
    let echoed: EchoArgs = via_a.call(request).await.unwrap().decode().unwrap();
    assert_eq!(echoed.data, "hello");
    let with_token =
        HttpClient::new(b_url.clone(), Some("cluster-token-0123456789abcdef".into()), Some(&b.ca())).unwrap();
    let entry = with_token.get_json(&format!("/v1/tasks/{id}")).await.unwrap();
    assert!(entry["caller"].as_str().unwrap().ends_with("node:node-a"), "{entry}");

    // No certificate and no token: 401. A certificate from another CA: no TLS session at all.
    let anonymous = HttpClient::new(b_url.clone(), None, Some(&b.ca())).unwrap();
    let err = anonymous.get_json("/v1/providers").await.unwrap_err();
    assert_eq!(err.task_error().map(|e| e.code.clone()), Some(ErrorCode::Unauthenticated), "{err}");
    let other_ca = ClusterCa::load_or_create(&root.join("other-ca")).unwrap();
    let intruder = node_tls(&root.join("other"), &other_ca, "node-a");
    let identity = ClientIdentity { cert: &intruder.cert(), key: &intruder.key() };
    let forged = HttpClient::with_identity(b_url.clone(), None, Some(&b.ca()), Some(identity)).unwrap();
    let err = forged.get_json("/v1/providers").await.unwrap_err();
    assert!(err.task_error().is_none(), "another CA's certificate got an HTTP answer: {err}");

    // A node's certificate alone is enough for the API.
    let identity = ClientIdentity { cert: &a.cert(), key: &a.key() };
    let as_node = HttpClient::with_identity(b_url, None, Some(&a.ca()), Some(identity)).unwrap();
    assert!(as_node.get_json("/v1/providers").await.is_ok());
}

#[tokio::test]
async fn client_certificates_need_https() {
    let dir = TestDir::new();
    let mut config = config(&dir.socket("c"));
    config.client_ca = Some(dir.dir.path().join("ca.crt"));
    let err = cerana_coordinator::Coordinator::start(config).await.unwrap_err();
    assert!(err.to_string().contains("need HTTPS"), "{err}");
}

const TOKEN: &str = "cluster-token-0123456789abcdef";

/// Waits (bounded) until `client` gets `/v1/providers` answered.
async fn wait_answered(client: &HttpClient, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match client.get_json("/v1/providers").await {
            Ok(_) => return,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{what}: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `--node-tls`: a node's coordinator starts before its certificate exists (plain HTTP, as a
/// node outside a cluster), takes HTTPS within seconds of the certificate's arrival, keeps plain
/// HTTP for loopback, and forwards over mutual TLS with whichever certificate is current.
#[tokio::test]
async fn a_node_takes_https_once_its_certificate_arrives_and_forwards_with_it() {
    let dir = TestDir::new();
    let root = dir.dir.path();
    let ca = ClusterCa::load_or_create(&root.join("ca")).unwrap();
    let (a, b) = (NodeTls::new(root.join("a")), NodeTls::new(root.join("b")));

    let mut b_config = config(&dir.socket("b"));
    b_config.name = "node-b".into();
    b_config.listen = Some("127.0.0.1:0".parse().unwrap());
    b_config.token = Some(TOKEN.into());
    b_config.node_tls = Some(root.join("b"));
    let node_b = start(b_config).await;
    let echo = Provider::new("echo", "test").task::<NodeEcho, _, _>(|_ctx, args: EchoArgs| async move { Ok(args) });
    let _echo = spawn_provider(echo, &dir.socket("b"));
    wait_for_provider(&client(&dir.socket("b")).await, "echo", 1).await;
    let port = node_b.http_addr().unwrap().port();
    let plain_url = NodeUrl::new(format!("http://127.0.0.1:{port}")).unwrap();
    let https_url = NodeUrl::new(format!("https://127.0.0.1:{port}")).unwrap();
    let plain = HttpClient::new(plain_url, Some(TOKEN.into()), None).unwrap();
    assert!(plain.get_json("/v1/providers").await.is_ok(), "no certificate yet: plain HTTP");

    b.issue_own(&ca, "node-b", &[Ipv4Addr::LOCALHOST.into()]).unwrap();
    let https = HttpClient::new(https_url.clone(), Some(TOKEN.into()), Some(&b.ca())).unwrap();
    wait_answered(&https, "HTTPS once node B has its certificate").await;
    assert!(plain.get_json("/v1/providers").await.is_ok(), "plain HTTP from loopback still");

    // Node A, with its own certificate and no token, forwards to B over mutual TLS.
    a.issue_own(&ca, "node-a", &[Ipv4Addr::LOCALHOST.into()]).unwrap();
    let mut a_config = config(&dir.socket("a"));
    a_config.name = "node-a".into();
    a_config.node_tls = Some(root.join("a"));
    let _node_a = start(a_config).await;
    let via_a = client(&dir.socket("a")).await;
    let forward = |data: &str| {
        let mut request = Request::for_task::<NodeEcho>(&EchoArgs { data: data.into() }).unwrap();
        request.node = Some(https_url.clone());
        request
    };
    let request = forward("hello");
    let id = request.id;
    let echoed: EchoArgs = via_a.call(request).await.unwrap().decode().unwrap();
    assert_eq!(echoed.data, "hello");
    let entry = https.get_json(&format!("/v1/tasks/{id}")).await.unwrap();
    assert!(entry["caller"].as_str().unwrap().ends_with("node:node-a"), "{entry}");

    // Both certificates renewed (another CA's for B would not do): forwarding goes on with
    // the new ones.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    a.issue_own(&ca, "node-a", &[Ipv4Addr::LOCALHOST.into()]).unwrap();
    b.issue_own(&ca, "node-b", &[Ipv4Addr::LOCALHOST.into()]).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let echoed: EchoArgs = via_a.call(forward("again")).await.unwrap().decode().unwrap();
    assert_eq!(echoed.data, "again");

    // Without a certificate or a token: 401, with what to present.
    let anonymous = HttpClient::new(https_url, None, Some(&b.ca())).unwrap();
    let err = anonymous.get_json("/v1/providers").await.unwrap_err();
    assert_eq!(err.task_error().map(|e| e.code.clone()), Some(ErrorCode::Unauthenticated), "{err}");
}

/// Runs a command, its output if it succeeded.
fn sh(args: &[&str]) -> Result<std::process::Output, String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A network namespace (with a veth pair, both ends inside, one holding `address`) removed on
/// drop.
struct Netns(String);

impl Netns {
    fn new(address: &str) -> Result<Self, String> {
        let name = format!("cerana-coord-{}", std::process::id());
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns(name);
        sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", &ns.0, "link", "add", "mgmt0", "type", "veth", "peer", "name", "mgmt1"])?;
        sh(&["ip", "-n", &ns.0, "addr", "add", &format!("{address}/24"), "dev", "mgmt0"])?;
        sh(&["ip", "-n", &ns.0, "link", "set", "mgmt1", "up"])?;
        sh(&["ip", "-n", &ns.0, "link", "set", "mgmt0", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// Kills the child on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Off the node, in a namespace of the test's own with a management address: plain HTTP is
/// refused with a JSON error once the node has its certificate, HTTPS with a node certificate
/// is served, and a node certificate presented from an address it does not name is refused.
#[test]
fn off_loopback_a_node_with_a_certificate_speaks_https_only() {
    const ADDRESS: &str = "10.250.77.1";
    let strict = std::env::var_os("CERANA_TEST_STRICT").is_some();
    let ns = match Netns::new(ADDRESS) {
        Ok(ns) => ns,
        Err(e) if !strict => return eprintln!("skipped: cannot make a network namespace (root needed): {e}"),
        Err(e) => panic!("{e}"),
    };
    let dir = TestDir::new();
    let root = dir.dir.path();
    let ca = ClusterCa::load_or_create(&root.join("ca")).unwrap();
    let node = NodeTls::new(root.join("node"));
    node.issue_own(&ca, "node-b", &[ADDRESS.parse().unwrap()]).unwrap();
    let elsewhere = NodeTls::new(root.join("elsewhere"));
    elsewhere.issue_own(&ca, "node-c", &["10.250.77.9".parse().unwrap()]).unwrap();
    std::fs::write(root.join("token"), TOKEN).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let socket = dir.socket("b");
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_cerana-coordinator")])
        .args(["--socket", &path(&socket), "--listen", "0.0.0.0:8080", "--token-file", &path(&root.join("token"))])
        .args(["--node-tls", &path(&root.join("node"))])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _child = Killed(child);
    let url = format!("{ADDRESS}:8080/v1/providers");
    let curl = |extra: &[&str], scheme: &str| -> (String, String) {
        let mut args = vec!["ip", "netns", "exec", &ns.0, "curl", "-s", "--max-time", "5", "-w", "\n%{http_code}"];
        args.extend_from_slice(extra);
        let target = format!("{scheme}://{url}");
        args.push(&target);
        let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_owned(), body.to_owned())
    };
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (ca_file, cert, key) = (path(&node.ca()), path(&node.cert()), path(&node.key()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, body) = curl(&["--cacert", &ca_file, "-H", &auth], "https");
        if code == "200" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "HTTPS never served: {code} {body}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, body) = curl(&["-H", &auth], "http");
    assert_eq!(code, "403", "plain HTTP from {ADDRESS}: {body}");
    assert!(body.contains("permission_denied") && body.contains("HTTPS"), "{body}");
    let (code, body) = curl(&["--cacert", &ca_file, "--cert", &cert, "--key", &key], "https");
    assert_eq!(code, "200", "a node's certificate from an address it names: {body}");
    let (stray_cert, stray_key) = (path(&elsewhere.cert()), path(&elsewhere.key()));
    let (code, body) = curl(&["--cacert", &ca_file, "--cert", &stray_cert, "--key", &stray_key], "https");
    assert_eq!(code, "401", "node-c's certificate from {ADDRESS}: {body}");
    assert!(body.contains("node-c") && body.contains("does not name"), "{body}");
    let (code, body) = curl(&["--cacert", &ca_file], "https");
    assert_eq!(code, "401", "neither certificate nor token: {body}");
}
