//! Finished tasks counted by name and outcome, for `/metrics`.

use cerana_observe::exposition::{Exposition, Kind};
use cerana_protocol::tasks::coordinator::TaskState;
use cerana_protocol::{ErrorCode, TaskError, TaskName};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The task label of requests for tasks nobody documents or serves: their names come from
/// callers and must not grow the label set without bound.
const UNKNOWN_TASK: &str = "(unknown)";

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    count: u64,
    seconds: f64,
}

/// Finished tasks by name and outcome, with the time they took.
#[derive(Debug, Default)]
pub struct TaskCounters {
    tallies: Mutex<BTreeMap<(String, &'static str), Tally>>,
}

fn outcome_label(state: TaskState) -> &'static str {
    match state {
        TaskState::Accepted => "accepted",
        TaskState::Running => "running",
        TaskState::Done => "done",
        TaskState::Failed => "failed",
        TaskState::TimedOut => "timed_out",
        TaskState::Cancelled => "cancelled",
    }
}

impl TaskCounters {
    pub fn record(
        &self,
        task: &TaskName,
        outcome: &Result<Box<RawValue>, TaskError>,
        state: TaskState,
        elapsed: Duration,
    ) {
        let task = match outcome {
            Err(e) if e.code == ErrorCode::UnknownTask => UNKNOWN_TASK.to_owned(),
            _ => task.to_string(),
        };
        let mut tallies = self.tallies.lock().expect("task counters lock");
        let tally = tallies.entry((task, outcome_label(state))).or_default();
        tally.count += 1;
        tally.seconds += elapsed.as_secs_f64();
    }

    /// The `cerana_coordinator_tasks_total` and `cerana_coordinator_task_seconds_total` families.
    pub fn render(&self, out: &mut Exposition) {
        let tallies = self.tallies.lock().expect("task counters lock").clone();
        out.family("cerana_coordinator_tasks_total", Kind::Counter, "Tasks finished, by task and outcome");
        for ((task, outcome), tally) in &tallies {
            out.sample("cerana_coordinator_tasks_total", &[("task", task), ("outcome", outcome)], tally.count as f64);
        }
        out.family(
            "cerana_coordinator_task_seconds_total",
            Kind::Counter,
            "Seconds from acceptance to outcome, summed",
        );
        for ((task, outcome), tally) in &tallies {
            out.sample("cerana_coordinator_task_seconds_total", &[("task", task), ("outcome", outcome)], tally.seconds);
        }
    }
}
