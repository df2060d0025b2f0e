//! Test fixtures: a private Redis server, pipeline options, archive readers.

pub mod faulty;
pub mod http;
pub mod lake;
pub mod proxy;
pub mod redis_cluster;
pub mod redis_server;

use std::time::Duration;

use eventide::config::Config;
use eventide::worker::{RunOptions, RunSummary};

pub use lake::{read_archive, table, text_rows};
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;

/// Pipeline options for a test: the given Redis, stream and lake, short timers.
pub fn options(redis_url: &str, streams: &[&str], lake: &str, consumer: &str) -> RunOptions {
    let cfg = Config {
        redis_url: redis_url.into(),
        streams: streams.iter().map(|s| s.to_string()).collect(),
        group: "analytics".into(),
        consumer: consumer.into(),
        lake: lake.into(),
        block: eventide::config::Dur(Duration::from_millis(100)),
        exit_when_idle: Some(eventide::config::Dur(Duration::from_millis(500))),
        max_entry_bytes: eventide::config::ByteSize(64 * 1024),
        redis_retry_timeout: eventide::config::Dur::secs(30),
        pipelines: String::new(),
        http_addr: String::new(),
        ..Config::default()
    };
    cfg.run_options().expect("valid test config")
}

/// Runs a pipeline until it is idle (bounded by a generous timeout).
pub async fn run_until_idle(opts: RunOptions) -> RunSummary {
    tokio::time::timeout(Duration::from_secs(120), eventide::run(opts, std::future::pending()))
        .await
        .expect("pipeline finished in time")
        .expect("pipeline ran")
}

/// A multiplexed connection to `url`, with a response timeout long enough for a loaded
/// machine (the redis crate's default, 500 ms, trips when every test runs at once).
pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(url).unwrap().get_multiplexed_async_connection_with_config(&cfg).await.unwrap()
}

/// Entries pending (delivered, not acked) in group `analytics` of `stream`.
pub async fn pending(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    let summary: (u64, redis::Value, redis::Value, redis::Value) =
        redis::cmd("XPENDING").arg(stream).arg("analytics").query_async(conn).await.unwrap();
    summary.0
}

/// Generates entries with `opts`, publishes them to `stream` and returns them.
pub async fn publish_generated(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    opts: eventide::generator::GenOptions,
) -> Vec<eventide::generator::GenEntry> {
    let entries: Vec<_> = eventide::generator::Generator::new(opts).collect();
    eventide::generator::publish(conn, stream, entries.clone(), 500, None).await.unwrap();
    entries
}

/// The event ids the pipeline must archive: first occurrences of well-formed events.
pub fn event_ids(entries: &[eventide::generator::GenEntry]) -> std::collections::BTreeSet<String> {
    use eventide::generator::Kind;
    entries.iter().filter(|e| e.kind == Kind::Event).filter_map(|e| e.event_id.clone()).collect()
}

/// Asserts two sorted row lists are equal; on a mismatch shows the counts and the first
/// differences only (tables can have thousands of rows).
pub fn assert_same_rows(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    let g: std::collections::BTreeSet<&String> = got.iter().collect();
    let w: std::collections::BTreeSet<&String> = want.iter().collect();
    let extra: Vec<_> = g.difference(&w).take(5).collect();
    let missing: Vec<_> = w.difference(&g).take(5).collect();
    panic!("{what}: {} rows, expected {}; unexpected {extra:?}; missing {missing:?}", got.len(), want.len());
}

/// Waits for `child` at most `within`; past it the child is killed and the test fails
/// with `what` and `log()` (a hung process fails its test instead of holding CI).
pub fn wait_within(
    child: &mut std::process::Child,
    within: Duration,
    what: &str,
    log: impl Fn() -> String,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {within:?}:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` to its end, at most `within` (see [`wait_within`]).
pub fn run_within(
    cmd: &mut std::process::Command,
    within: Duration,
    what: &str,
    log: impl Fn() -> String,
) -> std::process::ExitStatus {
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    wait_within(&mut child, within, what, log)
}
