//! Windows across shards: each shard closes windows against its own watermark and keeps
//! their partial aggregate states; the **merger** (run by shard 0's lease holder) merges every
//! shard's state of a window once all of them have closed it, and evaluates it once.
//!
//! - A shard's pipelines run in partial mode ([`Pipelines::emit_partials`]): a window that
//!   closes there (its watermark passed `end + allowed_lateness`) becomes a partial state
//!   (keys + every accumulator's `state()`), kept in [`ClosedStates`] until the merger has it.
//!   The shard's checkpoint commits those states (`partials` blob) and, per pipeline, how far
//!   it has closed ([`WindowBound`]); late rows are written by the shard that saw them.
//! - The [`Merger`] reads every shard's latest committed checkpoint ([`ShardWindows`]); for a
//!   pipeline it finalises the windows ending at or before the lowest bound over all shards:
//!   `merge_batch` of the shards' states in shard order, evaluate, HAVING / SELECT, into shard
//!   0's table buffer. Sessions are chained from every shard's parts of a key first
//!   ([`super::session::partial`]). Its progress (`merged`) is committed by shard 0's manifest together
//!   with those rows, so a crash or a new holder of shard 0 merges nothing twice.
//! - A committed state never changes (the shard's window is closed: later events for it are
//!   late), so the rows do not depend on when the merger ran or who held which shard.
//! - Shards drop the states the merger has (`merged` in shard 0's latest checkpoint).
//!
//! A shard without events for `idle_timeout` moves its watermark on by processing time (a
//! shard that never had one, to the wall clock), so an idle shard does not hold the merger.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;

mod carry;
pub use carry::{Carry, decode as decode_carry, encode as encode_carry};

use super::{Pipelines, query_error};
use crate::checkpoint::{self, WindowBound};
use crate::error::{Error, Result};

/// A bound at or past this: the shard closed every window (end of a bounded input).
pub const FLUSHED: i64 = i64::MAX / 2;

/// One pipeline's closed windows at one shard that the merger may not have yet.
#[derive(Debug, Clone, Default)]
pub struct ClosedStates {
    /// Each aggregate's number of state columns.
    pub widths: Vec<usize>,
    /// Fixed windows: window end → its partial state (`Frozen::to_batch`). Sessions: the
    /// latest `last` of a batch of parts → the parts (see [`super::session::partial`]).
    pub windows: BTreeMap<i64, RecordBatch>,
    /// Sessions: the shard's long open sessions (not kept: computed for each checkpoint).
    pub long_open: Option<RecordBatch>,
}

impl ClosedStates {
    pub fn size(&self) -> usize {
        self.windows.values().map(RecordBatch::get_array_memory_size).sum()
    }

    /// Keeps `batch` under `key` (appended to what the key holds).
    pub fn add(&mut self, key: i64, batch: RecordBatch) -> datafusion::error::Result<()> {
        let batch = match self.windows.remove(&key) {
            Some(before) => arrow::compute::concat_batches(&batch.schema(), [&before, &batch])?,
            None => batch,
        };
        self.windows.insert(key, batch);
        Ok(())
    }
}

/// What one shard's latest checkpoint holds of its windows.
#[derive(Debug, Clone, Default)]
pub struct ShardWindows {
    /// The checkpoint's epoch.
    pub epoch: u64,
    pub bounds: BTreeMap<String, WindowBound>,
    pub states: BTreeMap<String, ClosedStates>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    widths: Vec<usize>,
    ends: Vec<i64>,
}

/// `states` as one blob: per pipeline a header (`<name>\n`) and per window an Arrow IPC
/// stream (`<name>\n<end>`).
pub fn encode_states(states: &BTreeMap<String, ClosedStates>) -> Result<Vec<u8>> {
    let mut parts = Vec::new();
    for (name, s) in states {
        let header = Header { widths: s.widths.clone(), ends: s.windows.keys().copied().collect() };
        parts.push((format!("{name}\n"), serde_json::to_vec(&header).map_err(|e| Error::Internal(e.to_string()))?));
        for (end, b) in &s.windows {
            parts.push((format!("{name}\n{end}"), checkpoint::to_ipc(std::slice::from_ref(b))?));
        }
        if let Some(b) = &s.long_open {
            parts.push((format!("{name}\nopen"), checkpoint::to_ipc(std::slice::from_ref(b))?));
        }
    }
    Ok(checkpoint::pack(&parts))
}

