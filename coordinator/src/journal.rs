//! A bounded record of the tasks the coordinator handled.

use cerana_protocol::tasks::coordinator::{HistoryArgs, JournalEntry, TaskState};
use cerana_protocol::RequestId;
use std::collections::VecDeque;

/// Entries returned by a history query that names no limit.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

/// A ring buffer of journal entries addressed by a monotonic sequence number, so an update
/// finds its entry in O(1) while the entry is still kept.
#[derive(Debug)]
pub struct Journal {
    entries: VecDeque<JournalEntry>,
    first_seq: u64,
    capacity: usize,
}

impl Journal {
    pub fn new(capacity: usize) -> Self {
        Self { entries: VecDeque::with_capacity(capacity.min(4096)), first_seq: 0, capacity }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records a new entry, dropping the oldest when full; returns its sequence number.
    pub fn push(&mut self, entry: JournalEntry) -> u64 {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.first_seq += 1;
        }
        self.entries.push_back(entry);
        self.first_seq + self.entries.len() as u64 - 1
    }

    /// The entry with sequence number `seq`, unless it has been dropped.
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut JournalEntry> {
        let index = seq.checked_sub(self.first_seq)?;
        self.entries.get_mut(usize::try_from(index).ok()?)
    }

    /// The newest entry for `id`.
    pub fn find(&self, id: RequestId) -> Option<&JournalEntry> {
        self.entries.iter().rev().find(|e| e.id == id)
    }

    /// Entries matching `args`, newest first.
    pub fn query(&self, args: &HistoryArgs) -> Vec<JournalEntry> {
        let limit = args.limit.map_or(DEFAULT_HISTORY_LIMIT, |l| l as usize);
        self.entries
            .iter()
            .rev()
            .filter(|e| args.task.as_ref().is_none_or(|t| &e.task == t))
            .filter(|e| args.state.is_none_or(|s| e.state == s))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn count_in(&self, state: TaskState) -> usize {
        self.entries.iter().filter(|e| e.state == state).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::TaskName;

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
        }
    }

    #[test]
    fn the_journal_is_bounded_and_updates_find_their_entry() {
        let mut journal = Journal::new(3);
        let seqs: Vec<u64> = (0..5).map(|i| journal.push(entry(if i % 2 == 0 { "a" } else { "b" }))).collect();
        assert_eq!(journal.len(), 3);
        assert!(journal.get_mut(seqs[0]).is_none(), "dropped entries are gone");
        journal.get_mut(seqs[4]).unwrap().state = TaskState::Done;
        let newest = journal.query(&HistoryArgs { limit: Some(1), ..Default::default() });
        assert_eq!(newest[0].state, TaskState::Done);
        let only_b = journal.query(&HistoryArgs { task: Some(TaskName::new("b").unwrap()), ..Default::default() });
        assert_eq!(only_b.len(), 1);
        let done = journal.query(&HistoryArgs { state: Some(TaskState::Done), ..Default::default() });
        assert_eq!(done.len(), 1);
        assert_eq!(journal.count_in(TaskState::Running), 2);
        assert!(journal.find(newest[0].id).is_some());
    }
}
