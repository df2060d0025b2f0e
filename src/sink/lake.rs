//! The lake: one object store (from a URL or a local path) holding every table.
//!
//! Committed files become visible atomically: a single `PUT` on object stores; on a local
//! directory, a write under `_eventide/staging/` and a rename into place (a reader globbing
//! `events/**/*.parquet` never sees a partial file, nor object_store's `#n` temp files).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// Prefix for eventide's own objects (state, staging); readers of the tables ignore it.
pub const INTERNAL_PREFIX: &str = "_eventide";

/// Attempts per store call: transient failures (network, timeouts, 5xx: object_store's
/// `Generic` errors) are retried with backoff (50 ms doubling, ~1.5 s in all) on top of the
/// HTTP stores' own retries; other errors (not found, exists, denied, …) return at once, and
/// a failure that outlasts the retries stops the pipeline without acking.
const STORE_ATTEMPTS: u32 = 6;

async fn retry<T, F, Fut>(what: &str, path: &Path, mut op: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e @ object_store::Error::Generic { .. }) if attempt + 1 < STORE_ATTEMPTS => {
                let wait = std::time::Duration::from_millis(50 << attempt);
                tracing::warn!(op = what, path = %path, error = %e, attempt, "Object store call failed; retrying.");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Where a commit puts its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Straight into place, visible at once.
    Direct,
    /// Under this prefix (inside [`INTERNAL_PREFIX`]), published when the checkpoint that
    /// lists them commits.
    Staged(String),
}

/// An opened lake.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    /// A local directory: commits go through a staged rename.
    local: bool,
    /// The directory of a local lake.
    root: Option<PathBuf>,
}

impl Lake {
    /// Opens `location` with no extra options; see [`Lake::open_with`].
    pub fn open(location: &str) -> Result<Lake> {
        Lake::open_with(location, &BTreeMap::new())
    }

