//! The composition root: the only place that builds or changes the DataFusion session.
//!
//! An [`Engine`] owns a warehouse and a session configured from [`Settings`] (memory pool with
//! spilling, partitions, batch size). Everything a user can do — a SQL statement, a DSL
//! statement, a history, an ingest, an export — goes through it, and every SQL statement is
//! planned by one pipeline, [`Engine::plan_sql`]. The CLI and the Flight server talk to the
//! engine; a server gives it each caller's [`planning::Visibility`], so answers and errors name
//! only what that caller may see.

mod cluster;
mod definitions;
mod dsl;
mod export;
mod guards;
mod ingest;
pub mod planning;
pub mod session;
mod training;

use std::collections::BTreeSet;
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

pub use cluster::{
    cluster_codecs, cluster_config, cluster_runtime, cluster_session_state, prune_cluster_files,
};
pub use definitions::{DefinitionPlan, PlannedChange};
pub use export::{
    Check, ContentHash, ExportFormat, ExportProgress, ExportWrite, ExportWriteExec, Manifest,
    OutputInfo, PartReport, Reproduction, Verification, is_manifest, manifest_location,
};
pub use ingest::{IngestFormat, IngestProgress, IngestRequest};
pub use training::{PinnedInput, TrainingPlan, ViewUse};

// The engine's API speaks of these; callers above it (the CLI, the server) name them here.
pub use crate::frontend::dsl::TrainingSetSql;
pub use crate::frontend::split_statements;
pub(crate) use crate::storage::chosen_properties;
pub use crate::storage::{
    ParquetOut, Replacement, TableName, WriteMode, WriteOutcome, format_millis,
};

use crate::config::Settings;
use crate::error::{PitlakeError, Result};
use crate::frontend::{self, ParsedStatement, Statement, VersionClause};
use crate::planner::PitlakeQueryPlanner;
use crate::storage::{DEFAULT_SCHEMA, TableVersion, Warehouse, WarehouseCatalog, write_plan};

/// What the as-of join's pruning and codecs learn of warehouse tables: ranges from the Delta
/// log's statistics ([`crate::storage::WarehouseTable`]), injected into `asof`, which knows no
/// storage.
#[derive(Debug)]
struct WarehouseFacts {
    /// Warehouse tables travel as themselves, for a codec that pins them
    /// ([`crate::storage::PinnedTablesCodec`]), rather than as deltalake's provider.
    pinned: bool,
}

impl crate::asof::TableFacts for WarehouseFacts {
    fn exact_ranges(&self, data_type: &DataType) -> bool {
        crate::storage::bounded_type(data_type)
    }

    fn column_range(
        &self,
        provider: &Arc<dyn datafusion::catalog::TableProvider>,
        column: &str,
    ) -> Option<crate::asof::ColumnRange> {
        crate::storage::as_warehouse_table(provider)?.column_range(column)
    }

    fn serialized(
        &self,
        provider: &Arc<dyn datafusion::catalog::TableProvider>,
    ) -> Option<Arc<dyn datafusion::catalog::TableProvider>> {
        if self.pinned {
            return None;
        }
        crate::storage::as_warehouse_table(provider).map(|table| table.inner().clone())
    }
}

/// pitlake's settings over `config`, wherever a session plans pitlake's plans.
fn pitlake_config(config: SessionConfig) -> SessionConfig {
    config
        // deltalake's own sessions set these: hash-join IN-list pushdown can fail on
        // dictionary-encoded join keys, which Delta partition columns often are.
        .set_usize("datafusion.optimizer.hash_join_inlist_pushdown_max_size", 0)
        .set_usize(
            "datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values",
            0,
        )
        // Spark writes timestamps as INT96; read as nanoseconds they overflow past 2262
        // (9999-12-31 would come back as 1816). Delta timestamps are microseconds.
        .set_str("datafusion.execution.parquet.coerce_int96", "us")
        .with_option_extension(crate::planner::PitlakeOptions::default())
}

/// The functions pitlake adds to or replaces in DataFusion's: the as-of markers and the capped
/// functions (`guards`). Every session that plans or runs pitlake's plans has them: the
/// engine's, a cluster scheduler's and its executors'. Made once.
pub fn pitlake_functions() -> Vec<Arc<datafusion::logical_expr::ScalarUDF>> {
    static FUNCTIONS: std::sync::LazyLock<Vec<Arc<datafusion::logical_expr::ScalarUDF>>> =
        std::sync::LazyLock::new(|| {
            let builtins = SessionContext::new();
            [frontend::marker_udf(), frontend::window_marker_udf()]
                .into_iter()
                .chain(guards::capped_functions(&builtins))
                .map(Arc::new)
                .collect()
        });
    FUNCTIONS.clone()
}

/// A table a statement may name: a valid warehouse name, and not in pitlake's own schema. The
/// registry's table (`_pitlake.registry`) is reachable only through the registry statements,
/// so no SQL statement can read its history, write it or drop it.
fn user_table(name: TableName) -> Result<TableName> {
    if name
        .schema
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("_pitlake"))
    {
        return Err(PitlakeError::Plan(format!(
            "`{name}` is pitlake's own: the feature registry is read and changed only through \
             the registry statements (SHOW/DESCRIBE/CREATE/DROP FEATURE VIEW …)"
        )));
    }
    name.validate()?;
    Ok(name)
}

