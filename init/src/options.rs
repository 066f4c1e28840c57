//! Init's own arguments. As PID 1 the kernel may pass stray words from its command line as
//! arguments, so unknown ones are reported and ignored there; off PID 1 they are an error.

use std::path::PathBuf;

pub const DEFAULT_TABLE: &str = "/etc/cerana/services.toml";
pub const DEFAULT_RUN_DIR: &str = "/run/cerana";
pub const DEFAULT_MODULE_LIST: &str = "/etc/cerana/modules";

pub const USAGE: &str = "usage: cerana-init [--table FILE] [--no-mount] [--control-socket PATH] \
[--events FILE] [--cmdline FILE] [--modules-dir DIR] [--module-list FILE] [--run-dir DIR] \
[--console PATH]

As PID 1 (the image's /init) it mounts the basics, reads cerana.* settings from /proc/cmdline,
loads modules, sets the node identity and supervises the services in --table.
Off PID 1, or with --no-mount, it skips everything that changes the machine and runs as a
child subreaper (run it in a fresh PID namespace: unshare --pid --fork cerana-init --no-mount ...).";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub table: PathBuf,
    /// Skip mounts, identity, hostname, reboot(2): the host-test mode.
    pub no_mount: bool,
    /// Default: `<run-dir>/init.sock`.
    pub control_socket: Option<PathBuf>,
    /// Also append lifecycle events to this file.
    pub events: Option<PathBuf>,
    /// Read the command line from this file instead of /proc/cmdline.
    pub cmdline: Option<PathBuf>,
    /// Load modules from this tree (default on a machine: /lib/modules/<release>).
    pub modules_dir: Option<PathBuf>,
    pub module_list: PathBuf,
    pub run_dir: PathBuf,
    /// Messages, events and service output (default /dev/console on a machine, else stderr).
    pub console: Option<PathBuf>,
    pub help: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.into(),
            no_mount: false,
            control_socket: None,
            events: None,
            cmdline: None,
            modules_dir: None,
            module_list: DEFAULT_MODULE_LIST.into(),
            run_dir: DEFAULT_RUN_DIR.into(),
            console: None,
            help: false,
        }
    }
}

impl Options {
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket.clone().unwrap_or_else(|| self.run_dir.join("init.sock"))
    }
}

/// Parses arguments (without the program name). Returns the options and the words it could not
/// use, each with the reason.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> (Options, Vec<String>) {
    let mut o = Options::default();
    let mut problems = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = matches!(
            flag.as_str(),
            "--table"
                | "--control-socket"
                | "--events"
                | "--cmdline"
                | "--modules-dir"
                | "--module-list"
                | "--run-dir"
                | "--console"
        );
        let value = if takes_value {
            match inline.or_else(|| args.next()) {
                Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
                _ => {
                    problems.push(format!("{flag} needs a value"));
                    continue;
                }
            }
        } else {
            if inline.is_some() {
                problems.push(format!("{flag} takes no value"));
                continue;
            }
            None
        };
        match (flag.as_str(), value) {
            ("--table", Some(v)) => o.table = v,
            ("--control-socket", Some(v)) => o.control_socket = Some(v),
            ("--events", Some(v)) => o.events = Some(v),
            ("--cmdline", Some(v)) => o.cmdline = Some(v),
            ("--modules-dir", Some(v)) => o.modules_dir = Some(v),
            ("--module-list", Some(v)) => o.module_list = v,
            ("--run-dir", Some(v)) => o.run_dir = v,
            ("--console", Some(v)) => o.console = Some(v),
            ("--no-mount", None) => o.no_mount = true,
            ("--help" | "-h", None) => o.help = true,
            _ => problems.push(format!("unknown argument {arg:?}")),
        }
    }
    (o, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_in_both_spellings() {
        let (o, p) = parse(args(
            "--table /t.toml --no-mount --control-socket=/c.sock --events /e --cmdline /cl \
             --modules-dir /m --module-list /ml --run-dir /r --console /dev/ttyS1",
        ));
        assert_eq!(p, Vec::<String>::new());
        assert_eq!(o.table, PathBuf::from("/t.toml"));
        assert!(o.no_mount);
        assert_eq!(o.control_socket(), PathBuf::from("/c.sock"));
        assert_eq!(o.events, Some("/e".into()));
        assert_eq!(o.cmdline, Some("/cl".into()));
        assert_eq!(o.modules_dir, Some("/m".into()));
        assert_eq!(o.module_list, PathBuf::from("/ml"));
        assert_eq!(o.run_dir, PathBuf::from("/r"));
        assert_eq!(o.console, Some("/dev/ttyS1".into()));
    }

    #[test]
    fn defaults_and_stray_words() {
        let (o, p) = parse(args("single --table --no-mount=1 --bogus"));
        assert_eq!(o.control_socket(), PathBuf::from("/run/cerana/init.sock"));
        // "--table" takes the next word as its value whatever it looks like.
        assert_eq!(o.table, PathBuf::from("--no-mount=1"));
        assert!(!o.no_mount);
        assert_eq!(p, ["unknown argument \"single\"", "unknown argument \"--bogus\""]);
        let (_, p) = parse(args("--events"));
        assert_eq!(p, ["--events needs a value"]);
        let (_, p) = parse(args("--no-mount=yes"));
        assert_eq!(p, ["--no-mount takes no value"]);
    }
}
