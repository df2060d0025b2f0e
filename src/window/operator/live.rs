//! The open windows of one shard as partial states, for a live view merged across shards
//! ([`crate::window::live`]).

use arrow::row::RowConverter;
use datafusion::error::Result;

use super::{Closed, FixedWindows};
use crate::window::plan::Compiled;

impl FixedWindows {
    /// Every window not closed yet that has rows, each as one partial state (see
    /// [`Closed::state`]). Open partials are frozen and merged, as a live view does: later
    /// rows and closing are unaffected.
    pub fn open_states(&mut self, plan: &Compiled, conv: Option<&RowConverter>) -> Result<Vec<Closed>> {
        self.freeze(plan, conv, ..)?;
        let mut out = Vec::new();
        for e in self.window_ends(i64::MAX) {
            out.extend(self.merged_state(plan, conv, e)?);
        }
        Ok(out)
    }
}
