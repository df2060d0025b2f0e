//! One open archive file: its column builders and its Parquet writer ([`Encoder`]: here, or
//! encoding on the pool, or being saved by a checkpoint), the rows a small file keeps from its
//! writer, and what it holds in memory. The archive ([`super::Archive`]) owns these, one per
//! partition.

use std::time::Instant;

use object_store::PutPayload;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{FILE_OVERHEAD, ROW_GROUP_OVERHEAD};
use crate::error::{Error, Result};
use crate::pool::{self, Task};
use crate::sink::chunks::Chunks;
use crate::sink::schema::Columns;
use crate::sink::segments::{PIECE_MIN_ROWS, Piece, flush_piece};

pub(super) type Writer = ArrowWriter<Chunks>;
pub(super) type PieceSender = oneshot::Sender<Result<Vec<bytes::Bytes>>>;

/// A file's Parquet writer: here, or encoding a batch on the encoding pool ([`crate::pool`]).
pub(super) enum Encoder {
    Idle(Box<Writer>),
    Busy(Task<Result<Writer>>),
    /// A checkpoint's save of the file: its last rows encoded after any encode in flight
    /// and, for a piece, its row group closed (the processor does not wait for it).
    /// `piece`: the writer's bytes then are all saved.
    Saving {
        task: JoinHandle<Result<Writer>>,
        piece: bool,
    },
    /// An earlier encode failed (its error was returned then).
    Lost,
}

impl Encoder {
    /// Nothing in flight (or it is done: taking the writer does not wait).
    pub(super) fn is_free(&self) -> bool {
        match self {
            Encoder::Busy(t) => t.is_finished(),
            Encoder::Saving { task, .. } => task.is_finished(),
            _ => true,
        }
    }

    /// The writer, once what is in flight is done.
    pub(super) async fn into_writer(self) -> Result<Writer> {
        match self {
            Encoder::Idle(w) => Ok(*w),
            Encoder::Busy(t) => t.await?,
            Encoder::Saving { task, .. } => task.await.map_err(|e| Error::Internal(format!("encoder task: {e}")))?,
            Encoder::Lost => Err(Error::Internal("archive writer lost after an earlier encode error".into())),
        }
    }

    /// After this encoder's work: `rest` encoded and, with `piece` (from the byte where the
    /// last piece ended), the row group closed and the piece's bytes sent; all in a task, on
    /// the encoding pool.
    pub(super) fn then_save(
        self,
        rest: Vec<arrow::array::RecordBatch>,
        piece: Option<(usize, PieceSender)>,
    ) -> Encoder {
        let is_piece = piece.is_some();
        let (from, tx) = piece.map_or((None, None), |(from, tx)| (Some(from), Some(tx)));
        let task = tokio::spawn(async move {
            let done = match self.into_writer().await {
                Ok(mut w) => pool::spawn(move || {
                    for batch in &rest {
                        w.write(batch)?;
                    }
                    let bytes = from.map(|from| flush_piece(&mut w, from)).transpose()?;
                    Ok::<_, Error>((w, bytes))
                })
                .await
                .and_then(|r| r),
                Err(e) => Err(e),
            };
            match done {
                Ok((w, bytes)) => {
                    if let (Some(tx), Some(bytes)) = (tx, bytes) {
                        let _ = tx.send(Ok(bytes));
                    }
                    Ok(w)
                }
                Err(e) => {
                    if let Some(tx) = tx {
                        let _ = tx.send(Err(Error::Internal(format!("archive piece: {e}"))));
                    }
                    Err(e)
                }
            }
        });
        Encoder::Saving { task, piece: is_piece }
    }
}

pub(super) struct OpenFile {
    pub(super) columns: Columns,
    pub(super) encoder: Encoder,
    /// Encoded bytes as of the last finished encode, plus batches in flight (estimated).
    pub(super) encoded_size: usize,
    pub(super) rows: u64,
    pub(super) opened: Instant,
    pub(super) opened_ms: i64,
    /// Where the file will be visible (fixed when it opens, so a recovery finishes the same file).
    pub(super) target: Path,
    pub(super) keep_segments: bool,
    /// Rows handed to the writer since the file's last Parquet piece (or its opening).
    pub(super) since_piece: usize,
    /// Rows encoded since the last checkpoint, kept while the next save may be an IPC
    /// segment (fewer than [`PIECE_MIN_ROWS`] new rows); dropped once it will be a piece.
    pub(super) captured: Vec<arrow::array::RecordBatch>,
    /// Something to save at the next checkpoint (new rows, or a reopened file).
    pub(super) dirty: bool,
    /// Checkpoint blobs holding this file so far: Parquet pieces, and IPC segments after them.
    pub(super) pieces: Vec<Piece>,
    pub(super) segments: Vec<String>,
    /// Bytes of the file the pieces hold (updated when a save that made a piece is done).
    pub(super) saved_bytes: usize,
    /// Rows taken from the builders for a checkpoint's IPC segment and not handed to the
    /// writer yet (with their builders' bytes): a file that stays small starts no row group
    /// (whose bloom filters take [`ROW_GROUP_OVERHEAD`]) until it is finished or grows.
    pub(super) deferred: Vec<arrow::array::RecordBatch>,
    pub(super) deferred_rows: usize,
    pub(super) deferred_bytes: usize,
    /// The writer has been handed rows (its row group and bloom filters exist).
    pub(super) writing: bool,
}

