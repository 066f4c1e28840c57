//! A service's recent output: whole lines in a ring bounded by bytes.

use std::collections::VecDeque;

/// Longest line kept; longer output is split so one runaway line cannot use the whole buffer.
pub const MAX_LINE: usize = 2048;

#[derive(Debug)]
pub struct LogBuffer {
    lines: VecDeque<String>,
    bytes: usize,
    capacity: usize,
    dropped: u64,
    partial: Vec<u8>,
}

impl LogBuffer {
    pub fn new(capacity: usize) -> Self {
        Self { lines: VecDeque::new(), bytes: 0, capacity, dropped: 0, partial: Vec::new() }
    }

    /// Feeds raw output; returns the lines completed by it (for the console).
    pub fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &b in data {
            if b == b'\n' {
                done.push(self.take_partial());
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    done.push(self.take_partial());
                }
            }
        }
        for line in &done {
            self.push(line.clone());
        }
        done
    }

    /// Ends an unterminated last line (the writer went away).
    pub fn flush(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let line = self.take_partial();
        self.push(line.clone());
        Some(line)
    }

    fn take_partial(&mut self) -> String {
        let raw = std::mem::take(&mut self.partial);
        let text = String::from_utf8_lossy(&raw);
        text.trim_end_matches('\r').to_string()
    }

    fn push(&mut self, line: String) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > self.capacity {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= old.len() + 1;
                    self.dropped += 1;
                }
                None => break,
            }
        }
    }

    /// The newest `n` lines (all when `None`), oldest first.
    pub fn tail(&self, n: Option<usize>) -> Vec<String> {
        let n = n.unwrap_or(self.lines.len()).min(self.lines.len());
        self.lines.iter().skip(self.lines.len() - n).cloned().collect()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_partial_lines_wait() {
        let mut b = LogBuffer::new(1024);
        assert_eq!(b.feed(b"one\ntw"), ["one"]);
        assert_eq!(b.feed(b"o\r\nthree"), ["two"]);
        assert_eq!(b.flush().as_deref(), Some("three"));
        assert_eq!(b.tail(None), ["one", "two", "three"]);
        assert_eq!(b.tail(Some(2)), ["two", "three"]);
        assert_eq!(b.tail(Some(10)).len(), 3);
    }

    #[test]
    fn the_ring_drops_the_oldest_lines() {
        let mut b = LogBuffer::new(20);
        for i in 0..10 {
            b.feed(format!("line{i}\n").as_bytes());
        }
        assert_eq!(b.tail(None), ["line7", "line8", "line9"]);
        assert_eq!(b.dropped(), 7);
    }

    #[test]
    fn runaway_lines_and_bad_utf8_are_contained() {
        let mut b = LogBuffer::new(100_000);
        let lines = b.feed(&vec![b'x'; MAX_LINE * 2 + 5]);
        assert_eq!(lines.len(), 2);
        assert_eq!(b.flush().as_deref(), Some("xxxxx"));
        assert_eq!(b.feed(b"\xff\xfe ok\n"), ["\u{fffd}\u{fffd} ok"]);
    }
}
