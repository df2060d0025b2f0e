//! The archive replay over [`LiveOrder`]: the runs of rows it yields (in the live run's
//! order) are cut into chunks, each chunk's `events` batches (base columns and every
//! pipeline's declared fields, extracted from `data`/`metadata`) are built on every core, and
//! the windows take them in order on their own thread, as the JSON-lines replay does. The
//! files decode on the runtime's tasks meanwhile; the merge runs on a thread of its own.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::ReplaySummary;
use super::archive::{ArchiveFilter, EventRows};
use crate::error::{Error, Result};
use crate::events::Col;
use crate::sink::lake::Lake;
use crate::sink::merge::{ArchiveBatch, LiveOrder};
use crate::window::columns::{ALWAYS_USED, EventColumns};
use crate::window::{BATCH_ROWS, PipelineSpec, Pipelines};

/// Runs of rows in live order, numbered.
struct Chunk {
    seq: u64,
    runs: Vec<(Arc<ArchiveBatch>, Range<usize>)>,
}

/// A chunk's `events` batches (one per pipeline) and how many events it held.
struct Built {
    seq: u64,
    batches: Vec<RecordBatch>,
    events: u64,
}

/// The archived events `order` yields ([`LiveOrder`] over [`super::archive_files`]) that
/// `filter` selects, through `pipelines` with `streams` declared; every window closes at
/// the end and the tables are written to `lake`.
pub async fn run_archive_merged(
    order: LiveOrder,
    filter: &ArchiveFilter,
    streams: &[String],
    mut pipelines: Pipelines,
    lake: &Lake,
) -> Result<ReplaySummary> {
    let started = Instant::now();
    pipelines.declare_streams(streams);
    let mut order = order;
    order.project(&read_columns(&pipelines));
    let handle = tokio::runtime::Handle::current();
    let filter = filter.clone();
    let (mut pipelines, mut summary) = tokio::task::spawn_blocking(move || replay(handle, order, &filter, pipelines))
        .await
        .map_err(|e| Error::Internal(format!("archive replay thread: {e}")))??;
    pipelines.flush()?;
    summary.files = pipelines.commit(lake, "replay").await?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The archive columns the pipelines need: the ones every pipeline reads, the base columns
/// some SQL uses, and `data` / `metadata` when a declared field comes from it.
fn read_columns(pipelines: &Pipelines) -> Vec<&'static str> {
    let mut cols: Vec<&'static str> = ALWAYS_USED.iter().map(|c| c.name()).collect();
    cols.extend(pipelines.used_base_columns().iter().map(|c| c.name()));
    for q in pipelines.queries() {
        for f in &q.spec.fields {
            cols.push(if f.path[0] == "data" { Col::Data.name() } else { Col::Metadata.name() });
        }
    }
    cols.sort_unstable();
    cols.dedup();
    cols
}

