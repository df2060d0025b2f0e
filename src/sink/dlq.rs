//! The dead-letter stream: entries that failed decoding or validation, with the reason.
//!
//! Each rejected entry becomes `XADD <dlq> * dlq_reason <code> dlq_detail <text>
//! dlq_stream <source stream> dlq_id <source entry id> <original fields…>`. The code is a
//! stable [`Reason`](crate::decode::Reason) string; the original fields are kept byte for
//! byte so the entry can be fixed and replayed. Written before the source entry is acked.

use redis::Pipeline;

use crate::decode::Rejection;
use crate::event::RawEntry;

/// Field names eventide adds to a dead-letter entry.
pub const REASON_FIELD: &str = "dlq_reason";
pub const DETAIL_FIELD: &str = "dlq_detail";
pub const STREAM_FIELD: &str = "dlq_stream";
pub const ID_FIELD: &str = "dlq_id";

/// The dead-letter stream key for `stream`: the configured key, or `<stream>:dlq`.
pub fn dlq_key(configured: Option<&str>, stream: &str) -> String {
    match configured {
        Some(k) => k.to_string(),
        None => format!("{stream}:dlq"),
    }
}

/// Adds the `XADD` for one rejected entry to `pipe`.
pub fn add_to_pipeline(pipe: &mut Pipeline, dlq: &str, stream: &str, entry: &RawEntry, rejection: &Rejection) {
    let cmd = pipe
        .cmd("XADD")
        .arg(dlq)
        .arg("*")
        .arg(REASON_FIELD)
        .arg(rejection.reason.as_str())
        .arg(DETAIL_FIELD)
        .arg(&rejection.detail)
        .arg(STREAM_FIELD)
        .arg(stream)
        .arg(ID_FIELD)
        .arg(entry.id.to_string());
    for (k, v) in &entry.fields {
        cmd.arg(k.as_slice()).arg(v.as_slice());
    }
    pipe.ignore();
}

/// The source entries (`dlq_stream`, `dlq_id`) that have a dead-letter entry in `dlq`
/// written at or after `since_ms` (a recovery skips writing them again).
pub async fn written_since(
    cmds: &mut crate::source::commands::Commands,
    dlq: &str,
    since_ms: i64,
) -> crate::error::Result<std::collections::HashSet<(String, String)>> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(dlq).arg(format!("{}-0", since_ms.max(0))).arg("+");
    let reply: redis::streams::StreamRangeReply = cmds.query(&cmd).await?;
    let text = |v: Option<&redis::Value>| match v {
        Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(redis::Value::SimpleString(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(reply.ids.iter().filter_map(|e| Some((text(e.map.get(STREAM_FIELD))?, text(e.map.get(ID_FIELD))?))).collect())
}
