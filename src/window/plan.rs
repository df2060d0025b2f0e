//! Plans a pipeline's SQL once with DataFusion and splits it into the pieces the window
//! operator runs incrementally (the way Arroyo splits an aggregation):
//!
//! ```text
//!  events batch ─▶ WHERE (physical filter) ─▶ GROUP BY keys + aggregate inputs
//!        ─▶ per-window GroupsAccumulators (partial state, merged per slide)
//!        ─▶ evaluate when the window closes ─▶ HAVING / SELECT projection ─▶ output row
//! ```
//! The logical plan comes from DataFusion's SQL planner and analyzer (type coercion, `*`),
//! without the optimizer, so `count(DISTINCT x)` stays one aggregate with a distinct
//! accumulator. Accepted shapes: `SELECT … FROM events [WHERE …] [GROUP BY …] [HAVING …]`.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::GroupsAccumulator;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr, create_physical_expr};

use super::spec::{FieldType, PipelineSpec, SpecProblem};
use crate::events::{Col, PIPELINE_BASE, utc_micros};

/// The `events` table's schema for a pipeline: base columns, then its declared fields.
pub fn events_schema(spec: &PipelineSpec) -> SchemaRef {
    let mut fields = PIPELINE_BASE.map(Col::field).to_vec();
    for f in &spec.fields {
        fields.push(Field::new(&f.name, field_type(f.ty), true));
    }
    Arc::new(Schema::new(fields))
}

/// Arrow type of a declared field.
pub fn field_type(t: FieldType) -> DataType {
    match t {
        FieldType::String => DataType::Utf8,
        FieldType::Double => DataType::Float64,
        FieldType::Int => DataType::Int64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => utc_micros(),
    }
}

/// One step applied to the aggregate's output (HAVING or the SELECT list).
#[derive(Debug)]
enum Post {
    Filter(Arc<dyn PhysicalExpr>),
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
}

/// One aggregate: the DataFusion expression, its input expressions and its FILTER clause.
#[derive(Debug)]
pub struct Aggregate {
    pub expr: Arc<AggregateFunctionExpr>,
    pub args: Vec<Arc<dyn PhysicalExpr>>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl Aggregate {
    /// A fresh groups accumulator (DataFusion's adapter where the function has none).
    pub fn groups_accumulator(&self) -> datafusion::error::Result<Box<dyn GroupsAccumulator>> {
        if self.expr.groups_accumulator_supported() {
            self.expr.create_groups_accumulator()
        } else {
            let e = self.expr.clone();
            Ok(Box::new(GroupsAccumulatorAdapter::new(move || e.create_accumulator())))
        }
    }
}

/// A pipeline's compiled query.
#[derive(Debug)]
pub struct Compiled {
    /// Schema of the `events` batches it reads.
    pub input: SchemaRef,
    /// WHERE predicates (ANDed).
    pub filters: Vec<Arc<dyn PhysicalExpr>>,
    /// GROUP BY expressions and their output types.
    pub group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    pub group_types: Vec<DataType>,
    pub aggregates: Vec<Aggregate>,
    /// Schema of group keys + aggregate values.
    pub aggregate_schema: SchemaRef,
    post: Vec<Post>,
    /// Output schema without the window columns.
    pub output: SchemaRef,
}

impl Compiled {
    /// The base columns of `events` the query's expressions read.
    pub fn used_base_columns(&self) -> Vec<Col> {
        let mut used = Vec::new();
        let exprs = self
            .filters
            .iter()
            .chain(&self.group_exprs)
            .chain(self.aggregates.iter().flat_map(|a| a.args.iter().chain(a.filter.iter())));
        for e in exprs {
            for c in datafusion::physical_expr::utils::collect_columns(e) {
                if let Some(col) = Col::named(c.name()).filter(|col| PIPELINE_BASE.contains(col) && !used.contains(col))
                {
                    used.push(col);
                }
            }
        }
        used
    }

    /// Applies HAVING and the SELECT list to a batch of group keys + aggregate values.
    pub fn finish(&self, batch: RecordBatch) -> datafusion::error::Result<RecordBatch> {
        self.finish_rows(batch).map(|(b, _)| b)
    }

