//! A Delta table as a DataFusion table: each scan reads the table's latest version (the log
//! brought up to date incrementally) and runs DataFusion's Parquet listing table over
//! exactly that version's files ([`super::view::SnapshotView`]), so a query sees one
//! version whole: never a file a compaction replaced, never half of a commit.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use deltalake_core::DeltaTable;
use object_store::ObjectMeta;
use object_store::path::Path;
use tokio::sync::Mutex;

use super::view::SnapshotView;
use crate::sink::delta::DeltaLog;
use crate::sink::lake::Lake;

/// Table versions whose views stay registered (a query planned on one may still run).
const KEEP_VIEWS: usize = 8;

/// One Delta table of the lake.
#[derive(Debug)]
pub struct DeltaProvider {
    lake: Lake,
    root: String,
    /// Distinguishes this table's view URLs from other tables'.
    id: usize,
    options: ListingOptions,
    /// The files' schema (the partition columns are added by the listing table).
    file_schema: SchemaRef,
    /// A listing table with this table's options: its schema and filter pushdown answers.
    template: ListingTable,
    state: Mutex<(DeltaTable, VecDeque<url::Url>)>,
}

fn df_err(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::External(e.to_string().into())
}

/// The files of the table's current version, by their paths in the lake.
fn files(root: &str, table: &DeltaTable) -> DfResult<Vec<ObjectMeta>> {
    let snapshot = table.snapshot().map_err(df_err)?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|f| ObjectMeta {
            location: Path::from(format!("{root}/{}", f.path())),
            last_modified: chrono::DateTime::from_timestamp_millis(f.modification_time()).unwrap_or_default(),
            size: f.size().max(0) as u64,
            e_tag: None,
            version: None,
        })
        .collect())
}

impl DeltaProvider {
    /// The provider of `root`, a loaded table; `schema`: the files' schema, or `None` to
    /// infer it from the current version's files as a plain table would (`None` back when
    /// it has no file yet).
    pub async fn open(
        ctx: &datafusion::execution::context::SessionContext,
        lake: &Lake,
        root: &str,
        table: DeltaTable,
        id: usize,
        options: ListingOptions,
        schema: Option<SchemaRef>,
    ) -> DfResult<Option<DeltaProvider>> {
        let (url, view) = Self::view_of(lake, root, id, &table)?;
        ctx.runtime_env().register_object_store(&url, view);
        let table_url = ListingTableUrl::parse(format!("{url}{root}/"))?;
        let file_schema = match schema {
            Some(s) => s,
            None => {
                if files(root, &table)?.is_empty() {
                    return Ok(None);
                }
                options.infer_schema(&ctx.state(), &table_url).await?
            }
        };
        let template = listing(&table_url, &options, &file_schema)?;
        Ok(Some(DeltaProvider {
            lake: lake.clone(),
            root: root.to_string(),
            id,
            options,
            file_schema,
            template,
            state: Mutex::new((table, VecDeque::from([url]))),
        }))
    }

    fn view_of(lake: &Lake, root: &str, id: usize, table: &DeltaTable) -> DfResult<(url::Url, Arc<SnapshotView>)> {
        let version = table.version().map_or_else(|| "none".to_string(), |v| v.to_string());
        let url = url::Url::parse(&format!("eventide-delta://t{id}v{version}/")).map_err(df_err)?;
        Ok((url, Arc::new(SnapshotView::new(lake.store().clone(), files(root, table)?))))
    }
}

fn listing(url: &ListingTableUrl, options: &ListingOptions, schema: &SchemaRef) -> DfResult<ListingTable> {
    let config = ListingTableConfig::new(url.clone()).with_listing_options(options.clone()).with_schema(schema.clone());
    ListingTable::try_new(config)
}

#[async_trait]
impl TableProvider for DeltaProvider {
    fn schema(&self) -> SchemaRef {
        self.template.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.template.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let url = {
            let mut guard = self.state.lock().await;
            let (table, urls) = &mut *guard;
            table.update_state().await.map_err(df_err)?;
            let (url, view) = Self::view_of(&self.lake, &self.root, self.id, table)?;
            if urls.back() != Some(&url) {
                state.runtime_env().register_object_store(&url, view);
                urls.push_back(url.clone());
                while urls.len() > KEEP_VIEWS {
                    if let Some(old) = urls.pop_front() {
                        let _ = state.runtime_env().deregister_object_store(&old);
                    }
                }
            }
            url
        };
        let table_url = ListingTableUrl::parse(format!("{url}{}/", self.root))?;
        listing(&table_url, &self.options, &self.file_schema)?.scan(state, projection, filters, limit).await
    }
}

/// Whether `root` is a Delta table, loaded.
pub async fn load(lake: &Lake, root: &str) -> Option<DeltaTable> {
    DeltaLog::load(lake, root).await.ok().flatten()
}
