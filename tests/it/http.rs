//! The ops HTTP server under hostile clients, against the real binary: a 64 MiB request head,
//! 2,000 idle connections, token checks, a slow reader; and a standby that answers probes.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventide::api::http::{HttpLimits, Request, Response, ServerStats};
use eventide::generator::{GenOptions, Generator, publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::http::{free_port, metric, request};
use crate::support::{self, RedisServer};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Raises this process's open-files limit to its hard limit (children inherit it).
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur
    }
}

struct Eventide(Child);

impl Drop for Eventide {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(redis: &str, consumer: &str, port: u16, lake: &std::path::Path, extra: &[&str]) -> Eventide {
    let child = Command::new(env!("CARGO_BIN_EXE_eventide"))
        .args(["run", "--config", "/dev/null", "--pipelines", "", "--redis-url", redis])
        .args(["--stream", "events", "--group", "analytics", "--consumer", consumer, "--block", "100ms"])
        .args(["--http-addr", &format!("127.0.0.1:{port}"), "--lease-ttl", "1s", "--probe-interval", "200ms"])
        .args(["--roll-age", "300ms"])
        .arg("--lake")
        .arg(lake)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Eventide(child)
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_neither_grow_memory_nor_lock_out_probes_or_commits() {
    assert!(raise_fd_limit() >= 2_200, "the test needs 2,200 file descriptors");
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0k3n\n").unwrap();
    let port = free_port();
    let e =
        spawn(&redis.url(), "c1", port, &dir.path().join("lake"), &["--http-token-file", token_file.to_str().unwrap()]);
    wait_for("/readyz", async || {
        request(port, "/readyz", Some("t0k3n")).await.is_some_and(|r| r == (200, "ready: reading\n".into()))
    })
    .await;

    // Tokens: /healthz needs none; everything else the one in the file, compared whole.
    assert_eq!(request(port, "/healthz", None).await.unwrap().0, 200);
    for wrong in [None, Some("t0k3"), Some("t0k3nx"), Some("T0K3N"), Some("")] {
        assert_eq!(request(port, "/metrics", wrong).await.unwrap().0, 401, "{wrong:?}");
    }
    let (status, body) = request(port, "/readyz", Some("t0k3n")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ready: reading\n"));

    // A 64 MiB request head: refused (431) after the first 16 KiB, memory untouched.
    let before = rss_kib(e.0.id());
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nX-Flood: ").await.unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 64 << 20 {
        match tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break, // the server closed the connection (or stopped reading)
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(sent < 64 << 20, "the server kept reading a 64 MiB head");
    let grown = rss_kib(e.0.id()).saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB on a hostile head");

    // 2,000 idle connections while events are published: /healthz answers, commits go on.
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        if let Ok(c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            idle.push(c);
        }
    }
    assert!(idle.len() >= 1_900, "only {} connections opened", idle.len());
    let mut conn = support::connect(&redis.url()).await;
    let entries: Vec<_> = Generator::new(GenOptions { entries: 2_000, seed: 31, ..Default::default() }).collect();
    publish(&mut conn, "events", entries, 200, None).await.unwrap();
    assert_eq!(request(port, "/healthz", None).await.map(|r| r.0), Some(200), "healthz with 2,000 idle connections");
    wait_for("every event committed", async || {
        let Some((200, text)) = request(port, "/metrics", Some("t0k3n")).await else { return false };
        metric(&text, "eventide_parquet_rows_total{kind=\"archive\"}") == Some(2_000.0)
    })
    .await;
    let (_, text) = request(port, "/metrics", Some("t0k3n")).await.unwrap();
    let evicted = metric(&text, "eventide_http_connections_evicted_total").unwrap();
    assert!(evicted >= 1_000.0, "idle connections were closed to make room: {evicted}");
    assert!(metric(&text, "eventide_http_connections_open").unwrap() <= 512.0, "the cap holds");
    assert_eq!(metric(&text, "eventide_role{group=\"analytics\",role=\"reading\"}"), Some(1.0));
    assert_eq!(metric(&text, "eventide_build_info{version=\"0.1.0\"}"), Some(1.0));
    assert!(metric(&text, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(metric(&text, "process_open_fds").unwrap() >= 1.0);
    drop(idle);
    drop(e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_answers_probes_and_says_standby() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let first = spawn(&redis.url(), "c1", p1, &dir.path().join("lake"), &[]);
    wait_for("c1 reading", async || {
        request(p1, "/readyz", None).await.is_some_and(|r| r == (200, "ready: reading\n".into()))
    })
    .await;
    let _second = spawn(&redis.url(), "c2", p2, &dir.path().join("lake"), &[]);
    wait_for("c2 standing by", async || {
        request(p2, "/readyz", None).await.is_some_and(|r| r == (200, "ready: standby\n".into()))
    })
    .await;
    assert_eq!(request(p2, "/healthz", None).await.unwrap().0, 200);
    let (_, text) = request(p2, "/metrics", None).await.unwrap();
    assert_eq!(metric(&text, "eventide_role{group=\"analytics\",role=\"standby\"}"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "eventide_role{group=\"analytics\",role=\"reading\"}"), Some(0.0));
    let (status, body) = request(p2, "/api/pipelines", None).await.unwrap();
    assert_eq!(status, 503, "{body}");
    let status: serde_json::Value = serde_json::from_str(&request(p2, "/api/status", None).await.unwrap().1).unwrap();
    assert!(status["holder"].as_str().is_some_and(|h| h.starts_with("c1/")), "{status}");
    // The holder dies: the standby takes over and says so.
    drop(first);
    wait_for("c2 reading", async || {
        request(p2, "/readyz", None).await.is_some_and(|r| r == (200, "ready: reading\n".into()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_cut_off_by_the_write_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let limits = HttpLimits { write_timeout: Duration::from_millis(500), ..HttpLimits::default() };
    let stats = Arc::new(ServerStats::default());
    let big: Arc<Vec<u8>> = Arc::new(b"window_start,n\n".iter().copied().cycle().take(64 << 20).collect());
    let handler = move |_req: Request| {
        let big = big.clone();
        async move { Response::new(200, "text/csv", big.as_slice().to_vec()) }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(eventide::api::http::serve(listener, limits, stats.clone(), handler, async {
        let _ = stop_rx.await;
    }));
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    s.write_all(b"GET /big.csv HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    // Not reading: the server's writes stall, and it gives up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.accepted.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "never accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while stats.open.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "the stalled connection was never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(got.len() < 64 << 20, "the whole response went out to a reader that did not read");
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got[..got.len().min(64)]));
    let _ = stop_tx.send(());
    server.await.unwrap();
}
