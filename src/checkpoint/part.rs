//! The one checkpoint hook of a stage that holds state (as Arroyo's operators have a
//! checkpoint hook and Kafka Streams' tasks carry their stores): each writes its part of an
//! epoch (blobs and its fields of the [`Manifest`]) and comes back from a committed one. The
//! processor builds a manifest from the parts and commits it ([`Checkpoints::commit`]).
//! A part's save runs while the processor is paused, so it only names its blobs
//! ([`EpochBlobs`]); they are written with the manifest, in the background.
//!
//! Implemented by the archive's open files and the dedup state (here: both sit below this
//! layer) and by the pipelines' windows ([`crate::window`]).

use std::future::Future;
use std::time::{Duration, Instant};

use object_store::PutPayload;

use super::{Checkpoints, EpochBlobs, Manifest, from_ipc, to_ipc};
use crate::dedup::Dedup;
use crate::error::{Error, Result};
use crate::sink::archive::Archive;
use crate::sink::segments::{Unsaved, rows_of_pieces};

/// Largest object of a dedup snapshot (S3 takes at most 5 GB in one put).
const SNAPSHOT_PART_BYTES: usize = 256 << 20;

/// A stage's part of a checkpoint.
pub trait Checkpointed {
    /// Saves this stage's state into the epoch `m` is built for: its blobs (named in `out`,
    /// written later) and its fields of `m`.
    fn save(&mut self, out: &mut EpochBlobs, m: &mut Manifest) -> impl Future<Output = Result<()>> + Send;

    /// Restores this (fresh) stage from the committed manifest `m`.
    fn restore(&mut self, cp: &Checkpoints, m: &Manifest) -> impl Future<Output = Result<()>> + Send;
}

/// Archive files kept open across checkpoints: what each got since the last checkpoint goes
/// into one blob per file: a Parquet piece (the file's new bytes and a footer) or, for few
/// new rows, an IPC segment; both are made on the encoding pool while the processor goes on
/// (the background half writes them when they are done); restored,
/// the files reopen with their pieces' and segments' rows ([`crate::sink::segments`]).
impl Checkpointed for Archive {
    async fn save(&mut self, out: &mut EpochBlobs, m: &mut Manifest) -> Result<()> {
        for (n, (key, unsaved)) in self.unsaved().await?.into_iter().enumerate() {
            let (blob, piece) = match unsaved {
                Unsaved::Parquet(piece) => {
                    let bytes = async move { Ok(piece.await?.into_iter().collect::<PutPayload>()) };
                    (out.put_later(&format!("open-{n}.parquet"), bytes), true)
                }
                Unsaved::Rows(rows) => {
                    let encoding = crate::pool::spawn(move || to_ipc(&rows));
                    let bytes = async move { Ok(PutPayload::from(encoding.await??)) };
                    (out.put_later(&format!("open-{n}.arrow"), bytes), false)
                }
            };
            self.saved(&key, blob, piece);
        }
        m.open_files = self.open_files();
        Ok(())
    }

    async fn restore(&mut self, cp: &Checkpoints, m: &Manifest) -> Result<()> {
        for f in &m.open_files {
            let mut blobs = Vec::with_capacity(f.pieces.len());
            for piece in &f.pieces {
                blobs.push(cp.get_blob(&piece.blob).await?);
            }
            let mut rows = match f.pieces.is_empty() {
                true => Vec::new(),
                false => {
                    let pieces = f.pieces.clone();
                    crate::pool::spawn(move || rows_of_pieces(&pieces, blobs)).await??
                }
            };
            for seg in &f.segments {
                rows.extend(from_ipc(&cp.get_blob(seg).await?)?);
            }
            self.reopen(f, rows).await?;
        }
        Ok(())
    }
}

/// Where a checkpoint line keeps the dedup state: the last full snapshot (in parts, so that
/// no object outgrows one put) and the deltas (ids added, 16 B each) written since.
#[derive(Debug, Clone)]
pub struct DedupLine {
    snapshot: Option<String>,
    deltas: Vec<String>,
    last_snapshot: Instant,
    /// At most this long between full snapshots (`state_interval`).
    interval: Duration,
    /// The next save writes a full snapshot (a stop writes one).
    pub full: bool,
}

impl DedupLine {
    /// The line as the committed manifest `m` left it.
    pub fn of(m: &Manifest, interval: Duration) -> Self {
        DedupLine {
            snapshot: m.dedup_snapshot.clone(),
            deltas: m.dedup_deltas.clone(),
            last_snapshot: Instant::now(),
            interval,
            full: false,
        }
    }
}

/// The dedup state as a checkpoint part: the ids, and where the line keeps them.
pub struct DedupPart<'a> {
    pub dedup: &'a mut Dedup,
    pub line: &'a mut DedupLine,
}

impl Checkpointed for DedupPart<'_> {
    /// A full snapshot when the line has none, when asked, or when the last one is older than
    /// the interval; else the ids added since (if any).
    async fn save(&mut self, out: &mut EpochBlobs, m: &mut Manifest) -> Result<()> {
        let line = &mut *self.line;
        if line.snapshot.is_none() || line.full || line.last_snapshot.elapsed() >= line.interval {
            let (first, rest) = self.dedup.to_parts(SNAPSHOT_PART_BYTES);
            line.snapshot = Some(out.put("dedup.bin", first));
            self.dedup.clear_delta();
            line.deltas.clear();
            for (i, part) in rest.into_iter().enumerate() {
                line.deltas.push(out.put(&format!("dedup-part-{}.bin", i + 1), part));
            }
            (line.last_snapshot, line.full) = (Instant::now(), false);
        } else if let Some(delta) = self.dedup.take_delta() {
            line.deltas.push(out.put("dedup-delta.bin", delta));
        }
        m.dedup_snapshot.clone_from(&line.snapshot);
        m.dedup_deltas.clone_from(&line.deltas);
        Ok(())
    }

    /// The snapshot, then the deltas, into this (fresh) dedup, with its horizon.
    async fn restore(&mut self, cp: &Checkpoints, m: &Manifest) -> Result<()> {
        let bad = |path: &str, r: &str| Error::State { path: path.into(), reason: r.into() };
        let horizon = self.dedup.horizon_secs();
        if let Some(path) = &m.dedup_snapshot {
            *self.dedup = Dedup::from_bytes(&cp.get_blob(path).await?, horizon).map_err(|r| bad(path, r))?;
        }
        for path in &m.dedup_deltas {
            self.dedup.apply_delta(&cp.get_blob(path).await?).map_err(|r| bad(path, r))?;
        }
        *self.line = DedupLine::of(m, self.line.interval);
        Ok(())
    }
}
