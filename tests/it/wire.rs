//! The reader's own connection (`source::wire`) against a real `redis-server`: password and
//! database from the options, a reply of several MiB that arrives in many reads, error
//! replies with their codes, and the same entries as the redis crate's parser gives.
//! (TLS and mTLS through it are covered by `tls.rs`, which runs the whole pipeline.)

use std::time::Duration;

use eventide::config::{RedisOptions, TlsFiles};
use eventide::source::reply;
use eventide::source::wire::Target;

use crate::support::redis_server::RedisServer;

fn target(url: &str, password: &str) -> Target {
    let password = (!password.is_empty()).then(|| password.to_owned());
    let opts = RedisOptions::new(url, password, &TlsFiles::default()).unwrap();
    Target::new(&opts).unwrap().expect("a single Redis over TCP uses the wire connection")
}

fn xread(stream: &str, count: usize, block: Option<u64>) -> redis::Cmd {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(count);
    if let Some(ms) = block {
        cmd.arg("BLOCK").arg(ms);
    }
    cmd.arg("STREAMS").arg(stream).arg(if block.is_some() { "$" } else { "0" });
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_what_the_redis_crate_reads_with_auth_and_a_database() {
    let server = RedisServer::start();
    let url = format!("{}/3", server.url());
    let mut conn = crate::support::connect(&url).await;
    // 40 entries of ~100 KiB (a 4 MiB reply, read in many pieces), then small ones with
    // binary values, CRLFs and an empty value.
    for i in 0..40u32 {
        let body: Vec<u8> = (0..100_000u32).map(|j| (i.wrapping_mul(31).wrapping_add(j) % 251) as u8).collect();
        let _: String = redis::cmd("XADD")
            .arg("big")
            .arg("*")
            .arg("data")
            .arg(body)
            .arg("n")
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for v in [&b"a\r\nb"[..], b"\x00\xff", b""] {
        let _: String = redis::cmd("XADD").arg("big").arg("*").arg("data").arg(v).query_async(&mut conn).await.unwrap();
    }
    let theirs = reply::xread(xread("big", 100, None).query_async(&mut conn).await.unwrap()).unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("s3cret").query_async(&mut conn).await.unwrap();

    let mut wire = target(&url, "s3cret").connect(Duration::from_secs(5), Duration::from_secs(10)).await.unwrap();
    let ours = wire.xread(&xread("big", 100, None)).await.unwrap();
    assert_eq!(ours, theirs);
    assert_eq!(ours[0].1.len(), 43);
    assert_eq!(ours[0].1[40].field(b"data"), Some(&b"a\r\nb"[..]));
    assert_eq!(ours[0].1[42].field(b"data"), Some(&b""[..]));

    // The connection goes on after a reply: an error reply keeps its code; a BLOCK that
    // times out is an empty read; then entries again.
    let mut group = redis::cmd("XREADGROUP");
    group.arg("GROUP").arg("nogroup").arg("c").arg("STREAMS").arg("big").arg(">");
    let err = wire.xread(&group).await.unwrap_err();
    assert_eq!(err.code(), Some("NOGROUP"), "{err}");
    assert!(wire.xread(&xread("big", 10, Some(50))).await.unwrap().is_empty());
    let again = wire.xread(&xread("big", 2, None)).await.unwrap();
    assert_eq!(again[0].1, theirs[0].1[..2]);

    // Database 0 has no such stream: the SELECT was sent.
    let mut db0 =
        target(&server.url(), "s3cret").connect(Duration::from_secs(5), Duration::from_secs(10)).await.unwrap();
    assert!(db0.xread(&xread("big", 10, None)).await.unwrap().is_empty());

    let wrong = target(&url, "nope").connect(Duration::from_secs(5), Duration::from_secs(10)).await;
    let err = wrong.err().expect("a wrong password is refused");
    assert_eq!(err.code(), Some("WRONGPASS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_is_an_error_not_a_hang() {
    let mut server = RedisServer::start();
    let mut wire = target(&server.url(), "").connect(Duration::from_secs(5), Duration::from_secs(2)).await.unwrap();
    server.kill();
    let err = wire.xread(&xread("s", 10, Some(1000))).await.unwrap_err();
    assert!(err.code().is_none(), "{err}");
}
