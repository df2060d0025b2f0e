//! A network partition between the lease holder and Redis. The holder (c1) reaches Redis
//! through a proxy the test pauses past the lease's TTL; the standby (c2) takes over; the
//! partition heals. Checkpoints every 5 s against a 2 s TTL: the holder still has an epoch to
//! commit when its lease lapses, and the lake is not partitioned, so without fencing by time it
//! would commit it after its successor took over (the bug this guards against).
//!
//! Checked: c1 wrote no manifest after the partition began + TTL (every manifest is seen as
//! it appears, before pruning), it noticed and went back to standby, and the archive, every
//! pipeline table, the late table and the DLQ equal an uninterrupted run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventide::generator::{GenEntry, Kind, publish};

use crate::faults::{KillOnDrop, assert_exactly_once, drill_entries};
use crate::support::{self, RedisServer};

const TTL_MS: i64 = 2_000;

fn node(consumer: &str, redis: &str, lake: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eventide"));
    c.args(["run", "--config", "/dev/null", "--http-addr", "", "--redis-url", redis])
        .args(["--stream", "events", "--group", "analytics", "--consumer", consumer, "--block", "50ms"])
        .args(["--lease-ttl", "2s", "--roll-age", "5s", "--claim-min-idle", "10s", "--max-entry-bytes", "64KiB"])
        .args(["--redis-retry-timeout", "60s"])
        .arg("--pipelines")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines"))
        .arg("--lake")
        .arg(lake)
        .args(extra)
        .stdout(Stdio::null());
    c
}

