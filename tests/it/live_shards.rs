//! The aggregates API of a pipeline over several shards: shard 0's holder shows every
//! window not in the table yet as the merge of all shards' states of it (the others' as of
//! their latest checkpoints; sessions chained from every shard's parts, open ones included). Once everything is read and checkpointed, the API of one
//! worker over 8 shards answers the same rows as a worker over one stream of the same events.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eventide::generator::{GenOptions, Generator, publish_sharded};
use eventide::names::ShardId;
use redis::Value;

use crate::faults::KillOnDrop;
use crate::support::http::{free_port, request};
use crate::support::{self, RedisServer};

const SHARDS: u32 = 8;
/// The example pipelines: tumbling, hopping and session windows.
const PIPELINES: [&str; 4] = ["revenue_per_minute", "checkout_funnel", "payment_failure_rate", "customer_sessions"];

fn worker(redis: &str, stream: &str, shards: u32, lake: &Path, pipelines: &Path, port: u16) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_eventide"))
        .args(["run", "--config", "/dev/null", "--redis-url", redis])
        .arg("--pipelines")
        .arg(pipelines)
        .args(["--http-addr", &format!("127.0.0.1:{port}"), "--stream", stream, "--group", "live"])
        .args(["--consumer", "w", "--shards", &shards.to_string()])
        .args(["--block", "50ms", "--checkpoint-interval", "200ms", "--lease-ttl", "2s"])
        .arg("--lake")
        .arg(lake)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(Some(child))
}

/// Whether group `live` has read every entry of `stream`'s shards.
async fn read_all(conn: &mut redis::aio::MultiplexedConnection, stream: &str, shards: u32) -> bool {
    for shard in ShardId::all(shards) {
        let key = shard.stream_key(stream);
        let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(&key).query_async(conn).await.unwrap();
        let (_, read, _) = eventide::source::probe::group_info(&groups, "live").unwrap_or_default();
        let len: u64 = redis::cmd("XLEN").arg(&key).query_async(conn).await.unwrap();
        if read != Some(len) {
            return false;
        }
    }
    true
}

/// The API's rows of `pipeline` (CSV), without the `final` column, floats to 4 places,
/// sorted; and how many were not final.
async fn api_rows(port: u16, pipeline: &str) -> Option<(Vec<String>, usize)> {
    let (status, body) =
        request(port, &format!("/api/pipelines/{pipeline}/windows?limit=100000&format=csv"), None).await?;
    if status != 200 {
        return None;
    }
    let mut lines = body.lines();
    let header: Vec<&str> = lines.next()?.split(',').collect();
    let fin = header.iter().position(|h| *h == "final")?;
    let (mut rows, mut open) = (Vec::new(), 0);
    for line in lines.filter(|l| !l.is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        open += usize::from(cells.get(fin) == Some(&"false"));
        let kept: Vec<String> = cells
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != fin)
            .map(|(_, c)| match c.parse::<f64>() {
                Ok(f) if c.contains('.') || c.contains('e') => format!("{f:.4}"),
                _ => c.to_string(),
            })
            .collect();
        rows.push(kept.join(","));
    }
    rows.sort();
    Some((rows, open))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_of_a_sharded_pipeline_shows_open_windows_merged_over_every_shard() {
    let redis = RedisServer::start();
    // Ten minutes of events up to now, in order: windows near now stay open (the hopping
    // pipeline's for ten minutes), and nothing is late anywhere.
    let now = chrono::Utc::now().timestamp_micros();
    let entries: Vec<_> = Generator::new(GenOptions {
        entries: 6_000,
        duplicates: 0.05,
        spacing_us: 100_000,
        start_us: now - 600_000_000,
        seed: 51,
        ..Default::default()
    })
    .collect();
    let mut conn = support::connect(&redis.url()).await;
    publish_sharded(&mut conn, "sharded", SHARDS, entries.clone(), 500, None).await.unwrap();
    publish_sharded(&mut conn, "plain", 1, entries, 500, None).await.unwrap();
    let pipelines = crate::merge::example_pipelines();
    let (lake_s, lake_1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_s, port_1) = (free_port(), free_port());
    let _sharded = worker(&redis.url(), "sharded", SHARDS, lake_s.path(), pipelines.path(), port_s);
    let _plain = worker(&redis.url(), "plain", 1, lake_1.path(), pipelines.path(), port_1);

    let deadline = Instant::now() + Duration::from_secs(90);
    while !(read_all(&mut conn, "sharded", SHARDS).await && read_all(&mut conn, "plain", 1).await) {
        assert!(Instant::now() < deadline, "the workers did not read every entry");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The other shards' windows reach shard 0 through their checkpoints: look until equal.
    for pipeline in PIPELINES {
        loop {
            let (s, one) = (api_rows(port_s, pipeline).await, api_rows(port_1, pipeline).await);
            if let (Some((s, open)), Some((one, _))) = (&s, &one)
                && s == one
            {
                eprintln!("{pipeline}: {} rows, {open} of them in open windows", s.len());
                if pipeline == "checkout_funnel" || pipeline == "customer_sessions" {
                    assert!(*open > 0, "{pipeline}: no open window shown, so nothing live was merged");
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pipeline}: the sharded API differs from one stream's:\n{:#?}\n{:#?}",
                s.map(|r| r.0),
                one.map(|r| r.0)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}
