//! The service table: one TOML file, `[service.<name>]` per service.
//!
//! Loading never fails as a whole. Each entry is checked on its own (unknown keys, bad values,
//! a missing binary, unknown dependencies, conditions); cycles are found across entries; an
//! entry that depends on a broken or disabled one cannot start either. Every problem is kept
//! with the entry (shown in `list` and reported as an event) and the rest of the table runs.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::cmdline::{Condition, Settings};

/// When a service counts as ready, letting its dependants start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Readiness {
    /// As soon as it is spawned (one-shot tasks: once they exit with status 0).
    #[default]
    Started,
    /// It writes `READY\n` to the fd named in `CERANA_READY_FD`.
    Notify,
    /// A connection to this unix socket succeeds.
    UnixSocket(PathBuf),
    /// A TCP connection to this port on 127.0.0.1 succeeds.
    TcpPort(u16),
}

/// Whether a service is started again after its process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// One `[service.<name>]` entry exactly as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    description: Option<String>,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    ready: Readiness,
    #[serde(default)]
    ready_timeout_ms: Option<u64>,
    #[serde(default)]
    restart: Option<RestartPolicy>,
    #[serde(default)]
    restart_delay_ms: Option<u64>,
    #[serde(default)]
    restart_delay_max_ms: Option<u64>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    stop_timeout_ms: Option<u64>,
    #[serde(default)]
    when: Vec<String>,
    #[serde(default)]
    oneshot: bool,
    /// Attach stdin/stdout/stderr to the console instead of the log pipe (interactive shells).
    #[serde(default)]
    console: bool,
    #[serde(default)]
    limit_nofile: Option<u64>,
}

/// A checked service definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub description: Option<String>,
    /// The binary, resolved to an absolute path.
    pub command: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub requires: Vec<String>,
    pub ready: Readiness,
    pub ready_timeout: Duration,
    pub restart: RestartPolicy,
    pub restart_delay: Duration,
    pub restart_delay_max: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub when: Vec<Condition>,
    pub oneshot: bool,
    pub console: bool,
    /// RLIMIT_NOFILE (soft and hard) for the service; init's own limits when absent.
    pub limit_nofile: Option<u64>,
}

/// The most descriptors a service may be given: the kernel's default `fs.nr_open`, above
/// which setrlimit fails.
pub const MAX_LIMIT_NOFILE: u64 = 1 << 20;

pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_millis(100);
pub const DEFAULT_RESTART_DELAY_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a table entry amounts to after checking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Startable.
    Enabled(ServiceSpec),
    /// Valid, but a condition (or a dependency's condition) does not hold.
    Disabled { spec: ServiceSpec, reason: String },
    /// Cannot run; `reason` says why.
    Invalid { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    pub name: String,
    pub entry: Entry,
}

/// A problem that is not about one entry (syntax, unknown top-level key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableProblem {
    pub service: Option<String>,
    pub message: String,
}

impl fmt::Display for TableProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.service {
            Some(s) => write!(f, "service {s}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The whole table: entries sorted by name, and every problem found (entry problems included).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    pub entries: Vec<TableEntry>,
    pub problems: Vec<TableProblem>,
}

impl Table {
    pub fn get(&self, name: &str) -> Option<&TableEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Parses `TERM`, `SIGTERM` or a number.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = s.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&full).map_err(|_| format!("{s:?} is not a signal name"))
}

/// Finds the binary: an absolute path must be an executable file; a bare name is looked up in
/// `PATH` (the service's own `PATH` when it sets one).
pub fn resolve_command(command: &str, path_var: &str) -> Result<PathBuf, String> {
    fn executable(p: &Path) -> bool {
        std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    }
    if command.is_empty() {
        return Err("command is empty".into());
    }
    if command.contains('/') {
        let p = PathBuf::from(command);
        if !p.is_absolute() {
            return Err(format!("command {command:?} must be absolute or a bare name"));
        }
        return if executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(format!("command {command} is not an executable file"))
        } else {
            Err(format!("command {command} does not exist"))
        };
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(command))
        .find(|p| executable(p))
        .ok_or_else(|| format!("command {command:?} not found in PATH {path_var}"))
}

