//! Builds the `events` table batches the pipelines read: one shared set of column builders
//! per micro-batch (base columns plus every pipeline's declared fields, each distinct field
//! extracted once), then a per-pipeline view with that pipeline's columns and names.
//!
//! Declared fields come out of the event's `data` / `metadata` JSON in one streaming pass
//! (no JSON tree). A value whose JSON type does not fit the declared type becomes NULL:
//! the event was already accepted and archived, the pipeline only reads it.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};

use super::extract::{Node, Val, extract};
use super::spec::{FieldSpec, FieldType, PipelineSpec};
use crate::decode::Event;
use crate::decode::timestamp::parse_rfc3339_us;
use crate::entry::EntryId;
use crate::events::{Builders, Col, PIPELINE_BASE};

enum Builder {
    Str(StringBuilder),
    F64(Float64Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
}

impl Builder {
    /// Sized for `rows` rows (and `bytes` of string data).
    fn new(t: FieldType, rows: usize, bytes: usize) -> Builder {
        match t {
            FieldType::String => Builder::Str(StringBuilder::with_capacity(rows, bytes)),
            FieldType::Double => Builder::F64(Float64Builder::with_capacity(rows)),
            FieldType::Int => Builder::I64(Int64Builder::with_capacity(rows)),
            FieldType::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            FieldType::Timestamp => Builder::Ts(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC")),
        }
    }

    fn append(&mut self, v: &Val<'_>) {
        match self {
            Builder::Str(b) => match v {
                Val::Str(s) => b.append_value(s),
                Val::F64(x) => b.append_value(x.to_string()),
                Val::I64(x) => b.append_value(itoa::Buffer::new().format(*x)),
                Val::Bool(x) => b.append_value(if *x { "true" } else { "false" }),
                Val::Missing => b.append_null(),
            },
            Builder::F64(b) => b.append_option(match v {
                Val::F64(x) => Some(*x),
                Val::I64(x) => Some(*x as f64),
                Val::Str(s) => s.trim().parse().ok(),
                _ => None,
            }),
            Builder::I64(b) => b.append_option(match v {
                Val::I64(x) => Some(*x),
                Val::F64(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(*x as i64),
                Val::Str(s) => s.trim().parse().ok(),
                _ => None,
            }),
            Builder::Bool(b) => b.append_option(match v {
                Val::Bool(x) => Some(*x),
                Val::Str(s) if s == "true" => Some(true),
                Val::Str(s) if s == "false" => Some(false),
                _ => None,
            }),
            Builder::Ts(b) => b.append_option(match v {
                Val::Str(s) => parse_rfc3339_us(s),
                _ => None,
            }),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
        }
    }
}

/// Base columns every pipeline reads whatever its SQL: event_id (late rows), event_type
/// (selection), event_time, stream (selection) and stream_id (late rows).
pub const ALWAYS_USED: [Col; 5] = [Col::EventId, Col::EventType, Col::EventTime, Col::Stream, Col::StreamId];

/// Column builders shared by every pipeline, and each pipeline's view of them.
pub struct EventColumns {
    /// The base columns some pipeline reads (the others are all NULL: only nullable
    /// columns are ever left out).
    base: Builders,
    /// Distinct declared fields (by path and type).
    fields: Vec<(FieldSpec, Builder)>,
    data_paths: Node,
    meta_paths: Node,
    /// Per pipeline: indexes of its fields in `fields`.
    views: Vec<Vec<usize>>,
    vals: Vec<Val<'static>>,
    rows: usize,
}

impl EventColumns {
    pub fn new(specs: &[&PipelineSpec]) -> Self {
        let mut fields: Vec<(FieldSpec, Builder)> = Vec::new();
        let mut data_paths = Node::default();
        let mut meta_paths = Node::default();
        let mut views = Vec::new();
        for spec in specs {
            let mut view = Vec::new();
            for f in &spec.fields {
                let i = match fields.iter().position(|(g, _)| g.path == f.path && g.ty == f.ty) {
                    Some(i) => i,
                    None => {
                        let i = fields.len();
                        let root = if f.path[0] == "data" { &mut data_paths } else { &mut meta_paths };
                        root.insert(&f.path[1..], i);
                        fields.push((f.clone(), Builder::new(f.ty, 0, 0)));
                        i
                    }
                };
                view.push(i);
            }
            views.push(view);
        }
        let n = fields.len();
        EventColumns {
            base: Builders::new(&PIPELINE_BASE),
            fields,
            data_paths,
            meta_paths,
            views,
            vals: vec![Val::Missing; n],
            rows: 0,
        }
    }

    /// Builds only the base columns in `used` (and [`ALWAYS_USED`]); the others are NULL in
    /// every batch.
    pub fn only(mut self, used: &[Col]) -> Self {
        let cols: Vec<Col> =
            PIPELINE_BASE.into_iter().filter(|c| used.contains(c) || ALWAYS_USED.contains(c)).collect();
        self.base = Builders::new(&cols);
        self
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one accepted event.
    pub fn append(&mut self, ev: &Event<'_>, stream: &str, id: EntryId) {
        self.base.append(ev, stream, id, 0);
        self.rows += 1;
        if self.fields.is_empty() {
            return;
        }
        // The slots borrow from this event only; they are cleared before it is returned.
        let mut vals: Vec<Val<'_>> = std::mem::take(&mut self.vals);
        if let Some(d) = ev.data.filter(|_| !self.data_paths.children.is_empty()) {
            extract(d, &self.data_paths, &mut vals);
        }
        if let Some(m) = ev.metadata.filter(|_| !self.meta_paths.children.is_empty()) {
            extract(m, &self.meta_paths, &mut vals);
        }
        for ((_, b), v) in self.fields.iter_mut().zip(vals.iter_mut()) {
            b.append(v);
            *v = Val::Missing;
        }
        self.vals = vals.into_iter().map(|_| Val::Missing).collect();
    }

    /// Takes the rows as one batch per pipeline (in the order given to [`EventColumns::new`]).
    /// The builders start again sized like this batch (fewer reallocations).
    pub fn finish(&mut self, schemas: &[arrow::datatypes::SchemaRef]) -> arrow::error::Result<Vec<RecordBatch>> {
        let rows = self.rows;
        let base = self.base.finish(&PIPELINE_BASE);
        let fields: Vec<ArrayRef> = self
            .fields
            .iter_mut()
            .map(|(f, b)| {
                let a = b.finish();
                let bytes = a.as_any().downcast_ref::<arrow::array::StringArray>().map_or(0, |s| s.values().len());
                *b = Builder::new(f.ty, rows, bytes);
                a
            })
            .collect();
        self.rows = 0;
        self.views
            .iter()
            .zip(schemas)
            .map(|(view, schema)| {
                let mut cols = base.clone();
                cols.extend(view.iter().map(|&i| fields[i].clone()));
                RecordBatch::try_new(schema.clone(), cols)
            })
            .collect()
    }
}
