//! The Redis Streams source: the first stage (**source** → decode → dedup → sink).
//!
//! - [`reader`]: a task that owns a dedicated connection for blocking `XREADGROUP`s
//!   (first this consumer's own pending entries, then new ones), reconnecting with backoff;
//! - [`connect`]: the URL, credentials and TLS every connection is made with;
//! - [`commands`]: a second connection for everything else (`XACK`, DLQ `XADD`,
//!   `XAUTOCLAIM`, `XGROUP`), retrying transient failures with backoff;
//! - [`group`]: consumer-group setup, claiming from dead consumers, acknowledging;
//! - [`lease`]: one active instance per group (standbys wait), with a fencing token;
//! - [`reply`]: Redis replies → [`RawEntry`](crate::event::RawEntry)s;
//! - [`probe`]: what Redis says about the streams and the group (lag, pending, trimmed), for ops.

pub mod acker;
pub mod commands;
pub mod connect;
pub mod group;
pub mod lease;
pub mod probe;
pub mod reader;
pub mod reply;

use std::time::Duration;

/// Settings of the Redis source.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// How to reach Redis (URL, credentials, TLS).
    pub redis: connect::RedisConnect,
    pub streams: Vec<String>,
    pub group: String,
    /// Stable per instance: this consumer's pending entries are re-read after a restart.
    pub consumer: String,
    /// Where a newly created group starts (`0` = all retained history, `$` = new entries).
    pub start_id: String,
    /// Read with XREAD from checkpointed positions instead of XREADGROUP (no pending list).
    pub noack: bool,
    /// Most entries per read (`COUNT`), lowered to keep a read near `read_max_bytes`.
    pub batch_size: usize,
    /// Byte budget of one read (all streams).
    pub read_max_bytes: usize,
    pub block: Duration,
    /// Entries pending longer than this at another consumer are claimed.
    pub claim_min_idle: Duration,
    /// How long a command keeps retrying a lost connection before the pipeline stops.
    pub retry_timeout: Duration,
}

/// Exponential backoff from 50 ms to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(7)).min(5_000))
}
