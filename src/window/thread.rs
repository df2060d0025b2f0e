//! The pipelines' work off the term's loop, on the window worker ([`super::worker`]): while
//! they are away ([`Pipelines::queries`] is empty meanwhile), the loop queues each
//! pipeline's items and goes on; [`Pipelines::settle`] takes them all back when something
//! needs every pipeline as of now (a table commit, a replay's batch, shards' merging).
//!
//! The loop queues the buffered events at each micro-batch
//! ([`Pipelines::process_in_background`]), the other pipelines' share of a live request's
//! events, the clock's work ([`Pipelines::on_tick`]: the events buffered since, idle
//! timeouts, the state bound, a metrics snapshot) and a checkpoint's
//! ([`Pipelines::save_in_background`]: the events buffered since, then every pipeline's
//! window state). A live request takes its own pipeline back and runs that pipeline's queued
//! items itself ([`Pipelines::live_rows`]): it never waits for another pipeline's work.
//!
//! Rows of windows closed on the worker wait in their pipeline's outbox ([`Outboxes`])
//! until the loop collects them into the table buffers: at every tick, a live request (its
//! pipeline), a settle, a checkpoint. A checkpoint collects every outbox, cuts the tables'
//! rows, then queues each pipeline's part; until that part ran, its outbox is not collected,
//! and the part copies it: each row is either in the checkpoint's table part (collected
//! before) or in its window state blob (not collected when the part ran).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use tokio::sync::oneshot;

use super::checkpoint::{StateParts, state_part};
use super::worker::Worker;
use super::{Pipelines, WindowedQuery, run_one};
use crate::error::{Error, Result};
use crate::metrics::PipelineMetrics;
use crate::sink::table::TableBuffer;
use crate::telemetry::STAGES;

/// Ticks in a row that may find the worker busy and leave their checks to the next.
const MAX_TICKS_SKIPPED: u32 = 9;

/// How long after a live request a pipeline's batches run on the loop
/// ([`Pipelines::spawn_batches`]).
const WATCHED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Items queued per pipeline before the loop waits for the worker.
const MAX_QUEUED_PER_PIPELINE: usize = 4;

/// What a checkpoint's items send the checkpoint: the window state's parts, and per
/// pipeline the rows of closed windows and the late events not collected yet (the state no
/// longer holds them and the checkpoint's table part does not either).
pub(crate) type Saved = Result<(StateParts, Vec<(Vec<RecordBatch>, Vec<RecordBatch>)>)>;

/// The window worker of [`Pipelines`].
pub(super) type PipelineWorker = Worker<WindowedQuery, Item>;

/// One pipeline's work.
pub(super) enum Item {
    Batch(RecordBatch),
    /// The clock's checks, and the metrics snapshot after them.
    Tick {
        now: Instant,
        max_state_bytes: usize,
        metrics: Arc<Mutex<Vec<PipelineMetrics>>>,
    },
    /// Its part of a checkpoint.
    Save(Arc<SaveParts>),
}

/// Per pipeline, the rows its items on the worker closed and its late events, until the loop
/// collects them ([`Pipelines::collect_outboxes`]); `saving`: a checkpoint's part of it is
/// queued, so they stay (see the module docs).
#[derive(Default)]
pub(super) struct Outboxes(Mutex<Vec<Outbox>>);

#[derive(Default, Clone)]
struct Outbox {
    rows: Vec<RecordBatch>,
    late: Vec<RecordBatch>,
    saving: bool,
}

impl Outboxes {
    pub(super) fn new(n: usize) -> Outboxes {
        Outboxes(Mutex::new(vec![Outbox::default(); n]))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Outbox>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves what `q` closed into its outbox; with `save`, returns a copy of the outbox
    /// and ends its `saving`.
    fn fill(&self, index: usize, q: &mut WindowedQuery, save: bool) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
        let mut g = self.lock();
        let Some(o) = g.get_mut(index) else { return Default::default() };
        o.rows.append(&mut q.ready);
        o.late.append(&mut q.late_ready);
        if !save {
            return Default::default();
        }
        o.saving = false;
        (o.rows.clone(), o.late.clone())
    }
}

