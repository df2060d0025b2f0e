//! `eventide replay <lake>/events`: the pipelines over the archive (the event store) instead
//! of JSON lines, e.g. a pipeline added after the events arrived. The archive holds every
//! accepted event once, with the stream it came from, its Redis entry id and when it was
//! ingested; [`archive_query`] reads them back in the order the live run processed them
//! (ingest time, then stream, then entry id: the events of one read batch share an ingest
//! time), and the archive's streams are declared as a run declares its own, so the windows,
//! late events and tables are those of the live run, over one stream or several. What the
//! archive cannot tell: a stream the run read without events, and the run's idle timeouts
//! (processing time).
//!
//! Two ways in: [`super::run_archive_merged`] (`replay/merged.rs`) reads the files themselves in that order
//! ([`crate::sink::merge::LiveOrder`]: every archive file is in it already, so a k-way merge
//! replaces a sort; this is what `eventide replay` uses), and [`run_archive`] takes the
//! batches of [`archive_query`] run by the caller (`lake_sql`, memory-bounded: the sort
//! spills), for archives whose files are not in live order.

use std::ops::Range;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::TimestampMicrosecondType;
use futures::{Stream, StreamExt};
use object_store::path::Path;

use super::ReplaySummary;
use crate::decode::Event;
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::events::Col;
use crate::sink::delta::DeltaLog;
use crate::sink::lake::Lake;
use crate::window::{BATCH_ROWS, Pipelines};

/// The archive's table root in a lake.
const ARCHIVE: &str = "events";

/// Which archived events to replay: event time in `[from_us, to_us)`, these event types.
#[derive(Debug, Clone, Default)]
pub struct ArchiveFilter {
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub event_types: Vec<String>,
}

/// The SQL over the lake's `events` table that reads `filter`'s events in live order.
pub fn archive_query(filter: &ArchiveFilter) -> String {
    let ts = |us: i64| format!("to_timestamp_micros({us})");
    // The UTC date of an event time, as the archive's `event_date=` directories name it (the
    // date conditions skip whole directories; the time conditions then cut inside them).
    let date = |us: i64| chrono::DateTime::from_timestamp_micros(us).map(|t| t.format("%Y-%m-%d").to_string());
    let mut cond = Vec::new();
    if let Some(f) = filter.from_us {
        cond.push(format!("event_time >= {}", ts(f)));
        cond.extend(date(f).map(|d| format!("event_date >= '{d}'")));
    }
    if let Some(t) = filter.to_us {
        cond.push(format!("event_time < {}", ts(t)));
        cond.extend(date(t.saturating_sub(1)).map(|d| format!("event_date <= '{d}'")));
    }
    if !filter.event_types.is_empty() {
        let quoted: Vec<String> = filter.event_types.iter().map(|t| format!("'{}'", t.replace('\'', "''"))).collect();
        cond.push(format!("event_type IN ({})", quoted.join(", ")));
    }
    let filter = if cond.is_empty() { String::new() } else { format!("WHERE {}", cond.join(" AND ")) };
    format!(
        "SELECT * FROM events {filter} ORDER BY ingest_time, stream, \
         CAST(split_part(stream_id, '-', 1) AS BIGINT), CAST(split_part(stream_id, '-', 2) AS BIGINT)"
    )
}

/// The SQL listing the streams the archive holds events of (a live run declares its streams:
/// each holds the watermark until its first event, and so does the replay).
pub const ARCHIVE_STREAMS: &str = "SELECT DISTINCT stream FROM events ORDER BY stream";

