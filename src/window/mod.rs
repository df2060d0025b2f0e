//! Windowed aggregations: the stage after dedup (source → decode → dedup → **window** → sink).
//!
//! Every pipeline file in `pipelines/` ([`spec`]) is planned once with DataFusion
//! ([`plan`]) and run incrementally over the deduplicated events ([`query`]): per window
//! bin a partial aggregate (`groups`), finalised when the watermark passes the window's
//! end plus the allowed lateness ([`operator`] for tumbling and hopping windows, [`session`]
//! for sessions). All pipelines share one read, one dedup and one set of event columns
//! ([`columns`]). Closed windows and late events are buffered for the next commit
//! ([`crate::sink::table`]).

mod checkpoint;
pub mod columns;
mod extract;
mod groups;
mod live_partial;
pub mod merge;
pub mod operator;
pub mod plan;
pub mod query;
pub mod session;
pub mod spec;
mod tables;
mod thread;
pub mod watermark;
mod worker;

use std::path::Path;

use arrow::datatypes::SchemaRef;

use crate::decode::Event;
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::events::Col;
use crate::sink::archive::CommittedFile;
use crate::sink::lake::{Lake, Placement};
use crate::sink::table::TableBuffer;
use columns::EventColumns;
pub mod live;

pub use crate::metrics::QueryStats;
pub use query::{WindowedQuery, late_schema};

/// Rows per micro-batch handed to the pipelines (fewer, larger DataFusion calls).
pub const BATCH_ROWS: usize = 8192;
pub use spec::{PipelineSpec, SpecProblem};

/// Table holding late events of every pipeline (partitioned by `pipeline=`).
pub const LATE_TABLE: &str = "late_events";

/// Every pipeline of a run, fed from one stream of accepted events.
pub struct Pipelines {
    queries: Vec<WindowedQuery>,
    /// The window worker (started by the first item, [`thread`]); `queries` is with it while
    /// `away`, until [`Pipelines::settle`].
    worker: Option<thread::PipelineWorker>,
    away: bool,
    /// Each pipeline's metrics as of its last tick item (read while `queries` are away).
    tick_metrics: std::sync::Arc<std::sync::Mutex<Vec<crate::metrics::PipelineMetrics>>>,
    /// Rows the worker closed, until the loop collects them.
    outboxes: std::sync::Arc<thread::Outboxes>,
    /// The window bounds (shards of several) as of the last tick.
    tick_bounds: Option<std::collections::BTreeMap<String, crate::checkpoint::WindowBound>>,
    /// Ticks in a row that found the window worker busy.
    ticks_skipped: u32,
    /// Per pipeline, its last live request: a watched pipeline's batches run on the loop
    /// ([`Pipelines::spawn_batches`]).
    watched: Vec<Option<std::time::Instant>>,
    /// One shard of several: closed windows' partial states go to the merger
    /// ([`Pipelines::emit_partials`]).
    partial: bool,
    columns: EventColumns,
    schemas: Vec<SchemaRef>,
    tables: Vec<TableBuffer>,
    late: Vec<TableBuffer>,
    /// The checkpoint blobs that hold the rows `tables` and `late` wait with, in order: each
    /// checkpoint adds the rows that arrived since the last one; a commit of the tables
    /// starts the line anew.
    table_line: Vec<String>,
    /// Live runs: a pipeline whose query fails at run time is marked failed and skipped,
    /// the others go on (else the error stops the caller).
    isolate: bool,
    /// Window state per pipeline beyond which it fails (checked on every tick).
    max_state_bytes: usize,
}

impl std::fmt::Debug for Pipelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.queries.iter().map(|q| &q.spec.name)).finish()
    }
}

