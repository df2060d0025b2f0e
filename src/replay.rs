//! Replay: the same decode → dedup → window path over JSON-lines files instead of Redis
//! (`eventide replay`). Each line is one event (a base event or a CloudEvents envelope), in
//! file order, which is the arrival order the watermark sees. At the end of the input every
//! window closes and the tables are written, so a replay of what a live run read produces
//! the same rows (idle timeouts, which follow processing time, do not apply to files).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::decode::{DecodeOptions, Decoder, Reason};
use crate::dedup::{Dedup, Verdict};
use crate::error::{Error, Result};
use crate::event::EntryId;
use crate::sink::archive::CommittedFile;
use crate::sink::lake::Lake;
use crate::window::Pipelines;

/// Rows per micro-batch handed to the pipelines.
pub const BATCH_ROWS: usize = 8192;

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
    decoder: Decoder,
    dedup: Dedup,
    pub pipelines: Pipelines,
    stream: String,
    now_us: i64,
    pub summary: ReplaySummary,
}

impl Replayer {
    pub fn new(pipelines: Pipelines, dedup_horizon: Duration, stream: &str) -> Self {
        Replayer {
            decoder: Decoder::new(DecodeOptions::default()),
            dedup: Dedup::new(dedup_horizon.as_secs().max(1)),
            pipelines,
            stream: stream.to_string(),
            now_us: chrono::Utc::now().timestamp_micros(),
            summary: ReplaySummary::default(),
        }
    }

    /// One JSON line; `at` is its file and line for the reject report.
    pub fn feed(&mut self, text: &str, at: impl FnOnce() -> (PathBuf, u64)) -> Result<()> {
        self.summary.lines += 1;
        let n = self.summary.lines;
        match self.decoder.decode_json(text, self.now_us) {
            Err(r) => {
                self.summary.rejected += 1;
                if self.summary.first_rejects.len() < 100 {
                    let (file, line) = at();
                    self.summary.first_rejects.push(Rejected { file, line, reason: r.reason, detail: r.detail });
                }
            }
            Ok(ev) => match self.dedup.check(&ev.event_id, ev.event_time_us, self.now_us) {
                Verdict::Duplicate => self.summary.duplicates += 1,
                _ => {
                    self.summary.accepted += 1;
                    // The line number stands in for the stream id.
                    self.pipelines.append(&ev, &self.stream, EntryId { ms: 0, seq: n });
                }
            },
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

/// Replays `inputs` through `pipelines` into `lake`.
pub async fn run(
    inputs: &[PathBuf],
    pipelines: Pipelines,
    lake: &Lake,
    dedup_horizon: Duration,
    stream: &str,
) -> Result<ReplaySummary> {
    let started = Instant::now();
    let mut r = Replayer::new(pipelines, dedup_horizon, stream);
    for file in inputs {
        let f =
            std::fs::File::open(file).map_err(|e| Error::Config(format!("{}: cannot open: {e}", file.display())))?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut line = String::new();
        let mut bytes = Vec::new();
        let mut n = 0u64;
        loop {
            bytes.clear();
            if reader.read_until(b'\n', &mut bytes)? == 0 {
                break;
            }
            n += 1;
            let text = match std::str::from_utf8(&bytes) {
                Ok(t) => t.trim_end_matches(['\n', '\r']),
                Err(_) => {
                    line.clear();
                    line.push_str(&String::from_utf8_lossy(&bytes));
                    line.as_str()
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            r.feed(text, || (file.clone(), n))?;
        }
    }
    r.finish(lake, "replay").await?;
    r.summary.elapsed = started.elapsed();
    Ok(r.summary)
}
