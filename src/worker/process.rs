//! The processor: one batch at a time through decode → dedup → archive + windows, rejects
//! to the DLQ; every output file is staged, and a checkpoint ([`crate::checkpoint`]) commits
//! an epoch's files and state at once, publishes the files, then acks the epoch's entries
//! (its writing overlaps with the next epoch's reading: [`commit`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ack::AckTracker;
use crate::checkpoint::{self, Checkpointed, Checkpoints, Totals};
use crate::decode::{Decoder, Rejection};
use crate::entry::{EntryId, StreamBatch};
use crate::error::{Error, Result};
use crate::ingest::{Admitted, Ingest};
use crate::metrics::Stats;
use crate::sink::archive::{Archive, CommittedFile};
use crate::sink::delta::{DeltaLog, Kind, TableDecl, TableFormat};
use crate::sink::dlq::{self, DlqOptions};
use crate::sink::lake::{Lake, Placement};
use crate::source::SourceOptions;
use crate::source::acker::Acker;
use crate::source::commands::Commands;
use crate::source::group;
use crate::source::lease::Fence;
use crate::telemetry::{EpochTraces, STAGES, Spans};
use crate::window::Pipelines;

use super::RunOptions;
use super::recovery::{noack_positions, read_without_acks, take_over};

mod acks;
mod commit;
mod live;
mod merge;
mod report;
mod trace;

pub(super) use commit::{Writing, Written};

/// Rows a file buffers before the clock hands them to its encoder (fewer are left for the
/// checkpoint, which encodes what is left).
const TICK_ENCODE_ROWS: usize = 512;

/// Claimed entries processed per stream per claim round.
const CLAIM_MAX: usize = 10_000;

pub(super) struct Processor {
    source: SourceOptions,
    dlq_keys: Vec<String>,
    cmds: Commands,
    acker: Option<Acker>,
    /// What a checkpoint's background half takes along (away while one is in flight).
    commit_ctx: Option<commit::CommitCtx>,
    /// Decode → dedup → fan-out (the archive and the pipelines).
    ingest: Ingest,
    archive: Archive,
    /// Windowed aggregations over the accepted events.
    pub pipelines: Pipelines,
    writer: String,
    acks: AckTracker,
    lake: Lake,
    checkpoint_interval: Duration,
    roll_age: Duration,
    /// Unsaved rows of open files that make a checkpoint due before its interval.
    max_unsaved_bytes: usize,
    /// Checkpoints made due early: by the pending bound, by unsaved segment rows.
    early_checkpoints: [u64; 2],
    /// Table commits published by this term (the aggregates API keeps committed rows until it grows).
    pub commits: Arc<std::sync::atomic::AtomicU64>,
    last_commit_unix_ms: Option<i64>,
    cp: Checkpoints,
    /// The epoch being built (the last checkpoint is `epoch - 1`).
    epoch: u64,
    epoch_started: Instant,
    epoch_started_ms: i64,
    /// Files staged during this epoch (size rolls), published by its checkpoint.
    epoch_files: Vec<CommittedFile>,
    /// Where the checkpoint line keeps the dedup state.
    dedup_line: checkpoint::DedupLine,
    positions: BTreeMap<String, EntryId>,
    totals: Totals,
    dlq: DlqOptions,
    /// Until when the group's lease is surely held: every side effect checks it first.
    fence: Fence,
    /// `noack` mode: per stream, the position to read after and the group's `entries-read`.
    noack: Option<Vec<(EntryId, Option<u64>)>>,
    /// Entry bytes read from Redis.
    read_bytes: u64,
    pub stats: Stats,
    /// Publish → durable at 1 ms resolution, for the run summary.
    pub durable_exact: crate::metrics::LatencyHistogram,
    /// Shard 0 of several, with pipelines: the merger.
    merge: Option<merge::MergeSide>,
    /// The window bounds of the last checkpoint (several shards).
    committed_bounds: BTreeMap<String, checkpoint::WindowBound>,
    /// Traces of the event path (off by default), and this epoch's traced batches.
    spans: Spans,
    traces: EpochTraces,
    shard: u32,
}

