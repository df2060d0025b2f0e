//! What the processor tells ops: the metrics snapshot it publishes on every tick, and the
//! progress line.

use std::time::{Duration, Instant};

use super::Processor;

impl Processor {
    /// Publishes the counters for the HTTP endpoints.
    pub fn publish(&self, registry: &crate::metrics::Registry) {
        let pipelines = self.pipelines.metrics();
        registry.update(|s| {
            s.stats = self.stats.clone();
            s.stream_names.clone_from(&self.source.streams);
            s.updated = Some(Instant::now());
            s.dedup_ids = self.ingest.dedup.len() as u64;
            s.dedup_bytes = self.ingest.dedup.memory_bytes() as u64;
            s.unacked = self.acks.pending_ids() as u64;
            s.open_archive_rows = self.archive.open_rows();
            let a = self.archive.bounds();
            s.bounds = crate::metrics::Bounds {
                archive_open_files: a.open_files as u64,
                archive_memory_bytes: a.memory_bytes as u64,
                archive_early_open_files: a.early_open_files,
                archive_early_memory: a.early_memory,
                checkpoints_early_pending: self.early_checkpoints[0],
                checkpoints_early_unsaved: self.early_checkpoints[1],
                read_bytes: self.read_bytes,
                dedup_horizon_secs: self.ingest.dedup.effective_horizon_secs().max(0) as u64,
                dedup_evicted: self.ingest.dedup.evicted,
            };
            s.last_commit_unix_ms = self.last_commit_unix_ms;
            s.pipelines = pipelines;
        });
    }

    pub fn log_progress(&self, elapsed: Duration) {
        let s = &self.stats;
        let rate = s.read as f64 / elapsed.as_secs_f64().max(1e-3);
        tracing::info!(
            read = s.read,
            rate = rate as u64,
            accepted = s.accepted,
            duplicates = s.duplicates,
            invalid = s.invalid_total(),
            committed_rows = s.rows_committed,
            files = s.files_committed,
            open_rows = self.archive.open_rows(),
            unacked = self.acks.pending_ids(),
            dedup_ids = self.ingest.dedup.len(),
            "Progress."
        );
    }
}
