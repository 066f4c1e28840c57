//! End-to-end tests of the Task API: real sockets, real coordinators, SDK providers.

mod common;

use cerana_client::{open_stream, CallError, HttpClient, UnixClient};
use cerana_protocol::frame::{encode_json_into, read_frame, MAX_FRAME_LEN};
use cerana_protocol::stream::{ChunkReader, ChunkWriter, StreamError};
use cerana_protocol::tasks::coordinator::{
    CoordinatorHistory, CoordinatorTaskGet, CoordinatorTasks, HistoryArgs, TaskGetArgs, TaskState,
};
use cerana_protocol::tasks::node::{CpuFacts, EchoArgs, MemoryFacts, NodeEcho, NodeFacts, NodeInfo};
use cerana_protocol::{
    ErrorCode, FromCoordinator, NoArgs, NodeUrl, Request, RequestId, StreamDirection, StreamHandle, StreamId,
    TaskError, ToCoordinator, PROTOCOL_VERSION,
};
use cerana_provider_sdk::Provider;
use common::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Tasks only these tests serve.
mod test_tasks {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SleepArgs {
        pub ms: u64,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StreamSummary {
        pub bytes: u64,
        pub hash: u64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SourceArgs {
        pub bytes: u64,
    }

    cerana_protocol::declare_tasks! {
        TestSleep = "test-sleep", Write, "Sleeps, then answers", SleepArgs => NoArgs;
        TestCompose = "test-compose", Write, "Echoes through a node-echo sub-task", EchoArgs => EchoArgs;
        TestSink = "test-sink", Write, "Consumes its input stream", NoArgs => StreamSummary;
        TestSource = "test-source", Write, "Produces an output stream", SourceArgs => StreamSummary;
    }
}
use test_tasks::*;

fn echo_provider(name: &str, priority: u16) -> Provider {
    let tag = name.to_owned();
    Provider::new(name, "test").priority(priority).task::<NodeEcho, _, _>(move |_ctx, args: EchoArgs| {
        let tag = tag.clone();
        async move { Ok(EchoArgs { data: format!("{tag}:{}", args.data) }) }
    })
}

/// A stand-in for the `node-info` provider (the coordinator depends on no provider crate):
/// fixed facts for `node-info`, the argument back for `node-echo`.
fn node_info_provider() -> Provider {
    Provider::new("node-info", "test")
        .task::<NodeInfo, _, _>(|_ctx, _args| async move {
            Ok(NodeFacts {
                hostname: "test-node".into(),
                kernel_release: "6.1.0-test".into(),
                kernel_version: "#1 SMP".into(),
                machine_id: None,
                uptime_seconds: 1.0,
                cpu: CpuFacts { model: "test".into(), count: 1, load_1m: 0.0, load_5m: 0.0, load_15m: 0.0 },
                memory: MemoryFacts { total_bytes: 1 << 30, free_bytes: 1 << 29, available_bytes: 1 << 29 },
                init_rss_bytes: None,
                disks: vec![],
                nics: vec![],
                firmware: Default::default(),
                os: Default::default(),
            })
        })
        .task::<NodeEcho, _, _>(|_ctx, args: EchoArgs| async move { Ok(args) })
}

/// Serves `test-sleep`: answers after the requested time.
fn sleeper() -> Provider {
    Provider::new("sleeper", "test").task::<TestSleep, _, _>(|_ctx, args: SleepArgs| async move {
        tokio::time::sleep(Duration::from_millis(args.ms)).await;
        Ok(NoArgs {})
    })
}

fn echo(data: &str) -> EchoArgs {
    EchoArgs { data: data.into() }
}

fn task_error(result: Result<impl std::fmt::Debug, CallError>) -> TaskError {
    match result {
        Err(CallError::Task(e)) => e,
        other => panic!("expected a task error, got {other:?}"),
    }
}

fn summary(hasher: &StreamHasher) -> StreamSummary {
    StreamSummary { bytes: hasher.bytes, hash: hasher.hash }
}

#[tokio::test]
async fn routes_tasks_and_journals_them() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let _coordinator = start(config(&socket)).await;
    let _provider = spawn_provider(node_info_provider(), &socket);
    let client = client(&socket).await;
    wait_for_provider(&client, "node-info", 1).await;

