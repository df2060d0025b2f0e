//! The library's public error type. Each layer has precise private variants of its own that
//! converge here, so callers match on a few stable categories (object_store style).

use std::path::PathBuf;

/// Everything that can stop a pipeline. Per-entry problems are not errors: they are
/// [`crate::decode::Reason`]s and go to the dead-letter stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message says where and what to fix.
    #[error("{0}")]
    Config(String),
    /// Redis failed or went away (retried with backoff where that is safe).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered with a reply of an unexpected shape.
    #[error("unexpected {command} reply: {what}")]
    Reply { command: &'static str, what: &'static str },
    /// The object store (the lake) failed.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// Parquet or Arrow encoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A Delta table's log could not be read or committed to.
    #[error("delta table {table}: {message}")]
    Delta { table: String, message: String },
    /// Saved state (dedup snapshot) could not be read back.
    #[error("state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    /// A pipeline's query failed at run time (planning problems are `Config` errors).
    #[error("pipeline {pipeline}: {message}")]
    Query { pipeline: String, message: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Another instance took over the consumer group (lost lease, or a newer checkpoint).
    #[error("fenced: {0}")]
    Fenced(String),
    /// A bounded resource is in use (a request may be retried).
    #[error("busy: {0}")]
    Busy(String),
    /// A pipeline task stopped unexpectedly (a bug, or its own error was reported first).
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
