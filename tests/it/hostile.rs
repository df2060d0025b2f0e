//! Hostile but valid input in a live run: an event stamped far ahead of the clock.

use std::path::Path;
use std::time::Duration;

use eventide::generator::{GenOptions, Generator, Kind, publish};
use eventide::sink::lake::Lake;
use eventide::window::{Pipelines, check_dir};

use crate::support::http::{free_port, metric, request};
use crate::support::{self, RedisServer};

/// One valid event 50 minutes ahead of the clock (within `max_future`) in the middle of a
/// live stream: the events after it are counted in their windows, none is late, and the
/// future event itself is counted in its own window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_from_the_future_makes_no_event_late() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipes");
    std::fs::create_dir(&pipes).unwrap();
    std::fs::write(
        pipes.join("per_second.toml"),
        "window = { kind = \"tumbling\", size = \"1s\" }\nwatermark = \"1s\"\nallowed_lateness = \"0s\"\n\
         sql = \"SELECT count(*) AS n FROM events\"\n",
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp_micros();
    // Stamped as they are published: 2,000 events over 4 s.
    let mut entries: Vec<_> =
        Generator::new(GenOptions { entries: 2_000, start_us: now, spacing_us: 2_000, seed: 41, ..Default::default() })
            .filter(|e| e.kind == Kind::Event)
            .collect();
    let future = chrono::DateTime::from_timestamp_micros(now + 50 * 60 * 1_000_000).unwrap();
    let mut hostile = entries[0].clone();
    hostile.event_id = Some("from-the-future".into());
    hostile.fields = vec![(
        "data",
        format!(
            r#"{{"event_id":"from-the-future","event_type":"order.created","timestamp":"{}","version":"1","data":{{}}}}"#,
            future.to_rfc3339()
        )
        .into_bytes(),
    )];
    entries.insert(entries.len() / 4, hostile);
    let n = entries.len();

    let mut opts = support::options(&redis.url(), &["live"], dir.path().join("lake").to_str().unwrap(), "c1");
    opts.pipelines = Some(pipes.clone());
    opts.exit_when_idle = Some(Duration::from_secs(2));
    opts.checkpoint_interval = Duration::from_millis(500);
    opts.roll_age = Duration::from_millis(500);
    let run = tokio::spawn(support::run_until_idle(opts));
    publish(&mut conn, "live", entries, 20, Some(500.0)).await.unwrap();
    let summary = run.await.unwrap();
    assert_eq!(summary.stats.accepted, n as u64);

    let lake = Lake::open(dir.path().join("lake").to_str().unwrap()).unwrap();
    let pipelines = Pipelines::new(check_dir(&pipes).await.unwrap()).unwrap();
    let q = eventide::lake_sql::LakeQuery::open(&lake, &pipelines.output_schemas()).await.unwrap();
    // No late row at all: the late table was never even written.
    let late_dir = dir.path().join("lake").join(eventide::window::LATE_TABLE);
    let late_files = walk(&late_dir);
    assert!(late_files.is_empty(), "late rows written: {late_files:?}");
    let counted = support::text_rows(&q.sql("SELECT sum(n) FROM per_second").await.unwrap().1);
    assert_eq!(counted, vec![n.to_string()], "every event counted once, the future one included");
    let ahead =
        format!("SELECT n FROM per_second WHERE window_start > to_timestamp_micros({})", now + 40 * 60 * 1_000_000);
    assert_eq!(support::text_rows(&q.sql(&ahead).await.unwrap().1), vec!["1".to_string()]);
}

/// Two pipelines in `<dir>/pipes`: `counts` (every event, one-minute windows) and `divides`,
/// which divides by zero on `order.created` rows (13 letters) and so fails at run time.
pub(crate) fn counts_and_divides(dir: &std::path::Path) -> std::path::PathBuf {
    let pipes = dir.join("pipes");
    std::fs::create_dir(&pipes).unwrap();
    let window = "window = { kind = \"tumbling\", size = \"1m\" }\n";
    std::fs::write(pipes.join("counts.toml"), format!("{window}sql = \"SELECT count(*) AS n FROM events\"\n")).unwrap();
    let divides = "sql = \"SELECT count(*) AS n FROM events WHERE 100 / (length(event_type) - 13) > 0\"\n";
    std::fs::write(pipes.join("divides.toml"), format!("{window}{divides}")).unwrap();
    pipes
}

