//! Saved state for restarts: dedup, stored in the lake under `_eventide/state/<group>/`
//! (a prefix table readers ignore): a full snapshot (`dedup.bin`), written at most every
//! `state_interval` and at a clean stop, plus small deltas (`delta/*.bin`, 16 B per id)
//! written after every commit. Both are written only right after every open archive file was
//! committed, so they never remember an id whose row is not durable. Loading applies the
//! snapshot and every delta (a set union, so order and repeats do not matter).

use std::sync::atomic::{AtomicU64, Ordering};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use crate::dedup::Dedup;
use crate::error::{Error, Result};
use crate::sink::archive::sanitize_name;
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

/// Saves the ids remembered since the last save, if any.
pub async fn save_delta(lake: &Lake, group: &str, dedup: &mut Dedup) -> Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let Some(bytes) = dedup.take_delta() else { return Ok(()) };
    let name = format!(
        "{}/{}-{}-{}.bin",
        delta_prefix(group),
        chrono::Utc::now().timestamp_millis(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    lake.put_atomic(&Path::from(name), PutPayload::from(bytes)).await
}

/// Saves the full snapshot (atomically replacing the previous one), then removes the deltas
/// it covers.
pub async fn save_dedup(lake: &Lake, group: &str, dedup: &mut Dedup) -> Result<()> {
    lake.put_atomic(&dedup_path(group), PutPayload::from(dedup.to_bytes())).await?;
    dedup.clear_delta();
    let deltas: Vec<_> = lake.store().list(Some(&delta_prefix(group))).try_collect().await?;
    for meta in deltas {
        lake.delete(&meta.location).await?;
    }
    Ok(())
}
