//! Checkpoints of session windows: the open sessions (bounds and each aggregate's
//! intermediate state, one row per slot) and the closed ones still remembered for lateness.

use std::cmp::Reverse;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{Field, Int64Type, Schema, UInt64Type};
use datafusion::error::{DataFusionError, Result};

use super::{Session, Sessions, State};
use crate::window::plan::Compiled;

/// A checkpoint of [`Sessions`]: two batches follow it, the open sessions (`key`, `id`,
/// `start`, `last`, then each accumulator's state columns, `widths` of them per
/// aggregate) and the closed ones still remembered for lateness (`key`, `id`, `start`, `last`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionState {
    next_id: u64,
    widths: Vec<usize>,
}

impl Sessions {
    pub fn save(&mut self, plan: &Compiled) -> Result<(SessionState, Vec<RecordBatch>)> {
        let states = self.states(plan)?;
        let widths: Vec<usize> = states.iter().map(Vec::len).collect();
        // Open sessions (closing ones too: restored, the watermark closes them again), in
        // slot order, which is the state columns' row order.
        let open_ids: Vec<u64> = self.slot_owner.clone();
        let bounds = |which: &[u64]| -> Result<Vec<ArrayRef>> {
            let s = which.iter().map(|id| &self.sessions[id]);
            Ok(vec![
                Arc::new(BinaryArray::from_iter_values(s.clone().map(|s| &s.key[..]))) as ArrayRef,
                Arc::new(UInt64Array::from_iter_values(which.iter().copied())),
                Arc::new(Int64Array::from_iter_values(s.clone().map(|s| s.start))),
                Arc::new(Int64Array::from_iter_values(s.map(|s| s.last))),
            ])
        };
        let mut open_cols = bounds(&open_ids)?;
        if !open_ids.is_empty() {
            open_cols.extend(states.into_iter().flatten());
        }
        let mut closed_ids: Vec<u64> =
            self.sessions.iter().filter(|(_, s)| s.state == State::Closed).map(|(&id, _)| id).collect();
        closed_ids.sort_unstable();
        let batches = vec![as_batch(open_cols)?, as_batch(bounds(&closed_ids)?)?];
        Ok((SessionState { next_id: self.next_id, widths }, batches))
    }

    /// Restores a [`Sessions::save`] into this (fresh) operator.
    pub fn restore(&mut self, plan: &Compiled, state: &SessionState, batches: &[RecordBatch]) -> Result<()> {
        let bad = || DataFusionError::Internal("checkpoint: session state has the wrong shape".into());
        let [open, closed] = batches else { return Err(bad()) };
        self.next_id = state.next_id;
        for (b, is_open) in [(open, true), (closed, false)] {
            if b.num_rows() == 0 {
                continue;
            }
            let keys = b.column(0).as_binary_opt::<i32>().ok_or_else(bad)?;
            let ids = b.column(1).as_primitive_opt::<UInt64Type>().ok_or_else(bad)?;
            let starts = b.column(2).as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
            let lasts = b.column(3).as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
            if is_open {
                if b.num_columns() != 4 + state.widths.iter().sum::<usize>()
                    || state.widths.len() != plan.aggregates.len()
                {
                    return Err(bad());
                }
                let all: Vec<usize> = (0..b.num_rows()).collect();
                let mut at = 4;
                for (acc, &w) in self.accs.iter_mut().zip(&state.widths) {
                    acc.merge_batch(&b.columns()[at..at + w], &all, all.len())?;
                    at += w;
                }
            }
            for i in 0..b.num_rows() {
                let (id, key, start, last) = (ids.value(i), keys.value(i), starts.value(i), lasts.value(i));
                let state = if is_open {
                    self.closing.push(Reverse((self.close_at(last), id)));
                    self.open += 1;
                    self.slot_owner.push(id);
                    State::Open { slot: i as u32 }
                } else {
                    self.expiring.insert((last.saturating_add(2 * self.gap).saturating_add(self.lateness), id));
                    State::Closed
                };
                self.sessions.insert(id, Session { key: key.into(), start, last, state, expired: false });
                self.by_key.entry_ref(key).or_default().push(id);
            }
        }
        Ok(())
    }
}

fn as_batch(cols: Vec<ArrayRef>) -> Result<RecordBatch> {
    let fields: Vec<Field> =
        cols.iter().enumerate().map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true)).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}
