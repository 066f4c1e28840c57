//! Where a container's cgroup lives, and what the provider reads from it.
//!
//! A node mounts cgroup v2 at /sys/fs/cgroup: containers go to `/cerana-services/<key>` there
//! (an absolute path, which libcontainer's v2 manager takes as it is, also with a user
//! namespace). A host whose controllers sit on v1 hierarchies ("hybrid": cgroup2 only at
//! /sys/fs/cgroup/unified) gets libcontainer's v1 manager, which puts the same path under the
//! root of each controller's hierarchy.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const PARENT: &str = "cerana-services";

/// The cgroup layout of this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 at /sys/fs/cgroup.
    Unified,
    /// Controllers on v1 hierarchies under /sys/fs/cgroup/<controller>.
    V1,
}

impl Layout {
    pub fn detect() -> Self {
        match nix::sys::statfs::statfs(ROOT) {
            Ok(fs) if fs.filesystem_type().0 == CGROUP2_SUPER_MAGIC => Self::Unified,
            _ => Self::V1,
        }
    }

    /// `linux.cgroupsPath` for the container `name`.
    pub fn container_path(self, name: &str) -> String {
        format!("/{PARENT}/{name}")
    }

    /// The directory of `controller` for a container cgroup path from [`Self::container_path`].
    pub fn controller_dir(self, controller: &str, cgroup: &str) -> PathBuf {
        let relative = cgroup.trim_start_matches('/');
        match self {
            Self::Unified => Path::new(ROOT).join(relative),
            Self::V1 => Path::new(ROOT).join(controller).join(relative),
        }
    }

    /// How many times the OOM killer struck inside the cgroup (None when unreadable).
    pub fn oom_kills(self, cgroup: &str) -> Option<u64> {
        let dir = self.controller_dir("memory", cgroup);
        let file = match self {
            Self::Unified => "memory.events",
            Self::V1 => "memory.oom_control",
        };
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    }

    /// Whether the controllers limits need are usable: on v2 listed in the root's
    /// cgroup.controllers, on v1 mounted.
    pub fn missing_controllers(self) -> Vec<&'static str> {
        let wanted = ["cpu", "memory", "pids"];
        match self {
            Self::Unified => {
                let have = std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).unwrap_or_default();
                wanted.into_iter().filter(|c| !have.split_whitespace().any(|h| h == *c)).collect()
            }
            Self::V1 => wanted.into_iter().filter(|c| !Path::new(ROOT).join(c).join("cgroup.procs").exists()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_root_of_each_hierarchy() {
        assert_eq!(Layout::Unified.container_path("b.s"), "/cerana-services/b.s");
        assert_eq!(
            Layout::Unified.controller_dir("memory", "/cerana-services/b.s"),
            Path::new("/sys/fs/cgroup/cerana-services/b.s")
        );
        assert_eq!(
            Layout::V1.controller_dir("pids", "/cerana-services/b.s"),
            Path::new("/sys/fs/cgroup/pids/cerana-services/b.s")
        );
    }
}
