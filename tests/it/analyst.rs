//! Analysts open the archive directly: DuckDB and pyarrow see every event once, with the
//! hive partition columns (runs `tests/analyst/read_lake.py`; `scripts/test.sh` installs them).

use std::collections::BTreeMap;

use eventide::generator::{GenOptions, Kind};

use crate::support::{self, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_and_pyarrow_read_every_event_once() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let entries = support::publish_generated(
        &mut conn,
        "events",
        GenOptions { entries: 4000, duplicates: 0.05, malformed: 0.01, dapr: true, seed: 12, ..Default::default() },
    )
    .await;
    let lake = tempfile::tempdir().unwrap();
    let mut opts = support::options(&redis.url(), &["events"], lake.path().to_str().unwrap(), "c1");
    opts.archive.roll_bytes = 32 * 1024; // several files per partition
    support::run_until_idle(opts).await;

    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.kind == Kind::Event) {
        *want.entry(e.event_type.unwrap().to_string()).or_default() += 1;
    }
    let total: u64 = want.values().sum();

    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/analyst/read_lake.py"))
        .arg(lake.path())
        .output()
        .expect("python3 on PATH");
    assert!(
        out.status.success(),
        "read_lake.py failed (install its modules: pip install -r tests/requirements.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for tool in ["duckdb", "pyarrow"] {
        assert_eq!(seen[tool]["rows"], total, "{tool}");
        assert_eq!(seen[tool]["distinct_ids"], total, "{tool}");
        let by_type: BTreeMap<String, u64> = serde_json::from_value(seen[tool]["by_type"].clone()).unwrap();
        assert_eq!(by_type, want, "{tool}");
    }
    assert_eq!(seen["duckdb"]["dates_match"], true, "event_date partitions agree with event_time");
    // A lookup by event_id or correlation_id skips the row groups without it (bloom filters,
    // 1 % false positives): an id that is nowhere is excluded (almost) everywhere, one that
    // is somewhere is not excluded where it is.
    let b = &seen["bloom"];
    for col in ["event_id", "correlation"] {
        let (absent, present) = (&b[format!("{col}_absent")], &b[format!("{col}_present")]);
        let groups = absent["row_groups"].as_u64().unwrap();
        assert!(groups >= 10, "{col}: {groups} row groups");
        assert!(absent["excluded"].as_u64().unwrap() * 100 >= groups * 90, "{col}: a missing id: {absent}");
        assert!(present["excluded"].as_u64().unwrap() < groups, "{col}: a present id excluded everywhere: {present}");
    }
    let cols: Vec<String> = serde_json::from_value(seen["pyarrow"]["columns"].clone()).unwrap();
    assert!(cols.contains(&"event_date".to_string()) && cols.contains(&"event_id".to_string()), "{cols:?}");
}
