//! QEMU's machine protocol (QMP) on a unix socket: just enough to press the power button and quit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("QMP command {command} failed: {reply}")]
    Command { command: String, reply: String },
    #[error("QMP closed the connection during {0}")]
    Closed(String),
}

#[derive(Debug)]
pub struct Qmp {
    path: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    pub fn connect(path: &Path) -> Result<Self, QmpError> {
        let p = path.display().to_string();
        let io = |source| QmpError::Io { path: p.clone(), source };
        let stream = UnixStream::connect(path).map_err(io)?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Self { path: p.clone(), reader: BufReader::new(stream), writer };
        qmp.read_line("greeting")?;
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    fn read_line(&mut self, during: &str) -> Result<String, QmpError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|source| QmpError::Io { path: self.path.clone(), source })?;
        if n == 0 {
            return Err(QmpError::Closed(during.into()));
        }
        Ok(line)
    }

    /// Sends one command and waits for its `return` (asynchronous events in between are skipped).
    pub fn execute(&mut self, command: &str) -> Result<(), QmpError> {
        let msg = format!("{{\"execute\":\"{command}\"}}\n");
        self.writer.write_all(msg.as_bytes()).map_err(|source| QmpError::Io { path: self.path.clone(), source })?;
        loop {
            let line = self.read_line(command)?;
            let reply: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if reply.get("return").is_some() {
                return Ok(());
            }
            if reply.get("error").is_some() {
                return Err(QmpError::Command { command: command.into(), reply: line.trim().into() });
            }
        }
    }
}
