//! Lowering one marked join: the `LEFT JOIN` that step 2 made, with the marker's arguments,
//! becomes an [`AsOfJoin`] node. Its keys come from `ON` or `USING`, its match condition from
//! `MATCH_CONDITION`, the DuckDB form's `ON` or the last `USING` column; the clauses become the
//! tolerance, the knowledge time (cast to the times' type) and the tie-break order.

use std::sync::Arc;

use arrow::datatypes::{DataType, IntervalMonthDayNano};
use datafusion::common::{
    Column, DFSchema, NullEquality, Result, ScalarValue, TableReference, plan_datafusion_err,
    plan_err,
};
use datafusion::logical_expr::expr::Sort;
use datafusion::logical_expr::utils::split_conjunction_owned;
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprSchemable, Extension, Join, LogicalPlan, Operator, Projection,
    UserDefinedLogicalNodeCore,
};

use super::window::take_aggregates;
use crate::asof::window::WindowAggregate;
use crate::asof::{AsOfJoin, AsOfJoinType, AsOfOperator, Tolerance};

const ALLOWED: &str = "an ASOF JOIN's ON may hold only equalities between the two sides \
                       (l.k = r.k, l.k IS NOT DISTINCT FROM r.k) and, in the DuckDB form, one \
                       match condition (l.t >= r.t, >, <= or <)";

/// A match condition oriented as `left OP right`.
type MatchCondition = (Expr, AsOfOperator, Expr);

/// Lowers the marked `join` with the marker's arguments `args` to an [`AsOfJoin`] node.
pub(super) fn lower_join(join: Join, args: &[Expr]) -> Result<LogicalPlan> {
    let args = MarkerArgs::parse(args)?;
    let (left, right) = (join.left.schema().clone(), join.right.schema().clone());
    let snowflake = args.form == "snowflake";
    let join_type = match (args.kind.as_str(), snowflake) {
        ("left", _) | ("default", true) => AsOfJoinType::Left,
        _ => AsOfJoinType::Inner,
    };
    let mut condition = JoinCondition::default();
    let pairs_null_equal = join.null_equality == NullEquality::NullEqualsNull;
    for (l, r) in join.on {
        condition.keys.push((l, r));
        condition.null_equal.push(pairs_null_equal);
    }
    if snowflake {
        condition.matched = Some(snowflake_condition(args.condition, &left, &right)?);
    }
    if !args.using_time.is_empty() {
        condition.matched = Some(using_condition(&args.using_time, &left, &right)?);
    }
    let on_may_match = !snowflake && args.using_time.is_empty();
    for conjunct in join.filter.map(split_conjunction_owned).unwrap_or_default() {
        condition.add_conjunct(conjunct, on_may_match, &left, &right)?;
    }
    let JoinCondition {
        keys,
        null_equal,
        matched,
    } = condition;
    let Some((left_time, op, right_time)) = matched else {
        return plan_err!(
            "this ASOF JOIN has no match condition; add `l.t >= r.t` (or >, <=, <) to ON, or \
             use MATCH_CONDITION (l.t >= r.t)"
        );
    };

    let time_type = left_time.get_type(&left)?;
    let tolerance = if is_null_literal(args.tolerance) {
        None
    } else {
        Some(to_tolerance(args.tolerance, &time_type, "TOLERANCE")?)
    };
    let known_at = known_at(args.known, &time_type, &left, &right)?;
    let sorts = tiebreak_sorts(args.tiebreak)?;
    let (window_right, raw) = take_aggregates(join.right.clone())?;
    if raw.is_empty() {
        let node = AsOfJoin::try_new(
            join.left, join.right, keys, null_equal, left_time, right_time, op, join_type,
            tolerance, sorts, known_at,
        )?;
        return Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        }));
    }
    // A window join keeps every left row unless INNER is written (which it refuses).
    let join_type = match args.kind.as_str() {
        "inner" => AsOfJoinType::Inner,
        _ => AsOfJoinType::Left,
    };
    let aggregates = raw
        .into_iter()
        .map(|raw| {
            let what = format!("the window of `{}` (OVER …)", raw.name);
            Ok(WindowAggregate {
                width: to_tolerance(&raw.width, &time_type, &what)?,
                name: raw.name,
                function: raw.function,
                arg: raw.arg,
                k: raw.k,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let node = AsOfJoin::try_new(
        join.left.clone(),
        window_right,
        keys,
        null_equal,
        left_time,
        right_time,
        op,
        join_type,
        tolerance,
        sorts,
        known_at,
    )?
    .with_aggregates(aggregates, Some(TableReference::bare(args.alias.clone())))?;
    restore_join_schema(node, &join.schema, left.fields().len())
}

/// A projection over the window join `node` with the schema of the `LEFT JOIN` it replaces
/// (`schema`, whose first `left_len` fields are the left's): the right relation's own columns are
/// NULL (a window has no one row to take them from), its aggregates are the node's.
fn restore_join_schema(node: AsOfJoin, schema: &DFSchema, left_len: usize) -> Result<LogicalPlan> {
    let produced = node.schema().clone();
    let plan = LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    });
    let exprs = schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            let column = Column::new(qualifier.cloned(), field.name());
            if i < left_len || produced.has_column(&column) {
                Ok(Expr::Column(column))
            } else {
                Ok(
                    Expr::Literal(ScalarValue::try_from(field.data_type())?, None)
                        .alias_qualified(qualifier.cloned(), field.name()),
                )
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(plan),
    )?))
}

