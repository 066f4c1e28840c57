//! Scoped API tokens (issue #17): a coordinator checks bearers against its tokens file, runs
//! only what their role allows, journals who asked, and refuses forged, expired, revoked and
//! URL-borne credentials with typed errors.

mod common;

use cerana_client::HttpClient;
use cerana_credentials::{write_tokens_file, ApiToken};
use cerana_protocol::tasks::auth::{Role, TokenCreateArgs};
use cerana_protocol::tasks::node::{EchoArgs, NodeEcho};
use cerana_protocol::{ErrorCode, NoArgs, NodeUrl, Request, StreamId};
use cerana_provider_sdk::Provider;
use common::*;

mod test_tasks {
    cerana_protocol::declare_tasks! {
        TestWrite = "test-write", Write, "Changes nothing, but is classified write", cerana_protocol::NoArgs => cerana_protocol::NoArgs;
    }
}
use test_tasks::TestWrite;

const CLUSTER_TOKEN: &str = "cluster-token-0123456789abcdef";

fn provider() -> Provider {
    Provider::new("tokens-test", "test")
        .task::<NodeEcho, _, _>(|_ctx, args: EchoArgs| async move { Ok(args) })
        .task::<TestWrite, _, _>(|_ctx, _args: NoArgs| async move { Ok(NoArgs {}) })
}

fn mint(role: Role, ttl_seconds: u64, now: u64) -> (ApiToken, cerana_protocol::tasks::auth::TokenRecord) {
    let token = ApiToken::mint().unwrap();
    let record = token.record(&TokenCreateArgs { role, ttl_seconds, description: None }, now);
    (token, record)
}

fn error_code(err: &cerana_client::ClientError) -> Option<ErrorCode> {
    err.task_error().map(|e| e.code.clone())
}

async fn raw_http(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf)).await;
    let n = read.expect("an answer within 5 s").unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn scoped_tokens_run_what_their_role_allows() {
    let dir = TestDir::new();
    let tokens_path = dir.dir.path().join("api-tokens");
    let now = cerana_credentials::unix_now();
    let (reader, reader_record) = mint(Role::Read, 600, now);
    let (operator, operator_record) = mint(Role::Operator, 600, now);
    let (expired, mut expired_record) = mint(Role::Admin, 600, now - 1_000);
    expired_record.expires_at = now - 1;
    let records = vec![reader_record, operator_record.clone(), expired_record];
    // The quorum agent leaves expired records out; this file holds one anyway, as a node whose
    // agent has not rewritten it yet would.
    let text = serde_json::to_vec(&cerana_credentials::TokensDocument { tokens: records }).unwrap();
    std::fs::write(&tokens_path, text).unwrap();

    let socket = dir.socket("c");
    let mut config = config(&socket);
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.token = Some(CLUSTER_TOKEN.into());
    config.tokens_file = Some(tokens_path.clone());
    let coordinator = start(config).await;
    let _provider = spawn_provider(provider(), &socket);
    let local = client(&socket).await;
    wait_for_provider(&local, "tokens-test", 1).await;
    let port = coordinator.http_addr().unwrap().port();
    let url = NodeUrl::new(format!("http://127.0.0.1:{port}")).unwrap();
    let as_bearer = |token: String| HttpClient::new(url.clone(), Some(token), None).unwrap();

    // Each call is a new request: the journal refuses a reused id.
    let echo = || Request::for_task::<NodeEcho>(&EchoArgs { data: "hi".into() }).unwrap();
    let write = || Request::for_task::<TestWrite>(&NoArgs {}).unwrap();

    // A read token: read tasks and pages, no write task, no stream upload.
    let read_client = as_bearer(reader.reveal());
    assert!(read_client.call(&echo()).await.unwrap().outcome.is_ok());
    let denied = read_client.call(&write()).await.unwrap().outcome.unwrap_err();
    assert_eq!(denied.code, ErrorCode::PermissionDenied, "{denied}");
    assert!(denied.message.contains("(role read) may not run test-write"), "{denied}");
    let denied = read_client.submit(&write()).await.unwrap_err();
    assert_eq!(error_code(&denied), Some(ErrorCode::PermissionDenied), "{denied}");
    assert!(read_client.get_json("/v1/providers").await.is_ok());
    let upload = format!(
        "POST /v1/streams/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
        StreamId::random(),
        reader.reveal()
    );
    let raw = raw_http(port, &upload).await;
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");

    // An operator token runs the write task; the cluster token runs everything.
    assert!(as_bearer(operator.reveal()).call(&write()).await.unwrap().outcome.is_ok());
    assert!(as_bearer(CLUSTER_TOKEN.into()).call(&write()).await.unwrap().outcome.is_ok());

    // The journal says who asked, the refusal included.
    let journal = as_bearer(CLUSTER_TOKEN.into()).get_json("/v1/tasks?limit=20").await.unwrap();
    let entries = journal["entries"].as_array().unwrap();
    let reader_id = format!("token:{}", reader.id());
    let refused = entries
        .iter()
        .find(|e| e["task"] == "test-write" && e["caller"].as_str().unwrap().ends_with(&reader_id))
        .expect("the refused write is journaled with its caller");
    assert_eq!(refused["state"], "failed");
    assert_eq!(refused["error"]["code"], "permission_denied");
    assert!(entries.iter().any(|e| e["caller"].as_str().unwrap().ends_with("cluster-token")));

    // Forged, expired, unknown: 401 with the reason, never the secret.
    let forged = format!("cerana-{}-{}", reader.id(), "0".repeat(64));
    let unknown = ApiToken::mint().unwrap().reveal();
    for (bearer, why) in [
        (forged, "does not match"),
        (expired.reveal(), "expired"),
        (unknown, "not known"),
        ("cerana-x".into(), "not a cerana API token"),
    ] {
        let err = as_bearer(bearer.clone()).call(&echo()).await.unwrap_err();
        assert_eq!(error_code(&err), Some(ErrorCode::Unauthenticated), "{err}");
        assert!(err.to_string().contains(why), "{why}: {err}");
        assert!(!err.to_string().contains(&bearer[bearer.len().saturating_sub(20)..]), "{err}");
    }

    // A token in the URL is refused outright, valid or not.
    let in_url = format!(
        "GET /v1/providers?token={} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLUSTER_TOKEN}\r\n\r\n",
        reader.reveal()
    );
    let raw = raw_http(port, &in_url).await;
    assert!(raw.starts_with("HTTP/1.1 400") && raw.contains("never in a URL"), "{raw}");

    // Revoked: the agent rewrites the file without it, and the next request is refused.
    write_tokens_file(&tokens_path, &[operator_record], now).unwrap();
    let err = read_client.call(&echo()).await.unwrap_err();
    assert_eq!(error_code(&err), Some(ErrorCode::Unauthenticated), "{err}");
    assert!(as_bearer(operator.reveal()).call(&echo()).await.unwrap().outcome.is_ok());
}

