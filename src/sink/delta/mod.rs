//! Delta Lake tables over the lake (`table_format = "delta"`): the archive, every pipeline
//! table and `late_events` get a `_delta_log/` beside their files, so Spark, Trino, DuckDB,
//! Polars and delta-rs read them as tables (schema, snapshot isolation, time travel).
//!
//! Files are written exactly as for plain Parquet (staged, then renamed into place after the
//! checkpoint's manifest); a file is part of a table only once a Delta commit adds it. After
//! publishing an epoch's files the checkpoint commits, per table, **one Delta commit** adding
//! them, carrying a `txn` action `(app id of the checkpoint line, epoch)`: a recovery that
//! publishes the same epoch again finds its version there and commits nothing (and a
//! concurrent commit of the same app id is a conflict that the retry resolves the same way),
//! so a crash at any point adds every file exactly once.
//!
//! `emit = "updates"` tables ([`Kind::ReplaceWindows`]): a commit also removes the rows of
//! every window it writes again (older revisions), rewriting the files that held them
//! (`replace.rs`), in the same commit, so a reader sees each window's latest revision only.
//!
//! Where it sits: below `checkpoint` (which calls [`DeltaLog::commit`] when it publishes),
//! beside [`super::lake`] whose store it uses; `lake_sql` reads a table's active files.

pub mod compact;
mod replace;
mod sorted;
pub mod stats;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake_core::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, StructType, Transaction};
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableError};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use tokio::sync::Mutex;

use super::lake::Lake;
pub use crate::config::TableFormat;
use crate::error::{Error, Result};

/// How a table's commits change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every file adds rows (the archive, `late_events`, `emit = "final"` tables).
    Append,
    /// `emit = "updates"`: a window's rows in a commit replace that window's earlier rows.
    ReplaceWindows,
}

/// A table of the lake: its directory, its files' schema, the partition columns that are
/// directories only (`event_date`, `window_date`, `pipeline`), and how it changes.
#[derive(Debug, Clone)]
pub struct TableDecl {
    pub root: String,
    pub schema: SchemaRef,
    pub partitions: Vec<String>,
    pub kind: Kind,
    /// Where its definition lives, for error messages (`pipelines/revenue.toml`).
    pub source: String,
}

impl TableDecl {
    /// The table's Delta schema: the files' columns, then the partition columns (dates are
    /// Delta `date`s, others strings).
    pub fn table_schema(&self) -> Result<StructType> {
        let mut fields: Vec<Field> = self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for p in self.partitions.iter().filter(|p| self.schema.index_of(p).is_err()) {
            let ty = if p.ends_with("_date") { DataType::Date32 } else { DataType::Utf8 };
            fields.push(Field::new(p, ty, true));
        }
        StructType::try_from_arrow(&Schema::new(fields)).map_err(|e| delta_err(&self.root, e))
    }
}

/// A file a commit adds: its path in the lake, rows and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// The Delta logs of the lake's declared tables.
pub struct DeltaLog {
    lake: Lake,
    decls: BTreeMap<String, TableDecl>,
    /// Loaded tables, updated incrementally before each commit.
    open: Mutex<HashMap<String, DeltaTable>>,
}

impl std::fmt::Debug for DeltaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaLog").field("tables", &self.decls.keys().collect::<Vec<_>>()).finish()
    }
}

/// Attempts of one table's commit against concurrent writers (other shards, a compaction),
/// 5 ms apart, doubling up to 320 ms.
const COMMIT_ATTEMPTS: usize = 10;

pub(crate) fn delta_err(table: &str, e: impl std::fmt::Display) -> Error {
    Error::Delta { table: table.to_string(), message: e.to_string() }
}

