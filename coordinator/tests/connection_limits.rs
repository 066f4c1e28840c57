//! The coordinator under floods of held connections and slow bodies (issue #15): every
//! connection a peer can hold is capped below the process's descriptor limit, and a request
//! body that does not arrive in time is cut off. Loopback only; the flooded coordinators run as
//! child processes with the usual 1,024-descriptor limit.

mod common;

use cerana_client::{ClientError, HttpClient, UnixClient};
use cerana_coordinator::Coordinator;
use cerana_protocol::tasks::coordinator::CoordinatorStatus;
use cerana_protocol::{ErrorCode, NoArgs, NodeUrl, StreamId};
use common::*;
use http_body_util::BodyExt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Connections each flood holds: more than a 1,024-descriptor process can serve.
const HELD: usize = 1_200;
/// How long one answer may take; a coordinator that serves at all answers in milliseconds.
const DEADLINE: Duration = Duration::from_secs(6);

/// Lets this process hold a flood's client ends.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let wanted = hard.min(16_384);
    if soft < wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).expect("setrlimit");
    }
}

/// The coordinator binary listening on 127.0.0.1, limited to 1,024 open files like a daemon
/// started with the kernel's default limit; killed on drop.
struct Flooded {
    _process: CoordinatorProcess,
    socket: PathBuf,
    server: SocketAddr,
    _dir: TestDir,
}

impl Flooded {
    async fn start() -> Self {
        // The test process holds the floods' client ends.
        raise_open_files_limit();
        let dir = TestDir::new();
        let socket = dir.socket("c");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let child = Command::new("sh")
            .args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_cerana-coordinator"))
            .arg("--socket")
            .arg(&socket)
            .arg("--listen")
            .arg(server.to_string())
            .env("CERANA_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn coordinator");
        let process = CoordinatorProcess { child };
        drop(client(&socket).await);
        Self { _process: process, socket, server, _dir: dir }
    }
}

/// A TCP connection to `server` from the loopback address `source` (all of 127.0.0.0/8 is local
/// on Linux, so each address is a distinct peer to the server).
async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(server))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Reads what `tcp` answers until it closes or `DEADLINE` passes.
async fn read_answer(tcp: &mut TcpStream) -> Result<String, String> {
    let mut reply = Vec::new();
    match tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut reply)).await {
        Ok(Ok(_)) => Ok(String::from_utf8_lossy(&reply).into_owned()),
        // A reset after the answer still delivered the answer.
        Ok(Err(_)) if !reply.is_empty() => Ok(String::from_utf8_lossy(&reply).into_owned()),
        Ok(Err(e)) => Err(format!("connection failed: {e}")),
        Err(_) => Err(format!("no answer within {DEADLINE:?}; got {:?}", String::from_utf8_lossy(&reply))),
    }
}

/// `GET /health` from `source` on a fresh connection.
async fn health_from(source: Ipv4Addr, server: SocketAddr) -> Result<String, String> {
    let mut tcp = connect_from(source, server).await.map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.map_err(|e| e.to_string())?;
    read_answer(&mut tcp).await
}