#[tokio::test]
async fn a_node_without_a_tokens_file_refuses_scoped_tokens() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let mut config = config(&socket);
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.token = Some(CLUSTER_TOKEN.into());
    let coordinator = start(config).await;
    let url = NodeUrl::new(format!("http://127.0.0.1:{}", coordinator.http_addr().unwrap().port())).unwrap();
    let token = ApiToken::mint().unwrap().reveal();
    let err = HttpClient::new(url, Some(token), None).unwrap().get_json("/v1/providers").await.unwrap_err();
    assert_eq!(error_code(&err), Some(ErrorCode::Unauthenticated), "{err}");
    assert!(err.to_string().contains("no tokens file"), "{err}");
}

#[tokio::test]
async fn a_cluster_token_shaped_like_a_scoped_token_still_works() {
    let dir = TestDir::new();
    let tokens_path = dir.dir.path().join("api-tokens");
    write_tokens_file(&tokens_path, &[], cerana_credentials::unix_now()).unwrap();
    let socket = dir.socket("c");
    let mut config = config(&socket);
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    let cluster_token = ApiToken::mint().unwrap().reveal();
    config.token = Some(cluster_token.clone());
    config.tokens_file = Some(tokens_path);
    let coordinator = start(config).await;
    let url = NodeUrl::new(format!("http://127.0.0.1:{}", coordinator.http_addr().unwrap().port())).unwrap();
    let as_bearer = |token: String| HttpClient::new(url.clone(), Some(token), None).unwrap();
    assert!(as_bearer(cluster_token).get_json("/v1/providers").await.is_ok());
    let other = ApiToken::mint().unwrap().reveal();
    let err = as_bearer(other).get_json("/v1/providers").await.unwrap_err();
    assert_eq!(error_code(&err), Some(ErrorCode::Unauthenticated), "{err}");
}
