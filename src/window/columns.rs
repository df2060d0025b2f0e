//! Builds the `events` table batches the pipelines read: one shared set of column builders
//! per micro-batch (base columns plus every pipeline's declared fields, each distinct field
//! extracted once), then a per-pipeline view with that pipeline's columns and names.
//!
//! Declared fields come out of the event's `data` / `metadata` JSON in one streaming pass
//! (no JSON tree). A value whose JSON type does not fit the declared type becomes NULL:
//! the event was already accepted and archived, the pipeline only reads it.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::spec::{FieldSpec, FieldType, PipelineSpec};
use crate::decode::Event;
use crate::decode::timestamp::parse_rfc3339_us;
use crate::event::EntryId;

/// A path tree over the declared fields: `data.a.b` and `data.c` share the `data` node.
#[derive(Debug, Default)]
struct Node {
    children: Vec<(String, Node)>,
    slot: Option<usize>,
}

impl Node {
    fn insert(&mut self, path: &[String], slot: usize) {
        match path.split_first() {
            None => self.slot = Some(slot),
            Some((head, rest)) => {
                let i = match self.children.iter().position(|(k, _)| k == head) {
                    Some(i) => i,
                    None => {
                        self.children.push((head.clone(), Node::default()));
                        self.children.len() - 1
                    }
                };
                self.children[i].1.insert(rest, slot);
            }
        }
    }

    fn child(&self, key: &str) -> Option<&Node> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }
}

/// A scalar found at a field's path.
#[derive(Debug, Clone, PartialEq)]
enum Val<'a> {
    Missing,
    Str(Cow<'a, str>),
    F64(f64),
    I64(i64),
    Bool(bool),
}

enum Builder {
    Str(StringBuilder),
    F64(Float64Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(t: FieldType) -> Builder {
        match t {
            FieldType::String => Builder::Str(StringBuilder::new()),
            FieldType::Double => Builder::F64(Float64Builder::new()),
            FieldType::Int => Builder::I64(Int64Builder::new()),
            FieldType::Bool => Builder::Bool(BooleanBuilder::new()),
            FieldType::Timestamp => Builder::Ts(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
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

/// Column builders shared by every pipeline, and each pipeline's view of them.
pub struct EventColumns {
    event_id: StringBuilder,
    event_type: StringBuilder,
    event_time: TimestampMicrosecondBuilder,
    version: StringBuilder,
    source: StringBuilder,
    correlation_id: StringBuilder,
    stream: StringBuilder,
    stream_id: StringBuilder,
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
                        fields.push((f.clone(), Builder::new(f.ty)));
                        i
                    }
                };
                view.push(i);
            }
            views.push(view);
        }
        let n = fields.len();
        EventColumns {
            event_id: StringBuilder::new(),
            event_type: StringBuilder::new(),
            event_time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            version: StringBuilder::new(),
            source: StringBuilder::new(),
            correlation_id: StringBuilder::new(),
            stream: StringBuilder::new(),
            stream_id: StringBuilder::new(),
            fields,
            data_paths,
            meta_paths,
            views,
            vals: vec![Val::Missing; n],
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one accepted event.
    pub fn append(&mut self, ev: &Event<'_>, stream: &str, id: EntryId) {
        self.event_id.append_value(&ev.event_id);
        self.event_type.append_value(&ev.event_type);
        self.event_time.append_value(ev.event_time_us);
        self.version.append_option(ev.version.as_deref());
        self.source.append_option(ev.source.as_deref());
        self.correlation_id.append_option(ev.correlation_id.as_deref());
        self.stream.append_value(stream);
        let _ = self.stream_id.write_str(itoa::Buffer::new().format(id.ms));
        let _ = self.stream_id.write_char('-');
        let _ = self.stream_id.write_str(itoa::Buffer::new().format(id.seq));
        self.stream_id.append_value("");
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
    pub fn finish(&mut self, schemas: &[arrow::datatypes::SchemaRef]) -> arrow::error::Result<Vec<RecordBatch>> {
        let base: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.version.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.correlation_id.finish()),
            Arc::new(self.stream.finish()),
            Arc::new(self.stream_id.finish()),
        ];
        let fields: Vec<ArrayRef> = self.fields.iter_mut().map(|(_, b)| b.finish()).collect();
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

/// Fills `out` from the JSON object `text` along the paths of `node`; bad JSON leaves
/// the slots missing (the decoder already accepted the event's envelope).
fn extract<'a>(text: &'a str, node: &Node, out: &mut [Val<'a>]) {
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = Walk { node, out }.deserialize(&mut de);
}

struct Walk<'n, 'o, 'a> {
    node: &'n Node,
    out: &'o mut [Val<'a>],
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for Walk<'_, '_, 'a> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Walk<'_, '_, 'a> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.node.child(&key) {
                Some(child) if child.children.is_empty() => {
                    let v = map.next_value_seed(Scalar)?;
                    if let Some(slot) = child.slot {
                        self.out[slot] = v;
                    }
                }
                Some(child) => {
                    if let Some(slot) = child.slot {
                        // Both a leaf and a prefix: the leaf is an object here, not a scalar.
                        self.out[slot] = Val::Missing;
                    }
                    map.next_value_seed(Walk { node: child, out: &mut *self.out })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
    // Anything other than an object at a prefix: nothing to extract below it.
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

struct Scalar;

impl<'de> DeserializeSeed<'de> for Scalar {
    type Value = Val<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Val<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scalar {
    type Value = Val<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a scalar")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val<'de>, E> {
        Ok(Val::F64(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(Val::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(i64::try_from(v).map_or(Val::F64(v as f64), Val::I64))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Missing)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Missing)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(paths: &[&str]) -> Node {
        let mut n = Node::default();
        for (i, p) in paths.iter().enumerate() {
            let parts: Vec<String> = p.split('.').map(str::to_string).collect();
            n.insert(&parts, i);
        }
        n
    }

    #[test]
    fn extracts_nested_paths_in_one_pass() {
        let n = node(&["amount", "customer.id", "tags", "flag"]);
        let mut out = vec![Val::Missing; 4];
        extract(
            r#"{"x":[1,{"a":2}],"amount":12.5,"customer":{"id":"c\"1","n":{"deep":1}},"tags":["a"],"flag":true}"#,
            &n,
            &mut out,
        );
        assert_eq!(out[0], Val::F64(12.5));
        assert_eq!(out[1], Val::Str(Cow::Owned("c\"1".into())));
        assert_eq!(out[2], Val::Missing, "arrays are not scalars");
        assert_eq!(out[3], Val::Bool(true));
    }

    #[test]
    fn malformed_json_leaves_missing_values() {
        let n = node(&["amount"]);
        let mut out = vec![Val::Missing; 1];
        extract("{\"amount\":", &n, &mut out);
        assert_eq!(out[0], Val::Missing);
        extract("[1,2]", &n, &mut out);
        assert_eq!(out[0], Val::Missing);
    }
}
