//! The archive's files merged back into the order the live run processed their rows:
//! ingest time, then stream, then entry id (the events of one read batch share an ingest
//! time). Each file the archive writes is in that order already (rows are appended as they
//! are processed, and compaction merges with this), so a k-way merge replaces a full sort:
//! `eventide replay <lake>/events` and `eventide backfill` read through it, and compaction
//! keeps the order with it.
//!
//! Memory stays bounded by the files that overlap in ingest time, not by the archive: a file
//! is opened only when the merge reaches the lowest ingest time in its footer, and each open
//! file holds at most a few batches of `batch_rows` rows (decoded on its own task, so files
//! decode in parallel with the caller's work). A file whose rows are out of that order
//! (written by something else) is an error naming it, never a silent misorder.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::TimestampMicrosecondType;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::statistics::Statistics;
use tokio::sync::mpsc;

use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::events::Col;
use crate::sink::file::LakeFile;

/// Footers read at once when the merge opens.
const FOOTERS_AT_ONCE: usize = 16;
/// Decoded batches waiting per open file.
const PREFETCH: usize = 1;

/// A row's place in the live order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    ingest_us: i64,
    stream: Box<str>,
    id: EntryId,
}

/// A file not opened yet: it starts at `min_ingest_us` or later.
struct Pending {
    path: Path,
    size: u64,
    min_ingest_us: i64,
}

/// A decoded archive batch with its key columns typed once: the runs cut from it share it.
pub struct ArchiveBatch {
    pub batch: RecordBatch,
    pub ingest: TimestampMicrosecondArray,
    pub stream: StringArray,
    /// `stream_id` parsed.
    pub ids: Vec<EntryId>,
}

impl ArchiveBatch {
    fn new(batch: RecordBatch, path: &Path) -> Result<ArchiveBatch> {
        let col = |c: Col| batch.column_by_name(c.name()).ok_or_else(|| bad(path, format!("no column {}", c.name())));
        let ingest = col(Col::IngestTime)?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .cloned()
            .ok_or_else(|| bad(path, "ingest_time is not a timestamp of microseconds".into()))?;
        let text = |c: Col| -> Result<StringArray> {
            col(c)?.as_string_opt::<i32>().cloned().ok_or_else(|| bad(path, format!("{} is not text", c.name())))
        };
        let (stream, sids) = (text(Col::Stream)?, text(Col::StreamId)?);
        let ids = (0..sids.len())
            .map(|i| {
                sids.value(i)
                    .parse()
                    .map_err(|_| bad(path, format!("stream_id {:?} is not an entry id", sids.value(i))))
            })
            .collect::<Result<Vec<EntryId>>>()?;
        Ok(ArchiveBatch { batch, ingest, stream, ids })
    }
}

/// Where a file's merge is: its current batch and row.
struct Cursor {
    rows: Arc<ArchiveBatch>,
    row: usize,
}

impl Cursor {
    fn new(batch: RecordBatch, path: &Path) -> Result<Cursor> {
        Ok(Cursor { rows: Arc::new(ArchiveBatch::new(batch, path)?), row: 0 })
    }

    fn len(&self) -> usize {
        self.rows.ids.len()
    }

    fn key(&self, i: usize) -> Key {
        let r = &self.rows;
        Key { ingest_us: r.ingest.value(i), stream: r.stream.value(i).into(), id: r.ids[i] }
    }

    /// Whether row `a` sorts after row `b` (compared without allocating).
    fn after(&self, a: usize, b: usize) -> bool {
        let r = &self.rows;
        let (ta, tb) = (r.ingest.value(a), r.ingest.value(b));
        if ta != tb {
            return ta > tb;
        }
        match r.stream.value(a).cmp(r.stream.value(b)) {
            std::cmp::Ordering::Equal => r.ids[a] > r.ids[b],
            o => o == std::cmp::Ordering::Greater,
        }
    }

    /// Whether row `i` sorts before `bound` (compared without allocating).
    fn before(&self, i: usize, bound: &Key) -> bool {
        let r = &self.rows;
        let ingest = r.ingest.value(i);
        if ingest != bound.ingest_us {
            return ingest < bound.ingest_us;
        }
        match r.stream.value(i).cmp(&bound.stream) {
            std::cmp::Ordering::Equal => r.ids[i] < bound.id,
            o => o == std::cmp::Ordering::Less,
        }
    }
}

/// An open file: its decoded batches arrive from its task.
struct Input {
    path: Path,
    rx: mpsc::Receiver<Result<RecordBatch>>,
    cursor: Cursor,
    /// The key of the last row handed out.
    last: Option<Key>,
}

