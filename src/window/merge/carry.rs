//! The merger's state for `emit = "updates"` across shards: per window not final yet, every
//! shard's latest written state and the last revision merged. A shard writes a window's
//! state when its watermark reaches a slide boundary (the first write, then each correction;
//! `window::query::updates`); the merger takes the boundaries in order up to the lowest
//! shard bound, replaces the states each shard wrote there, and writes the next revision of
//! every window some shard changed: revision 0 at its first write anywhere. The revisions
//! depend on each shard's input only, not on when the merger ran. A window is dropped once
//! every shard is a slide past its `end + allowed_lateness` (closed everywhere). Committed
//! with shard 0's checkpoint (`merger.bin`).

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::RecordBatch;

use super::ShardWindows;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::window::WindowedQuery;
use crate::window::query::updates::{ends_of, latest_of};

/// One pipeline's windows in flight in updates mode.
#[derive(Debug, Clone, Default)]
pub struct Carry {
    /// Each aggregate's number of state columns.
    widths: Vec<usize>,
    /// Window end → (last revision written, `u32::MAX` before the first; each shard's
    /// latest state).
    windows: BTreeMap<i64, (u32, BTreeMap<u32, RecordBatch>)>,
}

impl Carry {
    /// Takes the shards' writes at the boundaries in `(from, upto]` into `q`'s table buffer
    /// (the revisions they make); returns the number of revisions.
    pub(super) fn round(
        &mut self,
        q: &mut WindowedQuery,
        shards: &[Option<ShardWindows>],
        (from, upto): (i64, i64),
    ) -> Result<u64> {
        let name = q.spec.name.clone();
        let spec = q.spec.clone();
        let err = |e| super::super::query_error(&spec, e);
        let mut boundaries = BTreeSet::new();
        for s in shards.iter().flatten().filter_map(|s| s.states.get(&name)) {
            boundaries.extend(s.windows.range(from.saturating_add(1)..=upto).map(|(b, _)| *b));
            if !s.widths.is_empty() {
                self.widths.clone_from(&s.widths);
            }
        }
        let mut revisions = 0;
        for b in boundaries {
            let mut changed = BTreeSet::new();
            for (k, s) in shards.iter().enumerate() {
                let Some(batch) = s.as_ref().and_then(|s| s.states.get(&name)).and_then(|s| s.windows.get(&b)) else {
                    continue;
                };
                for end in ends_of(batch).map_err(err)? {
                    let Some(rows) = latest_of(batch, end).map_err(err)? else { continue };
                    self.windows.entry(end).or_insert((u32::MAX, BTreeMap::new())).1.insert(k as u32, rows);
                    changed.insert(end);
                }
            }
            for end in changed {
                let Some((last, states)) = self.windows.get_mut(&end) else { continue };
                let revision = last.wrapping_add(1); // u32::MAX (never written) + 1 = 0
                let states: Vec<(&RecordBatch, &[usize])> =
                    states.values().map(|b| (b, self.widths.as_slice())).collect();
                q.merge_revision(end, revision, &states).map_err(err)?;
                *last = revision;
                revisions += 1;
            }
        }
        let (lateness, slide) = q.lateness_and_slide();
        self.windows.retain(|&end, _| end.saturating_add(lateness).saturating_add(slide) > upto);
        Ok(revisions)
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    widths: Vec<usize>,
    /// (end, last revision, the shards holding a state)
    windows: Vec<(i64, u32, Vec<u32>)>,
}

/// Every pipeline's carry as one blob: per pipeline a header (`<name>\n`) and per window and
/// shard an Arrow IPC stream (`<name>\n<end>\n<shard>`).
pub fn encode(carry: &BTreeMap<String, Carry>) -> Result<Vec<u8>> {
    let mut parts = Vec::new();
    for (name, c) in carry {
        let windows = c.windows.iter().map(|(e, (r, s))| (*e, *r, s.keys().copied().collect())).collect();
        let header = Header { widths: c.widths.clone(), windows };
        parts.push((format!("{name}\n"), serde_json::to_vec(&header).map_err(|e| Error::Internal(e.to_string()))?));
        for (end, (_, states)) in &c.windows {
            for (k, b) in states {
                parts.push((format!("{name}\n{end}\n{k}"), checkpoint::to_ipc(std::slice::from_ref(b))?));
            }
        }
    }
    Ok(checkpoint::pack(&parts))
}

/// Back from [`encode`].
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Carry>> {
    let bad = |why: &str| Error::State { path: "merger state".into(), reason: why.into() };
    let mut headers = BTreeMap::new();
    let mut states: BTreeMap<(String, i64, u32), RecordBatch> = BTreeMap::new();
    for (key, bytes) in checkpoint::unpack(bytes)? {
        let mut it = key.split('\n');
        let (Some(name), Some(end)) = (it.next(), it.next()) else { return Err(bad("an entry without a pipeline")) };
        if end.is_empty() {
            let h: Header = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
            headers.insert(name.to_string(), h);
            continue;
        }
        let end: i64 = end.parse().map_err(|_| bad("a window end that is not a number"))?;
        let k: u32 = it.next().and_then(|k| k.parse().ok()).ok_or_else(|| bad("an entry without a shard"))?;
        let b = checkpoint::from_ipc(&bytes)?.into_iter().next().ok_or_else(|| bad("an empty state"))?;
        states.insert((name.to_string(), end, k), b);
    }
    let mut out = BTreeMap::new();
    for (name, h) in headers {
        let mut c = Carry { widths: h.widths, windows: BTreeMap::new() };
        for (end, revision, shards) in h.windows {
            let mut s = BTreeMap::new();
            for k in shards {
                let b = states.remove(&(name.clone(), end, k)).ok_or_else(|| bad("a shard's state is missing"))?;
                s.insert(k, b);
            }
            c.windows.insert(end, (revision, s));
        }
        out.insert(name, c);
    }
    Ok(out)
}
