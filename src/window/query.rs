//! One pipeline at run time: selects its events, tracks its watermark, feeds the window
//! operator in sub-batches split where the watermark crosses a close boundary, and turns
//! closed windows and late rows into output batches.
//!
//! Watermark ([`super::watermark`]) = the lowest of the streams' highest event times −
//! `watermark` (bounded out-of-orderness), a stream quiet for `idle_timeout` not counting;
//! or higher when forced: when every stream is quiet for `idle_timeout` (live runs) it moves
//! on by the processing time elapsed since the last event, and at the end of a bounded
//! input (replay, `--exit-when-idle`) every window closes.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use arrow::row::RowConverter;
use datafusion::error::Result;

use super::live::Starts;
use super::operator::{Closed, FixedWindows, Late, as_mask, keep, key_converter};
use super::plan::Compiled;
use super::session::Sessions;
use super::spec::{Emit, PipelineSpec, WindowKind};
use super::watermark::Watermark;
use crate::events::{Col, index_of};
use crate::metrics::QueryStats;

mod late;
mod merge;
mod state;
pub(in crate::window) mod updates;
pub use late::late_schema;
pub use state::QueryState;

/// Where the base columns the query itself reads are in its `events` batches (resolved
/// once, by name).
struct BaseColumns {
    event_id: usize,
    event_type: usize,
    event_time: usize,
    stream: usize,
    stream_id: usize,
}

impl BaseColumns {
    fn of(schema: &Schema) -> Self {
        BaseColumns {
            event_id: index_of(schema, Col::EventId),
            event_type: index_of(schema, Col::EventType),
            event_time: index_of(schema, Col::EventTime),
            stream: index_of(schema, Col::Stream),
            stream_id: index_of(schema, Col::StreamId),
        }
    }
}

/// Column after `window_end` in `emit = "updates"` tables: 0 for a window's first rows, then
/// one more for each correction.
pub const REVISION_COLUMN: &str = "revision";

enum Op {
    Fixed(FixedWindows),
    Session(Sessions),
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub struct WindowedQuery {
    pub spec: PipelineSpec,
    plan: Compiled,
    cols: BaseColumns,
    conv: Option<RowConverter>,
    op: Op,
    clock: Watermark,
    /// Whether the watermark is bounded by the wall clock (live runs).
    clock_bound: bool,
    last_arrival: Option<Instant>,
    /// window_start, window_end, then the SELECT list.
    pub output: SchemaRef,
    /// Closed window rows not yet written.
    pub ready: Vec<RecordBatch>,
    pub late_ready: Vec<RecordBatch>,
    pub stats: QueryStats,
    late: Vec<Late>,
    /// Set when the query failed at run time (live runs go on without it).
    pub failed: Option<String>,
    /// One shard of several: closed windows' partial states kept for the merger (see
    /// [`super::merge`]); `None`: windows are evaluated here.
    pub(super) partials: Option<super::merge::ClosedStates>,
    /// When this query started (a shard without events goes idle from here).
    started: Instant,
}

impl WindowedQuery {
    pub fn new(spec: PipelineSpec, plan: Compiled) -> Result<Self> {
        let out_of_orderness = spec.watermark_us;
        let conv = key_converter(&plan)?;
        let updates = spec.emit == Emit::Updates;
        let op = make_op(&spec, &plan, false)?;
        let mut fields = vec![Field::new("window_start", ts(), false), Field::new("window_end", ts(), false)];
        if updates {
            fields.push(Field::new(REVISION_COLUMN, DataType::Int32, false));
        }
        fields.extend(plan.output.fields().iter().map(|f| f.as_ref().clone()));
        Ok(WindowedQuery {
            spec,
            cols: BaseColumns::of(&plan.input),
            plan,
            conv,
            op,
            clock: Watermark::new(out_of_orderness),
            clock_bound: false,
            last_arrival: None,
            output: Arc::new(Schema::new(fields)),
            ready: Vec::new(),
            late_ready: Vec::new(),
            stats: QueryStats::default(),
            late: Vec::new(),
            failed: None,
            partials: None,
            started: Instant::now(),
        })
    }

    /// Fails (and frees the window state) when the state outgrew `max_bytes`: a key of
    /// unbounded cardinality, or `count(DISTINCT)` over one, must not take the process's memory.
    pub fn check_state_bound(&mut self, max_bytes: usize) -> Result<()> {
        let bytes = self.state_bytes();
        if bytes <= max_bytes {
            return Ok(());
        }
        self.op = make_op(&self.spec, &self.plan, self.partials.is_some())?;
        Err(datafusion::error::DataFusionError::ResourcesExhausted(format!(
            "the window state grew to {bytes} bytes, over pipeline_max_state_bytes ({max_bytes}): group by a key of \
             bounded cardinality, shorten the window, or raise the bound (its windows were dropped; the archive \
             keeps the events)"
        )))
    }

