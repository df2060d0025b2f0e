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
use crate::decode::scan::{Declined, Scan, Scanner, Token};
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

    /// Sets every slot under this node to missing.
    fn clear(&self, out: &mut [Val<'_>]) {
        if let Some(s) = self.slot {
            out[s] = Val::Missing;
        }
        for (_, c) in &self.children {
            c.clear(out);
        }
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

/// Base columns of `events` (see [`super::plan::events_schema`]): event_id, event_type,
/// event_time, version, source, correlation_id, stream, stream_id.
pub const BASE_COUNT: usize = 8;

/// Base columns every pipeline reads whatever its SQL: event_id (late rows), event_type
/// (selection), event_time, stream (selection) and stream_id (late rows).
pub const ALWAYS_USED: [bool; BASE_COUNT] = [true, true, true, false, false, false, true, true];

/// Column builders shared by every pipeline, and each pipeline's view of them.
pub struct EventColumns {
    /// The string base columns (all but event_time); `None` when no pipeline reads it
    /// (it is then all NULL: only nullable columns are ever skipped).
    strings: [Option<StringBuilder>; BASE_COUNT],
    event_time: TimestampMicrosecondBuilder,
    /// Distinct declared fields (by path and type).
    fields: Vec<(FieldSpec, Builder)>,
    data_paths: Node,
    meta_paths: Node,
    /// Per pipeline: indexes of its fields in `fields`.
    views: Vec<Vec<usize>>,
    vals: Vec<Val<'static>>,
    rows: usize,
}

const EVENT_ID: usize = 0;
const EVENT_TYPE: usize = 1;
const VERSION: usize = 3;
const SOURCE: usize = 4;
const CORRELATION_ID: usize = 5;
const STREAM: usize = 6;
const STREAM_ID: usize = 7;

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
            strings: std::array::from_fn(|i| (i != 2).then(StringBuilder::new)),
            event_time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            fields,
            data_paths,
            meta_paths,
            views,
            vals: vec![Val::Missing; n],
            rows: 0,
        }
    }

    /// Builds only the base columns marked in `used` (and [`ALWAYS_USED`]); the others are
    /// NULL in every batch.
    pub fn only(mut self, used: &[bool; BASE_COUNT]) -> Self {
        for (i, b) in self.strings.iter_mut().enumerate() {
            if i != 2 && !used[i] && !ALWAYS_USED[i] {
                *b = None;
            }
        }
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
        let st = &mut self.strings;
        let put = |b: &mut Option<StringBuilder>, v: Option<&str>| {
            if let Some(b) = b {
                b.append_option(v);
            }
        };
        put(&mut st[EVENT_ID], Some(&ev.event_id));
        put(&mut st[EVENT_TYPE], Some(&ev.event_type));
        self.event_time.append_value(ev.event_time_us);
        put(&mut st[VERSION], ev.version.as_deref());
        put(&mut st[SOURCE], ev.source.as_deref());
        put(&mut st[CORRELATION_ID], ev.correlation_id.as_deref());
        put(&mut st[STREAM], Some(stream));
        if let Some(b) = &mut st[STREAM_ID] {
            let _ = b.write_str(itoa::Buffer::new().format(id.ms));
            let _ = b.write_char('-');
            let _ = b.write_str(itoa::Buffer::new().format(id.seq));
            b.append_value("");
        }
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
        let base: Vec<ArrayRef> = (0..BASE_COUNT)
            .map(|i| -> ArrayRef {
                if i == 2 {
                    let a = Arc::new(self.event_time.finish());
                    self.event_time = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
                    return a;
                }
                match &mut self.strings[i] {
                    Some(b) => {
                        let a = b.finish();
                        *b = StringBuilder::with_capacity(rows, a.values().len());
                        Arc::new(a)
                    }
                    None => arrow::array::new_null_array(&arrow::datatypes::DataType::Utf8, rows),
                }
            })
            .collect();
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

/// Fills `out` from the JSON object `text` along the paths of `node`; bad JSON leaves
/// the slots missing (the decoder already accepted the event's envelope).
fn extract<'a>(text: &'a str, node: &Node, out: &mut [Val<'a>]) {
    let mut sc = Scanner::new(text);
    if scan_walk(&mut sc, node, out).and_then(|_| sc.end()).is_ok() {
        return;
    }
    // The scanner declined (an escaped key, `-0`, …): serde's walk decides.
    node.clear(out);
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = Walk { node, out }.deserialize(&mut de);
}

/// [`Walk`] on the one-pass scanner.
fn scan_walk<'a>(sc: &mut Scanner<'a>, node: &Node, out: &mut [Val<'a>]) -> Scan<()> {
    if sc.peek()? != b'{' {
        return sc.skip();
    }
    sc.object(|sc, key| match node.child(key) {
        Some(child) if child.children.is_empty() => {
            let v = scalar(sc.token()?)?;
            if let Some(slot) = child.slot {
                out[slot] = v;
            }
            Ok(())
        }
        Some(child) => {
            if let Some(slot) = child.slot {
                out[slot] = Val::Missing;
            }
            scan_walk(sc, child, out)
        }
        None => sc.skip(),
    })
}

/// A token as [`Scalar`] reads it. Integers as serde_json types them (i64, else f64 for
/// larger unsigned ones); decimals with Rust's correctly rounded parser.
fn scalar(t: Token<'_>) -> Scan<Val<'_>> {
    Ok(match t {
        Token::Str { .. } => Val::Str(t.string().ok_or(Declined)?),
        Token::Bool(b) => Val::Bool(b),
        Token::Null | Token::Nested => Val::Missing,
        Token::Num(n) if n.bytes().all(|c| c.is_ascii_digit()) => {
            let v: u64 = n.parse().map_err(|_| Declined)?;
            i64::try_from(v).map_or(Val::F64(v as f64), Val::I64)
        }
        Token::Num(n) if n.starts_with('-') && n[1..].bytes().all(|c| c.is_ascii_digit()) => match n.parse::<i64>() {
            Ok(v) if v != 0 => Val::I64(v),
            _ => return Err(Declined),
        },
        Token::Num(n) => Val::F64(n.parse().map_err(|_| Declined)?),
    })
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

    /// Random objects (nested paths, every scalar type, escapes, duplicates): the scanner's
    /// walk gives serde's values wherever it does not decline, and declines rarely.
    #[test]
    fn scanner_walk_agrees_with_serde() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let n = node(&["amount", "customer_id", "c.id", "c.n.deep", "flag", "qty"]);
        let keys = ["amount", "customer_id", "c", "id", "n", "deep", "flag", "qty", "other", r"x\u0041"];
        let scalars = [
            "12.5",
            "-3",
            "0",
            "-0",
            "1e3",
            "18446744073709551615",
            "9223372036854775808",
            "-9223372036854775809",
            r#""s""#,
            r#""e\\s\"c\u00e9""#,
            "true",
            "false",
            "null",
            r#"[1,{"a":2}]"#,
            "{}",
            "0.1",
            "123456789.123456789",
            r#""""#,
        ];
        fn object(rng: &mut rand::rngs::SmallRng, keys: &[&str], scalars: &[&str], depth: u32) -> String {
            let mut out = String::from("{");
            for i in 0..rng.random_range(0..6) {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&format!("\"{}\":", keys[rng.random_range(0..keys.len())]));
                if depth < 3 && rng.random_bool(0.3) {
                    out.push_str(&object(rng, keys, scalars, depth + 1));
                } else {
                    out.push_str(scalars[rng.random_range(0..scalars.len())]);
                }
            }
            out.push('}');
            out
        }
        let (mut fast, total) = (0, 3000);
        for _ in 0..total {
            let text = object(&mut rng, &keys, &scalars, 0);
            let mut slow = vec![Val::Missing; 6];
            let _ = Walk { node: &n, out: &mut slow }.deserialize(&mut serde_json::Deserializer::from_str(&text));
            let mut quick = vec![Val::Missing; 6];
            let mut sc = Scanner::new(&text);
            if scan_walk(&mut sc, &n, &mut quick).and_then(|_| sc.end()).is_ok() {
                fast += 1;
                assert_eq!(quick, slow, "{text}");
            }
            let mut both = vec![Val::Missing; 6];
            extract(&text, &n, &mut both);
            assert_eq!(both, slow, "{text}");
        }
        assert!(fast * 2 > total, "the scanner took only {fast} of {total}");
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
