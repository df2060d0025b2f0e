//! Fault injection: the `eventide` process is SIGKILLed at random points (20 kills by
//! default, `EVENTIDE_FAULT_KILLS=300` for the long mode) while a publisher keeps writing
//! events with duplicates, jitter beyond the watermark (late events) and malformed entries,
//! and every example pipeline runs. After a final clean run:
//! - the archive holds every event exactly once (no loss, no duplicate row);
//! - the dead-letter stream holds every malformed entry exactly once;
//! - every pipeline table and the late table equal an uninterrupted replay of the same
//!   events (which `pipelines_e2e` checks against an independent computation);
//! - a reader polling the archive during the drill never sees a partial file or a duplicate.
//!
//! Also: SIGTERM mid-stream (clean stop, then resume), and two instances in one group with
//! the active one killed (the standby takes over).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use eventide::generator::{GenEntry, GenOptions, Generator, Kind, Published, publish};
use eventide::sink::lake::Lake;
use eventide::window::{Pipelines, check_dir};
use rand::{Rng, SeedableRng};
use redis::Value;

use crate::support::{self, RedisServer, read_archive, table};

/// A child process killed if the test fails before it is collected.
pub(crate) struct KillOnDrop(pub Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The drills' input: `n` entries (5% duplicates, 0.5% malformed, 40 s of jitter: beyond the
/// 5 s watermark, so some events are late, within revenue_per_minute's 30 s lateness or beyond),
/// 100 ms of event time apart, and a task publishing them to `events` at `rate` entries/s.
pub(crate) async fn drill_stream(
    redis: &str,
    n: u64,
    seed: u64,
    rate: f64,
) -> (Vec<GenEntry>, tokio::task::JoinHandle<eventide::error::Result<Published>>) {
    let entries = drill_entries(n, seed);
    let mut conn = support::connect(redis).await;
    let publisher = tokio::spawn({
        let entries = entries.clone();
        async move { publish(&mut conn, "events", entries, 200, Some(rate)).await }
    });
    (entries, publisher)
}

/// The drills' entries (see [`drill_stream`]).
pub(crate) fn drill_entries(n: u64, seed: u64) -> Vec<GenEntry> {
    Generator::new(GenOptions {
        entries: n,
        duplicates: 0.05,
        malformed: 0.005,
        oversize_bytes: 70 * 1024,
        jitter: Duration::from_secs(40),
        spacing_us: 100_000,
        start_us: 1_767_225_600_000_000,
        seed,
        ..Default::default()
    })
    .collect()
}

fn eventide(redis: &str, lake: &Path, extra: &[&str]) -> Command {
    eventide_as("c1", redis, lake, extra)
}

fn eventide_as(consumer: &str, redis: &str, lake: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eventide"));
    c.args(["run", "--config", "/dev/null", "--http-addr", "", "--redis-url", redis])
        .args(["--stream", "events", "--group", "analytics", "--consumer", consumer])
        .args([
            "--block",
            "50ms",
            "--roll-age",
            "1s",
            "--checkpoint-interval",
            "200ms",
            "--claim-min-idle",
            "2s",
            "--max-entry-bytes",
            "64KiB",
        ])
        .arg("--pipelines")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines"))
        .arg("--lake")
        .arg(lake)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_counts_every_event_exactly_once() {
    let kills: usize = std::env::var("EVENTIDE_FAULT_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    sigkill_drill(kills, &[]).await;
}

/// The same drill in `group` mode (`XREADGROUP`, a pending list, `XACK` after each
/// checkpoint); the default (`auto`) reads this group without a pending list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_group_mode_counts_every_event_exactly_once() {
    let kills: usize = std::env::var("EVENTIDE_FAULT_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    sigkill_drill(kills / 2, &["--read-mode", "group"]).await;
}

async fn sigkill_drill(kills: usize, mode: &[&str]) {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let (entries, publisher) = drill_stream(&redis.url(), 24_000, 15, 2_000.0).await;
    let lake = tempfile::tempdir().unwrap();

    // A reader globbing the archive all along: never a partial file, never a duplicate row.
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));
    let poller = std::thread::spawn({
        let (stop, polls, dir) = (stop.clone(), polls.clone(), lake.path().to_path_buf());
        move || {
            while !stop.load(Ordering::Relaxed) {
                read_archive(&dir); // panics on a duplicate event_id or an unreadable file
                polls.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });

    // And analysts' tools: DuckDB over the archive, pyarrow over every pipeline table.
    let stop_file = lake.path().join("stop-polling");
    let tables = ["revenue_per_minute", "checkout_funnel", "customer_sessions", "payment_failure_rate"];
    let mut py_poller = KillOnDrop(Some(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analyst/poll_lake.py"))
            .arg(lake.path())
            .arg(&stop_file)
            .args(tables)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 on PATH"),
    ));

    let mut rng = rand::rngs::SmallRng::seed_from_u64(kills as u64);
    for _ in 0..kills {
        let mut child = eventide(&redis.url(), lake.path(), mode).spawn().unwrap();
        // Anywhere: during start-up and recovery, mid-batch, mid-checkpoint (every 200 ms).
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1200))).await;
        child.kill().unwrap(); // SIGKILL: no flush, no checkpoint, no ack
        child.wait().unwrap();
    }
    publisher.await.unwrap().unwrap();
    let mut last = eventide(&redis.url(), lake.path(), &[mode, &["--exit-when-idle", "1s"]].concat());
    let status = support::run_within(&mut last, Duration::from_secs(120), "the last run", String::new);
    assert!(status.success());
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("the concurrent reader saw only whole files and no duplicate");
    std::fs::write(&stop_file, b"").unwrap();
    let py = py_poller.0.take().unwrap().wait_with_output().unwrap();
    let py_out = String::from_utf8_lossy(&py.stdout);
    assert!(py.status.success(), "DuckDB/pyarrow reader: {py_out}");
    let py_polls: u64 = py_out.trim().parse().unwrap_or(0);
    assert!(py_polls > 0, "the DuckDB/pyarrow reader never completed a poll: {py_out}");
    std::fs::remove_file(&stop_file).unwrap();
    eprintln!(
        "{kills} kills; concurrent readers polled {} (parquet crate) and {py_polls} (DuckDB + pyarrow) times",
        polls.load(Ordering::Relaxed)
    );

    assert_exactly_once(&entries, &mut conn, lake.path(), &format!("after {kills} SIGKILLs {mode:?}")).await;
    if mode.is_empty() {
        // The default reads this group without a pending list: the group's position followed
        // the checkpoints, so its lag is 0 at the end.
        let groups: redis::Value =
            redis::cmd("XINFO").arg("GROUPS").arg("events").query_async(&mut conn).await.unwrap();
        let (_, read, _) = eventide::source::probe::group_info(&groups, "analytics").unwrap();
        assert_eq!(read, Some(entries.len() as u64), "entries-read follows the checkpoints");
    }
}

