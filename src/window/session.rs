//! Session windows: per group key, events less than `gap` apart form one session
//! `[first, last + gap)`. A session closes when the watermark passes `last + gap +
//! allowed_lateness`. An event that falls between two open sessions of its key bridges
//! them: their partial states merge (DataFusion accumulators' `state` → `merge_batch`).
//!
//! Late data: an event that would touch a session already closed, or that would start a
//! session the watermark has already passed, is reported late with that session's bounds.
//! Closed sessions keep only their bounds, and only while a non-late event could still
//! touch them. Memory is keys × open sessions.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::take;
use arrow::datatypes::{Field, Int64Type, Schema, UInt64Type};
use arrow::row::RowConverter;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Accumulator;
use hashbrown::HashMap;

use super::groups::Inputs;
use super::operator::{Closed, Late};
use super::plan::Compiled;

struct Session {
    key: Box<[u8]>,
    start: i64,
    last: i64,
    /// `None` once closed (only the bounds are kept).
    accs: Option<Vec<Box<dyn Accumulator>>>,
}

/// Session windows of one pipeline.
pub struct Sessions {
    gap: i64,
    lateness: i64,
    by_key: HashMap<Box<[u8]>, Vec<u64>>,
    sessions: HashMap<u64, Session>,
    next_id: u64,
    /// Open sessions by close time, lazily: an entry whose session was extended or merged
    /// away is skipped when it comes up (no O(log n) removal per event).
    closing: BinaryHeap<Reverse<(i64, u64)>>,
    open: usize,
    touching: Vec<u64>,
    /// Closed sessions by the time their bounds stop mattering.
    expiring: BTreeSet<(i64, u64)>,
}

impl Sessions {
    pub fn new(gap: i64, lateness: i64) -> Self {
        Sessions {
            gap,
            lateness,
            by_key: HashMap::new(),
            sessions: HashMap::new(),
            next_id: 0,
            closing: BinaryHeap::new(),
            open: 0,
            touching: Vec::new(),
            expiring: BTreeSet::new(),
        }
    }

    fn close_at(&self, last: i64) -> i64 {
        last.saturating_add(self.gap).saturating_add(self.lateness)
    }

    /// Whether a closing entry is current (its session open with that close time).
    fn current(&self, at: i64, id: u64) -> bool {
        self.sessions.get(&id).is_some_and(|s| s.accs.is_some() && self.close_at(s.last) == at)
    }

    /// The watermark at which the next session closes.
    pub fn next_trigger(&mut self) -> i64 {
        while let Some(&Reverse((at, id))) = self.closing.peek() {
            if self.current(at, id) {
                return at;
            }
            self.closing.pop();
        }
        i64::MAX
    }

    pub fn open_windows(&self) -> usize {
        self.open
    }

    pub fn state_bytes(&self) -> usize {
        self.sessions
            .values()
            .map(|s| 64 + s.key.len() + s.accs.as_ref().map_or(0, |a| a.iter().map(|a| a.size()).sum()))
            .sum()
    }

