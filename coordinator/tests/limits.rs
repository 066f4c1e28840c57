//! Issue #15: the coordinator stays bounded under load and hostile input, and edge cases get
//! right answers (own URL, forwarding with a local stream, the HTTP API's error shape).

mod common;

use cerana_client::{open_stream, HttpClient};
use cerana_protocol::stream::ChunkWriter;
use cerana_protocol::tasks::coordinator::{CoordinatorTaskGet, TaskGetArgs};
use cerana_protocol::tasks::node::{EchoArgs, NodeEcho};
use cerana_protocol::{ErrorCode, NoArgs, NodeUrl, Request, RequestId, StreamDirection, StreamHandle, StreamId};
use cerana_provider_sdk::Provider;
use common::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

mod test_tasks {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct BlobArgs {
        pub bytes: usize,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Counted {
        pub bytes: u64,
    }

    cerana_protocol::declare_tasks! {
        TestBlob = "test-blob", Write, "Answers with a string of the requested size", BlobArgs => EchoArgs;
        TestCountInput = "test-count-input", Write, "Counts the bytes of its input stream", NoArgs => Counted;
    }
}
use test_tasks::*;

const TOKEN: &str = "limits-token-0123456789abcdef";

fn echo_provider() -> Provider {
    Provider::new("echo", "test").task::<NodeEcho, _, _>(|_ctx, args: EchoArgs| async move { Ok(args) })
}

fn blob_provider() -> Provider {
    Provider::new("blob", "test")
        .task::<TestBlob, _, _>(|_ctx, args: BlobArgs| async move { Ok(EchoArgs { data: "x".repeat(args.bytes) }) })
}

fn counter_provider() -> Provider {
    Provider::new("counter", "test").task::<TestCountInput, _, _>(|ctx, _args: NoArgs| async move {
        let mut reader = ctx.input_stream().await?;
        let mut bytes = 0u64;
        while let Some(chunk) = reader
            .next_chunk()
            .await
            .map_err(|e| cerana_protocol::TaskError::new(ErrorCode::StreamError, e.to_string()))?
        {
            bytes += chunk.len() as u64;
        }
        Ok(Counted { bytes })
    })
}

fn echo(data: &str) -> EchoArgs {
    EchoArgs { data: data.into() }
}

/// A coordinator serving HTTP on loopback with an echo provider, and a client of it.
async fn echo_node(dir: &TestDir) -> (cerana_coordinator::Coordinator, cerana_client::UnixClient, JoinHandle<()>) {
    let socket = dir.socket("c");
    let mut cfg = config(&socket);
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = start(cfg).await;
    let provider = spawn_provider(echo_provider(), &socket);
    let client = client(&socket).await;
    wait_for_provider(&client, "echo", 1).await;
    (coordinator, client, provider)
}

fn url_of(addr: std::net::SocketAddr) -> NodeUrl {
    NodeUrl::new(format!("http://{addr}")).unwrap()
}

/// One HTTP/1.1 exchange on a fresh connection: status, content type and body.
async fn http_exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut reply)).await.expect("reply in time").unwrap();
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block") + 4;
    let header = String::from_utf8_lossy(&reply[..split]).into_owned();
    let status = header.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = header
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    (status, content_type, reply[split..].to_vec())
}

/// Asserts an HTTP error answer is the API's JSON error shape with `code`.
fn assert_json_error(what: &str, (status, content_type, body): &(u16, String, Vec<u8>), want: u16, code: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(*status, want, "{what}: {text}");
    assert!(content_type.starts_with("application/json"), "{what}: content type {content_type:?}, body {text}");
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    assert_eq!(json["error"]["code"], code, "{what}: {json}");
    assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {json}");
}

