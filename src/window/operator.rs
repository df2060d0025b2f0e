//! Tumbling and hopping windows over event time.
//!
//! Rows are binned by slide (`slide = size` for tumbling). Each slide bin keeps a partial
//! aggregate (`Partial`); a window `[end − size, end)` closes when the watermark passes
//! `end + allowed_lateness`: a tumbling window evaluates its one bin; a hopping window
//! freezes the partial state of each of its slides and merges those states, so each event
//! is aggregated once whatever the overlap. A slide is dropped when the last window that
//! contains it has closed: memory is groups × open slides, not events.
//!
//! Lateness is decided per row against the windows already closed; the caller splits
//! batches wherever the watermark crosses a close boundary, so results do not depend on
//! how the input was batched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::row::RowConverter;
use datafusion::error::{DataFusionError, Result};

use super::groups::{Frozen, Inputs, Partial};
use super::live_partial::LivePartial;
use super::plan::Compiled;

mod checkpoint;
mod live;
mod settle;

pub use checkpoint::FixedState;

/// An input row that missed a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    pub row: u32,
    pub window_start: i64,
    pub window_end: i64,
}

/// A closed window's aggregate rows (keys + aggregates, before HAVING / SELECT).
pub struct Closed {
    pub start: i64,
    pub end: i64,
    /// 0, or the window's n-th correction in `emit = "updates"` mode.
    pub revision: u32,
    pub rows: RecordBatch,
    /// Per row `(start, end)` instead of `start`/`end` (sessions: many windows in one batch).
    pub bounds: Option<(Vec<i64>, Vec<i64>)>,
    /// Set when `rows` is the window's partial state ([`FixedWindows::emit_partials`]): a
    /// `Frozen::to_batch` batch, with each aggregate's number of state columns.
    pub state: Option<Vec<usize>>,
}

impl Closed {
    /// Evaluated sessions: key + aggregate columns `cols`, row `i` the session
    /// `[starts[i], ends[i])`.
    pub fn sessions(plan: &Compiled, cols: Vec<ArrayRef>, starts: Vec<i64>, ends: Vec<i64>) -> Result<Closed> {
        Ok(Closed {
            start: starts.first().copied().unwrap_or(i64::MIN),
            end: ends.first().copied().unwrap_or(i64::MIN),
            revision: 0,
            rows: RecordBatch::try_new(plan.aggregate_schema.clone(), cols)?,
            bounds: Some((starts, ends)),
            state: None,
        })
    }
}

/// `floor(a / b)` for a positive `b`.
pub fn floor_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

/// A boolean array as a filter mask (nulls count as false where it is used).
pub fn as_mask(a: ArrayRef) -> Result<BooleanArray> {
    a.as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| DataFusionError::Plan(format!("a filter is {}, not boolean", a.data_type())))
}

/// Frozen states a slide keeps at most (see `groups::settle`).
const MAX_FROZEN: usize = 8;

#[derive(Default)]
struct Slide {
    open: Option<Partial>,
    frozen: Vec<Arc<Frozen>>,
    /// A merge of some of `frozen` running on the pool (see [`settle`]).
    merging: Option<settle::Merging>,
    /// Tumbling windows that a live view asked for: every row of the window, read in place
    /// by later live views (see [`LivePartial`]); the window's rows come from `open` and
    /// `frozen` as ever.
    live: Option<LivePartial>,
}

/// Tumbling (`slide == size`) or hopping windows.
pub struct FixedWindows {
    size: i64,
    slide: i64,
    lateness: i64,
    bins: BTreeMap<i64, Slide>,
    /// Every window ending at or before this has closed (`i64::MIN`: none yet).
    closed_before: i64,
    scratch: Vec<(i64, Vec<u32>)>,
    /// `emit = "updates"`: windows are written when the watermark passes their end.
    updates: Option<Updates>,
    /// One shard of several: a closed window gives its partial state, not its values.
    partials: bool,
}

/// Revision bookkeeping of `emit = "updates"` for windows written but not closed yet.
#[derive(Default)]
struct Updates {
    /// Every window ending at or before this has been written once (`i64::MIN`: none yet).
    fired_before: i64,
    /// End → the last revision written.
    revisions: BTreeMap<i64, u32>,
    /// Ends of written windows that rows have changed since.
    dirty: BTreeSet<i64>,
}

