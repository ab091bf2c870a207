//! The as-of join as a DataFusion logical node.
//!
//! The node holds typed, coerced expressions over its two inputs; everything a user can get wrong
//! is checked in [`AsOfJoin::try_new`], so a node that exists is valid. The output is the left
//! input's columns followed by the right input's (nullable for the left-preserving join).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::{DFSchema, DFSchemaRef, Result, ScalarValue, TableReference, plan_err};
use datafusion::logical_expr::expr::Sort;
use datafusion::logical_expr::logical_plan::builder::build_join_schema;
use datafusion::logical_expr::{
    Expr, ExprSchemable, JoinType, LogicalPlan, UserDefinedLogicalNodeCore,
};

use super::kernel::{Direction, MatchSpec, supported_key_type, supported_tiebreak_type};
use super::time::{integer_or_datetime, supported_time_type};
use super::window::{MAX_LAST_K, WindowAggregate};

/// The comparison in the match condition, written as `left OP right`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AsOfOperator {
    /// `l.t >= r.t`: the latest right row at or before the left time.
    GtEq,
    /// `l.t > r.t`: the latest right row strictly before.
    Gt,
    /// `l.t <= r.t`: the earliest right row at or after.
    LtEq,
    /// `l.t < r.t`: the earliest right row strictly after.
    Lt,
}

impl AsOfOperator {
    /// The kernel's view: a direction and strictness.
    pub fn spec(self) -> MatchSpec {
        match self {
            AsOfOperator::GtEq => MatchSpec {
                direction: Direction::Backward,
                strict: false,
            },
            AsOfOperator::Gt => MatchSpec {
                direction: Direction::Backward,
                strict: true,
            },
            AsOfOperator::LtEq => MatchSpec {
                direction: Direction::Forward,
                strict: false,
            },
            AsOfOperator::Lt => MatchSpec {
                direction: Direction::Forward,
                strict: true,
            },
        }
    }

    /// The operator as SQL.
    pub fn symbol(self) -> &'static str {
        match self {
            AsOfOperator::GtEq => ">=",
            AsOfOperator::Gt => ">",
            AsOfOperator::LtEq => "<=",
            AsOfOperator::Lt => "<",
        }
    }

    /// The operator with its sides swapped (`r.t <= l.t` is `l.t >= r.t`).
    pub fn swap(self) -> Self {
        match self {
            AsOfOperator::GtEq => AsOfOperator::LtEq,
            AsOfOperator::Gt => AsOfOperator::Lt,
            AsOfOperator::LtEq => AsOfOperator::GtEq,
            AsOfOperator::Lt => AsOfOperator::Gt,
        }
    }
}

/// Which left rows the join returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AsOfJoinType {
    /// Every left row exactly once; unmatched rows get NULLs on the right.
    Left,
    /// Only matched left rows.
    Inner,
}

impl fmt::Display for AsOfJoinType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AsOfJoinType::Left => f.write_str("Left"),
            AsOfJoinType::Inner => f.write_str("Inner"),
        }
    }
}

/// How far the matched right time may be from the left time (inclusive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum Tolerance {
    /// A fixed length of time, in nanoseconds, for timestamp and date times.
    Duration(i128),
    /// A number of the time's own type, for integer and float times.
    Number(ScalarValue),
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tolerance::Number(value) => write!(f, "{value}"),
            Tolerance::Duration(nanos) => {
                const UNITS: [(i128, &str); 7] = [
                    (86_400_000_000_000, "days"),
                    (3_600_000_000_000, "hours"),
                    (60_000_000_000, "minutes"),
                    (1_000_000_000, "seconds"),
                    (1_000_000, "milliseconds"),
                    (1_000, "microseconds"),
                    (1, "nanoseconds"),
                ];
                let (unit, name) = UNITS
                    .iter()
                    .find(|(unit, _)| *nanos % unit == 0)
                    .copied()
                    .unwrap_or((1, "nanoseconds"));
                write!(f, "{} {name}", nanos / unit)
            }
        }
    }
}

