//! Recovery helpers of the processor (pipeline → **checkpoint** → recovery): the dedup state
//! a checkpoint lists, the first checkpoint of a group, and where `noack` reading resumes.

use crate::checkpoint::{self, Checkpoints, Manifest};
use crate::dedup::Dedup;
use crate::error::{Error, Result};
use crate::event::EntryId;
use crate::source::commands::Commands;
use crate::source::group;

/// `noack` mode: where each stream's reading resumes (the checkpoint's position, else the
/// group's) and the group's `entries-read`. Refuses a group with pending entries (left by
/// `group` mode: drain them in that mode first, or they would never be acked).
pub(super) async fn noack_positions(
    cmds: &mut Commands,
    source: &crate::source::SourceOptions,
    latest: &Manifest,
) -> Result<Vec<(EntryId, Option<u64>)>> {
    let mut out = Vec::new();
    for stream in &source.streams {
        let (delivered, read, pending) = group::position(cmds, stream, &source.group).await?;
        if pending > 0 {
            return Err(Error::Config(format!(
                "read_mode = \"noack\": group {:?} has {pending} pending entries on {stream:?}; run once with \
                 read_mode = \"group\" to process and ack them, then switch",
                source.group
            )));
        }
        let at = match latest.positions.get(stream) {
            Some(id) => id.parse::<EntryId>().map_err(|_| Error::State {
                path: "checkpoint positions".into(),
                reason: format!("{stream}: {id:?} is not an entry id"),
            })?,
            None => delivered,
        };
        // A group that never read (at 0-0) has read nothing; a crash between a checkpoint and
        // moving the group leaves the group behind it: count the entries in between.
        let read = if delivered == EntryId::default() { Some(read.unwrap_or(0)) } else { read };
        let read = match read {
            Some(r) if at > delivered => Some(r + group::count_between(cmds, stream, delivered, at).await?),
            Some(r) if at == delivered => Some(r),
            _ => None,
        };
        out.push((at, read));
    }
    Ok(out)
}

/// The dedup state a checkpoint lists: its snapshot, then its deltas.
pub(super) async fn load_dedup(cp: &Checkpoints, m: &Manifest, horizon: u64) -> Result<Dedup> {
    let bad = |path: &str, r: &str| Error::State { path: path.into(), reason: r.into() };
    let mut d = match &m.dedup_snapshot {
        Some(path) => Dedup::from_bytes(&cp.get_blob(path).await?, horizon).map_err(|r| bad(path, r))?,
        None => Dedup::new(horizon),
    };
    for path in &m.dedup_deltas {
        d.apply_delta(&cp.get_blob(path).await?).map_err(|r| bad(path, r))?;
    }
    Ok(d)
}

/// Epoch 0, committed before anything is read: a crash in the first epoch then recovers
/// knowing when it began (for the dead-letter check), and dedup state of a version before
/// checkpoints is carried over.
pub(super) async fn first_checkpoint(cp: &Checkpoints, dedup: Dedup) -> Result<(Manifest, Dedup)> {
    let mut m = checkpoint::manifest(cp, 0, chrono::Utc::now().timestamp_millis());
    if !dedup.is_empty() {
        m.dedup_snapshot = Some(cp.put_blob(0, "dedup.bin", dedup.to_bytes()).await?);
    }
    cp.commit(&m).await?;
    Ok((m, dedup))
}
