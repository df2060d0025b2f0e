//! The aggregates API for dashboards.
//!
//! - `GET /api/pipelines`: each pipeline's name, window, columns;
//! - `GET /api/pipelines/{name}/windows?from=&to=&limit=&format=`: window rows, newest
//!   first, with `window_start` in `[from, to)` (RFC 3339), merging committed Parquet rows
//!   with rows not committed yet: closed windows waiting for the next commit and open windows
//!   as they stand. Every row has a `final` column (`false`: the window is still open and its
//!   values may change). For `emit = "updates"` pipelines only each window's current rows
//!   are returned (the open window's live rows, else its highest revision). JSON by default; CSV or Arrow IPC with `format=csv|arrow` or
//!   `Accept: text/csv` / `application/vnd.apache.arrow.stream`.
//!
//! Open windows are computed by the processor, which owns the window state: a request goes
//! to it over a bounded channel (full: `503`, never a queue that grows) and waits at most
//! [`LIVE_WAIT`] for the answer; at most [`MAX_CONCURRENT`] window requests run at once. The
//! lake's query context is opened once and reused (opened again only until every table has
//! data to register), and the committed rows a query read are kept until the term's next
//! commit of table files, for the last [`CACHED_QUERIES`] queries: a dashboard polling every
//! few milliseconds costs a lake query per commit, not per request. Rows older than
//! [`CACHE_TTL`] (other writers' commits to shared tables, e.g. a backfill) are read again in
//! the background while the kept ones answer, so only a request after this term's own commit
//! waits for the lake.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray};
use arrow::compute::{SortOptions, concat_batches, filter_record_batch, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimestampMicrosecondType};
use tokio::sync::{mpsc, oneshot};

use super::http::{Request, Response};
use crate::error::{Error, Result};
use crate::lake_sql::LakeQuery;
use crate::window::live::{LiveRequest, LiveSlot, LiveWindows, Starts};
use crate::window::query::REVISION_COLUMN;

/// Where window rows come from: one term's [`LiveWindows`], with the lake's query context
/// opened once for it.
pub struct WindowsSource {
    live: Arc<LiveWindows>,
    query: tokio::sync::Mutex<Option<Arc<LakeQuery>>>,
    permits: tokio::sync::Semaphore,
    /// Committed rows by query, with the commit count they were read at (newest last).
    committed: std::sync::Mutex<std::collections::VecDeque<Cached>>,
}

/// The API's view of the [`LiveSlot`]: a [`WindowsSource`] per term, made when the term
/// publishes its windows and kept while it holds the lease.
#[derive(Clone, Default)]
pub struct Windows {
    slot: LiveSlot,
    current: Arc<std::sync::Mutex<Option<Arc<WindowsSource>>>>,
}

impl Windows {
    pub fn new(slot: LiveSlot) -> Self {
        Windows { slot, current: Default::default() }
    }

    /// The source of the term holding the lease now (`None`: on standby).
    pub fn get(&self) -> Option<Arc<WindowsSource>> {
        let live = self.slot.get()?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some(s) if Arc::ptr_eq(&s.live, &live) => Some(s.clone()),
            _ => {
                let s = Arc::new(WindowsSource::new(live));
                *current = Some(s.clone());
                Some(s)
            }
        }
    }
}

const MAX_LIMIT: usize = 100_000;
/// How long a request waits for the processor's live rows.
pub const LIVE_WAIT: Duration = Duration::from_secs(2);
/// Window requests served at once; more wait for a turn (at most [`LIVE_WAIT`]).
pub const MAX_CONCURRENT: usize = 4;
/// Lake queries whose rows are kept until the next commit.
pub const CACHED_QUERIES: usize = 16;
/// How old kept committed rows may get before they are read again (in the background):
/// tables this term does not write alone (a backfill) change without its commit count.
pub const CACHE_TTL: Duration = Duration::from_millis(500);

