//! The read side: read-only SQL over the lake with DataFusion (`eventide query`).
//!
//! Registered tables: `events` (the archive), one table per pipeline (`<lake>/<name>/`,
//! with its `window_date` partition column) and `late_events` (partitioned by `pipeline`
//! and `window_date`). The lake's object store is registered as is, so the same query runs
//! over a local directory, S3, GCS or Azure. Only committed files are visible (staging
//! lives under `_eventide/`, which no table covers).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::context::SessionContext;
use datafusion::prelude::ParquetReadOptions;

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

impl LakeQuery {
    /// Registers the archive, the late table and the tables of `pipelines` (whose output
    /// schemas are known, so an empty table still answers with no rows).
    pub async fn open(lake: &Lake, pipelines: &[(PipelineSpec, SchemaRef)]) -> Result<LakeQuery> {
        let ctx = SessionContext::new();
        let url = url::Url::parse(LAKE_URL).map_err(|e| Error::Internal(e.to_string()))?;
        ctx.register_object_store(&url, lake.store().clone());
        let mut tables = Vec::new();
        let mut add = async |name: &str, path: &str, opts: ParquetReadOptions<'_>| {
            let location = format!("{LAKE_URL}/{path}/");
            let ok = ctx.register_parquet(name, &location, opts).await.is_ok();
            tables.push(TableInfo { name: name.to_string(), location: path.to_string(), registered: ok });
        };
        add("events", "events", ParquetReadOptions::default()).await;
        add(
            LATE_TABLE,
            LATE_TABLE,
            ParquetReadOptions::default().table_partition_cols(vec![
                ("pipeline".into(), DataType::Utf8),
                ("window_date".into(), DataType::Utf8),
            ]),
        )
        .await;
        for (spec, schema) in pipelines {
            let opts = ParquetReadOptions::default()
                .table_partition_cols(vec![("window_date".into(), DataType::Utf8)])
                .schema(schema.as_ref());
            add(&spec.name, &spec.name, opts).await;
        }
        Ok(LakeQuery { ctx, tables })
    }

    /// Runs one read-only statement.
    pub async fn sql(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let opts = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = self.ctx.sql_with_options(sql, opts).await.map_err(|e| match self.missing_table(&e) {
            Some(t) => Error::Config(format!(
                "table {t:?} has no data in the lake yet (tables: {})",
                self.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            )),
            None => query_err(e),
        })?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(query_err)?;
        Ok((schema, batches))
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
