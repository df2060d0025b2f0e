//! A stream read's reply, bytes → entries: the redis crate's parser (a `Value` tree, then
//! `source::reply`) against the reader's own (`source::resp`, slices of one buffer). The
//! measurement behind the hand-written parser.

mod common;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventide::entry::RawEntry;
use eventide::source::{reply, resp};

/// An `XREADGROUP` reply of one stream, as Redis writes it.
fn wire(entries: &[RawEntry]) -> Vec<u8> {
    fn bulk(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    }
    let mut out = format!("*1\r\n*2\r\n$6\r\norders\r\n*{}\r\n", entries.len()).into_bytes();
    for e in entries {
        out.extend_from_slice(b"*2\r\n");
        bulk(&mut out, e.id.to_string().as_bytes());
        out.extend_from_slice(format!("*{}\r\n", e.fields.len() * 2).as_bytes());
        for (k, v) in &e.fields {
            bulk(&mut out, k);
            bulk(&mut out, v);
        }
    }
    out
}

fn parse(c: &mut Criterion) {
    for dapr in [false, true] {
        let bytes = wire(&common::entries(1000, dapr));
        let mut g = c.benchmark_group(if dapr { "read_reply_dapr" } else { "read_reply" });
        g.throughput(Throughput::Elements(1000));
        g.bench_function("redis_crate_value_tree", |b| {
            b.iter(|| reply::xread(redis::parse_redis_value(&bytes).unwrap()).unwrap())
        });
        g.bench_function("wire_slices", |b| {
            b.iter(|| {
                let n = resp::frame_len(&bytes).unwrap().unwrap();
                // The reader's copy from the socket into its buffer is part of the cost.
                resp::xread(Bytes::copy_from_slice(&bytes[..n])).unwrap()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, parse);
criterion_main!(benches);
