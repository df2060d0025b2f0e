//! The processor: one batch at a time through decode → dedup → archive, rejects to the DLQ,
//! commits, and acks for batches that became durable.

use std::time::{Duration, Instant};

use crate::ack::AckTracker;
use crate::decode::{Decoder, Rejection};
use crate::dedup::{Dedup, Verdict};
use crate::error::{Error, Result};
use crate::event::StreamBatch;
use crate::metrics::Stats;
use crate::sink::archive::{Archive, CommittedFile};
use crate::sink::dlq;
use crate::sink::lake::Lake;
use crate::source::SourceOptions;
use crate::source::acker::Acker;
use crate::source::commands::Commands;
use crate::source::group;
use crate::state;
use crate::window::Pipelines;

use super::PipelineOptions;

/// Claimed entries processed per stream per claim round.
const CLAIM_MAX: usize = 10_000;

pub(super) struct Processor {
    source: SourceOptions,
    dlq_keys: Vec<String>,
    cmds: Commands,
    acker: Option<Acker>,
    decoder: Decoder,
    dedup: Dedup,
    archive: Archive,
    /// Windowed aggregations over the accepted events.
    pub pipelines: Pipelines,
    writer: String,
    acks: AckTracker,
    lake: Lake,
    state_interval: Duration,
    last_snapshot: Option<Instant>,
    last_commit_unix_ms: Option<i64>,
    /// Dedup learnt ids since the last snapshot.
    dedup_dirty: bool,
    pub stats: Stats,
    /// Publish → durable at 1 ms resolution, for the run summary.
    pub durable_exact: crate::metrics::LatencyHistogram,
}

impl Processor {
    /// Opens the lake, loads saved dedup state, connects and creates the consumer groups.
    pub async fn start(opts: &PipelineOptions) -> Result<Self> {
        let lake = Lake::open_with(&opts.lake, &opts.lake_options)?;
        let dedup = state::load_dedup(&lake, &opts.source.group, opts.dedup_horizon.as_secs()).await?;
        if !dedup.is_empty() {
            tracing::info!(ids = dedup.len(), "Loaded dedup state.");
        }
        let mut cmds = Commands::new(&opts.source.redis_url, opts.source.retry_timeout)?;
        let created = group::ensure_groups(&mut cmds, &opts.source).await?;
        for s in created {
            tracing::info!(stream = %s, group = %opts.source.group, start = %opts.source.start_id, "Created consumer group.");
        }
        let pipelines = match &opts.pipelines {
            Some(dir) => Pipelines::load(dir).await?,
            None => Pipelines::new(Vec::new())?,
        };
        if !pipelines.is_empty() {
            tracing::info!(pipelines = ?pipelines, "Loaded pipelines.");
        }
        let dlq_keys = opts.source.streams.iter().map(|s| dlq::dlq_key(opts.dlq_stream.as_deref(), s)).collect();
        Ok(Processor {
            source: opts.source.clone(),
            dlq_keys,
            cmds,
            acker: Some(Acker::start(&opts.source)?),
            decoder: Decoder::new(opts.decode.clone()),
            dedup,
            archive: Archive::new(lake.clone(), opts.archive.clone())?,
            pipelines,
            writer: opts.archive.writer.clone(),
            acks: AckTracker::default(),
            lake,
            state_interval: opts.state_interval,
            last_snapshot: Some(Instant::now()),
            last_commit_unix_ms: None,
            dedup_dirty: false,
            durable_exact: Default::default(),
            stats: Stats { streams: vec![Default::default(); opts.source.streams.len()], ..Stats::default() },
        })
    }