    /// [`Compiled::finish`], and which input rows HAVING kept (`None`: all, in order).
    pub fn finish_rows(
        &self,
        batch: RecordBatch,
    ) -> datafusion::error::Result<(RecordBatch, Option<arrow::array::UInt32Array>)> {
        let mut batch = batch;
        let mut kept: Option<arrow::array::UInt32Array> = None;
        for step in &self.post {
            batch = match step {
                Post::Filter(p) => {
                    let mask = p.evaluate(&batch)?.into_array(batch.num_rows())?;
                    let mask = mask
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .ok_or_else(|| DataFusionError::Internal("HAVING is not boolean".into()))?;
                    let rows = kept.take().unwrap_or_else(|| (0..batch.num_rows() as u32).collect());
                    let rows: arrow::array::UInt32Array =
                        rows.iter().zip(mask.iter()).filter(|(_, m)| *m == Some(true)).map(|(r, _)| r).collect();
                    kept = Some(rows);
                    arrow::compute::filter_record_batch(&batch, mask)?
                }
                Post::Project(exprs, schema) => {
                    let cols = exprs
                        .iter()
                        .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(batch.num_rows())))
                        .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
                    RecordBatch::try_new(schema.clone(), cols)?
                }
            };
        }
        Ok((to_signed(batch, &self.output)?, kept))
    }
}

/// Plans `spec.sql`; a problem names the file and the SQL's line in it.
pub async fn compile(spec: &PipelineSpec) -> Result<Compiled, SpecProblem> {
    let problem = |line: Option<usize>, message: String| SpecProblem { file: spec.file.clone(), line, message };
    let input = events_schema(spec);
    let mut cfg = SessionConfig::new();
    cfg.options_mut().sql_parser.collect_spans = true;
    let ctx = SessionContext::new_with_config(cfg);
    let table = MemTable::try_new(input.clone(), vec![vec![]]).map_err(|e| problem(None, e.to_string()))?;
    ctx.register_table("events", Arc::new(table)).map_err(|e| problem(None, e.to_string()))?;
    let df_err = |e: DataFusionError| {
        let line = e
            .diagnostic()
            .and_then(|d| d.span)
            .map(|s| s.start.line as usize)
            .or_else(|| sql_line_in_message(&e.to_string()))
            .filter(|&l| l >= 1)
            .map_or(Some(spec.sql_line), |l| Some(spec.sql_line + l - 1));
        let mut msg = e.strip_backtrace().lines().next().unwrap_or_default().to_string();
        if msg.contains("No field named") || msg.contains("not found") {
            msg.push_str(&format!(
                "; `events` has the columns {} and the fields declared in `fields`",
                PIPELINE_BASE.map(Col::name).join(", ")
            ));
        }
        problem(line, msg)
    };
    let state = ctx.state();
    let plan = state.create_logical_plan(&spec.sql).await.map_err(df_err)?;
    let plan = state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {}).map_err(df_err)?;
    let shape = |m: &str| problem(Some(spec.sql_line), m.to_string());

    // Above the aggregate: projections and HAVING filters, outermost first.
    let mut upper = Vec::new();
    let mut node = &plan;
    let agg = loop {
        match node {
            LogicalPlan::Projection(p) => {
                upper.push(node);
                node = &p.input;
            }
            LogicalPlan::Filter(f) => {
                upper.push(node);
                node = &f.input;
            }
            LogicalPlan::SubqueryAlias(a) => node = &a.input,
            LogicalPlan::Aggregate(a) => break a,
            LogicalPlan::Sort(_) => {
                return Err(shape(
                    "ORDER BY is not supported in a pipeline (rows are written per window); sort when you query the table",
                ));
            }
            LogicalPlan::Limit(_) => {
                return Err(shape("LIMIT is not supported in a pipeline; limit when you query the table"));
            }
            LogicalPlan::Distinct(_) => return Err(shape("SELECT DISTINCT is not supported; use GROUP BY")),
            LogicalPlan::Join(_) => {
                return Err(shape("joins are not supported in a pipeline; it reads the one table `events`"));
            }
            LogicalPlan::Window(_) => {
                return Err(shape(
                    "SQL window functions (OVER) are not supported; the pipeline's window is set by `window`",
                ));
            }
            _ => {
                return Err(shape(
                    "a pipeline aggregates: write SELECT <keys>, <aggregates> FROM events [WHERE …] GROUP BY <keys>",
                ));
            }
        }
    };
    // Below: WHERE filters down to the scan of `events`.
    let mut filters = Vec::new();
    let mut below = agg.input.as_ref();
    loop {
        match below {
            LogicalPlan::Filter(f) => {
                filters.push(&f.predicate);
                below = &f.input;
            }
            LogicalPlan::SubqueryAlias(a) => below = &a.input,
            LogicalPlan::TableScan(t) if t.table_name.table() == "events" && t.filters.is_empty() => break,
            LogicalPlan::Projection(p) if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) => below = &p.input,
            _ => return Err(shape("the aggregate must read `events` directly (no subqueries or joins)")),
        }
    }
    let scan_schema = below.schema();
    let props = state.execution_props();
    let pctx = PhysicalPlanningContext::default();
    let phys = |e: &Expr, schema: &DFSchema| create_physical_expr(e, schema, props, &pctx).map_err(df_err);
    // WHERE filters refer to the scan; the aggregate's input schema is the same columns.
    let mut filter_exprs = Vec::new();
    for f in filters {
        filter_exprs.push(phys(f, scan_schema)?);
    }
    let agg_in = agg.input.schema();
    if agg_in.fields().len() != input.fields().len() {
        return Err(shape("the aggregate must read every column of `events` (no projection below it)"));
    }
    if agg.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
        return Err(shape("GROUPING SETS / ROLLUP / CUBE are not supported in a pipeline"));
    }
    let mut group_exprs = Vec::new();
    let mut group_types = Vec::new();
    for e in &agg.group_expr {
        let p = phys(e, agg_in)?;
        group_types.push(p.data_type(agg_in.as_arrow()).map_err(df_err)?);
        group_exprs.push(p);
    }
    let mut aggregates = Vec::new();
    for e in &agg.aggr_expr {
        let lowered =
            LoweredAggregateBuilder::new(e, agg_in, agg_in.as_arrow(), props, &pctx).build().map_err(df_err)?;
        if !lowered.order_bys.is_empty() {
            return Err(shape(
                "aggregates with ORDER BY (e.g. array_agg(x ORDER BY y)) are not supported in a pipeline",
            ));
        }
        let args = lowered.aggregate.expressions();
        aggregates.push(Aggregate { expr: lowered.aggregate, args, filter: lowered.filter });
    }
    if aggregates.is_empty() && group_exprs.is_empty() {
        return Err(shape("the query has no GROUP BY and no aggregate"));
    }
    let aggregate_schema: SchemaRef = Arc::new(agg.schema.as_arrow().clone());
    let mut post = Vec::new();
    for node in upper.into_iter().rev() {
        match node {
            LogicalPlan::Filter(f) => post.push(Post::Filter(phys(&f.predicate, f.input.schema())?)),
            LogicalPlan::Projection(p) => {
                let exprs = p.expr.iter().map(|e| phys(e, p.input.schema())).collect::<Result<Vec<_>, _>>()?;
                post.push(Post::Project(exprs, Arc::new(p.schema.as_arrow().clone())));
            }
            _ => {}
        }
    }
    let output = match post.iter().rev().find_map(|p| match p {
        Post::Project(_, s) => Some(s.clone()),
        Post::Filter(_) => None,
    }) {
        Some(s) => s,
        None => aggregate_schema.clone(),
    };
    let output = signed(&output);
    let mut seen = std::collections::HashSet::new();
    for f in output.fields() {
        if matches!(f.name().as_str(), "window_start" | "window_end") {
            return Err(shape("`window_start` and `window_end` are added to every row; do not select them"));
        }
        if !seen.insert(f.name().clone()) {
            return Err(shape(&format!("two output columns are named {:?}; give one an alias (AS …)", f.name())));
        }
    }
    Ok(Compiled { input, filters: filter_exprs, group_exprs, group_types, aggregates, aggregate_schema, post, output })
}

