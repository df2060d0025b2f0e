//! The one checkpoint hook of a stage that holds state (as Arroyo's operators have a
//! checkpoint hook and Kafka Streams' tasks carry their stores): each writes its part of an
//! epoch (blobs and its fields of the [`Manifest`]) and comes back from a committed one. The
//! processor builds a manifest from the parts and commits it ([`Checkpoints::commit`]).
//!
//! Implemented by the archive's open files (here: the archive sits below this layer) and by
//! the pipelines' windows ([`crate::window`]).

use std::future::Future;

use futures::{StreamExt, TryStreamExt};

use super::{Checkpoints, Manifest, from_ipc, to_ipc};
use crate::error::{Error, Result};
use crate::sink::archive::Archive;

/// A stage's part of a checkpoint.
pub trait Checkpointed {
    /// Saves this stage's state into the epoch `m` is built for: its blobs (through `cp`)
    /// and its fields of `m`.
    fn save(&mut self, cp: &Checkpoints, m: &mut Manifest) -> impl Future<Output = Result<()>> + Send;

    /// Restores this (fresh) stage from the committed manifest `m`.
    fn restore(&mut self, cp: &Checkpoints, m: &Manifest) -> impl Future<Output = Result<()>> + Send;
}

/// Archive files kept open across checkpoints: the rows not yet saved go into one segment
/// blob per file (encoded on blocking threads, written concurrently); restored, the files
/// reopen with their segments' rows.
impl Checkpointed for Archive {
    async fn save(&mut self, cp: &Checkpoints, m: &mut Manifest) -> Result<()> {
        let epoch = m.epoch;
        let saved: Vec<_> = futures::stream::iter(self.unsaved_rows().await?.into_iter().enumerate())
            .map(|(n, (key, rows))| async move {
                let bytes = tokio::task::spawn_blocking(move || to_ipc(&rows))
                    .await
                    .map_err(|e| Error::Internal(format!("segment encoder: {e}")))??;
                Ok::<_, Error>((key, cp.put_blob(epoch, &format!("open-{n}.arrow"), bytes).await?))
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        for (key, blob) in saved {
            self.saved(&key, blob);
        }
        m.open_files = self.open_files();
        Ok(())
    }

    async fn restore(&mut self, cp: &Checkpoints, m: &Manifest) -> Result<()> {
        for f in &m.open_files {
            let mut rows = Vec::new();
            for seg in &f.segments {
                rows.extend(from_ipc(&cp.get_blob(seg).await?)?);
            }
            self.reopen(f, rows).await?;
        }
        Ok(())
    }
}
