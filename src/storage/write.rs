//! Writing query results into Delta tables: every call is exactly one Delta commit.
//!
//! The data is streamed from a DataFusion logical plan straight into Parquet files by deltalake's
//! writer, so a write never holds its input in memory. Files are written first and the commit
//! last; a failure before the commit leaves the table at its previous version (any orphaned data
//! file is invisible to readers and removed by `VACUUM`).
//!
//! # Concurrent writers
//!
//! Delta commits are optimistic: a writer reads version `n`, writes its files, and commits
//! `n + 1`; if another writer committed first, delta-rs checks whether the two commits conflict
//! and, if not, commits on top. Its check treats a full overwrite as reading nothing, so an
//! `INSERT OVERWRITE` or `CREATE OR REPLACE` that raced an append would "succeed" on top of it:
//! the appended files (old schema, or rows the overwrite was meant to replace) would stay in
//! the table beside the new ones. A write that replaces the table's rows therefore commits
//! with no retry ([`single_attempt`]): if anything was committed since it read the table, it
//! fails with [`PitlakeError::ConcurrentWrite`] and leaves the table as the other writer left
//! it. Appends keep delta-rs's retries; an append that raced a schema change fails the same
//! way (delta-rs reports the changed metadata as a conflict).

use std::sync::Arc;

use arrow::datatypes::{DataType, Fields, SchemaRef};
use datafusion::common::Column;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast};
use deltalake::kernel::transaction::{CommitProperties, TransactionError};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};

use crate::error::{PitlakeError, Result};
use crate::storage::log::CommitSummary;
use crate::storage::name::TableName;
use crate::storage::warehouse::{TableVersion, Warehouse};

/// How a write treats an existing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create the table; it must not exist (`CREATE TABLE … AS`).
    Create,
    /// Create the table, or do nothing if it exists (`CREATE TABLE IF NOT EXISTS`).
    CreateIfNotExists,
    /// Create the table, replacing any existing table's data and schema
    /// (`CREATE OR REPLACE TABLE`); older versions stay readable by time travel.
    CreateOrReplace,
    /// Add rows; the table is created on the first write (`INSERT`, `ingest --mode append`).
    Append,
    /// Replace all rows, keeping the schema (`ingest --mode overwrite`).
    Overwrite,
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The table written.
    pub table: TableName,
    /// The version the write committed (`None` when nothing was written: `IF NOT EXISTS` on an
    /// existing table).
    pub version: Option<i64>,
    /// What the commit did.
    pub commit: Option<CommitSummary>,
    /// Whether the write created the table.
    pub created: bool,
}

impl WriteOutcome {
    /// A one-line report for people.
    pub fn message(&self) -> String {
        let Some(version) = self.version else {
            return format!("table `{}` already exists; nothing written", self.table);
        };
        let rows = self
            .commit
            .as_ref()
            .and_then(|c| c.rows_added)
            .map(|n| format!("{n} row{}", if n == 1 { "" } else { "s" }))
            .unwrap_or_else(|| "rows".to_string());
        let verb = if self.created { "created" } else { "wrote" };
        format!("{verb} table `{}`: {rows} in version {version}", self.table)
    }
}

