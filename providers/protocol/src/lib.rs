//! The CeranaOS Task API.
//!
//! Every change to a node or the cluster is a named *task*. Clients send a [`Request`] to the
//! node's coordinator, which acknowledges it at once and later delivers a [`Response`] carrying
//! either the task's result or a structured [`TaskError`]. Providers register the tasks they serve
//! with a [`ProviderHello`]. Every task name, with its argument and result types, is declared in
//! [`tasks`]; this crate is shared by the coordinator, the providers, the CLI and the tests.
//!
//! Wire format on unix sockets: length-prefixed frames ([`frame`]) holding JSON messages
//! ([`ToCoordinator`], [`FromCoordinator`]). Byte streams (e.g. `zfs send`) travel on separate
//! connections as chunk frames ([`stream`]). Between nodes and for external clients the same JSON
//! travels over HTTP(S).

pub mod boot_wire;
pub mod error;
pub mod events;
#[cfg(feature = "tokio")]
pub mod fd_frame;
pub mod frame;
pub mod message;
pub mod names;
pub mod readiness;
#[cfg(test)]
mod rolling_upgrade_tests;
pub mod stream;
pub mod task;
pub mod tasks;

pub use error::{ErrorCode, TaskError};
pub use message::{
    FromCoordinator, ProviderHello, Request, Response, StreamDirection, StreamHandle, TaskRegistration, ToCoordinator,
    Welcome,
};
pub use names::{NameError, NodeUrl, Origin, ProviderName, RequestId, StreamId, TaskName};
pub use task::{Access, Task, TaskInfo};

/// Version of the wire protocol; a coordinator refuses a hello with another major version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default path of the coordinator's unix socket on a node.
pub const DEFAULT_COORDINATOR_SOCKET: &str = "/run/cerana/coordinator.sock";

/// Environment variable naming the coordinator socket for providers and clients.
pub const COORDINATOR_SOCKET_ENV: &str = "CERANA_COORDINATOR_SOCKET";

/// Environment variable carrying the readiness fd a supervisor passes to a service: the
/// service writes `READY\n` to it once it serves, then closes it.
pub const READY_FD_ENV: &str = "CERANA_READY_FD";

#[doc(hidden)]
pub use serde_json as __serde_json;
pub use task::{NoArgs, NoOutput};
