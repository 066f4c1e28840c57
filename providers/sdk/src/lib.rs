//! The provider SDK: a provider is a set of typed task handlers.
//!
//! ```no_run
//! use cerana_protocol::tasks::node::{EchoArgs, NodeEcho};
//! use cerana_provider_sdk::Provider;
//!
//! fn main() -> std::process::ExitCode {
//!     Provider::new("echo", env!("CARGO_PKG_VERSION"))
//!         .task::<NodeEcho, _, _>(|_ctx, args: EchoArgs| async move { Ok(args) })
//!         .main()
//! }
//! ```
//!
//! The SDK connects to the coordinator, registers the tasks, runs each request in its own
//! tokio task, answers cancellations, reconnects (and re-registers) whenever the coordinator
//! restarts, and tells a supervisor it is ready once the coordinator has accepted it.

mod context;
mod session;

pub use cerana_client::{InputEnd, OutputEnd, PipeFinish, PipeVerdict};
pub use cerana_protocol::{ErrorCode, TaskError};
pub use context::Context;

use cerana_protocol::{ProviderName, Task, TaskName};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

type ErasedHandler =
    dyn Fn(Context, Box<RawValue>) -> BoxFuture<'static, Result<Box<RawValue>, TaskError>> + Send + Sync;

/// What a provider does when asked to stop; see [`Provider::on_shutdown`].
type ShutdownHook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

pub(crate) struct Registered {
    priority: Option<u16>,
    handler: Arc<ErasedHandler>,
}

/// A provider under construction; see the crate docs.
pub struct Provider {
    name: ProviderName,
    version: String,
    priority: u16,
    handlers: BTreeMap<TaskName, Registered>,
    // A Mutex only so that Provider stays Sync (it is shared by its sessions); taken once.
    on_shutdown: std::sync::Mutex<Option<ShutdownHook>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("priority", &self.priority)
            .field("tasks", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the coordinator refused this provider: {0}")]
    Refused(TaskError),
    #[error("a provider must serve at least one task")]
    NoTasks,
}

impl Provider {
    /// A provider named `name` (lowercase letters, digits, dashes).
    ///
    /// # Panics
    /// When `name` is not a valid provider name: names are fixed in code.
    pub fn new(name: &str, version: &str) -> Self {
        let name = ProviderName::new(name).unwrap_or_else(|e| panic!("invalid provider name: {e}"));
        Self {
            name,
            version: version.to_owned(),
            priority: cerana_protocol::message::DEFAULT_PRIORITY,
            handlers: BTreeMap::new(),
            on_shutdown: std::sync::Mutex::new(None),
        }
    }

    /// Runs `hook` when the provider is asked to stop (SIGTERM under [`Provider::main`]) while
    /// it is still connected and serving, so the hook can run sub-tasks (destroy clones, say);
    /// the provider exits when the hook is done. The supervisor's stop timeout bounds it.
    pub fn on_shutdown<F, Fut>(self, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self.on_shutdown.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(move || hook().boxed()));
        self
    }

    /// Lower is tried first when several providers serve a task (default 50).
    pub fn priority(mut self, priority: u16) -> Self {
        self.priority = priority;
        self
    }

