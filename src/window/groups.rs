//! Partial aggregation state for one window bin: a group table (key → dense index, keys in
//! Arrow's row format) and one DataFusion `GroupsAccumulator` per aggregate.
//!
//! A [`Partial`] is updated batch by batch, then either evaluated (a tumbling window closes)
//! or frozen into its intermediate state (hopping slides: the state of each slide is merged
//! into every window that contains it, so overlapping windows share work).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows};
use datafusion::error::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use hashbrown::HashMap;

use super::plan::Compiled;

/// Group keys of one bin. Without GROUP BY every row is group 0.
pub(super) struct Groups {
    map: HashMap<Box<[u8]>, u32>,
    /// Keys in group-index order (`None` without GROUP BY).
    keys: Option<Rows>,
    len: usize,
}

impl Groups {
    pub fn new(conv: Option<&RowConverter>) -> Self {
        Groups { map: HashMap::new(), keys: conv.map(|c| c.empty_rows(16, 256)), len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends the group index of each of `rows` (all rows when `which` is `None`).
    pub fn assign(&mut self, keys: Option<&Rows>, which: Option<&[u32]>, n: usize, out: &mut Vec<usize>) {
        out.clear();
        let (Some(keys), Some(table)) = (keys, self.keys.as_mut()) else {
            self.len = self.len.max(usize::from(n > 0));
            out.resize(n, 0);
            return;
        };
        let mut one = |i: usize| {
            let row = keys.row(i);
            let bytes = row.as_ref();
            match self.map.get(bytes) {
                Some(&g) => g as usize,
                None => {
                    let g = self.len;
                    self.map.insert(bytes.into(), g as u32);
                    table.push(row);
                    self.len += 1;
                    g
                }
            }
        };
        match which {
            Some(idx) => out.extend(idx.iter().map(|&i| one(i as usize))),
            None => out.extend((0..n).map(one)),
        }
    }

    /// The key columns, in group-index order.
    pub fn key_columns(&self, conv: Option<&RowConverter>) -> Result<Vec<ArrayRef>> {
        match (conv, &self.keys) {
            (Some(c), Some(rows)) => Ok(c.convert_rows(rows.iter())?),
            _ => Ok(Vec::new()),
        }
    }

    pub fn size(&self) -> usize {
        self.keys.as_ref().map_or(0, |r| r.size() * 2) + self.map.capacity() * 24
    }
}

/// The inputs of one sub-batch, evaluated once and shared by every bin it touches.
pub(super) struct Inputs {
    /// Per aggregate: argument arrays and FILTER mask.
    pub args: Vec<(Vec<ArrayRef>, Option<BooleanArray>)>,
    pub keys: Option<Rows>,
    pub rows: usize,
}

impl Inputs {
    /// Evaluates group keys, aggregate arguments and FILTER clauses over `batch`.
    pub fn evaluate(plan: &Compiled, conv: Option<&RowConverter>, batch: &RecordBatch) -> Result<Inputs> {
        let n = batch.num_rows();
        let mut args = Vec::with_capacity(plan.aggregates.len());
        for a in &plan.aggregates {
            let vals = a.args.iter().map(|e| e.evaluate(batch)?.into_array(n)).collect::<Result<Vec<_>>>()?;
            let filter = match &a.filter {
                Some(f) => Some(super::operator::as_mask(f.evaluate(batch)?.into_array(n)?)?),
                None => None,
            };
            args.push((vals, filter));
        }
        let keys = match conv {
            Some(c) => {
                let cols =
                    plan.group_exprs.iter().map(|e| e.evaluate(batch)?.into_array(n)).collect::<Result<Vec<_>>>()?;
                Some(c.convert_columns(&cols)?)
            }
            None => None,
        };
        Ok(Inputs { args, keys, rows: n })
    }
}

/// Intermediate state of a frozen bin: its keys and each aggregate's state columns.
pub(super) struct Frozen {
    pub keys: Option<Rows>,
    pub groups: usize,
    pub states: Vec<Vec<ArrayRef>>,
    /// Bytes of the keys and states when frozen: what merging it costs, about.
    pub weight: usize,
    /// [`Frozen::to_batch`], made once: a frozen state does not change, and checkpoints save
    /// it again until it is merged.
    batch: std::sync::OnceLock<RecordBatch>,
}

impl Frozen {
    fn new(
        keys: Option<Rows>,
        groups: usize,
        states: Vec<Vec<ArrayRef>>,
        batch: std::sync::OnceLock<RecordBatch>,
    ) -> Self {
        let weight = keys.as_ref().map_or(0, Rows::size)
            + states.iter().flatten().map(|a| a.get_array_memory_size()).sum::<usize>();
        Frozen { keys, groups, states, weight, batch }
    }

    pub fn size(&self) -> usize {
        let states = self.states.iter().flatten().map(|a| a.get_array_memory_size()).sum::<usize>();
        // The saved batch shares the state columns; its `_row` and key columns are its own.
        let n_states = self.states.iter().map(Vec::len).sum::<usize>();
        let saved = self.batch.get().map_or(0, |b| {
            let own = b.num_columns().saturating_sub(n_states);
            b.columns()[..own].iter().map(|c| c.get_array_memory_size()).sum::<usize>()
        });
        self.keys.as_ref().map_or(0, Rows::size) + states + saved
    }
}

/// What a bin's accumulators do with a sub-batch's rows and with a frozen state: DataFusion's
/// accumulators in a [`Partial`], a live view's in a [`super::live_partial::LivePartial`].
pub(super) trait BinAccumulator {
    fn update(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total: usize,
    ) -> Result<()>;
    fn merge(&mut self, state: &[ArrayRef], groups: &[usize], total: usize) -> Result<()>;
}

impl BinAccumulator for Box<dyn GroupsAccumulator> {
    fn update(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total: usize,
    ) -> Result<()> {
        self.update_batch(values, groups, filter, total)
    }

    fn merge(&mut self, state: &[ArrayRef], groups: &[usize], total: usize) -> Result<()> {
        self.merge_batch(state, groups, total)
    }
}

/// One bin's groups and accumulators (one per aggregate).
pub(super) struct Bin<A> {
    pub groups: Groups,
    pub accs: Vec<A>,
    scratch: Vec<usize>,
}

/// A window bin's running partial aggregate.
pub(super) type Partial = Bin<Box<dyn GroupsAccumulator>>;

impl<A: BinAccumulator> Bin<A> {
    pub fn with(accs: Vec<A>, conv: Option<&RowConverter>) -> Bin<A> {
        Bin { groups: Groups::new(conv), accs, scratch: Vec::new() }
    }

    /// Adds the rows `which` of the sub-batch (all when `None`): assigns their groups, then
    /// gives each aggregate its arguments and FILTER mask of those rows.
    pub fn update(&mut self, inputs: &Inputs, which: Option<&[u32]>) -> Result<()> {
        let n = which.map_or(inputs.rows, <[u32]>::len);
        self.groups.assign(inputs.keys.as_ref(), which, n, &mut self.scratch);
        let total = self.groups.len();
        let idx = which.map(|w| UInt32Array::from(w.to_vec()));
        for (acc, (vals, filter)) in self.accs.iter_mut().zip(&inputs.args) {
            match &idx {
                None => acc.update(vals, &self.scratch, filter.as_ref(), total)?,
                Some(idx) => {
                    let vals = vals.iter().map(|v| take(v, idx, None)).collect::<Result<Vec<_>, _>>()?;
                    let filter = match filter {
                        Some(f) => Some(super::operator::as_mask(take(f, idx, None)?)?),
                        None => None,
                    };
                    acc.update(&vals, &self.scratch, filter.as_ref(), total)?;
                }
            }
        }
        Ok(())
    }

    /// Merges a frozen bin's state into this one.
    pub fn merge(&mut self, f: &Frozen) -> Result<()> {
        self.groups.assign(f.keys.as_ref(), None, f.groups, &mut self.scratch);
        let total = self.groups.len();
        for (acc, state) in self.accs.iter_mut().zip(&f.states) {
            acc.merge(state, &self.scratch, total)?;
        }
        Ok(())
    }
}

impl Partial {
    pub fn new(plan: &Compiled, conv: Option<&RowConverter>) -> Result<Partial> {
        let accs = plan.aggregates.iter().map(|a| a.groups_accumulator()).collect::<Result<Vec<_>>>()?;
        Ok(Bin::with(accs, conv))
    }

    /// Takes the intermediate state, leaving nothing behind.
    pub fn freeze(mut self) -> Result<Frozen> {
        let states = self.accs.iter_mut().map(|a| a.state(EmitTo::All)).collect::<Result<Vec<_>>>()?;
        Ok(Frozen::new(self.groups.keys.take(), self.groups.len(), states, Default::default()))
    }

    /// Final values: a batch of key columns + aggregate columns.
    pub fn evaluate(mut self, conv: Option<&RowConverter>, schema: &SchemaRef) -> Result<RecordBatch> {
        let mut cols = self.groups.key_columns(conv)?;
        for a in &mut self.accs {
            cols.push(a.evaluate(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    }

    pub fn size(&self) -> usize {
        self.groups.size() + self.accs.iter().map(|a| a.size()).sum::<usize>()
    }
}

impl Frozen {
    /// As one batch for a checkpoint: `_row`, the key columns, then every state column;
    /// `widths` gets each aggregate's number of state columns.
    pub fn to_batch(&self, conv: Option<&RowConverter>, widths: &mut Vec<usize>) -> Result<RecordBatch> {
        widths.clear();
        widths.extend(self.states.iter().map(Vec::len));
        if let Some(b) = self.batch.get() {
            return Ok(b.clone());
        }
        let b = self.make_batch(conv)?;
        Ok(self.batch.get_or_init(|| b).clone())
    }

    fn make_batch(&self, conv: Option<&RowConverter>) -> Result<RecordBatch> {
        let mut fields = vec![arrow::datatypes::Field::new("_row", arrow::datatypes::DataType::UInt32, false)];
        let mut cols: Vec<ArrayRef> = vec![std::sync::Arc::new(UInt32Array::from_iter_values(0..self.groups as u32))];
        if let (Some(c), Some(keys)) = (conv, &self.keys) {
            cols.extend(c.convert_rows(keys.iter())?);
        }
        for s in &self.states {
            cols.extend(s.iter().cloned());
        }
        for (i, c) in cols.iter().enumerate().skip(1) {
            fields.push(arrow::datatypes::Field::new(format!("c{i}"), c.data_type().clone(), true));
        }
        Ok(RecordBatch::try_new(std::sync::Arc::new(arrow::datatypes::Schema::new(fields)), cols)?)
    }

    /// Back from [`Frozen::to_batch`].
    pub fn from_batch(b: &RecordBatch, conv: Option<&RowConverter>, n_keys: usize, widths: &[usize]) -> Result<Frozen> {
        let bad =
            || datafusion::error::DataFusionError::Internal("checkpoint: window state has the wrong shape".into());
        if b.num_columns() != 1 + n_keys + widths.iter().sum::<usize>() || conv.is_some() != (n_keys > 0) {
            return Err(bad());
        }
        let keys = match conv {
            Some(c) => Some(c.convert_columns(&b.columns()[1..1 + n_keys])?),
            None => None,
        };
        let mut at = 1 + n_keys;
        let states = widths
            .iter()
            .map(|&w| {
                at += w;
                b.columns()[at - w..at].to_vec()
            })
            .collect();
        Ok(Frozen::new(keys, b.num_rows(), states, b.clone().into()))
    }
}

/// Keeps a slide's frozen states geometric: the newest ones are merged into one while the
/// newest is not under half the one before (by [`Frozen::weight`]) or while there are more
/// than `max` ([`to_settle`]). Over a slide's life each state is merged about log2(n)
/// times, and a live view or a checkpoint meets only a few states.
pub(super) fn settle(
    plan: &Compiled,
    conv: Option<&RowConverter>,
    frozen: &mut Vec<Arc<Frozen>>,
    max: usize,
) -> Result<()> {
    loop {
        let n = to_settle(frozen, max);
        if n == 0 {
            return Ok(());
        }
        let tail = frozen.split_off(frozen.len() - n);
        frozen.push(Arc::new(Partial::compact(plan, conv, &tail)?));
    }
}

/// How many of the newest states [`settle`] merges into one (0, or at least 2): while the
/// merged weight (taken as the sum, an upper bound) is not under half the next older
/// state's, or while more than `max` states would be left.
pub(super) fn to_settle(frozen: &[Arc<Frozen>], max: usize) -> usize {
    let Some(newest) = frozen.last() else { return 0 };
    let (mut weight, mut k) = (newest.weight, 1);
    while k < frozen.len() {
        let older = frozen[frozen.len() - 1 - k].weight;
        if weight * 2 < older && frozen.len() - k < max {
            break;
        }
        weight += older;
        k += 1;
    }
    if k < 2 { 0 } else { k }
}

impl Partial {
    /// Merges several frozen states of one bin into one.
    pub fn compact(plan: &Compiled, conv: Option<&RowConverter>, frozen: &[Arc<Frozen>]) -> Result<Frozen> {
        let mut p = Partial::new(plan, conv)?;
        for f in frozen {
            p.merge(f)?;
        }
        p.freeze()
    }
}
