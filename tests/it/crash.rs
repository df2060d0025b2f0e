//! SIGKILL of the `eventide` process mid-stream, four times while publishers keep writing, then
//! a clean run: nothing is lost.
//! (Exactly-once across crashes, i.e. no duplicate rows either, is the checkpoint protocol of
//! issue #4; this test asserts no loss and reports the duplicates a crash can leave today.)

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use eventide::generator::{GenOptions, Generator, Kind, publish};
use redis::Value;

use crate::support::{self, RedisServer, read_archive_rows};

fn eventide(redis: &str, lake: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eventide"));
    c.args([
        "run",
        "--config",
        "/dev/null",
        "--http-addr",
        "127.0.0.1:0",
        "--redis-url",
        redis,
        "--stream",
        "events",
        "--group",
        "analytics",
    ])
    .args(["--consumer", "c1", "--block", "50ms", "--roll-age", "200ms", "--claim-min-idle", "1s"])
    .args(["--max-entry-bytes", "64KiB", "--lake"])
    .arg(lake)
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

/// Committed archive files (cheap to count while a run is going).
fn parquet_files(lake: &std::path::Path) -> usize {
    fn walk(d: &std::path::Path) -> usize {
        std::fs::read_dir(d).map_or(0, |rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { walk(&p) } else { usize::from(p.extension().is_some_and(|x| x == "parquet")) }
                })
                .sum()
        })
    }
    walk(&lake.join("events"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let entries: Vec<_> = Generator::new(GenOptions {
        entries: 60_000,
        duplicates: 0.05,
        malformed: 0.002,
        oversize_bytes: 70 * 1024,
        seed: 15,
        ..Default::default()
    })
    .collect();
    // Publishers keep writing (10,000 entries/s) while the pipeline is killed again and again.
    let mut pub_conn = support::connect(&redis.url()).await;
    let publisher = tokio::spawn({
        let entries = entries.clone();
        async move { publish(&mut pub_conn, "events", entries, 500, Some(10_000.0)).await }
    });
    let lake = tempfile::tempdir().unwrap();
    let mut committed = Vec::new();
    for (round, ms) in [50u64, 150, 250, 350].into_iter().enumerate() {
        let before = parquet_files(lake.path());
        let mut child = eventide(&redis.url(), lake.path(), &[]).spawn().unwrap();
        // Kill k lands once the publisher is k/5 of the way and this run has committed a file
        // (so kills are spread over the stream whatever the machine's speed), plus a few
        // milliseconds so that some land mid-commit.
        let published_at_least = (round as u64 + 1) * entries.len() as u64 / 5;
        for _ in 0..3000 {
            // (A slow reply under load is retried on the next turn.)
            let len: u64 = redis::cmd("XLEN").arg("events").query_async(&mut conn).await.unwrap_or(0);
            if len >= published_at_least && parquet_files(lake.path()) > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        child.kill().unwrap(); // SIGKILL: no flush, no ack, no snapshot
        child.wait().unwrap();
        committed.push(read_archive_rows(lake.path()).into_iter().collect::<BTreeSet<_>>().len());
    }
    publisher.await.unwrap().unwrap();
    // The kills landed mid-stream: events were committed between kills, not all of them.
    let want_n = entries.iter().filter(|e| e.kind == Kind::Event).count();
    eprintln!("distinct events committed after each kill: {committed:?} of {want_n}");
    // (The last kill may come after the run caught up with the publisher.)
    let mid_stream = committed.iter().filter(|&&n| n > 0 && n < want_n).count();
    assert!(mid_stream >= 3, "kills landed mid-stream: {committed:?}");
    let status = eventide(&redis.url(), lake.path(), &["--exit-when-idle", "1s"]).status().unwrap();
    assert!(status.success());

    let rows = read_archive_rows(lake.path());
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &rows {
        *per_id.entry(id.as_str()).or_default() += 1;
    }
    let want: BTreeSet<&str> =
        entries.iter().filter(|e| e.kind == Kind::Event).filter_map(|e| e.event_id.as_deref()).collect();
    let missing: Vec<_> = want.iter().filter(|id| !per_id.contains_key(*id)).collect();
    assert!(missing.is_empty(), "{} events lost, e.g. {:?}", missing.len(), &missing[..missing.len().min(3)]);
    assert!(per_id.keys().all(|id| want.contains(id)), "no row that was not published");
    let dupes: usize = per_id.values().map(|n| n - 1).sum();
    eprintln!("after 4 SIGKILLs: {} rows for {} events ({} duplicate rows)", rows.len(), want.len(), dupes);

    // Every malformed entry reached the DLQ (a crash may repeat some).
    let dlq: Vec<(String, Value)> =
        redis::cmd("XRANGE").arg("events:dlq").arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let malformed = entries.iter().filter(|e| matches!(e.kind, Kind::Malformed(_))).count();
    assert!(dlq.len() >= malformed, "{} DLQ entries for {malformed} malformed", dlq.len());
    assert_eq!(support::pending(&mut conn, "events").await, 0);
}