impl OpenFile {
    /// The writer, once any in-flight encode is done.
    pub(super) async fn writer(&mut self) -> Result<Writer> {
        let (idle, piece) = match &self.encoder {
            Encoder::Idle(_) => (true, false),
            Encoder::Saving { piece, .. } => (false, *piece),
            _ => (false, false),
        };
        let w = std::mem::replace(&mut self.encoder, Encoder::Lost).into_writer().await?;
        if !idle {
            self.encoded_size = w.bytes_written() + w.in_progress_size();
        }
        if piece {
            // A piece ends where the writer's bytes do (`flush_piece` checked).
            self.saved_bytes = w.bytes_written();
        }
        Ok(w)
    }

    /// Hands the buffered rows to the encoding pool, so encoding and compression overlap with
    /// decoding the next entries. Waits for this file's previous encode first (backpressure).
    pub(super) async fn encode_buffered(&mut self) -> Result<()> {
        let w = self.writer().await?;
        let batches = self.take_for_writer();
        self.encode(w, batches);
        Ok(())
    }

    /// Rows buffered in the builders or deferred.
    pub(super) fn waiting_rows(&self) -> usize {
        self.columns.rows + self.deferred_rows
    }

    /// Takes the builders' rows as a batch, deferred (noted for the next save).
    pub(super) fn defer_buffered(&mut self) {
        if self.columns.rows == 0 {
            return;
        }
        let bytes = self.columns.bytes;
        let batch = self.columns.finish();
        self.note_encoding(&batch);
        (self.deferred_rows, self.deferred_bytes) =
            (self.deferred_rows + batch.num_rows(), self.deferred_bytes + bytes);
        self.deferred.push(batch);
    }

    /// Every row not handed to the writer yet, as batches for it (counted as encoding).
    pub(super) fn take_for_writer(&mut self) -> Vec<arrow::array::RecordBatch> {
        self.defer_buffered();
        self.encoded_size += self.deferred_bytes / 4;
        (self.deferred_rows, self.deferred_bytes) = (0, 0);
        let batches = std::mem::take(&mut self.deferred);
        self.writing |= !batches.is_empty();
        batches
    }

    pub(super) fn encode(&mut self, mut w: Writer, batches: Vec<arrow::array::RecordBatch>) {
        self.encoder = Encoder::Busy(pool::spawn(move || {
            for batch in &batches {
                w.write(batch)?;
            }
            Ok(w)
        }));
    }

    /// What the next save holds of rows going to the writer.
    pub(super) fn note_encoding(&mut self, batch: &arrow::array::RecordBatch) {
        if self.keep_segments {
            self.since_piece += batch.num_rows();
            self.dirty = true;
            if self.since_piece < PIECE_MIN_ROWS {
                self.captured.push(batch.clone());
            } else {
                // The next save is a Parquet piece: it holds these rows.
                self.captured.clear();
            }
        }
    }

    /// Encodes what is left and returns the complete Parquet file.
    pub(super) async fn finish(mut self) -> Result<PutPayload> {
        let mut w = self.writer().await?;
        let rest = self.take_for_writer();
        pool::spawn(move || {
            for batch in &rest {
                w.write(batch)?;
            }
            Ok(w.into_inner()?.into_payload())
        })
        .await?
    }

    pub(super) fn size(&self) -> usize {
        self.encoded_size + (self.columns.bytes + self.deferred_bytes) / 4
    }

    /// Memory held: encoded bytes, buffered rows and the writer's own overhead.
    pub(super) fn memory(&self) -> usize {
        let row_group = if self.writing { ROW_GROUP_OVERHEAD } else { 0 };
        self.encoded_size + self.columns.bytes + self.deferred_bytes + FILE_OVERHEAD + row_group
    }
}
