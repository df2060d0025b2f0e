//! The acker task: `XACK`s durable entries on its own connection, so that acknowledging a
//! commit's worth of entries (≈0.6 µs of Redis time each) overlaps with reading and
//! processing the next batches instead of stalling them.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::SourceOptions;
use super::commands::Commands;
use super::group;
use super::lease::Fence;
use crate::entry::EntryId;
use crate::error::Result;

/// Handle to the acker task.
pub struct Acker {
    tx: Option<mpsc::Sender<(usize, Vec<EntryId>)>>,
    task: JoinHandle<Result<u64>>,
}

impl Acker {
    /// Starts the task; it acks only while `fence` says the group's lease is held.
    pub fn start(opts: &SourceOptions, fence: Fence) -> Result<Acker> {
        let mut cmds = Commands::new(&opts.redis, opts.retry_timeout)?;
        let (tx, mut rx) = mpsc::channel::<(usize, Vec<EntryId>)>(64);
        let (group_name, streams) = (opts.group.clone(), opts.streams.clone());
        let task = tokio::spawn(async move {
            let mut acked = 0;
            while let Some((stream, ids)) = rx.recv().await {
                acked += ids.len() as u64;
                fence.guard(group::ack(&mut cmds, &group_name, &streams[stream], &ids)).await?;
            }
            Ok(acked)
        });
        Ok(Acker { tx: Some(tx), task })
    }

    /// Queues durable `ids` of stream `stream` for acknowledgement. Fails when the task
    /// stopped on an error (which [`Acker::finish`] returns).
    pub async fn send(&mut self, stream: usize, ids: Vec<EntryId>) -> bool {
        match &self.tx {
            Some(tx) => tx.send((stream, ids)).await.is_ok(),
            None => false,
        }
    }

    /// Waits until everything queued is acked; returns how many entries were.
    pub async fn finish(mut self) -> Result<u64> {
        self.tx = None;
        self.task.await.map_err(|e| crate::error::Error::Internal(format!("acker task: {e}")))?
    }
}