/// A marker call's arguments: those step 2 added, then those step 1 wrote.
struct MarkerArgs<'a> {
    /// The right relation's alias.
    alias: String,
    /// The time column of the DuckDB form's `USING (k, …, t)`, or empty.
    using_time: String,
    /// The join type as written: `left`, `inner` or `default`.
    kind: String,
    /// `snowflake` or `duckdb`.
    form: String,
    /// `MATCH_CONDITION`'s comparison (`TRUE` in the DuckDB form).
    condition: &'a Expr,
    /// `TOLERANCE`, or a NULL literal.
    tolerance: &'a Expr,
    /// `KNOWN AT`, or a NULL literal.
    known: &'a Expr,
    /// `TIEBREAK BY`: pairs of an expression and its order (`'DESC NULLS LAST'`).
    tiebreak: &'a [Expr],
}

impl<'a> MarkerArgs<'a> {
    fn parse(args: &'a [Expr]) -> Result<Self> {
        // args: alias, using-time column, kind, form, condition, tolerance, known, tiebreak pairs…
        let [
            alias,
            using_time,
            kind,
            form,
            condition,
            tolerance,
            known,
            tiebreak @ ..,
        ] = args
        else {
            return plan_err!("as-of marker has {} arguments", args.len());
        };
        Ok(Self {
            alias: literal_string(alias).unwrap_or_default(),
            using_time: literal_string(using_time).unwrap_or_default(),
            kind: literal_string(kind).unwrap_or_default(),
            form: literal_string(form).unwrap_or_default(),
            condition,
            tolerance,
            known,
            tiebreak,
        })
    }
}

/// An as-of join's equality keys and match condition, gathered from its clauses.
#[derive(Default)]
struct JoinCondition {
    keys: Vec<(Expr, Expr)>,
    /// Per key: `IS NOT DISTINCT FROM`.
    null_equal: Vec<bool>,
    matched: Option<MatchCondition>,
}

impl JoinCondition {
    /// Adds one conjunct of the join's `ON`: an equality between the sides is a key; a
    /// comparison is the match condition when `on_may_match` (the DuckDB form without `USING`)
    /// and none was found yet; anything else is refused.
    fn add_conjunct(
        &mut self,
        conjunct: Expr,
        on_may_match: bool,
        left: &DFSchema,
        right: &DFSchema,
    ) -> Result<()> {
        match conjunct {
            Expr::Literal(ScalarValue::Boolean(Some(true)), _) => {}
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op,
                right: b,
            }) if matches!(op, Operator::Eq | Operator::IsNotDistinctFrom) => {
                let (a, _, b) = orient(*a, AsOfOperator::GtEq, *b, left, right).map_err(|_| {
                    plan_datafusion_err!("{ALLOWED}; `{op}` here does not compare the two sides")
                })?;
                self.keys.push((a, b));
                self.null_equal.push(op == Operator::IsNotDistinctFrom);
            }
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op,
                right: b,
            }) if comparison(op).is_some() && on_may_match => {
                if self.matched.is_some() {
                    return plan_err!("{ALLOWED}; this ON has a second inequality `{a} {op} {b}`");
                }
                let op = comparison(op).ok_or_else(|| plan_datafusion_err!("{ALLOWED}"))?;
                self.matched = Some(orient(*a, op, *b, left, right)?);
            }
            other => return plan_err!("{ALLOWED}; found `{other}`"),
        }
        Ok(())
    }
}