/// A checkpoint's parts, one per pipeline; the last one in sends them all.
pub(super) struct SaveParts(Mutex<Parts>);

type Part = ((Vec<u8>, Vec<RecordBatch>), (Vec<RecordBatch>, Vec<RecordBatch>));

struct Parts {
    parts: Vec<Option<Part>>,
    tx: Option<oneshot::Sender<Saved>>,
}

impl SaveParts {
    fn put(&self, index: usize, part: Result<Part>) {
        let mut g = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match part {
            Ok(p) => g.parts[index] = Some(p),
            Err(e) => {
                if let Some(tx) = g.tx.take() {
                    // The checkpoint may be gone (its term stopped): nothing waits then.
                    let _ = tx.send(Err(e));
                }
                return;
            }
        }
        if g.parts.iter().all(Option::is_some)
            && let Some(tx) = g.tx.take()
        {
            let (states, closed): (Vec<_>, Vec<_>) = g.parts.iter_mut().filter_map(Option::take).unzip();
            let _ = tx.send(Ok((StateParts(states), closed)));
        }
    }
}

impl Pipelines {
    /// Takes every pipeline back from the worker (waiting for their items) and collects what
    /// they closed. Everything that reads or changes every window calls it first.
    pub fn settle(&mut self) -> Result<()> {
        if !self.away {
            // What a watched pipeline's batch closed here (`spawn_batches`).
            return self.collect_outboxes();
        }
        self.queries = self.worker()?.take_all()?;
        self.away = false;
        self.collect()?;
        self.collect_outboxes()
    }

    /// Moves the rows waiting in the outboxes into the table buffers (but those of a
    /// pipeline whose checkpoint part is queued).
    pub(super) fn collect_outboxes(&mut self) -> Result<()> {
        let mut g = self.outboxes.lock();
        for ((o, t), l) in g.iter_mut().zip(&mut self.tables).zip(&mut self.late) {
            if o.saving {
                continue;
            }
            for b in o.rows.drain(..) {
                t.push(b)?;
            }
            for b in o.late.drain(..) {
                l.push(b)?;
            }
        }
        Ok(())
    }

    /// Whether the pipelines are with the worker.
    pub(super) fn away(&self) -> bool {
        self.away
    }

    /// [`Pipelines::process`] on the worker: the caller goes on decoding and buffering the
    /// next events meanwhile (live runs).
    pub fn process_in_background(&mut self) -> Result<()> {
        if self.columns.is_empty() {
            return Ok(());
        }
        let batches = self.columns.finish(&self.schemas)?;
        self.spawn_batches(batches, None)
    }

    /// The clock's work (live runs), on the worker with the events buffered so far: idle
    /// timeouts close windows whose input went quiet, a pipeline whose state is past the
    /// bound fails, and the metrics snapshot is renewed; what the worker closed is
    /// collected. With items still queued, the next tick does it; after 9 in a row
    /// (`MAX_TICKS_SKIPPED`) this one queues its checks anyway, so the state bound is
    /// checked at least that often.
    pub fn on_tick(&mut self, now: Instant) -> Result<()> {
        self.collect_outboxes()?;
        if self.worker.as_ref().is_some_and(|w| self.away && w.busy()) && self.ticks_skipped < MAX_TICKS_SKIPPED {
            self.ticks_skipped += 1;
            return Ok(());
        }
        self.ticks_skipped = 0;
        if self.partial {
            // One shard of several: the bounds as of this tick, for the merger.
            self.settle()?;
            self.tick_bounds = Some(super::merge::bounds_of(&self.queries));
        }
        self.process_in_background()?;
        for i in 0..self.schemas.len() {
            let metrics = self.tick_metrics.clone();
            self.push(i, Item::Tick { now, max_state_bytes: self.max_state_bytes, metrics })?;
        }
        Ok(())
    }

