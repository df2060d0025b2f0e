//! Checkpoints: the commit protocol that makes every event count exactly once across
//! crashes (sits after the sinks, before the ack: process → **checkpoint** → XACK).
//!
//! A run is a sequence of epochs. During epoch N every output file (archive files that
//! rolled, and at the checkpoint every open archive file and every pipeline table file) is
//! written under a staging prefix readers ignore, `_eventide/staging/<group>/<N>/`.
//! The checkpoint then writes the dedup state (a delta, or a full snapshot every
//! `state_interval`) and the window state, and finally the **manifest**
//! `_eventide/checkpoints/<group>/manifest-<N>.json` listing all of them: writing
//! the manifest (one atomic put) is the commit point. After it the staged files are moved into
//! place and the entries read during the epoch are acked; then older manifests and blobs are
//! pruned.
//!
//! Recovery loads the latest manifest: publishes its staged files that are not in place yet
//! (idempotent), deletes staged files of later, uncommitted epochs, restores dedup and
//! windows, and re-reads the consumer's pending entries. Entries already counted by the
//! checkpoint come back as duplicates (dedup remembers them) and are only acked; the others
//! are processed as new. See ARCHITECTURE.md for the invariants.

mod blob;
mod epoch;
pub mod legacy;
mod part;

pub use blob::{from_ipc, pack, to_ipc, unpack};
pub use epoch::EpochBlobs;
pub use part::{Checkpointed, DedupLine, DedupPart};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::names::{ShardId, sanitize_name};
use crate::sink::archive::CommittedFile;
use crate::sink::delta::{DeltaLog, NewFile};
use crate::sink::lake::{INTERNAL_PREFIX, Lake};

const VERSION: u32 = 1;

/// One output file of an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub staged: String,
    pub target: String,
    pub rows: u64,
    pub bytes: u64,
}

/// The commit record of one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub epoch: u64,
    pub group: String,
    pub consumer: String,
    /// When the epoch started (unix ms): dead-letter entries written after it may belong
    /// to entries that were not acked yet.
    pub started_ms: i64,
    pub created_ms: i64,
    /// Files this epoch made visible (staged until the manifest was written).
    pub files: Vec<FileEntry>,
    /// Dedup state: the full snapshot, then the deltas written since (all blob paths).
    pub dedup_snapshot: Option<String>,
    pub dedup_deltas: Vec<String>,
    /// Every pipeline's window state.
    pub windows: Option<String>,
    /// Archive files kept open across checkpoints, with the blobs holding their rows so far.
    pub open_files: Vec<crate::sink::archive::OpenFileState>,
    /// Closed-window and late rows waiting for the next table file (Arrow IPC per table), as
    /// checkpoints of earlier versions saved them (all in one blob); read before `table_parts`.
    pub tables: Option<String>,
    /// The same rows as a line of blobs, in order: each holds the rows that arrived in one
    /// epoch (a checkpoint saves only those; the line starts anew when the tables commit).
    #[serde(default)]
    pub table_parts: Vec<String>,
    /// Per stream, the last entry id processed (for ops; pending entries are re-read).
    pub positions: BTreeMap<String, String>,
    /// Running totals as of this checkpoint.
    pub totals: Totals,
    /// The fencing token of the lease under which it was written (0: before fencing).
    #[serde(default)]
    pub token: u64,
    /// Wall-clock estimate (unix ms) of when that lease could have lapsed, as the writer knew
    /// it at the commit: `created_ms` is always before it (a check of the time-based fence).
    #[serde(default)]
    pub lease_deadline_ms: Option<i64>,
    /// Written by a new lease holder to take the checkpoint line over: the previous state
    /// again, under the next epoch, so the previous holder can commit nothing more.
    #[serde(default)]
    pub takeover: bool,
    /// The shard this line is (index of count; before shards: 0 of 1).
    #[serde(default)]
    pub shard: u32,
    #[serde(default = "one")]
    pub shards: u32,
    /// Several shards: closed windows' partial states not merged yet (blob path), for the
    /// merger and this shard's recovery.
    #[serde(default)]
    pub partials: Option<String>,
    /// Several shards: per pipeline, how far this shard has closed its windows.
    #[serde(default)]
    pub window_bounds: BTreeMap<String, WindowBound>,
    /// Shard 0 of several (the merger's progress): per pipeline, every window ending at or
    /// before this is in the table.
    #[serde(default)]
    pub merged: BTreeMap<String, i64>,
    /// Shard 0 of several: per pipeline, the first closed-state key the shards keep (the
    /// ones before are merged).
    #[serde(default)]
    pub merge_keep: BTreeMap<String, i64>,
    /// Shard 0 of several: the merger's `emit = "updates"` windows in flight (blob path).
    #[serde(default)]
    pub merger: Option<String>,
}

