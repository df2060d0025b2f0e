//! The window operator alone: pre-built `events` batches (decoding excluded) through a
//! pipeline's incremental aggregation, windows closing as the watermark passes.

mod common;

use std::path::Path;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use eventide::decode::{DecodeOptions, Decoder};
use eventide::entry::EntryId;
use eventide::names::ShardId;
use eventide::window::columns::EventColumns;
use eventide::window::merge::Merger;
use eventide::window::{Pipelines, WindowedQuery, plan, spec};

const TUMBLING: &str = r#"
window = { kind = "tumbling", size = "1m" }
fields = { amount = "double", customer_id = "string" }
sql = "SELECT event_type, count(*) AS events, sum(amount) AS revenue, min(amount) AS lo, max(amount) AS hi, count(DISTINCT customer_id) AS customers FROM events GROUP BY event_type"
"#;

const HOPPING: &str = r#"
window = { kind = "hopping", size = "10m", slide = "1m" }
event_types = ["checkout.started", "order.created", "payment.completed"]
fields = { customer_id = "string" }
sql = "SELECT count(*) FILTER (WHERE event_type = 'checkout.started') AS checkouts, count(*) FILTER (WHERE event_type = 'payment.completed') AS payments, count(DISTINCT customer_id) AS customers FROM events"
"#;

fn setup(toml: &str, rt: &tokio::runtime::Runtime) -> (spec::PipelineSpec, Vec<RecordBatch>) {
    let s = spec::parse(toml, Path::new("bench.toml")).unwrap();
    let compiled = rt.block_on(plan::compile(&s)).unwrap();
    let entries = common::entries(200_000, false);
    let mut dec = Decoder::new(DecodeOptions::default());
    let mut cols = EventColumns::new(&[&s]);
    let mut batches = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ev = dec.decode(e, i64::MAX / 2).unwrap();
        cols.append(&ev, "events", EntryId { ms: i as u64, seq: 0 });
        if cols.len() == 8192 {
            batches.extend(cols.finish(std::slice::from_ref(&compiled.input)).unwrap());
        }
    }
    batches.extend(cols.finish(std::slice::from_ref(&compiled.input)).unwrap());
    (s, batches)
}

fn window(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut g = c.benchmark_group("window");
    for (name, toml) in [("tumbling_1m_5aggs", TUMBLING), ("hopping_10m_by_1m", HOPPING)] {
        let (s, batches) = setup(toml, &rt);
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let compiled = rt.block_on(plan::compile(&s)).unwrap();
                let mut q = WindowedQuery::new(s.clone(), compiled).unwrap();
                for batch in &batches {
                    q.process(batch).unwrap();
                }
                q.flush().unwrap();
                q.stats.rows
            })
        });
    }
    g.finish();
}

/// Rows of `b` routed to shard `k` of `n` by `event_id`.
fn shard_mask(b: &RecordBatch, k: u32, n: u32) -> BooleanArray {
    let ids = b.column_by_name("event_id").unwrap().as_string::<i32>();
    ids.iter().map(|id| Some(id.is_some_and(|id| ShardId::of_event(id, n) == k))).collect()
}

/// The merger alone: every window's partial states of S shards (the same 200k events
/// routed by `event_id`) merged, evaluated and finished; throughput in windows.
fn merge(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut g = c.benchmark_group("merge");
    g.sample_size(20);
    for (name, toml) in [("tumbling_1m_5aggs", TUMBLING), ("hopping_10m_by_1m", HOPPING)] {
        let (s, batches) = setup(toml, &rt);
        let pipelines = || {
            let mut p = Pipelines::new(vec![(s.clone(), rt.block_on(plan::compile(&s)).unwrap())]).unwrap();
            p.emit_partials().unwrap();
            p
        };
        for shards in [1u32, 4, 16, 64] {
            let mut views = Vec::new();
            for k in 0..shards {
                let mut p = pipelines();
                for b in &batches {
                    p.process_batches(std::slice::from_ref(b), Some(&shard_mask(b, k, shards))).unwrap();
                }
                p.flush().unwrap();
                views.push(Some(p.shard_windows().unwrap()));
            }
            let windows = Merger::default().round(&mut pipelines(), &views).unwrap().windows;
            g.throughput(Throughput::Elements(windows));
            g.bench_function(format!("{name}/shards={shards}"), |b| {
                b.iter_batched(
                    pipelines,
                    |mut into| Merger::default().round(&mut into, &views).unwrap().windows,
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, window, merge);
criterion_main!(benches);