impl Processor {
    /// Opens the lake, recovers from the latest checkpoint (or writes a first one), connects
    /// and creates the consumer groups.
    pub async fn start(opts: &RunOptions, fence: Fence, token: u64) -> Result<Self> {
        let lake = match &opts.lake_store {
            Some(store) => Lake::from_store(store.clone()),
            None => Lake::open_with(&opts.lake, &opts.lake_options)?,
        };
        let mut pipelines = match &opts.pipelines {
            Some(dir) => Pipelines::load(dir).await?,
            None => Pipelines::new(Vec::new())?,
        };
        let mut cp = Checkpoints::new(lake.clone(), opts.shard, &opts.source.group, &opts.source.consumer);
        cp.check_shard_count().await?;
        if opts.table_format == TableFormat::Delta {
            // Before recovery: publishing the latest checkpoint again commits to the tables.
            cp = cp.with_delta(Arc::new(open_delta(&lake, &opts.archive.prefix, &mut pipelines).await?));
        }
        let horizon = opts.dedup_horizon.as_secs();
        let (latest, dedup, recovered) = take_over(&cp, &lake, &fence, token, horizon).await?;
        let mut dedup = dedup.with_max_bytes(opts.dedup_max_bytes);
        dedup.clear_delta();
        let mut cmds = Commands::new(&opts.source.redis, opts.source.retry_timeout)?;
        let created = group::ensure_groups(&mut cmds, &opts.source).await?;
        for s in created {
            tracing::info!(stream = %s, group = %opts.source.group, start = %opts.source.start_id, "Created consumer group.");
        }
        // The lease holder owns every pending entry of the group (earlier holders are gone):
        // the reader re-reads them, in id order, before new entries.
        let mut stats = Stats { streams: vec![Default::default(); opts.source.streams.len()], ..Stats::default() };
        let mut noack = None;
        let read_noack = read_without_acks(&mut cmds, &opts.source).await?;
        if read_noack {
            noack = Some(noack_positions(&mut cmds, &opts.source, &latest).await?);
        }
        for stream in opts.source.streams.iter().filter(|_| !read_noack) {
            let (n, deleted) = group::claim_all_pending(&mut cmds, &opts.source, stream).await?;
            (stats.claimed, stats.deleted_pending) = (stats.claimed + n, stats.deleted_pending + deleted);
            if n > 0 {
                tracing::info!(stream = %stream, entries = n, "Took over entries pending at other consumers (earlier lease holders).");
            }
        }
        if !pipelines.is_empty() {
            tracing::info!(pipelines = ?pipelines, "Loaded pipelines.");
        }
        if opts.shard.count > 1 {
            pipelines.emit_partials()?;
        }
        pipelines.restore(&cp, &latest).await?;
        let carry = match &latest.merger {
            Some(path) => crate::window::merge::decode_carry(&cp.get_blob(path).await?)?,
            None => BTreeMap::new(),
        };
        let merge =
            (opts.shard.count > 1 && opts.shard.index == 0 && !pipelines.is_empty()).then(|| merge::MergeSide {
                merger: crate::window::merge::Merger::resume(
                    latest.merged.clone(),
                    latest.merge_keep.clone(),
                    carry,
                    &latest.window_bounds,
                    &pipelines,
                ),
                last_round: None,
                last: Default::default(),
                cache: BTreeMap::new(),
                live: Default::default(),
            });
        let committed_bounds = latest.window_bounds.clone();
        pipelines.declare_streams(&opts.source.streams);
        pipelines.bound_watermarks(opts.max_clock_skew);
        pipelines.isolate_failures();
        pipelines.bound_state(opts.pipeline_max_state_bytes);
        let dlq_keys: Vec<String> =
            opts.source.streams.iter().map(|s| dlq::dlq_key(opts.dlq_stream.as_deref(), s)).collect();
        if recovered {
            tracing::info!(
                epoch = latest.epoch,
                files = latest.files.len(),
                dedup_ids = dedup.len(),
                "Recovered from checkpoint."
            );
        }
        let dedup_line = checkpoint::DedupLine::of(&latest, opts.state_interval);
        let latest = Some(latest);
        let epoch = latest.as_ref().map_or(1, |m| m.epoch + 1);
        let mut archive = Archive::new(lake.clone(), opts.archive.clone())?;
        archive.placement = Placement::Staged(cp.staging_prefix(epoch));
        // Files stay open across checkpoints only when checkpoints are more frequent than rolls
        // (files a checkpoint kept open are reopened either way).
        archive.keep_segments = opts.checkpoint_interval < opts.roll_age;
        if let Some(m) = &latest {
            archive.restore(&cp, m).await?;
        }
        if archive.open_rows() > 0 {
            tracing::info!(
                files = archive.open_files().len(),
                rows = archive.open_rows(),
                "Reopened archive files kept open across the last checkpoint."
            );
        }
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        Ok(Processor {
            source: opts.source.clone(),
            dlq_keys,
            cmds,
            acker: Some(Acker::start(&opts.source, fence.clone())?),
            commit_ctx: Some(commit::CommitCtx {
                cp: cp.clone(),
                fence: fence.clone(),
                token,
                cmds: Commands::new(&opts.source.redis, opts.source.retry_timeout)?,
                commits: commits.clone(),
                streams: opts.source.streams.clone(),
                group: opts.source.group.clone(),
            }),
            ingest: Ingest::new(Decoder::new(opts.decode.clone()), dedup),
            archive,
            pipelines,
            writer: opts.archive.writer.clone(),
            acks: AckTracker::default(),
            lake,
            checkpoint_interval: opts.checkpoint_interval,
            roll_age: opts.roll_age,
            max_unsaved_bytes: opts.archive.max_buffered_bytes / 4,
            early_checkpoints: [0; 2],
            commits,
            last_commit_unix_ms: None,
            epoch,
            epoch_started: Instant::now(),
            epoch_started_ms: chrono::Utc::now().timestamp_millis(),
            epoch_files: Vec::new(),
            dedup_line,
            // Carried over, so a stream without entries in an epoch keeps its position.
            positions: latest
                .as_ref()
                .map(|m| m.positions.iter().filter_map(|(s, id)| Some((s.clone(), id.parse().ok()?))).collect())
                .unwrap_or_default(),
            totals: latest.as_ref().map(|m| m.totals.clone()).unwrap_or_default(),
            dlq: opts.dlq.clone(),
            fence,
            noack,
            cp,
            durable_exact: Default::default(),
            read_bytes: 0,
            stats,
            merge,
            committed_bounds,
            spans: opts.spans.clone(),
            traces: EpochTraces::default(),
            shard: opts.shard.index,
        })
    }

