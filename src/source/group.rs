//! Consumer-group housekeeping on the command connection: create groups, claim entries from
//! dead consumers, acknowledge durable entries.

use redis::Value;

use super::SourceOptions;
use super::commands::Commands;
use super::reply;
use crate::entry::{EntryId, RawEntry};
use crate::error::{Error, Result};

/// Ids per `XACK` command.
const ACK_CHUNK: usize = 10_000;
/// `XAUTOCLAIM … COUNT` per call.
const CLAIM_COUNT: usize = 1_000;

/// Creates the group on every stream (`XGROUP CREATE … MKSTREAM`); an existing group is kept.
/// Returns the streams whose group was created now.
pub async fn ensure_groups(cmds: &mut Commands, opts: &SourceOptions) -> Result<Vec<String>> {
    let mut created = Vec::new();
    for stream in &opts.streams {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE").arg(stream).arg(&opts.group).arg(&opts.start_id).arg("MKSTREAM");
        match cmds.query::<Value, _>(&cmd).await {
            Ok(_) => created.push(stream.clone()),
            Err(Error::Redis(e)) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// Entries claimed from other consumers of one stream.
pub struct Claimed {
    pub entries: Vec<RawEntry>,
    /// Ids that were deleted or trimmed while pending (Redis dropped them from the PEL).
    pub deleted: usize,
}

/// Claims up to `max` entries of `stream` pending at *other* consumers and idle longer than
/// the configured minimum (`XPENDING … IDLE` per consumer, then `XCLAIM`): entries a lost
/// lease holder read after the takeover. This consumer's own pending entries are never
/// claimed back (they wait for the next checkpoint; claiming would deliver them twice).
pub async fn claim_idle(cmds: &mut Commands, opts: &SourceOptions, stream: &str, max: usize) -> Result<Claimed> {
    let mut out = Claimed { entries: Vec::new(), deleted: 0 };
    let idle = opts.claim_min_idle.as_millis() as u64;
    for other in other_consumers(cmds, opts, stream).await? {
        let mut list = redis::cmd("XPENDING");
        list.arg(stream).arg(&opts.group).arg("IDLE").arg(idle).arg("-").arg("+").arg(max).arg(&other);
        let rows: Vec<(String, String, u64, u64)> = cmds.query(&list).await?;
        if rows.is_empty() {
            continue;
        }
        let mut claim = redis::cmd("XCLAIM");
        claim.arg(stream).arg(&opts.group).arg(&opts.consumer).arg(idle);
        for (id, ..) in &rows {
            claim.arg(id);
        }
        let got = reply::entries(cmds.query::<Value, _>(&claim).await?, "XCLAIM")?;
        // Entries deleted meanwhile are dropped from the pending list by XCLAIM.
        out.deleted += rows.len().saturating_sub(got.len());
        out.entries.extend(got);
        if out.entries.len() >= max {
            break;
        }
    }
    out.entries.sort_by_key(|e| e.id);
    Ok(out)
}

/// Consumers other than this one with entries pending on `stream`.
async fn other_consumers(cmds: &mut Commands, opts: &SourceOptions, stream: &str) -> Result<Vec<String>> {
    let mut summary = redis::cmd("XPENDING");
    summary.arg(stream).arg(&opts.group);
    let (_, _, _, consumers): PendingSummary = cmds.query(&summary).await?;
    Ok(consumers.unwrap_or_default().into_iter().filter(|(c, _)| *c != opts.consumer).map(|(c, _)| c).collect())
}

/// Where `stream`'s group stands: last-delivered id, `entries-read` (if known), pending count.
pub async fn position(cmds: &mut Commands, stream: &str, group: &str) -> Result<(EntryId, Option<u64>, u64)> {
    let mut cmd = redis::cmd("XINFO");
    cmd.arg("GROUPS").arg(stream);
    let v: Value = cmds.query(&cmd).await?;
    let (id, read, pending) = super::probe::group_info(&v, group)
        .ok_or_else(|| Error::Config(format!("stream {stream:?} has no group {group:?}")))?;
    let id = id.parse::<EntryId>().map_err(|_| Error::Config(format!("group {group:?}: last-delivered id {id:?}")))?;
    Ok((id, read, pending))
}

/// `noack` mode: moves the group to `id` (the last entry a committed checkpoint holds), with
/// its `entries-read`, so `XINFO GROUPS` lag shows what is not checkpointed yet. Returns the
/// `entries-read` set (the stream's `entries-added` once caught up, as `XREADGROUP` counts).
pub async fn set_position(
    cmds: &mut Commands,
    stream: &str,
    group: &str,
    id: EntryId,
    read: Option<u64>,
) -> Result<Option<u64>> {
    // Caught up with the stream: every entry added so far is read (or trimmed unread), as
    // `XREADGROUP` would count it; else the count of entries read, at most what was added.
    let mut xinfo = redis::cmd("XINFO");
    xinfo.arg("STREAM").arg(stream);
    let end = match cmds.query::<Value, _>(&xinfo).await {
        Ok(info) => super::probe::stream_end(&info),
        // No such key: the stream was deleted (the group with it, handled below).
        Err(Error::Redis(e)) if e.code().is_some() => (None, None),
        Err(e) => return Err(e),
    };
    let read = match end {
        (Some(last), Some(added)) if id >= last => Some(added),
        (_, Some(added)) => read.map(|r| r.min(added)),
        _ => read,
    };
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("SETID").arg(stream).arg(group).arg(id.to_string());
    if let Some(n) = read {
        cmd.arg("ENTRIESREAD").arg(n);
    }
    match cmds.query::<(), _>(&cmd).await {
        // The stream (and its group) was deleted while we ran: recreate the group where the
        // checkpoint stands (new entries get higher ids), as group mode's reader does.
        Err(Error::Redis(e)) if e.code() == Some("NOGROUP") => {
            tracing::warn!(stream, group, "Consumer group missing; recreating it at the checkpointed position.");
            let mut create = redis::cmd("XGROUP");
            create.arg("CREATE").arg(stream).arg(group).arg(id.to_string()).arg("MKSTREAM");
            // A new stream's count of entries added starts again: Redis estimates the group's.
            match cmds.query::<(), _>(&create).await {
                Err(Error::Redis(e)) if e.code() == Some("BUSYGROUP") => cmds.query::<(), _>(&cmd).await.map(|()| read),
                other => other.map(|()| None),
            }
        }
        other => other.map(|()| read),
    }
}

/// Entries of `stream` with `after < id <= upto`.
pub async fn count_between(cmds: &mut Commands, stream: &str, after: EntryId, upto: EntryId) -> Result<u64> {
    let (mut from, mut n) = (after, 0u64);
    loop {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(stream).arg(format!("({from}")).arg(upto.to_string()).arg("COUNT").arg(CLAIM_COUNT);
        let page: Vec<(String, Value)> = cmds.query(&cmd).await?;
        n += page.len() as u64;
        match page.last().and_then(|(id, _)| id.parse::<EntryId>().ok()) {
            Some(last) if page.len() == CLAIM_COUNT => from = last,
            _ => return Ok(n),
        }
    }
}

/// `XPENDING <stream> <group>`: count, lowest id, highest id, per consumer (name, count).
type PendingSummary = (u64, Value, Value, Option<Vec<(String, String)>>);

/// Moves every entry pending at other consumers of `stream`'s group to this one
/// (`XAUTOCLAIM … 0 JUSTID`, no delivery): the lease holder then re-reads them as its own.
/// Returns (entries taken over, entries Redis dropped because they were deleted meanwhile).
pub async fn claim_all_pending(cmds: &mut Commands, opts: &SourceOptions, stream: &str) -> Result<(u64, u64)> {
    let mut summary = redis::cmd("XPENDING");
    summary.arg(stream).arg(&opts.group);
    let (_, _, _, consumers): PendingSummary = cmds.query(&summary).await?;
    let others: u64 = consumers
        .unwrap_or_default()
        .iter()
        .filter(|(c, _)| *c != opts.consumer)
        .map(|(_, n)| n.parse::<u64>().unwrap_or(0))
        .sum();
    if others == 0 {
        return Ok((0, 0));
    }
    let (mut start, mut deleted_n) = ("0-0".to_string(), 0u64);
    loop {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(stream)
            .arg(&opts.group)
            .arg(&opts.consumer)
            .arg(0)
            .arg(&start)
            .arg("COUNT")
            .arg(CLAIM_COUNT)
            .arg("JUSTID");
        let (next, _ids, deleted): (String, Vec<String>, Vec<String>) = cmds.query(&cmd).await?;
        deleted_n += deleted.len() as u64;
        if next == "0-0" {
            return Ok((others.saturating_sub(deleted_n), deleted_n));
        }
        start = next;
    }
}

/// Acknowledges `ids` on `stream` (one round trip); returns how many Redis removed from the
/// pending list.
pub async fn ack(cmds: &mut Commands, group: &str, stream: &str, ids: &[EntryId]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for chunk in ids.chunks(ACK_CHUNK) {
        let cmd = pipe.cmd("XACK").arg(stream).arg(group);
        for id in chunk {
            cmd.arg(id.to_string());
        }
    }
    let removed: Vec<u64> = cmds.query(&pipe).await?;
    Ok(removed.into_iter().sum())
}
