//! `health-*`: checks that pass or fail, served by the `health` provider (`cerana-health`,
//! issue #7). The `service` provider runs a service's [`HealthCheck`]s for its health state.
//!
//! A check that ran answers a [`HealthReport`], passed or failed with a [`FailReason`]; only
//! arguments that make no sense (a relative path, a malformed regex, `min_size > max_size`) are
//! task errors (`invalid_args`).

use crate::message::Request;
use crate::task::Task;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

crate::declare_tasks! {
    HealthUptime = "health-uptime", Read, "Passes when a process (by pid), the oldest process of a cgroup, or a service's cgroup has run at least min_uptime_ms", UptimeArgs => HealthReport;
    HealthFile = "health-file", Read, "Passes when a file exists (or, with not_exist, does not) with the given permission bits and size bounds", FileArgs => HealthReport;
    HealthTcpResponse = "health-tcp-response", Write, "Passes when a TCP connect succeeds and, with a regexp, the response (after sending body) matches it", TcpResponseArgs => HealthReport;
    HealthHttpStatus = "health-http-status", Write, "Passes when an HTTP(S) request answers with the expected status code", HttpStatusArgs => HealthReport;
}

/// Timeout of a check whose arguments name none.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Longest timeout a check may ask for: within the coordinator's default request timeout (60 s),
/// so a caller that sets none still gets the check's own verdict.
pub const MAX_TIMEOUT_MS: u64 = 50_000;

fn timeout_of(timeout_ms: Option<u64>) -> Duration {
    Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
}

fn check_timeout(timeout_ms: Option<u64>) -> Result<(), String> {
    match timeout_ms {
        Some(0) => Err("timeout_ms must be at least 1".into()),
        Some(ms) if ms > MAX_TIMEOUT_MS => Err(format!("timeout_ms {ms} is over the maximum {MAX_TIMEOUT_MS}")),
        _ => Ok(()),
    }
}

/// Which process(es) an uptime check looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProcessTarget {
    /// One process.
    Pid(u32),
    /// The oldest process in a cgroup v2 directory (absolute, under /sys/fs/cgroup) or below it.
    Cgroup(String),
    /// The oldest process of a service, by container id `<bundle_id>.<id>`: its cgroup
    /// `<services cgroup>/<bundle_id>.<id>` (see [`crate::tasks::metrics::SERVICES_CGROUP`]).
    Service(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UptimeArgs {
    pub target: ProcessTarget,
    /// The check passes once the process has run this long (0: running at all).
    #[serde(default)]
    pub min_uptime_ms: u64,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl UptimeArgs {
    pub fn validate(&self) -> Result<(), String> {
        check_timeout(self.timeout_ms)?;
        match &self.target {
            ProcessTarget::Pid(0) => Err("pid 0 is not a process".into()),
            ProcessTarget::Pid(_) => Ok(()),
            ProcessTarget::Cgroup(path) => {
                let inside =
                    path.strip_prefix("/sys/fs/cgroup").is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
                if !inside || path.split('/').any(|part| part == "..") {
                    return Err(format!("cgroup {path:?} is not a directory under /sys/fs/cgroup"));
                }
                Ok(())
            }
            ProcessTarget::Service(id) => crate::tasks::metrics::check_service_id(id),
        }
    }

    pub fn timeout(&self) -> Duration {
        timeout_of(self.timeout_ms)
    }
}

/// Permission bits (including setuid, setgid, sticky), written in octal: `"0644"`, `"755"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileMode(u32);

impl FileMode {
    pub fn new(bits: u32) -> Result<Self, String> {
        if bits > 0o7777 {
            return Err(format!("mode {bits:o} has bits beyond 07777"));
        }
        Ok(Self(bits))
    }

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl std::str::FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!("mode {s:?} is not an octal number like \"0644\""));
        }
        Self::new(u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?)
    }
}