/// How far one shard has closed one pipeline's windows: every window ending at or before
/// `closed_before` is closed there (its partial state final), under the pipeline definition
/// whose fingerprint hash is `fingerprint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowBound {
    pub fingerprint: u64,
    pub closed_before: i64,
}

fn one() -> u32 {
    1
}

/// Counts as of a checkpoint (they survive restarts in the manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub archived_rows: u64,
    pub table_rows: u64,
    pub files: u64,
}

/// The checkpoints of one consumer group (one line, continued by each lease holder).
#[derive(Debug, Clone)]
pub struct Checkpoints {
    lake: Lake,
    root: String,
    staging: String,
    pub group: String,
    pub consumer: String,
    pub shard: ShardId,
    /// The lake's Delta logs (`table_format = "delta"`): each epoch's files are added to
    /// their tables when it is published.
    delta: Option<Arc<DeltaLog>>,
}

impl Checkpoints {
    /// The line of `shard` of `group` (`_eventide/checkpoints/<group>/`, or
    /// `…/<group>/shard=<k>/` with more than one shard).
    pub fn new(lake: Lake, shard: ShardId, group: &str, consumer: &str) -> Checkpoints {
        // Per group and shard, not per consumer: the next lease holder continues the line.
        let line = shard.line(group);
        Checkpoints {
            lake,
            root: format!("{INTERNAL_PREFIX}/checkpoints/{line}"),
            staging: format!("{INTERNAL_PREFIX}/staging/{line}"),
            group: group.to_string(),
            consumer: consumer.to_string(),
            shard,
            delta: None,
        }
    }

    /// Publishing also commits each epoch's files to their Delta tables.
    pub fn with_delta(mut self, delta: Arc<DeltaLog>) -> Checkpoints {
        self.delta = Some(delta);
        self
    }

    /// The Delta `txn` app id of this line: a table holds each of its epochs once.
    pub fn app_id(&self) -> String {
        format!("eventide/{}", self.shard.line(&self.group))
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Refuses a shard count other than the one the group's checkpoints were made with:
    /// events never move between shards, so the count is fixed for the group's life.
    pub async fn check_shard_count(&self) -> Result<()> {
        let group_root = Path::from(format!("{INTERNAL_PREFIX}/checkpoints/{}", sanitize_name(&self.group)));
        let listed = self.lake.store().list_with_delimiter(Some(&group_root)).await?;
        let sharded = listed.common_prefixes.iter().any(|p| p.filename().is_some_and(|f| f.starts_with("shard=")));
        let single = listed.objects.iter().any(|o| o.location.filename().and_then(parse_manifest_name).is_some());
        let fixed = |had: &str| {
            Error::Config(format!(
                "group {:?} has checkpoints {had}; this run has shards = {}. The shard count is fixed for a \
                 group's life (events never move between shards): use the group's count, or a new group",
                self.group, self.shard.count
            ))
        };
        if self.shard.count > 1 && single {
            return Err(fixed("made with shards = 1"));
        }
        if self.shard.count <= 1 && sharded {
            return Err(fixed("of several shards"));
        }
        if let Some(m) = self.latest().await?
            && m.shards != self.shard.count
        {
            return Err(fixed(&format!("made with shards = {}", m.shards)));
        }
        Ok(())
    }

    /// Where epoch `epoch` stages its files.
    pub fn staging_prefix(&self, epoch: u64) -> String {
        format!("{}/{epoch:020}", self.staging)
    }

    fn manifest_path(&self, epoch: u64) -> Path {
        Path::from(format!("{}/manifest-{epoch:020}.json", self.root))
    }

    /// Epoch `epoch`'s state blobs, to be named by the parts and written before its manifest.
    pub fn epoch_blobs(&self, epoch: u64) -> EpochBlobs {
        EpochBlobs::new(&self.root, epoch)
    }

    /// Writes a state blob of epoch `epoch`; returns its path.
    pub async fn put_blob(&self, epoch: u64, name: &str, bytes: impl Into<PutPayload>) -> Result<String> {
        let path = Path::from(format!("{}/{epoch:020}/{name}", self.root));
        self.lake.put_atomic(&path, bytes.into()).await?;
        Ok(path.to_string())
    }

    pub async fn get_blob(&self, path: &str) -> Result<bytes::Bytes> {
        self.lake.get_opt(&Path::from(path)).await?.ok_or_else(|| Error::State {
            path: path.into(),
            reason: "listed by the checkpoint but missing from the store".into(),
        })
    }

    /// The latest committed manifest. (Another process may be committing to the line: a
    /// manifest listed here and pruned before it is read means a later one exists; the
    /// line is listed again.)
    pub async fn latest(&self) -> Result<Option<Manifest>> {
        let prefix = Path::from(self.root.as_str());
        let mut attempts = 0;
        let (path, bytes) = loop {
            let listed: Vec<_> = self.lake.store().list_with_delimiter(Some(&prefix)).await.map(|l| l.objects)?;
            let Some((_, last)) = listed
                .iter()
                .filter_map(|m| m.location.filename().and_then(parse_manifest_name).map(|e| (e, &m.location)))
                .max_by_key(|(e, _)| *e)
            else {
                return Ok(None);
            };
            match self.lake.get_opt(last).await? {
                Some(bytes) => break (last.to_string(), bytes),
                None if attempts < 10 => attempts += 1,
                None => return Err(Error::State { path: last.to_string().into(), reason: "pruned while read".into() }),
            }
        };
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::State { path: path.clone().into(), reason: e.to_string() })?;
        if m.version != VERSION {
            return Err(Error::State {
                path: path.into(),
                reason: format!("checkpoint version {} (this build reads {VERSION})", m.version),
            });
        }
        Ok(Some(m))
    }

