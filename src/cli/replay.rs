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
    /// A JSON-lines file, a directory of `*.jsonl` / `*.ndjson` / `*.json` files (read in name
    /// order), or a lake's archive (`<lake>/events`: the events in the order the live run
    /// processed them).
    pub input: PathBuf,
    /// Archive input: events from this event time on (RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// Archive input: events before this event time (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    /// Archive input: only these event types (repeatable, or a comma list).
    #[arg(long = "event-type", value_delimiter = ',')]
    pub event_types: Vec<String>,
    /// Archive input: sort the events with a query (spilling to disk) instead of merging
    /// the files, each already in live order (for files written by other tools).
    #[arg(long)]
    pub full_sort: bool,
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
    let lake = Lake::open(&a.lake)?;
    if let Some(root) = archive_root(&a.input) {
        return replay_archive(&a, &root, pipelines, &lake).await;
    }
    anyhow::ensure!(
        a.from.is_none() && a.to.is_none() && a.event_types.is_empty(),
        "--from, --to and --event-type select from an archive (<lake>/events), not from JSON lines"
    );
    let inputs = eventide::replay::input_files(&a.input)?;
    if inputs.is_empty() {
        anyhow::bail!("{}: no .jsonl/.ndjson/.json files", a.input.display());
    }
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

/// The lake whose archive `input` is (`<lake>/events`, or the lake itself), if it is one:
/// a local directory, or an object store URL ending in `/events` (`s3://bucket/lake/events`,
/// configured from the environment as `--lake` is).
fn archive_root(input: &std::path::Path) -> Option<String> {
    let text = input.to_str()?;
    if text.contains("://") && !text.starts_with("file://") {
        return text.trim_end_matches('/').strip_suffix("/events").map(str::to_string);
    }
    let input = std::path::Path::new(text.strip_prefix("file://").unwrap_or(text));
    if input.file_name().is_some_and(|n| n == "events") && has_parquet(input) {
        return input.parent().and_then(|p| p.to_str()).map(str::to_string);
    }
    has_parquet(&input.join("events")).then(|| text.to_string())
}

/// Whether `dir` holds a `*.parquet` file at any depth (stops at the first).
fn has_parquet(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() { has_parquet(&p) } else { p.extension().is_some_and(|x| x == "parquet") }
    })
}

/// Memory the archive query may hold (its sort spills past it).
const ARCHIVE_QUERY_MEMORY: usize = 512 << 20;

async fn replay_archive(a: &ReplayArgs, root: &str, pipelines: Pipelines, out: &Lake) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.shards == 1, "--shards applies to JSON lines; an archive replays as one shard");
    let time = |what: &str, s: &Option<String>| -> anyhow::Result<Option<i64>> {
        s.as_deref()
            .map(|t| {
                eventide::decode::timestamp::parse_rfc3339_us(t)
                    .ok_or_else(|| anyhow::anyhow!("--{what} {t:?}: expected RFC 3339, e.g. 2026-12-01T00:00:00Z"))
            })
            .transpose()
    };
    let filter = eventide::replay::ArchiveFilter {
        from_us: time("from", &a.from)?,
        to_us: time("to", &a.to)?,
        event_types: a.event_types.clone(),
    };
    let source = Lake::open(root)?;
    let s = archive_into(&source, &filter, pipelines, out, a.full_sort).await?;
    let rows: u64 = s.files.iter().map(|f| f.rows).sum();
    println!(
        "replayed {} archived events from {}/events in {:.2}s; wrote {rows} rows in {} file(s) under {}",
        s.accepted,
        root.trim_end_matches('/'),
        s.elapsed.as_secs_f64(),
        s.files.len(),
        a.lake
    );
    Ok(ExitCode::SUCCESS)
}

/// Rows decoded at once per archive file in the merge (bounds memory per open file).
const MERGE_BATCH_ROWS: usize = 2048;

/// The pipelines over `source`'s archive (in the live run's order), into `out`: the files
/// merged, or (`full_sort`) sorted by a query.
pub(super) async fn archive_into(
    source: &Lake,
    filter: &eventide::replay::ArchiveFilter,
    pipelines: Pipelines,
    out: &Lake,
    full_sort: bool,
) -> anyhow::Result<eventide::replay::ReplaySummary> {
    let q = LakeQuery::open_bounded(source, &[], ARCHIVE_QUERY_MEMORY).await?;
    let (_, listed) = q.sql(eventide::replay::ARCHIVE_STREAMS).await?;
    let mut streams = Vec::new();
    for b in &listed {
        let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
        let names = col.as_any().downcast_ref::<arrow::array::StringArray>();
        streams.extend(names.into_iter().flatten().flatten().map(str::to_string));
    }
    if full_sort {
        let stream = q.stream(&eventide::replay::archive_query(filter)).await?;
        return Ok(eventide::replay::run_archive(stream, &streams, pipelines, out).await?);
    }
    let files = eventide::replay::archive_files(source, filter).await?;
    let order = eventide::sink::merge::LiveOrder::open(source.store().clone(), files, MERGE_BATCH_ROWS).await?;
    eventide::replay::run_archive_merged(order, filter, &streams, pipelines, out).await.map_err(|e| {
        let hint = if e.to_string().contains("not in ingest order") { " (--full-sort sorts them instead)" } else { "" };
        anyhow::anyhow!("{e}{hint}")
    })
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
