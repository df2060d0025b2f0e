//! `eventide replay`: the pipelines over JSON-lines files, and `eventide query`: SQL over
//! the lake.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use eventide::config::Dur;
use eventide::lake_sql::LakeQuery;
use eventide::sink::lake::Lake;
use eventide::window::Pipelines;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A JSON-lines file, or a directory of `*.jsonl` / `*.ndjson` / `*.json` files (read in name order).
    pub input: PathBuf,
    /// Directory of pipeline files.
    #[arg(long, default_value = "pipelines", env = "EVENTIDE_PIPELINES")]
    pub pipelines: PathBuf,
    /// Lake the tables are written to.
    #[arg(long, default_value = "./lake", env = "EVENTIDE_LAKE")]
    pub lake: String,
    /// Event-time horizon of dedup by event_id.
    #[arg(long, default_value = "1h")]
    pub dedup_horizon: Dur,
    /// Stream name the events are attributed to (pipelines that select streams see this).
    #[arg(long, default_value = "events")]
    pub stream: String,
    /// Replay as this many shards, as a live run with `--shards` (events routed by
    /// `event_id`, each shard's own watermark, windows merged across shards).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
}

pub async fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let pipelines = Pipelines::load(&a.pipelines).await?;
    if pipelines.is_empty() {
        anyhow::bail!("{}: no pipeline files (*.toml) to replay", a.pipelines.display());
    }
    let inputs = eventide::replay::input_files(&a.input)?;
    if inputs.is_empty() {
        anyhow::bail!("{}: no .jsonl/.ndjson/.json files", a.input.display());
    }
    let lake = Lake::open(&a.lake)?;
    let s = if a.shards > 1 {
        let mut shards = vec![pipelines];
        for _ in 1..a.shards {
            shards.push(Pipelines::load(&a.pipelines).await?);
        }
        let every = eventide::replay::MERGE_EVERY;
        eventide::replay::run_sharded(&inputs, shards, &lake, a.dedup_horizon.0, &a.stream, every).await?
    } else {
        eventide::replay::run(&inputs, pipelines, &lake, a.dedup_horizon.0, &a.stream).await?
    };
    let secs = s.elapsed.as_secs_f64();
    println!(
        "replayed {} lines from {} file(s) in {:.2}s ({:.0} events/s): {} accepted, {} duplicates, {} rejected",
        s.lines,
        inputs.len(),
        secs,
        s.lines as f64 / secs.max(1e-9),
        s.accepted,
        s.duplicates,
        s.rejected
    );
    for r in s.first_rejects.iter().take(10) {
        println!("  rejected {}:{}: {}: {}", r.file.display(), r.line, r.reason.as_str(), r.detail);
    }
    let rows: u64 = s.files.iter().map(|f| f.rows).sum();
    println!(
        "wrote {rows} rows in {} file(s) under {}; peak RSS {} MiB",
        s.files.len(),
        a.lake,
        super::run::peak_rss_kib().unwrap_or(0) / 1024
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// A read-only SQL statement over `events`, `late_events` and the pipeline tables.
    pub sql: String,
    #[arg(long, default_value = "./lake", env = "EVENTIDE_LAKE")]
    pub lake: String,
    /// Pipeline files (their tables get registered with their schemas; `""` for none: the
    /// archive and late events only).
    #[arg(long, default_value = "pipelines", env = "EVENTIDE_PIPELINES")]
    pub pipelines: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

pub async fn query(a: QueryArgs) -> anyhow::Result<ExitCode> {
    let lake = Lake::open(&a.lake)?;
    let specs = match eventide::window::check_dir(std::path::Path::new(&a.pipelines)).await {
        Ok(list) => list,
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let tables = Pipelines::new(specs)?.output_schemas();
    let q = LakeQuery::open(&lake, &tables).await?;
    let (schema, batches) = q.sql(&a.sql).await?;
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Table => {
            println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            if batches.is_empty() {
                w.write(&arrow::array::RecordBatch::new_empty(schema))?;
            }
            for b in &batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            for b in &batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
