//! Running the OpenZFS tools. Behind a trait so the operations can be tested with a double that
//! records the command lines and answers with canned output.

use crate::error::ZfsError;
use cerana_protocol::tasks::zfs::ZfsErrorReason;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::sync::{Arc, Mutex};

/// What a finished command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `zfs`, `zpool` and `zdb`.
pub trait Runner: Send + Sync + std::fmt::Debug {
    fn run<'a>(&'a self, program: &'a str, args: &'a [String]) -> BoxFuture<'a, std::io::Result<Output>>;
}

/// The real tools, found in PATH (`/sbin` on a node).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run<'a>(&'a self, program: &'a str, args: &'a [String]) -> BoxFuture<'a, std::io::Result<Output>> {
        async move {
            let out = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await?;
            Ok(Output {
                success: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
        .boxed()
    }
}

/// Runs `program args` and returns its stdout, or the classified error.
pub async fn checked(runner: &dyn Runner, program: &str, args: &[String]) -> Result<String, ZfsError> {
    let out = runner
        .run(program, args)
        .await
        .map_err(|e| ZfsError::new(ZfsErrorReason::Unavailable, format!("cannot run {program}: {e}")))?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(ZfsError::from_stderr(&out.stderr))
    }
}

/// A test double: answers each call with the first scripted reply whose prefix matches the
/// command line, and records every command line.
#[derive(Debug, Default, Clone)]
pub struct ScriptedRunner {
    replies: Arc<Mutex<Vec<(String, Output)>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl ScriptedRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replies to a command line starting with `prefix` (e.g. `"zfs list"`).
    pub fn reply(self, prefix: &str, success: bool, stdout: &str, stderr: &str) -> Self {
        let out = Output { success, stdout: stdout.into(), stderr: stderr.into() };
        self.replies.lock().expect("replies").push((prefix.into(), out));
        self
    }

    /// Every command line run so far, space-joined.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Runner for ScriptedRunner {
    fn run<'a>(&'a self, program: &'a str, args: &'a [String]) -> BoxFuture<'a, std::io::Result<Output>> {
        let line = std::iter::once(program.to_owned()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ");
        self.calls.lock().expect("calls").push(line.clone());
        let reply = self
            .replies
            .lock()
            .expect("replies")
            .iter()
            .find(|(p, _)| line.starts_with(p.as_str()))
            .map(|(_, o)| o.clone());
        async move { reply.ok_or_else(|| std::io::Error::other(format!("no scripted reply for {line:?}"))) }.boxed()
    }
}
