//! Dedup throughput and memory per remembered id.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventide::dedup::Dedup;

fn dedup(c: &mut Criterion) {
    let ids: Vec<String> = (0..100_000).map(|i| format!("0b7c{i:08x}-5f0a-4e0e-9a39-1d2a3b4c5d6e")).collect();
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("check_new_ids", |b| {
        b.iter(|| {
            let mut d = Dedup::new(3600);
            for (i, id) in ids.iter().enumerate() {
                d.check(id, 1_700_000_000_000_000 + i as i64 * 1000, i64::MAX);
            }
            d.len()
        })
    });
    let mut warm = Dedup::new(3600);
    for (i, id) in ids.iter().enumerate() {
        warm.check(id, 1_700_000_000_000_000 + i as i64 * 1000, i64::MAX);
    }
    g.bench_function("check_duplicates", |b| {
        b.iter(|| {
            for id in &ids {
                warm.check(id, 1_700_000_000_100_000, i64::MAX);
            }
        })
    });
    g.finish();
    for n in [100_000usize, 1_000_000, 10_000_000] {
        let mut d = Dedup::new(u64::MAX / 4);
        for i in 0..n {
            d.check(&format!("id-{i}"), 1_700_000_000_000_000, i64::MAX);
        }
        println!("dedup memory: {n} ids → {} bytes ({:.1} B/id)", d.memory_bytes(), d.memory_bytes() as f64 / n as f64);
    }
}

criterion_group!(benches, dedup);
criterion_main!(benches);
