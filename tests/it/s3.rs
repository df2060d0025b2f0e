//! The archive on a real S3-compatible server (moto_server on a free loopback port).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use eventide::generator::GenOptions;
use eventide::sink::lake::Lake;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::support::{self, RedisServer};

struct Moto {
    port: u16,
    child: Child,
}

impl Moto {
    fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server on PATH (pip install -r tests/requirements.txt)");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { port, child }
    }

    /// Creates a bucket (object_store does not create buckets).
    fn create_bucket(&self, name: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    fn options(&self) -> BTreeMap<String, String> {
        [
            ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "testing".into()),
            ("aws_secret_access_key", "testing".into()),
            ("aws_region", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A moto server with the bucket `analytics`, a Redis with 3,000 generated entries in
/// `events`, and a test run's options for `lake` on that server.
async fn setup(
    seed: u64,
    lake: &str,
) -> (
    Moto,
    RedisServer,
    redis::aio::MultiplexedConnection,
    Vec<eventide::generator::GenEntry>,
    eventide::config::RunOptions,
) {
    let moto = Moto::start();
    moto.create_bucket("analytics");
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let entries = support::publish_generated(
        &mut conn,
        "events",
        GenOptions { entries: 3000, duplicates: 0.05, seed, ..Default::default() },
    )
    .await;
    let mut opts = support::options(&redis.url(), &["events"], lake, "c1");
    opts.lake_options = moto.options();
    (moto, redis, conn, entries, opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_lands_on_s3_exactly_once() {
    let (moto, _redis, mut conn, entries, opts) = setup(13, "s3://analytics/lake").await;
    let s = support::run_until_idle(opts).await;

    let lake = Lake::open_with("s3://analytics/lake", &moto.options()).unwrap();
    let objects: Vec<_> = lake.store().list(Some(&Path::from("events"))).try_collect().await.unwrap();
    assert_eq!(objects.len() as u64, s.stats.files_committed);
    let mut ids = BTreeSet::new();
    for o in &objects {
        let p = o.location.to_string();
        assert!(p.starts_with("events/event_date=") && p.ends_with(".parquet"), "{p}");
        let bytes = lake.store().get(&o.location).await.unwrap().bytes().await.unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap() {
            let batch = batch.unwrap();
            let col = batch.column_by_name("event_id").unwrap().as_string::<i32>().clone();
            for i in 0..batch.num_rows() {
                assert!(ids.insert(col.value(i).to_string()), "duplicate row");
            }
        }
    }
    let want = support::event_ids(&entries);
    assert_eq!(ids, want);
    // Checkpoints live in the same store, outside the table prefix.
    let cp = eventide::checkpoint::Checkpoints::new(lake.clone(), Default::default(), "analytics", "c1");
    let m = cp.latest().await.unwrap().expect("a checkpoint");
    assert!(m.dedup_snapshot.is_some());
    assert_eq!(m.totals.archived_rows, want.len() as u64);
    assert_eq!(support::pending(&mut conn, "events").await, 0);
}

/// Delta tables on S3 (moto): the commits' create-only puts work there, the archive's Delta
/// table holds every event once, read by eventide's SQL and by delta-rs over S3, and
/// `eventide replay s3://…/events` gives the live run's pipeline tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_tables_on_s3_hold_every_event_once() {
    let (moto, _redis, _conn, entries, mut opts) = setup(17, "s3://analytics/delta").await;
    opts.table_format = eventide::config::TableFormat::Delta;
    let pipelines = crate::merge::example_pipelines();
    opts.pipelines = Some(pipelines.path().to_path_buf());
    support::run_until_idle(opts).await;

    let lake = Lake::open_with("s3://analytics/delta", &moto.options()).unwrap();
    let q = eventide::lake_sql::LakeQuery::open(&lake, &[]).await.unwrap();
    let rows = support::text_rows(&q.sql("SELECT count(*), count(DISTINCT event_id) FROM events").await.unwrap().1);
    let n = support::event_ids(&entries).len();
    assert_eq!(rows, vec![format!("{n},{n}")]);

    let script = "import sys\nfrom deltalake import DeltaTable\n\
                  o = {'AWS_ENDPOINT_URL': sys.argv[2], 'AWS_ALLOW_HTTP': 'true', 'AWS_ACCESS_KEY_ID': 'testing',\n\
                  'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_REGION': 'us-east-1'}\n\
                  t = DeltaTable(sys.argv[1], storage_options=o).to_pyarrow_table(columns=['event_id'])\n\
                  print(t.num_rows, len(set(t.column('event_id').to_pylist())), flush=True)\n\
                  import os; os._exit(0)  # delta-rs's S3 threads can abort the interpreter's teardown";
    let endpoint = moto.options()["aws_endpoint"].clone();
    let out = std::process::Command::new("python3")
        .args(["-c", script, "s3://analytics/delta/events", &endpoint])
        .output()
        .unwrap();
    assert!(out.status.success(), "delta-rs over S3: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{n} {n}"), "delta-rs over S3");

    // The archive on S3 as replay input: its files merged in live order, read over S3.
    let replayed = tempfile::tempdir().unwrap();
    let o = moto.options();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventide"))
        .args(["replay", "s3://analytics/delta/events", "--lake"])
        .arg(replayed.path())
        .arg("--pipelines")
        .arg(pipelines.path())
        .env("AWS_ENDPOINT", &o["aws_endpoint"])
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "replay from S3: {said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&format!("replayed {n} archived events")), "{said}");
    let p = eventide::window::Pipelines::new(eventide::window::check_dir(pipelines.path()).await.unwrap()).unwrap();
    let local = Lake::open(replayed.path().to_str().unwrap()).unwrap();
    for q in p.queries() {
        let name = &q.spec.name;
        let want = support::table(&lake, &p, name).await;
        assert!(!want.is_empty(), "{name}: the live run wrote no rows");
        support::assert_same_rows(
            &support::table(&local, &p, name).await,
            &want,
            &format!("{name}: S3 archive replay"),
        );
    }
}