/// Back from [`encode_states`].
pub fn decode_states(bytes: &[u8]) -> Result<BTreeMap<String, ClosedStates>> {
    let bad = |why: &str| Error::State { path: "window partials".into(), reason: why.into() };
    let mut out: BTreeMap<String, ClosedStates> = BTreeMap::new();
    for (key, bytes) in checkpoint::unpack(bytes)? {
        let (name, end) = key.split_once('\n').ok_or_else(|| bad("an entry without a pipeline"))?;
        let s = out.entry(name.to_string()).or_default();
        if end.is_empty() {
            let h: Header = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
            s.widths = h.widths;
            continue;
        }
        let batch = checkpoint::from_ipc(&bytes)?.into_iter().next().ok_or_else(|| bad("an empty window state"))?;
        if end == "open" {
            s.long_open = Some(batch);
            continue;
        }
        let end: i64 = end.parse().map_err(|_| bad("a window end that is not a number"))?;
        s.windows.insert(end, batch);
    }
    Ok(out)
}

/// What a merge round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeRound {
    /// Windows evaluated (with rows at some shard).
    pub windows: u64,
    /// Whether the progress moved (it needs a checkpoint).
    pub progressed: bool,
    /// Every shard closed every window and all of them are merged (a bounded input's end).
    pub caught_up: bool,
    /// The end of the oldest window closed at some shard and waiting for another (µs).
    pub oldest_waiting: Option<i64>,
}

/// The merger's progress: per pipeline, every window ending at or before `merged` is
/// merged, and the shards keep their closed states from `keep` on (the window end, or a
/// session part's last event).
#[derive(Debug, Clone, Default)]
pub struct Merger {
    merged: BTreeMap<String, i64>,
    keep: BTreeMap<String, i64>,
    /// `emit = "updates"` pipelines: their windows in flight ([`Carry`]).
    carry: BTreeMap<String, Carry>,
}

impl Merger {
    /// The progress committed by shard 0 (`merged`, `keep`, and its bounds with each
    /// pipeline's definition then), for `pipelines` as they are now: a pipeline whose
    /// definition changed starts over (its windows under the new definition are all still
    /// to merge; the old progress would skip those ending before it).
    pub fn resume(
        mut merged: BTreeMap<String, i64>,
        mut keep: BTreeMap<String, i64>,
        mut carry: BTreeMap<String, Carry>,
        bounds: &BTreeMap<String, WindowBound>,
        pipelines: &Pipelines,
    ) -> Self {
        let same = |name: &String| {
            let now = pipelines.queries.iter().find(|q| &q.spec.name == name).map(|q| q.fingerprint_hash());
            now.is_some() && bounds.get(name).map(|b| b.fingerprint) == now
        };
        merged.retain(|name, _| same(name));
        keep.retain(|name, _| same(name));
        carry.retain(|name, _| same(name));
        Merger { merged, keep, carry }
    }

    /// The `emit = "updates"` pipelines' windows in flight (`None`: none), for shard 0's
    /// checkpoint.
    pub fn carry(&self) -> Option<&BTreeMap<String, Carry>> {
        self.carry.values().any(|c| !c.is_empty()).then_some(&self.carry)
    }

    pub fn merged(&self) -> &BTreeMap<String, i64> {
        &self.merged
    }

    /// Per pipeline, the first closed-state key the shards keep.
    pub fn keep(&self) -> &BTreeMap<String, i64> {
        &self.keep
    }

    /// Merges what every shard (`shards[k]` is shard k's latest checkpoint, `None` before its
    /// first) has closed into `into`'s table buffers (shard 0's pipelines).
    pub fn round(&mut self, into: &mut Pipelines, shards: &[Option<ShardWindows>]) -> Result<MergeRound> {
        into.settle()?;
        let mut round = MergeRound { caught_up: true, ..MergeRound::default() };
        for q in &mut into.queries {
            let name = q.spec.name.clone();
            let fingerprint = q.fingerprint_hash();
            let from = self.merged.get(&name).copied().unwrap_or(i64::MIN);
            // The lowest bound over shards, each under this definition of the pipeline (a
            // shard still on another one holds the merger until it restarts with this one).
            let mut upto = i64::MAX;
            for s in shards {
                let b = s.as_ref().and_then(|s| s.bounds.get(&name)).filter(|b| b.fingerprint == fingerprint);
                upto = upto.min(b.map_or(i64::MIN, |b| b.closed_before));
            }
            let mine: Vec<&ClosedStates> = shards.iter().flatten().filter_map(|s| s.states.get(&name)).collect();
            if upto > from && q.failed.is_none() {
                let keep = if q.shard_updates() {
                    let n = self.carry.entry(name.clone()).or_default().round(q, shards, (from, upto))?;
                    round.windows += n;
                    upto.saturating_add(1)
                } else if q.is_session() {
                    let parts: Vec<(&RecordBatch, &[usize])> =
                        mine.iter().flat_map(|s| s.windows.values().map(|b| (b, s.widths.as_slice()))).collect();
                    let long_open: Vec<&RecordBatch> = mine.iter().filter_map(|s| s.long_open.as_ref()).collect();
                    let (n, keep) = q
                        .merge_session_parts(&parts, &long_open, (from, upto))
                        .map_err(|e| super::query_error(&q.spec, e))?;
                    round.windows += n;
                    keep
                } else {
                    let mut ends: Vec<i64> = mine
                        .iter()
                        .flat_map(|s| s.windows.range(from.saturating_add(1)..=upto).map(|(&e, _)| e))
                        .collect();
                    ends.sort_unstable();
                    ends.dedup();
                    for end in ends {
                        let states: Vec<(&RecordBatch, &[usize])> =
                            mine.iter().filter_map(|s| Some((s.windows.get(&end)?, s.widths.as_slice()))).collect();
                        q.merge_window(end, &states).map_err(|e| super::query_error(&q.spec, e))?;
                        round.windows += 1;
                    }
                    upto.saturating_add(1)
                };
                self.keep.insert(name.clone(), keep);
                self.merged.insert(name.clone(), upto);
                round.progressed = true;
            }
            // What some shard closed and the merger does not have yet (also when the bound
            // did not move: a stalled shard is what the waiting age shows).
            let keep = self.keep.get(&name).copied().unwrap_or(i64::MIN);
            let waiting = mine.iter().filter_map(|s| s.windows.range(keep..).next()).map(|(&e, _)| e).min();
            round.caught_up &= upto >= FLUSHED && waiting.is_none();
            round.oldest_waiting = round.oldest_waiting.into_iter().chain(waiting).min();
        }
        into.collect()?;
        Ok(round)
    }
}

