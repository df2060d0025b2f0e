//! The window thread: aggregation work taken off the term's loop. A job takes every
//! pipeline ([`Pipelines::queries`] is empty meanwhile) and gives them back when
//! [`Pipelines::settle`] joins it; one job is in flight at a time, so batches are applied in
//! order and results do not depend on where they ran.
//!
//! The loop hands it the buffered events at each micro-batch ([`Pipelines::process_in_background`]),
//! the other pipelines' share of a live request's events, and the clock's work
//! ([`Pipelines::on_tick`]: the events buffered since, idle timeouts, the state bound, a
//! metrics snapshot), and a checkpoint's ([`Pipelines::save_in_background`]: the events
//! buffered since, then every pipeline's window state). The tick does not wait for a job: a
//! job still running is left for the next tick (up to a bound). The thread runs at the
//! runtime's priority: the loop waits for it whenever it settles (a live request, the next
//! micro-batch), so a lower priority would only make it wait longer.

use std::time::Instant;

use arrow::array::RecordBatch;
use tokio::sync::oneshot;

use super::checkpoint::{StateParts, state_parts};
use super::{Pipelines, WindowedQuery, run_one};
use crate::error::{Error, Result};
use crate::metrics::PipelineMetrics;
use crate::telemetry::STAGES;

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

/// What a checkpoint's job sends the checkpoint: the window state's parts after its
/// batches, and per pipeline the rows of windows those batches closed and their late
/// events (the state no longer holds them; they reach the tables when the job settles,
/// after this checkpoint took the tables' rows, so they are saved with the state).
pub(crate) type Saved = Result<(StateParts, Vec<(Vec<RecordBatch>, Vec<RecordBatch>)>)>;

/// One job: each pipeline's batch (but `done`'s), then the clock's part, then a checkpoint's.
struct Job {
    batches: Vec<RecordBatch>,
    done: Option<usize>,
    tick: Option<Tick>,
    save: Option<oneshot::Sender<Saved>>,
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
        let tick = Some(Tick { now, max_state_bytes: self.max_state_bytes });
        self.spawn(Job { batches, done: None, tick, save: None })
    }

    /// A checkpoint's window work on the window thread: the events buffered so far, then
    /// every pipeline's state, sent on the returned channel with the rows the events closed
    /// ([`Saved`]). The loop goes on meanwhile; whatever settles next waits for it.
    pub(crate) fn save_in_background(&mut self) -> Result<oneshot::Receiver<Saved>> {
        self.settle()?;
        let batches = if self.columns.is_empty() { Vec::new() } else { self.columns.finish(&self.schemas)? };
        let (tx, rx) = oneshot::channel();
        self.spawn(Job { batches, done: None, tick: None, save: Some(tx) })?;
        Ok(rx)
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
        self.spawn(Job { batches, done, tick: None, save: None })
    }

    fn spawn(&mut self, job: Job) -> Result<()> {
        self.tick_bounds = job.tick.map(|_| super::merge::bounds_of(&self.queries));
        let mut queries = std::mem::take(&mut self.queries);
        let isolate = self.isolate;
        let timed = tracing::enabled!(target: STAGES, tracing::Level::TRACE)
            .then(|| (Instant::now(), chrono::Utc::now().timestamp_micros()));
        let handle = std::thread::Builder::new()
            .name("eventide-windows".into())
            .spawn(move || {
                let (tick, what) = (job.tick, job.kind());
                let rows = job.batches.iter().map(RecordBatch::num_rows).max().unwrap_or(0);
                let result = run(&mut queries, isolate, job);
                let metrics = tick.map(|_| snapshot(&queries));
                if let Some((spawned, spawned_us)) = timed {
                    let us = spawned.elapsed().as_micros() as u64;
                    tracing::trace!(target: STAGES, what, rows, started_us = spawned_us, us, "Window job.");
                }
                (queries, result, metrics)
            })
            .map_err(|e| Error::Internal(format!("cannot start a window thread: {e}")))?;
        self.in_flight = Some(handle);
        Ok(())
    }
}

impl Job {
    /// What the job is for, in the stage log.
    fn kind(&self) -> &'static str {
        match (&self.save, self.tick, self.done) {
            (Some(_), ..) => "checkpoint",
            (_, Some(_), _) => "tick",
            (_, _, Some(_)) => "live",
            _ => "batch",
        }
    }
}

/// A job's work: each pipeline's batch (but `done`'s), then the clock's part, then the
/// checkpoint's (its outcome goes to the checkpoint; the job's own, to whoever settles).
fn run(queries: &mut [WindowedQuery], isolate: bool, job: Job) -> Result<()> {
    let processed = process(queries, isolate, &job);
    let Some(tx) = job.save else { return processed };
    let saved = processed.and_then(|()| {
        // What the batches closed (the queue was empty at the start: the last settle
        // drained it) stays queued for the tables too.
        let closed = queries.iter().map(|q| (q.ready.clone(), q.late_ready.clone())).collect();
        Ok((state_parts(queries)?, closed))
    });
    let outcome = match &saved {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Internal(format!("a checkpoint's window work failed: {e}"))),
    };
    // The checkpoint may be gone (its term stopped): nothing waits then.
    let _ = tx.send(saved);
    outcome
}

fn process(queries: &mut [WindowedQuery], isolate: bool, job: &Job) -> Result<()> {
    for (i, q) in queries.iter_mut().enumerate() {
        if let Some(b) = job.batches.get(i).filter(|_| Some(i) != job.done) {
            run_one(q, isolate, |q| q.process(b))?;
        }
    }
    if let Some(t) = job.tick {
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
