//! Saved state for restarts: the dedup snapshot, stored in the lake under `_eventide/state/`
//! (a prefix table readers ignore). It is written only right after every open archive file
//! was committed, so it never remembers an id whose row is not durable.

use object_store::PutPayload;
use object_store::path::Path;

use crate::dedup::Dedup;
use crate::error::{Error, Result};
use crate::sink::lake::{INTERNAL_PREFIX, Lake};

/// Where the dedup state of `group` lives.
pub fn dedup_path(group: &str) -> Path {
    Path::from(format!("{INTERNAL_PREFIX}/state/{}/dedup.bin", crate::sink::archive::sanitize_name(group)))
}

/// Loads the dedup snapshot, or a fresh dedup when there is none.
pub async fn load_dedup(lake: &Lake, group: &str, horizon_secs: u64) -> Result<Dedup> {
    let path = dedup_path(group);
    match lake.get_opt(&path).await? {
        None => Ok(Dedup::new(horizon_secs)),
        Some(bytes) => Dedup::from_bytes(&bytes, horizon_secs)
            .map_err(|reason| Error::State { path: path.to_string().into(), reason: reason.into() }),
    }
}

/// Saves the dedup snapshot (atomically replacing the previous one).
pub async fn save_dedup(lake: &Lake, group: &str, dedup: &Dedup) -> Result<()> {
    lake.put_atomic(&dedup_path(group), PutPayload::from(dedup.to_bytes())).await
}
