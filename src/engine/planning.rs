//! Planning a statement for a caller without running it, as a network front end (the Flight
//! SQL server) needs: its result schema and parameters, every object it names (checked before
//! planning) and every object its plan reads or changes (for authorization), the caller's
//! [`Visibility`], and running it afterwards with a memory limit of its own.
//!
//! The objects a statement touches are read from its *logical plan*, not from its text: every
//! `TableScan` in the plan and in its subqueries (CTEs are inlined, `EXISTS`/`IN`/scalar
//! subqueries are visited, time-travel names are decoded back to their table), every DDL and DML
//! node, `COPY`, and `SET`. A table that the text names but the plan does not read (a CTE that
//! shadows it) is therefore not required, and a table that the plan reads through a subquery is.
//! The only statement whose plan does not name its table, `DESCRIBE t`, is read from the text.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ScalarValue, TableReference};
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::parser::Statement as DFStatement;
use futures::StreamExt;
use sqlparser::ast::{Expr as SqlExpr, Value, VisitMut, VisitorMut};

pub use crate::storage::TableName;

use crate::engine::{Engine, Output, RunOptions};
use crate::error::{PitlakeError, Result};
use crate::frontend::{ParsedStatement, Statement};
use crate::storage::decode_versioned_name;

/// Table functions that compute their rows and read nothing; every other table function may
/// read files and needs the `files` permission.
pub const HARMLESS_TABLE_FUNCTIONS: &[&str] = &["generate_series", "range"];

/// Everything a statement reads or changes: what an authorizer must allow before it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Tables (and `information_schema` views) whose rows the statement reads.
    pub reads: BTreeSet<TableName>,
    /// Tables the statement creates, writes or drops.
    pub writes: BTreeSet<TableName>,
    /// Table functions other than [`HARMLESS_TABLE_FUNCTIONS`] that the statement calls.
    pub functions: BTreeSet<String>,
    /// The statement reads or writes files of the server (`COPY`, `CREATE EXTERNAL TABLE`).
    pub files: bool,
    /// The statement changes settings of the engine's shared session (`SET`).
    pub session: bool,
    /// DDL that is not about one table (`CREATE SCHEMA`, `CREATE FUNCTION` …), by plan name.
    pub other_ddl: Option<String>,
    /// Feature views the statement reads (through the registry), by name.
    pub views: BTreeSet<TableName>,
    /// The statement changes the feature registry.
    pub registry_write: bool,
}

/// What the caller of a statement may see and change. A server gives the engine one for each
/// client ([`Engine::for_caller`]); the engine consults it wherever an answer or an error
/// could name an object: registry listings, descriptions, histories and diffs show only what
/// the caller may see, and "does not exist" hints list only such objects, so a hidden object
/// is as absent as one that does not exist. Without one (the CLI, the shell) everything is
/// visible.
pub trait Visibility: Send + Sync + std::fmt::Debug {
    /// Whether the table's rows may be read.
    fn can_read_table(&self, table: &TableName) -> bool;
    /// Whether the table may be created, written or dropped.
    fn can_write_table(&self, table: &TableName) -> bool;
    /// Whether the feature view may be read.
    fn can_read_view(&self, view: &TableName) -> bool;
    /// Whether the feature registry may be changed.
    fn can_write_registry(&self) -> bool;
}

/// A statement planned but not run.
#[derive(Debug, Clone)]
pub struct PlannedStatement {
    statement: ParsedStatement,
    plan: Option<LogicalPlan>,
    rows: bool,
    schema: SchemaRef,
    parameters: Vec<Option<DataType>>,
    /// What the statement reads and changes.
    pub access: Access,
}

impl PlannedStatement {
    /// A DSL statement that changes something, planned as its access: it runs as a whole,
    /// and answers with a one-row report.
    pub(crate) fn change(statement: ParsedStatement, access: Access) -> Self {
        Self {
            statement,
            plan: None,
            rows: false,
            schema: report_schema(),
            parameters: Vec::new(),
            access,
        }
    }

    /// A statement that answers with rows of `schema` and runs as a whole (registry reads,
    /// `DESCRIBE HISTORY`).
    pub(crate) fn rows(statement: ParsedStatement, schema: SchemaRef, access: Access) -> Self {
        Self {
            statement,
            plan: None,
            rows: true,
            schema,
            parameters: Vec::new(),
            access,
        }
    }