/// Writes the rows of `plan` into table `name` as one commit.
pub async fn write_plan(
    warehouse: &Warehouse,
    session: &SessionState,
    name: &TableName,
    plan: LogicalPlan,
    mode: WriteMode,
    partition_by: &[String],
) -> Result<WriteOutcome> {
    name.validate()?;
    warehouse.check_commit_safety().await?;
    let exists = warehouse.table_exists(name).await?;
    let existing = if exists {
        Some(warehouse.open(name, TableVersion::Latest).await?)
    } else {
        None
    };

    let (save_mode, replace_schema) = match (mode, &existing) {
        (WriteMode::Create, Some(_)) => {
            return Err(PitlakeError::TableExists {
                name: name.to_string(),
            });
        }
        (WriteMode::CreateIfNotExists, Some(_)) => {
            return Ok(WriteOutcome {
                table: name.clone(),
                version: None,
                commit: None,
                created: false,
            });
        }
        (WriteMode::CreateOrReplace, Some(_)) => (SaveMode::Overwrite, true),
        (WriteMode::Overwrite, Some(_)) => (SaveMode::Overwrite, false),
        (WriteMode::Append, Some(_)) => (SaveMode::Append, false),
        (_, None) => (SaveMode::ErrorIfExists, true),
    };

    let plan = match &existing {
        Some(table) if !replace_schema => {
            let target = table
                .snapshot()
                .map_err(|e| corrupt(name, e))?
                .snapshot()
                .arrow_schema();
            conform_to_table(name, plan, &target)?
        }
        _ => {
            check_new_schema(name, plan.schema().inner(), partition_by)?;
            plan
        }
    };

    let not_null: Vec<String> = plan_not_null_columns(&existing);
    let table = match existing {
        Some(table) => table,
        None => warehouse.table_builder(name)?.build()?,
    };
    let mut builder = table
        .write(Vec::new())
        .with_input_plan(plan)
        .with_save_mode(save_mode)
        .with_table_name(name.table.clone())
        .with_session_state(Arc::new(session.clone()));
    if !partition_by.is_empty() {
        builder = builder.with_partition_columns(partition_by.to_vec());
    }
    if replace_schema && exists {
        builder = builder.with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite);
    }
    if save_mode == SaveMode::Overwrite {
        builder = builder.with_commit_properties(single_attempt());
    }
    let written: DeltaTable = builder.await.map_err(|e| write_error(name, e, &not_null))?;
    let version = written.version().map(|v| v as i64);
    let listing = warehouse.log_listing(name).await?;
    let commit = listing
        .history(warehouse.store().as_ref(), Some(1))
        .await?
        .into_iter()
        .next();
    Ok(WriteOutcome {
        table: name.clone(),
        version,
        commit,
        created: !exists,
    })
}

fn corrupt(name: &TableName, err: DeltaTableError) -> PitlakeError {
    crate::storage::warehouse::corrupt(name, err)
}

