//! The Redis probe: every few seconds, what Redis says about each stream and the group
//! (`XINFO STREAM`, `XINFO GROUPS`, the DLQ's `XLEN`), for `/metrics`, `/readyz` and
//! `eventide status`. It uses its own connection and never touches the data path.
//!
//! Entries trimmed before the group read them are lost to it without an error, and Redis
//! 7.0's `lag` is no help (it keeps counting them after a read, and ignores them before
//! the group's first read). They are detected from `entries-added` (every entry ever
//! added) minus the group's `entries-read` (entries it actually read): that many entries
//! are unread or gone. Once the group has caught up with the last generated id, all of them
//! are gone; when the stream's first entry is past the group's position, every live entry
//! is unread and the rest are gone. Otherwise the difference beyond the stream's length is
//! a lower bound. When a group that never read catches up, Redis resets `entries-read` to
//! `entries-added` and the evidence disappears, so [`TrimTracker`] keeps what was seen:
//! the reported figure never goes down within a process.

use std::time::{Duration, Instant};

use super::connect::{Conn, Connector};
use redis::Value;
use tokio::sync::watch;

use crate::entry::EntryId;
use crate::metrics::{Probe, Registry, StreamProbe};

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub redis: crate::config::RedisOptions,
    pub group: String,
    /// (stream, its DLQ stream).
    pub streams: Vec<(String, String)>,
}

/// Remembers entries seen trimmed-before-read, per stream, across probes.
#[derive(Debug, Default, Clone)]
pub struct TrimTracker {
    /// Per stream: (episodes whose evidence is gone, the current episode's largest figure).
    seen: std::collections::HashMap<String, (u64, u64)>,
}

impl TrimTracker {
    /// Folds in a probe; returns the stream's total entries lost so far.
    pub fn observe(&mut self, stream: &str, gone_now: u64) -> u64 {
        let (done, current) = self.seen.entry(stream.to_string()).or_default();
        if gone_now == 0 {
            *done += std::mem::take(current);
        } else {
            *current = (*current).max(gone_now);
        }
        *done + *current
    }
}

/// Probes every `interval` until `stop` turns true.
pub async fn run(target: ProbeTarget, registry: Registry, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut conn: Option<Conn> = None;
    let mut trims = TrimTracker::default();
    loop {
        let result = async {
            if conn.is_none() {
                let client = Connector::new(&target.redis).map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "client", e.to_string()))
                })?;
                conn = Some(client.connect(Duration::from_secs(2), Duration::from_secs(5)).await?);
            }
            let c = conn.as_mut().ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no connection")))?;
            tokio::time::timeout(Duration::from_secs(5), probe(c, &target))
                .await
                .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "probe timed out")))?
        }
        .await;
        let probe = match result {
            Ok(mut streams) => {
                for p in &mut streams {
                    p.trimmed_unread = trims.observe(&p.stream, p.trimmed_unread);
                }
                Probe { at: Some(Instant::now()), error: None, streams }
            }
            Err(e) => {
                conn = None;
                Probe { at: Some(Instant::now()), error: Some(e.to_string()), streams: Vec::new() }
            }
        };
        registry.update(|s| s.probe = probe);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One probe of every stream.
pub async fn probe(conn: &mut Conn, t: &ProbeTarget) -> redis::RedisResult<Vec<StreamProbe>> {
    let mut out = Vec::with_capacity(t.streams.len());
    for (stream, dlq) in &t.streams {
        // Separate commands: in a cluster a stream and its DLQ may be in different slots.
        let exists: u64 = redis::cmd("EXISTS").arg(stream).query_async(conn).await?;
        let dlq_length: u64 = redis::cmd("XLEN").arg(dlq).query_async(conn).await?;
        let mut p = StreamProbe { stream: stream.clone(), dlq_stream: dlq.clone(), dlq_length, ..Default::default() };
        if exists == 0 {
            out.push(p);
            continue;
        }
        let info: Value = redis::cmd("XINFO").arg("STREAM").arg(stream).query_async(conn).await?;
        let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await?;
        let info = pairs(&info);
        p.length = int(field(&info, "length")).unwrap_or(0);
        let last_generated = text(field(&info, "last-generated-id")).and_then(|s| s.parse::<EntryId>().ok());
        let entries_added = int(field(&info, "entries-added"));
        p.first_entry_id = match field(&info, "first-entry") {
            Some(Value::Array(e)) => e.first().and_then(|v| text(Some(v))),
            _ => None,
        };
        let group = match &groups {
            Value::Array(gs) => gs.iter().map(pairs).find(|g| text(field(g, "name")).as_deref() == Some(&t.group)),
            _ => None,
        };
        if let Some(g) = group {
            p.pending = int(field(&g, "pending")).unwrap_or(0);
            p.lag = int(field(&g, "lag"));
            p.last_delivered_id = text(field(&g, "last-delivered-id")).unwrap_or_default();
            let delivered = p.last_delivered_id.parse::<EntryId>().ok();
            let first = p.first_entry_id.as_deref().and_then(|s| s.parse::<EntryId>().ok());
            // `entries-read` is nil before the first read of a group created at 0.
            let entries_read = int(field(&g, "entries-read")).unwrap_or(0);
            let unread_or_gone = entries_added.map(|a| a.saturating_sub(entries_read)).or(p.lag);
            p.trimmed_unread = trimmed_unread(unread_or_gone, p.length, delivered, first, last_generated);
        }
        out.push(p);
    }
    Ok(out)
}

