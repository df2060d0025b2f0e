//! Turns the redis crate's reply values into [`RawEntry`]s without the per-entry `HashMap`s of
//! its typed stream replies: field bytes are moved, not copied. (Used for claims, and for
//! reads over a Redis Cluster connection; the reader's own connection parses the wire bytes
//! directly, in [`resp`](super::resp).)

use bytes::Bytes;
use redis::Value;

use crate::entry::{EntryId, RawEntry};

/// A reply that did not have the shape Redis documents.
#[derive(Debug, thiserror::Error)]
#[error("unexpected {command} reply: {what}")]
pub struct ReplyError {
    pub command: &'static str,
    pub what: &'static str,
}

impl From<ReplyError> for crate::error::Error {
    fn from(e: ReplyError) -> Self {
        crate::error::Error::Reply { command: e.command, what: e.what }
    }
}

fn bad(command: &'static str, what: &'static str) -> ReplyError {
    ReplyError { command, what }
}

fn bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(b.into()),
        Value::SimpleString(s) => Some(s.into_bytes().into()),
        _ => None,
    }
}

fn items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Map(m) => Some(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        _ => None,
    }
}

/// Parses a list of `[id, [field, value, …] | nil]` entries.
pub fn entries(v: Value, command: &'static str) -> Result<Vec<RawEntry>, ReplyError> {
    let list = items(v).ok_or(bad(command, "entry list is not an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        let mut parts = items(e).ok_or(bad(command, "entry is not an array"))?.into_iter();
        let id = parts.next().and_then(bytes).and_then(|b| EntryId::parse(&b)).ok_or(bad(command, "entry id"))?;
        let mut fields = Vec::new();
        if let Some(flat) = parts.next().and_then(items) {
            fields.reserve(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                fields.push((bytes(k).unwrap_or_default(), bytes(v).unwrap_or_default()));
            }
        }
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

/// Entries of one stream in a read reply: the stream key and its entries.
pub type StreamEntries = (Bytes, Vec<RawEntry>);

/// Parses an `XREADGROUP` reply into `(stream key, entries)` pairs (nil → empty).
pub fn xread(v: Value) -> Result<Vec<StreamEntries>, ReplyError> {
    const C: &str = "XREADGROUP";
    if matches!(v, Value::Nil) {
        return Ok(Vec::new());
    }
    if let Value::Map(m) = v {
        return m.into_iter().map(|(k, e)| Ok((bytes(k).ok_or(bad(C, "stream key"))?, entries(e, C)?))).collect();
    }
    let streams = items(v).ok_or(bad(C, "not an array"))?;
    streams
        .into_iter()
        .map(|s| {
            let mut parts = items(s).ok_or(bad(C, "stream is not an array"))?.into_iter();
            let key = parts.next().and_then(bytes).ok_or(bad(C, "stream key"))?;
            let list = parts.next().unwrap_or(Value::Array(Vec::new()));
            Ok((key, if matches!(list, Value::Nil) { Vec::new() } else { entries(list, C)? }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_xreadgroup_with_deleted_entry() {
        let v = Value::Array(vec![Value::Array(vec![
            bs("orders"),
            Value::Array(vec![
                Value::Array(vec![bs("1-0"), Value::Array(vec![bs("data"), bs("{}")])]),
                Value::Array(vec![bs("2-0"), Value::Nil]),
            ]),
        ])]);
        let r = xread(v).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, &b"orders"[..]);
        assert_eq!(r[0].1[0].field(b"data"), Some(&b"{}"[..]));
        assert!(r[0].1[1].is_deleted());
        assert!(xread(Value::Nil).unwrap().is_empty());
        assert!(xread(Value::Int(3)).is_err());
    }
}
