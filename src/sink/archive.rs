//! The event archive: every accepted, deduplicated event as hive-partitioned Parquet,
//! `events/event_date=YYYY-MM-DD/event_type=<type>/part-<ms>-<writer>-<n>.parquet`.
//!
//! Rows go straight from the decoder into per-partition column builders, then into an
//! in-memory Parquet writer (zstd). A file is finished when it reaches the roll size, when the
//! buffered total exceeds its budget, or at a checkpoint (when it reached `roll_age`, or at
//! every checkpoint unless files are kept open); finished files are staged and published by
//! the checkpoint that lists them ([`crate::checkpoint`]). A file kept open across a checkpoint
//! hands what it got since the previous one to the checkpoint (its new Parquet bytes, or its
//! new rows when few: [`super::segments`]) and can be reopened from them.
//!
//! **Memory is bounded by settings, whatever the input.** Every open file counts its encoded
//! bytes, its builders' bytes and a fixed overhead ([`FILE_OVERHEAD`]: the writer and its
//! builders' first allocations) against `max_buffered_bytes`; at most `max_open_files`
//! partitions are open (a flood of distinct event types or dates). Over either bound the
//! oldest files are finished early (staged, published by the next checkpoint): data is never
//! refused, files just get smaller. [`Archive::bounds`] counts what happened, for metrics.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hashbrown::{Equivalent, HashMap};
use object_store::PutPayload;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::chunks::Chunks;
use super::lake::{Lake, Placement};
use super::schema::{Columns, archive_schema};
pub use super::segments::OpenFileState;
use super::segments::{PIECE_MIN_ROWS, Piece, Unsaved, flush_piece};
pub use crate::config::ArchiveOptions;
use crate::decode::Event;
use crate::decode::timestamp::civil_from_days;
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::pool::{self, Task};

/// Rows buffered per partition before they are encoded.
const ENCODE_ROWS: usize = 8192;
/// Rows per Parquet row group (DuckDB's own row group size): row groups are flushed as the
/// file grows, so a commit only finishes the last one.
const ROW_GROUP_ROWS: usize = 122_880;
/// Files finished and written at once during a commit.
const COMMIT_CONCURRENCY: usize = 4;
/// Memory of an open file beyond its rows: the Parquet writer (12 column writers) and the
/// builders' first allocations. Measured with the bounds lifted: 20,000 open one-row
/// partitions held ~1.5 GiB, ~75 KiB each (BENCHMARKS.md); rounded up.
pub const FILE_OVERHEAD: usize = 96 * 1024;

/// What a commit made visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedFile {
    /// Where readers see it (once published, when staged).
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Where it waits for its checkpoint ([`Placement::Staged`]).
    pub staged: Option<String>,
}

#[derive(Hash, PartialEq, Eq)]
struct KeyRef<'a> {
    day: i32,
    event_type: &'a str,
}

impl Equivalent<(i32, Box<str>)> for KeyRef<'_> {
    fn equivalent(&self, key: &(i32, Box<str>)) -> bool {
        self.day == key.0 && self.event_type == &*key.1
    }
}

type Writer = ArrowWriter<Chunks>;

/// A file's Parquet writer: here, or encoding a batch on the encoding pool ([`crate::pool`]).
enum Encoder {
    Idle(Box<Writer>),
    Busy(Task<Result<Writer>>),
    /// An earlier encode failed (its error was returned then).
    Lost,
}

struct OpenFile {
    columns: Columns,
    encoder: Encoder,
    /// Encoded bytes as of the last finished encode, plus batches in flight (estimated).
    encoded_size: usize,
    rows: u64,
    opened: Instant,
    opened_ms: i64,
    /// Where the file will be visible (fixed when it opens, so a recovery finishes the same file).
    target: Path,
    keep_segments: bool,
    /// Rows handed to the writer since the file's last Parquet piece (or its opening).
    since_piece: usize,
    /// Rows encoded since the last checkpoint, kept while the next save may be an IPC
    /// segment (fewer than [`PIECE_MIN_ROWS`] new rows); dropped once it will be a piece.
    captured: Vec<arrow::array::RecordBatch>,
    /// Something to save at the next checkpoint (new rows, or a reopened file).
    dirty: bool,
    /// Checkpoint blobs holding this file so far: Parquet pieces, and IPC segments after them.
    pieces: Vec<Piece>,
    segments: Vec<String>,
    /// Bytes of the file the pieces hold.
    saved_bytes: usize,
}

