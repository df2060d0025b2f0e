//! # eventide
//!
//! An analytics consumer for e-commerce events on Redis Streams: every event counted exactly
//! once, deduplicated by `event_id`, archived as Parquet on object storage.
//!
//! # Layout
//! The modules follow the data flow; each imports only those below it in this list
//! (ARCHITECTURE.md, "Layers"):
//!
//! ```text
//! source ──▶ ingest: decode ──▶ dedup ──▶ fan-out ──▶ sink::archive ──▶ lake (object_store)
//!   │                  └─ rejects ──▶ sink::dlq           └──▶ window (pipelines) ──▶ tables
//!   └─◀── ack (XACK only for durable batches) ◀── worker (checkpoints)
//! ```
//! - [`app`]: one process, the ops [`api`] beside a [`worker`] ([`run`] starts it);
//! - [`worker`]: standby and lease-holder terms, the processor, checkpoints, recovery;
//! - [`lake_sql`]: SQL over the lake; [`replay`]: the same path over JSON-lines files;
//! - [`ingest`]: decode → dedup → fan-out, the one per-event path;
//! - [`window`]: event-time windowed aggregations on DataFusion (`pipelines/*.toml`);
//! - [`checkpoint`]: manifests, staging and publishing, recovery;
//! - [`sink`]: the lake, the Parquet event archive, table files, the dead-letter stream;
//! - [`source`]: Redis consumer groups (reader task, commands, claims, acks, lease);
//! - [`ack`]: which entries are durable; [`dedup`]: exact dedup by `event_id`;
//! - [`decode`]: entry → validated [`decode::Event`] (base events and Dapr CloudEvents);
//! - [`events`]: the `events` columns, once; [`metrics`]: counters and the snapshot;
//!   [`telemetry`]: OTLP traces of the event path (off by default);
//! - [`config`]: settings and the option structs; [`entry`], [`names`], [`error`]: leaves;
//!   [`pool`]: the encoding threads (CPU work off the runtime, as many as cores);
//! - [`generator`]: a load generator of realistic events (also used by tests and benchmarks).
//!
//! The library never touches signals: [`run`] takes a shutdown future.

pub mod ack;
pub mod api;
pub mod app;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod dedup;
pub mod entry;
pub mod error;
pub mod events;
pub mod generator;
pub mod ingest;
pub mod lake_sql;
pub mod metrics;
pub mod names;
pub mod pool;
pub mod replay;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod window;
pub mod worker;

pub use app::run;
pub use error::{Error, Result};
