//! `eventide status`: a terminal summary for ops, from a running process's `/api/status`
//! or straight from Redis. Exit status 2 when a threshold is exceeded (for scripts and
//! probes), 1 when the source cannot be reached.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use eventide::config::Dur;
use eventide::names::ShardId;
use eventide::source::connect::Conn;
use eventide::source::lease::key as lease_key;
use eventide::source::probe::{ProbeTarget, probe};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The running process's HTTP address (its `/api/status`).
    #[arg(long, default_value = "127.0.0.1:9750", env = "EVENTIDE_HTTP_ADDR")]
    pub http_addr: String,
    #[arg(long, env = "EVENTIDE_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
    /// Ask Redis directly instead (no process needed): lag, pending, trimmed, DLQ depth.
    #[arg(long, env = "EVENTIDE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Streams to report with --redis-url (repeatable).
    #[arg(long = "stream", value_delimiter = ',')]
    pub streams: Vec<String>,
    #[arg(long, default_value = "eventide", env = "EVENTIDE_GROUP")]
    pub group: String,
    /// The dead-letter stream, when the run sets one (default: `<stream>:dlq` per stream).
    #[arg(long, env = "EVENTIDE_DLQ_STREAM")]
    pub dlq_stream: Option<String>,
    /// Shards per stream (with --redis-url): every shard's keys, its lease holder, the workers.
    #[arg(long, default_value_t = 1, env = "EVENTIDE_SHARDS")]
    pub shards: u32,
    /// --redis-url lists seed nodes of a Redis Cluster.
    #[arg(long, env = "EVENTIDE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Exit 2 when a shard has no lease holder (nobody reads it).
    #[arg(long)]
    pub fail_on_unowned: bool,
    /// Exit 2 when a stream's lag exceeds this.
    #[arg(long)]
    pub max_lag: Option<u64>,
    /// Exit 2 when a dead-letter stream holds more than this.
    #[arg(long)]
    pub max_dlq: Option<u64>,
    /// Exit 2 when (shard 0's holder) a window closed at some shard has waited longer than
    /// this for another shard to close it.
    #[arg(long)]
    pub max_merge_wait: Option<Dur>,
    /// Exit 2 when entries were trimmed before being read.
    #[arg(long)]
    pub fail_on_trimmed: bool,
    /// Refresh every interval until interrupted.
    #[arg(long)]
    pub watch: Option<Dur>,
}

pub async fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    loop {
        let status = match fetch(&a).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("status: {e:#}");
                return Ok(ExitCode::from(1));
            }
        };
        if a.watch.is_some() {
            print!("\x1b[2J\x1b[H");
        }
        let breaches = print(&status, &a);
        match a.watch {
            Some(d) => tokio::time::sleep(d.0.max(Duration::from_millis(200))).await,
            None => return Ok(if breaches.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) }),
        }
    }
}

async fn fetch(a: &StatusArgs) -> anyhow::Result<Value> {
    if let Some(url) = &a.redis_url {
        anyhow::ensure!(!a.streams.is_empty(), "--redis-url needs --stream");
        let redis = eventide::config::RedisOptions::url(url).in_cluster(a.redis_cluster);
        let mut conn = eventide::source::connect::Connector::new(&redis)?
            .connect(std::time::Duration::from_secs(5), std::time::Duration::from_secs(10))
            .await
            .context("connecting to Redis")?;
        let target = ProbeTarget {
            redis,
            group: a.group.clone(),
            // As the run names them (`RunOptions::for_shard`): per shard its keys.
            streams: ShardId::all(a.shards)
                .flat_map(|k| {
                    let dlq = a.dlq_stream.as_deref().map(|d| k.stream_key(d));
                    a.streams.iter().map(move |s| {
                        let key = k.stream_key(s);
                        let dlq = dlq.clone().unwrap_or_else(|| format!("{key}:dlq"));
                        (key, dlq)
                    })
                })
                .collect(),
        };
        let streams = probe(&mut conn, &target).await?;
        let (workers, shards) = assignment(&mut conn, &a.group, a.shards).await?;
        return Ok(serde_json::json!({
            "group": a.group,
            "streams": streams.iter().map(|p| serde_json::json!({
                "stream": p.stream, "length": p.length, "lag": p.lag, "pending": p.pending,
                "trimmed_unread": p.trimmed_unread, "dlq_stream": p.dlq_stream, "dlq_depth": p.dlq_length,
            })).collect::<Vec<_>>(),
            "pipelines": [],
            "workers": workers,
            "shards": shards,
        }));
    }
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&a.http_addr))
        .await
        .context("timed out")?
        .with_context(|| format!("connecting to {} (is `eventide run` up? or use --redis-url)", a.http_addr))?;
    let auth = a.http_token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    // One request: the server keeps connections alive unless asked not to.
    let req = format!("GET /api/status HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}\r\n", a.http_addr);
    s.write_all(req.as_bytes()).await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf)).await.context("timed out")??;
    let (head, body) = buf.split_once("\r\n\r\n").context("not an HTTP response")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{}", head.lines().next().unwrap_or_default());
    Ok(serde_json::from_str(body)?)
}