/// `… at Line: 3, Column: 7` in sqlparser's messages.
fn sql_line_in_message(msg: &str) -> Option<usize> {
    let rest = &msg[msg.find("Line: ")? + 6..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Output columns are signed: `approx_distinct`'s UInt64 becomes Int64 (Delta, Spark and
/// Polars' Delta reader have no unsigned integers).
fn signed(schema: &SchemaRef) -> SchemaRef {
    use arrow::datatypes::{DataType as T, Field};
    let to = |t: &T| match t {
        T::UInt8 => T::Int16,
        T::UInt16 => T::Int32,
        T::UInt32 | T::UInt64 => T::Int64,
        other => other.clone(),
    };
    let fields: Vec<Field> =
        schema.fields().iter().map(|f| f.as_ref().clone().with_data_type(to(f.data_type()))).collect();
    Arc::new(arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batch` in the signed output schema (a UInt64 beyond i64::MAX becomes NULL).
fn to_signed(batch: RecordBatch, output: &SchemaRef) -> datafusion::error::Result<RecordBatch> {
    if batch.schema().fields().iter().zip(output.fields()).all(|(a, b)| a.data_type() == b.data_type()) {
        return Ok(batch);
    }
    let cols = batch
        .columns()
        .iter()
        .zip(output.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(output.clone(), cols)?)
}
