//! An epoch's state blobs between the two halves of a checkpoint: the parts name them while
//! the processor is paused ([`super::Checkpointed::save`]), and the background half writes
//! them all ([`EpochBlobs::write`]) before the manifest that lists them. Their paths are
//! fixed when named, so the parts can record them (an open file's pieces, the dedup line)
//! before a byte is written; nothing refers to them until the manifest is committed. A
//! blob's bytes may still be in the making ([`EpochBlobs::put_later`]: an open file's piece,
//! the windows' IPC encoding, on the encoding pool): the background half waits for them.

use std::future::Future;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::PutPayload;
use object_store::path::Path;

use crate::error::Result;
use crate::sink::lake::Lake;

/// Blobs written at once: a checkpoint's writes overlap (object stores answer each put in
/// a round trip), but not without bound.
const WRITE_CONCURRENCY: usize = 4;

/// A blob's bytes: here, or being made.
enum Bytes {
    Now(PutPayload),
    Later(BoxFuture<'static, Result<PutPayload>>),
}

/// The blobs of one epoch, named but not written yet.
pub struct EpochBlobs {
    epoch: u64,
    root: String,
    blobs: Vec<(Path, Bytes)>,
}

impl std::fmt::Debug for EpochBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochBlobs").field("epoch", &self.epoch).field("blobs", &self.blobs.len()).finish()
    }
}

impl EpochBlobs {
    pub(super) fn new(root: &str, epoch: u64) -> Self {
        EpochBlobs { epoch, root: root.to_string(), blobs: Vec::new() }
    }

    /// Names blob `name` of the epoch holding `bytes`; returns its path (written later).
    pub fn put(&mut self, name: &str, bytes: impl Into<PutPayload>) -> String {
        self.push(name, Bytes::Now(bytes.into()))
    }

    /// Names blob `name` of the epoch, whose bytes `bytes` makes (it runs on its own: start
    /// the work before, on the encoding pool); returns its path.
    pub fn put_later(
        &mut self,
        name: &str,
        bytes: impl Future<Output = Result<PutPayload>> + Send + 'static,
    ) -> String {
        self.push(name, Bytes::Later(bytes.boxed()))
    }

    fn push(&mut self, name: &str, bytes: Bytes) -> String {
        let path = Path::from(format!("{}/{:020}/{name}", self.root, self.epoch));
        let out = path.to_string();
        self.blobs.push((path, bytes));
        out
    }

    /// Writes every blob (each atomically, several at a time), waiting for the bytes of
    /// those still being made.
    pub async fn write(self, lake: &Lake) -> Result<()> {
        futures::stream::iter(self.blobs)
            .map(|(path, bytes)| async move {
                let payload = match bytes {
                    Bytes::Now(p) => p,
                    Bytes::Later(f) => f.await?,
                };
                lake.put_atomic(&path, payload).await
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}
