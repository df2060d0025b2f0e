//! The archive's column builders: one partition's rows not yet handed to its Parquet
//! writer, in the archive schema ([`crate::events`] defines it).

use arrow::array::RecordBatch;

use crate::decode::Event;
use crate::entry::EntryId;
pub use crate::events::archive_schema;
use crate::events::{ARCHIVE, Builders};

/// Column builders for one partition's rows not yet handed to the Parquet writer.
pub(super) struct Columns {
    builders: Builders,
    pub rows: usize,
    /// Approximate bytes appended since the last [`Columns::finish`].
    pub bytes: usize,
}

impl Columns {
    pub fn new() -> Self {
        Columns { builders: Builders::new(&ARCHIVE), rows: 0, bytes: 0 }
    }

    pub fn append(&mut self, ev: &Event<'_>, stream: &str, id: EntryId, ingest_us: i64) {
        self.builders.append(ev, stream, id, ingest_us);
        self.rows += 1;
        self.bytes += 64
            + ev.event_id.len()
            + ev.data.map_or(0, str::len)
            + ev.metadata.map_or(0, str::len)
            + ev.traceparent.as_deref().map_or(0, str::len);
    }

    /// Takes the buffered rows as a batch; the builders start again sized like it.
    pub fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        self.bytes = 0;
        // The columns match the schema by construction; `try_new` only re-checks lengths.
        RecordBatch::try_new(archive_schema(), self.builders.finish(&ARCHIVE))
            .expect("archive columns match the schema")
    }
}
