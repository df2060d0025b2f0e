//! Configuration: `eventide.toml`, overridable by flags and `EVENTIDE_*` variables (the CLI
//! applies those). Two stages, as in ripgrep: [`Config`] is what the user wrote (serde,
//! unknown keys refused), [`Config::check`] reports every problem with its key and line,
//! and [`Config::run_options`] builds the typed options the pipeline runs with.

mod check;
mod options;
mod redis;
mod units;

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use options::{
    ApiOptions, ArchiveOptions, Assignment, DecodeOptions, DlqOptions, HttpLimits, ReadMode, RunOptions, SourceOptions,
    TableFormat,
};
pub use redis::{Certs, RedisOptions, TlsFiles, redact};
pub use units::{ByteSize, Dur};

use crate::error::{Error, Result};
use crate::names::{ShardId, sanitize_name};
use crate::telemetry::OtlpOptions;

/// Settings of `eventide run`. Every key is optional; defaults suit a local setup.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Redis URL (`redis://[user[:pass]@]host:port[/db]`, `rediss://` for TLS); with
    /// `redis_cluster`, one or more seed nodes separated by commas.
    pub redis_url: String,
    /// Redis is a Redis Cluster (commands routed by slot, `MOVED`/`ASK` and failovers followed).
    pub redis_cluster: bool,
    /// File holding the Redis password (trailing newline ignored), so that it is neither in
    /// the URL nor on a command line; `EVENTIDE_REDIS_PASSWORD` works too.
    pub redis_password_file: Option<String>,
    /// The password from `EVENTIDE_REDIS_PASSWORD` (never read from the config file).
    #[serde(skip)]
    pub redis_password: Option<String>,
    /// PEM CA bundle for `rediss://` (a private CA; default: the system's roots).
    pub redis_ca_file: Option<String>,
    /// PEM client certificate and key for mutual TLS.
    pub redis_client_cert: Option<String>,
    pub redis_client_key: Option<String>,
    /// Stream keys to read.
    pub streams: Vec<String>,
    /// Consumer group (give the pipeline its own, e.g. `analytics`).
    pub group: String,
    /// Shards per stream: `s` is the keys `s:{0}` … `s:{shards-1}` (1: the key `s`). Fixed
    /// for a group's life: shards move between workers, events never move between shards.
    pub shards: u32,
    /// Static assignment (a StatefulSet): this worker owns the shards `k` with
    /// `k % workers == worker_index`. Unset: shards are spread over the live workers by
    /// rendezvous hashing.
    pub workers: Option<u32>,
    pub worker_index: Option<u32>,
    /// Consumer name: stable per instance (pending entries are re-read under it).
    pub consumer: String,
    /// Where a newly created group starts: `0` (all retained history) or `$` (new only).
    pub start_id: String,
    /// `auto` (default): `noack` unless the group has pending entries when a term starts
    /// (then `group` for that term, to ack them). `group`: XREADGROUP with a pending-entries
    /// list, XACK after each checkpoint; for a group shared with other consumers. `noack`:
    /// XREAD from the checkpointed positions, no pending list (cheaper for Redis, faster);
    /// the group's position moves with each checkpoint. For a group eventide owns.
    pub read_mode: String,
    /// Entry field holding the event (Dapr: `data`).
    pub field: String,
    /// Most entries per `XREADGROUP` (`COUNT`).
    pub batch_size: usize,
    /// Byte budget of one read: `COUNT` is lowered when entries are large.
    pub read_max_bytes: ByteSize,
    /// `group` mode: most entries read and not yet acked (Redis keeps each in the group's
    /// pending list, ~100 B apiece); reaching it commits a checkpoint early.
    pub max_pending_entries: u64,
    /// `BLOCK` time of a read.
    pub block: Dur,
    /// How often to claim entries from dead consumers.
    pub claim_interval: Dur,
    /// Minimum idle time before another consumer's entry is claimed (≥ 2 × roll_age).
    pub claim_min_idle: Dur,
    /// Dead-letter stream key (default: `<stream>:dlq` per stream).
    pub dlq_stream: Option<String>,
    /// Original bytes kept per dead letter (the rest cut, `dlq_truncated` set).
    pub dlq_max_entry_bytes: ByteSize,
    /// `MAXLEN ~` of each dead-letter stream (0: unbounded).
    pub dlq_maxlen: u64,
    pub max_entry_bytes: ByteSize,
    /// Events further than this ahead of ingest time are rejected.
    pub max_future: Dur,
    /// Event-time horizon of exact dedup by event_id.
    pub dedup_horizon: Dur,
    /// Memory cap of the dedup table; at it the horizon shrinks (logged, `/metrics`).
    pub dedup_max_bytes: ByteSize,
    /// Window state of one pipeline beyond which it fails (freed; the others go on).
    pub pipeline_max_state_bytes: ByteSize,
    /// How far ahead of the wall clock an event may move a pipeline's watermark (producers'
    /// clock skew): the watermark stays at most `now + max_clock_skew − watermark`. Events
    /// stamped further ahead wait in their windows until the clock gets there. Default 0:
    /// a future-stamped event moves it no further than an honest event stamped now would;
    /// more closes windows sooner for fast producers but can make honest events late.
    pub max_clock_skew: Dur,
    /// Lake location: a path, `file://`, `s3://`, `gs://`, `az://` or `memory://`.
    pub lake: String,
    /// Object store options on top of the environment (`aws_endpoint`, `aws_region`, …).
    pub lake_options: std::collections::BTreeMap<String, String>,
    /// `parquet` (default: plain hive-partitioned files) or `delta` (the same files as
    /// Delta Lake tables: a `_delta_log/` per table, one commit per checkpoint).
    pub table_format: String,
    /// Archive files are committed at this size…
    pub roll_bytes: ByteSize,
    /// …or at this age (archive and pipeline table files): how long until rows are visible.
    pub roll_age: Dur,
    /// How often a checkpoint commits (and entries are acked), at most `roll_age`; default
    /// 1 s. Shorter than `roll_age`: files stay open across checkpoints until `roll_age` /
    /// `roll_bytes`, each checkpoint saving what they gained (Parquet pieces, see
    /// `sink::segments`).
    pub checkpoint_interval: Option<Dur>,
    /// How often (at most) the dedup snapshot is saved after a commit; always at a clean stop.
    pub state_interval: Dur,
    /// Memory of open archive files (rows, encoded bytes, per-file overhead); over it the
    /// oldest are finished early.
    pub max_buffered_bytes: ByteSize,
    /// Archive partitions (date × event type) open at once; more finish the oldest early.
    pub max_open_files: usize,
    pub zstd_level: i32,
    /// Stop once the streams are drained and idle this long, with everything committed.
    pub exit_when_idle: Option<Dur>,
    /// On SIGTERM/SIGINT, how long the final checkpoint may take before the run gives up
    /// (exit 1, nothing uncommitted acked: a restart resumes from the last checkpoint).
    pub shutdown_timeout: Dur,
    /// One instance per group reads; the others wait and take over when its lease (renewed
    /// every third of this) expires.
    pub lease_ttl: Dur,
    /// Interval of the progress log line.
    pub progress_interval: Dur,
    /// How long Redis commands retry a lost connection before the pipeline stops.
    pub redis_retry_timeout: Dur,
    /// Directory of pipeline files (windowed aggregations); empty: none.
    pub pipelines: String,
    /// Address of the ops HTTP server (`/metrics`, `/healthz`, `/readyz`); empty: off.
    pub http_addr: String,
    /// Bearer token required by the HTTP server (except `/healthz`).
    pub http_token: Option<String>,
    /// File holding the bearer token (instead of `http_token`).
    pub http_token_file: Option<String>,
    /// How often Redis is probed for lag, pending and trimmed entries.
    pub probe_interval: Dur,
    /// OTLP/HTTP collector for traces of the event path (`http://host:4318`); unset: off.
    pub otlp_endpoint: Option<String>,
    /// Fraction of batches traced (0..=1).
    pub otlp_sample_ratio: f64,
    /// Events' `traceparent`s linked per traced batch.
    pub otlp_links_per_batch: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster: false,
            redis_password_file: None,
            redis_password: None,
            redis_ca_file: None,
            redis_client_cert: None,
            redis_client_key: None,
            streams: vec!["events".into()],
            group: "eventide".into(),
            shards: 1,
            workers: None,
            worker_index: None,
            consumer: default_consumer(),
            start_id: "0".into(),
            read_mode: "auto".into(),
            field: "data".into(),
            batch_size: 1000,
            max_pending_entries: 1_000_000,
            read_max_bytes: ByteSize(16 << 20),
            block: Dur::secs(2),
            claim_interval: Dur::secs(30),
            claim_min_idle: Dur::secs(120),
            dlq_stream: None,
            dlq_max_entry_bytes: ByteSize(1 << 20),
            dlq_maxlen: 100_000,
            max_entry_bytes: ByteSize(1 << 20),
            max_future: Dur::secs(3600),
            dedup_horizon: Dur::secs(3600),
            dedup_max_bytes: ByteSize(2 << 30),
            pipeline_max_state_bytes: ByteSize(512 << 20),
            max_clock_skew: Dur::secs(0),
            lake: "./lake".into(),
            lake_options: Default::default(),
            table_format: "parquet".into(),
            roll_bytes: ByteSize(128 << 20),
            roll_age: Dur::secs(30),
            checkpoint_interval: Some(Dur::secs(1)),
            state_interval: Dur::secs(60),
            max_buffered_bytes: ByteSize(512 << 20),
            max_open_files: 1000,
            zstd_level: 1,
            exit_when_idle: None,
            shutdown_timeout: Dur::secs(30),
            lease_ttl: Dur::secs(10),
            progress_interval: Dur::secs(10),
            redis_retry_timeout: Dur::secs(300),
            pipelines: "pipelines".into(),
            http_addr: "127.0.0.1:9750".into(),
            http_token: None,
            http_token_file: None,
            probe_interval: Dur::secs(5),
            otlp_endpoint: None,
            otlp_sample_ratio: 1.0,
            otlp_links_per_batch: 8,
        }
    }
}