    /// Assigns each row to a session (creating, extending or merging sessions) and updates
    /// the sessions' accumulators. `watermarks[i]` is the watermark once row `i` arrived:
    /// sessions it passes close right there (into `out`), before the next row.
    #[allow(clippy::too_many_arguments)]
    pub fn process(
        &mut self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        batch: &RecordBatch,
        times: &[i64],
        watermarks: &[i64],
        late: &mut Vec<Late>,
        out: &mut Vec<Closed>,
    ) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let inputs = Inputs::evaluate(plan, conv, batch)?;
        let mut assigned: Vec<(u64, u32)> = Vec::with_capacity(n);
        let mut redirect: HashMap<u64, u64> = HashMap::new();
        for i in 0..n {
            let key: &[u8] = inputs.keys.as_ref().map_or(&[], |k| k.row(i).data());
            let t = times[i];
            let ids = self.by_key.get(key).map(Vec::as_slice).unwrap_or(&[]);
            let mut touching = std::mem::take(&mut self.touching);
            touching.clear();
            touching.extend(ids.iter().copied().filter(|id| {
                let s = &self.sessions[id];
                s.start < t.saturating_add(self.gap) && t < s.last.saturating_add(self.gap)
            }));
            if let Some(closed) = touching.iter().map(|id| &self.sessions[id]).find(|s| s.accs.is_none()) {
                let end = closed.last.saturating_add(self.gap);
                late.push(Late { row: i as u32, window_start: closed.start, window_end: end });
                self.touching = touching;
                continue;
            }
            let id = match touching.split_first() {
                None => {
                    if self.close_at(t) <= watermarks[i] {
                        late.push(Late { row: i as u32, window_start: t, window_end: t.saturating_add(self.gap) });
                        self.touching = touching;
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    let accs =
                        plan.aggregates.iter().map(|a| a.expr.create_accumulator()).collect::<Result<Vec<_>>>()?;
                    self.sessions.insert(id, Session { key: key.into(), start: t, last: t, accs: Some(accs) });
                    self.by_key.entry_ref(key).or_default().push(id);
                    self.closing.push(Reverse((self.close_at(t), id)));
                    self.open += 1;
                    id
                }
                Some((&target, others)) => {
                    let (mut start, mut last, was_last) = {
                        let s = &self.sessions[&target];
                        (s.start.min(t), s.last.max(t), s.last)
                    };
                    for &o in others {
                        let Some(other) = self.sessions.remove(&o) else { continue };
                        self.open -= 1;
                        start = start.min(other.start);
                        last = last.max(other.last);
                        if let Some(list) = self.by_key.get_mut(key) {
                            list.retain(|&x| x != o);
                        }
                        redirect.insert(o, target);
                        let (Some(mut from), Some(into)) =
                            (other.accs, self.sessions.get_mut(&target).and_then(|s| s.accs.as_mut()))
                        else {
                            continue;
                        };
                        for (a, b) in into.iter_mut().zip(from.iter_mut()) {
                            merge_into(a.as_mut(), b.as_mut())?;
                        }
                    }
                    if let Some(s) = self.sessions.get_mut(&target) {
                        s.start = start;
                        s.last = last;
                    }
                    if last != was_last {
                        self.closing.push(Reverse((self.close_at(last), target)));
                    }
                    target
                }
            };
            self.touching = touching;
            assigned.push((id, i as u32));
            if watermarks[i] >= self.next_trigger() {
                self.apply(&inputs, std::mem::take(&mut assigned), &redirect)?;
                redirect.clear();
                self.close(plan, conv, watermarks[i], out)?;
            }
        }
        self.apply(&inputs, assigned, &redirect)
    }

