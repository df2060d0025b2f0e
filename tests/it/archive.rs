//! Accepted events land in the archive exactly once, from plain and Dapr-wrapped entries.

use std::collections::BTreeSet;

use eventide::generator::{GenOptions, Generator, Kind, publish};

use crate::support::{self, RedisServer, read_archive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_dapr_entries_land_exactly_once() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let plain: Vec<_> = Generator::new(GenOptions {
        entries: 3000,
        duplicates: 0.05,
        jitter: std::time::Duration::from_secs(5),
        seed: 1,
        ..Default::default()
    })
    .collect();
    let dapr: Vec<_> =
        Generator::new(GenOptions { entries: 2000, duplicates: 0.05, dapr: true, seed: 2, ..Default::default() })
            .collect();
    let dups = plain.iter().chain(&dapr).filter(|e| e.kind == Kind::Duplicate).count() as u64;
    assert!(dups > 100, "the generator made duplicates");
    publish(&mut conn, "orders", plain.clone(), 500, None).await.unwrap();
    publish(&mut conn, "dapr-orders", dapr.clone(), 500, None).await.unwrap();

    let lake = tempfile::tempdir().unwrap();
    let opts = support::options(&redis.url(), &["orders", "dapr-orders"], lake.path().to_str().unwrap(), "c1");
    let summary = support::run_until_idle(opts).await;

    let rows = read_archive(lake.path());
    let want: BTreeSet<String> = support::event_ids(&plain).union(&support::event_ids(&dapr)).cloned().collect();
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(summary.stats.read, 5000);
    assert_eq!(summary.stats.accepted, want.len() as u64);
    assert_eq!(summary.stats.duplicates, dups);
    assert_eq!(summary.stats.acked, 5000);
    for e in plain.iter().chain(&dapr).filter(|e| e.kind == Kind::Event) {
        let row = &rows[e.event_id.as_ref().unwrap()];
        assert_eq!(Some(row.event_type.as_str()), e.event_type);
        let date = chrono::DateTime::from_timestamp_micros(row.event_time_us).unwrap().format("%Y-%m-%d");
        assert_eq!(row.partition, format!("event_date={date}/event_type={}", row.event_type));
        assert!(row.correlation_id.is_some() && row.source.as_deref().is_some_and(|s| s.ends_with("-service")));
        assert!(row.data.as_deref().is_some_and(|d| d.starts_with('{')));
    }
    let dapr_ids = support::event_ids(&dapr);
    for (id, row) in &rows {
        let is_dapr = dapr_ids.contains(id);
        assert_eq!(row.stream, if is_dapr { "dapr-orders" } else { "orders" });
        assert_eq!(row.traceparent.is_some(), is_dapr, "traceparent kept from the CloudEvent");
    }
    // Everything was acked only after it was committed: nothing is left pending.
    for s in ["orders", "dapr-orders"] {
        assert_eq!(support::pending(&mut conn, s).await, 0, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_roll_by_size_and_no_partial_or_temp_file_is_visible() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    support::publish_generated(&mut conn, "events", GenOptions { entries: 6000, seed: 3, ..Default::default() }).await;
    let lake = tempfile::tempdir().unwrap();
    let mut opts = support::options(&redis.url(), &["events"], lake.path().to_str().unwrap(), "c1");
    opts.archive.roll_bytes = 16 * 1024;
    let summary = support::run_until_idle(opts).await;
    let rows = read_archive(lake.path());
    assert_eq!(rows.len(), 6000);
    let partitions: BTreeSet<_> = rows.values().map(|r| r.partition.clone()).collect();
    assert!(summary.stats.files_committed > partitions.len() as u64, "size rolls made several files per partition");
    let staging = lake.path().join("_eventide/staging");
    let staged: Vec<_> = walkdir(&staging).into_iter().filter(|p| p.is_file()).collect();
    assert!(staged.is_empty(), "staged leftovers: {staged:?}");
}

#[tokio::test]
async fn lake_urls_memory_and_unsupported() {
    assert!(eventide::sink::lake::Lake::open("memory://").is_ok());
    let err = eventide::sink::lake::Lake::open("ftp://x/y").unwrap_err().to_string();
    assert!(err.contains("unsupported scheme"), "{err}");
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}