    /// Processes one batch: archive what is new, DLQ what is invalid, then commit what
    /// rolled and ack what is durable.
    pub async fn process(&mut self, batch: StreamBatch) -> Result<()> {
        let now_us = chrono::Utc::now().timestamp_micros();
        let stream = self.source.streams[batch.stream].as_str();
        let stages = tracing::enabled!(target: STAGES, tracing::Level::TRACE).then_some(now_us);
        let mut rejects: Vec<(usize, Rejection)> = Vec::new();
        let mut deleted = Vec::new();
        // Started now: the decode span runs from here.
        let mut trace = self.spans.batch(batch.read);
        let Processor { ingest, archive, pipelines, stats, .. } = self;
        let before = (stats.accepted, stats.duplicates, stats.invalid);
        let mut links = trace::Traceparents(trace.as_mut());
        for (i, entry) in batch.entries.iter().enumerate() {
            if entry.is_deleted() {
                deleted.push(entry.id);
                continue;
            }
            match ingest.entry(entry, stream, now_us, &mut (&mut (&mut *archive, &mut *pipelines), &mut links))? {
                Admitted::Rejected(r) => {
                    stats.invalid[r.reason.index()] += 1;
                    rejects.push((i, r));
                }
                Admitted::Duplicate => stats.duplicates += 1,
                Admitted::New { beyond_horizon } => {
                    stats.beyond_horizon += u64::from(beyond_horizon);
                    stats.accepted += 1;
                }
            }
        }
        if let Some(t) = trace.as_mut() {
            t.decode_done();
        }
        stats.read += batch.entries.len() as u64;
        self.read_bytes += batch.entries.iter().map(crate::entry::RawEntry::size).sum::<usize>() as u64;
        if stats.streams.len() <= batch.stream {
            stats.streams.resize(batch.stream + 1, Default::default());
        }
        let c = &mut stats.streams[batch.stream];
        c.read += batch.entries.len() as u64;
        c.accepted += stats.accepted - before.0;
        c.duplicates += stats.duplicates - before.1;
        for (k, n) in c.invalid.iter_mut().enumerate() {
            *n += stats.invalid[k] - before.2[k];
        }
        // Events go to the windows in micro-batches of up to 8,192 rows (fewer, larger DataFusion
        // calls; results do not depend on batch boundaries); the tick and commits flush the rest.
        if self.pipelines.buffered() >= crate::window::BATCH_ROWS {
            self.pipelines.process_in_background()?;
        }
        let now_ms = (now_us / 1000).max(0) as u64;
        for e in &batch.entries {
            self.stats.process_latency.record(now_ms.saturating_sub(e.id.ms));
        }
        self.archive.encode_ready().await?;
        if !rejects.is_empty() {
            // Written once per source entry, however often this is retried or re-read.
            let mut pipe = redis::pipe();
            for (i, r) in &rejects {
                dlq::add_to_pipeline(&mut pipe, &self.dlq, &self.dlq_keys[batch.stream], stream, &batch.entries[*i], r);
            }
            self.fence.guard(self.cmds.query::<(), _>(&pipe)).await?;
        }
        if let Some(last) = batch.entries.iter().map(|e| e.id).max() {
            let p = self.positions.entry(stream.to_string()).or_insert(last);
            *p = (*p).max(last);
        }
        if !deleted.is_empty() {
            // Nothing to make durable. Counted by what XACK removed: an XAUTOCLAIM may have
            // dropped (and counted) the same ids already.
            let removed = self.fence.guard(group::ack(&mut self.cmds, &self.source.group, stream, &deleted)).await?;
            self.stats.deleted_pending += removed;
        }
        self.acks.register(batch.stream, batch.entries.iter().filter(|e| !e.is_deleted()).map(|e| e.id).collect());
        // Files that reached their size are staged now (memory stays bounded) and published
        // by the next checkpoint.
        let files = self.archive.commit_rolled().await?;
        self.epoch_files.extend(files);
        if let Some(t) = trace {
            self.finish_trace(t, &batch, (before.0, before.1, before.2.iter().sum()));
        }
        if let Some(dequeued_us) = stages {
            log_stages(&batch, dequeued_us);
        }
        Ok(())
    }