impl FixedWindows {
    pub fn new(size: i64, slide: i64, lateness: i64) -> Self {
        FixedWindows {
            size,
            slide,
            lateness,
            bins: BTreeMap::new(),
            closed_before: i64::MIN,
            scratch: Vec::new(),
            updates: None,
            partials: false,
        }
    }

    /// One shard of several: closed windows come out as partial states (see [`Closed::state`])
    /// for the merger, which merges every shard's and evaluates.
    pub fn emit_partials(mut self) -> Self {
        self.partials = true;
        self
    }

    /// Every window ending at or before this has closed (`i64::MIN`: none yet).
    pub fn closed_before(&self) -> i64 {
        self.closed_before
    }

    /// `emit = "updates"` with lateness: every window ending at or before this has been
    /// written once (`None`: not in updates mode).
    pub fn fired_before(&self) -> Option<i64> {
        self.updates.as_ref().map(|u| u.fired_before)
    }

    /// The fire boundary the watermark `wm` has reached (updates mode writes at these).
    pub fn boundary(&self, wm: i64) -> i64 {
        floor_div(wm, self.slide).saturating_mul(self.slide)
    }

    /// `emit = "updates"` (with no lateness every window is written once, as in final mode).
    pub fn with_updates(mut self) -> Self {
        if self.lateness > 0 {
            self.updates = Some(Updates { fired_before: i64::MIN, ..Updates::default() });
        }
        self
    }

    fn slides_per_window(&self) -> i64 {
        self.size / self.slide
    }

    /// The watermark at which the next window closes (`i64::MIN` before the first row, so
    /// the caller establishes the initial watermark right after it).
    pub fn next_trigger(&self) -> i64 {
        if self.closed_before == i64::MIN {
            return i64::MIN;
        }
        let close = self.closed_before.saturating_add(self.slide).saturating_add(self.lateness);
        match &self.updates {
            Some(u) => close.min(u.fired_before.saturating_add(self.slide)),
            None => close,
        }
    }

    /// Windows not closed yet that hold rows.
    pub fn open_windows(&self) -> usize {
        self.window_ends(i64::MAX).len()
    }

    #[cfg(test)]
    pub(crate) fn frozen_per_slide(&self) -> Vec<usize> {
        self.bins.values().map(|s| s.frozen.len()).collect()
    }

    #[cfg(test)]
    pub(crate) fn merges_running(&self) -> usize {
        self.bins.values().filter(|s| s.merging()).count()
    }

    pub fn state_bytes(&self) -> usize {
        self.bins
            .values()
            .map(|s| {
                s.open.as_ref().map_or(0, Partial::size)
                    + s.frozen.iter().map(|f| f.size()).sum::<usize>()
                    + s.live.as_ref().map_or(0, LivePartial::size)
            })
            .sum()
    }

    /// Adds the rows of `batch` (already filtered by WHERE) whose windows are open; reports
    /// the rows that missed a window in `late`.
    pub fn process(
        &mut self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        batch: &RecordBatch,
        times: &[i64],
        late: &mut Vec<Late>,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let k = self.slides_per_window();
        let mut groups = std::mem::take(&mut self.scratch);
        groups.clear();
        let mut all_in_first = true;
        for (i, &t) in times.iter().enumerate() {
            let s = floor_div(t, self.slide);
            let first_end = (s + 1) * self.slide;
            if let Some(u) = &mut self.updates
                && first_end <= u.fired_before
            {
                // Within the lateness of windows already written: they get a new revision.
                for j in 1..=k {
                    let end = (s + j) * self.slide;
                    if end > self.closed_before && end <= u.fired_before {
                        u.dirty.insert(end);
                    }
                }
            }
            if first_end <= self.closed_before {
                // Some windows holding this row have closed: those it missed.
                let mut j = 1;
                while j <= k && (s + j) * self.slide <= self.closed_before {
                    let end = (s + j) * self.slide;
                    late.push(Late { row: i as u32, window_start: end - self.size, window_end: end });
                    j += 1;
                }
                if j > k {
                    all_in_first = false;
                    continue;
                }
            }
            match groups.iter_mut().find(|(b, _)| *b == s) {
                Some((_, rows)) => rows.push(i as u32),
                None => {
                    all_in_first &= groups.is_empty();
                    groups.push((s, vec![i as u32]));
                }
            }
        }
        let inputs = Inputs::evaluate(plan, conv, batch)?;
        let single = all_in_first && groups.len() == 1;
        for (s, rows) in &groups {
            let bin = self.bins.entry(*s).or_default();
            let p = match &mut bin.open {
                Some(p) => p,
                None => bin.open.insert(Partial::new(plan, conv)?),
            };
            let which = if single { None } else { Some(rows.as_slice()) };
            p.update(&inputs, which)?;
            if let Some(live) = &mut bin.live {
                live.update(&inputs, which)?;
            }
        }
        self.scratch = groups;
        Ok(())
    }

