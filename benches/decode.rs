//! Decode + validate throughput (one core): base events and Dapr CloudEvents.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventide::decode::{DecodeOptions, Decoder};

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_validate");
    for dapr in [false, true] {
        let entries = common::entries(10_000, dapr);
        let now = chrono::Utc::now().timestamp_micros();
        g.throughput(Throughput::Elements(entries.len() as u64));
        g.bench_function(if dapr { "dapr_cloudevent" } else { "base_event" }, |b| {
            let mut d = Decoder::new(DecodeOptions::default());
            b.iter(|| {
                let mut ok = 0u64;
                for e in &entries {
                    ok += u64::from(d.decode(e, now).is_ok());
                }
                assert_eq!(ok, entries.len() as u64);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
