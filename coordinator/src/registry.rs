//! Which providers are connected and which tasks each serves, in priority order.

use crate::builtin::is_builtin;
use crate::conn::ConnSender;
use cerana_protocol::tasks::coordinator::{ProviderInfo, TaskProvider};
use cerana_protocol::{ProviderHello, ProviderName, TaskName};
use std::collections::HashMap;
use std::sync::Arc;

/// One connected provider.
#[derive(Debug)]
pub struct ProviderEntry {
    pub conn_id: u64,
    pub hello: ProviderHello,
    pub sender: ConnSender,
    pub pid: Option<u32>,
    pub connected_at_ms: u64,
}

impl ProviderEntry {
    fn priority_of(&self, task: &TaskName) -> u16 {
        self.hello.tasks.iter().find(|t| &t.task == task).and_then(|t| t.priority).unwrap_or(self.hello.priority)
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    providers: HashMap<u64, Arc<ProviderEntry>>,
    /// Per task: providers sorted by (priority, connection order).
    by_task: HashMap<TaskName, Vec<(u16, u64, Arc<ProviderEntry>)>>,
}

/// Why a provider's hello was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("task {0} is answered by the coordinator itself and cannot be registered")]
    Reserved(TaskName),
    #[error("the hello lists no tasks")]
    NoTasks,
    #[error("task {0} is listed twice")]
    Duplicate(TaskName),
}

impl Registry {
    /// Checks a hello before it is welcomed.
    pub fn validate(hello: &ProviderHello) -> Result<(), RegisterError> {
        if hello.tasks.is_empty() {
            return Err(RegisterError::NoTasks);
        }
        let mut seen = std::collections::HashSet::new();
        for t in &hello.tasks {
            if is_builtin(t.task.as_str()) {
                return Err(RegisterError::Reserved(t.task.clone()));
            }
            if !seen.insert(&t.task) {
                return Err(RegisterError::Duplicate(t.task.clone()));
            }
        }
        Ok(())
    }

    pub fn register(&mut self, entry: ProviderEntry) -> Result<(), RegisterError> {
        Self::validate(&entry.hello)?;
        let entry = Arc::new(entry);
        for t in &entry.hello.tasks {
            let list = self.by_task.entry(t.task.clone()).or_default();
            list.push((entry.priority_of(&t.task), entry.conn_id, entry.clone()));
            list.sort_by_key(|(priority, conn, _)| (*priority, *conn));
        }
        self.providers.insert(entry.conn_id, entry);
        Ok(())
    }

    /// Unregisters a connection; returns the provider's name if it was one.
    pub fn remove(&mut self, conn_id: u64) -> Option<ProviderName> {
        let entry = self.providers.remove(&conn_id)?;
        for t in &entry.hello.tasks {
            if let Some(list) = self.by_task.get_mut(&t.task) {
                list.retain(|(_, conn, _)| *conn != conn_id);
                if list.is_empty() {
                    self.by_task.remove(&t.task);
                }
            }
        }
        Some(entry.hello.name.clone())
    }

    /// Live providers of `task`, best first.
    pub fn candidates(&self, task: &TaskName) -> Vec<Arc<ProviderEntry>> {
        self.by_task
            .get(task)
            .map(|list| list.iter().filter(|(_, _, p)| !p.sender.is_closed()).map(|(_, _, p)| p.clone()).collect())
            .unwrap_or_default()
    }

    pub fn sender(&self, conn_id: u64) -> Option<ConnSender> {
        self.providers.get(&conn_id).map(|p| p.sender.clone())
    }

    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    pub fn providers(&self, in_flight: impl Fn(u64) -> u32) -> Vec<ProviderInfo> {
        let mut list: Vec<ProviderInfo> = self
            .providers
            .values()
            .map(|p| ProviderInfo {
                name: p.hello.name.clone(),
                version: p.hello.version.clone(),
                priority: p.hello.priority,
                pid: p.pid,
                connected_at_ms: p.connected_at_ms,
                in_flight: in_flight(p.conn_id),
                tasks: p.hello.tasks.iter().map(|t| t.task.clone()).collect(),
            })
            .collect();
        list.sort_by(|a, b| (&a.name, a.priority).cmp(&(&b.name, b.priority)));
        list
    }

    /// Every served task with its providers in the order they are tried.
    pub fn served_tasks(&self) -> Vec<(TaskName, Vec<TaskProvider>)> {
        let mut tasks: Vec<_> = self
            .by_task
            .iter()
            .map(|(task, list)| {
                let providers = list
                    .iter()
                    .map(|(priority, _, p)| TaskProvider { provider: p.hello.name.clone(), priority: *priority })
                    .collect();
                (task.clone(), providers)
            })
            .collect();
        tasks.sort_by(|a, b| a.0.cmp(&b.0));
        tasks
    }
}
