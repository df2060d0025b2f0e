//! `eventide replay --shards S`: the live S-shard path over files, to reproduce a sharded
//! run. Each line goes to the shard its `event_id` routes to ([`ShardId::of_event`], as
//! `eventide gen` publishes), attributed to that shard's stream key (`events:{k}`); each
//! shard has its own dedup and pipelines in partial mode, so lateness is decided against
//! each shard's own watermark, as live. At the end every shard closes its windows and the
//! [`Merger`] merges their states into shard 0's tables; each shard writes its late rows.
//!
//! Every `merge_every` lines the merger also runs over the shards' states as they stand (as
//! the live merger does between checkpoints) and the shards drop what it merged, so the
//! closed states kept stay bounded; the tables do not depend on it.
//!
//! Lines are taken one by one on one thread (decoded twice: once to route, once by the
//! shard), slower than the parallel single-shard replay.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Rejected, ReplaySummary};
use crate::decode::{DecodeOptions, Decoder};
use crate::dedup::Dedup;
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::ingest::{Admitted, Ingest};
use crate::names::ShardId;
use crate::sink::lake::Lake;
use crate::window::merge::Merger;
use crate::window::{BATCH_ROWS, Pipelines};

/// Lines between merge rounds of `eventide replay --shards`.
pub const MERGE_EVERY: u64 = 65_536;

/// Replays `inputs` as `shards.len()` shards (`shards[k]`: shard k's pipelines, all loaded
/// from the same files) into `lake`, merging every `merge_every` lines (0: at the end only).
pub async fn run(
    inputs: &[PathBuf],
    shards: Vec<Pipelines>,
    lake: &Lake,
    dedup_horizon: Duration,
    stream: &str,
    merge_every: u64,
) -> Result<ReplaySummary> {
    let started = Instant::now();
    let (inputs, stream) = (inputs.to_vec(), stream.to_string());
    let (mut shards, mut summary) =
        tokio::task::spawn_blocking(move || replay_blocking(&inputs, shards, dedup_horizon, &stream, merge_every))
            .await
            .map_err(|e| Error::Internal(format!("replay thread: {e}")))??;
    let count = shards.len() as u32;
    for (k, p) in shards.iter_mut().enumerate() {
        let writer = ShardId { index: k as u32, count }.writer("replay");
        summary.files.extend(p.commit(lake, &writer).await?);
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn replay_blocking(
    inputs: &[PathBuf],
    mut shards: Vec<Pipelines>,
    dedup_horizon: Duration,
    stream: &str,
    merge_every: u64,
) -> Result<(Vec<Pipelines>, ReplaySummary)> {
    let count = shards.len() as u32;
    if count == 0 {
        return Err(Error::Config("replay --shards: at least one shard".into()));
    }
    for p in &mut shards {
        p.emit_partials()?;
    }
    let keys: Vec<String> = ShardId::all(count).map(|s| s.stream_key(stream)).collect();
    let now_us = chrono::Utc::now().timestamp_micros();
    let horizon = dedup_horizon.as_secs().max(1);
    let mut ingests: Vec<Ingest> =
        (0..count).map(|_| Ingest::new(Decoder::new(DecodeOptions::default()), Dedup::new(horizon))).collect();
    let mut router = Decoder::new(DecodeOptions::default());
    let mut summary = ReplaySummary::default();
    let mut merger = Merger::default();
    for path in inputs {
        let f =
            std::fs::File::open(path).map_err(|e| Error::Config(format!("{}: cannot open: {e}", path.display())))?;
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| Error::Config(format!("{}: cannot read: {e}", path.display())))?;
            if line.trim().is_empty() {
                continue;
            }
            summary.lines += 1;
            // A line that does not decode is rejected by shard 0 (with its reason).
            let k = router.decode_json(&line, now_us).map_or(0, |ev| ShardId::of_event(&ev.event_id, count)) as usize;
            let id = EntryId { ms: 0, seq: summary.lines };
            match ingests[k].json(&line, &keys[k], id, now_us, &mut shards[k])? {
                Admitted::Rejected(r) => {
                    summary.rejected += 1;
                    if summary.first_rejects.len() < 100 {
                        let (file, line) = (path.clone(), n as u64 + 1);
                        summary.first_rejects.push(Rejected { file, line, reason: r.reason, detail: r.detail });
                    }
                }
                Admitted::Duplicate => summary.duplicates += 1,
                Admitted::New { .. } => summary.accepted += 1,
            }
            if shards[k].buffered() >= BATCH_ROWS {
                shards[k].process()?;
            }
            if merge_every > 0 && summary.lines % merge_every == 0 {
                merge_round(&mut shards, &mut merger, false)?;
            }
        }
    }
    let round = merge_round(&mut shards, &mut merger, true)?;
    if !round.caught_up {
        return Err(Error::Internal("replay: a window was left unmerged at the end of the input".into()));
    }
    Ok((shards, summary))
}

/// Merges what every shard has closed (`end`: every window closes first), then lets the
/// shards drop what was merged.
fn merge_round(shards: &mut [Pipelines], merger: &mut Merger, end: bool) -> Result<crate::window::merge::MergeRound> {
    let mut views = Vec::with_capacity(shards.len());
    for p in shards.iter_mut() {
        match end {
            true => p.flush()?,
            false => p.process()?,
        }
        views.push(Some(p.shard_windows()?));
    }
    let round = merger.round(&mut shards[0], &views)?;
    for p in shards.iter_mut() {
        p.prune_partials(merger.keep())?;
    }
    Ok(round)
}
