//! Observing a Linux node: parsers for /proc (and cgroup v2) files, reading them with errors that
//! name the file, and a writer for the Prometheus text exposition format. The coordinator's
//! `/metrics` and the `metrics` and `health` providers share it.

pub mod exposition;
pub mod procfs;

use cerana_protocol::{ErrorCode, TaskError};
use procfs::ParseError;
use std::io;
use std::path::{Path, PathBuf};

/// A file the metrics come from could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: ParseError },
    #[error("cannot list the addresses of the interfaces: {0}")]
    Addresses(io::Error),
}

impl ReadError {
    fn path(&self) -> Option<&Path> {
        match self {
            Self::Io { path, .. } | Self::Parse { path, .. } => Some(path),
            Self::Addresses(_) => None,
        }
    }
}

impl From<ReadError> for TaskError {
    fn from(e: ReadError) -> Self {
        let error = TaskError::new(ErrorCode::Failed, e.to_string());
        match e.path() {
            Some(path) => error.with_details(serde_json::json!({ "path": path })),
            None => error,
        }
    }
}

fn sysconf(var: nix::unistd::SysconfVar, fallback: i64) -> i64 {
    nix::unistd::sysconf(var).ok().flatten().filter(|v| *v > 0).map_or(fallback, i64::from)
}

/// Clock ticks per second of /proc's tick counts (`_SC_CLK_TCK`).
pub fn ticks_per_second() -> f64 {
    sysconf(nix::unistd::SysconfVar::CLK_TCK, 100) as f64
}

/// Bytes per page (`_SC_PAGESIZE`), the unit of /proc/PID/stat's rss.
pub fn page_size() -> u64 {
    sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096) as u64
}

/// Reads `path` as text; the error names the file.
pub fn read_file(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|source| ReadError::Io { path: path.to_owned(), source })
}

/// Pids of the processes in cgroup `dir` and every cgroup below it.
pub fn cgroup_pids(dir: &Path) -> Result<Vec<u32>, ReadError> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let procs = dir.join("cgroup.procs");
        let text = read_file(&procs)?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let pid = line.trim().parse().map_err(|_| ReadError::Parse {
                path: procs.clone(),
                source: ParseError { what: format!("{line:?} is not a pid") },
            })?;
            pids.push(pid);
        }
        let entries = std::fs::read_dir(&dir).map_err(|source| ReadError::Io { path: dir.clone(), source })?;
        stack.extend(
            entries.filter_map(Result::ok).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()),
        );
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_pids_include_child_cgroups() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("svc/cgroup.procs", "10\n11\n");
        write("svc/payload/cgroup.procs", "12\n");
        let mut pids = cgroup_pids(&dir.path().join("svc")).unwrap();
        pids.sort();
        assert_eq!(pids, [10, 11, 12]);
        write("svc/cgroup.procs", "x\n");
        assert!(cgroup_pids(&dir.path().join("svc")).unwrap_err().to_string().contains("not a pid"));
        assert!(cgroup_pids(&dir.path().join("none")).is_err());
    }

    #[test]
    fn the_live_system_has_ticks_and_pages() {
        assert!(ticks_per_second() > 0.0 && page_size() >= 4096);
    }
}