/// One pipeline divides by zero on some rows: it is marked failed (log, `/readyz`,
/// `eventide_pipeline_failed`), the archive and the other pipeline count every event, and
/// the run goes on (no crash loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_divides_by_zero_fails_alone() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let pipes = counts_and_divides(dir.path());
    let entries: Vec<_> = Generator::new(GenOptions { entries: 3_000, seed: 43, ..Default::default() }).collect();
    let events = entries.iter().filter(|e| e.kind == Kind::Event).count();
    assert!(entries.iter().any(|e| e.event_type == Some("order.created")));
    publish(&mut conn, "shop", entries, 200, None).await.unwrap();

    let port = free_port();
    let mut opts = support::options(&redis.url(), &["shop"], dir.path().join("lake").to_str().unwrap(), "c1");
    opts.pipelines = Some(pipes.clone());
    opts.exit_when_idle = None;
    opts.probe_interval = Duration::from_millis(200);
    opts.api = Some(eventide::api::ApiOptions {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        token: None,
        stall_after: Duration::from_secs(30),
        limits: Default::default(),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(eventide::run(opts, async move {
        let _ = stop_rx.await;
    }));
    let get = async |path: &str| request(port, path, None).await.expect("the API answers");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(std::time::Instant::now() < deadline, "the failure never showed");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some((_, text)) = request(port, "/metrics", None).await else { continue };
        let counted = format!("eventide_pipeline_input_events_total{{pipeline=\"counts\"}} {events}");
        if text.contains("eventide_pipeline_failed{pipeline=\"divides\"} 1") && text.contains(&counted) {
            assert!(text.contains("eventide_pipeline_failed{pipeline=\"counts\"} 0"), "{text}");
            break;
        }
    }
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("pipeline divides failed") && body.contains("Divide by zero"), "{body}");
    // The healthy pipeline counted every event (committed and open windows together).
    let (status, body) = get("/api/pipelines/counts/windows?limit=100000").await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.iter().map(|r| r["n"].as_u64().unwrap()).sum::<u64>(), events as u64);
    let (status, body) = get("/api/pipelines/divides/windows").await;
    assert!(status >= 500 && body.contains("failed"), "{status} {body}");
    let _ = stop_tx.send(());
    let summary = run.await.unwrap().expect("the run stops cleanly, not on the pipeline's error");
    assert_eq!(summary.stats.accepted, events as u64);
    assert_eq!(support::read_archive(&dir.path().join("lake")).len(), events);
}

/// Every file below `dir` (none when it does not exist).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// `eventide run` as a process with the ops API on a free port; `extra` flags on top.
fn spawn_run(redis: &str, lake: &std::path::Path, port: u16, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_eventide"))
        .args(["run", "--config", "/dev/null", "--redis-url", redis, "--stream", "flood", "--group", "analytics"])
        .args(["--consumer", "c1", "--block", "100ms", "--http-addr", &format!("127.0.0.1:{port}")])
        .args(if extra.contains(&"--pipelines") { None } else { Some("--pipelines") })
        .args(if extra.contains(&"--pipelines") {
            None
        } else {
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines"))
        })
        .arg("--lake")
        .arg(lake)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `/metrics` until `done` holds; returns that exposition.
async fn metrics_until(port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        if let Some((200, text)) = request(port, "/metrics", None).await
            && done(&text)
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// SIGTERM, then the run summary's peak RSS (MiB).
fn stop_and_peak_rss(child: std::process::Child) -> u64 {
    let term = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let at = stdout.find("peak RSS ").expect("a run summary");
    stdout[at + 9..].split_whitespace().next().unwrap().parse().unwrap()
}

/// 20,000 distinct valid event types (20,000 archive partitions) with default settings:
/// every event archived, at most `max_open_files` files open, peak RSS under 512 MiB.
/// (It peaked at 0.9-1.25 GiB until session 14: every checkpoint handed each open file's
/// one row to its Parquet writer, whose first row group allocates two 256 KiB bloom
/// filters, on a blocking pool that grew a thread per file; now a small file's rows wait
/// for the writer until it grows or finishes, and encoding runs on a fixed pool: ~270 MiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_event_types_stay_within_the_default_bounds() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let lake = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now();
    let n = 20_000;
    let mut pipe = redis::pipe();
    for i in 0..n {
        let event = format!(
            r#"{{"event_id":"e-{i}","event_type":"kind_{i}.created","timestamp":"{}","version":"1","data":{{"i":{i}}}}}"#,
            now.to_rfc3339()
        );
        pipe.cmd("XADD").arg("flood").arg("*").arg("data").arg(event).ignore();
        if i % 1000 == 999 {
            pipe.query_async::<()>(&mut conn).await.unwrap();
            pipe = redis::pipe();
        }
    }
    let port = free_port();
    let child = spawn_run(&redis.url(), lake.path(), port, &[]);
    let text = metrics_until(port, "every event archived", |t| {
        metric(t, "eventide_parquet_rows_total{kind=\"archive\"}") == Some(n as f64)
    })
    .await;
    let early = metric(&text, "eventide_archive_files_finished_early_total{reason=\"max_open_files\"}").unwrap();
    assert!(early >= (n - 1000) as f64, "files finished early by the open-files bound: {early}");
    let peak = stop_and_peak_rss(child);
    assert!(peak < 512, "peak RSS {peak} MiB with default settings");
    let archived = support::read_archive(lake.path());
    assert_eq!(archived.len(), n, "every event archived once");
    eprintln!("20,000 event types: peak RSS {peak} MiB, {early} files finished early");
}

/// Entries of 8 MiB: reads shrink to a few entries each (`read_max_bytes`), every entry is
/// dead-lettered (over `max_entry_bytes`) with its original cut to `dlq_max_entry_bytes`
/// and flagged; memory stays bounded and the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_entries_keep_reads_and_dead_letters_bounded() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let lake = tempfile::tempdir().unwrap();
    let n = 48;
    let big = vec![b'x'; 8 << 20];
    for _ in 0..n {
        let _: String =
            redis::cmd("XADD").arg("flood").arg("*").arg("data").arg(&big).query_async(&mut conn).await.unwrap();
    }
    let port = free_port();
    let child = spawn_run(&redis.url(), lake.path(), port, &[]);
    let text = metrics_until(port, "every entry dead-lettered", |t| {
        metric(t, "eventide_events_invalid_total{stream=\"flood\",reason=\"entry_too_large\"}") == Some(n as f64)
    })
    .await;
    assert!(metric(&text, "eventide_read_entries_limit").unwrap() <= 2.0, "COUNT adapted to 8 MiB entries");
    assert!(metric(&text, "eventide_read_bytes_total").unwrap() >= (n * (8 << 20)) as f64);
    let peak = stop_and_peak_rss(child);
    assert!(peak < 512, "peak RSS {peak} MiB reading {n} entries of 8 MiB");
    let dlq = eventide::source::reply::entries(
        redis::cmd("XRANGE").arg("flood:dlq").arg("-").arg("+").query_async::<redis::Value>(&mut conn).await.unwrap(),
        "XRANGE",
    )
    .unwrap();
    assert_eq!(dlq.len(), n);
    for d in &dlq {
        assert_eq!(d.field(b"dlq_reason"), Some(&b"entry_too_large"[..]));
        let original_size = ((8 << 20) + 4).to_string();
        assert_eq!(d.field(b"dlq_truncated"), Some(original_size.as_bytes()), "flagged with the original size");
        assert!(d.field(b"data").is_some_and(|v| v.len() < 1 << 20), "the original is cut to 1 MiB");
    }
    eprintln!("{n} entries of 8 MiB: peak RSS {peak} MiB");
}

