//! The typed options every stage runs with, built by [`Config::run_options`](super::Config::run_options)
//! (or by hand, in tests and benches). Plain data: the stages import these from here, and
//! `config` imports nothing above it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;

use crate::names::ShardId;

pub use super::redis::RedisOptions;

/// Everything `eventide run` needs: the worker's settings and the ops server's.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub source: SourceOptions,
    pub decode: DecodeOptions,
    pub archive: ArchiveOptions,
    /// Shards per stream (see `names::ShardId`).
    pub shards: u32,
    /// How this worker picks its shards.
    pub assignment: Assignment,
    /// The shard these options are for: the worker sets it per shard it runs (its streams,
    /// lease, checkpoint line and writer are the shard's; see [`RunOptions::for_shard`]).
    pub shard: ShardId,
    pub lake: String,
    /// Object store options (e.g. `aws_endpoint`), on top of the environment.
    pub lake_options: std::collections::BTreeMap<String, String>,
    /// A store opened elsewhere, used instead of `lake` (tests wrap a store to inject faults).
    pub lake_store: Option<Arc<dyn ObjectStore>>,
    /// Plain Parquet files, or Delta Lake tables (`sink::delta`).
    pub table_format: TableFormat,
    pub dlq_stream: Option<String>,
    pub dlq: DlqOptions,
    pub dedup_horizon: Duration,
    /// Memory cap of the dedup table.
    pub dedup_max_bytes: usize,
    /// Window state of one pipeline beyond which it fails (the others go on).
    pub pipeline_max_state_bytes: usize,
    /// How far a pipeline's watermark may run ahead of the wall clock (producer clock skew).
    pub max_clock_skew: Duration,
    pub roll_age: Duration,
    /// How often a checkpoint commits (at most `roll_age`).
    pub checkpoint_interval: Duration,
    /// How often (at most) the dedup snapshot is saved at a commit; always at a clean stop.
    pub state_interval: Duration,
    pub claim_interval: Duration,
    pub exit_when_idle: Option<Duration>,
    /// Bound on the final checkpoint after a shutdown request.
    pub shutdown_timeout: Duration,
    /// The group lease's time to live (see `source::lease`).
    pub lease_ttl: Duration,
    pub progress_interval: Duration,
    /// Directory of pipeline files (`*.toml`); `None` or a missing directory: no windowed
    /// aggregations.
    pub pipelines: Option<std::path::PathBuf>,
    /// The ops HTTP server; `None`: off.
    pub api: Option<ApiOptions>,
    pub probe_interval: Duration,
    /// Traces of the event path over OTLP/HTTP; `None`: off.
    pub otlp: Option<crate::telemetry::OtlpOptions>,
    /// The tracer the run uses (set by [`crate::app::run`] from `otlp`; off by default).
    pub spans: crate::telemetry::Spans,
}

/// The lake's table format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableFormat {
    /// Hive-partitioned Parquet files (a reader globs a table's directory).
    #[default]
    Parquet,
    /// The same files, with a Delta log per table.
    Delta,
}

impl std::str::FromStr for TableFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "parquet" => Ok(TableFormat::Parquet),
            "delta" => Ok(TableFormat::Delta),
            other => Err(format!("{other:?}: use \"parquet\" (plain files) or \"delta\" (Delta Lake tables)")),
        }
    }
}

/// Settings of the Redis source.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// How to reach Redis (URL, credentials, TLS).
    pub redis: RedisOptions,
    pub streams: Vec<String>,
    pub group: String,
    /// Stable per instance: this consumer's pending entries are re-read after a restart.
    pub consumer: String,
    /// Where a newly created group starts (`0` = all retained history, `$` = new entries).
    pub start_id: String,
    /// How entries are read and acknowledged (see [`ReadMode`]).
    pub read_mode: ReadMode,
    /// Most entries per read (`COUNT`), lowered to keep a read near `read_max_bytes`.
    pub batch_size: usize,
    /// Byte budget of one read (all streams).
    pub read_max_bytes: usize,
    /// `group` mode: entries read and not yet acked that make a checkpoint due early.
    pub max_pending: u64,
    pub block: Duration,
    /// Entries pending longer than this at another consumer are claimed.
    pub claim_min_idle: Duration,
    /// How long a command keeps retrying a lost connection before the pipeline stops.
    pub retry_timeout: Duration,
}

