//! Shared types of the ingest path: a Redis stream entry as read ([`RawEntry`]) and its id
//! ([`EntryId`]). Everything downstream of the source speaks these types.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

/// A Redis stream entry id, `<ms>-<seq>`, kept as two integers (16 bytes instead of a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    /// Milliseconds part: the time Redis assigned the entry (publish time).
    pub ms: u64,
    /// Sequence number within that millisecond.
    pub seq: u64,
}

impl EntryId {
    /// Parses `<ms>-<seq>` (or a bare `<ms>`) from bytes, as Redis sends it.
    pub fn parse(bytes: &[u8]) -> Option<EntryId> {
        let text = std::str::from_utf8(bytes).ok()?;
        text.parse().ok()
    }
}

impl FromStr for EntryId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('-') {
            Some((ms, seq)) => Ok(EntryId { ms: ms.parse()?, seq: seq.parse()? }),
            None => Ok(EntryId { ms: s.parse()?, seq: 0 }),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One stream entry as delivered by `XREADGROUP`/`XAUTOCLAIM`.
///
/// `fields` is empty when the entry was deleted or trimmed while it was pending: Redis then
/// returns the id with a nil body, and the entry only needs acknowledging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub id: EntryId,
    /// Field names and values, as slices of the buffer the read reply arrived in (zero-copy).
    pub fields: Vec<(Bytes, Bytes)>,
}

impl RawEntry {
    /// The value of field `name`, if present (first occurrence).
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_ref())
    }

    /// Total payload size in bytes (field names and values), used for the size limit.
    pub fn size(&self) -> usize {
        self.fields.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Whether Redis returned the entry without a body (deleted or trimmed while pending).
    pub fn is_deleted(&self) -> bool {
        self.fields.is_empty()
    }
}

/// A batch of entries read from one stream.
#[derive(Debug, Clone)]
pub struct StreamBatch {
    /// Index of the stream in the configured stream list.
    pub stream: usize,
    pub entries: Vec<RawEntry>,
    /// When the read that returned them started and returned (`None`: claimed entries).
    pub read: Option<crate::telemetry::ReadTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_id_round_trips_and_orders() {
        let a: EntryId = "1767268800000-0".parse().unwrap();
        let b = EntryId::parse(b"1767268800000-12").unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1767268800000-12");
        assert_eq!("5".parse::<EntryId>().unwrap(), EntryId { ms: 5, seq: 0 });
        assert!(EntryId::parse(b"x-1").is_none());
        assert!(EntryId::parse(&[0xff]).is_none());
    }
}
