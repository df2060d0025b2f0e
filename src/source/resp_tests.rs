//! The wire parser against the redis crate's (the same replies must give the same entries),
//! at every point a reply can be cut, and on bytes that are not RESP.

use bytes::Bytes;
use redis::Value;

use super::*;
use crate::source::reply;

/// RESP2 encoding of a value, as Redis sends it.
fn enc(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.extend_from_slice(b"*-1\r\n"),
        Value::BulkString(b) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::SimpleString(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        Value::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
        Value::Array(a) => {
            out.extend_from_slice(format!("*{}\r\n", a.len()).as_bytes());
            a.iter().for_each(|v| enc(v, out));
        }
        other => panic!("not RESP2: {other:?}"),
    }
}

fn bs(b: &[u8]) -> Value {
    Value::BulkString(b.to_vec())
}

/// A reply of two streams with generated events (binary bytes and CRLFs in values
/// included), a deleted entry and an empty value.
fn sample() -> Value {
    let events = crate::generator::Generator::new(crate::generator::GenOptions { seed: 3, ..Default::default() });
    let mut orders = Vec::new();
    for (i, e) in events.take(50).enumerate() {
        let mut flat = Vec::new();
        for (k, v) in e.fields {
            flat.push(bs(k.as_bytes()));
            flat.push(bs(&v));
        }
        orders.push(Value::Array(vec![bs(format!("1700000000000-{i}").as_bytes()), Value::Array(flat)]));
    }
    orders.push(Value::Array(vec![bs(b"1700000000001-0"), Value::Nil]));
    orders.push(Value::Array(vec![
        Value::SimpleString("1700000000002-0".into()),
        Value::Array(vec![bs(b"data"), bs(b"a\r\nb\x00\xff"), bs(b"empty"), bs(b"")]),
    ]));
    Value::Array(vec![
        Value::Array(vec![bs(b"orders"), Value::Array(orders)]),
        Value::Array(vec![bs(b"payments"), Value::Array(Vec::new())]),
    ])
}

fn wire(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    enc(v, &mut out);
    out
}

#[test]
fn gives_the_same_entries_as_the_redis_crate() {
    let v = sample();
    let bytes = wire(&v);
    let theirs = reply::xread(redis::parse_redis_value(&bytes).unwrap()).unwrap();
    assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
    let ours = xread(Bytes::from(bytes)).unwrap();
    assert_eq!(ours, theirs);
    assert_eq!(ours[0].1.len(), 52);
    assert!(ours[0].1[50].is_deleted());
    assert_eq!(ours[0].1[51].field(b"data"), Some(&b"a\r\nb\x00\xff"[..]));
    assert_eq!(ours[0].1[51].field(b"empty"), Some(&b""[..]));
    assert!(ours[1].1.is_empty());
}

#[test]
fn a_reply_is_whole_only_at_its_last_byte() {
    let mut bytes = wire(&sample());
    let len = bytes.len();
    for cut in 0..len {
        assert_eq!(frame_len(&bytes[..cut]).unwrap(), None, "cut at {cut}");
    }
    // The next reply's first bytes do not count.
    bytes.extend_from_slice(b"*1\r\n$2\r\nab");
    assert_eq!(frame_len(&bytes).unwrap(), Some(len));
}

#[test]
fn nil_errors_and_other_replies() {
    assert!(xread(Bytes::from_static(b"*-1\r\n")).unwrap().is_empty());
    assert!(xread(Bytes::from_static(b"$-1\r\n")).unwrap().is_empty());
    let e = xread(Bytes::from_static(b"-NOGROUP No such key 'orders' or consumer group\r\n")).unwrap_err();
    assert_eq!(e.code(), Some("NOGROUP"));
    assert!(e.to_string().contains("consumer group"), "{e}");
    assert!(matches!(xread(Bytes::from_static(b":3\r\n")), Err(RespError::Shape { .. })));
    assert!(error_of(b"+OK\r\n").is_none());
    assert_eq!(error_of(b"-WRONGPASS invalid username-password pair\r\n").unwrap().code(), Some("WRONGPASS"));
    // An entry with more parts than [id, fields] (a future Redis): the extra ones are skipped.
    let v = Value::Array(vec![Value::Array(vec![
        bs(b"s"),
        Value::Array(vec![Value::Array(vec![bs(b"5-1"), Value::Array(vec![bs(b"k"), bs(b"v")]), Value::Int(7)])]),
        Value::Int(1),
    ])]);
    let got = xread(Bytes::from(wire(&v))).unwrap();
    assert_eq!(got[0].1[0].id, EntryId { ms: 5, seq: 1 });
    assert_eq!(got[0].1[0].field(b"k"), Some(&b"v"[..]));
}

#[test]
fn bytes_that_are_not_resp_are_errors_not_panics() {
    for bad in [&b"?x\r\n"[..], b"*x\r\n", b"$3\r\nabcd\r\n", b"*1\r\n$-7\r\n", b"$99999999999\r\n", b"+ok\rx"] {
        assert!(frame_len(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(frame_len(&[b'+'; MAX_LINE + 10]).is_err());
    // Every byte of a valid reply flipped: an error, a shorter or longer frame, never a panic.
    let good = wire(&sample());
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in 0..good.len() {
        let mut b = good.clone();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        b[i] = rng as u8;
        if let Ok(Some(n)) = frame_len(&b) {
            let _ = xread(Bytes::copy_from_slice(&b[..n]));
        }
    }
}

#[test]
fn a_scan_resumes_as_bytes_arrive() {
    let mut bytes = wire(&sample());
    let len = bytes.len();
    bytes.extend_from_slice(b"+OK\r\n");
    for chunk in [1, 7, 100, 4096] {
        let mut scan = Scan::default();
        let mut got = None;
        for end in (chunk..bytes.len() + chunk).step_by(chunk) {
            let end = end.min(bytes.len());
            if let Some(n) = scan.whole(&bytes[..end]).unwrap() {
                got = Some((n, end));
                break;
            }
        }
        let (n, at) = got.expect("a whole reply");
        assert_eq!(n, len);
        assert!(at >= len && at < len + chunk, "whole at {at} of {len} (chunk {chunk})");
        // The scan starts over for the next reply.
        assert_eq!(scan.whole(&bytes[len..]).unwrap(), Some(5));
    }
}
