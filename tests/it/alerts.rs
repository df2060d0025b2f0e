//! The alert rules with a real Prometheus: Debian's `prometheus` server (unpacked by
//! `scripts/test.sh` beside `promtool`) scrapes a running eventide every second and
//! evaluates `docker/alerts.yml` (its expressions as shipped; each `for:` shortened to 0s so
//! that a test does not wait minutes). Dead letters that keep coming, a pipeline whose
//! watermark is far behind (events from a year ago), and a pipeline that fails: the three
//! alerts fire, as Prometheus's HTTP API reports them; before the dead letters, the DLQ
//! alert does not. Every query of the Grafana dashboard (`docker/grafana/`) then runs on the
//! same Prometheus and has data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventide::generator::{GenOptions, Generator, Kind, publish};

use crate::faults::KillOnDrop;
use crate::support::http::{free_port, request};
use crate::support::{self, RedisServer};

fn prometheus_bin() -> PathBuf {
    for p in ["/usr/bin/prometheus", "/opt/prom/usr/bin/prometheus"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("prometheus is required (scripts/test.sh unpacks it from Debian's prometheus package)");
}

/// Prometheus scraping `target` every second with `docker/alerts.yml` (each `for:` 0s).
fn start_prometheus(dir: &Path, target: &str, port: u16) -> Child {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/alerts.yml")).unwrap();
    let rules: String = shipped
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 0s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("alerts.yml"), rules).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\n\
         scrape_configs:\n  - job_name: eventide\n    static_configs:\n      - targets: [\"{target}\"]\n",
        dir.join("alerts.yml").display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    Command::new(prometheus_bin())
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("prometheus.log")).unwrap()))
        .spawn()
        .unwrap()
}

/// The names of the alerts Prometheus reports firing.
async fn firing(port: u16) -> Vec<String> {
    let Some((200, body)) = request(port, "/api/v1/alerts", None).await else { return Vec::new() };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let alerts = v["data"]["alerts"].as_array().cloned().unwrap_or_default();
    let mut names: Vec<String> = alerts
        .iter()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether Prometheus has scraped eventide (its `up` is 1).
async fn scraped(port: u16) -> bool {
    let Some((200, body)) = request(port, "/api/v1/query?query=up", None).await else { return false };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().is_some_and(|r| r.iter().any(|s| s["value"][1] == "1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_dlq_watermark_and_failed_pipeline_alerts() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let pipes = crate::hostile::counts_and_divides(dir.path());
    // A year ago: the watermark is far behind the wall clock (a stalled source, as Prometheus sees it).
    let year_ago = chrono::Utc::now().timestamp_micros() - 365 * 86_400 * 1_000_000;
    let entries = |entries, malformed, seed| {
        Generator::new(GenOptions { entries, malformed, start_us: year_ago, seed, ..Default::default() })
            .filter(move |e| malformed == 0.0 || matches!(e.kind, Kind::Malformed(_)))
            .collect::<Vec<_>>()
    };
    publish(&mut conn, "shop", entries(2_000, 0.0, 61), 200, None).await.unwrap();

    let (port, prom_port) = (free_port(), free_port());
    let lake = dir.path().join("lake");
    let _eventide = KillOnDrop(Some(
        Command::new(env!("CARGO_BIN_EXE_eventide"))
            .args(["run", "--config", "/dev/null", "--redis-url", &redis.url(), "--stream", "shop"])
            .args(["--group", "analytics", "--http-addr", &format!("127.0.0.1:{port}"), "--block", "50ms"])
            .args(["--probe-interval", "1s", "--checkpoint-interval", "1s", "--roll-age", "1s"])
            .arg("--pipelines")
            .arg(&pipes)
            .arg("--lake")
            .arg(&lake)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let _prometheus = KillOnDrop(Some(start_prometheus(dir.path(), &format!("127.0.0.1:{port}"), prom_port)));
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(60);
    while !scraped(prom_port).await {
        assert!(Instant::now() < deadline, "Prometheus never scraped eventide:\n{}", log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Two evaluations with a DLQ that is empty: that alert stays quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = firing(prom_port).await;
    assert!(!before.contains(&"EventideDlqGrowing".to_string()), "no dead letters yet, but: {before:?}");

    // Dead letters keep coming: 120, then 120 more a few scrapes later.
    for seed in [62, 63] {
        publish(&mut conn, "shop", entries(4_000, 0.03, seed), 200, None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let want = ["EventideDlqGrowing", "EventidePipelineFailed", "EventideWatermarkStalled"];
    loop {
        let now = firing(prom_port).await;
        if want.iter().all(|w| now.iter().any(|n| n == w)) {
            eprintln!("firing: {now:?}");
            break;
        }
        assert!(Instant::now() < deadline, "firing {now:?}, want {want:?}:\n{}", log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The Grafana dashboard: every panel's query runs on this Prometheus and has data (but
    // the sharded-runs panel: this run has one shard).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/grafana/dashboards/eventide.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let (status, body) =
                request(prom_port, &format!("/api/v1/query?query={}", encode(expr)), None).await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            assert_eq!((status, v["status"].as_str()), (200, Some("success")), "{title}: {expr}: {body}");
            let empty = v["data"]["result"].as_array().is_none_or(Vec::is_empty);
            assert!(!empty || title.contains("sharded runs"), "{title}: {expr} has no data");
        }
    }
}

/// `s` percent-encoded for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
