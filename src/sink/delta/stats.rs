//! Per-file statistics of a Delta `add` action (`numRecords`, `minValues`, `maxValues`,
//! `nullCount`), read from the Parquet footer we wrote: readers skip files by them (a
//! filter on `event_time`, `window_start` or a key), and `replace.rs` finds the files
//! that may hold a window.
//!
//! Only exact statistics are used. Times are written at millisecond precision, the minimum
//! rounded down and the maximum up (so they still bound the values); strings keep a minimum
//! of at most 32 characters (a prefix still bounds it from below) and a maximum only when it
//! is that short.

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use object_store::path::Path;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use serde_json::{Map, Value, json};

use crate::error::Result;
use crate::sink::lake::Lake;

/// Longest string statistic kept (Delta's default prefix length for data skipping).
const STRING_PREFIX: usize = 32;

/// Reads `path`'s footer (one ranged read) and returns its Delta statistics as JSON text.
pub async fn of_file(lake: &Lake, path: &Path, size: u64, schema: &SchemaRef) -> Result<String> {
    let mut reader = crate::sink::file::LakeFile::new(lake.store().clone(), path.clone(), size);
    let meta = reader.get_metadata(None).await?;
    Ok(of_metadata(&meta, schema).to_string())
}

#[derive(Default)]
struct Bounds {
    min: Option<Value>,
    max: Option<Value>,
    nulls: u64,
    /// A row group without a null count: no `nullCount` (0 would claim there are none).
    nulls_unknown: bool,
    /// A row group without exact statistics for the column: no min/max at all.
    unknown: bool,
}

/// The statistics of a file from its metadata, for the columns of `schema` (by name).
pub fn of_metadata(meta: &ParquetMetaData, schema: &SchemaRef) -> Value {
    let rows: i64 = meta.row_groups().iter().map(|rg| rg.num_rows()).sum();
    let mut min = Map::new();
    let mut max = Map::new();
    let mut nulls = Map::new();
    let descr = meta.file_metadata().schema_descr();
    for field in schema.fields() {
        let Some(col) = (0..descr.num_columns()).find(|&i| descr.column(i).path().string() == *field.name()) else {
            continue;
        };
        let mut b = Bounds::default();
        for rg in meta.row_groups() {
            let Some(st) = rg.column(col).statistics() else {
                (b.unknown, b.nulls_unknown) = (true, true);
                continue;
            };
            match st.null_count_opt() {
                Some(n) => b.nulls += n,
                None => b.nulls_unknown = true,
            }
            if !(st.min_is_exact() && st.max_is_exact()) {
                b.unknown = true;
                continue;
            }
            if let Some((lo, hi)) = values(st, field.data_type()) {
                b.min = Some(match b.min.take() {
                    Some(m) if cmp(&m, &lo).is_le() => m,
                    _ => lo,
                });
                b.max = Some(match b.max.take() {
                    Some(m) if cmp(&m, &hi).is_ge() => m,
                    _ => hi,
                });
            } else if rg.num_rows() > st.null_count_opt().unwrap_or(0) as i64 {
                b.unknown = true;
            }
        }
        if !b.nulls_unknown {
            nulls.insert(field.name().clone(), json!(b.nulls));
        }
        if b.unknown {
            continue;
        }
        let (Some(lo), Some(hi)) = (b.min, b.max) else { continue };
        let (lo, hi) = (render(lo, field.data_type(), false), render(hi, field.data_type(), true));
        if let Some(lo) = lo {
            min.insert(field.name().clone(), lo);
        }
        if let Some(hi) = hi {
            max.insert(field.name().clone(), hi);
        }
    }
    json!({ "numRecords": rows, "minValues": min, "maxValues": max, "nullCount": nulls })
}

/// A row group's (min, max) as comparable raw values: integers as i64, floats as f64,
/// strings as text.
fn values(st: &Statistics, ty: &DataType) -> Option<(Value, Value)> {
    match (st, ty) {
        (Statistics::Int64(v), DataType::Int64 | DataType::Timestamp(..)) => {
            Some((json!(*v.min_opt()?), json!(*v.max_opt()?)))
        }
        (Statistics::Int32(v), DataType::Int32 | DataType::Date32) => {
            Some((json!(*v.min_opt()?), json!(*v.max_opt()?)))
        }
        (Statistics::Double(v), DataType::Float64) => Some((Value::from(*v.min_opt()?), Value::from(*v.max_opt()?))),
        (Statistics::ByteArray(v), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
            let s = |b: &parquet::data_type::ByteArray| std::str::from_utf8(b.data()).ok().map(|s| json!(s));
            Some((s(v.min_opt()?)?, s(v.max_opt()?)?))
        }
        _ => None,
    }
}

fn cmp(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x.as_f64().unwrap_or(0.0).total_cmp(&y.as_f64().unwrap_or(0.0)),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => std::cmp::Ordering::Equal,
    }
}

/// A bound as Delta writes it; `upper`: round up where precision is lost. `None`: not kept.
fn render(v: Value, ty: &DataType, upper: bool) -> Option<Value> {
    match ty {
        DataType::Timestamp(unit, _) => {
            let raw = v.as_i64()?;
            let per_ms = match unit {
                TimeUnit::Second => return millis(raw.checked_mul(1000)?),
                TimeUnit::Millisecond => 1,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1_000_000,
            };
            let ms = if upper {
                raw.div_euclid(per_ms) + (raw.rem_euclid(per_ms) != 0) as i64
            } else {
                raw.div_euclid(per_ms)
            };
            millis(ms)
        }
        DataType::Date32 => {
            let d = chrono::DateTime::from_timestamp(v.as_i64()? * 86_400, 0)?;
            Some(json!(d.format("%Y-%m-%d").to_string()))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = v.as_str()?;
            match (s.chars().count() <= STRING_PREFIX, upper) {
                (true, _) => Some(v),
                (false, false) => Some(json!(s.chars().take(STRING_PREFIX).collect::<String>())),
                (false, true) => None,
            }
        }
        _ => Some(v),
    }
}

fn millis(ms: i64) -> Option<Value> {
    let t = chrono::DateTime::from_timestamp_millis(ms)?;
    Some(json!(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_bound_the_values_at_millisecond_precision() {
        let ty = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        assert_eq!(render(json!(1_500), &ty, false), Some(json!("1970-01-01T00:00:00.001Z")));
        assert_eq!(render(json!(1_500), &ty, true), Some(json!("1970-01-01T00:00:00.002Z")));
        assert_eq!(render(json!(2_000), &ty, true), Some(json!("1970-01-01T00:00:00.002Z")));
        assert_eq!(render(json!(-1), &ty, false), Some(json!("1969-12-31T23:59:59.999Z")));
    }

    #[test]
    fn long_strings_keep_a_prefix_as_minimum_and_no_maximum() {
        let long = "x".repeat(40);
        assert_eq!(render(json!(long), &DataType::Utf8, false), Some(json!("x".repeat(32))));
        assert_eq!(render(json!(long), &DataType::Utf8, true), None);
        assert_eq!(render(json!("abc"), &DataType::Utf8, true), Some(json!("abc")));
    }
}
