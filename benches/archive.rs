//! Archive encoding: decoded events → column builders → zstd Parquet bytes (in memory).

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventide::decode::{DecodeOptions, Decoder};
use eventide::sink::archive::{Archive, ArchiveOptions};
use eventide::sink::lake::Lake;

fn archive(c: &mut Criterion) {
    let entries = common::entries(50_000, false);
    let now = chrono::Utc::now().timestamp_micros();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    let mut g = c.benchmark_group("archive");
    g.sample_size(10);
    g.throughput(Throughput::Elements(entries.len() as u64));
    for level in [1, 3] {
        g.bench_function(format!("append_and_encode_zstd{level}"), |b| {
            b.iter(|| {
                let lake = Lake::open("memory://").unwrap();
                let opts = ArchiveOptions {
                    prefix: "events".into(),
                    roll_bytes: 1 << 30,
                    max_buffered_bytes: 1 << 30,
                    max_open_files: 1000,
                    zstd_level: level,
                    writer: "bench".into(),
                };
                let mut a = Archive::new(lake, opts).unwrap();
                let mut d = Decoder::new(DecodeOptions::default());
                for chunk in entries.chunks(1000) {
                    for e in chunk {
                        let ev = d.decode(e, now).unwrap();
                        a.append(&ev, "events", e.id, now).unwrap();
                    }
                    rt.block_on(a.encode_ready()).unwrap();
                }
                let files = rt.block_on(a.commit_all()).unwrap();
                files.iter().map(|f| f.bytes).sum::<u64>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, archive);
criterion_main!(benches);