    /// Closes every window whose end + lateness the watermark `wm` has passed, in order. In
    /// updates mode, also writes the windows whose end `wm` has passed (revision 0) and
    /// re-writes the ones changed since they were written (next revision).
    pub fn close(
        &mut self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        wm: i64,
        out: &mut Vec<Closed>,
    ) -> Result<()> {
        let boundary = floor_div(wm.saturating_sub(self.lateness), self.slide).saturating_mul(self.slide);
        if boundary > self.closed_before {
            self.close_upto(plan, conv, boundary, out)?;
        }
        if self.updates.is_some() {
            self.fire(plan, conv, floor_div(wm, self.slide).saturating_mul(self.slide), out)?;
        }
        Ok(())
    }

    fn close_upto(
        &mut self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        boundary: i64,
        out: &mut Vec<Closed>,
    ) -> Result<()> {
        let k = self.slides_per_window();
        for e in self.window_ends(boundary) {
            let last = e / self.slide - 1;
            let revision = match &mut self.updates {
                None => 0,
                Some(u) => {
                    let changed = u.dirty.remove(&e);
                    match u.revisions.remove(&e) {
                        Some(_) if !changed => continue, // its last revision stands
                        Some(r) => r + 1,
                        None => 0,
                    }
                }
            };
            if self.partials {
                self.freeze(plan, conv, last - k + 1..=last)?;
                out.extend(self.merged_state(plan, conv, e)?);
                continue;
            }
            // A tumbling window evaluates its bin directly (unless a live view froze part of it).
            if k == 1 && self.bins.get(&last).is_none_or(|b| b.frozen.is_empty()) {
                if let Some(bin) = self.bins.remove(&last)
                    && let Some(p) = bin.open
                {
                    let rows = p.evaluate(conv, &plan.aggregate_schema)?;
                    if rows.num_rows() > 0 {
                        out.push(Closed { start: e - self.size, end: e, revision, rows, bounds: None, state: None });
                    }
                }
                continue;
            }
            self.freeze(plan, conv, last - k + 1..=last)?;
            out.extend(self.merged(plan, conv, e)?.map(|c| Closed { revision, ..c }));
        }
        self.closed_before = boundary;
        if let Some(u) = &mut self.updates {
            u.fired_before = u.fired_before.max(boundary);
        }
        // Slides whose last window has closed are done.
        let keep_from = floor_div(boundary, self.slide) - k + 1;
        self.bins = self.bins.split_off(&keep_from);
        Ok(())
    }

    /// Updates mode: writes windows ending up to `boundary` for the first time, then the
    /// written ones that changed since.
    fn fire(
        &mut self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        boundary: i64,
        out: &mut Vec<Closed>,
    ) -> Result<()> {
        let Some(u) = self.updates.as_mut() else { return Ok(()) };
        let mut todo: BTreeMap<i64, u32> =
            std::mem::take(&mut u.dirty).into_iter().map(|e| (e, u.revisions.get(&e).map_or(0, |r| r + 1))).collect();
        if boundary > u.fired_before {
            let from = u.fired_before;
            u.fired_before = boundary;
            for e in self.window_ends(boundary).into_iter().filter(|&e| e > from) {
                todo.insert(e, 0);
            }
        }
        let k = self.slides_per_window();
        for (e, revision) in todo {
            let last = e / self.slide - 1;
            self.freeze(plan, conv, last - k + 1..=last)?;
            // One shard of several: the window's state as of this boundary, for the merger.
            let c = match self.partials {
                true => self.merged_state(plan, conv, e)?,
                false => self.merged(plan, conv, e)?,
            };
            if let Some(c) = c {
                out.push(Closed { revision, ..c });
                if let Some(u) = self.updates.as_mut() {
                    u.revisions.insert(e, revision);
                }
            }
        }
        Ok(())
    }

