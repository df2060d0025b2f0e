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
use crate::window::spec::{Emit, WindowKind};

impl WindowedQuery {
    /// Keeps closed windows' partial states instead of evaluating them (call before
    /// restoring state). `Err`: this kind of window is not merged across shards.
    pub(in crate::window) fn emit_partials(&mut self) -> std::result::Result<(), String> {
        if self.spec.emit == Emit::Updates {
            return Err("emit = \"updates\" is not merged across shards yet".into());
        }
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
            Op::Fixed(f) => f.closed_before(),
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
            return Ok(());
        }
        let rows = window.evaluate(conv, &self.plan.aggregate_schema)?;
        let closed = Closed { start: end - size, end, revision: 0, rows, bounds: None, state: None };
        self.emit(vec![closed])
    }
}