    /// The commit point: writes the manifest in one atomic, create-only put (an instance that
    /// lost the group's lease cannot overwrite its successor's checkpoint).
    pub async fn commit(&self, m: &Manifest) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(m).map_err(|e| Error::Internal(e.to_string()))?;
        let path = self.manifest_path(m.epoch);
        match self.lake.put_create(&path, PutPayload::from(bytes.clone())).await {
            // A retried put whose first attempt landed: ours.
            Err(Error::ObjectStore(object_store::Error::AlreadyExists { .. }))
                if self.lake.get_opt(&path).await?.is_some_and(|b| b[..] == bytes[..]) =>
            {
                Ok(())
            }
            Err(Error::ObjectStore(object_store::Error::AlreadyExists { .. })) => Err(Error::Fenced(format!(
                "checkpoint {path} exists: another instance of group {:?} committed epoch {}",
                self.group, m.epoch
            ))),
            other => other,
        }
    }

    /// Moves the manifest's staged files into place and commits them to their Delta
    /// tables (repeatable).
    pub async fn publish(&self, m: &Manifest) -> Result<()> {
        for f in &m.files {
            self.publish_file(f).await?;
        }
        self.commit_tables(m).await?;
        self.published(m);
        Ok(())
    }

    /// Delta: adds the epoch's files (in place) to their tables, one commit per table, as
    /// version `epoch` of this line's app id (repeatable; nothing without Delta).
    pub async fn commit_tables(&self, m: &Manifest) -> Result<()> {
        let Some(delta) = &self.delta else { return Ok(()) };
        let files: Vec<NewFile> =
            m.files.iter().map(|f| NewFile { path: f.target.clone(), rows: f.rows, bytes: f.bytes }).collect();
        delta.commit(&self.app_id(), m.epoch, &files).await
    }

    /// Moves one staged file into place (repeatable).
    pub async fn publish_file(&self, f: &FileEntry) -> Result<()> {
        self.lake.publish(&f.staged, &f.target).await
    }

    /// After every file of `m` is in place: removes its empty staging directories.
    pub fn published(&self, m: &Manifest) {
        self.lake.remove_local_dirs(&self.staging_prefix(m.epoch));
    }

    /// Deletes staged files of epochs after `committed` (work a crash, or a holder that lost
    /// its lease, left unfinished; `None`: every staged file); returns how many.
    pub async fn abort_uncommitted(&self, committed: Option<u64>) -> Result<usize> {
        let prefix = Path::from(self.staging.as_str());
        let staged: Vec<_> = self.lake.store().list(Some(&prefix)).try_collect().await?;
        let mut n = 0;
        let mut epochs = BTreeSet::new();
        for meta in staged {
            let epoch = meta
                .location
                .prefix_match(&prefix)
                .and_then(|mut parts| parts.next())
                .and_then(|p| p.as_ref().parse::<u64>().ok());
            match epoch {
                Some(e) if committed.is_some_and(|c| e <= c) => continue, // published at recovery
                _ => {}
            }
            self.lake.delete(&meta.location).await?;
            epochs.extend(epoch);
            n += 1;
        }
        for e in epochs {
            self.lake.remove_local_dirs(&self.staging_prefix(e));
        }
        Ok(n)
    }

    /// Removes manifests before `m` and state blobs `m` does not reference.
    pub async fn prune(&self, m: &Manifest) -> Result<()> {
        let segments = m.open_files.iter().flat_map(|f| f.pieces.iter().map(|p| &p.blob).chain(&f.segments));
        let keep: BTreeSet<&str> = m
            .dedup_snapshot
            .iter()
            .chain(&m.dedup_deltas)
            .chain(&m.windows)
            .chain(&m.tables)
            .chain(&m.table_parts)
            .chain(&m.partials)
            .chain(&m.merger)
            .chain(segments)
            .map(String::as_str)
            .collect();
        let prefix = Path::from(self.root.as_str());
        let listed: Vec<_> = self.lake.store().list(Some(&prefix)).try_collect().await?;
        let mut dirs = BTreeSet::new();
        for meta in listed {
            let loc = meta.location.as_ref();
            let old_manifest = meta.location.filename().and_then(parse_manifest_name).is_some_and(|e| e < m.epoch);
            let unreferenced_blob =
                meta.location.filename().and_then(parse_manifest_name).is_none() && !keep.contains(loc);
            if old_manifest || unreferenced_blob {
                self.lake.delete(&meta.location).await?;
                if unreferenced_blob && let Some((dir, _)) = loc.rsplit_once('/') {
                    dirs.insert(dir.to_string());
                }
            }
        }
        for d in dirs {
            self.lake.remove_local_dirs(&d);
        }
        Ok(())
    }
}

