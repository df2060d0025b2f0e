//! The validation rules an event must pass to be archived and aggregated.

use super::timestamp::parse_rfc3339_us;
use super::{Event, Reason, Rejection, Unchecked, lifted_fields, metadata_fields};

/// Longest accepted event id, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 256;
/// Longest accepted event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;

/// `event_id`: any non-blank string up to [`MAX_EVENT_ID_BYTES`] without control characters.
pub fn valid_event_id(id: &str) -> bool {
    let b = id.as_bytes();
    if b.is_empty() || b.len() > MAX_EVENT_ID_BYTES || b.iter().any(|&c| c < 0x20 || c == 0x7f) {
        return false;
    }
    // Fast path: starts with a visible ASCII character; else check for Unicode blanks.
    b[0] > b' ' && b[0] < 0x80 || !id.trim().is_empty()
}

/// `event_type`: `domain.action` or `domain.entity.action`; each segment lowercase ASCII,
/// starting with a letter, then letters, digits or `_` (e.g. `order.created`,
/// `cart.item_added`, `payment.refund.issued`). These values also name archive partitions,
/// so the rule is what keeps paths inside the table prefix.
pub fn valid_event_type(t: &str) -> bool {
    let b = t.as_bytes();
    if b.len() > MAX_EVENT_TYPE_BYTES {
        return false;
    }
    let (mut segments, mut at_start) = (1, true);
    for &c in b {
        if at_start {
            if !c.is_ascii_lowercase() {
                return false;
            }
            at_start = false;
        } else if c == b'.' {
            segments += 1;
            at_start = true;
        } else if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
            return false;
        }
    }
    !at_start && (2..=3).contains(&segments)
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
    let (correlation_id, meta_source) = match (u.meta_fields, u.metadata) {
        (Some(found), _) => lifted_fields(found),
        (None, Some(m)) => metadata_fields(m),
        (None, None) => (None, None),
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
