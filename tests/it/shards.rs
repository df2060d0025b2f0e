//! Sharded streams: a logical stream of 8 shards (`events:{0}` … `events:{7}`), producers
//! routing each event by its id, and several worker processes in one group sharing the
//! shards. Whatever the number of workers, the kills, joins and leaves, the archive holds
//! every event exactly once and the dead-letter streams every malformed entry once, as one
//! worker's uninterrupted run does; the pipeline tables (windows merged across shards) and
//! `late_events` are those of `eventide replay --shards 8` of the same events.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use eventide::generator::{GenEntry, Kind, publish_sharded};
use eventide::names::ShardId;
use rand::{Rng, SeedableRng};
use redis::Value;

use eventide::sink::lake::Lake;
use eventide::window::{Pipelines, check_dir};

use crate::faults::{KillOnDrop, drill_entries};
use crate::support::http::{free_port, request};
use crate::support::{self, RedisServer, read_archive, table};

pub(crate) const SHARDS: u32 = 8;
/// The most a worker may take to stop or to finish a bounded input (a hang fails the test).
const LIMIT: Duration = Duration::from_secs(120);

/// A worker of `group` running the pipelines in `pipelines` (`""`: none).
pub(crate) fn worker_in(group: &str, name: &str, redis: &str, lake: &Path, pipelines: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eventide"));
    c.args(["run", "--config", "/dev/null", "--redis-url", redis, "--pipelines", pipelines])
        .args(if extra.contains(&"--http-addr") { &[][..] } else { &["--http-addr", ""][..] })
        .args(["--stream", "events", "--group", group, "--consumer", name, "--shards", "8"])
        .args(["--block", "50ms", "--roll-age", "1s", "--checkpoint-interval", "200ms", "--lease-ttl", "1s"])
        .args(["--claim-min-idle", "2s", "--max-entry-bytes", "64KiB"])
        .arg("--lake")
        .arg(lake)
        .args(extra)
        .stdout(Stdio::null());
    // Each worker's log, appended over its lives, for the assertion messages.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(lake, name)).unwrap();
    c.stderr(Stdio::from(log));
    c
}

fn log_path(lake: &Path, name: &str) -> std::path::PathBuf {
    lake.with_extension(format!("{name}.log"))
}

