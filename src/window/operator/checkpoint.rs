//! [`FixedWindows`] in and out of a checkpoint: per slide one frozen state, and the
//! bookkeeping of updates mode.

use arrow::array::RecordBatch;
use arrow::row::RowConverter;
use datafusion::error::{DataFusionError, Result};

use super::{FixedWindows, Frozen};
use crate::window::plan::Compiled;

/// A checkpoint of [`FixedWindows`]: its bookkeeping, and per slide its frozen states
/// (`batches[i]` belongs to `slides[i]`; a slide may repeat).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FixedState {
    closed_before: i64,
    fired_before: Option<i64>,
    revisions: Vec<(i64, u32)>,
    dirty: Vec<i64>,
    slides: Vec<i64>,
    widths: Vec<usize>,
}

impl FixedWindows {
    /// Saves the state (open partials are frozen, as a live view does: later rows and
    /// closing are unaffected). A slide keeps a few frozen states, each about half the one
    /// before (`groups::settle`): a checkpoint merges what arrived since the last one into
    /// small states, rarely into the whole slide, and each state's batch is made once.
    pub fn save(&mut self, plan: &Compiled, conv: Option<&RowConverter>) -> Result<(FixedState, Vec<RecordBatch>)> {
        self.freeze(plan, conv, ..)?;
        let mut widths = Vec::new();
        let (mut slides, mut batches) = (Vec::new(), Vec::new());
        for (&s, bin) in &self.bins {
            for f in &bin.frozen {
                slides.push(s);
                batches.push(f.to_batch(conv, &mut widths)?);
            }
        }
        let u = self.updates.as_ref();
        let state = FixedState {
            closed_before: self.closed_before,
            fired_before: u.map(|u| u.fired_before),
            revisions: u.map(|u| u.revisions.iter().map(|(&e, &r)| (e, r)).collect()).unwrap_or_default(),
            dirty: u.map(|u| u.dirty.iter().copied().collect()).unwrap_or_default(),
            slides,
            widths,
        };
        Ok((state, batches))
    }

    /// Restores a [`FixedWindows::save`] into this (fresh) operator.
    pub fn restore(
        &mut self,
        state: &FixedState,
        batches: &[RecordBatch],
        conv: Option<&RowConverter>,
        n_keys: usize,
    ) -> Result<()> {
        if state.slides.len() != batches.len() {
            return Err(DataFusionError::Internal("checkpoint: window slides and states differ".into()));
        }
        self.closed_before = state.closed_before;
        if let (Some(u), Some(f)) = (self.updates.as_mut(), state.fired_before) {
            u.fired_before = f;
            u.revisions = state.revisions.iter().copied().collect();
            u.dirty = state.dirty.iter().copied().collect();
        }
        self.bins.clear();
        for (&s, b) in state.slides.iter().zip(batches) {
            let frozen = Frozen::from_batch(b, conv, n_keys, &state.widths)?;
            self.bins.entry(s).or_default().frozen.push(std::sync::Arc::new(frozen));
        }
        Ok(())
    }
}
