//! The processor's side of [`crate::telemetry`]: events' `traceparent`s collected for a traced
//! batch on their way through the fan-out, and the batch's counts for its span.

use crate::decode::Event;
use crate::entry::{EntryId, StreamBatch};
use crate::error::Result;
use crate::ingest::Fanout;
use crate::telemetry::{BatchCounts, BatchTrace};

/// A fan-out stage that links accepted events' `traceparent`s to the batch's trace until its
/// links are full; without a trace it does nothing (one branch per event).
pub(super) struct Traceparents<'a>(pub Option<&'a mut BatchTrace>);

impl Fanout for Traceparents<'_> {
    #[inline]
    fn accept(&mut self, ev: &Event<'_>, _stream: &str, _id: EntryId, _ingest_us: i64) -> Result<()> {
        if let Some(t) = self.0.as_deref_mut()
            && t.wants_links()
            && let Some(tp) = ev.traceparent.as_deref()
        {
            t.link(tp);
        }
        Ok(())
    }
}

impl super::Processor {
    /// Ends a traced batch: its spans go to the exporter, its context waits for the commit.
    pub(super) fn finish_trace(&mut self, trace: BatchTrace, batch: &StreamBatch, before: (u64, u64, u64)) {
        let s = &self.stats;
        let ids = batch.entries.iter().map(|e| e.id);
        let counts = BatchCounts {
            stream: self.source.streams[batch.stream].clone(),
            group: self.source.group.clone(),
            shard: self.shard,
            epoch: self.epoch,
            entries: batch.entries.len() as u64,
            accepted: s.accepted - before.0,
            duplicates: s.duplicates - before.1,
            rejected: s.invalid.iter().sum::<u64>() - before.2,
            bytes: batch.entries.iter().map(crate::entry::RawEntry::size).sum::<usize>() as u64,
            first_id: ids.clone().min().map(|i| i.to_string()).unwrap_or_default(),
            last_id: ids.max().map(|i| i.to_string()).unwrap_or_default(),
        };
        self.traces.add(trace.finish(counts));
    }
}