/// An as-of join of two logical plans. Build it with [`AsOfJoin::try_new`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsOfJoin {
    /// The left input (labels): every row is looked up once.
    pub left: Arc<LogicalPlan>,
    /// The right input (features): the rows to match.
    pub right: Arc<LogicalPlan>,
    /// Equality keys: (left expression, right expression), same types.
    pub on: Vec<(Expr, Expr)>,
    /// Per key: `IS NOT DISTINCT FROM` (NULL equals NULL).
    pub null_equal: Vec<bool>,
    /// The left time expression.
    pub left_time: Expr,
    /// The right time expression (same type as the left one).
    pub right_time: Expr,
    /// The match condition, `left_time OP right_time`.
    pub op: AsOfOperator,
    /// Left-preserving or inner.
    pub join_type: AsOfJoinType,
    /// The tolerance, if any.
    pub tolerance: Option<Tolerance>,
    /// `TIEBREAK BY`, over the right input.
    pub tiebreak: Vec<Sort>,
    /// `KNOWN AT`, over the right input (same type as the times).
    pub known_at: Option<Expr>,
    /// Whether a filter to the left's time range was put on the right input (so it is not put
    /// there twice; see [`super::AsOfRangePruning`]).
    pub right_pruned: bool,
    /// Window aggregates (`AGGREGATES (…)`): when there are any, the join is a window join that
    /// outputs the left's columns and one column per aggregate (see [`super::window`]).
    pub aggregates: Vec<WindowAggregate>,
    schema: DFSchemaRef,
}

impl PartialOrd for AsOfJoin {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        // Plans are compared only to deduplicate; there is no meaningful order of joins.
        (self == other).then_some(Ordering::Equal)
    }
}

/// Which side an expression's columns come from.
fn side_of(expr: &Expr, left: &DFSchema, right: &DFSchema) -> (bool, bool) {
    let mut uses_left = false;
    let mut uses_right = false;
    for column in expr.column_refs() {
        if left.has_column(column) {
            uses_left = true;
        } else if right.has_column(column) {
            uses_right = true;
        }
    }
    (uses_left, uses_right)
}

/// Requires `expr` to use columns of one side only (or none) and be deterministic.
fn check_side(
    what: &str,
    expr: &Expr,
    side: &DFSchema,
    other: &DFSchema,
    side_name: &str,
) -> Result<()> {
    if expr.is_volatile() {
        return plan_err!(
            "the as-of {what} `{expr}` is volatile (it changes from call to call); as-of join \
             expressions must be deterministic"
        );
    }
    let (uses_side, uses_other) = side_of(expr, side, other);
    if uses_other {
        return plan_err!(
            "the as-of {what} `{expr}` must use only columns of the {side_name} input"
        );
    }
    let _ = uses_side;
    Ok(())
}

