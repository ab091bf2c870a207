//! What each DSL statement does: the names its text gives, what it reads and writes (its access,
//! which authorizers check), and how it runs. The syntax is `frontend::dsl`'s; here each
//! statement struct implements [`RunDsl`]:
//! - `define`: `CREATE ENTITY | FEATURE VIEW | FEATURE SERVICE`, `REGISTER MODEL`, which are
//!   [`Define`]s too (definitions as code, `engine::definitions`, builds on the same);
//! - `objects`: `DROP`, `SHOW`, `DESCRIBE`, `SHOW HISTORY OF`, `SHOW DIFF OF`;
//! - `training`: `TRAINING SET`, `EXPORT TRAINING SET`;
//! - `sight`: which registry objects a caller may see, and the errors and hints that follow.

mod define;
mod objects;
mod sight;
mod training;

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

pub(crate) use define::{Known, check_keys};
pub(crate) use sight::resolve_items;

use super::planning::{Access, PlannedStatement, TableName, report_schema};
use super::{Engine, Output, RunOptions};
use crate::error::Result;
use crate::frontend::ParsedStatement;
use crate::frontend::dsl::{DslStatement, SourceSql, each_dsl};

/// What a DSL statement does beside its syntax. One implementation per statement struct.
pub(crate) trait RunDsl {
    /// The feature views the statement's text names. Authorizers check them before planning,
    /// like the tables a query names, so a view the caller may not read is refused the same
    /// way whether it exists or not.
    fn named_views(&self) -> BTreeSet<TableName> {
        BTreeSet::new()
    }

    /// The relation the statement reads before anything else (a training set's labels, a new
    /// view's source): its tables are checked before planning, like a query's.
    fn named_relation(&self) -> Option<&SourceSql> {
        None
    }

    /// Whether it changes the registry (else it only reads it).
    const CHANGES_REGISTRY: bool = true;

    /// Plans the statement without running it: its result's schema and its access. By
    /// default, a registry change needs the registry grant and reads
    /// [`RunDsl::named_relation`]; a registry read reads the views it names, and is small
    /// enough to run once for its schema.
    async fn plan(&self, engine: &Engine, statement: ParsedStatement) -> Result<PlannedStatement> {
        if !Self::CHANGES_REGISTRY {
            let access = Access {
                views: self.named_views(),
                ..Access::default()
            };
            let schema =
                match Box::pin(engine.run(statement.clone(), RunOptions::default())).await? {
                    Output::Rows(stream) => stream.schema(),
                    Output::Done(_) => report_schema(),
                };
            return Ok(PlannedStatement::rows(statement, schema, access));
        }
        let access = Access {
            registry_write: true,
            reads: engine.relation_tables(self.named_relation())?,
            ..Access::default()
        };
        Ok(PlannedStatement::change(statement, access))
    }

    /// Runs the statement; `text` is the statement as written (recorded in the registry's
    /// history and in manifests).
    async fn run(self, engine: &Engine, text: &str) -> Result<Output>;
}

impl Engine {
    /// Runs a DSL statement.
    pub(crate) async fn run_dsl(&self, statement: DslStatement, text: &str) -> Result<Output> {
        each_dsl!(statement, s => s.run(self, text).await)
    }

    /// Plans a DSL statement (see [`RunDsl::plan`]).
    pub(crate) async fn plan_dsl(
        &self,
        dsl: &DslStatement,
        statement: ParsedStatement,
    ) -> Result<PlannedStatement> {
        each_dsl!(dsl, s => s.plan(self, statement).await)
    }

    /// The feature views a DSL statement's text names (see [`RunDsl::named_views`]).
    pub(crate) fn dsl_named_views(&self, dsl: &DslStatement) -> BTreeSet<TableName> {
        each_dsl!(dsl, s => s.named_views())
    }

    /// The tables a DSL statement's text names (see [`RunDsl::named_relation`]).
    pub(crate) fn dsl_named_tables(&self, dsl: &DslStatement) -> Result<BTreeSet<TableName>> {
        self.relation_tables(each_dsl!(dsl, s => s.named_relation()))
    }

    /// The tables `relation` names.
    fn relation_tables(&self, relation: Option<&SourceSql>) -> Result<BTreeSet<TableName>> {
        let Some(relation) = relation else {
            return Ok(BTreeSet::new());
        };
        let relation = match relation {
            // Its version does not change which table it is.
            SourceSql::Table { name, .. } => name.clone(),
            SourceSql::Query(sql) => format!("({sql})"),
        };
        let query = self.parse_one(&format!("SELECT * FROM {relation}"))?;
        self.named_tables(&query)
    }
}

/// The rows of a result built in memory.
pub(crate) fn rows(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<SendableRecordBatchStream> {
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(vec![Ok(batch)]),
    )))
}

/// A string column.
fn strings<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}

/// Who is making a change: `PITLAKE_USER`, else the login name.
pub(crate) fn author(engine: &Engine) -> String {
    engine.settings().user.clone()
}

/// A schema's columns for a message: `name type, …`.
pub(crate) fn column_list(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `t` is a string type.
fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}
