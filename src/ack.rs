//! Ack tracking: the entries read since the last checkpoint, per stream.
//!
//! Entries are registered as their batch is processed and handed out all at once right after
//! a checkpoint committed: at that point every one of them is durable (its archive row, window
//! contribution and dedup id, or its DLQ entry, are in the checkpoint). This is the invariant
//! **ack after checkpoint**.

use crate::entry::EntryId;

/// Entries read but not yet acked, per stream, in read order.
#[derive(Default)]
pub struct AckTracker {
    pending: Vec<(usize, Vec<EntryId>)>,
    ids: usize,
}

impl AckTracker {
    /// Registers the entries of a processed batch of `stream`.
    pub fn register(&mut self, stream: usize, ids: Vec<EntryId>) {
        if ids.is_empty() {
            return;
        }
        self.ids += ids.len();
        match self.pending.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, v)) => v.extend(ids),
            None => self.pending.push((stream, ids)),
        }
    }

    /// Entries read and not yet acked.
    pub fn pending_ids(&self) -> usize {
        self.ids
    }

    /// Removes and returns every registered entry, per stream (call after a checkpoint).
    pub fn take_all(&mut self) -> Vec<(usize, Vec<EntryId>)> {
        self.ids = 0;
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> EntryId {
        EntryId { ms: n, seq: 0 }
    }

    #[test]
    fn everything_registered_is_released_once_per_stream() {
        let mut t = AckTracker::default();
        t.register(0, vec![id(1), id(2)]);
        t.register(1, vec![id(3)]);
        t.register(0, vec![id(4)]);
        t.register(1, vec![]);
        assert_eq!(t.pending_ids(), 4);
        assert_eq!(t.take_all(), vec![(0, vec![id(1), id(2), id(4)]), (1, vec![id(3)])]);
        assert_eq!(t.pending_ids(), 0);
        assert_eq!(t.take_all(), vec![]);
    }
}
