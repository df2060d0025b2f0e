//! `eventide replay <lake>/events`: the pipelines over the archive (the event store). A live
//! run over one stream (duplicates, malformed entries, 40 s of jitter, three SIGKILLs on the
//! way) writes the archive and the tables; replaying its archive into another lake gives the
//! same tables (every revision of the updates-mode one included) and the same late events.
//! `--from` / `--to` / `--event-type` select from the archive.

use std::process::{Command, Stdio};
use std::time::Duration;

use eventide::sink::lake::Lake;
use eventide::window::{Pipelines, check_dir};
use rand::{Rng, SeedableRng};

use crate::faults::{KillOnDrop, drill_entries};
use crate::support::{self, RedisServer, table};

fn worker(redis: &str, lake: &std::path::Path, pipelines: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eventide"));
    let streams: &[&str] = if extra.contains(&"--stream") { &[] } else { &["--stream", "events"] };
    c.args(["run", "--config", "/dev/null", "--redis-url", redis, "--group", "analytics"])
        .args(streams)
        .args(["--http-addr", "", "--block", "50ms", "--checkpoint-interval", "200ms", "--roll-age", "1s"])
        .args(["--claim-min-idle", "2s", "--max-entry-bytes", "64KiB", "--lease-ttl", "2s"])
        .arg("--pipelines")
        .arg(pipelines)
        .arg("--lake")
        .arg(lake)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn replay(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_eventide")).arg("replay").args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay {args:?}: {text}");
    text
}

/// Replays `live`'s archive into a new lake, its files merged in live order and (`--full-sort`)
/// sorted by a query: every pipeline table and the late events equal the live run's.
async fn assert_replay_equals_live(live: &std::path::Path, pipelines: &std::path::Path) {
    for how in [&[][..], &["--full-sort"][..]] {
        let replayed = tempfile::tempdir().unwrap();
        let events = live.join("events");
        let (p_dir, out) = (pipelines.to_str().unwrap(), replayed.path().to_str().unwrap());
        let mut args = vec![events.to_str().unwrap(), "--pipelines", p_dir, "--lake", out];
        args.extend(how);
        let said = replay(&args);
        assert!(said.contains("archived events"), "{said}");
        let p = Pipelines::new(check_dir(pipelines).await.unwrap()).unwrap();
        let (a, b) = (Lake::open(live.to_str().unwrap()).unwrap(), Lake::open(out).unwrap());
        for q in p.queries() {
            let name = &q.spec.name;
            let want = table(&a, &p, name).await;
            assert!(want.len() >= 3, "{name}: the live run wrote {} rows", want.len());
            let what = format!("{name}: archive replay {how:?} vs live");
            support::assert_same_rows(&table(&b, &p, name).await, &want, &what);
        }
        let (got, want) = (crate::merge::late_rows(&b, &p).await, crate::merge::late_rows(&a, &p).await);
        assert!(!want.is_empty(), "40 s of jitter makes some events late");
        support::assert_same_rows(&got, &want, &format!("late_events: archive replay {how:?} vs live"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_archive_gives_the_live_runs_tables() {
    let redis = RedisServer::start();
    let entries = drill_entries(10_000, 71);
    let mut conn = support::connect(&redis.url()).await;
    let publisher = tokio::spawn({
        let entries = entries.clone();
        async move { eventide::generator::publish(&mut conn, "events", entries, 200, Some(3_000.0)).await }
    });
    let pipelines = crate::merge::example_pipelines();
    let live = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(71);
    for _ in 0..3 {
        let mut child = KillOnDrop(Some(worker(&redis.url(), live.path(), pipelines.path(), &[]).spawn().unwrap()));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        let mut c = child.0.take().unwrap();
        c.kill().unwrap(); // SIGKILL: the next run recovers from the last checkpoint
        c.wait().unwrap();
    }
    tokio::time::timeout(Duration::from_secs(120), publisher).await.expect("published").unwrap().unwrap();
    let mut last = worker(&redis.url(), live.path(), pipelines.path(), &["--exit-when-idle", "1s"]);
    let status = support::run_within(&mut last, Duration::from_secs(120), "the last run", String::new);
    assert!(status.success());

    assert_replay_equals_live(live.path(), pipelines.path()).await;
    let events = live.path().join("events");
    let p_dir = pipelines.path().to_str().unwrap();

    // A selection: one event type and an hour of event time.
    let narrow = tempfile::tempdir().unwrap();
    let said = replay(&[
        events.to_str().unwrap(),
        "--pipelines",
        p_dir,
        "--lake",
        narrow.path().to_str().unwrap(),
        "--event-type",
        "order.created",
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        "2026-01-01T00:10:00Z",
    ]);
    let n: u64 = said.split_whitespace().nth(1).and_then(|w| w.parse().ok()).unwrap_or(0);
    let (from, to) = (1_767_225_600_000_000i64, 1_767_225_600_000_000i64 + 600_000_000);
    let time_us = |e: &eventide::generator::GenEntry| {
        let data = &e.fields.iter().find(|(k, _)| *k == "data").unwrap().1;
        let json: serde_json::Value = serde_json::from_slice(data).unwrap();
        chrono::DateTime::parse_from_rfc3339(json["timestamp"].as_str().unwrap()).unwrap().timestamp_micros()
    };
    let want = entries
        .iter()
        .filter(|e| e.kind == eventide::generator::Kind::Event && e.event_type == Some("order.created"))
        .filter(|e| (from..to).contains(&time_us(e)))
        .count() as u64;
    assert!(want > 10, "{want} events selected");
    assert_eq!(n, want, "{said}");
}

/// Two streams read by one run (per-stream watermarks, the lowest wins), a SIGKILL on the
/// way: the archive replay interleaves them as the reader did, and the tables and late events
/// are the live run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_replay_as_the_live_run_read_them() {
    let redis = RedisServer::start();
    let entries = drill_entries(8_000, 72);
    let (orders, payments): (Vec<_>, Vec<_>) = entries.iter().cloned().enumerate().partition(|(i, _)| i % 3 == 0);
    let mut publishers = Vec::new();
    for (stream, part) in [("orders", orders), ("payments", payments)] {
        let mut conn = support::connect(&redis.url()).await;
        let part: Vec<_> = part.into_iter().map(|(_, e)| e).collect();
        publishers.push(tokio::spawn(async move {
            eventide::generator::publish(&mut conn, stream, part, 200, Some(1_500.0)).await
        }));
    }
    let pipelines = crate::merge::example_pipelines();
    let live = tempfile::tempdir().unwrap();
    let both = ["--stream", "orders", "--stream", "payments"];
    let mut child = KillOnDrop(Some(worker(&redis.url(), live.path(), pipelines.path(), &both).spawn().unwrap()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = child.0.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    for p in publishers {
        tokio::time::timeout(Duration::from_secs(120), p).await.expect("published").unwrap().unwrap();
    }
    let last = [&both[..], &["--exit-when-idle", "1s"]].concat();
    let mut last = worker(&redis.url(), live.path(), pipelines.path(), &last);
    let status = support::run_within(&mut last, Duration::from_secs(120), "the last run", String::new);
    assert!(status.success());
    assert_replay_equals_live(live.path(), pipelines.path()).await;
}
