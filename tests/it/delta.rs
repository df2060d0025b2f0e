//! Delta Lake tables (`--table-format delta`), read back by independent readers: delta-rs,
//! Polars and DuckDB (over the files of the latest version), in `tests/analyst/read_delta.py`.
//!
//! - SIGKILLs at random points while events are published: every table's latest version
//!   equals an uninterrupted replay (the `emit = "updates"` table: each window's latest
//!   revision only), the archive holds every event once, and no file is added twice to a log;
//!   a replay of the Delta archive gives the live run's tables again.
//! - `eventide compact` beside a live run and a reader looping over the archive: no version
//!   read misses or doubles a row; ≤ 2 files per partition after; a vacuum changes no row.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use eventide::sink::lake::Lake;
use eventide::window::{Pipelines, check_dir};
use rand::{Rng, SeedableRng};

use crate::faults::{KillOnDrop, drill_stream};
use crate::merge::{example_pipelines, write_jsonl};
use crate::support::{self, RedisServer, table};

pub(crate) fn eventide_delta(redis: &str, lake: &Path, pipelines: &Path, log: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eventide"));
    c.args(["run", "--config", "/dev/null", "--http-addr", "", "--redis-url", redis])
        .args(["--stream", "events", "--group", "analytics", "--consumer", "c1", "--table-format", "delta"])
        .args(["--block", "50ms", "--claim-min-idle", "2s"])
        .args(match extra.contains(&"--roll-age") {
            true => &[][..],
            false => &["--roll-age", "1s", "--checkpoint-interval", "200ms"][..],
        })
        .args(["--max-entry-bytes", "64KiB"])
        .arg("--pipelines")
        .arg(pipelines)
        .arg("--lake")
        .arg(lake)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap());
    c
}

/// Runs `read_delta.py` on one table; returns its summary line (`rows=… version=… files=…`).
pub(crate) fn read_delta(table: &Path, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analyst/read_delta.py"))
        .arg(table)
        .args(args)
        .output()
        .expect("python3 on PATH");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}: {stdout}{}",
        table.display(),
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
    );
    stdout.trim().to_string()
}

/// Every pipeline table of the Delta lake `delta` equals the plain lake `plain`'s (an
/// `emit = "updates"` table: each window's latest revision), read by delta-rs, Polars and
/// DuckDB, and (final tables) by eventide's own SQL.
async fn assert_tables_equal(delta: &Path, plain: &Path, p: &Pipelines, what: &str) {
    let (d, l) = (Lake::open(delta.to_str().unwrap()).unwrap(), Lake::open(plain.to_str().unwrap()).unwrap());
    for q in p.queries() {
        let name = &q.spec.name;
        let expect: PathBuf = plain.join(name);
        let updates = q.spec.emit == eventide::window::spec::Emit::Updates;
        let mut args = vec!["--expect", expect.to_str().unwrap()];
        if updates {
            args.push("--one-revision");
        }
        let summary = read_delta(&delta.join(name), &args);
        assert!(rows_of(&summary) > 0, "{name} {what}: {summary}");
        eprintln!("{name}: {summary}");
        if !updates {
            let (want, got) = (table(&l, p, name).await, table(&d, p, name).await);
            support::assert_same_rows(&got, &want, &format!("{name} {what}, through LakeQuery"));
        }
    }
}