    /// Updates the accumulators of the sessions rows were assigned to.
    fn apply(&mut self, inputs: &Inputs, assigned: Vec<(u64, u32)>, redirect: &HashMap<u64, u64>) -> Result<()> {
        // Rows of sessions merged later in the batch follow their session.
        let resolve = |mut id: u64| {
            while let Some(&to) = redirect.get(&id) {
                id = to;
            }
            id
        };
        // Rows ordered by session: each argument array is permuted (and filtered) once for the
        // whole batch, and each session gets zero-copy slices of it.
        let mut rows: Vec<(u64, u32)> = assigned.into_iter().map(|(id, row)| (resolve(id), row)).collect();
        if rows.is_empty() {
            return Ok(());
        }
        rows.sort_unstable();
        let perm = UInt32Array::from_iter_values(rows.iter().map(|&(_, r)| r));
        // Session runs: (id, first position, length).
        let mut runs: Vec<(u64, usize, usize)> = Vec::new();
        for (i, &(id, _)) in rows.iter().enumerate() {
            match runs.last_mut() {
                Some((last, _, len)) if *last == id => *len += 1,
                _ => runs.push((id, i, 1)),
            }
        }
        for (a, (vals, filter)) in inputs.args.iter().enumerate() {
            let mut vals = vals.iter().map(|v| take(v, &perm, None)).collect::<Result<Vec<_>, _>>()?;
            // Accumulators have no filter argument: drop the filtered-out rows, and find each
            // session's run in what is left.
            let mut a_runs = runs.clone();
            if let Some(f) = filter {
                let mask = super::operator::as_mask(take(f, &perm, None)?)?;
                vals = vals.iter().map(|v| arrow::compute::filter(v, &mask)).collect::<Result<Vec<_>, _>>()?;
                let mut at = 0;
                for r in &mut a_runs {
                    let kept = (r.1..r.1 + r.2).filter(|&i| mask.is_valid(i) && mask.value(i)).count();
                    (r.1, r.2) = (at, kept);
                    at += kept;
                }
            }
            for &(id, start, len) in &a_runs {
                if len == 0 {
                    continue;
                }
                let Some(accs) = self.sessions.get_mut(&id).and_then(|s| s.accs.as_mut()) else { continue };
                let slices: Vec<ArrayRef> = vals.iter().map(|v| v.slice(start, len)).collect();
                accs[a].update_batch(&slices)?;
            }
        }
        Ok(())
    }

    /// The current values of every open session (a live view; the sessions are unchanged).
    pub fn peek(&mut self, plan: &Compiled, conv: Option<&RowConverter>) -> Result<Vec<Closed>> {
        let mut out = Vec::new();
        let mut open: Vec<(i64, u64)> =
            self.sessions.iter().filter(|(_, s)| s.accs.is_some()).map(|(&id, s)| (s.start, id)).collect();
        open.sort_unstable();
        let open: Vec<u64> = open.into_iter().map(|(_, id)| id).collect();
        for id in open {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            let Some(accs) = s.accs.as_mut() else { continue };
            // Evaluate a copy (state → fresh accumulator): evaluating may consume state.
            let mut values = Vec::with_capacity(accs.len());
            for (a, agg) in accs.iter_mut().zip(&plan.aggregates) {
                let mut copy = agg.expr.create_accumulator()?;
                merge_into(copy.as_mut(), a.as_mut())?;
                values.push(copy.evaluate()?.to_array()?);
            }
            out.push(session_row(plan, conv, s, self.gap, values)?);
        }
        Ok(out)
    }

    /// Emits every session whose close time the watermark `wm` has reached.
    pub fn close(
        &mut self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        wm: i64,
        out: &mut Vec<Closed>,
    ) -> Result<()> {
        while let Some(&Reverse((at, id))) = self.closing.peek() {
            if at > wm {
                break;
            }
            self.closing.pop();
            if !self.current(at, id) {
                continue;
            }
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            let Some(mut accs) = s.accs.take() else { continue };
            self.open -= 1;
            let values = accs.iter_mut().map(|a| a.evaluate()?.to_array()).collect::<Result<Vec<_>>>()?;
            out.push(session_row(plan, conv, s, self.gap, values)?);
            self.expiring.insert((s.last.saturating_add(2 * self.gap).saturating_add(self.lateness), id));
        }
        while let Some(&(at, id)) = self.expiring.first() {
            if at > wm {
                break;
            }
            self.expiring.pop_first();
            if let Some(s) = self.sessions.remove(&id)
                && let Some(list) = self.by_key.get_mut(&s.key)
            {
                list.retain(|&x| x != id);
                if list.is_empty() {
                    self.by_key.remove(&s.key);
                }
            }
        }
        Ok(())
    }
}

/// Adds `from`'s state to `into` (DataFusion's `state` → `merge_batch`).
fn merge_into(into: &mut dyn Accumulator, from: &mut dyn Accumulator) -> Result<()> {
    let state = from.state()?.iter().map(ScalarValue::to_array).collect::<Result<Vec<ArrayRef>>>()?;
    into.merge_batch(&state)
}

