//! Session windows as one shard of several (see [`crate::window::merge`]). A shard's closed
//! sessions come out as *parts*: key, bounds and each aggregate's state. The merger chains
//! the parts of a key from every shard whose bounds come within the gap into one session,
//! and evaluates a chain once it is final:
//!
//! - a shard's **bound** is `watermark − gap − allowed_lateness`: an event before it would
//!   start a session the watermark has passed, so it is late there, and every part the shard
//!   closes from now on starts at or after it, unless it grows from a session open now;
//! - so the shard also lists its **long open** sessions, those that started before its
//!   bound (key and start);
//! - a chain of key `K` ending at `L` (its last event) is final when `L + gap` is at most
//!   every shard's bound and no shard has a long open session of `K` starting before
//!   `L + gap`: no part to come can join it.
//!
//! Parts are dropped by the shards once no chain that is not final holds them (`keep`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::row::RowConverter;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::EmitTo;
use hashbrown::HashMap;

use super::{Sessions, State, fresh};
use crate::window::operator::Closed;
use crate::window::plan::Compiled;

/// Columns of a part batch before the state columns: key (row format), start, last.
const BOUNDS: usize = 3;

impl Sessions {
    /// Closed sessions come out as parts (see the module docs).
    pub fn emit_partials(&mut self, plan: &Compiled) -> Result<()> {
        let widths = fresh(plan)?.iter_mut().map(|a| Ok(a.state(EmitTo::All)?.len())).collect::<Result<_>>()?;
        self.partials = Some(widths);
        Ok(())
    }

    /// The shard's bound at watermark `wm` (see the module docs).
    pub fn bound(&self, wm: i64) -> i64 {
        wm.saturating_sub(self.gap).saturating_sub(self.lateness)
    }

    /// The open sessions that started before `bound`, as a batch of `key`, `start`.
    pub fn long_open(&self, bound: i64) -> Result<RecordBatch> {
        let long: Vec<_> =
            self.sessions.values().filter(|s| matches!(s.state, State::Open { .. }) && s.start < bound).collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(BinaryArray::from_iter_values(long.iter().map(|s| &s.key[..]))),
            Arc::new(Int64Array::from_iter_values(long.iter().map(|s| s.start))),
        ];
        let schema =
            Schema::new(vec![Field::new("key", DataType::Binary, false), Field::new("start", DataType::Int64, false)]);
        Ok(RecordBatch::try_new(Arc::new(schema), cols)?)
    }

    /// The open sessions as one part batch (a live view across shards: every shard's parts,
    /// open and closed, chained; the sessions are unchanged). `None`: none open.
    pub fn open_parts(&mut self, plan: &Compiled) -> Result<Option<Closed>> {
        let Some(widths) = self.partials.clone() else { return Ok(None) };
        let states: Vec<ArrayRef> = self.states(plan)?.into_iter().flatten().collect();
        let rows: Vec<(usize, u64)> = self
            .slot_owner
            .iter()
            .enumerate()
            .filter(|(_, id)| self.sessions.get(*id).is_some_and(|s| matches!(s.state, State::Open { .. })))
            .map(|(slot, id)| (slot, *id))
            .collect();
        self.partial_rows(&rows, &states, &widths)
    }

    /// The sessions `rows` (state row, session id) as one part batch: `key`, `start`,
    /// `last`, then every aggregate's state columns (`states`, `widths` per aggregate).
    pub(super) fn partial_rows(
        &self,
        rows: &[(usize, u64)],
        states: &[ArrayRef],
        widths: &[usize],
    ) -> Result<Option<Closed>> {
        let found: Vec<(usize, &super::Session)> =
            rows.iter().filter_map(|&(k, id)| Some((k, self.sessions.get(&id)?))).collect();
        if found.is_empty() {
            return Ok(None);
        }
        let idx = UInt32Array::from_iter_values(found.iter().map(|&(k, _)| k as u32));
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(BinaryArray::from_iter_values(found.iter().map(|(_, s)| &s.key[..]))),
            Arc::new(Int64Array::from_iter_values(found.iter().map(|(_, s)| s.start))),
            Arc::new(Int64Array::from_iter_values(found.iter().map(|(_, s)| s.last))),
        ];
        for st in states {
            cols.push(take(st, &idx, None)?);
        }
        let batch = part_batch(cols)?;
        let starts: Vec<i64> = found.iter().map(|(_, s)| s.start).collect();
        let ends: Vec<i64> = found.iter().map(|(_, s)| s.last).collect();
        Ok(Some(Closed {
            start: starts[0],
            // The part's key in the shard's kept states: its latest session's last event.
            end: ends.iter().copied().max().unwrap_or(i64::MIN),
            revision: 0,
            rows: batch,
            bounds: Some((starts, ends)),
            state: Some(widths.to_vec()),
        }))
    }
}

/// A batch of `cols` with generated field names (all nullable).
fn part_batch(cols: Vec<ArrayRef>) -> Result<RecordBatch> {
    let fields: Vec<Field> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Field::new(
                ["key", "start", "last"].get(i).map_or(format!("c{i}"), |n| n.to_string()),
                c.data_type().clone(),
                true,
            )
        })
        .collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// What merging the parts gave.
