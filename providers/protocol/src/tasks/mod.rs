//! Every task of the system with its argument and result types, one module per area.
//!
//! Adding an area: write `tasks/<area>.rs` with a `declare_tasks!` block, add `pub mod <area>;`
//! below and its `TASKS` to [`catalog`].

pub mod boot;
pub mod clusterconf;
pub mod coordinator;
pub mod health;
pub mod init;
pub mod kv;
pub mod kvm;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod service;
pub mod zfs;

use crate::task::TaskInfo;

/// All documented tasks.
pub fn catalog() -> impl Iterator<Item = &'static TaskInfo> {
    [
        boot::TASKS,
        clusterconf::TASKS,
        coordinator::TASKS,
        health::TASKS,
        init::TASKS,
        kv::TASKS,
        kvm::TASKS,
        metrics::TASKS,
        netns::TASKS,
        node::TASKS,
        service::TASKS,
        zfs::TASKS,
    ]
    .into_iter()
    .flatten()
}

/// Looks a task up by name.
pub fn lookup(name: &str) -> Option<&'static TaskInfo> {
    catalog().find(|info| info.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::TaskName;
    use std::collections::HashSet;

    #[test]
    fn catalog_names_are_valid_and_unique() {
        let mut seen = HashSet::new();
        for info in catalog() {
            TaskName::new(info.name).unwrap();
            assert!(seen.insert(info.name), "{} declared twice", info.name);
            assert!(!info.description.is_empty());
        }
    }

    #[test]
    fn args_are_checked_against_the_type() {
        let info = lookup("node-echo").unwrap();
        assert!((info.check_args)(r#"{"data":"x"}"#).is_ok());
        let err = (info.check_args)(r#"{"data":1}"#).unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
        let err = (info.check_args)(r#"{"data":"x","extra":true}"#).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