impl OpenFile {
    /// The writer, once any in-flight encode is done.
    async fn writer(&mut self) -> Result<Writer> {
        match std::mem::replace(&mut self.encoder, Encoder::Lost) {
            Encoder::Idle(w) => Ok(*w),
            Encoder::Busy(h) => {
                let w = h.await??;
                self.encoded_size = w.bytes_written() + w.in_progress_size();
                Ok(w)
            }
            Encoder::Lost => Err(Error::Internal("archive writer lost after an earlier encode error".into())),
        }
    }

    /// Hands the buffered rows to the encoding pool, so encoding and compression overlap with
    /// decoding the next entries. Waits for this file's previous encode first (backpressure).
    async fn encode_buffered(&mut self) -> Result<()> {
        let w = self.writer().await?;
        self.encoded_size += self.columns.bytes / 4;
        let batch = self.columns.finish();
        self.encode(w, batch);
        Ok(())
    }

    fn encode(&mut self, mut w: Writer, batch: arrow::array::RecordBatch) {
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
        self.encoder = Encoder::Busy(pool::spawn(move || {
            w.write(&batch)?;
            Ok(w)
        }));
    }

    /// Encodes what is left and returns the complete Parquet file.
    async fn finish(mut self) -> Result<PutPayload> {
        let mut w = self.writer().await?;
        let rest = (self.columns.rows > 0).then(|| self.columns.finish());
        pool::spawn(move || {
            if let Some(batch) = rest {
                w.write(&batch)?;
            }
            Ok(w.into_inner()?.into_payload())
        })
        .await?
    }

    fn size(&self) -> usize {
        self.encoded_size + self.columns.bytes / 4
    }

    /// Memory held: encoded bytes, buffered rows and the writer's own overhead.
    fn memory(&self) -> usize {
        self.encoded_size + self.columns.bytes + FILE_OVERHEAD
    }
}

/// What the archive's bounds did (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveBounds {
    pub open_files: usize,
    /// Estimated memory of the open files.
    pub memory_bytes: usize,
    /// Files finished before their size or age: too many partitions open.
    pub early_open_files: u64,
    /// … or over `max_buffered_bytes`.
    pub early_memory: u64,
}

/// The archive writer.
pub struct Archive {
    opts: ArchiveOptions,
    lake: Lake,
    props: WriterProperties,
    open: HashMap<(i32, Box<str>), OpenFile>,
    files: u64,
    /// Where committed files go (set per checkpoint epoch).
    pub placement: Placement,
    /// Files are kept open across checkpoints: keep their new rows for the next segment.
    pub keep_segments: bool,
    early_open_files: u64,
    early_memory: u64,
}

/// How archive files are encoded (also by a compaction of the archive).
pub fn writer_props(zstd_level: i32) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(zstd_level)?;
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_created_by(format!("eventide {}", env!("CARGO_PKG_VERSION")))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // Pages close (and are compressed) as rows are encoded, not when the row group closes:
        // a checkpoint closing a row group finds little left to do.
        .set_data_page_row_count_limit(ENCODE_ROWS);
    // Unique or near-unique columns: dictionaries only cost time there.
    for col in
        ["event_id", "event_time", "data", "metadata", "correlation_id", "traceparent", "stream_id", "ingest_time"]
    {
        props = props.set_column_dictionary_enabled(ColumnPath::from(col), false);
    }
    // Looking one event (or one order's trail) up by id: bloom filters prune the row groups
    // without it (sized per row group, folded down to what was written; 1 % false positives).
    for col in ["event_id", "correlation_id"] {
        props = props
            .set_column_bloom_filter_enabled(ColumnPath::from(col), true)
            .set_column_bloom_filter_fpp(ColumnPath::from(col), 0.01)
            .set_column_bloom_filter_max_ndv(ColumnPath::from(col), ROW_GROUP_ROWS as u64);
    }
    // Min/max of JSON text and random ids prune nothing; times and types keep theirs.
    for col in ["data", "metadata", "correlation_id", "traceparent", "stream_id"] {
        props = props.set_column_statistics_enabled(ColumnPath::from(col), EnabledStatistics::None);
    }
    Ok(props.build())
}

