//! Window state in checkpoints: every pipeline's open windows (partial aggregate states),
//! watermark and bookkeeping as one blob, restored after a restart so that windows open at a
//! crash close with every event they had.
//!
//! Layout: `EVWIN002`, then per pipeline a JSON header ([`QueryState`]) and its batches as
//! Arrow IPC streams, each prefixed by its length (u32 / u64, little endian), then (the
//! length as u64, then [`crate::checkpoint::pack`]ed per table as Arrow IPC) the rows of
//! windows closed while the state was taken: the state no longer holds them and the
//! checkpoint's table rows were cut before they came (see [`super::thread`]); restored, they
//! wait for the tables again. `EVWIN001` (earlier versions) has no such rows. A pipeline
//! whose definition changed ([`QueryState::fingerprint`]) or that is new starts empty; state
//! of a pipeline that no longer exists is dropped (both logged).

use arrow::array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;

use super::query::QueryState;
use super::{Pipelines, WindowedQuery, encode_tables, query_error};
use crate::checkpoint::{Checkpointed, Checkpoints, EpochBlobs, Manifest};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"EVWIN002";
/// Blobs of earlier versions: no closed rows after the pipelines.
const MAGIC_1: &[u8; 8] = b"EVWIN001";

/// Rows per table (its prefix) that a window state blob carries (see the module docs).
type TableRows = Vec<(String, Vec<RecordBatch>)>;

fn bad(reason: impl Into<String>) -> Error {
    Error::State { path: "window state".into(), reason: reason.into() }
}

impl Pipelines {
    /// Every pipeline's window state (buffered events are processed first, on this thread).
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        self.process()?;
        encode_state(state_parts(&mut self.queries)?, Vec::new())
    }

    /// Restores [`Pipelines::save_state`] into freshly loaded pipelines; returns the names of
    /// the pipelines restored. Rows of windows closed while it was taken wait for the
    /// tables again (not saved yet: the next checkpoint saves them).
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<Vec<String>> {
        let (states, closed) = parse_state(bytes)?;
        if !closed.is_empty() {
            self.restore_table_rows(closed, false)?;
        }
        let mut restored = Vec::new();
        for (state, batches) in states {
            let Some(q) = self.queries.iter_mut().find(|q| q.spec.name == state.name) else {
                tracing::warn!(pipeline = %state.name, "Dropping the saved windows of a pipeline that no longer exists.");
                continue;
            };
            if q.fingerprint() != state.fingerprint {
                tracing::warn!(pipeline = %state.name, "The pipeline changed since its windows were saved: it starts with empty windows.");
                continue;
            }
            q.restore(&state, &batches).map_err(|e| query_error(&q.spec, e))?;
            restored.push(state.name);
        }
        Ok(restored)
    }
}

/// The pipelines' window states, taken ([`state_part`]) and not encoded yet.
pub struct StateParts(pub(super) Vec<(Vec<u8>, Vec<RecordBatch>)>);

/// Every pipeline's [`state_part`].
fn state_parts(queries: &mut [WindowedQuery]) -> Result<StateParts> {
    queries.iter_mut().map(state_part).collect::<Result<_>>().map(StateParts)
}

/// A pipeline's window state, to be encoded (on the encoding pool): its JSON header and its
/// batches (call after its last batch was processed).
pub(super) fn state_part(q: &mut WindowedQuery) -> Result<(Vec<u8>, Vec<RecordBatch>)> {
    let t = std::time::Instant::now();
    let (state, batches) = q.save().map_err(|e| query_error(&q.spec, e))?;
    tracing::debug!(pipeline = %q.spec.name, ms = t.elapsed().as_millis() as u64, "Window state taken.");
    Ok((serde_json::to_vec(&state).map_err(|e| bad(e.to_string()))?, batches))
}

/// The window state blob of `parts` and of the rows closed while it was taken (the batches
/// as Arrow IPC streams: CPU work, for the encoding pool).
pub fn encode_state(parts: StateParts, closed: TableRows) -> Result<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    out.extend((parts.0.len() as u32).to_le_bytes());
    for (header, batches) in parts.0 {
        out.extend((header.len() as u32).to_le_bytes());
        out.extend(header);
        out.extend((batches.len() as u32).to_le_bytes());
        for b in &batches {
            let mut buf = Vec::new();
            let mut w = StreamWriter::try_new(&mut buf, &b.schema())?;
            w.write(b)?;
            w.finish()?;
            drop(w);
            out.extend((buf.len() as u64).to_le_bytes());
            out.extend(buf);
        }
    }
    let closed = crate::checkpoint::pack(&encode_tables(&closed)?);
    out.extend((closed.len() as u64).to_le_bytes());
    out.extend(closed);
    Ok(out)
}

/// A window state blob parsed: per pipeline its header and batches, and the table rows it
/// carries (per table: its prefix, Arrow IPC).
pub(super) type ParsedState = (Vec<(QueryState, Vec<RecordBatch>)>, Vec<(String, Vec<u8>)>);

