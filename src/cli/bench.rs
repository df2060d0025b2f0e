//! `eventide bench`: the end-to-end benchmark. Loads the same generated entries into two
//! streams, drains one with a bare `XREADGROUP`+`XACK` loop (the ceiling), and the other
//! with `eventide run` as a child process into a fresh lake. Prints events/s, latency to
//! durable ack, the child's peak RSS and bytes per event on disk.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use eventide::generator::{GenOptions, Generator, publish, publish_sharded};
use eventide::names::ShardId;
use redis::Value;
use redis::aio::MultiplexedConnection;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Entries to load (5% of them duplicates by default).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    #[arg(long, default_value_t = 0.05)]
    pub duplicates: f64,
    #[arg(long)]
    pub dapr: bool,
    /// COUNT per read, for both drains.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Use this Redis instead of starting a private redis-server on a free loopback port.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Lake directory for the pipeline run (default: a fresh temporary directory).
    #[arg(long)]
    pub lake: Option<PathBuf>,
    /// Live mode: publish the pipeline's stream at this rate (entries/s) while it runs, to
    /// measure publish → durable latency under a steady load (the drain figures then measure
    /// the pacing, not the pipeline's ceiling).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Extra arguments for `eventide run` (e.g. "--zstd-level=1").
    #[arg(long, allow_hyphen_values = true)]
    pub run_arg: Vec<String>,
    /// Benchmark the window operator alone (no Redis) on --events generated events.
    #[arg(long)]
    pub window: bool,
    /// Shards of the pipeline's stream (`--shards` of `eventide run`); the bare drain reads
    /// one stream either way.
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Worker processes sharing the shards (consumers bench-1 … bench-N).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
}

struct RedisChild(Option<std::process::Child>);

impl Drop for RedisChild {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    if a.window {
        return super::bench_window::run(a.events).await;
    }
    let (url, _redis) = match &a.redis_url {
        Some(u) => (u.clone(), RedisChild(None)),
        None => start_redis()?,
    };
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let run_id = chrono::Utc::now().timestamp_millis();
    let (drain_key, e2e_key) = (format!("bench:{run_id}:drain"), format!("bench:{run_id}:e2e"));

    let spacing_us = 1_000;
    let opts = GenOptions {
        entries: a.events,
        duplicates: a.duplicates,
        dapr: a.dapr,
        start_us: chrono::Utc::now().timestamp_micros() - a.events as i64 * spacing_us,
        spacing_us,
        ..GenOptions::default()
    };
    let t = Instant::now();
    let entries: Vec<_> = Generator::new(opts).collect();
    let payload: usize = entries.iter().map(|e| e.fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()).sum();
    let drain_loaded = publish(&mut conn, &drain_key, entries.iter().cloned(), 1000, None).await?;
    let (published, mut to_publish_live) = match a.rate {
        None => (publish_sharded(&mut conn, &e2e_key, a.shards, entries, 1000, None).await?, None),
        Some(_) => (drain_loaded.clone(), Some(entries)),
    };
    eprintln!(
        "loaded {} entries ({:.0} B/entry) in {:.1}s{}",
        published.entries,
        payload as f64 / published.entries as f64,
        t.elapsed().as_secs_f64(),
        if to_publish_live.is_some() { "; the pipeline's stream will be published live" } else { "" }
    );

    let bare = bare_drain(&mut conn, &drain_key, a.batch_size).await?;
    let bare_xread = bare_xread(&mut conn, &drain_key, a.batch_size).await?;
    let idle = if to_publish_live.is_some() { "2s" } else { "50ms" };
    let live = match (to_publish_live.take(), a.rate) {
        (Some(entries), Some(rate)) => {
            let mut c = client.get_multiplexed_async_connection().await?;
            let key = e2e_key.clone();
            let shards = a.shards;
            Some(tokio::spawn(async move { publish_sharded(&mut c, &key, shards, entries, 100, Some(rate)).await }))
        }
        _ => None,
    };
    let bare_rate = published.entries as f64 / bare.as_secs_f64();
    eprintln!("bare XREADGROUP+XACK drain: {:.2}s, {:.0} entries/s", bare.as_secs_f64(), bare_rate);
    // What the run adds to Redis's memory (the group's pending list): sampled while it runs.
    let memory_before = used_memory(&mut conn).await?;
    let mut memory_peak = memory_before;

