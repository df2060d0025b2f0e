//! `eventide run` and `eventide validate`: configuration from file, flags and environment.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use eventide::config::{ByteSize, Config, Dur, line_of};

/// Settings; each overrides the config file, and each can be given as `EVENTIDE_<NAME>`.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Config file (default: ./eventide.toml when present).
    #[arg(long, short, env = "EVENTIDE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL: redis://host:port, rediss://[user@]host:port for TLS (no password in it:
    /// use EVENTIDE_REDIS_PASSWORD or --redis-password-file).
    #[arg(long, env = "EVENTIDE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis is a Redis Cluster: --redis-url lists seed nodes (comma-separated).
    #[arg(long, env = "EVENTIDE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// The Redis password, from the environment only (kept off the command line).
    #[arg(long, env = "EVENTIDE_REDIS_PASSWORD", hide_env_values = true, hide = true)]
    pub redis_password: Option<String>,
    /// File holding the Redis password.
    #[arg(long, env = "EVENTIDE_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<String>,
    /// PEM CA bundle that signed the Redis server's certificate (rediss://).
    #[arg(long, env = "EVENTIDE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<String>,
    /// PEM client certificate for mutual TLS (with --redis-client-key).
    #[arg(long, env = "EVENTIDE_REDIS_CLIENT_CERT")]
    pub redis_client_cert: Option<String>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "EVENTIDE_REDIS_CLIENT_KEY")]
    pub redis_client_key: Option<String>,
    /// Stream key to read (repeatable; the variable takes a comma-separated list).
    #[arg(long = "stream", env = "EVENTIDE_STREAM", value_delimiter = ',')]
    pub streams: Vec<String>,
    #[arg(long, env = "EVENTIDE_GROUP")]
    pub group: Option<String>,
    /// Consumer name, stable per instance (default eventide-<hostname>).
    #[arg(long, env = "EVENTIDE_CONSUMER")]
    pub consumer: Option<String>,
    /// Where a new group starts: 0 (all history) or $ (new entries only).
    #[arg(long, env = "EVENTIDE_START_ID")]
    pub start_id: Option<String>,
    /// `auto` (default: noack unless the group has pending entries), `group` (XREADGROUP +
    /// XACK, for a shared group) or `noack` (XREAD from checkpointed positions).
    #[arg(long, env = "EVENTIDE_READ_MODE")]
    pub read_mode: Option<String>,
    /// Entry field holding the event JSON (default data).
    #[arg(long, env = "EVENTIDE_FIELD")]
    pub field: Option<String>,
    #[arg(long, env = "EVENTIDE_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// `group` mode: entries read and not yet acked that commit a checkpoint early (default 1000000).
    #[arg(long, env = "EVENTIDE_MAX_PENDING_ENTRIES")]
    pub max_pending_entries: Option<u64>,
    /// Byte budget of one read (default 16MiB): COUNT is lowered for large entries.
    #[arg(long, env = "EVENTIDE_READ_MAX_BYTES")]
    pub read_max_bytes: Option<ByteSize>,
    #[arg(long, env = "EVENTIDE_BLOCK")]
    pub block: Option<Dur>,
    #[arg(long, env = "EVENTIDE_CLAIM_INTERVAL")]
    pub claim_interval: Option<Dur>,
    #[arg(long, env = "EVENTIDE_CLAIM_MIN_IDLE")]
    pub claim_min_idle: Option<Dur>,
    /// Dead-letter stream (default <stream>:dlq).
    #[arg(long, env = "EVENTIDE_DLQ_STREAM")]
    pub dlq_stream: Option<String>,
    /// Original bytes kept per dead letter (default 1MiB; the rest cut, dlq_truncated set).
    #[arg(long, env = "EVENTIDE_DLQ_MAX_ENTRY_BYTES")]
    pub dlq_max_entry_bytes: Option<ByteSize>,
    /// MAXLEN ~ of each dead-letter stream (default 100000; 0: unbounded).
    #[arg(long, env = "EVENTIDE_DLQ_MAXLEN")]
    pub dlq_maxlen: Option<u64>,
    #[arg(long, env = "EVENTIDE_MAX_ENTRY_BYTES")]
    pub max_entry_bytes: Option<ByteSize>,
    #[arg(long, env = "EVENTIDE_MAX_FUTURE")]
    pub max_future: Option<Dur>,
    #[arg(long, env = "EVENTIDE_DEDUP_HORIZON")]
    pub dedup_horizon: Option<Dur>,
    /// Memory cap of the dedup table (default 2GiB); at it the horizon shrinks.
    #[arg(long, env = "EVENTIDE_DEDUP_MAX_BYTES")]
    pub dedup_max_bytes: Option<ByteSize>,
    /// Window state of one pipeline beyond which it fails (default 512MiB).
    #[arg(long, env = "EVENTIDE_PIPELINE_MAX_STATE_BYTES")]
    pub pipeline_max_state_bytes: Option<ByteSize>,
    /// How far ahead of the wall clock an event may move a pipeline's watermark (default 0s).
    #[arg(long, env = "EVENTIDE_MAX_CLOCK_SKEW")]
    pub max_clock_skew: Option<Dur>,
    /// Lake: a directory, file://, s3://, gs://, az:// or memory://.
    #[arg(long, env = "EVENTIDE_LAKE")]
    pub lake: Option<String>,
    /// `parquet` (plain files, default) or `delta` (Delta Lake tables).
    #[arg(long, env = "EVENTIDE_TABLE_FORMAT")]
    pub table_format: Option<String>,
    #[arg(long, env = "EVENTIDE_ROLL_BYTES")]
    pub roll_bytes: Option<ByteSize>,
    #[arg(long, env = "EVENTIDE_ROLL_AGE")]
    pub roll_age: Option<Dur>,
    /// How often a checkpoint commits and acks (files stay open until --roll-age).
    #[arg(long, env = "EVENTIDE_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: Option<Dur>,
    #[arg(long, env = "EVENTIDE_STATE_INTERVAL")]
    pub state_interval: Option<Dur>,
    /// Memory of open archive files (default 512MiB): over it the oldest finish early.
    #[arg(long, env = "EVENTIDE_MAX_BUFFERED_BYTES")]
    pub max_buffered_bytes: Option<ByteSize>,
    /// Archive partitions open at once (default 1000): more finish the oldest early.
    #[arg(long, env = "EVENTIDE_MAX_OPEN_FILES")]
    pub max_open_files: Option<usize>,
    #[arg(long, env = "EVENTIDE_ZSTD_LEVEL")]
    pub zstd_level: Option<i32>,
    /// Stop once the streams are drained and idle this long (everything committed).
    #[arg(long, env = "EVENTIDE_EXIT_WHEN_IDLE")]
    pub exit_when_idle: Option<Dur>,
    #[arg(long, env = "EVENTIDE_PROGRESS_INTERVAL")]
    pub progress_interval: Option<Dur>,
    #[arg(long, env = "EVENTIDE_REDIS_RETRY_TIMEOUT")]
    pub redis_retry_timeout: Option<Dur>,
    /// Directory of pipeline files (default ./pipelines; "" for none).
    #[arg(long, env = "EVENTIDE_PIPELINES")]
    pub pipelines: Option<String>,
    /// Ops HTTP server address (default 127.0.0.1:9750; "" turns it off).
    #[arg(long, env = "EVENTIDE_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Bearer token for the HTTP server (all paths but /healthz).
    #[arg(long, env = "EVENTIDE_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
    /// File holding the bearer token (keeps it off the command line).
    #[arg(long, env = "EVENTIDE_HTTP_TOKEN_FILE")]
    pub http_token_file: Option<String>,
    #[arg(long, env = "EVENTIDE_PROBE_INTERVAL")]
    pub probe_interval: Option<Dur>,
    /// One instance per group reads; others take over when its lease expires.
    #[arg(long, env = "EVENTIDE_LEASE_TTL")]
    pub lease_ttl: Option<Dur>,
    /// Bound on the final checkpoint after SIGTERM/SIGINT.
    #[arg(long, env = "EVENTIDE_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<Dur>,
    /// Export traces of the event path to this OTLP/HTTP collector (http://host:4318).
    #[arg(long, env = "EVENTIDE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Fraction of batches traced (default 1).
    #[arg(long, env = "EVENTIDE_OTLP_SAMPLE_RATIO")]
    pub otlp_sample_ratio: Option<f64>,
    /// Events' traceparents linked per traced batch (default 8).
    #[arg(long, env = "EVENTIDE_OTLP_LINKS_PER_BATCH")]
    pub otlp_links_per_batch: Option<usize>,
    /// Shards per stream: keys <stream>:{0} … <stream>:{N-1} (1: the key <stream>).
    #[arg(long, env = "EVENTIDE_SHARDS")]
    pub shards: Option<u32>,
    /// Static assignment: the number of workers (with --worker-index).
    #[arg(long, env = "EVENTIDE_WORKERS")]
    pub workers: Option<u32>,
    /// Static assignment: this worker's index (owns shards k with k % workers == index).
    #[arg(long, env = "EVENTIDE_WORKER_INDEX")]
    pub worker_index: Option<u32>,
}

