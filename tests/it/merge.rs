//! Windows across shards, over files (`eventide replay --shards S`): each shard closes its
//! windows against its own watermark and the merger merges their partial states (a
//! customer's sessions from every shard chained within the gap). With nothing late the
//! tables equal one shard's exactly, whatever S; with late events every event is counted
//! once: in its window or session, or in `late_events` by the shard that saw it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use eventide::generator::{GenEntry, GenOptions, Generator, Kind};
use eventide::sink::lake::Lake;
use eventide::window::{Pipelines, check_dir};

use crate::support::{self, table};

/// The four example pipelines (tumbling, hopping and session windows), and the revenue one
/// again with `emit = "updates"` (`revenue_updates`), in a directory of their own.
pub(crate) fn example_pipelines() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    for name in
        ["checkout_funnel.toml", "customer_sessions.toml", "payment_failure_rate.toml", "revenue_per_minute.toml"]
    {
        std::fs::copy(examples.join(name), dir.path().join(name)).unwrap();
    }
    let revenue = std::fs::read_to_string(examples.join("revenue_per_minute.toml")).unwrap();
    std::fs::write(dir.path().join("revenue_updates.toml"), format!("emit = \"updates\"\n{revenue}")).unwrap();
    dir
}

/// The events (and duplicates) of `entries` as JSON lines (malformed entries left out).
pub(crate) fn write_jsonl(entries: &[GenEntry], path: &Path) {
    let lines: Vec<String> = entries
        .iter()
        .filter(|e| e.kind == Kind::Event || e.kind == Kind::Duplicate)
        .map(|e| String::from_utf8(e.fields.iter().find(|(k, _)| *k == "data").unwrap().1.clone()).unwrap())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// `eventide replay --shards shards` of `input` into a new lake.
pub(crate) async fn replay_sharded(input: &Path, pipelines: &Path, shards: u32) -> (tempfile::TempDir, Lake) {
    replay_merging_every(input, pipelines, shards, eventide::replay::MERGE_EVERY).await
}

/// [`replay_sharded`] with a merge round every `every` lines (0: at the end only).
async fn replay_merging_every(input: &Path, pipelines: &Path, shards: u32, every: u64) -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let mut all = Vec::new();
    for _ in 0..shards {
        all.push(Pipelines::new(check_dir(pipelines).await.unwrap()).unwrap());
    }
    let input = vec![PathBuf::from(input)];
    let hour = Duration::from_secs(3600);
    if shards == 1 {
        eventide::replay::run(&input, all.remove(0), &lake, hour, "events").await.unwrap();
    } else {
        eventide::replay::run_sharded(&input, all, &lake, hour, "events", every).await.unwrap();
    }
    (dir, lake)
}

pub(crate) async fn late_rows(lake: &Lake, pipelines: &Pipelines) -> Vec<String> {
    let q = eventide::lake_sql::LakeQuery::open(lake, &pipelines.output_schemas()).await.unwrap();
    // (Without `stream_id`: a replay numbers lines, not Redis entries.)
    let sql = "SELECT pipeline, window_start, window_end, event_id, event_type, event_time, stream, watermark \
               FROM late_events";
    match q.sql(sql).await {
        Ok((_, batches)) => support::text_rows(&batches),
        Err(_) => Vec::new(), // no late_events table: none late
    }
}

fn entries(jitter_s: u64, seed: u64) -> Vec<GenEntry> {
    Generator::new(GenOptions {
        entries: 20_000,
        duplicates: 0.05,
        malformed: 0.005,
        jitter: Duration::from_secs(jitter_s),
        spacing_us: 100_000,
        start_us: 1_767_225_600_000_000,
        seed,
        ..Default::default()
    })
    .collect()
}

