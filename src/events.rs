//! The `events` schema, defined once: every column an accepted event has, by name, with its
//! type, and the column builders the archive and the pipelines fill from a decoded event.
//!
//! Two tables are made of these columns:
//! - the archive (`events/…` Parquet files): every column, in [`ARCHIVE`] order (stable:
//!   columns are only ever appended);
//! - the pipelines' `events` table: the [`PIPELINE_BASE`] columns, then each pipeline's
//!   declared fields (`window::columns`).
//!
//! Code reads these columns through a schema by name ([`Col::name`]), never by position.
//! `data` and `metadata` hold JSON text; times are UTC microseconds.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, StringBuilder, TimestampMicrosecondBuilder, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::decode::Event;
use crate::entry::EntryId;

/// A column of `events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Col {
    EventId,
    EventType,
    /// The event's `timestamp`, parsed.
    EventTime,
    Version,
    Data,
    Metadata,
    CorrelationId,
    Source,
    /// W3C trace context of a CloudEvents envelope.
    Traceparent,
    /// The stream key the entry was read from.
    Stream,
    /// The entry's id in its stream, `<ms>-<seq>`.
    StreamId,
    /// When this process read the entry.
    IngestTime,
}

/// Every column, in the archive files' order.
pub const ARCHIVE: [Col; 12] = [
    Col::EventId,
    Col::EventType,
    Col::EventTime,
    Col::Version,
    Col::Data,
    Col::Metadata,
    Col::CorrelationId,
    Col::Source,
    Col::Traceparent,
    Col::Stream,
    Col::StreamId,
    Col::IngestTime,
];

/// The base columns of the pipelines' `events` table, in its order (declared fields follow).
pub const PIPELINE_BASE: [Col; 8] = [
    Col::EventId,
    Col::EventType,
    Col::EventTime,
    Col::Version,
    Col::Source,
    Col::CorrelationId,
    Col::Stream,
    Col::StreamId,
];

impl Col {
    pub const fn name(self) -> &'static str {
        match self {
            Col::EventId => "event_id",
            Col::EventType => "event_type",
            Col::EventTime => "event_time",
            Col::Version => "version",
            Col::Data => "data",
            Col::Metadata => "metadata",
            Col::CorrelationId => "correlation_id",
            Col::Source => "source",
            Col::Traceparent => "traceparent",
            Col::Stream => "stream",
            Col::StreamId => "stream_id",
            Col::IngestTime => "ingest_time",
        }
    }

    /// Whether an event may lack it.
    pub const fn nullable(self) -> bool {
        matches!(self, Col::Version | Col::Data | Col::Metadata | Col::CorrelationId | Col::Source | Col::Traceparent)
    }

    const fn is_time(self) -> bool {
        matches!(self, Col::EventTime | Col::IngestTime)
    }

    pub fn data_type(self) -> DataType {
        if self.is_time() { utc_micros() } else { DataType::Utf8 }
    }

    pub fn field(self) -> Field {
        Field::new(self.name(), self.data_type(), self.nullable())
    }

    /// The base column named `name`, if any.
    pub fn named(name: &str) -> Option<Col> {
        ARCHIVE.into_iter().find(|c| c.name() == name)
    }
}

/// The type of every time column: UTC microseconds.
pub fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

static ARCHIVE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| Arc::new(Schema::new(ARCHIVE.map(Col::field).to_vec())));

/// The archive files' schema. The partition columns `event_date` and `event_type` are also
/// in the path (`event_type` is kept in the file too).
pub fn archive_schema() -> SchemaRef {
    ARCHIVE_SCHEMA.clone()
}

/// The index of `col` in `schema` (a schema made from these columns).
pub fn index_of(schema: &Schema, col: Col) -> usize {
    schema.index_of(col.name()).unwrap_or_else(|_| panic!("schema without column {}", col.name()))
}

enum Slot {
    Off,
    Str(StringBuilder),
    Time(TimestampMicrosecondBuilder),
}

/// Column builders for a chosen set of columns: [`Builders::append`] writes one event into
/// each of them, [`Builders::finish`] takes the rows as arrays (NULL for a column not built).
pub struct Builders {
    slots: [Slot; ARCHIVE.len()],
    rows: usize,
}