/// The `PATH` init gives services that do not set their own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn check_entry(name: &str, value: toml::Value, settings: &Settings) -> Result<Entry, String> {
    let raw: RawService = value.try_into().map_err(|e: toml::de::Error| e.message().trim().to_string())?;
    let path_var = raw.env.get("PATH").map(String::as_str).unwrap_or(DEFAULT_PATH);
    let command = resolve_command(&raw.command, path_var)?;
    let stop_signal = parse_signal(raw.stop_signal.as_deref().unwrap_or("TERM"))?;
    let when = raw.when.iter().map(|c| c.parse::<Condition>()).collect::<Result<Vec<_>, _>>()?;
    if let Some(dep) = raw.requires.iter().find(|d| d.as_str() == name) {
        return Err(format!("requires itself ({dep})"));
    }
    if raw.env.keys().any(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        return Err("env has a name that is empty or contains '=' or NUL".into());
    }
    if raw.oneshot && raw.ready != Readiness::Started {
        return Err("a oneshot task is ready when it exits with 0; drop `ready`".into());
    }
    let delay = Duration::from_millis(raw.restart_delay_ms.unwrap_or(DEFAULT_RESTART_DELAY.as_millis() as u64));
    let delay_max =
        Duration::from_millis(raw.restart_delay_max_ms.unwrap_or(DEFAULT_RESTART_DELAY_MAX.as_millis() as u64));
    if delay.is_zero() || delay > delay_max {
        return Err("need 0 < restart_delay_ms <= restart_delay_max_ms".into());
    }
    if raw.limit_nofile.is_some_and(|n| !(64..=MAX_LIMIT_NOFILE).contains(&n)) {
        return Err(format!("limit_nofile must be between 64 and {MAX_LIMIT_NOFILE}"));
    }
    let spec = ServiceSpec {
        description: raw.description,
        command,
        args: raw.args,
        env: raw.env,
        requires: raw.requires,
        ready: raw.ready,
        ready_timeout: raw.ready_timeout_ms.map_or(DEFAULT_READY_TIMEOUT, Duration::from_millis),
        restart: raw.restart.unwrap_or(if raw.oneshot { RestartPolicy::Never } else { RestartPolicy::Always }),
        restart_delay: delay,
        restart_delay_max: delay_max,
        stop_signal,
        stop_timeout: raw.stop_timeout_ms.map_or(DEFAULT_STOP_TIMEOUT, Duration::from_millis),
        when,
        oneshot: raw.oneshot,
        console: raw.console,
        limit_nofile: raw.limit_nofile,
    };
    match spec.when.iter().find(|c| !settings.condition_holds(c)) {
        Some(c) => Ok(Entry::Disabled { reason: format!("condition {c} does not hold"), spec }),
        None => Ok(Entry::Enabled(spec)),
    }
}

/// Loads and checks a table from its TOML text.
pub fn load(text: &str, settings: &Settings) -> Table {
    let mut table = Table::default();
    let doc: toml::Table = match text.parse() {
        Ok(doc) => doc,
        Err(e) => {
            table
                .problems
                .push(TableProblem { service: None, message: format!("not valid TOML: {}", e.to_string().trim()) });
            return table;
        }
    };
    for (key, value) in doc {
        if key != "service" {
            table.problems.push(TableProblem {
                service: None,
                message: format!("unknown top-level key {key:?} (expected [service.<name>])"),
            });
            continue;
        }
        let toml::Value::Table(services) = value else {
            table.problems.push(TableProblem {
                service: None,
                message: "`service` must be a table of [service.<name>] entries".into(),
            });
            continue;
        };
        for (name, value) in services {
            let entry = if valid_service_name(&name) {
                check_entry(&name, value, settings).unwrap_or_else(|reason| Entry::Invalid { reason })
            } else {
                Entry::Invalid { reason: "name must be 1-64 of a-z, 0-9, '-', '_'".into() }
            };
            table.entries.push(TableEntry { name, entry });
        }
    }
    table.entries.sort_by(|a, b| a.name.cmp(&b.name));
    mark_unknown_dependencies(&mut table);
    mark_cycles(&mut table);
    propagate_blocked(&mut table);
    for e in &table.entries {
        if let Entry::Invalid { reason } = &e.entry {
            table.problems.push(TableProblem { service: Some(e.name.clone()), message: reason.clone() });
        }
    }
    table
}

fn requires_of(entry: &Entry) -> &[String] {
    match entry {
        Entry::Enabled(spec) | Entry::Disabled { spec, .. } => &spec.requires,
        Entry::Invalid { .. } => &[],
    }
}

fn mark_unknown_dependencies(table: &mut Table) {
    let names: Vec<String> = table.entries.iter().map(|e| e.name.clone()).collect();
    for e in &mut table.entries {
        if let Some(missing) = requires_of(&e.entry).iter().find(|d| !names.contains(d)) {
            e.entry = Entry::Invalid { reason: format!("requires unknown service {missing:?}") };
        }
    }
}

