//! The `init` provider: relays `init-*` tasks to init's control socket
//! (`/run/cerana/init.sock`, or `CERANA_INIT_SOCKET`), one request per connection.
//! Init stays free of async code and of the Task API connection; this process carries both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cerana_protocol::tasks::init::{
    ControlReply, ControlRequest, InitPoweroff, InitReboot, InitServiceList, InitServiceLogs, InitServiceRestart,
    InitServiceSignal, InitServiceStart, InitServiceStop, ServiceArgs, ServiceLogsArgs, ServiceSignalArgs,
};
use cerana_protocol::{ErrorCode, NoArgs, TaskError};
use cerana_provider_sdk::Provider;
use serde::de::DeserializeOwned;

/// Where init listens by default.
pub const DEFAULT_INIT_SOCKET: &str = "/run/cerana/init.sock";
/// Environment variable overriding [`DEFAULT_INIT_SOCKET`].
pub const INIT_SOCKET_ENV: &str = "CERANA_INIT_SOCKET";
/// Init answers at once; anything slower means it is wedged.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

pub fn init_socket_from_env() -> PathBuf {
    std::env::var_os(INIT_SOCKET_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_INIT_SOCKET))
}

/// Sends one request to init and decodes its answer as `T`.
pub async fn call<T: DeserializeOwned>(socket: &Path, req: ControlRequest) -> Result<T, TaskError> {
    let reply = cerana_client::init_control::request(socket, &req, CONTROL_TIMEOUT).await.map_err(|e| {
        TaskError::new(ErrorCode::Unavailable, format!("init's control socket {}: {e}", socket.display()))
    })?;
    match reply {
        ControlReply::Ok(value) => serde_json::from_value(value)
            .map_err(|e| TaskError::new(ErrorCode::Internal, format!("init answered with an unexpected shape: {e}"))),
        ControlReply::Error { code, message } => Err(TaskError::new(code, message)),
    }
}

/// The provider, talking to init at `socket`.
/// The whole `cerana-init-provider` program: init's control socket from `CERANA_INIT_SOCKET`.
pub fn main() -> std::process::ExitCode {
    provider(init_socket_from_env()).main()
}

pub fn provider(socket: PathBuf) -> Provider {
    let s = move || socket.clone();
    let (s1, s2, s3, s4, s5, s6, s7, s8) = (s(), s(), s(), s(), s(), s(), s(), s());
    Provider::new("init", env!("CARGO_PKG_VERSION"))
        .task::<InitServiceList, _, _>(move |_ctx, _args: NoArgs| {
            let socket = s1.clone();
            async move { call(&socket, ControlRequest::List).await }
        })
        .task::<InitServiceStart, _, _>(move |_ctx, args: ServiceArgs| {
            let socket = s2.clone();
            async move { call(&socket, ControlRequest::Start { service: args.service }).await }
        })
        .task::<InitServiceStop, _, _>(move |_ctx, args: ServiceArgs| {
            let socket = s3.clone();
            async move { call(&socket, ControlRequest::Stop { service: args.service }).await }
        })
        .task::<InitServiceRestart, _, _>(move |_ctx, args: ServiceArgs| {
            let socket = s4.clone();
            async move { call(&socket, ControlRequest::Restart { service: args.service }).await }
        })
        .task::<InitServiceSignal, _, _>(move |_ctx, args: ServiceSignalArgs| {
            let socket = s8.clone();
            async move {
                let req = ControlRequest::Signal { service: args.service, signal: args.signal, whom: args.whom };
                call(&socket, req).await
            }
        })
        .task::<InitServiceLogs, _, _>(move |_ctx, args: ServiceLogsArgs| {
            let socket = s5.clone();
            async move {
                let req = ControlRequest::Logs { service: args.service, lines: args.lines };
                call(&socket, req).await
            }
        })
        .task::<InitPoweroff, _, _>(move |_ctx, _args: NoArgs| {
            let socket = s6.clone();
            async move { call(&socket, ControlRequest::Poweroff).await }
        })
        .task::<InitReboot, _, _>(move |_ctx, _args: NoArgs| {
            let socket = s7.clone();
            async move { call(&socket, ControlRequest::Reboot).await }
        })
}