    /// A training set's statement in place of the pinned query it was planned as, with the
    /// feature views it reads.
    pub(crate) fn for_training_set(
        mut self,
        statement: ParsedStatement,
        views: BTreeSet<TableName>,
    ) -> Self {
        self.statement = statement;
        self.access.views = views;
        self
    }

    /// The statement's text.
    pub fn text(&self) -> &str {
        &self.statement.text
    }

    /// The schema of the rows running it produces. A statement that changes something produces
    /// one row with one column, `result`, the report it would print.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Whether it is a query (rows), rather than a statement that changes something.
    pub fn is_query(&self) -> bool {
        self.rows
    }

    /// The statement with `values` for its parameters `$1`, `$2` … (cast to the types the plan
    /// expects), planned again so its schema is that of the rows it will produce. Without
    /// parameters, the statement as it is.
    pub fn bind(mut self, values: Vec<ScalarValue>) -> Result<Self> {
        if values.len() != self.parameters.len() {
            return Err(PitlakeError::Plan(format!(
                "the statement has {} parameter(s) but {} value(s) were bound",
                self.parameters.len(),
                values.len()
            )));
        }
        if values.is_empty() {
            return Ok(self);
        }
        let Some(plan) = self.plan.take() else {
            return Err(PitlakeError::Unsupported(
                "parameters in this statement; write the values into it".into(),
            ));
        };
        if !self.rows {
            return Err(PitlakeError::Unsupported(
                "parameters in statements that change tables; write the values into the \
                 statement"
                    .into(),
            ));
        }
        let mut cast = Vec::with_capacity(values.len());
        for (i, (value, expected)) in values.into_iter().zip(&self.parameters).enumerate() {
            cast.push(match expected {
                Some(t) if value.data_type() != *t => value.cast_to(t).map_err(|e| {
                    PitlakeError::Plan(format!(
                        "parameter ${}: cannot use a {} value as {t}: {}",
                        i + 1,
                        value.data_type(),
                        PitlakeError::from_datafusion(e)
                    ))
                })?,
                _ => value,
            });
        }
        let plan = plan.with_param_values(cast)?;
        self.schema = Arc::new(plan.schema().as_arrow().clone());
        self.parameters = Vec::new();
        self.plan = Some(plan);
        Ok(self)
    }

    /// The types of its parameters `$1`, `$2` … in order (`None` where the plan does not tell).
    pub fn parameter_types(&self) -> &[Option<DataType>] {
        &self.parameters
    }

    /// Its parameters as a schema: fields `$1`, `$2` …, typed `Null` where unknown.
    pub fn parameter_schema(&self) -> Schema {
        Schema::new(
            self.parameters
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Field::new(
                        format!("${}", i + 1),
                        t.clone().unwrap_or(DataType::Null),
                        true,
                    )
                })
                .collect::<Vec<_>>(),
        )
    }
}

/// The schema of the one-row report a statement that changes something produces.
pub fn report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Utf8,
        false,
    )]))
}

impl Engine {
    /// Parses exactly one statement. JDBC/ODBC-style `?` placeholders become `$1`, `$2` … in the
    /// order they are written, so clients that bind positionally (ADBC, DBAPI) work.
    /// The text is bounded as one statement is (1 MiB), before it is even split.
    pub fn parse_one(&self, sql: &str) -> Result<ParsedStatement> {
        crate::frontend::bounds::check_size(sql)?;
        let mut statements = self.parse(sql)?;
        let mut statement = match (statements.pop(), statements.is_empty()) {
            (Some(statement), true) => statement,
            (None, _) => return Err(PitlakeError::Syntax("no statement given".into())),
            (Some(_), false) => {
                return Err(PitlakeError::Plan(
                    "expected one statement, found several; send them one at a time".into(),
                ));
            }
        };
        if let Statement::Sql(sql) = &mut statement.statement {
            number_question_marks(sql)?;
        }
        Ok(statement)
    }

