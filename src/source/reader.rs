//! The reader task: blocking `XREADGROUP`s on a dedicated connection.
//!
//! A blocking read holds its connection (replies are FIFO), and the redis crate's default
//! 500 ms response timeout would break `BLOCK`, so the reader owns a connection whose
//! timeout is the block time plus a margin. It first drains this consumer's own pending
//! entries (`0`, after a restart), then reads new ones (`>`). On any error it reconnects
//! with backoff and first re-reads its own pending entries *after the last id it passed on*:
//! entries Redis delivered in a reply that was lost with the connection come back, and
//! nothing already passed on is delivered twice.
//!
//! In `noack` mode it reads with `XREAD` after the checkpointed positions instead: no pending
//! list; after an error it resumes after the last id it passed on.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{mpsc, watch};

use super::{SourceOptions, backoff, reply};
use crate::event::{EntryId, StreamBatch};

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
) {
    let client = match opts.redis.client() {
        Ok(c) => c,
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
    let mut conn: Option<MultiplexedConnection> = None;
    let mut attempt = 0u32;
    while !*stop.borrow() {
        if conn.is_none() {
            let cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(opts.block + Duration::from_secs(10)));
            match client.get_multiplexed_async_connection_with_config(&cfg).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    if tx.send(ReaderMsg::Disconnected(e.to_string())).await.is_err() {
                        return;
                    }
                    pause(&mut stop, backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let cmd = read_command(&opts, &positions);
        // A stop request lets the read in flight finish (at most `block`): its entries are
        // delivered to this consumer already, so they are passed on and processed.
        let res = cmd.query_async::<Value>(c).await;
        if let Err(e) = &res
            && e.code() == Some("NOGROUP")
        {
            // The stream (and its group) was deleted while we ran: recreate, as at start.
            tracing::warn!(error = %e, "Consumer group missing; recreating it.");
            for stream in &opts.streams {
                let mut create = redis::cmd("XGROUP");
                create.arg("CREATE").arg(stream).arg(&opts.group).arg(&opts.start_id).arg("MKSTREAM");
                let _ = create.query_async::<Value>(c).await;
            }
            continue;
        }
        let streams = match res.map_err(|e| e.to_string()).and_then(|v| reply::xread(v).map_err(|e| e.to_string())) {
            Ok(s) => s,
            Err(e) => {
                conn = None;
                for (pos, last) in positions.iter_mut().zip(&passed_on) {
                    *pos = match pos {
                        Position::After(at) => Position::After((*at).max(*last)),
                        _ => Position::Pending(*last),
                    };
                }
                if tx.send(ReaderMsg::Disconnected(e)).await.is_err() {
                    return;
                }
                pause(&mut stop, backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
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
            let Some(stream) = opts.streams.iter().position(|s| s.as_bytes() == key.as_slice()) else { continue };
            if entries.is_empty() {
                continue;
            }
            any = true;
            if let Some(max) = entries.iter().map(|e| e.id).max() {
                passed_on[stream] = passed_on[stream].max(max);
            }
            if tx.send(ReaderMsg::Batch(StreamBatch { stream, entries })).await.is_err() {
                return;
            }
        }
        if !any && tx.send(ReaderMsg::Idle).await.is_err() {
            return;
        }
    }
}

fn read_command(opts: &SourceOptions, positions: &[Position]) -> redis::Cmd {
    let noack = positions.iter().any(|p| matches!(p, Position::After(_)));
    let mut cmd = redis::cmd(if noack { "XREAD" } else { "XREADGROUP" });
    if !noack {
        cmd.arg("GROUP").arg(&opts.group).arg(&opts.consumer);
    }
    cmd.arg("COUNT").arg(opts.batch_size);
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

async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}
