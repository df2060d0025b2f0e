//! The Redis Streams source: the first stage (**source** → decode → dedup → sink).
//!
//! - [`reader`]: a task that owns a dedicated connection for blocking `XREADGROUP`s
//!   (first this consumer's own pending entries, then new ones), reconnecting with backoff;
//! - [`connect`]: the URL, credentials and TLS every connection is made with;
//! - [`commands`]: a second connection for everything else (`XACK`, DLQ `XADD`,
//!   `XAUTOCLAIM`, `XGROUP`), retrying transient failures with backoff;
//! - [`group`]: consumer-group setup, claiming from dead consumers, acknowledging;
//! - [`lease`]: one active instance per group (standbys wait), with a fencing token;
//! - [`wire`]: the reader's own connection to a single Redis (plain or TLS), whose replies
//!   [`resp`] parses from the socket's bytes straight into [`RawEntry`](crate::entry::RawEntry)s;
//! - [`reply`]: the redis crate's reply values → `RawEntry`s (claims, cluster reads);
//! - [`probe`]: what Redis says about the streams and the group (lag, pending, trimmed), for ops.

pub mod acker;
pub mod commands;
pub mod connect;
pub mod group;
pub mod lease;
pub mod probe;
pub mod reader;
pub mod reply;
pub mod resp;
pub mod wire;

use std::time::Duration;

pub use crate::config::SourceOptions;

/// Exponential backoff from 50 ms to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(7)).min(5_000))
}