/// Item 1: 1,000 tasks with 64 KB results and a listing with a huge limit keep a coordinator
/// process under 64 MiB; the listing is one bounded page that says how to get the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_and_a_huge_listing_keep_the_coordinator_small() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let (coordinator, url) = CoordinatorProcess::spawn_with_http(&socket, &[]);
    let probe = client(&socket).await;
    let _provider = spawn_provider(blob_provider(), &socket);
    wait_for_provider(&probe, "blob", 1).await;

    let mut callers = Vec::new();
    for _ in 0..8 {
        let client = client(&socket).await;
        callers.push(tokio::spawn(async move {
            for _ in 0..125 {
                let result = client.run::<TestBlob>(&BlobArgs { bytes: 64_000 }).await.unwrap();
                assert_eq!(result.data.len(), 64_000);
            }
        }));
    }
    for caller in callers {
        tokio::time::timeout(Duration::from_secs(120), caller).await.expect("callers finish").unwrap();
    }

    eprintln!("peak before listing: {} MiB", coordinator.peak_rss_kib() / 1024);
    let http = HttpClient::new(url, None, None).unwrap();
    let page = http.get_json("/v1/tasks?limit=100000000").await.unwrap();
    let entries = page["entries"].as_array().unwrap();
    assert!(entries.len() <= 1_000, "a page holds at most 1,000 entries, got {}", entries.len());
    let result_bytes: usize = entries.iter().filter_map(|e| e.get("result")).map(|r| r.to_string().len()).sum();
    assert!(result_bytes <= 8 << 20, "{result_bytes} bytes of results in one page");
    // Older entries are one `before=` away, newest first, without repeats.
    let mut seen: std::collections::HashSet<String> =
        entries.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    let mut omitted = entries.iter().filter(|e| e.get("result_omitted").is_some()).count();
    let mut before = page["next_before"].as_u64();
    let mut pages = 1;
    while let Some(cursor) = before {
        let page = http.get_json(&format!("/v1/tasks?limit=400&before={cursor}")).await.unwrap();
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 400);
        for entry in entries {
            assert!(seen.insert(entry["id"].as_str().unwrap().to_owned()), "an entry came twice");
            omitted += usize::from(entry.get("result_omitted").is_some());
        }
        before = page["next_before"].as_u64();
        pages += 1;
        assert!(pages < 100, "paging must end");
    }
    assert!(seen.len() >= 1_000, "every task is listed across the pages: {}", seen.len());
    assert!(omitted > 0, "results dropped to stay within the budget are marked");

    let peak_mib = coordinator.peak_rss_kib() / 1024;
    eprintln!("coordinator peak RSS after 1,000 x 64 KB results and the listing: {peak_mib} MiB");
    assert!(peak_mib < 64, "coordinator peak RSS {peak_mib} MiB");
}

/// Item 3: a request that fits the HTTP body limit but not a frame to the provider is refused as
/// too large, and the provider stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_too_large_for_a_frame_is_refused_as_such() {
    let dir = TestDir::new();
    let (coordinator, client, _provider) = echo_node(&dir).await;
    let addr = coordinator.http_addr().unwrap();

    let body_len = cerana_protocol::frame::MAX_FRAME_LEN - 1;
    let head = br#"{"task":"node-echo","args":{"data":""#;
    let tail = br#""}}"#;
    let mut body = Vec::with_capacity(body_len);
    body.extend_from_slice(head);
    body.resize(body_len - tail.len(), b'a');
    body.extend_from_slice(tail);
    let reply = http_exchange(addr, "POST /v1/tasks HTTP/1.1\r\nContent-Type: application/json", &body).await;
    assert_json_error("a 16 MiB - 1 request", &reply, 413, "frame_too_large");

    wait_for_provider(&client, "echo", 1).await;
    assert_eq!(client.run::<NodeEcho>(&echo("still here")).await.unwrap(), echo("still here"));
}

/// Item 4: a request naming this coordinator's own URL (in any spelling) runs here.
#[tokio::test]
async fn a_request_naming_this_coordinator_runs_locally() {
    let dir = TestDir::new();
    let (coordinator, client, _provider) = echo_node(&dir).await;
    let port = coordinator.http_addr().unwrap().port();

    for own in [
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}"),
        format!("http://LocalHost:{port}//"),
    ] {
        let mut request = Request::for_task::<NodeEcho>(&echo("here")).unwrap();
        request.node = Some(NodeUrl::new(own.clone()).unwrap());
        let id = request.id;
        let response = client.call(request).await.unwrap();
        assert_eq!(response.decode::<EchoArgs>().unwrap_or_else(|e| panic!("{own}: {e}")), echo("here"));
        let entry = client.run::<CoordinatorTaskGet>(&TaskGetArgs { id }).await.unwrap();
        assert_eq!(entry.forwarded_to, None, "{own} is this coordinator");
    }

    // A coordinator on every address knows its addresses too.
    let mut open = config(&dir.socket("open"));
    open.listen = Some("0.0.0.0:0".parse().unwrap());
    open.token = Some(TOKEN.into());
    let open = start(open).await;
    let port = open.http_addr().unwrap().port();
    let _provider = spawn_provider(echo_provider(), &dir.socket("open"));
    let open_client = common::client(&dir.socket("open")).await;
    wait_for_provider(&open_client, "echo", 1).await;
    let mut request = Request::for_task::<NodeEcho>(&echo("here too")).unwrap();
    request.node = Some(NodeUrl::new(format!("http://127.0.0.1:{port}")).unwrap());
    assert_eq!(open_client.call(request).await.unwrap().decode::<EchoArgs>().unwrap(), echo("here too"));
}

