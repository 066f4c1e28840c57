//! Where init writes: the console (its own messages, lifecycle events, services' prefixed
//! output) and an optional extra event file (tests, the benchmark).
//!
//! Writes never fail upward: a console that is gone must not take PID 1 down.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use cerana_protocol::events::LifecycleEvent;

use crate::cmdline::LogLevel;

#[derive(Debug)]
pub struct Output {
    console: File,
    events_file: Option<File>,
    level: LogLevel,
    started: Instant,
}

impl Output {
    /// `console` is `/dev/console` on a machine, or a copy of stderr off PID 1.
    pub fn new(console: File, events_file: Option<File>, started: Instant) -> Self {
        Self { console, events_file, level: LogLevel::Info, started }
    }

    /// Opens `path` for appending events (created if absent).
    pub fn open_events_file(path: &Path) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    pub fn set_level(&mut self, level: LogLevel) {
        self.level = level;
    }

    /// Milliseconds since init was executed.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    fn write_console(&mut self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let _ = self.console.write_all(&buf);
    }

    pub fn log(&mut self, level: LogLevel, message: &str) {
        if level <= self.level {
            let tag = match level {
                LogLevel::Error => "error: ",
                LogLevel::Warn => "warning: ",
                LogLevel::Info | LogLevel::Debug => "",
            };
            self.write_console(&format!("init: {tag}{message}"));
        }
    }

    pub fn info(&mut self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    pub fn warn(&mut self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    pub fn error(&mut self, message: &str) {
        self.log(LogLevel::Error, message);
    }

    pub fn debug(&mut self, message: &str) {
        self.log(LogLevel::Debug, message);
    }

    /// One line a service wrote, prefixed with its name so nothing it prints can pass for an
    /// event or for init's own messages.
    pub fn service_line(&mut self, service: &str, line: &str) {
        self.write_console(&format!("[{service}] {line}"));
    }

    pub fn event(&mut self, event: LifecycleEvent) {
        let line = event.to_line();
        self.write_console(&line);
        if let Some(f) = &mut self.events_file {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}
