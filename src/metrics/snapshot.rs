//! The state `/metrics`, `/readyz` and the status API read: a [`Snapshot`] the processor
//! publishes on its tick (a few times a second, not per event), plus what the Redis
//! [`Probe`] task last saw (`XINFO GROUPS` / `XINFO STREAM`, DLQ lengths).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{PromHistogram, Stats, StreamCounters};

/// Counters of one pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Events selected by streams / event types.
    pub input: u64,
    /// Of those, rows that passed WHERE and went into at least one window.
    pub counted: u64,
    /// Rows that missed a window (one per missed window).
    pub late: u64,
    pub windows: u64,
    pub rows: u64,
    /// Window end (event time) → emitted (wall clock), per window.
    pub emit_latency: PromHistogram,
}

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
    /// Items (micro-batches, the clock's checks, a checkpoint's part) queued for the window
    /// worker or running (at most 4).
    pub queued_items: usize,
    /// The run-time error that stopped the pipeline (the others go on).
    pub failed: Option<String>,
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

/// The memory bounds an operator sets, and what they did (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    pub archive_open_files: u64,
    pub archive_memory_bytes: u64,
    /// Archive files finished early: too many partitions open / over the memory budget.
    pub archive_early_open_files: u64,
    pub archive_early_memory: u64,
    /// Checkpoints committed before their interval: `group` mode's pending entries at
    /// `max_pending_entries` / open files' unsaved rows at their budget.
    pub checkpoints_early_pending: u64,
    pub checkpoints_early_unsaved: u64,
    /// Entry bytes read from Redis.
    pub read_bytes: u64,
    /// The dedup horizon in force (shorter than configured while the memory cap holds it).
    pub dedup_horizon_secs: u64,
    /// Ids forgotten early to honour the dedup memory cap.
    pub dedup_evicted: u64,
}

/// What this instance is doing in its group (`eventide_role`, `/readyz`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the group's lease (another instance reads).
    #[default]
    Standby,
    /// Holding the lease, taking the checkpoint line over.
    Recovering,
    /// Holding the lease and reading.
    Reading,
    /// Stopping: the final checkpoint.
    Stopping,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Standby, Role::Recovering, Role::Reading, Role::Stopping];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Recovering => "recovering",
            Role::Reading => "reading",
            Role::Stopping => "stopping",
        }
    }
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
    /// What the memory bounds are doing.
    pub bounds: Bounds,
    /// `COUNT` of the reader's last read.
    pub read_count: u64,
    pub pipelines: Vec<PipelineMetrics>,
    pub probe: Probe,
    /// The lake answered the last readiness check.
    pub lake_ok: bool,
    pub role: Role,
    /// The lease holder as a standby last saw it (`<consumer>/<token>`).
    pub holder: Option<String>,
    /// A standby's last lease poll (it reached Redis then).
    pub standby_polled: Option<Instant>,
    /// Shards per stream, and the shards whose lease this worker holds.
    pub shards: u32,
    pub shards_held: Vec<u32>,
}

impl Snapshot {
    /// Each stream's name and counters.
    pub fn streams(&self) -> impl Iterator<Item = (&str, &StreamCounters)> {
        self.stream_names.iter().map(String::as_str).zip(&self.stats.streams)
    }

    /// Whether the process is ready, and as what: a standby that reaches Redis is ready (a
    /// rollout must not wait for it to hold the lease); a reader when Redis was probed
    /// recently without error, the lake is reachable and the processor is not stalled; not
    /// while it recovers. The reasons when not.
    pub fn readiness(&self, now: Instant, stall_after: Duration) -> Result<Role, Vec<String>> {
        let mut why = Vec::new();
        match self.role {
            Role::Standby => {
                return match self.standby_polled {
                    Some(at) if now.saturating_duration_since(at) <= stall_after => Ok(Role::Standby),
                    Some(at) => {
                        Err(vec![format!("standby: Redis not reached for {:?}", now.saturating_duration_since(at))])
                    }
                    None => Err(vec!["standby: Redis not reached yet".into()]),
                };
            }
            Role::Recovering => return Err(vec!["recovering: taking the group's checkpoint over".into()]),
            Role::Reading | Role::Stopping => {}
        }
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
        for p in &self.pipelines {
            if let Some(e) = &p.failed {
                why.push(format!("pipeline {} failed: {e}", p.name));
            }
        }
        match self.updated {
            None => why.push("the processor has not started".into()),
            Some(u) if now.saturating_duration_since(u) > stall_after => {
                why.push(format!("the processor has not reported for {:?}", now.saturating_duration_since(u)))
            }
            _ => {}
        }
        if why.is_empty() { Ok(self.role) } else { Err(why) }
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
