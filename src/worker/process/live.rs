//! Shard 0's live view of pipelines over several shards ([`crate::window::live`]): the other
//! shards' windows as of their latest checkpoints, read while a dashboard is watching (a
//! live request within [`WATCHED`]) at most once per checkpoint interval, cached by epoch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Processor;
use super::merge::manifest_of;
use crate::checkpoint::{Checkpoints, WindowBound};
use crate::error::{Error, Result};
use crate::window::live::{LiveRequest, LiveRows, ShardLive, Starts};

/// How long after a live request the merger keeps the other shards' windows fresh.
const WATCHED: Duration = Duration::from_secs(60);

/// The other shards' windows for the live view.
#[derive(Default)]
pub(in crate::worker) struct LiveCache {
    /// Per shard: the epoch read and its windows.
    shards: BTreeMap<u32, (u64, ShardLive)>,
    refreshed: Option<Instant>,
    asked: Option<Instant>,
}

impl Processor {
    /// Rows of pipeline `name` not in its table yet; over several shards (shard 0), merged
    /// with the other shards' latest checkpointed windows.
    /// (Over one shard, only the open windows starting in `starts`.)
    pub(in crate::worker) async fn live_rows(&mut self, name: &str, starts: Starts) -> Result<Option<LiveRows>> {
        let Some(side) = self.merge.as_mut() else { return self.pipelines.live_rows(name, starts) };
        // Nobody watched for a while (the merger stopped refreshing): read now, not stale.
        let stale = side.live.refreshed.is_none_or(|t| t.elapsed() >= WATCHED);
        side.live.asked = Some(Instant::now());
        if stale {
            self.refresh_live().await?;
        }
        let Some(side) = self.merge.as_ref() else { return Ok(None) };
        let merged = side.merger.merged().get(name).copied().unwrap_or(i64::MIN);
        let others: Vec<&ShardLive> = side.live.shards.values().map(|(_, s)| s).collect();
        self.pipelines.live_rows_across(name, merged, &others)
    }

    /// Answers a live request. An error of the request goes to the asker (the API answers
    /// 500), not to the term.
    pub(in crate::worker) async fn answer_live(&mut self, req: LiveRequest) {
        let got = std::time::Instant::now();
        let got_us = chrono::Utc::now().timestamp_micros();
        let rows = self.live_rows(&req.pipeline, req.starts).await;
        tracing::trace!(
            target: crate::telemetry::STAGES,
            pipeline = %req.pipeline,
            us = got.elapsed().as_micros() as u64,
            got_us,
            "Live request answered."
        );
        let _ = req.reply.send(rows);
    }

    /// Whether the live view's cache is watched and older than `interval`.
    pub(super) fn live_refresh_due(&self, interval: Duration) -> bool {
        self.merge.as_ref().is_some_and(|m| {
            m.live.asked.is_some_and(|t| t.elapsed() < WATCHED)
                && m.live.refreshed.is_none_or(|t| t.elapsed() >= interval)
        })
    }

    /// Reads the other shards' windows whose checkpoint changed since the last read. The
    /// attempt counts as the refresh even when it fails, so a lake that errors is not asked
    /// again at every live request (the term's loop waits for it).
    pub(super) async fn refresh_live(&mut self) -> Result<()> {
        if let Some(side) = self.merge.as_mut() {
            side.live.refreshed = Some(Instant::now());
        }
        let count = self.cp.shard.count;
        for index in 1..count {
            let cached = self.merge.as_ref().and_then(|m| m.live.shards.get(&index)).map(|(e, _)| *e);
            let read = saved_windows(&self.cp, index, cached).await?;
            let read = match read {
                Read::New { epoch, windows, partials, bounds } => {
                    Some((epoch, self.pipelines.saved_live_states(&windows, partials.as_deref(), &bounds)?))
                }
                Read::Same => continue,
                Read::Nothing => None,
            };
            let Some(side) = self.merge.as_mut() else { return Ok(()) };
            match read {
                Some(new) => side.live.shards.insert(index, new),
                None => side.live.shards.remove(&index),
            };
        }
        Ok(())
    }
}

enum Read {
    /// The cached epoch is still the latest.
    Same,
    /// No checkpoint (or no window state) yet.
    Nothing,
    /// A newer checkpoint: its window state and closed states, and its bounds.
    New { epoch: u64, windows: bytes::Bytes, partials: Option<bytes::Bytes>, bounds: BTreeMap<String, WindowBound> },
}

/// Shard `index`'s window blobs as of its latest checkpoint.
async fn saved_windows(cp: &Checkpoints, index: u32, cached: Option<u64>) -> Result<Read> {
    let mut attempt = 0;
    loop {
        let Some(m) = manifest_of(cp, index).await? else { return Ok(Read::Nothing) };
        if cached == Some(m.epoch) {
            return Ok(Read::Same);
        }
        let Some(windows) = &m.windows else { return Ok(Read::Nothing) };
        // The shard may commit again and prune these blobs meanwhile: read its line again.
        let blobs = async {
            let w = cp.get_blob(windows).await?;
            let p = match &m.partials {
                Some(path) => Some(cp.get_blob(path).await?),
                None => None,
            };
            Ok::<_, Error>((w, p))
        };
        match blobs.await {
            Ok((windows, partials)) => {
                return Ok(Read::New { epoch: m.epoch, windows, partials, bounds: m.window_bounds });
            }
            Err(Error::State { .. }) if attempt < 5 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}
