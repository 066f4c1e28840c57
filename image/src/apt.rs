//! Debian packages through apt's ordinary clients: versions from `apt-cache policy`, files from
//! `apt-get download` (cached by version), unpacked with `dpkg-deb -x`.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AptError {
    #[error("package {0:?} is not known to apt (no candidate version; is the name right, is `apt-get update` done?)")]
    NoCandidate(String),
    #[error("cannot tell which kernel {0} depends on")]
    NoKernelDependency(String),
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("apt-get download left no .deb for {package} {version} in {dir}")]
    Missing { package: String, version: String, dir: PathBuf },
}

/// Runs a command and returns its stdout, or an error with its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, AptError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| AptError::Command { command: command.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let detail = format!("{}: {}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
        return Err(AptError::Command { command, detail });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The version apt would install, from `apt-cache policy` output.
pub fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_owned)
}

pub fn candidate(package: &str) -> Result<String, AptError> {
    let policy = run(Command::new("apt-cache").args(["policy", package]))?;
    parse_candidate(&policy).ok_or_else(|| AptError::NoCandidate(package.into()))
}

/// Candidates of many packages with one `apt-cache policy` (its output has one section per
/// package, each starting with `name:` at column 0).
pub fn candidates(packages: &[String]) -> Result<Vec<(String, String)>, AptError> {
    let policy = run(Command::new("apt-cache").arg("policy").args(packages))?;
    let mut sections = std::collections::BTreeMap::new();
    let mut current: Option<&str> = None;
    for line in policy.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':'));
            continue;
        }
        if let (Some(name), Some(version)) = (current, parse_candidate(line)) {
            sections.entry(name.to_owned()).or_insert(version);
        }
    }
    packages
        .iter()
        .map(|p| sections.get(p).map(|v| (p.clone(), v.clone())).ok_or_else(|| AptError::NoCandidate(p.clone())))
        .collect()
}

/// The kernel release (e.g. `6.1.0-56-amd64`) a meta package like linux-image-amd64 depends on.
pub fn parse_kernel_release(show: &str) -> Option<String> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find_map(|name| name.strip_prefix("linux-image-"))
        .map(str::to_owned)
}

pub fn kernel_release(meta_package: &str) -> Result<String, AptError> {
    let version = candidate(meta_package)?;
    let show = run(Command::new("apt-cache").args(["show", &format!("{meta_package}={version}")]))?;
    parse_kernel_release(&show).ok_or_else(|| AptError::NoKernelDependency(meta_package.into()))
}

/// How apt names a downloaded file's version part (the epoch colon is escaped).
fn file_version(version: &str) -> String {
    version.replace(':', "%3a")
}

fn cached_deb(dir: &Path, package: &str, version: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_{}_", file_version(version));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// A package resolved to one version and its cached .deb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    pub package: String,
    pub version: String,
    pub path: PathBuf,
}

/// Resolves each package to its candidate version and makes sure its .deb is in `cache`
/// (`$CACHE_DIR/debs`), downloading the missing ones in one `apt-get download`.
pub fn fetch(packages: &[String], cache: &Path) -> Result<Vec<Deb>, AptError> {
    std::fs::create_dir_all(cache).map_err(|source| AptError::Io { path: cache.into(), source })?;
    let resolved = candidates(packages)?;
    let missing: Vec<String> =
        resolved.iter().filter(|(p, v)| cached_deb(cache, p, v).is_none()).map(|(p, v)| format!("{p}={v}")).collect();
    if !missing.is_empty() {
        eprintln!("image: downloading {} packages into {}", missing.len(), cache.display());
        run(Command::new("apt-get").arg("download").args(&missing).current_dir(cache))?;
    }
    resolved
        .into_iter()
        .map(|(package, version)| {
            let path = cached_deb(cache, &package, &version).ok_or_else(|| AptError::Missing {
                package: package.clone(),
                version: version.clone(),
                dir: cache.into(),
            })?;
            Ok(Deb { package, version, path })
        })
        .collect()
}

pub fn unpack(deb: &Path, into: &Path) -> Result<(), AptError> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_is_read_from_policy_output() {
        let policy = "zfs-dkms:\n  Installed: (none)\n  Candidate: 2.1.11-1+deb12u1\n  Version table:\n";
        assert_eq!(parse_candidate(policy).as_deref(), Some("2.1.11-1+deb12u1"));
        assert_eq!(parse_candidate("nope:\n  Installed: (none)\n  Candidate: (none)\n"), None);
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn candidates_are_split_by_package() {
        cerana_testbed::require!(cerana_testbed::require::missing_program(&["apt-cache"]));
        let got = candidates(&["dpkg".into(), "apt".into()]).unwrap();
        assert_eq!(got.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["dpkg", "apt"]);
        assert!(got.iter().all(|(_, v)| !v.is_empty()));
        let err = candidates(&["dpkg".into(), "no-such-package-cerana".into()]).unwrap_err();
        assert!(err.to_string().contains("no-such-package-cerana"), "{err}");
    }

    #[test]
    fn kernel_release_is_read_from_the_meta_package() {
        let show =
            "Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n";
        assert_eq!(parse_kernel_release(show).as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(parse_kernel_release("Package: x\nDepends: libc6\n"), None);
    }

    #[test]
    fn cached_debs_are_found_by_escaped_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("busybox-static_1%3a1.35.0-4_amd64.deb"), b"").unwrap();
        assert!(cached_deb(dir.path(), "busybox-static", "1:1.35.0-4").is_some());
        assert!(cached_deb(dir.path(), "busybox-static", "1:1.36.0-1").is_none());
        assert!(cached_deb(dir.path(), "busybox", "1:1.35.0-4").is_none());
    }
}
