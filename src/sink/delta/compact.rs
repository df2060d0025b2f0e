//! Compaction of a Delta table (`eventide compact`): per partition (and directory: the
//! archive's `event_type=` directories stay one type each), the files below the
//! target size are rewritten into files of about that size, **one commit per partition**
//! removing the old files and adding the new ones (`dataChange = false`, an `OPTIMIZE`), so
//! a reader of any version sees every row exactly once, before or after.
//!
//! It runs beside a live run: live commits are blind appends (no conflict) and new files
//! simply stay for the next compaction; a commit that removed one of the files being
//! compacted (an `emit = "updates"` revision) makes the partition's compaction conflict and
//! it is skipped (its new file deleted) until the next round; a revision planned before a
//! compaction landed fails its commit and is planned again on the compacted files (delta-rs
//! would let it through: its conflict checker ignores `dataChange = false` removals, so the
//! revision it replaced would live on in the compacted file). The old files stay on storage
//! for readers of older versions until [`vacuum`] deletes those removed longer ago than the
//! retention period.
//!
//! Memory: one output file at a time (up to the target size, encoded) plus one row group.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use deltalake_core::kernel::Action;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake_core::protocol::DeltaOperation;
use futures::TryStreamExt;
use object_store::PutPayload;
use object_store::path::Path;
use parquet::arrow::{ArrowWriter, ParquetRecordBatchStreamBuilder};
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::properties::WriterProperties;

use super::{DeltaLog, delta_err, new_add, stats};
use crate::error::Result;
use crate::sink::lake::Lake;

/// What a compaction does.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Files of at least this size are left alone; others are packed up to it.
    pub target_bytes: u64,
    /// How output files are encoded (the archive's or the tables' properties).
    pub props: WriterProperties,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub partitions: usize,
    pub files_removed: usize,
    pub files_added: usize,
    pub rows: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Partitions skipped because a concurrent commit removed one of their files.
    pub conflicts: usize,
}

struct Small {
    rel: String,
    size: u64,
    view_remove: deltalake_core::kernel::Remove,
}

/// Compacts the Delta table at `root` of `lake`.
pub async fn compact(lake: &Lake, root: &str, opts: &CompactOptions) -> Result<CompactReport> {
    let Some(table) = DeltaLog::load(lake, root).await? else {
        return Err(delta_err(root, "not a Delta table (no _delta_log)"));
    };
    let snapshot = table.snapshot().map_err(|e| delta_err(root, e))?;
    let mut by_partition: BTreeMap<Vec<(String, Option<String>)>, Vec<Small>> = BTreeMap::new();
    for f in snapshot.log_data().iter() {
        if (f.size() as u64) < opts.target_bytes {
            // Per directory: the archive's `event_type=` directories stay one type each.
            let mut key: Vec<_> = f.partition_values_map().into_iter().collect();
            key.sort();
            let dir = f.path().rsplit_once('/').map_or(String::new(), |(d, _)| d.to_string());
            key.push((String::from("/"), Some(dir)));
            let view_remove = f.remove_action(false);
            by_partition.entry(key).or_default().push(Small {
                rel: f.path().into_owned(),
                size: f.size() as u64,
                view_remove,
            });
        }
    }
    let mut report = CompactReport::default();
    let mut latest: Option<deltalake_core::table::state::DeltaTableState> = None;
    let stamp = chrono::Utc::now().timestamp_millis();
    let mut n = 0;
    for (key, mut files) in by_partition {
        if files.len() < 2 {
            continue;
        }
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        let partitions: std::collections::HashMap<_, _> = key.into_iter().filter(|(k, _)| k != "/").collect();
        let dir = files[0].rel.rsplit_once('/').map_or(String::new(), |(d, _)| format!("{d}/"));
        let mut actions = Vec::new();
        let mut written = Vec::new();
        for group in pack(&files, opts.target_bytes) {
            if group.len() < 2 {
                continue;
            }
            n += 1;
            let rel = format!("{dir}part-{stamp}-compact-{n:06}.parquet");
            let (bytes, rows, schema) = rewrite(lake, root, &group, &opts.props).await?;
            let meta = ParquetMetaDataReader::new().parse_and_finish(&bytes::Bytes::from(bytes.clone()))?;
            let len = bytes.len() as u64;
            let path = Path::from(format!("{root}/{rel}"));
            lake.put_atomic(&path, PutPayload::from(bytes)).await?;
            written.push(path);
            let mut add = new_add(&rel, partitions.clone(), len, stats::of_metadata(&meta, &schema).to_string());
            add.data_change = false;
            actions.extend(group.iter().map(|f| Action::Remove(f.view_remove.clone())));
            actions.push(Action::Add(add));
            report.files_removed += group.len();
            report.files_added += 1;
            report.rows += rows;
            report.bytes_read += group.iter().map(|f| f.size).sum::<u64>();
            report.bytes_written += len;
        }
        if actions.is_empty() {
            continue;
        }
        let op = DeltaOperation::Optimize { predicate: None, target_size: opts.target_bytes as i64 };
        let commit = CommitBuilder::from(CommitProperties::default())
            .with_actions(actions)
            .build(Some(latest.as_ref().unwrap_or(snapshot) as &dyn TableReference), table.log_store(), op)
            .await;
        match commit {
            Ok(done) => {
                // The next partition's commit builds on this one (no conflict check to pass).
                latest = Some(done.snapshot());
                report.partitions += 1;
            }
            Err(e) => {
                tracing::warn!(table = root, error = %e, "Compaction of a partition conflicted with a commit; skipped.");
                for p in written {
                    lake.delete(&p).await?;
                }
                report.conflicts += 1;
            }
        }
    }
    Ok(report)
}