    /// A checkpoint's window work on the worker: the events buffered so far, then every
    /// pipeline's state, sent on the returned channel with the rows not collected yet
    /// ([`Saved`]). The loop goes on meanwhile. Call after collecting the outboxes and
    /// before cutting the tables' rows (see the module docs).
    pub(crate) fn save_in_background(&mut self) -> Result<oneshot::Receiver<Saved>> {
        self.process_in_background()?;
        let (tx, rx) = oneshot::channel();
        let n = self.schemas.len();
        for o in self.outboxes.lock().iter_mut() {
            o.saving = true;
        }
        let parts = Arc::new(SaveParts(Mutex::new(Parts { parts: (0..n).map(|_| None).collect(), tx: Some(tx) })));
        for i in 0..n {
            self.push(i, Item::Save(parts.clone()))?;
        }
        Ok(rx)
    }

    /// Each pipeline's metrics: as they stand, or while the pipelines are away as of the
    /// last tick (its items measured them, off the loop); the rows waiting for a commit and
    /// the worker's queue as of now.
    pub fn metrics(&self) -> Vec<PipelineMetrics> {
        let mut out = match self.away {
            true => self.tick_metrics.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            false => self.queries.iter().map(snapshot).collect(),
        };
        for (m, rows) in out.iter_mut().zip(self.pending_by_pipeline()) {
            m.pending_rows = rows;
        }
        if let Some(w) = self.worker.as_ref().filter(|_| self.away) {
            for (m, n) in out.iter_mut().zip(w.queued()) {
                m.queued_items = n;
            }
        }
        out
    }

    /// Queues `batches` (one per pipeline) for the pipelines on the worker, but for pipeline
    /// `done` (processed already) and those without rows. A pipeline a dashboard watches (a
    /// live request within [`WATCHED_FOR`]) processes its batch here instead: its next live
    /// request then finds no batch of it running on the worker, whose lower priority would
    /// make the loop wait the longer under load.
    pub(super) fn spawn_batches(&mut self, batches: Vec<RecordBatch>, done: Option<usize>) -> Result<()> {
        let now = Instant::now();
        for (i, b) in batches.into_iter().enumerate() {
            if Some(i) == done || b.num_rows() == 0 {
                continue;
            }
            let watched = self.watched.get(i).copied().flatten().is_some_and(|t| now.duration_since(t) < WATCHED_FOR);
            if !watched {
                self.push(i, Item::Batch(b))?;
                continue;
            }
            let (isolate, outboxes) = (self.isolate, self.outboxes.clone());
            self.on_loop(i, |q, _, _| run(q, i, Item::Batch(b), isolate, &outboxes))?;
            self.collect_outboxes()?;
        }
        Ok(())
    }

    /// Pipeline `i` back from the worker, its queued items run here (not behind another
    /// pipeline's on the worker), what they closed collected; [`Pipelines::give_back`]
    /// returns it, also when running them failed (the inner error).
    pub(super) fn take_one(&mut self, i: usize) -> Result<(WindowedQuery, Result<()>)> {
        let (mut q, items) = self.worker()?.take(i)?;
        let outboxes = self.outboxes.clone();
        let ran = items.into_iter().try_for_each(|item| run(&mut q, i, item, self.isolate, &outboxes));
        Ok((q, ran.and_then(|()| self.collect_outboxes())))
    }

    pub(super) fn give_back(&mut self, i: usize, q: WindowedQuery) {
        if let Some(w) = &self.worker {
            w.give(i, q);
        }
    }

