//! Ack tracking: which read entries are durable and may be `XACK`ed.
//!
//! Every batch of entries read gets a sequence number. Rows of a batch go to archive files
//! that each remember the lowest sequence they hold; every batch below the lowest sequence
//! still held by an open file is fully durable (its rows committed, its rejects in the DLQ,
//! its duplicates covered by earlier committed rows). This is the invariant **ack after
//! commit**.

use std::collections::VecDeque;

use crate::event::EntryId;

struct Pending {
    seq: u64,
    stream: usize,
    ids: Vec<EntryId>,
}

/// Batches read but not yet acked, in read order.
#[derive(Default)]
pub struct AckTracker {
    next: u64,
    pending: VecDeque<Pending>,
    ids: usize,
}

impl AckTracker {
    /// The sequence number the next registered batch will get.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Registers a processed batch; returns its sequence number.
    pub fn register(&mut self, stream: usize, ids: Vec<EntryId>) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.ids += ids.len();
        if !ids.is_empty() {
            self.pending.push_back(Pending { seq, stream, ids });
        }
        seq
    }

    /// Entries read and not yet acked.
    pub fn pending_ids(&self) -> usize {
        self.ids
    }

    /// Removes and returns, per stream, the ids of every batch with `seq < frontier`.
    pub fn take_durable(&mut self, frontier: Option<u64>) -> Vec<(usize, Vec<EntryId>)> {
        let frontier = frontier.unwrap_or(u64::MAX);
        let mut out: Vec<(usize, Vec<EntryId>)> = Vec::new();
        while self.pending.front().is_some_and(|p| p.seq < frontier) {
            let Some(p) = self.pending.pop_front() else { break };
            self.ids -= p.ids.len();
            match out.iter_mut().find(|(s, _)| *s == p.stream) {
                Some((_, ids)) => ids.extend(p.ids),
                None => out.push((p.stream, p.ids)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> EntryId {
        EntryId { ms: n, seq: 0 }
    }

    #[test]
    fn only_batches_below_the_frontier_are_released() {
        let mut t = AckTracker::default();
        let a = t.register(0, vec![id(1), id(2)]);
        let b = t.register(1, vec![id(3)]);
        let c = t.register(0, vec![id(4)]);
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(t.take_durable(Some(0)), vec![]);
        assert_eq!(t.take_durable(Some(2)), vec![(0, vec![id(1), id(2)]), (1, vec![id(3)])]);
        assert_eq!(t.pending_ids(), 1);
        assert_eq!(t.take_durable(None), vec![(0, vec![id(4)])]);
        assert_eq!(t.pending_ids(), 0);
    }
}