/// Item 5: forwarding a task whose input stream is local to this coordinator; the peer pulls
/// the stream from the URL this coordinator derives for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_a_task_with_a_local_stream() {
    let dir = TestDir::new();
    let mut remote = config(&dir.socket("remote"));
    remote.name = "remote".into();
    remote.listen = Some("127.0.0.1:0".parse().unwrap());
    remote.token = Some(TOKEN.into());
    remote.peer_token = Some(TOKEN.into());
    let remote = start(remote).await;
    let remote_url = url_of(remote.http_addr().unwrap());
    let _counter = spawn_provider(counter_provider(), &dir.socket("remote"));
    wait_for_provider(&client(&dir.socket("remote")).await, "counter", 1).await;

    let mut local = config(&dir.socket("local"));
    local.listen = Some("127.0.0.1:0".parse().unwrap());
    local.peer_token = Some(TOKEN.into());
    let _local = start(local).await;
    let socket = dir.socket("local");
    let client = client(&socket).await;

    const BYTES: usize = 3 << 20;
    let id = StreamId::random();
    let producer = {
        let socket = socket.clone();
        tokio::spawn(async move {
            let conn = open_stream(&socket, StreamHandle::local(id), StreamDirection::Put).await.unwrap();
            let mut writer = ChunkWriter::new(conn);
            for i in 0..BYTES / (256 * 1024) {
                writer.write_chunk(&pattern_chunk(i as u64, 256 * 1024)).await.unwrap();
            }
            writer.finish().await.unwrap();
        })
    };
    let mut request = Request::for_task::<TestCountInput>(&NoArgs {}).unwrap();
    request.node = Some(remote_url);
    request.stream = Some(StreamHandle::local(id));
    request.timeout_ms = Some(30_000);
    let response = client.call(request).await.unwrap();
    let counted: Counted = response.decode().unwrap_or_else(|e| panic!("forwarding with a local stream: {e}"));
    assert_eq!(counted.bytes, BYTES as u64);
    tokio::time::timeout(Duration::from_secs(10), producer).await.unwrap().unwrap();
}

/// Item 6: the scheme of `Authorization` is case-insensitive (RFC 7235).
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let dir = TestDir::new();
    let mut cfg = config(&dir.socket("c"));
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.token = Some(TOKEN.into());
    let coordinator = start(cfg).await;
    let addr = coordinator.http_addr().unwrap();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (status, _, body) =
            http_exchange(addr, &format!("GET /v1/providers HTTP/1.1\r\nAuthorization: {scheme} {TOKEN}"), b"").await;
        assert_eq!(status, 200, "{scheme}: {}", String::from_utf8_lossy(&body));
    }
    let reply = http_exchange(addr, &format!("GET /v1/providers HTTP/1.1\r\nAuthorization: Basic {TOKEN}"), b"").await;
    assert_json_error("a Basic scheme", &reply, 401, "unauthenticated");
}

