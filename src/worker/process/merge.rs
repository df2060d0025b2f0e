//! The processor's part in windows across shards ([`crate::window::merge`]): every shard
//! commits its closed windows' partial states and bounds with its manifest and drops the
//! states the merger has; shard 0's lease holder runs the merger before its checkpoints, so
//! the merged rows and the merger's progress commit together.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Processor;
use crate::checkpoint::{Checkpoints, EpochBlobs, Manifest};
use crate::error::Result;
use crate::names::ShardId;
use crate::window::merge::{self, MergeRound, ShardWindows};

/// The merger's side of a shard-0 processor.
pub(in crate::worker) struct MergeSide {
    pub merger: merge::Merger,
    pub last_round: Option<Instant>,
    pub last: MergeRound,
    /// Per shard, the epoch and windows of its checkpoint read last.
    pub cache: BTreeMap<u32, (u64, ShardWindows)>,
    /// The other shards' windows for the live view.
    pub live: super::live::LiveCache,
}

impl Processor {
    /// Whether these pipelines merge across shards and this processor runs the merger.
    pub(super) fn runs_merger(&self) -> bool {
        self.merge.is_some()
    }

    /// A checkpoint is due for the merge, at most once per checkpoint interval: this shard
    /// closed windows since its last checkpoint (the merger learns it from the checkpoint),
    /// or (shard 0) a merge round is due, whatever was read.
    pub(super) fn merge_due(&self, interval: Duration) -> bool {
        if self.epoch_started.elapsed() < interval {
            return false;
        }
        let round_due = self.merge.as_ref().is_some_and(|m| m.last_round.is_none_or(|t| t.elapsed() >= interval));
        round_due || self.pipelines.window_bounds().is_some_and(|b| b != self.committed_bounds)
    }

    /// Before a checkpoint, pipelines processed: shard 0 merges what every shard has closed
    /// (into its table buffers); other shards drop the states the merger has. Returns whether
    /// the checkpoint must be written even if nothing else is new.
    pub(super) async fn merge_before_checkpoint(&mut self, force: bool, interval: Duration) -> Result<bool> {
        if !self.pipelines.partial() {
            return Ok(false);
        }
        let count = self.cp.shard.count;
        let mut progressed = false;
        if let Some(side) = self.merge.as_ref()
            && (force || side.last_round.is_none_or(|t| t.elapsed() >= interval))
        {
            let mut views = vec![Some(self.pipelines.shard_windows()?)];
            for index in 1..count {
                views.push(shard_view(&self.cp, index, side.cache.get(&index)).await?);
            }
            let Some(side) = self.merge.as_mut() else { return Ok(false) };
            for (index, v) in views.iter().enumerate().skip(1) {
                if let (Some(v), Some(epoch)) = (v, v.as_ref().map(|v| v.epoch)) {
                    side.cache.insert(index as u32, (epoch, v.clone()));
                }
            }
            side.last = side.merger.round(&mut self.pipelines, &views)?;
            side.last_round = Some(Instant::now());
            progressed = side.last.progressed;
            self.stats.merged_windows += side.last.windows;
            self.stats.merge_waiting_end_us = side.last.oldest_waiting;
            let keep = side.merger.keep().clone();
            self.pipelines.prune_partials(&keep)?;
            // For the live view only: its failure is not the checkpoint's.
            if self.live_refresh_due(interval)
                && let Err(e) = self.refresh_live().await
            {
                tracing::warn!(error = %e, "Could not read the other shards' windows for the live view.");
            }
        } else if self.merge.is_none()
            && self.pipelines.has_partials()
            && let Some(m) = manifest_of(&self.cp, 0).await?
        {
            self.pipelines.prune_partials(&m.merge_keep)?;
        }
        let moved = self.pipelines.window_bounds().is_some_and(|b| b != self.committed_bounds);
        Ok(progressed || moved)
    }

    /// After the pipelines' part of `m` (their window states and bounds): (shard 0) the
    /// merger's progress, committed with the rows it merged.
    pub(super) fn save_merge_progress(&mut self, out: &mut EpochBlobs, m: &mut Manifest) -> Result<()> {
        if !self.pipelines.partial() {
            return Ok(());
        }
        if let Some(side) = &self.merge {
            m.merged = side.merger.merged().clone();
            m.merge_keep = side.merger.keep().clone();
            if let Some(carry) = side.merger.carry() {
                let blob = merge::encode_carry(carry)?;
                m.merger = Some(out.put("merger.bin", blob));
            }
        }
        self.committed_bounds.clone_from(&m.window_bounds);
        Ok(())
    }

    /// At the end of a bounded input (shard 0): merges until every shard has closed and
    /// committed every window, or `timeout` passes (the rest is merged by the next run).
    pub(in crate::worker) async fn finish_merge(&mut self, timeout: Duration) -> Result<()> {
        if !self.runs_merger() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        while !self.merge.as_ref().is_some_and(|m| m.last.caught_up) {
            if Instant::now() >= deadline {
                tracing::warn!(
                    "Not every shard has closed its windows yet: the windows they hold are merged by the next run \
                     of shard 0."
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.commit_all(true).await?;
        }
        Ok(())
    }
}

/// Shard `index`'s latest checkpoint (its line beside `cp`'s).
pub(super) async fn manifest_of(cp: &Checkpoints, index: u32) -> Result<Option<Manifest>> {
    let shard = ShardId { index, count: cp.shard.count };
    Checkpoints::new(cp.lake().clone(), shard, &cp.group, &cp.consumer).latest().await
}

/// Shard `index`'s windows as of its latest checkpoint (`None` before its first); `cached`:
/// the ones read last time, with their epoch.
async fn shard_view(
    cp: &Checkpoints,
    index: u32,
    cached: Option<&(u64, ShardWindows)>,
) -> Result<Option<ShardWindows>> {
    let mut attempt = 0;
    loop {
        let Some(m) = manifest_of(cp, index).await? else { return Ok(None) };
        if let Some((_, v)) = cached.filter(|(e, _)| *e == m.epoch) {
            return Ok(Some(v.clone()));
        }
        let states = match &m.partials {
            // The shard may have committed again and pruned this blob meanwhile: read its
            // latest checkpoint again.
            Some(path) => match cp.get_blob(path).await {
                Ok(bytes) => merge::decode_states(&bytes)?,
                Err(crate::Error::State { .. }) if attempt < 5 => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
            },
            None => Default::default(),
        };
        return Ok(Some(ShardWindows { epoch: m.epoch, bounds: m.window_bounds, states }));
    }
}
