//! Nodes prove who they are with certificates from the cluster CA (issue #17): a coordinator
//! serving HTTPS with `client_ca` runs a forwarded task as the node the forwarder's certificate
//! names, with no shared token; a client with another CA's certificate does not get past the
//! handshake; one with no certificate still needs a bearer token.

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
