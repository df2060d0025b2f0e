//! Redis over TLS with client certificates and an ACL user (the default user off): the
//! pipeline runs end to end, exactly once, with the minimal permissions README documents, and
//! its password never on its command line; TLS mistakes are explained, not retried.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventide::config::{RedisOptions, TlsFiles};
use eventide::generator::{GenOptions, Generator, Kind, publish};
use eventide::source::commands::Commands;
use eventide::source::connect;

use crate::support::{self, read_archive};

/// The ACL README documents for the pipeline's user (stream `events`; groups `analytics`
/// and `analytics-noack`).
const PIPELINE_ACL: &[&str] = &[
    "resetkeys",
    "~events",
    "~events:dlq",
    "~{events:dlq}:seen",
    "~eventide:lease:{analytics}",
    "~eventide:fence:{analytics}",
    "~eventide:lease:{analytics-noack}",
    "~eventide:fence:{analytics-noack}",
    "~eventide:workers:{analytics}",
    "~eventide:workers:{analytics-noack}",
    "resetchannels",
    "-@all",
    "+xreadgroup",
    "+xread",
    "+xack",
    "+xadd",
    "+xgroup|create",
    "+xgroup|setid",
    "+xautoclaim",
    "+xclaim",
    "+xpending",
    "+xinfo|stream",
    "+xinfo|groups",
    "+xlen",
    "+xrange",
    "+exists",
    "+get",
    "+incr",
    "+eval",
    "+set",
    "+pexpire",
    "+del",
    "+zadd",
    "+zcard",
    "+zremrangebyrank",
    "+zremrangebyscore",
    "+zrange",
    "+zrem",
    "+time",
];

/// A CA, a server certificate for `localhost` / 127.0.0.1, a client certificate, and an
/// unrelated CA, made with `openssl`.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let sh = |script: &str| {
            let out = Command::new("sh").arg("-ec").arg(script).current_dir(dir.path()).output().unwrap();
            assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        sh(&format!(
            "openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj '/CN=eventide test CA' 2>/dev/null
             openssl req -x509 {ec} -keyout other.key -out other-ca.pem -days 2 -subj '/CN=another CA' 2>/dev/null
             openssl req {ec} -keyout server.key -out server.csr -subj '/CN=localhost' 2>/dev/null
             printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
               -extfile server.ext 2>/dev/null
             openssl req {ec} -keyout client.key -out client.csr -subj '/CN=eventide' 2>/dev/null
             printf 'extendedKeyUsage=clientAuth\\n' > client.ext
             openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 \
               -extfile client.ext 2>/dev/null"
        ));
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn files(&self, ca: &str, client: bool) -> TlsFiles {
        TlsFiles {
            ca: Some(self.path(ca)),
            client_cert: client.then(|| self.path("client.pem")),
            client_key: client.then(|| self.path("client.key")),
        }
    }
}

