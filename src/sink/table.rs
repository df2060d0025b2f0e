//! Pipeline output tables: closed windows (and late events) buffered in memory and written
//! at each commit as one Parquet file per table and date partition,
//! `<table>/[<part>=<value>/]window_date=YYYY-MM-DD/part-<ms>-<writer>-<n>.parquet`.
//!
//! Files appear atomically ([`Lake::put_atomic`]), so a reader globbing the table sees whole
//! files only; one file per commit interval keeps them few and large.

use std::collections::BTreeMap;

use arrow::array::{AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{Int32Type, SchemaRef, TimestampMicrosecondType};
use object_store::PutPayload;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::archive::CommittedFile;
use super::lake::{Lake, Placement};
use crate::decode::timestamp::civil_from_days;
use crate::error::Result;

const DAY_US: i64 = 86_400_000_000;

/// Rows of one table waiting for the next commit, by day of `window_start`.
pub struct TableBuffer {
    /// Path prefix inside the lake (`<pipeline>` or `late_events/pipeline=<name>`).
    prefix: String,
    schema: SchemaRef,
    /// Index of the timestamp column that picks the date partition.
    date_column: usize,
    days: BTreeMap<i64, Vec<RecordBatch>>,
    /// Rows pushed since the last checkpoint saved them ([`TableBuffer::take_unsaved`]).
    unsaved: Vec<RecordBatch>,
    rows: usize,
    files: u64,
    /// When the oldest buffered row arrived.
    since: Option<std::time::Instant>,
    /// Write only each window's highest `revision` (a Delta `emit = "updates"` table, where a
    /// revision replaces the window's rows: older ones in the same file would show twice).
    latest_only: bool,
    /// Only rows of windows starting in `[from, before)` are kept (a pipeline's handover
    /// point between the live run and a backfill).
    windows: (i64, i64),
}

impl TableBuffer {
    pub fn new(prefix: String, schema: SchemaRef, date_column: usize) -> Self {
        TableBuffer {
            prefix,
            schema,
            date_column,
            days: BTreeMap::new(),
            unsaved: Vec::new(),
            rows: 0,
            files: 0,
            since: None,
            latest_only: false,
            windows: (i64::MIN, i64::MAX),
        }
    }

    /// Keeps only rows of windows starting in `[from, before)`; others are dropped at push.
    pub fn keep_windows(&mut self, from: i64, before: i64) {
        self.windows = (from, before);
    }

    /// Writes only each window's latest revision (see the field).
    pub fn keep_latest_revisions(&mut self) {
        self.latest_only = self.schema.index_of(REVISION).is_ok() && self.schema.index_of(WINDOW).is_ok();
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// How long the oldest buffered row has waited.
    pub fn age(&self) -> Option<std::time::Duration> {
        self.since.map(|s| s.elapsed())
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The table's path prefix (names it in checkpoints).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The rows waiting for the next commit.
    pub fn buffered(&self) -> Vec<RecordBatch> {
        self.days.values().flatten().cloned().collect()
    }

    /// The rows pushed since the last call (or commit): what a checkpoint has not saved yet.
    pub fn take_unsaved(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.unsaved)
    }

    /// Buffers a batch, split by date.
    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        let batch = match self.windows {
            (i64::MIN, i64::MAX) => batch,
            (from, before) => match batch.schema().index_of(WINDOW) {
                Ok(w) => {
                    let starts = batch.column(w).as_primitive::<TimestampMicrosecondType>();
                    let keep: BooleanArray = starts.iter().map(|s| s.map(|s| (from..before).contains(&s))).collect();
                    filter_record_batch(&batch, &keep)?
                }
                Err(_) => batch,
            },
        };
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.rows += n;
        self.unsaved.push(batch.clone());
        self.since.get_or_insert_with(std::time::Instant::now);
        let col = batch.column(self.date_column).as_primitive::<TimestampMicrosecondType>();
        let day = |i: usize| col.value(i).div_euclid(DAY_US);
        let first = day(0);
        if (1..n).all(|i| day(i) == first) {
            self.days.entry(first).or_default().push(batch);
            return Ok(());
        }
        let mut by_day: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for i in 0..n {
            by_day.entry(day(i)).or_default().push(i as u32);
        }
        for (d, idx) in by_day {
            let part = take_record_batch(&batch, &UInt32Array::from(idx))?;
            self.days.entry(d).or_default().push(part);
        }
        Ok(())
    }

    /// Writes every buffered day as one file; returns what became visible.
    pub async fn commit(&mut self, lake: &Lake, writer: &str, placement: &Placement) -> Result<Vec<CommittedFile>> {
        let mut out = Vec::new();
        let stamp = chrono::Utc::now().timestamp_millis();
        for (day, batches) in std::mem::take(&mut self.days) {
            let mut batch = concat_batches(&self.schema, &batches)?;
            if self.latest_only {
                batch = latest_revisions(&batch)?;
            }
            let rows = batch.num_rows() as u64;
            let bytes = encode(&batch).await?;
            self.files += 1;
            let (y, m, d) = civil_from_days(day);
            let path = Path::from(format!(
                "{}/window_date={y:04}-{m:02}-{d:02}/part-{stamp}-{writer}-{:06}.parquet",
                self.prefix, self.files
            ));
            let len = bytes.len() as u64;
            let staged = lake.write_file(&path, PutPayload::from(bytes), placement).await?;
            out.push(CommittedFile { path: path.to_string(), rows, bytes: len, staged });
        }
        self.rows = 0;
        self.since = None;
        self.unsaved.clear();
        Ok(out)
    }
}

const WINDOW: &str = "window_start";
const REVISION: &str = "revision";

/// The rows of each window's highest revision.
fn latest_revisions(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    let (Ok(w), Ok(r)) = (schema.index_of(WINDOW), schema.index_of(REVISION)) else { return Ok(batch.clone()) };
    let starts = batch.column(w).as_primitive::<TimestampMicrosecondType>();
    let revs = batch.column(r).as_primitive::<Int32Type>();
    let mut top: BTreeMap<i64, i32> = BTreeMap::new();
    for i in 0..batch.num_rows() {
        let e = top.entry(starts.value(i)).or_insert(0);
        *e = (*e).max(revs.value(i));
    }
    let keep: BooleanArray = (0..batch.num_rows()).map(|i| Some(top[&starts.value(i)] == revs.value(i))).collect();
    Ok(filter_record_batch(batch, &keep)?)
}

/// How table files are encoded (also by a compaction of a table).
pub fn writer_props() -> Result<WriterProperties> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_created_by(format!("eventide {}", env!("CARGO_PKG_VERSION")))
        .build())
}

/// Encodes a batch as a zstd Parquet file on the encoding pool.
pub(crate) async fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    let batch = batch.clone();
    crate::pool::spawn(move || {
        let props = writer_props()?;
        let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 2 + 1024);
        let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
        w.write(&batch)?;
        w.close()?;
        Ok::<_, crate::error::Error>(buf)
    })
    .await?
}