    /// Processes one batch: archive what is new, DLQ what is invalid, then commit what
    /// rolled and ack what is durable.
    pub async fn process(&mut self, batch: StreamBatch) -> Result<()> {
        let now_us = chrono::Utc::now().timestamp_micros();
        let seq = self.acks.next_seq();
        let stream = self.source.streams[batch.stream].as_str();
        let mut rejects: Vec<(usize, Rejection)> = Vec::new();
        let mut deleted = Vec::new();
        let Processor { decoder, dedup, archive, pipelines, stats, dedup_dirty: dirty, .. } = self;
        let before = (stats.accepted, stats.duplicates, stats.invalid);
        for (i, entry) in batch.entries.iter().enumerate() {
            if entry.is_deleted() {
                deleted.push(entry.id);
                continue;
            }
            match decoder.decode(entry, now_us) {
                Err(r) => {
                    stats.invalid[r.reason.index()] += 1;
                    rejects.push((i, r));
                }
                Ok(ev) => match dedup.check(&ev.event_id, ev.event_time_us, now_us) {
                    Verdict::Duplicate => stats.duplicates += 1,
                    verdict => {
                        stats.beyond_horizon += u64::from(verdict == Verdict::BeyondHorizon);
                        archive.append(&ev, stream, entry.id, now_us, seq)?;
                        pipelines.append(&ev, stream, entry.id);
                        stats.accepted += 1;
                        *dirty = true;
                    }
                },
            }
        }
        stats.read += batch.entries.len() as u64;
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
        if self.pipelines.buffered() >= crate::replay::BATCH_ROWS {
            self.pipelines.process()?;
        }
        let now_ms = (now_us / 1000).max(0) as u64;
        for e in &batch.entries {
            self.stats.process_latency.record(now_ms.saturating_sub(e.id.ms));
        }
        self.archive.encode_ready().await?;
        if !rejects.is_empty() {
            let mut pipe = redis::pipe();
            for (i, r) in &rejects {
                dlq::add_to_pipeline(&mut pipe, &self.dlq_keys[batch.stream], stream, &batch.entries[*i], r);
            }
            self.cmds.query::<(), _>(&pipe).await?;
        }
        if !deleted.is_empty() {
            // Nothing to make durable. Counted by what XACK removed: an XAUTOCLAIM may have
            // dropped (and counted) the same ids already.
            let removed = group::ack(&mut self.cmds, &self.source.group, stream, &deleted).await?;
            self.stats.deleted_pending += removed;
        }
        self.acks.register(batch.stream, batch.entries.iter().filter(|e| !e.is_deleted()).map(|e| e.id).collect());
        let files = self.archive.commit_rolled().await?;
        self.committed(&files, true);
        self.ack_durable().await.map(drop)
    }

    /// Commits every open file, saves dedup state (a full snapshot when `final_stop` or when
    /// the last is older than the state interval, else the ids added since; nothing
    /// uncommitted remains at this point, so saved state only remembers durable ids), then
    /// acks everything read.
    pub async fn commit_all(&mut self, final_stop: bool) -> Result<()> {
        let t = Instant::now();
        let mut files = self.archive.commit_all().await?;
        self.committed(&files, true);
        let t_files = t.elapsed();
        let snapshot_due = self.last_snapshot.is_none_or(|s| s.elapsed() >= self.state_interval);
        if self.dedup_dirty && (final_stop || snapshot_due) {
            state::save_dedup(&self.lake, &self.source.group, &mut self.dedup).await?;
            self.last_snapshot = Some(Instant::now());
            self.dedup_dirty = false;
        } else {
            state::save_delta(&self.lake, &self.source.group, &mut self.dedup).await?;
        }
        let t_state = t.elapsed();
        // Pipeline tables after the dedup state: the window between archive files and the
        // state that remembers their ids stays as short as it can (see ARCHITECTURE.md).
        let tables = self.pipelines.commit(&self.lake, &self.writer).await?;
        self.committed(&tables, false);
        files.extend(tables);
        let acked = self.ack_durable().await?;
        self.stats.commit_duration.record(t.elapsed().as_millis() as u64);
        self.last_commit_unix_ms = Some(chrono::Utc::now().timestamp_millis());
        if !files.is_empty() {
            tracing::info!(
                files = files.len(),
                rows = files.iter().map(|f| f.rows).sum::<u64>(),
                bytes = files.iter().map(|f| f.bytes).sum::<u64>(),
                ack_queued = acked,
                files_ms = t_files.as_millis() as u64,
                state_ms = (t_state - t_files).as_millis() as u64,
                "Committed."
            );
        }
        Ok(())
    }

