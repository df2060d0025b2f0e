//! The state `/metrics`, `/readyz` and the status API read: a [`Snapshot`] the processor
//! publishes on its tick (a few times a second, not per event), plus what the Redis
//! [`Probe`] task last saw (`XINFO GROUPS` / `XINFO STREAM`, DLQ lengths).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Stats, StreamCounters};
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
    /// The processor's counters (cheap to copy: the exact latency buckets live elsewhere).
    pub stats: Stats,
    /// Names of `stats.streams`, in order.
    pub stream_names: Vec<String>,
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
    /// Each stream's name and counters.
    pub fn streams(&self) -> impl Iterator<Item = (&str, &StreamCounters)> {
        self.stream_names.iter().map(String::as_str).zip(&self.stats.streams)
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
