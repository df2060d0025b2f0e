//! The read side: read-only SQL over the lake with DataFusion (`eventide query`).
//!
//! Registered tables: `events` (the archive, with its `event_date` partition column), one
//! table per pipeline (`<lake>/<name>/`,
//! with its `window_date` partition column) and `late_events` (partitioned by `pipeline`
//! and `window_date`). The lake's object store is registered as is, so the same query runs
//! over a local directory, S3, GCS or Azure. Only committed files are visible (staging
//! lives under `_eventide/`, which no table covers). A table with a `_delta_log/` is read
//! as Delta: each query sees its latest version's files only (`delta`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::execution::context::SessionContext;
use datafusion::prelude::ParquetReadOptions;

mod delta;
mod view;

use crate::error::{Error, Result};
use crate::sink::lake::Lake;
use crate::window::{LATE_TABLE, PipelineSpec};

/// URL under which the lake's store is registered with DataFusion.
const LAKE_URL: &str = "eventide://lake";

/// What is registered: table name and whether it has data yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    pub location: String,
    pub registered: bool,
}

/// A DataFusion session over the lake's tables.
pub struct LakeQuery {
    ctx: SessionContext,
    pub tables: Vec<TableInfo>,
}

fn query_err(e: datafusion::error::DataFusionError) -> Error {
    Error::Query { pipeline: "query".into(), message: e.strip_backtrace() }
}

/// A query runtime that lists a table's files at every scan. DataFusion caches listings
/// without expiry by default, and a `LakeQuery` kept open (the aggregates API's) would never
/// see the files committed after its first scan.
fn runtime(
    builder: datafusion::execution::runtime_env::RuntimeEnvBuilder,
) -> Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>> {
    let caches =
        datafusion::execution::cache::cache_manager::CacheManagerConfig::default().with_list_files_cache_limit(0);
    builder.with_cache_manager(caches).build_arc().map_err(query_err)
}

impl LakeQuery {
    /// Registers the archive, the late table and the tables of `pipelines` (whose output
    /// schemas are known, so an empty table still answers with no rows).
    pub async fn open(lake: &Lake, pipelines: &[(PipelineSpec, SchemaRef)]) -> Result<LakeQuery> {
        let runtime = runtime(datafusion::execution::runtime_env::RuntimeEnvBuilder::new())?;
        LakeQuery::open_in(SessionContext::new_with_config_rt(Default::default(), runtime), lake, pipelines).await
    }

    /// [`LakeQuery::open`] whose queries hold at most `memory_bytes` (a sort beyond it spills
    /// to the OS temp directory).
    pub async fn open_bounded(
        lake: &Lake,
        pipelines: &[(PipelineSpec, SchemaRef)],
        memory_bytes: usize,
    ) -> Result<LakeQuery> {
        // Fair shares for the spilling sorters, and memory set aside for merging their spill
        // files (with the greedy pool and the default 10 MB reservation, the merge of a 2M-event
        // archive sort could fail for want of memory instead of spilling).
        let pool = datafusion::execution::memory_pool::FairSpillPool::new(memory_bytes);
        let runtime =
            runtime(datafusion::execution::runtime_env::RuntimeEnvBuilder::new().with_memory_pool(Arc::new(pool)))?;
        let config = datafusion::prelude::SessionConfig::new().with_sort_spill_reservation_bytes(memory_bytes / 8);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        LakeQuery::open_in(ctx, lake, pipelines).await
    }

    async fn open_in(ctx: SessionContext, lake: &Lake, pipelines: &[(PipelineSpec, SchemaRef)]) -> Result<LakeQuery> {
        let url = url::Url::parse(LAKE_URL).map_err(|e| Error::Internal(e.to_string()))?;
        ctx.register_object_store(&url, lake.store().clone());
        let mut tables = Vec::new();
        let mut add = async |name: &str, path: &str, opts: ParquetReadOptions<'_>, schema: Option<&SchemaRef>| {
            let ok = match delta::load(lake, path).await {
                // A Delta table: each scan reads its latest version's files.
                Some(table) => {
                    let id = tables.len();
                    let options = opts.to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
                    match delta::DeltaProvider::open(&ctx, lake, path, table, id, options, schema.cloned()).await {
                        Ok(Some(p)) => ctx.register_table(name, Arc::new(p)).is_ok(),
                        Ok(None) => false,
                        Err(e) => {
                            tracing::warn!(table = name, error = %e, "Cannot read the Delta table.");
                            false
                        }
                    }
                }
                None => {
                    let opts = match schema {
                        Some(s) => opts.schema(s.as_ref()),
                        None => opts,
                    };
                    let location = format!("{LAKE_URL}/{path}/");
                    ctx.register_parquet(name, &location, opts).await.is_ok()
                }
            };
            tables.push(TableInfo { name: name.to_string(), location: path.to_string(), registered: ok });
        };
        // The archive's `event_date=` directories as a column, so a date filter skips them.
        let by_date = ParquetReadOptions::default().table_partition_cols(vec![("event_date".into(), DataType::Utf8)]);
        add("events", "events", by_date, None).await;
        add(
            LATE_TABLE,
            LATE_TABLE,
            ParquetReadOptions::default().table_partition_cols(vec![
                ("pipeline".into(), DataType::Utf8),
                ("window_date".into(), DataType::Utf8),
            ]),
            None,
        )
        .await;
        for (spec, schema) in pipelines {
            let opts = ParquetReadOptions::default().table_partition_cols(vec![("window_date".into(), DataType::Utf8)]);
            add(&spec.name, &spec.name, opts, Some(schema)).await;
        }
        Ok(LakeQuery { ctx, tables })
    }

    /// Runs one read-only statement.
    pub async fn sql(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let df = self.plan(sql).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(query_err)?;
        Ok((schema, batches))
    }

    /// Runs one read-only statement, its batches as they come (for results too large to
    /// collect).
    pub async fn stream(&self, sql: &str) -> Result<datafusion::execution::SendableRecordBatchStream> {
        self.plan(sql).await?.execute_stream().await.map_err(query_err)
    }

    async fn plan(&self, sql: &str) -> Result<datafusion::dataframe::DataFrame> {
        let opts = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        self.ctx.sql_with_options(sql, opts).await.map_err(|e| match self.missing_table(&e) {
            Some(t) => Error::Config(format!(
                "table {t:?} has no data in the lake yet (tables: {})",
                self.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            )),
            None => query_err(e),
        })
    }

    fn missing_table(&self, e: &datafusion::error::DataFusionError) -> Option<String> {
        let msg = e.to_string();
        self.tables
            .iter()
            .filter(|t| !t.registered)
            .find(|t| {
                msg.contains(&format!("table '{}'", t.name)) || msg.contains(&format!("table '{}' not found", t.name))
            })
            .map(|t| t.name.clone())
    }
}
