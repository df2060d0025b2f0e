//! Session windows: per group key, events less than `gap` apart form one session
//! `[first, last + gap)`. A session closes when the watermark passes `last + gap +
//! allowed_lateness`. An event that falls between two open sessions of its key bridges
//! them: their partial states merge.
//!
//! Every open session is one group of a DataFusion `GroupsAccumulator` per aggregate (a
//! *slot*), so a micro-batch costs one `update_batch` per aggregate, whatever the number of
//! sessions it touches. Rows are assigned to sessions one by one in arrival order (the
//! watermark after each row closes sessions right there, so later rows see them closed);
//! closing and bridging only change the bookkeeping, and at the end of the batch one
//! *compaction* (intermediate `state` → `merge_batch` into fresh accumulators) folds merged
//! slots together, evaluates the sessions that closed and drops their slots.
//!
//! Late data: an event that would touch a session already closed, or that would start a
//! session the watermark has already passed, is reported late with that session's bounds.
//! Closed sessions keep only their bounds, and only while a non-late event could still
//! touch them. Memory is keys × open sessions.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::row::RowConverter;
use datafusion::error::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use hashbrown::HashMap;

use super::groups::Inputs;
use super::live::Starts;
use super::operator::{Closed, Late};
use super::plan::Compiled;

mod checkpoint;
pub mod partial;
pub use checkpoint::SessionState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its partial state is in `slot`.
    Open { slot: u32 },
    /// Closed by the watermark; its values are evaluated at the next compaction.
    Closing { slot: u32 },
    /// Emitted; only the bounds are kept (for lateness).
    Closed,
}

struct Session {
    key: Box<[u8]>,
    start: i64,
    last: i64,
    state: State,
    /// Past the time its bounds matter, while still waiting to be emitted.
    expired: bool,
}

/// Session windows of one pipeline.
pub struct Sessions {
    gap: i64,
    lateness: i64,
    by_key: HashMap<Box<[u8]>, Vec<u64>>,
    sessions: HashMap<u64, Session>,
    next_id: u64,
    /// One entry per open session, at or before its close time (lazily: a session extended
    /// since gets its entry moved to its new close time when the entry comes up; one merged
    /// away is dropped then), so extending a session costs nothing here.
    closing: BinaryHeap<Reverse<(i64, u64)>>,
    open: usize,
    touching: Vec<u64>,
    /// Closed sessions by the time their bounds stop mattering.
    expiring: BTreeSet<(i64, u64)>,
    /// One groups accumulator per aggregate; group `g` is slot `g`.
    accs: Vec<Box<dyn GroupsAccumulator>>,
    /// Per slot: the session it was created for (see `merged`).
    slot_owner: Vec<u64>,
    /// Sessions bridged into another since the last compaction → that session.
    merged: HashMap<u64, u64>,
    /// Sessions closed since the last compaction, in close order.
    pending: Vec<u64>,
    /// One shard of several: closed sessions come out as partial states
    /// ([`Sessions::emit_partials`]); each aggregate's number of state columns.
    partials: Option<Vec<usize>>,
}

impl Sessions {
    pub fn new(plan: &Compiled, gap: i64, lateness: i64) -> Result<Self> {
        Ok(Sessions {
            gap,
            lateness,
            by_key: HashMap::new(),
            sessions: HashMap::new(),
            next_id: 0,
            closing: BinaryHeap::new(),
            open: 0,
            touching: Vec::new(),
            expiring: BTreeSet::new(),
            accs: fresh(plan)?,
            slot_owner: Vec::new(),
            merged: HashMap::new(),
            pending: Vec::new(),
            partials: None,
        })
    }

    fn close_at(&self, last: i64) -> i64 {
        last.saturating_add(self.gap).saturating_add(self.lateness)
    }

    /// Whether a closing entry is current (its session open with that close time).
    fn current(&self, at: i64, id: u64) -> bool {
        self.sessions.get(&id).is_some_and(|s| matches!(s.state, State::Open { .. }) && self.close_at(s.last) == at)
    }

    /// The watermark at which the next session closes, or the bounds of a closed one stop
    /// mattering (so what is remembered depends only on the watermark, not on other keys).
    pub fn next_trigger(&mut self) -> i64 {
        let expiry = self.expiring.first().map_or(i64::MAX, |&(at, _)| at);
        while let Some(&Reverse((at, id))) = self.closing.peek() {
            if self.current(at, id) {
                return at.min(expiry);
            }
            self.fix_top(at, id);
        }
        expiry
    }

