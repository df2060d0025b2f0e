//! `emit = "updates"` tables in Delta: a commit that writes a window again (a new revision)
//! removes that window's earlier rows in the same commit, so every version of the table
//! holds each window once, at its latest revision.
//!
//! The windows a commit writes are the `window_start` values of its new files (a revision
//! carries all of a window's rows). Earlier rows of those windows can only be in files of
//! the same `window_date` partition; of those, the files whose `window_start` statistics
//! overlap are read, and each that holds such rows is removed, its other rows rewritten
//! into a file named after it and the commit's version (so a retried commit writes the
//! same file again, and a crashed one leaves only an unreferenced file behind).

use std::collections::{HashMap, HashSet};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::TimestampMicrosecondType;
use deltalake_core::kernel::Action;
use deltalake_core::table::state::DeltaTableState;
use futures::TryStreamExt;
use object_store::PutPayload;
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::file::metadata::ParquetMetaDataReader;

use super::{NewFile, TableDecl, delta_err, new_add, path_partitions, relative, stats};
use crate::error::Result;
use crate::sink::lake::Lake;

/// The column naming a window.
const WINDOW_COLUMN: &str = "window_start";

/// Reads a whole Parquet file of the lake.
pub(crate) async fn read_file(lake: &Lake, path: &str, size: u64) -> Result<Vec<RecordBatch>> {
    let reader = crate::sink::file::LakeFile::new(lake.store().clone(), Path::from(path), size);
    let stream = ParquetRecordBatchStreamBuilder::new(reader).await?.build()?;
    Ok(stream.try_collect().await?)
}

fn window_starts(batches: &[RecordBatch], root: &str) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for b in batches {
        let i = b.schema().index_of(WINDOW_COLUMN).map_err(|e| delta_err(root, e))?;
        let col = b
            .column(i)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| delta_err(root, "window_start is not a timestamp"))?;
        out.extend(col.values().iter().copied());
    }
    Ok(out)
}

/// The `window_start` range of a file by its statistics (µs), `None` when it has none.
fn stats_range(stats: Option<String>) -> Option<(i64, i64)> {
    let v: serde_json::Value = serde_json::from_str(&stats?).ok()?;
    let t = |k: &str| -> Option<i64> {
        let s = v.get(k)?.get(WINDOW_COLUMN)?.as_str()?;
        Some(chrono::DateTime::parse_from_rfc3339(s).ok()?.timestamp_micros())
    };
    Some((t("minValues")?, t("maxValues")?))
}

/// The actions that remove the earlier rows of the windows `files` write.
pub(super) async fn plan(
    lake: &Lake,
    decl: &TableDecl,
    snapshot: &DeltaTableState,
    files: &[&NewFile],
    version: i64,
) -> Result<Vec<Action>> {
    let root = decl.root.as_str();
    // Per partition (its `key=value` directories), the windows written now.
    let mut written: HashMap<Vec<(String, Option<String>)>, HashSet<i64>> = HashMap::new();
    let mut new_paths = HashSet::new();
    for f in files {
        let starts = window_starts(&read_file(lake, &f.path, f.bytes).await?, root)?;
        written.entry(partition_key(path_partitions(&f.path, &decl.partitions))).or_default().extend(starts);
        new_paths.insert(relative(root, &f.path));
    }
    let mut actions = Vec::new();
    for file in snapshot.log_data().iter() {
        let rel = file.path().into_owned();
        if new_paths.contains(&rel) {
            continue;
        }
        let Some(windows) = written.get(&partition_key(file.partition_values_map())) else { continue };
        let (lo, hi) = (windows.iter().min().copied().unwrap_or(0), windows.iter().max().copied().unwrap_or(0));
        if let Some((min, max)) = stats_range(file.stats())
            && (max < lo || min > hi)
        {
            continue;
        }
        let path = format!("{root}/{rel}");
        let batches = read_file(lake, &path, file.size() as u64).await?;
        let mut kept = Vec::new();
        let mut removed_rows = 0;
        for b in &batches {
            let starts = window_starts(std::slice::from_ref(b), root)?;
            let keep = BooleanArray::from(starts.iter().map(|s| !windows.contains(s)).collect::<Vec<_>>());
            removed_rows += keep.false_count();
            kept.push(filter_record_batch(b, &keep)?);
        }
        if removed_rows == 0 {
            continue;
        }
        actions.push(Action::Remove(file.remove_action(true)));
        let rest = concat_batches(&decl.schema, &kept)?;
        if rest.num_rows() == 0 {
            continue;
        }
        let bytes = crate::sink::table::encode(&rest).await?;
        let meta = ParquetMetaDataReader::new().parse_and_finish(&bytes::Bytes::from(bytes.clone()))?;
        let stem = rel.strip_suffix(".parquet").unwrap_or(&rel);
        let rel_new = format!("{stem}-r{version}.parquet");
        let len = bytes.len() as u64;
        lake.put_atomic(&Path::from(format!("{root}/{rel_new}")), PutPayload::from(bytes)).await?;
        let st = stats::of_metadata(&meta, &decl.schema).to_string();
        actions.push(Action::Add(new_add(&rel_new, file.partition_values_map(), len, st)));
    }
    Ok(actions)
}

fn partition_key(map: HashMap<String, Option<String>>) -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort();
    v
}