/// The match condition written in `MATCH_CONDITION (…)`: one comparison between the sides.
fn snowflake_condition(
    condition: &Expr,
    left: &DFSchema,
    right: &DFSchema,
) -> Result<MatchCondition> {
    let Expr::BinaryExpr(BinaryExpr {
        left: a,
        op,
        right: b,
    }) = condition
    else {
        return plan_err!(
            "MATCH_CONDITION ({condition}) must be one comparison l.t >= r.t (or >, <=, <)"
        );
    };
    match comparison(*op) {
        Some(op) => orient(*a.clone(), op, *b.clone(), left, right),
        None if *op == Operator::Eq => plan_err!(
            "`{condition}`: `=` is not an as-of match condition; use >= (the latest right row at \
             or before the left time), >, <= or <"
        ),
        None => plan_err!(
            "MATCH_CONDITION ({condition}) must be one comparison l.t >= r.t (or >, <=, <)"
        ),
    }
}

/// The match condition of the DuckDB form's `USING (k, …, t)`: `l.t >= r.t`.
fn using_condition(column: &str, left: &DFSchema, right: &DFSchema) -> Result<MatchCondition> {
    let (lq, lf) = left.qualified_field_with_unqualified_name(column)?;
    let (rq, rf) = right.qualified_field_with_unqualified_name(column)?;
    Ok((
        Expr::Column(Column::new(lq.cloned(), lf.name())),
        AsOfOperator::GtEq,
        Expr::Column(Column::new(rq.cloned(), rf.name())),
    ))
}

/// The `KNOWN AT` expression (`None` for a NULL literal), cast to the times' type when SQL
/// would coerce it so: it is compared with the left time, as the two sides of the match
/// condition are.
fn known_at(
    known: &Expr,
    time_type: &DataType,
    left: &DFSchema,
    right: &DFSchema,
) -> Result<Option<Expr>> {
    if is_null_literal(known) {
        return Ok(None);
    }
    if sides(known, left, right).0 {
        // Reads the left side: `AsOfJoin::try_new` refuses it with the reason.
        return Ok(Some(known.clone()));
    }
    let known_type = known.get_type(right)?;
    let coercible = matches!(
        (&known_type, time_type),
        (DataType::Timestamp(_, a), DataType::Timestamp(_, b)) if a.is_some() == b.is_some()
    ) || (known_type.is_integer() && time_type.is_integer())
        || (known_type.is_numeric() && time_type.is_floating())
        // A date is its midnight, as SQL compares a date with a timestamp.
        || (matches!(known_type, DataType::Date32 | DataType::Date64)
            && matches!(
                time_type,
                DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
            ));
    Ok(Some(if known_type != *time_type && coercible {
        known.clone().cast_to(time_type, right)?
    } else {
        known.clone()
    }))
}

/// The `TIEBREAK BY` order from the marker's (expression, `'ASC NULLS LAST'`) pairs.
fn tiebreak_sorts(pairs: &[Expr]) -> Result<Vec<Sort>> {
    let mut sorts = Vec::new();
    for pair in pairs.chunks(2) {
        let [expr, order] = pair else {
            return plan_err!("as-of marker: an odd tie-break list");
        };
        let order = literal_string(order).unwrap_or_default();
        sorts.push(Sort::new(
            expr.clone(),
            order.starts_with("ASC"),
            order.ends_with("FIRST"),
        ));
    }
    Ok(sorts)
}

fn is_null_literal(expr: &Expr) -> bool {
    matches!(expr, Expr::Literal(v, _) if v.is_null())
}

/// Which sides an expression reads: (left, right).
fn sides(expr: &Expr, left: &DFSchema, right: &DFSchema) -> (bool, bool) {
    let mut l = false;
    let mut r = false;
    for c in expr.column_refs() {
        if left.has_column(c) {
            l = true;
        }
        if right.has_column(c) {
            r = true;
        }
    }
    (l, r)
}

