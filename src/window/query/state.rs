//! A pipeline's window state in and out of a checkpoint: the operator's state, the
//! watermark's clocks, and a fingerprint of what the state depends on.

use std::time::Instant;

use arrow::array::RecordBatch;
use datafusion::error::Result;

use super::{Op, WindowedQuery};
use crate::window::merge::ClosedStates;

/// A checkpoint of one pipeline's window state (its batches travel beside it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueryState {
    pub name: String,
    /// What the state depends on: a pipeline whose window, fields, emit mode or SQL changed
    /// starts from empty windows.
    pub fingerprint: String,
    /// Highest event time seen (any stream).
    max_time: i64,
    /// The watermark.
    floor: i64,
    /// Per stream read: its highest event time (absent in checkpoints of earlier versions).
    #[serde(default)]
    streams: Vec<(String, i64)>,
    op: OpState,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum OpState {
    Fixed(crate::window::operator::FixedState),
    Session(crate::window::session::SessionState),
}

impl WindowedQuery {
    /// See [`QueryState::fingerprint`].
    pub fn fingerprint(&self) -> String {
        let s = &self.spec;
        format!("{} | lateness {} | {:?} | {:?} | {}", s.window, s.allowed_lateness_us, s.emit, s.fields, s.sql.trim())
    }

    /// The window state as of now (call after the last batch was processed).
    pub fn save(&mut self) -> Result<(QueryState, Vec<RecordBatch>)> {
        let (op, batches) = match &mut self.op {
            Op::Fixed(f) => {
                let (s, b) = f.save(&self.plan, self.conv.as_ref())?;
                (OpState::Fixed(s), b)
            }
            Op::Session(s) => {
                let (st, b) = s.save(&self.plan)?;
                (OpState::Session(st), b)
            }
        };
        let state = QueryState {
            name: self.spec.name.clone(),
            fingerprint: self.fingerprint(),
            max_time: self.clock.max_time(),
            floor: self.clock.get().unwrap_or(i64::MIN),
            streams: self.clock.save(),
            op,
        };
        Ok((state, batches))
    }

    /// Restores a saved state into this fresh query.
    pub fn restore(&mut self, state: &QueryState, batches: &[RecordBatch]) -> Result<()> {
        let n_keys = self.plan.group_types.len();
        match (&mut self.op, &state.op) {
            (Op::Fixed(f), OpState::Fixed(s)) => f.restore(s, batches, self.conv.as_ref(), n_keys)?,
            (Op::Session(x), OpState::Session(s)) => x.restore(&self.plan, s, batches)?,
            _ => return Err(datafusion::error::DataFusionError::Internal("checkpoint: window kind differs".into())),
        }
        // Earlier versions kept one clock and a floor under it.
        let wm = match state.streams.is_empty() {
            true => state.floor.max(state.max_time.saturating_sub(self.spec.watermark_us)),
            false => state.floor,
        };
        self.clock.restore(&state.streams, wm, Instant::now());
        // The idle timeout counts from the restart.
        self.last_arrival = (state.max_time != i64::MIN).then(Instant::now);
        Ok(())
    }
}

impl WindowedQuery {
    /// Another shard's part of a live view across shards (see
    /// [`WindowedQuery::live_states`]), from its checkpointed state of this pipeline and the
    /// closed states it keeps; `None` unless in partial mode and of this very definition.
    pub(in crate::window) fn saved_live_states(
        &self,
        saved: &QueryState,
        batches: &[RecordBatch],
        closed: Option<ClosedStates>,
    ) -> Result<Option<ClosedStates>> {
        if self.partials.is_none() || self.shard_updates() || saved.fingerprint != self.fingerprint() {
            return Ok(None);
        }
        let conv = self.conv.as_ref();
        let open = match (super::make_op(&self.spec, &self.plan, true)?, &saved.op) {
            (Op::Fixed(mut f), OpState::Fixed(s)) => {
                f.restore(s, batches, conv, self.plan.group_types.len())?;
                f.open_states(&self.plan, conv)?
            }
            (Op::Session(mut x), OpState::Session(s)) => {
                x.restore(&self.plan, s, batches)?;
                x.open_parts(&self.plan)?.into_iter().collect()
            }
            _ => return Ok(None),
        };
        let mut out = ClosedStates { long_open: None, ..closed.unwrap_or_default() };
        super::merge::add_open(&mut out, open)?;
        Ok(Some(out))
    }
}