/// Every manifest of the group's line, recorded as it appears (they are pruned soon after).
fn watch_manifests(dir: std::path::PathBuf, stop: Arc<AtomicBool>) -> Arc<Mutex<BTreeMap<u64, serde_json::Value>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    std::thread::spawn({
        let seen = seen.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let Some(epoch) = name.strip_prefix("manifest-").and_then(|n| n.strip_suffix(".json")) else {
                        continue;
                    };
                    let epoch: u64 = epoch.parse().unwrap();
                    if seen.lock().unwrap().contains_key(&epoch) {
                        continue;
                    }
                    // Written atomically: whole, or gone already.
                    if let Ok(text) = std::fs::read(e.path()) {
                        seen.lock().unwrap().insert(epoch, serde_json::from_slice(&text).expect("a whole manifest"));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    seen
}

async fn holder(conn: &mut redis::aio::MultiplexedConnection) -> Option<String> {
    redis::cmd("GET").arg("eventide:lease:{analytics}").query_async(conn).await.unwrap()
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Entries the group has not been handed yet.
async fn lag(conn: &mut redis::aio::MultiplexedConnection) -> Option<u64> {
    let groups: redis::Value = redis::cmd("XINFO").arg("GROUPS").arg("events").query_async(conn).await.ok()?;
    let (_, read, _) = eventide::source::probe::group_info(&groups, "analytics")?;
    let len: u64 = redis::cmd("XLEN").arg("events").query_async(conn).await.ok()?;
    Some(len - read?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_commits_nothing_after_its_lease_could_lapse() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let proxy = support::proxy::Proxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let lake = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = watch_manifests(lake.path().join("_eventide/checkpoints/analytics"), stop.clone());
    let last_by = |consumer: &str| -> Option<i64> {
        let seen = seen.lock().unwrap();
        seen.values().filter(|m| m["consumer"] == consumer).map(|m| m["created_ms"].as_i64().unwrap()).max()
    };

    // Three phases: before the partition (malformed entries included), the holder's last epoch
    // (valid events only: nothing that needs Redis while it is cut off), during the partition.
    let all = drill_entries(12_000, 19);
    let (before, rest) = all.split_at(4_000);
    let last_epoch: Vec<GenEntry> =
        rest[..1_000].iter().filter(|e| !matches!(e.kind, Kind::Malformed(_))).cloned().collect();
    let during = rest[1_000..].to_vec();
    let published: Vec<GenEntry> = before.iter().chain(&last_epoch).chain(&during).cloned().collect();

    let log_a = lake.path().join("c1.log");
    let mut a = KillOnDrop(Some(
        node("c1", &proxy.url(), lake.path(), &[]).stderr(std::fs::File::create(&log_a).unwrap()).spawn().unwrap(),
    ));
    wait_for("c1 holding the lease", async || holder(&mut conn).await.is_some_and(|h| h.starts_with("c1/"))).await;
    // c1's term that the partition cuts off (once healed it may hold the lease again, rightly,
    // under a new token).
    let token: u64 = holder(&mut conn).await.unwrap()["c1/".len()..].parse().unwrap();
    let of_that_term = move |m: &serde_json::Value| m["consumer"] == "c1" && m["token"] == token;
    let mut b = KillOnDrop(Some(
        node("c2", &redis.url(), lake.path(), &["--claim-interval", "1s", "--exit-when-idle", "3s"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    publish(&mut conn, "events", before.to_vec(), 200, Some(4_000.0)).await.unwrap();
    wait_for("c1 reading everything", async || lag(&mut conn).await == Some(0)).await;
    // Right after one of c1's checkpoints: its next one is 5 s away.
    let committed = last_by("c1");
    wait_for("a checkpoint by c1", async || last_by("c1") > committed).await;
    publish(&mut conn, "events", last_epoch.clone(), 200, None).await.unwrap();
    wait_for("c1 reading its last epoch", async || lag(&mut conn).await == Some(0)).await;

    proxy.pause();
    let paused_ms = chrono::Utc::now().timestamp_millis();
    let publisher = tokio::spawn({
        let mut conn = support::connect(&redis.url()).await;
        async move { publish(&mut conn, "events", during, 200, Some(2_000.0)).await }
    });
    wait_for("c2 taking over", async || holder(&mut conn).await.is_some_and(|h| h.starts_with("c2/"))).await;
    // c1's epoch is due while it is cut off: it must not commit it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.resume();
    publisher.await.unwrap().unwrap();

    // c2 drains and exits; c1 noticed it was fenced and stands by: stop it.
    let out_b = b.0.take().unwrap().wait_with_output().unwrap();
    let log_b = String::from_utf8_lossy(&out_b.stderr);
    assert!(out_b.status.success(), "c2: {log_b}");
    assert!(log_b.contains("Recovered from checkpoint"), "c2 continued c1's checkpoints:\n{log_b}");
    let mut child_a = a.0.take().unwrap();
    assert!(Command::new("kill").args(["-TERM", &child_a.id().to_string()]).status().unwrap().success());
    let status_a = support::wait_within(&mut child_a, Duration::from_secs(120), "c1's stop", || {
        std::fs::read_to_string(&log_a).unwrap_or_default()
    });
    let log_a = std::fs::read_to_string(&log_a).unwrap();
    assert!(status_a.success(), "c1 stopped cleanly as a standby: {log_a}");
    assert!(log_a.contains("back to standby"), "c1 did not notice it was fenced:\n{log_a}");
    // Stopped by its own clock, not by running into c2's takeover manifest (which would
    // also keep the line whole: the two defences are checked apart).
    assert!(!log_a.contains("exists: another instance"), "c1 tried to commit after its lease lapsed:\n{log_a}");
    assert!(
        log_a.contains("lease may have lapsed") || log_a.contains("could not renew"),
        "c1 was not stopped by its lease's clock:\n{log_a}"
    );
    // What c1's reader took once the partition healed is pending at c1: a final run (as after
    // any failover) takes it over.
    let status = support::run_within(
        &mut node("c2", &redis.url(), lake.path(), &["--exit-when-idle", "1s"]),
        Duration::from_secs(120),
        "c2's last run",
        String::new,
    );
    assert!(status.success());
    stop.store(true, Ordering::Relaxed);

    let seen = seen.lock().unwrap().clone();
    let line: Vec<(u64, &serde_json::Value)> = seen.iter().map(|(e, m)| (*e, &m["consumer"])).collect();
    assert!(seen.values().filter(|m| of_that_term(m)).count() >= 2, "c1 committed before: {line:?}");
    assert!(seen.values().any(|m| m["consumer"] == "c2" && m["takeover"] == true), "c2's takeover manifest");
    for m in seen.values() {
        let (created, deadline) = (m["created_ms"].as_i64().unwrap(), m["lease_deadline_ms"].as_i64().unwrap());
        assert!(created <= deadline, "a manifest written after its writer's own lease deadline: {m}");
    }
    let last_c1 = seen.values().filter(|m| of_that_term(m)).map(|m| m["created_ms"].as_i64().unwrap()).max();
    let after = last_c1.unwrap() - paused_ms;
    assert!(after < TTL_MS, "c1 committed {after} ms after the partition began, past the lease's {TTL_MS} ms");
    eprintln!("{} manifests seen; c1's last {after} ms after the partition began (TTL {TTL_MS} ms)", seen.len());
    assert_exactly_once(&published, &mut conn, lake.path(), "after a partition of the lease holder").await;
}

/// The same partition with sharded streams: two workers share 4 shards, the one behind the
/// proxy (w1) is cut off; w2 takes its shards over when its heartbeat and leases expire. No
/// shard's line gets a manifest from w1's cut-off terms after the partition began + TTL, and
/// every event is archived exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_worker_commits_for_none_of_its_shards_after_their_leases_could_lapse() {
    use eventide::names::ShardId;
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let proxy = support::proxy::Proxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let lake = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let lines: Vec<_> = ShardId::all(4)
        .map(|s| {
            watch_manifests(lake.path().join(format!("_eventide/checkpoints/{}", s.line("analytics"))), stop.clone())
        })
        .collect();
    let worker = |name: &str, url: &str, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_eventide"));
        c.args(["run", "--config", "/dev/null", "--http-addr", "", "--redis-url", url, "--pipelines", ""])
            .args(["--stream", "events", "--group", "analytics", "--consumer", name, "--shards", "4"])
            .args(["--block", "50ms", "--lease-ttl", "2s", "--roll-age", "5s", "--claim-min-idle", "10s"])
            .args(["--max-entry-bytes", "64KiB", "--redis-retry-timeout", "60s"])
            .arg("--lake")
            .arg(lake.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lake.path().join(format!("{name}.log"))).unwrap());
        c
    };
    let entries = drill_entries(9_000, 23);
    let (before, during) = entries.split_at(3_000);
    let mut a = KillOnDrop(Some(worker("w1", &proxy.url(), &[]).spawn().unwrap()));
    let mut b = KillOnDrop(Some(worker("w2", &redis.url(), &[]).spawn().unwrap()));
    let holders = async |conn: &mut redis::aio::MultiplexedConnection| -> Vec<Option<String>> {
        let mut out = Vec::new();
        for s in ShardId::all(4) {
            let key = eventide::source::lease::key(&s.lease_name("analytics"));
            out.push(redis::cmd("GET").arg(key).query_async(conn).await.unwrap());
        }
        out
    };
    let held_by =
        |h: &[Option<String>], w: &str| h.iter().flatten().filter(|v| v.starts_with(&format!("{w}/"))).count();
    wait_for("both workers holding shards", async || {
        let h = holders(&mut conn).await;
        held_by(&h, "w1") > 0 && held_by(&h, "w2") > 0 && held_by(&h, "w1") + held_by(&h, "w2") == 4
    })
    .await;
    eventide::generator::publish_sharded(&mut conn, "events", 4, before.to_vec(), 200, Some(4_000.0)).await.unwrap();
    // w1's terms now, by shard: the ones the partition cuts off.
    let cut: Vec<(usize, u64)> = holders(&mut conn)
        .await
        .into_iter()
        .enumerate()
        .filter_map(|(k, h)| h.filter(|h| h.starts_with("w1/")).map(|h| (k, h["w1/".len()..].parse().unwrap())))
        .collect();
    proxy.pause();
    let paused_ms = chrono::Utc::now().timestamp_millis();
    let publisher = tokio::spawn({
        let mut conn = support::connect(&redis.url()).await;
        let during = during.to_vec();
        async move { eventide::generator::publish_sharded(&mut conn, "events", 4, during, 200, Some(2_000.0)).await }
    });
    wait_for("w2 holding every shard", async || held_by(&holders(&mut conn).await, "w2") == 4).await;
    // w1's next checkpoints are due while it is cut off.
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.resume();
    publisher.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, w) in [("w1", &mut a), ("w2", &mut b)] {
        let mut child = w.0.take().unwrap();
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let log = std::fs::read_to_string(lake.path().join(format!("{name}.log"))).unwrap_or_default();
        let status = support::wait_within(&mut child, Duration::from_secs(120), name, || log.clone());
        assert!(status.success(), "{name} stopped cleanly: {log}");
    }
    let status = support::run_within(
        &mut worker("w2", &redis.url(), &["--exit-when-idle", "1s"]),
        Duration::from_secs(120),
        "w2's last run",
        String::new,
    );
    assert!(status.success());
    stop.store(true, Ordering::Relaxed);

    let log_a = std::fs::read_to_string(lake.path().join("w1.log")).unwrap();
    assert!(log_a.contains("back to standby"), "w1 did not notice it was fenced:\n{log_a}");
    assert!(!log_a.contains("exists: another instance"), "w1 tried to commit after its leases lapsed:\n{log_a}");
    for (k, token) in &cut {
        let seen = lines[*k].lock().unwrap().clone();
        let of_term = |m: &&serde_json::Value| m["consumer"] == "w1" && m["token"] == *token;
        let last = seen.values().filter(of_term).map(|m| m["created_ms"].as_i64().unwrap()).max();
        let after = last.expect("w1 committed the shard before the partition") - paused_ms;
        assert!(after < TTL_MS, "shard {k}: w1 committed {after} ms after the partition began (TTL {TTL_MS} ms)");
        assert!(seen.values().any(|m| m["consumer"] == "w2" && m["takeover"] == true), "shard {k}: w2's takeover");
    }
    let archived: std::collections::BTreeSet<String> = support::read_archive(lake.path()).into_keys().collect();
    assert_eq!(archived, support::event_ids(&entries), "archived events vs published, after the partition");
}
