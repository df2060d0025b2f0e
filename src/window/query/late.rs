//! Late rows: the schema of the `late_events` table and a sub-batch's late rows in it.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::error::Result;

use super::{WindowedQuery, ts};
use crate::events::Col;

/// Schema of the late-events table's files (the pipeline is the `pipeline=` partition).
pub fn late_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("window_start", ts(), false),
        Field::new("window_end", ts(), false),
        Col::EventId.field(),
        Col::EventType.field(),
        Col::EventTime.field(),
        Col::Stream.field(),
        Col::StreamId.field(),
        Field::new("watermark", ts(), false),
    ]))
}

impl WindowedQuery {
    /// Late rows with the watermark as of their arrival (so independent of batching).
    pub(super) fn late_batch(&self, part: &RecordBatch, wms: &[i64]) -> Result<RecordBatch> {
        let idx = UInt32Array::from_iter_values(self.late.iter().map(|l| l.row));
        let tz = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
        let cols: Vec<ArrayRef> = vec![
            tz(self.late.iter().map(|l| l.window_start).collect()),
            tz(self.late.iter().map(|l| l.window_end).collect()),
            take(part.column(self.cols.event_id), &idx, None)?,
            take(part.column(self.cols.event_type), &idx, None)?,
            take(part.column(self.cols.event_time), &idx, None)?,
            take(part.column(self.cols.stream), &idx, None)?,
            take(part.column(self.cols.stream_id), &idx, None)?,
            tz(self.late.iter().map(|l| wms[l.row as usize]).collect()),
        ];
        Ok(RecordBatch::try_new(late_schema(), cols)?)
    }
}
