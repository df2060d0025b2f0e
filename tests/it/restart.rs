//! Restarts: of eventide (dedup state survives) and of Redis mid-stream (nothing lost).

use std::collections::BTreeSet;
use std::time::Duration;

use eventide::generator::{GenOptions, Generator, publish};

use crate::support::{self, RedisServer, read_archive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_a_restart_are_dropped() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let lake = tempfile::tempdir().unwrap();
    let lake_s = lake.path().to_str().unwrap();
    let first = support::publish_generated(
        &mut conn,
        "events",
        GenOptions { entries: 1000, duplicates: 0.05, seed: 8, ..Default::default() },
    )
    .await;
    let s1 = support::run_until_idle(support::options(&redis.url(), &["events"], lake_s, "c1")).await;
    assert_eq!(s1.stats.accepted, support::event_ids(&first).len() as u64);

    // After the restart, publishers re-send everything (at-least-once) plus new events.
    let second: Vec<_> = Generator::new(GenOptions { entries: 500, seed: 9, ..Default::default() }).collect();
    publish(&mut conn, "events", first.clone(), 200, None).await.unwrap();
    publish(&mut conn, "events", second.clone(), 200, None).await.unwrap();
    let s2 = support::run_until_idle(support::options(&redis.url(), &["events"], lake_s, "c1")).await;
    assert_eq!(s2.stats.duplicates, 1000, "every re-sent entry is a duplicate");
    assert_eq!(s2.stats.accepted, 500);

    let rows = read_archive(lake.path()); // panics on a duplicate row
    let want: BTreeSet<String> = support::event_ids(&first).union(&support::event_ids(&second)).cloned().collect();
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_loses_nothing() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let mut conn = support::connect(&url).await;
    let lake = tempfile::tempdir().unwrap();
    let entries: Vec<_> =
        Generator::new(GenOptions { entries: 6000, duplicates: 0.05, seed: 10, ..Default::default() }).collect();
    publish(&mut conn, "events", entries[..2000].to_vec(), 200, None).await.unwrap();

    let mut opts = support::options(&url, &["events"], lake.path().to_str().unwrap(), "c1");
    opts.exit_when_idle = Some(Duration::from_secs(3));
    opts.roll_age = Duration::from_millis(300);
    opts.checkpoint_interval = Duration::from_millis(300);
    let run = tokio::spawn(eventide::run(opts, std::future::pending::<()>()));

    // Kill Redis while the pipeline is reading and committing, then bring it back.
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.restart();
    let mut conn = support::connect(&url).await;
    publish(&mut conn, "events", entries[2000..].to_vec(), 200, None).await.unwrap();

    let summary = tokio::time::timeout(Duration::from_secs(120), run).await.unwrap().unwrap().unwrap();
    let rows = read_archive(lake.path());
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), support::event_ids(&entries));
    assert!(summary.stats.disconnects > 0, "the outage was noticed");
    assert_eq!(support::pending(&mut conn, "events").await, 0);
}