/// An uninterrupted replay of `entries` (JSON lines written beside `lake`) through
/// `pipelines` into a new plain-Parquet lake.
async fn replay_plain(
    entries: &[eventide::generator::GenEntry],
    pipelines: &Path,
    lake: &Path,
) -> (tempfile::TempDir, Lake) {
    let jsonl = lake.join("replay.jsonl");
    write_jsonl(entries, &jsonl);
    let dir = tempfile::tempdir().unwrap();
    let out = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let fresh = Pipelines::new(check_dir(pipelines).await.unwrap()).unwrap();
    eventide::replay::run(&[jsonl], fresh, &out, Duration::from_secs(3600), "events").await.unwrap();
    (dir, out)
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn rows_of(summary: &str) -> u64 {
    summary.split_whitespace().find_map(|w| w.strip_prefix("rows=")).and_then(|n| n.parse().ok()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_leave_delta_tables_equal_to_an_uninterrupted_run() {
    let kills: usize = std::env::var("EVENTIDE_FAULT_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let redis = RedisServer::start();
    let (entries, publisher) = drill_stream(&redis.url(), 24_000, 21, 2_000.0).await;
    let lake = tempfile::tempdir().unwrap();
    let pipelines = example_pipelines();
    let log = lake.path().join("eventide.log");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(kills as u64 + 7);
    for _ in 0..kills {
        let child = eventide_delta(&redis.url(), lake.path(), pipelines.path(), &log, &[]).spawn().unwrap();
        let mut child = KillOnDrop(Some(child));
        // Anywhere: start-up, recovery (publishing a checkpoint's files to the logs), a commit.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        let mut c = child.0.take().unwrap();
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }
    publisher.await.unwrap().unwrap();
    let mut last = eventide_delta(&redis.url(), lake.path(), pipelines.path(), &log, &["--exit-when-idle", "1s"]);
    let status = support::run_within(&mut last, Duration::from_secs(180), "the last run", || {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    assert!(status.success(), "the last run: {}", log_tail(&log));

    // The uninterrupted run: a replay of the same events into plain Parquet.
    let (replay_dir, _) = replay_plain(&entries, pipelines.path(), lake.path()).await;

    let events = read_delta(&lake.path().join("events"), &["--unique", "event_id"]);
    assert_eq!(rows_of(&events), support::event_ids(&entries).len() as u64, "archive: {events}");
    let compiled = Pipelines::new(check_dir(pipelines.path()).await.unwrap()).unwrap();
    let live_lake = Lake::open(lake.path().to_str().unwrap()).unwrap();
    assert_tables_equal(lake.path(), replay_dir.path(), &compiled, "after the SIGKILLs vs an uninterrupted run").await;
    // Late rows without `stream_id`: a replay numbers lines, not Redis entries.
    let late = read_delta(
        &lake.path().join("late_events"),
        &["--expect", replay_dir.path().join("late_events").to_str().unwrap(), "--drop", "stream_id"],
    );
    assert!(rows_of(&late) > 0, "late_events: {late}");
    eprintln!("{kills} kills; events: {events}; late_events: {late}");

    // Replay from the Delta archive (its latest version's files) into a new lake: the live
    // run's tables again.
    let replayed = replay_archive(&lake.path().join("events"), pipelines.path());
    let replayed_lake = Lake::open(replayed.path().to_str().unwrap()).unwrap();
    assert_tables_equal(lake.path(), replayed.path(), &compiled, "live vs a replay of the Delta archive").await;
    let (got, want) = (
        crate::merge::late_rows(&replayed_lake, &compiled).await,
        crate::merge::late_rows(&live_lake, &compiled).await,
    );
    support::assert_same_rows(&got, &want, "late_events: replay of the Delta archive vs live");
}

/// `eventide replay <archive>` with `pipelines` into a new plain lake.
fn replay_archive(events: &Path, pipelines: &Path) -> tempfile::TempDir {
    let replayed = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eventide"))
        .arg("replay")
        .arg(events)
        .arg("--pipelines")
        .arg(pipelines)
        .arg("--lake")
        .arg(replayed.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "replay of {}: {}", events.display(), String::from_utf8_lossy(&out.stderr));
    replayed
}

/// Files per partition of a Delta table's latest version, by delta-rs.
fn files_per_partition(table: &Path) -> usize {
    let script = "import sys, collections\nfrom deltalake import DeltaTable\n\
                  dt = DeltaTable(sys.argv[1])\n\
                  c = collections.Counter(u.rsplit('/', 1)[0] for u in dt.file_uris())\n\
                  print(max(c.values()) if c else 0)";
    let out = Command::new("python3").args(["-c", script]).arg(table).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn compact(lake: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_eventide"))
        .args(["compact", "--lake"])
        .arg(lake)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "compact: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `eventide compact` rounds while a pipeline runs and a reader loops over the archive:
/// every version read holds each event once and nothing it held before is lost; after the
/// run, one more round leaves ≤ 2 files per partition in every table, the tables still equal
/// an uninterrupted replay, and a vacuum deletes the replaced files without changing a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_beside_a_live_run_never_shows_a_missing_or_doubled_row() {
    let redis = RedisServer::start();
    let (entries, publisher) = drill_stream(&redis.url(), 16_000, 33, 2_000.0).await;
    let lake = tempfile::tempdir().unwrap();
    let pipelines = example_pipelines();
    let log = lake.path().join("eventide.log");
    // Small files on purpose: a commit every 300 ms.
    let fast = ["--roll-age", "300ms", "--checkpoint-interval", "300ms", "--exit-when-idle", "2s"];
    let mut run =
        KillOnDrop(Some(eventide_delta(&redis.url(), lake.path(), pipelines.path(), &log, &fast).spawn().unwrap()));
    let events = lake.path().join("events");
    let stop = lake.path().join("stop-polling");
    let mut reader = KillOnDrop(Some(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analyst/poll_delta.py"))
            .arg(&events)
            .arg("event_id")
            .arg(&stop)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut rounds = 0;
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if events.join("_delta_log").exists() {
            let out = compact(lake.path(), &["--target-size", "64MiB"]);
            eprintln!("round {rounds}: {out}");
            rounds += 1;
        }
    }
    publisher.await.unwrap().unwrap();
    let status = support::wait_within(run.0.as_mut().unwrap(), Duration::from_secs(120), "the run", || {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    run.0 = None;
    assert!(status.success(), "the run: {}", log_tail(&log));
    assert!(rounds >= 3, "only {rounds} compaction rounds ran beside the pipeline");
    let out = compact(lake.path(), &["--target-size", "64MiB"]);
    eprintln!("after the run: {out}");
    std::fs::write(&stop, b"").unwrap();
    let polled = reader.0.take().unwrap().wait_with_output().unwrap();
    let polled_out = String::from_utf8_lossy(&polled.stdout);
    assert!(polled.status.success(), "the concurrent reader: {polled_out}");
    let versions: usize = polled_out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("versions="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(versions >= 5, "the reader saw too few versions to mean anything: {polled_out}");
    eprintln!("concurrent reader: {polled_out}");

    let (replay_dir, _) = replay_plain(&entries, pipelines.path(), lake.path()).await;
    let check_all = |what: &str| {
        let summary = read_delta(&events, &["--unique", "event_id"]);
        assert_eq!(rows_of(&summary), support::event_ids(&entries).len() as u64, "{what}: archive {summary}");
        for name in ["revenue_per_minute", "checkout_funnel", "customer_sessions", "payment_failure_rate"] {
            let expect = replay_dir.path().join(name);
            read_delta(&lake.path().join(name), &["--expect", expect.to_str().unwrap()]);
        }
        let expect = replay_dir.path().join("revenue_updates");
        read_delta(&lake.path().join("revenue_updates"), &["--expect", expect.to_str().unwrap(), "--one-revision"]);
    };
    check_all("after compaction");
    for t in ["events", "revenue_per_minute", "late_events", "revenue_updates"] {
        let n = files_per_partition(&lake.path().join(t));
        assert!((1..=2).contains(&n), "{t}: {n} files in a partition after compaction");
    }
    // Replaced files are still there (older versions need them) until a vacuum removes them.
    let parquet_files = |dir: &Path| walk(dir).iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).count();
    let before = parquet_files(&events);
    let out = compact(lake.path(), &["--vacuum", "--retention", "0s"]);
    eprintln!("vacuum: {out}");
    assert!(parquet_files(&events) < before, "vacuum deleted no replaced file of the archive");
    check_all("after vacuum");

    // The compacted archive's files are still in live order (compaction merges in it): a
    // replay merging them gives the live run's tables.
    let replayed = replay_archive(&events, pipelines.path());
    let compiled = Pipelines::new(check_dir(pipelines.path()).await.unwrap()).unwrap();
    assert_tables_equal(lake.path(), replayed.path(), &compiled, "live vs a replay of the compacted archive").await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            if !p.ends_with("_delta_log") {
                out.extend(walk(&p));
            }
        } else {
            out.push(p);
        }
    }
    out
}

/// A pipeline whose output columns changed while its Delta table exists fails alone at
/// start, saying what to do; the table keeps its schema and the archive goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_pipeline_schema_fails_that_pipeline_with_what_to_do() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let lake = tempfile::tempdir().unwrap();
    let pipelines = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let revenue = std::fs::read_to_string(examples.join("revenue_per_minute.toml")).unwrap();
    std::fs::write(pipelines.path().join("revenue_per_minute.toml"), &revenue).unwrap();
    let log = lake.path().join("eventide.log");
    let publish = async |conn: &mut redis::aio::MultiplexedConnection, seed: u64| {
        let entries = crate::faults::drill_entries(2_000, seed);
        eventide::generator::publish(conn, "events", entries.clone(), 200, None).await.unwrap();
        entries
    };
    let mut first = publish(&mut conn, 1).await;
    let idle = ["--exit-when-idle", "1s"];
    let mut run = eventide_delta(&redis.url(), lake.path(), pipelines.path(), &log, &idle);
    assert!(support::run_within(&mut run, Duration::from_secs(120), "first run", || log_tail(&log)).success());
    let before = read_delta(&lake.path().join("revenue_per_minute"), &[]);

    // The same pipeline with one more column.
    let changed = revenue.replace("SELECT ", "SELECT count(*) AS extra_events, ");
    assert_ne!(changed, revenue);
    std::fs::write(pipelines.path().join("revenue_per_minute.toml"), changed).unwrap();
    first.extend(publish(&mut conn, 2).await);
    let mut run = eventide_delta(&redis.url(), lake.path(), pipelines.path(), &log, &idle);
    support::run_within(&mut run, Duration::from_secs(120), "second run", || log_tail(&log));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Pipeline failed at start") && text.contains("give the changed pipeline a new `name`"),
        "{}",
        log_tail(&log)
    );
    assert_eq!(read_delta(&lake.path().join("revenue_per_minute"), &[]), before, "the table is unchanged");
    let events = read_delta(&lake.path().join("events"), &["--unique", "event_id"]);
    assert_eq!(rows_of(&events), support::event_ids(&first).len() as u64, "the archive went on: {events}");
}

/// Three workers over eight shards writing Delta tables: every shard commits its archive
/// files and late rows to the same tables (concurrent commits, retried), shard 0 the merged
/// windows. The tables equal `eventide replay --shards 8` of the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_over_eight_shards_share_the_delta_tables() {
    use crate::shards::{SHARDS, stop_then_finish, worker_in};
    let redis = RedisServer::start();
    let entries = crate::faults::drill_entries(8_000, 41);
    let lake = tempfile::tempdir().unwrap();
    let pipelines = example_pipelines();
    let p_dir = pipelines.path().to_str().unwrap().to_string();
    let delta = ["--table-format", "delta"];
    let mut workers: Vec<(String, KillOnDrop)> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| {
            let c = worker_in("analytics", n, &redis.url(), lake.path(), &p_dir, &delta).spawn().unwrap();
            (n.to_string(), KillOnDrop(Some(c)))
        })
        .collect();
    let mut conn = support::connect(&redis.url()).await;
    eventide::generator::publish_sharded(&mut conn, "events", SHARDS, entries.clone(), 200, Some(2_000.0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = worker_in(
        "analytics",
        "w1",
        &redis.url(),
        lake.path(),
        &p_dir,
        &[&delta[..], &["--exit-when-idle", "2s"]].concat(),
    );
    let mut refs: Vec<(&str, &mut KillOnDrop)> = workers.iter_mut().map(|(n, w)| (n.as_str(), w)).collect();
    stop_then_finish(&mut refs, ("w1", last), lake.path());

    let events = read_delta(&lake.path().join("events"), &["--unique", "event_id"]);
    assert_eq!(rows_of(&events), support::event_ids(&entries).len() as u64, "archive: {events}");
    let input = lake.path().with_extension("jsonl");
    write_jsonl(&entries, &input);
    let (replay_dir, replayed) = crate::merge::replay_sharded(&input, pipelines.path(), SHARDS).await;
    let p = Pipelines::new(check_dir(pipelines.path()).await.unwrap()).unwrap();
    let live = Lake::open(lake.path().to_str().unwrap()).unwrap();
    assert_tables_equal(lake.path(), replay_dir.path(), &p, "3 workers, Delta vs replay --shards 8").await;
    let late = read_delta(&lake.path().join("late_events"), &[]);
    let (got, want) = (crate::merge::late_rows(&live, &p).await, crate::merge::late_rows(&replayed, &p).await);
    support::assert_same_rows(&got, &want, "late_events: 3 workers, Delta vs replay --shards 8");
    eprintln!("events: {events}; late_events: {late}");
}

/// A pipeline added to a running deployment, handed over at `live_from` and backfilled from
/// the archive, equals the same pipeline run live from the start: every window once, the
/// late events too; a second backfill adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_pipeline_equals_it_run_live_from_the_start() {
    let entries = crate::faults::drill_entries(16_000, 52); // 26 min of event time from 00:00
    let (first, second) = entries.split_at(8_000); // the first half ends before 00:14
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let names = ["revenue_per_minute", "checkout_funnel"]; // tumbling 1m; hopping 10m/1m
    let all_along = tempfile::tempdir().unwrap();
    let handed_over = tempfile::tempdir().unwrap();
    for n in names {
        let text = std::fs::read_to_string(examples.join(format!("{n}.toml"))).unwrap();
        std::fs::write(all_along.path().join(format!("{n}.toml")), &text).unwrap();
        let text = format!("live_from = \"2026-01-01T00:15:00Z\"\n{text}");
        std::fs::write(handed_over.path().join(format!("{n}.toml")), text).unwrap();
    }
    let none = tempfile::tempdir().unwrap();
    let idle = ["--exit-when-idle", "1s"];
    let run = |redis: &str, lake: &Path, pipelines: &Path| {
        let log = lake.join("eventide.log");
        let mut c = eventide_delta(redis, lake, pipelines, &log, &idle);
        let status = support::run_within(&mut c, Duration::from_secs(120), "a run", || log_tail(&log));
        assert!(status.success(), "{}", log_tail(&log));
    };

    // A: the pipelines from the start, over everything.
    let (redis_a, lake_a) = (RedisServer::start(), tempfile::tempdir().unwrap());
    let mut conn = support::connect(&redis_a.url()).await;
    eventide::generator::publish(&mut conn, "events", entries.clone(), 200, None).await.unwrap();
    run(&redis_a.url(), lake_a.path(), all_along.path());

    // B: the first half archived with no pipeline; then the pipelines added with live_from
    // 00:15 (after every event so far) and the second half; then the backfill.
    let (redis_b, lake_b) = (RedisServer::start(), tempfile::tempdir().unwrap());
    let mut conn = support::connect(&redis_b.url()).await;
    eventide::generator::publish(&mut conn, "events", first.to_vec(), 200, None).await.unwrap();
    run(&redis_b.url(), lake_b.path(), none.path());
    eventide::generator::publish(&mut conn, "events", second.to_vec(), 200, None).await.unwrap();
    run(&redis_b.url(), lake_b.path(), handed_over.path());
    let backfill = |name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_eventide"))
            .args(["backfill", "--pipeline", name, "--lake"])
            .arg(lake_b.path())
            .arg("--pipelines")
            .arg(handed_over.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "backfill {name}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for n in names {
        eprintln!("{}", backfill(n));
    }
    let again = backfill(names[0]);
    assert!(again.contains("already backfilled"), "{again}");

    let p = Pipelines::new(check_dir(all_along.path()).await.unwrap()).unwrap();
    let (a, b) =
        (Lake::open(lake_a.path().to_str().unwrap()).unwrap(), Lake::open(lake_b.path().to_str().unwrap()).unwrap());
    for n in names {
        let (want, got) = (table(&a, &p, n).await, table(&b, &p, n).await);
        assert!(want.len() > 20, "{n}: {} rows", want.len());
        support::assert_same_rows(&got, &want, &format!("{n}: handed over + backfilled vs live from the start"));
        read_delta(&lake_b.path().join(n), &["--expect", lake_a.path().join(n).to_str().unwrap()]);
    }
    let late =
        "SELECT pipeline, window_start, window_end, event_id, event_type, event_time, watermark FROM late_events";
    let rows = async |lake: &Lake| {
        let q = eventide::lake_sql::LakeQuery::open(lake, &p.output_schemas()).await.unwrap();
        support::text_rows(&q.sql(late).await.unwrap().1)
    };
    let (want, got) = (rows(&a).await, rows(&b).await);
    assert!(!want.is_empty(), "40 s of jitter makes some events late");
    support::assert_same_rows(&got, &want, "late events: handed over + backfilled vs live from the start");
}
