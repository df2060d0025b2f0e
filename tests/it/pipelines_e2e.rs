//! End to end over Redis: generated events (duplicates, out-of-order within the watermark,
//! malformed entries) → `eventide run` with every example pipeline in `pipelines/` → the
//! tables read back equal an expectation computed independently of the window engine:
//! fixed windows by one DataFusion batch query per pipeline over the events expanded into
//! their windows, sessions by a plain loop. A replay of the same events gives the same tables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use eventide::generator::{GenOptions, Kind};
use eventide::lake_sql::LakeQuery;
use eventide::sink::lake::Lake;
use eventide::window::spec::WindowKind;
use eventide::window::{Pipelines, check_dir};

use crate::support::{self, RedisServer, table, text_rows};

struct Ev {
    ty: String,
    t: i64,
    amount: Option<f64>,
    customer: Option<String>,
    json: String,
}

fn accepted_events(entries: &[eventide::generator::GenEntry]) -> Vec<Ev> {
    entries
        .iter()
        .filter(|e| e.kind == Kind::Event)
        .map(|e| {
            let body = &e.fields.iter().find(|(k, _)| *k == "data").unwrap().1;
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            let t = eventide::decode::timestamp::parse_rfc3339_us(v["timestamp"].as_str().unwrap()).unwrap();
            Ev {
                ty: v["event_type"].as_str().unwrap().to_string(),
                t,
                amount: v["data"]["amount"].as_f64(),
                customer: v["data"]["customer_id"].as_str().map(str::to_string),
                json: String::from_utf8(body.clone()).unwrap(),
            }
        })
        .collect()
}

/// The pipeline's SQL, run in one batch over its events expanded into their windows.
async fn batch_expectation(sql: &str, size: i64, slide: i64, events: &[&Ev]) -> Vec<String> {
    let (mut ws, mut we, mut ty, mut amt, mut cust) = (vec![], vec![], vec![], vec![], vec![]);
    for e in events {
        let s = e.t.div_euclid(slide);
        for j in 1..=size / slide {
            let end = (s + j) * slide;
            ws.push(end - size);
            we.push(end);
            ty.push(e.ty.clone());
            amt.push(e.amount);
            cust.push(e.customer.clone());
        }
    }
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("customer_id", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(TimestampMicrosecondArray::from(ws).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(we).with_timezone("UTC")),
            Arc::new(StringArray::from(ty)),
            Arc::new(Float64Array::from(amt)),
            Arc::new(StringArray::from(cust)),
        ],
    )
    .unwrap();
    let ctx = SessionContext::new();
    ctx.register_table("events", Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())).unwrap();
    let mut q = sql.replacen("SELECT", "SELECT window_start, window_end,", 1);
    q = match q.find("GROUP BY") {
        Some(i) => format!("{}GROUP BY window_start, window_end, {}", &q[..i], &q[i + 8..]),
        None => format!("{q} GROUP BY window_start, window_end"),
    };
    text_rows(&ctx.sql(&q).await.unwrap().collect().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_pipelines_over_redis_match_an_independent_computation() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    // 12,000 entries 100 ms apart (20 minutes of event time), 3 s of jitter (< the 5 s
    // watermark of every example), 5% duplicates, 1% malformed.
    let options = GenOptions {
        entries: 12_000,
        duplicates: 0.05,
        malformed: 0.01,
        jitter: Duration::from_secs(3),
        spacing_us: 100_000,
        start_us: 1_767_225_600_000_000,
        seed: 7,
        ..Default::default()
    };
    let entries = support::publish_generated(&mut conn, "shop", options).await;
    let events = accepted_events(&entries);

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let lake_dir = tempfile::tempdir().unwrap();
    let mut opts = support::options(&redis.url(), &["shop"], lake_dir.path().to_str().unwrap(), "c1");
    opts.pipelines = Some(dir.clone());
    let summary = support::run_until_idle(opts).await;
    assert_eq!(summary.stats.accepted, events.len() as u64);

    let lake = Lake::open(lake_dir.path().to_str().unwrap()).unwrap();
    let pipelines = Pipelines::new(check_dir(&dir).await.unwrap()).unwrap();
    assert_eq!(pipelines.queries().len(), 4, "the four example pipelines");
    let q = LakeQuery::open(&lake, &pipelines.output_schemas()).await.unwrap();
    assert!(q.sql("SELECT * FROM late_events").await.is_err(), "no late events: jitter is within the watermark");

    for query in pipelines.queries() {
        let spec = &query.spec;
        let mine: Vec<&Ev> = events.iter().filter(|e| spec.selects("shop", &e.ty)).collect();
        let got = table(&lake, &pipelines, &spec.name).await;
        let want = match spec.window {
            WindowKind::Tumbling { size } => batch_expectation(&spec.sql, size, size, &mine).await,
            WindowKind::Hopping { size, slide } => batch_expectation(&spec.sql, size, slide, &mine).await,
            WindowKind::Session { gap } => sessions_expectation(gap, &mine),
        };
        assert!(!want.is_empty(), "{}: nothing expected", spec.name);
        support::assert_same_rows(&got, &want, &spec.name);
    }

    // The same events replayed from a file give the same tables.
    let jsonl = lake_dir.path().join("replay.jsonl");
    std::fs::write(&jsonl, events.iter().map(|e| e.json.as_str()).collect::<Vec<_>>().join("\n")).unwrap();
    let replay_dir = tempfile::tempdir().unwrap();
    let replay_lake = Lake::open(replay_dir.path().to_str().unwrap()).unwrap();
    let fresh = Pipelines::new(check_dir(&dir).await.unwrap()).unwrap();
    let s = eventide::replay::run(&[jsonl], fresh, &replay_lake, Duration::from_secs(3600), "shop").await.unwrap();
    assert_eq!(s.accepted, events.len() as u64);
    for query in pipelines.queries() {
        let name = &query.spec.name;
        let (replayed, live) = (table(&replay_lake, &pipelines, name).await, table(&lake, &pipelines, name).await);
        support::assert_same_rows(&replayed, &live, &format!("replay of {name}"));
    }
}