impl AsOfJoin {
    /// Builds and validates an as-of join. User mistakes (types that do not match, a tie-break
    /// over the left side, a volatile expression, `KNOWN AT` with a forward condition) are plan
    /// errors that say what is allowed.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per part of the join, each validated here"
    )]
    pub fn try_new(
        left: Arc<LogicalPlan>,
        right: Arc<LogicalPlan>,
        on: Vec<(Expr, Expr)>,
        null_equal: Vec<bool>,
        left_time: Expr,
        right_time: Expr,
        op: AsOfOperator,
        join_type: AsOfJoinType,
        tolerance: Option<Tolerance>,
        tiebreak: Vec<Sort>,
        known_at: Option<Expr>,
    ) -> Result<Self> {
        let (ls, rs) = (left.schema().as_ref(), right.schema().as_ref());
        if on.len() != null_equal.len() {
            return plan_err!(
                "as-of join: {} keys but {} null rules",
                on.len(),
                null_equal.len()
            );
        }
        for (l, r) in &on {
            check_side("key", l, ls, rs, "left")?;
            check_side("key", r, rs, ls, "right")?;
            let (lt, rt) = (l.get_type(ls)?, r.get_type(rs)?);
            if lt != rt {
                return plan_err!(
                    "as-of key `{l} = {r}` compares {lt} with {rt}; cast one side so both have \
                     the same type"
                );
            }
            if !supported_key_type(&lt) {
                return plan_err!(
                    "as-of key `{l}` has type {lt}, which has no equality; keys must be \
                     integers, strings, dates, timestamps, decimals, booleans, binaries or \
                     dictionaries"
                );
            }
        }
        check_side("time", &left_time, ls, rs, "left")?;
        check_side("time", &right_time, rs, ls, "right")?;
        let time_type = left_time.get_type(ls)?;
        let right_type = right_time.get_type(rs)?;
        if time_type != right_type {
            return plan_err!(
                "the as-of condition `{left_time} {} {right_time}` compares {time_type} with \
                 {right_type}; both times must have one type (cast one side)",
                op.symbol()
            );
        }
        if !supported_time_type(&time_type) {
            return plan_err!(
                "the as-of time `{left_time}` has type {time_type}; a time must be a timestamp, \
                 a date, an integer or a float"
            );
        }
        if let Some(tolerance) = &tolerance {
            check_tolerance(tolerance, &time_type)?;
        }
        for sort in &tiebreak {
            check_side("TIEBREAK BY expression", &sort.expr, rs, ls, "right")?;
            let t = sort.expr.get_type(rs)?;
            if !supported_tiebreak_type(&t) {
                return plan_err!(
                    "TIEBREAK BY `{}` has type {t}, which has no order",
                    sort.expr
                );
            }
        }
        if let Some(known) = &known_at {
            check_side("KNOWN AT expression", known, rs, ls, "right")?;
            if op.spec().direction == Direction::Forward {
                return plan_err!(
                    "KNOWN AT needs a backward match condition (>= or >): with `{}` the match \
                     is in the future, and a future value that is already known has no meaning \
                     here",
                    op.symbol()
                );
            }
            let t = known.get_type(rs)?;
            if t != time_type {
                return plan_err!(
                    "KNOWN AT `{known}` has type {t} but the as-of times are {time_type}; cast \
                     it to {time_type}"
                );
            }
        }
        // The right columns are nullable for both join types: the SQL lowering replaces a
        // `LEFT JOIN` whose schema the rest of the plan already refers to.
        let schema = Arc::new(build_join_schema(ls, rs, &JoinType::Left)?);
        Ok(Self {
            left,
            right,
            on,
            null_equal,
            left_time,
            right_time,
            op,
            join_type,
            tolerance,
            tiebreak,
            known_at,
            right_pruned: false,
            aggregates: Vec::new(),
            schema,
        })
    }

    /// Makes this join a window join with `aggregates` (over the right input), whose columns are
    /// named with `qualifier`. Refuses what a window join cannot do: an inner join, a tolerance,
    /// a forward condition, float times, an aggregate of the wrong type, a width of zero or
    /// less, or two aggregates of one name.
    pub fn with_aggregates(
        mut self,
        aggregates: Vec<WindowAggregate>,
        qualifier: Option<TableReference>,
    ) -> Result<Self> {
        if aggregates.is_empty() {
            return plan_err!("AGGREGATES needs at least one aggregate");
        }
        if self.join_type != AsOfJoinType::Left {
            return plan_err!(
                "ASOF INNER JOIN … AGGREGATES: a window join keeps every left row (a row with no \
                 right rows in its window gets count 0 and NULL for the others); write ASOF LEFT \
                 JOIN and filter afterwards"
            );
        }
        if self.tolerance.is_some() {
            return plan_err!(
                "TOLERANCE does not apply to AGGREGATES: each aggregate names its window (OVER \
                 INTERVAL '7 days')"
            );
        }
        if self.op.spec().direction != Direction::Backward {
            return plan_err!(
                "AGGREGATES needs a backward match condition: `l.t >= r.t` for windows (t - d, \
                 t] or `l.t > r.t` for [t - d, t), not `{}`",
                self.op.symbol()
            );
        }
        let time_type = self.time_type()?;
        if !integer_or_datetime(&time_type) {
            return plan_err!(
                "window times must be timestamps, dates or integers; `{}` is {time_type}",
                self.left_time
            );
        }
        let (ls, rs) = (self.left.schema().clone(), self.right.schema().clone());
        let mut fields = Vec::with_capacity(aggregates.len());
        let mut names = HashSet::new();
        for agg in &aggregates {
            if !names.insert(agg.name.as_str()) {
                return plan_err!("AGGREGATES names `{}` twice", agg.name);
            }
            let arg_type = match &agg.arg {
                Some(arg) => {
                    check_side("aggregate argument", arg, &rs, &ls, "right")?;
                    Some(arg.get_type(&rs)?)
                }
                None => None,
            };
            if let Some(k) = agg.k
                && !(1..=MAX_LAST_K).contains(&k)
            {
                return plan_err!(
                    "{}: last(x, k) takes k from 1 to {MAX_LAST_K}, not {k}",
                    agg.name
                );
            }
            let output = agg
                .function
                .output_type(arg_type.as_ref(), agg.k)
                .map_err(|e| e.context(format!("aggregate `{}`", agg.name)))?;
            check_width(&agg.width, &time_type, &agg.name)?;
            fields.push((
                qualifier.clone(),
                Arc::new(arrow::datatypes::Field::new(
                    &agg.name,
                    output,
                    agg.function.nullable(agg.k),
                )),
            ));
        }
        let mut qualified: Vec<(Option<TableReference>, arrow::datatypes::FieldRef)> =
            ls.iter().map(|(q, f)| (q.cloned(), f.clone())).collect();
        qualified.extend(fields);
        self.schema = Arc::new(DFSchema::new_with_metadata(
            qualified,
            ls.metadata().clone(),
        )?);
        self.aggregates = aggregates;
        Ok(self)
    }

    /// The type of the times.
    pub fn time_type(&self) -> Result<DataType> {
        self.left_time.get_type(self.left.schema())
    }
}