/// A lake query's rows: the commit count and time they were read at, the SQL.
struct Cached {
    commits: u64,
    at: std::time::Instant,
    sql: String,
    rows: Vec<RecordBatch>,
    /// A background read of newer rows is under way.
    refreshing: bool,
}

impl WindowsSource {
    fn new(live: Arc<LiveWindows>) -> Self {
        WindowsSource {
            live,
            query: Default::default(),
            permits: tokio::sync::Semaphore::new(MAX_CONCURRENT),
            committed: Default::default(),
        }
    }

    /// The lake's query context, opened once (again while `table` has no data registered).
    async fn lake_query(&self, table: &str) -> Result<Arc<LakeQuery>> {
        let mut q = self.query.lock().await;
        if let Some(open) = q.as_ref().filter(|q| q.tables.iter().any(|t| t.name == table && t.registered)) {
            return Ok(open.clone());
        }
        let open = Arc::new(LakeQuery::open(&self.live.lake, &self.live.tables).await?);
        *q = Some(open.clone());
        Ok(open)
    }

    /// The rows `sql` reads from the lake: kept from an earlier request while the term has
    /// committed nothing since (read before the commit count: a commit in between makes the
    /// next request read again). Kept rows older than [`CACHE_TTL`] are still answered, and
    /// read again in the background (one read per query at a time): a dashboard's request
    /// never waits for a lake query unless this term committed table rows since.
    async fn committed_rows(self: &Arc<Self>, table: &str, sql: &str) -> Result<Vec<RecordBatch>> {
        let commits = self.live.commits.load(std::sync::atomic::Ordering::Acquire);
        {
            let mut cache = self.committed.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.iter_mut().find(|c| c.commits == commits && c.sql == sql) {
                if c.at.elapsed() >= CACHE_TTL && !c.refreshing {
                    c.refreshing = true;
                    let (me, table, sql) = (self.clone(), table.to_string(), sql.to_string());
                    tokio::spawn(async move {
                        if let Err(e) = me.read_committed(&table, &sql, commits).await {
                            tracing::debug!(error = %e, table, "Reading committed rows again failed; the next request retries.");
                            let mut cache = me.committed.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(c) = cache.iter_mut().find(|c| c.sql == sql) {
                                c.refreshing = false;
                            }
                        }
                    });
                }
                return Ok(c.rows.clone());
            }
        }
        self.read_committed(table, sql, commits).await
    }

    /// Runs `sql` on the lake and keeps its rows as of commit count `commits`.
    async fn read_committed(&self, table: &str, sql: &str, commits: u64) -> Result<Vec<RecordBatch>> {
        let at = std::time::Instant::now();
        let at_us = chrono::Utc::now().timestamp_micros();
        let q = self.lake_query(table).await?;
        let rows = match q.sql(sql).await {
            Ok((_, b)) => b,
            Err(Error::Config(_)) => Vec::new(), // nothing committed yet
            Err(e) => return Err(e),
        };
        let us = at.elapsed().as_micros() as u64;
        tracing::trace!(target: crate::telemetry::STAGES, what = "lake_query", started_us = at_us, us, "Lake query.");
        let mut cache = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        // A newer commit's rows are never replaced by older ones.
        if cache.iter().any(|c| c.sql == sql && c.commits > commits) {
            return Ok(rows);
        }
        cache.retain(|c| c.commits >= commits && c.sql != sql);
        if cache.len() >= CACHED_QUERIES {
            cache.pop_front();
        }
        cache.push_back(Cached { commits, at, sql: sql.to_string(), rows: rows.clone(), refreshing: false });
        Ok(rows)
    }