/// From an `XINFO STREAM` reply: the last generated id and `entries-added`.
pub fn stream_end(info: &Value) -> (Option<EntryId>, Option<u64>) {
    let info = pairs(info);
    let last = text(field(&info, "last-generated-id")).and_then(|s| s.parse::<EntryId>().ok());
    (last, int(field(&info, "entries-added")))
}

/// From an `XINFO GROUPS` reply: `group`'s last-delivered id, `entries-read` (nil before a
/// first read) and pending count.
pub fn group_info(groups: &Value, group: &str) -> Option<(String, Option<u64>, u64)> {
    let Value::Array(gs) = groups else { return None };
    let g = gs.iter().map(pairs).find(|g| text(field(g, "name")).as_deref() == Some(group))?;
    Some((
        text(field(&g, "last-delivered-id")).unwrap_or_default(),
        int(field(&g, "entries-read")),
        int(field(&g, "pending")).unwrap_or(0),
    ))
}

/// Entries trimmed before the group read them, from the count of entries added and not read
/// by the group (see the module docs).
pub fn trimmed_unread(
    unread_or_gone: Option<u64>,
    length: u64,
    delivered: Option<EntryId>,
    first: Option<EntryId>,
    last_generated: Option<EntryId>,
) -> u64 {
    let Some(lag) = unread_or_gone else { return 0 };
    match (delivered, last_generated) {
        // Caught up: no live entry is unread.
        (Some(d), Some(g)) if d >= g => lag,
        // An empty stream: nothing live at all.
        _ if first.is_none() => lag,
        // At most `length` live entries are unread (exactly when the head is past the group).
        _ => lag.saturating_sub(length),
    }
}

fn pairs(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => text(Some(k)).map(|k| (k, v.clone())),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.iter().filter_map(|(k, v)| text(Some(k)).map(|k| (k, v.clone()))).collect(),
        _ => Vec::new(),
    }
}

fn field<'a>(p: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> Option<EntryId> {
        Some(EntryId { ms, seq: 0 })
    }

    #[test]
    fn trimmed_unread_cases() {
        // Caught up: whatever lag remains was trimmed (Redis 7.0 keeps counting it).
        assert_eq!(trimmed_unread(Some(2), 5, id(9), id(3), id(9)), 2);
        // Stream head past the group's position: all live entries unread, the rest trimmed.
        assert_eq!(trimmed_unread(Some(3), 1, id(1), id(5), id(5)), 2);
        // Nothing trimmed.
        assert_eq!(trimmed_unread(Some(4), 10, id(3), id(1), id(10)), 0);
        // Empty stream with lag: all trimmed. Unknown lag: nothing claimed.
        assert_eq!(trimmed_unread(Some(3), 0, id(1), None, id(4)), 3);
        assert_eq!(trimmed_unread(None, 0, id(1), None, id(4)), 0);
    }

    #[test]
    fn trim_tracker_keeps_losses_whose_evidence_is_gone() {
        let mut t = TrimTracker::default();
        assert_eq!(t.observe("s", 0), 0);
        assert_eq!(t.observe("s", 70), 70);
        assert_eq!(t.observe("s", 0), 70, "Redis reset entries-read after the group caught up");
        assert_eq!(t.observe("s", 5), 75);
        assert_eq!(t.observe("s", 5), 75);
        assert_eq!(t.observe("t", 1), 1);
    }
}
