//! An epoch's state blobs between the two halves of a checkpoint: the parts name them while
//! the processor is paused ([`super::Checkpointed::save`]), and the background half writes
//! them all ([`EpochBlobs::write`]) before the manifest that lists them. Their paths are
//! fixed when named, so the parts can record them (an open file's pieces, the dedup line)
//! before a byte is written; nothing refers to them until the manifest is committed.

use futures::{StreamExt, TryStreamExt};
use object_store::PutPayload;
use object_store::path::Path;

use crate::error::Result;
use crate::sink::lake::Lake;

/// Blobs written at once: a checkpoint's writes overlap (object stores answer each put in
/// a round trip), but not without bound.
const WRITE_CONCURRENCY: usize = 4;

/// The blobs of one epoch, named but not written yet.
#[derive(Debug)]
pub struct EpochBlobs {
    epoch: u64,
    root: String,
    blobs: Vec<(Path, PutPayload)>,
}

impl EpochBlobs {
    pub(super) fn new(root: &str, epoch: u64) -> Self {
        EpochBlobs { epoch, root: root.to_string(), blobs: Vec::new() }
    }

    /// Names blob `name` of the epoch holding `bytes`; returns its path (written later).
    pub fn put(&mut self, name: &str, bytes: impl Into<PutPayload>) -> String {
        let path = Path::from(format!("{}/{:020}/{name}", self.root, self.epoch));
        let out = path.to_string();
        self.blobs.push((path, bytes.into()));
        out
    }

    /// Writes every blob (each atomically, several at a time).
    pub async fn write(self, lake: &Lake) -> Result<()> {
        futures::stream::iter(self.blobs)
            .map(|(path, payload)| async move { lake.put_atomic(&path, payload).await })
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}