/// A flood of unique ids with a small dedup cap: the table stays within it, the horizon
/// shrinks (metric), every event is archived, the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unique_ids_meets_the_dedup_cap() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let lake = tempfile::tempdir().unwrap();
    let entries: Vec<_> =
        Generator::new(GenOptions { entries: 60_000, seed: 47, spacing_us: 10_000, ..Default::default() })
            .filter(|e| e.kind == Kind::Event)
            .collect();
    let n = entries.len();
    publish(&mut conn, "flood", entries, 500, None).await.unwrap();
    let port = free_port();
    let child = spawn_run(&redis.url(), lake.path(), port, &["--dedup-max-bytes", "1MiB", "--pipelines", ""]);
    let text = metrics_until(port, "every event archived", |t| {
        metric(t, "eventide_parquet_rows_total{kind=\"archive\"}") == Some(n as f64)
    })
    .await;
    let max_ids = (1 << 20) / 40;
    assert!(metric(&text, "eventide_dedup_ids").unwrap() <= max_ids as f64);
    assert!(metric(&text, "eventide_dedup_evicted_total").unwrap() > 0.0);
    assert!(metric(&text, "eventide_dedup_horizon_seconds").unwrap() < 3600.0, "the horizon shrank");
    stop_and_peak_rss(child);
    assert_eq!(support::read_archive(lake.path()).len(), n);
}

/// A final checkpoint far longer than the lease's TTL (2,000 archive files against 300 ms):
/// the lease is renewed until the term's last commit is done, so it commits once, not fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_checkpoint_longer_than_the_lease_still_commits() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let lake = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    let mut pipe = redis::pipe();
    for i in 0..2_000 {
        let event =
            format!(r#"{{"event_id":"e-{i}","event_type":"kind_{i}.created","timestamp":"{now}","data":{{}}}}"#);
        pipe.cmd("XADD").arg("many").arg("*").arg("data").arg(event).ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
    let mut opts = support::options(&redis.url(), &["many"], lake.path().to_str().unwrap(), "c1");
    opts.lease_ttl = Duration::from_millis(300);
    // Only the term's last checkpoint (no periodic one before it), whatever the default interval.
    opts.checkpoint_interval = opts.roll_age;
    let summary = support::run_until_idle(opts).await;
    assert_eq!(summary.stats.accepted, 2_000);
    assert_eq!(summary.stats.checkpoints, 1, "one checkpoint, by the one term");
    assert_eq!(support::read_archive(lake.path()).len(), 2_000);
}