    /// The tables a statement names (CTE names and table functions excepted), read from its
    /// text before anything is planned or opened. Authorizers check these first, so a
    /// statement about a table the caller may not touch fails the same way whether the table
    /// exists or not, and nothing about it (its versions, its history) is read on the caller's
    /// behalf. The check on the plan ([`PlannedStatement::access`]) is the precise one.
    pub fn named_tables(&self, statement: &ParsedStatement) -> Result<BTreeSet<TableName>> {
        let sql = match &statement.statement {
            Statement::Sql(sql) => sql,
            Statement::DescribeHistory { table, .. } => {
                return Ok(BTreeSet::from([self.table_name(table)?]));
            }
            Statement::Dsl(dsl) => return self.dsl_named_tables(dsl),
        };
        let state = self.ctx.state();
        let functions = state.table_functions();
        // Names read at a version mean the warehouse's table, never the session's upload.
        let versioned = versioned_names(sql);
        let mut names = BTreeSet::new();
        for reference in state.resolve_table_references(sql)? {
            let placeholder = reference.table() == crate::frontend::embedded::PLACEHOLDER;
            if reference.schema().is_none()
                && (functions.contains_key(reference.table()) || placeholder)
            {
                continue;
            }
            let name = self.scanned_table(&reference)?;
            if self.is_session_read(&reference) && !versioned.contains(&name.table) {
                continue;
            }
            names.insert(name);
        }
        // The labels of the training sets inside it.
        for training_set in self.embedded_training_sets(sql)? {
            let dsl = crate::frontend::dsl::DslStatement::TrainingSet(training_set);
            names.extend(self.dsl_named_tables(&dsl)?);
        }
        Ok(names)
    }

    /// The feature views a statement's text names: in a training set's (or export's)
    /// `FEATURES`, or as the object of `DESCRIBE`, `SHOW HISTORY OF` or `SHOW DIFF OF`.
    /// Authorizers check these before planning, as they check [`Engine::named_tables`], so a
    /// view the caller may not read is refused the same way whether it exists or not. (Views
    /// reached through a service are checked on the plan, [`Access::views`].)
    pub fn named_views(&self, statement: &ParsedStatement) -> BTreeSet<TableName> {
        match &statement.statement {
            Statement::Dsl(dsl) => self.dsl_named_views(dsl),
            // The training sets inside a query (their text parsed when the query was).
            Statement::Sql(sql) => self
                .embedded_training_sets(sql)
                .unwrap_or_default()
                .iter()
                .flat_map(|t| t.feature_views().map(TableName::bare).collect::<Vec<_>>())
                .collect(),
            Statement::DescribeHistory { .. } => BTreeSet::new(),
        }
    }

    /// Plans one statement without running it: its result schema, its parameters and the
    /// objects it touches. Nothing is written and no rows are read.
    pub async fn plan_statement(&self, statement: ParsedStatement) -> Result<PlannedStatement> {
        let sql = match &statement.statement {
            Statement::Sql(sql) => sql.as_ref().clone(),
            Statement::Dsl(dsl) => {
                let dsl = dsl.as_ref().clone();
                return Box::pin(self.plan_dsl(&dsl, statement)).await;
            }
            // A read of the table's log.
            Statement::DescribeHistory { table, limit } => {
                let name = self.table_name(table)?;
                let schema = self.history(&name, *limit).await?.schema();
                let access = Access {
                    reads: BTreeSet::from([name]),
                    ..Access::default()
                };
                return Ok(PlannedStatement::rows(statement, schema, access));
            }
        };
        let described = match &sql {
            DFStatement::Statement(inner) => match inner.as_ref() {
                sqlparser::ast::Statement::ExplainTable { table_name, .. } => {
                    Some(self.table_name(table_name)?)
                }
                _ => None,
            },
            _ => None,
        };
        let (state, plan, views) = self.plan_sql(sql).await?;
        let mut access = self.access_of(&state, &plan).await?;
        access.reads.extend(described);
        access.views.extend(views);
        let rows = !matches!(
            plan,
            LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Statement(_)
        );
        let schema = if rows {
            Arc::new(plan.schema().as_arrow().clone())
        } else {
            report_schema()
        };
        let parameters = parameter_types(&plan)?;
        Ok(PlannedStatement {
            statement,
            plan: Some(plan),
            rows,
            schema,
            parameters,
            access,
        })
    }