    /// On the term's clock: the pipelines' (windows closed by the clock) and the archive's
    /// (rows waiting in slowly filling files are handed to their encoders).
    pub async fn on_tick(&mut self) -> Result<()> {
        self.pipelines.on_tick(Instant::now())?;
        self.archive.encode_waiting(TICK_ENCODE_ROWS).await
    }

    /// Whether a checkpoint is due: the epoch is `interval` old and read something, or files
    /// reached `roll_age` (they become visible at a checkpoint).
    pub fn checkpoint_due(&mut self, interval: Duration, roll_age: Duration) -> bool {
        let files_due = self.archive.oldest_age().is_some_and(|a| a >= roll_age)
            || self.pipelines.pending_age().is_some_and(|a| a >= roll_age);
        // Rows kept for the next checkpoint's segments are bounded too, and so is the
        // group's pending list (Redis's memory).
        let unsaved_full = self.archive.keep_segments && self.archive.unsaved_bytes() >= self.max_unsaved_bytes;
        let pending_full = self.noack.is_none() && self.acks.pending_ids() as u64 >= self.source.max_pending;
        let work = self.acks.pending_ids() > 0 || !self.epoch_files.is_empty() || files_due;
        if work && self.epoch_started.elapsed() < interval {
            if pending_full {
                self.early_checkpoints[0] += 1;
                return true;
            }
            if unsaved_full {
                self.early_checkpoints[1] += 1;
                return true;
            }
        }
        (work && self.epoch_started.elapsed() >= interval) || self.merge_due(interval)
    }

    /// Claims entries other consumers left pending too long, and processes them.
    pub async fn claim(&mut self) -> Result<()> {
        for stream in 0..self.source.streams.len() {
            let name = self.source.streams[stream].clone();
            let claimed = self.fence.guard(group::claim_idle(&mut self.cmds, &self.source, &name, CLAIM_MAX)).await?;
            self.stats.deleted_pending += claimed.deleted as u64;
            if !claimed.entries.is_empty() {
                tracing::info!(stream = %name, entries = claimed.entries.len(), "Claimed idle entries from other consumers.");
                self.stats.claimed += claimed.entries.len() as u64;
                self.process(StreamBatch { stream, entries: claimed.entries, read: None }).await?;
            }
        }
        Ok(())
    }

