//! Live windows for readers outside the processor (the aggregates API): what a term that
//! holds the lease publishes, and the request it answers. The processor owns window state,
//! so a reader sends a [`LiveRequest`] over the term's bounded channel and gets the rows
//! that are not in the tables yet.
//!
//! Over several shards ([`crate::window::merge`]) shard 0's holder answers: a window not
//! merged yet is shown as the merge of every shard's state of it, its own as it stands and
//! the others' as of their latest checkpoints ([`Pipelines::saved_live_states`]), so the
//! values lag by up to a checkpoint interval. Sessions: every shard's parts, open and closed,
//! chained, each chain shown as it stands.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, oneshot};

use super::merge::{ClosedStates, decode_states};
use super::{PipelineSpec, Pipelines, query_error};
use crate::checkpoint::WindowBound;
use crate::error::Result;
use crate::sink::lake::Lake;

/// Rows not in the table yet: (open windows, closed windows waiting for a commit).
pub type LiveRows = (Vec<RecordBatch>, Vec<RecordBatch>);

/// Which windows a live request wants: those starting in `[from, to)` (µs; `None`: open).
/// The processor evaluates only those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Starts {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl Starts {
    /// Every window.
    pub const ALL: Starts = Starts { from: None, to: None };

    pub fn contains(&self, start: i64) -> bool {
        self.from.is_none_or(|f| start >= f) && self.to.is_none_or(|t| start < t)
    }
}

/// A request to the processor for a pipeline's live rows (`None`: no such pipeline).
pub struct LiveRequest {
    pub pipeline: String,
    pub starts: Starts,
    pub reply: oneshot::Sender<Result<Option<LiveRows>>>,
}

/// One term's pipelines: where their tables are, their output schemas, and the line to the
/// processor for live rows.
pub struct LiveWindows {
    pub lake: Lake,
    pub tables: Vec<(PipelineSpec, SchemaRef)>,
    pub requests: mpsc::Sender<LiveRequest>,
    /// Commits this term made to the pipeline tables so far: they change only when it grows,
    /// so a reader may keep what it read of them until then.
    pub commits: Arc<std::sync::atomic::AtomicU64>,
}

/// The live windows of whichever term of this process holds the lease (`None`: on standby).
#[derive(Clone, Default)]
pub struct LiveSlot(Arc<RwLock<Option<Arc<LiveWindows>>>>);

impl LiveSlot {
    pub fn set(&self, live: Option<LiveWindows>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = live.map(Arc::new);
    }

    pub fn get(&self) -> Option<Arc<LiveWindows>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Per pipeline, one shard's windows for a live view across shards.
pub type ShardLive = BTreeMap<String, ClosedStates>;

impl Pipelines {
    /// Another shard's windows for a live view, from its checkpoint: its window state
    /// (`windows.bin`), its closed states (`partials.bin`) and bounds. A pipeline whose
    /// definition differs there is left out.
    pub fn saved_live_states(
        &self,
        windows: &[u8],
        partials: Option<&[u8]>,
        bounds: &BTreeMap<String, WindowBound>,
    ) -> Result<ShardLive> {
        let mut closed = match partials {
            Some(b) => decode_states(b)?,
            None => BTreeMap::new(),
        };
        let mut out = BTreeMap::new();
        for (state, batches) in super::checkpoint::parse_state(windows)?.0 {
            let Some(q) = self.queries.iter().find(|q| q.spec.name == state.name) else { continue };
            let same = bounds.get(&q.spec.name).is_some_and(|b| b.fingerprint == q.fingerprint_hash());
            let kept = closed.remove(&q.spec.name).filter(|_| same);
            if let Some(s) = q.saved_live_states(&state, &batches, kept).map_err(|e| query_error(&q.spec, e))? {
                out.insert(q.spec.name.clone(), s);
            }
        }
        Ok(out)
    }

    /// [`Pipelines::live_rows`] of shard 0 of several: the windows after `merged` (the
    /// merger's progress for the pipeline) merged over this shard's own windows as they stand
    /// and `others` (the other shards', as of their checkpoints), with the merged rows
    /// waiting for a commit.
    pub fn live_rows_across(&mut self, name: &str, merged: i64, others: &[&ShardLive]) -> Result<Option<LiveRows>> {
        // Settles and processes what is buffered first.
        let Some((_, pending)) = self.live_rows(name, Starts::ALL)? else { return Ok(None) };
        // The other pipelines may be on a window thread with the events just buffered.
        self.settle()?;
        let Some(q) = self.queries.iter_mut().find(|q| q.spec.name == name) else { return Ok(None) };
        let Some(own) = q.live_states().map_err(|e| query_error(&q.spec, e))? else {
            return Ok(Some((Vec::new(), pending)));
        };
        let mut shards = vec![&own];
        shards.extend(others.iter().filter_map(|o| o.get(name)));
        let rows = q.live_merged(merged, &shards).map_err(|e| query_error(&q.spec, e))?;
        Ok(Some((rows, pending)))
    }
}
