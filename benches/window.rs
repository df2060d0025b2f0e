//! The window operator alone: pre-built `events` batches (decoding excluded) through a
//! pipeline's incremental aggregation, windows closing as the watermark passes.

mod common;

use std::path::Path;

use arrow::array::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventide::decode::{DecodeOptions, Decoder};
use eventide::entry::EntryId;
use eventide::window::columns::EventColumns;
use eventide::window::{WindowedQuery, plan, spec};

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

criterion_group!(benches, window);
criterion_main!(benches);