impl Builders {
    /// Builders of `cols` (only nullable columns may be left out of a table's set).
    pub fn new(cols: &[Col]) -> Self {
        Builders {
            slots: ARCHIVE.map(|c| match (cols.contains(&c), c.is_time()) {
                (false, _) => Slot::Off,
                (true, false) => Slot::Str(StringBuilder::new()),
                (true, true) => Slot::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
            }),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one event read as entry `id` of `stream` at `ingest_us`.
    pub fn append(&mut self, ev: &Event<'_>, stream: &str, id: EntryId, ingest_us: i64) {
        let [
            event_id,
            event_type,
            event_time,
            version,
            data,
            metadata,
            correlation_id,
            source,
            traceparent,
            stream_col,
            stream_id,
            ingest_time,
        ] = &mut self.slots;
        put_str(event_id, Some(&ev.event_id));
        put_str(event_type, Some(&ev.event_type));
        put_time(event_time, ev.event_time_us);
        put_str(version, ev.version.as_deref());
        put_str(data, ev.data);
        put_str(metadata, ev.metadata);
        put_str(correlation_id, ev.correlation_id.as_deref());
        put_str(source, ev.source.as_deref());
        put_str(traceparent, ev.traceparent.as_deref());
        put_str(stream_col, Some(stream));
        if let Slot::Str(b) = stream_id {
            // Written into the value buffer piecewise: no String, no fmt machinery per row.
            let _ = b.write_str(itoa::Buffer::new().format(id.ms));
            let _ = b.write_char('-');
            let _ = b.write_str(itoa::Buffer::new().format(id.seq));
            b.append_value("");
        }
        put_time(ingest_time, ingest_us);
        self.rows += 1;
    }

    /// Takes the rows as arrays of `cols`, in that order. The builders start again sized
    /// like this batch (no regrowth and copying as the next one fills them).
    pub fn finish(&mut self, cols: &[Col]) -> Vec<ArrayRef> {
        let rows = std::mem::take(&mut self.rows);
        let mut taken: [Option<ArrayRef>; ARCHIVE.len()] = Default::default();
        for (slot, out) in self.slots.iter_mut().zip(taken.iter_mut()) {
            *out = match slot {
                Slot::Off => None,
                Slot::Str(b) => {
                    let a = b.finish();
                    *b = StringBuilder::with_capacity(a.len(), a.values().len());
                    Some(Arc::new(a))
                }
                Slot::Time(b) => {
                    let a = b.finish();
                    *b = TimestampMicrosecondBuilder::with_capacity(a.len()).with_timezone("UTC");
                    Some(Arc::new(a))
                }
            };
        }
        cols.iter()
            .map(|&c| {
                let i = ARCHIVE.iter().position(|&a| a == c).unwrap_or_default();
                taken[i].clone().unwrap_or_else(|| new_null_array(&c.data_type(), rows))
            })
            .collect()
    }
}

fn put_str(slot: &mut Slot, v: Option<&str>) {
    if let Slot::Str(b) = slot {
        b.append_option(v);
    }
}

fn put_time(slot: &mut Slot, v: i64) {
    if let Slot::Time(b) = slot {
        b.append_value(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_types_and_nullability_come_from_one_place() {
        let s = archive_schema();
        assert_eq!(s.fields().len(), ARCHIVE.len());
        for c in ARCHIVE {
            let f = s.field(index_of(&s, c));
            assert_eq!((f.name().as_str(), f.is_nullable()), (c.name(), c.nullable()));
            assert_eq!(Col::named(c.name()), Some(c));
        }
        assert_eq!(s.field(index_of(&s, Col::IngestTime)).data_type(), &utc_micros());
    }

    #[test]
    fn columns_left_out_are_null_and_order_follows_the_request() {
        let ev = Event {
            event_id: "e1".into(),
            event_type: "order.created".into(),
            event_time_us: 1_000_000,
            version: None,
            data: Some("{}"),
            metadata: None,
            correlation_id: Some("c1".into()),
            source: None,
            traceparent: None,
        };
        let mut b = Builders::new(&[Col::EventId, Col::StreamId, Col::EventTime]);
        b.append(&ev, "orders", EntryId { ms: 5, seq: 1 }, 7);
        let cols = b.finish(&[Col::StreamId, Col::Data, Col::EventId]);
        use arrow::array::AsArray;
        assert_eq!(cols[0].as_string::<i32>().value(0), "5-1");
        assert_eq!(cols[1].null_count(), 1);
        assert_eq!(cols[2].as_string::<i32>().value(0), "e1");
        assert!(b.is_empty());
    }
}
