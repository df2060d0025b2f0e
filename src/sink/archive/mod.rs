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
//! builders' first allocations; [`ROW_GROUP_OVERHEAD`] once its writer has rows: a file
//! that stays small keeps its rows for the writer until it finishes) against `max_buffered_bytes`; at most `max_open_files`
//! partitions are open (a flood of distinct event types or dates). Over either bound the
//! oldest files are finished early (staged, published by the next checkpoint): data is never
//! refused, files just get smaller. [`Archive::bounds`] counts what happened, for metrics.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hashbrown::{Equivalent, HashMap};
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::sync::oneshot;

use super::chunks::Chunks;
use super::lake::{Lake, Placement};
use super::schema::{Columns, archive_schema};
pub use super::segments::OpenFileState;
use super::segments::{PIECE_MIN_ROWS, Piece, PieceTask, Unsaved};
pub use crate::config::ArchiveOptions;
use crate::decode::Event;
use crate::decode::timestamp::civil_from_days;
use crate::entry::EntryId;
use crate::error::{Error, Result};

/// Rows buffered per partition before they are encoded.
const ENCODE_ROWS: usize = 8192;
/// Rows a file being saved by a checkpoint buffers before its next encode waits for the save.
const SAVING_MAX_ROWS: usize = 4 * ENCODE_ROWS;
/// Rows per Parquet row group (DuckDB's own row group size): row groups are flushed as the
/// file grows, so a commit only finishes the last one.
const ROW_GROUP_ROWS: usize = 122_880;
/// Files finished and written at once during a commit.
const COMMIT_CONCURRENCY: usize = 4;
/// Memory of an open file beyond its rows: the Parquet writer (12 column writers) and the
/// builders' first allocations. Measured with the bounds lifted: 20,000 open one-row
/// partitions held ~1.5 GiB, ~75 KiB each (BENCHMARKS.md); rounded up.
pub const FILE_OVERHEAD: usize = 96 * 1024;
/// Memory of a row group being written: its two bloom filters (`event_id`, `correlation_id`:
/// 122,880 values at 1 % each take 256 KiB, allocated with the row group's first rows).
pub const ROW_GROUP_OVERHEAD: usize = 512 * 1024;

mod open_file;

use open_file::{Encoder, OpenFile};

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
            deferred: Vec::new(),
            deferred_rows: 0,
            deferred_bytes: 0,
            writing: false,
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
            // A file a checkpoint is saving takes rows until the save is done (up to a bound:
            // then this waits for it).
            let saving = matches!(file.encoder, Encoder::Saving { .. }) && !file.encoder.is_free();
            let ready = if saving { SAVING_MAX_ROWS } else { ENCODE_ROWS };
            if file.waiting_rows() >= ready {
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
            if file.encoder.is_free() && file.waiting_rows() >= min_rows {
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

    /// For a checkpoint: what every open file got since the last checkpoint, by file: a
    /// Parquet piece (its last rows encoded and its row group closed on the encoding pool,
    /// after any encode in flight: the piece is a task) or IPC rows; record the blob that
    /// saves it with [`Archive::saved`].
    pub async fn unsaved(&mut self) -> Result<Vec<((i32, Box<str>), Unsaved)>> {
        let mut out = Vec::new();
        for (k, f) in self.open.iter_mut() {
            out.extend(unsaved_of(k, f).await?);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Records that `blob` holds (or will: it is written with the checkpoint) what
    /// [`Archive::unsaved`] returned for `key`: a Parquet piece, or an IPC segment.
    pub fn saved(&mut self, key: &(i32, Box<str>), blob: String, piece: bool) {
        let Some(f) = self.open.get_mut(key) else { return };
        f.dirty = false;
        if piece {
            f.pieces.push(Piece { blob, len: None });
            f.segments.clear();
            (f.since_piece, f.captured) = (0, Vec::new());
        } else {
            f.segments.push(blob);
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
            f.encode(w, vec![batch]);
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
        // Files are finished (last pages, footer) on the encoding pool and written concurrently.
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
/// Waits for nothing but the file's previous save (done: its checkpoint was written): the
/// last rows are encoded and a piece's row group is closed by [`Encoder::then_save`].
async fn unsaved_of(key: &(i32, Box<str>), f: &mut OpenFile) -> Result<Option<((i32, Box<str>), Unsaved)>> {
    if matches!(f.encoder, Encoder::Saving { .. }) {
        // Where the last piece ended.
        let w = f.writer().await?;
        f.encoder = Encoder::Idle(Box::new(w));
    }
    f.defer_buffered();
    if !f.dirty || f.since_piece < PIECE_MIN_ROWS {
        // An IPC segment: the rows wait for the writer (until the file grows or finishes).
        return Ok(f.dirty.then(|| (key.clone(), Unsaved::Rows(std::mem::take(&mut f.captured)))));
    }
    let rest = f.take_for_writer();
    let prev = std::mem::replace(&mut f.encoder, Encoder::Lost);
    let (tx, rx) = oneshot::channel();
    f.encoder = prev.then_save(rest, Some((f.saved_bytes, tx)));
    Ok(Some((key.clone(), Unsaved::Parquet(PieceTask(rx)))))
}
