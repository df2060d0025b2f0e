//! A real Redis Cluster (3 primaries, one replica each, on loopback): three workers over 8
//! shards read while events are published; mid-run every slot of one primary is migrated to
//! another (`redis-cli --cluster reshard`: keys move with their consumer groups while being
//! read, clients follow `MOVED`/`ASK`), then a primary holding shards is failed over to its
//! replica (`CLUSTER FAILOVER`). Every event is archived exactly once, nothing stays
//! pending, and the pipeline tables and late events equal `eventide replay --shards 8`.

use std::collections::BTreeSet;
use std::time::Duration;

use eventide::generator::{GenOptions, Generator, publish_sharded};
use eventide::names::ShardId;

use crate::faults::KillOnDrop;
use crate::shards::worker_in;
use crate::support::{self, RedisCluster, read_archive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_a_redis_cluster_survive_resharding_and_a_failover() {
    let cluster = RedisCluster::start(3, 1);
    let seeds = cluster.seeds();
    let entries: Vec<_> = Generator::new(GenOptions {
        entries: 12_000,
        duplicates: 0.05,
        jitter: Duration::from_secs(40),
        spacing_us: 100_000,
        start_us: 1_767_225_600_000_000,
        seed: 41,
        ..Default::default()
    })
    .collect();
    // Bounded replies (a cluster client has no response timeout by default): a request lost
    // in the failover fails the test instead of hanging it.
    let client = redis::cluster::ClusterClientBuilder::new(seeds.split(',').collect::<Vec<_>>())
        .connection_timeout(Duration::from_secs(5))
        .response_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let publisher = tokio::spawn({
        let (entries, mut conn) = (entries.clone(), conn.clone());
        async move { publish_sharded(&mut conn, "events", 8, entries, 200, Some(2_000.0)).await.unwrap() }
    });
    let lake = tempfile::tempdir().unwrap();
    let pipelines = crate::merge::example_pipelines();
    let pipes = pipelines.path().to_str().unwrap();
    let worker = |name: &str, extra: &[&str]| worker_in("analytics", name, &seeds, lake.path(), pipes, extra);
    let mut workers: Vec<(&str, KillOnDrop)> = ["w1", "w2", "w3"]
        .into_iter()
        .map(|w| (w, KillOnDrop(Some(worker(w, &["--redis-cluster"]).spawn().unwrap()))))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every slot of the primary holding shard 3 moves to the primary holding another shard.
    let (_, from) = cluster.primary_of(&ShardId { index: 3, count: 8 }.stream_key("events"));
    let to = (0..8)
        .map(|k| cluster.primary_of(&ShardId { index: k, count: 8 }.stream_key("events")).1)
        .find(|id| *id != from)
        .expect("shards on two primaries");
    tokio::task::block_in_place(|| cluster.reshard(&from, &to, 16384));
    assert_eq!(cluster.primary_of(&ShardId { index: 3, count: 8 }.stream_key("events")).1, to, "shard 3 moved");

    // The primary now holding shard 3 fails over to its replica (a coordinated failover: the
    // replica catches up first, so no acknowledged write is lost).
    let replica = cluster.replica_of(&to);
    // A manual failover that does not finish in time (the replica must catch up while the
    // primary pauses its clients) is abandoned by Redis: ask again.
    let promoted = || cluster.cli(replica, &["INFO", "replication"]).is_some_and(|o| o.contains("role:master"));
    let mut attempts = 0;
    while !promoted() {
        attempts += 1;
        assert!(attempts <= 5, "the replica on port {replica} was not promoted after {} failovers", attempts - 1);
        assert!(cluster.cli(replica, &["CLUSTER", "FAILOVER"]).is_some_and(|o| o.trim() == "OK"));
        let asked = std::time::Instant::now();
        while !promoted() && asked.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let published = tokio::time::timeout(Duration::from_secs(180), publisher)
        .await
        .expect("the publisher finished within 180 s")
        .unwrap();
    assert_eq!(published.entries, entries.len() as u64);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = worker("w1", &["--redis-cluster", "--exit-when-idle", "1s"]);
    let mut running: Vec<(&str, &mut KillOnDrop)> = workers.iter_mut().map(|(n, w)| (*n, w)).collect();
    tokio::task::block_in_place(|| crate::shards::stop_then_finish(&mut running, ("w1", last), lake.path()));

    let archived: BTreeSet<String> = read_archive(lake.path()).into_keys().collect();
    assert_eq!(archived, support::event_ids(&entries), "archived events vs published, after a reshard and a failover");
    for shard in ShardId::all(8) {
        let key = shard.stream_key("events");
        let summary: (u64, redis::Value, redis::Value, redis::Value) =
            redis::cmd("XPENDING").arg(&key).arg("analytics").query_async(&mut conn).await.expect("XPENDING");
        assert_eq!(summary.0, 0, "entries pending on {key}");
    }
    // The pipeline tables (windows merged across the shards) and late events: as `eventide
    // replay --shards 8` of the same events.
    crate::shards::assert_same_tables(&entries, pipelines.path(), &[("reshard and failover", lake.path())]).await;
}