/// Polls `attempt` until it gives something, for at most `DEADLINE`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut attempt: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens up to `count` connections from each of `sources`, round robin.
async fn hold(sources: &[Ipv4Addr], count: usize, server: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        match connect_from(sources[i % sources.len()], server).await {
            Ok(tcp) => held.push(tcp),
            // A full backlog: the flood is as big as the coordinator lets it be.
            Err(_) => break,
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_held_from_one_address_do_not_starve_others() {
    let Flooded { server, .. } = &Flooded::start().await;
    let server = *server;
    let mut held = hold(&[Ipv4Addr::new(127, 0, 0, 2)], HELD, server).await;
    for tcp in held.iter_mut().take(HELD / 2) {
        // Keep-alive requests, answered and then held open.
        let _ = tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    }
    let answer = health_from(Ipv4Addr::LOCALHOST, server).await.expect("a fresh /health from another address");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_total_cap_are_refused_at_once_and_the_process_keeps_serving() {
    let Flooded { socket, server, .. } = &Flooded::start().await;
    let server = *server;
    // Few enough per address that only the total cap applies.
    let sources: Vec<Ipv4Addr> = (1..=24).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    let mut held = hold(&sources, HELD, server).await;
    assert!(held.len() > 1_000, "only {} connections opened", held.len());

    let last = held.last_mut().unwrap();
    let refusal = read_answer(last).await.expect("the last connection is refused at once");
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(refusal.contains("\"code\":\"busy\""), "{refusal}");
    let fresh = health_from(Ipv4Addr::new(127, 0, 2, 1), server).await.expect("a fresh /health is answered");
    assert!(fresh.starts_with("HTTP/1.1 503"), "{fresh}");

    // Admitted connections are served, and the unix socket still has descriptors to work with.
    let first = &mut held[0];
    first.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let answer = read_answer(first).await.expect("an admitted connection is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let local = tokio::time::timeout(DEADLINE, client(socket)).await.expect("the unix socket answers");
    tokio::time::timeout(DEADLINE, local.run::<CoordinatorStatus>(&NoArgs {}))
        .await
        .expect("status in time")
        .expect("status");

    drop(held);
    eventually("an HTTP slot comes back", || async {
        health_from(Ipv4Addr::new(127, 0, 2, 1), server).await.ok().filter(|a| a.starts_with("HTTP/1.1 200"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_connections_are_capped_below_the_descriptor_limit() {
    let Flooded { socket, server, .. } = &Flooded::start().await;
    let server = *server;
    let mut held = Vec::new();
    for _ in 0..HELD {
        match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(&socket)).await {
            Ok(Ok(stream)) => held.push(stream),
            _ => break,
        }
    }
    // The HTTP listener still has descriptors.
    let answer = health_from(Ipv4Addr::LOCALHOST, server).await.expect("/health while the unix socket is flooded");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A client over the cap hears why at once.
    match tokio::time::timeout(DEADLINE, UnixClient::connect(&socket, "late")).await.expect("an answer in time") {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::Busy, "{e}"),
        other => panic!("expected a busy refusal, got {:?}", other.map(|_| "a welcome")),
    }
    drop(held);
    eventually("a unix slot comes back", || async { UnixClient::connect(&socket, "later").await.ok() }).await;
}

const TOKEN: &str = "limits-token-0123456789";

/// An in-process coordinator on 127.0.0.1 that wants `TOKEN`, with these body timeouts.
async fn with_token(body_timeout: Duration, body_idle_timeout: Duration) -> (TestDir, Coordinator, SocketAddr) {
    let dir = TestDir::new();
    let mut cfg = config(&dir.socket("c"));
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.token = Some(TOKEN.into());
    cfg.body_timeout = body_timeout;
    cfg.body_idle_timeout = body_idle_timeout;
    let coordinator = start(cfg).await;
    let server = coordinator.http_addr().unwrap();
    (dir, coordinator, server)
}

/// A request head for `path` with the token and a body of `length` bytes to come.
fn head(method: &str, path: &str, length: usize) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n")
}

/// Sends `body` one byte every `gap` until the server answers; returns the answer.
async fn trickle(tcp: &mut TcpStream, body: &[u8], gap: Duration) -> Result<String, String> {
    let (mut read, mut write) = tcp.split();
    let sender = async {
        for byte in body {
            if write.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
            tokio::time::sleep(gap).await;
        }
        std::future::pending::<()>().await
    };
    let mut reply = Vec::new();
    let reader = tokio::time::timeout(DEADLINE, read.read_to_end(&mut reply));
    tokio::select! {
        _ = sender => unreachable!("the sender never ends"),
        result = reader => match result {
            Ok(_) => Ok(String::from_utf8_lossy(&reply).into_owned()),
            Err(_) => Err(format!("still open after {DEADLINE:?}; got {:?}", String::from_utf8_lossy(&reply))),
        },
    }
}

#[tokio::test]
async fn a_trickled_task_body_is_cut_off_with_408() {
    let (_dir, _coordinator, server) = with_token(Duration::from_secs(2), Duration::from_secs(300)).await;

    let body = br#"{"task": "node-echo", "args": {"data": "a body that takes far too long to arrive"}}"#;
    let mut tcp = TcpStream::connect(server).await.unwrap();
    tcp.write_all(head("POST", "/v1/tasks", body.len()).as_bytes()).await.unwrap();
    let answer = trickle(&mut tcp, body, Duration::from_millis(500)).await.expect("cut off in time");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"timeout\""), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_body_that_keeps_moving_is_not_cut_off_and_a_stalled_one_is() {
    let (_dir, _coordinator, server) = with_token(Duration::from_millis(500), Duration::from_secs(1)).await;
    let url = NodeUrl::new(format!("http://{server}")).unwrap();
    let client = HttpClient::new(url, Some(TOKEN.into()), None).unwrap();

    // Ten bytes, one every 300 ms: 3 s in all, far over the task body timeout, never 1 s idle.
    let id = StreamId::random();
    let consumer = tokio::spawn({
        let client = client.clone();
        async move { client.stream_get(id).await.expect("consumer").collect().await.expect("whole stream").to_bytes() }
    });
    let body = b"0123456789";
    let mut tcp = TcpStream::connect(server).await.unwrap();
    let request =
        head("POST", &format!("/v1/streams/{id}"), body.len()).replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let answer = trickle(&mut tcp, body, Duration::from_millis(300)).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let received = tokio::time::timeout(DEADLINE, consumer).await.expect("the consumer ends").unwrap();
    assert_eq!(&received[..], body);

    // Two bytes, then nothing: cut off after the idle timeout, and the connection closes.
    let mut tcp = TcpStream::connect(server).await.unwrap();
    tcp.write_all(head("POST", &format!("/v1/streams/{}", StreamId::random()), 10).as_bytes()).await.unwrap();
    tcp.write_all(b"01").await.unwrap();
    let answer = read_answer(&mut tcp).await.expect("cut off in time");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"timeout\""), "{answer}");
}