/// Out-of-order arrival within the watermark: nothing is late, and 3 or 8 shards give
/// exactly the rows of one.
#[tokio::test]
async fn sharded_windows_equal_one_shard_when_nothing_is_late() {
    let pipelines = example_pipelines();
    // Short sessions too: a customer's events (about one a minute) split into many
    // sessions, and a session's events are spread over shards.
    let short = "window = { kind = \"session\", gap = \"90s\" }\nwatermark = \"5s\"\n\
                 fields = { customer_id = \"string\", amount = \"double\" }\n\
                 sql = \"SELECT customer_id, count(*) AS events, sum(amount) AS spend, min(event_time) AS first, \
                 max(event_time) AS last FROM events WHERE customer_id IS NOT NULL GROUP BY customer_id\"\n";
    std::fs::write(pipelines.path().join("short_sessions.toml"), short).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_jsonl(&entries(3, 41), &input);
    let (_one_dir, one) = replay_sharded(&input, pipelines.path(), 1).await;
    let (_three_dir, three) = replay_sharded(&input, pipelines.path(), 3).await;
    let (_eight_dir, eight) = replay_sharded(&input, pipelines.path(), 8).await;
    // The merger running as the input goes (every 300 lines, the shards dropping what it
    // merged) finalises sessions while others are open: the same rows.
    let (_often_dir, often) = replay_merging_every(&input, pipelines.path(), 8, 300).await;
    let p = Pipelines::new(check_dir(pipelines.path()).await.unwrap()).unwrap();
    for q in p.queries() {
        let name = &q.spec.name;
        let want = table(&one, &p, name).await;
        assert!(want.len() >= 5, "{name}: one shard wrote {} rows", want.len());
        support::assert_same_rows(&table(&three, &p, name).await, &want, &format!("{name}: 3 shards vs 1"));
        support::assert_same_rows(&table(&eight, &p, name).await, &want, &format!("{name}: 8 shards vs 1"));
        let got = table(&often, &p, name).await;
        support::assert_same_rows(&got, &want, &format!("{name}: 8 shards merged every 300 lines vs 1"));
    }
    for lake in [&one, &three, &eight, &often] {
        assert_eq!(late_rows(lake, &p).await, Vec::<String>::new(), "nothing is late");
    }
}

/// Arrival up to 40 s out of order (watermark 5 s): each shard decides lateness against
/// its own watermark, and every event is counted exactly once, in its window's row or in
/// `late_events`; shard 0's merged tables hold the rows of every shard.
#[tokio::test]
async fn with_late_events_every_event_is_counted_once_across_shards() {
    let pipelines = example_pipelines();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let entries = entries(40, 42);
    write_jsonl(&entries, &input);
    let (eight_dir, eight) = replay_sharded(&input, pipelines.path(), 8).await;
    let p = Pipelines::new(check_dir(pipelines.path()).await.unwrap()).unwrap();
    let q = eventide::lake_sql::LakeQuery::open(&eight, &p.output_schemas()).await.unwrap();
    let one = |sql: &'static str| {
        let q = &q;
        async move { support::text_rows(&q.sql(sql).await.unwrap().1).join(";") }
    };
    let events: Vec<serde_json::Value> = entries
        .iter()
        .filter(|e| e.kind == Kind::Event)
        .map(|e| serde_json::from_slice(&e.fields.iter().find(|(k, _)| *k == "data").unwrap().1).unwrap())
        .collect();
    let types: Vec<String> = events.iter().map(|json| json["event_type"].as_str().unwrap().to_string()).collect();
    let of = |wanted: &[&str]| types.iter().filter(|t| wanted.contains(&t.as_str())).count();
    let number = |s: String| s.parse::<usize>().unwrap();
    // checkout_funnel: hopping 10 m by 1 m, no lateness: an event is in 10 windows, and each
    // one it missed is a late row.
    let counted = number(one("SELECT CAST(sum(checkouts + orders + payments) AS BIGINT) FROM checkout_funnel").await);
    let late = number(one("SELECT count(*) FROM late_events WHERE pipeline = 'checkout_funnel'").await);
    assert!(late > 0, "40 s of jitter against a 5 s watermark makes some events late");
    let funnel = of(&["checkout.started", "order.created", "payment.completed"]);
    assert_eq!(counted + late, 10 * funnel, "10 windows per event: {counted} counted + {late} late");
    // revenue_per_minute: tumbling with 30 s of allowed lateness: every order/payment event
    // once, in its window.
    let counted = number(one("SELECT CAST(sum(events) AS BIGINT) FROM revenue_per_minute").await);
    let late = number(one("SELECT count(*) FROM late_events WHERE pipeline = 'revenue_per_minute'").await);
    let orders = types.iter().filter(|t| t.starts_with("order.") || t.starts_with("payment.")).count();
    assert_eq!(counted + late, orders, "every order/payment event once: {counted} counted + {late} late");
    // customer_sessions: every event with a customer once, in the session merged from every
    // shard's parts of it, or late.
    let counted = number(one("SELECT CAST(sum(events) AS BIGINT) FROM customer_sessions").await);
    let late = number(one("SELECT count(*) FROM late_events WHERE pipeline = 'customer_sessions'").await);
    let with_customer = events.iter().filter(|json| json["data"]["customer_id"].is_string()).count();
    assert_eq!(counted + late, with_customer, "every event with a customer once: {counted} counted + {late} late");
    // Late rows come from every shard (each its own stream key), and the tables' files are
    // shard 0's (the merger's).
    let streams = one("SELECT count(DISTINCT stream) FROM late_events").await;
    assert_eq!(streams, "8", "late rows by the shard that saw them");
    let files: Vec<_> = walk(eight_dir.path()).into_iter().filter(|f| !f.contains("late_events")).collect();
    assert!(files.len() >= 3 && files.iter().all(|f| f.contains("-replay-s0-")), "{files:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.to_string_lossy().into_owned());
        }
    }
    out
}