impl Serialize for FileMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileArgs {
    /// Absolute path; symbolic links are followed.
    pub path: String,
    /// Pass when the file does NOT exist (then mode and sizes must be absent).
    #[serde(default)]
    pub not_exist: bool,
    /// Exact permission bits the file must have.
    #[serde(default)]
    pub mode: Option<FileMode>,
    #[serde(default)]
    pub min_size: Option<u64>,
    #[serde(default)]
    pub max_size: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl FileArgs {
    pub fn validate(&self) -> Result<(), String> {
        check_timeout(self.timeout_ms)?;
        if !self.path.starts_with('/') {
            return Err(format!("path {:?} is not absolute", self.path));
        }
        if self.not_exist && (self.mode.is_some() || self.min_size.is_some() || self.max_size.is_some()) {
            return Err("not_exist cannot be combined with mode, min_size or max_size".into());
        }
        if let (Some(min), Some(max)) = (self.min_size, self.max_size) {
            if min > max {
                return Err(format!("min_size {min} is larger than max_size {max}"));
            }
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        timeout_of(self.timeout_ms)
    }
}

/// Largest response a TCP check reads while looking for its regexp.
pub const MAX_TCP_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpResponseArgs {
    /// `host:port`: an IP address or a name resolved by the system.
    pub address: String,
    /// Sent once connected.
    #[serde(default)]
    pub body: Option<String>,
    /// A regular expression (Rust `regex` syntax) the response must match within the timeout;
    /// without one a successful connect passes.
    #[serde(default)]
    pub regexp: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl TcpResponseArgs {
    /// Checks everything but the regexp's syntax (the provider compiles it).
    pub fn validate(&self) -> Result<(), String> {
        check_timeout(self.timeout_ms)?;
        match self.address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(()),
            _ => Err(format!("address {:?} is not host:port", self.address)),
        }
    }

    pub fn timeout(&self) -> Duration {
        timeout_of(self.timeout_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStatusArgs {
    /// `http://` or `https://` (verified against the system's CA bundle).
    pub url: String,
    /// Default `GET`.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    /// Default 200.
    #[serde(default)]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl HttpStatusArgs {
    pub fn validate(&self) -> Result<(), String> {
        check_timeout(self.timeout_ms)?;
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("url {:?} is not http:// or https://", self.url));
        }
        if let Some(method) = &self.method {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!("method {method:?} is not an HTTP method like GET"));
            }
        }
        if let Some(code) = self.status_code {
            if !(100..=599).contains(&code) {
                return Err(format!("status_code {code} is not an HTTP status"));
            }
        }
        Ok(())
    }

    pub fn status_code(&self) -> u16 {
        self.status_code.unwrap_or(200)
    }

    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("GET")
    }

    pub fn timeout(&self) -> Duration {
        timeout_of(self.timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Pass,
    Fail,
}

/// Why a check failed; stable, for callers to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The check did not finish within its timeout.
    Timeout,
    /// No such process, or the cgroup has none.
    NotRunning,
    /// The process has run less than min_uptime_ms.
    TooYoung,
    /// The file does not exist.
    Missing,
    /// The file exists though not_exist was asked.
    Exists,
    WrongMode,
    TooSmall,
    TooLarge,
    /// The TCP connect was refused.
    Refused,
    /// The host could not be resolved or reached, or the connection broke.
    Unreachable,
    /// The response did not match the regexp.
    NoMatch,
    /// The HTTP status was not the expected one.
    WrongStatus,
    /// Reading what the check looks at failed (permissions, I/O).
    Io,
}

/// The outcome of a check that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub status: HealthStatus,
    /// Set when the check failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailReason>,
    /// What was observed, for people: "up 3.2 s", "connection refused", "status 500".
    pub message: String,
    pub elapsed_ms: u64,
}

impl HealthReport {
    pub fn pass(message: impl Into<String>, elapsed: Duration) -> Self {
        Self {
            status: HealthStatus::Pass,
            reason: None,
            message: message.into(),
            elapsed_ms: elapsed.as_millis() as u64,
        }
    }

    pub fn fail(reason: FailReason, message: impl Into<String>, elapsed: Duration) -> Self {
        Self {
            status: HealthStatus::Fail,
            reason: Some(reason),
            message: message.into(),
            elapsed_ms: elapsed.as_millis() as u64,
        }
    }

    pub fn passed(&self) -> bool {
        self.status == HealthStatus::Pass
    }
}

/// One health check of a service, as a service definition carries it: the task to run and its
/// arguments, `{"type": "health-tcp-response", "args": {"address": "127.0.0.1:80"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "args", deny_unknown_fields)]
pub enum HealthCheck {
    #[serde(rename = "health-uptime")]
    Uptime(UptimeArgs),
    #[serde(rename = "health-file")]
    File(FileArgs),
    #[serde(rename = "health-tcp-response")]
    TcpResponse(TcpResponseArgs),
    #[serde(rename = "health-http-status")]
    HttpStatus(HttpStatusArgs),
}

