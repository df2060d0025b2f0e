//! Archive files kept open across checkpoints (`checkpoint_interval` < `roll_age`): what a
//! checkpoint saves of each, and how a recovery reads it back.
//!
//! A file that got at least [`PIECE_MIN_ROWS`] rows since its last Parquet save is saved as
//! **Parquet**: its writer closes the row group, and the checkpoint keeps the bytes the file
//! gained since the last save (already encoded and compressed: no row is encoded twice) with
//! a footer for every row group so far. The pieces joined, the last one with its footer, are
//! a complete Parquet file of the rows saved. A quieter file saves its new rows as an **Arrow
//! IPC segment** instead, so that its row groups stay large; its next Parquet piece holds
//! those rows too and supersedes the segments.
//!
//! The checkpoint's blobs are written by [`crate::checkpoint`]; a recovery reads the pieces
//! and segments back as rows ([`rows_of_pieces`]) and encodes them into a new writer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::{FileMetaData, ParquetMetaDataBuilder, ParquetMetaDataWriter, RowGroupMetaData};
use tokio::sync::oneshot;

use super::chunks::Chunks;
use super::schema::archive_schema;
use crate::error::{Error, Result};

/// New rows that make a file's next save a Parquet piece (fewer: an IPC segment). The
/// archive's encode batch: a piece's row group holds at least one full batch.
pub const PIECE_MIN_ROWS: usize = 8192;

/// An archive file kept open across checkpoints: where it goes and the checkpoint blobs
/// holding its rows so far: Parquet pieces, then IPC segments of the rows after them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenFileState {
    pub day: i32,
    pub event_type: String,
    pub target: String,
    pub opened_ms: i64,
    pub rows: u64,
    /// The file's bytes, in order (absent in checkpoints of versions before pieces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<Piece>,
    /// Rows after the pieces, as Arrow IPC blobs.
    pub segments: Vec<String>,
}

/// A blob holding bytes of a file from where the previous piece ended, then the footer of
/// every row group up to it (the footer's own length, in its last 8 bytes, tells where the
/// bytes end: only the last piece's footer is used).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Piece {
    pub blob: String,
    /// The file's bytes the blob holds (before the footer). Written by versions that named a
    /// piece only once it was encoded; checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
}

/// What a checkpoint saves of one open file.
pub enum Unsaved {
    /// Rows since the last save, for an IPC segment.
    Rows(Vec<RecordBatch>),
    /// The blob of a [`Piece`], once the file's writer has closed its row group (on the
    /// encoding pool, while the processor goes on).
    Parquet(PieceTask),
}

/// A Parquet piece being made: its blob's bytes (the file's since the last piece, then
/// the footer).
pub struct PieceTask(pub(super) oneshot::Receiver<Result<Vec<Bytes>>>);

impl Future for PieceTask {
    type Output = Result<Vec<Bytes>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(Error::Internal("an archive piece's encoder stopped".into()))))
    }
}

/// The file's bytes a piece's blob holds: all but its footer.
fn piece_data<'a>(piece: &Piece, blob: &'a [u8]) -> std::result::Result<&'a [u8], String> {
    let n = blob.len();
    if n < 8 || &blob[n - 4..] != b"PAR1" {
        return Err(format!("{}: not a Parquet piece (no footer)", piece.blob));
    }
    let footer = u32::from_le_bytes([blob[n - 8], blob[n - 7], blob[n - 6], blob[n - 5]]) as usize;
    let len = n.checked_sub(footer + 8).ok_or_else(|| format!("{}: footer longer than the piece", piece.blob))?;
    if piece.len.is_some_and(|l| l != len as u64) {
        return Err(format!("{}: {len} bytes before the footer, the checkpoint says {:?}", piece.blob, piece.len));
    }
    Ok(&blob[..len])
}

/// Closes the writer's row group and returns the bytes written from `from` on plus the
/// footer of every row group so far (blocking: it encodes the row group's last pages).
pub(super) fn flush_piece(w: &mut ArrowWriter<Chunks>, from: usize) -> Result<Vec<Bytes>> {
    w.flush()?;
    // The writer buffers its last bytes (a `BufWriter`): they belong to the piece.
    w.sync()?;
    let mut data = w.inner().tail(from);
    let len = data.iter().map(Bytes::len).sum::<usize>();
    if from + len != w.bytes_written() {
        let written = w.bytes_written();
        return Err(Error::Internal(format!("a Parquet piece of bytes {from}..{} of {written} written", from + len)));
    }
    data.push(Bytes::from(footer(w.flushed_row_groups())?));
    Ok(data)
}