/// `emit = "updates"` over shards: 20 s of jitter against a 5 s watermark and 30 s of allowed
/// lateness makes corrections (revisions ≥ 1) and loses nothing. A window's highest
/// revision holds the final values (as the same query in final mode, and as one shard), and
/// the revisions do not depend on when the merger ran (every 300 lines or the default).
#[tokio::test]
async fn updates_over_shards_revise_deterministically_and_end_at_the_final_values() {
    let pipelines = tempfile::tempdir().unwrap();
    let body = "window = { kind = \"tumbling\", size = \"1m\" }\nwatermark = \"5s\"\nallowed_lateness = \"30s\"\n\
                fields = { amount = \"double\" }\n\
                sql = \"SELECT event_type, count(*) AS events, sum(amount) AS revenue FROM events GROUP BY event_type\"\n";
    std::fs::write(pipelines.path().join("revisions.toml"), format!("emit = \"updates\"\n{body}")).unwrap();
    std::fs::write(pipelines.path().join("finals.toml"), body).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_jsonl(&entries(20, 43), &input);
    let p = Pipelines::new(check_dir(pipelines.path()).await.unwrap()).unwrap();
    let q = |lake: Lake| {
        let schemas = p.output_schemas();
        async move { eventide::lake_sql::LakeQuery::open(&lake, &schemas).await.unwrap() }
    };
    let rows = async |q: &eventide::lake_sql::LakeQuery, sql: &str| support::text_rows(&q.sql(sql).await.unwrap().1);
    let latest = "SELECT window_start, window_end, event_type, events, revenue FROM revisions r \
                  WHERE revision = (SELECT max(revision) FROM revisions m \
                  WHERE m.window_start = r.window_start AND m.event_type = r.event_type)";
    let finals = "SELECT window_start, window_end, event_type, events, revenue FROM finals";
    let all = "SELECT window_start, window_end, revision, event_type, events, revenue FROM revisions";
    let (_one_dir, one) = replay_sharded(&input, pipelines.path(), 1).await;
    let one = q(one).await;
    let want = rows(&one, finals).await;
    assert!(want.len() >= 10, "{} final rows", want.len());
    assert_eq!(late_rows_of(&one).await, 0, "nothing later than the allowed lateness");
    let mut runs = Vec::new();
    for (shards, every) in [(3, eventide::replay::MERGE_EVERY), (8, eventide::replay::MERGE_EVERY), (8, 300)] {
        let (d, lake) = replay_merging_every(&input, pipelines.path(), shards, every).await;
        let q = q(lake).await;
        let what = format!("{shards} shards, merged every {every} lines");
        support::assert_same_rows(&rows(&q, finals).await, &want, &format!("final mode, {what}"));
        support::assert_same_rows(&rows(&q, latest).await, &want, &format!("highest revisions, {what}"));
        let revised = rows(&q, "SELECT count(*) FROM revisions WHERE revision > 0").await;
        assert_ne!(revised, ["0"], "{what}: no window was corrected");
        runs.push((d, rows(&q, all).await));
    }
    support::assert_same_rows(&runs[2].1, &runs[1].1, "8 shards: every revision, whenever the merger ran");
}

async fn late_rows_of(q: &eventide::lake_sql::LakeQuery) -> usize {
    match q.sql("SELECT count(*) FROM late_events").await {
        Ok((_, b)) => support::text_rows(&b)[0].parse().unwrap(),
        Err(_) => 0,
    }
}