/// Item 6: every 4xx of the HTTP API is the JSON error shape, axum's own rejections included.
#[tokio::test]
async fn every_client_error_of_the_http_api_is_json() {
    let dir = TestDir::new();
    let mut cfg = config(&dir.socket("c"));
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = start(cfg).await;
    let addr = coordinator.http_addr().unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1");
    for (what, head, body, status, code) in [
        ("a limit that is no number", get("/v1/tasks?limit=abc"), &b""[..], 400, "invalid_request"),
        ("a negative limit", get("/v1/tasks?limit=-1"), b"", 400, "invalid_request"),
        ("an unknown query parameter", get("/v1/tasks?colour=red"), b"", 400, "invalid_request"),
        ("an unknown state", get("/v1/tasks?state=sleeping"), b"", 400, "invalid_request"),
        ("a bad cursor", get("/v1/tasks?before=x"), b"", 400, "invalid_request"),
        (
            "a bad wait flag",
            "POST /v1/tasks?wait=maybe HTTP/1.1".into(),
            br#"{"task":"node-info"}"#,
            400,
            "invalid_request",
        ),
        ("a wrong method", "DELETE /v1/tasks HTTP/1.1".into(), b"", 405, "invalid_request"),
        ("a wrong method on a stream", "PUT /v1/streams/x HTTP/1.1".into(), b"", 405, "invalid_request"),
        ("an unknown path", get("/v2/everything"), b"", 404, "not_found"),
        ("a bad task id", get("/v1/tasks/nope"), b"", 400, "invalid_request"),
        ("malformed JSON", "POST /v1/tasks HTTP/1.1".into(), b"{", 400, "invalid_request"),
    ] {
        let reply = http_exchange(addr, &head, body).await;
        assert_json_error(what, &reply, status, code);
    }
}

/// Item 6: a timeout below the floor is refused, naming the field, on both the unix socket and
/// HTTP; a timeout at the floor is accepted.
#[tokio::test]
async fn a_timeout_below_the_floor_is_refused() {
    let dir = TestDir::new();
    let (coordinator, client, _provider) = echo_node(&dir).await;

    for ms in [0, 1, 9] {
        let mut request = Request::for_task::<NodeEcho>(&echo("quick")).unwrap();
        request.timeout_ms = Some(ms);
        let error = client.call(request).await.unwrap().error().cloned().expect("refused");
        assert_eq!(error.code, ErrorCode::InvalidRequest, "{ms} ms: {error}");
        assert!(error.message.contains("timeout_ms"), "{error}");
    }
    // At the floor the request is taken (on a loaded machine it may still run out of time).
    let mut request = Request::for_task::<NodeEcho>(&echo("at the floor")).unwrap();
    request.timeout_ms = Some(10);
    let outcome = client.call(request).await.unwrap().outcome;
    assert!(outcome.as_ref().is_ok() || outcome.as_ref().is_err_and(|e| e.code == ErrorCode::Timeout), "{outcome:?}");

    let body = br#"{"task":"node-echo","args":{"data":"quick"},"timeout_ms":0}"#;
    let reply = http_exchange(coordinator.http_addr().unwrap(), "POST /v1/tasks HTTP/1.1", body).await;
    assert_json_error("timeout_ms 0 over HTTP", &reply, 400, "invalid_request");
    assert!(String::from_utf8_lossy(&reply.2).contains("timeout_ms"));
}

/// Item 6: the id of a finished request cannot be used again while the journal holds it.
#[tokio::test]
async fn a_finished_requests_id_is_not_reused() {
    let dir = TestDir::new();
    let (coordinator, client, _provider) = echo_node(&dir).await;

    let request = Request::for_task::<NodeEcho>(&echo("once")).unwrap();
    assert!(client.call(request.clone()).await.unwrap().outcome.is_ok());
    let again = client.call(request.clone()).await.unwrap();
    assert_eq!(again.error().map(|e| &e.code), Some(&ErrorCode::DuplicateId), "{again:?}");
    let http = HttpClient::new(url_of(coordinator.http_addr().unwrap()), None, None).unwrap();
    let again = http.call(&request).await;
    assert!(
        matches!(&again, Ok(r) if r.error().map(|e| &e.code) == Some(&ErrorCode::DuplicateId)),
        "over HTTP: {again:?}"
    );
    // The journal still holds the first run, unchanged.
    let entry = client.run::<CoordinatorTaskGet>(&TaskGetArgs { id: request.id }).await.unwrap();
    assert!(entry.result.is_some_and(|r| r.get().contains("once")));
    // A fresh id runs.
    let fresh = Request { id: RequestId::random(), ..request };
    assert!(client.call(fresh).await.unwrap().outcome.is_ok());
}