/// The archive's rows in live order, as runs: a batch and a range of its rows.
pub struct LiveOrder {
    store: Arc<dyn ObjectStore>,
    /// Files not open yet, the earliest last.
    pending: Vec<Pending>,
    inputs: Vec<Option<Input>>,
    heap: BinaryHeap<Reverse<(Key, usize)>>,
    batch_rows: usize,
    /// Columns read (`None`: all); the key columns always are.
    columns: Option<Vec<String>>,
}

impl LiveOrder {
    /// Reads the footers of `files` (paths in `store`, with their sizes); nothing is decoded
    /// until [`LiveOrder::next`].
    pub async fn open(store: Arc<dyn ObjectStore>, files: Vec<(Path, u64)>, batch_rows: usize) -> Result<LiveOrder> {
        let mut pending: Vec<Pending> = futures::stream::iter(files)
            .map(|(path, size)| {
                let store = store.clone();
                async move {
                    let builder = ParquetRecordBatchStreamBuilder::new(LakeFile::new(store, path.clone(), size))
                        .await
                        .map_err(|e| bad(&path, e.to_string()))?;
                    let min = min_ingest(builder.metadata(), builder.parquet_schema());
                    Ok::<_, Error>(Pending { path, size, min_ingest_us: min })
                }
            })
            .buffer_unordered(FOOTERS_AT_ONCE)
            .try_collect()
            .await?;
        pending.sort_by(|a, b| (b.min_ingest_us, &b.path).cmp(&(a.min_ingest_us, &a.path)));
        Ok(LiveOrder {
            store,
            pending,
            inputs: Vec::new(),
            heap: BinaryHeap::new(),
            batch_rows: batch_rows.max(1),
            columns: None,
        })
    }

    /// Reads only these columns (and the key columns) of the files opened from now on.
    pub fn project(&mut self, columns: &[&str]) {
        let mut cols: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        for k in [Col::IngestTime, Col::Stream, Col::StreamId] {
            if !cols.iter().any(|c| c == k.name()) {
                cols.push(k.name().to_string());
            }
        }
        self.columns = Some(cols);
    }

    /// The next run of rows in live order (a batch and a range of its rows, at least one),
    /// or `None` when every file is read.
    pub async fn next(&mut self) -> Result<Option<(Arc<ArchiveBatch>, Range<usize>)>> {
        // Open every file that may hold a row at or before the smallest one in hand.
        while let Some(p) = self.pending.last() {
            if self.heap.peek().is_some_and(|Reverse((k, _))| k.ingest_us < p.min_ingest_us) {
                break;
            }
            let p = self.pending.pop().expect("peeked");
            self.activate(p).await?;
        }
        let Some(Reverse((head, i))) = self.heap.pop() else { return Ok(None) };
        // The run goes on while its rows sort before every other file's next row (and
        // before the first row a file not open yet may have).
        let mut bound = self.heap.peek().map(|Reverse((k, _))| k.clone());
        if let Some(p) = self.pending.last() {
            let opens = Key { ingest_us: p.min_ingest_us, stream: "".into(), id: EntryId::default() };
            bound = Some(bound.map_or(opens.clone(), |b| b.min(opens)));
        }
        let input = self.inputs[i].as_mut().expect("a file in the heap is open");
        let c = &input.cursor;
        let start = c.row;
        let mut end = start + 1;
        while end < c.len() && bound.as_ref().is_none_or(|b| c.before(end, b)) {
            end += 1;
        }
        // Within a file the order must hold: from the last row handed out to this run's
        // first, and from row to row within the run.
        let disorder = input.last.as_ref().is_some_and(|l| head < *l) || (start + 1..end).any(|r| c.after(r - 1, r));
        if disorder {
            return Err(bad(&input.path, "rows are not in ingest order (ingest_time, stream, stream_id)".into()));
        }
        input.last = Some(c.key(end - 1));
        let out = (c.rows.clone(), start..end);
        input.cursor.row = end;
        if end == input.cursor.len() {
            match next_batch(&mut input.rx, &input.path).await? {
                Some(next) => {
                    let first = next.key(0);
                    input.cursor = next;
                    self.heap.push(Reverse((first, i)));
                }
                None => self.inputs[i] = None,
            }
        } else {
            let k = input.cursor.key(end);
            self.heap.push(Reverse((k, i)));
        }
        Ok(Some(out))
    }

