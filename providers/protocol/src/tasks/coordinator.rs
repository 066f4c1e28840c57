//! `coordinator-*`: answered by the coordinator itself, about itself.

use crate::error::TaskError;
use crate::names::{ProviderName, RequestId, TaskName};
use crate::task::NoArgs;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

crate::declare_tasks! {
    CoordinatorStatus = "coordinator-status", Read, "The coordinator's name, version, uptime and load", NoArgs => CoordinatorStatusResult;
    CoordinatorProviders = "coordinator-providers", Read, "Connected providers and the tasks each serves", NoArgs => ProvidersResult;
    CoordinatorTasks = "coordinator-tasks", Read, "Every task that is documented or served, with its providers in priority order", NoArgs => TasksResult;
    CoordinatorHistory = "coordinator-history", Read, "Recent tasks from the journal, newest first", HistoryArgs => HistoryResult;
    CoordinatorTaskGet = "coordinator-task-get", Read, "One task's journal entry, with its result while it is kept", TaskGetArgs => JournalEntry;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorStatusResult {
    pub name: String,
    pub version: String,
    pub uptime_seconds: f64,
    pub providers: u32,
    pub in_flight: u32,
    pub journal_entries: u32,
    pub journal_capacity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub name: ProviderName,
    pub version: String,
    pub priority: u16,
    /// Process id from the socket's peer credentials.
    pub pid: Option<u32>,
    pub connected_at_ms: u64,
    pub in_flight: u32,
    pub tasks: Vec<TaskName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvidersResult {
    pub providers: Vec<ProviderInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProvider {
    pub provider: ProviderName,
    pub priority: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskListing {
    pub task: TaskName,
    /// Empty for tasks a provider serves but the catalog does not document.
    pub description: String,
    /// Lowest priority first: the order the coordinator tries them in.
    pub providers: Vec<TaskProvider>,
    /// Answered by the coordinator itself.
    pub builtin: bool,
    /// Which credentials may run it (`write` for a task the catalog does not declare). Absent
    /// from older coordinators.
    #[serde(default = "unclassified")]
    pub access: crate::Access,
}

fn unclassified() -> crate::Access {
    crate::Access::Write
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TasksResult {
    pub tasks: Vec<TaskListing>,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Accepted,
    Running,
    Done,
    Failed,
    TimedOut,
    Cancelled,
}

impl TaskState {
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Accepted | TaskState::Running)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryArgs {
    /// At most this many entries (default 50; the coordinator clamps it to its page size).
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub task: Option<TaskName>,
    #[serde(default)]
    pub state: Option<TaskState>,
    /// Only entries older than this cursor: a previous page's `next_before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// One page of the journal, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResult {
    pub entries: Vec<JournalEntry>,
    /// Set when older matching entries may follow: pass it as `before` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

/// Why a finished task's result is not in its journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OmittedReason {
    /// The result was larger than the journal keeps for one task.
    TooLarge,
    /// Dropped (oldest first) to keep the journal within its byte budget.
    JournalFull,
    /// The result may hold a credential shown once (an `Admin` task's).
    Secret,
    /// A reason this version does not know (from a newer coordinator).
    #[serde(other)]
    Other,
}

/// Marks a result the journal did not keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultOmitted {
    /// Size of the result's JSON.
    pub bytes: u64,
    pub reason: OmittedReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskGetArgs {
    pub id: RequestId,
}

/// One task as the coordinator's journal records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalEntry {
    pub id: RequestId,
    pub task: TaskName,
    pub state: TaskState,
    /// Who sent it: `unix:pid=…,uid=…,name=…` or `http:ADDR`.
    pub caller: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderName>,
    /// The peer coordinator it was forwarded to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<RequestId>,
    pub accepted_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Time from acceptance to the final state, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// The result, while it is small enough to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    /// Set instead of `result` when the task succeeded but its result is not kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_omitted: Option<ResultOmitted>,
}