    /// Runs a planned statement with its parameter values (one per parameter, in order).
    ///
    /// A query runs under its own memory limit when `memory_limit` is given: its operators
    /// spill (or fail) when *it* reaches the limit, as well as when the engine's pool is full.
    /// A statement that changes something runs as [`Engine::run`] runs it, confirmed (the
    /// caller has authorized it).
    pub async fn execute_planned(
        &self,
        planned: PlannedStatement,
        parameters: Vec<ScalarValue>,
        memory_limit: Option<usize>,
    ) -> Result<Output> {
        let planned = planned.bind(parameters)?;
        let announced = planned.schema();
        Ok(match self.execute_bound(planned, memory_limit).await? {
            Output::Rows(stream) => Output::Rows(conform(stream, announced)),
            done => done,
        })
    }

    /// Runs a statement whose parameters are bound.
    async fn execute_bound(
        &self,
        planned: PlannedStatement,
        memory_limit: Option<usize>,
    ) -> Result<Output> {
        let confirmed = RunOptions { force: true };
        let Some(plan) = planned.plan else {
            // DSL statements (a training set exported, registry changes) and DESCRIBE HISTORY:
            // everything they run counts against the query's limit.
            return self
                .with_memory_limit(memory_limit)
                .run(planned.statement, confirmed)
                .await;
        };
        if !planned.rows {
            // `SET` changes the engine's shared session, so it runs there; a write reads its
            // input under the query's limit.
            let engine = if matches!(plan, LogicalPlan::Statement(_)) {
                self.clone()
            } else {
                self.with_memory_limit(memory_limit)
            };
            return engine.run(planned.statement, confirmed).await;
        }
        let state = self
            .on_cluster(self.query_state(memory_limit), &plan)
            .await?;
        let df = DataFrame::new(state, plan);
        let task = Arc::new(df.task_ctx());
        let physical = df.create_physical_plan().await?;
        let stream = datafusion::physical_plan::execute_stream(physical.clone(), task)?;
        let stream = self.cancel_cluster_job_on_drop(stream, physical.clone());
        Ok(Output::Rows(tally_spills(
            stream,
            physical,
            self.spills.clone(),
        )))
    }

    /// This engine with a session whose memory pool caps what runs on it at `limit` bytes
    /// inside the engine's pool (unchanged without a limit).
    fn with_memory_limit(&self, limit: Option<usize>) -> Engine {
        let mut engine = self.clone();
        if limit.is_some() {
            engine.ctx =
                datafusion::prelude::SessionContext::new_with_state(self.query_state(limit));
        }
        engine
    }

    /// A session state for one query: the engine's, with a memory pool that caps this query
    /// inside the engine's pool.
    fn query_state(&self, memory_limit: Option<usize>) -> SessionState {
        let state = self.ctx.state();
        let Some(limit) = memory_limit else {
            return state;
        };
        let mut runtime = state.runtime_env().as_ref().clone();
        runtime.memory_pool = Arc::new(QueryPool {
            engine: runtime.memory_pool.clone(),
            limit,
            used: AtomicUsize::new(0),
        });
        SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(Arc::new(runtime))
            .build()
    }