/// One session's output row: its key columns, then the aggregate `values`.
fn session_row(
    plan: &Compiled,
    conv: Option<&RowConverter>,
    s: &Session,
    gap: i64,
    values: Vec<ArrayRef>,
) -> Result<Closed> {
    let mut cols: Vec<ArrayRef> = match conv {
        Some(c) => c.convert_rows(std::iter::once(c.parser().parse(&s.key)))?,
        None => Vec::new(),
    };
    cols.extend(values);
    let rows = RecordBatch::try_new(plan.aggregate_schema.clone(), cols)?;
    Ok(Closed { start: s.start, end: s.last.saturating_add(gap), revision: 0, rows })
}

/// A checkpoint of [`Sessions`]: two batches follow it, the open sessions (`key`, `id`,
/// `start`, `last`, then each accumulator's state columns, `widths` of them per
/// aggregate) and the closed ones still remembered for lateness (`key`, `id`, `start`, `last`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionState {
    next_id: u64,
    widths: Vec<usize>,
}

impl Sessions {
    pub fn save(&mut self) -> Result<(SessionState, Vec<RecordBatch>)> {
        let mut ids: Vec<u64> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        let mut open_rows: Vec<u64> = Vec::new();
        let mut states: Vec<Vec<ScalarValue>> = Vec::new();
        let mut widths = Vec::new();
        for &id in &ids {
            let Some(accs) = self.sessions.get_mut(&id).and_then(|s| s.accs.as_mut()) else { continue };
            let mut row = Vec::new();
            widths.clear();
            for a in accs.iter_mut() {
                let st = a.state()?;
                widths.push(st.len());
                row.extend(st);
            }
            open_rows.push(id);
            states.push(row);
        }
        let bounds = |which: &[u64]| -> Result<Vec<ArrayRef>> {
            let s = which.iter().map(|id| &self.sessions[id]);
            Ok(vec![
                Arc::new(BinaryArray::from_iter_values(s.clone().map(|s| &s.key[..]))) as ArrayRef,
                Arc::new(UInt64Array::from_iter_values(which.iter().copied())),
                Arc::new(Int64Array::from_iter_values(s.clone().map(|s| s.start))),
                Arc::new(Int64Array::from_iter_values(s.map(|s| s.last))),
            ])
        };
        let mut open_cols = bounds(&open_rows)?;
        let width: usize = widths.iter().sum();
        for j in 0..width {
            if !states.is_empty() {
                open_cols.push(ScalarValue::iter_to_array(states.iter().map(|r| r[j].clone()))?);
            }
        }
        let closed_ids: Vec<u64> = ids.into_iter().filter(|id| self.sessions[id].accs.is_none()).collect();
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
            if is_open
                && (b.num_columns() != 4 + state.widths.iter().sum::<usize>()
                    || state.widths.len() != plan.aggregates.len())
            {
                return Err(bad());
            }
            for i in 0..b.num_rows() {
                let (id, key, start, last) = (ids.value(i), keys.value(i), starts.value(i), lasts.value(i));
                let accs = if is_open {
                    let mut accs = Vec::with_capacity(plan.aggregates.len());
                    let mut at = 4;
                    for (agg, &w) in plan.aggregates.iter().zip(&state.widths) {
                        let mut acc = agg.expr.create_accumulator()?;
                        let cols: Vec<ArrayRef> = b.columns()[at..at + w].iter().map(|c| c.slice(i, 1)).collect();
                        acc.merge_batch(&cols)?;
                        at += w;
                        accs.push(acc);
                    }
                    self.closing.push(Reverse((self.close_at(last), id)));
                    self.open += 1;
                    Some(accs)
                } else {
                    self.expiring.insert((last.saturating_add(2 * self.gap).saturating_add(self.lateness), id));
                    None
                };
                self.sessions.insert(id, Session { key: key.into(), start, last, accs });
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