impl Archive {
    pub fn new(lake: Lake, opts: ArchiveOptions) -> Result<Self> {
        let props = writer_props(opts.zstd_level)?;
        Ok(Archive {
            opts,
            lake,
            props,
            open: HashMap::new(),
            files: 0,
            placement: Placement::Direct,
            keep_segments: false,
            early_open_files: 0,
            early_memory: 0,
        })
    }

    fn new_file(&mut self, key: &(i32, Box<str>), target: Option<Path>, opened_ms: i64) -> Result<OpenFile> {
        let writer = ArrowWriter::try_new(Chunks::default(), archive_schema(), Some(self.props.clone()))?;
        self.files += 1;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let age = Duration::from_millis((now_ms - opened_ms).max(0) as u64);
        Ok(OpenFile {
            columns: Columns::new(),
            encoder: Encoder::Idle(Box::new(writer)),
            encoded_size: 0,
            rows: 0,
            opened: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            opened_ms,
            target: target.unwrap_or_else(|| self.file_path(key, now_ms, self.files)),
            keep_segments: self.keep_segments,
            since_piece: 0,
            captured: Vec::new(),
            dirty: false,
            pieces: Vec::new(),
            segments: Vec::new(),
            saved_bytes: 0,
        })
    }

    /// Appends one event.
    pub fn append(&mut self, ev: &Event<'_>, stream: &str, id: EntryId, ingest_us: i64) -> Result<()> {
        let day = ev.event_time_us.div_euclid(86_400_000_000) as i32;
        let key = KeyRef { day, event_type: &ev.event_type };
        let file = match self.open.get_mut(&key) {
            Some(f) => f,
            None => {
                let k: (i32, Box<str>) = (day, ev.event_type.as_ref().into());
                let f = self.new_file(&k, None, chrono::Utc::now().timestamp_millis())?;
                self.open.entry(k).or_insert(f)
            }
        };
        file.columns.append(ev, stream, id, ingest_us);
        file.rows += 1;
        Ok(())
    }

    /// Starts encoding every partition that buffered enough rows (call once per batch).
    pub async fn encode_ready(&mut self) -> Result<()> {
        for file in self.open.values_mut() {
            if file.columns.rows >= ENCODE_ROWS {
                file.encode_buffered().await?;
            }
        }
        Ok(())
    }

    /// Starts encoding the rows of every file that buffered at least `min_rows` and whose
    /// encoder is free (call on a clock): a file that fills slowly is encoded as it goes,
    /// not all at the next checkpoint, which waits for it.
    pub async fn encode_waiting(&mut self, min_rows: usize) -> Result<()> {
        for file in self.open.values_mut() {
            let free = match &file.encoder {
                Encoder::Busy(h) => h.is_finished(),
                _ => true,
            };
            if free && file.columns.rows >= min_rows {
                file.encode_buffered().await?;
            }
        }
        Ok(())
    }

    /// Age of the oldest open file.
    pub fn oldest_age(&self) -> Option<Duration> {
        self.open.values().map(|f| f.opened.elapsed()).max()
    }

    /// Rows not yet committed.
    pub fn open_rows(&self) -> u64 {
        self.open.values().map(|f| f.rows).sum()
    }

