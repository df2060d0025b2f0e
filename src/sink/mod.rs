//! Sinks: where accepted and rejected events end up.
//!
//! - [`lake`]: the object store behind every table (local directory, S3, GCS, Azure, memory),
//!   with atomic visibility of committed files;
//! - [`archive`]: the event archive, hive-partitioned Parquet files rolled by size and age;
//! - [`table`]: pipeline output tables (closed windows, late events), written per commit;
//! - [`delta`]: the Delta log of each table (`table_format = "delta"`), one commit per
//!   table and epoch;
//! - [`dlq`]: the dead-letter stream for entries that failed decoding or validation;
//! - [`segments`]: what a checkpoint saves of an archive file kept open;
//! - [`file`](mod@file): a lake file as an async Parquet reader; [`merge`]: archive files merged back
//!   into the order the live run processed their rows (replay, compaction).

pub mod archive;
mod chunks;
pub mod delta;
pub mod dlq;
pub mod file;
pub mod lake;
pub mod merge;
mod schema;
pub mod segments;
pub mod table;

pub use schema::archive_schema;