/// How a term reads its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// `XREADGROUP` with a pending-entries list; every entry `XACK`ed after its checkpoint.
    /// For a group shared with other consumers.
    Group,
    /// `XREAD` after the checkpointed positions; the group's position moves at each
    /// checkpoint (no pending list). For a group eventide owns.
    NoAck,
    /// `NoAck`, unless the group has pending entries when a term starts (left by `group`
    /// mode or another consumer): that term reads in `Group` mode to process and ack them.
    Auto,
}

/// Decoding rules that come from the configuration.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Entry field holding the event JSON (Dapr uses `data`).
    pub field: Vec<u8>,
    /// Entries larger than this (all field names and values) are rejected.
    pub max_entry_bytes: usize,
    /// Events stamped further than this in the future of ingest time are rejected (µs).
    /// A wrong clock would otherwise move the watermark and expire dedup state early.
    pub max_future_us: i64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { field: b"data".to_vec(), max_entry_bytes: 1 << 20, max_future_us: 3_600_000_000 }
    }
}

/// Archive settings.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// Table prefix inside the lake.
    pub prefix: String,
    /// A file is committed once its encoded size reaches this.
    pub roll_bytes: usize,
    /// Memory of all open files (rows, encoded bytes, per-file overhead): over it, the oldest
    /// files are finished early.
    pub max_buffered_bytes: usize,
    /// Partitions (date, event type) open at once: over it, the oldest are finished early.
    pub max_open_files: usize,
    pub zstd_level: i32,
    /// Writer name in file names (the consumer name, sanitised): keeps names unique per instance.
    pub writer: String,
}

/// Bounds of the dead-letter streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqOptions {
    /// Original bytes (field names and values) kept per dead letter; the rest is cut.
    pub max_entry_bytes: usize,
    /// `MAXLEN ~` of each dead-letter stream (0: unbounded).
    pub maxlen: u64,
}

impl Default for DlqOptions {
    fn default() -> Self {
        DlqOptions { max_entry_bytes: 1 << 20, maxlen: 100_000 }
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub addr: SocketAddr,
    /// Required as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// `/readyz` fails when the processor or the probe has not reported for this long.
    pub stall_after: Duration,
    pub limits: HttpLimits,
}

/// The ops HTTP server's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// Largest request head (at least 8 KiB, hyper's minimum).
    pub max_head_bytes: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 512,
            max_head_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// How a worker picks the shards it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Rendezvous hashing over the live workers of the group (heartbeats in Redis): each
    /// shard goes to the worker with the highest hash of (worker, shard), so a worker joining
    /// or leaving moves only its own share.
    Rendezvous,
    /// Shards `k` with `k % workers == index` (a StatefulSet's ordinal).
    Static { index: u32, workers: u32 },
}

impl RunOptions {
    /// These options for shard `shard`: its stream keys, its writer name, and its share of
    /// every memory bound (the bounds are the worker's: a worker may run every shard, so each
    /// shard gets `1 / shards` of them, with a floor).
    pub fn for_shard(&self, shard: ShardId) -> RunOptions {
        let mut o = self.clone();
        o.shard = shard;
        o.source.streams = self.source.streams.iter().map(|s| shard.stream_key(s)).collect();
        o.archive.writer = shard.writer(&self.source.consumer);
        o.dlq_stream = self.dlq_stream.as_ref().map(|d| shard.stream_key(d));
        let n = shard.count.max(1) as usize;
        o.source.read_max_bytes = (self.source.read_max_bytes / n).max(64 << 10);
        o.source.max_pending = (self.source.max_pending / n as u64).max(10_000);
        o.archive.max_buffered_bytes = (self.archive.max_buffered_bytes / n).max(4 << 20);
        o.archive.max_open_files = (self.archive.max_open_files / n).max(16);
        o.dedup_max_bytes = (self.dedup_max_bytes / n).max(1 << 20);
        o.pipeline_max_state_bytes = (self.pipeline_max_state_bytes / n).max(1 << 20);
        o
    }
}
