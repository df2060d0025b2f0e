//! The dead-letter stream: entries that failed decoding or validation, with the reason.
//!
//! Each rejected entry becomes `XADD <dlq> MAXLEN ~ <n> * dlq_reason <code> dlq_detail <text>
//! dlq_stream <source stream> dlq_id <source entry id> <original fields…>`. The code is a
//! stable [`Reason`](crate::decode::Reason) string; the original fields are kept byte for
//! byte (up to [`DlqOptions::max_entry_bytes`]; beyond that they are cut and
//! `dlq_truncated` says the original size) so the entry can be fixed and replayed.
//!
//! **Written once.** A dead letter may be written twice: a retry after a reply lost with the
//! connection, a re-read of a pending entry after a crash, a successor re-processing what a
//! paused holder read. Each write is one script that first adds `<dlq_id>@<dlq_stream>` to a
//! sorted set beside the DLQ (`ZADD NX`, scored by the entry's time) and appends only when that
//! member is new, so the DLQ holds one entry per source entry whatever the retries (no clock
//! involved). The set is trimmed to the DLQ's own `MAXLEN` (newest kept), and shares the
//! DLQ's hash slot (Redis Cluster).

use redis::Pipeline;

pub use crate::config::DlqOptions;
use crate::decode::Rejection;
use crate::entry::RawEntry;

/// Field names eventide adds to a dead-letter entry.
pub const REASON_FIELD: &str = "dlq_reason";
pub const DETAIL_FIELD: &str = "dlq_detail";
pub const STREAM_FIELD: &str = "dlq_stream";
pub const ID_FIELD: &str = "dlq_id";
/// Present when the original fields were cut: the original entry's size in bytes.
pub const TRUNCATED_FIELD: &str = "dlq_truncated";

/// Most original fields copied into one dead letter (a script's arguments are bounded).
const MAX_FIELDS: usize = 1000;

/// KEYS: dlq, seen-set. ARGV: score, member, maxlen, then the entry's fields and values.
const ADD_ONCE: &str = r#"if redis.call('ZADD', KEYS[2], 'NX', ARGV[1], ARGV[2]) == 0 then return 0 end
local maxlen = tonumber(ARGV[3])
if maxlen > 0 then
  local n = redis.call('ZCARD', KEYS[2])
  if n > maxlen then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - maxlen - 1) end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 4))
else
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
end
return 1"#;

/// The dead-letter stream key for `stream`: the configured key, or `<stream>:dlq`.
pub fn dlq_key(configured: Option<&str>, stream: &str) -> String {
    match configured {
        Some(k) => k.to_string(),
        None => format!("{stream}:dlq"),
    }
}

/// The sorted set remembering which source entries `dlq` holds; in the same hash slot.
pub fn seen_key(dlq: &str) -> String {
    let tagged = dlq.find('{').is_some_and(|open| dlq[open + 1..].find('}').is_some_and(|close| close > 0));
    if tagged { format!("{dlq}:seen") } else { format!("{{{dlq}}}:seen") }
}

/// Adds the write of one rejected entry (once per source entry) to `pipe`.
pub fn add_to_pipeline(
    pipe: &mut Pipeline,
    opts: &DlqOptions,
    dlq: &str,
    stream: &str,
    entry: &RawEntry,
    rejection: &Rejection,
) {
    let cmd = pipe
        .cmd("EVAL")
        .arg(ADD_ONCE)
        .arg(2)
        .arg(dlq)
        .arg(seen_key(dlq))
        .arg(entry.id.ms)
        .arg(format!("{}@{stream}", entry.id))
        .arg(opts.maxlen)
        .arg(REASON_FIELD)
        .arg(rejection.reason.as_str())
        .arg(DETAIL_FIELD)
        .arg(&rejection.detail)
        .arg(STREAM_FIELD)
        .arg(stream)
        .arg(ID_FIELD)
        .arg(entry.id.to_string());
    let (fields, truncated) = kept_fields(entry, opts.max_entry_bytes);
    if truncated {
        cmd.arg(TRUNCATED_FIELD).arg(entry.size());
    }
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    pipe.ignore();
}

/// The original fields a dead letter keeps within `max_bytes`, and whether any were cut.
/// A field name and value, borrowed.
type Field<'a> = (&'a [u8], &'a [u8]);

fn kept_fields(entry: &RawEntry, max_bytes: usize) -> (Vec<Field<'_>>, bool) {
    let mut left = max_bytes;
    let mut out = Vec::new();
    for (i, (k, v)) in entry.fields.iter().enumerate() {
        if i == MAX_FIELDS || k.len() > left {
            return (out, true);
        }
        left -= k.len();
        if v.len() > left {
            out.push((k.as_ref(), &v[..left]));
            return (out, true);
        }
        left -= v.len();
        out.push((k.as_ref(), v.as_ref()));
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryId;

    fn entry(fields: &[(&str, usize)]) -> RawEntry {
        RawEntry {
            id: EntryId { ms: 1, seq: 0 },
            fields: fields.iter().map(|(k, n)| (k.as_bytes().to_vec().into(), vec![b'x'; *n].into())).collect(),
        }
    }

    #[test]
    fn originals_are_kept_whole_up_to_the_bound_then_cut() {
        let e = entry(&[("data", 10), ("metadata", 5)]);
        let (kept, cut) = kept_fields(&e, 1 << 20);
        assert!(!cut);
        assert_eq!(kept.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(), e.size());
        let (kept, cut) = kept_fields(&e, 24);
        assert!(cut);
        assert_eq!(kept.len(), 2, "data whole, metadata cut");
        assert_eq!(kept[1], (&b"metadata"[..], &b"xx"[..]));
        let many: Vec<(String, usize)> = (0..2000).map(|i| (format!("f{i}"), 1)).collect();
        let e = entry(&many.iter().map(|(k, n)| (k.as_str(), *n)).collect::<Vec<_>>());
        let (kept, cut) = kept_fields(&e, 1 << 20);
        assert!(cut);
        assert_eq!(kept.len(), MAX_FIELDS);
    }

    #[test]
    fn the_seen_set_shares_the_dlq_hash_slot() {
        assert_eq!(seen_key("events:dlq"), "{events:dlq}:seen");
        assert_eq!(seen_key("orders:{3}:dlq"), "orders:{3}:dlq:seen");
    }
}
