//! Replay: the same decode → dedup → window path over JSON-lines files instead of Redis
//! (`eventide replay`). Each line is one event (a base event or a CloudEvents envelope), in
//! file order, which is the arrival order the watermark sees. At the end of the input every
//! window closes and the tables are written, so a replay of what a live run read produces
//! the same rows (idle timeouts, which follow processing time, do not apply to files).
//!
//! [`Replayer`] takes one line at a time through [`crate::ingest::Ingest`] (the golden and
//! property tests drive it); [`run`] decodes chunks of lines on every core and takes the
//! dedup decisions through the same `Ingest` in file order.

mod archive;
mod merged;
mod sharded;

pub use archive::{ARCHIVE_STREAMS, ArchiveFilter, archive_files, archive_query, run_archive};
pub use merged::run_archive_merged;
pub use sharded::{MERGE_EVERY, run as run_sharded};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;

use crate::decode::{DecodeOptions, Decoder, Reason};
use crate::dedup::{Dedup, id_hash};
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::ingest::{Admitted, Ingest};
use crate::sink::archive::CommittedFile;
use crate::sink::lake::Lake;
use crate::window::columns::EventColumns;
use crate::window::{BATCH_ROWS, PipelineSpec, Pipelines};

/// A rejected line: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub file: PathBuf,
    pub line: u64,
    pub reason: Reason,
    pub detail: String,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    pub lines: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// The first rejected lines (at most 100), for the report.
    pub first_rejects: Vec<Rejected>,
    pub files: Vec<CommittedFile>,
    pub elapsed: Duration,
}

/// Feeds events to the pipelines one line at a time (also the harness of the golden tests).
pub struct Replayer {
    ingest: Ingest,
    pub pipelines: Pipelines,
    stream: String,
    now_us: i64,
    pub summary: ReplaySummary,
}

impl Replayer {
    pub fn new(pipelines: Pipelines, dedup_horizon: Duration, stream: &str) -> Self {
        Replayer {
            ingest: Ingest::new(Decoder::new(DecodeOptions::default()), Dedup::new(dedup_horizon.as_secs().max(1))),
            pipelines,
            stream: stream.to_string(),
            now_us: chrono::Utc::now().timestamp_micros(),
            summary: ReplaySummary::default(),
        }
    }

    /// One JSON line; `at` is its file and line for the reject report.
    pub fn feed(&mut self, text: &str, at: impl FnOnce() -> (PathBuf, u64)) -> Result<()> {
        let stream = std::mem::take(&mut self.stream);
        let fed = self.feed_from(text, &stream, at);
        self.stream = stream;
        fed
    }

    /// [`Replayer::feed`] of an event read from `stream` (not the replay's own).
    pub fn feed_from(&mut self, text: &str, stream: &str, at: impl FnOnce() -> (PathBuf, u64)) -> Result<()> {
        self.summary.lines += 1;
        let n = self.summary.lines;
        // The line number stands in for the stream id.
        match self.ingest.json(text, stream, EntryId { ms: 0, seq: n }, self.now_us, &mut self.pipelines)? {
            Admitted::Rejected(r) => {
                self.summary.rejected += 1;
                if self.summary.first_rejects.len() < 100 {
                    let (file, line) = at();
                    self.summary.first_rejects.push(Rejected { file, line, reason: r.reason, detail: r.detail });
                }
            }
            Admitted::Duplicate => self.summary.duplicates += 1,
            Admitted::New { .. } => self.summary.accepted += 1,
        }
        if self.pipelines.buffered() >= BATCH_ROWS {
            self.pipelines.process()?;
        }
        Ok(())
    }

    /// Ends the current micro-batch.
    pub fn end_batch(&mut self) -> Result<()> {
        self.pipelines.process()
    }

    /// Closes every window and writes the tables.
    pub async fn finish(&mut self, lake: &Lake, writer: &str) -> Result<Vec<CommittedFile>> {
        self.pipelines.flush()?;
        let files = self.pipelines.commit(lake, writer).await?;
        self.summary.files.extend(files.iter().cloned());
        Ok(files)
    }
}