/// The table's NOT NULL columns, for explaining a rejected NULL.
fn plan_not_null_columns(table: &Option<DeltaTable>) -> Vec<String> {
    table
        .as_ref()
        .and_then(|t| t.snapshot().ok())
        .map(|s| {
            s.snapshot()
                .arrow_schema()
                .fields()
                .iter()
                .filter(|f| !f.is_nullable())
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Commit properties for a write that replaces a table's rows: one attempt, no conflict
/// resolution (see the module docs: delta-rs would otherwise keep rows a concurrent append
/// committed after this write read the table).
pub(crate) fn single_attempt() -> CommitProperties {
    CommitProperties::default().with_max_retries(0)
}

/// The error for a commit that lost a race with another writer, if `err` is one.
pub(crate) fn concurrent_write(table: &str, err: &DeltaTableError) -> Option<PitlakeError> {
    let message = match err {
        DeltaTableError::VersionAlreadyExists(version) => {
            format!("another writer committed version {version} first")
        }
        DeltaTableError::Transaction {
            source: TransactionError::MaxCommitAttempts(_),
        } => "another writer committed a new version after this statement read the table".into(),
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(conflict),
        } => format!(
            "a concurrent commit conflicts with this one: {}",
            conflict.to_string().trim_end_matches('.')
        ),
        _ => return None,
    };
    Some(PitlakeError::ConcurrentWrite {
        table: table.to_string(),
        message,
    })
}

fn write_error(name: &TableName, err: DeltaTableError, not_null: &[String]) -> PitlakeError {
    if let Some(conflict) = concurrent_write(&name.to_string(), &err) {
        return conflict;
    }
    if err
        .to_string()
        .contains("non-nullable but contains null values")
    {
        return PitlakeError::SchemaMismatch {
            table: name.to_string(),
            message: format!(
                "the data has NULLs for a NOT NULL column (NOT NULL columns: {}); filter or \
                 fill them (coalesce) before writing",
                if not_null.is_empty() {
                    "none known".to_string()
                } else {
                    not_null.join(", ")
                }
            ),
        };
    }
    // A failed upload arrives wrapped (in a Parquet error, say): report the store's failure.
    if !matches!(err, DeltaTableError::ObjectStore { .. })
        && let Some(storage) =
            crate::storage::store::storage_cause(&name.to_string(), "cannot write", &err)
    {
        return storage;
    }
    match err {
        DeltaTableError::ObjectStore { source } => {
            crate::storage::store::storage_error(&name.to_string(), "cannot write", source)
        }
        other => {
            // Errors raised by the input plan (a bad CSV line, a failed cast) arrive wrapped in
            // Delta's error; show them as the query errors they are.
            if let DeltaTableError::Generic(msg) = &other {
                return PitlakeError::Execution(format!("writing `{name}`: {msg}"));
            }
            PitlakeError::Delta(other)
        }
    }
}

/// Checks a new table's schema: unique, non-empty column names and existing partition columns.
fn check_new_schema(name: &TableName, schema: &SchemaRef, partition_by: &[String]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for field in schema.fields() {
        if field.name().is_empty() {
            return Err(PitlakeError::SchemaMismatch {
                table: name.to_string(),
                message: "a column has an empty name; give every expression an alias".into(),
            });
        }
        if !seen.insert(field.name().to_lowercase()) {
            return Err(PitlakeError::SchemaMismatch {
                table: name.to_string(),
                message: format!(
                    "column `{}` appears twice; give one of them an alias",
                    field.name()
                ),
            });
        }
    }
    for column in partition_by {
        if schema.field_with_name(column).is_err() {
            return Err(PitlakeError::SchemaMismatch {
                table: name.to_string(),
                message: format!(
                    "partition column `{column}` is not in the data; columns are: {}",
                    column_list(schema.fields())
                ),
            });
        }
    }
    Ok(())
}

/// Columns as an error lists them: `name type, …`.
fn column_list(fields: &Fields) -> String {
    fields
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a value of type `from` can be stored in a column of type `to` without losing
/// information (so the write may cast it implicitly).
fn widens_to(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to || from == &Null {
        return true;
    }
    match (from, to) {
        (Dictionary(_, value), to) => widens_to(value, to),
        (Int8, Int16 | Int32 | Int64) | (Int16, Int32 | Int64) | (Int32, Int64) => true,
        (UInt8, Int16 | Int32 | Int64) | (UInt16, Int32 | Int64) | (UInt32, Int64) => true,
        (Int8 | Int16 | Int32 | UInt8 | UInt16, Float64) => true,
        (Float16 | Float32, Float64) => true,
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (Date32, Date64) | (Date64, Date32) => true,
        // Timestamps of any unit are the same instants; only the zone-ness must agree (an
        // instant and a wall-clock time are different things).
        (Timestamp(_, a), Timestamp(_, b)) => a.is_some() == b.is_some(),
        _ => false,
    }
}

/// Matches a plan's output to an existing table's columns: same names, types that widen, no
/// missing or extra column. Returns the plan with the casts the table needs.
pub fn conform_to_table(
    name: &TableName,
    plan: LogicalPlan,
    target: &SchemaRef,
) -> Result<LogicalPlan> {
    let input = plan.schema().clone();
    let mismatch = |message: String| PitlakeError::SchemaMismatch {
        table: name.to_string(),
        message,
    };
    for (_, field) in input.iter() {
        if target.field_with_name(field.name()).is_err() {
            return Err(mismatch(format!(
                "the input has column `{}` which the table does not have; table columns are: {}",
                field.name(),
                column_list(target.fields())
            )));
        }
    }
    let mut exprs: Vec<Expr> = Vec::with_capacity(target.fields().len());
    for want in target.fields() {
        let Some((qualifier, have)) = input.iter().find(|(_, f)| f.name() == want.name()) else {
            return Err(mismatch(format!(
                "column `{}` ({}) is missing from the input; the input has: {}",
                want.name(),
                want.data_type(),
                column_list(input.fields())
            )));
        };
        if !widens_to(have.data_type(), want.data_type()) {
            return Err(mismatch(format!(
                "column `{}` has type {} in the input but {} in the table; cast it in the query \
                 (CAST({} AS …)) or write to a new table",
                want.name(),
                have.data_type(),
                want.data_type(),
                want.name()
            )));
        }
        if !want.is_nullable() && have.is_nullable() && have.data_type() == &DataType::Null {
            return Err(mismatch(format!(
                "column `{}` is NOT NULL in the table but the input gives only NULLs",
                want.name()
            )));
        }
        let column = Expr::Column(Column::new(qualifier.cloned(), have.name()));
        let expr = if have.data_type() == want.data_type() {
            column
        } else {
            cast(column, want.data_type().clone())
        };
        exprs.push(expr.alias(want.name()));
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_rules() {
        use DataType::*;
        use arrow::datatypes::TimeUnit;
        assert!(widens_to(&Int32, &Int64));
        assert!(!widens_to(&Int64, &Int32));
        assert!(!widens_to(&Utf8, &Int64));
        assert!(widens_to(&Utf8View, &Utf8));
        assert!(widens_to(
            &Timestamp(TimeUnit::Nanosecond, None),
            &Timestamp(TimeUnit::Microsecond, None)
        ));
        assert!(!widens_to(
            &Timestamp(TimeUnit::Microsecond, None),
            &Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        ));
        assert!(widens_to(&Null, &Float64));
    }
}
