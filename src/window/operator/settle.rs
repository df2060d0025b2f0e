//! A slide's frozen states kept few without holding up its pipeline.
//!
//! Each freeze (a checkpoint, a live view of a hopping window) adds a state to its slide, and
//! `groups::settle`'s rule merges the newest ones so that a slide keeps a few, each about half
//! the one before. Now and then that merges most of the slide: for `count(DISTINCT …)`
//! every distinct value again, tens of milliseconds. A merge that large runs on the encoding
//! pool ([`crate::pool`]) from shared references to the states (they never change), while
//! the pipeline goes on: its checkpoint part, its live requests and its batches do not wait.
//! The merge replaces the states it merged at the slide's next freeze after it is done; until
//! then they stay, so every read of the slide (a closing window, a view, a checkpoint) sees the
//! same rows either way. Newer states settle among themselves meanwhile (in place), so the
//! slide keeps at most `MAX_FROZEN` states besides the merge's.

use std::sync::Arc;

use arrow::row::RowConverter;
use datafusion::error::{DataFusionError, Result};

use super::{MAX_FROZEN, Slide};
use crate::window::groups::{Frozen, Partial, settle, to_settle};
use crate::window::plan::Compiled;

/// Merges of fewer bytes (by [`Frozen::weight`]) run in place: handing them to the pool costs
/// about what they do.
const MERGE_IN_PLACE_BYTES: usize = 64 << 10;

/// A merge of `frozen[at..at + n]` on the pool.
pub(super) struct Merging {
    at: usize,
    n: usize,
    task: crate::pool::Task<Result<Frozen>>,
}

impl Slide {
    /// Puts the merge in place of the states it merged, if it is done.
    pub(super) fn install(&mut self) -> Result<()> {
        let Some(m) = &mut self.merging else { return Ok(()) };
        let Some(merged) = m.task.try_take() else { return Ok(()) };
        let range = m.at..m.at + m.n;
        self.merging = None;
        let merged = merged.map_err(|e| DataFusionError::Internal(format!("merging a slide's states: {e}")))??;
        self.frozen.splice(range, [Arc::new(merged)]);
        Ok(())
    }

    /// Keeps the states few after one was added (see the module docs).
    pub(super) fn settle(&mut self, plan: &Compiled, conv: Option<&RowConverter>) -> Result<()> {
        self.install()?;
        if let Some(m) = &self.merging {
            let from = m.at + m.n;
            if self.frozen.len() - from > MAX_FROZEN {
                let mut newer = self.frozen.split_off(from);
                settle(plan, conv, &mut newer, MAX_FROZEN)?;
                self.frozen.extend(newer);
            }
            return Ok(());
        }
        let n = to_settle(&self.frozen, MAX_FROZEN);
        if n == 0 {
            return Ok(());
        }
        let at = self.frozen.len() - n;
        if self.frozen[at..].iter().map(|f| f.weight).sum::<usize>() < MERGE_IN_PLACE_BYTES {
            return settle(plan, conv, &mut self.frozen, MAX_FROZEN);
        }
        let states = self.frozen[at..].to_vec();
        let mut into = Partial::new(plan, conv)?;
        let task = crate::pool::spawn(move || {
            for f in &states {
                into.merge(f)?;
            }
            into.freeze()
        });
        self.merging = Some(Merging { at, n, task });
        Ok(())
    }

    /// Whether a merge is on the pool (tests).
    #[cfg(test)]
    pub(super) fn merging(&self) -> bool {
        self.merging.is_some()
    }
}