    /// Runs `f` on the loop with pipeline `i` and its table buffers (rows, late events): as
    /// it stands when the loop has the pipelines, else taken back from the worker with its
    /// queued items run first ([`Pipelines::take_one`]) and given back after.
    pub(super) fn on_loop<T>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut WindowedQuery, &mut TableBuffer, &mut TableBuffer) -> Result<T>,
    ) -> Result<T> {
        if !self.away {
            return f(&mut self.queries[i], &mut self.tables[i], &mut self.late[i]);
        }
        let (mut q, ran) = self.take_one(i)?;
        let out = ran.and_then(|()| f(&mut q, &mut self.tables[i], &mut self.late[i]));
        self.give_back(i, q);
        out
    }

    /// Queues an item, handing the pipelines over first if the loop has them.
    fn push(&mut self, i: usize, item: Item) -> Result<()> {
        if !self.away {
            if self.worker.is_none() {
                let (isolate, outboxes) = (self.isolate, self.outboxes.clone());
                let n = self.queries.len();
                self.worker = Some(Worker::new(
                    n,
                    n * MAX_QUEUED_PER_PIPELINE,
                    Box::new(move |q: &mut WindowedQuery, i: usize, item: Item| run(q, i, item, isolate, &outboxes)),
                )?);
            }
            *self.tick_metrics.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                self.queries.iter().map(snapshot).collect();
            let queries = std::mem::take(&mut self.queries);
            self.worker()?.put_all(queries);
            self.away = true;
        }
        self.worker()?.push(i, item)
    }

    /// The window worker (started by the first item).
    fn worker(&self) -> Result<&PipelineWorker> {
        self.worker.as_ref().ok_or_else(|| Error::Internal("the window worker is gone".into()))
    }
}

/// Moves what `q` closed (rows and late events) into its table buffers.
pub(super) fn collect_one(q: &mut WindowedQuery, table: &mut TableBuffer, late: &mut TableBuffer) -> Result<()> {
    for b in q.ready.drain(..) {
        table.push(b)?;
    }
    for b in q.late_ready.drain(..) {
        late.push(b)?;
    }
    Ok(())
}

/// One item (on the worker, or on the loop for a live request; timed in the stage log);
/// what it closed goes to the pipeline's outbox.
fn run(q: &mut WindowedQuery, index: usize, item: Item, isolate: bool, outboxes: &Outboxes) -> Result<()> {
    let timed = tracing::enabled!(target: STAGES, tracing::Level::TRACE)
        .then(|| (Instant::now(), chrono::Utc::now().timestamp_micros()));
    let (what, rows) = match &item {
        Item::Batch(b) => ("batch", b.num_rows()),
        Item::Tick { .. } => ("tick", 0),
        Item::Save(_) => ("checkpoint", 0),
    };
    let outcome = match item {
        Item::Batch(b) => {
            let processed = run_one(q, isolate, |q| q.process(&b));
            outboxes.fill(index, q, false);
            processed
        }
        Item::Tick { now, max_state_bytes, metrics } => {
            let checked = run_one(q, isolate, |q| {
                q.on_idle(now)?;
                q.check_state_bound(max_state_bytes)
            });
            outboxes.fill(index, q, false);
            if let Some(m) = metrics.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_mut(index) {
                *m = snapshot(q);
            }
            checked
        }
        Item::Save(parts) => {
            // What the worker closed and the loop did not collect yet stays in the outbox
            // for the tables too.
            let part = state_part(q).map(|s| (s, outboxes.fill(index, q, true)));
            let failed = part.as_ref().err().map(|e| Error::Internal(format!("a checkpoint's window state: {e}")));
            parts.put(index, part);
            failed.map_or(Ok(()), Err)
        }
    };
    if let Some((started, started_us)) = timed {
        let us = started.elapsed().as_micros() as u64;
        tracing::trace!(target: STAGES, what, pipeline = %q.spec.name, rows, started_us, us, "Window job.");
    }
    outcome
}

/// A pipeline's metrics (rows waiting for a commit: filled in by [`Pipelines::metrics`]).
fn snapshot(q: &WindowedQuery) -> PipelineMetrics {
    PipelineMetrics {
        name: q.spec.name.clone(),
        stats: q.stats.clone(),
        watermark_us: q.watermark(),
        open_windows: q.open_windows(),
        state_bytes: q.state_bytes(),
        pending_rows: 0,
        queued_items: 0,
        failed: q.failed.clone(),
    }
}