/// `eventide-<hostname>`: stable across restarts of the same host or pod.
fn default_consumer() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "1".into());
    format!("eventide-{host}")
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: &'static str,
    pub message: String,
}

impl Config {
    /// Parses TOML text; errors name the file, line and column.
    pub fn from_toml(text: &str, file: &Path) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", file.display())))
    }

    /// Reads a config file.
    pub fn load(file: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Error::Config(format!("{}: cannot read: {e}", file.display())))?;
        Config::from_toml(&text, file)
    }

    /// Checks the configuration and builds the pipeline's options.
    pub fn run_options(&self) -> Result<RunOptions> {
        let problems = self.check();
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.key, p.message)).collect();
            return Err(Error::Config(list.join("\n")));
        }
        let token = self.http_token()?;
        Ok(RunOptions {
            source: SourceOptions {
                redis: self.redis_connect()?,
                streams: self.streams.clone(),
                group: self.group.clone(),
                consumer: self.consumer.clone(),
                start_id: self.start_id.clone(),
                read_mode: self.read_mode()?,
                batch_size: self.batch_size,
                max_pending: self.max_pending_entries,
                read_max_bytes: self.read_max_bytes.0 as usize,
                block: self.block.0,
                claim_min_idle: self.claim_min_idle.0,
                retry_timeout: self.redis_retry_timeout.0,
            },
            decode: DecodeOptions {
                field: self.field.as_bytes().to_vec(),
                max_entry_bytes: self.max_entry_bytes.0 as usize,
                max_future_us: self.max_future.0.as_micros() as i64,
            },
            archive: ArchiveOptions {
                prefix: "events".into(),
                roll_bytes: self.roll_bytes.0 as usize,
                max_buffered_bytes: self.max_buffered_bytes.0 as usize,
                max_open_files: self.max_open_files,
                zstd_level: self.zstd_level,
                writer: sanitize_name(&self.consumer),
            },
            shards: self.shards,
            assignment: match (self.workers, self.worker_index) {
                (Some(workers), Some(index)) => Assignment::Static { index, workers },
                _ => Assignment::Rendezvous,
            },
            shard: ShardId::default(),
            lake: self.lake.clone(),
            lake_options: self.lake_options.clone(),
            lake_store: None,
            table_format: self.table_format.parse().unwrap_or_default(),
            dlq_stream: self.dlq_stream.clone(),
            dlq: DlqOptions { max_entry_bytes: self.dlq_max_entry_bytes.0 as usize, maxlen: self.dlq_maxlen },
            dedup_horizon: self.dedup_horizon.0,
            dedup_max_bytes: self.dedup_max_bytes.0 as usize,
            pipeline_max_state_bytes: self.pipeline_max_state_bytes.0 as usize,
            max_clock_skew: self.max_clock_skew.0,
            roll_age: self.roll_age.0,
            checkpoint_interval: self.checkpoint_interval.map_or(self.roll_age.0, |c| c.0.min(self.roll_age.0)),
            state_interval: self.state_interval.0,
            claim_interval: self.claim_interval.0,
            exit_when_idle: self.exit_when_idle.map(|d| d.0),
            shutdown_timeout: self.shutdown_timeout.0,
            lease_ttl: self.lease_ttl.0,
            progress_interval: self.progress_interval.0,
            pipelines: (!self.pipelines.trim().is_empty()).then(|| self.pipelines.clone().into()),
            api: self.http_addr.parse().ok().map(|addr| ApiOptions {
                addr,
                token: token.clone(),
                stall_after: Duration::from_secs(30).max(self.probe_interval.0 * 3),
                limits: Default::default(),
            }),
            probe_interval: self.probe_interval.0,
            otlp: self.otlp_endpoint.as_ref().filter(|e| !e.trim().is_empty()).map(|e| OtlpOptions {
                endpoint: e.trim().to_string(),
                sample_ratio: self.otlp_sample_ratio,
                links_per_batch: self.otlp_links_per_batch,
            }),
            spans: Default::default(),
        })
    }
}