fn replay(
    handle: tokio::runtime::Handle,
    mut order: LiveOrder,
    filter: &ArchiveFilter,
    pipelines: Pipelines,
) -> Result<(Pipelines, ReplaySummary)> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let specs: Vec<PipelineSpec> = pipelines.queries().iter().map(|q| q.spec.clone()).collect();
    let schemas: Vec<SchemaRef> = pipelines.queries().iter().map(|q| q.input_schema()).collect();
    let used = pipelines.used_base_columns();
    let mut summary = ReplaySummary::default();
    std::thread::scope(|scope| -> Result<Pipelines> {
        let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(workers * 2);
        let chunk_rx = Arc::new(Mutex::new(chunk_rx));
        let (out_tx, out_rx) = sync_channel::<Result<Built>>(workers * 2);
        // The merge: runs of rows in order, cut into chunks of about a window batch.
        let merge = scope.spawn(move || -> Result<()> {
            let (mut seq, mut runs, mut rows) = (0, Vec::new(), 0);
            while let Some((batch, range)) = handle.block_on(order.next())? {
                rows += range.len();
                runs.push((batch, range));
                if rows >= BATCH_ROWS {
                    if chunk_tx.send(Chunk { seq, runs: std::mem::take(&mut runs) }).is_err() {
                        return Ok(());
                    }
                    (seq, rows) = (seq + 1, 0);
                }
            }
            if !runs.is_empty() {
                let _ = chunk_tx.send(Chunk { seq, runs });
            }
            Ok(())
        });
        let schemas = &schemas;
        super::column_workers(scope, workers, &chunk_rx, out_tx, &specs, &used, |chunk: Chunk, cols| {
            build(&chunk, filter, cols, schemas)
        });
        let (win_tx, win_rx) = sync_channel::<Vec<RecordBatch>>(2);
        let windows = scope.spawn(move || -> Result<Pipelines> {
            let mut pipelines = pipelines;
            for batches in win_rx {
                pipelines.process_batches(&batches, None)?;
            }
            Ok(pipelines)
        });
        // Chunks come back in any order; the windows take them in order.
        let (mut waiting, mut next) = (BTreeMap::new(), 0u64);
        let mut failed = None;
        for built in out_rx {
            let built = match built {
                Ok(b) => b,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            waiting.insert(built.seq, built);
            while let Some(b) = waiting.remove(&next) {
                next += 1;
                (summary.lines, summary.accepted) = (summary.lines + b.events, summary.accepted + b.events);
                if win_tx.send(b.batches).is_err() {
                    break;
                }
            }
        }
        drop(win_tx);
        let pipelines = windows.join().map_err(|_| Error::Internal("the window thread panicked".into()))??;
        merge.join().map_err(|_| Error::Internal("the merge thread panicked".into()))??;
        match failed {
            Some(e) => Err(e),
            None => Ok(pipelines),
        }
    })
    .map(|p| (p, summary))
}

/// The `events` batches of one chunk's rows (each archive batch's columns looked up once
/// per chunk, not per run).
fn build(chunk: &Chunk, filter: &ArchiveFilter, cols: &mut EventColumns, schemas: &[SchemaRef]) -> Result<Built> {
    let mut events = 0;
    let mut typed: Vec<(*const ArchiveBatch, EventRows)> = Vec::new();
    for (batch, range) in &chunk.runs {
        let key = Arc::as_ptr(batch);
        let at = match typed.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                typed.push((key, EventRows::new(&batch.batch)?));
                typed.len() - 1
            }
        };
        let rows = &typed[at].1;
        events += rows.each(range.clone(), Some(&batch.ids), filter, |ev, stream, id| cols.append(ev, stream, id))?;
    }
    Ok(Built { seq: chunk.seq, batches: cols.finish(schemas)?, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pipelines(texts: &[&str]) -> Pipelines {
        let dir = tempfile::tempdir().unwrap();
        for (i, t) in texts.iter().enumerate() {
            std::fs::write(dir.path().join(format!("p{i}.toml")), t).unwrap();
        }
        Pipelines::new(crate::window::check_dir(dir.path()).await.expect("valid pipelines")).unwrap()
    }

    #[tokio::test]
    async fn the_replay_reads_only_the_columns_its_pipelines_use() {
        let data = r#"window = { kind = "tumbling", size = "1m" }
fields = { amount = "double" }
sql = "SELECT event_type, sum(amount) AS revenue FROM events GROUP BY event_type"
"#;
        let meta = r#"window = { kind = "tumbling", size = "1m" }
fields = { tenant = { path = "metadata.tenant", type = "string" } }
sql = "SELECT tenant, count(*) AS n, count(DISTINCT correlation_id) AS c FROM events GROUP BY tenant"
"#;
        let cols = read_columns(&pipelines(&[data]).await);
        assert_eq!(cols, ["data", "event_id", "event_time", "event_type", "stream", "stream_id"]);
        let cols = read_columns(&pipelines(&[meta]).await);
        assert!(cols.contains(&"metadata") && cols.contains(&"correlation_id") && !cols.contains(&"data"), "{cols:?}");
        let cols = read_columns(&pipelines(&[data, meta]).await);
        assert!(cols.contains(&"metadata") && cols.contains(&"data") && !cols.contains(&"traceparent"), "{cols:?}");
    }
}