impl HealthCheck {
    /// The task that runs this check.
    pub fn task(&self) -> &'static str {
        match self {
            Self::Uptime(_) => HealthUptime::NAME,
            Self::File(_) => HealthFile::NAME,
            Self::TcpResponse(_) => HealthTcpResponse::NAME,
            Self::HttpStatus(_) => HealthHttpStatus::NAME,
        }
    }

    /// Checks the arguments (all but a TCP regexp's syntax).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Uptime(a) => a.validate(),
            Self::File(a) => a.validate(),
            Self::TcpResponse(a) => a.validate(),
            Self::HttpStatus(a) => a.validate(),
        }
    }

    /// The check's own timeout: a caller's request timeout should leave room beyond it.
    pub fn timeout(&self) -> Duration {
        match self {
            Self::Uptime(a) => a.timeout(),
            Self::File(a) => a.timeout(),
            Self::TcpResponse(a) => a.timeout(),
            Self::HttpStatus(a) => a.timeout(),
        }
    }

    /// A request running this check (answered by a [`HealthReport`]), with a request timeout
    /// one second beyond the check's own so a slow check fails rather than times out.
    pub fn request(&self) -> Result<Request, serde_json::Error> {
        let mut request = match self {
            Self::Uptime(a) => Request::for_task::<HealthUptime>(a),
            Self::File(a) => Request::for_task::<HealthFile>(a),
            Self::TcpResponse(a) => Request::for_task::<HealthTcpResponse>(a),
            Self::HttpStatus(a) => Request::for_task::<HealthHttpStatus>(a),
        }?;
        request.timeout_ms = Some(self.timeout().as_millis() as u64 + 1_000);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_strings() {
        let mode: FileMode = serde_json::from_str(r#""0644""#).unwrap();
        assert_eq!(mode.bits(), 0o644);
        assert_eq!(serde_json::to_string(&mode).unwrap(), r#""0644""#);
        assert_eq!("4755".parse::<FileMode>().unwrap().bits(), 0o4755);
        for bad in [r#""""#, r#""0x1""#, r#""0899""#, r#""77777""#, "420"] {
            assert!(serde_json::from_str::<FileMode>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arguments_that_make_no_sense_are_refused() {
        let file = |json: &str| serde_json::from_str::<FileArgs>(json).unwrap().validate();
        file(r#"{"path":"/etc/passwd","mode":"0644","min_size":1}"#).unwrap();
        assert!(file(r#"{"path":"etc/passwd"}"#).unwrap_err().contains("not absolute"));
        assert!(file(r#"{"path":"/x","not_exist":true,"mode":"0644"}"#).is_err());
        assert!(file(r#"{"path":"/x","min_size":5,"max_size":4}"#).unwrap_err().contains("larger"));
        assert!(file(r#"{"path":"/x","timeout_ms":0}"#).is_err());
        assert!(file(r#"{"path":"/x","timeout_ms":600000}"#).unwrap_err().contains("maximum"));

        let tcp = |address: &str| {
            TcpResponseArgs { address: address.into(), body: None, regexp: None, timeout_ms: None }.validate()
        };
        tcp("127.0.0.1:80").unwrap();
        tcp("[::1]:80").unwrap();
        tcp("localhost:8080").unwrap();
        for bad in ["127.0.0.1", ":80", "127.0.0.1:0", "127.0.0.1:99999", "host:http"] {
            assert!(tcp(bad).is_err(), "{bad}");
        }

        let uptime = |target: ProcessTarget| UptimeArgs { target, min_uptime_ms: 0, timeout_ms: None }.validate();
        uptime(ProcessTarget::Pid(1)).unwrap();
        uptime(ProcessTarget::Cgroup("/sys/fs/cgroup/cerana/services/web".into())).unwrap();
        uptime(ProcessTarget::Service("web".into())).unwrap();
        assert!(uptime(ProcessTarget::Pid(0)).is_err());
        assert!(uptime(ProcessTarget::Cgroup("/etc".into())).is_err());
        assert!(uptime(ProcessTarget::Cgroup("/sys/fs/cgroup/../../etc".into())).is_err());
        assert!(uptime(ProcessTarget::Cgroup("/sys/fs/cgroupx".into())).is_err());
        assert!(uptime(ProcessTarget::Service("../x".into())).is_err());

        let http = |json: &str| serde_json::from_str::<HttpStatusArgs>(json).unwrap().validate();
        http(r#"{"url":"http://127.0.0.1:8080/health","method":"HEAD","status_code":204}"#).unwrap();
        assert!(http(r#"{"url":"ftp://x"}"#).is_err());
        assert!(http(r#"{"url":"http://x","method":"get"}"#).is_err());
        assert!(http(r#"{"url":"http://x","status_code":42}"#).is_err());
    }

    #[test]
    fn a_service_check_names_its_task_and_builds_its_request() {
        let json =
            r#"{"type":"health-tcp-response","args":{"address":"127.0.0.1:80","regexp":"^OK","timeout_ms":2000}}"#;
        let check: HealthCheck = serde_json::from_str(json).unwrap();
        assert_eq!(check.task(), "health-tcp-response");
        assert_eq!(serde_json::from_str::<HealthCheck>(&serde_json::to_string(&check).unwrap()).unwrap(), check);
        let request = check.request().unwrap();
        assert_eq!(request.task.as_str(), "health-tcp-response");
        assert_eq!(request.timeout_ms, Some(3000));
        let uptime: HealthCheck = serde_json::from_str(
            r#"{"type":"health-uptime","args":{"target":{"service":"web"},"min_uptime_ms":1000}}"#,
        )
        .unwrap();
        assert_eq!(uptime.timeout(), Duration::from_millis(DEFAULT_TIMEOUT_MS));
        assert!(serde_json::from_str::<HealthCheck>(r#"{"type":"health-nope","args":{}}"#).is_err());
        let report = HealthReport::fail(FailReason::Refused, "connection refused", Duration::from_millis(3));
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"status":"fail","reason":"refused","message":"connection refused","elapsed_ms":3}"#
        );
        assert!(!report.passed());
    }
}