fn parse_manifest_name(name: &str) -> Option<u64> {
    name.strip_prefix("manifest-")?.strip_suffix(".json")?.parse().ok()
}

/// The manifest entries of committed files (staged ones only).
pub fn file_entries(files: &[CommittedFile]) -> Vec<FileEntry> {
    files
        .iter()
        .filter_map(|f| {
            f.staged.as_ref().map(|s| FileEntry {
                staged: s.clone(),
                target: f.path.clone(),
                rows: f.rows,
                bytes: f.bytes,
            })
        })
        .collect()
}

/// A fresh manifest for `epoch` (files and state filled in by the caller).
pub fn manifest(cp: &Checkpoints, epoch: u64, started_ms: i64) -> Manifest {
    Manifest {
        version: VERSION,
        epoch,
        group: cp.group.clone(),
        consumer: cp.consumer.clone(),
        started_ms,
        created_ms: chrono::Utc::now().timestamp_millis(),
        files: Vec::new(),
        dedup_snapshot: None,
        dedup_deltas: Vec::new(),
        windows: None,
        open_files: Vec::new(),
        tables: None,
        table_parts: Vec::new(),
        positions: BTreeMap::new(),
        totals: Totals::default(),
        token: 0,
        lease_deadline_ms: None,
        takeover: false,
        shard: cp.shard.index,
        shards: cp.shard.count,
        partials: None,
        window_bounds: BTreeMap::new(),
        merged: BTreeMap::new(),
        merge_keep: BTreeMap::new(),
        merger: None,
    }
}

/// The takeover manifest of `latest`'s line: its state again, as the next epoch, with no
/// files of its own (the caller published `latest`'s first). Committing it (create-only)
/// before touching anything makes sure the previous holder can no longer commit: its next
/// manifest would be this epoch's.
pub fn takeover(cp: &Checkpoints, latest: &Manifest, token: u64, lease_deadline_ms: i64) -> Manifest {
    let now = chrono::Utc::now().timestamp_millis();
    Manifest {
        epoch: latest.epoch + 1,
        consumer: cp.consumer.clone(),
        started_ms: now,
        created_ms: now,
        files: Vec::new(),
        token,
        lease_deadline_ms: Some(lease_deadline_ms),
        takeover: true,
        ..latest.clone()
    }
}