/// The pipelines' states in a [`Pipelines::save_state`] blob, and the table rows it carries.
pub(super) fn parse_state(bytes: &[u8]) -> Result<ParsedState> {
    let mut r = Cursor { b: bytes };
    let magic = r.take(8)?;
    if magic != MAGIC && magic != MAGIC_1 {
        return Err(bad("not a window state blob"));
    }
    let n = r.u32()? as usize;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = r.u32()? as usize;
        let state: QueryState = serde_json::from_slice(r.take(len)?).map_err(|e| bad(e.to_string()))?;
        let nb = r.u32()? as usize;
        let mut batches = Vec::new();
        for _ in 0..nb {
            let len = r.u64()? as usize;
            batches.push(read_batch(r.take(len)?)?);
        }
        out.push((state, batches));
    }
    let closed = match magic == MAGIC {
        true => {
            let len = r.u64()? as usize;
            crate::checkpoint::unpack(r.take(len)?)?
        }
        false => Vec::new(),
    };
    Ok((out, closed))
}

/// The pipelines' part of a checkpoint: every pipeline's window state (`windows.bin`), the
/// rows waiting for table files (a line of `tables-part.bin`, one per epoch that added rows,
/// restarted at each table commit) and, as one shard of several, the closed
/// windows' partial states (`partials.bin`) and how far each pipeline has closed
/// (`window_bounds`, see [`super::merge`]).
impl Checkpointed for Pipelines {
    async fn save(&mut self, out: &mut EpochBlobs, m: &mut Manifest) -> Result<()> {
        if !self.is_empty() && self.partial() {
            // One shard of several: its partials below need the windows as of now.
            self.process()?;
            let parts = state_parts(&mut self.queries)?;
            let encoding = crate::pool::spawn(move || encode_state(parts, Vec::new()));
            m.windows = Some(out.put_later("windows.bin", async move { Ok(encoding.await??.into()) }));
        } else if !self.is_empty() {
            // The buffered events and the state on the window worker (the term's loop goes
            // on); the blob waits for them, then is encoded on the pool. What the worker
            // closed is collected first, and the rest is in the blob (see `super::thread`).
            self.collect_outboxes()?;
            let saved = self.save_in_background()?;
            let prefixes: Vec<(String, String)> =
                self.tables.iter().zip(&self.late).map(|(t, l)| (t.prefix().into(), l.prefix().into())).collect();
            m.windows = Some(out.put_later("windows.bin", async move {
                let (parts, closed) =
                    saved.await.map_err(|_| Error::Internal("the window thread dropped a checkpoint".into()))??;
                let mut rows = TableRows::new();
                for ((table, late), (t, l)) in closed.into_iter().zip(prefixes) {
                    rows.extend([(t, table), (l, late)].into_iter().filter(|(_, b)| !b.is_empty()));
                }
                let encoding = crate::pool::spawn(move || encode_state(parts, rows));
                Ok(encoding.await??.into())
            }));
        }
        // The table rows: only those since the last checkpoint, in a blob added to the line
        // (encoded on the pool: a flood of late events makes megabytes a second).
        let new = self.take_tables();
        if !new.is_empty() {
            let encoding = crate::pool::spawn(move || encode_tables(&new).map(|p| crate::checkpoint::pack(&p)));
            self.table_line.push(out.put_later("tables-part.bin", async move { Ok(encoding.await??.into()) }));
        }
        m.table_parts.clone_from(&self.table_line);
        if self.partial() {
            let w = self.shard_windows()?;
            if w.states.values().any(|s| !s.windows.is_empty()) {
                let blob = super::merge::encode_states(&w.states)?;
                m.partials = Some(out.put("partials.bin", blob));
            }
            m.window_bounds = w.bounds;
        }
        Ok(())
    }

    async fn restore(&mut self, cp: &Checkpoints, m: &Manifest) -> Result<()> {
        // The table rows first: those the window state carries came after them.
        // Checkpoints of earlier versions saved every waiting row in `tables`.
        let line: Vec<String> = m.tables.iter().chain(&m.table_parts).cloned().collect();
        for path in &line {
            self.restore_tables(crate::checkpoint::unpack(&cp.get_blob(path).await?)?)?;
        }
        self.table_line = line;
        if let Some(path) = &m.windows {
            let restored = self.restore_state(&cp.get_blob(path).await?)?;
            tracing::info!(pipelines = ?restored, "Restored open windows.");
        }
        if let Some(path) = &m.partials {
            self.restore_partials(&cp.get_blob(path).await?, &m.window_bounds)?;
        }
        Ok(())
    }
}

fn read_batch(bytes: &[u8]) -> Result<RecordBatch> {
    let mut reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    match reader.next() {
        Some(b) => Ok(b?),
        None => Err(bad("a batch is missing")),
    }
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| bad("truncated"))?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| bad("truncated"))?))
    }
}