    fn committed(&mut self, files: &[CommittedFile], archive: bool) {
        let s = &mut self.stats;
        for f in files {
            if archive {
                (s.files_committed, s.rows_committed, s.bytes_committed) =
                    (s.files_committed + 1, s.rows_committed + f.rows, s.bytes_committed + f.bytes);
            } else {
                (s.table_files_committed, s.table_rows_committed, s.table_bytes_committed) =
                    (s.table_files_committed + 1, s.table_rows_committed + f.rows, s.table_bytes_committed + f.bytes);
            }
            tracing::debug!(path = %f.path, rows = f.rows, bytes = f.bytes, "Committed file.");
        }
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    pub fn dlq_keys(&self) -> &[String] {
        &self.dlq_keys
    }

    /// Whether this term reads without a pending list (`noack`; `auto` chose it).
    pub(crate) fn noack(&self) -> bool {
        self.noack.is_some()
    }

    /// `noack` mode: where the reader starts, per stream.
    pub fn read_after(&self) -> Option<Vec<EntryId>> {
        self.noack.as_ref().map(|p| p.iter().map(|(id, _)| *id).collect())
    }

    pub fn dedup_len(&self) -> usize {
        self.ingest.dedup.len()
    }
}

/// A turn of the term's loop other than a batch (the tick, a checkpoint's halves, a claim),
/// timed for the stage log: a batch that waits in the reader's channel waits for these.
pub(super) struct Turn(Option<(Instant, i64)>);

impl Turn {
    /// Starts timing a turn (when the stage log is on).
    pub(super) fn start() -> Turn {
        Turn(
            tracing::enabled!(target: STAGES, tracing::Level::TRACE)
                .then(|| (Instant::now(), chrono::Utc::now().timestamp_micros())),
        )
    }

    /// Logs the turn if it took at least half a millisecond.
    pub(super) fn done(self, what: &'static str) {
        let Some((started, started_us)) = self.0 else { return };
        let us = started.elapsed().as_micros() as u64;
        if us >= 500 {
            tracing::trace!(target: STAGES, what, started_us, us, "Loop turn.");
        }
    }
}

/// One batch's stages, as unix µs: its read started and returned, the processor took it,
/// and was done with it (its events visible to a live request from then on).
fn log_stages(batch: &StreamBatch, dequeued_us: i64) {
    let us = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let (first, last) = (batch.entries.first().map(|e| e.id), batch.entries.last().map(|e| e.id));
    tracing::trace!(
        target: STAGES,
        stream = batch.stream,
        entries = batch.entries.len(),
        first = %first.unwrap_or_default(),
        last = %last.unwrap_or_default(),
        read_started_us = batch.read.map_or(0, |r| us(r.started)),
        read_returned_us = batch.read.map_or(0, |r| us(r.returned)),
        dequeued_us,
        done_us = chrono::Utc::now().timestamp_micros(),
        "Batch processed."
    );
}

/// The lake's Delta logs: the archive, every pipeline's table and `late_events`, each
/// created when missing. A pipeline whose table has another schema fails alone (with what
/// to do); the archive's or the late table's is a configuration error.
async fn open_delta(lake: &Lake, archive: &str, pipelines: &mut Pipelines) -> Result<DeltaLog> {
    let mut log = DeltaLog::new(lake.clone());
    log.declare(TableDecl {
        root: archive.to_string(),
        schema: crate::sink::archive_schema(),
        // `event_type` is in the files too; as a partition column readers (Polars) accept its
        // directories and prune by it.
        partitions: vec!["event_date".into(), "event_type".into()],
        kind: Kind::Append,
        source: "the event archive".into(),
    });
    for d in pipelines.table_decls() {
        log.declare(d);
    }
    for (root, why) in log.prepare().await? {
        if root == archive || root == crate::window::LATE_TABLE {
            return Err(Error::Config(why));
        }
        pipelines.fail_table(&root, &why);
    }
    Ok(log)
}
