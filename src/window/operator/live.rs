//! Live views of [`FixedWindows`]: the open windows as they stand, for the aggregates API
//! (tumbling windows read from a [`LivePartial`]), or as partial states, for a live view
//! merged across shards ([`crate::window::live`]).

use arrow::row::RowConverter;
use datafusion::error::Result;

use super::{Closed, FixedWindows};
use crate::window::live::Starts;
use crate::window::live_partial::LivePartial;
use crate::window::plan::Compiled;

impl FixedWindows {
    /// The current values of every window not closed yet that has rows (a live view for
    /// dashboards); the windows' own state and final rows are unchanged. A tumbling window
    /// is read in place from its `live_partial::LivePartial` (made at the first request), so a
    /// dashboard polling often merges nothing per request; a hopping window's open partials are
    /// frozen and its slides' states merged.
    pub fn peek(&mut self, plan: &Compiled, conv: Option<&RowConverter>, starts: &Starts) -> Result<Vec<Closed>> {
        let tumbling = self.slides_per_window() == 1;
        if !tumbling {
            self.freeze(plan, conv, ..)?;
        }
        let mut out = Vec::new();
        let size = self.size;
        let ends: Vec<i64> = self.window_ends(i64::MAX).into_iter().filter(|e| starts.contains(e - size)).collect();
        for e in ends {
            let revision = self.live_revision(e);
            let closed = match tumbling {
                true => self.live_window(plan, conv, e)?,
                false => self.merged(plan, conv, e)?,
            };
            out.extend(closed.map(|c| Closed { revision, ..c }));
        }
        Ok(out)
    }

    /// A tumbling window ending at `e` as it stands, from its [`LivePartial`] (made now
    /// from its frozen states, its open partial frozen first, if it has none yet).
    fn live_window(&mut self, plan: &Compiled, conv: Option<&RowConverter>, e: i64) -> Result<Option<Closed>> {
        let s = e / self.slide - 1;
        if self.bins.get(&s).is_some_and(|b| b.live.is_none()) {
            self.freeze(plan, conv, s..=s)?;
        }
        let Some(bin) = self.bins.get_mut(&s) else { return Ok(None) };
        let live = match &mut bin.live {
            Some(live) => live,
            None => {
                let mut live = LivePartial::new(plan, conv)?;
                for f in &bin.frozen {
                    live.merge(f)?;
                }
                bin.live.insert(live)
            }
        };
        let Some(rows) = live.peek(plan, conv, &plan.aggregate_schema)? else { return Ok(None) };
        Ok(Some(Closed { start: e - self.size, end: e, revision: 0, rows, bounds: None, state: None }))
    }

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
