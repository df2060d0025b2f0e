//! The reader task: blocking `XREADGROUP`s on a dedicated connection.
//!
//! A blocking read holds its connection (replies are FIFO), so the reader owns one, whose
//! response timeout is the block time plus a margin: its own ([`wire`](super::wire)), whose
//! replies are parsed in this task straight into entries, or, on a Redis Cluster, the redis
//! crate's. It first drains this consumer's own pending
//! entries (`0`, after a restart), then reads new ones (`>`). On any error it reconnects
//! with backoff and first re-reads its own pending entries *after the last id it passed on*:
//! entries Redis delivered in a reply that was lost with the connection come back, and
//! nothing already passed on is delivered twice.
//!
//! In `noack` mode it reads with `XREAD` after the checkpointed positions instead: no pending
//! list; after an error it resumes after the last id it passed on.
//!
//! Each read's `COUNT` adapts to the entries' sizes so that a read stays near
//! `read_max_bytes` (`ReadBudget`); with the bounded channel to the processor that bounds
//! the memory reads take, whatever the producers write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::connect::{Conn, Connector};
use super::reply::{self, StreamEntries};
use super::wire::{Target, Wire};
use super::{SourceOptions, backoff};
use crate::entry::{EntryId, RawEntry, StreamBatch};

/// What the reader tells the pipeline.
#[derive(Debug)]
pub enum ReaderMsg {
    /// Entries from one stream.
    Batch(StreamBatch),
    /// A read found nothing new on any stream (they are drained, for now).
    Idle,
    /// Redis could not be reached; the reader keeps trying.
    Disconnected(String),
}

/// Where each stream's reading stands.
#[derive(Clone, Copy)]
enum Position {
    /// Re-reading this consumer's own pending entries, after the given id.
    Pending(EntryId),
    /// Reading new entries.
    New,
    /// `noack` mode: reading with `XREAD` after this id.
    After(EntryId),
}