    /// Claims entries other consumers left pending too long, and processes them.
    pub async fn claim(&mut self) -> Result<()> {
        for stream in 0..self.source.streams.len() {
            let name = self.source.streams[stream].clone();
            let claimed = group::claim_idle(&mut self.cmds, &self.source, &name, CLAIM_MAX).await?;
            self.stats.deleted_pending += claimed.deleted as u64;
            if !claimed.entries.is_empty() {
                tracing::info!(stream = %name, entries = claimed.entries.len(), "Claimed idle entries from other consumers.");
                self.stats.claimed += claimed.entries.len() as u64;
                self.process(StreamBatch { stream, entries: claimed.entries }).await?;
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

    /// Hands every batch below the durable frontier to the acker; returns how many entries.
    async fn ack_durable(&mut self) -> Result<u64> {
        let mut n = 0;
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        for (stream, ids) in self.acks.take_durable(self.archive.min_open_seq()) {
            n += ids.len() as u64;
            for id in &ids {
                let ms = now_ms.saturating_sub(id.ms);
                self.stats.durable_latency.record(ms);
                self.durable_exact.record(ms);
            }
            let sent = match self.acker.as_mut() {
                Some(a) => a.send(stream, ids).await,
                None => false,
            };
            if !sent {
                // The acker stopped: its error says why.
                return match self.acker.take() {
                    Some(a) => a.finish().await.and(Err(Error::Internal("the acker stopped".into()))),
                    None => Err(Error::Internal("the acker stopped".into())),
                };
            }
        }
        Ok(n)
    }

    /// Waits for every queued acknowledgement; call last.
    pub async fn finish_acks(&mut self) -> Result<()> {
        if let Some(a) = self.acker.take() {
            self.stats.acked += a.finish().await?;
        }
        Ok(())
    }

    pub fn archive_age(&self) -> Option<Duration> {
        self.archive.oldest_age()
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    pub fn dlq_keys(&self) -> &[String] {
        &self.dlq_keys
    }

    /// Publishes the counters for the HTTP endpoints.
    pub fn publish(&self, registry: &crate::metrics::Registry) {
        let pipelines: Vec<crate::metrics::PipelineMetrics> = self
            .pipelines
            .queries()
            .iter()
            .zip(self.pipelines.pending_by_pipeline())
            .map(|(q, pending_rows)| crate::metrics::PipelineMetrics {
                name: q.spec.name.clone(),
                stats: q.stats.clone(),
                watermark_us: q.watermark(),
                open_windows: q.open_windows(),
                state_bytes: q.state_bytes(),
                pending_rows,
            })
            .collect();
        registry.update(|s| {
            s.stats = self.stats.clone();
            s.stream_names.clone_from(&self.source.streams);
            s.updated = Some(Instant::now());
            s.dedup_ids = self.dedup.len() as u64;
            s.dedup_bytes = self.dedup.memory_bytes() as u64;
            s.unacked = self.acks.pending_ids() as u64;
            s.open_archive_rows = self.archive.open_rows();
            s.last_commit_unix_ms = self.last_commit_unix_ms;
            s.pipelines = pipelines;
        });
    }

    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    pub fn log_progress(&self, elapsed: Duration) {
        let s = &self.stats;
        let rate = s.read as f64 / elapsed.as_secs_f64().max(1e-3);
        tracing::info!(
            read = s.read,
            rate = rate as u64,
            accepted = s.accepted,
            duplicates = s.duplicates,
            invalid = s.invalid_total(),
            committed_rows = s.rows_committed,
            files = s.files_committed,
            open_rows = self.archive.open_rows(),
            unacked = self.acks.pending_ids(),
            dedup_ids = self.dedup.len(),
            "Progress."
        );
    }
}
