//! `init-*`: the node's service supervisor (PID 1), served by the `init` provider
//! (`cerana-init-provider`), which relays each task to init's control socket.
//!
//! Init's control socket speaks the same types: a [`ControlRequest`] in a length-prefixed JSON
//! frame, answered by one [`ControlReply`] frame.

use crate::events::ShutdownAction;
use crate::task::NoArgs;
use crate::ErrorCode;
use serde::{Deserialize, Serialize};

crate::declare_tasks! {
    InitServiceList = "init-service-list", Read, "Every service in init's table with its state, pid, uptime and restarts", NoArgs => ServiceList;
    InitServiceStart = "init-service-start", Write, "Starts a stopped or failed service (its dependencies must be ready)", ServiceArgs => ServiceStatus;
    InitServiceStop = "init-service-stop", Write, "Stops a service with its stop signal, then SIGKILL after its timeout; it stays stopped", ServiceArgs => ServiceStatus;
    InitServiceRestart = "init-service-restart", Write, "Stops a service and starts it again", ServiceArgs => ServiceStatus;
    InitServiceSignal = "init-service-signal", Write, "Sends a signal to a running service (its main process, or its whole process group), like systemctl kill; init then handles its exit by its restart policy", ServiceSignalArgs => ServiceStatus;
    InitServiceLogs = "init-service-logs", Read, "The last lines a service wrote to stdout/stderr (init's ring buffer)", ServiceLogsArgs => ServiceLogs;
    InitPoweroff = "init-poweroff", Write, "Stops every service in reverse dependency order and powers the node off", NoArgs => ShutdownAccepted;
    InitReboot = "init-reboot", Write, "Stops every service in reverse dependency order and reboots the node", NoArgs => ShutdownAccepted;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceArgs {
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSignalArgs {
    pub service: String,
    /// `KILL`, `SIGTERM`, `hup`, or a number.
    pub signal: String,
    #[serde(default)]
    pub whom: SignalWhom,
}

/// Which processes of a service a signal goes to (systemctl's `--kill-whom`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalWhom {
    /// The process init started, as a crash of it would end only it.
    Main,
    /// Its whole process group, children included.
    #[default]
    Group,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLogsArgs {
    pub service: String,
    /// At most this many of the newest lines; all buffered lines when absent.
    #[serde(default)]
    pub lines: Option<u32>,
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Its table entry is wrong (unknown key, missing binary, cycle, ...); see `detail`.
    Invalid,
    /// A condition on the command line does not hold; it never starts.
    Disabled,
    /// Waiting for its dependencies to become ready.
    Waiting,
    /// Spawned, not ready yet.
    Starting,
    /// Ready (for a one-shot task: still running after being ready is not possible).
    Running,
    /// A one-shot task that finished successfully.
    Done,
    /// Exited; waits out its restart delay.
    Backoff,
    /// Exited and will not be restarted (policy, or a one-shot task failed).
    Failed,
    /// Its stop signal was sent; waiting for it to exit.
    Stopping,
    /// Stopped on request; starts again only when asked.
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Time since the current process started.
    #[serde(default)]
    pub uptime_ms: Option<u64>,
    /// How many times init restarted it after an exit.
    pub restarts: u32,
    pub oneshot: bool,
    /// Why it is invalid, disabled, waiting or failed; how its last process ended.
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLogs {
    pub service: String,
    pub lines: Vec<String>,
    /// Lines that fell out of the ring buffer since the service was first started.
    pub dropped_lines: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownAccepted {
    pub action: ShutdownAction,
}

/// A request on init's control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    List,
    Start {
        service: String,
    },
    Stop {
        service: String,
    },
    Restart {
        service: String,
    },
    Signal {
        service: String,
        signal: String,
        #[serde(default)]
        whom: SignalWhom,
    },
    Logs {
        service: String,
        #[serde(default)]
        lines: Option<u32>,
    },
    Poweroff,
    Reboot,
}

/// Init's answer to one [`ControlRequest`]: the result is the matching task's output type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlReply {
    Ok(serde_json::Value),
    Error { code: ErrorCode, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_are_stable_json() {
        let req: ControlRequest = serde_json::from_str(r#"{"op":"logs","service":"x","lines":5}"#).unwrap();
        assert_eq!(req, ControlRequest::Logs { service: "x".into(), lines: Some(5) });
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"stop","service":"x","x":1}"#).is_err());
        let req: ControlRequest = serde_json::from_str(r#"{"op":"signal","service":"x","signal":"KILL"}"#).unwrap();
        assert_eq!(req, ControlRequest::Signal { service: "x".into(), signal: "KILL".into(), whom: SignalWhom::Group });
        let args: ServiceSignalArgs = serde_json::from_str(r#"{"service":"x","signal":"9","whom":"main"}"#).unwrap();
        assert_eq!(args.whom, SignalWhom::Main);
        assert!(serde_json::from_str::<ServiceSignalArgs>(r#"{"service":"x","signal":"9","whom":"all"}"#).is_err());
        let reply = ControlReply::Error { code: ErrorCode::NotFound, message: "no".into() };
        assert_eq!(serde_json::to_string(&reply).unwrap(), r#"{"error":{"code":"not_found","message":"no"}}"#);
    }
}