/// Checks a window's width against the time type: an interval for timestamps and dates, a
/// number for integer times, and longer than zero.
fn check_width(width: &Tolerance, time_type: &DataType, name: &str) -> Result<()> {
    check_tolerance(width, time_type).map_err(|e| {
        datafusion::error::DataFusionError::Plan(
            e.strip_backtrace()
                .replace("TOLERANCE", &format!("the window of `{name}`"))
                .trim_start_matches("Error during planning: ")
                .to_string(),
        )
    })?;
    let zero = match width {
        Tolerance::Duration(nanos) => *nanos == 0,
        Tolerance::Number(value) => value.is_null() || value == &ScalarValue::new_zero(time_type)?,
    };
    if zero {
        return plan_err!("the window of `{name}` is empty: give a width greater than zero");
    }
    Ok(())
}

/// Checks a tolerance against the time type.
fn check_tolerance(tolerance: &Tolerance, time_type: &DataType) -> Result<()> {
    let temporal = matches!(
        time_type,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
    );
    match tolerance {
        Tolerance::Duration(nanos) if temporal => {
            if *nanos < 0 {
                return plan_err!("TOLERANCE must not be negative");
            }
            Ok(())
        }
        Tolerance::Duration(_) => {
            plan_err!("TOLERANCE is an interval but the as-of times are {time_type}; give a number")
        }
        Tolerance::Number(_) if temporal => plan_err!(
            "TOLERANCE is a number but the as-of times are {time_type}; give an interval such \
             as INTERVAL '7 days'"
        ),
        Tolerance::Number(value) => {
            if value.data_type() != *time_type {
                return plan_err!(
                    "TOLERANCE {value} has type {} but the as-of times are {time_type}",
                    value.data_type()
                );
            }
            let zero = ScalarValue::new_zero(time_type)?;
            if value.is_null() || value.partial_cmp(&zero) == Some(Ordering::Less) {
                return plan_err!("TOLERANCE must be zero or positive, not {value}");
            }
            Ok(())
        }
    }
}

fn fmt_sort(sort: &Sort) -> String {
    format!(
        "{} {} NULLS {}",
        sort.expr,
        if sort.asc { "ASC" } else { "DESC" },
        if sort.nulls_first { "FIRST" } else { "LAST" }
    )
}

