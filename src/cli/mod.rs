//! Command-line interface: `run`, `gen`, `validate`, `replay`, `query`, `status`, `bench`.

mod backfill;
mod bench;
mod bench_window;
mod compact;
mod generate;
mod replay;
mod run;
mod status;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use run::RunArgs;

#[derive(Parser, Debug)]
#[command(name = "eventide", version, about = "Exactly-once analytics over Redis Streams")]
pub struct Cli {
    /// Log filter, e.g. `info`, `eventide=debug` (else `EVENTIDE_LOG`, else `RUST_LOG`, else
    /// `info`).
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Log lines as text, or as one JSON object per line (for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EVENTIDE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the pipeline: Redis consumer group → dedup → Parquet archive (+ DLQ).
    Run(RunArgs),
    /// Generate realistic e-commerce events into a Redis stream.
    Gen(generate::GenArgs),
    /// Check a configuration file (and flags) and the pipeline files; say exactly what is wrong and where.
    Validate(RunArgs),
    /// Run the pipelines over JSON-lines files (event-time order as in the files) into the lake.
    Replay(replay::ReplayArgs),
    /// Read-only SQL over the lake: `events`, `late_events` and one table per pipeline.
    Query(replay::QueryArgs),
    /// Ops summary per stream (rate, lag, pending, trimmed, DLQ) and pipeline; exit 2 over thresholds.
    Status(status::StatusArgs),
    /// Write a new pipeline's windows before its `live_from` from the archive (Delta tables; the live run writes the rest).
    Backfill(backfill::BackfillArgs),
    /// Compact the lake's Delta tables (small files into large ones, one commit per partition); optionally vacuum.
    Compact(compact::CompactArgs),
    /// End-to-end benchmark: bare XREADGROUP+XACK drain vs the pipeline, same data.
    Bench(bench::BenchArgs),
}

pub async fn run(cli: Cli, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args, shutdown).await,
        Command::Validate(args) => Ok(run::validate(args).await),
        Command::Gen(args) => generate::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Replay(args) => replay::replay(args).await,
        Command::Query(args) => replay::query(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Backfill(args) => backfill::run(args).await,
        Command::Compact(args) => compact::run(args, shutdown).await,
    }
}

/// The config file to read: the one given, else `./eventide.toml` when it exists.
fn config_path(given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| {
        let p = PathBuf::from("eventide.toml");
        p.exists().then_some(p)
    })
}