/// A session with no tables, for what pitlake evaluates or plans from a caller's text while
/// planning: whatever the text says, it can read nothing.
static CONSTANTS: std::sync::LazyLock<SessionContext> =
    std::sync::LazyLock::new(SessionContext::new);

/// Runs a query over constants (no tables: the session has none) and collects its rows. For
/// the expressions pitlake evaluates while planning: time-travel bounds, TTLs.
pub(crate) async fn constant_batches(sql: &str) -> Result<Vec<RecordBatch>> {
    let df = CONSTANTS
        .sql(sql)
        .await
        .map_err(PitlakeError::from_datafusion)?;
    df.collect().await.map_err(PitlakeError::from_datafusion)
}

/// The result schema of a query over constants, planned (not run) where no table exists.
pub(crate) async fn constant_schema(sql: &str) -> Result<SchemaRef> {
    let df = CONSTANTS
        .sql(sql)
        .await
        .map_err(PitlakeError::from_datafusion)?;
    Ok(Arc::new(df.schema().as_arrow().clone()))
}

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
    /// What the caller may see (`None`: everything).
    caller: Option<Arc<dyn planning::Visibility>>,
    /// Spills of the queries run through [`Engine::execute_planned`], for the server's metrics.
    spills: Arc<SpillTally>,
    /// The caller's session tables, when it acts in a session (see `session.rs`).
    session: Option<Arc<dyn session::SessionScope>>,
    /// The session context without the session's tables (`ctx` itself outside a session).
    base_ctx: SessionContext,
}

/// Spill files and bytes written by the queries an engine ran.
#[derive(Debug, Default)]
pub(crate) struct SpillTally {
    pub files: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
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