    /// Commits the files that reached the roll size, and (oldest first) as many others as
    /// bring the open files back within `max_open_files` and to three quarters of
    /// `max_buffered_bytes` when either is exceeded.
    pub async fn commit_rolled(&mut self) -> Result<Vec<CommittedFile>> {
        // (partition, file size, memory, opened)
        type Open = ((i32, Box<str>), usize, usize, Instant);
        let mut files: Vec<Open> = self.open.iter().map(|(k, f)| (k.clone(), f.size(), f.memory(), f.opened)).collect();
        let mut keys: Vec<(i32, Box<str>)> = Vec::new();
        files.retain(|(k, size, _, _)| {
            let rolled = *size >= self.opts.roll_bytes;
            if rolled {
                keys.push(k.clone());
            }
            !rolled
        });
        let mut memory: usize = files.iter().map(|f| f.2).sum();
        let over_count = files.len() > self.opts.max_open_files.max(1);
        let over_memory = memory >= self.opts.max_buffered_bytes;
        if over_count || over_memory {
            files.sort_by_key(|f| f.3);
            let (count_to, memory_to) = (self.opts.max_open_files.max(1), self.opts.max_buffered_bytes / 4 * 3);
            let mut left = files.len();
            for (k, _, m, _) in files {
                if left <= count_to && (!over_memory || memory <= memory_to) {
                    break;
                }
                if left > count_to {
                    self.early_open_files += 1;
                } else {
                    self.early_memory += 1;
                }
                (left, memory) = (left - 1, memory - m);
                keys.push(k);
            }
            tracing::debug!(files = keys.len(), over_count, over_memory, "Finishing archive files early (bounds).");
        }
        self.commit_keys(keys).await
    }

    /// The open files against their bounds, and how often the bounds finished files early.
    pub fn bounds(&self) -> ArchiveBounds {
        ArchiveBounds {
            open_files: self.open.len(),
            memory_bytes: self.open.values().map(OpenFile::memory).sum(),
            early_open_files: self.early_open_files,
            early_memory: self.early_memory,
        }
    }

    /// Commits every open file.
    pub async fn commit_all(&mut self) -> Result<Vec<CommittedFile>> {
        let keys: Vec<_> = self.open.keys().cloned().collect();
        self.commit_keys(keys).await
    }

    /// Commits the files open for at least `age`.
    pub async fn commit_older(&mut self, age: Duration) -> Result<Vec<CommittedFile>> {
        let keys: Vec<_> =
            self.open.iter().filter(|(_, f)| f.opened.elapsed() >= age).map(|(k, _)| k.clone()).collect();
        self.commit_keys(keys).await
    }