    pub async fn handle(self: &Arc<Self>, req: &Request) -> Response {
        let rest = req.path.trim_start_matches("/api/pipelines").trim_start_matches('/');
        if rest.is_empty() {
            return self.list();
        }
        let Some(name) = rest.strip_suffix("/windows") else {
            return Response::text(404, "use /api/pipelines/{name}/windows\n");
        };
        let Ok(Ok(_permit)) = tokio::time::timeout(LIVE_WAIT, self.permits.acquire()).await else {
            return Response::text(503, "busy: too many window requests at once; retry\n");
        };
        match self.windows(name, req).await {
            Ok(r) => r,
            Err(Error::Busy(m)) => Response::text(503, format!("{m}\n")),
            Err(Error::Config(m)) => Response::text(400, format!("{m}\n")),
            Err(e) => Response::text(500, format!("{e}\n")),
        }
    }

    fn list(&self) -> Response {
        let list: Vec<serde_json::Value> = self
            .live
            .tables
            .iter()
            .map(|(spec, schema)| {
                serde_json::json!({
                    "name": spec.name,
                    "description": spec.description,
                    "window": spec.window.to_string(),
                    "watermark_seconds": spec.watermark_us as f64 / 1e6,
                    "allowed_lateness_seconds": spec.allowed_lateness_us as f64 / 1e6,
                    "columns": schema.fields().iter().map(|f| serde_json::json!({
                        "name": f.name(), "type": f.data_type().to_string(),
                    })).collect::<Vec<_>>(),
                    "windows": format!("/api/pipelines/{}/windows", spec.name),
                })
            })
            .collect();
        Response::new(200, "application/json", serde_json::Value::Array(list).to_string())
    }

    async fn windows(self: &Arc<Self>, name: &str, req: &Request) -> Result<Response> {
        let Some((_, schema)) = self.live.tables.iter().find(|(s, _)| s.name == name) else {
            return Ok(Response::text(404, format!("no pipeline {name:?}\n")));
        };
        let bound = |key: &str| -> Result<Option<i64>> {
            match req.param(key) {
                None => Ok(None),
                Some(v) => crate::decode::timestamp::parse_rfc3339_us(&v).map(Some).ok_or_else(|| {
                    Error::Config(format!("{key}={v:?}: use an RFC 3339 time, e.g. 2026-01-01T00:00:00Z"))
                }),
            }
        };
        let starts = Starts { from: bound("from")?, to: bound("to")? };
        let limit = match req.param("limit") {
            None => 1000,
            Some(v) => v.parse::<usize>().map_err(|_| Error::Config(format!("limit={v:?} is not a number")))?,
        }
        .min(MAX_LIMIT);

        // Committed rows.
        let mut cond = Vec::new();
        if let Some(f) = starts.from {
            cond.push(format!("window_start >= to_timestamp_micros({f})"));
        }
        if let Some(t) = starts.to {
            cond.push(format!("window_start < to_timestamp_micros({t})"));
        }
        let filter = if cond.is_empty() { String::new() } else { format!("WHERE {}", cond.join(" AND ")) };
        let sql =
            format!("SELECT * EXCEPT (window_date) FROM {name} {filter} ORDER BY window_start DESC LIMIT {limit}");
        let committed = self.committed_rows(name, &sql).await?;

        // Rows only the processor has.
        let (reply, answer) = oneshot::channel();
        self.live.requests.try_send(LiveRequest { pipeline: name.to_string(), starts, reply }).map_err(
            |e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    Error::Busy("busy: the processor has live requests queued".into())
                }
                mpsc::error::TrySendError::Closed(_) => Error::Busy("the pipeline has stopped (standby)".into()),
            },
        )?;
        let (open, pending) = tokio::time::timeout(LIVE_WAIT, answer)
            .await
            .map_err(|_| Error::Busy(format!("busy: the processor did not answer within {LIVE_WAIT:?}")))?
            .map_err(|_| Error::Internal("the pipeline has stopped".into()))??
            .unwrap_or_default();

        let out_schema = with_final(schema);
        let mut parts = Vec::new();
        let mut rank = Vec::new();
        for (source, (batches, is_final)) in [(committed, true), (pending, true), (open, false)].into_iter().enumerate()
        {
            for b in batches {
                let b = cast_to(&b, schema)?;
                let b = in_range(&b, &starts)?;
                if b.num_rows() > 0 {
                    rank.extend(revisions(&b).into_iter().map(|r| ((source as u64) << 32) | u64::from(r)));
                    let mut cols = b.columns().to_vec();
                    cols.push(Arc::new(BooleanArray::from(vec![is_final; b.num_rows()])) as ArrayRef);
                    parts.push(RecordBatch::try_new(out_schema.clone(), cols)?);
                }
            }
        }
        let mut all = concat_batches(&out_schema, &parts)?;
        if schema.column_with_name(REVISION_COLUMN).is_some() {
            all = latest_revisions(&all, &rank)?;
        }
        let idx =
            sort_to_indices(all.column(0), Some(SortOptions { descending: true, nulls_first: false }), Some(limit))?;
        let rows = take_record_batch(&all, &idx)?;
        encode(&rows, req)
    }
}