    let tmp = tempfile::tempdir()?;
    let lake = a.lake.clone().unwrap_or_else(|| tmp.path().join("lake"));
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut children = Vec::new();
    for w in 1..=a.workers.max(1) {
        let child = std::process::Command::new(&exe)
            .args(["run", "--redis-url", &url, "--stream", &e2e_key, "--group", "bench"])
            .args(["--consumer", &format!("bench-{w}")])
            .args(["--batch-size", &a.batch_size.to_string(), "--block", "20ms", "--exit-when-idle", idle])
            .args(["--config", "/dev/null", "--shards", &a.shards.to_string()])
            .arg("--lake")
            .arg(&lake)
            .args(&a.run_arg)
            // The ops server on a free port unless the run arguments say otherwise.
            .args(if a.run_arg.iter().any(|r| r.starts_with("--http-addr")) {
                &[][..]
            } else {
                &["--http-addr", "127.0.0.1:0"][..]
            })
            .stdout(Stdio::piped())
            .spawn()
            .context("starting eventide run")?;
        children.push(child);
    }
    // Drained = every entry delivered and acked (archive committed): poll the group.
    let mut drained_at = None;
    let mut outputs = Vec::new();
    let mut polls = 0u64;
    while !children.is_empty() {
        polls += 1;
        if polls.is_multiple_of(4) {
            memory_peak = memory_peak.max(used_memory(&mut conn).await?);
        }
        let publishing = live.as_ref().is_some_and(|h| !h.is_finished());
        if drained_at.is_none() && !publishing && all_done(&mut conn, &e2e_key, a.shards).await? {
            drained_at = Some(started.elapsed());
        }
        if let Some(i) = children.iter_mut().position(|c| matches!(c.try_wait(), Ok(Some(_)))) {
            let out = children.remove(i).wait_with_output()?;
            if !out.status.success() {
                bail!("eventide run failed: {}", out.status);
            }
            outputs.push(out);
            continue;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(h) = live {
        h.await??;
    }
    let e2e = drained_at.unwrap_or_else(|| started.elapsed());
    let stdout: String = outputs.iter().map(|o| String::from_utf8_lossy(&o.stdout).to_string()).collect();
    // Each run reports its own VmHWM (getrusage of children would count the pages it shared
    // with this process between fork and exec).
    let rss: Vec<&str> = stdout.split("peak RSS ").skip(1).filter_map(|s| s.split_whitespace().next()).collect();
    let rss = if rss.is_empty() { "?".to_string() } else { rss.join(" + ") };
    let (files, bytes) = parquet_bytes(&lake);
    let rate = published.entries as f64 / e2e.as_secs_f64();
    let accepted = published.events.max(1);
    println!("{}", stdout.trim_end());
    println!(
        "entries:            {} ({} unique events, {} duplicates)",
        published.entries, published.events, published.duplicates
    );
    println!("bare drain:         {:.0} entries/s ({:.2}s)", bare_rate, bare.as_secs_f64());
    let xread_rate = published.entries as f64 / bare_xread.as_secs_f64();
    println!("bare XREAD drain:   {:.0} entries/s ({:.2}s; no group, no acks)", xread_rate, bare_xread.as_secs_f64());
    match a.rate {
        None => println!(
            "end to end:         {:.0} entries/s ({:.2}s to the last ack) = {:.0}% of the bare drain ({:.0}% of XREAD's)",
            rate,
            e2e.as_secs_f64(),
            100.0 * rate / bare_rate,
            100.0 * rate / xread_rate
        ),
        Some(r) => println!(
            "live:               published at up to {r:.0}/s; {:.0} entries/s over {:.2}s to the last ack (paced, not a ceiling)",
            rate,
            e2e.as_secs_f64()
        ),
    }
    println!("peak RSS (run):     {rss} MiB");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "Redis used_memory:  {:.0} MiB before the run, peak {:.0} MiB during it (+{:.1} MiB)",
        mib(memory_before),
        mib(memory_peak),
        mib(memory_peak.saturating_sub(memory_before))
    );
    println!("archive:            {} files, {} bytes, {:.1} bytes/event", files, bytes, bytes as f64 / accepted as f64);
    let _ = redis::cmd("DEL").arg(&drain_key).arg(&e2e_key).query_async::<()>(&mut conn).await;
    for shard in ShardId::all(a.shards).filter(|_| a.shards > 1) {
        let _ = redis::cmd("DEL").arg(shard.stream_key(&e2e_key)).query_async::<()>(&mut conn).await;
    }
    Ok(ExitCode::SUCCESS)
}

fn start_redis() -> anyhow::Result<(String, RedisChild)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (install it: apt-get install -y redis-server)")?;
    let url = format!("redis://127.0.0.1:{port}");
    let guard = RedisChild(Some(child));
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((url, guard));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("redis-server did not start on port {port}")
}

