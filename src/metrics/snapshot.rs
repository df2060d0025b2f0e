//! The state `/metrics`, `/readyz` and the status API read: a [`Snapshot`] the processor
//! publishes on its tick (a few times a second, not per event), plus what the Redis
//! [`Probe`] task last saw (`XINFO GROUPS` / `XINFO STREAM`, DLQ lengths).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{PromHistogram, Stats, StreamCounters};
use crate::window::QueryStats;

/// One pipeline's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineMetrics {
    pub name: String,
    pub stats: QueryStats,
    /// Current watermark (µs since the epoch), if any event was seen.
    pub watermark_us: Option<i64>,
    pub open_windows: usize,
    pub state_bytes: usize,
    /// Rows of closed windows waiting for the next commit.
    pub pending_rows: usize,
}

/// What Redis says about one stream and the group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamProbe {
    pub stream: String,
    pub length: u64,
    /// `XINFO GROUPS` lag (`None` when Redis cannot compute it, e.g. after an `XDEL`).
    pub lag: Option<u64>,
    pub pending: u64,
    pub last_delivered_id: String,
    pub first_entry_id: Option<String>,
    /// Entries trimmed away before the group read them (lost to this group).
    pub trimmed_unread: u64,
    pub dlq_stream: String,
    pub dlq_length: u64,
}

/// The last probe of Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    pub at: Option<Instant>,
    pub error: Option<String>,
    pub streams: Vec<StreamProbe>,
}

/// Everything the endpoints report.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub group: String,
    pub consumer: String,
    pub started: Option<Instant>,
    /// When the processor last published (a stalled processor stops updating it).
    pub updated: Option<Instant>,
    pub read: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub beyond_horizon: u64,
    pub deleted_pending: u64,
    pub claimed: u64,
    pub acked: u64,
    pub files_committed: u64,
    pub rows_committed: u64,
    pub bytes_committed: u64,
    pub table_files_committed: u64,
    pub table_rows_committed: u64,
    pub table_bytes_committed: u64,
    pub disconnects: u64,
    pub streams: Vec<(String, StreamCounters)>,
    /// Publish time (entry id) → durable, per entry.
    pub durable_latency: PromHistogram,
    /// Publish time (entry id) → processed, per entry.
    pub process_latency: PromHistogram,
    /// Duration of commits (files, pipeline tables, dedup state).
    pub commit_duration: PromHistogram,
    pub last_commit_unix_ms: Option<i64>,
    pub dedup_ids: u64,
    pub dedup_bytes: u64,
    pub unacked: u64,
    pub open_archive_rows: u64,
    pub pipelines: Vec<PipelineMetrics>,
    pub probe: Probe,
    /// The lake answered the last readiness check.
    pub lake_ok: bool,
}

impl Snapshot {
    /// Copies the processor's counters (the exact latency buckets stay behind).
    pub fn set_stats(&mut self, s: &Stats, names: &[String]) {
        self.read = s.read;
        self.accepted = s.accepted;
        self.duplicates = s.duplicates;
        self.beyond_horizon = s.beyond_horizon;
        self.deleted_pending = s.deleted_pending;
        self.claimed = s.claimed;
        self.acked = s.acked;
        self.files_committed = s.files_committed;
        self.rows_committed = s.rows_committed;
        self.bytes_committed = s.bytes_committed;
        self.table_files_committed = s.table_files_committed;
        self.table_rows_committed = s.table_rows_committed;
        self.table_bytes_committed = s.table_bytes_committed;
        self.disconnects = s.disconnects;
        self.durable_latency = s.durable_latency.prom;
        self.process_latency = s.process_latency;
        self.commit_duration = s.commit_duration;
        self.streams = names.iter().cloned().zip(s.streams.iter().cloned()).collect();
    }

    /// Whether the process is ready: Redis probed recently without error, the lake
    /// reachable, and the processor not stalled. The reasons when not.
    pub fn readiness(&self, now: Instant, stall_after: Duration) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        match (&self.probe.at, &self.probe.error) {
            (None, _) => why.push("Redis not probed yet".to_string()),
            (Some(_), Some(e)) => why.push(format!("Redis: {e}")),
            (Some(at), None) if now.saturating_duration_since(*at) > stall_after => {
                why.push(format!("Redis probe is {:?} old", now.saturating_duration_since(*at)))
            }
            _ => {}
        }
        if !self.lake_ok {
            why.push("the lake did not answer".into());
        }
        match self.updated {
            None => why.push("the processor has not started".into()),
            Some(u) if now.saturating_duration_since(u) > stall_after => {
                why.push(format!("the processor has not reported for {:?}", now.saturating_duration_since(u)))
            }
            _ => {}
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }
}

/// Shared handle to the snapshot.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<Snapshot>>);

impl Registry {
    /// Runs `f` on the snapshot (a poisoned lock still holds usable counters).
    pub fn update<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn get(&self) -> Snapshot {
        self.update(|s| s.clone())
    }
}