    /// Live runs: the watermark stays at most `skew_us` ahead of the wall clock (see
    /// [`super::watermark`]).
    pub fn bound_watermark(&mut self, skew_us: i64) {
        self.clock.bound_by_clock(skew_us, chrono::Utc::now().timestamp_micros());
        self.clock_bound = true;
    }

    /// The run's streams: those this pipeline selects hold its watermark until their first
    /// event (see [`super::watermark`]).
    pub fn declare_streams(&mut self, streams: &[String]) {
        let now = Instant::now();
        for s in streams.iter().filter(|s| self.spec.streams.is_empty() || self.spec.streams.contains(s)) {
            self.clock.declare(s, now);
        }
    }

    /// Which columns of its `events` batches the SQL reads.
    pub fn used_base_columns(&self) -> Vec<Col> {
        self.plan.used_base_columns()
    }

    pub fn input_schema(&self) -> SchemaRef {
        self.plan.input.clone()
    }

    /// The current watermark (µs), `None` before the first event.
    pub fn watermark(&self) -> Option<i64> {
        self.clock.get()
    }

    pub fn open_windows(&self) -> usize {
        match &self.op {
            Op::Fixed(f) => f.open_windows(),
            Op::Session(s) => s.open_windows(),
        }
    }

    /// Bytes of window state: open windows, and closed ones kept for the merger.
    pub fn state_bytes(&self) -> usize {
        let kept = self.partials.as_ref().map_or(0, super::merge::ClosedStates::size);
        kept + match &self.op {
            Op::Fixed(f) => f.state_bytes(),
            Op::Session(s) => s.state_bytes(),
        }
    }

    /// Frozen states per slide (tumbling and hopping windows; sessions have none).
    #[cfg(test)]
    pub(crate) fn frozen_per_slide(&self) -> Vec<usize> {
        match &self.op {
            Op::Fixed(f) => f.frozen_per_slide(),
            Op::Session(_) => Vec::new(),
        }
    }

    /// Slides whose states are being merged on the pool (see `operator::settle`).
    #[cfg(test)]
    pub(crate) fn merges_running(&self) -> usize {
        match &self.op {
            Op::Fixed(f) => f.merges_running(),
            Op::Session(_) => 0,
        }
    }

    fn next_trigger(&mut self) -> i64 {
        match &mut self.op {
            Op::Fixed(f) => f.next_trigger(),
            Op::Session(s) => s.next_trigger(),
        }
    }

    /// Feeds a batch of the `events` table (all events of the micro-batch).
    pub fn process(&mut self, batch: &RecordBatch) -> Result<()> {
        self.process_masked(batch, None)
    }

    /// [`WindowedQuery::process`] of the rows of `batch` where `keep` is true (one filter
    /// with the pipeline's own selection instead of two copies).
    pub fn process_masked(&mut self, batch: &RecordBatch, keep_rows: Option<&BooleanArray>) -> Result<()> {
        let sel = self.select(batch, keep_rows)?;
        let n = sel.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.stats.input += n as u64;
        let now = Instant::now();
        if self.clock_bound {
            self.clock.set_clock(chrono::Utc::now().timestamp_micros());
        }
        self.last_arrival = Some(now);
        let streams: &StringArray = sel.column(self.cols.stream).as_string();
        let times = sel.column(self.cols.event_time).as_primitive::<TimestampMicrosecondType>().values().clone();
        let mut member: Option<BooleanArray> = None;
        for f in &self.plan.filters {
            let m = as_mask(f.evaluate(&sel)?.into_array(n)?)?;
            member = Some(match member {
                Some(prev) => arrow::compute::and(&prev, &m)?,
                None => m,
            });
        }
        let mut start = 0;
        // Fixed windows run in sub-batches cut where the watermark closes one; sessions
        // take the whole batch and close row by row themselves.
        let mut trigger = match self.op {
            Op::Fixed(_) => self.next_trigger(),
            Op::Session(_) => i64::MAX,
        };
        // Per row, the watermark after it: sessions decide lateness of a new session row by
        // row, and late rows report the watermark as of their arrival.
        let mut wms = Vec::with_capacity(n);
        for (i, &t) in times.iter().enumerate() {
            let wm = self.clock.observe(streams.value(i), t, now);
            wms.push(wm);
            if wm >= trigger {
                self.run_range(&sel, member.as_ref(), (&times, &wms), start, i + 1)?;
                self.close(wm)?;
                trigger = self.next_trigger();
                start = i + 1;
            }
        }
        self.run_range(&sel, member.as_ref(), (&times, &wms), start, n)
    }

