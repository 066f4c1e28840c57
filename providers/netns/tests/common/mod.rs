//! Shared by the host tests and the benchmark: a coordinator and the netns provider in this
//! process on a private socket, a client, uniquely prefixed namespace names that are removed
//! on drop (even when a test fails), and threads running inside a namespace.

#![allow(dead_code)]

use cerana_client::{CallError, UnixClient};
use cerana_coordinator::{Config as CoordinatorConfig, Coordinator};
use cerana_netns::names::NetnsName;
use cerana_netns::namespace::Namespaces;
use cerana_netns::Config;
use cerana_protocol::tasks::coordinator::{CoordinatorProviders, ProvidersResult};
use cerana_protocol::{ErrorCode, NoArgs, Task, TaskError};
use nix::sched::{setns, CloneFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

pub const NETNS_DIR: &str = "/run/netns";

/// Whether the host tests can run here: when not, the test fails under `make test` and skips,
/// saying why, elsewhere (`cerana_testbed::require`).
pub fn can_run(test: &str, need_nft: bool) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        "needs root (network namespaces, veth, nftables)"
    } else if need_nft && !cerana_netns::firewall::default_nft().exists() {
        "no nft program (Debian package nftables; `make deps`)"
    } else {
        return true;
    };
    cerana_testbed::require::missing(test, why);
    false
}

/// Namespace names unique to this process and test, deleted on drop.
#[derive(Debug)]
pub struct NetnsGuard {
    prefix: String,
    created: Mutex<Vec<String>>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl NetnsGuard {
    pub fn new() -> Self {
        let prefix = format!("cnt{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        Self { prefix, created: Mutex::new(Vec::new()) }
    }

    /// A fresh name, remembered for cleanup.
    pub fn name(&self, tag: &str) -> String {
        let name = format!("{}-{tag}", self.prefix);
        self.created.lock().unwrap().push(name.clone());
        name
    }

    pub fn path(&self, name: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(name)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let namespaces = Namespaces::at(NETNS_DIR);
        for name in self.created.lock().unwrap().drain(..) {
            if let Ok(n) = NetnsName::new(&name) {
                let _ = namespaces.delete(&n);
            }
        }
    }
}

/// A coordinator with the netns provider, both in this process.
pub struct Harness {
    pub dir: tempfile::TempDir,
    coordinator: Option<Coordinator>,
    provider: JoinHandle<()>,
    pub client: UnixClient,
}

impl Harness {
    /// State files in `dir`; ports published and the guard in the provider's own namespace
    /// (tests that publish or guard set `publish_netns`/`guard_netns` to one of theirs, see
    /// [`Harness::start_with`]).
    pub fn config(dir: &Path) -> Config {
        Config {
            netns_dir: NETNS_DIR.into(),
            firewall_state: Some(dir.join("firewalls.json")),
            publish_state: Some(dir.join("published.json")),
            guard_state: Some(dir.join("guard.json")),
            ..Config::default()
        }
    }

    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with [`Harness::config`] changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("coordinator.sock");
        let mut config = CoordinatorConfig::new(&socket);
        config.name = "netns-test".into();
        let coordinator = Coordinator::start(config).await.expect("coordinator starts");
        let mut provider_config = Self::config(dir.path());
        tweak(&mut provider_config);
        let provider = cerana_netns::provider_with(provider_config);
        let provider_socket = socket.clone();
        let provider = tokio::spawn(async move {
            if let Err(e) = provider.serve(provider_socket).await {
                panic!("provider stopped: {e}");
            }
        });
        let client = UnixClient::connect(&socket, "netns-test").await.expect("client connects");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ProvidersResult { providers } =
                client.run::<CoordinatorProviders>(&NoArgs {}).await.expect("providers");
            if providers.iter().any(|p| p.name.as_str() == "netns") {
                break;
            }
            assert!(Instant::now() < deadline, "the netns provider never registered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self { dir, coordinator: Some(coordinator), provider, client }
    }

    /// Runs a task through the coordinator.
    pub async fn run<T: Task>(&self, args: &T::Args) -> Result<T::Output, TaskError> {
        match self.client.run::<T>(args).await {
            Ok(out) => Ok(out),
            Err(CallError::Task(e)) => Err(e),
            Err(CallError::Client(e)) => panic!("transport failure running {}: {e}", T::NAME),
        }
    }

    /// Runs a task that must succeed.
    pub async fn ok<T: Task>(&self, args: &T::Args) -> T::Output {
        self.run::<T>(args).await.unwrap_or_else(|e| panic!("{} failed: {e}", T::NAME))
    }

    /// Runs a task that must fail with `code` and `details.reason` = `reason`.
    pub async fn fails<T: Task>(&self, args: &T::Args, code: ErrorCode, reason: &str) -> TaskError {
        let err = match self.run::<T>(args).await {
            Ok(_) => panic!("{} succeeded but should fail with {code}/{reason}", T::NAME),
            Err(e) => e,
        };
        assert_eq!(err.code, code, "{err}");
        let got = err.details.as_ref().and_then(|d| d["reason"].as_str()).unwrap_or_default();
        assert_eq!(got, reason, "{err}");
        err
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.provider.abort();
        if let Some(c) = self.coordinator.take() {
            c.shutdown();
        }
    }
}

/// Runs `work` on a thread inside the namespace `name` (it may block, e.g. accept).
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = std::fs::File::open(Path::new(NETNS_DIR).join(name)).expect("open namespace");
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("enter namespace");
        work()
    })
}

/// Runs `work` inside the namespace `name` and waits for it.
pub fn in_netns<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(name, work).join().expect("namespace thread")
}
