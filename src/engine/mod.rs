//! The composition root: the only place that builds or changes the DataFusion session.
//!
//! An [`Engine`] owns a warehouse and a session configured from [`Settings`] (memory pool with
//! spilling, partitions, batch size). Everything a user can do — a SQL statement, a history, an
//! ingest — goes through it; the CLI (and later the Flight server) only talk to the engine.

mod definitions;
mod export;
mod ingest;
mod registry;
pub mod serving;
mod training;

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::optimizer::Optimizer;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use sqlparser::ast::ObjectName;

pub use definitions::{DefinitionPlan, PlannedChange};
pub use export::{
    Check, ContentHash, ExportFormat, ExportProgress, Manifest, OutputInfo, Reproduction,
    Verification, is_manifest, manifest_location, plan_from_manifest,
};
pub use ingest::{IngestFormat, IngestProgress, IngestRequest};
pub use training::{PinnedInput, TrainingPlan, ViewUse};

use crate::config::Settings;
use crate::error::{PitlakeError, Result};
use crate::frontend::{self, ParsedStatement, Statement, VersionClause};
use crate::planner::PitlakeQueryPlanner;
use crate::storage::{
    DEFAULT_SCHEMA, TableName, TableVersion, Warehouse, WarehouseCatalog, WriteMode, WriteOutcome,
    write_plan,
};

/// The catalog name the warehouse is registered under.
pub const CATALOG: &str = "pitlake";

/// What running one statement produced.
pub enum Output {
    /// Rows to show: a query, `EXPLAIN`, `DESCRIBE HISTORY` …
    Rows(SendableRecordBatchStream),
    /// A statement that changed something, with a one-line report.
    Done(String),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows(stream) => write!(f, "Rows({:?})", stream.schema()),
            Output::Done(msg) => write!(f, "Done({msg:?})"),
        }
    }
}

/// Per-statement choices made by the caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Confirms destructive statements (`DROP TABLE`).
    pub force: bool,
}

/// A column of a table, for `\d t`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    /// The column name.
    pub name: String,
    /// Its Arrow type.
    pub data_type: DataType,
    /// Whether it may hold NULL.
    pub nullable: bool,
    /// Whether the table is partitioned by it.
    pub partition: bool,
}