/// A TLS-only `redis-server` requiring client certificates, on 127.0.0.1 and 127.0.0.2
/// (the certificate names only the first), with the default user off, the pipeline's user
/// `eventide` (password `pw-of-eventide`, [`PIPELINE_ACL`]) and a `producer` user.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(certs: &Certs) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = support::http::free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1 127.0.0.2"])
            .arg("--tls-cert-file")
            .arg(certs.path("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.path("ca.pem"))
            .args(["--tls-auth-clients", "yes", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--user", "default", "off"])
            .args([&["--user", "eventide", "on", ">pw-of-eventide"][..], PIPELINE_ACL].concat())
            .args(["--user", "producer", "on", ">pw-of-producer", "~*", "&*", "+@all"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let s = TlsRedis { port, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "TLS redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn url(&self, user: &str, host: &str) -> String {
        format!("rediss://{user}@{host}:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(url: &str, password: &str, tls: &TlsFiles) -> redis::aio::MultiplexedConnection {
    let c = RedisOptions::new(url, Some(password.into()), tls).unwrap();
    connect::client(&c).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn eventide(r: &TlsRedis, certs: &Certs, lake: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eventide"));
    c.args(["run", "--config", "/dev/null", "--http-addr", "", "--pipelines", ""])
        .args(["--redis-url", &r.url("eventide", "127.0.0.1")])
        .arg("--redis-ca-file")
        .arg(certs.path("ca.pem"))
        .arg("--redis-client-cert")
        .arg(certs.path("client.pem"))
        .arg("--redis-client-key")
        .arg(certs.path("client.key"))
        .args(["--stream", "events", "--consumer", "c1", "--block", "100ms"])
        .args(["--exit-when-idle", "1s", "--max-entry-bytes", "64KiB", "--lake"])
        .arg(lake)
        .args(extra)
        .env("EVENTIDE_REDIS_PASSWORD", "pw-of-eventide")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_a_minimal_acl_user_exactly_once() {
    let certs = Certs::make();
    let r = TlsRedis::start(&certs);
    let mut producer = connect(&r.url("producer", "localhost"), "pw-of-producer", &certs.files("ca.pem", true)).await;
    let entries: Vec<_> = Generator::new(GenOptions {
        entries: 3_000,
        duplicates: 0.05,
        malformed: 0.02,
        oversize_bytes: 70 * 1024,
        seed: 21,
        ..Default::default()
    })
    .collect();
    publish(&mut producer, "events", entries.clone(), 200, None).await.unwrap();

    for (mode, lake) in [("group", tempfile::tempdir().unwrap()), ("noack", tempfile::tempdir().unwrap())] {
        // noack needs a group without pending entries: its own.
        let group = if mode == "group" { "analytics" } else { "analytics-noack" };
        let mut child = eventide(&r, &certs, lake.path(), &["--read-mode", mode, "--group", group]).spawn().unwrap();
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains("pw-of-eventide"), "password on the command line");
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{mode}: did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut log = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
        assert!(status.success(), "{mode} over TLS as the ACL user:\n{log}");
        let archived: std::collections::BTreeSet<String> = read_archive(lake.path()).into_keys().collect();
        assert_eq!(archived, support::event_ids(&entries), "{mode}: archived vs published");
    }
    let malformed = entries.iter().filter(|e| matches!(e.kind, Kind::Malformed(_))).count();
    assert!(malformed > 0);
    let dlq: u64 = redis::cmd("XLEN").arg("events:dlq").query_async(&mut producer).await.unwrap();
    assert_eq!(dlq, malformed as u64, "every malformed entry once in the DLQ (written by both groups' runs once)");
    let pending: redis::Value =
        redis::cmd("XPENDING").arg("events").arg("analytics").query_async(&mut producer).await.unwrap();
    assert!(matches!(&pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(0))), "{pending:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mistakes_are_explained() {
    let certs = Certs::make();
    let r = TlsRedis::start(&certs);
    let ping = async |url: &str, tls: TlsFiles| -> String {
        let c = RedisOptions::new(url, Some("pw-of-eventide".into()), &tls).unwrap();
        let mut cmds = Commands::new(&c, Duration::from_secs(3)).unwrap();
        let mut get = redis::cmd("GET");
        get.arg("eventide:fence:{analytics}");
        match cmds.query::<Option<String>, _>(&get).await {
            Ok(v) => format!("ok {v:?}"),
            Err(e) => e.to_string(),
        }
    };
    let good = r.url("eventide", "127.0.0.1");
    let ok = ping(&good, certs.files("ca.pem", true)).await;
    assert_eq!(ok, "ok None");
    let unknown_ca = ping(&good, certs.files("other-ca.pem", true)).await;
    assert!(unknown_ca.contains("not signed by a trusted CA"), "{unknown_ca}");
    let wrong_name = ping(&r.url("eventide", "127.0.0.2"), certs.files("ca.pem", true)).await;
    assert!(wrong_name.contains("does not name the host"), "{wrong_name}");
    let no_client_cert = ping(&good, certs.files("ca.pem", false)).await;
    assert!(no_client_cert.contains("requires a client certificate"), "{no_client_cert}");
}
