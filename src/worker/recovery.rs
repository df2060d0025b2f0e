//! Recovery helpers of the processor (pipeline → **checkpoint** → recovery): taking the
//! group's checkpoint line over, the dedup state a checkpoint lists, the first checkpoint of a
//! group, and where `noack` reading resumes.

use crate::checkpoint::legacy;
use crate::checkpoint::{self, Checkpointed, Checkpoints, Manifest};
use crate::config::ReadMode;
use crate::dedup::Dedup;
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::sink::lake::Lake;
use crate::source::commands::Commands;
use crate::source::group;
use crate::source::lease::Fence;

/// How often a takeover is tried again when another holder's manifest appeared meanwhile.
const TAKEOVER_ATTEMPTS: usize = 5;

/// Takes the group's checkpoint line over as the new lease holder: publishes the latest
/// checkpoint's files (roll forward), commits its takeover manifest (create-only, the next
/// epoch: from then on the previous holder's commits all fail), and only then deletes every
/// staged file no checkpoint will publish. A manifest that appears meanwhile (the previous
/// holder committed while its lease was still valid) is read and taken over instead. Returns
/// the manifest to continue from, its dedup state, and whether there was one before.
pub(super) async fn take_over(
    cp: &Checkpoints,
    lake: &Lake,
    fence: &Fence,
    token: u64,
    horizon: u64,
) -> Result<(Manifest, Dedup, bool)> {
    for _ in 0..TAKEOVER_ATTEMPTS {
        fence.check()?;
        let Some(latest) = cp.latest().await? else {
            // State from before checkpoints exists for unsharded groups only.
            let legacy = match cp.shard.count {
                1 => legacy::load_dedup(lake, &cp.group, horizon).await?,
                _ => Dedup::new(horizon),
            };
            let (m, dedup) = match first_checkpoint(cp, legacy, token, fence).await {
                Err(Error::Fenced(_)) => continue,
                other => other?,
            };
            abort(cp).await?;
            return Ok((m, dedup, false));
        };
        // Roll forward: the checkpoint committed, its files may not all be in place.
        cp.publish(&latest).await?;
        let m = checkpoint::takeover(cp, &latest, token, fence.deadline_unix_ms());
        fence.check()?;
        match cp.commit(&m).await {
            Err(Error::Fenced(why)) => {
                tracing::info!(reason = %why, "A newer checkpoint appeared while taking over; taking that one over.");
                continue;
            }
            other => other?,
        }
        abort(cp).await?;
        let dedup = load_dedup(cp, &m, horizon).await?;
        return Ok((m, dedup, true));
    }
    Err(Error::Fenced(format!(
        "another instance keeps committing group {:?}'s checkpoints while this one holds the lease",
        cp.group
    )))
}

/// Deletes every staged file: after a takeover none belongs to a checkpoint that will publish it.
async fn abort(cp: &Checkpoints) -> Result<()> {
    let aborted = cp.abort_uncommitted(None).await?;
    if aborted > 0 {
        tracing::info!(files = aborted, "Deleted staged files of an epoch that never committed.");
    }
    Ok(())
}

/// Whether this term reads with `XREAD` (no pending list): `noack`, or `auto` when no stream's
/// group has pending entries (else `auto` reads this term in `group` mode, which processes
/// and acks them; the next term reads without).
pub(super) async fn read_without_acks(cmds: &mut Commands, source: &crate::source::SourceOptions) -> Result<bool> {
    match source.read_mode {
        ReadMode::Group => Ok(false),
        ReadMode::NoAck => Ok(true),
        ReadMode::Auto => {
            let mut pending = 0;
            for stream in &source.streams {
                pending += group::position(cmds, stream, &source.group).await?.2;
            }
            if pending > 0 {
                tracing::info!(
                    group = %source.group,
                    pending,
                    "read_mode = \"auto\": the group has pending entries (left by read_mode = \"group\" or \
                     another consumer); this term reads in group mode to process and ack them, the next one \
                     without a pending list."
                );
            }
            Ok(pending == 0)
        }
    }
}

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
                "read_mode = \"noack\": group {:?} has {pending} pending entries on {stream:?}; use \
                 read_mode = \"auto\" (the default: it processes and acks them in group mode first)",
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
    let mut dedup = Dedup::new(horizon);
    let mut line = checkpoint::DedupLine::of(m, std::time::Duration::ZERO);
    checkpoint::DedupPart { dedup: &mut dedup, line: &mut line }.restore(cp, m).await?;
    Ok(dedup)
}

/// Epoch 0, committed (create-only) before anything is read: the group's line starts here,
/// and dedup state of a version before checkpoints is carried over.
async fn first_checkpoint(cp: &Checkpoints, dedup: Dedup, token: u64, fence: &Fence) -> Result<(Manifest, Dedup)> {
    let mut m = checkpoint::manifest(cp, 0, chrono::Utc::now().timestamp_millis());
    if !dedup.is_empty() {
        m.dedup_snapshot = Some(cp.put_blob(0, "dedup.bin", dedup.to_bytes()).await?);
    }
    (m.token, m.lease_deadline_ms) = (token, Some(fence.deadline_unix_ms()));
    fence.check()?;
    cp.commit(&m).await?;
    Ok((m, dedup))
}
