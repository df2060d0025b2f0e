//! The window thread: aggregation work taken off the term's loop. A job takes every
//! pipeline ([`Pipelines::queries`] is empty meanwhile) and gives them back when
//! [`Pipelines::settle`] joins it; one job is in flight at a time, so batches are applied in
//! order and results do not depend on where they ran.
//!
//! The loop hands it the buffered events at each micro-batch ([`Pipelines::process_in_background`]),
//! the other pipelines' share of a live request's events, and the clock's work
//! ([`Pipelines::on_tick`]: the events buffered since, idle timeouts, the state bound, a
//! metrics snapshot). The tick does not wait for a job: a job still running is left for the
//! next tick (up to a bound). The thread runs at the runtime's priority: the loop waits for it whenever it
//! settles (a live request, a checkpoint), so a lower priority would only make it wait longer.

use std::time::Instant;

use arrow::array::RecordBatch;

use super::{Pipelines, WindowedQuery, run_one};
use crate::error::{Error, Result};
use crate::metrics::PipelineMetrics;

/// Ticks in a row that may find the window thread busy and leave its work to the next.
const MAX_TICKS_SKIPPED: u32 = 9;

/// What a job gives back: the pipelines, its outcome, and (a tick) the metrics after it.
pub(super) type Done = (Vec<WindowedQuery>, Result<()>, Option<Vec<PipelineMetrics>>);

/// The clock's part of a job.
#[derive(Clone, Copy)]
struct Tick {
    now: Instant,
    max_state_bytes: usize,
}

impl Pipelines {
    /// Waits for the job in flight, if any, and collects its output. Everything that reads
    /// or changes the windows calls it first.
    pub fn settle(&mut self) -> Result<()> {
        let Some(job) = self.in_flight.take() else { return Ok(()) };
        let (queries, result, metrics) = job.join().map_err(|_| Error::Internal("a window thread panicked".into()))?;
        self.queries = queries;
        if let Some(m) = metrics {
            self.metrics = m;
        }
        result?;
        self.collect()
    }

    /// [`Pipelines::process`] on the window thread: the caller goes on decoding and buffering
    /// the next events meanwhile (live runs).
    pub fn process_in_background(&mut self) -> Result<()> {
        self.settle()?;
        if self.columns.is_empty() {
            return Ok(());
        }
        let batches = self.columns.finish(&self.schemas)?;
        self.spawn_batches(batches, None)
    }

    /// The clock's work (live runs), on the window thread with the events buffered so far:
    /// idle timeouts close windows whose input went quiet, a pipeline whose state is past
    /// the bound fails, and the metrics snapshot is renewed. With a job still running, the
    /// next tick does it; after 9 in a row (`MAX_TICKS_SKIPPED`: the window thread busy back to
    /// back) this one waits for it, so the state bound is checked at least that often.
    pub fn on_tick(&mut self, now: Instant) -> Result<()> {
        if self.in_flight.as_ref().is_some_and(|job| !job.is_finished()) && self.ticks_skipped < MAX_TICKS_SKIPPED {
            self.ticks_skipped += 1;
            return Ok(());
        }
        self.ticks_skipped = 0;
        self.settle()?;
        let batches = if self.columns.is_empty() { Vec::new() } else { self.columns.finish(&self.schemas)? };
        self.spawn(batches, None, Some(Tick { now, max_state_bytes: self.max_state_bytes }))
    }

    /// Each pipeline's metrics: as they stand, or with a job in flight as of the last tick
    /// (whose job measured them, off the loop); the rows waiting for a commit as of now.
    pub fn metrics(&self) -> Vec<PipelineMetrics> {
        let mut out = match self.in_flight {
            Some(_) => self.metrics.clone(),
            None => snapshot(&self.queries),
        };
        for (m, rows) in out.iter_mut().zip(self.pending_by_pipeline()) {
            m.pending_rows = rows;
        }
        out
    }

    /// Runs `batches` (one per pipeline) through the pipelines on the window thread, but for
    /// pipeline `done` (processed already); nothing to run (no rows for the others), no job.
    pub(super) fn spawn_batches(&mut self, batches: Vec<RecordBatch>, done: Option<usize>) -> Result<()> {
        if batches.iter().enumerate().all(|(i, b)| Some(i) == done || b.num_rows() == 0) {
            return Ok(());
        }
        self.spawn(batches, done, None)
    }

    fn spawn(&mut self, batches: Vec<RecordBatch>, done: Option<usize>, tick: Option<Tick>) -> Result<()> {
        self.tick_bounds = tick.map(|_| super::merge::bounds_of(&self.queries));
        let mut queries = std::mem::take(&mut self.queries);
        let isolate = self.isolate;
        let job = std::thread::Builder::new()
            .name("eventide-windows".into())
            .spawn(move || {
                let result = run(&mut queries, isolate, &batches, done, tick);
                let metrics = tick.map(|_| snapshot(&queries));
                (queries, result, metrics)
            })
            .map_err(|e| Error::Internal(format!("cannot start a window thread: {e}")))?;
        self.in_flight = Some(job);
        Ok(())
    }
}

/// A job's work: each pipeline's batch (but `done`'s), then the clock's part.
fn run(
    queries: &mut [WindowedQuery],
    isolate: bool,
    batches: &[RecordBatch],
    done: Option<usize>,
    tick: Option<Tick>,
) -> Result<()> {
    for (i, q) in queries.iter_mut().enumerate() {
        if let Some(b) = batches.get(i).filter(|_| Some(i) != done) {
            run_one(q, isolate, |q| q.process(b))?;
        }
    }
    if let Some(t) = tick {
        for q in queries.iter_mut() {
            run_one(q, isolate, |q| {
                q.on_idle(t.now)?;
                q.check_state_bound(t.max_state_bytes)
            })?;
        }
    }
    Ok(())
}

/// Each pipeline's metrics (rows waiting for a commit: filled in by [`Pipelines::metrics`]).
fn snapshot(queries: &[WindowedQuery]) -> Vec<PipelineMetrics> {
    queries
        .iter()
        .map(|q| PipelineMetrics {
            name: q.spec.name.clone(),
            stats: q.stats.clone(),
            watermark_us: q.watermark(),
            open_windows: q.open_windows(),
            state_bytes: q.state_bytes(),
            pending_rows: 0,
            failed: q.failed.clone(),
        })
        .collect()
}
