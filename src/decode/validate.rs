//! The validation rules an event must pass to be archived and aggregated.

use super::timestamp::parse_rfc3339_us;
use super::{Event, Reason, Rejection, Unchecked, metadata_fields};

/// Longest accepted event id, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 256;
/// Longest accepted event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;

/// `event_id`: any non-blank string up to [`MAX_EVENT_ID_BYTES`] without control characters.
pub fn valid_event_id(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= MAX_EVENT_ID_BYTES && !id.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// `event_type`: `domain.action` or `domain.entity.action`; each segment lowercase ASCII,
/// starting with a letter, then letters, digits or `_` (e.g. `order.created`,
/// `cart.item_added`, `payment.refund.issued`). These values also name archive partitions,
/// so the rule is what keeps paths inside the table prefix.
pub fn valid_event_type(t: &str) -> bool {
    if t.len() > MAX_EVENT_TYPE_BYTES {
        return false;
    }
    let mut segments = 0;
    for seg in t.split('.') {
        segments += 1;
        let b = seg.as_bytes();
        let Some(first) = b.first() else { return false };
        if !first.is_ascii_lowercase() || !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
        {
            return false;
        }
    }
    (2..=3).contains(&segments)
}

pub(super) fn check(u: Unchecked<'_>, now_us: i64, max_future_us: i64) -> Result<Event<'_>, Rejection> {
    let event_id = match u.event_id {
        None => return Err(Rejection::new(Reason::MissingEventId, "no event_id (nor CloudEvents id)")),
        Some(id) if !valid_event_id(&id) => {
            return Err(Rejection::new(
                Reason::InvalidEventId,
                format!(
                    "event_id must be a non-blank string of at most {MAX_EVENT_ID_BYTES} bytes without control characters"
                ),
            ));
        }
        Some(id) => id,
    };
    let event_type = match u.event_type {
        None => return Err(Rejection::new(Reason::MissingEventType, "no event_type (nor CloudEvents type)")),
        Some(t) if !valid_event_type(&t) => {
            return Err(Rejection::new(
                Reason::InvalidEventType,
                format!(
                    "event_type {:?} is not `domain.entity.action` (lowercase segments, e.g. order.created)",
                    truncate(&t)
                ),
            ));
        }
        Some(t) => t,
    };
    let event_time_us = match u.timestamp {
        None => return Err(Rejection::new(Reason::MissingTimestamp, "no timestamp (nor CloudEvents time)")),
        Some(ts) => parse_rfc3339_us(&ts).ok_or_else(|| {
            Rejection::new(Reason::InvalidTimestamp, format!("timestamp {:?} is not RFC 3339", truncate(&ts)))
        })?,
    };
    if event_time_us > now_us.saturating_add(max_future_us) {
        return Err(Rejection::new(
            Reason::TimestampInFuture,
            format!("timestamp is {} s ahead of ingest time", (event_time_us - now_us) / 1_000_000),
        ));
    }
    let (correlation_id, meta_source) = match u.metadata {
        Some(m) => metadata_fields(m),
        None => (None, None),
    };
    Ok(Event {
        event_id,
        event_type,
        event_time_us,
        version: u.version,
        data: u.data,
        metadata: u.metadata,
        correlation_id,
        source: meta_source.or(u.source),
        traceparent: u.traceparent,
    })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
