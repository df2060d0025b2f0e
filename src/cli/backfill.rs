//! `eventide backfill --pipeline <name>`: writes a new pipeline's windows before its
//! handover point (`live_from` in its file) from the archive, in one Delta commit per table;
//! the live run writes the windows from `live_from` on.
//!
//! The handover, as a user does it: add the pipeline with `live_from` a window boundary in
//! the near future and start (or restart) the live run with it; once the live watermark has
//! passed `live_from` + the window size + `allowed_lateness` (every window before it is then
//! final in the archive), run the backfill. It replays the whole archive in the live run's
//! order (so lateness is decided as live: its late events are the live run's) and keeps only
//! the windows starting before `live_from`, so no window is written by both and none is
//! missed. The commit carries `txn("eventide-backfill/<name>", live_from)`: a second run
//! (or one after a crash) adds nothing twice.

use std::process::ExitCode;

use clap::Args;
use eventide::lake_sql::LakeQuery;
use eventide::replay::ArchiveFilter;
use eventide::sink::delta::{DeltaLog, NewFile};
use eventide::sink::lake::Lake;
use eventide::window::spec::WindowKind;
use eventide::window::{Pipelines, check_dir};

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The pipeline to backfill: its file sets `live_from`.
    #[arg(long)]
    pub pipeline: String,
    /// The live run's lake (the archive is read from `<lake>/events`, the tables written there).
    #[arg(long, default_value = "./lake", env = "EVENTIDE_LAKE")]
    pub lake: String,
    #[arg(long, default_value = "pipelines", env = "EVENTIDE_PIPELINES")]
    pub pipelines: String,
}

pub async fn run(a: BackfillArgs) -> anyhow::Result<ExitCode> {
    let specs = match check_dir(std::path::Path::new(&a.pipelines)).await {
        Ok(list) => list,
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some((spec, compiled)) = specs.into_iter().find(|(s, _)| s.name == a.pipeline) else {
        anyhow::bail!("no pipeline named {:?} in {}", a.pipeline, a.pipelines);
    };
    let file = spec.file.display().to_string();
    let Some(live_from) = spec.live_from else {
        anyhow::bail!(
            "{file}: set `live_from = \"<RFC 3339>\"` (a window boundary): the live run writes the windows from it \
             on, the backfill the ones before"
        );
    };
    let size = match spec.window {
        WindowKind::Tumbling { size } | WindowKind::Hopping { size, .. } => size,
        WindowKind::Session { .. } => unreachable!("live_from is refused for sessions"),
    };
    let lake = Lake::open(&a.lake)?;
    let Some(table) = DeltaLog::load(&lake, &spec.name).await? else {
        anyhow::bail!(
            "{}/{}: not a Delta table. Backfill needs table_format = \"delta\" (its rows land in one atomic, \
             repeatable commit); with plain Parquet, replay the archive into another lake instead",
            a.lake,
            spec.name
        );
    };
    let app = format!("eventide-backfill/{}", spec.name);
    let late = DeltaLog::load(&lake, eventide::window::LATE_TABLE).await?;
    let late_done = match &late {
        Some(t) => backfilled(t, &app, live_from).await,
        None => false,
    };
    if backfilled(&table, &app, live_from).await && late_done {
        println!("{}: already backfilled up to {}", spec.name, fmt_time(live_from));
        return Ok(ExitCode::SUCCESS);
    }

    // Every window before live_from must be final: the archive must reach past its end.
    let q = LakeQuery::open(&lake, &[]).await?;
    let (_, b) = q.sql("SELECT CAST(max(event_time) AS BIGINT) FROM events").await?;
    let newest = b
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map(|c| c.value(0)))
        .unwrap_or(i64::MIN);
    let needed = live_from + size + spec.allowed_lateness_us + spec.watermark_us;
    if newest < needed {
        anyhow::bail!(
            "the archive reaches {}; the windows before live_from ({}) are final once events up to {} are archived \
             (live_from + window + allowed_lateness + watermark): run the backfill later",
            fmt_time(newest),
            fmt_time(live_from),
            fmt_time(needed)
        );
    }

    let mut pipelines = Pipelines::new(vec![(spec.clone(), compiled)])?;
    pipelines.backfill_only();
    let mut log = DeltaLog::new(lake.clone());
    for d in pipelines.table_decls() {
        log.declare(d);
    }
    if let Some((_, why)) = log.prepare().await?.into_iter().next() {
        anyhow::bail!(why);
    }
    let s = super::replay::archive_into(&lake, &ArchiveFilter::default(), pipelines, &lake, false).await?;
    let files: Vec<NewFile> =
        s.files.iter().map(|f| NewFile { path: f.path.clone(), rows: f.rows, bytes: f.bytes }).collect();
    log.commit(&app, live_from as u64, &files).await?;
    let rows: u64 = s.files.iter().map(|f| f.rows).sum();
    println!(
        "{}: backfilled the windows before {} from {} archived events in {:.2}s: {rows} rows ({} file(s), \
         table and late events)",
        spec.name,
        fmt_time(live_from),
        s.accepted,
        s.elapsed.as_secs_f64(),
        s.files.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether `table` has the backfill commit of `app` up to `live_from`.
async fn backfilled(table: &deltalake_core::DeltaTable, app: &str, live_from: i64) -> bool {
    let Ok(snapshot) = table.snapshot() else { return false };
    let v = snapshot.transaction_version(table.log_store().as_ref(), app).await;
    v.ok().flatten().is_some_and(|v| v >= live_from)
}

fn fmt_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(|| us.to_string(), |t| t.to_rfc3339())
}