    /// Opens a file: its task decodes batches ahead; its first row joins the heap.
    async fn activate(&mut self, p: Pending) -> Result<()> {
        let (tx, mut rx) = mpsc::channel(PREFETCH);
        let (store, path, size, rows) = (self.store.clone(), p.path.clone(), p.size, self.batch_rows);
        let columns = self.columns.clone();
        tokio::spawn(async move {
            let stream = async {
                let mut b = ParquetRecordBatchStreamBuilder::new(LakeFile::new(store, path.clone(), size)).await?;
                if let Some(cols) = &columns {
                    let mask = ProjectionMask::columns(b.parquet_schema(), cols.iter().map(String::as_str));
                    b = b.with_projection(mask);
                }
                b.with_batch_size(rows).build()
            };
            let mut stream = match stream.await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(bad(&path, e.to_string()))).await;
                    return;
                }
            };
            while let Some(b) = stream.next().await {
                let failed = b.is_err();
                if tx.send(b.map_err(|e| bad(&path, e.to_string()))).await.is_err() || failed {
                    return;
                }
            }
        });
        if let Some(cursor) = next_batch(&mut rx, &p.path).await? {
            let first = cursor.key(0);
            self.heap.push(Reverse((first, self.inputs.len())));
            self.inputs.push(Some(Input { path: p.path, rx, cursor, last: None }));
        }
        Ok(())
    }
}

/// The next non-empty batch of a file, or `None` at its end.
async fn next_batch(rx: &mut mpsc::Receiver<Result<RecordBatch>>, path: &Path) -> Result<Option<Cursor>> {
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        if batch.num_rows() > 0 {
            return Ok(Some(Cursor::new(batch, path)?));
        }
    }
    Ok(None)
}

/// The lowest `ingest_time` in a file's row-group statistics (`i64::MIN` without them: such a
/// file opens first).
fn min_ingest(
    meta: &parquet::file::metadata::ParquetMetaData,
    schema: &parquet::schema::types::SchemaDescriptor,
) -> i64 {
    let Some(col) = schema.columns().iter().position(|c| c.name() == Col::IngestTime.name()) else { return i64::MIN };
    meta.row_groups()
        .iter()
        .map(|rg| match rg.column(col).statistics() {
            Some(Statistics::Int64(s)) => s.min_opt().copied().unwrap_or(i64::MIN),
            _ => i64::MIN,
        })
        .min()
        .unwrap_or(i64::MAX)
}

fn bad(path: &Path, why: String) -> Error {
    Error::State { path: path.as_ref().into(), reason: why }
}

/// Whether a schema has the columns of the live order (the archive's files do).
pub fn has_live_order(schema: &arrow::datatypes::Schema) -> bool {
    [Col::IngestTime, Col::Stream, Col::StreamId].iter().all(|c| schema.column_with_name(c.name()).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};
    use parquet::arrow::ArrowWriter;

    /// A file of (ingest, stream, id) rows, in the archive's schema's key columns.
    fn file(rows: &[(i64, &str, &str)]) -> Vec<u8> {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            Col::IngestTime.field(),
            Col::Stream.field(),
            Col::StreamId.field(),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>()).with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(Vec::new(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.into_inner().unwrap()
    }

    async fn merged(files: Vec<Vec<(i64, &str, &str)>>, batch_rows: usize) -> Result<Vec<(i64, String, String)>> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut list = Vec::new();
        for (i, rows) in files.iter().enumerate() {
            let bytes = file(rows);
            let path = Path::from(format!("f{i}.parquet"));
            list.push((path.clone(), bytes.len() as u64));
            store.put(&path, PutPayload::from(bytes)).await.unwrap();
        }
        let mut order = LiveOrder::open(store, list, batch_rows).await?;
        let mut out = Vec::new();
        while let Some((b, range)) = order.next().await? {
            for r in range {
                out.push((b.ingest.value(r), b.stream.value(r).to_string(), b.ids[r].to_string()));
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn files_merge_into_ingest_stream_id_order() {
        let a = vec![(1, "s", "1-0"), (1, "s", "3-0"), (5, "s", "9-0"), (5, "t", "1-0"), (9, "s", "20-0")];
        let b = vec![(1, "s", "2-0"), (1, "s", "10-0"), (5, "s", "8-5"), (7, "s", "11-0")];
        // A file starting later opens late; one starting at the same time ties by stream.
        let c = vec![(5, "r", "1-0"), (9, "s", "19-0")];
        for rows in [1, 2, 1000] {
            let got = merged(vec![a.clone(), b.clone(), c.clone(), vec![]], rows).await.unwrap();
            let mut want: Vec<(i64, String, String)> =
                [&a, &b, &c].into_iter().flatten().map(|(t, s, id)| (*t, s.to_string(), id.to_string())).collect();
            want.sort_by_key(|(t, s, id)| (*t, s.clone(), id.parse::<EntryId>().unwrap()));
            assert_eq!(got, want, "batches of {rows} rows");
        }
    }

    #[tokio::test]
    async fn a_file_out_of_order_is_an_error_naming_it() {
        let good = vec![(1, "s", "1-0"), (2, "s", "2-0")];
        let bad = vec![(1, "s", "5-0"), (3, "s", "7-0"), (2, "s", "6-0")];
        for rows in [1, 1000] {
            let e = merged(vec![good.clone(), bad.clone()], rows).await.unwrap_err().to_string();
            assert!(e.contains("f1.parquet") && e.contains("not in ingest order"), "{e}");
        }
    }
}
