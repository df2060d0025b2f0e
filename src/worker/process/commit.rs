//! A checkpoint in two halves. The first ([`Processor::begin_checkpoint`]) runs on the
//! term's loop while nothing else does: it cuts the epoch (the files, every stage's state
//! and the entries read so far) and names the state blobs; the next epoch starts right
//! after it. The second ([`write`]) needs nothing of the processor: it writes the blobs,
//! commits the manifest, publishes the files, moves the group (`noack`) and prunes, and runs
//! as a task while the loop reads, processes and answers on ([`Writing`]). One is in flight
//! at a time; its end ([`Processor::end_checkpoint`]) acks (group mode) and counts.
//!
//! A checkpoint that commits pipeline table files is written inline: the aggregates API
//! shows a closed window from its table buffer until its file is published, and answers
//! between the halves would miss it. So does the final one, and every checkpoint of a shard
//! of several (the merger reads the shards' manifests).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::Processor;
use crate::checkpoint::{self, Checkpointed, Checkpoints, EpochBlobs, Manifest};
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::sink::archive::CommittedFile;
use crate::sink::lake::Placement;
use crate::source::commands::Commands;
use crate::source::group;
use crate::source::lease::Fence;
use crate::telemetry::CheckpointTrace;
use opentelemetry::trace::SpanContext;

/// What the background half needs: the checkpoint line, the lease, its own Redis
/// connection (`noack`: the group's position moves after the commit).
pub(super) struct CommitCtx {
    pub cp: Checkpoints,
    pub fence: Fence,
    pub token: u64,
    pub cmds: Commands,
    pub commits: Arc<AtomicU64>,
    pub streams: Vec<String>,
    pub group: String,
}

/// An epoch cut by the first half, for the second.
pub(in crate::worker) struct Prepared {
    m: Manifest,
    blobs: EpochBlobs,
    files: Vec<CommittedFile>,
    tables: Vec<CommittedFile>,
    /// The entries the epoch holds, per stream.
    taken: Vec<(usize, Vec<EntryId>)>,
    /// `noack`: per stream, the position and `entries-read` to set.
    noack: Option<Vec<(EntryId, Option<u64>)>>,
    /// Written on the loop (see the module docs).
    inline: bool,
    started: Instant,
    /// The first half's time in its two phases.
    t_files: Duration,
    t_state: Duration,
    /// Of the state phase: the open files' pieces, the windows, the rest (dedup, merge).
    t_parts: [Duration; 3],
    trace: CheckpointTrace,
    traced: Vec<SpanContext>,
}

/// A written epoch, back to the processor.
pub(in crate::worker) struct Written {
    ctx: CommitCtx,
    p: Prepared,
}

/// A checkpoint's second half in flight (dropped: stopped, as by a crash; the next holder's
/// recovery finishes or discards it).
pub(in crate::worker) struct Writing(tokio::task::JoinHandle<Result<Written>>);