    /// Every object a plan reads or changes.
    async fn access_of(&self, state: &SessionState, plan: &LogicalPlan) -> Result<Access> {
        let mut access = Access::default();
        let mut scans: Vec<TableReference> = Vec::new();
        let mut writes: Vec<TableReference> = Vec::new();
        plan.apply_with_subqueries(|node| {
            match node {
                // A scan of the session's own upload needs no grant (only this session can name
                // it); a versioned name (`t@v3`) is a warehouse table's.
                LogicalPlan::TableScan(scan) if self.is_session_read(&scan.table_name) => {}
                LogicalPlan::TableScan(scan) => scans.push(scan.table_name.clone()),
                LogicalPlan::Ddl(ddl) => match ddl {
                    DdlStatement::CreateMemoryTable(create) => writes.push(create.name.clone()),
                    // `DROP TABLE` of a session's upload drops the upload, nothing else.
                    DdlStatement::DropTable(drop) if self.is_session_read(&drop.name) => {}
                    DdlStatement::DropTable(drop) => writes.push(drop.name.clone()),
                    DdlStatement::CreateView(create) => writes.push(create.name.clone()),
                    DdlStatement::DropView(drop) => writes.push(drop.name.clone()),
                    DdlStatement::CreateExternalTable(create) => {
                        access.files = true;
                        writes.push(create.name.clone());
                    }
                    other => access.other_ddl = Some(other.name().to_string()),
                },
                LogicalPlan::Dml(dml) => {
                    writes.push(dml.table_name.clone());
                    if matches!(dml.op, WriteOp::MergeInto(_)) {
                        access.other_ddl = Some("MERGE".into());
                    }
                }
                LogicalPlan::Copy(_) => access.files = true,
                LogicalPlan::Statement(_) => access.session = true,
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let functions = state.table_functions();
        for reference in scans {
            if reference.schema().is_none() {
                let bare = reference.table();
                let function = bare.strip_suffix("()").unwrap_or(bare);
                if functions.contains_key(function) {
                    if !HARMLESS_TABLE_FUNCTIONS.contains(&function) {
                        access.functions.insert(function.to_string());
                    }
                    // A table named like a function (a folder `range`) is a table all the same.
                    let named = TableName::bare(bare);
                    if named.validate().is_err() || !self.warehouse.table_exists(&named).await? {
                        continue;
                    }
                }
            }
            access.reads.insert(self.scanned_table(&reference)?);
        }
        for reference in writes {
            access.writes.insert(self.scanned_table(&reference)?);
        }
        Ok(access)
    }

    /// The warehouse table behind a name in a plan (`orders@v3` is `orders`).
    fn scanned_table(&self, reference: &TableReference) -> Result<TableName> {
        let name = self.reference_to_name(reference)?;
        let (base, _) = decode_versioned_name(&name.table)?;
        super::user_table(TableName {
            schema: name.schema.clone(),
            table: base.to_string(),
        })
    }
}

/// The names of the tables a statement reads at a version (`t VERSION AS OF 3`), lower-cased.
fn versioned_names(sql: &DFStatement) -> BTreeSet<String> {
    struct Versioned(BTreeSet<String>);
    impl sqlparser::ast::Visitor for Versioned {
        type Break = ();
        fn pre_visit_table_factor(
            &mut self,
            factor: &sqlparser::ast::TableFactor,
        ) -> std::ops::ControlFlow<()> {
            if let sqlparser::ast::TableFactor::Table {
                name,
                version: Some(_),
                ..
            } = factor
                && let Some(last) = name.0.last()
            {
                self.0
                    .insert(last.to_string().trim_matches('"').to_lowercase());
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut visitor = Versioned(BTreeSet::new());
    let _ = crate::frontend::visit::visit_statement(sql, &mut visitor);
    visitor.0
}

/// The types of a plan's parameters `$1` … `$n`, in order.
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>> {
    let found: HashMap<String, Option<DataType>> = plan.get_parameter_types()?;
    let mut numbered = Vec::with_capacity(found.len());
    for (name, data_type) in found {
        let index = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                PitlakeError::Plan(format!(
                    "parameter `{name}`: write parameters as $1, $2 … or ?"
                ))
            })?;
        numbered.push((index, data_type));
    }
    numbered.sort_by_key(|(index, _)| *index);
    for (position, (index, _)) in numbered.iter().enumerate() {
        if *index != position + 1 {
            return Err(PitlakeError::Plan(format!(
                "parameter ${} is used but ${} is not; number parameters from $1 without gaps",
                index,
                position + 1
            )));
        }
    }
    Ok(numbered.into_iter().map(|(_, t)| t).collect())
}

/// Rewrites `?` placeholders to `$1`, `$2` … in the order the parser meets them.
fn number_question_marks(statement: &mut DFStatement) -> Result<()> {
    struct Numbering {
        next: usize,
        mixed: bool,
    }
    impl VisitorMut for Numbering {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &mut SqlExpr) -> std::ops::ControlFlow<()> {
            if let SqlExpr::Value(value) = expr
                && let Value::Placeholder(p) = &mut value.value
            {
                if p == "?" {
                    self.next += 1;
                    *p = format!("${}", self.next);
                } else {
                    self.mixed = true;
                }
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut numbering = Numbering {
        next: 0,
        mixed: false,
    };
    let _ = match statement {
        DFStatement::Statement(inner) => inner.visit(&mut numbering),
        DFStatement::Explain(explain) => match explain.statement.as_mut() {
            DFStatement::Statement(inner) => inner.visit(&mut numbering),
            _ => std::ops::ControlFlow::Continue(()),
        },
        _ => std::ops::ControlFlow::Continue(()),
    };
    if numbering.next > 0 && numbering.mixed {
        return Err(PitlakeError::Plan(
            "a statement uses both `?` and `$n` parameters; use one style".into(),
        ));
    }
    Ok(())
}

/// A memory pool for one query inside the engine's: every reservation counts against both, so
/// one query cannot take the whole engine pool, and all queries together cannot exceed it.
///
/// Exceeding the query's limit is `ResourcesExhausted`, the error spilling operators answer by
/// spilling, exactly as they do when the engine's pool is full.
#[derive(Debug)]
struct QueryPool {
    engine: Arc<dyn MemoryPool>,
    limit: usize,
    used: AtomicUsize,
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query pool ({} of {} bytes) in {}",
            self.reserved(),
            self.limit,
            self.engine
        )
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.engine.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.engine.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.engine.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.engine.shrink(reservation, shrink);
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        // Claim first, so two partitions growing at once cannot both slip under the limit.
        let before = self.used.fetch_add(additional, Ordering::Relaxed);
        if before.saturating_add(additional) > self.limit {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} could not reserve {additional} bytes: the query uses {before} of its limit of \
                 {} bytes (the server's --query-memory-limit)",
                reservation.consumer().name(),
                self.limit
            )));
        }
        if let Err(err) = self.engine.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(err);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

/// `stream`, which adds the spills of `plan` to `tally` when it ends or is dropped.
fn tally_spills(
    stream: SendableRecordBatchStream,
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    tally: Arc<super::SpillTally>,
) -> SendableRecordBatchStream {
    struct Tally {
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        tally: Arc<super::SpillTally>,
    }
    impl Drop for Tally {
        fn drop(&mut self) {
            use std::sync::atomic::Ordering::Relaxed;
            let mut stack = vec![self.plan.clone()];
            let (mut files, mut bytes) = (0, 0);
            while let Some(node) = stack.pop() {
                if let Some(metrics) = node.metrics() {
                    files += metrics.spill_count().unwrap_or(0);
                    bytes += metrics.spilled_bytes().unwrap_or(0);
                }
                stack.extend(node.children().into_iter().cloned());
            }
            self.tally.files.fetch_add(files as u64, Relaxed);
            self.tally.bytes.fetch_add(bytes as u64, Relaxed);
        }
    }
    let schema = stream.schema();
    let guard = Tally { plan, tally };
    let batches = stream.map(move |batch| {
        let _ = &guard;
        batch
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// `stream` with the schema `announced`: what planning told a client (Flight's `GetFlightInfo`)
/// is what it gets. The physical plan may produce a column of a narrower but equal type (a
/// `List` for a `LargeList`, plain strings for a dictionary, a non-nullable column where the
/// plan said nullable); such columns are cast or relabelled.
pub(crate) fn conform(
    stream: SendableRecordBatchStream,
    announced: SchemaRef,
) -> SendableRecordBatchStream {
    // Checked batch by batch: a stream's batches may differ from the schema it declares.
    let schema = announced.clone();
    let batches = stream.map(move |batch| {
        let batch = batch?;
        if Arc::ptr_eq(&batch.schema(), &schema) || batch.schema() == schema {
            return Ok(batch);
        }
        if batch.num_columns() != schema.fields().len() {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "the result has {} columns but {} were announced",
                batch.num_columns(),
                schema.fields().len()
            )));
        }
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    arrow::compute::cast(column, field.data_type()).map_err(|e| {
                        datafusion::error::DataFusionError::Internal(format!(
                            "column `{}` is {} but was announced as {}: {e}",
                            field.name(),
                            column.data_type(),
                            field.data_type()
                        ))
                    })
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?)
    });
    Box::pin(RecordBatchStreamAdapter::new(announced, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Settings, WarehouseLocation};

    async fn engine_with_tables() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let mut settings =
            Settings::new(WarehouseLocation::parse(&dir.path().display().to_string()).unwrap());
        settings.target_partitions = 2;
        let engine = Engine::new(settings).unwrap();
        engine
            .run_script(
                "CREATE TABLE a AS SELECT 1 AS id, 10 AS v; \
                 CREATE TABLE b AS SELECT 1 AS id, 20 AS w; \
                 CREATE TABLE s.c AS SELECT 1 AS id",
                RunOptions::default(),
            )
            .await
            .unwrap();
        (dir, engine)
    }

    async fn access(engine: &Engine, sql: &str) -> Access {
        let statement = engine.parse_one(sql).unwrap();
        engine.plan_statement(statement).await.unwrap().access
    }

    fn names(set: &BTreeSet<TableName>) -> Vec<String> {
        set.iter().map(|t| t.to_string()).collect()
    }

    #[tokio::test]
    async fn finds_tables_through_subqueries_ctes_and_time_travel() {
        let (_dir, engine) = engine_with_tables().await;
        let got = access(
            &engine,
            "WITH x AS (SELECT * FROM a VERSION AS OF 0) \
             SELECT * FROM x WHERE id IN (SELECT id FROM b) \
             AND EXISTS (SELECT 1 FROM s.c WHERE s.c.id = x.id)",
        )
        .await;
        assert_eq!(names(&got.reads), vec!["a", "b", "s.c"]);
        assert!(got.writes.is_empty());
        // A CTE that shadows a table reads what the CTE reads.
        let got = access(&engine, "WITH b AS (SELECT * FROM a) SELECT * FROM b").await;
        assert_eq!(names(&got.reads), vec!["a"]);
        let got = access(&engine, "EXPLAIN SELECT * FROM b").await;
        assert_eq!(names(&got.reads), vec!["b"]);
        let got = access(&engine, "DESCRIBE s.c").await;
        assert_eq!(names(&got.reads), vec!["s.c"]);
        let got = access(&engine, "DESCRIBE HISTORY a").await;
        assert_eq!(names(&got.reads), vec!["a"]);
        let got = access(&engine, "SELECT * FROM generate_series(1, 3)").await;
        assert!(got.reads.is_empty() && got.functions.is_empty());
    }

    #[tokio::test]
    async fn names_tables_before_planning() {
        let (_dir, engine) = engine_with_tables().await;
        let named = |sql: &str| {
            let statement = engine.parse_one(sql).unwrap();
            names(&engine.named_tables(&statement).unwrap())
        };
        assert_eq!(
            named("WITH a AS (SELECT 1) SELECT * FROM a, b VERSION AS OF 7, nope"),
            vec!["b", "nope"]
        );
        assert_eq!(
            named("INSERT INTO s.c SELECT * FROM generate_series(1, 2)"),
            vec!["s.c"]
        );
        assert_eq!(named("DESCRIBE HISTORY zzz"), vec!["zzz"]);
    }

    #[tokio::test]
    async fn finds_writes_and_session_changes() {
        let (_dir, engine) = engine_with_tables().await;
        let got = access(&engine, "CREATE TABLE d AS SELECT * FROM a").await;
        assert_eq!(names(&got.writes), vec!["d"]);
        assert_eq!(names(&got.reads), vec!["a"]);
        let got = access(&engine, "INSERT INTO b SELECT id, v FROM a").await;
        assert_eq!(names(&got.writes), vec!["b"]);
        assert_eq!(names(&got.reads), vec!["a"]);
        let got = access(&engine, "DROP TABLE s.c").await;
        assert_eq!(names(&got.writes), vec!["s.c"]);
        let got = access(&engine, "SET datafusion.execution.batch_size = 10").await;
        assert!(got.session);
        let got = access(&engine, "COPY (SELECT 1) TO '/tmp/x.csv'").await;
        assert!(got.files);
        let planned = engine
            .plan_statement(engine.parse_one("CREATE TABLE e (x INT)").unwrap())
            .await
            .unwrap();
        assert!(!planned.is_query());
        assert_eq!(planned.schema(), report_schema());
        // Planning wrote nothing.
        assert!(
            !engine
                .list_tables()
                .await
                .unwrap()
                .iter()
                .any(|t| t.table == "e")
        );
    }

    #[tokio::test]
    async fn parameters_are_numbered_typed_and_bound() {
        let (_dir, engine) = engine_with_tables().await;
        let planned = engine
            .plan_statement(
                engine
                    .parse_one("SELECT v FROM a WHERE id = ? AND v > ?")
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            planned.parameter_types(),
            &[Some(DataType::Int64), Some(DataType::Int64)]
        );
        let out = engine
            .execute_planned(
                planned,
                vec![ScalarValue::Int32(Some(1)), ScalarValue::Int64(Some(5))],
                Some(64 << 20),
            )
            .await
            .unwrap();
        let Output::Rows(stream) = out else {
            panic!("expected rows")
        };
        let batches: Vec<_> = futures::TryStreamExt::try_collect(stream).await.unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
        let mixed = engine.parse_one("SELECT * FROM a WHERE id = ? AND v = $1");
        assert!(mixed.is_err());
    }
}
