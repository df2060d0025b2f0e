//! Wire shapes for the event JSON, parsed with serde without building a tree.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{Deserializer, Visitor};
use serde_json::value::RawValue;

use super::scan::{Scan, Scanner, once};
use super::{Reason, Rejection};

/// The union of the base event's and a CloudEvent's top-level fields: strings resolved,
/// nested values (`version`, `data`, `metadata`) as raw JSON text; `null` is absent.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Wire<'a> {
    pub event_id: Option<Cow<'a, str>>,
    pub event_type: Option<Cow<'a, str>>,
    pub timestamp: Option<Cow<'a, str>>,
    pub version: Option<&'a str>,
    pub data: Option<&'a str>,
    pub metadata: Option<&'a str>,
    /// `correlation_id` and `source` of `metadata` as raw values, when the scanner found
    /// them on its way through it (else [`meta_fields`] looks).
    pub meta_fields: Option<MetaFields<'a>>,
    // CloudEvents attributes (Dapr's envelope).
    pub specversion: Option<Cow<'a, str>>,
    pub id: Option<Cow<'a, str>>,
    pub r#type: Option<Cow<'a, str>>,
    pub time: Option<Cow<'a, str>>,
    pub source: Option<Cow<'a, str>>,
    pub traceparent: Option<Cow<'a, str>>,
    pub data_base64: Option<Cow<'a, str>>,
}

impl<'a> Wire<'a> {
    /// Parses the envelope: the one-pass scanner, or serde where it declines (which also
    /// words the errors).
    pub(super) fn parse(text: &'a str) -> Result<Wire<'a>, Rejection> {
        if let Ok(w) = Self::scan(text) {
            return Ok(w);
        }
        Self::parse_serde(text)
    }

    pub(super) fn scan(text: &'a str) -> Scan<Wire<'a>> {
        let mut w = Wire::default();
        let mut seen = [false; 13];
        let mut sc = Scanner::new(text);
        sc.object(|sc, key| match key {
            "event_id" => once(&mut w.event_id, &mut seen[0], sc.opt_string()?),
            "event_type" => once(&mut w.event_type, &mut seen[1], sc.opt_string()?),
            "timestamp" => once(&mut w.timestamp, &mut seen[2], sc.opt_string()?),
            "version" => once(&mut w.version, &mut seen[3], sc.raw()?),
            "data" => once(&mut w.data, &mut seen[4], sc.raw()?),
            "metadata" => {
                let (raw, lifted) = scan_metadata(sc)?;
                w.meta_fields = lifted;
                once(&mut w.metadata, &mut seen[5], raw)
            }
            "specversion" => once(&mut w.specversion, &mut seen[6], sc.opt_string()?),
            "id" => once(&mut w.id, &mut seen[7], sc.opt_string()?),
            "type" => once(&mut w.r#type, &mut seen[8], sc.opt_string()?),
            "time" => once(&mut w.time, &mut seen[9], sc.opt_string()?),
            "source" => once(&mut w.source, &mut seen[10], sc.opt_string()?),
            "traceparent" => once(&mut w.traceparent, &mut seen[11], sc.opt_string()?),
            "data_base64" => once(&mut w.data_base64, &mut seen[12], sc.opt_string()?),
            _ => sc.skip(),
        })?;
        sc.end()?;
        Ok(w)
    }

    pub(super) fn parse_serde(text: &'a str) -> Result<Wire<'a>, Rejection> {
        if !super::starts_object(text) {
            return Err(match serde_json::from_str::<&RawValue>(text) {
                Ok(_) => Rejection::new(Reason::NotAnObject, "the event JSON is not an object"),
                Err(e) => Rejection::new(Reason::InvalidJson, e.to_string()),
            });
        }
        let w: SerdeWire<'a> = serde_json::from_str(text).map_err(|e| {
            let reason = if e.is_data() { Reason::InvalidField } else { Reason::InvalidJson };
            Rejection::new(reason, e.to_string())
        })?;
        let raw = |r: Option<&'a RawValue>| r.map(RawValue::get);
        Ok(Wire {
            event_id: cow(w.event_id),
            event_type: cow(w.event_type),
            timestamp: cow(w.timestamp),
            version: raw(w.version),
            data: raw(w.data),
            metadata: raw(w.metadata),
            meta_fields: None,
            specversion: cow(w.specversion),
            id: cow(w.id),
            r#type: cow(w.r#type),
            time: cow(w.time),
            source: cow(w.source),
            traceparent: cow(w.traceparent),
            data_base64: cow(w.data_base64),
        })
    }
}

/// [`Wire`] for serde: unknown fields are skipped; nested objects stay raw text.
#[derive(Deserialize)]
struct SerdeWire<'a> {
    #[serde(borrow, default)]
    event_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    event_type: Option<Str<'a>>,
    #[serde(borrow, default)]
    timestamp: Option<Str<'a>>,
    #[serde(borrow, default)]
    version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    specversion: Option<Str<'a>>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default, rename = "type")]
    r#type: Option<Str<'a>>,
    #[serde(borrow, default)]
    time: Option<Str<'a>>,
    #[serde(borrow, default)]
    source: Option<Str<'a>>,
    #[serde(borrow, default)]
    traceparent: Option<Str<'a>>,
    #[serde(borrow, default)]
    data_base64: Option<Str<'a>>,
}

/// A JSON string borrowed from the input when it holds no escapes (serde's own `Cow`
/// always copies inside an `Option`).
pub(super) struct Str<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V).map(Str)
    }
}