    let facts = client.run::<NodeInfo>(&NoArgs {}).await.unwrap();
    assert!(!facts.hostname.is_empty());
    assert!(facts.memory.total_bytes > 0);
    assert_eq!(client.run::<NodeEcho>(&echo("hi")).await.unwrap(), echo("hi"));

    let history =
        client.run::<CoordinatorHistory>(&HistoryArgs { limit: Some(10), ..Default::default() }).await.unwrap();
    let info = history.entries.iter().find(|e| e.task.as_str() == "node-info").expect("node-info journaled");
    assert_eq!(info.state, TaskState::Done);
    assert_eq!(info.provider.as_ref().unwrap().as_str(), "node-info");
    assert!(info.caller.starts_with("unix:pid="), "{}", info.caller);
    let entry = client.run::<CoordinatorTaskGet>(&TaskGetArgs { id: info.id }).await.unwrap();
    assert!(entry.result.unwrap().get().contains("kernel_release"));

    let listing = client.run::<CoordinatorTasks>(&NoArgs {}).await.unwrap();
    let node_info = listing.tasks.iter().find(|t| t.task.as_str() == "node-info").unwrap();
    assert_eq!(node_info.providers[0].provider.as_str(), "node-info");
    assert!(listing.tasks.iter().any(|t| t.task.as_str() == "coordinator-history" && t.builtin));
}

#[tokio::test]
async fn fails_over_by_priority_when_a_provider_dies() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let _coordinator = start(config(&socket)).await;
    let primary = spawn_provider(echo_provider("echo-primary", 10), &socket);
    let _backup = spawn_provider(echo_provider("echo-backup", 20), &socket);
    let client = client(&socket).await;
    wait_for_provider(&client, "echo-primary", 1).await;
    wait_for_provider(&client, "echo-backup", 1).await;

    assert_eq!(client.run::<NodeEcho>(&echo("x")).await.unwrap().data, "echo-primary:x");
    primary.abort();
    wait_for_provider(&client, "echo-primary", 0).await;
    assert_eq!(client.run::<NodeEcho>(&echo("x")).await.unwrap().data, "echo-backup:x");

    // A restarted provider registers again and takes over by priority.
    let _primary = spawn_provider(echo_provider("echo-primary", 10), &socket);
    wait_for_provider(&client, "echo-primary", 1).await;
    assert_eq!(client.run::<NodeEcho>(&echo("y")).await.unwrap().data, "echo-primary:y");
}

/// Sets a flag when dropped: shows that a cancelled handler was really stopped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_provider_that_never_answers_times_out_and_is_cancelled() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let _coordinator = start(config(&socket)).await;
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = stopped.clone();
    let sleeper = Provider::new("sleeper", "test").task::<TestSleep, _, _>(move |_ctx, args: SleepArgs| {
        let guard = DropFlag(flag.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(args.ms)).await;
            drop(guard);
            Ok(NoArgs {})
        }
    });
    let _provider = spawn_provider(sleeper, &socket);
    let client = client(&socket).await;
    wait_for_provider(&client, "sleeper", 1).await;

    let mut request = Request::for_task::<TestSleep>(&SleepArgs { ms: 60_000 }).unwrap();
    request.timeout_ms = Some(200);
    let id = request.id;
    let started = std::time::Instant::now();
    let response = client.call(request).await.unwrap();
    let error = response.error().expect("timed out");
    assert_eq!(error.code, ErrorCode::Timeout);
    assert_eq!(error.task.as_ref().unwrap().as_str(), "test-sleep");
    assert_eq!(error.provider.as_ref().unwrap().as_str(), "sleeper");
    assert!(started.elapsed() < Duration::from_secs(10));
    for _ in 0..200 {
        if stopped.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stopped.load(Ordering::SeqCst), "the provider's handler was cancelled");
    let entry = client.run::<CoordinatorTaskGet>(&TaskGetArgs { id }).await.unwrap();
    assert_eq!(entry.state, TaskState::TimedOut);
}

#[tokio::test]
async fn a_provider_dying_mid_task_fails_the_task_not_the_coordinator() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let _coordinator = start(config(&socket)).await;
    let sleeper = sleeper();
    let provider = spawn_provider(sleeper, &socket);
    let client = client(&socket).await;
    wait_for_provider(&client, "sleeper", 1).await;

    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.run::<TestSleep>(&SleepArgs { ms: 60_000 }).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    provider.abort();
    let error = task_error(tokio::time::timeout(Duration::from_secs(10), pending).await.unwrap().unwrap());
    assert_eq!(error.code, ErrorCode::ProviderLost);
    assert_eq!(error.provider.unwrap().as_str(), "sleeper");
    let error = task_error(client.run::<TestSleep>(&SleepArgs { ms: 1 }).await);
    assert_eq!(error.code, ErrorCode::UnknownTask, "nobody serves test-sleep any more: {error}");
}