/// Feeds the archived events of `batches` (rows of [`archive_query`]) to `pipelines`, with
/// `streams` declared (see [`ARCHIVE_STREAMS`]), closes every window at the end and writes
/// the tables to `lake`. (The SQL path: [`super::run_archive_merged`] reads the files in
/// order without the query's sort.)
pub async fn run_archive(
    mut batches: impl Stream<Item = datafusion::error::Result<RecordBatch>> + Unpin,
    streams: &[String],
    mut pipelines: Pipelines,
    lake: &Lake,
) -> Result<ReplaySummary> {
    let started = Instant::now();
    pipelines.declare_streams(streams);
    let mut summary = ReplaySummary::default();
    let all = ArchiveFilter::default();
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| Error::Query { pipeline: "archive".into(), message: e.strip_backtrace() })?;
        feed(&batch, 0..batch.num_rows(), &all, &mut pipelines, &mut summary)?;
    }
    pipelines.flush()?;
    summary.files = pipelines.commit(lake, "replay").await?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The archive files of `source` that `filter` may need (by their `event_date=` and
/// `event_type=` directories), with their sizes: a Delta archive's files of its latest
/// version, else every `.parquet` file under `events/`.
pub async fn archive_files(source: &Lake, filter: &ArchiveFilter) -> Result<Vec<(Path, u64)>> {
    let mut files = Vec::new();
    match DeltaLog::load(source, ARCHIVE).await? {
        Some(table) => {
            let snapshot =
                table.snapshot().map_err(|e| Error::Delta { table: ARCHIVE.into(), message: e.to_string() })?;
            for f in snapshot.log_data().iter() {
                files.push((Path::from(format!("{ARCHIVE}/{}", f.path())), f.size() as u64));
            }
        }
        None => {
            let mut list = source.store().list(Some(&Path::from(ARCHIVE)));
            while let Some(meta) = list.next().await {
                let meta = meta?;
                if meta.location.as_ref().ends_with(".parquet") && !meta.location.as_ref().contains("/_") {
                    files.push((meta.location, meta.size));
                }
            }
        }
    }
    files.retain(|(path, _)| filter.may_hold(path.as_ref()));
    files.sort();
    Ok(files)
}

impl ArchiveFilter {
    /// Whether a file at `path` (`…/event_date=D/event_type=T/…`) may hold selected events.
    fn may_hold(&self, path: &str) -> bool {
        let part = |key: &str| path.split('/').find_map(|s| s.strip_prefix(key)?.strip_prefix('='));
        let date = |us: i64| chrono::DateTime::from_timestamp_micros(us).map(|t| t.format("%Y-%m-%d").to_string());
        if let Some(d) = part("event_date") {
            if self.from_us.and_then(date).is_some_and(|from| d < from.as_str()) {
                return false;
            }
            if self.to_us.and_then(|t| date(t.saturating_sub(1))).is_some_and(|to| d > to.as_str()) {
                return false;
            }
        }
        match part("event_type") {
            Some(t) if !self.event_types.is_empty() => self.event_types.iter().any(|w| w == t),
            _ => true,
        }
    }

    fn keeps(&self, event_time_us: i64) -> bool {
        self.from_us.is_none_or(|f| event_time_us >= f) && self.to_us.is_none_or(|t| event_time_us < t)
    }
}

fn feed(
    batch: &RecordBatch,
    rows: Range<usize>,
    filter: &ArchiveFilter,
    pipelines: &mut Pipelines,
    summary: &mut ReplaySummary,
) -> Result<()> {
    let mut pending = Ok(());
    let n = EventRows::new(batch)?.each(rows, None, filter, |ev, stream, id| {
        pipelines.append(ev, stream, id);
        if pipelines.buffered() >= BATCH_ROWS && pending.is_ok() {
            pending = pipelines.process_in_background();
        }
    })?;
    (summary.lines, summary.accepted) = (summary.lines + n, summary.accepted + n);
    pending
}

/// An archive batch's event columns, looked up (and cast to plain strings: the query engine
/// reads them as string views) once.
pub(super) struct EventRows {
    ids: StringArray,
    types: StringArray,
    versions: StringArray,
    data: StringArray,
    metadata: StringArray,
    correlation: StringArray,
    source: StringArray,
    trace: StringArray,
    streams: StringArray,
    stream_ids: StringArray,
    times: TimestampMicrosecondArray,
}

impl EventRows {
    pub(super) fn new(batch: &RecordBatch) -> Result<EventRows> {
        let text = |name: &str| -> Result<StringArray> {
            let Some(col) = batch.column_by_name(name) else {
                // Not read (the pipelines do not use it): NULL, as when a nullable one is.
                return match Col::named(name).is_some_and(Col::nullable) {
                    true => Ok(StringArray::new_null(batch.num_rows())),
                    false => Err(bad(format!("no column {name}"))),
                };
            };
            if let Some(s) = col.as_string_opt::<i32>() {
                return Ok(s.clone());
            }
            let utf8 = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8)?;
            utf8.as_string_opt::<i32>().cloned().ok_or_else(|| bad(format!("column {name} is not text")))
        };
        Ok(EventRows {
            ids: text("event_id")?,
            types: text("event_type")?,
            versions: text("version")?,
            data: text("data")?,
            metadata: text("metadata")?,
            correlation: text("correlation_id")?,
            source: text("source")?,
            trace: text("traceparent")?,
            streams: text("stream")?,
            stream_ids: text("stream_id")?,
            times: batch
                .column_by_name("event_time")
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
                .cloned()
                .ok_or_else(|| bad("no event_time column of microseconds".into()))?,
        })
    }

    /// Calls `each` with every row of `rows` that `filter` keeps, as an event with its stream
    /// and entry id (from `parsed` when given, else parsed from `stream_id`); returns how many.
    pub(super) fn each(
        &self,
        rows: Range<usize>,
        parsed: Option<&[EntryId]>,
        filter: &ArchiveFilter,
        mut each: impl FnMut(&Event<'_>, &str, EntryId),
    ) -> Result<u64> {
        let mut n = 0;
        for i in rows {
            let t = self.times.value(i);
            if !filter.keeps(t) {
                continue;
            }
            let id = match parsed {
                Some(ids) => ids[i],
                None => {
                    let s = self.stream_ids.value(i);
                    s.parse().map_err(|_| bad(format!("stream_id {s:?}")))?
                }
            };
            let ev = Event {
                event_id: self.ids.value(i).into(),
                event_type: self.types.value(i).into(),
                event_time_us: t,
                version: opt(&self.versions, i).map(Into::into),
                data: opt(&self.data, i),
                metadata: opt(&self.metadata, i),
                correlation_id: opt(&self.correlation, i).map(Into::into),
                source: opt(&self.source, i).map(Into::into),
                traceparent: opt(&self.trace, i).map(Into::into),
            };
            each(&ev, self.streams.value(i), id);
            n += 1;
        }
        Ok(n)
    }
}

/// Row `i` of `a`, `None` when null.
fn opt(a: &StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i))
}

fn bad(why: String) -> Error {
    Error::State { path: "archive".into(), reason: why }
}
