//! Ops endpoints of a running pipeline: `/metrics` counts exactly what a scripted run
//! processed and passes `promtool check metrics`; `/healthz`, `/readyz`, the bearer token;
//! lag appears while the pipeline is stopped and drains after; trimmed-unread detection.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eventide::decode::Reason;
use eventide::generator::{GenOptions, Kind};
use eventide::source::connect::Conn;
use eventide::source::probe::{ProbeTarget, TrimTracker, probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::http::{free_port, request};
use crate::support::{self, RedisServer};

/// GET `path`; (status, body).
async fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    request(port, path, token).await.expect("the API answers")
}

/// `name{labels} value` lines → map.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap())))
        .collect()
}

/// Probe target: stream `shop` (DLQ `shop:dlq`), group `analytics`.
fn shop_target(redis_url: &str) -> ProbeTarget {
    ProbeTarget {
        redis: eventide::config::RedisOptions::url(redis_url),
        group: "analytics".into(),
        streams: vec![("shop".into(), "shop:dlq".into())],
    }
}

fn promtool() -> String {
    for p in ["promtool", "/opt/prom/usr/bin/promtool"] {
        if std::process::Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return p.to_string();
        }
    }
    panic!("promtool is required (scripts/test.sh installs it from Debian's prometheus package)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_and_pass_promtool() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    // 3000 entries 100 ms apart: five minutes of event time ending about now.
    let options = GenOptions {
        entries: 3000,
        duplicates: 0.05,
        malformed: 0.02,
        seed: 5,
        spacing_us: 100_000,
        start_us: chrono::Utc::now().timestamp_micros() - 300_000_000,
        ..Default::default()
    };
    let entries = support::publish_generated(&mut conn, "shop", options).await;
    let events = entries.iter().filter(|e| e.kind == Kind::Event).count() as f64;
    let dups = entries.iter().filter(|e| e.kind == Kind::Duplicate).count() as f64;
    let mut by_reason: BTreeMap<&str, f64> = BTreeMap::new();
    for e in &entries {
        if let Kind::Malformed(r) = &e.kind {
            *by_reason.entry(r.as_str()).or_default() += 1.0;
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipes");
    std::fs::create_dir(&pipes).unwrap();
    std::fs::write(
        pipes.join("orders.toml"),
        "event_types = [\"order.*\"]\nwindow = { kind = \"tumbling\", size = \"1m\" }\nsql = \"SELECT count(*) AS n FROM events\"\n",
    )
    .unwrap();
    let port = free_port();
    let mut opts = support::options(&redis.url(), &["shop"], dir.path().join("lake").to_str().unwrap(), "c1");
    opts.pipelines = Some(pipes);
    opts.exit_when_idle = None;
    opts.roll_age = Duration::from_millis(200);
    opts.checkpoint_interval = Duration::from_millis(200);
    opts.probe_interval = Duration::from_millis(200);
    opts.api = Some(eventide::api::ApiOptions {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        token: Some("s3cret".into()),
        stall_after: Duration::from_secs(30),
        limits: Default::default(),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(eventide::run(opts, async move {
        let _ = stop_rx.await;
    }));

    // Wait until everything is read and the probe has seen the group drained.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(Instant::now() < deadline, "pipeline did not process everything in time");
        if get(port, "/healthz", None).await.0 != 200 {
            continue;
        }
        let (status, text) = get(port, "/metrics", Some("s3cret")).await;
        assert_eq!(status, 200);
        let m = samples(&text);
        // The probe runs on its own clock: wait until it has seen the last DLQ writes too.
        if m.get("eventide_entries_read_total{stream=\"shop\"}") == Some(&3000.0)
            && m.get("eventide_consumer_lag{stream=\"shop\",group=\"analytics\"}") == Some(&0.0)
            && m.get("eventide_dlq_depth{stream=\"shop\",dlq=\"shop:dlq\"}") == Some(&by_reason.values().sum::<f64>())
        {
            break text;
        }
    };
    let m = samples(&text);
    assert_eq!(m["eventide_events_accepted_total{stream=\"shop\"}"], events);
    assert_eq!(m["eventide_events_duplicate_total{stream=\"shop\"}"], dups);
    for r in Reason::ALL {
        let key = format!("eventide_events_invalid_total{{stream=\"shop\",reason=\"{}\"}}", r.as_str());
        assert_eq!(m[&key], by_reason.get(r.as_str()).copied().unwrap_or(0.0), "{key}");
    }
    assert_eq!(m["eventide_dlq_depth{stream=\"shop\",dlq=\"shop:dlq\"}"], by_reason.values().sum::<f64>());
    assert_eq!(m["eventide_stream_length{stream=\"shop\"}"], 3000.0);
    assert_eq!(m["eventide_entries_trimmed_unread{stream=\"shop\",group=\"analytics\"}"], 0.0);
    let orders = entries
        .iter()
        .filter(|e| e.kind == Kind::Event && e.event_type.is_some_and(|t| t.starts_with("order.")))
        .count();
    assert_eq!(m["eventide_pipeline_input_events_total{pipeline=\"orders\"}"], orders as f64);
    assert_eq!(m["eventide_dedup_ids"], events);
    assert!(m["eventide_publish_to_processed_seconds_count"] >= 3000.0);
    assert!(m.contains_key("eventide_pipeline_watermark_lag_seconds{pipeline=\"orders\"}"));

    // The exposition is valid for Prometheus.
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Probes and the token.
    assert_eq!(get(port, "/metrics", None).await.0, 401);
    assert_eq!(get(port, "/metrics", Some("wrong")).await.0, 401);
    let (status, body) = get(port, "/readyz", Some("s3cret")).await;
    assert_eq!((status, body.as_str()), (200, "ready: reading\n"));
    let (status, body) = get(port, "/api/status", Some("s3cret")).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["streams"][0]["stream"], "shop");
    assert_eq!(v["streams"][0]["lag"], 0);
    assert_eq!(get(port, "/nope", Some("s3cret")).await.0, 404);

    // The aggregates API: committed windows (final) and the open one (not final), newest first.
    let (status, body) = get(port, "/api/pipelines", Some("s3cret")).await;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["name"], "orders");
    assert_eq!(list[0]["columns"][2]["name"], "n");
    let (status, body) = get(port, "/api/pipelines/orders/windows?limit=100", Some("s3cret")).await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let total: u64 = rows.iter().map(|r| r["n"].as_u64().unwrap()).sum();
    assert_eq!(total, orders as u64, "every order event is in exactly one window row: {rows:?}");
    assert!(rows.len() >= 4, "{rows:?}");
    // The newest window is open (two when the last event is within the 5 s watermark of a
    // minute boundary); every older one is final.
    let open = rows.iter().take_while(|r| r["final"] == false).count();
    assert!((1..=2).contains(&open), "{rows:?}");
    assert!(rows[open..].iter().all(|r| r["final"] == true), "{rows:?}");
    let starts: Vec<&str> = rows.iter().map(|r| r["window_start"].as_str().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] > w[1]), "newest first, one row per window: {starts:?}");
    // A time range and the other formats.
    let from = starts[1];
    let (_, body) = get(port, &format!("/api/pipelines/orders/windows?from={from}&format=csv"), Some("s3cret")).await;
    assert_eq!(body.lines().next(), Some("window_start,window_end,n,final"));
    assert_eq!(body.lines().count(), 3, "header and the two newest windows: {body}");
    // The same instant with a UTC offset, `+` unencoded as browsers and curl send it.
    let utc = chrono::NaiveDateTime::parse_from_str(from.trim_end_matches('Z'), "%Y-%m-%dT%H:%M:%S").unwrap();
    let plus_one = (utc + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%S+01:00").to_string();
    let (status, same) =
        get(port, &format!("/api/pipelines/orders/windows?from={plus_one}&format=csv"), Some("s3cret")).await;
    assert_eq!((status, same), (200, body.clone()), "from={plus_one}");
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /api/pipelines/orders/windows HTTP/1.1\r\nConnection: close\r\nAuthorization: Bearer s3cret\r\nAccept: application/vnd.apache.arrow.stream\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(&raw[body_at..]), None).unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, rows.len());
    assert_eq!(get(port, "/api/pipelines/nope/windows", Some("s3cret")).await.0, 404);
    assert_eq!(get(port, "/api/pipelines/orders/windows?from=yesterday", Some("s3cret")).await.0, 400);

    let _ = stop_tx.send(());
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_builds_while_stopped_and_drains_after() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let target = shop_target(&redis.url());
    support::publish_generated(&mut conn, "shop", GenOptions { entries: 500, seed: 1, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().to_str().unwrap();
    support::run_until_idle(support::options(&redis.url(), &["shop"], lake, "c1")).await;
    assert_eq!(probe(&mut Conn::Single(conn.clone()), &target).await.unwrap()[0].lag, Some(0));

    // The pipeline is down: new entries show up as lag.
    support::publish_generated(&mut conn, "shop", GenOptions { entries: 700, seed: 2, ..Default::default() }).await;
    let p = probe(&mut Conn::Single(conn.clone()), &target).await.unwrap();
    assert_eq!((p[0].lag, p[0].length, p[0].trimmed_unread), (Some(700), 1200, 0));
    // `eventide status` straight from Redis: a usable probe (exit 2 over the threshold).
    let status = |max_lag: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventide"))
            .args([
                "status",
                "--redis-url",
                &redis.url(),
                "--stream",
                "shop",
                "--group",
                "analytics",
                "--max-lag",
                max_lag,
            ])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, text) = status("100");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("THRESHOLD: shop: lag 700 > 100"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("shop") && l.split_whitespace().collect::<Vec<_>>()[2..4] == ["1200", "700"]),
        "{text}"
    );
    assert_eq!(status("1000").0, Some(0));

    support::run_until_idle(support::options(&redis.url(), &["shop"], lake, "c1")).await;
    let p = probe(&mut Conn::Single(conn.clone()), &target).await.unwrap();
    assert_eq!((p[0].lag, p[0].pending, p[0].trimmed_unread), (Some(0), 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_before_they_were_read_are_reported_lost() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let target = shop_target(&redis.url());
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "shop", "analytics", "0", "MKSTREAM"])
        .query_async(&mut conn)
        .await
        .unwrap();
    support::publish_generated(&mut conn, "shop", GenOptions { entries: 100, seed: 3, ..Default::default() }).await;
    // A publisher's MAXLEN trims 70 entries nobody has read.
    let _: u64 = redis::cmd("XTRIM").arg(&["shop", "MAXLEN", "30"]).query_async(&mut conn).await.unwrap();
    let mut trims = TrimTracker::default();
    let p = probe(&mut Conn::Single(conn.clone()), &target).await.unwrap();
    // Redis 7.0's lag only sees the 30 live entries here.
    assert_eq!((p[0].lag, p[0].length, p[0].trimmed_unread), (Some(30), 30, 70));
    assert_eq!(trims.observe("shop", p[0].trimmed_unread), 70);

    // Once the group has read what is left, Redis resets its counters: the evidence is gone,
    // the tracker keeps the loss.
    let dir = tempfile::tempdir().unwrap();
    let summary =
        support::run_until_idle(support::options(&redis.url(), &["shop"], dir.path().to_str().unwrap(), "c1")).await;
    assert_eq!(summary.stats.read, 30);
    let p = probe(&mut Conn::Single(conn.clone()), &target).await.unwrap();
    assert_eq!((p[0].lag, p[0].trimmed_unread), (Some(0), 0));
    assert_eq!(trims.observe("shop", p[0].trimmed_unread), 70);

    // A group that had read before the trim: Redis 7.0 keeps the trimmed entries in `lag`.
    support::publish_generated(&mut conn, "shop", GenOptions { entries: 50, seed: 4, ..Default::default() }).await;
    let _: u64 = redis::cmd("XTRIM").arg(&["shop", "MAXLEN", "10"]).query_async(&mut conn).await.unwrap();
    let p = probe(&mut Conn::Single(conn.clone()), &target).await.unwrap();
    assert_eq!((p[0].length, p[0].trimmed_unread), (10, 40));
    assert_eq!(trims.observe("shop", p[0].trimmed_unread), 110);
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/alerts.yml");
    let out = std::process::Command::new(promtool()).args(["check", "rules", rules]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 14 rules found"), "{text}");
    // Every metric the rules use is one /metrics exports.
    let yaml = std::fs::read_to_string(rules).unwrap();
    for name in yaml.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("eventide_")) {
        let exported = [
            eventide::metrics::prometheus::DLQ_DEPTH,
            eventide::metrics::prometheus::INVALID,
            eventide::metrics::prometheus::READ,
            eventide::metrics::prometheus::LAG,
            eventide::metrics::prometheus::TRIMMED_UNREAD,
            eventide::metrics::prometheus::LAST_COMMIT,
            eventide::metrics::prometheus::PROBE_AGE,
            eventide::metrics::prometheus::WATERMARK_LAG,
            eventide::metrics::prometheus::PIPELINE_FAILED,
            eventide::metrics::prometheus::ROLE,
            eventide::metrics::prometheus::SHARDS,
            eventide::metrics::prometheus::SHARD_HELD,
            eventide::metrics::prometheus::MERGE_WAITING,
            eventide::metrics::prometheus::DEDUP_EVICTED,
            eventide::metrics::prometheus::DEDUP_HORIZON,
            eventide::metrics::prometheus::ARCHIVE_EARLY,
        ];
        assert!(exported.contains(&name), "alerts.yml uses {name}, which eventide does not export");
    }
}