    /// For a checkpoint: what every open file got since the last checkpoint (partial batches
    /// are handed to the encoder first), by file: a Parquet piece (row groups closed on
    /// blocking threads, concurrently) or IPC rows; record the blob that saved it with
    /// [`Archive::saved`].
    pub async fn unsaved(&mut self) -> Result<Vec<((i32, Box<str>), Unsaved)>> {
        // Several files at once: each one's last rows are encoded and its row group closed on
        // the blocking pool while others' are (not all: each holds its pages in memory).
        let mut files: Vec<_> = self.open.iter_mut().collect();
        let mut out = Vec::new();
        for group in files.chunks_mut(COMMIT_CONCURRENCY) {
            let saved = futures::future::try_join_all(group.iter_mut().map(|(k, f)| unsaved_of(k, f))).await?;
            out.extend(saved.into_iter().flatten());
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Records that `blob` holds what [`Archive::unsaved`] returned for `key` (`piece`: the
    /// length of a Parquet piece's data; `None`: an IPC segment).
    pub fn saved(&mut self, key: &(i32, Box<str>), blob: String, piece: Option<u64>) {
        let Some(f) = self.open.get_mut(key) else { return };
        f.dirty = false;
        match piece {
            Some(len) => {
                f.pieces.push(Piece { blob, len });
                f.saved_bytes += len as usize;
                f.segments.clear();
                (f.since_piece, f.captured) = (0, Vec::new());
            }
            None => f.segments.push(blob),
        }
    }

    /// Memory held by rows not saved by a checkpoint yet (a checkpoint is due when it grows).
    pub fn unsaved_bytes(&self) -> usize {
        self.open.values().flat_map(|f| &f.captured).map(|b| b.get_array_memory_size()).sum()
    }

    /// The open files, for the checkpoint manifest.
    pub fn open_files(&self) -> Vec<OpenFileState> {
        let mut v: Vec<OpenFileState> = self
            .open
            .iter()
            .map(|((day, ty), f)| OpenFileState {
                day: *day,
                event_type: ty.to_string(),
                target: f.target.to_string(),
                opened_ms: f.opened_ms,
                rows: f.rows,
                pieces: f.pieces.clone(),
                segments: f.segments.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.target.cmp(&b.target));
        v
    }

    /// Recovery: reopens a file from a checkpoint with its saved rows.
    pub async fn reopen(&mut self, state: &OpenFileState, rows: Vec<arrow::array::RecordBatch>) -> Result<()> {
        let key: (i32, Box<str>) = (state.day, state.event_type.as_str().into());
        let mut f = self.new_file(&key, Some(Path::from(state.target.as_str())), state.opened_ms)?;
        for batch in rows {
            f.rows += batch.num_rows() as u64;
            let w = f.writer().await?;
            f.encode(w, batch);
        }
        // The rows are encoded anew: the next checkpoint saves the whole file as one piece
        // (until it commits, the recovered checkpoint's blobs are the file).
        f.captured.clear();
        (f.since_piece, f.dirty) = (f.since_piece.max(PIECE_MIN_ROWS), true);
        self.open.insert(key, f);
        Ok(())
    }

    async fn commit_keys(&mut self, mut keys: Vec<(i32, Box<str>)>) -> Result<Vec<CommittedFile>> {
        keys.sort();
        let mut jobs = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(file) = self.open.remove(&key) else { continue };
            jobs.push((file.target.clone(), file));
        }
        // Files are finished (last pages, footer) on blocking threads and written concurrently.
        let (lake, placement) = (&self.lake, &self.placement);
        let mut out: Vec<CommittedFile> = futures::stream::iter(jobs)
            .map(|(path, file)| async move {
                let rows = file.rows;
                let payload = file.finish().await?;
                let len = payload.content_length() as u64;
                let staged = lake.write_file(&path, payload, placement).await?;
                Ok::<_, Error>(CommittedFile { path: path.to_string(), rows, bytes: len, staged })
            })
            .buffer_unordered(COMMIT_CONCURRENCY)
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn file_path(&self, (day, event_type): &(i32, Box<str>), stamp: i64, n: u64) -> Path {
        let (y, m, d) = civil_from_days(*day as i64);
        // `event_type` passed validation (lowercase, digits, `_`, `.`): it cannot leave the prefix.
        Path::from(format!(
            "{}/event_date={y:04}-{m:02}-{d:02}/event_type={event_type}/part-{stamp}-{}-{n:06}.parquet",
            self.opts.prefix, self.opts.writer
        ))
    }
}

/// One open file's part of [`Archive::unsaved`] (`None`: nothing new since the last one).
async fn unsaved_of(key: &(i32, Box<str>), f: &mut OpenFile) -> Result<Option<((i32, Box<str>), Unsaved)>> {
    if f.columns.rows > 0 {
        f.encode_buffered().await?;
    }
    if !f.dirty {
        return Ok(None);
    }
    if f.since_piece < PIECE_MIN_ROWS {
        return Ok(Some((key.clone(), Unsaved::Rows(std::mem::take(&mut f.captured)))));
    }
    let (mut w, from) = (f.writer().await?, f.saved_bytes);
    let (w, piece) = pool::spawn(move || flush_piece(&mut w, from).map(|piece| (w, piece))).await??;
    f.encoded_size = w.bytes_written();
    f.encoder = Encoder::Idle(Box::new(w));
    Ok(Some((key.clone(), piece)))
}