    /// Rows of the pipeline's streams and event types.
    fn select(&self, batch: &RecordBatch, keep_rows: Option<&BooleanArray>) -> Result<RecordBatch> {
        if self.spec.streams.is_empty() && self.spec.event_types.is_empty() {
            return match keep_rows {
                Some(k) => keep(batch, k),
                None => Ok(batch.clone()),
            };
        }
        let types: &StringArray = batch.column(self.cols.event_type).as_string();
        let streams: &StringArray = batch.column(self.cols.stream).as_string();
        let mask: BooleanArray = (0..batch.num_rows())
            .map(|i| Some(keep_rows.is_none_or(|k| k.value(i)) && self.spec.selects(streams.value(i), types.value(i))))
            .collect();
        keep(batch, &mask)
    }

    /// Processes `sel[start..end]`: rows passing WHERE go to the operator.
    fn run_range(
        &mut self,
        sel: &RecordBatch,
        member: Option<&BooleanArray>,
        (times, wms): (&[i64], &[i64]),
        start: usize,
        end: usize,
    ) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let len = end - start;
        let mut part = sel.slice(start, len);
        let mut part_times: Vec<i64> = times[start..end].to_vec();
        let mut wms: Vec<i64> = wms[start..end].to_vec();
        if let Op::Session(s) = &mut self.op {
            // Every row: the ones WHERE filters out still move the watermark row by row.
            let mask = member.map(|m| m.slice(start, len));
            let members = mask.as_ref().map_or(len, |m| m.true_count());
            self.late.clear();
            let mut closed = Vec::new();
            let (plan, conv) = (&self.plan, self.conv.as_ref());
            s.process(plan, conv, &part, (&part_times, &wms), mask.as_ref(), &mut self.late, &mut closed)?;
            self.emit(closed)?;
            self.stats.late += self.late.len() as u64;
            self.stats.counted += (members - self.late.len()) as u64;
            if !self.late.is_empty() {
                let b = self.late_batch(&part, &wms)?;
                self.late_ready.push(b);
            }
            return Ok(());
        }
        if let Some(mask) = member {
            let mask = mask.slice(start, len);
            if mask.true_count() != len {
                part = keep(&part, &mask)?;
                let keep_idx: Vec<usize> = (0..len).filter(|&i| mask.is_valid(i) && mask.value(i)).collect();
                part_times = keep_idx.iter().map(|&i| part_times[i]).collect();
                wms = keep_idx.iter().map(|&i| wms[i]).collect();
            }
        }
        if part.num_rows() == 0 {
            return Ok(());
        }
        self.late.clear();
        if let Op::Fixed(f) = &mut self.op {
            f.process(&self.plan, self.conv.as_ref(), &part, &part_times, &mut self.late)?;
        }
        // A row is counted nowhere when it missed every window it belongs to (one for
        // tumbling and session windows, size / slide for hopping ones).
        let k = match self.spec.window {
            WindowKind::Hopping { size, slide } => (size / slide) as usize,
            _ => 1,
        };
        let mut fully_late = 0u64;
        let mut run = (u32::MAX, 0usize);
        for l in &self.late {
            run = if l.row == run.0 { (l.row, run.1 + 1) } else { (l.row, 1) };
            fully_late += u64::from(run.1 == k);
        }
        self.stats.late += self.late.len() as u64;
        self.stats.counted += part.num_rows() as u64 - fully_late;
        if !self.late.is_empty() {
            let b = self.late_batch(&part, &wms)?;
            self.late_ready.push(b);
        }
        Ok(())
    }

    fn close(&mut self, wm: i64) -> Result<()> {
        let mut closed: Vec<Closed> = Vec::new();
        match &mut self.op {
            Op::Fixed(f) => f.close(&self.plan, self.conv.as_ref(), wm, &mut closed)?,
            Op::Session(s) => s.close(&self.plan, self.conv.as_ref(), wm, &mut closed)?,
        }
        self.key_by_boundary(wm, &mut closed)?;
        self.emit(closed)
    }

