//! The live dashboard in a real browser: headless Chromium loads `/` from a running
//! pipeline (with a bearer token in the URL fragment), lets its JavaScript poll the APIs,
//! and the rendered DOM must show the real figures and charts with points.

use std::time::Duration;

use eventide::generator::{GenOptions, Kind};

use crate::support::{self, RedisServer};

fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return c.to_string();
        }
    }
    panic!("Chromium is required (scripts/test.sh installs Debian's chromium package)");
}

/// The text of the element with `id` in a dumped DOM.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest.find('<').unwrap();
    &rest[start..end]
}

/// The `data-<name>` attribute of the element with `id`.
fn data_of<'a>(dom: &'a str, id: &str, name: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap();
    let tag = &dom[at..at + dom[at..].find('>').unwrap()];
    let key = format!("data-{name}=\"");
    let v = tag.find(&key).unwrap_or_else(|| panic!("#{id} has no data-{name}: {tag}")) + key.len();
    &tag[v..v + tag[v..].find('"').unwrap()]
}

fn number(s: &str) -> f64 {
    s.replace(',', "").trim().parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_real_numbers_in_chromium() {
    let browser = chromium();
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let options = GenOptions {
        entries: 2000,
        malformed: 0.01,
        spacing_us: 150_000,
        start_us: chrono::Utc::now().timestamp_micros() - 300_000_000,
        seed: 9,
        ..Default::default()
    };
    let entries = support::publish_generated(&mut conn, "shop", options).await;
    let malformed = entries.iter().filter(|e| matches!(e.kind, Kind::Malformed(_))).count();

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut opts = support::options(&redis.url(), &["shop"], dir.path().join("lake").to_str().unwrap(), "c1");
    opts.pipelines = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines").into());
    opts.exit_when_idle = None;
    opts.roll_age = Duration::from_millis(300);
    opts.checkpoint_interval = Duration::from_millis(300);
    opts.probe_interval = Duration::from_millis(200);
    opts.api = Some(eventide::api::ApiOptions {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        token: Some("t0k".into()),
        stall_after: Duration::from_secs(30),
        limits: Default::default(),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(eventide::run(opts, async move {
        let _ = stop_rx.await;
    }));
    // Let the pipeline drain the stream and commit.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let url = format!("http://127.0.0.1:{port}/#token=t0k");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            .args(["--window-size=1280,1000", "--virtual-time-budget=8000", "--dump-dom"])
            .arg(&url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dom.contains("<h1>eventide</h1>"), "no page: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text_of(&dom, "error"), "", "the page reported an error");
    assert!(text_of(&dom, "who").contains("read 2,000"), "{}", text_of(&dom, "who"));
    assert_eq!(number(text_of(&dom, "lag")), 0.0);
    assert_eq!(number(text_of(&dom, "dlq")), malformed as f64);
    assert_eq!(number(text_of(&dom, "trimmed")), 0.0);
    let latency = text_of(&dom, "latency");
    assert!(latency.split('/').all(|v| number(v) > 0.0), "latency {latency:?}");
    for chart in ["c-rate", "c-latency", "c-lag", "c-pipeline"] {
        assert!(number(data_of(&dom, chart, "points")) >= 1.0, "{chart} drew nothing");
    }
    // The pipeline chart plots the first pipeline's first numeric column per window
    // (checkout_funnel: checkouts); its newest window is still open.
    assert!(number(data_of(&dom, "c-pipeline", "max")) > 0.0);
    assert!(number(data_of(&dom, "c-pipeline", "open")) >= 1.0);

    let _ = stop_tx.send(());
    run.await.unwrap().unwrap();
}
