//! A warehouse table as DataFusion sees it: deltalake's own table provider (which does the
//! scanning, filter pushdown and file skipping), plus, on demand, the range of an integer, date
//! or timestamp column from the Delta log's per-file statistics, which the as-of join uses to
//! prune its right input (see `asof::AsOfRangePruning`). deltalake's provider parses file
//! statistics only for the columns a query filters on, so DataFusion alone would not know these
//! ranges.

use std::any::Any;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, Constraints, DFSchemaRef, Result, ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, LogicalPlan, MergeIntoClause, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::DeltaTable;
use deltalake::table::state::DeltaTableState;

/// Whether a column's statistics give exact, comparable bounds of the kind an as-of join's time
/// uses: integers, dates and timestamps (not floats, whose statistics may be NaN-blind, nor
/// strings, whose statistics may be truncated).
pub fn bounded_type(data_type: &DataType) -> bool {
    data_type.is_integer()
        || matches!(
            data_type,
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
        )
}

/// The smallest and largest non-NULL value of a column over every file of a table version.
pub type ColumnRange = (ScalarValue, ScalarValue);

/// A warehouse table at one version: deltalake's provider and its columns' ranges.
#[derive(Debug)]
pub struct WarehouseTable {
    inner: Arc<dyn TableProvider>,
    /// The snapshot the provider reads (an `Arc` inside), for the file statistics.
    state: Option<DeltaTableState>,
    /// The table's root.
    root: Option<url::Url>,
    /// The ranges asked for so far: computed on demand, since most statements never ask.
    ranges: Mutex<HashMap<String, Option<ColumnRange>>>,
    /// The filters of the scan that reads this table on a cluster, by which its pinned file list
    /// is pruned (see `storage::pinned`; empty: every file).
    prune_filters: Vec<Expr>,
}

impl WarehouseTable {
    /// Wraps deltalake's provider for `table`.
    pub fn new(inner: Arc<dyn TableProvider>, table: &DeltaTable) -> Self {
        Self {
            inner,
            state: table.snapshot().ok().cloned(),
            root: Some(table.table_url().clone()),
            ranges: Mutex::default(),
            prune_filters: Vec::new(),
        }
    }

    /// This table, to be read by a scan with `filters` (which may prune its pinned files).
    pub fn with_prune_filters(&self, filters: Vec<Expr>) -> Self {
        Self {
            inner: self.inner.clone(),
            state: self.state.clone(),
            root: self.root.clone(),
            ranges: Mutex::default(),
            prune_filters: filters,
        }
    }

    /// The filters given by [`WarehouseTable::with_prune_filters`].
    pub fn prune_filters(&self) -> &[Expr] {
        &self.prune_filters
    }

    /// The range of column `name` (an integer, date or timestamp column), when every file's
    /// statistics give it, from the snapshot's file statistics (in memory; no I/O). A file
    /// whose values of the column are all NULL does not widen it; a file without statistics
    /// for the column leaves it unknown.
    pub fn column_range(&self, name: &str) -> Option<ColumnRange> {
        let mut ranges = match self.ranges.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        ranges
            .entry(name.to_string())
            .or_insert_with(|| self.compute_range(name))
            .clone()
    }

    fn compute_range(&self, name: &str) -> Option<ColumnRange> {
        let schema = self.inner.schema();
        let data_type = schema.field_with_name(name).ok()?.data_type();
        if !bounded_type(data_type) {
            return None;
        }
        let log = self.state.as_ref()?.log_data();
        let column = Column::from_name(name);
        let (mins, maxs) = (log.min_values(&column)?, log.max_values(&column)?);
        range_of(
            &mins,
            &maxs,
            log.null_counts(&column).as_ref(),
            log.row_counts().as_ref(),
            data_type,
        )
    }

    /// The snapshot the provider reads.
    pub fn state(&self) -> Option<&DeltaTableState> {
        self.state.as_ref()
    }

    /// The table's root URL.
    pub fn root(&self) -> Option<&url::Url> {
        self.root.as_ref()
    }

