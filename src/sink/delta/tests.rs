//! An `emit = "updates"` table under commits and compactions at once, in process: whatever
//! order their commits land in, the table's last version holds each window once, at its
//! latest revision (a compaction that moved an old revision into a new file while a commit
//! replaced it once kept both: delta-rs's retry does not see `dataChange = false` removals).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{AsArray, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit, TimestampMicrosecondType};
use object_store::PutPayload;
use object_store::path::Path;

use super::compact::{CompactOptions, compact};
use super::replace::read_file;
use super::{DeltaLog, Kind, NewFile, TableDecl};
use crate::sink::lake::Lake;

const ROOT: &str = "t";
const MINUTE_US: i64 = 60_000_000;

fn decl() -> TableDecl {
    let schema = Arc::new(Schema::new(vec![
        Field::new("window_start", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("revision", DataType::Int64, false),
    ]));
    TableDecl {
        root: ROOT.into(),
        schema,
        partitions: vec!["window_date".into()],
        kind: Kind::ReplaceWindows,
        source: "test".into(),
    }
}

/// Revision `rev` of window `w`, as a file of the table.
async fn revision(lake: &Lake, decl: &TableDecl, w: i64, rev: i64) -> NewFile {
    let start = 1_780_000_000_000_000 / MINUTE_US * MINUTE_US + w * MINUTE_US;
    let batch = RecordBatch::try_new(
        decl.schema.clone(),
        vec![
            Arc::new(TimestampMicrosecondArray::from(vec![start]).with_timezone("UTC")),
            Arc::new(Int64Array::from(vec![rev])),
        ],
    )
    .unwrap();
    let bytes = crate::sink::table::encode(&batch).await.unwrap();
    let path = format!("{ROOT}/window_date=2026-05-28/part-{rev:04}.parquet");
    let len = bytes.len() as u64;
    lake.put_atomic(&Path::from(path.as_str()), PutPayload::from(bytes)).await.unwrap();
    NewFile { path, rows: 1, bytes: len }
}

/// Window start → the revisions the table's latest version holds for it.
async fn windows(lake: &Lake) -> BTreeMap<i64, Vec<i64>> {
    let table = DeltaLog::load(lake, ROOT).await.unwrap().unwrap();
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for f in table.snapshot().unwrap().log_data().iter() {
        for b in read_file(lake, &format!("{ROOT}/{}", f.path()), f.size() as u64).await.unwrap() {
            let starts = b.column_by_name("window_start").unwrap().as_primitive::<TimestampMicrosecondType>();
            let revs = b.column_by_name("revision").unwrap().as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                out.entry(starts.value(i)).or_default().push(revs.value(i));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_and_compactions_in_any_order_leave_one_revision_per_window() {
    let lake = Lake::open("memory://").unwrap();
    let mut log = DeltaLog::new(lake.clone());
    log.declare(decl());
    assert!(log.prepare().await.unwrap().is_empty());
    let done = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (lake, done) = (lake.clone(), done.clone());
        tokio::spawn(async move {
            let opts = CompactOptions { target_bytes: 64 << 20, props: crate::sink::table::writer_props().unwrap() };
            let (mut rounds, mut compacted) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                let report = compact(&lake, ROOT, &opts).await.unwrap();
                (rounds, compacted) = (rounds + 1, compacted + report.partitions);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            (rounds, compacted)
        })
    };
    // Window w gets revisions 2w and 2w + 1 (each one commit): the second must replace the
    // first wherever a compaction put it.
    let decl = decl();
    for rev in 0..100 {
        let file = revision(&lake, &decl, rev / 2, rev).await;
        log.commit("line", rev as u64 + 1, &[file]).await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let (rounds, compacted) = compactor.await.unwrap();
    assert!(compacted >= 3, "{compacted} compactions landed in {rounds} rounds: nothing raced");
    let seen = windows(&lake).await;
    assert_eq!(seen.len(), 50, "{seen:?}");
    for (i, (start, revs)) in seen.iter().enumerate() {
        assert_eq!(revs, &[2 * i as i64 + 1], "window {start}: revisions {revs:?}");
    }
}
