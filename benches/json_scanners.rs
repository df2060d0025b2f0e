//! Issue #14, item 3: our envelope scanner head to head with sonic-rs and simd-json (and
//! serde_json, the scanner's fallback) on the same generated events, one core.
//!
//! Each contender does the decoder's job for a base event: validate the whole text, take
//! `event_id`, `event_type`, `timestamp` (parsed to µs with our RFC 3339 parser) and
//! `version`, keep `data` and `metadata` as JSON text, and lift `correlation_id` and `source`
//! out of `metadata`. Before timing, every contender's output is checked against
//! `Decoder::decode_json` on every event (`data` compared as parsed JSON, since simd-json
//! re-encodes it), and each must refuse a document whose `data` is broken.
//!
//! ```bash
//! cargo bench --features bench-json --bench json_scanners
//! ```

mod common;

use std::borrow::Cow;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventide::decode::timestamp::parse_rfc3339_us;
use eventide::decode::{DecodeOptions, Decoder, valid_event_id, valid_event_type};

/// What every contender extracts from one event.
#[derive(Debug, PartialEq)]
struct Fields<'a> {
    event_id: Cow<'a, str>,
    event_type: Cow<'a, str>,
    time_us: i64,
    data: Cow<'a, str>,
    correlation_id: Option<Cow<'a, str>>,
    source: Option<Cow<'a, str>>,
}

/// The decoder's checks, shared so that every contender pays them.
fn checked<'a>(f: Fields<'a>) -> Option<Fields<'a>> {
    (valid_event_id(&f.event_id) && valid_event_type(&f.event_type)).then_some(f)
}

/// The envelope as serde sees it; `R` is each parser's raw JSON value (kept as text).
#[derive(serde::Deserialize)]
#[serde(bound(deserialize = "R: serde::Deserialize<'de>, 'de: 'a"))]
struct Wire<'a, R> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow, default)]
    #[allow(dead_code)] // read, as the decoder does; not compared
    version: Option<Cow<'a, str>>,
    data: R,
    #[serde(default = "none")]
    metadata: Option<R>,
}

fn none<R>() -> Option<R> {
    None
}

/// The two fields lifted out of `metadata`.
#[derive(serde::Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default)]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
}

mod serde_path {
    use super::*;
    use serde_json::value::RawValue;

    pub fn decode(text: &str) -> Option<Fields<'_>> {
        let w: Wire<'_, &RawValue> = serde_json::from_str(text).ok()?;
        let meta: Option<Meta<'_>> = match w.metadata {
            Some(m) => Some(serde_json::from_str(m.get()).ok()?),
            None => None,
        };
        let (correlation_id, source) = meta.map_or((None, None), |m| (m.correlation_id, m.source));
        checked(Fields {
            time_us: parse_rfc3339_us(&w.timestamp)?,
            event_id: w.event_id,
            event_type: w.event_type,
            data: Cow::Borrowed(w.data.get()),
            correlation_id,
            source,
        })
    }
}

mod sonic_path {
    use super::*;
    use sonic_rs::LazyValue;

    pub fn decode(text: &str) -> Option<Fields<'_>> {
        let w: Wire<'_, LazyValue<'_>> = sonic_rs::from_str(text).ok()?;
        let (correlation_id, source) = match &w.metadata {
            Some(m) => {
                let owned = |c: Option<Cow<'_, str>>| c.map(|c| Cow::Owned(c.into_owned()));
                match within(text, m.as_raw_str()) {
                    Cow::Borrowed(raw) => {
                        let meta: Meta<'_> = sonic_rs::from_str(raw).ok()?;
                        (meta.correlation_id, meta.source)
                    }
                    Cow::Owned(raw) => {
                        let meta: Meta<'_> = sonic_rs::from_str(&raw).ok()?;
                        (owned(meta.correlation_id), owned(meta.source))
                    }
                }
            }
            None => (None, None),
        };
        checked(Fields {
            time_us: parse_rfc3339_us(&w.timestamp)?,
            event_id: w.event_id,
            event_type: w.event_type,
            data: within(text, w.data.as_raw_str()),
            correlation_id,
            source,
        })
    }

    /// `part` as a slice of `whole` when it is one (a lazy value's raw text borrowed from
    /// the input), else copied.
    fn within<'a>(whole: &'a str, part: &str) -> Cow<'a, str> {
        let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
        match whole.get(start..start.saturating_add(part.len())) {
            Some(s) if s.as_ptr() == part.as_ptr() => Cow::Borrowed(s),
            _ => Cow::Owned(part.to_string()),
        }
    }
}

