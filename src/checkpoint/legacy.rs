//! Dedup state saved by versions before checkpoints, under `_eventide/state/<group>/`: a
//! full snapshot (`dedup.bin`) plus deltas (`delta/*.bin`). Read once, when a group has no
//! checkpoint yet, and carried into its first checkpoint ([`crate::checkpoint`] owns saved
//! state since). Loading applies the snapshot and every delta (a set union).

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;

use crate::dedup::Dedup;
use crate::error::{Error, Result};
use crate::names::sanitize_name;
use crate::sink::lake::{INTERNAL_PREFIX, Lake};

/// Where the dedup snapshot of `group` lives.
pub fn dedup_path(group: &str) -> Path {
    Path::from(format!("{INTERNAL_PREFIX}/state/{}/dedup.bin", sanitize_name(group)))
}

fn delta_prefix(group: &str) -> Path {
    Path::from(format!("{INTERNAL_PREFIX}/state/{}/delta", sanitize_name(group)))
}

/// Loads the dedup snapshot and deltas, or a fresh dedup when there are none.
pub async fn load_dedup(lake: &Lake, group: &str, horizon_secs: u64) -> Result<Dedup> {
    let path = dedup_path(group);
    let bad = |path: &Path, reason: &str| Error::State { path: path.to_string().into(), reason: reason.into() };
    let mut dedup = match lake.get_opt(&path).await? {
        None => Dedup::new(horizon_secs),
        Some(bytes) => Dedup::from_bytes(&bytes, horizon_secs).map_err(|r| bad(&path, r))?,
    };
    let deltas: Vec<_> = lake.store().list(Some(&delta_prefix(group))).try_collect().await?;
    for meta in deltas {
        if let Some(bytes) = lake.get_opt(&meta.location).await? {
            dedup.apply_delta(&bytes).map_err(|r| bad(&meta.location, r))?;
        }
    }
    Ok(dedup)
}
