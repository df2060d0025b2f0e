//! Pipeline counters. The processor owns them and updates them once per batch; the progress
//! line, the run summary and `/metrics` ([`prometheus`], from a [`Snapshot`] published a few
//! times a second) read them. Label values are bounded: per stream, per pipeline and per
//! rejection [`Reason`], never per event.

mod combine;
pub mod process;
pub mod prometheus;
mod snapshot;

use crate::decode::Reason;
pub use snapshot::{Bounds, PipelineMetrics, Probe, QueryStats, Registry, Role, Snapshot, StreamProbe};

/// Counters of one stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamCounters {
    pub read: u64,
    pub accepted: u64,
    pub duplicates: u64,
    /// By [`Reason::index`].
    pub invalid: [u64; Reason::ALL.len()],
}

/// Counters of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Entries received from Redis (new, re-read and claimed).
    pub read: u64,
    /// Events archived (first occurrences).
    pub accepted: u64,
    /// Events dropped as duplicates of an earlier `event_id`.
    pub duplicates: u64,
    /// Rejected entries, by [`Reason::index`]; each went to the dead-letter stream.
    pub invalid: [u64; Reason::ALL.len()],
    /// Accepted events older than the dedup horizon (could not be checked).
    pub beyond_horizon: u64,
    /// Entries deleted or trimmed while pending (acked, nothing to archive).
    pub deleted_pending: u64,
    /// Entries claimed from other (dead) consumers.
    pub claimed: u64,
    /// Entries acknowledged.
    pub acked: u64,
    /// Archive files committed (rows, bytes).
    pub files_committed: u64,
    pub rows_committed: u64,
    pub bytes_committed: u64,
    /// Pipeline and late-event table files committed.
    pub table_files_committed: u64,
    pub table_rows_committed: u64,
    pub table_bytes_committed: u64,
    /// Times the reader lost Redis.
    pub disconnects: u64,
    /// Publish (the entry id's time) → handed to the acker, i.e. durable, per entry (the
    /// exact 1 ms histogram for the run summary is kept by the processor).
    pub durable_latency: PromHistogram,
    /// Publish (the entry id's time) → processed, per entry.
    pub process_latency: PromHistogram,
    /// Checkpoint (commit) durations.
    pub commit_duration: PromHistogram,
    /// Checkpoints committed by this process, and the last one's epoch.
    pub checkpoints: u64,
    pub checkpoint_epoch: u64,
    /// Of those, written on the processor's loop (table commits, the stop, shards of
    /// several); the others were written while it read on.
    pub checkpoints_inline: u64,
    /// Shards: windows the merger (shard 0's holder) evaluated from every shard's states,
    /// and the end (µs) of the oldest window some shard closed that waits for another.
    pub merged_windows: u64,
    pub merge_waiting_end_us: Option<i64>,
    /// Per configured stream, in configuration order.
    pub streams: Vec<StreamCounters>,
}

impl Stats {
    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().sum()
    }

    /// Non-zero rejection counts with their reason codes.
    pub fn invalid_by_reason(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL.iter().zip(self.invalid).filter(|(_, n)| *n > 0).map(|(r, n)| (r.as_str(), n)).collect()
    }
}

/// Upper bounds (ms) of the Prometheus histogram buckets kept next to the exact ones.
pub const PROM_BOUNDS_MS: [u64; 14] =
    [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000];

/// Index of the bucket holding the `q`-quantile of `count` observations (`None` when empty).
fn quantile_bucket(buckets: &[u64], count: u64, q: f64) -> Option<usize> {
    if count == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
    let mut seen = 0;
    buckets.iter().position(|n| {
        seen += n;
        seen >= rank
    })
}

/// Coarse, cumulative-ready counts of a histogram (cheap to copy into a snapshot).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PromHistogram {
    /// Per bound of [`PROM_BOUNDS_MS`] (not cumulative), then the overflow.
    pub buckets: [u64; PROM_BOUNDS_MS.len() + 1],
    pub count: u64,
    pub sum_ms: u64,
}

impl PromHistogram {
    pub fn record(&mut self, ms: u64) {
        let i = PROM_BOUNDS_MS.iter().position(|&b| ms <= b).unwrap_or(PROM_BOUNDS_MS.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ms += ms;
    }

    /// The `q`-quantile as the upper bound of its bucket (ms); `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        quantile_bucket(&self.buckets, self.count, q).map(|i| PROM_BOUNDS_MS.get(i).copied().unwrap_or(u64::MAX))
    }

    /// Adds `n` observations of the same value.
    pub fn record_n(&mut self, ms: u64, n: u64) {
        let i = PROM_BOUNDS_MS.iter().position(|&b| ms <= b).unwrap_or(PROM_BOUNDS_MS.len());
        self.buckets[i] += n;
        self.count += n;
        self.sum_ms += ms * n;
    }
}

/// A latency histogram with 1 ms buckets up to [`LatencyHistogram::MAX_MS`] (exact
/// percentiles at that resolution; larger values count in the last bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    buckets: Vec<u64>,
    count: u64,
    max_ms: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: vec![0; Self::MAX_MS as usize + 1], count: 0, max_ms: 0 }
    }
}

impl LatencyHistogram {
    pub const MAX_MS: u64 = 600_000;

    pub fn record(&mut self, ms: u64) {
        self.buckets[ms.min(Self::MAX_MS) as usize] += 1;
        self.count += 1;
        self.max_ms = self.max_ms.max(ms);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max_ms(&self) -> u64 {
        self.max_ms
    }

    /// The `q`-quantile (0..=1) in ms; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        quantile_bucket(&self.buckets, self.count, q).map(|ms| ms as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_exact_at_ms_resolution() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for ms in 1..=100 {
            h.record(ms);
        }
        h.record(10_000_000);
        assert_eq!(h.quantile_ms(0.5), Some(51));
        assert_eq!(h.quantile_ms(0.99), Some(100));
        assert_eq!(h.quantile_ms(1.0), Some(LatencyHistogram::MAX_MS));
        assert_eq!(h.max_ms(), 10_000_000);
        assert_eq!(h.count(), 101);
    }
}
