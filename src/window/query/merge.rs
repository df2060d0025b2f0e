//! One pipeline's part in merging windows across shards (see [`crate::window::merge`]): as a
//! shard it keeps closed windows' partial states; as the merger's pipeline it merges the
//! shards' states of a window and evaluates it.

use arrow::array::RecordBatch;
use datafusion::error::{DataFusionError, Result};

use super::{Op, WindowedQuery, make_op};
use crate::checkpoint::WindowBound;
use crate::window::groups::{Frozen, Partial};
use crate::window::merge::ClosedStates;
use crate::window::operator::Closed;
use crate::window::spec::WindowKind;

impl WindowedQuery {
    /// Keeps closed windows' partial states instead of evaluating them (call before
    /// restoring state). `Err`: this kind of window is not merged across shards.
    pub(in crate::window) fn emit_partials(&mut self) -> std::result::Result<(), String> {
        self.op = make_op(&self.spec, &self.plan, true).map_err(|e| e.strip_backtrace())?;
        self.partials = Some(ClosedStates::default());
        Ok(())
    }

    /// A hash of [`WindowedQuery::fingerprint`]: shards merge only states of one definition.
    pub fn fingerprint_hash(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.fingerprint().as_bytes())
    }

    /// How far this shard has closed its windows (`None`: not a shard's pipeline): for
    /// fixed windows every window ending at or before it is closed; for sessions, see
    /// [`crate::window::session::partial`].
    pub fn window_bound(&self) -> Option<WindowBound> {
        self.partials.as_ref()?;
        let closed_before = match &self.op {
            // Updates mode: the writes at a boundary are complete once the watermark is past
            // it (a correction may still come at the boundary it is at), or at the end.
            Op::Fixed(f) => match f.fired_before() {
                Some(b) if b >= crate::window::merge::FLUSHED => b,
                Some(b) => b.saturating_sub(1),
                None => f.closed_before(),
            },
            Op::Session(s) => s.bound(self.clock.get().unwrap_or(i64::MIN)),
        };
        Some(WindowBound { fingerprint: self.fingerprint_hash(), closed_before })
    }

    /// Sessions: the open sessions that could still join a merged one (key, start).
    pub(in crate::window) fn long_open(&self) -> Result<Option<RecordBatch>> {
        match (&self.op, self.window_bound()) {
            (Op::Session(s), Some(b)) => Ok(Some(s.long_open(b.closed_before)?)),
            _ => Ok(None),
        }
    }

    /// Sessions: chains every shard's parts and evaluates the final sessions ending in
    /// `range` into [`WindowedQuery::ready`]; returns how many, and the first part key the
    /// shards keep.
    pub(in crate::window) fn merge_session_parts(
        &mut self,
        parts: &[(&RecordBatch, &[usize])],
        long_open: &[&RecordBatch],
        range: (i64, i64),
    ) -> Result<(u64, i64)> {
        let WindowKind::Session { gap } = self.spec.window else {
            return Err(DataFusionError::Internal("not a session pipeline".into()));
        };
        let m =
            crate::window::session::partial::merge_parts(&self.plan, self.conv.as_ref(), gap, parts, long_open, range)?;
        if let Some(c) = m.closed {
            self.emit(vec![c])?;
        }
        Ok((m.sessions, m.keep))
    }

    pub(in crate::window) fn is_session(&self) -> bool {
        matches!(self.op, Op::Session(_))
    }

    /// The window ending at `end` from every shard's partial state of it (in shard order):
    /// merged, evaluated, through HAVING / SELECT into [`WindowedQuery::ready`].
    pub(in crate::window) fn merge_window(&mut self, end: i64, states: &[(&RecordBatch, &[usize])]) -> Result<()> {
        match self.merged_closed(end, states)? {
            Some(closed) => self.emit(vec![closed]),
            None => Ok(()),
        }
    }

    /// The window ending at `end` from every shard's partial state of it, evaluated
    /// (`None`: no rows anywhere).
    pub(super) fn merged_closed(&self, end: i64, states: &[(&RecordBatch, &[usize])]) -> Result<Option<Closed>> {
        let size = match self.spec.window {
            WindowKind::Tumbling { size } | WindowKind::Hopping { size, .. } => size,
            WindowKind::Session { .. } => {
                return Err(DataFusionError::Internal("session windows are not merged across shards".into()));
            }
        };
        let conv = self.conv.as_ref();
        let n_keys = self.plan.group_types.len();
        let mut window = Partial::new(&self.plan, conv)?;
        for (batch, widths) in states {
            window.merge(&Frozen::from_batch(batch, conv, n_keys, widths)?)?;
        }
        if window.groups.len() == 0 {
            return Ok(None);
        }
        let rows = window.evaluate(conv, &self.plan.aggregate_schema)?;
        Ok(Some(Closed { start: end - size, end, revision: 0, rows, bounds: None, state: None }))
    }

    /// This shard's part of a live view across shards (partial mode; `None` otherwise): its
    /// open windows, each as one partial state (sessions: its open sessions as parts), and
    /// the closed ones it keeps for the merger.
    pub(in crate::window) fn live_states(&mut self) -> Result<Option<ClosedStates>> {
        let Some(kept) = &self.partials else { return Ok(None) };
        if self.shard_updates() {
            // Updates mode: the latest merged revisions show (kept writes are by boundary).
            return Ok(None);
        }
        let mut out = ClosedStates { long_open: None, ..kept.clone() };
        let open = match &mut self.op {
            Op::Fixed(f) => f.open_states(&self.plan, self.conv.as_ref())?,
            Op::Session(s) => s.open_parts(&self.plan)?.into_iter().collect(),
        };
        add_open(&mut out, open)?;
        Ok(Some(out))
    }

    /// The live view across shards: every window ending after `after` (the merger's
    /// progress) that some shard's `states` hold, merged in shard order and through HAVING /
    /// SELECT (the table's schema). Nothing is queued or counted.
    pub(in crate::window) fn live_merged(&self, after: i64, shards: &[&ClosedStates]) -> Result<Vec<RecordBatch>> {
        if let WindowKind::Session { gap } = self.spec.window {
            // Every part, open or closed, chained; each chain shown as it stands.
            let parts: Vec<(&RecordBatch, &[usize])> =
                shards.iter().flat_map(|s| s.windows.values().map(|b| (b, s.widths.as_slice()))).collect();
            let range = (after, i64::MAX);
            let m =
                crate::window::session::partial::merge_parts(&self.plan, self.conv.as_ref(), gap, &parts, &[], range)?;
            return Ok(match m.closed {
                Some(c) => self.table_rows(c)?.into_iter().collect(),
                None => Vec::new(),
            });
        }
        let ends: std::collections::BTreeSet<i64> =
            shards.iter().flat_map(|s| s.windows.range(after.saturating_add(1)..).map(|(e, _)| *e)).collect();
        let mut out = Vec::new();
        for end in ends {
            let states: Vec<(&RecordBatch, &[usize])> =
                shards.iter().filter_map(|s| Some((s.windows.get(&end)?, s.widths.as_slice()))).collect();
            if let Some(closed) = self.merged_closed(end, &states)? {
                out.extend(self.table_rows(closed)?);
            }
        }
        Ok(out)
    }
}

/// Adds open windows' partial states ([`crate::window::operator::FixedWindows::open_states`])
/// to a shard's closed ones.
pub(super) fn add_open(out: &mut ClosedStates, open: Vec<Closed>) -> Result<()> {
    for c in open {
        if let Some(widths) = c.state {
            out.widths = widths;
        }
        out.add(c.end, c.rows)?;
    }
    Ok(())
}