impl Config {
    /// How to reach Redis: the URL, the password from the environment or its file, TLS files.
    pub fn redis_connect(&self) -> Result<RedisOptions> {
        let password = match (&self.redis_password, &self.redis_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(read_secret("redis_password_file", f)?),
            (None, None) => None,
        };
        let tls = TlsFiles {
            ca: self.redis_ca_file.as_ref().map(Into::into),
            client_cert: self.redis_client_cert.as_ref().map(Into::into),
            client_key: self.redis_client_key.as_ref().map(Into::into),
        };
        Ok(RedisOptions::new(&self.redis_url, password, &tls)?.in_cluster(self.redis_cluster))
    }

    /// `read_mode` parsed (the one list of valid modes; `check` reports the error with its line).
    pub(super) fn read_mode(&self) -> Result<ReadMode> {
        match self.read_mode.as_str() {
            "auto" => Ok(ReadMode::Auto),
            "group" => Ok(ReadMode::Group),
            "noack" => Ok(ReadMode::NoAck),
            other => Err(Error::Config(format!("read_mode {other:?}: use \"auto\", \"group\" or \"noack\""))),
        }
    }

    /// The HTTP bearer token, given directly or in its file.
    fn http_token(&self) -> Result<Option<String>> {
        match &self.http_token_file {
            Some(f) => Ok(Some(read_secret("http_token_file", f)?)),
            None => Ok(self.http_token.clone().filter(|t| !t.is_empty())),
        }
    }
}

/// A secret from a file (a trailing newline is not part of it).
fn read_secret(key: &str, file: &str) -> Result<String> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::Config(format!("{key}: cannot read {file}: {e}")))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        return Err(Error::Config(format!("{key}: {file} is empty")));
    }
    Ok(secret)
}

/// The 1-based line where `key` is set in a TOML text, for pointing at a problem.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests;
