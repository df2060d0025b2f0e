//! A private Redis Cluster on loopback: `masters` primaries (and `replicas` replicas per
//! primary), each a `redis-server --cluster-enabled yes` on a free port (its cluster bus on
//! port + 10000), joined by `redis-cli --cluster create`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

/// A port free for the node and for its cluster bus (port + 10000).
fn free_pair() -> u16 {
    for _ in 0..1000 {
        let p = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair for a cluster node");
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut c = RedisCluster { ports: Vec::new(), dir, children: Vec::new() };
        for _ in 0..masters * (1 + replicas) {
            let port = free_pair();
            let node_dir = c.dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"])
                .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server on PATH");
            c.children.push(child);
            c.ports.push(port);
        }
        for &p in &c.ports {
            c.wait_until(&format!("node {p} up"), || c.cli(p, &["PING"]).is_some_and(|o| o.trim() == "PONG"));
        }
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli on PATH");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        for &p in &c.ports {
            c.wait_until(&format!("cluster ok at {p}"), || {
                c.cli(p, &["CLUSTER", "INFO"]).is_some_and(|o| o.contains("cluster_state:ok"))
            });
        }
        c
    }

    /// Seed URLs, comma-separated (as `--redis-url` takes them with `--redis-cluster`).
    pub fn seeds(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// `redis-cli -p port args…`'s output, `None` when it failed.
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        // Bounded: a node that stops answering fails the caller's check instead of hanging.
        let out =
            Command::new("timeout").args(["20", "redis-cli", "-p", &port.to_string()]).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The port of the primary serving `key`'s slot, and that node's id.
    pub fn primary_of(&self, key: &str) -> (u16, String) {
        let slot: u16 = self.cli(self.ports[0], &["CLUSTER", "KEYSLOT", key]).unwrap().trim().parse().unwrap();
        let nodes = self.cli(self.ports[0], &["CLUSTER", "NODES"]).unwrap();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if !f[2].contains("master") {
                continue;
            }
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>())
                    && (lo..=hi).contains(&slot)
                {
                    let port = f[1].split('@').next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
                    return (port, f[0].to_string());
                }
            }
        }
        panic!("no primary for slot {slot}:\n{nodes}");
    }

    /// A replica of the primary `primary_id`.
    pub fn replica_of(&self, primary_id: &str) -> u16 {
        let nodes = self.cli(self.ports[0], &["CLUSTER", "NODES"]).unwrap();
        nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[2].contains("slave") && f[3] == primary_id)
            .map(|f| f[1].split('@').next().unwrap().rsplit(':').next().unwrap().parse().unwrap())
            .unwrap_or_else(|| panic!("no replica of {primary_id}:\n{nodes}"))
    }

    /// Moves `slots` slots from node `from` to node `to` (live resharding: `MIGRATE`, `ASK`).
    pub fn reshard(&self, from: &str, to: &str, slots: u32) {
        let out = Command::new("timeout")
            .args(["300", "redis-cli", "--cluster", "reshard", &format!("127.0.0.1:{}", self.ports[0])])
            .args(["--cluster-from", from, "--cluster-to", to, "--cluster-slots", &slots.to_string()])
            .args(["--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reshard ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn wait_until(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
