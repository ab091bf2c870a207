//! `AGGREGATES (…)` in the plan: [`WindowMarker`] is the function that stands for one aggregate
//! in the window join's right relation (step 2 wrapped the relation as `SELECT r.*,
//! __pitlake_window(…) AS name, … FROM r`), typed as the aggregate's result so the query around
//! it plans; [`take_aggregates`] takes the calls out of that relation again in step 3.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, plan_datafusion_err, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

use super::WINDOW_MARKER;
use crate::asof::window::AggFunction;

/// The window aggregate marker: `__pitlake_window('function', star, argument, k, width)`. Never
/// run: step 3 removes every call.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowMarker {
    signature: Signature,
}

impl Default for WindowMarker {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn utf8(value: Option<&ScalarValue>) -> Option<String> {
    match value? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

/// `last(x, k)`'s `k` from its literal: a whole number, or `None` when not given.
fn count_of(value: Option<&ScalarValue>, function: &str) -> Result<Option<usize>> {
    match value {
        None => plan_err!("{function}(x, k): k must be a constant whole number"),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => {
            let k = v.cast_to(&DataType::Int64).ok().and_then(|v| match v {
                ScalarValue::Int64(Some(k)) => usize::try_from(k).ok(),
                _ => None,
            });
            match k {
                Some(k) if v.data_type().is_integer() => Ok(Some(k)),
                _ => plan_err!("{function}(x, k): k must be a whole number from 1 on, not {v}"),
            }
        }
    }
}

/// The function, whether its argument was `*`, and `k`, from the marker's constant arguments.
fn function_of(scalars: &[Option<&ScalarValue>]) -> Result<(AggFunction, Option<usize>)> {
    let [name, star, _, k, ..] = scalars else {
        return plan_err!("window marker has {} arguments", scalars.len());
    };
    let name = utf8(*name).ok_or_else(|| plan_datafusion_err!("window marker without a name"))?;
    let star = matches!(star, Some(ScalarValue::Boolean(Some(true))));
    let function = AggFunction::from_name(&name, star)?;
    Ok((function, count_of(*k, &name)?))
}

impl ScalarUDFImpl for WindowMarker {
    fn name(&self) -> &str {
        WINDOW_MARKER
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("the window marker is typed from its arguments")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let (function, k) = function_of(args.scalar_arguments)?;
        let arg = args
            .arg_fields
            .get(2)
            .map(|f| f.data_type())
            .filter(|_| function.takes_argument());
        let output = function.output_type(arg, k)?;
        Ok(Arc::new(Field::new(self.name(), output, true)))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        plan_err!("AGGREGATES could not be planned here: a window join must be in a FROM clause")
    }
}

/// The marker as a DataFusion function, for registering with a session.
pub fn window_marker_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(WindowMarker::default())
}

/// One aggregate as written, before its width is checked against the times.
pub(super) struct RawAggregate {
    pub name: String,
    pub function: AggFunction,
    pub arg: Option<Expr>,
    pub k: Option<usize>,
    pub width: Expr,
}

fn literal(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

/// If `right` is a window relation (`SELECT r.*, __pitlake_window(…) AS n, … FROM r` under its
/// alias), its inner relation and the aggregates; otherwise `right` unchanged and none.
pub(super) fn take_aggregates(
    right: Arc<LogicalPlan>,
) -> Result<(Arc<LogicalPlan>, Vec<RawAggregate>)> {
    let LogicalPlan::SubqueryAlias(alias) = right.as_ref() else {
        return Ok((right, Vec::new()));
    };
    let LogicalPlan::Projection(projection) = alias.input.as_ref() else {
        return Ok((right, Vec::new()));
    };
    let mut aggregates = Vec::new();
    for expr in &projection.expr {
        let Expr::Alias(named) = expr else { continue };
        let Expr::ScalarFunction(ScalarFunction { func, args }) = named.expr.as_ref() else {
            continue;
        };
        if func.name() != WINDOW_MARKER {
            continue;
        }
        let scalars: Vec<Option<&ScalarValue>> = args.iter().map(literal).collect();
        let (function, k) = function_of(&scalars)?;
        let [_, _, arg, _, width] = args.as_slice() else {
            return plan_err!("window marker has {} arguments", args.len());
        };
        aggregates.push(RawAggregate {
            name: named.name.clone(),
            function,
            arg: function.takes_argument().then(|| arg.clone()),
            k,
            width: width.clone(),
        });
    }
    if aggregates.is_empty() {
        return Ok((right, Vec::new()));
    }
    Ok((projection.input.clone(), aggregates))
}
