//! What the cluster's providers share: the store connected on first use, and the task error for
//! a store error.

use crate::{Store, StoreConfig, StoreError};
use cerana_protocol::{ErrorCode, TaskError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// The task error for a store error: the codes callers branch on, with the index they need.
pub fn task_error(err: StoreError) -> TaskError {
    let message = err.to_string();
    match err {
        StoreError::Unavailable { .. } => TaskError::new(ErrorCode::Unavailable, message),
        StoreError::Conflict { current, .. } => {
            TaskError::new(ErrorCode::Conflict, message).with_details(serde_json::json!({ "current_index": current }))
        }
        StoreError::NotFound { .. } => TaskError::new(ErrorCode::NotFound, message),
        StoreError::Compacted { requested, compacted } => TaskError::new(ErrorCode::Compacted, message)
            .with_details(serde_json::json!({ "requested_index": requested, "compacted_index": compacted })),
        StoreError::Held { holder, token, .. } => TaskError::new(ErrorCode::Busy, message)
            .with_details(serde_json::json!({ "holder_lease": holder, "token": token })),
        StoreError::Deposed { term, .. } => {
            TaskError::new(ErrorCode::Conflict, message).with_details(serde_json::json!({ "term": term }))
        }
        StoreError::Invalid(_) => TaskError::new(ErrorCode::InvalidArgument, message),
        StoreError::Failed { .. } => TaskError::new(ErrorCode::Failed, message),
    }
}

/// The store, connected on first use, and connected again when the node's list of endpoints
/// changes (the quorum agent rewrites it as voters come and go).
#[derive(Debug, Clone)]
pub struct LazyStore {
    config: StoreConfig,
    /// One client URL per line; read before each use when set, instead of `config.endpoints`.
    endpoints_file: Option<std::path::PathBuf>,
    /// The CA, certificate and key files of mutual TLS, read when a client is made: a node
    /// gets its certificate after its providers start.
    tls_files: Option<[std::path::PathBuf; 3]>,
    current: Arc<Mutex<Option<Connected>>>,
}

/// A store client and the endpoints it was made for.
#[derive(Debug, Clone)]
struct Connected {
    endpoints: Vec<String>,
    store: Store,
}

impl LazyStore {
    pub fn new(config: StoreConfig) -> Self {
        Self { config, endpoints_file: None, tls_files: None, current: Arc::default() }
    }

    /// The endpoints come from `file` (one client URL per line), read again before each use.
    pub fn with_endpoints_file(mut self, file: impl Into<std::path::PathBuf>) -> Self {
        self.endpoints_file = Some(file.into());
        self
    }

    /// The configuration from the environment: `CERANA_STORE_ENDPOINTS_FILE` (one client URL
    /// per line, followed as it changes) or else `CERANA_STORE_ENDPOINTS` (comma-separated,
    /// default `http://127.0.0.1:2379`), `CERANA_STORE_TIMEOUT_MS` (default 5000) and, for
    /// mutual TLS, `CERANA_STORE_CA`, `CERANA_STORE_CERT`, `CERANA_STORE_KEY` (PEM files; all
    /// three or none).
    pub fn from_env() -> Result<Self, String> {
        let endpoints = std::env::var("CERANA_STORE_ENDPOINTS").unwrap_or_else(|_| "http://127.0.0.1:2379".into());
        let endpoints: Vec<String> =
            endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect();
        let mut config = StoreConfig::new(endpoints);
        if let Ok(ms) = std::env::var("CERANA_STORE_TIMEOUT_MS") {
            let ms: u64 = ms.parse().map_err(|_| format!("CERANA_STORE_TIMEOUT_MS is not a number: {ms:?}"))?;
            config.op_timeout = Duration::from_millis(ms.clamp(100, 60_000));
        }
        let files: Vec<Option<std::path::PathBuf>> = ["CERANA_STORE_CA", "CERANA_STORE_CERT", "CERANA_STORE_KEY"]
            .iter()
            .map(|name| std::env::var_os(name).map(std::path::PathBuf::from))
            .collect();
        let tls_files = match (&files[0], &files[1], &files[2]) {
            (Some(ca), Some(cert), Some(key)) => Some([ca.clone(), cert.clone(), key.clone()]),
            (None, None, None) => None,
            _ => return Err("CERANA_STORE_CA, CERANA_STORE_CERT and CERANA_STORE_KEY go together".into()),
        };
        let lazy = Self { tls_files, ..Self::new(config) };
        Ok(match std::env::var_os("CERANA_STORE_ENDPOINTS_FILE") {
            Some(file) => lazy.with_endpoints_file(file),
            None => lazy,
        })
    }

    fn endpoints(&self) -> Result<Vec<String>, StoreError> {
        let Some(file) = &self.endpoints_file else { return Ok(self.config.endpoints.clone()) };
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let endpoints: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable {
                op: "connect",
                reason: format!("this node has not found the cluster store yet (no endpoints in {})", file.display()),
            });
        }
        Ok(endpoints)
    }

    pub async fn get(&self) -> Result<Store, TaskError> {
        let endpoints = self.endpoints().map_err(task_error)?;
        self.over(endpoints).await.map_err(task_error)
    }

    /// The store over `endpoints`: the client made for them last time, or a new one when
    /// they changed.
    pub async fn over(&self, endpoints: Vec<String>) -> Result<Store, StoreError> {
        let mut current = self.current.lock().await;
        if let Some(connected) = current.as_ref().filter(|c| c.endpoints == endpoints) {
            return Ok(connected.store.clone());
        }
        let mut config = StoreConfig { endpoints: endpoints.clone(), ..self.config.clone() };
        if let Some([ca, cert, key]) = &self.tls_files {
            let files = crate::StoreTls::from_files(ca, cert, key).map_err(|e| StoreError::Unavailable {
                op: "connect",
                reason: format!("this node has no certificate for the cluster store yet: {e}"),
            })?;
            config.tls = Some(files);
        }
        let store = Store::connect(&config).await?;
        *current = Some(Connected { endpoints, store: store.clone() });
        Ok(store)
    }
}

/// A cluster provider's `main`: its store from the environment, then `serve` (the provider's
/// own `main`); a bad environment exits 2.
pub fn provider_main(name: &str, serve: impl FnOnce(LazyStore) -> std::process::ExitCode) -> std::process::ExitCode {
    match LazyStore::from_env() {
        Ok(store) => serve(store),
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// `store_task!(provider, lazy_store, Task, |store, args| body)`: registers a handler that
/// gets the store first (answering `unavailable` while it cannot), then runs `body`.
#[macro_export]
macro_rules! store_task {
    ($provider:expr, $store:expr, $task:ty, |$s:ident, $args:ident| $body:expr) => {{
        let lazy = $store.clone();
        $provider.task::<$task, _, _>(move |_ctx, $args| {
            let lazy = lazy.clone();
            async move {
                let store = lazy.get().await?;
                let $s = &store;
                $body
            }
        })
    }};
}