async fn bare_drain(conn: &mut MultiplexedConnection, key: &str, count: usize) -> anyhow::Result<Duration> {
    redis::cmd("XGROUP").arg("CREATE").arg(key).arg("bare").arg("0").query_async::<()>(conn).await?;
    let t = Instant::now();
    loop {
        let v: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("bare")
            .arg("c")
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(key)
            .arg(">")
            .query_async(conn)
            .await?;
        let streams = eventide::source::reply::xread(v)?;
        let Some((_, entries)) = streams.into_iter().next().filter(|(_, e)| !e.is_empty()) else { break };
        let mut ack = redis::cmd("XACK");
        ack.arg(key).arg("bare");
        for e in &entries {
            ack.arg(e.id.to_string());
        }
        ack.query_async::<u64>(conn).await?;
    }
    Ok(t.elapsed())
}

/// A bare `XREAD COUNT` loop over the whole stream (no group, no pending list, no acks).
async fn bare_xread(conn: &mut MultiplexedConnection, key: &str, count: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut after = "0-0".to_string();
    loop {
        let v: Value =
            redis::cmd("XREAD").arg("COUNT").arg(count).arg("STREAMS").arg(key).arg(&after).query_async(conn).await?;
        let streams = eventide::source::reply::xread(v)?;
        let Some((_, entries)) = streams.into_iter().next().filter(|(_, e)| !e.is_empty()) else { break };
        after = entries.last().map(|e| e.id.to_string()).unwrap_or(after);
    }
    Ok(t.elapsed())
}

/// Redis's `used_memory` (bytes).
async fn used_memory(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

/// Every shard of `key` delivered and acked to the `bench` group.
async fn all_done(conn: &mut MultiplexedConnection, key: &str, shards: u32) -> anyhow::Result<bool> {
    for shard in ShardId::all(shards) {
        if !group_done(conn, &shard.stream_key(key), "bench").await? {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn group_done(conn: &mut MultiplexedConnection, key: &str, group: &str) -> anyhow::Result<bool> {
    let groups: Vec<std::collections::HashMap<String, Value>> =
        match redis::cmd("XINFO").arg("GROUPS").arg(key).query_async(conn).await {
            Ok(g) => g,
            Err(_) => return Ok(false),
        };
    let Some(g) = groups.iter().find(|g| {
        g.get("name").is_some_and(|n| redis::from_redis_value_ref::<String>(n).ok().as_deref() == Some(group))
    }) else {
        return Ok(false);
    };
    let int = |k: &str| g.get(k).and_then(|v| redis::from_redis_value_ref::<i64>(v).ok());
    Ok(int("pending") == Some(0) && int("lag") == Some(0))
}

fn parquet_bytes(dir: &Path) -> (u64, u64) {
    let mut stack = vec![dir.join("events")];
    let (mut files, mut bytes) = (0, 0);
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                files += 1;
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    (files, bytes)
}
