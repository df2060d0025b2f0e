//! The archive's Arrow schema and the column builders events are decoded straight into.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::decode::Event;
use crate::event::EntryId;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("event_time", ts(), false),
        Field::new("version", DataType::Utf8, true),
        Field::new("data", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, true),
        Field::new("correlation_id", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, true),
        Field::new("traceparent", DataType::Utf8, true),
        Field::new("stream", DataType::Utf8, false),
        Field::new("stream_id", DataType::Utf8, false),
        Field::new("ingest_time", ts(), false),
    ]))
});

/// The archive schema (stable: columns are only ever appended). `data` and `metadata` hold
/// JSON text; times are UTC microseconds. The partition columns `event_date` and
/// `event_type` are also in the path (`event_type` is kept in the file too).
pub fn archive_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Column builders for one partition's rows not yet handed to the Parquet writer.
pub(super) struct Columns {
    event_id: StringBuilder,
    event_type: StringBuilder,
    event_time: TimestampMicrosecondBuilder,
    version: StringBuilder,
    data: StringBuilder,
    metadata: StringBuilder,
    correlation_id: StringBuilder,
    source: StringBuilder,
    traceparent: StringBuilder,
    stream: StringBuilder,
    stream_id: StringBuilder,
    ingest_time: TimestampMicrosecondBuilder,
    pub rows: usize,
    /// Approximate bytes appended since the last [`Columns::finish`].
    pub bytes: usize,
}

impl Columns {
    pub fn new() -> Self {
        Columns {
            event_id: StringBuilder::new(),
            event_type: StringBuilder::new(),
            event_time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            version: StringBuilder::new(),
            data: StringBuilder::new(),
            metadata: StringBuilder::new(),
            correlation_id: StringBuilder::new(),
            source: StringBuilder::new(),
            traceparent: StringBuilder::new(),
            stream: StringBuilder::new(),
            stream_id: StringBuilder::new(),
            ingest_time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            rows: 0,
            bytes: 0,
        }
    }

    pub fn append(&mut self, ev: &Event<'_>, stream: &str, id: EntryId, ingest_us: i64) {
        self.event_id.append_value(&ev.event_id);
        self.event_type.append_value(&ev.event_type);
        self.event_time.append_value(ev.event_time_us);
        self.version.append_option(ev.version.as_deref());
        self.data.append_option(ev.data);
        self.metadata.append_option(ev.metadata);
        self.correlation_id.append_option(ev.correlation_id.as_deref());
        self.source.append_option(ev.source.as_deref());
        self.traceparent.append_option(ev.traceparent.as_deref());
        self.stream.append_value(stream);
        // Written into the value buffer piecewise: no String, no fmt machinery per row.
        let _ = self.stream_id.write_str(itoa::Buffer::new().format(id.ms));
        let _ = self.stream_id.write_char('-');
        let _ = self.stream_id.write_str(itoa::Buffer::new().format(id.seq));
        self.stream_id.append_value("");
        self.ingest_time.append_value(ingest_us);
        self.rows += 1;
        self.bytes += 64
            + ev.event_id.len()
            + ev.data.map_or(0, str::len)
            + ev.metadata.map_or(0, str::len)
            + ev.traceparent.as_deref().map_or(0, str::len);
    }

    /// Takes the buffered rows as a batch; the builders start again sized like it (no
    /// regrowth and copying as the next batch fills them).
    pub fn finish(&mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            take_str(&mut self.event_id),
            take_str(&mut self.event_type),
            take_ts(&mut self.event_time),
            take_str(&mut self.version),
            take_str(&mut self.data),
            take_str(&mut self.metadata),
            take_str(&mut self.correlation_id),
            take_str(&mut self.source),
            take_str(&mut self.traceparent),
            take_str(&mut self.stream),
            take_str(&mut self.stream_id),
            take_ts(&mut self.ingest_time),
        ];
        self.rows = 0;
        self.bytes = 0;
        // The columns match the schema by construction; `try_new` only re-checks lengths.
        RecordBatch::try_new(archive_schema(), cols).expect("archive columns match the schema")
    }
}

fn take_str(b: &mut StringBuilder) -> ArrayRef {
    let a = b.finish();
    *b = StringBuilder::with_capacity(a.len(), a.values().len());
    Arc::new(a)
}

fn take_ts(b: &mut TimestampMicrosecondBuilder) -> ArrayRef {
    let a = b.finish();
    *b = TimestampMicrosecondBuilder::with_capacity(a.len()).with_timezone("UTC");
    Arc::new(a)
}
