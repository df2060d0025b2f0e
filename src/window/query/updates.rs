//! `emit = "updates"` as one shard of several ([`crate::window::merge`]): the window states
//! a shard writes when its watermark reaches a slide boundary (each window's first write,
//! and every correction since) are kept under that boundary, for the merger to take every
//! shard's writes boundary by boundary. A kept batch holds, per row, the window's end and a
//! write sequence number before the state columns, so the latest write of a window at a
//! boundary is known.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, UInt64Type};
use datafusion::error::{DataFusionError, Result};

use super::{Op, WindowedQuery};
use crate::window::operator::Closed;

/// Columns before a window's state in a kept batch of updates mode: `end`, `seq`.
const LEADING: usize = 2;

impl WindowedQuery {
    /// Updates mode as a shard: whether this pipeline runs so.
    pub(in crate::window) fn shard_updates(&self) -> bool {
        matches!(&self.op, Op::Fixed(f) if f.fired_before().is_some()) && self.partials.is_some()
    }

    /// Updates mode as a shard: the states `closed` written at the watermark `wm` are keyed
    /// by its boundary (see the module docs); other modes are left as they are.
    pub(super) fn key_by_boundary(&self, wm: i64, closed: &mut [Closed]) -> Result<()> {
        let (Op::Fixed(f), Some(kept)) = (&self.op, &self.partials) else { return Ok(()) };
        if f.fired_before().is_none() {
            return Ok(());
        }
        let at = f.boundary(wm);
        let mut seq = kept.windows.get(&at).map_or(0, RecordBatch::num_rows) as u64;
        for c in closed.iter_mut().filter(|c| c.state.is_some()) {
            let n = c.rows.num_rows() as u64;
            c.rows = with_leading(c.end, seq, &c.rows)?;
            c.end = at;
            seq += n;
        }
        Ok(())
    }
}

fn with_leading(end: i64, seq: u64, rows: &RecordBatch) -> Result<RecordBatch> {
    let n = rows.num_rows();
    let mut fields = vec![Field::new("end", DataType::Int64, false), Field::new("seq", DataType::UInt64, false)];
    fields.extend(rows.schema().fields().iter().map(|f| f.as_ref().clone()));
    let mut cols: Vec<ArrayRef> =
        vec![Arc::new(Int64Array::from(vec![end; n])), Arc::new(UInt64Array::from(vec![seq; n]))];
    cols.extend(rows.columns().iter().cloned());
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

fn leading(batch: &RecordBatch) -> Result<(&arrow::array::Int64Array, &arrow::array::UInt64Array)> {
    let bad = || DataFusionError::Internal("window partials: an updates batch has the wrong shape".into());
    if batch.num_columns() < LEADING {
        return Err(bad());
    }
    let ends = batch.column(0).as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
    let seqs = batch.column(1).as_primitive_opt::<UInt64Type>().ok_or_else(bad)?;
    Ok((ends, seqs))
}

/// The windows written in a kept batch of updates mode.
pub fn ends_of(batch: &RecordBatch) -> Result<BTreeSet<i64>> {
    let (ends, _) = leading(batch)?;
    Ok(ends.values().iter().copied().collect())
}

/// Window `end`'s latest write in a kept batch of updates mode: its state rows, without the
/// leading columns (`None`: not written there).
pub fn latest_of(batch: &RecordBatch, end: i64) -> Result<Option<RecordBatch>> {
    let (ends, seqs) = leading(batch)?;
    let Some(last) = (0..batch.num_rows()).filter(|&i| ends.value(i) == end).map(|i| seqs.value(i)).max() else {
        return Ok(None);
    };
    let mask: BooleanArray =
        (0..batch.num_rows()).map(|i| Some(ends.value(i) == end && seqs.value(i) == last)).collect();
    let rows = filter_record_batch(batch, &mask)?;
    let state: Vec<usize> = (LEADING..rows.num_columns()).collect();
    Ok(Some(rows.project(&state)?))
}

impl WindowedQuery {
    /// The merger in updates mode: window `end`'s revision `revision` from every shard's
    /// latest state of it (in shard order), into [`WindowedQuery::ready`].
    pub(in crate::window) fn merge_revision(
        &mut self,
        end: i64,
        revision: u32,
        states: &[(&RecordBatch, &[usize])],
    ) -> Result<()> {
        match self.merged_closed(end, states)? {
            Some(c) => self.emit(vec![Closed { revision, ..c }]),
            None => Ok(()),
        }
    }

    /// Updates mode: the allowed lateness and the slide (a window is final everywhere once
    /// every shard's bound is past `end + lateness + slide`).
    pub(in crate::window) fn lateness_and_slide(&self) -> (i64, i64) {
        let slide = match self.spec.window {
            crate::window::spec::WindowKind::Tumbling { size } => size,
            crate::window::spec::WindowKind::Hopping { slide, .. } => slide,
            crate::window::spec::WindowKind::Session { gap } => gap,
        };
        (self.spec.allowed_lateness_us, slide)
    }
}