#[tokio::test]
async fn providers_run_sub_tasks_through_the_coordinator() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let _coordinator = start(config(&socket)).await;
    let composer = Provider::new("composer", "test").task::<TestCompose, _, _>(|ctx, args: EchoArgs| async move {
        let inner = ctx.call::<NodeEcho>(&args).await?;
        Ok(EchoArgs { data: format!("composed({})", inner.data) })
    });
    let _composer = spawn_provider(composer, &socket);
    let _echo = spawn_provider(echo_provider("echo", 50), &socket);
    let client = client(&socket).await;
    wait_for_provider(&client, "composer", 1).await;
    wait_for_provider(&client, "echo", 1).await;

    let mut request = Request::for_task::<TestCompose>(&echo("z")).unwrap();
    let parent = request.id;
    request.timeout_ms = Some(5_000);
    let result: EchoArgs = client.call(request).await.unwrap().decode().unwrap();
    assert_eq!(result.data, "composed(echo:z)");
    let history = client.run::<CoordinatorHistory>(&HistoryArgs::default()).await.unwrap();
    let child = history.entries.iter().find(|e| e.task.as_str() == "node-echo").unwrap();
    assert_eq!(child.parent, Some(parent), "the sub-task names its parent");
    assert!(child.caller.contains("name=composer"), "{}", child.caller);
}

#[tokio::test]
async fn a_stopping_provider_runs_its_shutdown_hook_while_it_still_serves() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let _coordinator = start(config(&socket)).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (answered, answer) = tokio::sync::oneshot::channel();
    let hook_socket = socket.clone();
    // The hook calls a task this very provider serves: it answers only if still connected.
    let provider = echo_provider("leaving", 50).on_shutdown(move || async move {
        let reply = client(&hook_socket).await.run::<NodeEcho>(&echo("bye")).await;
        let _ = answered.send(reply.map(|r| r.data).map_err(|e| e.to_string()));
    });
    let serving = tokio::spawn(provider.serve_until(socket.clone(), async {
        let _ = stopped.await;
    }));
    let client = client(&socket).await;
    wait_for_provider(&client, "leaving", 1).await;
    stop.send(()).unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), answer).await.expect("the hook ran").unwrap();
    assert_eq!(reply.as_deref(), Ok("leaving:bye"));
    tokio::time::timeout(Duration::from_secs(10), serving).await.expect("serve_until returned").unwrap().unwrap();
    wait_for_provider(&client, "leaving", 0).await;
}

/// A coordinator `remote` on loopback HTTP requiring `token`, with an echo provider.
async fn start_remote_echo(
    dir: &TestDir,
    token: &str,
) -> (cerana_coordinator::Coordinator, NodeUrl, tokio::task::JoinHandle<()>) {
    let mut remote_config = config(&dir.socket("remote"));
    remote_config.name = "remote".into();
    remote_config.listen = Some("127.0.0.1:0".parse().unwrap());
    remote_config.token = Some(token.to_owned());
    let remote = start(remote_config).await;
    let remote_url = NodeUrl::new(format!("http://{}", remote.http_addr().unwrap())).unwrap();
    let echo = spawn_provider(echo_provider("remote-echo", 50), &dir.socket("remote"));
    wait_for_provider(&client(&dir.socket("remote")).await, "remote-echo", 1).await;
    (remote, remote_url, echo)
}