macro_rules! set {
    ($cfg:ident, $args:ident, $($field:ident),*) => {
        $( if let Some(v) = $args.$field { $cfg.$field = v; } )*
    };
}

impl RunArgs {
    /// File settings, then flags and variables on top.
    pub fn config(self) -> anyhow::Result<(Config, Option<(PathBuf, String)>)> {
        let file = super::config_path(self.config.clone());
        let (mut cfg, source) = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
                (Config::from_toml(&text, &path)?, Some((path, text)))
            }
            None => (Config::default(), None),
        };
        let a = self;
        if !a.streams.is_empty() {
            cfg.streams = a.streams;
        }
        if a.dlq_stream.is_some() {
            cfg.dlq_stream = a.dlq_stream;
        }
        if a.otlp_endpoint.is_some() {
            cfg.otlp_endpoint = a.otlp_endpoint;
        }
        if a.exit_when_idle.is_some() {
            cfg.exit_when_idle = a.exit_when_idle;
        }
        if a.checkpoint_interval.is_some() {
            cfg.checkpoint_interval = a.checkpoint_interval;
        }
        set!(
            cfg,
            a,
            redis_url,
            group,
            consumer,
            start_id,
            read_mode,
            field,
            batch_size,
            max_pending_entries,
            read_max_bytes,
            block,
            claim_interval,
            claim_min_idle,
            dlq_max_entry_bytes,
            dlq_maxlen,
            max_entry_bytes,
            max_future,
            dedup_horizon,
            dedup_max_bytes,
            pipeline_max_state_bytes,
            max_clock_skew,
            lake,
            table_format,
            roll_bytes,
            roll_age,
            state_interval,
            max_buffered_bytes,
            max_open_files,
            zstd_level,
            progress_interval,
            redis_retry_timeout,
            pipelines,
            http_addr,
            probe_interval,
            lease_ttl,
            shards,
            shutdown_timeout,
            otlp_sample_ratio,
            otlp_links_per_batch
        );
        if a.workers.is_some() || a.worker_index.is_some() {
            (cfg.workers, cfg.worker_index) = (a.workers.or(cfg.workers), a.worker_index.or(cfg.worker_index));
        }
        if a.http_token.is_some() {
            cfg.http_token = a.http_token;
        }
        cfg.redis_cluster |= a.redis_cluster;
        for (to, from) in [
            (&mut cfg.redis_password, a.redis_password),
            (&mut cfg.redis_password_file, a.redis_password_file),
            (&mut cfg.redis_ca_file, a.redis_ca_file),
            (&mut cfg.redis_client_cert, a.redis_client_cert),
            (&mut cfg.redis_client_key, a.redis_client_key),
            (&mut cfg.http_token_file, a.http_token_file),
        ] {
            if from.is_some() {
                *to = from;
            }
        }
        Ok((cfg, source))
    }
}

