//! Consumer-group behaviour: creation, own pending re-read, claims, deleted pending entries.

use std::time::Duration;

use eventide::generator::GenOptions;
use redis::Value;

use crate::support::{self, RedisServer, read_archive};

async fn read_without_ack(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    consumer: &str,
    n: usize,
) -> Vec<String> {
    let _: Result<(), _> =
        redis::cmd("XGROUP").arg("CREATE").arg(stream).arg("analytics").arg("0").query_async(conn).await;
    let v: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("analytics")
        .arg(consumer)
        .arg("COUNT")
        .arg(n)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
    let streams = eventide::source::reply::xread(v).unwrap();
    streams[0].1.iter().map(|e| e.id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_is_created_on_a_missing_stream() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let lake = tempfile::tempdir().unwrap();
    let s =
        support::run_until_idle(support::options(&redis.url(), &["new-stream"], lake.path().to_str().unwrap(), "c1"))
            .await;
    assert_eq!(s.stats.read, 0);
    let groups: Vec<std::collections::HashMap<String, Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg("new-stream").query_async(&mut conn).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], Value::BulkString(b"analytics".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_pending_entries_are_reread_after_a_restart() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    support::publish_generated(&mut conn, "events", GenOptions { entries: 300, seed: 4, ..Default::default() }).await;
    // A previous life of consumer c1 read 200 entries and crashed before acking them.
    let delivered = read_without_ack(&mut conn, "events", "c1", 200).await;
    assert_eq!(delivered.len(), 200);
    let lake = tempfile::tempdir().unwrap();
    let s =
        support::run_until_idle(support::options(&redis.url(), &["events"], lake.path().to_str().unwrap(), "c1")).await;
    assert_eq!(s.stats.read, 300, "200 pending re-read + 100 new, each once");
    assert_eq!(read_archive(lake.path()).len(), 300);
    assert_eq!(support::pending(&mut conn, "events").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entries_of_a_dead_consumer_are_claimed() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    support::publish_generated(&mut conn, "events", GenOptions { entries: 250, seed: 5, ..Default::default() }).await;
    read_without_ack(&mut conn, "events", "dead", 150).await;
    let lake = tempfile::tempdir().unwrap();
    let mut opts = support::options(&redis.url(), &["events"], lake.path().to_str().unwrap(), "alive");
    opts.roll_age = Duration::from_millis(100);
    opts.checkpoint_interval = Duration::from_millis(100);
    opts.source.claim_min_idle = Duration::from_millis(300);
    opts.claim_interval = Duration::from_millis(200);
    opts.exit_when_idle = Some(Duration::from_secs(2));
    let s = support::run_until_idle(opts).await;
    assert_eq!(s.stats.claimed, 150);
    assert_eq!(s.stats.read, 250);
    assert_eq!(read_archive(lake.path()).len(), 250);
    assert_eq!(support::pending(&mut conn, "events").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_deleted_while_pending_are_acked_and_counted() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    support::publish_generated(&mut conn, "events", GenOptions { entries: 20, seed: 6, ..Default::default() }).await;
    let ids = read_without_ack(&mut conn, "events", "c1", 20).await;
    let _: u64 =
        redis::cmd("XDEL").arg("events").arg(&ids[0]).arg(&ids[5]).arg(&ids[19]).query_async(&mut conn).await.unwrap();
    let lake = tempfile::tempdir().unwrap();
    let s =
        support::run_until_idle(support::options(&redis.url(), &["events"], lake.path().to_str().unwrap(), "c1")).await;
    assert_eq!(s.stats.deleted_pending, 3);
    assert_eq!(s.stats.accepted, 17);
    assert_eq!(read_archive(lake.path()).len(), 17);
    assert_eq!(support::pending(&mut conn, "events").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_gets_its_group_back() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let lake = tempfile::tempdir().unwrap();
    let mut opts = support::options(&redis.url(), &["events"], lake.path().to_str().unwrap(), "c1");
    opts.exit_when_idle = Some(Duration::from_secs(2));
    let run = tokio::spawn(eventide::run(opts, std::future::pending::<()>()));
    // Wait for the group, delete the stream under the running pipeline, then publish again.
    for _ in 0..100 {
        let exists: bool = redis::cmd("EXISTS").arg("events").query_async(&mut conn).await.unwrap();
        if exists {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: u64 = redis::cmd("DEL").arg("events").query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    support::publish_generated(&mut conn, "events", GenOptions { entries: 50, seed: 14, ..Default::default() }).await;
    let s = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("in time")
        .expect("task")
        .expect("pipeline ran");
    assert_eq!(s.stats.accepted, 50);
    assert_eq!(read_archive(lake.path()).len(), 50);
}
