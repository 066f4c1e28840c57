//! A bounded record of the tasks the coordinator handled: bounded in entries and in bytes.

use cerana_protocol::tasks::coordinator::{
    HistoryArgs, HistoryResult, JournalEntry, OmittedReason, ResultOmitted, TaskState,
};
use cerana_protocol::{ProviderName, RequestId, TaskError};
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};

/// Entries returned by a history query that names no limit.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
/// Most entries one history page holds; a larger `limit` is clamped (the page's `next_before`
/// leads on).
pub const MAX_HISTORY_PAGE: usize = 1_000;
/// Most bytes of entries one history page holds (at least one entry is always returned), so a
/// page fits a frame and an HTTP response is not a copy of the whole journal.
pub const MAX_HISTORY_PAGE_BYTES: usize = 4 << 20;
/// Longest error message kept in an entry (the caller got the whole message).
pub const MAX_JOURNAL_ERROR_MESSAGE: usize = 4 << 10;

/// How much the journal keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    /// Entries kept; the oldest is dropped beyond it.
    pub entries: usize,
    /// A result larger than this (its JSON) is not kept, only marked.
    pub result_bytes: usize,
    /// Estimated bytes of all entries: beyond it the oldest finished results are dropped, then
    /// the oldest entries.
    pub total_bytes: usize,
}

/// How a task ended, for [`Journal::finish`].
#[derive(Debug)]
pub struct Finish<'a> {
    pub state: TaskState,
    pub finished_at_ms: u64,
    pub duration_us: u64,
    pub outcome: &'a Result<Box<RawValue>, TaskError>,
}

/// A ring of journal entries addressed by a monotonic sequence number, so an update finds its
/// entry in O(1) while the entry is still kept, with an index by request id.
#[derive(Debug)]
pub struct Journal {
    entries: VecDeque<JournalEntry>,
    first_seq: u64,
    by_id: HashMap<RequestId, u64>,
    /// Sequence numbers of entries holding a result, oldest finished first: what to drop when
    /// over the byte budget. May name entries already gone (skipped when met).
    with_results: VecDeque<u64>,
    /// Estimated bytes of `entries` (see [`entry_bytes`]).
    bytes: usize,
    limits: JournalLimits,
}

impl Journal {
    pub fn new(limits: JournalLimits) -> Self {
        Self {
            entries: VecDeque::with_capacity(limits.entries.min(4096)),
            first_seq: 0,
            by_id: HashMap::new(),
            with_results: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.limits.entries
    }

    /// Estimated bytes the entries take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records a new entry, dropping old ones beyond the limits; returns its sequence number.
    pub fn push(&mut self, mut entry: JournalEntry) -> u64 {
        if let Some(error) = &mut entry.error {
            bound_error(error);
        }
        if self.entries.len() == self.limits.entries {
            self.pop_oldest();
        }
        let seq = self.first_seq + self.entries.len() as u64;
        self.bytes += entry_bytes(&entry);
        self.by_id.insert(entry.id, seq);
        self.entries.push_back(entry);
        self.enforce_byte_budget();
        seq
    }

    fn index(&self, seq: u64) -> Option<usize> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        (index < self.entries.len()).then_some(index)
    }

    /// Changes the entry `seq` (unless it has been dropped), keeping the byte count true.
    fn update(&mut self, seq: u64, change: impl FnOnce(&mut JournalEntry)) {
        let Some(index) = self.index(seq) else { return };
        let entry = &mut self.entries[index];
        self.bytes -= entry_bytes(entry);
        change(entry);
        self.bytes += entry_bytes(entry);
    }

    /// The provider that took over after a failover.
    pub fn set_provider(&mut self, seq: u64, provider: ProviderName) {
        self.update(seq, |entry| entry.provider = Some(provider));
    }