/// The `.jsonl` / `.json` / `.ndjson` files under `input` (or `input` itself), sorted.
pub fn input_files(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![input.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| Error::Config(format!("{}: cannot read: {e}", dir.display())))?;
        for e in entries {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl" || x == "ndjson" || x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Bytes of input per chunk handed to a decoding thread.
const CHUNK_BYTES: usize = 1 << 20;

/// A run of whole lines of one file.
struct Chunk {
    seq: u64,
    file: usize,
    /// The lines are `data[..len]`.
    data: Vec<u8>,
    len: usize,
}

/// A chunk decoded: per-pipeline `events` batches and what dedup needs per row.
struct Decoded {
    seq: u64,
    file: usize,
    /// Newlines in the chunk (to number the lines of the next one).
    newlines: u64,
    batches: Vec<RecordBatch>,
    /// Per accepted row: id hash and event time.
    keys: Vec<(u128, i64)>,
    lines: u64,
    rejected: u64,
    rejects: Vec<Rejected>,
}

/// Replays `inputs` through `pipelines` into `lake`. Lines are decoded and turned into Arrow
/// columns on several threads, chunk by chunk; dedup then takes the chunks in file order on
/// one thread and hands them to the windows on another, so the result is the same as a
/// line-by-line replay.
pub async fn run(
    inputs: &[PathBuf],
    pipelines: Pipelines,
    lake: &Lake,
    dedup_horizon: Duration,
    stream: &str,
) -> Result<ReplaySummary> {
    let started = Instant::now();
    let inputs = inputs.to_vec();
    let stream = stream.to_string();
    let (mut pipelines, mut summary) =
        tokio::task::spawn_blocking(move || replay_blocking(&inputs, pipelines, dedup_horizon, &stream))
            .await
            .map_err(|e| Error::Internal(format!("replay thread: {e}")))??;
    pipelines.flush()?;
    summary.files = pipelines.commit(lake, "replay").await?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn replay_blocking(
    inputs: &[PathBuf],
    pipelines: Pipelines,
    dedup_horizon: Duration,
    stream: &str,
) -> Result<(Pipelines, ReplaySummary)> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let specs: Vec<PipelineSpec> = pipelines.queries().iter().map(|q| q.spec.clone()).collect();
    let schemas: Vec<SchemaRef> = pipelines.queries().iter().map(|q| q.input_schema()).collect();
    let used = pipelines.used_base_columns();
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut dedup = Dedup::new(dedup_horizon.as_secs().max(1));
    // Sized for the input (~250 bytes per event or more) instead of growing by rehashing.
    let bytes: u64 = inputs.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    dedup.reserve((bytes / 250).min(1 << 25) as usize);
    // Decoding happens on the chunk threads; this one only takes the dedup decisions.
    let mut dedup = Ingest::new(Decoder::new(DecodeOptions::default()), dedup);
    let mut summary = ReplaySummary::default();
    std::thread::scope(|scope| -> Result<Pipelines> {
        let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<Chunk>(workers * 2);
        let chunk_rx = std::sync::Arc::new(std::sync::Mutex::new(chunk_rx));
        let (out_tx, out_rx) = std::sync::mpsc::sync_channel::<Result<Decoded>>(workers * 2);
        let (pool_tx, pool_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(workers * 4);
        let reader = scope.spawn(move || read_chunks(inputs, chunk_tx, pool_rx));
        let (schemas, pool) = (&schemas, pool_tx.clone());
        column_workers(scope, workers, &chunk_rx, out_tx, &specs, &used, move |chunk: Chunk, cols| {
            let decoded = decode_chunk(&chunk, cols, schemas, stream, inputs, now_us);
            let _ = pool.try_send(chunk.data);
            decoded
        });
        drop(pool_tx);
        // The windows run on their own thread, fed in file order by this one (dedup).
        let (win_tx, win_rx) = std::sync::mpsc::sync_channel::<Deduplicated>(2);
        let windows = scope.spawn(move || -> Result<Pipelines> {
            let mut pipelines = pipelines;
            for (batches, keep) in win_rx {
                pipelines.process_batches(&batches, keep.as_ref())?;
            }
            Ok(pipelines)
        });
        // Chunks come back in any order; they are applied in file order.
        let mut waiting = std::collections::BTreeMap::new();
        let mut next = 0u64;
        let mut cursor: LineCursor = (0, 1);
        'chunks: for d in out_rx {
            let d = d?;
            waiting.insert(d.seq, d);
            while let Some(d) = waiting.remove(&next) {
                next += 1;
                if win_tx.send(apply(d, &mut dedup, &mut summary, &mut cursor, now_us)).is_err() {
                    break 'chunks; // the window thread stopped: its error follows
                }
            }
        }
        drop(win_tx);
        let pipelines = windows.join().map_err(|_| Error::Internal("replay windows panicked".into()))??;
        reader.join().map_err(|_| Error::Internal("replay reader panicked".into()))??;
        Ok(pipelines)
    })
    .map(|pipelines| (pipelines, summary))
}

/// A chunk's `events` batches and which rows are not duplicates (`None`: all).
type Deduplicated = (Vec<RecordBatch>, Option<BooleanArray>);

/// Splits the files into chunks of whole lines.
/// Buffers come back from the decoding threads (`pool`) and are reused without clearing:
/// fresh memory would cost a page fault and zeroing per 4 KiB.
fn read_chunks(
    inputs: &[PathBuf],
    tx: std::sync::mpsc::SyncSender<Chunk>,
    pool: std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<()> {
    let mut seq = 0;
    for (file, path) in inputs.iter().enumerate() {
        let mut f =
            std::fs::File::open(path).map_err(|e| Error::Config(format!("{}: cannot open: {e}", path.display())))?;
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let mut data = pool.try_recv().unwrap_or_default();
            let start = carry.len();
            if data.len() < start + CHUNK_BYTES {
                data.resize(start + CHUNK_BYTES, 0);
            }
            data[..start].copy_from_slice(&carry);
            carry.clear();
            let n = read_full(&mut f, &mut data[start..start + CHUNK_BYTES])?;
            let mut len = start + n;
            let eof = n == 0;
            if !eof {
                match memchr::memrchr(b'\n', &data[..len]) {
                    Some(cut) => {
                        carry.extend_from_slice(&data[cut + 1..len]);
                        len = cut + 1;
                    }
                    None => {
                        // No newline yet (a line longer than a chunk): keep reading into it.
                        carry.extend_from_slice(&data[..len]);
                        continue;
                    }
                }
            }
            if len == 0 {
                break;
            }
            if tx.send(Chunk { seq, file, data, len }).is_err() {
                return Ok(());
            }
            seq += 1;
            if eof {
                break;
            }
        }
    }
    Ok(())
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read as _;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// `workers` threads, each with its own [`EventColumns`] for `specs` (only the `used` base
/// columns; kept across chunks, so the builders come back sized for one), turning the chunks
/// of `rx` into what `work` makes of them, sent to `tx`, until either side closes.
fn column_workers<'scope, 'env, C: Send + 'scope, O: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    workers: usize,
    rx: &std::sync::Arc<std::sync::Mutex<std::sync::mpsc::Receiver<C>>>,
    tx: std::sync::mpsc::SyncSender<O>,
    specs: &'env [PipelineSpec],
    used: &'env [crate::events::Col],
    work: impl Fn(C, &mut EventColumns) -> O + Send + Clone + 'scope,
) {
    for _ in 0..workers {
        let (rx, tx, work) = (rx.clone(), tx.clone(), work.clone());
        scope.spawn(move || {
            let refs: Vec<&PipelineSpec> = specs.iter().collect();
            let mut cols = EventColumns::new(&refs).only(used);
            loop {
                let next = rx.lock().map_err(|_| ()).and_then(|r| r.recv().map_err(|_| ()));
                let Ok(chunk) = next else { break };
                if tx.send(work(chunk, &mut cols)).is_err() {
                    break;
                }
            }
        });
    }
}

fn decode_chunk(
    chunk: &Chunk,
    cols: &mut EventColumns,
    schemas: &[SchemaRef],
    stream: &str,
    inputs: &[PathBuf],
    now_us: i64,
) -> Result<Decoded> {
    let mut dec = Decoder::new(DecodeOptions::default());
    let mut d = Decoded {
        seq: chunk.seq,
        file: chunk.file,
        batches: Vec::new(),
        keys: Vec::with_capacity(chunk.len / 200),
        lines: 0,
        newlines: 0,
        rejected: 0,
        rejects: Vec::new(),
    };
    let mut bad_utf8 = String::new();
    let mut rest = Some(&chunk.data[..chunk.len]);
    let lines = std::iter::from_fn(|| {
        let r = rest?;
        Some(match memchr::memchr(b'\n', r) {
            Some(p) => {
                rest = Some(&r[p + 1..]);
                &r[..p]
            }
            None => {
                rest = None;
                r
            }
        })
    });
    for (i, raw) in lines.enumerate() {
        d.newlines = i as u64;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        d.lines += 1;
        // Line within the chunk for now; `apply` makes it absolute.
        let line_no = i as u64;
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(_) => {
                bad_utf8.clear();
                bad_utf8.push_str(&String::from_utf8_lossy(raw));
                &bad_utf8
            }
        };
        match dec.decode_json(text, now_us) {
            Ok(ev) => {
                d.keys.push((id_hash(&ev.event_id), ev.event_time_us));
                cols.append(&ev, stream, EntryId { ms: chunk.file as u64, seq: line_no });
            }
            Err(r) => {
                d.rejected += 1;
                if d.rejects.len() < 100 {
                    d.rejects.push(Rejected {
                        file: inputs[chunk.file].clone(),
                        line: line_no,
                        reason: r.reason,
                        detail: r.detail,
                    });
                }
            }
        }
    }
    d.batches = cols.finish(schemas)?;
    Ok(d)
}

/// Where the next chunk starts: (file, 1-based line).
type LineCursor = (usize, u64);

/// Dedup (in file order) of one decoded chunk, for the windows.
fn apply(d: Decoded, dedup: &mut Ingest, s: &mut ReplaySummary, cursor: &mut LineCursor, now_us: i64) -> Deduplicated {
    if cursor.0 != d.file {
        *cursor = (d.file, 1);
    }
    s.lines += d.lines;
    s.rejected += d.rejected;
    let room = 100usize.saturating_sub(s.first_rejects.len());
    s.first_rejects.extend(d.rejects.into_iter().take(room).map(|mut r| {
        r.line += cursor.1;
        r
    }));
    cursor.1 += d.newlines;
    let keep: BooleanArray = d.keys.iter().map(|&(h, t)| Some(dedup.admit(h, t, now_us))).collect();
    // A replay keeps no checkpoints: nothing reads the ids added since the last one.
    dedup.dedup.clear_delta();
    let dups = keep.false_count() as u64;
    s.duplicates += dups;
    s.accepted += d.keys.len() as u64 - dups;
    (d.batches, (dups > 0).then_some(keep))
}
