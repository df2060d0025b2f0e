//! Decode and validate: the second stage of the flow (source → **decode** → dedup → sink).
//!
//! [`Decoder::decode`] turns one stream entry into a borrowed [`Event`] without building a
//! JSON tree: the envelope is parsed field by field, `data` and `metadata` are kept as raw
//! JSON text, strings are borrowed from the entry whenever they hold no escapes. An entry
//! that cannot be accepted yields a [`Rejection`] (a machine-readable [`Reason`] plus a
//! human detail) and goes to the dead-letter stream; decoding never panics on input.
//!
//! Two shapes are accepted in the configured entry field (default `data`):
//! - the base event `{event_id, event_type, timestamp, version, data, metadata}`;
//! - a Dapr CloudEvents envelope (`specversion` present): the business event is taken from
//!   `data` (embedded JSON, or a JSON string holding JSON) or `data_base64`; where it lacks
//!   them, `id` → event_id, `type` → event_type, `time` → timestamp; `traceparent` is kept.

mod envelope;
mod reason;
pub(crate) mod scan;
pub mod timestamp;
mod validate;

use std::borrow::Cow;

pub use reason::{Reason, Rejection};
pub use validate::{MAX_EVENT_ID_BYTES, MAX_EVENT_TYPE_BYTES, valid_event_id, valid_event_type};

pub use crate::config::DecodeOptions;
use crate::entry::RawEntry;
use envelope::Wire;

/// A decoded, validated event, borrowing from the entry (or the decoder's scratch buffer).
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    /// Event time, microseconds since the Unix epoch, UTC.
    pub event_time_us: i64,
    pub version: Option<Cow<'a, str>>,
    /// The business payload as JSON text.
    pub data: Option<&'a str>,
    /// The event's metadata object as JSON text.
    pub metadata: Option<&'a str>,
    pub correlation_id: Option<Cow<'a, str>>,
    pub source: Option<Cow<'a, str>>,
    pub traceparent: Option<Cow<'a, str>>,
}

/// Reusable decoder; holds the options and a scratch buffer for nested envelopes.
#[derive(Debug, Default)]
pub struct Decoder {
    opts: DecodeOptions,
    scratch: String,
}

impl Decoder {
    pub fn new(opts: DecodeOptions) -> Self {
        Decoder { opts, scratch: String::new() }
    }

    /// Decodes and validates one entry. `now_us` is the ingest time, for the future-skew rule.
    pub fn decode<'a>(&'a mut self, entry: &'a RawEntry, now_us: i64) -> Result<Event<'a>, Rejection> {
        if entry.size() > self.opts.max_entry_bytes {
            return Err(Rejection::new(
                Reason::EntryTooLarge,
                format!("entry is {} bytes, the limit is {}", entry.size(), self.opts.max_entry_bytes),
            ));
        }
        let Some(raw) = entry.field(&self.opts.field) else {
            return Err(Rejection::new(
                Reason::MissingField,
                format!("entry has no field `{}`", String::from_utf8_lossy(&self.opts.field)),
            ));
        };
        let text = std::str::from_utf8(raw)
            .map_err(|e| Rejection::new(Reason::InvalidUtf8, format!("field is not UTF-8: {e}")))?;
        self.decode_json(text, now_us)
    }

    /// Decodes and validates one event given as JSON text (a JSON-lines record: a base
    /// event or a CloudEvents envelope), as [`Decoder::decode`] does for an entry's field.
    pub fn decode_json<'a>(&'a mut self, text: &'a str, now_us: i64) -> Result<Event<'a>, Rejection> {
        if text.len() > self.opts.max_entry_bytes {
            return Err(Rejection::new(
                Reason::EntryTooLarge,
                format!("event is {} bytes, the limit is {}", text.len(), self.opts.max_entry_bytes),
            ));
        }
        let max_future_us = self.opts.max_future_us;
        let event = decode_text(text, &mut self.scratch)?;
        validate::check(event, now_us, max_future_us)
    }
}