fn comparison(op: Operator) -> Option<AsOfOperator> {
    match op {
        Operator::GtEq => Some(AsOfOperator::GtEq),
        Operator::Gt => Some(AsOfOperator::Gt),
        Operator::LtEq => Some(AsOfOperator::LtEq),
        Operator::Lt => Some(AsOfOperator::Lt),
        _ => None,
    }
}

/// Orients `a OP b` as (left, op, right), or says why it cannot be.
fn orient(
    a: Expr,
    op: AsOfOperator,
    b: Expr,
    left: &DFSchema,
    right: &DFSchema,
) -> Result<MatchCondition> {
    let (al, ar) = sides(&a, left, right);
    let (bl, br) = sides(&b, left, right);
    match ((al, ar), (bl, br)) {
        ((true, false), (false, true)) => Ok((a, op, b)),
        ((false, true), (true, false)) => Ok((b, op.swap(), a)),
        _ => plan_err!(
            "the as-of condition `{a} {} {b}` must compare an expression of the left input with \
             one of the right input",
            op.symbol()
        ),
    }
}

/// Evaluates a `TOLERANCE` expression (a constant) into a [`Tolerance`] for times of
/// `time_type`.
fn to_tolerance(expr: &Expr, time_type: &DataType, what: &str) -> Result<Tolerance> {
    let value = match expr {
        Expr::Literal(value, _) => value.clone(),
        Expr::Negative(inner) => match inner.as_ref() {
            Expr::Literal(value, _) => value.arithmetic_negate()?,
            _ => return plan_err!("{what} {expr} must be a constant"),
        },
        Expr::Cast(cast) => match cast.expr.as_ref() {
            Expr::Literal(value, _) => value.cast_to(cast.field.data_type())?,
            _ => return plan_err!("{what} {expr} must be a constant"),
        },
        other => {
            return plan_err!("{what} {other} must be a constant such as INTERVAL '7 days'");
        }
    };
    let temporal = matches!(
        time_type,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
    );
    let nanos = |months: i64, days: i64, nanos: i128| -> Result<Tolerance> {
        if months != 0 {
            return plan_err!(
                "{what} {value}: months and years have no fixed length; give days (e.g. \
                 INTERVAL '30 days')"
            );
        }
        let total = i128::from(days) * 86_400_000_000_000 + nanos;
        if total < 0 {
            return plan_err!("{what} must be zero or positive, not {value}");
        }
        Ok(Tolerance::Duration(total))
    };
    match &value {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano {
            months,
            days,
            nanoseconds,
        })) => nanos((*months).into(), (*days).into(), (*nanoseconds).into()),
        ScalarValue::IntervalDayTime(Some(v)) => {
            nanos(0, v.days.into(), i128::from(v.milliseconds) * 1_000_000)
        }
        ScalarValue::IntervalYearMonth(Some(m)) => nanos((*m).into(), 0, 0),
        ScalarValue::DurationSecond(Some(s)) => nanos(0, 0, i128::from(*s) * 1_000_000_000),
        ScalarValue::DurationMillisecond(Some(s)) => nanos(0, 0, i128::from(*s) * 1_000_000),
        ScalarValue::DurationMicrosecond(Some(s)) => nanos(0, 0, i128::from(*s) * 1_000),
        ScalarValue::DurationNanosecond(Some(s)) => nanos(0, 0, i128::from(*s)),
        number if !temporal && !number.is_null() => {
            let cast = number.cast_to(time_type).map_err(|_| {
                plan_datafusion_err!(
                    "{what} {number} does not fit the as-of times' type {time_type}"
                )
            })?;
            Ok(Tolerance::Number(cast))
        }
        other if temporal => plan_err!(
            "{what} {other} is not an interval; the as-of times are {time_type}, so write \
             e.g. INTERVAL '7 days'"
        ),
        other => plan_err!("{what} {other} is not a number of the times' type {time_type}"),
    }
}

/// The value of a string literal.
pub(super) fn literal_string(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Literal(ScalarValue::Utf8(Some(s)), _)
        | Expr::Literal(ScalarValue::Utf8View(Some(s)), _)
        | Expr::Literal(ScalarValue::LargeUtf8(Some(s)), _) => Some(s.clone()),
        _ => None,
    }
}