/// The `revision` column's values (`emit = "updates"` tables), else none.
fn revisions(b: &RecordBatch) -> Vec<u32> {
    b.column_by_name(REVISION_COLUMN)
        .and_then(|c| c.as_primitive_opt::<Int32Type>())
        .map(|r| r.values().iter().map(|&v| v as u32).collect())
        .unwrap_or_else(|| vec![0; b.num_rows()])
}

/// `emit = "updates"`: only each window's current rows: the live view of a window still
/// open, else its highest committed or pending revision. `rank` orders the rows' sources
/// (committed < pending < open) and revisions.
fn latest_revisions(all: &RecordBatch, rank: &[u64]) -> Result<RecordBatch> {
    let starts = all.column(0).as_primitive::<TimestampMicrosecondType>();
    let ends = all.column(1).as_primitive::<TimestampMicrosecondType>();
    let mut best: HashMap<(i64, i64), u64> = HashMap::new();
    for (i, &r) in rank.iter().enumerate() {
        let b = best.entry((starts.value(i), ends.value(i))).or_insert(r);
        *b = (*b).max(r);
    }
    let mask: BooleanArray =
        rank.iter().enumerate().map(|(i, &r)| Some(best[&(starts.value(i), ends.value(i))] == r)).collect();
    Ok(filter_record_batch(all, &mask)?)
}

/// The table schema plus `final`.
fn with_final(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("final", DataType::Boolean, false));
    Arc::new(Schema::new(fields))
}

/// Committed rows come back with the reader's types (e.g. string views): cast to the table's.
fn cast_to(b: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let cols = b
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// The rows of `b` whose `window_start` (its first column) is in `starts`.
fn in_range(b: &RecordBatch, starts: &Starts) -> Result<RecordBatch> {
    if *starts == Starts::ALL {
        return Ok(b.clone());
    }
    let starts_col = b
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| Error::Internal("window_start is not a timestamp".into()))?;
    let mask: BooleanArray = starts_col.iter().map(|v| v.map(|v| starts.contains(v))).collect();
    Ok(filter_record_batch(b, &mask)?)
}