impl UserDefinedLogicalNodeCore for AsOfJoin {
    fn name(&self) -> &str {
        "AsOfJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![self.left.as_ref(), self.right.as_ref()]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    /// Layout: left keys, right keys, left time, right time, tie-break expressions, the
    /// knowledge time if any, then the aggregates' arguments.
    fn expressions(&self) -> Vec<Expr> {
        let mut out: Vec<Expr> = self.on.iter().map(|(l, _)| l.clone()).collect();
        out.extend(self.on.iter().map(|(_, r)| r.clone()));
        out.push(self.left_time.clone());
        out.push(self.right_time.clone());
        out.extend(self.tiebreak.iter().map(|s| s.expr.clone()));
        out.extend(self.known_at.clone());
        out.extend(self.aggregates.iter().filter_map(|a| a.arg.clone()));
        out
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "AsOfJoin: type={}, on=[", self.join_type)?;
        for (i, ((l, r), null_equal)) in self.on.iter().zip(&self.null_equal).enumerate() {
            let eq = if *null_equal {
                "IS NOT DISTINCT FROM"
            } else {
                "="
            };
            write!(f, "{}{l} {eq} {r}", if i > 0 { ", " } else { "" })?;
        }
        write!(
            f,
            "], match={} {} {}",
            self.left_time,
            self.op.symbol(),
            self.right_time
        )?;
        if let Some(tolerance) = &self.tolerance {
            write!(f, ", tolerance={tolerance}")?;
        }
        if !self.tiebreak.is_empty() {
            let parts: Vec<String> = self.tiebreak.iter().map(fmt_sort).collect();
            write!(f, ", tiebreak=[{}]", parts.join(", "))?;
        }
        if let Some(known) = &self.known_at {
            write!(f, ", known_at={known}")?;
        }
        if !self.aggregates.is_empty() {
            let parts: Vec<String> = self.aggregates.iter().map(|a| a.to_string()).collect();
            write!(f, ", aggregates=[{}]", parts.join(", "))?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let [left, right]: [LogicalPlan; 2] = inputs.try_into().map_err(|_| {
            datafusion::error::DataFusionError::Internal("AsOfJoin takes two inputs".into())
        })?;
        let k = self.on.len();
        let t = self.tiebreak.len();
        let args = self.aggregates.iter().filter(|a| a.arg.is_some()).count();
        let expected = 2 * k + 2 + t + usize::from(self.known_at.is_some());
        if exprs.len() != expected + args {
            return datafusion::common::internal_err!(
                "AsOfJoin: expected {expected} expressions, got {}",
                exprs.len()
            );
        }
        let on = exprs[..k]
            .iter()
            .cloned()
            .zip(exprs[k..2 * k].iter().cloned())
            .collect();
        let tiebreak = self
            .tiebreak
            .iter()
            .zip(&exprs[2 * k + 2..2 * k + 2 + t])
            .map(|(s, e)| Sort::new(e.clone(), s.asc, s.nulls_first))
            .collect();
        let known_at = self.known_at.as_ref().map(|_| exprs[expected - 1].clone());
        let mut new_args = exprs[expected..].iter().cloned();
        let aggregates: Vec<WindowAggregate> = self
            .aggregates
            .iter()
            .map(|a| WindowAggregate {
                arg: a.arg.as_ref().and_then(|_| new_args.next()),
                ..a.clone()
            })
            .collect();
        let qualifier = self.schema.iter().last().and_then(|(q, _)| q.cloned());
        let join = AsOfJoin::try_new(
            Arc::new(left),
            Arc::new(right),
            on,
            self.null_equal.clone(),
            exprs[2 * k].clone(),
            exprs[2 * k + 1].clone(),
            self.op,
            self.join_type,
            self.tolerance.clone(),
            tiebreak,
            known_at,
        )
        .map(|mut join| {
            join.right_pruned = self.right_pruned;
            join
        })?;
        if aggregates.is_empty() {
            Ok(join)
        } else {
            join.with_aggregates(aggregates, qualifier)
        }
    }

    /// Filters are not pushed through: a filter on the right would change which row matches,
    /// and DataFusion would push a left-only filter into both inputs.
    fn prevent_predicate_push_down_columns(&self) -> HashSet<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// Projection pushdown: each input keeps the columns the output needs plus those its own
    /// expressions read (late materialisation starts here: unread feature columns are never
    /// scanned).
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let left_len = self.left.schema().fields().len();
        let mut left_cols: Vec<usize> = output_columns
            .iter()
            .filter(|&&i| i < left_len)
            .copied()
            .collect();
        let mut right_cols: Vec<usize> = output_columns
            .iter()
            .filter(|&&i| i >= left_len)
            .map(|i| i - left_len)
            .collect();
        let add = |expr: &Expr, schema: &DFSchema, cols: &mut Vec<usize>| -> Option<()> {
            for column in expr.column_refs() {
                cols.push(schema.maybe_index_of_column(column)?);
            }
            Some(())
        };
        for (l, r) in &self.on {
            add(l, self.left.schema(), &mut left_cols)?;
            add(r, self.right.schema(), &mut right_cols)?;
        }
        add(&self.left_time, self.left.schema(), &mut left_cols)?;
        add(&self.right_time, self.right.schema(), &mut right_cols)?;
        for sort in &self.tiebreak {
            add(&sort.expr, self.right.schema(), &mut right_cols)?;
        }
        if let Some(known) = &self.known_at {
            add(known, self.right.schema(), &mut right_cols)?;
        }
        if !self.aggregates.is_empty() {
            // The output's right part is the aggregates, each computed from its argument.
            right_cols.clear();
            for (l, r) in &self.on {
                add(l, self.left.schema(), &mut left_cols)?;
                add(r, self.right.schema(), &mut right_cols)?;
            }
            add(&self.right_time, self.right.schema(), &mut right_cols)?;
            for sort in &self.tiebreak {
                add(&sort.expr, self.right.schema(), &mut right_cols)?;
            }
            if let Some(known) = &self.known_at {
                add(known, self.right.schema(), &mut right_cols)?;
            }
            for arg in self.aggregates.iter().filter_map(|a| a.arg.as_ref()) {
                add(arg, self.right.schema(), &mut right_cols)?;
            }
        }
        // The "greatest full row" tie rule reads every right column, but only the columns that
        // reach the output can tell two rows apart in the result, so it may use just those.
        left_cols.sort_unstable();
        left_cols.dedup();
        right_cols.sort_unstable();
        right_cols.dedup();
        Some(vec![left_cols, right_cols])
    }
}
