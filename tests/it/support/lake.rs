//! Reads the archive back from disk with the parquet crate, as an analyst's tool would.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// One archived row, keyed by event_id in [`read_archive`]'s result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub event_type: String,
    pub event_time_us: i64,
    pub stream: String,
    pub stream_id: String,
    pub correlation_id: Option<String>,
    pub source: Option<String>,
    pub traceparent: Option<String>,
    pub data: Option<String>,
    /// The file's partition directories.
    pub partition: String,
}

/// All `events/**/*.parquet` rows under `lake`; panics on a duplicate event_id.
pub fn read_archive(lake: &Path) -> BTreeMap<String, Row> {
    let mut out = BTreeMap::new();
    for (id, row) in scan(lake) {
        assert!(out.insert(id.clone(), row).is_none(), "duplicate row for event {id}");
    }
    out
}

fn scan(lake: &Path) -> Vec<(String, Row)> {
    let mut out = Vec::new();
    let mut stack = vec![lake.join("events")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            assert!(p.extension().is_some_and(|x| x == "parquet"), "stray file in the table: {}", p.display());
            let partition = p.parent().unwrap().strip_prefix(lake.join("events")).unwrap().display().to_string();
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap()).unwrap().build().unwrap();
            for batch in reader {
                out.extend(rows(&batch.unwrap(), &partition));
            }
        }
    }
    out
}

fn rows(b: &RecordBatch, partition: &str) -> Vec<(String, Row)> {
    let s = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
    let (ids, types, streams, sids, corr, src, tp, data) = (
        s("event_id"),
        s("event_type"),
        s("stream"),
        s("stream_id"),
        s("correlation_id"),
        s("source"),
        s("traceparent"),
        s("data"),
    );
    let times = b.column_by_name("event_time").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
    let opt = |a: &arrow::array::StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
    (0..b.num_rows())
        .map(|i| {
            (
                ids.value(i).to_string(),
                Row {
                    event_type: types.value(i).to_string(),
                    event_time_us: times.value(i),
                    stream: streams.value(i).to_string(),
                    stream_id: sids.value(i).to_string(),
                    correlation_id: opt(&corr, i),
                    source: opt(&src, i),
                    traceparent: opt(&tp, i),
                    data: opt(&data, i),
                    partition: partition.to_string(),
                },
            )
        })
        .collect()
}

/// Rows as text, floats rounded (sums in another order differ in the last bits).
pub fn text_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| match c.as_any().downcast_ref::<Float64Array>() {
                    Some(f) if f.is_valid(i) => format!("{:.4}", f.value(i)),
                    _ => arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default())
                        .unwrap()
                        .value(i)
                        .to_string(),
                })
                .collect();
            out.push(cells.join(","));
        }
    }
    out.sort();
    out
}

/// A pipeline table of `lake` as sorted text rows (see [`text_rows`]).
pub async fn table(
    lake: &eventide::sink::lake::Lake,
    pipelines: &eventide::window::Pipelines,
    name: &str,
) -> Vec<String> {
    let q = eventide::lake_sql::LakeQuery::open(lake, &pipelines.output_schemas()).await.unwrap();
    text_rows(&q.sql(&format!("SELECT * EXCEPT (window_date) FROM {name}")).await.unwrap().1)
}
