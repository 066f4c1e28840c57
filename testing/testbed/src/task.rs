//! Tasks through a booted node's API as tests use them: [`Vm::ok`] must succeed, [`Vm::fails`]
//! must fail with a given code (and reason), [`Vm::call`] sends a whole request. These panic
//! with the console's path when the node cannot be reached: they are assertions.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{self, HttpError};
use crate::vm::Vm;

/// How long [`Vm::ok`] and [`Vm::fails`] give a task (also sent as its `timeout_ms`).
pub const TASK_TIMEOUT: Duration = Duration::from_secs(300);

/// A task that answered with an error.
#[derive(Debug, Clone)]
pub struct TaskFailure {
    pub task: String,
    pub status: u16,
    /// The Task API code (`not_found`, `invalid_args`, ...).
    pub code: String,
    /// The provider's stable reason (`details.reason`), where it gives one.
    pub reason: Option<String>,
    pub message: String,
    /// The whole error object.
    pub error: Value,
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} answered HTTP {}: {}", self.task, self.status, self.error)
    }
}

impl TaskFailure {
    fn new(task: &str, status: u16, error: Value) -> Self {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Self {
            task: task.into(),
            status,
            code: text(&error["code"]),
            reason: error["details"]["reason"].as_str().map(str::to_owned),
            message: text(&error["message"]),
            error,
        }
    }
}

impl Vm {
    /// Sends a whole request (`{task, args, stream?, timeout_ms?}`) to `POST /v1/tasks`; the
    /// whole response when it carries a result. Refused connections are retried until
    /// `timeout` (the guest's network may still be coming up); nothing is sent twice.
    pub fn call(&self, request: &Value, timeout: Duration) -> Result<Value, TaskFailure> {
        let task = request["task"].as_str().unwrap_or("?");
        let console = self.log_path().display().to_string();
        let addr = self.api_addr().unwrap_or_else(|| panic!("{task}: this VM has no API forwarded"));
        let body = request.to_string();
        let started = Instant::now();
        let response = loop {
            match http::post_json(addr, "/v1/tasks", self.token(), body.as_bytes(), timeout) {
                Ok(r) => break r,
                Err(HttpError::Connect { .. }) if started.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                Err(e) => panic!("{task}: {e}; console {console}"),
            }
        };
        let value: Value = serde_json::from_slice(&response.body).unwrap_or_else(|e| {
            panic!("{task}: not JSON ({e}): {}; console {console}", String::from_utf8_lossy(&response.body))
        });
        eprintln!("{task} -> {} in {:.2} s", response.status, started.elapsed().as_secs_f64());
        match value.get("error").filter(|e| !e.is_null()) {
            None if response.status == 200 => Ok(value),
            error => Err(TaskFailure::new(task, response.status, error.cloned().unwrap_or(Value::Null))),
        }
    }

    /// Runs a task that must succeed; its result.
    #[track_caller]
    pub fn ok(&self, task: &str, args: Value) -> Value {
        match self.call(&request(task, &args), TASK_TIMEOUT) {
            Ok(v) => v["result"].clone(),
            Err(e) => panic!("{task} {args} failed: {e}; console {}", self.log_path().display()),
        }
    }

    /// Runs a task that must fail with `code` and, when given, the provider's `reason`.
    #[track_caller]
    pub fn fails(&self, task: &str, args: Value, code: &str, reason: Option<&str>) -> TaskFailure {
        match self.call(&request(task, &args), TASK_TIMEOUT) {
            Ok(v) => panic!("{task} {args} succeeded, expected {code}/{reason:?}: {v}"),
            Err(e) => {
                assert_eq!(e.code, code, "{task} {args}: {e}");
                if reason.is_some() {
                    assert_eq!(e.reason.as_deref(), reason, "{task} {args}: {e}");
                }
                e
            }
        }
    }
}

fn request(task: &str, args: &Value) -> Value {
    json!({ "task": task, "args": args, "timeout_ms": TASK_TIMEOUT.as_millis() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_carries_code_reason_and_message() {
        let e = TaskFailure::new(
            "zfs-create",
            409,
            json!({"code": "already_exists", "message": "data/x exists", "details": {"reason": "exists"}}),
        );
        assert_eq!(
            (e.code.as_str(), e.reason.as_deref(), e.message.as_str()),
            ("already_exists", Some("exists"), "data/x exists")
        );
        assert!(e.to_string().contains("HTTP 409"), "{e}");
    }
}
