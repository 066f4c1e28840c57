//! The guest's serial console: every byte goes to a log file; lines are kept for the error tail
//! and scanned for `CERANA-EVENT` lifecycle lines.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cerana_protocol::events::LifecycleEvent;

const TAIL_LINES: usize = 60;

#[derive(Debug, Default)]
pub struct ConsoleState {
    pub events: Vec<LifecycleEvent>,
    /// Lines with the event prefix that did not parse (reported, never fatal).
    pub bad_events: Vec<String>,
    pub tail: VecDeque<String>,
    /// Every complete line seen, for `wait_for_line`.
    pub lines_seen: u64,
    partial: Vec<u8>,
    pub closed: bool,
    all_text: String,
}

impl ConsoleState {
    fn push_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).trim_end_matches('\r').to_owned();
                self.partial.clear();
                self.push_line(line);
            } else {
                self.partial.push(b);
            }
        }
    }

    fn push_line(&mut self, line: String) {
        match LifecycleEvent::parse_line(&line) {
            Some(Ok(event)) => self.events.push(event),
            Some(Err(_)) => self.bad_events.push(line.clone()),
            None => {}
        }
        // Bounded: only the text needed to find markers, not the whole boot log (that is on disk).
        if self.all_text.len() > 4 << 20 {
            let mut cut = self.all_text.len() - (2 << 20);
            while !self.all_text.is_char_boundary(cut) {
                cut += 1;
            }
            self.all_text.drain(..cut);
        }
        self.all_text.push_str(&line);
        self.all_text.push('\n');
        self.tail.push_back(line);
        if self.tail.len() > TAIL_LINES {
            self.tail.pop_front();
        }
        self.lines_seen += 1;
    }

    pub fn tail_text(&self) -> String {
        let mut s: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        let partial = String::from_utf8_lossy(&self.partial);
        if !partial.is_empty() {
            s.push(&partial);
            return s.join("\n");
        }
        s.join("\n")
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.all_text.contains(needle) || String::from_utf8_lossy(&self.partial).contains(needle)
    }
}

/// Shared between the reader thread and the harness.
#[derive(Debug, Clone, Default)]
pub struct Console {
    inner: Arc<(Mutex<ConsoleState>, Condvar)>,
}

impl Console {
    /// Copies `source` (QEMU's stdout) into `log` and the state until end of file.
    pub fn spawn_reader<R: Read + Send + 'static, W: Write + Send + 'static>(&self, mut source: R, mut log: W) {
        let inner = Arc::clone(&self.inner);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = match source.read(&mut buf) {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let (lock, cond) = &*inner;
                let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
                if n == 0 {
                    state.closed = true;
                    cond.notify_all();
                    let _ = log.flush();
                    return;
                }
                let _ = log.write_all(&buf[..n]);
                let _ = log.flush();
                state.push_bytes(&buf[..n]);
                cond.notify_all();
            }
        });
    }

    /// Waits until `check` returns `Some` or the console closes or `timeout` passes.
    pub fn wait<T>(&self, timeout: Duration, mut check: impl FnMut(&ConsoleState) -> Option<T>) -> Result<T, WaitEnd> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.inner;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = check(&state) {
                return Ok(v);
            }
            if state.closed {
                return Err(WaitEnd::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitEnd::TimedOut);
            }
            state = cond.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&ConsoleState) -> T) -> T {
        let state = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&state)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    TimedOut,
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_across_read_boundaries_and_logged() {
        let console = Console::default();
        let text = "[ 1.0] kernel\r\nCERANA-EVENT {\"event\":\"node_ready\",\"uptime_ms\":5}\r\nCERANA-EVENT {\"event\":\"bogus\"}\npartial";
        let log = tempfile::NamedTempFile::new().unwrap();
        let file = log.reopen().unwrap();
        console.spawn_reader(std::io::Cursor::new(text.as_bytes().to_vec()), file);
        let got = console.wait(Duration::from_secs(5), |s| s.events.first().cloned()).unwrap();
        assert_eq!(got, LifecycleEvent::NodeReady { uptime_ms: 5 });
        assert_eq!(console.wait(Duration::from_secs(5), |s| s.closed.then_some(())), Ok(()));
        console.with(|s| {
            assert_eq!(s.bad_events.len(), 1);
            assert!(s.contains("partial"));
            assert!(s.tail_text().ends_with("partial"));
        });
        assert_eq!(std::fs::read_to_string(log.path()).unwrap(), text);
    }

    #[test]
    fn waiting_ends_on_timeout_or_close() {
        let console = Console::default();
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        console.spawn_reader(reader, std::io::sink());
        let r: Result<(), _> = console.wait(Duration::from_millis(50), |_| None);
        assert_eq!(r, Err(WaitEnd::TimedOut));
        drop(writer);
        let r: Result<(), _> = console.wait(Duration::from_secs(5), |_| None);
        assert_eq!(r, Err(WaitEnd::Closed));
    }
}