    /// Serves task `T` with `handler`.
    pub fn task<T, F, Fut>(self, handler: F) -> Self
    where
        T: Task,
        F: Fn(Context, T::Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T::Output, TaskError>> + Send + 'static,
    {
        self.register::<T, F, Fut>(None, handler)
    }

    /// Serves task `T` at a priority other than the provider's.
    pub fn task_with_priority<T, F, Fut>(self, priority: u16, handler: F) -> Self
    where
        T: Task,
        F: Fn(Context, T::Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T::Output, TaskError>> + Send + 'static,
    {
        self.register::<T, F, Fut>(Some(priority), handler)
    }

    fn register<T, F, Fut>(mut self, priority: Option<u16>, handler: F) -> Self
    where
        T: Task,
        F: Fn(Context, T::Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T::Output, TaskError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Arc<ErasedHandler> = Arc::new(move |ctx: Context, raw: Box<RawValue>| {
            let handler = handler.clone();
            async move {
                let args: T::Args = serde_json::from_str(raw.get())
                    .map_err(|e| TaskError::new(ErrorCode::InvalidArgs, format!("arguments of {}: {e}", T::NAME)))?;
                let output = handler(ctx, args).await?;
                serde_json::value::to_raw_value(&output)
                    .map_err(|e| TaskError::new(ErrorCode::Internal, format!("cannot encode the result: {e}")))
            }
            .boxed()
        });
        self.handlers.insert(T::name(), Registered { priority, handler: erased });
        self
    }

    /// Serves until the coordinator refuses this provider, reconnecting with backoff whenever
    /// the connection drops or the coordinator is not there yet.
    pub async fn serve(self, socket: impl AsRef<Path>) -> Result<(), ServeError> {
        if self.handlers.is_empty() {
            return Err(ServeError::NoTasks);
        }
        let socket = socket.as_ref().to_owned();
        let provider = Arc::new(self);
        let mut backoff = Duration::from_millis(50);
        loop {
            match session::run(provider.clone(), &socket).await {
                Ok(()) => {
                    tracing::info!("coordinator connection closed; reconnecting");
                    backoff = Duration::from_millis(50);
                }
                Err(session::SessionError::Refused(e)) => return Err(ServeError::Refused(e)),
                Err(e) => tracing::debug!("cannot reach the coordinator: {e}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Serves (as [`Provider::serve`]) until `stop` resolves, then runs the shutdown hook with
    /// the connection still up and returns.
    pub async fn serve_until(self, socket: impl AsRef<Path>, stop: impl Future<Output = ()>) -> Result<(), ServeError> {
        let hook = self.on_shutdown.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut serving = tokio::spawn(self.serve(socket.as_ref().to_owned()));
        tokio::select! {
            served = &mut serving => return match served {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Ok(()),
            },
            () = stop => {}
        }
        if let Some(hook) = hook {
            hook().await;
        }
        serving.abort();
        Ok(())
    }

    /// A provider's whole `main`: takes `--coordinator PATH` (or `CERANA_COORDINATOR_SOCKET`),
    /// logs to stderr (filter in `CERANA_LOG`), serves, and on SIGTERM runs its shutdown hook
    /// and exits 0.
    pub fn main(self) -> ExitCode {
        self.main_with(|_socket| async {})
    }

    /// [`Provider::main`], with `background` (given the coordinator's socket) running beside
    /// the provider on its runtime: for providers that also work on their own, such as loops.
    pub fn main_with<F, Fut>(self, background: F) -> ExitCode
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        init_logging();
        let socket = match socket_from_args(std::env::args().skip(1), &self.name) {
            Ok(Some(socket)) => socket,
            Ok(None) => return ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("{}: {message}", self.name);
                return ExitCode::from(2);
            }
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("{}: cannot start the runtime: {e}", self.name);
                return ExitCode::FAILURE;
            }
        };
        let name = self.name.clone();
        runtime.spawn(background(socket.clone()));
        let stop = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    term.recv().await;
                    tracing::info!("SIGTERM: stopping");
                }
                Err(e) => {
                    tracing::warn!("cannot watch for SIGTERM ({e}); it will kill this provider outright");
                    std::future::pending::<()>().await;
                }
            }
        };
        let served = runtime.block_on(self.serve_until(socket, stop));
        // A blocking call still running (a stuck zfs command, say) must not hold the exit.
        runtime.shutdown_timeout(Duration::from_millis(500));
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(provider = %name, "{e}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Logging to stderr with the filter from `CERANA_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CERANA_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn socket_from_args(mut args: impl Iterator<Item = String>, name: &ProviderName) -> Result<Option<PathBuf>, String> {
    let mut socket = std::env::var_os(cerana_protocol::COORDINATOR_SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(cerana_protocol::DEFAULT_COORDINATOR_SOCKET));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--coordinator" => socket = args.next().ok_or("--coordinator needs a socket path")?.into(),
            "-h" | "--help" => {
                println!(
                    "{name}: a CeranaOS provider\n\nUsage: {name} [--coordinator PATH]\n\n  --coordinator PATH  \
                     the coordinator's unix socket (env {}, default {})",
                    cerana_protocol::COORDINATOR_SOCKET_ENV,
                    cerana_protocol::DEFAULT_COORDINATOR_SOCKET
                );
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("{name}");
                return Ok(None);
            }
            other => return Err(format!("unexpected argument {other:?} (see --help)")),
        }
    }
    Ok(Some(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_name_the_socket_or_fail_clearly() {
        let name = ProviderName::new("x").unwrap();
        let args = |a: &[&str]| socket_from_args(a.iter().map(|s| s.to_string()), &name);
        assert_eq!(args(&["--coordinator", "/tmp/c.sock"]).unwrap(), Some(PathBuf::from("/tmp/c.sock")));
        assert!(args(&["--coordinator"]).unwrap_err().contains("needs a socket path"));
        assert!(args(&["--bogus"]).unwrap_err().contains("--bogus"));
    }
}