        let config = pitlake_config(SessionConfig::new())
            .with_target_partitions(settings.target_partitions)
            .with_batch_size(settings.batch_size)
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG, DEFAULT_SCHEMA);

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
            .with_query_planner(Arc::new(
                PitlakeQueryPlanner::default().with_planner(Arc::new(export::ExportPlanner)),
            ))
            .with_analyzer_rule(Arc::new(frontend::AsOfRule))
            // Before DataFusion's own rules, so that filter pushdown hands the range to the scans.
            .with_optimizer_rules(
                std::iter::once(Arc::new(crate::asof::AsOfRangePruning::new(Arc::new(
                    WarehouseFacts { pinned: false },
                ))) as _)
                .chain(Optimizer::new().rules)
                .collect(),
            )
            .build();
        let ctx = SessionContext::new_with_state(state);
        for udf in pitlake_functions() {
            ctx.register_udf(Arc::unwrap_or_clone(udf));
        }
        ctx.register_catalog(CATALOG, catalog.clone());
        Ok(Self {
            base_ctx: ctx.clone(),
            ctx,
            warehouse,
            catalog,
            settings,
            caller: None,
            spills: Arc::default(),
            session: None,
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

    /// The same engine acting for `user`, who sees only what `visibility` allows (a server
    /// plans and runs each client's statements this way; see [`planning::Visibility`]).
    pub fn for_caller(&self, user: &str, visibility: Arc<dyn planning::Visibility>) -> Engine {
        let mut engine = self.for_user(user);
        engine.caller = Some(visibility);
        engine
    }

    /// What the caller may see, if the engine acts for one.
    pub(crate) fn caller(&self) -> Option<&dyn planning::Visibility> {
        self.caller.as_deref()
    }

    /// The memory pool queries reserve from (for the server's metrics).
    pub fn memory_pool(&self) -> Arc<dyn datafusion::execution::memory_pool::MemoryPool> {
        self.ctx.runtime_env().memory_pool.clone()
    }

    /// Spill files and bytes written so far by the queries this engine (and its copies for
    /// callers) ran through [`Engine::execute_planned`].
    pub fn spill_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.spills.files.load(Relaxed),
            self.spills.bytes.load(Relaxed),
        )
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
            Statement::Dsl(dsl) => self.run_dsl(*dsl, &statement.text).await,
        }
    }

    /// The one planning pipeline every SQL statement goes through, whoever runs it (the CLI,
    /// the server, training sets): training sets inside it lowered to their pinned queries,
    /// time travel resolved (its bounds are constants, checked by the parser), as-of joins
    /// rewritten, the information schema refreshed when the statement reads it, the statement
    /// planned, and a planning error explained. Returns the session state it planned in, to
    /// run the plan in, and the feature views its training sets read.
    pub(crate) async fn plan_sql(
        &self,
        mut statement: DFStatement,
    ) -> Result<(SessionState, LogicalPlan, BTreeSet<TableName>)> {
        let views = Box::pin(self.lower_training_sets(&mut statement)).await?;
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
        match state.statement_to_plan(statement).await {
            Ok(plan) => Ok((state, plan, views)),
            Err(err) => Err(self.explain_plan_error(err).await),
        }
    }

    /// The training sets inside a statement (`frontend::embedded`), each parsed as a statement
    /// of its own.
    pub(crate) fn embedded_training_sets(
        &self,
        statement: &DFStatement,
    ) -> Result<Vec<TrainingSetSql>> {
        frontend::embedded::embedded(statement)?
            .iter()
            .map(|text| self.parse_training_set(text).map(|(spec, _)| spec))
            .collect()
    }

    /// Puts each training set inside a statement (`frontend::embedded`) in its place as its
    /// pinned query; returns the feature views they read.
    async fn lower_training_sets(
        &self,
        statement: &mut DFStatement,
    ) -> Result<BTreeSet<TableName>> {
        let mut views = BTreeSet::new();
        let mut queries = Vec::new();
        for training_set in self.embedded_training_sets(&*statement)? {
            let plan = self.plan_training_set(&training_set).await?;
            views.extend(plan.views.iter().map(|v| TableName::bare(&v.view)));
            let mut parsed = self.parse(&plan.query)?;
            match parsed.pop().map(|p| p.statement) {
                Some(Statement::Sql(sql)) => match *sql {
                    DFStatement::Statement(inner) => match *inner {
                        sqlparser::ast::Statement::Query(query) => queries.push(*query),
                        _ => return Err(not_a_query()),
                    },
                    _ => return Err(not_a_query()),
                },
                _ => return Err(not_a_query()),
            }
        }
        if !queries.is_empty() {
            frontend::embedded::substitute(statement, queries)?;
        }
        Ok(views)
    }

    async fn run_sql(&self, statement: DFStatement, options: RunOptions) -> Result<Output> {
        let (state, plan, _) = self.plan_sql(statement).await?;
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                let name = user_table(self.reference_to_name(&create.name)?)?;
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
                let name = user_table(self.reference_to_name(&drop.name)?)?;
                if self.drop_session_table(&name) {
                    return Ok(Output::Done(format!(
                        "dropped the session's table `{name}`"
                    )));
                }
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
                let name = user_table(self.reference_to_name(&table_name)?)?;
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
                let df = DataFrame::new(self.on_cluster(state, &plan).await?, plan);
                let task = Arc::new(df.task_ctx());
                let physical = df.create_physical_plan().await?;
                let stream = datafusion::physical_plan::execute_stream(physical.clone(), task)?;
                Ok(Output::Rows(
                    self.cancel_cluster_job_on_drop(stream, physical),
                ))
            }
        }
    }

    /// The optimized logical plan of one query (as-of joins and time travel included).
    pub async fn logical_plan(&self, sql: &str) -> Result<LogicalPlan> {
        let mut statements = self.parse(sql)?;
        let (Some(statement), true) = (statements.pop(), statements.is_empty()) else {
            return Err(PitlakeError::Plan("expected exactly one statement".into()));
        };
        let Statement::Sql(statement) = statement.statement else {
            return Err(PitlakeError::Plan(
                "only queries have a logical plan".into(),
            ));
        };
        let (state, plan, _) = self.plan_sql(*statement).await?;
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
        crate::asof::AsOfLogicalCodec::new(
            Arc::new(deltalake::delta_datafusion::DeltaLogicalCodec {}),
            Arc::new(WarehouseFacts { pinned: false }),
        )
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

    /// Writes batches held in memory into a table as one commit (the demo's generated data,
    /// tests' fixtures).
    pub async fn write_batches(
        &self,
        name: &TableName,
        batches: Vec<RecordBatch>,
        mode: WriteMode,
    ) -> Result<WriteOutcome> {
        let Some(schema) = batches.first().map(RecordBatch::schema) else {
            return Err(PitlakeError::Plan(format!(
                "nothing to write to `{name}`: no batches were given"
            )));
        };
        let source = Arc::new(datafusion::datasource::MemTable::try_new(
            schema,
            vec![batches],
        )?);
        let plan = datafusion::logical_expr::LogicalPlanBuilder::scan(
            name.table.as_str(),
            datafusion::datasource::provider_as_source(source),
            None,
        )?
        .build()?;
        self.write(&self.state(), name, plan, mode, &[]).await
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
    /// The parser let only constants through (`bounds::ensure_constant`); they are evaluated
    /// in a session without tables all the same, so no expression can read data here.
    async fn evaluate_instant(&self, expr: &sqlparser::ast::Expr) -> Result<i64> {
        let query = format!("SELECT CAST(({expr}) AS TIMESTAMP(3) WITH TIME ZONE) AS t");
        let fail = |reason: String| {
            PitlakeError::Plan(format!(
                "TIMESTAMP AS OF {expr}: {reason}; write an instant such as \
                 '2026-01-01T00:00:00Z' or now() - INTERVAL '1 day'"
            ))
        };
        let batches = constant_batches(&query)
            .await
            .map_err(|e| fail(e.to_string()))?;
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
        user_table(self.reference_to_name(&reference)?)
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

/// A training set planned into something other than one query: a bug.
fn not_a_query() -> PitlakeError {
    PitlakeError::Internal("a training set's pinned SQL is not one query".into())
}