impl Pipelines {
    /// One shard of several: every pipeline keeps its closed windows' partial states for the
    /// [`Merger`] instead of evaluating them (`emit = "updates"`: the states written at each
    /// boundary, see [`Carry`]).
    pub fn emit_partials(&mut self) -> Result<()> {
        for q in &mut self.queries {
            q.emit_partials().map_err(|why| Error::Config(format!("{}: {why}", q.spec.file.display())))?;
        }
        self.partial = self.queries.iter().any(|q| q.partials.is_some());
        Ok(())
    }

    /// Whether the pipelines run as one shard of several (known while a job has them too).
    pub fn partial(&self) -> bool {
        self.partial
    }

    /// This shard's windows as the merger sees them (cheap: the batches are shared).
    pub fn shard_windows(&mut self) -> Result<ShardWindows> {
        self.settle()?;
        let mut out = ShardWindows::default();
        for q in &self.queries {
            if let (Some(bound), Some(states)) = (q.window_bound(), &q.partials) {
                let mut states = states.clone();
                states.long_open = q.long_open().map_err(|e| query_error(&q.spec, e))?;
                out.bounds.insert(q.spec.name.clone(), bound);
                out.states.insert(q.spec.name.clone(), states);
            }
        }
        Ok(out)
    }

    /// Each pipeline's bound: as it stands, or while the pipelines are on the window worker
    /// as of the last tick (shards of several settle at each tick; `None` before one).
    pub fn window_bounds(&self) -> Option<BTreeMap<String, WindowBound>> {
        if self.away() {
            return self.tick_bounds.clone();
        }
        Some(bounds_of(&self.queries))
    }

    /// Whether some closed window's state waits for the merger.
    pub fn has_partials(&self) -> bool {
        self.queries.iter().any(|q| q.partials.as_ref().is_some_and(|s| !s.windows.is_empty()))
    }

    /// Restores the closed states of [`encode_states`] (those of pipelines that changed or
    /// no longer exist are dropped).
    pub fn restore_partials(&mut self, bytes: &[u8], bounds: &BTreeMap<String, WindowBound>) -> Result<()> {
        let mut saved = decode_states(bytes)?;
        for q in &mut self.queries {
            let same = bounds.get(&q.spec.name).is_some_and(|b| b.fingerprint == q.fingerprint_hash());
            if let (Some(mine), Some(s), true) = (q.partials.as_mut(), saved.remove(&q.spec.name), same) {
                *mine = s;
            }
        }
        Ok(())
    }

    /// Drops the closed states before `keep` (per pipeline: the merger has merged them).
    pub fn prune_partials(&mut self, keep: &BTreeMap<String, i64>) -> Result<()> {
        self.settle()?;
        for q in &mut self.queries {
            if let (Some(s), Some(&from)) = (q.partials.as_mut(), keep.get(&q.spec.name)) {
                s.windows = s.windows.split_off(&from);
            }
        }
        Ok(())
    }
}

/// Each pipeline's bound (shards of several only).
pub(super) fn bounds_of(queries: &[super::WindowedQuery]) -> BTreeMap<String, WindowBound> {
    queries.iter().filter_map(|q| Some((q.spec.name.clone(), q.window_bound()?))).collect()
}