/// Issue #17: tasks, results and streams carry the cluster's credentials, so with a member list
/// they go to members only. A listener that is not one, named in `node` or `reply_to`, is refused
/// with `permission_denied` and never sees a connection; a member is reached as before, until it
/// leaves the list.
#[tokio::test]
async fn sends_tasks_and_results_only_to_members() {
    let dir = TestDir::new();
    let token = "peer-token-0123456789abcdef".to_owned();
    let (_remote, remote_url, _echo) = start_remote_echo(&dir, &token).await;

    let members = dir.dir.path().join("peers");
    std::fs::write(&members, format!("{remote_url}\n")).unwrap();
    let mut local_config = config(&dir.socket("local"));
    local_config.peer_token = Some(token);
    local_config.peers = cerana_coordinator::PeerPolicy::Members { listed: vec![], file: Some(members.clone()) };
    let _local = start(local_config).await;
    let client = client(&dir.socket("local")).await;
    let stranger = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    stranger.set_nonblocking(true).unwrap();
    let stranger_url = NodeUrl::new(format!("http://{}", stranger.local_addr().unwrap())).unwrap();

    let to = |node: &NodeUrl| {
        let mut request = Request::for_task::<NodeEcho>(&echo("near")).unwrap();
        request.node = Some(node.clone());
        request
    };
    let result: EchoArgs = client.call(to(&remote_url)).await.unwrap().decode().unwrap();
    assert_eq!(result.data, "remote-echo:near");
    let error = client.call(to(&stranger_url)).await.unwrap().error().cloned().unwrap();
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
    assert!(error.message.contains("not a member"), "{error}");
    let mut request = Request::for_task::<NodeEcho>(&echo("result")).unwrap();
    request.reply_to = Some(format!("{stranger_url}/results"));
    let error = client.call(request).await.unwrap().error().cloned().unwrap();
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
    for (bad, says) in [("http://127.0.0.1:99999/results", "no usable host and port"), ("gopher://x", "reply_to")] {
        let mut request = Request::for_task::<NodeEcho>(&echo("result")).unwrap();
        request.reply_to = Some(bad.into());
        let error = client.call(request).await.unwrap().error().cloned().unwrap();
        assert_eq!(error.code, ErrorCode::InvalidRequest, "{bad}: {error}");
        assert!(error.message.contains(says), "{bad}: {error}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reached = stranger.accept();
    assert!(
        matches!(&reached, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the stranger got a connection: {reached:?}"
    );

    // A node that leaves the member list is refused from then on.
    std::fs::write(&members, "").unwrap();
    let error = client.call(to(&remote_url)).await.unwrap().error().cloned().unwrap();
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
}

#[tokio::test]
async fn forwards_tasks_to_another_coordinator_over_http() {
    let dir = TestDir::new();
    let token = "peer-token-0123456789abcdef".to_owned();
    let (_remote, remote_url, _echo) = start_remote_echo(&dir, &token).await;

    let mut local_config = config(&dir.socket("local"));
    local_config.peer_token = Some(token.clone());
    let _local = start(local_config).await;
    let client = client(&dir.socket("local")).await;

    let mut request = Request::for_task::<NodeEcho>(&echo("far")).unwrap();
    request.node = Some(remote_url.clone());
    let id = request.id;
    let result: EchoArgs = client.call(request).await.unwrap().decode().unwrap();
    assert_eq!(result.data, "remote-echo:far");
    let entry = client.run::<CoordinatorTaskGet>(&TaskGetArgs { id }).await.unwrap();
    assert_eq!(entry.forwarded_to.as_deref(), Some(remote_url.as_str()));

    // Errors from the remote node say where they arose.
    let mut request = Request::for_task::<TestSleep>(&SleepArgs { ms: 1 }).unwrap();
    request.node = Some(remote_url.clone());
    let error = client.call(request).await.unwrap().error().cloned().unwrap();
    assert_eq!(error.code, ErrorCode::UnknownTask);
    assert_eq!(error.node.as_deref(), Some(remote_url.as_str()));

    // A node nobody listens on is reported as unreachable, promptly.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut request = Request::for_task::<NodeEcho>(&echo("lost")).unwrap();
    request.node = Some(NodeUrl::new(format!("http://{dead}")).unwrap());
    let error = client.call(request).await.unwrap().error().cloned().unwrap();
    assert_eq!(error.code, ErrorCode::PeerUnreachable, "{error}");
}

#[tokio::test]
async fn the_http_api_requires_the_token_on_a_non_loopback_bind() {
    let dir = TestDir::new();
    let mut open = config(&dir.socket("open"));
    open.listen = Some("0.0.0.0:0".parse().unwrap());
    let refused = cerana_coordinator::Coordinator::start(open).await.unwrap_err();
    assert!(refused.to_string().contains("requires a bearer token"), "{refused}");

    let token = "api-token-0123456789abcdef".to_owned();
    let mut guarded = config(&dir.socket("guarded"));
    guarded.listen = Some("0.0.0.0:0".parse().unwrap());
    guarded.token = Some(token.clone());
    let coordinator = start(guarded).await;
    let port = coordinator.http_addr().unwrap().port();
    let url = NodeUrl::new(format!("http://127.0.0.1:{port}")).unwrap();

    let request = Request::for_task::<CoordinatorTasks>(&NoArgs {}).unwrap();
    for bad in [None, Some("wrong-token-0123456789abcdef".to_owned())] {
        let anonymous = HttpClient::new(url.clone(), bad, None).unwrap();
        let err = anonymous.call(&request).await.unwrap_err();
        assert_eq!(err.task_error().map(|e| &e.code), Some(&ErrorCode::Unauthenticated), "{err}");
        let err = anonymous.get_json("/v1/providers").await.unwrap_err();
        assert_eq!(err.task_error().map(|e| &e.code), Some(&ErrorCode::Unauthenticated), "{err}");
    }
    let raw = raw_http(port, "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}").await;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    let health = raw_http(port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let authorised = HttpClient::new(url, Some(token), None).unwrap();
    let response = authorised.call(&request).await.unwrap();
    assert!(response.outcome.is_ok());

    // Submit without waiting, then poll the journal.
    let request = Request::for_task::<CoordinatorTasks>(&NoArgs {}).unwrap();
    authorised.submit(&request).await.unwrap();
    let entry = authorised.get_json(&format!("/v1/tasks/{}", request.id)).await.unwrap();
    assert_eq!(entry["state"], "done");
    assert!(entry["caller"].as_str().unwrap().starts_with("http:127.0.0.1:"));
}

async fn raw_http(port: u16, request: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn serves_https_with_the_given_certificate() {
    let dir = TestDir::new();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.dir.path().join("cert.pem");
    let key_path = dir.dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut tls = config(&dir.socket("tls"));
    tls.listen = Some("127.0.0.1:0".parse().unwrap());
    tls.tls = Some(cerana_coordinator::TlsFiles { cert: cert_path.clone(), key: key_path });
    let coordinator = start(tls).await;
    let port = coordinator.http_addr().unwrap().port();
    let client =
        HttpClient::new(NodeUrl::new(format!("https://localhost:{port}")).unwrap(), None, Some(&cert_path)).unwrap();
    let response = client.call(&Request::for_task::<CoordinatorTasks>(&NoArgs {}).unwrap()).await.unwrap();
    assert!(response.outcome.is_ok());
    // Plain HTTP to the TLS port gets nowhere.
    let plain = HttpClient::new(NodeUrl::new(format!("http://localhost:{port}")).unwrap(), None, None).unwrap();
    assert!(plain.get_json("/health").await.is_err());
}

/// Sends raw frames on a fresh connection and returns the coordinator's replies.
async fn raw_exchange(socket: &std::path::Path, frames: &[Vec<u8>], replies: usize) -> Vec<FromCoordinator> {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    for frame in frames {
        stream.write_all(frame).await.unwrap();
    }
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..replies {
        let read = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut stream, &mut buf, MAX_FRAME_LEN)).await;
        match read.expect("reply in time") {
            Ok(true) => out.push(serde_json::from_slice(&buf).expect("coordinator speaks the protocol")),
            _ => break,
        }
    }
    out
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    cerana_protocol::frame::encode_into(&mut out, bytes).unwrap();
    out
}

fn json_frame<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_json_into(&mut out, message).unwrap();
    out
}

fn refused_code(reply: &FromCoordinator) -> ErrorCode {
    match reply {
        FromCoordinator::Refused(e) => e.code.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_input_gets_structured_errors_and_the_coordinator_stays_up() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let _coordinator = start(config(&socket)).await;
    let _provider = spawn_provider(node_info_provider(), &socket);
    let client = client(&socket).await;
    wait_for_provider(&client, "node-info", 1).await;
    let hello = json_frame(&ToCoordinator::ClientHello { name: "raw".into(), protocol: PROTOCOL_VERSION });

    // Garbage instead of a hello.
    let replies = raw_exchange(&socket, &[frame(b"\x00\xffnot json")], 1).await;
    assert_eq!(refused_code(&replies[0]), ErrorCode::InvalidRequest);
    // An oversized frame is refused from its length alone.
    let replies = raw_exchange(&socket, &[vec![0x7f, 0xff, 0xff, 0xff]], 1).await;
    assert_eq!(refused_code(&replies[0]), ErrorCode::FrameTooLarge);
    let replies = raw_exchange(&socket, &[hello.clone(), vec![0x7f, 0xff, 0xff, 0xff]], 2).await;
    assert_eq!(refused_code(&replies[1]), ErrorCode::FrameTooLarge);
    // A wrong protocol version.
    let old = json_frame(&ToCoordinator::ClientHello { name: "old".into(), protocol: 0 });
    let replies = raw_exchange(&socket, &[old], 1).await;
    assert_eq!(refused_code(&replies[0]), ErrorCode::InvalidRequest);
    // A request before any hello.
    let early = json_frame(&ToCoordinator::Request(Request::for_task::<NodeInfo>(&NoArgs {}).unwrap()));
    let replies = raw_exchange(&socket, &[early], 1).await;
    assert_eq!(refused_code(&replies[0]), ErrorCode::InvalidRequest);
    // A malformed request that carries an id is answered under that id.
    let id = RequestId::random();
    let bad = format!(r#"{{"request":{{"id":"{id}","task":"Not A Task"}}}}"#);
    let replies = raw_exchange(&socket, &[hello.clone(), frame(bad.as_bytes())], 2).await;
    match &replies[1] {
        FromCoordinator::Response(r) => {
            assert_eq!(r.id, id);
            assert_eq!(r.error().unwrap().code, ErrorCode::InvalidRequest);
        }
        other => panic!("expected a response, got {other:?}"),
    }
    // Unknown task, wrong arguments (checked by the coordinator against the catalog), and
    // arguments of an undocumented task (checked by its provider).
    let error = task_error(client.run::<TestSleep>(&SleepArgs { ms: 1 }).await);
    assert_eq!(error.code, ErrorCode::UnknownTask);
    let mut request = Request::for_task::<NodeInfo>(&NoArgs {}).unwrap();
    request.args = serde_json::value::to_raw_value(&serde_json::json!({"verbose": true})).unwrap();
    let error = client.call(request).await.unwrap().error().cloned().unwrap();
    assert_eq!(error.code, ErrorCode::InvalidArgs);
    assert!(error.message.contains("verbose"), "{error}");
    let mut request = Request::for_task::<NodeEcho>(&echo("x")).unwrap();
    request.args = serde_json::value::to_raw_value(&serde_json::json!({"data": 7})).unwrap();
    assert_eq!(client.call(request).await.unwrap().error().unwrap().code, ErrorCode::InvalidArgs);
    // A duplicate id while the first is in flight.
    let sleeper = sleeper();
    let _sleeper = spawn_provider(sleeper, &socket);
    wait_for_provider(&client, "sleeper", 1).await;
    let request = Request::for_task::<TestSleep>(&SleepArgs { ms: 300 }).unwrap();
    let first = {
        let (client, request) = (client.clone(), request.clone());
        tokio::spawn(async move { client.call(request).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let other_client = common::client(&socket).await;
    let error = other_client.call(request).await.unwrap().error().cloned().unwrap();
    assert_eq!(error.code, ErrorCode::DuplicateId);
    assert!(first.await.unwrap().unwrap().outcome.is_ok());
    // A task name reserved for the coordinator cannot be registered.
    let thief = Provider::new("thief", "test")
        .task::<CoordinatorTasks, _, _>(|_ctx, _args| async move { Err(TaskError::new(ErrorCode::Internal, "never")) });
    let err = thief.serve(&socket).await.unwrap_err();
    assert!(err.to_string().contains("answered by the coordinator itself"), "{err}");

    // Still serving.
    assert!(client.run::<NodeInfo>(&NoArgs {}).await.is_ok());
}

#[tokio::test]
async fn streams_fail_cleanly_when_a_peer_vanishes() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let mut cfg = config(&socket);
    cfg.stream_rendezvous = Duration::from_millis(300);
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = start(cfg).await;

    // The producer writes a little and dies without the end marker.
    let id = StreamId::random();
    let producer = open_stream(&socket, StreamHandle::local(id), StreamDirection::Put).await.unwrap();
    let mut writer = ChunkWriter::new(producer);
    writer.write_chunk(b"partial").await.unwrap();
    let consumer = open_stream(&socket, StreamHandle::local(id), StreamDirection::Get).await.unwrap();
    drop(writer);
    let mut reader = ChunkReader::new(consumer);
    assert_eq!(reader.next_chunk().await.unwrap(), Some(&b"partial"[..]));
    assert!(matches!(reader.next_chunk().await, Err(StreamError::PeerVanished)));

    // A consumer whose producer never arrives is released after the rendezvous time.
    let lonely = open_stream(&socket, StreamHandle::local(StreamId::random()), StreamDirection::Get).await.unwrap();
    let outcome =
        tokio::time::timeout(Duration::from_secs(10), ChunkReader::new(lonely).copy_to(&mut Vec::new())).await;
    assert!(matches!(outcome, Ok(Err(StreamError::PeerVanished))), "{outcome:?}");

    // Over HTTP, a vanished producer aborts the body instead of ending it cleanly.
    let http =
        HttpClient::new(NodeUrl::new(format!("http://{}", coordinator.http_addr().unwrap())).unwrap(), None, None)
            .unwrap();
    let id = StreamId::random();
    let producer = open_stream(&socket, StreamHandle::local(id), StreamDirection::Put).await.unwrap();
    let mut writer = ChunkWriter::new(producer);
    writer.write_chunk(b"abc").await.unwrap();
    let body = http.stream_get(id).await.unwrap();
    drop(writer);
    use http_body_util::BodyExt;
    assert!(body.collect().await.is_err(), "a truncated stream must not look complete");

    // A second reader of the same stream is refused.
    let id = StreamId::random();
    let _first = open_stream(&socket, StreamHandle::local(id), StreamDirection::Get).await.unwrap();
    let second = open_stream(&socket, StreamHandle::local(id), StreamDirection::Get).await.unwrap_err();
    assert_eq!(second.task_error().map(|e| &e.code), Some(&ErrorCode::StreamError));
}

#[tokio::test]
async fn tasks_consume_and_produce_streams() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let _coordinator = start(config(&socket)).await;
    let _provider = spawn_provider(stream_provider(), &socket);
    let client = client(&socket).await;
    wait_for_provider(&client, "streamer", 1).await;

    // Output stream (like zfs-send).
    let response = client.call(Request::for_task::<TestSource>(&SourceArgs { bytes: 5 << 20 }).unwrap()).await.unwrap();
    let promised: StreamSummary = response.decode().unwrap();
    let handle = response.stream.clone().expect("an output stream");
    let socket_in = open_stream(&socket, handle, StreamDirection::Get).await.unwrap();
    let mut reader = ChunkReader::new(socket_in);
    let mut hasher = StreamHasher::default();
    while let Some(chunk) = reader.next_chunk().await.unwrap() {
        hasher.update(chunk);
    }
    assert_eq!(summary(&hasher), promised);
}

fn stream_provider() -> Provider {
    Provider::new("streamer", "test")
        .task::<TestSink, _, _>(|ctx, _args: NoArgs| async move {
            let mut reader = ctx.input_stream().await?;
            let mut hasher = StreamHasher::default();
            while let Some(chunk) =
                reader.next_chunk().await.map_err(|e| TaskError::new(ErrorCode::StreamError, e.to_string()))?
            {
                hasher.update(chunk);
            }
            Ok(summary(&hasher))
        })
        .task::<TestSource, _, _>(|ctx, args: SourceArgs| async move {
            let mut writer = ctx.output_stream().await?;
            let mut hasher = StreamHasher::default();
            let chunk_len = 256 * 1024;
            let chunks: Vec<Vec<u8>> =
                (0..args.bytes.div_ceil(chunk_len as u64)).map(|i| pattern_chunk(i, chunk_len)).collect();
            let mut left = args.bytes as usize;
            let mut pieces = Vec::new();
            for chunk in &chunks {
                let piece = chunk[..left.min(chunk_len)].to_vec();
                left -= piece.len();
                hasher.update(&piece);
                pieces.push(piece);
            }
            tokio::spawn(async move {
                for piece in pieces {
                    if writer.write_chunk(&piece).await.is_err() {
                        return;
                    }
                }
                let _ = writer.finish().await;
            });
            Ok(summary(&hasher))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_streams_through_the_coordinator_in_bounded_memory() {
    const TOTAL: u64 = 1 << 30;
    const CHUNK: usize = 256 * 1024;
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let coordinator = CoordinatorProcess::spawn(&socket, &[]);
    let client = client(&socket).await;
    let _provider = spawn_provider(stream_provider(), &socket);
    wait_for_provider(&client, "streamer", 1).await;

    let id = StreamId::random();
    let producer = {
        let socket = socket.clone();
        tokio::spawn(async move {
            let conn = open_stream(&socket, StreamHandle::local(id), StreamDirection::Put).await.unwrap();
            let mut writer = ChunkWriter::new(conn);
            let mut hasher = StreamHasher::default();
            let chunks: Vec<Vec<u8>> = (0..16).map(|i| pattern_chunk(i, CHUNK)).collect();
            for i in 0..TOTAL / CHUNK as u64 {
                let chunk = &chunks[(i % 16) as usize];
                hasher.update(chunk);
                writer.write_chunk(chunk).await.unwrap();
            }
            writer.finish().await.unwrap();
            summary(&hasher)
        })
    };
    let mut request = Request::for_task::<TestSink>(&NoArgs {}).unwrap();
    request.stream = Some(StreamHandle::local(id));
    request.timeout_ms = Some(600_000);
    let received: StreamSummary = client.call(request).await.unwrap().decode().unwrap();
    let sent = producer.await.unwrap();
    assert_eq!(received, sent);
    assert_eq!(received.bytes, TOTAL);
    let peak_mib = coordinator.peak_rss_kib() / 1024;
    eprintln!("coordinator peak RSS while streaming 1 GiB: {peak_mib} MiB");
    assert!(peak_mib < 64, "coordinator peak RSS {peak_mib} MiB");
}

#[tokio::test]
async fn providers_find_a_restarted_coordinator_and_stale_sockets_are_replaced() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let mut first = CoordinatorProcess::spawn(&socket, &[]);
    let _provider = spawn_provider(echo_provider("echo", 50), &socket);
    let client_a = client(&socket).await;
    wait_for_provider(&client_a, "echo", 1).await;
    assert_eq!(client_a.run::<NodeEcho>(&echo("1")).await.unwrap().data, "echo:1");

    // A second coordinator refuses to steal a live socket.
    let mut rival = CoordinatorProcess::spawn(&socket, &[]);
    let status = tokio::task::spawn_blocking(move || rival.child.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "a second coordinator on a live socket must exit");

    // Killed hard, the coordinator leaves its socket file behind; the next one replaces it.
    first.kill();
    assert!(socket.exists(), "SIGKILL leaves the socket file");
    let err = client_a.run::<NodeEcho>(&echo("2")).await.unwrap_err();
    assert!(matches!(err, CallError::Client(_)), "{err:?}");
    let _second = CoordinatorProcess::spawn(&socket, &[]);
    let client_b = client(&socket).await;
    wait_for_provider(&client_b, "echo", 1).await;
    assert_eq!(client_b.run::<NodeEcho>(&echo("3")).await.unwrap().data, "echo:3");
}

#[tokio::test]
async fn cancelling_a_request_stops_it() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let _coordinator = start(config(&socket)).await;
    let sleeper = sleeper();
    let _provider = spawn_provider(sleeper, &socket);
    let client: UnixClient = client(&socket).await;
    wait_for_provider(&client, "sleeper", 1).await;
    let request = Request::for_task::<TestSleep>(&SleepArgs { ms: 60_000 }).unwrap();
    let id = request.id;
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.call(request).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.cancel(id).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), call).await.unwrap().unwrap().unwrap();
    assert_eq!(response.error().unwrap().code, ErrorCode::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_callers_all_get_their_answers() {
    let dir = TestDir::new();
    let socket = dir.socket("c");
    let _coordinator = start(config(&socket)).await;
    let _provider = spawn_provider(echo_provider("echo", 50), &socket);
    let probe = client(&socket).await;
    wait_for_provider(&probe, "echo", 1).await;
    let mut callers = Vec::new();
    for c in 0..8 {
        let client = client(&socket).await;
        for w in 0..8 {
            let client = client.clone();
            callers.push(tokio::spawn(async move {
                for i in 0..200 {
                    let data = format!("{c}-{w}-{i}");
                    let answer = client.run::<NodeEcho>(&echo(&data)).await.unwrap();
                    assert_eq!(answer.data, format!("echo:{data}"));
                    if i % 50 == 0 {
                        // Journal and status queries interleave with routing.
                        client.run::<cerana_protocol::tasks::coordinator::CoordinatorStatus>(&NoArgs {}).await.unwrap();
                    }
                }
            }));
        }
    }
    let all = futures_util::future::join_all(callers);
    for result in tokio::time::timeout(Duration::from_secs(120), all).await.expect("no caller may hang") {
        result.unwrap();
    }
}