/// Marks every entry on a dependency cycle invalid, naming the cycle.
fn mark_cycles(table: &mut Table) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let index: BTreeMap<&str, usize> = table.entries.iter().enumerate().map(|(i, e)| (e.name.as_str(), i)).collect();
    let edges: Vec<Vec<usize>> =
        table.entries.iter().map(|e| requires_of(&e.entry).iter().map(|d| index[d.as_str()]).collect()).collect();
    let mut marks = vec![Mark::New; edges.len()];
    let mut cycles: Vec<Vec<usize>> = Vec::new();

    fn visit(n: usize, edges: &[Vec<usize>], marks: &mut [Mark], path: &mut Vec<usize>, cycles: &mut Vec<Vec<usize>>) {
        marks[n] = Mark::OnPath;
        path.push(n);
        for &d in &edges[n] {
            match marks[d] {
                Mark::New => visit(d, edges, marks, path, cycles),
                Mark::OnPath => {
                    let from = path.iter().position(|&p| p == d).unwrap_or(0);
                    cycles.push(path[from..].to_vec());
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[n] = Mark::Done;
    }
    for n in 0..edges.len() {
        if marks[n] == Mark::New {
            visit(n, &edges, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    for cycle in cycles {
        let mut names: Vec<&str> = cycle.iter().map(|&i| table.entries[i].name.as_str()).collect();
        names.push(names[0]);
        let reason = format!("dependency cycle: {}", names.join(" -> "));
        for &i in &cycle {
            table.entries[i].entry = Entry::Invalid { reason: reason.clone() };
        }
    }
}

/// An entry requiring an invalid entry becomes invalid; one requiring a disabled entry becomes
/// disabled. Each change only moves an entry towards invalid, so the loop ends.
fn propagate_blocked(table: &mut Table) {
    loop {
        let mut changed = false;
        for i in 0..table.entries.len() {
            let requires = requires_of(&table.entries[i].entry);
            let dep_in = |invalid: bool| {
                requires.iter().find(|d| {
                    matches!(
                        (invalid, table.get(d).map(|e| &e.entry)),
                        (true, Some(Entry::Invalid { .. })) | (false, Some(Entry::Disabled { .. }))
                    )
                })
            };
            let new = match (&table.entries[i].entry, dep_in(true), dep_in(false)) {
                (Entry::Invalid { .. }, _, _) => continue,
                (_, Some(dep), _) => Entry::Invalid { reason: format!("requires invalid service {dep}") },
                (Entry::Enabled(spec), None, Some(dep)) => {
                    Entry::Disabled { spec: spec.clone(), reason: format!("requires disabled service {dep}") }
                }
                _ => continue,
            };
            table.entries[i].entry = new;
            changed = true;
        }
        if !changed {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline;

    fn names_of(t: &Table, f: impl Fn(&Entry) -> bool) -> Vec<&str> {
        t.entries.iter().filter(|e| f(&e.entry)).map(|e| e.name.as_str()).collect()
    }

    fn reason(t: &Table, name: &str) -> String {
        match &t.get(name).unwrap().entry {
            Entry::Invalid { reason } | Entry::Disabled { reason, .. } => reason.clone(),
            Entry::Enabled(_) => String::new(),
        }
    }

    const EXAMPLE: &str = r#"
[service.coordinator]
description = "Task API coordinator"
command = "/bin/sh"
args = ["-c", "exec sleep 100"]
env = { RUST_LOG = "info" }
ready = { unix_socket = "/run/cerana/coordinator.sock" }
restart = "always"
restart_delay_ms = 200
restart_delay_max_ms = 10000
stop_signal = "INT"
stop_timeout_ms = 3000
limit_nofile = 65536

[service.node-info]
command = "sh"
requires = ["coordinator"]
ready = "notify"

[service.mkdirs]
command = "/bin/true"
oneshot = true

[service.etcd]
command = "true"
when = ["cerana.cluster_bootstrap"]
requires = ["mkdirs"]
ready = { tcp_port = 2379 }

[service.cluster-tick]
command = "true"
requires = ["etcd"]
"#;

    #[test]
    fn example_table_loads() {
        let t = load(EXAMPLE, &Settings::default());
        assert_eq!(t.problems, vec![]);
        let Entry::Enabled(c) = &t.get("coordinator").unwrap().entry else {
            panic!("coordinator not enabled");
        };
        assert_eq!(c.stop_signal, Signal::SIGINT);
        assert_eq!(c.stop_timeout, Duration::from_secs(3));
        assert_eq!(c.limit_nofile, Some(65536));
        assert_eq!(c.restart, RestartPolicy::Always);
        assert_eq!(c.ready, Readiness::UnixSocket("/run/cerana/coordinator.sock".into()));
        let Entry::Enabled(n) = &t.get("node-info").unwrap().entry else { panic!() };
        assert!(n.command.is_absolute(), "bare names resolve through PATH");
        assert_eq!(n.ready, Readiness::Notify);
        let Entry::Enabled(m) = &t.get("mkdirs").unwrap().entry else { panic!() };
        assert_eq!(m.restart, RestartPolicy::Never);
        // Conditions: etcd is disabled without the flag, and so is what requires it.
        assert_eq!(names_of(&t, |e| matches!(e, Entry::Disabled { .. })), ["cluster-tick", "etcd"]);
        assert!(reason(&t, "cluster-tick").contains("requires disabled service etcd"));
        let bootstrap = cmdline::parse("cerana.cluster_bootstrap").settings;
        let t = load(EXAMPLE, &bootstrap);
        assert_eq!(names_of(&t, |e| matches!(e, Entry::Disabled { .. })), Vec::<&str>::new());
    }

    #[test]
    fn cycles_are_named_and_only_block_their_members_and_dependants() {
        let t = load(
            r#"
[service.a]
command = "true"
requires = ["b"]
[service.b]
command = "true"
requires = ["c"]
[service.c]
command = "true"
requires = ["a"]
[service.d]
command = "true"
requires = ["a"]
[service.e]
command = "true"
"#,
            &Settings::default(),
        );
        assert_eq!(names_of(&t, |e| matches!(e, Entry::Enabled(_))), ["e"]);
        assert_eq!(reason(&t, "a"), "dependency cycle: a -> b -> c -> a");
        assert_eq!(reason(&t, "d"), "requires invalid service a");
        assert_eq!(t.problems.len(), 4);
    }

    #[test]
    fn bad_entries_are_reported_each_on_its_own() {
        let t = load(
            r#"
colour = "blue"
[service.typo]
command = "true"
restrat = "always"
[service.missing]
command = "/nonexistent/bin/daemon"
[service.notexec]
command = "/proc/version"
[service.relative]
command = "bin/x"
[service.nopath]
command = "no-such-binary-anywhere"
[service.badsig]
command = "true"
stop_signal = "SIGNOPE"
[service.badcond]
command = "true"
when = ["cerana.clusterbootstrap"]
[service.badready]
command = "true"
ready = { http = "x" }
[service.badpolicy]
command = "true"
restart = "sometimes"
[service.self]
command = "true"
requires = ["self"]
[service.unknowndep]
command = "true"
requires = ["ghost"]
[service.Bad-Name]
command = "true"
[service.good]
command = "true"
"#,
            &Settings::default(),
        );
        assert_eq!(names_of(&t, |e| matches!(e, Entry::Enabled(_))), ["good"]);
        assert!(t.problems[0].message.contains("colour"));
        assert!(reason(&t, "typo").contains("unknown field `restrat`"), "{}", reason(&t, "typo"));
        assert!(reason(&t, "missing").contains("/nonexistent/bin/daemon does not exist"));
        assert!(reason(&t, "notexec").contains("not an executable"));
        assert!(reason(&t, "relative").contains("absolute"));
        assert!(reason(&t, "nopath").contains("not found in PATH"));
        assert!(reason(&t, "badsig").contains("SIGNOPE"));
        assert!(reason(&t, "badcond").contains("did you mean cerana.cluster_bootstrap"));
        assert!(reason(&t, "badready").contains("http"));
        assert!(reason(&t, "badpolicy").contains("sometimes"));
        assert!(reason(&t, "self").contains("requires itself"));
        assert!(reason(&t, "unknowndep").contains("ghost"));
        assert!(reason(&t, "Bad-Name").contains("name must be"));
        // One problem per bad entry plus the top-level key.
        assert_eq!(t.problems.len(), 13);
    }

    #[test]
    fn syntax_errors_leave_an_empty_table_and_a_problem() {
        let t = load("[service.a\ncommand=", &Settings::default());
        assert!(t.entries.is_empty());
        assert!(t.problems[0].message.starts_with("not valid TOML"));
        let t = load("service = 3", &Settings::default());
        assert!(t.problems[0].message.contains("must be a table"));
    }

    #[test]
    fn the_base_node_table_is_valid_apart_from_binaries_missing_on_this_host() {
        let t = load(include_str!("../services.base.toml"), &Settings::default());
        let names: Vec<&str> = t.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "boot-image",
                "boot-join",
                "bootserver",
                "bootserver-replica",
                "clusterconf",
                "coordinator",
                "health",
                "init-provider",
                "kv",
                "metrics",
                "netfilter-modules",
                "netns",
                "node-info",
                "quorum",
                "service",
                "ticks",
                "udev-coldplug",
                "udev-coldplug-block",
                "udevd",
                "zfs",
                "zfs-module",
            ]
        );
        for p in &t.problems {
            let msg = &p.message;
            assert!(msg.contains("does not exist") || msg.contains("requires invalid service"), "{p}");
        }
    }

    #[test]
    fn signals_parse_in_every_spelling() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("99").is_err());
    }
}
