//! A tumbling window's running aggregate for live views: every row of the window so far, read
//! without being consumed.
//!
//! DataFusion's accumulators give their values (`evaluate`) or states (`state`) only by
//! emptying themselves, so without this a live view freezes the window's open partial and
//! merges all its frozen states into fresh accumulators at every request: for
//! `count(DISTINCT customer_id)` that is every distinct value again, per poll. A
//! [`LivePartial`] is made at the first live request for a window (from its frozen states,
//! after its open partial is frozen) and from then on gets every row the window's own partial
//! gets (`operator::FixedWindows::process`); it is dropped with the window. The window's
//! final rows never come from it: they are evaluated from the frozen states and the open
//! partial as before.
//!
//! A live read costs O(groups): `count(DISTINCT x)` keeps each group's distinct values
//! (Arrow's row format) and reads their number; any other aggregate is read by taking its
//! state (O(groups) for count, sum, min, max, avg, approx_distinct…), merging it into a fresh
//! accumulator that takes its place and into another that is evaluated, which is DataFusion's
//! own two-phase aggregation. `count(DISTINCT)` of a float keeps DataFusion's accumulator
//! (the row format tells `-0.0` from `0.0`, DataFusion's distinct does not).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use hashbrown::HashSet;

use super::groups::{Bin, BinAccumulator};
use super::plan::{Aggregate, Compiled};

/// Bytes a distinct value costs beyond its encoding: the box, its table slot.
const VALUE_OVERHEAD: usize = 16 + 8 + 8;

/// Every row of one tumbling window so far; see the module docs.
pub(super) type LivePartial = Bin<Peek>;

/// One aggregate of a [`LivePartial`].
pub(super) enum Peek {
    /// `count(DISTINCT x)`: each group's distinct non-null values in row format.
    Distinct { conv: RowConverter, sets: Vec<HashSet<Box<[u8]>>>, bytes: usize },
    /// Any other aggregate: DataFusion's accumulator, read through its state.
    State(Box<dyn GroupsAccumulator>),
}

impl LivePartial {
    pub fn new(plan: &Compiled, conv: Option<&RowConverter>) -> Result<LivePartial> {
        let accs = plan.aggregates.iter().map(Peek::new).collect::<Result<Vec<_>>>()?;
        Ok(Bin::with(accs, conv))
    }

    /// The window's values as they stand (key columns + aggregate columns), without
    /// consuming anything. `None` when it has no rows.
    pub fn peek(
        &mut self,
        plan: &Compiled,
        conv: Option<&RowConverter>,
        schema: &SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        let n = self.groups.len();
        if n == 0 {
            return Ok(None);
        }
        let mut cols = self.groups.key_columns(conv)?;
        for (acc, agg) in self.accs.iter_mut().zip(&plan.aggregates) {
            cols.push(acc.read(agg, n)?);
        }
        Ok(Some(RecordBatch::try_new(schema.clone(), cols)?))
    }

    pub fn size(&self) -> usize {
        self.groups.size()
            + self
                .accs
                .iter()
                .map(|a| match a {
                    Peek::Distinct { sets, bytes, .. } => {
                        bytes + sets.iter().map(|s| s.capacity() * VALUE_OVERHEAD).sum::<usize>()
                    }
                    Peek::State(acc) => acc.size(),
                })
                .sum::<usize>()
    }
}

impl Peek {
    fn new(agg: &Aggregate) -> Result<Peek> {
        let e = &agg.expr;
        let distinct_count = e.fun().name() == "count" && e.is_distinct() && agg.args.len() == 1;
        if distinct_count {
            // Its state is a list of the values (dictionaries unpacked): their type.
            let state = e.state_fields()?;
            let value_type = match state.first().map(|f| f.data_type()) {
                Some(DataType::List(item)) => Some(item.data_type().clone()),
                _ => None,
            };
            if let Some(t) = value_type.filter(|t| !t.is_floating())
                && RowConverter::supports_fields(&[SortField::new(t.clone())])
            {
                let conv = RowConverter::new(vec![SortField::new(t)])?;
                return Ok(Peek::Distinct { conv, sets: Vec::new(), bytes: 0 });
            }
        }
        Ok(Peek::State(agg.groups_accumulator()?))
    }

    /// Each group's value; the accumulator keeps what it had.
    fn read(&mut self, agg: &Aggregate, n: usize) -> Result<ArrayRef> {
        match self {
            Peek::Distinct { sets, .. } => {
                sets.resize_with(n, HashSet::new);
                Ok(Arc::new(Int64Array::from_iter_values(sets.iter().map(|s| s.len() as i64))))
            }
            Peek::State(acc) => {
                let state = acc.state(EmitTo::All)?;
                let all: Vec<usize> = (0..n).collect();
                let mut kept = agg.groups_accumulator()?;
                kept.merge_batch(&state, &all, n)?;
                *acc = kept;
                let mut read = agg.groups_accumulator()?;
                read.merge_batch(&state, &all, n)?;
                read.evaluate(EmitTo::All)
            }
        }
    }
}

impl BinAccumulator for Peek {
    fn update(
        &mut self,
        vals: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total: usize,
    ) -> Result<()> {
        match self {
            Peek::State(acc) => acc.update_batch(vals, groups, filter, total),
            Peek::Distinct { conv, sets, bytes } => {
                sets.resize_with(total, HashSet::new);
                let values = plain(&vals[0])?;
                let rows = conv.convert_columns(std::slice::from_ref(&values))?;
                for (i, &g) in groups.iter().enumerate() {
                    if values.is_null(i) || filter.is_some_and(|f| !f.is_valid(i) || !f.value(i)) {
                        continue;
                    }
                    add(&mut sets[g], bytes, rows.row(i).as_ref());
                }
                Ok(())
            }
        }
    }

    fn merge(&mut self, state: &[ArrayRef], groups: &[usize], total: usize) -> Result<()> {
        match self {
            Peek::State(acc) => acc.merge_batch(state, groups, total),
            Peek::Distinct { conv, sets, bytes } => {
                sets.resize_with(total, HashSet::new);
                let lists = state
                    .first()
                    .and_then(|s| s.as_list_opt::<i32>())
                    .ok_or_else(|| DataFusionError::Internal("count(DISTINCT) state is not a list".into()))?;
                for (i, &g) in groups.iter().enumerate() {
                    if lists.is_null(i) {
                        continue;
                    }
                    let values = plain(&lists.value(i))?;
                    let rows = conv.convert_columns(std::slice::from_ref(&values))?;
                    for j in (0..values.len()).filter(|&j| values.is_valid(j)) {
                        add(&mut sets[g], bytes, rows.row(j).as_ref());
                    }
                }
                Ok(())
            }
        }
    }
}

/// Adds a distinct value (row format) to a group's set, counting the bytes of a new one.
fn add(set: &mut HashSet<Box<[u8]>>, bytes: &mut usize, row: &[u8]) {
    if !set.contains(row) {
        *bytes += row.len();
        set.insert(row.into());
    }
}

/// A dictionary's values as a plain array (the row format of the value type).
fn plain(a: &ArrayRef) -> Result<ArrayRef> {
    match a.data_type() {
        DataType::Dictionary(_, v) => Ok(arrow::compute::cast(a, v)?),
        _ => Ok(a.clone()),
    }
}