pub struct Merged {
    /// The final sessions not written before (`None`: none), as key + aggregate columns.
    pub closed: Option<Closed>,
    pub sessions: u64,
    /// Parts with a key below this are in written sessions (the shards may drop them).
    pub keep: i64,
}

/// Chains the parts of every shard (`parts`: batch and widths) into sessions and evaluates
/// those final now (ending within `(from, upto]`, see the module docs); `long_open`: each
/// shard's long open sessions.
pub fn merge_parts(
    plan: &Compiled,
    conv: Option<&RowConverter>,
    gap: i64,
    parts: &[(&RecordBatch, &[usize])],
    long_open: &[&RecordBatch],
    (from, upto): (i64, i64),
) -> Result<Merged> {
    let bad = || DataFusionError::Internal("window partials: a session part has the wrong shape".into());
    // Every row: (key, start, last, part, row).
    let mut rows: Vec<(&[u8], i64, i64, usize, usize)> = Vec::new();
    for (p, (b, widths)) in parts.iter().enumerate() {
        if b.num_columns() != BOUNDS + widths.iter().sum::<usize>() {
            return Err(bad());
        }
        let keys = b.column(0).as_binary_opt::<i32>().ok_or_else(bad)?;
        let starts = b.column(1).as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
        let lasts = b.column(2).as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
        for r in 0..b.num_rows() {
            rows.push((keys.value(r), starts.value(r), lasts.value(r), p, r));
        }
    }
    let mut blocked: HashMap<&[u8], i64> = HashMap::new();
    for b in long_open {
        let (Some(keys), Some(starts)) =
            (b.column(0).as_binary_opt::<i32>(), b.column(1).as_primitive_opt::<Int64Type>())
        else {
            return Err(bad());
        };
        for r in 0..b.num_rows() {
            let s = blocked.entry_ref(keys.value(r)).or_insert(i64::MAX);
            *s = (*s).min(starts.value(r));
        }
    }
    rows.sort_unstable();
    // Chains: (key, start, last, first row, end row) over the sorted rows.
    let mut chains: Vec<(&[u8], i64, i64, usize, usize)> = Vec::new();
    for (i, &(key, start, last, _, _)) in rows.iter().enumerate() {
        match chains.last_mut() {
            Some(c) if c.0 == key && start < c.2.saturating_add(gap) => {
                c.2 = c.2.max(last);
                c.4 = i + 1;
            }
            _ => chains.push((key, start, last, i, i + 1)),
        }
    }
    let mut keep = upto;
    let mut write: Vec<usize> = Vec::new();
    for (n, &(key, _, last, a, b)) in chains.iter().enumerate() {
        let end = last.saturating_add(gap);
        let final_ = end <= upto && blocked.get(key).is_none_or(|&s| s >= end);
        if !final_ {
            keep = keep.min(rows[a..b].iter().map(|r| r.2).min().unwrap_or(i64::MAX));
        } else if end > from {
            write.push(n);
        }
    }
    if write.is_empty() {
        return Ok(Merged { closed: None, sessions: 0, keep });
    }
    // In order of start, then key: one group per session.
    write.sort_by_key(|&n| (chains[n].1, chains[n].0));
    // One merge_batch per aggregate over the rows of every written session (a groups
    // accumulator counts a group as seen when a call without nulls covers it: each call
    // must hold every group).
    let groups = write.len();
    let mut picks: Vec<Vec<u32>> = vec![Vec::new(); parts.len()];
    let mut group: Vec<usize> = Vec::new();
    for (p, pick) in picks.iter_mut().enumerate() {
        for (g, &n) in write.iter().enumerate() {
            for r in rows[chains[n].3..chains[n].4].iter().filter(|r| r.3 == p) {
                pick.push(r.4 as u32);
                group.push(g);
            }
        }
    }
    let picks: Vec<UInt32Array> = picks.into_iter().map(UInt32Array::from).collect();
    let mut accs = fresh(plan)?;
    let mut at = BOUNDS;
    for (a, acc) in accs.iter_mut().enumerate() {
        let width = parts.first().map_or(0, |(_, w)| w.get(a).copied().unwrap_or(0));
        let mut state = Vec::with_capacity(width);
        for c in at..at + width {
            let pieces = parts
                .iter()
                .zip(&picks)
                .filter(|(_, idx)| !idx.is_empty())
                .map(|((b, _), idx)| Ok(take(b.column(c), idx, None)?))
                .collect::<Result<Vec<ArrayRef>>>()?;
            let refs: Vec<&dyn Array> = pieces.iter().map(|p| p.as_ref()).collect();
            state.push(arrow::compute::concat(&refs)?);
        }
        acc.merge_batch(&state, &group, groups)?;
        at += width;
    }
    let mut cols: Vec<ArrayRef> = match conv {
        Some(c) => {
            let parser = c.parser();
            c.convert_rows(write.iter().map(|&n| parser.parse(chains[n].0)))?
        }
        None => Vec::new(),
    };
    for acc in &mut accs {
        cols.push(acc.evaluate(EmitTo::All)?);
    }
    let starts: Vec<i64> = write.iter().map(|&n| chains[n].1).collect();
    let ends: Vec<i64> = write.iter().map(|&n| chains[n].2.saturating_add(gap)).collect();
    let closed = Closed::sessions(plan, cols, starts, ends)?;
    Ok(Merged { closed: Some(closed), sessions: groups as u64, keep })
}