impl Future for Writing {
    type Output = Result<Written>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.map_err(|e| Error::Internal(format!("checkpoint writer: {e}")))?)
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Processor {
    /// A checkpoint: the first half now, the second in the background (returned, for the
    /// loop to wait on before the next) or inline (see the module docs). `None`: nothing
    /// to write, or written.
    pub(in crate::worker) async fn checkpoint(&mut self, final_stop: bool) -> Result<Option<Writing>> {
        if self.commit_ctx.is_none() {
            return Err(Error::Internal("a checkpoint began while another was being written".into()));
        }
        let Some(p) = self.begin_checkpoint(final_stop).await? else { return Ok(None) };
        let Some(ctx) = self.commit_ctx.take() else { return Err(Error::Internal("checkpoint writer lost".into())) };
        if p.inline {
            let w = write(ctx, p).await?;
            self.end_checkpoint(w).await?;
            return Ok(None);
        }
        Ok(Some(Writing(tokio::spawn(write(ctx, p)))))
    }

    /// Both halves, on the loop.
    pub async fn commit_all(&mut self, final_stop: bool) -> Result<()> {
        if let Some(w) = self.checkpoint(final_stop).await? {
            let w = w.await?;
            self.end_checkpoint(w).await?;
        }
        Ok(())
    }

    /// The first half: stages every archive file due (and, for a stop, every one) and
    /// pipeline table file due, saves dedup (a full snapshot when `final_stop` or when the
    /// last one is older than the state interval, else the ids added since), the windows and
    /// the open files' new rows, and takes the entries read; the next epoch starts.
    async fn begin_checkpoint(&mut self, final_stop: bool) -> Result<Option<Prepared>> {
        let t = Instant::now();
        let mut trace = self.spans.checkpoint();
        if self.pipelines.partial() {
            // One shard of several: the merge and the bounds need the windows as of now (a
            // single run's pipelines take the buffered events on the window thread, in
            // `Pipelines::save`).
            self.pipelines.process()?;
        }
        let merge_news = self.merge_before_checkpoint(final_stop, self.checkpoint_interval).await?;
        let mut files = std::mem::take(&mut self.epoch_files);
        // Files that reached their age (all at a stop) are finished; the others stay open and
        // their new rows are saved with the checkpoint.
        let finish_all = final_stop || !self.archive.keep_segments;
        files.extend(match finish_all {
            true => self.archive.commit_all().await?,
            false => self.archive.commit_older(self.roll_age).await?,
        });
        let placement = self.archive.placement.clone();
        let tables = match finish_all || self.pipelines.pending_age().is_some_and(|a| a >= self.roll_age) {
            true => self.pipelines.commit_to(&self.lake, &self.writer, &placement).await?,
            false => Vec::new(),
        };
        let t_files = t.elapsed();
        trace.phase("files");
        if files.is_empty() && tables.is_empty() && self.acks.pending_ids() == 0 && !merge_news {
            return Ok(None);
        }
        let epoch = self.epoch;
        let mut m: Manifest = checkpoint::manifest(&self.cp, epoch, self.epoch_started_ms);
        let mut blobs = self.cp.epoch_blobs(epoch);
        // The stages' parts: archive files kept open, the pipelines' windows and tables.
        let t_part = Instant::now();
        self.archive.save(&mut blobs, &mut m).await?;
        let t_open = t_part.elapsed();
        self.pipelines.save(&mut blobs, &mut m).await?;
        let t_windows = t_part.elapsed() - t_open;
        self.save_merge_progress(&mut blobs, &mut m)?;
        m.files = checkpoint::file_entries(&files);
        m.files.extend(checkpoint::file_entries(&tables));
        self.dedup_line.full |= final_stop;
        checkpoint::DedupPart { dedup: &mut self.ingest.dedup, line: &mut self.dedup_line }
            .save(&mut blobs, &mut m)
            .await?;
        m.positions = self.positions.iter().map(|(s, id)| (s.clone(), id.to_string())).collect();
        self.totals.archived_rows += files.iter().map(|f| f.rows).sum::<u64>();
        self.totals.table_rows += tables.iter().map(|f| f.rows).sum::<u64>();
        self.totals.files += (files.len() + tables.len()) as u64;
        m.totals = self.totals.clone();
        // Everything read so far is in this epoch.
        let taken = self.acks.take_all();
        let noack = self.noack.clone().map(|mut positions| {
            for (stream, ids) in &taken {
                let (Some(&max), Some((at, read))) = (ids.iter().max(), positions.get_mut(*stream)) else { continue };
                *at = (*at).max(max);
                *read = read.map(|r| r + ids.len() as u64);
            }
            positions
        });
        let t_state = t.elapsed() - t_files;
        let t_parts = [t_open, t_windows, t_state.saturating_sub(t_open + t_windows)];
        trace.phase("state");
        self.epoch += 1;
        self.epoch_started = Instant::now();
        self.epoch_started_ms = chrono::Utc::now().timestamp_millis();
        self.archive.placement = Placement::Staged(self.cp.staging_prefix(self.epoch));
        let inline = final_stop || !tables.is_empty() || self.pipelines.partial();
        let traced = self.traces.take();
        Ok(Some(Prepared {
            m,
            blobs,
            files,
            tables,
            taken,
            noack,
            inline,
            started: t,
            t_files,
            t_state,
            t_parts,
            trace,
            traced,
        }))
    }

    /// After the second half: acks (group mode: hands the epoch's entries to the acker), and
    /// counts.
    pub(in crate::worker) async fn end_checkpoint(&mut self, w: Written) -> Result<()> {
        let Written { ctx, p } = w;
        self.commit_ctx = Some(ctx);
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        for id in p.taken.iter().flat_map(|(_, ids)| ids) {
            let ms = now_ms.saturating_sub(id.ms);
            self.stats.durable_latency.record(ms);
            self.durable_exact.record(ms);
        }
        let acked: u64 = p.taken.iter().map(|(_, ids)| ids.len() as u64).sum();
        match p.noack {
            Some(positions) => {
                self.noack = Some(positions);
                self.stats.acked += acked;
            }
            None => self.ack(p.taken).await?,
        }
        self.committed(&p.files, true);
        self.committed(&p.tables, false);
        let t = p.started.elapsed();
        self.stats.commit_duration.record(t.as_millis() as u64);
        self.stats.checkpoints += 1;
        self.stats.checkpoints_inline += u64::from(p.inline);
        self.stats.checkpoint_epoch = p.m.epoch;
        self.last_commit_unix_ms = Some(chrono::Utc::now().timestamp_millis());
        let (rows, bytes) = p.files.iter().chain(&p.tables).fold((0, 0), |(r, b), f| (r + f.rows, b + f.bytes));
        tracing::info!(
            epoch = p.m.epoch,
            files = p.m.files.len(),
            rows,
            bytes,
            ack_queued = acked,
            inline = p.inline,
            files_ms = p.t_files.as_millis() as u64,
            state_ms = p.t_state.as_millis() as u64,
            open_files_ms = p.t_parts[0].as_millis() as u64,
            windows_ms = p.t_parts[1].as_millis() as u64,
            dedup_ms = p.t_parts[2].as_millis() as u64,
            total_ms = t.as_millis() as u64,
            "Checkpoint committed."
        );
        p.trace.finish(p.m.epoch, p.m.files.len(), rows, bytes, &p.traced);
        Ok(())
    }
}

