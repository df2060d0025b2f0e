//! `eventide bench --window`: the window operator alone, in the release binary. Generated
//! events are decoded into `events` batches first (not timed); then the batches go through
//! a pipeline's incremental aggregation and every window is closed (timed). Same cases as
//! `benches/window.rs` (criterion), without building the bench profile.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use arrow::array::RecordBatch;
use eventide::decode::{DecodeOptions, Decoder};
use eventide::entry::{EntryId, RawEntry};
use eventide::generator::{GenOptions, Generator};
use eventide::window::columns::EventColumns;
use eventide::window::{WindowedQuery, plan, spec};

const CASES: [(&str, &str); 2] = [
    (
        "tumbling 1m, count/sum/min/max/count(DISTINCT) by event_type",
        r#"window = { kind = "tumbling", size = "1m" }
fields = { amount = "double", customer_id = "string" }
sql = "SELECT event_type, count(*) AS events, sum(amount) AS revenue, min(amount) AS lo, max(amount) AS hi, count(DISTINCT customer_id) AS customers FROM events GROUP BY event_type""#,
    ),
    (
        "hopping 10m every 1m, funnel counts + count(DISTINCT)",
        r#"window = { kind = "hopping", size = "10m", slide = "1m" }
event_types = ["checkout.started", "order.created", "payment.completed"]
fields = { customer_id = "string" }
sql = "SELECT count(*) FILTER (WHERE event_type = 'checkout.started') AS checkouts, count(*) FILTER (WHERE event_type = 'payment.completed') AS payments, count(DISTINCT customer_id) AS customers FROM events""#,
    ),
];

pub async fn run(events: u64) -> anyhow::Result<ExitCode> {
    let entries: Vec<RawEntry> = Generator::new(GenOptions { entries: events, seed: 11, ..Default::default() })
        .enumerate()
        .map(|(i, e)| e.to_raw(EntryId { ms: i as u64, seq: 0 }))
        .collect();
    for (name, toml) in CASES {
        let s = spec::parse(toml, Path::new("bench.toml")).map_err(|p| anyhow::anyhow!("{p:?}"))?;
        let input = plan::compile(&s).await?.input;
        let mut dec = Decoder::new(DecodeOptions::default());
        let mut cols = EventColumns::new(&[&s]);
        let mut batches: Vec<RecordBatch> = Vec::new();
        for e in &entries {
            let ev = dec.decode(e, i64::MAX / 2).map_err(|r| anyhow::anyhow!("{}", r.detail))?;
            cols.append(&ev, "events", e.id);
            if cols.len() == 8192 {
                batches.extend(cols.finish(std::slice::from_ref(&input))?);
            }
        }
        batches.extend(cols.finish(std::slice::from_ref(&input))?);
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let mut rates = Vec::new();
        for _ in 0..5 {
            let mut q = WindowedQuery::new(s.clone(), plan::compile(&s).await?)?;
            let t = Instant::now();
            for b in &batches {
                q.process(b)?;
            }
            q.flush()?;
            rates.push(rows as f64 / t.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "window operator, {name}: {rows} rows, median {:.2} M rows/s (min {:.2}, max {:.2})",
            rates[2] / 1e6,
            rates[0] / 1e6,
            rates[4] / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}