/// `Option<Str>` → `Option<Cow<str>>`.
fn cow(s: Option<Str<'_>>) -> Option<Cow<'_, str>> {
    s.map(|s| s.0)
}

/// Metadata fields the archive lifts into columns (serde path).
#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default)]
    correlation_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
}

/// `correlation_id` and `source` of a metadata object, as raw JSON values.
pub(super) type MetaFields<'a> = (Option<&'a str>, Option<&'a str>);

/// The `metadata` value (raw) and, when it is an object, its `correlation_id` and `source`
/// found in the same pass (a duplicate of either: none, as serde's parse fails then).
fn scan_metadata<'a>(sc: &mut Scanner<'a>) -> Scan<(Option<&'a str>, Option<MetaFields<'a>>)> {
    if sc.peek()? != b'{' {
        return Ok((sc.raw()?, None));
    }
    let start = sc.pos();
    let (mut c, mut s, mut seen, mut dup) = (None, None, [false; 2], false);
    sc.object(|sc, key| {
        match key {
            "correlation_id" => {
                dup |= std::mem::replace(&mut seen[0], true);
                c = sc.raw()?;
            }
            "source" => {
                dup |= std::mem::replace(&mut seen[1], true);
                s = sc.raw()?;
            }
            _ => sc.skip()?,
        }
        Ok(())
    })?;
    let lifted = if dup { (None, None) } else { (c, s) };
    Ok((Some(sc.since(start)), Some(lifted)))
}

/// `correlation_id` and `source` of a metadata object, as raw JSON values (`None` when the
/// object does not parse: metadata is context, not a validation target).
pub(super) fn meta_fields(metadata: &str) -> (Option<&str>, Option<&str>) {
    match meta_fields_scan(Some(metadata)) {
        Some(found) => found,
        None => meta_fields_serde(Some(metadata)),
    }
}

/// [`meta_fields`] by the scanner; `None` when it declines.
pub(super) fn meta_fields_scan(metadata: Option<&str>) -> Option<(Option<&str>, Option<&str>)> {
    let (mut c, mut s, mut seen) = (None, None, [false; 2]);
    let mut sc = Scanner::new(metadata?);
    sc.object(|sc, key| match key {
        "correlation_id" => once(&mut c, &mut seen[0], sc.raw()?),
        "source" => once(&mut s, &mut seen[1], sc.raw()?),
        _ => sc.skip(),
    })
    .and_then(|_| sc.end())
    .ok()?;
    Some((c, s))
}

/// [`meta_fields`] by serde.
pub(super) fn meta_fields_serde(metadata: Option<&str>) -> (Option<&str>, Option<&str>) {
    match metadata.map(serde_json::from_str::<Meta<'_>>) {
        Some(Ok(m)) => (m.correlation_id.map(RawValue::get), m.source.map(RawValue::get)),
        _ => (None, None),
    }
}

/// A raw JSON value's string value; `None` for other JSON types.
pub(super) fn string_value(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.starts_with('"') {
        return None;
    }
    match Scanner::new(raw).token() {
        Ok(t) => t.string(),
        Err(_) => serde_json::from_str::<Str<'_>>(raw).ok().map(|s| s.0),
    }
}

/// A raw scalar as text: a string's value, or a number/bool literal as written; `None` for null.
pub(super) fn scalar_text(raw: &str) -> Option<Cow<'_, str>> {
    match raw.as_bytes().first() {
        Some(b'"') => string_value(raw),
        Some(b'n') | Some(b'{') | Some(b'[') | None => None,
        Some(_) => Some(Cow::Borrowed(raw)),
    }
}

/// Standard base64 (padding optional), as CloudEvents' `data_base64` uses.
pub(super) fn decode_base64(text: &str) -> Result<Vec<u8>, &'static str> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    if bytes.len() % 4 == 1 {
        return Err("truncated base64");
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c).ok_or("invalid base64 character")? << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Ok(out)
}