/// The second half: the blobs, the manifest (the commit point), the files in place, then
/// (`noack`) the group's position and the pruning of older checkpoints; every step inside
/// the lease.
async fn write(mut ctx: CommitCtx, mut p: Prepared) -> Result<Written> {
    let (cp, fence) = (&ctx.cp, &ctx.fence);
    let blobs = std::mem::replace(&mut p.blobs, cp.epoch_blobs(p.m.epoch));
    fence.guard(blobs.write(cp.lake())).await?;
    let m = &mut p.m;
    (m.token, m.lease_deadline_ms) = (ctx.token, Some(fence.deadline_unix_ms()));
    m.created_ms = chrono::Utc::now().timestamp_millis();
    fence.guard(cp.commit(m)).await?;
    p.trace.phase("manifest");
    // Committed: from here on a crash (or a successor's recovery) rolls forward to this state.
    // File by file, each inside the lease (renewed meanwhile): an epoch of large files on
    // an object store may take longer than one lease to copy into place.
    for f in &m.files {
        fence.guard(cp.publish_file(f)).await?;
    }
    fence.guard(cp.commit_tables(m)).await?;
    p.trace.phase("publish");
    cp.published(m);
    if !p.tables.is_empty() {
        // The aggregates API reads the tables again.
        ctx.commits.fetch_add(1, Ordering::Release);
    }
    if let Some(positions) = p.noack.as_mut() {
        // No pending list: move the group's position to what the checkpoint holds.
        for (stream, _) in p.taken.iter().filter(|(_, ids)| !ids.is_empty()) {
            let (Some((at, read)), Some(name)) = (positions.get_mut(*stream), ctx.streams.get(*stream)) else {
                continue;
            };
            *read = fence.guard(group::set_position(&mut ctx.cmds, name, &ctx.group, *at, *read)).await?;
        }
        p.trace.phase("ack");
    }
    fence.guard(cp.prune(m)).await?;
    Ok(Written { ctx, p })
}
