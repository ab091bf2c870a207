//! Pruning the right input of an as-of join to the times and keys the left can reach.
//!
//! A backward join (`l.t >= r.t`) never uses a right row later than the latest left time, and
//! with a tolerance `d` never one earlier than the earliest left time minus `d`; a forward join
//! mirrors this. When the left's time is a column of a warehouse table (through aliases,
//! projections, filters, sorts, limits and other as-of joins' left sides), the Delta log's
//! per-file statistics bound it, and [`AsOfRangePruning`] puts that range as a filter on the
//! right input. DataFusion's filter pushdown then hands the filter to the right's Delta scan,
//! which skips the files (and Parquet row groups) outside it: training on last quarter's labels
//! reads last quarter's features (and, with a TTL, not much before), not the whole history.
//!
//! Integer, date and timestamp keys get the same treatment: a right row whose key is outside
//! the range of the left's keys never matches. A bound that the right's own statistics already
//! meet is left out: it would prune nothing and still cost a Parquet row filter.
//!
//! The ranges are supersets of the left's values (filters below only narrow them), so the
//! answer never changes. Timestamps are widened by one millisecond on each side, since Delta
//! keeps timestamp statistics at millisecond precision.

use std::sync::Arc;

use arrow::array::Array;
use arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{
    Expr, Extension, Filter, LogicalPlan, UserDefinedLogicalNodeCore, lit,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::kernel::Direction;
use super::logical::AsOfJoin;
use super::tolerance::tolerance_bound;

/// The least and greatest value of a column, as far as a table's statistics know them exactly.
pub type ColumnRange = (ScalarValue, ScalarValue);

/// What pruning (and plan serialization) needs to know of the tables a plan scans. `asof` knows
/// no storage: the engine injects the warehouse's answers.
pub trait TableFacts: std::fmt::Debug + Send + Sync {
    /// Whether statistics of columns of this type give exact bounds (not floats, whose
    /// statistics may ignore NaN, nor strings, whose statistics may be truncated).
    fn exact_ranges(&self, data_type: &DataType) -> bool;

    /// The range of `column`'s values in the table behind `provider`, if its statistics tell.
    fn column_range(&self, provider: &Arc<dyn TableProvider>, column: &str) -> Option<ColumnRange>;

    /// The provider a plan serializes in place of `provider`, when `provider` only wraps one
    /// for planning (its ranges are a planning aid, used up by the time a plan is encoded).
    fn serialized(&self, provider: &Arc<dyn TableProvider>) -> Option<Arc<dyn TableProvider>>;
}

/// The logical optimizer rule that filters each as-of join's right input to the left's time
/// and key ranges (see the module documentation).
#[derive(Debug)]
pub struct AsOfRangePruning {
    facts: Arc<dyn TableFacts>,
}

impl AsOfRangePruning {
    /// The rule, reading ranges through `facts`.
    pub fn new(facts: Arc<dyn TableFacts>) -> Self {
        Self { facts }
    }
}

impl OptimizerRule for AsOfRangePruning {
    fn name(&self) -> &str {
        "asof_range_pruning"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Extension(extension) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let Some(join) = extension.node.as_any().downcast_ref::<AsOfJoin>() else {
            return Ok(Transformed::no(plan));
        };
        if join.right_pruned {
            return Ok(Transformed::no(plan));
        }
        let Some(predicate) = right_filter(self.facts.as_ref(), join)? else {
            return Ok(Transformed::no(plan));
        };
        let right = LogicalPlan::Filter(Filter::try_new(predicate, join.right.clone())?);
        let mut pruned =
            join.with_exprs_and_inputs(join.expressions(), vec![(*join.left).clone(), right])?;
        pruned.right_pruned = true;
        Ok(Transformed::yes(LogicalPlan::Extension(Extension {
            node: Arc::new(pruned),
        })))
    }
}

/// The range of `column` (of `plan`'s output) from the statistics of the warehouse table it
/// comes from, if it comes from one unchanged.
fn column_range(
    facts: &dyn TableFacts,
    plan: &LogicalPlan,
    column: &Column,
) -> Option<ColumnRange> {
    let index = plan.schema().index_of_column(column).ok()?;
    let pass_through = |input: &LogicalPlan| {
        let (qualifier, field) = input.schema().qualified_field(index);
        column_range(facts, input, &Column::new(qualifier.cloned(), field.name()))
    };
    match plan {
        LogicalPlan::TableScan(scan) => {
            let provider = source_as_provider(&scan.source).ok()?;
            let field = scan.projected_schema.field(index);
            facts.column_range(&provider, field.name())
        }
        LogicalPlan::SubqueryAlias(alias) => pass_through(&alias.input),
        LogicalPlan::Filter(filter) => pass_through(&filter.input),
        LogicalPlan::Sort(sort) => pass_through(&sort.input),
        LogicalPlan::Limit(limit) => pass_through(&limit.input),
        LogicalPlan::Repartition(repartition) => pass_through(&repartition.input),
        LogicalPlan::Projection(projection) => {
            let mut expr = projection.expr.get(index)?;
            while let Expr::Alias(alias) = expr {
                expr = &alias.expr;
            }
            match expr {
                Expr::Column(inner) => column_range(facts, &projection.input, inner),
                _ => None,
            }
        }
        LogicalPlan::Extension(extension) => {
            // Another as-of join keeps its left rows (or a subset) and their values.
            let join = extension.node.as_any().downcast_ref::<AsOfJoin>()?;
            if index >= join.left.schema().fields().len() {
                return None;
            }
            pass_through(&join.left)
        }
        _ => None,
    }
}

/// `value` moved by one millisecond (down when `down`) if it is a timestamp.
fn widen(value: ScalarValue, down: bool) -> ScalarValue {
    let shift = |v: i64, by: i64| {
        if down {
            v.saturating_sub(by)
        } else {
            v.saturating_add(by)
        }
    };
    match value {
        ScalarValue::TimestampSecond(Some(v), tz) => {
            ScalarValue::TimestampSecond(Some(shift(v, 1)), tz)
        }
        ScalarValue::TimestampMillisecond(Some(v), tz) => {
            ScalarValue::TimestampMillisecond(Some(shift(v, 1)), tz)
        }
        ScalarValue::TimestampMicrosecond(Some(v), tz) => {
            ScalarValue::TimestampMicrosecond(Some(shift(v, 1_000)), tz)
        }
        ScalarValue::TimestampNanosecond(Some(v), tz) => {
            ScalarValue::TimestampNanosecond(Some(shift(v, 1_000_000)), tz)
        }
        other => other,
    }
}

/// `value` moved by the join's tolerance in its direction (`l.t - d` backward, `l.t + d`
/// forward), saturating; `None` without a tolerance.
fn shifted_by_tolerance(join: &AsOfJoin, value: &ScalarValue) -> Result<Option<ScalarValue>> {
    let Some(tolerance) = &join.tolerance else {
        return Ok(None);
    };
    let array = value.to_array()?;
    let bound = tolerance_bound(&array, tolerance, join.op.spec().direction)?;
    if bound.is_null(0) {
        return Ok(None);
    }
    Ok(Some(ScalarValue::try_from_array(&bound, 0)?))
}

/// The range of `expr` over the left's rows, if it is a column whose warehouse statistics give
/// one of its own type.
fn left_range(facts: &dyn TableFacts, join: &AsOfJoin, expr: &Expr) -> Result<Option<ColumnRange>> {
    let Expr::Column(column) = expr else {
        return Ok(None);
    };
    let (_, field) = join.left.schema().qualified_field_from_column(column)?;
    let data_type = field.data_type();
    if !facts.exact_ranges(data_type) {
        return Ok(None);
    }
    Ok(column_range(facts, &join.left, column)
        .filter(|(min, max)| &min.data_type() == data_type && &max.data_type() == data_type))
}

/// Whether `right >= lo` (`at_least`) or `right <= hi` would keep every right row anyway, by
/// the right's own statistics: such a filter prunes nothing, and costs a Parquet row filter.
fn redundant(
    facts: &dyn TableFacts,
    join: &AsOfJoin,
    right: &Expr,
    bound: &ScalarValue,
    at_least: bool,
) -> bool {
    let Expr::Column(column) = right else {
        return false;
    };
    let Some((min, max)) = column_range(facts, &join.right, column) else {
        return false;
    };
    if min.data_type() != bound.data_type() || max.data_type() != bound.data_type() {
        return false;
    }
    if at_least {
        widen(min, true) >= *bound
    } else {
        widen(max, false) <= *bound
    }
}

/// The filter on the right input that keeps the rows some left row could match: the time range
/// (see the module documentation) and the range of each integer, date or timestamp key (a key
/// outside the left's never matches; keys compared with `IS NOT DISTINCT FROM` are left alone,
/// as their NULLs match). Bounds the right's own statistics already satisfy are left out.
fn right_filter(facts: &dyn TableFacts, join: &AsOfJoin) -> Result<Option<Expr>> {
    // (right expression, bound, whether it is a lower bound)
    let mut bounds: Vec<(Expr, ScalarValue, bool)> = Vec::new();
    if let Some((min, max)) = left_range(facts, join, &join.left_time)? {
        let (min, max) = (widen(min, true), widen(max, false));
        let (lower, upper) = match join.op.spec().direction {
            Direction::Backward => (shifted_by_tolerance(join, &min)?, Some(max)),
            Direction::Forward => (Some(min), shifted_by_tolerance(join, &max)?),
        };
        bounds.extend(lower.map(|lo| (join.right_time.clone(), lo, true)));
        bounds.extend(upper.map(|hi| (join.right_time.clone(), hi, false)));
    }
    for ((left, right), null_equal) in join.on.iter().zip(&join.null_equal) {
        if *null_equal {
            continue;
        }
        if let Some((min, max)) = left_range(facts, join, left)? {
            bounds.push((right.clone(), widen(min, true), true));
            bounds.push((right.clone(), widen(max, false), false));
        }
    }
    Ok(bounds
        .into_iter()
        .filter(|(right, bound, at_least)| !redundant(facts, join, right, bound, *at_least))
        .map(|(right, bound, at_least)| {
            if at_least {
                right.gt_eq(lit(bound))
            } else {
                right.lt_eq(lit(bound))
            }
        })
        .reduce(Expr::and))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_widen_by_a_millisecond_in_their_unit() {
        let tz: Option<Arc<str>> = Some("UTC".into());
        assert_eq!(
            widen(
                ScalarValue::TimestampMicrosecond(Some(5_000), tz.clone()),
                false
            ),
            ScalarValue::TimestampMicrosecond(Some(6_000), tz.clone())
        );
        assert_eq!(
            widen(
                ScalarValue::TimestampNanosecond(Some(i64::MIN + 1), None),
                true
            ),
            ScalarValue::TimestampNanosecond(Some(i64::MIN), None)
        );
        assert_eq!(
            widen(ScalarValue::Int64(Some(7)), true),
            ScalarValue::Int64(Some(7))
        );
    }
}
