//! Every task of the system with its argument and result types, one module per area.
//!
//! Adding an area: write `tasks/<area>.rs` with a `declare_tasks!` block, add `pub mod <area>;`
//! below and its `TASKS` to [`catalog`].

pub mod auth;
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
pub mod ticks;
pub mod zfs;

use crate::task::{Access, TaskInfo};

/// All documented tasks.
pub fn catalog() -> impl Iterator<Item = &'static TaskInfo> {
    [
        auth::TASKS,
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
        ticks::TASKS,
        zfs::TASKS,
    ]
    .into_iter()
    .flatten()
}

/// Looks a task up by name.
pub fn lookup(name: &str) -> Option<&'static TaskInfo> {
    catalog().find(|info| info.name == name)
}

/// What running `name` does. A task the catalog does not declare (a provider's own, or one
/// from a newer node) counts as `Write`: a read credential never runs what nobody classified.
pub fn access_of(name: &str) -> Access {
    lookup(name).map_or(Access::Write, |info| info.access)
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
    fn tasks_that_only_look_are_read_and_credentials_are_admin() {
        for info in catalog() {
            // Health probes are classified one by one: some send bytes where the caller says.
            let looks = !info.name.starts_with("health-")
                && ["-get", "-list", "-status", "-logs"].iter().any(|s| info.name.ends_with(s))
                || ["list-", "get-", "metrics-"].iter().any(|p| info.name.starts_with(p));
            if info.name.starts_with("auth-") {
                assert_eq!(info.access, Access::Admin, "{}", info.name);
            } else if looks {
                assert_eq!(info.access, Access::Read, "{}", info.name);
            }
        }
        for write in ["zfs-create", "kv-set", "init-reboot", "health-http-status", "update-service", "boot-dhcp"] {
            assert_eq!(access_of(write), Access::Write, "{write}");
        }
        assert_eq!(access_of("node-info"), Access::Read);
        assert_eq!(access_of("someone-elses-task"), Access::Write);
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
