//! Shared test infrastructure: coordinators (in-process or as a child process) on private
//! sockets, providers in-process, and bounded waits.

#![allow(dead_code)]

use cerana_client::UnixClient;
use cerana_coordinator::{Config, Coordinator};
use cerana_protocol::tasks::coordinator::{CoordinatorProviders, ProvidersResult};
use cerana_protocol::NoArgs;
use cerana_provider_sdk::Provider;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }
}

pub fn config(socket: &Path) -> Config {
    let mut config = Config::new(socket);
    config.name = "test-node".into();
    config
}

pub async fn start(config: Config) -> Coordinator {
    Coordinator::start(config).await.expect("coordinator starts")
}

/// Runs `provider` in this process until the handle is aborted (which closes its connection,
/// as a crash would).
pub fn spawn_provider(provider: Provider, socket: &Path) -> JoinHandle<()> {
    let socket = socket.to_owned();
    tokio::spawn(async move {
        if let Err(e) = provider.serve(socket).await {
            panic!("provider stopped: {e}");
        }
    })
}

/// Waits (bounded) until a provider called `name` is registered `count` times.
pub async fn wait_for_provider(client: &UnixClient, name: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ProvidersResult { providers } = client.run::<CoordinatorProviders>(&NoArgs {}).await.expect("providers");
        if providers.iter().filter(|p| p.name.as_str() == name).count() == count {
            return;
        }
        assert!(Instant::now() < deadline, "provider {name} never reached {count} registrations: {providers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn client(socket: &Path) -> UnixClient {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixClient::connect(socket, "test").await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect to {}: {e}", socket.display());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The coordinator binary as a child process; killed on drop.
pub struct CoordinatorProcess {
    pub child: Child,
}

impl CoordinatorProcess {
    pub fn spawn(socket: &Path, extra: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_cerana-coordinator"))
            .arg("--socket")
            .arg(socket)
            .arg("--no-http")
            .args(extra)
            .env("CERANA_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn coordinator");
        Self { child }
    }

    /// Also serving HTTP on a free loopback port; returns that port's URL once it answers.
    pub fn spawn_with_http(socket: &Path, extra: &[&str]) -> (Self, cerana_protocol::NodeUrl) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_cerana-coordinator"))
            .arg("--socket")
            .arg(socket)
            .args(["--listen", &listen])
            .args(extra)
            .env("CERANA_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn coordinator");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "the coordinator never listened on {listen}");
            std::thread::sleep(Duration::from_millis(20));
        }
        (Self { child }, cerana_protocol::NodeUrl::new(format!("http://{listen}")).unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Order-sensitive hash over a byte stream, independent of how it is chunked.
#[derive(Debug, Default)]
pub struct StreamHasher {
    pub hash: u64,
    pub bytes: u64,
}

impl StreamHasher {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self.bytes += data.len() as u64;
    }
}

/// Deterministic test data: chunk `i` is filled with a pattern derived from `i`.
pub fn pattern_chunk(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect()
}
