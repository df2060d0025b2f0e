//! Pipeline counters. The processor owns them and updates them once per batch; the progress
//! line, the run summary (and, later, `/metrics`) read them. Label values are bounded: per
//! stream index and per rejection [`Reason`], never per event.

use crate::decode::Reason;

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
    pub files_committed: u64,
    pub rows_committed: u64,
    pub bytes_committed: u64,
    /// Times the reader lost Redis.
    pub disconnects: u64,
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