/// customer_sessions.toml by hand: per customer, split where the gap reaches 30 minutes.
fn sessions_expectation(gap: i64, events: &[&Ev]) -> Vec<String> {
    let mut by_customer: BTreeMap<&str, Vec<&Ev>> = BTreeMap::new();
    for e in events {
        if let Some(c) = &e.customer {
            by_customer.entry(c).or_default().push(e);
        }
    }
    let fmt_ts = |us: i64| {
        arrow::util::display::ArrayFormatter::try_new(
            &TimestampMicrosecondArray::from(vec![us]).with_timezone("UTC"),
            &Default::default(),
        )
        .unwrap()
        .value(0)
        .to_string()
    };
    let mut out = BTreeSet::new();
    for (c, mut evs) in by_customer {
        evs.sort_by_key(|e| e.t);
        let mut start = 0;
        for i in 1..=evs.len() {
            if i == evs.len() || evs[i].t >= evs[i - 1].t + gap {
                let s = &evs[start..i];
                let orders: Vec<_> = s.iter().filter(|e| e.ty == "order.created").collect();
                let spend = if orders.is_empty() {
                    String::new()
                } else {
                    format!("{:.4}", orders.iter().map(|e| e.amount.unwrap()).sum::<f64>())
                };
                out.insert(format!(
                    "{},{},{c},{},{},{},{spend}",
                    fmt_ts(s[0].t),
                    fmt_ts(s[s.len() - 1].t + gap),
                    s.len(),
                    s.iter().filter(|e| e.ty == "cart.item_added").count(),
                    orders.len(),
                ));
                start = i;
            }
        }
    }
    out.into_iter().collect()
}