/// The archive, the DLQ, every pipeline table and the late table hold each event exactly
/// once: as published, and as an uninterrupted replay of the same events.
pub(crate) async fn assert_exactly_once(
    entries: &[eventide::generator::GenEntry],
    conn: &mut redis::aio::MultiplexedConnection,
    lake: &Path,
    what: &str,
) {
    // The archive: every event exactly once.
    let archived: BTreeSet<String> = read_archive(lake).into_keys().collect();
    assert_eq!(archived, support::event_ids(entries), "{what}: archived events vs published");

    // The DLQ: every malformed entry exactly once.
    let dlq: Vec<(String, Vec<Value>)> =
        redis::cmd("XRANGE").arg("events:dlq").arg("-").arg("+").query_async(conn).await.unwrap();
    let source_ids: BTreeSet<String> = dlq
        .iter()
        .map(|(_, fields)| {
            let pos = fields.iter().position(|v| matches!(v, Value::BulkString(b) if b == b"dlq_id")).unwrap();
            match &fields[pos + 1] {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("dlq_id {other:?}"),
            }
        })
        .collect();
    let malformed = entries.iter().filter(|e| matches!(e.kind, Kind::Malformed(_))).count();
    assert_eq!(source_ids.len(), dlq.len(), "{what}: a source entry has two dead-letter entries");
    assert_eq!(dlq.len(), malformed, "{what}: dead-letter entries vs malformed entries");
    assert_eq!(support::pending(conn, "events").await, 0);

    // Every pipeline table and the late table: as an uninterrupted replay of the same events.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let jsonl = lake.join("replay.jsonl");
    let lines: Vec<String> = entries
        .iter()
        .filter(|e| e.kind == Kind::Event || e.kind == Kind::Duplicate)
        .map(|e| String::from_utf8(e.fields.iter().find(|(k, _)| *k == "data").unwrap().1.clone()).unwrap())
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let replay_dir = tempfile::tempdir().unwrap();
    let replay_lake = Lake::open(replay_dir.path().to_str().unwrap()).unwrap();
    let fresh = Pipelines::new(check_dir(&dir).await.unwrap()).unwrap();
    eventide::replay::run(&[jsonl], fresh, &replay_lake, Duration::from_secs(3600), "events").await.unwrap();
    let live_lake = Lake::open(lake.to_str().unwrap()).unwrap();
    let pipelines = Pipelines::new(check_dir(&dir).await.unwrap()).unwrap();
    for name in pipelines.queries().iter().map(|q| &q.spec.name) {
        let (want, got) = (table(&replay_lake, &pipelines, name).await, table(&live_lake, &pipelines, name).await);
        assert!(!want.is_empty(), "{name}: the replay wrote nothing");
        support::assert_same_rows(&got, &want, &format!("{name} {what} vs an uninterrupted replay"));
    }
    // (Late rows without `stream_id`: a replay numbers lines, not Redis entries.)
    let late =
        "SELECT pipeline, window_start, window_end, event_id, event_type, event_time, watermark FROM late_events";
    let (want, got) =
        (query_rows(&replay_lake, &pipelines, late).await, query_rows(&live_lake, &pipelines, late).await);
    assert!(!want.is_empty(), "late_events: the replay wrote nothing");
    support::assert_same_rows(&got, &want, &format!("late_events {what} vs an uninterrupted replay"));
}