/// Fields gathered from the wire, before the validation rules are applied.
pub(crate) struct Unchecked<'a> {
    pub event_id: Option<Cow<'a, str>>,
    pub event_type: Option<Cow<'a, str>>,
    pub timestamp: Option<Cow<'a, str>>,
    pub version: Option<Cow<'a, str>>,
    pub data: Option<&'a str>,
    pub metadata: Option<&'a str>,
    /// Raw `correlation_id` and `source` of `metadata`, when already found.
    pub meta_fields: Option<envelope::MetaFields<'a>>,
    pub source: Option<Cow<'a, str>>,
    pub traceparent: Option<Cow<'a, str>>,
}

fn decode_text<'a>(text: &'a str, scratch: &'a mut String) -> Result<Unchecked<'a>, Rejection> {
    let outer = Wire::parse(text)?;
    if outer.specversion.is_none() {
        return Ok(outer.into_base());
    }
    // A CloudEvents envelope: find the business event inside.
    let inner_text: Option<&'a str> = if let Some(b64) = &outer.data_base64 {
        scratch.clear();
        let bytes = envelope::decode_base64(b64)
            .map_err(|e| Rejection::new(Reason::InvalidEnvelope, format!("data_base64: {e}")))?;
        let s = String::from_utf8(bytes)
            .map_err(|_| Rejection::new(Reason::InvalidEnvelope, "data_base64 does not decode to UTF-8 text"))?;
        *scratch = s;
        Some(scratch.as_str())
    } else if let Some(data) = outer.data {
        if data.starts_with('"') {
            // `data` as a JSON string (text/plain publishes): it may hold the event as text.
            let s: String = serde_json::from_str(data)
                .map_err(|e| Rejection::new(Reason::InvalidEnvelope, format!("data string: {e}")))?;
            *scratch = s;
            Some(scratch.as_str())
        } else {
            Some(data)
        }
    } else {
        None
    };
    let inner = match inner_text {
        Some(t) if starts_object(t) => Some((t, Wire::parse(t)?)),
        _ => None,
    };
    let mut event = match inner {
        Some((raw, w)) => {
            let is_base = w.event_id.is_some() || w.event_type.is_some() || w.data.is_some();
            let mut e = w.into_base();
            if !is_base || e.data.is_none() {
                // A payload that is not a base event: the whole object is the business data.
                e.data = Some(raw);
            }
            e
        }
        None => Unchecked {
            event_id: None,
            event_type: None,
            timestamp: None,
            version: None,
            data: outer.data,
            metadata: None,
            meta_fields: None,
            source: None,
            traceparent: None,
        },
    };
    event.event_id = event.event_id.or(outer.id);
    event.event_type = event.event_type.or(outer.r#type);
    event.timestamp = event.timestamp.or(outer.time);
    event.source = event.source.or(outer.source);
    event.traceparent = outer.traceparent.filter(|t| !t.is_empty());
    Ok(event)
}

impl<'a> Wire<'a> {
    fn into_base(self) -> Unchecked<'a> {
        Unchecked {
            event_id: self.event_id,
            event_type: self.event_type,
            timestamp: self.timestamp,
            version: self.version.and_then(envelope::scalar_text),
            data: self.data,
            metadata: self.metadata,
            meta_fields: self.meta_fields,
            source: None,
            traceparent: self.traceparent.filter(|t| !t.is_empty()),
        }
    }
}

/// Pulls `correlation_id` and `source` out of a metadata object (lenient: anything that is
/// not a string object member is ignored; metadata is context, not a validation target).
pub(crate) fn metadata_fields(metadata: &str) -> (Option<Cow<'_, str>>, Option<Cow<'_, str>>) {
    if !starts_object(metadata) {
        return (None, None);
    }
    lifted_fields(envelope::meta_fields(metadata))
}

/// Raw `correlation_id` and `source` values → their string values.
pub(crate) fn lifted_fields((c, s): envelope::MetaFields<'_>) -> (Option<Cow<'_, str>>, Option<Cow<'_, str>>) {
    (c.and_then(envelope::string_value), s.and_then(envelope::string_value))
}

/// Whether JSON text starts with `{` (after ASCII whitespace, the only kind JSON allows).
pub(crate) fn starts_object(text: &str) -> bool {
    text.bytes().find(|b| !b.is_ascii_whitespace()) == Some(b'{')
}

#[cfg(test)]
mod tests;
