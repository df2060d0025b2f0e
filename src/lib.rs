//! # eventide
//!
//! An analytics consumer for e-commerce events on Redis Streams: every event counted exactly
//! once, deduplicated by `event_id`, archived as Parquet on object storage.
//!
//! # Layout
//! The modules follow the data flow:
//!
//! ```text
//! source ──▶ decode ──▶ dedup ──▶ sink::archive ──▶ lake (object_store)
//!   │           └─ rejects ──▶ sink::dlq (Redis stream)
//!   └─◀── ack (XACK only for durable batches) ◀── pipeline
//! ```
//! - [`source`]: Redis consumer groups (reader task, commands, claims, acks);
//! - [`decode`]: entry → validated [`decode::Event`] (base events and Dapr CloudEvents);
//! - [`dedup`]: exact dedup by `event_id` over an event-time horizon;
//! - [`sink`]: the lake, the Parquet event archive, the dead-letter stream;
//! - [`ack`]: which entries are durable; [`state`]: dedup snapshot for restarts;
//! - [`window`]: event-time windowed aggregations on DataFusion (`pipelines/*.toml`);
//! - [`replay`]: the same path over JSON-lines files; [`query`]: SQL over the lake;
//! - [`pipeline`]: wires the stages; [`config`]: settings; [`metrics`]: counters;
//! - [`api`]: the ops HTTP server (`/metrics`, `/healthz`, `/readyz`, `/api/status`);
//! - [`generator`]: a load generator of realistic events (also used by tests and benchmarks).
//!
//! The library never touches signals: [`pipeline::run`] takes a shutdown future.

pub mod ack;
pub mod api;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod dedup;
pub mod error;
pub mod event;
pub mod generator;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod replay;
pub mod sink;
pub mod source;
pub mod state;
pub mod window;

pub use error::{Error, Result};