/// The live workers of `group` and each shard's lease holder (`<consumer>/<token>`).
async fn assignment(conn: &mut Conn, group: &str, shards: u32) -> anyhow::Result<(Vec<String>, Vec<Value>)> {
    let workers: Vec<String> =
        redis::cmd("ZRANGE").arg(eventide::worker::members_key(group)).arg(0).arg(-1).query_async(conn).await?;
    let mut out = Vec::new();
    for shard in ShardId::all(shards) {
        let holder: Option<String> =
            redis::cmd("GET").arg(lease_key(&shard.lease_name(group))).query_async(conn).await?;
        out.push(serde_json::json!({ "shard": shard.index, "holder": holder }));
    }
    Ok((workers, out))
}

/// Prints the summary; returns the thresholds exceeded.
fn print(s: &Value, a: &StatusArgs) -> Vec<String> {
    let num = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    println!(
        "group {}{}",
        s["group"].as_str().unwrap_or("?"),
        s["consumer"].as_str().map(|c| format!(", consumer {c}")).unwrap_or_default()
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "stream", "rate/s", "length", "lag", "pending", "trimmed", "dlq"
    );
    let mut breaches = Vec::new();
    for st in s["streams"].as_array().into_iter().flatten() {
        let name = st["stream"].as_str().unwrap_or("?");
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name,
            num(&st["rate_per_second"]),
            num(&st["length"]),
            num(&st["lag"]),
            num(&st["pending"]),
            num(&st["trimmed_unread"]),
            num(&st["dlq_depth"])
        );
        if let (Some(max), Some(lag)) = (a.max_lag, st["lag"].as_u64())
            && lag > max
        {
            breaches.push(format!("{name}: lag {lag} > {max}"));
        }
        if let (Some(max), Some(d)) = (a.max_dlq, st["dlq_depth"].as_u64())
            && d > max
        {
            breaches.push(format!("{name}: DLQ depth {d} > {max}"));
        }
        if a.fail_on_trimmed && st["trimmed_unread"].as_u64().unwrap_or(0) > 0 {
            breaches.push(format!("{name}: {} entries trimmed before they were read", st["trimmed_unread"]));
        }
    }
    let pipelines = s["pipelines"].as_array().cloned().unwrap_or_default();
    if !pipelines.is_empty() {
        println!("{:<24} {:>14} {:>12} {:>10} {:>10}", "pipeline", "watermark lag", "open windows", "late", "windows");
        for p in &pipelines {
            println!(
                "{:<24} {:>13}s {:>12} {:>10} {:>10}",
                p["name"].as_str().unwrap_or("?"),
                p["watermark_lag_seconds"].as_f64().map_or("-".into(), |x| format!("{x:.1}")),
                num(&p["open_windows"]),
                num(&p["late"]),
                num(&p["windows"])
            );
        }
    }
    if let Some(workers) = s["workers"].as_array() {
        let names: Vec<&str> = workers.iter().filter_map(Value::as_str).collect();
        println!("workers: {}", if names.is_empty() { "none".to_string() } else { names.join(", ") });
        println!("{:<8} holder", "shard");
        for sh in s["shards"].as_array().into_iter().flatten() {
            let holder = sh["holder"].as_str();
            println!("{:<8} {}", num(&sh["shard"]), holder.unwrap_or("-- unowned --"));
            if a.fail_on_unowned && holder.is_none() {
                breaches.push(format!("shard {}: no worker holds its lease", sh["shard"]));
            }
        }
    }
    if let Some(m) = s.get("merge").filter(|m| !m.is_null()) {
        let waiting = m["waiting_seconds"].as_f64().unwrap_or(0.0);
        println!(
            "merger: {} windows merged; {}",
            num(&m["merged_windows"]),
            if waiting > 0.0 {
                format!("oldest window waiting for another shard: {waiting:.1}s")
            } else {
                "no window waiting".to_string()
            }
        );
        if let Some(max) = &a.max_merge_wait
            && waiting > max.0.as_secs_f64()
        {
            breaches.push(format!("merger: a window has waited {waiting:.1}s for another shard (> {:?})", max.0));
        }
    }
    if let Some(age) = s["last_commit_age_seconds"].as_f64() {
        println!("last commit {age:.1}s ago");
    }
    for b in &breaches {
        eprintln!("THRESHOLD: {b}");
    }
    breaches
}