async fn query_rows(lake: &Lake, pipelines: &Pipelines, sql: &str) -> Vec<String> {
    let q = eventide::lake_sql::LakeQuery::open(lake, &pipelines.output_schemas()).await.unwrap();
    support::text_rows(&q.sql(sql).await.unwrap().1)
}

/// SIGTERM mid-stream: the run stops reading, checkpoints (open windows included), acks
/// everything it read and exits 0 with a log line; a restart resumes from there and the
/// result is exactly that of an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_acks_and_resumes() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let (entries, publisher) = drill_stream(&redis.url(), 12_000, 16, 4_000.0).await;
    let lake = tempfile::tempdir().unwrap();
    let child = eventide(&redis.url(), lake.path(), &[]).stderr(Stdio::piped()).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit status {:?}; log:\n{log}", out.status);
    assert!(started.elapsed() < Duration::from_secs(30), "stopped in {:?}", started.elapsed());
    assert!(log.contains("Stopped cleanly"), "no stop line in:\n{log}");
    // Everything it read was acked: nothing pending right after the stop.
    assert_eq!(support::pending(&mut conn, "events").await, 0);
    let read_so_far: u64 = redis::cmd("XLEN").arg("events").query_async(&mut conn).await.unwrap();
    assert!(read_so_far < entries.len() as u64, "the stop landed mid-stream");

    publisher.await.unwrap().unwrap();
    let out = eventide(&redis.url(), lake.path(), &["--exit-when-idle", "1s"]).stderr(Stdio::piped()).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Restored open windows"), "the restart did not restore windows:\n{log}");
    assert_exactly_once(&entries, &mut conn, lake.path(), "after a SIGTERM and a restart").await;
}

/// Two instances (consumers c1 and c2) in one group: one holds the lease and reads, the
/// other waits; the active one is SIGKILLed mid-stream and the standby takes over its
/// checkpoint and its pending entries. No event is counted twice or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_one_group_the_active_one_killed() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let (entries, publisher) = drill_stream(&redis.url(), 12_000, 17, 4_000.0).await;
    let lake = tempfile::tempdir().unwrap();
    let args = ["--lease-ttl", "1s", "--exit-when-idle", "2s"];
    let spawn = |c: &str| eventide_as(c, &redis.url(), lake.path(), &args).stderr(Stdio::piped()).spawn().unwrap();
    let mut children = vec![("c1", spawn("c1")), ("c2", spawn("c2"))];
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let holder: String = redis::cmd("GET").arg("eventide:lease:{analytics}").query_async(&mut conn).await.unwrap();
    let active = holder.split('/').next().unwrap().to_string();
    let i = children.iter().position(|(c, _)| *c == active).expect("a holder among the two");
    let (_, mut killed) = children.remove(i);
    killed.kill().unwrap();
    killed.wait().unwrap();
    publisher.await.unwrap().unwrap();
    let (survivor, child) = children.pop().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{survivor}: {log}");
    assert!(log.contains("Standby"), "{survivor} was not on standby while {active} read:\n{log}");
    assert!(log.contains("Recovered from checkpoint"), "{survivor} did not continue {active}'s checkpoints:\n{log}");
    assert_exactly_once(
        &entries,
        &mut conn,
        lake.path(),
        &format!("after {active} was killed and {survivor} took over"),
    )
    .await;
}