    /// deltalake's provider.
    pub fn inner(&self) -> &Arc<dyn TableProvider> {
        &self.inner
    }
}

fn count(array: Option<&ArrayRef>, i: usize) -> Option<i64> {
    let array = array?;
    let array = array.as_primitive_opt::<Int64Type>()?;
    array.is_valid(i).then(|| array.value(i))
}

/// The range over files `mins[i]..=maxs[i]`, cast to `data_type`; `None` when a file's bounds
/// are missing and its values are not all NULL, or when nothing is known.
fn range_of(
    mins: &ArrayRef,
    maxs: &ArrayRef,
    nulls: Option<&ArrayRef>,
    rows: Option<&ArrayRef>,
    data_type: &DataType,
) -> Option<ColumnRange> {
    if mins.len() != maxs.len() {
        return None;
    }
    let mut range: Option<ColumnRange> = None;
    for i in 0..mins.len() {
        if mins.is_null(i) || maxs.is_null(i) {
            let all_null =
                matches!((count(nulls, i), count(rows, i)), (Some(n), Some(r)) if n == r);
            if all_null {
                continue;
            }
            return None;
        }
        let lo = ScalarValue::try_from_array(mins, i)
            .ok()?
            .cast_to(data_type)
            .ok()?;
        let hi = ScalarValue::try_from_array(maxs, i)
            .ok()?
            .cast_to(data_type)
            .ok()?;
        range = Some(match range {
            None => (lo, hi),
            Some((min, max)) => (
                if lo.partial_cmp(&min)? == Ordering::Less {
                    lo
                } else {
                    min
                },
                if hi.partial_cmp(&max)? == Ordering::Greater {
                    hi
                } else {
                    max
                },
            ),
        });
    }
    range
}

#[async_trait]
impl TableProvider for WarehouseTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.inner.get_table_definition()
    }

    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        self.inner.get_logical_plan()
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.inner.get_column_default(column)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.insert_into(state, input, insert_op).await
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.delete_from(state, filters).await
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.update(state, assignments, filters).await
    }

    async fn truncate(&self, state: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.truncate(state).await
    }

    async fn merge_into(
        &self,
        state: &dyn Session,
        source: Arc<dyn ExecutionPlan>,
        merge_schema: DFSchemaRef,
        on: Expr,
        clauses: Vec<MergeIntoClause>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner
            .merge_into(state, source, merge_schema, on, clauses)
            .await
    }
}

/// `provider` as a warehouse table, if it is one.
pub fn as_warehouse_table(provider: &Arc<dyn TableProvider>) -> Option<&WarehouseTable> {
    (provider.as_ref() as &dyn Any).downcast_ref::<WarehouseTable>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};

    fn ts(values: Vec<Option<i64>>) -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(values))
    }

    #[test]
    fn ranges_span_every_file_and_skip_all_null_ones() {
        let t = DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None);
        let mins = ts(vec![Some(50), None, Some(10)]);
        let maxs = ts(vec![Some(90), None, Some(60)]);
        let rows: ArrayRef = Arc::new(Int64Array::from(vec![5, 3, 4]));
        let all_null: ArrayRef = Arc::new(Int64Array::from(vec![0, 3, 1]));
        let (lo, hi) = range_of(&mins, &maxs, Some(&all_null), Some(&rows), &t).unwrap();
        assert_eq!(lo, ScalarValue::TimestampMicrosecond(Some(10), None));
        assert_eq!(hi, ScalarValue::TimestampMicrosecond(Some(90), None));
        // The middle file has values but no statistics: nothing is known.
        let some_null: ArrayRef = Arc::new(Int64Array::from(vec![0, 1, 1]));
        assert!(range_of(&mins, &maxs, Some(&some_null), Some(&rows), &t).is_none());
        assert!(range_of(&mins, &maxs, None, None, &t).is_none());
        // No files: nothing is known.
        let empty = ts(vec![]);
        assert!(range_of(&empty, &empty, None, None, &t).is_none());
    }
}