    /// The top entry `(at, id)` is out of date: move it to the session's close time, or drop
    /// it when the session is no longer open.
    fn fix_top(&mut self, at: i64, id: u64) {
        self.closing.pop();
        if let Some(s) = self.sessions.get(&id).filter(|s| matches!(s.state, State::Open { .. })) {
            let now = self.close_at(s.last);
            if now > at {
                self.closing.push(Reverse((now, id)));
            }
        }
    }

    pub fn open_windows(&self) -> usize {
        self.open
    }

    pub fn state_bytes(&self) -> usize {
        self.sessions.values().map(|s| 64 + s.key.len()).sum::<usize>()
            + self.accs.iter().map(|a| a.size()).sum::<usize>()
            + self.slot_owner.len() * 8
    }

    /// Assigns each row to a session (creating, extending or bridging sessions), then
    /// updates the accumulators once for the batch. `watermarks[i]` is the watermark once
    /// row `i` arrived: sessions it passes close right there, before the next row. Rows
    /// where `member` is false (WHERE) only move the watermark. Sessions that closed are
    /// evaluated into `out` at the end.
    #[allow(clippy::too_many_arguments)]
    pub fn process(
        &mut self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        batch: &RecordBatch,
        (times, watermarks): (&[i64], &[i64]),
        member: Option<&BooleanArray>,
        late: &mut Vec<Late>,
        out: &mut Vec<Closed>,
    ) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let inputs = Inputs::evaluate(plan, conv, batch)?;
        let mut rows: Vec<u32> = Vec::with_capacity(n);
        let mut slots: Vec<usize> = Vec::with_capacity(n);
        for i in 0..n {
            if member.is_none_or(|m| m.is_valid(i) && m.value(i)) {
                let key: &[u8] = inputs.keys.as_ref().map_or(&[], |k| k.row(i).data());
                if let Some(slot) = self.assign(key, i, times[i], watermarks[i], late) {
                    rows.push(i as u32);
                    slots.push(slot);
                }
            }
            if watermarks[i] >= self.next_trigger() {
                self.close_sessions(watermarks[i]);
            }
        }
        self.update(&inputs, &rows, &slots)?;
        self.emit(plan, conv, out)
    }

    /// The slot row `i` (of `key`, at `t`) goes to, or `None` when it is late.
    fn assign(&mut self, key: &[u8], i: usize, t: i64, wm: i64, late: &mut Vec<Late>) -> Option<usize> {
        let ids = self.by_key.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let mut touching = std::mem::take(&mut self.touching);
        touching.clear();
        touching.extend(ids.iter().copied().filter(|id| {
            let s = &self.sessions[id];
            s.start < t.saturating_add(self.gap) && t < s.last.saturating_add(self.gap)
        }));
        let slot = self.assign_touching(key, i, t, wm, &touching, late);
        self.touching = touching;
        slot
    }

    fn assign_touching(
        &mut self,
        key: &[u8],
        i: usize,
        t: i64,
        wm: i64,
        touching: &[u64],
        late: &mut Vec<Late>,
    ) -> Option<usize> {
        let sessions = &self.sessions;
        if let Some(closed) = touching.iter().map(|id| &sessions[id]).find(|s| !matches!(s.state, State::Open { .. })) {
            let end = closed.last.saturating_add(self.gap);
            late.push(Late { row: i as u32, window_start: closed.start, window_end: end });
            return None;
        }
        let Some((&target, others)) = touching.split_first() else {
            if self.close_at(t) <= wm {
                late.push(Late { row: i as u32, window_start: t, window_end: t.saturating_add(self.gap) });
                return None;
            }
            let id = self.next_id;
            self.next_id += 1;
            let slot = self.slot_owner.len();
            self.slot_owner.push(id);
            let state = State::Open { slot: slot as u32 };
            self.sessions.insert(id, Session { key: key.into(), start: t, last: t, state, expired: false });
            self.by_key.entry_ref(key).or_default().push(id);
            self.closing.push(Reverse((self.close_at(t), id)));
            self.open += 1;
            return Some(slot);
        };
        let (mut start, mut last) = {
            let s = &self.sessions[&target];
            (s.start.min(t), s.last.max(t))
        };
        for &o in others {
            // Bridged: `o`'s slot is folded into `target`'s at the next compaction.
            let Some(other) = self.sessions.remove(&o) else { continue };
            self.open -= 1;
            start = start.min(other.start);
            last = last.max(other.last);
            if let Some(list) = self.by_key.get_mut(key) {
                list.retain(|&x| x != o);
            }
            self.merged.insert(o, target);
        }
        let s = self.sessions.get_mut(&target)?;
        s.start = start;
        s.last = last;
        let State::Open { slot } = s.state else { return None };
        Some(slot as usize)
    }

    /// Updates the accumulators: row `rows[k]` of the batch into slot `slots[k]`.
    fn update(&mut self, inputs: &Inputs, rows: &[u32], slots: &[usize]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let total = self.slot_owner.len();
        let idx = (rows.len() != inputs.rows).then(|| UInt32Array::from(rows.to_vec()));
        for (acc, (vals, filter)) in self.accs.iter_mut().zip(&inputs.args) {
            match &idx {
                None => acc.update_batch(vals, slots, filter.as_ref(), total)?,
                Some(idx) => {
                    let vals = vals.iter().map(|v| take(v, idx, None)).collect::<Result<Vec<_>, _>>()?;
                    let filter = match filter {
                        Some(f) => Some(super::operator::as_mask(take(f, idx, None)?)?),
                        None => None,
                    };
                    acc.update_batch(&vals, slots, filter.as_ref(), total)?;
                }
            }
        }
        Ok(())
    }

    /// Closes (in the bookkeeping) every session whose close time `wm` has reached, and
    /// forgets the bounds of closed sessions no event can touch any more.
    fn close_sessions(&mut self, wm: i64) {
        while let Some(&Reverse((at, id))) = self.closing.peek() {
            if at > wm {
                break;
            }
            if !self.current(at, id) {
                self.fix_top(at, id);
                continue;
            }
            self.closing.pop();
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            let State::Open { slot } = s.state else { continue };
            s.state = State::Closing { slot };
            self.open -= 1;
            self.pending.push(id);
            self.expiring.insert((s.last.saturating_add(2 * self.gap).saturating_add(self.lateness), id));
        }
        while let Some(&(at, id)) = self.expiring.first() {
            if at > wm {
                break;
            }
            self.expiring.pop_first();
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            if let Some(list) = self.by_key.get_mut(&s.key) {
                list.retain(|&x| x != id);
                if list.is_empty() {
                    self.by_key.remove(&s.key);
                }
            }
            match s.state {
                State::Closing { .. } => s.expired = true, // removed once emitted
                _ => {
                    self.sessions.remove(&id);
                }
            }
        }
    }

    /// Evaluates the sessions closed since the last compaction into `out`.
    fn emit(&mut self, plan: &Compiled, conv: Option<&RowConverter>, out: &mut Vec<Closed>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let values = self.compact(plan, true)?;
        let pending = std::mem::take(&mut self.pending);
        // One batch for all of them, each row with its own bounds.
        let rows: Vec<(usize, u64)> = pending.into_iter().enumerate().collect();
        match &self.partials {
            Some(widths) => out.extend(self.partial_rows(&rows, &values, widths)?),
            None => out.extend(self.session_rows(plan, conv, &rows, &values)?),
        }
        for (_, id) in rows {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            s.state = State::Closed;
            if s.expired {
                self.sessions.remove(&id);
            }
        }
        Ok(())
    }

    /// The sessions `rows` (value row, session id) as one batch of key + aggregate columns,
    /// with per-row bounds.
    fn session_rows(
        &self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        rows: &[(usize, u64)],
        values: &[ArrayRef],
    ) -> Result<Option<Closed>> {
        let found: Vec<(usize, &Session)> =
            rows.iter().filter_map(|&(k, id)| Some((k, self.sessions.get(&id)?))).collect();
        if found.is_empty() {
            return Ok(None);
        }
        let idx = UInt32Array::from_iter_values(found.iter().map(|&(k, _)| k as u32));
        let mut cols: Vec<ArrayRef> = match conv {
            Some(c) => {
                let parser = c.parser();
                c.convert_rows(found.iter().map(|(_, s)| parser.parse(&s.key)))?
            }
            None => Vec::new(),
        };
        for v in values {
            cols.push(take(v, &idx, None)?);
        }
        let starts: Vec<i64> = found.iter().map(|(_, s)| s.start).collect();
        let ends: Vec<i64> = found.iter().map(|(_, s)| s.last.saturating_add(self.gap)).collect();
        Ok(Some(Closed::sessions(plan, cols, starts, ends)?))
    }

    /// Rebuilds the accumulators with one slot per open session (bridged slots folded into
    /// their session's). With `evaluate`, returns the values of the `pending` sessions (one
    /// row each, in order) and drops their slots; else they keep slots.
    fn compact(&mut self, plan: &Compiled, evaluate: bool) -> Result<Vec<ArrayRef>> {
        let states = self.accs.iter_mut().map(|a| a.state(EmitTo::All)).collect::<Result<Vec<_>>>()?;
        let emit_at: HashMap<u64, usize> = match evaluate {
            true => self.pending.iter().enumerate().map(|(k, &id)| (id, k)).collect(),
            false => HashMap::new(),
        };
        let mut owners: Vec<u64> = Vec::with_capacity(self.open + self.pending.len());
        let mut new_slot: HashMap<u64, usize> = HashMap::with_capacity(self.open + self.pending.len());
        let (mut keep_rows, mut keep_idx, mut emit_rows, mut emit_idx) = (vec![], vec![], vec![], vec![]);
        for (slot, &first) in self.slot_owner.iter().enumerate() {
            let mut id = first;
            while let Some(&to) = self.merged.get(&id) {
                id = to;
            }
            let Some(s) = self.sessions.get(&id) else { continue };
            match (s.state, emit_at.get(&id)) {
                (State::Closing { .. }, Some(&k)) => {
                    emit_rows.push(slot as u32);
                    emit_idx.push(k);
                }
                (State::Open { .. } | State::Closing { .. }, _) => {
                    let g = *new_slot.entry(id).or_insert_with(|| {
                        owners.push(id);
                        owners.len() - 1
                    });
                    keep_rows.push(slot as u32);
                    keep_idx.push(g);
                }
                (State::Closed, _) => {}
            }
        }
        let pick = |rows: Vec<u32>| -> Result<Vec<Vec<ArrayRef>>> {
            let idx = UInt32Array::from(rows);
            states.iter().map(|st| st.iter().map(|c| Ok(take(c, &idx, None)?)).collect()).collect()
        };
        let mut accs = fresh(plan)?;
        if !keep_rows.is_empty() {
            for (acc, st) in accs.iter_mut().zip(pick(keep_rows)?) {
                acc.merge_batch(&st, &keep_idx, owners.len())?;
            }
        }
        let mut values = Vec::new();
        if evaluate {
            let mut closing = fresh(plan)?;
            let states = pick(emit_rows)?;
            for (acc, st) in closing.iter_mut().zip(states) {
                acc.merge_batch(&st, &emit_idx, self.pending.len())?;
                match self.partials.is_some() {
                    // One shard of several: the states, for the merger.
                    true => values.extend(acc.state(EmitTo::All)?),
                    false => values.push(acc.evaluate(EmitTo::All)?),
                }
            }
        }
        for (g, id) in owners.iter().enumerate() {
            if let Some(s) = self.sessions.get_mut(id) {
                s.state = match s.state {
                    State::Open { .. } => State::Open { slot: g as u32 },
                    _ => State::Closing { slot: g as u32 },
                };
            }
        }
        self.accs = accs;
        self.slot_owner = owners;
        self.merged.clear();
        Ok(values)
    }

    /// Every slot's intermediate state (one row per slot, bridged slots folded), leaving
    /// the sessions as they were.
    fn states(&mut self, plan: &Compiled) -> Result<Vec<Vec<ArrayRef>>> {
        self.compact(plan, false)?;
        let states = self.accs.iter_mut().map(|a| a.state(EmitTo::All)).collect::<Result<Vec<_>>>()?;
        let all: Vec<usize> = (0..self.slot_owner.len()).collect();
        let mut accs = fresh(plan)?;
        for (acc, st) in accs.iter_mut().zip(&states) {
            acc.merge_batch(st, &all, all.len())?;
        }
        self.accs = accs;
        Ok(states)
    }

    /// The current values of every open session (a live view; the sessions are unchanged).
    pub fn peek(&mut self, plan: &Compiled, conv: Option<&RowConverter>, starts: &Starts) -> Result<Vec<Closed>> {
        // Evaluate a copy (state → fresh accumulators): evaluating consumes the groups.
        let states = self.states(plan)?;
        let all: Vec<usize> = (0..self.slot_owner.len()).collect();
        let mut values = Vec::new();
        for (v, st) in fresh(plan)?.iter_mut().zip(&states) {
            v.merge_batch(st, &all, all.len())?;
            values.push(v.evaluate(EmitTo::All)?);
        }
        let mut open: Vec<(i64, usize)> = Vec::new();
        for (slot, id) in self.slot_owner.iter().enumerate() {
            if let Some(s) =
                self.sessions.get(id).filter(|s| matches!(s.state, State::Open { .. }) && starts.contains(s.start))
            {
                open.push((s.start, slot));
            }
        }
        open.sort_unstable();
        let rows: Vec<(usize, u64)> = open.into_iter().map(|(_, slot)| (slot, self.slot_owner[slot])).collect();
        Ok(self.session_rows(plan, conv, &rows, &values)?.into_iter().collect())
    }

    /// Emits every session whose close time the watermark `wm` has reached.
    pub fn close(
        &mut self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        wm: i64,
        out: &mut Vec<Closed>,
    ) -> Result<()> {
        self.close_sessions(wm);
        self.emit(plan, conv, out)
    }
}

/// Fresh groups accumulators, one per aggregate.
fn fresh(plan: &Compiled) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
    plan.aggregates.iter().map(|a| a.groups_accumulator()).collect()
}
