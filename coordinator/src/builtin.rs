//! The `coordinator-*` tasks, answered by the coordinator itself.

use crate::journal::Journal;
use cerana_protocol::tasks::coordinator::{
    CoordinatorStatusResult, HistoryArgs, ProviderInfo, ProvidersResult, TaskGetArgs, TaskListing, TaskProvider,
    TasksResult,
};
use cerana_protocol::{tasks, ErrorCode, NoArgs, TaskError, TaskName};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Task names with this prefix belong to the coordinator; providers cannot register them.
pub const PREFIX: &str = "coordinator-";

pub fn is_builtin(task: &str) -> bool {
    task.starts_with(PREFIX)
}

/// What the built-in tasks read of a running coordinator (the router's `Core` implements it).
pub trait State {
    /// The coordinator's name.
    fn name(&self) -> &str;
    fn uptime(&self) -> Duration;
    /// Requests accepted and not finished.
    fn in_flight(&self) -> usize;
    /// Connected providers.
    fn provider_count(&self) -> usize;
    /// Connected providers, each with its requests in flight.
    fn providers(&self) -> Vec<ProviderInfo>;
    /// Every task some provider serves, with its providers.
    fn served_tasks(&self) -> Vec<(TaskName, Vec<TaskProvider>)>;
    fn journal(&self) -> &Mutex<Journal>;
}

fn args<T: DeserializeOwned>(task: &TaskName, raw: &str) -> Result<T, TaskError> {
    serde_json::from_str(raw).map_err(|e| TaskError::new(ErrorCode::InvalidArgs, format!("arguments of {task}: {e}")))
}

pub fn run(core: &dyn State, task: &TaskName, raw_args: &str) -> Result<Box<RawValue>, TaskError> {
    match task.as_str() {
        "coordinator-status" => {
            args::<NoArgs>(task, raw_args)?;
            let providers = core.provider_count() as u32;
            let in_flight = core.in_flight() as u32;
            let (journal_entries, journal_capacity) = {
                let journal = core.journal().lock().expect("journal lock");
                (journal.len() as u32, journal.capacity() as u32)
            };
            to_raw(&CoordinatorStatusResult {
                name: core.name().to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                uptime_seconds: core.uptime().as_secs_f64(),
                providers,
                in_flight,
                journal_entries,
                journal_capacity,
            })
        }
        "coordinator-providers" => {
            args::<NoArgs>(task, raw_args)?;
            to_raw(&ProvidersResult { providers: core.providers() })
        }
        "coordinator-tasks" => {
            args::<NoArgs>(task, raw_args)?;
            to_raw(&TasksResult { tasks: task_listing(core) })
        }
        "coordinator-history" => {
            let query: HistoryArgs = args(task, raw_args)?;
            let page = core.journal().lock().expect("journal lock").query(&query);
            to_raw(&page)
        }
        "coordinator-task-get" => {
            let TaskGetArgs { id } = args(task, raw_args)?;
            let journal = core.journal().lock().expect("journal lock");
            match journal.find(id) {
                Some(entry) => to_raw(entry),
                None => Err(TaskError::new(ErrorCode::NotFound, format!("no task {id} in the journal"))),
            }
        }
        other => Err(TaskError::new(ErrorCode::UnknownTask, format!("the coordinator has no task named {other}"))),
    }
}

/// The catalog merged with what providers serve.
fn task_listing(core: &dyn State) -> Vec<TaskListing> {
    let mut listing: BTreeMap<String, TaskListing> = tasks::catalog()
        .map(|info| {
            let name = TaskName::new(info.name).expect("catalog names are valid");
            (
                info.name.to_owned(),
                TaskListing {
                    task: name,
                    description: info.description.to_owned(),
                    providers: Vec::new(),
                    builtin: is_builtin(info.name),
                    access: info.access,
                },
            )
        })
        .collect();
    for (task, providers) in core.served_tasks() {
        listing
            .entry(task.to_string())
            .or_insert_with(|| TaskListing {
                task: task.clone(),
                description: String::new(),
                providers: Vec::new(),
                builtin: false,
                access: cerana_protocol::Access::Write,
            })
            .providers = providers;
    }
    listing.into_values().collect()
}

/// Raw JSON for a serializable value.
pub fn to_raw<T: serde::Serialize>(value: &T) -> Result<Box<RawValue>, TaskError> {
    serde_json::value::to_raw_value(value)
        .map_err(|e| TaskError::new(ErrorCode::Internal, format!("cannot encode a result: {e}")))
}
