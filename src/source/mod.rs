//! The Redis Streams source: the first stage (**source** → decode → dedup → sink).
//!
//! - [`reader`]: a task that owns a dedicated connection for blocking `XREADGROUP`s
//!   (first this consumer's own pending entries, then new ones), reconnecting with backoff;
//! - [`connect`]: the URL, credentials and TLS every connection is made with;
//! - [`commands`]: a second connection for everything else (`XACK`, DLQ `XADD`,
//!   `XAUTOCLAIM`, `XGROUP`), retrying transient failures with backoff;
//! - [`group`]: consumer-group setup, claiming from dead consumers, acknowledging;
//! - [`lease`]: one active instance per group (standbys wait), with a fencing token;
//! - [`reply`]: Redis replies → [`RawEntry`](crate::entry::RawEntry)s;
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

pub use crate::config::SourceOptions;

/// Exponential backoff from 50 ms to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(7)).min(5_000))
}