fn encode(rows: &RecordBatch, req: &Request) -> Result<Response> {
    let accept = req.header("accept").unwrap_or("");
    let format = req.param("format").unwrap_or_else(|| {
        if accept.contains("text/csv") {
            "csv".into()
        } else if accept.contains("application/vnd.apache.arrow") {
            "arrow".into()
        } else {
            "json".into()
        }
    });
    let mut buf = Vec::new();
    match format.as_str() {
        "csv" => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut buf);
            w.write(rows)?;
            drop(w);
            Ok(Response::new(200, "text/csv; charset=utf-8", buf))
        }
        "arrow" => {
            let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut buf, &rows.schema())?;
            w.write(rows)?;
            w.finish()?;
            drop(w);
            Ok(Response::new(200, "application/vnd.apache.arrow.stream", buf))
        }
        "json" => {
            let mut w = arrow::json::ArrayWriter::new(&mut buf);
            w.write(rows)?;
            w.finish()?;
            drop(w);
            if buf.is_empty() {
                buf.extend_from_slice(b"[]");
            }
            Ok(Response::new(200, "application/json", buf))
        }
        other => Err(Error::Config(format!("format={other:?}: use json, csv or arrow"))),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::{Int64Array, StringArray};

    use super::*;
    use crate::sink::lake::{Lake, Placement};
    use crate::sink::table::TableBuffer;
    use crate::window::{Pipelines, plan, spec};

    /// 2026-12-07T00:00:00Z, µs.
    const DAY: i64 = 1_796_601_600_000_000;

    /// One committed row of window `minute` (as another writer, e.g. a backfill, writes it).
    async fn write_row(lake: &Lake, schema: &SchemaRef, minute: i64) {
        let start = DAY + minute * 60_000_000;
        let cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Timestamp(_, tz) => {
                    Arc::new(TimestampMicrosecondArray::from(vec![start]).with_timezone_opt(tz.clone())) as ArrayRef
                }
                DataType::Utf8 => Arc::new(StringArray::from(vec!["order.created"])),
                DataType::Int64 => Arc::new(Int64Array::from(vec![minute])),
                other => panic!("column {} of type {other} not in this test's pipeline", f.name()),
            })
            .collect();
        let mut table = TableBuffer::new("counts".into(), schema.clone(), 0);
        table.push(RecordBatch::try_new(schema.clone(), cols).unwrap()).unwrap();
        table.commit(lake, &format!("backfill-{minute}"), &Placement::Direct).await.unwrap();
    }

    async fn rows(source: &Arc<WindowsSource>) -> usize {
        let r = source.handle(&Request::get("/api/pipelines/counts/windows?format=csv")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        String::from_utf8_lossy(&r.body).lines().count() - 1
    }

    /// Committed rows are kept until this term commits again: another writer's rows show
    /// after `CACHE_TTL` without a request waiting for the lake (the stale rows answer while
    /// they are read again in the background), and this term's commit is read at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kept_rows_are_read_again_in_the_background_and_at_once_after_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let toml = "window = { kind = \"tumbling\", size = \"1m\" }\n\
                    sql = \"SELECT event_type, count(*) AS n FROM events GROUP BY event_type\"\n";
        let s = spec::parse(toml, Path::new("counts.toml")).unwrap();
        let c = plan::compile(&s).await.unwrap();
        let tables = Pipelines::new(vec![(s, c)]).unwrap().output_schemas();
        let schema = tables[0].1.clone();
        // The processor's side: no open windows.
        let (requests, mut rx) = mpsc::channel::<LiveRequest>(8);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let _ = r.reply.send(Ok(Some((Vec::new(), Vec::new()))));
            }
        });
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let live = Arc::new(LiveWindows { lake: lake.clone(), tables, requests, commits: commits.clone() });
        let source = Arc::new(WindowsSource::new(live));

        write_row(&lake, &schema, 0).await;
        assert_eq!(rows(&source).await, 1);
        write_row(&lake, &schema, 1).await;
        assert_eq!(rows(&source).await, 1, "kept until the TTL");
        tokio::time::sleep(CACHE_TTL + Duration::from_millis(50)).await;
        // Past the TTL the kept rows still answer; the background read brings the new one.
        let mut seen = rows(&source).await;
        assert_eq!(seen, 1, "the kept rows answer while they are read again");
        let waited = std::time::Instant::now();
        while seen < 2 && waited.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen = rows(&source).await;
        }
        assert_eq!(seen, 2, "another writer's row within the TTL and a background read");

        // This term's own commit: the next request reads the lake before answering.
        write_row(&lake, &schema, 2).await;
        commits.fetch_add(1, std::sync::atomic::Ordering::Release);
        assert_eq!(rows(&source).await, 3);
    }
}