    /// Records how the task `seq` ended: its result while small enough, else a marker.
    pub fn finish(&mut self, seq: u64, finish: Finish<'_>) {
        let limit = self.limits.result_bytes;
        let mut kept_result = false;
        self.update(seq, |entry| {
            let secret = cerana_protocol::tasks::access_of(entry.task.as_str()) == cerana_protocol::Access::Admin;
            entry.state = finish.state;
            entry.finished_at_ms = Some(finish.finished_at_ms);
            entry.duration_us = Some(finish.duration_us);
            match finish.outcome {
                Ok(result) if secret => {
                    entry.result_omitted =
                        Some(ResultOmitted { bytes: result.get().len() as u64, reason: OmittedReason::Secret });
                }
                Ok(result) if result.get().len() <= limit => {
                    entry.result = Some(result.clone());
                    kept_result = true;
                }
                Ok(result) => {
                    entry.result_omitted =
                        Some(ResultOmitted { bytes: result.get().len() as u64, reason: OmittedReason::TooLarge });
                }
                Err(error) => {
                    let mut error = error.clone();
                    bound_error(&mut error);
                    entry.error = Some(error);
                }
            }
        });
        if kept_result {
            self.with_results.push_back(seq);
        }
        self.enforce_byte_budget();
    }

    /// Drops the oldest finished results, then the oldest entries, until within the budget.
    fn enforce_byte_budget(&mut self) {
        while self.bytes > self.limits.total_bytes {
            let Some(seq) = self.with_results.pop_front() else { break };
            self.update(seq, |entry| {
                if let Some(result) = entry.result.take() {
                    entry.result_omitted =
                        Some(ResultOmitted { bytes: result.get().len() as u64, reason: OmittedReason::JournalFull });
                }
            });
        }
        while self.bytes > self.limits.total_bytes && self.entries.len() > 1 {
            self.pop_oldest();
        }
        // Sequence numbers of dropped entries accumulate while the budget is not reached.
        if self.with_results.len() > 2 * self.limits.entries {
            let first = self.first_seq;
            self.with_results.retain(|&seq| seq >= first);
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.entries.pop_front() {
            self.bytes -= entry_bytes(&old);
            if self.by_id.get(&old.id) == Some(&self.first_seq) {
                self.by_id.remove(&old.id);
            }
            self.first_seq += 1;
        }
    }

    /// The entry for `id`, while it is kept.
    pub fn find(&self, id: RequestId) -> Option<&JournalEntry> {
        self.index(*self.by_id.get(&id)?).map(|index| &self.entries[index])
    }

    /// Whether the journal still holds a request with this id.
    pub fn contains(&self, id: RequestId) -> bool {
        self.find(id).is_some()
    }

    /// One page of the entries matching `args`, newest first: at most `limit` (clamped to
    /// [`MAX_HISTORY_PAGE`]) and about [`MAX_HISTORY_PAGE_BYTES`], older than `before`.
    pub fn query(&self, args: &HistoryArgs) -> HistoryResult {
        let limit = args.limit.map_or(DEFAULT_HISTORY_LIMIT, |l| l as usize).clamp(1, MAX_HISTORY_PAGE);
        let end = match args.before {
            Some(before) => usize::try_from(before.saturating_sub(self.first_seq)).unwrap_or(usize::MAX),
            None => usize::MAX,
        }
        .min(self.entries.len());
        let mut page = HistoryResult { entries: Vec::new(), next_before: None };
        let mut page_bytes = 0;
        let matching = (0..end)
            .rev()
            .map(|index| (index, &self.entries[index]))
            .filter(|(_, e)| args.task.as_ref().is_none_or(|t| &e.task == t))
            .filter(|(_, e)| args.state.is_none_or(|s| e.state == s));
        for (index, entry) in matching {
            let bytes = entry_bytes(entry);
            if page.entries.len() == limit || (!page.entries.is_empty() && page_bytes + bytes > MAX_HISTORY_PAGE_BYTES)
            {
                page.next_before = Some(self.first_seq + index as u64 + 1);
                break;
            }
            page_bytes += bytes;
            page.entries.push(entry.clone());
        }
        page
    }

    pub fn count_in(&self, state: TaskState) -> usize {
        self.entries.iter().filter(|e| e.state == state).count()
    }
}

/// What an entry costs in memory, roughly: its fixed part and every string and result it holds.
fn entry_bytes(entry: &JournalEntry) -> usize {
    std::mem::size_of::<JournalEntry>()
        + entry.task.as_str().len()
        + entry.caller.len()
        + entry.provider.as_ref().map_or(0, |p| p.as_str().len())
        + entry.forwarded_to.as_ref().map_or(0, String::len)
        + entry.error.as_ref().map_or(0, error_bytes)
        + entry.result.as_ref().map_or(0, |r| r.get().len())
}

fn error_bytes(error: &TaskError) -> usize {
    std::mem::size_of::<TaskError>()
        + error.message.len()
        + error.node.as_ref().map_or(0, String::len)
        + error.details.as_ref().map_or(0, |d| d.to_string().len())
}

/// Trims what an error may bring in unbounded (a provider's or a peer's message, node and
/// details) to what the journal keeps.
fn bound_error(error: &mut TaskError) {
    truncate_marked(&mut error.message, MAX_JOURNAL_ERROR_MESSAGE);
    if let Some(node) = &mut error.node {
        truncate_marked(node, MAX_JOURNAL_ERROR_MESSAGE);
    }
    if error.details.as_ref().is_some_and(|d| d.to_string().len() > MAX_JOURNAL_ERROR_MESSAGE) {
        error.details = Some(serde_json::json!({ "omitted": "too large for the journal" }));
    }
}

fn truncate_marked(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" [truncated]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::{ErrorCode, TaskName};

    const LIMITS: JournalLimits = JournalLimits { entries: 10_000, result_bytes: 64 << 10, total_bytes: 16 << 20 };

    fn entry(task: &str) -> JournalEntry {
        JournalEntry {
            id: RequestId::random(),
            task: TaskName::new(task).unwrap(),
            state: TaskState::Running,
            caller: "test".into(),
            provider: None,
            forwarded_to: None,
            parent: None,
            accepted_at_ms: 0,
            finished_at_ms: None,
            duration_us: None,
            error: None,
            result: None,
            result_omitted: None,
        }
    }

    fn finish(journal: &mut Journal, seq: u64, outcome: &Result<Box<RawValue>, TaskError>) {
        let state = if outcome.is_ok() { TaskState::Done } else { TaskState::Failed };
        journal.finish(seq, Finish { state, finished_at_ms: 1, duration_us: 1, outcome });
    }

    fn result_of(bytes: usize) -> Result<Box<RawValue>, TaskError> {
        Ok(serde_json::value::to_raw_value(&serde_json::json!({ "data": "x".repeat(bytes - 11) })).unwrap())
    }

    /// The byte count the journal keeps, recomputed from scratch.
    fn recount(journal: &Journal) -> usize {
        journal.entries.iter().map(entry_bytes).sum()
    }

    #[test]
    fn the_journal_is_bounded_and_updates_find_their_entry() {
        let mut journal = Journal::new(JournalLimits { entries: 3, ..LIMITS });
        let seqs: Vec<u64> = (0..5).map(|i| journal.push(entry(if i % 2 == 0 { "a" } else { "b" }))).collect();
        assert_eq!(journal.len(), 3);
        finish(&mut journal, seqs[0], &result_of(20));
        assert!(journal.entries.iter().all(|e| e.state == TaskState::Running), "dropped entries are gone");
        finish(&mut journal, seqs[4], &result_of(20));
        let newest = journal.query(&HistoryArgs { limit: Some(1), ..Default::default() });
        assert_eq!(newest.entries[0].state, TaskState::Done);
        let only_b = journal.query(&HistoryArgs { task: Some(TaskName::new("b").unwrap()), ..Default::default() });
        assert_eq!(only_b.entries.len(), 1);
        let done = journal.query(&HistoryArgs { state: Some(TaskState::Done), ..Default::default() });
        assert_eq!(done.entries.len(), 1);
        assert_eq!(journal.count_in(TaskState::Running), 2);
        assert!(journal.find(newest.entries[0].id).is_some());
        assert_eq!(journal.bytes(), recount(&journal));
    }

    #[test]
    fn a_credential_tasks_result_is_never_kept() {
        let mut journal = Journal::new(LIMITS);
        let seq = journal.push(entry("auth-token-create"));
        finish(&mut journal, seq, &result_of(100));
        let e = journal.query(&HistoryArgs::default()).entries.remove(0);
        assert!(e.result.is_none());
        assert_eq!(e.result_omitted.map(|o| o.reason), Some(OmittedReason::Secret));
    }

    /// Issue #15: 1,000 tasks with 64 KB results stay within the byte budget, the newest results
    /// are the ones kept, and a huge limit returns one bounded page.
    #[test]
    fn results_stay_within_the_byte_budget_and_pages_are_bounded() {
        let mut journal = Journal::new(LIMITS);
        for _ in 0..1_000 {
            let seq = journal.push(entry("big"));
            finish(&mut journal, seq, &result_of(64_000));
            assert!(journal.bytes() <= LIMITS.total_bytes, "{} bytes", journal.bytes());
        }
        assert_eq!(journal.bytes(), recount(&journal));
        assert_eq!(journal.len(), 1_000, "dropping results was enough: every entry is kept");
        let newest = &journal.entries[999];
        assert!(newest.result.is_some());
        let oldest = &journal.entries[0];
        assert_eq!(oldest.result_omitted, Some(ResultOmitted { bytes: 64_000, reason: OmittedReason::JournalFull }));

        let page = journal.query(&HistoryArgs { limit: Some(100_000_000), ..Default::default() });
        assert!(page.entries.len() <= MAX_HISTORY_PAGE);
        let page_bytes: usize = page.entries.iter().map(entry_bytes).sum();
        assert!(page_bytes <= MAX_HISTORY_PAGE_BYTES, "{page_bytes}");
        // The cursor leads through every entry exactly once.
        let mut seen = page.entries.len();
        let mut before = page.next_before;
        while let Some(cursor) = before {
            let next = journal.query(&HistoryArgs { limit: Some(300), before: Some(cursor), ..Default::default() });
            assert!(next.entries.len() <= 300);
            seen += next.entries.len();
            before = next.next_before;
        }
        assert_eq!(seen, 1_000);
    }

    #[test]
    fn oversized_results_and_errors_are_not_kept_whole() {
        let mut journal = Journal::new(LIMITS);
        let seq = journal.push(entry("huge"));
        finish(&mut journal, seq, &result_of(LIMITS.result_bytes + 1));
        let kept = journal.find(journal.entries[0].id).unwrap();
        assert!(kept.result.is_none());
        let omitted = kept.result_omitted.as_ref().unwrap();
        assert_eq!((omitted.bytes, omitted.reason), (LIMITS.result_bytes as u64 + 1, OmittedReason::TooLarge));

        let seq = journal.push(entry("loud"));
        let error = TaskError::new(ErrorCode::Failed, "e".repeat(1 << 20))
            .with_details(serde_json::json!({ "blob": "d".repeat(1 << 20) }));
        finish(&mut journal, seq, &Err(error));
        assert!(journal.bytes() < 64 << 10, "{} bytes", journal.bytes());
        assert_eq!(journal.bytes(), recount(&journal));
    }

    #[test]
    fn entries_are_dropped_when_dropping_results_is_not_enough() {
        let mut journal = Journal::new(JournalLimits { total_bytes: 64 << 10, ..LIMITS });
        for _ in 0..1_000 {
            let mut e = entry("chatty");
            e.caller = "c".repeat(1_000);
            journal.push(e);
        }
        assert!(journal.bytes() <= 64 << 10);
        assert!(journal.len() < 1_000 && !journal.is_empty());
        assert_eq!(journal.bytes(), recount(&journal));
        let ids: Vec<RequestId> = journal.entries.iter().map(|e| e.id).collect();
        assert!(ids.iter().all(|id| journal.contains(*id)));
        assert_eq!(journal.by_id.len(), journal.len(), "the index forgets dropped entries");
    }
}
