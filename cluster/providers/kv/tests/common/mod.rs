//! A real 3-member etcd on loopback, an in-process coordinator on a private socket, and the
//! `cerana-kv` binary as its provider (a child process, so that a restart is a real one).

#![allow(dead_code)]

use cerana_client::{CallError, UnixClient};
use cerana_coordinator::{Config, Coordinator};
use cerana_protocol::stream::ChunkReader;
use cerana_protocol::tasks::coordinator::{CoordinatorProviders, ProvidersResult};
use cerana_protocol::tasks::kv::WatchEvent;
use cerana_protocol::{NoArgs, Request, StreamDirection, Task, TaskError, TaskName};
use cerana_testbed::etcd::EtcdCluster;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Lab {
    pub etcd: EtcdCluster,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    _coordinator: Coordinator,
    provider: Option<Child>,
    pub client: UnixClient,
    pub timeout: Duration,
}

impl Lab {
    /// The whole lab; `Err` names what is missing (etcd not installed, say).
    pub async fn start(store_timeout: Duration) -> Result<Lab, String> {
        Self::start_with(store_timeout, false).await
    }

    /// The lab with etcd speaking mutual TLS, the provider holding a client certificate.
    pub async fn start_tls(store_timeout: Duration) -> Result<Lab, String> {
        Self::start_with(store_timeout, true).await
    }

    async fn start_with(store_timeout: Duration, tls: bool) -> Result<Lab, String> {
        let etcd =
            tokio::task::spawn_blocking(move || if tls { EtcdCluster::start_tls(3) } else { EtcdCluster::start(3) })
                .await
                .unwrap()
                .map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("coordinator.sock");
        let mut config = Config::new(&socket);
        config.name = "kv-test".into();
        let coordinator = Coordinator::start(config).await.expect("coordinator starts");
        let client = UnixClient::connect(&socket, "test").await.expect("client connects");
        let mut lab =
            Lab { etcd, _dir: dir, socket, _coordinator: coordinator, provider: None, client, timeout: store_timeout };
        lab.start_provider().await;
        Ok(lab)
    }

    async fn start_provider(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cerana-kv"));
        if let Some(tls) = self.etcd.tls() {
            command
                .env("CERANA_STORE_CA", &tls.ca)
                .env("CERANA_STORE_CERT", &tls.client_cert)
                .env("CERANA_STORE_KEY", &tls.client_key);
        }
        let child = command
            .arg("--coordinator")
            .arg(&self.socket)
            .env("CERANA_STORE_ENDPOINTS", self.etcd.endpoints().join(","))
            .env("CERANA_STORE_TIMEOUT_MS", self.timeout.as_millis().to_string())
            .env("CERANA_LOG", std::env::var("KV_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .spawn()
            .expect("start cerana-kv");
        self.provider = Some(child);
        self.wait_for_providers(1).await;
    }

    async fn wait_for_providers(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ProvidersResult { providers } =
                self.client.run::<CoordinatorProviders>(&NoArgs {}).await.expect("providers");
            if providers.iter().filter(|p| p.name.as_str() == "kv").count() == count {
                return;
            }
            assert!(Instant::now() < deadline, "kv never reached {count} registrations");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the provider outright (SIGKILL) and starts it again.
    pub async fn restart_provider(&mut self) {
        self.kill_provider();
        self.wait_for_providers(0).await;
        self.start_provider().await;
    }

    fn kill_provider(&mut self) {
        if let Some(mut child) = self.provider.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a typed task; a transport failure fails the test.
    pub async fn run<T: Task>(&self, args: &T::Args) -> Result<T::Output, TaskError> {
        match self.client.run::<T>(args).await {
            Ok(output) => Ok(output),
            Err(CallError::Task(e)) => Err(e),
            Err(CallError::Client(e)) => panic!("{}: {e}", T::NAME),
        }
    }

    /// Runs `task` with raw JSON arguments.
    pub async fn raw(&self, task: &str, args: &str) -> Result<serde_json::Value, TaskError> {
        let raw = serde_json::value::RawValue::from_string(args.to_owned()).unwrap();
        let request = Request::new(TaskName::new(task).unwrap(), raw);
        let response = self.client.call(request).await.expect("call");
        response.decode()
    }

    /// Starts `kv-watch` and returns where it starts and a reader of its lines.
    pub async fn watch(&self, prefix: &str, from: Option<u64>) -> Result<(u64, WatchLines), TaskError> {
        let args = cerana_protocol::tasks::kv::WatchArgs {
            prefix: cerana_protocol::tasks::kv::KvPrefix::new(prefix).unwrap(),
            from_index: from,
        };
        let request = Request::for_task::<cerana_protocol::tasks::kv::KvWatch>(&args).unwrap();
        let response = self.client.call(request).await.expect("call");
        let started: cerana_protocol::tasks::kv::WatchStarted = response.decode()?;
        let handle = response.stream.clone().expect("kv-watch returns a stream");
        let socket = cerana_client::open_stream(&self.socket, handle, StreamDirection::Get).await.expect("open");
        Ok((started.start_index, WatchLines { reader: ChunkReader::new(socket), pending: Vec::new() }))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_provider();
    }
}

/// The lines of a `kv-watch` stream.
pub struct WatchLines {
    reader: ChunkReader<tokio::net::UnixStream>,
    pending: Vec<u8>,
}

impl WatchLines {
    /// The next event, `None` once the stream ends (or breaks), bounded by `within`.
    pub async fn next(&mut self, within: Duration) -> Option<WatchEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(serde_json::from_slice(&line[..line.len() - 1]).expect("a JSON line"));
            }
            match tokio::time::timeout_at(deadline, self.reader.next_chunk()).await {
                Ok(Ok(Some(chunk))) => self.pending.extend_from_slice(chunk),
                Ok(_) => return None,
                Err(_) => panic!("no watch line within {within:?}"),
            }
        }
    }

    /// The next event that is not a progress report.
    pub async fn next_change(&mut self, within: Duration) -> Option<WatchEvent> {
        loop {
            match self.next(within).await? {
                WatchEvent::Progress { .. } => continue,
                other => return Some(other),
            }
        }
    }
}

/// Runs `etcdctl` against the lab's store.
pub fn etcdctl(lab: &Lab, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", lab.etcd.endpoints().join(",")))
        .args(args)
        .output()
        .expect("run etcdctl")
}