/// Groups of consecutive files of at most `target` bytes together.
fn pack(files: &[Small], target: u64) -> Vec<Vec<&Small>> {
    let mut out: Vec<Vec<&Small>> = Vec::new();
    let mut size = 0;
    for f in files {
        match out.last_mut() {
            Some(g) if size + f.size <= target => g.push(f),
            _ => {
                out.push(vec![f]);
                size = 0;
            }
        }
        size += f.size;
    }
    out
}

/// The rows of `group`, in order, as one Parquet file: the archive's merged in live order
/// (each file is in it, and so stays the result: replays merge instead of sorting), other
/// tables' file after file.
async fn rewrite(
    lake: &Lake,
    root: &str,
    group: &[&Small],
    props: &WriterProperties,
) -> Result<(Vec<u8>, u64, SchemaRef)> {
    let Some(first) = group.first() else { return Err(delta_err(root, "nothing to compact")) };
    let reader =
        crate::sink::file::LakeFile::new(lake.store().clone(), Path::from(format!("{root}/{}", first.rel)), first.size);
    let schema = ParquetRecordBatchStreamBuilder::new(reader).await?.schema().clone();
    if crate::sink::merge::has_live_order(&schema) {
        let files = group.iter().map(|f| (Path::from(format!("{root}/{}", f.rel)), f.size)).collect();
        let mut order = crate::sink::merge::LiveOrder::open(lake.store().clone(), files, 8192).await?;
        let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))?;
        let mut rows = 0;
        while let Some((batch, range)) = order.next().await? {
            rows += range.len() as u64;
            let part = batch.batch.slice(range.start, range.len());
            w.write(&arrow::array::RecordBatch::try_new(schema.clone(), part.columns().to_vec())?)?;
        }
        return Ok((w.into_inner()?, rows, schema));
    }
    // The files' own schema (the first file's; the table has one).
    let mut out: Option<(ArrowWriter<Vec<u8>>, SchemaRef)> = None;
    let mut rows = 0;
    for f in group {
        let reader =
            crate::sink::file::LakeFile::new(lake.store().clone(), Path::from(format!("{root}/{}", f.rel)), f.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
        if out.is_none() {
            let schema = builder.schema().clone();
            out = Some((ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))?, schema));
        }
        let Some((w, schema)) = out.as_mut() else { continue };
        let mut stream = builder.build()?;
        while let Some(batch) = stream.try_next().await? {
            rows += batch.num_rows() as u64;
            let batch = arrow::array::RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
            w.write(&batch)?;
        }
    }
    let (w, schema) = out.ok_or_else(|| delta_err(root, "nothing to compact"))?;
    Ok((w.into_inner()?, rows, schema))
}

/// Deletes the files of `root` that the table stopped referencing longer than `retention`
/// ago (and that no version newer than that needs); returns how many.
pub async fn vacuum(lake: &Lake, root: &str, retention: Duration) -> Result<usize> {
    let Some(table) = DeltaLog::load(lake, root).await? else {
        return Err(delta_err(root, "not a Delta table (no _delta_log)"));
    };
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(chrono::Duration::from_std(retention).map_err(|e| delta_err(root, e))?)
        .with_enforce_retention_duration(false)
        .await
        .map_err(|e| delta_err(root, e))?;
    Ok(metrics.files_deleted.len())
}
