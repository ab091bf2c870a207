//! Step 3, the plan: [`AsOfRule`], an analyzer rule, finds each marker in a `Filter`, replaces
//! the join it names with the [`AsOfJoin`](crate::asof::AsOfJoin) node (see `lower.rs`), and
//! removes the marker. [`AsOfMarker`] is the marker function itself, registered so that
//! DataFusion plans the marked query; it is never run.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, plan_datafusion_err, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    ColumnarValue, Expr, Filter, Join, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

use super::MARKER;
use super::lower::{literal_string, lower_join};

/// The marker function. It is never executed: [`AsOfRule`] removes every call to it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AsOfMarker {
    signature: Signature,
}

impl Default for AsOfMarker {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for AsOfMarker {
    fn name(&self) -> &str {
        MARKER
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        plan_err!(
            "ASOF JOIN could not be planned here: as-of joins must be in the FROM clause of a \
             SELECT"
        )
    }
}

/// The marker as a DataFusion function, for registering with a session.
pub fn marker_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(AsOfMarker::default())
}

fn is_marker(expr: &Expr) -> bool {
    matches!(expr, Expr::ScalarFunction(ScalarFunction { func, .. }) if func.name() == MARKER)
}

/// Replaces marked joins with [`AsOfJoin`](crate::asof::AsOfJoin) nodes.
#[derive(Debug, Default)]
pub struct AsOfRule;

impl AnalyzerRule for AsOfRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(lower_filter)
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "pitlake_asof_join"
    }
}

fn lower_filter(node: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Filter(filter) = node else {
        return Ok(Transformed::no(node));
    };
    let has_marker = split_conjunction_owned(filter.predicate.clone())
        .iter()
        .any(is_marker);
    if !has_marker {
        return Ok(Transformed::no(LogicalPlan::Filter(filter)));
    }
    let (markers, rest): (Vec<Expr>, Vec<Expr>) = split_conjunction_owned(filter.predicate)
        .into_iter()
        .partition(is_marker);
    let mut input = filter.input;
    for marker in markers {
        let Expr::ScalarFunction(call) = marker else {
            continue;
        };
        input = Arc::new(replace_join(Arc::unwrap_or_clone(input), &call.args)?);
    }
    let plan = match conjunction(rest) {
        Some(predicate) => LogicalPlan::Filter(Filter::try_new(predicate, input)?),
        None => Arc::unwrap_or_clone(input),
    };
    Ok(Transformed::yes(plan))
}

/// Finds the join whose right input is the relation `alias` and lowers it.
fn replace_join(plan: LogicalPlan, args: &[Expr]) -> Result<LogicalPlan> {
    let alias = args
        .first()
        .and_then(literal_string)
        .ok_or_else(|| plan_datafusion_err!("as-of marker without its relation"))?;
    let mut found = false;
    let plan = plan
        .transform_down(|node| {
            if found {
                return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
            }
            match node {
                LogicalPlan::Join(join) if right_is(&join, &alias) => {
                    found = true;
                    let lowered = lower_join(join, args)?;
                    Ok(Transformed::new(lowered, true, TreeNodeRecursion::Jump))
                }
                // The join is in this SELECT's FROM, not inside a nested query.
                LogicalPlan::SubqueryAlias(_) => {
                    Ok(Transformed::new(node, false, TreeNodeRecursion::Jump))
                }
                other => Ok(Transformed::no(other)),
            }
        })?
        .data;
    if !found {
        return plan_err!("ASOF JOIN with `{alias}` could not be matched to its join");
    }
    Ok(plan)
}

fn right_is(join: &Join, alias: &str) -> bool {
    let schema = join.right.schema();
    !schema.fields().is_empty()
        && schema
            .iter()
            .all(|(q, _)| q.is_some_and(|q| q.table() == alias))
}
