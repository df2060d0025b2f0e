//! Every malformed class goes to the dead-letter stream with its reason and original fields.

use std::collections::BTreeMap;

use eventide::generator::{GenOptions, Generator, Kind, publish};
use redis::Value;

use crate::support::{self, RedisServer, read_archive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_malformed_class_lands_in_the_dlq_with_its_reason() {
    let redis = RedisServer::start();
    let mut conn = support::connect(&redis.url()).await;
    let entries: Vec<_> = Generator::new(GenOptions {
        entries: 600,
        malformed: 0.2,
        oversize_bytes: 70 * 1024,
        seed: 7,
        ..Default::default()
    })
    .collect();
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &entries {
        if let Kind::Malformed(r) = e.kind {
            *want.entry(r.as_str()).or_default() += 1;
        }
    }
    assert_eq!(want.len(), eventide::decode::Reason::ALL.len(), "every class present");
    publish(&mut conn, "shop", entries.clone(), 100, None).await.unwrap();
    let source_ids: Vec<String> = {
        let v: Vec<(String, Value)> =
            redis::cmd("XRANGE").arg("shop").arg("-").arg("+").query_async(&mut conn).await.unwrap();
        v.into_iter().map(|(id, _)| id).collect()
    };

    let lake = tempfile::tempdir().unwrap();
    let s =
        support::run_until_idle(support::options(&redis.url(), &["shop"], lake.path().to_str().unwrap(), "c1")).await;

    let dlq = eventide::source::reply::entries(
        redis::cmd("XRANGE").arg("shop:dlq").arg("-").arg("+").query_async::<Value>(&mut conn).await.unwrap(),
        "XRANGE",
    )
    .unwrap();
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    for d in &dlq {
        let field = |k: &str| String::from_utf8_lossy(d.field(k.as_bytes()).unwrap_or_default()).to_string();
        *got.entry(field("dlq_reason")).or_default() += 1;
        assert_eq!(field("dlq_stream"), "shop");
        let src = source_ids.iter().position(|id| *id == field("dlq_id")).expect("dlq_id names the source entry");
        assert!(matches!(entries[src].kind, Kind::Malformed(_)));
        assert!(!field("dlq_detail").is_empty());
        // The original fields are kept byte for byte.
        for (k, v) in &entries[src].fields {
            assert_eq!(d.field(k.as_bytes()), Some(v.as_slice()));
        }
    }
    let want: BTreeMap<String, u64> = want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(got, want);
    assert_eq!(s.stats.invalid_total(), dlq.len() as u64);
    let valid = entries.iter().filter(|e| e.kind == Kind::Event).count();
    assert_eq!(read_archive(lake.path()).len(), valid);
    assert_eq!(s.stats.acked, 600, "rejected entries are acked after their DLQ write");
}