/// The table directory of a file path: its first segment (`events/…` → `events`).
pub fn table_root(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// The partition values of a file: its `key=value` directories of the table's partition
/// columns (the archive's `event_type=` directory is not one: the column is in the file).
pub fn path_partitions(path: &str, columns: &[String]) -> HashMap<String, Option<String>> {
    path.split('/')
        .filter_map(|seg| seg.split_once('='))
        .filter(|(k, _)| columns.iter().any(|c| c == k))
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect()
}

impl DeltaLog {
    pub fn new(lake: Lake) -> DeltaLog {
        DeltaLog { lake, decls: BTreeMap::new(), open: Mutex::new(HashMap::new()) }
    }

    /// Declares a table (before [`DeltaLog::prepare`]).
    pub fn declare(&mut self, decl: TableDecl) {
        self.decls.insert(decl.root.clone(), decl);
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The log store of the table at `root` (a prefix of the lake's store).
    pub fn log_store(lake: &Lake, root: &str) -> Result<LogStoreRef> {
        let url = url::Url::parse(&format!("memory:///{root}")).map_err(|e| delta_err(root, e))?;
        let root_store: Arc<dyn object_store::ObjectStore> = Arc::new(sorted::Sorted(lake.store().clone()));
        let prefixed = Arc::new(PrefixStore::new(root_store.clone(), Path::from(root)));
        Ok(default_logstore(prefixed, root_store, &url, &StorageConfig::default()))
    }

    /// The table at `root` as of its latest version, or `None` when it has no log yet.
    pub async fn load(lake: &Lake, root: &str) -> Result<Option<DeltaTable>> {
        // No log: not a table (and no error logged by the kernel for trying).
        let log = Path::from(root).join("_delta_log");
        if lake.store().list_with_delimiter(Some(&log)).await?.objects.is_empty() {
            return Ok(None);
        }
        let mut table = DeltaTable::new(Self::log_store(lake, root)?);
        match table.load().await {
            Ok(()) => Ok(Some(table)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(delta_err(root, e)),
        }
    }

    /// Creates every declared table that has no log yet (a concurrent creator's table is
    /// loaded instead) and checks the others' schema. Returns the tables whose schema
    /// differs from their declaration, with the message to show (the caller decides:
    /// a pipeline's table fails that pipeline).
    pub async fn prepare(&self) -> Result<Vec<(String, String)>> {
        let mut mismatched = Vec::new();
        for decl in self.decls.values() {
            let table = self.open_or_create(decl).await?;
            let want = decl.table_schema()?;
            let have = table.snapshot().map_err(|e| delta_err(&decl.root, e))?.schema();
            if have.as_ref() != &want {
                let cols =
                    |s: &StructType| s.fields().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>();
                mismatched.push((
                    decl.root.clone(),
                    format!(
                        "{}: the Delta table `{}` has the columns [{}] but this definition writes [{}]; a Delta table \
                         keeps one schema: give the changed pipeline a new `name` (a new table), or move `{}` out of \
                         the lake to start it over",
                        decl.source,
                        decl.root,
                        cols(&have).join(", "),
                        cols(&want).join(", "),
                        decl.root
                    ),
                ));
            }
            self.open.lock().await.insert(decl.root.clone(), table);
        }
        Ok(mismatched)
    }

    async fn open_or_create(&self, decl: &TableDecl) -> Result<DeltaTable> {
        for _ in 0..COMMIT_ATTEMPTS {
            if let Some(t) = Self::load(&self.lake, &decl.root).await? {
                return Ok(t);
            }
            let created = CreateBuilder::new()
                .with_log_store(Self::log_store(&self.lake, &decl.root)?)
                .with_table_name(decl.root.clone())
                .with_columns(decl.table_schema()?.fields().cloned())
                .with_partition_columns(decl.partitions.clone())
                .with_save_mode(SaveMode::Ignore)
                .await;
            match created {
                Ok(t) => return Ok(t),
                // Another writer created it first: load theirs.
                Err(e) => tracing::debug!(table = %decl.root, error = %e, "Delta table creation raced; loading it."),
            }
        }
        Err(delta_err(&decl.root, "could not create or load the table"))
    }

    /// Adds `files` to their tables: one commit per table, as version `version` of `app_id`
    /// (the checkpoint line and its epoch). Repeatable: a table that has that version of
    /// `app_id` already is left alone.
    pub async fn commit(&self, app_id: &str, version: u64, files: &[NewFile]) -> Result<()> {
        let mut by_table: BTreeMap<&str, Vec<&NewFile>> = BTreeMap::new();
        for f in files {
            by_table.entry(table_root(&f.path)).or_default().push(f);
        }
        for (root, files) in by_table {
            let decl = self.decls.get(root).ok_or_else(|| delta_err(root, "file of an undeclared table"))?;
            self.commit_table(decl, app_id, version as i64, &files).await?;
        }
        Ok(())
    }

    async fn commit_table(&self, decl: &TableDecl, app_id: &str, version: i64, files: &[&NewFile]) -> Result<()> {
        let root = decl.root.as_str();
        let mut open = self.open.lock().await;
        let mut last_err = None;
        for attempt in 0..COMMIT_ATTEMPTS {
            let table = match open.remove(root) {
                Some(mut t) => {
                    t.update_state().await.map_err(|e| delta_err(root, e))?;
                    t
                }
                None => self.open_or_create(decl).await?,
            };
            let log = table.log_store();
            let snapshot = table.snapshot().map_err(|e| delta_err(root, e))?;
            let done = snapshot.transaction_version(log.as_ref(), app_id).await.map_err(|e| delta_err(root, e))?;
            if done.is_some_and(|v| v >= version) {
                open.insert(root.to_string(), table);
                return Ok(());
            }
            let active: HashSet<String> = snapshot.log_data().iter().map(|f| f.path().into_owned()).collect();
            let mut actions = Vec::new();
            for f in files {
                let rel = relative(root, &f.path);
                if active.contains(&rel) {
                    continue; // added before (a takeover's epoch repeats no files, but be sure)
                }
                actions.push(Action::Add(self.add_action(decl, f, &rel).await?));
            }
            let mut props = CommitProperties::default().with_application_transaction(Transaction::new(app_id, version));
            if decl.kind == Kind::ReplaceWindows {
                let removes = replace::plan(&self.lake, decl, snapshot, files, version).await?;
                if !removes.is_empty() {
                    // The plan holds for this snapshot only. delta-rs's own retry would put it
                    // on top of any newer version whose removals are `dataChange = false`: a
                    // compaction that moved an old revision into a new file would keep it
                    // (its conflict checker ignores such removals). So any newer version
                    // fails the commit, and it is planned again on that version.
                    props = props.with_max_retries(0);
                }
                actions.extend(removes);
            }
            let op = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(decl.partitions.clone()),
                predicate: None,
            };
            let result = CommitBuilder::from(props).with_actions(actions).build(Some(snapshot), log.clone(), op).await;
            match result {
                Ok(_) => {
                    open.insert(root.to_string(), table);
                    return Ok(());
                }
                Err(e) => {
                    // A concurrent commit (another shard, a compaction, or a fenced holder of
                    // this line): load the table again and decide anew.
                    tracing::info!(table = root, attempt, error = %e, "Delta commit conflicted; retrying.");
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(5 << attempt.min(6))).await;
                }
            }
        }
        Err(delta_err(root, last_err.map_or("commit failed".to_string(), |e| e.to_string())))
    }

    async fn add_action(&self, decl: &TableDecl, f: &NewFile, rel: &str) -> Result<Add> {
        let stats = stats::of_file(&self.lake, &Path::from(f.path.as_str()), f.bytes, &decl.schema).await?;
        Ok(new_add(rel, path_partitions(&f.path, &decl.partitions), f.bytes, stats))
    }
}

/// The lake's Delta tables: its top-level directories with a `_delta_log/`.
pub async fn delta_tables(lake: &Lake) -> Result<Vec<String>> {
    let top = lake.store().list_with_delimiter(None).await?;
    let mut out = Vec::new();
    for dir in top.common_prefixes {
        let Some(name) = dir.filename().map(str::to_string) else { continue };
        if name.starts_with('_') {
            continue;
        }
        let log = lake.store().list_with_delimiter(Some(&dir.clone().join("_delta_log"))).await?;
        if !log.objects.is_empty() {
            out.push(name);
        }
    }
    Ok(out)
}

/// An `add` action for a file of the table (path relative to the table's root).
pub(crate) fn new_add(rel: &str, partitions: HashMap<String, Option<String>>, bytes: u64, stats: String) -> Add {
    Add {
        path: rel.to_string(),
        partition_values: partitions,
        size: bytes as i64,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats: Some(stats),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }
}

/// `path` relative to the table's root directory.
pub(crate) fn relative(root: &str, path: &str) -> String {
    path.strip_prefix(root).map(|p| p.trim_start_matches('/')).unwrap_or(path).to_string()
}
