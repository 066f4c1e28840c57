//! `namespace-set-user`: a process's uid and gid maps, as the original's namespace provider
//! wrote them, with its validation (1 to 5 ranges of non-zero length each).

use cerana_protocol::tasks::netns::{IdRange, SetUserArgs, SetUserResult};
use std::io;
use std::path::{Path, PathBuf};

/// The most ranges a map may have (the original's limit, and the kernel's before Linux 4.15).
pub const MAX_RANGES: usize = 5;

/// Why the maps could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SetUserError {
    #[error("the {which} map has no ranges (at least one is needed)")]
    NoRanges { which: &'static str },
    #[error("the {which} map has {count} ranges, over the {MAX_RANGES} allowed")]
    TooManyRanges { which: &'static str, count: usize },
    #[error("the {which} map has a range of length 0 (from id {id})")]
    EmptyRange { which: &'static str, id: u32 },
    #[error("the {which} map's range from id {id} overflows 32-bit ids")]
    Overflow { which: &'static str, id: u32 },
    #[error("the {which} map's ranges overlap")]
    Overlap { which: &'static str },
    #[error("no process {0}")]
    NoProcess(u32),
    #[error("the kernel refused the {which} map of process {pid}: {source} (maps can be written once, by a process with the capabilities over the parent namespace)")]
    Refused { which: &'static str, pid: u32, source: io::Error },
    #[error("cannot {op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
}

fn check(which: &'static str, ranges: &[IdRange]) -> Result<(), SetUserError> {
    if ranges.is_empty() {
        return Err(SetUserError::NoRanges { which });
    }
    if ranges.len() > MAX_RANGES {
        return Err(SetUserError::TooManyRanges { which, count: ranges.len() });
    }
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for r in ranges {
        if r.length == 0 {
            return Err(SetUserError::EmptyRange { which, id: r.id });
        }
        let end = |start: u32| start.checked_add(r.length).ok_or(SetUserError::Overflow { which, id: r.id });
        inside.push((r.id, end(r.id)?));
        outside.push((r.host_id, end(r.host_id)?));
    }
    for spans in [&mut inside, &mut outside] {
        spans.sort();
        if spans.windows(2).any(|w| w[0].1 > w[1].0) {
            return Err(SetUserError::Overlap { which });
        }
    }
    Ok(())
}

/// The text the kernel expects in `/proc/PID/{uid,gid}_map`.
pub fn map_text(ranges: &[IdRange]) -> String {
    ranges.iter().map(|r| format!("{} {} {}\n", r.id, r.host_id, r.length)).collect()
}

/// Checks both maps, then writes the uid map and the gid map of `args.pid` under `proc`.
pub fn set_user(proc: &Path, args: &SetUserArgs) -> Result<SetUserResult, SetUserError> {
    check("uid", &args.uids)?;
    check("gid", &args.gids)?;
    let dir = proc.join(args.pid.to_string());
    if !dir.exists() {
        return Err(SetUserError::NoProcess(args.pid));
    }
    for (which, file, ranges) in [("uid", "uid_map", &args.uids), ("gid", "gid_map", &args.gids)] {
        let path = dir.join(file);
        std::fs::write(&path, map_text(ranges)).map_err(|source| match source.raw_os_error() {
            Some(libc_errno::ENOENT | libc_errno::ESRCH) => SetUserError::NoProcess(args.pid),
            Some(libc_errno::EPERM | libc_errno::EINVAL) => SetUserError::Refused { which, pid: args.pid, source },
            _ => SetUserError::Io { op: "write", path: path.clone(), source },
        })?;
    }
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| SetUserError::Io { op: "read", path, source })
    };
    Ok(SetUserResult { pid: args.pid, uid_map: read("uid_map")?, gid_map: read("gid_map")? })
}

mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const EINVAL: i32 = 22;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(id: u32, host_id: u32, length: u32) -> IdRange {
        IdRange { id, host_id, length }
    }

    #[test]
    fn maps_need_one_to_five_nonempty_disjoint_ranges() {
        assert!(check("uid", &[range(0, 100000, 65536)]).is_ok());
        assert!(matches!(check("uid", &[]), Err(SetUserError::NoRanges { .. })));
        let six: Vec<IdRange> = (0..6).map(|i| range(i * 10, 1000 + i * 10, 10)).collect();
        assert!(check("uid", &six[..5]).is_ok());
        assert!(matches!(check("gid", &six), Err(SetUserError::TooManyRanges { count: 6, .. })));
        assert!(matches!(check("uid", &[range(0, 1000, 0)]), Err(SetUserError::EmptyRange { .. })));
        assert!(matches!(check("uid", &[range(0, 1000, 10), range(5, 5000, 10)]), Err(SetUserError::Overlap { .. })));
        assert!(matches!(check("uid", &[range(0, 1000, 10), range(100, 1005, 10)]), Err(SetUserError::Overlap { .. })));
        assert!(matches!(check("uid", &[range(u32::MAX, 0, 2)]), Err(SetUserError::Overflow { .. })));
        assert_eq!(map_text(&[range(0, 1000, 1), range(1, 2000, 5)]), "0 1000 1\n1 2000 5\n");
    }

    #[test]
    fn a_missing_process_is_named() {
        let proc = tempfile::tempdir().unwrap();
        let args = SetUserArgs { pid: 4242, uids: vec![range(0, 1000, 1)], gids: vec![range(0, 1000, 1)] };
        assert!(matches!(set_user(proc.path(), &args), Err(SetUserError::NoProcess(4242))));
    }
}