/// Parses and plans every pipeline file in `dir`; every problem is reported, each with its
/// file and line.
pub async fn check_dir(dir: &Path) -> Result<Vec<(PipelineSpec, plan::Compiled)>, Vec<SpecProblem>> {
    let (specs, mut problems) = spec::load_dir(dir);
    let mut out = Vec::new();
    for s in specs {
        match plan::compile(&s).await {
            Ok(c) => out.push((s, c)),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

/// [`Pipelines::take_tables`] as a checkpoint blob's parts: (table prefix, Arrow IPC) per
/// table (CPU work, for the encoding pool).
pub fn encode_tables(tables: &[(String, Vec<arrow::array::RecordBatch>)]) -> Result<Vec<(String, Vec<u8>)>> {
    tables.iter().map(|(prefix, rows)| Ok((prefix.clone(), crate::checkpoint::to_ipc(rows)?))).collect()
}

impl Pipelines {
    /// Loads `dir` (no directory: no pipelines).
    pub async fn load(dir: &Path) -> Result<Pipelines> {
        let compiled = check_dir(dir)
            .await
            .map_err(|p| Error::Config(p.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
        Pipelines::new(compiled)
    }

    pub fn new(compiled: Vec<(PipelineSpec, plan::Compiled)>) -> Result<Pipelines> {
        let mut queries = Vec::new();
        for (s, c) in compiled {
            let name = s.clone();
            queries.push(WindowedQuery::new(s, c).map_err(|e| query_error(&name, e))?);
        }
        let specs: Vec<&PipelineSpec> = queries.iter().map(|q| &q.spec).collect();
        let columns = EventColumns::new(&specs).only(&used_base_columns(&queries));
        let schemas = queries.iter().map(WindowedQuery::input_schema).collect();
        let tables =
            queries.iter().map(|q| TableBuffer::new(q.spec.name.clone(), q.output.clone(), 0)).collect::<Vec<_>>();
        let mut late: Vec<TableBuffer> = queries
            .iter()
            .map(|q| TableBuffer::new(format!("{LATE_TABLE}/pipeline={}", q.spec.name), late_schema(), 0))
            .collect();
        let mut tables: Vec<TableBuffer> = tables;
        // A handover point: the live run writes the windows from it on (a backfill the rest).
        for ((q, t), l) in queries.iter().zip(&mut tables).zip(&mut late) {
            if let Some(h) = q.spec.live_from {
                t.keep_windows(h, i64::MAX);
                l.keep_windows(h, i64::MAX);
            }
        }
        let n = queries.len();
        Ok(Pipelines {
            queries,
            worker: None,
            away: false,
            tick_metrics: Default::default(),
            outboxes: std::sync::Arc::new(thread::Outboxes::new(n)),
            tick_bounds: None,
            ticks_skipped: 0,
            watched: vec![None; n],
            partial: false,
            columns,
            schemas,
            tables,
            late,
            isolate: false,
            max_state_bytes: usize::MAX,
            table_line: Vec::new(),
        })
    }

    /// Live runs: a runtime error in one pipeline's SQL (a division by zero, a strict cast)
    /// marks that pipeline failed (logged with the file and the error, exported as a metric
    /// and on `/readyz`) and the archive and the other pipelines go on. A restart, after the
    /// file is fixed, resumes it from its checkpointed windows (a changed query starts empty).
    pub fn isolate_failures(&mut self) {
        self.isolate = true;
    }

    /// Live runs: a pipeline whose window state grows past `bytes` fails (its state freed).
    pub fn bound_state(&mut self, bytes: usize) {
        self.max_state_bytes = bytes;
    }

    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
    }

    /// Each pipeline's spec and output table schema.
    pub fn output_schemas(&self) -> Vec<(PipelineSpec, SchemaRef)> {
        self.queries.iter().map(|q| (q.spec.clone(), q.output.clone())).collect()
    }

    /// The pipelines (empty while a batch is in flight: call after [`Pipelines::settle`] or
    /// anything that settles, e.g. [`Pipelines::on_tick`] or a commit).
    pub fn queries(&self) -> &[WindowedQuery] {
        &self.queries
    }

    /// Declares the run's streams to every pipeline (call after restoring state).
    pub fn declare_streams(&mut self, streams: &[String]) {
        for q in &mut self.queries {
            q.declare_streams(streams);
        }
    }

    /// Base columns of `events` some pipeline's SQL reads (see [`EventColumns::only`]).
    pub fn used_base_columns(&self) -> Vec<Col> {
        used_base_columns(&self.queries)
    }

    /// Buffers one accepted (deduplicated) event.
    pub fn append(&mut self, ev: &Event<'_>, stream: &str, id: EntryId) {
        if !self.schemas.is_empty() {
            self.columns.append(ev, stream, id);
        }
    }

    /// Events buffered by [`Pipelines::append`] and not yet processed.
    pub fn buffered(&self) -> usize {
        self.columns.len()
    }

    /// Runs the buffered events through every pipeline.
    pub fn process(&mut self) -> Result<()> {
        self.settle()?;
        if self.columns.is_empty() {
            return Ok(());
        }
        let batches = self.columns.finish(&self.schemas)?;
        for (q, b) in self.queries.iter_mut().zip(&batches) {
            run_one(q, self.isolate, |q| q.process(b))?;
        }
        self.collect()
    }

    /// Runs batches of the `events` table built elsewhere (one per pipeline, in order),
    /// only their rows where `keep` is true when given.
    pub fn process_batches(
        &mut self,
        batches: &[arrow::array::RecordBatch],
        keep: Option<&arrow::array::BooleanArray>,
    ) -> Result<()> {
        self.settle()?;
        for (q, b) in self.queries.iter_mut().zip(batches) {
            run_one(q, self.isolate, |q| q.process_masked(b, keep))?;
        }
        self.collect()
    }

    /// Live runs: every pipeline's watermark stays at most `skew` ahead of the wall clock.
    pub fn bound_watermarks(&mut self, skew: std::time::Duration) {
        let skew_us = skew.as_micros().min(i64::MAX as u128) as i64;
        for q in &mut self.queries {
            q.bound_watermark(skew_us);
        }
    }

    /// End of a bounded input: closes every window.
    pub fn flush(&mut self) -> Result<()> {
        self.process()?;
        for q in &mut self.queries {
            run_one(q, self.isolate, WindowedQuery::flush)?;
        }
        self.collect()
    }

    fn collect(&mut self) -> Result<()> {
        for ((q, t), l) in self.queries.iter_mut().zip(&mut self.tables).zip(&mut self.late) {
            thread::collect_one(q, t, l)?;
        }
        Ok(())
    }

    /// Rows of closed windows and late events waiting for a commit.
    pub fn pending_rows(&self) -> usize {
        self.tables.iter().chain(&self.late).map(TableBuffer::rows).sum()
    }

    /// Rows of pipeline `name` not yet in its table: open windows starting in `starts` as
    /// they stand (`final` false) and closed windows waiting for the next commit (`final` true).
    pub fn live_rows(
        &mut self,
        name: &str,
        starts: live::Starts,
    ) -> Result<Option<(Vec<arrow::array::RecordBatch>, Vec<arrow::array::RecordBatch>)>> {
        let Some(i) = self.tables.iter().position(|t| t.prefix() == name) else { return Ok(None) };
        self.watched[i] = Some(std::time::Instant::now());
        // The buffered events: the asked pipeline takes them now, the others on the worker
        // once the answer is made (the answer waits for one pipeline, not all).
        let batches = if self.columns.is_empty() { None } else { Some(self.columns.finish(&self.schemas)?) };
        let batch = batches.as_ref().map(|b| &b[i]);
        let isolate = self.isolate;
        // With the pipelines on the worker, this one comes back with its queued items run.
        let answer = self.on_loop(i, |q, table, late| answer_one(q, table, late, isolate, batch, &starts));
        if let Some(b) = batches {
            self.spawn_batches(b, Some(i))?;
        }
        answer
    }

    /// How long the oldest row waiting for a table file has waited.
    pub fn pending_age(&self) -> Option<std::time::Duration> {
        self.tables.iter().chain(&self.late).filter_map(TableBuffer::age).max()
    }

    /// Rows that arrived for table files since the last call (or commit), for a checkpoint:
    /// (table prefix, batches) per table that got any; [`encode_tables`] makes the blob's parts.
    pub fn take_tables(&mut self) -> Vec<(String, Vec<arrow::array::RecordBatch>)> {
        let mut out = Vec::new();
        for t in self.tables.iter_mut().chain(&mut self.late) {
            let new = t.take_unsaved();
            if !new.is_empty() {
                out.push((t.prefix().to_string(), new));
            }
        }
        out
    }

    /// Restores [`encode_tables`]' parts (tables that no longer exist are dropped).
    pub fn restore_tables(&mut self, saved: Vec<(String, Vec<u8>)>) -> Result<()> {
        self.restore_table_rows(saved, true)
    }

    /// [`Pipelines::restore_tables`]; `saved`: the rows count as saved already (the blobs
    /// they came from stay in the line), else the next checkpoint saves them.
    fn restore_table_rows(&mut self, rows: Vec<(String, Vec<u8>)>, saved: bool) -> Result<()> {
        for (prefix, bytes) in rows {
            let Some(t) = self.tables.iter_mut().chain(&mut self.late).find(|t| t.prefix() == prefix) else {
                tracing::warn!(table = %prefix, "Dropping saved rows of a table that no longer exists.");
                continue;
            };
            for b in crate::checkpoint::from_ipc(&bytes)? {
                if b.schema() == *t.schema() {
                    t.push(b)?;
                } else {
                    tracing::warn!(table = %prefix, "Dropping saved rows: the table's columns changed.");
                }
            }
        }
        if saved {
            for t in self.tables.iter_mut().chain(&mut self.late) {
                t.take_unsaved();
            }
        }
        Ok(())
    }

    /// Rows waiting for a commit, per pipeline (its table and its late rows).
    pub fn pending_by_pipeline(&self) -> Vec<usize> {
        self.tables.iter().zip(&self.late).map(|(t, l)| t.rows() + l.rows()).collect()
    }

    /// Writes every pending row into place.
    pub async fn commit(&mut self, lake: &Lake, writer: &str) -> Result<Vec<CommittedFile>> {
        self.commit_to(lake, writer, &Placement::Direct).await
    }

    /// Writes every pending row, staged or into place.
    pub async fn commit_to(&mut self, lake: &Lake, writer: &str, placement: &Placement) -> Result<Vec<CommittedFile>> {
        self.process()?;
        let mut out = Vec::new();
        for t in self.tables.iter_mut().chain(&mut self.late) {
            out.extend(t.commit(lake, writer, placement).await?);
        }
        self.table_line.clear();
        Ok(out)
    }
}

/// [`Pipelines::live_rows`] of one pipeline (`q`, its table buffers), after `batch`.
fn answer_one(
    q: &mut WindowedQuery,
    table: &mut TableBuffer,
    late: &mut TableBuffer,
    isolate: bool,
    batch: Option<&arrow::array::RecordBatch>,
    starts: &live::Starts,
) -> Result<Option<(Vec<arrow::array::RecordBatch>, Vec<arrow::array::RecordBatch>)>> {
    if let Some(b) = batch {
        run_one(q, isolate, |q| q.process(b))?;
    }
    thread::collect_one(q, table, late)?;
    if let Some(why) = &q.failed {
        return Err(Error::Query { pipeline: q.spec.name.clone(), message: format!("failed: {why}") });
    }
    // One shard of several: its open windows hold its own events only; the merged ones
    // waiting for a commit are shard 0's.
    let open = match q.partials {
        Some(_) => Vec::new(),
        None => q.peek(starts).map_err(|e| query_error(&q.spec, e))?,
    };
    Ok(Some((open, table.buffered())))
}

fn used_base_columns(queries: &[WindowedQuery]) -> Vec<Col> {
    let mut used: Vec<Col> = queries.iter().flat_map(|q| q.used_base_columns()).collect();
    used.sort_by_key(|c| c.name());
    used.dedup();
    used
}

/// Runs `f` on `q` unless it failed before. A failure of its own marks it failed when
/// `isolate` (logged once, with the pipeline's file and the SQL error), else it is returned.
fn run_one(
    q: &mut WindowedQuery,
    isolate: bool,
    f: impl FnOnce(&mut WindowedQuery) -> datafusion::error::Result<()>,
) -> Result<()> {
    if q.failed.is_some() {
        return Ok(());
    }
    match f(q) {
        Ok(()) => Ok(()),
        Err(e) if isolate => {
            let message = e.strip_backtrace();
            tracing::error!(
                pipeline = %q.spec.name,
                file = %q.spec.file.display(),
                error = %message,
                "Pipeline failed at run time: it stops here, the archive and the other pipelines go on. Fix the \
                 file and restart to resume it (its windows from the last checkpoint)."
            );
            q.failed = Some(message);
            Ok(())
        }
        Err(e) => Err(query_error(&q.spec, e)),
    }
}

fn query_error(spec: &PipelineSpec, e: datafusion::error::DataFusionError) -> Error {
    Error::Query { pipeline: spec.name.clone(), message: e.strip_backtrace() }
}

#[cfg(test)]
mod tests;