/// Runs until `stop` turns true (after passing on the read in flight) or the receiver is
/// dropped. `after`: in `noack` mode, each stream's checkpointed position.
pub async fn run(
    opts: SourceOptions,
    after: Option<Vec<EntryId>>,
    tx: mpsc::Sender<ReaderMsg>,
    mut stop: watch::Receiver<bool>,
    count_gauge: Arc<AtomicU64>,
) {
    let mut budget = ReadBudget::new(&opts);
    let opener = match Opener::new(&opts) {
        Ok(o) => o,
        Err(e) => {
            let _ = tx.send(ReaderMsg::Disconnected(e.to_string())).await;
            return;
        }
    };
    let mut positions = match &after {
        Some(ids) => ids.iter().map(|&id| Position::After(id)).collect(),
        None => vec![Position::Pending(EntryId::default()); opts.streams.len()],
    };
    // Highest id passed on per stream: where to resume pending re-reads after a reconnect.
    let mut passed_on = vec![EntryId::default(); opts.streams.len()];
    let mut conn: Option<ReadConn> = None;
    let mut attempt = 0u32;
    while !*stop.borrow() {
        if conn.is_none() {
            match opener.connect(Duration::from_secs(5), opts.block + Duration::from_secs(10)).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    if tx.send(ReaderMsg::Disconnected(e)).await.is_err() {
                        return;
                    }
                    pause(&mut stop, backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let count = budget.count();
        count_gauge.store(count as u64, Ordering::Relaxed);
        let cmd = read_command(&opts, &positions, count);
        // A stop request lets the read in flight finish (at most `block`): its entries are
        // delivered to this consumer already, so they are passed on and processed.
        let started = std::time::SystemTime::now();
        let res = c.read(&cmd).await;
        let read = Some(crate::telemetry::ReadTime { started, returned: std::time::SystemTime::now() });
        if let Err(e) = &res
            && e.nogroup
        {
            // The stream (and its group) was deleted while we ran: recreate, as at start.
            tracing::warn!(error = %e.text, "Consumer group missing; recreating it.");
            for stream in &opts.streams {
                let mut create = redis::cmd("XGROUP");
                create.arg("CREATE").arg(stream).arg(&opts.group).arg(&opts.start_id).arg("MKSTREAM");
                let _ = c.command(&create).await;
            }
            continue;
        }
        let streams = match res {
            Ok(s) => s,
            Err(e) => {
                conn = None;
                for (pos, last) in positions.iter_mut().zip(&passed_on) {
                    *pos = match pos {
                        Position::After(at) => Position::After((*at).max(*last)),
                        _ => Position::Pending(*last),
                    };
                }
                if tx.send(ReaderMsg::Disconnected(e.text)).await.is_err() {
                    return;
                }
                pause(&mut stop, backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        budget.observe(streams.iter().flat_map(|(_, e)| e.iter().map(RawEntry::size)));
        let mut any = false;
        for (i, pos) in positions.iter_mut().enumerate() {
            let key = opts.streams[i].as_bytes();
            let entries = streams.iter().position(|(k, _)| k == key);
            match pos {
                // A pending read returns every stream; an empty list means "drained".
                Position::Pending(_) => {
                    *pos = match entries.and_then(|j| streams[j].1.last()) {
                        Some(last) => Position::Pending(last.id),
                        None => Position::New,
                    }
                }
                Position::After(at) => {
                    if let Some(last) = entries.and_then(|j| streams[j].1.last()) {
                        *at = (*at).max(last.id);
                    }
                }
                Position::New => {}
            }
        }
        for (key, entries) in streams {
            let Some(stream) = opts.streams.iter().position(|s| s.as_bytes() == key.as_ref()) else { continue };
            if entries.is_empty() {
                continue;
            }
            any = true;
            if let Some(max) = entries.iter().map(|e| e.id).max() {
                passed_on[stream] = passed_on[stream].max(max);
            }
            if tx.send(ReaderMsg::Batch(StreamBatch { stream, entries, read })).await.is_err() {
                return;
            }
        }
        if !any && tx.send(ReaderMsg::Idle).await.is_err() {
            return;
        }
    }
}

/// `COUNT` per read, adapted so that a read stays near `read_max_bytes` whatever the entries'
/// sizes: the budget (per stream) over the largest entry seen lately (a larger entry raises
/// the estimate at once, it halves with each read), within 1..=`batch_size`. A stream whose entries
/// jump from small to huge costs at most one read at the old `COUNT`.
struct ReadBudget {
    per_stream: usize,
    max: usize,
    /// Largest entry lately (bytes).
    estimate: f64,
}

impl ReadBudget {
    fn new(opts: &SourceOptions) -> Self {
        let per_stream = (opts.read_max_bytes / opts.streams.len().max(1)).max(1);
        // Before the first read: as if entries were as large as the budget, so the first read
        // is of one entry, whatever the entries' sizes (a reply is held whole before it is
        // parsed); small entries double COUNT with each read (~15 reads to 1,000 entries).
        ReadBudget { per_stream, max: opts.batch_size.max(1), estimate: per_stream as f64 }
    }

    fn count(&self) -> usize {
        ((self.per_stream as f64 / self.estimate.max(1.0)) as usize).clamp(1, self.max)
    }

    fn observe(&mut self, sizes: impl Iterator<Item = usize>) {
        let Some(largest) = sizes.max() else { return };
        self.estimate = (largest as f64).max(self.estimate * 0.5).max(64.0);
    }
}

fn read_command(opts: &SourceOptions, positions: &[Position], count: usize) -> redis::Cmd {
    let noack = positions.iter().any(|p| matches!(p, Position::After(_)));
    let mut cmd = redis::cmd(if noack { "XREAD" } else { "XREADGROUP" });
    if !noack {
        cmd.arg("GROUP").arg(&opts.group).arg(&opts.consumer);
    }
    cmd.arg("COUNT").arg(count);
    // Pending re-reads return at once; block only when every stream reads new entries.
    if positions.iter().all(|p| matches!(p, Position::New | Position::After(_))) {
        cmd.arg("BLOCK").arg(opts.block.as_millis() as u64);
    }
    cmd.arg("STREAMS");
    for s in &opts.streams {
        cmd.arg(s);
    }
    for p in positions {
        match p {
            Position::Pending(id) | Position::After(id) => cmd.arg(id.to_string()),
            Position::New => cmd.arg(">"),
        };
    }
    cmd
}

/// Opens the reader's connection: its own ([`wire`](super::wire)) to a single Redis, the
/// redis crate's where that is needed (a cluster routes by slot and follows failovers).
enum Opener {
    Wire(Target),
    Crate(Connector),
}

enum ReadConn {
    Wire(Wire),
    Crate(Conn),
}

/// A read that failed: whether Redis answered `NOGROUP`, and what to report.
struct Failed {
    nogroup: bool,
    text: String,
}

impl Opener {
    fn new(opts: &SourceOptions) -> crate::error::Result<Opener> {
        Ok(match Target::new(&opts.redis)? {
            Some(target) => Opener::Wire(target),
            None => Opener::Crate(Connector::new(&opts.redis)?),
        })
    }

    async fn connect(&self, connect_timeout: Duration, response_timeout: Duration) -> Result<ReadConn, String> {
        match self {
            Opener::Wire(t) => {
                t.connect(connect_timeout, response_timeout).await.map(ReadConn::Wire).map_err(|e| e.to_string())
            }
            Opener::Crate(c) => {
                c.connect(connect_timeout, response_timeout).await.map(ReadConn::Crate).map_err(|e| e.to_string())
            }
        }
    }
}

impl ReadConn {
    async fn read(&mut self, cmd: &redis::Cmd) -> Result<Vec<StreamEntries>, Failed> {
        match self {
            ReadConn::Wire(w) => {
                w.xread(cmd).await.map_err(|e| Failed { nogroup: e.code() == Some("NOGROUP"), text: e.to_string() })
            }
            ReadConn::Crate(c) => match cmd.query_async::<redis::Value>(c).await {
                Ok(v) => reply::xread(v).map_err(|e| Failed { nogroup: false, text: e.to_string() }),
                Err(e) => Err(Failed { nogroup: e.code() == Some("NOGROUP"), text: e.to_string() }),
            },
        }
    }

    /// A command whose reply does not matter (recreating a group).
    async fn command(&mut self, cmd: &redis::Cmd) {
        let _ = match self {
            ReadConn::Wire(w) => w.command(cmd).await.map_err(|e| e.to_string()),
            ReadConn::Crate(c) => cmd.query_async::<redis::Value>(c).await.map(drop).map_err(|e| e.to_string()),
        };
    }
}

async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}