    /// Applies HAVING / SELECT to closed windows and queues their rows.
    fn emit(&mut self, closed: Vec<Closed>) -> Result<()> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for c in closed {
            if let (Some(widths), Some(kept)) = (&c.state, self.partials.as_mut()) {
                kept.widths.clone_from(widths);
                kept.add(c.end, c.rows)?;
                continue;
            }
            let latency = |end: i64| (now_ms - end.div_euclid(1000)).max(0) as u64;
            match &c.bounds {
                Some((_, ends)) => ends.iter().for_each(|&e| self.stats.emit_latency.record(latency(e))),
                None if c.revision == 0 => self.stats.emit_latency.record(latency(c.end)),
                None => {}
            }
            let windows = c.bounds.as_ref().map_or(1, |(s, _)| s.len() as u64);
            if let Some(rows) = self.table_rows(c)? {
                self.stats.windows += windows;
                self.stats.rows += rows.num_rows() as u64;
                self.ready.push(rows);
            }
        }
        Ok(())
    }

    /// A window's aggregate rows through HAVING / SELECT, with the window columns in front
    /// (`None` when HAVING left nothing).
    fn table_rows(&self, c: Closed) -> Result<Option<RecordBatch>> {
        let (rows, kept) = self.plan.finish_rows(c.rows)?;
        let n = rows.num_rows();
        if n == 0 {
            return Ok(None);
        }
        let (starts, ends) = match c.bounds {
            Some((s, e)) => match kept {
                Some(k) => (
                    k.values().iter().map(|&i| s[i as usize]).collect(),
                    k.values().iter().map(|&i| e[i as usize]).collect(),
                ),
                None => (s, e),
            },
            None => (vec![c.start; n], vec![c.end; n]),
        };
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(TimestampMicrosecondArray::from(starts).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(ends).with_timezone("UTC")),
        ];
        if self.spec.emit == Emit::Updates {
            // Signed (Delta and Spark have no unsigned integers); revisions stay far below 2^31.
            cols.push(Arc::new(arrow::array::Int32Array::from(vec![c.revision as i32; n])));
        }
        cols.extend(rows.columns().iter().cloned());
        Ok(Some(RecordBatch::try_new(self.output.clone(), cols)?))
    }

    /// Rows of the windows still open that start in `starts`, as they stand (same schema as
    /// the table).
    pub fn peek(&mut self, starts: &Starts) -> Result<Vec<RecordBatch>> {
        let closed = match &mut self.op {
            Op::Fixed(f) => f.peek(&self.plan, self.conv.as_ref(), starts)?,
            Op::Session(s) => s.peek(&self.plan, self.conv.as_ref(), starts)?,
        };
        let mut out = Vec::new();
        for c in closed {
            out.extend(self.table_rows(c)?);
        }
        Ok(out)
    }

    /// Live runs: after `idle_timeout` without input, the watermark follows processing time.
    /// A stream quiet for `idle_timeout` stops holding the watermark back; when all are.
    pub fn on_idle(&mut self, now: Instant) -> Result<()> {
        // A shard that never had an event goes idle too (else it would hold the merger).
        let last = match self.last_arrival {
            Some(last) => last,
            None if self.partials.is_some() && self.clock_bound => self.started,
            None => return Ok(()),
        };
        let before = self.clock.get();
        let wall_us = chrono::Utc::now().timestamp_micros();
        if self.clock_bound {
            self.clock.set_clock(wall_us);
        }
        let all_quiet = self.clock.mark_idle(now, self.spec.idle_timeout);
        if all_quiet && self.clock.max_time() == i64::MIN {
            // No event yet (a shard): the watermark follows the wall clock.
            self.clock.raise(wall_us.saturating_sub(self.spec.watermark_us));
        } else if all_quiet {
            let idle = now.saturating_duration_since(last);
            let since = self.clock.max_time().saturating_sub(self.spec.watermark_us);
            self.clock.raise(since.saturating_add(idle.as_micros().min(i64::MAX as u128) as i64));
        }
        match self.clock.get() {
            Some(wm) if self.clock.get() != before => self.close(wm),
            _ => Ok(()),
        }
    }

    /// Forces the watermark to at least `wm` and closes what it passes.
    pub fn advance(&mut self, wm: i64) -> Result<()> {
        if self.watermark().is_some_and(|cur| wm <= cur) {
            return Ok(());
        }
        self.clock.raise(wm);
        self.close(wm)
    }

    /// End of a bounded input: every window closes.
    pub fn flush(&mut self) -> Result<()> {
        self.clock.finish();
        self.close(i64::MAX)
    }
}

/// The window operator of `spec`, empty (`partials`: one shard of several).
fn make_op(spec: &PipelineSpec, plan: &Compiled, partials: bool) -> Result<Op> {
    let updates = spec.emit == Emit::Updates;
    let fixed = |size, slide| {
        let f = FixedWindows::new(size, slide, spec.allowed_lateness_us);
        let f = if updates { f.with_updates() } else { f };
        Op::Fixed(if partials { f.emit_partials() } else { f })
    };
    Ok(match spec.window {
        WindowKind::Tumbling { size } => fixed(size, size),
        WindowKind::Hopping { size, slide } => fixed(size, slide),
        WindowKind::Session { gap } => {
            let mut s = Sessions::new(plan, gap, spec.allowed_lateness_us)?;
            if partials {
                s.emit_partials(plan)?;
            }
            Op::Session(s)
        }
    })
}
