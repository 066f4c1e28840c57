//! A service's kept output: the newest lines of stdout and stderr, bounded in lines and bytes.

use cerana_protocol::tasks::service::{LogLine, LogStream, LogsResult};
use std::collections::VecDeque;

/// Longest line kept; longer ones are cut (and marked).
pub const MAX_LINE: usize = 4096;

#[derive(Debug)]
pub struct LogBuffer {
    lines: VecDeque<LogLine>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
    next_seq: u64,
    dropped: u64,
}

impl LogBuffer {
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self { lines: VecDeque::new(), bytes: 0, max_lines, max_bytes, next_seq: 1, dropped: 0 }
    }

    pub fn push(&mut self, stream: LogStream, run: u32, time_ms: u64, raw: &[u8]) {
        let mut line = String::from_utf8_lossy(&raw[..raw.len().min(MAX_LINE)]).into_owned();
        if raw.len() > MAX_LINE {
            line.push_str(" [cut]");
        }
        self.bytes += line.len();
        self.lines.push_back(LogLine { seq: self.next_seq, stream, time_ms, run, line });
        self.next_seq += 1;
        while self.lines.len() > self.max_lines || (self.bytes > self.max_bytes && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.line.len();
                self.dropped += 1;
            }
        }
    }

    /// Lines numbered above `after`, at most the newest `tail` of them.
    pub fn read(&self, after: u64, tail: Option<usize>) -> LogsResult {
        let newer: Vec<&LogLine> = self.lines.iter().filter(|l| l.seq > after).collect();
        let skip = tail.map_or(0, |t| newer.len().saturating_sub(t));
        LogsResult {
            lines: newer.into_iter().skip(skip).cloned().collect(),
            dropped: self.dropped,
            next: self.next_seq - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_keeps_the_newest_lines_within_both_bounds() {
        let mut b = LogBuffer::new(3, 1 << 20);
        for i in 0..5 {
            b.push(LogStream::Stdout, 0, i, format!("line {i}").as_bytes());
        }
        let r = b.read(0, None);
        assert_eq!(r.lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["line 2", "line 3", "line 4"]);
        assert_eq!((r.dropped, r.next), (2, 5));
        assert_eq!(b.read(4, None).lines.len(), 1);
        assert_eq!(b.read(0, Some(1)).lines[0].line, "line 4");
        let mut small = LogBuffer::new(100, 10);
        small.push(LogStream::Stderr, 1, 0, b"123456");
        small.push(LogStream::Stderr, 1, 0, b"abcdef");
        assert_eq!(small.read(0, None).lines.len(), 1);
        let mut long = LogBuffer::new(10, 1 << 20);
        long.push(LogStream::Stdout, 0, 0, &vec![b'x'; MAX_LINE + 10]);
        assert!(long.read(0, None).lines[0].line.ends_with("[cut]"));
    }
}