mod simd_path {
    use super::*;
    use simd_json::prelude::*;

    /// simd-json parses in place: the entry's text is copied into `buf` first (as a decoder
    /// built on it would have to). `data` comes back re-encoded from the parsed value.
    pub fn decode(text: &str, buf: &mut Vec<u8>) -> Option<Fields<'static>> {
        buf.clear();
        buf.extend_from_slice(text.as_bytes());
        let v = simd_json::to_borrowed_value(buf).ok()?;
        let s =
            |v: Option<&simd_json::BorrowedValue<'_>>| v.and_then(|v| v.as_str()).map(|s| Cow::Owned(s.to_string()));
        let meta = v.get("metadata");
        let f = Fields {
            event_id: s(v.get("event_id"))?,
            event_type: s(v.get("event_type"))?,
            time_us: parse_rfc3339_us(v.get("timestamp")?.as_str()?)?,
            data: Cow::Owned(v.get("data")?.encode()),
            correlation_id: s(meta.and_then(|m| m.get("correlation_id"))),
            source: s(meta.and_then(|m| m.get("source"))),
        };
        checked(f)
    }
}

fn ours<'a>(d: &'a mut Decoder, text: &'a str, now: i64) -> Option<Fields<'a>> {
    let e = d.decode_json(text, now).ok()?;
    Some(Fields {
        event_id: e.event_id,
        event_type: e.event_type,
        time_us: e.event_time_us,
        data: Cow::Borrowed(e.data?),
        correlation_id: e.correlation_id,
        source: e.source,
    })
}

fn same_data(a: &str, b: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(a).ok() == serde_json::from_str::<serde_json::Value>(b).ok()
}

/// Every contender agrees with the decoder on every event, and refuses a broken `data`.
fn check(texts: &[String], now: i64) {
    let mut d = Decoder::new(DecodeOptions::default());
    let mut buf = Vec::new();
    for t in texts {
        let want = ours(&mut d, t, now).expect("the generator's events decode");
        for (name, got) in [
            ("serde_json", serde_path::decode(t)),
            ("sonic-rs", sonic_path::decode(t)),
            ("simd-json", simd_path::decode(t, &mut buf)),
        ] {
            let got = got.unwrap_or_else(|| panic!("{name} refused {t}"));
            assert!(same_data(&got.data, &want.data), "{name}: data differs on {t}");
            let strip = |f: &Fields<'_>| {
                (
                    f.event_id.to_string(),
                    f.event_type.to_string(),
                    f.time_us,
                    f.correlation_id.clone().map(Cow::into_owned),
                    f.source.clone().map(Cow::into_owned),
                )
            };
            assert_eq!(strip(&got), strip(&want), "{name} on {t}");
        }
    }
    let broken = texts[0].replacen("\"data\":{", "\"data\":{\"x\":tru,", 1);
    assert_ne!(broken, texts[0], "the generator's events have a data object");
    assert!(ours(&mut d, &broken, now).is_none());
    assert!(serde_path::decode(&broken).is_none(), "serde_json accepted a broken data");
    assert!(sonic_path::decode(&broken).is_none(), "sonic-rs accepted a broken data");
    assert!(simd_path::decode(&broken, &mut buf).is_none(), "simd-json accepted a broken data");
}

fn scanners(c: &mut Criterion) {
    let entries = common::entries(10_000, false);
    let texts: Vec<String> = entries
        .iter()
        .map(|e| String::from_utf8(e.field(b"data").expect("a data field").to_vec()).expect("UTF-8"))
        .collect();
    let now = chrono::Utc::now().timestamp_micros();
    check(&texts, now);
    let bytes: usize = texts.iter().map(String::len).sum();
    let mut g = c.benchmark_group("json_scanners");
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function("eventide_scanner", |b| {
        let mut d = Decoder::new(DecodeOptions::default());
        b.iter(|| texts.iter().filter(|t| ours(&mut d, t, now).is_some()).count())
    });
    g.bench_function("serde_json", |b| b.iter(|| texts.iter().filter(|t| serde_path::decode(t).is_some()).count()));
    g.bench_function("sonic_rs", |b| b.iter(|| texts.iter().filter(|t| sonic_path::decode(t).is_some()).count()));
    g.bench_function("simd_json", |b| {
        let mut buf = Vec::new();
        b.iter(|| texts.iter().filter(|t| simd_path::decode(t, &mut buf).is_some()).count())
    });
    g.finish();
    eprintln!("json_scanners: {} events, {} bytes on average", texts.len(), bytes / texts.len());
}

criterion_group!(benches, scanners);
criterion_main!(benches);