pub async fn run(args: RunArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<ExitCode> {
    let (cfg, _) = args.config()?;
    let opts = cfg.run_options()?;
    tracing::info!(
        redis = %eventide::source::connect::redact(&cfg.redis_url), streams = ?cfg.streams, group = %cfg.group, consumer = %cfg.consumer,
        lake = %cfg.lake, "Starting pipeline."
    );
    if let Some(dir) = opts.pipelines.as_ref().filter(|d| !d.exists()) {
        tracing::warn!(
            pipelines = %dir.display(),
            "No pipelines directory here: running the archive and the dead letters only (set --pipelines DIR or \
             EVENTIDE_PIPELINES, or \"\" for none to silence this)."
        );
    }
    let summary = eventide::run(opts, shutdown).await?;
    let s = &summary.stats;
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "read {} entries in {:.1}s ({:.0}/s): {} archived, {} duplicates dropped, {} to the DLQ {:?}, {} deleted while pending, {} claimed, {} acked",
        s.read,
        secs,
        s.read as f64 / secs.max(1e-9),
        s.accepted,
        s.duplicates,
        s.invalid_total(),
        s.invalid_by_reason(),
        s.deleted_pending,
        s.claimed,
        s.acked
    );
    let l = &summary.durable_latency;
    let q = |x: f64| l.quantile_ms(x).map_or("-".to_string(), |v| v.to_string());
    println!(
        "publish → durable latency (ms): p50 {} p90 {} p99 {} max {} over {} entries",
        q(0.5),
        q(0.9),
        q(0.99),
        l.max_ms(),
        l.count()
    );
    println!(
        "archive: {} rows in {} files, {} bytes, under {}/events/; dedup remembers {} ids; peak RSS {} MiB",
        s.rows_committed,
        s.files_committed,
        s.bytes_committed,
        cfg.lake.trim_end_matches('/'),
        summary.dedup_ids,
        peak_rss_kib().unwrap_or(0) / 1024
    );
    if s.table_files_committed > 0 {
        println!(
            "pipeline tables: {} rows in {} files, {} bytes (closed windows and late events)",
            s.table_rows_committed, s.table_files_committed, s.table_bytes_committed
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `eventide validate`: every problem of the config and of each pipeline file, with file,
/// line and fix; exit 1 when there are any.
pub async fn validate(args: RunArgs) -> ExitCode {
    let (cfg, source) = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let problems = cfg.check();
    let name = source.as_ref().map_or("(flags and defaults)".to_string(), |(p, _)| p.display().to_string());
    let pipelines_ok = validate_pipelines(&cfg.pipelines).await;
    if problems.is_empty() {
        println!("{name}: OK ({} stream(s), group {}, lake {})", cfg.streams.len(), cfg.group, cfg.lake);
        return if pipelines_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    for p in &problems {
        match source.as_ref().and_then(|(_, text)| line_of(text, p.key)) {
            Some(line) => eprintln!("{name}:{line}: {}: {}", p.key, p.message),
            None => eprintln!("{name}: {}: {}", p.key, p.message),
        }
    }
    ExitCode::FAILURE
}

/// Plans every pipeline file; prints one line per pipeline or per problem.
async fn validate_pipelines(dir: &str) -> bool {
    if dir.trim().is_empty() {
        return true;
    }
    if !std::path::Path::new(dir).exists() {
        println!("{dir}: no such directory: no pipelines (set --pipelines DIR, or \"\" for none)");
        return true;
    }
    match eventide::window::check_dir(std::path::Path::new(dir)).await {
        Ok(list) => {
            for (spec, plan) in &list {
                let cols: Vec<&str> = plan.output.fields().iter().map(|f| f.name().as_str()).collect();
                println!(
                    "{}: OK (pipeline {}, {} window, columns window_start, window_end, {})",
                    spec.file.display(),
                    spec.name,
                    spec.window,
                    cols.join(", ")
                );
            }
            true
        }
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            false
        }
    }
}

/// Peak resident set size of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
