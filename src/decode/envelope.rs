//! Wire shapes for the event JSON, parsed with serde without building a tree.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{Deserializer, Visitor};
use serde_json::value::RawValue;

use super::{Reason, Rejection};

/// The union of the base event's and a CloudEvent's top-level fields. Unknown fields are
/// skipped; nested objects stay raw text.
#[derive(Deserialize)]
pub(super) struct Wire<'a> {
    #[serde(borrow, default)]
    pub event_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub event_type: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub timestamp: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
    // CloudEvents attributes (Dapr's envelope).
    #[serde(borrow, default)]
    pub specversion: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub id: Option<Str<'a>>,
    #[serde(borrow, default, rename = "type")]
    pub r#type: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub time: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub source: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub traceparent: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub data_base64: Option<Str<'a>>,
}

impl<'a> Wire<'a> {
    pub(super) fn parse(text: &'a str) -> Result<Wire<'a>, Rejection> {
        if !super::starts_object(text) {
            return Err(match serde_json::from_str::<&RawValue>(text) {
                Ok(_) => Rejection::new(Reason::NotAnObject, "the event JSON is not an object"),
                Err(e) => Rejection::new(Reason::InvalidJson, e.to_string()),
            });
        }
        serde_json::from_str(text).map_err(|e| {
            let reason = if e.is_data() { Reason::InvalidField } else { Reason::InvalidJson };
            Rejection::new(reason, e.to_string())
        })
    }
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
pub(super) fn cow(s: Option<Str<'_>>) -> Option<Cow<'_, str>> {
    s.map(|s| s.0)
}

/// Metadata fields the archive lifts into columns.
#[derive(Deserialize)]
pub(super) struct Meta<'a> {
    #[serde(borrow, default)]
    pub correlation_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub source: Option<&'a RawValue>,
}

/// A JSON string's value; `None` for other JSON types.
pub(super) fn string_value(raw: &RawValue) -> Option<Cow<'_, str>> {
    if raw.get().starts_with('"') { serde_json::from_str::<Str<'_>>(raw.get()).ok().map(|s| s.0) } else { None }
}

/// A scalar as text: a string's value, or a number/bool literal as written; `None` for null.
pub(super) fn scalar_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let t = raw.get();
    match t.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Str<'_>>(t).ok().map(|s| s.0),
        Some(b'n') | Some(b'{') | Some(b'[') | None => None,
        Some(_) => Some(Cow::Borrowed(t)),
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