/// A Parquet footer (metadata, its length, magic) for `row_groups`.
fn footer(row_groups: &[RowGroupMetaData]) -> Result<Vec<u8>> {
    let Some(first) = row_groups.first() else {
        return Err(Error::Internal("a Parquet piece without a row group".into()));
    };
    let rows = row_groups.iter().map(RowGroupMetaData::num_rows).sum();
    let created_by = Some(format!("eventide {}", env!("CARGO_PKG_VERSION")));
    let file = FileMetaData::new(1, rows, created_by, None, first.schema_descr_ptr(), None);
    let metadata = ParquetMetaDataBuilder::new(file).set_row_groups(row_groups.to_vec()).build();
    let mut out = Vec::new();
    ParquetMetaDataWriter::new(&mut out, &metadata).finish()?;
    Ok(out)
}

/// Recovery: the rows of a file's pieces (`blobs` in order, each as stored).
pub fn rows_of_pieces(pieces: &[Piece], blobs: Vec<Bytes>) -> Result<Vec<RecordBatch>> {
    let path = pieces.last().map(|p| p.blob.clone()).unwrap_or_default();
    let bad = |reason: String| Error::State { path: path.clone().into(), reason };
    let mut file = Vec::with_capacity(blobs.iter().map(Bytes::len).sum());
    let last = blobs.len().saturating_sub(1);
    for (i, (piece, blob)) in pieces.iter().zip(&blobs).enumerate() {
        let data = piece_data(piece, blob).map_err(&bad)?;
        if i < last {
            // Earlier pieces' footers are superseded by the last one's.
            file.extend_from_slice(data);
        } else {
            file.extend_from_slice(blob);
        }
    }
    let options = ArrowReaderOptions::new().with_schema(archive_schema());
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(Bytes::from(file), options)
        .map_err(|e| bad(format!("saved Parquet pieces: {e}")))?
        .with_batch_size(8192)
        .build()
        .map_err(|e| bad(format!("saved Parquet pieces: {e}")))?;
    reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| bad(format!("saved Parquet pieces: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeOptions, Decoder};
    use crate::entry::EntryId;
    use crate::generator::{GenOptions, Generator, Kind};
    use crate::sink::archive::{Archive, ArchiveOptions};
    use crate::sink::lake::Lake;
    use arrow::array::{Array, StringArray};

    fn archive() -> Archive {
        let opts = ArchiveOptions {
            prefix: "events".into(),
            roll_bytes: 1 << 30,
            max_buffered_bytes: 1 << 30,
            max_open_files: 1000,
            zstd_level: 1,
            writer: "t".into(),
        };
        let mut a = Archive::new(Lake::open("memory://").unwrap(), opts).unwrap();
        a.keep_segments = true;
        a
    }

    /// Appends generated events of `partition` (type, day; the first event's when unset),
    /// entry ids from `from`; their ids.
    async fn append(a: &mut Archive, n: usize, from: u64, partition: &mut Option<(String, i64)>) -> Vec<String> {
        let mut d = Decoder::new(DecodeOptions::default());
        let opts = GenOptions { entries: n as u64 * 30, duplicates: 0.0, seed: from, ..Default::default() };
        let mut ids = Vec::new();
        for (i, e) in Generator::new(opts).filter(|e| e.kind == Kind::Event).enumerate() {
            let raw = e.to_raw(EntryId { ms: from + i as u64, seq: 0 });
            let ev = d.decode(&raw, chrono::Utc::now().timestamp_micros()).unwrap();
            let key = (ev.event_type.to_string(), ev.event_time_us.div_euclid(86_400_000_000));
            if *partition.get_or_insert_with(|| key.clone()) != key {
                continue;
            }
            a.append(&ev, "events", raw.id, 0).unwrap();
            ids.push(ev.event_id.to_string());
            if ids.len() == n {
                break;
            }
            if ids.len() % 1000 == 0 {
                a.encode_ready().await.unwrap();
            }
        }
        assert_eq!(ids.len(), n, "the generator made enough events of one partition");
        ids
    }

    /// A checkpoint's blobs: a piece's bytes, or a segment's rows (the checkpoint encodes
    /// them as IPC, tested with it).
    type Blobs = Vec<(String, std::result::Result<Bytes, Vec<RecordBatch>>)>;

    /// Saves what the archive hands to a checkpoint into `blobs`; returns whether each
    /// file's save was a Parquet piece.
    async fn checkpoint(a: &mut Archive, blobs: &mut Blobs) -> Vec<bool> {
        let mut kinds = Vec::new();
        for (key, unsaved) in a.unsaved().await.unwrap() {
            let name = format!("blob-{}", blobs.len());
            let (blob, piece) = match unsaved {
                Unsaved::Parquet(task) => (Ok(Bytes::from(task.await.unwrap().concat())), true),
                Unsaved::Rows(rows) => (Err(rows), false),
            };
            kinds.push(piece);
            blobs.push((name.clone(), blob));
            a.saved(&key, name, piece);
        }
        kinds
    }

    fn get(blobs: &Blobs, name: &str) -> std::result::Result<Bytes, Vec<RecordBatch>> {
        blobs.iter().find(|(n, _)| n == name).unwrap().1.clone()
    }

    fn piece_rows(state: &OpenFileState, blobs: &Blobs) -> Vec<RecordBatch> {
        let bytes = state.pieces.iter().map(|p| get(blobs, &p.blob).unwrap()).collect();
        rows_of_pieces(&state.pieces, bytes).unwrap()
    }

    fn event_ids(rows: &[RecordBatch]) -> Vec<String> {
        let mut out = Vec::new();
        for b in rows {
            let col = b.column_by_name("event_id").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
            out.extend((0..col.len()).map(|i| col.value(i).to_string()));
        }
        out
    }

    /// What a recovery reads back of the file: its pieces' rows, then its segments'.
    fn restored(state: &OpenFileState, blobs: &Blobs) -> Vec<String> {
        let mut rows = match state.pieces.is_empty() {
            true => Vec::new(),
            false => piece_rows(state, blobs),
        };
        for seg in &state.segments {
            rows.extend(get(blobs, seg).unwrap_err());
        }
        event_ids(&rows)
    }

    #[tokio::test]
    async fn pieces_and_segments_give_back_every_row_in_order() {
        let (mut a, mut blobs, mut p) = (archive(), Vec::new(), None);
        // One partition throughout. Few rows: an IPC segment. Then enough for a piece (which holds the segment's rows
        // too). Then few again: a segment after the piece. Then a second piece.
        let mut ids = append(&mut a, 300, 1, &mut p).await;
        assert_eq!(checkpoint(&mut a, &mut blobs).await, [false]);
        ids.extend(append(&mut a, PIECE_MIN_ROWS, 10_000_000, &mut p).await);
        assert_eq!(checkpoint(&mut a, &mut blobs).await, [true]);
        let state = &a.open_files()[0];
        assert!(state.segments.is_empty(), "the piece supersedes the segment: {state:?}");
        ids.extend(append(&mut a, 200, 20_000_000, &mut p).await);
        assert_eq!(checkpoint(&mut a, &mut blobs).await, [false]);
        assert_eq!(restored(&a.open_files()[0], &blobs), ids);
        ids.extend(append(&mut a, PIECE_MIN_ROWS + 5, 30_000_000, &mut p).await);
        assert_eq!(checkpoint(&mut a, &mut blobs).await, [true]);
        let state = a.open_files()[0].clone();
        assert_eq!((state.pieces.len(), state.segments.len()), (2, 0));
        assert_eq!(restored(&state, &blobs), ids);
        // Nothing new: nothing saved.
        assert!(checkpoint(&mut a, &mut blobs).await.is_empty());

        // A recovery reopens the file from them; its next save is the whole file as one piece,
        // and the finished file holds every row once, in order.
        let mut b = archive();
        b.reopen(&state, piece_rows(&state, &blobs)).await.unwrap();
        let mut blobs_b = Vec::new();
        assert_eq!(checkpoint(&mut b, &mut blobs_b).await, [true]);
        assert_eq!(restored(&b.open_files()[0], &blobs_b), ids);
        let files = b.commit_all().await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].rows, ids.len() as u64);
    }
}