/// The pitlake engine: a warehouse and a DataFusion session over it. Clones share the session,
/// the warehouse and the catalog.
#[derive(Clone)]
pub struct Engine {
    ctx: SessionContext,
    warehouse: Arc<Warehouse>,
    catalog: Arc<WarehouseCatalog>,
    settings: Settings,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("warehouse", &self.warehouse.location().display())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Engine {
    /// Builds an engine over the warehouse in `settings`. Nothing is read yet.
    pub fn new(settings: Settings) -> Result<Self> {
        settings.validate()?;
        let warehouse = Arc::new(Warehouse::connect(settings.warehouse.clone())?);
        let catalog = Arc::new(WarehouseCatalog::new(warehouse.clone()));

        let config = SessionConfig::new()
            .with_target_partitions(settings.target_partitions)
            .with_batch_size(settings.batch_size)
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG, DEFAULT_SCHEMA)
            // deltalake's own sessions set these: hash-join IN-list pushdown can fail on
            // dictionary-encoded join keys, which Delta partition columns often are.
            .set_usize("datafusion.optimizer.hash_join_inlist_pushdown_max_size", 0)
            .set_usize(
                "datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values",
                0,
            )
            // Spark writes timestamps as INT96; read as nanoseconds they overflow past 2262
            // (9999-12-31 would come back as 1816). Delta timestamps are microseconds.
            .set_str("datafusion.execution.parquet.coerce_int96", "us");

        let disk = match &settings.spill_dir {
            Some(dir) => DiskManagerBuilder::default()
                .with_mode(DiskManagerMode::Directories(vec![dir.clone()])),
            None => DiskManagerBuilder::default().with_mode(DiskManagerMode::OsTmpDirectory),
        };
        let mut runtime = RuntimeEnvBuilder::new().with_disk_manager_builder(disk);
        if let Some(limit) = settings.memory_limit {
            // A fair pool gives every spilling operator an equal share, so one large sort cannot
            // starve the others into failing.
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
        }
        let runtime = runtime.build_arc()?;

        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(PitlakeQueryPlanner))
            .with_analyzer_rule(Arc::new(frontend::AsOfRule))
            // Before DataFusion's own rules, so that filter pushdown hands the range to the scans.
            .with_optimizer_rules(
                std::iter::once(Arc::new(crate::asof::AsOfRangePruning) as _)
                    .chain(Optimizer::new().rules)
                    .collect(),
            )
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_udf(frontend::marker_udf());
        ctx.register_catalog(CATALOG, catalog.clone());
        Ok(Self {
            ctx,
            warehouse,
            catalog,
            settings,
        })
    }

    /// The settings this engine runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The same engine acting for `user`: registry changes and exports record them as author
    /// (a server runs each client's statements this way).
    pub fn for_user(&self, user: &str) -> Engine {
        let mut engine = self.clone();
        engine.settings.user = user.to_string();
        engine
    }

    /// The warehouse.
    pub fn warehouse(&self) -> &Arc<Warehouse> {
        &self.warehouse
    }

    /// A snapshot of the session state (for planning outside a statement).
    pub fn state(&self) -> SessionState {
        self.ctx.state()
    }

    /// Parses a script into statements.
    pub fn parse(&self, sql: &str) -> Result<Vec<ParsedStatement>> {
        frontend::parse_sql(sql)
    }

    /// Runs every statement of a script in order, collecting all rows. For scripts whose
    /// results are small (tests, the demo); use [`Engine::run`] to stream.
    pub async fn run_script(&self, sql: &str, options: RunOptions) -> Result<Vec<Output>> {
        let mut outputs = Vec::new();
        for statement in self.parse(sql)? {
            outputs.push(self.run(statement, options).await?);
        }
        Ok(outputs)
    }

    /// Runs exactly one statement.
    pub async fn sql(&self, sql: &str) -> Result<Output> {
        let mut statements = self.parse(sql)?;
        match (statements.pop(), statements.is_empty()) {
            (Some(statement), true) => self.run(statement, RunOptions::default()).await,
            (None, _) => Err(PitlakeError::Syntax("no statement given".into())),
            (Some(_), false) => Err(PitlakeError::Plan(
                "expected one statement, found several; run them one at a time".into(),
            )),
        }
    }

    /// Runs one statement and collects its rows (empty for statements that return none).
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        match self.sql(sql).await? {
            Output::Rows(stream) => {
                use futures::TryStreamExt;
                Ok(stream.try_collect().await?)
            }
            Output::Done(_) => Ok(Vec::new()),
        }
    }

    /// Runs one parsed statement.
    pub async fn run(&self, statement: ParsedStatement, options: RunOptions) -> Result<Output> {
        match statement.statement {
            Statement::DescribeHistory { table, limit } => {
                let name = self.table_name(&table)?;
                self.history(&name, limit).await.map(Output::Rows)
            }
            Statement::Sql(statement) => self.run_sql(*statement, options).await,
            Statement::Dsl(dsl) => {
                use crate::frontend::dsl::DslStatement;
                match *dsl {
                    dsl @ (DslStatement::TrainingSet(_) | DslStatement::Export { .. }) => {
                        self.run_training(dsl, &statement.text).await
                    }
                    dsl => self.run_registry(dsl, &statement.text).await,
                }
            }
        }
    }

    async fn run_sql(&self, mut statement: DFStatement, options: RunOptions) -> Result<Output> {
        let state = self.ctx.state();
        self.resolve_time_travel(&mut statement, &state).await?;
        let normalize = state
            .config()
            .options()
            .sql_parser
            .enable_ident_normalization;
        frontend::rewrite_asof(&mut statement, normalize)?;
        if self.touches_information_schema(&state, &statement) {
            self.catalog.refresh().await?;
        }
        let plan = match state.statement_to_plan(statement).await {
            Ok(plan) => plan,
            Err(err) => return Err(self.explain_plan_error(err).await),
        };
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                let name = self.reference_to_name(&create.name)?;
                let mode = match (create.or_replace, create.if_not_exists) {
                    (true, _) => WriteMode::CreateOrReplace,
                    (false, true) => WriteMode::CreateIfNotExists,
                    (false, false) => WriteMode::Create,
                };
                let input = create.input.as_ref().clone();
                let outcome = self.write(&state, &name, input, mode, &[]).await?;
                Ok(Output::Done(outcome.message()))
            }
            LogicalPlan::Ddl(DdlStatement::DropTable(drop)) => {
                let name = self.reference_to_name(&drop.name)?;
                if !self.warehouse.table_exists(&name).await? {
                    if drop.if_exists {
                        return Ok(Output::Done(format!("table `{name}` does not exist")));
                    }
                    return Err(self.warehouse.not_found(&name).await);
                }
                if !options.force {
                    let versions = self
                        .warehouse
                        .log_listing(&name)
                        .await?
                        .latest()
                        .map(|v| format!(" and its {} version(s)", v + 1))
                        .unwrap_or_default();
                    return Err(PitlakeError::ConfirmationRequired {
                        what: format!("DROP TABLE `{name}` deletes all its data{versions}"),
                    });
                }
                let objects = self.warehouse.drop_table(&name).await?;
                Ok(Output::Done(format!(
                    "dropped table `{name}` ({objects} objects deleted)"
                )))
            }
            LogicalPlan::Ddl(other) => Err(PitlakeError::Unsupported(format!(
                "{}: pitlake tables are Delta tables in the warehouse; create them with CREATE \
                 TABLE … AS SELECT, CREATE TABLE t (columns), or `pitlake ingest`",
                other.name()
            ))),
            LogicalPlan::Dml(DmlStatement {
                table_name,
                op: WriteOp::Insert(insert),
                input,
                ..
            }) => {
                let name = self.reference_to_name(&table_name)?;
                let mode = match insert {
                    InsertOp::Append => WriteMode::Append,
                    InsertOp::Overwrite => WriteMode::Overwrite,
                    InsertOp::Replace => {
                        return Err(PitlakeError::Unsupported(
                            "REPLACE INTO; use INSERT INTO or INSERT OVERWRITE".into(),
                        ));
                    }
                };
                let outcome = self
                    .write(&state, &name, input.as_ref().clone(), mode, &[])
                    .await?;
                Ok(Output::Done(outcome.message()))
            }
            LogicalPlan::Dml(dml) => Err(PitlakeError::Unsupported(format!(
                "{} on `{}`: feature tables are append-only here; write a corrected table with \
                 CREATE OR REPLACE TABLE … AS SELECT (older versions stay readable)",
                dml.op, dml.table_name
            ))),
            LogicalPlan::Statement(_) => {
                // SET and friends change this engine's session.
                let df = self.ctx.execute_logical_plan(plan).await?;
                df.collect().await?;
                Ok(Output::Done("ok".into()))
            }
            plan => {
                let df = DataFrame::new(state, plan);
                Ok(Output::Rows(df.execute_stream().await?))
            }
        }
    }

    /// The optimized logical plan of one query (as-of joins and time travel included).
    pub async fn logical_plan(&self, sql: &str) -> Result<LogicalPlan> {
        let mut statements = self.parse(sql)?;
        let (Some(statement), true) = (statements.pop(), statements.is_empty()) else {
            return Err(PitlakeError::Plan("expected exactly one statement".into()));
        };
        let Statement::Sql(mut statement) = statement.statement else {
            return Err(PitlakeError::Plan(
                "only queries have a logical plan".into(),
            ));
        };
        let state = self.ctx.state();
        self.resolve_time_travel(&mut statement, &state).await?;
        let normalize = state
            .config()
            .options()
            .sql_parser
            .enable_ident_normalization;
        frontend::rewrite_asof(&mut statement, normalize)?;
        let plan = match state.statement_to_plan(*statement).await {
            Ok(plan) => plan,
            Err(err) => return Err(self.explain_plan_error(err).await),
        };
        Ok(state.optimize(&plan)?)
    }

    /// Runs a logical plan (for example one decoded with [`Engine::logical_codec`]).
    pub async fn execute_plan(&self, plan: LogicalPlan) -> Result<SendableRecordBatchStream> {
        let df = DataFrame::new(self.ctx.state(), plan);
        Ok(df.execute_stream().await?)
    }

    /// The codec that serializes this engine's logical plans (`datafusion-proto`): as-of joins
    /// and Delta table scans.
    pub fn logical_codec(&self) -> crate::asof::AsOfLogicalCodec {
        crate::asof::AsOfLogicalCodec::new(Arc::new(
            deltalake::delta_datafusion::DeltaLogicalCodec {},
        ))
    }

    /// The codec that serializes physical plans with as-of joins (`datafusion-proto`).
    /// deltalake 1.1 has no codec for its scan operator yet, so a physical plan that reads
    /// Delta tables does not serialize; plans over other sources do.
    pub fn physical_codec(&self) -> crate::asof::AsOfPhysicalCodec {
        crate::asof::AsOfPhysicalCodec::new(Arc::new(
            datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec {},
        ))
    }

    /// Writes a plan's rows into a table as one commit.
    pub async fn write(
        &self,
        state: &SessionState,
        name: &TableName,
        plan: LogicalPlan,
        mode: WriteMode,
        partition_by: &[String],
    ) -> Result<WriteOutcome> {
        if matches!(
            mode,
            WriteMode::Create | WriteMode::CreateOrReplace | WriteMode::CreateIfNotExists
        ) {
            self.warehouse.ensure_writable()?;
        }
        write_plan(&self.warehouse, state, name, plan, mode, partition_by).await
    }

    /// Evaluates `TIMESTAMP AS OF` expressions and rewrites versioned references.
    async fn resolve_time_travel(
        &self,
        statement: &mut DFStatement,
        state: &SessionState,
    ) -> Result<()> {
        let clauses = frontend::collect_versions(statement)?;
        if clauses.is_empty() {
            return Ok(());
        }
        let mut resolved = Vec::with_capacity(clauses.len());
        for clause in clauses {
            resolved.push(match clause {
                VersionClause::Version(v) => TableVersion::Version(v),
                VersionClause::Timestamp(expr) => {
                    TableVersion::Timestamp(self.evaluate_instant(&expr).await?)
                }
            });
        }
        let normalize = state
            .config()
            .options()
            .sql_parser
            .enable_ident_normalization;
        frontend::apply_versions(statement, &resolved, normalize)
    }

    /// Evaluates a constant SQL expression to an instant (milliseconds since the epoch, UTC).
    async fn evaluate_instant(&self, expr: &sqlparser::ast::Expr) -> Result<i64> {
        let query = format!("SELECT CAST(({expr}) AS TIMESTAMP(3) WITH TIME ZONE) AS t");
        let fail = |reason: String| {
            PitlakeError::Plan(format!(
                "TIMESTAMP AS OF {expr}: {reason}; write an instant such as \
                 '2026-01-01T00:00:00Z' or now() - INTERVAL '1 day'"
            ))
        };
        let df = self
            .ctx
            .sql(&query)
            .await
            .map_err(|e| fail(PitlakeError::from_datafusion(e).to_string()))?;
        let batches = df
            .collect()
            .await
            .map_err(|e| fail(PitlakeError::from_datafusion(e).to_string()))?;
        let value = batches.iter().find(|b| b.num_rows() > 0).and_then(|b| {
            let column = arrow::compute::cast(
                b.column(0),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )
            .ok()?;
            let column = column
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()?
                .clone();
            (!column.is_null(0)).then(|| column.value(0))
        });
        value.ok_or_else(|| fail("it is NULL".into()))
    }

    fn touches_information_schema(&self, state: &SessionState, statement: &DFStatement) -> bool {
        state
            .resolve_table_references(statement)
            .map(|refs| {
                refs.iter()
                    .any(|r| r.schema() == Some("information_schema"))
            })
            .unwrap_or(false)
    }

    /// Turns DataFusion's terse "table not found" into pitlake's error listing what exists.
    async fn explain_plan_error(&self, err: datafusion::error::DataFusionError) -> PitlakeError {
        let err = PitlakeError::from_datafusion(err);
        if let PitlakeError::Plan(msg) = &err
            && let Some(rest) = msg.strip_prefix("table '")
            && let Some(name) = rest.strip_suffix("' not found")
        {
            let reference = TableReference::parse_str(name);
            if let Ok(table) = self.reference_to_name(&reference) {
                let base = crate::storage::decode_versioned_name(&table.table)
                    .map(|(b, _)| b.to_string())
                    .unwrap_or(table.table.clone());
                return self
                    .warehouse
                    .not_found(&TableName::new(table.schema.as_deref(), base))
                    .await;
            }
        }
        err
    }

    /// Converts a DataFusion table reference into a warehouse table name.
    fn reference_to_name(&self, reference: &TableReference) -> Result<TableName> {
        if let Some(catalog) = reference.catalog()
            && catalog != CATALOG
        {
            return Err(PitlakeError::Plan(format!(
                "catalog `{catalog}` does not exist; the warehouse is catalog `{CATALOG}`"
            )));
        }
        let name = TableName::new(reference.schema(), reference.table());
        Ok(name)
    }

    /// Converts a SQL object name into a warehouse table name.
    pub fn table_name(&self, name: &ObjectName) -> Result<TableName> {
        let normalize = self
            .ctx
            .state()
            .config()
            .options()
            .sql_parser
            .enable_ident_normalization;
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|part| match part.as_ident() {
                Some(ident) if ident.quote_style.is_none() && normalize => {
                    Ok(ident.value.to_lowercase())
                }
                Some(ident) => Ok(ident.value.clone()),
                None => Err(PitlakeError::Plan(format!("`{name}` is not a table name"))),
            })
            .collect::<Result<_>>()?;
        let reference = match parts.as_slice() {
            [table] => TableReference::bare(table.as_str()),
            [schema, table] => TableReference::partial(schema.as_str(), table.as_str()),
            [catalog, schema, table] => {
                TableReference::full(catalog.as_str(), schema.as_str(), table.as_str())
            }
            _ => return Err(PitlakeError::Plan(format!("`{name}` is not a table name"))),
        };
        self.reference_to_name(&reference)
    }

    /// Every table in the warehouse.
    pub async fn list_tables(&self) -> Result<Vec<TableName>> {
        self.catalog.refresh().await
    }

    /// The columns of a table's latest version.
    pub async fn describe_table(&self, name: &TableName) -> Result<Vec<ColumnInfo>> {
        let table = self.warehouse.open(name, TableVersion::Latest).await?;
        let snapshot = table.snapshot()?;
        let partitions = snapshot.metadata().partition_columns().to_vec();
        let schema = snapshot.snapshot().arrow_schema();
        Ok(schema
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                data_type: f.data_type().clone(),
                nullable: f.is_nullable(),
                partition: partitions.contains(f.name()),
            })
            .collect())
    }

    /// A table's commits, newest first, as rows (`DESCRIBE HISTORY`).
    pub async fn history(
        &self,
        name: &TableName,
        limit: Option<usize>,
    ) -> Result<SendableRecordBatchStream> {
        if !self.warehouse.table_exists(name).await? {
            return Err(self.warehouse.not_found(name).await);
        }
        let listing = self.warehouse.log_listing(name).await?;
        let commits = listing
            .history(self.warehouse.store().as_ref(), limit)
            .await?;
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("version", DataType::Int64, false),
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("operation", DataType::Utf8, true),
            Field::new("parameters", DataType::Utf8, true),
            Field::new("rows_added", DataType::Int64, true),
            Field::new("files_added", DataType::Int64, false),
            Field::new("files_removed", DataType::Int64, false),
            Field::new("engine", DataType::Utf8, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                commits.iter().map(|c| c.version),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(commits.iter().map(|c| c.timestamp_ms))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter(
                commits.iter().map(|c| c.operation.clone()),
            )),
            Arc::new(StringArray::from_iter(
                commits.iter().map(|c| c.parameters.clone()),
            )),
            Arc::new(Int64Array::from_iter(commits.iter().map(|c| c.rows_added))),
            Arc::new(Int64Array::from_iter_values(
                commits.iter().map(|c| c.files_added),
            )),
            Arc::new(Int64Array::from_iter_values(
                commits.iter().map(|c| c.files_removed),
            )),
            Arc::new(StringArray::from_iter(
                commits.iter().map(|c| c.engine.clone()),
            )),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let stream = futures::stream::iter(vec![Ok(batch)]);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