/// The tail of a worker's log.
pub(crate) fn log_tail(lake: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(log_path(lake, name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Stops each worker in turn (SIGTERM: it commits and acks what it read, its shards move
/// to the others), then runs `last` (a worker with `--exit-when-idle`), which closes what
/// their checkpoints hold open. Each within [`LIMIT`].
pub(crate) fn stop_then_finish(workers: &mut [(&str, &mut KillOnDrop)], last: (&str, Command), lake: &Path) {
    for (name, w) in workers.iter_mut() {
        let mut child = w.0.take().unwrap();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let status = support::wait_within(&mut child, LIMIT, name, || log_tail(lake, name));
        assert!(status.success(), "{name}'s clean stop: {}", log_tail(lake, name));
    }
    let (name, mut cmd) = last;
    let status = support::run_within(&mut cmd, LIMIT, "the last run", || log_tail(lake, name));
    assert!(status.success(), "the last run: {}", log_tail(lake, name));
}

/// Publishes `entries` over the 8 shards at `rate` entries/s, in the background.
async fn publish(redis: &str, entries: &[GenEntry], rate: f64) -> tokio::task::JoinHandle<()> {
    let mut conn = support::connect(redis).await;
    let entries = entries.to_vec();
    tokio::spawn(async move {
        publish_sharded(&mut conn, "events", SHARDS, entries, 200, Some(rate)).await.unwrap();
    })
}

/// Every event once in the archive, every malformed entry once over the shards' DLQs,
/// nothing pending on any shard.
async fn assert_exactly_once(redis: &str, entries: &[GenEntry], lake: &Path, what: &str) {
    let archived: BTreeSet<String> = read_archive(lake).into_keys().collect();
    assert_eq!(archived, support::event_ids(entries), "{what}: archived events vs published");
    let mut conn = support::connect(redis).await;
    let mut dlq_ids = BTreeSet::new();
    let mut dead = 0;
    for shard in ShardId::all(SHARDS) {
        let key = shard.stream_key("events");
        let dlq: Vec<(String, Vec<Value>)> =
            redis::cmd("XRANGE").arg(format!("{key}:dlq")).arg("-").arg("+").query_async(&mut conn).await.unwrap();
        for (_, fields) in &dlq {
            let pos = fields.iter().position(|v| matches!(v, Value::BulkString(b) if b == b"dlq_id")).unwrap();
            if let Value::BulkString(b) = &fields[pos + 1] {
                dlq_ids.insert(format!("{key}/{}", String::from_utf8_lossy(b)));
            }
        }
        dead += dlq.len();
        assert_eq!(support::pending(&mut conn, &key).await, 0, "{what}: entries pending on {key}");
    }
    let malformed = entries.iter().filter(|e| matches!(e.kind, Kind::Malformed(_))).count();
    assert_eq!(dlq_ids.len(), dead, "{what}: a source entry has two dead-letter entries");
    assert_eq!(dead, malformed, "{what}: dead-letter entries vs malformed entries");
}

/// The pipeline tables and late events of each lake, and of `eventide replay --shards 8` of
/// the same entries, are the same (and not empty).
pub(crate) async fn assert_same_tables(entries: &[GenEntry], pipelines: &Path, lakes: &[(&str, &Path)]) {
    let input = lakes[0].1.with_extension("jsonl");
    crate::merge::write_jsonl(entries, &input);
    let (_dir, replayed) = crate::merge::replay_sharded(&input, pipelines, SHARDS).await;
    let p = Pipelines::new(check_dir(pipelines).await.unwrap()).unwrap();
    for (what, path) in lakes {
        let lake = Lake::open(path.to_str().unwrap()).unwrap();
        for q in p.queries() {
            let name = &q.spec.name;
            let want = table(&replayed, &p, name).await;
            assert!(!want.is_empty(), "{name}: the replay wrote nothing");
            let got = table(&lake, &p, name).await;
            support::assert_same_rows(&got, &want, &format!("{name}: {what} vs replay --shards 8"));
        }
        let (got, want) = (crate::merge::late_rows(&lake, &p).await, crate::merge::late_rows(&replayed, &p).await);
        assert!(!want.is_empty(), "late_events: the replay has none");
        support::assert_same_rows(&got, &want, &format!("late_events: {what} vs replay --shards 8"));
    }
}

/// One worker over the 8 shards, and three workers over the same entries in another group:
/// the same archive, dead letters, pipeline tables and late events, as `eventide replay
/// --shards 8` of the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_over_eight_shards_equal_one_worker() {
    let redis = RedisServer::start();
    let entries = drill_entries(8_000, 31);
    publish(&redis.url(), &entries, 1e9).await.await.unwrap();
    let pipelines = crate::merge::example_pipelines();
    let pipes = pipelines.path().to_str().unwrap();
    let one = tempfile::tempdir().unwrap();
    let mut solo = worker_in("analytics", "solo", &redis.url(), one.path(), pipes, &["--exit-when-idle", "1s"]);
    let status = support::run_within(&mut solo, LIMIT, "the solo run", || log_tail(one.path(), "solo"));
    assert!(status.success(), "{}", log_tail(one.path(), "solo"));
    assert_exactly_once(&redis.url(), &entries, one.path(), "one worker").await;

    // Three workers in a second group over the same keys (their own pending lists and DLQ
    // seen-sets are per group and stream; the DLQ entries are checked for the first group).
    let three = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut children: Vec<KillOnDrop> = ["w1", "w2", "w3"]
        .iter()
        .zip(ports)
        .map(|(w, port)| {
            let addr = format!("127.0.0.1:{port}");
            let extra = ["--dlq-stream", "three", "--http-addr", &addr];
            KillOnDrop(Some(worker_in("analytics-3", w, &redis.url(), three.path(), pipes, &extra).spawn().unwrap()))
        })
        .collect();
    // The shards spread over the three (each holds some, together all 8), and all is read.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut conn = support::connect(&redis.url()).await;
    loop {
        let mut held = Vec::new();
        for port in ports {
            let text = request(port, "/metrics", None).await.map(|r| r.1).unwrap_or_default();
            held.push(text.lines().filter(|l| l.starts_with("eventide_shard_held{") && l.ends_with(" 1")).count());
        }
        let mut read_all = true;
        for shard in ShardId::all(SHARDS) {
            let groups: Value =
                redis::cmd("XINFO").arg("GROUPS").arg(shard.stream_key("events")).query_async(&mut conn).await.unwrap();
            let (_, read, _) = eventide::source::probe::group_info(&groups, "analytics-3").unwrap_or_default();
            let len: u64 = redis::cmd("XLEN").arg(shard.stream_key("events")).query_async(&mut conn).await.unwrap();
            read_all &= read == Some(len);
        }
        if held.iter().sum::<usize>() == SHARDS as usize && held.iter().all(|&h| h > 0) && read_all {
            eprintln!("shards held per worker: {held:?}");
            // `eventide status` shows every shard's holder and exits 0 (none unowned).
            let out = Command::new(env!("CARGO_BIN_EXE_eventide"))
                .args(["status", "--redis-url", &redis.url(), "--stream", "events", "--group", "analytics-3"])
                .args(["--shards", "8", "--fail-on-unowned", "--dlq-stream", "three"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            // A shard changing hands between the metrics read and this one shows unowned
            // for a moment (a hand-over, or a lease lost under load): look again.
            if !out.status.success() && std::time::Instant::now() < deadline {
                eprintln!("status saw a shard between holders; again:\n{text}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
            assert!(["w1/", "w2/", "w3/"].iter().all(|w| text.contains(w)), "{text}");
            // The DLQ column counts the run's dead-letter keys (`three:{k}`).
            let dead: u64 = text
                .lines()
                .filter(|l| l.starts_with("events:{"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
            assert!(dead > 0, "status shows no dead letters in the run's DLQ:\n{text}");
            let workers = text.lines().find_map(|l| l.strip_prefix("workers: ")).unwrap_or_default();
            let mut names: Vec<&str> = workers.split(", ").collect();
            names.sort();
            assert_eq!(names, ["w1", "w2", "w3"], "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "shards held {held:?}, all read: {read_all}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The holder of shard 0 merges the windows every shard has closed, and says so.
    let merged = r#"eventide_merged_windows_total{group="analytics-3"}"#;
    loop {
        let mut n = 0.0;
        for port in ports {
            let text = request(port, "/metrics", None).await.map(|r| r.1).unwrap_or_default();
            n += support::http::metric(&text, merged).unwrap_or(0.0);
        }
        if n > 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no window merged while the workers ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (c, name) in children.iter_mut().zip(["w1", "w2", "w3"]) {
        let mut child = c.0.take().unwrap();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let status = support::wait_within(&mut child, LIMIT, name, || log_tail(three.path(), name));
        assert!(status.success(), "{name}: {}", log_tail(three.path(), name));
    }
    // Their open windows are in their checkpoints: one more worker closes them at the end.
    let last = ["--dlq-stream", "three", "--exit-when-idle", "1s"];
    let mut w1 = worker_in("analytics-3", "w1", &redis.url(), three.path(), pipes, &last);
    let status = support::run_within(&mut w1, LIMIT, "the last run", || log_tail(three.path(), "w1"));
    assert!(status.success(), "{}", log_tail(three.path(), "w1"));
    assert_same_tables(&entries, pipelines.path(), &[("one worker", one.path()), ("three workers", three.path())])
        .await;
    let (a, b) = (read_archive(one.path()), read_archive(three.path()));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "the same events");
    let mut dead = 0;
    for shard in ShardId::all(SHARDS) {
        let n: u64 = redis::cmd("XLEN").arg(shard.stream_key("three")).query_async(&mut conn).await.unwrap();
        dead += n;
    }
    let malformed = entries.iter().filter(|e| matches!(e.kind, Kind::Malformed(_))).count() as u64;
    assert_eq!(dead, malformed, "three workers: dead letters over the shards' DLQs");
}

/// Three workers while events are published; 20 SIGKILLs of random workers at random
/// points (each restarted), a fourth worker joining and one leaving for good (SIGTERM)
/// mid-run. Then the survivors finish: every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_added_and_removed_count_every_event_once() {
    let redis = RedisServer::start();
    let entries = drill_entries(16_000, 32);
    let publisher = publish(&redis.url(), &entries, 2_000.0).await;
    let lake = tempfile::tempdir().unwrap();
    let pipelines = crate::merge::example_pipelines();
    let pipes = pipelines.path().to_str().unwrap();
    let spawn = |name: &str| {
        KillOnDrop(Some(worker_in("analytics", name, &redis.url(), lake.path(), pipes, &[]).spawn().unwrap()))
    };
    let mut workers: Vec<(String, KillOnDrop)> = ["w1", "w2", "w3"].iter().map(|w| (w.to_string(), spawn(w))).collect();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(32);
    for kill in 0..20 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..900))).await;
        match kill {
            7 => workers.push(("w4".into(), spawn("w4"))),
            14 => {
                // w2 leaves for good: a clean stop hands its shards over.
                let i = workers.iter().position(|(n, _)| n == "w2").unwrap();
                let (_, mut gone) = workers.remove(i);
                let mut child = gone.0.take().unwrap();
                let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
                assert!(term.success());
                let status = support::wait_within(&mut child, LIMIT, "w2", || log_tail(lake.path(), "w2"));
                assert!(status.success(), "w2's clean stop: {}", log_tail(lake.path(), "w2"));
            }
            _ => {}
        }
        let i = rng.random_range(0..workers.len());
        let (name, w) = &mut workers[i];
        let mut child = w.0.take().unwrap();
        child.kill().unwrap(); // SIGKILL: no checkpoint, no ack, no goodbye
        child.wait().unwrap();
        *w = spawn(name);
    }
    tokio::time::timeout(LIMIT, publisher).await.expect("the publisher finished").unwrap();
    // (A worker just restarted has its signal handlers in place after this.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut running: Vec<(&str, &mut KillOnDrop)> = workers.iter_mut().map(|(n, w)| (n.as_str(), w)).collect();
    let last = worker_in("analytics", "w1", &redis.url(), lake.path(), pipes, &["--exit-when-idle", "1s"]);
    stop_then_finish(&mut running, ("w1", last), lake.path());
    assert_exactly_once(&redis.url(), &entries, lake.path(), "after 20 kills, a join and a leave").await;
    assert_same_tables(&entries, pipelines.path(), &[("after 20 kills, a join and a leave", lake.path())]).await;
}

/// Two workers by static assignment (w0: even shards, shard 0 and the merger; w1: odd
/// ones). w1 is paused (SIGSTOP) while events flow: its shards close nothing, so the merger
/// stops and says so (`eventide status --max-merge-wait` exits 2, the waiting gauge is up);
/// resumed, w1 finds its leases may have lapsed, takes them again and the merger goes on.
/// The tables equal `eventide replay --shards 8`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_shard_holds_the_merger_and_status_says_so() {
    let redis = RedisServer::start();
    let entries = drill_entries(12_000, 33);
    let lake = tempfile::tempdir().unwrap();
    let pipelines = crate::merge::example_pipelines();
    let pipes = pipelines.path().to_str().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let w0 = ["--workers", "2", "--worker-index", "0", "--http-addr", &addr];
    let mut w0 = KillOnDrop(Some(worker_in("analytics", "w0", &redis.url(), lake.path(), pipes, &w0).spawn().unwrap()));
    let w1 = ["--workers", "2", "--worker-index", "1"];
    let mut w1 = KillOnDrop(Some(worker_in("analytics", "w1", &redis.url(), lake.path(), pipes, &w1).spawn().unwrap()));
    let publisher = publish(&redis.url(), &entries, 2_000.0).await;
    let merged_metric = r#"eventide_merged_windows_total{group="analytics"}"#;
    let merged = async || {
        let text = request(port, "/metrics", None).await.map(|r| r.1).unwrap_or_default();
        support::http::metric(&text, merged_metric).unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while merged().await == 0.0 {
        assert!(std::time::Instant::now() < deadline, "nothing merged: {}", log_tail(lake.path(), "w0"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let pid = w1.0.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // Shard 0 merges what the paused shards had committed, then waits for them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = merged().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(merged().await, before, "the merger went on without the paused shards");
    let status = Command::new(env!("CARGO_BIN_EXE_eventide"))
        .args(["status", "--http-addr", &addr, "--max-merge-wait", "1s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout).to_string() + &String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(2), "status flags the waiting merge:\n{text}");
    assert!(text.contains("oldest window waiting for another shard"), "{text}");
    let metrics = request(port, "/metrics", None).await.map(|r| r.1).unwrap_or_default();
    let waiting = support::http::metric(&metrics, r#"eventide_merge_waiting_seconds{group="analytics"}"#);
    assert!(waiting.is_some_and(|w| w > 1.0), "the waiting gauge: {waiting:?}");

    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while merged().await <= before {
        assert!(std::time::Instant::now() < deadline, "the merger did not go on: {}", log_tail(lake.path(), "w1"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::timeout(LIMIT, publisher).await.expect("the publisher finished").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = worker_in("analytics", "w0", &redis.url(), lake.path(), pipes, &["--exit-when-idle", "1s"]);
    stop_then_finish(&mut [("w0", &mut w0), ("w1", &mut w1)], ("w0", last), lake.path());
    assert_exactly_once(&redis.url(), &entries, lake.path(), "after a paused worker").await;
    assert_same_tables(&entries, pipelines.path(), &[("after a paused worker", lake.path())]).await;
}
