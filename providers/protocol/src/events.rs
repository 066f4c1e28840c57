//! Machine-readable lifecycle events.
//!
//! Init (and the harness's guests) print one JSON object per line on the serial console, prefixed
//! with [`EVENT_PREFIX`]; the QEMU harness and tests assert on them. Kernel messages may interleave
//! with console output, so the parser looks for the prefix anywhere in a line.

use serde::{Deserialize, Serialize};

/// Marks a lifecycle event line on the console.
pub const EVENT_PREFIX: &str = "CERANA-EVENT ";

/// What a shutdown ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownAction {
    Poweroff,
    Reboot,
}

/// One step in a node's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LifecycleEvent {
    /// Filesystems mounted, console and randomness available.
    EarlyBootDone {
        uptime_ms: u64,
    },
    /// The kernel command line was read; `warnings` lists unknown or malformed keys.
    CmdlineParsed {
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// Something in init's service table is wrong (syntax, unknown key, missing binary, cycle);
    /// `service` names the entry when the problem is in one. The rest of the table still runs.
    TableProblem {
        #[serde(default)]
        service: Option<String>,
        error: String,
    },
    /// A service whose conditions on the command line do not hold; it is not started.
    ServiceSkipped {
        service: String,
        reason: String,
    },
    ModuleLoaded {
        module: String,
    },
    ModuleFailed {
        module: String,
        error: String,
    },
    /// The management interface got `cerana.mgmt_ip` (and a default route via `gateway`).
    NetworkConfigured {
        interface: String,
        address: String,
        #[serde(default)]
        gateway: Option<String>,
    },
    /// The management interface could not be set up; the node goes on without it.
    NetworkFailed {
        error: String,
    },
    ServiceStarted {
        service: String,
        pid: u32,
    },
    ServiceReady {
        service: String,
        after_ms: u64,
    },
    /// A service's process ended; `restart_in_ms` is set when it will be restarted.
    ServiceExited {
        service: String,
        pid: u32,
        #[serde(default)]
        code: Option<i32>,
        #[serde(default)]
        signal: Option<i32>,
        #[serde(default)]
        restart_in_ms: Option<u64>,
    },
    /// A service could not be started or gave up.
    ServiceFailed {
        service: String,
        error: String,
    },
    /// Every service the node needs is ready.
    NodeReady {
        uptime_ms: u64,
    },
    ShutdownStarted {
        action: ShutdownAction,
        reason: String,
    },
    ServiceStopped {
        service: String,
        /// True when it ignored its stop signal and was killed.
        #[serde(default)]
        killed: bool,
    },
    /// Right before `reboot(2)`.
    ShutdownComplete {
        action: ShutdownAction,
    },
}

impl LifecycleEvent {
    /// The console line for this event, without a newline.
    pub fn to_line(&self) -> String {
        let json = serde_json::to_string(self).expect("events serialize");
        format!("{EVENT_PREFIX}{json}")
    }

    /// Finds an event in a console line: `None` when the line has none, `Some(Err)` when the
    /// prefix is followed by something that is not a known event.
    pub fn parse_line(line: &str) -> Option<Result<Self, serde_json::Error>> {
        let at = line.find(EVENT_PREFIX)?;
        let json = line[at + EVENT_PREFIX.len()..].trim_end_matches(['\r', '\n']);
        Some(serde_json::from_str(json))
    }

    /// The event's name, as in its `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            Self::EarlyBootDone { .. } => "early_boot_done",
            Self::CmdlineParsed { .. } => "cmdline_parsed",
            Self::TableProblem { .. } => "table_problem",
            Self::ServiceSkipped { .. } => "service_skipped",
            Self::ModuleLoaded { .. } => "module_loaded",
            Self::ModuleFailed { .. } => "module_failed",
            Self::NetworkConfigured { .. } => "network_configured",
            Self::NetworkFailed { .. } => "network_failed",
            Self::ServiceStarted { .. } => "service_started",
            Self::ServiceReady { .. } => "service_ready",
            Self::ServiceExited { .. } => "service_exited",
            Self::ServiceFailed { .. } => "service_failed",
            Self::NodeReady { .. } => "node_ready",
            Self::ShutdownStarted { .. } => "shutdown_started",
            Self::ServiceStopped { .. } => "service_stopped",
            Self::ShutdownComplete { .. } => "shutdown_complete",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_console_lines() {
        let event = LifecycleEvent::ServiceReady { service: "coordinator".into(), after_ms: 12 };
        let line = event.to_line();
        assert_eq!(line, r#"CERANA-EVENT {"event":"service_ready","service":"coordinator","after_ms":12}"#);
        let noisy = format!("[    3.1] random: crng init done{line}\r\n");
        assert_eq!(LifecycleEvent::parse_line(&noisy).unwrap().unwrap(), event);
        assert_eq!(event.name(), "service_ready");
        assert!(LifecycleEvent::parse_line("plain kernel output").is_none());
        assert!(LifecycleEvent::parse_line("CERANA-EVENT {\"event\":\"nope\"}").unwrap().is_err());
    }
}