    /// Opens `location`: a path or `file://` URL (created if missing), `memory://`, or
    /// `s3://bucket[/prefix]`, `gs://…`, `az://container[/prefix]` configured from the usual
    /// environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) and then from `options`
    /// (object_store configuration keys such as `aws_endpoint`, `aws_allow_http`).
    pub fn open_with(location: &str, options: &BTreeMap<String, String>) -> Result<Lake> {
        let cfg = |m: String| Error::Config(format!("lake {location:?}: {m}"));
        let (scheme, rest) = match location.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("file".to_string(), location),
        };
        let (store, local_root): (Arc<dyn ObjectStore>, _) = match scheme.as_str() {
            "file" => {
                let path = PathBuf::from(if rest.is_empty() { "." } else { rest });
                std::fs::create_dir_all(&path).map_err(|e| cfg(format!("cannot create directory: {e}")))?;
                let abs = path.canonicalize().map_err(|e| cfg(e.to_string()))?;
                (Arc::new(LocalFileSystem::new_with_prefix(&abs)?), Some(abs))
            }
            "memory" => (Arc::new(InMemory::new()), None),
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" => {
                let url = url::Url::parse(location).map_err(|e| cfg(e.to_string()))?;
                let bucket_url = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
                let key_err = |k: &str| cfg(format!("unknown lake option `{k}` for {scheme}://"));
                // Environment first, then the explicit options; each builder has its own key type.
                macro_rules! build {
                    ($builder:ty) => {{
                        let mut b = <$builder>::from_env().with_url(&bucket_url);
                        for (k, v) in options {
                            b = b.with_config(k.parse().map_err(|_| key_err(k))?, v);
                        }
                        Arc::new(b.build()?) as Arc<dyn ObjectStore>
                    }};
                }
                let inner = match scheme.as_str() {
                    "s3" | "s3a" => build!(AmazonS3Builder),
                    "gs" => build!(GoogleCloudStorageBuilder),
                    _ => build!(MicrosoftAzureBuilder),
                };
                let prefix = url.path().trim_matches('/');
                if prefix.is_empty() {
                    (inner, None)
                } else {
                    let p = Path::parse(prefix).map_err(|e| cfg(e.to_string()))?;
                    (Arc::new(PrefixStore::new(inner, p)) as Arc<dyn ObjectStore>, None)
                }
            }
            other => {
                return Err(cfg(format!(
                    "unsupported scheme `{other}://` (use a path, file://, memory://, s3://, gs:// or az://)"
                )));
            }
        };
        Ok(Lake { store, local: local_root.is_some(), root: local_root })
    }

    /// A lake over an object store built elsewhere (e.g. a wrapper injecting faults in
    /// tests); commits are single puts, as on object stores.
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Lake {
        Lake { store, local: false, root: None }
    }

    /// The object store, for readers.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Writes `bytes` at `path` so that readers see all of it or nothing.
    pub async fn put_atomic(&self, path: &Path, payload: PutPayload) -> Result<()> {
        if self.local {
            // One counter per process: every Lake of it (one per shard) shares the temp names.
            static TEMP_FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = TEMP_FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let staging = Path::from(format!("{INTERNAL_PREFIX}/staging/{}-{n}.tmp", std::process::id()));
            retry("put", &staging, || self.store.put(&staging, payload.clone())).await?;
            retry("rename", path, || self.store.rename(&staging, path)).await?;
        } else {
            retry("put", path, || self.store.put(path, payload.clone())).await?;
        }
        Ok(())
    }

    /// Writes a committed file's bytes for `target`: into place ([`Placement::Direct`]), or
    /// under a staging prefix for a checkpoint to publish later ([`Placement::Staged`]).
    pub async fn write_file(
        &self,
        target: &Path,
        payload: PutPayload,
        placement: &Placement,
    ) -> Result<Option<String>> {
        match placement {
            Placement::Direct => {
                self.put_atomic(target, payload).await?;
                Ok(None)
            }
            Placement::Staged(prefix) => {
                let staged = Path::from(format!("{prefix}/{target}"));
                retry("put", &staged, || self.store.put(&staged, payload.clone())).await?;
                Ok(Some(staged.to_string()))
            }
        }
    }

    /// Moves a staged file into place (atomic on a local directory; a copy of the whole
    /// object then a delete on object stores). Done already (staged gone, target there) is
    /// success, so a recovery can repeat it.
    pub async fn publish(&self, staged: &str, target: &str) -> Result<()> {
        let (from, to) = (Path::from(staged), Path::from(target));
        match retry("rename", &to, || self.store.rename(&from, &to)).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) if self.store.head(&to).await.is_ok() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Local lakes: removes the directory tree at `prefix` if only empty directories are
    /// left in it (object stores have no directories).
    pub fn remove_local_dirs(&self, prefix: &str) {
        fn prune(dir: &std::path::Path) -> bool {
            let Ok(entries) = std::fs::read_dir(dir) else { return false };
            let mut empty = true;
            for e in entries.flatten() {
                let p = e.path();
                empty &= p.is_dir() && prune(&p);
            }
            empty && std::fs::remove_dir(dir).is_ok()
        }
        if let Some(root) = &self.root {
            prune(&root.join(prefix));
        }
    }

    /// Writes `path` only if it does not exist (`AlreadyExists` otherwise). Stores without
    /// conditional puts fall back to a plain atomic put.
    pub async fn put_create(&self, path: &Path, payload: PutPayload) -> Result<()> {
        let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match retry("put", path, || self.store.put_opts(path, payload.clone(), opts.clone())).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotImplemented { .. }) => self.put_atomic(path, payload).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `path` (already gone is fine).
    pub async fn delete(&self, path: &Path) -> Result<()> {
        match retry("delete", path, || self.store.delete(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads `path`, or `None` when it does not exist.
    pub async fn get_opt(&self, path: &Path) -> Result<Option<Bytes>> {
        let get = || async { self.store.get(path).await?.bytes().await };
        match retry("get", path, get).await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
