use super::*;
use crate::entry::{EntryId, RawEntry};

const NOW: i64 = 1_793_534_400_000_000; // 2026-11-01T12:00:00Z

fn entry(fields: &[(&str, &str)]) -> RawEntry {
    RawEntry {
        id: EntryId { ms: 1, seq: 0 },
        fields: fields.iter().map(|(k, v)| (k.as_bytes().to_vec().into(), v.as_bytes().to_vec().into())).collect(),
    }
}

fn reason_of(fields: &[(&str, &str)]) -> Reason {
    let e = entry(fields);
    let mut d = Decoder::new(DecodeOptions { max_entry_bytes: 4096, ..Default::default() });
    d.decode(&e, NOW).expect_err("should be rejected").reason
}

const BASE: &str = r#"{"event_id":"e-1","event_type":"order.created","timestamp":"2026-11-01T11:59:00Z","version":"1.0","data":{"order_id":"o-1","amount":19.99},"metadata":{"correlation_id":"c-9","source":"order-service","x":[1,2]}}"#;

#[test]
fn base_event_decodes_with_raw_payloads() {
    let e = entry(&[("data", BASE)]);
    let mut d = Decoder::default();
    let ev = d.decode(&e, NOW).unwrap();
    assert_eq!(ev.event_id, "e-1");
    assert_eq!(ev.event_type, "order.created");
    assert_eq!(ev.event_time_us, NOW - 60_000_000);
    assert_eq!(ev.version.as_deref(), Some("1.0"));
    assert_eq!(ev.data, Some(r#"{"order_id":"o-1","amount":19.99}"#));
    assert_eq!(ev.correlation_id.as_deref(), Some("c-9"));
    assert_eq!(ev.source.as_deref(), Some("order-service"));
    assert!(matches!(ev.event_id, Cow::Borrowed(_)), "no copy when there are no escapes");
}

#[test]
fn numeric_version_and_escaped_id() {
    let e = entry(&[(
        "data",
        r#"{"event_id":"a\"b","event_type":"cart.item_added","timestamp":"2026-11-01T11:59:00.5+01:00","version":2}"#,
    )]);
    let mut d = Decoder::default();
    let ev = d.decode(&e, NOW).unwrap();
    assert_eq!(ev.event_id, "a\"b");
    assert_eq!(ev.version.as_deref(), Some("2"));
    assert_eq!(ev.data, None);
}

#[test]
fn dapr_envelope_with_embedded_event_any_field_order() {
    let ce = format!(
        r#"{{"data":{BASE},"datacontenttype":"application/json","id":"ce-1","pubsubname":"pubsub","source":"checkout","specversion":"1.0","time":"2026-11-01T12:00:00Z","topic":"orders","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","type":"com.dapr.event.sent"}}"#
    );
    let e = entry(&[("metadata", "{}"), ("data", &ce)]);
    let mut d = Decoder::default();
    let ev = d.decode(&e, NOW).unwrap();
    assert_eq!(ev.event_id, "e-1", "the business id wins over the CloudEvent id");
    assert_eq!(ev.event_type, "order.created");
    assert_eq!(ev.source.as_deref(), Some("order-service"));
    assert_eq!(ev.traceparent.as_deref(), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    assert_eq!(ev.data, Some(r#"{"order_id":"o-1","amount":19.99}"#));
}

#[test]
fn dapr_envelope_falls_back_to_cloudevent_attributes() {
    // A payload that is not a base event: id/type/time come from the envelope.
    let ce = r#"{"data":{"order_id":"o-7","amount":5},"id":"ce-7","source":"checkout","specversion":"1.0","time":"2026-11-01T11:00:00Z","type":"order.paid"}"#;
    let e = entry(&[("data", ce)]);
    let mut d = Decoder::default();
    let ev = d.decode(&e, NOW).unwrap();
    assert_eq!(ev.event_id, "ce-7");
    assert_eq!(ev.event_type, "order.paid");
    assert_eq!(ev.event_time_us, NOW - 3_600_000_000);
    assert_eq!(ev.source.as_deref(), Some("checkout"));
    assert_eq!(ev.data, Some(r#"{"order_id":"o-7","amount":5}"#));
    assert_eq!(ev.traceparent, None);
}

#[test]
fn dapr_base64_and_string_data() {
    let b64 = encode_b64(BASE.as_bytes());
    let ce = format!(r#"{{"data_base64":"{b64}","id":"x","specversion":"1.0","type":"com.dapr.event.sent"}}"#);
    let e = entry(&[("data", &ce)]);
    let mut d = Decoder::default();
    assert_eq!(d.decode(&e, NOW).unwrap().event_id, "e-1");

    let s = serde_json::to_string(BASE).unwrap();
    let ce = format!(r#"{{"data":{s},"id":"x","specversion":"1.0","datacontenttype":"text/plain"}}"#);
    let e = entry(&[("data", &ce)]);
    assert_eq!(d.decode(&e, NOW).unwrap().event_type, "order.created");
}

#[test]
fn dapr_default_type_is_rejected_not_guessed() {
    let ce = r#"{"data":{"x":1},"id":"ce-1","specversion":"1.0","time":"2026-11-01T12:00:00Z","type":"com.dapr.event.sent"}"#;
    assert_eq!(reason_of(&[("data", ce)]), Reason::InvalidEventType);
}

#[test]
fn each_malformed_class_has_its_reason() {
    let big = format!(r#"{{"event_id":"{}"}}"#, "x".repeat(5000));
    let cases: Vec<(Vec<(&str, &str)>, Reason)> = vec![
        (vec![("data", big.as_str())], Reason::EntryTooLarge),
        (vec![("payload", BASE)], Reason::MissingField),
        (vec![("data", "{\"event_id\": ")], Reason::InvalidJson),
        (vec![("data", "[1,2]")], Reason::NotAnObject),
        (
            vec![("data", r#"{"event_id":5,"event_type":"order.created","timestamp":"2026-11-01T12:00:00Z"}"#)],
            Reason::InvalidField,
        ),
        (vec![("data", r#"{"specversion":"1.0","data_base64":"!!!"}"#)], Reason::InvalidEnvelope),
        (
            vec![("data", r#"{"event_type":"order.created","timestamp":"2026-11-01T12:00:00Z"}"#)],
            Reason::MissingEventId,
        ),
        (
            vec![("data", r#"{"event_id":"  ","event_type":"order.created","timestamp":"2026-11-01T12:00:00Z"}"#)],
            Reason::InvalidEventId,
        ),
        (vec![("data", r#"{"event_id":"e","timestamp":"2026-11-01T12:00:00Z"}"#)], Reason::MissingEventType),
        (
            vec![("data", r#"{"event_id":"e","event_type":"Order.Created","timestamp":"2026-11-01T12:00:00Z"}"#)],
            Reason::InvalidEventType,
        ),
        (
            vec![("data", r#"{"event_id":"e","event_type":"../../etc","timestamp":"2026-11-01T12:00:00Z"}"#)],
            Reason::InvalidEventType,
        ),
        (vec![("data", r#"{"event_id":"e","event_type":"order.created"}"#)], Reason::MissingTimestamp),
        (
            vec![("data", r#"{"event_id":"e","event_type":"order.created","timestamp":"01/11/2026"}"#)],
            Reason::InvalidTimestamp,
        ),
        (
            vec![("data", r#"{"event_id":"e","event_type":"order.created","timestamp":"2099-01-01T00:00:00Z"}"#)],
            Reason::TimestampInFuture,
        ),
    ];
    for (fields, want) in cases {
        assert_eq!(reason_of(&fields), want, "{fields:?}");
    }
    let e = RawEntry { id: EntryId::default(), fields: vec![(b"data".to_vec().into(), vec![b'{', 0xff, b'}'].into())] };
    assert_eq!(Decoder::default().decode(&e, NOW).unwrap_err().reason, Reason::InvalidUtf8);
}

#[test]
fn event_type_rule() {
    for ok in ["order.created", "cart.item_added", "payment.refund.issued", "a1.b2"] {
        assert!(valid_event_type(ok), "{ok}");
    }
    for bad in
        ["order", "order.", ".order.created", "a.b.c.d", "order.Created", "order.1x", "or der.x", "order/created.x", ""]
    {
        assert!(!valid_event_type(bad), "{bad}");
    }
}

fn encode_b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..c.len() + 1 {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn reason_index_matches_all() {
    for (i, r) in Reason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i, "{r}");
    }
}

/// Generated entries (base events, Dapr envelopes, every malformed class) and random
/// mutations of them: wherever the one-pass scanner accepts, serde's parse gives the same
/// fields; and the scanner accepts the unmutated valid events (it is the fast path).
#[test]
fn scanner_agrees_with_serde_on_generated_and_mutated_input() {
    use crate::generator::{GenOptions, Generator};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut texts: Vec<String> = Vec::new();
    for dapr in [false, true] {
        let opts = GenOptions { entries: 400, malformed: 0.1, duplicates: 0.05, dapr, ..Default::default() };
        for e in Generator::new(opts) {
            if let Some((_, v)) = e.fields.iter().find(|(k, _)| *k == "data") {
                texts.push(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    texts.push(r#"{"event_id":"a\"b\u00e9","event_type":null,"version":[1],"data":"{\"x\":1}","id":1}"#.into());
    texts.push(r#"{"event_id":"x","event_id":"y"}"#.into());
    texts.push(r#"{"ev\u0065nt_id":"x"}"#.into());
    let (mut fast, mut total) = (0, 0);
    let originals = texts.len();
    for (n, t) in texts.iter().enumerate() {
        for round in 0..12 {
            let mut b = t.clone().into_bytes();
            if round > 0 && !b.is_empty() {
                for _ in 0..rng.random_range(1..3) {
                    if b.is_empty() {
                        break;
                    }
                    let at = rng.random_range(0..b.len());
                    match rng.random_range(0..4) {
                        0 => {
                            b.remove(at);
                        }
                        1 => b.insert(at, *b"\"\\{}[]:,0-e \t\x01".get(rng.random_range(0..15)).unwrap_or(&b' ')),
                        2 => b.truncate(at),
                        _ => {
                            let end = (at + rng.random_range(1..20)).min(b.len());
                            let piece = b[at..end].to_vec();
                            b.splice(at..at, piece);
                        }
                    }
                }
            }
            let Ok(text) = String::from_utf8(b) else { continue };
            total += 1;
            let slow = envelope::Wire::parse_serde(&text);
            match envelope::Wire::scan(&text) {
                Ok(mut w) => {
                    fast += 1;
                    let lifted = w.meta_fields.take();
                    let slow = slow.unwrap_or_else(|e| panic!("serde rejects what the scanner accepts: {e:?}\n{text}"));
                    assert!(w == slow, "fields differ for {text}");
                    let (a, b) = (envelope::meta_fields_scan(w.metadata), envelope::meta_fields_serde(w.metadata));
                    if let Some(a) = a {
                        assert_eq!(a, b, "metadata fields differ for {text}");
                    }
                    if let Some(lifted) = lifted {
                        assert_eq!(lifted, b, "metadata fields found in passing differ for {text}");
                    }
                }
                Err(_) if round == 0 && n < originals - 3 && slow.is_ok() && !text.contains('\\') => {
                    panic!("the scanner declined a generated event: {text}")
                }
                Err(_) => {}
            }
        }
    }
    assert!(fast * 3 > total, "the scanner took only {fast} of {total}");
}
