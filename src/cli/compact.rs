//! `eventide compact`: rewrites the small files of the lake's Delta tables into large ones
//! (one commit per partition), optionally vacuums files removed longer ago than the
//! retention period, once or every `--every` (a background policy beside a live run).

use std::future::Future;
use std::process::ExitCode;

use clap::Args;
use eventide::config::{ByteSize, Dur};
use eventide::sink::delta::compact::{CompactOptions, compact, vacuum};
use eventide::sink::delta::delta_tables;
use eventide::sink::lake::Lake;

#[derive(Debug, Args)]
pub struct CompactArgs {
    #[arg(long, default_value = "./lake", env = "EVENTIDE_LAKE")]
    pub lake: String,
    /// Tables to compact (default: every Delta table of the lake).
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Files of at least this size are kept; smaller ones are packed up to it.
    #[arg(long, default_value = "128MiB")]
    pub target_size: ByteSize,
    /// Also delete files the tables stopped referencing more than `--retention` ago.
    #[arg(long)]
    pub vacuum: bool,
    /// How long removed files stay for readers of older versions (time travel).
    #[arg(long, default_value = "7d")]
    pub retention: Dur,
    /// Compact again every this long until stopped (SIGTERM/SIGINT).
    #[arg(long)]
    pub every: Option<Dur>,
    /// zstd level of rewritten archive files (as `zstd_level` of `run`).
    #[arg(long, default_value_t = 1)]
    pub zstd_level: i32,
}

pub async fn run(a: CompactArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<ExitCode> {
    let lake = Lake::open(&a.lake)?;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        round(&a, &lake).await?;
        let Some(every) = a.every else { return Ok(ExitCode::SUCCESS) };
        tokio::select! {
            _ = tokio::time::sleep(every.0) => {}
            _ = &mut shutdown => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn round(a: &CompactArgs, lake: &Lake) -> anyhow::Result<()> {
    let tables = match a.tables.is_empty() {
        true => delta_tables(lake).await?,
        false => a.tables.clone(),
    };
    if tables.is_empty() {
        eprintln!("no Delta table in {} (run with --table-format delta to write them)", a.lake);
    }
    for t in &tables {
        let props = match t.as_str() {
            "events" => eventide::sink::archive::writer_props(a.zstd_level)?,
            _ => eventide::sink::table::writer_props()?,
        };
        let opts = CompactOptions { target_bytes: a.target_size.0, props };
        let r = compact(lake, t, &opts).await?;
        println!(
            "{t}: {} partitions compacted, {} files → {} ({} rows, {} → {} bytes){}",
            r.partitions,
            r.files_removed,
            r.files_added,
            r.rows,
            r.bytes_read,
            r.bytes_written,
            match r.conflicts {
                0 => String::new(),
                n => format!("; {n} partitions skipped (a concurrent commit changed them; next round)"),
            }
        );
        if a.vacuum {
            let n = vacuum(lake, t, a.retention.0).await?;
            println!("{t}: vacuumed {n} files removed more than {} ago", a.retention);
        }
    }
    Ok(())
}