    /// The revision a live view of the window ending at `e` shows.
    fn live_revision(&self, e: i64) -> u32 {
        self.updates
            .as_ref()
            .and_then(|u| u.revisions.get(&e).map(|r| r + u32::from(u.dirty.contains(&e))))
            .unwrap_or(0)
    }
}

impl FixedWindows {
    /// Ends of the windows not closed yet, up to `upto`, that hold at least one slide.
    fn window_ends(&self, upto: i64) -> BTreeSet<i64> {
        let k = self.slides_per_window();
        let mut ends = BTreeSet::new();
        for &s in self.bins.keys() {
            for j in 1..=k {
                let e = (s + j) * self.slide;
                if e > self.closed_before && e <= upto {
                    ends.insert(e);
                }
            }
        }
        ends
    }

    /// Turns the open partials of the slides in `range` into frozen states (kept few, see
    /// `settle`).
    fn freeze(
        &mut self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        range: impl std::ops::RangeBounds<i64>,
    ) -> Result<()> {
        for (_, bin) in self.bins.range_mut(range) {
            match bin.open.take() {
                Some(p) => {
                    bin.frozen.push(Arc::new(p.freeze()?));
                    bin.settle(plan, conv)?;
                }
                None => bin.install()?,
            }
        }
        Ok(())
    }

    /// The window ending at `e` as one partial from its slides' frozen states (`None` when
    /// it has no rows).
    fn window_partial(&self, plan: &Compiled, conv: Option<&RowConverter>, e: i64) -> Result<Option<Partial>> {
        let last = e / self.slide - 1;
        let mut window = Partial::new(plan, conv)?;
        for (_, bin) in self.bins.range(last - self.slides_per_window() + 1..=last) {
            for f in &bin.frozen {
                window.merge(f)?;
            }
        }
        Ok((window.groups.len() > 0).then_some(window))
    }

    /// The window ending at `e`, evaluated (`None` when it has no rows).
    fn merged(&self, plan: &Compiled, conv: Option<&RowConverter>, e: i64) -> Result<Option<Closed>> {
        let Some(window) = self.window_partial(plan, conv, e)? else { return Ok(None) };
        let rows = window.evaluate(conv, &plan.aggregate_schema)?;
        Ok(Some(Closed { start: e - self.size, end: e, revision: 0, rows, bounds: None, state: None }))
    }

    /// The window ending at `e` as one partial state, for the merger (`None` when it has
    /// no rows).
    fn merged_state(&self, plan: &Compiled, conv: Option<&RowConverter>, e: i64) -> Result<Option<Closed>> {
        let Some(window) = self.window_partial(plan, conv, e)? else { return Ok(None) };
        let mut widths = Vec::new();
        let rows = window.freeze()?.to_batch(conv, &mut widths)?;
        Ok(Some(Closed { start: e - self.size, end: e, revision: 0, rows, bounds: None, state: Some(widths) }))
    }
}

/// Converter for group keys, `None` without GROUP BY.
pub fn key_converter(plan: &Compiled) -> Result<Option<RowConverter>> {
    if plan.group_types.is_empty() {
        return Ok(None);
    }
    let fields = plan.group_types.iter().map(|t| arrow::row::SortField::new(t.clone())).collect();
    Ok(Some(RowConverter::new(fields)?))
}

/// Rows of `a` with a true mask value (nulls drop).
pub fn keep(a: &RecordBatch, mask: &BooleanArray) -> Result<RecordBatch> {
    if mask.true_count() == mask.len() && mask.null_count() == 0 {
        return Ok(a.clone());
    }
    Ok(arrow::compute::filter_record_batch(a, mask)?)
}
