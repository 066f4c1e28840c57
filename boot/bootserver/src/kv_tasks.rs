//! The cluster store as the boot server reaches it: `kv-*` tasks through the node's coordinator
//! socket (the `kv` provider, over mutual TLS to etcd). Shared by the join-token records and the
//! cluster's DHCP leases.

use cerana_client::UnixClient;
use cerana_protocol::{ErrorCode, Request, Task, TaskError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The store could not be asked (no coordinator, no kv provider, no quorum): nothing happened,
/// or at least nothing is known to have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cluster store is unavailable: {0}")]
pub struct Unavailable(pub String);

/// One connection to the coordinator, made again after it fails.
#[derive(Debug)]
pub struct KvTasks {
    socket: PathBuf,
    name: &'static str,
    client: tokio::sync::Mutex<Option<Arc<UnixClient>>>,
    timeout: Duration,
}

impl KvTasks {
    /// Tasks sent to the coordinator listening on `socket`, as client `name`.
    pub fn new(socket: impl Into<PathBuf>, name: &'static str) -> Self {
        Self { socket: socket.into(), name, client: tokio::sync::Mutex::new(None), timeout: Duration::from_secs(4) }
    }

    async fn client(&self) -> Result<Arc<UnixClient>, Unavailable> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let connect = UnixClient::connect(&self.socket, self.name);
        let client = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(client)) => Arc::new(client),
            Ok(Err(e)) => return Err(Unavailable(e.to_string())),
            Err(_) => return Err(Unavailable(format!("{}: no answer", self.socket.display()))),
        };
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `T`; a task's own error comes back as `Ok(Err(..))`, a transport failure drops the
    /// connection and is [`Unavailable`].
    pub async fn run<T: Task>(&self, args: &T::Args) -> Result<Result<T::Output, TaskError>, Unavailable> {
        self.run_waiting::<T>(args, Duration::ZERO).await
    }

    /// [`Self::run`] for a task that itself waits up to `wait` (a campaign): its deadline is
    /// that much longer, so a wait that ends normally is not mistaken for a store out of reach.
    pub async fn run_waiting<T: Task>(
        &self,
        args: &T::Args,
        wait: Duration,
    ) -> Result<Result<T::Output, TaskError>, Unavailable> {
        let client = self.client().await?;
        let mut request = Request::for_task::<T>(args).map_err(|e| Unavailable(e.to_string()))?;
        let timeout = self.timeout + wait;
        request.timeout_ms = Some(timeout.as_millis() as u64);
        let answer = tokio::time::timeout(timeout + Duration::from_secs(1), client.call(request)).await;
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                *self.client.lock().await = None;
                return Err(Unavailable(e.to_string()));
            }
            Err(_) => return Err(Unavailable(format!("{} did not answer in time", T::name()))),
        };
        match response.decode::<T::Output>() {
            Ok(output) => Ok(Ok(output)),
            // No kv provider (yet) on this node, or no quorum behind it: no store for now.
            Err(e)
                if matches!(
                    e.code,
                    ErrorCode::Unavailable
                        | ErrorCode::Timeout
                        | ErrorCode::NoProvider
                        | ErrorCode::UnknownTask
                        | ErrorCode::ProviderLost
                ) =>
            {
                Err(Unavailable(format!("{}: {}", T::name(), e.message)))
            }
            Err(e) => Ok(Err(e)),
        }
    }
}
