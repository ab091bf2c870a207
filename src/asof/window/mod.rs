//! Windowed aggregations as of each left row: `count`, `sum`, `avg`, `min`, `max`, `first`,
//! `last`, `last(x, k)`, `count_distinct`, `var`/`stddev` over the right rows with equal keys
//! whose time falls in a window that ends at the left row's time (the contract is
//! docs/semantics.md, "Windowed aggregates").
//!
//! An [`AsOfJoin`](super::AsOfJoin) with aggregates is a window join: it keeps every left row
//! once, in the left's order, and adds one column per aggregate instead of the right's columns.
//!
//! # Files
//!
//! - `mod.rs`: the aggregate functions, their argument and output types, what a window is.
//! - `fsum`: exact, order-independent float sums (so a sum has the same bytes at any
//!   partitioning and batch size).
//! - `kernel`: [`WindowIndex`], the right rows grouped by key and sorted by time, and the
//!   aggregation of one left batch against it.
//! - `exec`: [`WindowJoinExec`], the physical operator.
//! - `labels`: [`LabelIndex`], the other way round: the left rows indexed, the right rows
//!   streamed through once into per-left-row accumulators (for counts, sums, means, extremes).
//! - `spill`: the bucket-by-bucket run for a right input larger than memory.
//! - `tests`: the kernel against a brute-force oracle on random inputs (tests only).

mod exec;
mod fsum;
mod kernel;
mod labels;
mod spill;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::Expr;

pub use exec::{PhysicalWindowAggregate, WindowBuild, WindowJoinExec};
pub use fsum::exact_sum;
pub(crate) use kernel::is_null;
pub use kernel::{KernelAggregate, RightArrays, WindowIndex, WindowIndexBuilder, WindowSpec};
pub use labels::{Accumulators, LabelIndex, LeftArrays, Scratch, left_build_computes};
pub(crate) use labels::{LeftKeys, NO_ENTRY};

use super::Tolerance;

/// An aggregate function of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggFunction {
    /// `count(*)`: the rows in the window.
    CountStar,
    /// `count(x)`: the non-NULL values.
    Count,
    /// `count_distinct(x)` (also `count(DISTINCT x)`): the distinct non-NULL values.
    CountDistinct,
    /// `sum(x)`: exact for integers and decimals (an error if the sum leaves the type), correctly
    /// rounded for floats.
    Sum,
    /// `avg(x)`: the sum divided by the count, a DOUBLE.
    Avg,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
    /// `first(x)`: the earliest non-NULL value.
    First,
    /// `last(x)`: the latest non-NULL value; `last(x, k)`: the `k` latest, newest first.
    Last,
    /// `var(x)` (`var_samp`, `variance`): the sample variance.
    Var,
    /// `var_pop(x)`.
    VarPop,
    /// `stddev(x)` (`stddev_samp`): the sample standard deviation.
    Stddev,
    /// `stddev_pop(x)`.
    StddevPop,
}

/// The functions a user may write, by name, for the error that lists them.
pub const FUNCTION_NAMES: &str = "count, count_distinct, sum, avg, min, max, first, last, \
                                  var, var_pop, stddev, stddev_pop";

impl AggFunction {
    /// The function called `name` (any case) with or without a `*` argument.
    pub fn from_name(name: &str, star: bool) -> Result<Self> {
        let f = match (name.to_ascii_lowercase().as_str(), star) {
            ("count", true) => Self::CountStar,
            ("count", false) => Self::Count,
            ("count_distinct", false) => Self::CountDistinct,
            ("sum", false) => Self::Sum,
            ("avg" | "mean", false) => Self::Avg,
            ("min", false) => Self::Min,
            ("max", false) => Self::Max,
            ("first", false) => Self::First,
            ("last", false) => Self::Last,
            ("var" | "var_samp" | "variance", false) => Self::Var,
            ("var_pop", false) => Self::VarPop,
            ("stddev" | "stddev_samp", false) => Self::Stddev,
            ("stddev_pop", false) => Self::StddevPop,
            (other, true) => {
                return plan_err!("{other}(*) is not an aggregate; only count(*) takes `*`");
            }
            (other, false) => {
                return plan_err!(
                    "`{other}` is not a window aggregate; use one of {FUNCTION_NAMES}"
                );
            }
        };
        Ok(f)
    }

    /// The name as SQL (`count` for `count(*)`).
    pub fn name(self) -> &'static str {
        match self {
            Self::CountStar | Self::Count => "count",
            Self::CountDistinct => "count_distinct",
            Self::Sum => "sum",
            Self::Avg => "avg",
            Self::Min => "min",
            Self::Max => "max",
            Self::First => "first",
            Self::Last => "last",
            Self::Var => "var",
            Self::VarPop => "var_pop",
            Self::Stddev => "stddev",
            Self::StddevPop => "stddev_pop",
        }
    }

    /// Whether the function reads a value (all but `count(*)`).
    pub fn takes_argument(self) -> bool {
        self != Self::CountStar
    }

    /// Whether the result depends on the order of tied rows (the tie rule picks the row).
    pub fn is_positional(self) -> bool {
        matches!(self, Self::First | Self::Last)
    }

    /// The output type for an argument of type `arg` (`None` for `count(*)`) and, for
    /// `last(x, k)`, `k`. Refuses argument types the function cannot take, saying which it can.
    pub fn output_type(self, arg: Option<&DataType>, k: Option<usize>) -> Result<DataType> {
        if k.is_some() && self != Self::Last {
            return plan_err!(
                "{}(x, k): only last takes a count of values (last(x, 5))",
                self.name()
            );
        }
        let Some(arg) = arg else {
            return match self {
                Self::CountStar => Ok(DataType::Int64),
                other => plan_err!("{}(…) needs an argument", other.name()),
            };
        };
        let numeric = arg.is_integer() || arg.is_floating() || is_decimal128(arg);
        Ok(match self {
            Self::CountStar | Self::Count | Self::CountDistinct => DataType::Int64,
            Self::Sum if arg.is_integer() => DataType::Int64,
            Self::Sum if arg.is_floating() => DataType::Float64,
            Self::Sum if is_decimal128(arg) => match arg {
                DataType::Decimal128(_, s) => DataType::Decimal128(38, *s),
                _ => unreachable!("checked above"),
            },
            Self::Avg | Self::Var | Self::VarPop | Self::Stddev | Self::StddevPop if numeric => {
                DataType::Float64
            }
            Self::Sum | Self::Avg | Self::Var | Self::VarPop | Self::Stddev | Self::StddevPop => {
                return plan_err!(
                    "{}(x) needs a number (an integer, a float or a DECIMAL up to 38 digits), \
                     not {arg}",
                    self.name()
                );
            }
            Self::Min | Self::Max | Self::First | Self::Last => {
                if !arrow::row::RowConverter::supports_fields(&[arrow::row::SortField::new(
                    arg.clone(),
                )]) {
                    return plan_err!("{}(x) cannot order values of type {arg}", self.name());
                }
                match k {
                    Some(_) => DataType::List(Arc::new(Field::new("item", arg.clone(), true))),
                    None => arg.clone(),
                }
            }
        })
    }

    /// Whether the output may be NULL: counts and `last(x, k)` lists never are.
    pub fn nullable(self, k: Option<usize>) -> bool {
        !matches!(self, Self::CountStar | Self::Count | Self::CountDistinct) && k.is_none()
    }
}

/// Whether times of this type can bound a window: integers, dates and timestamps.
pub fn window_time_type(t: &DataType) -> bool {
    super::time::integer_or_datetime(t)
}

fn is_decimal128(t: &DataType) -> bool {
    matches!(t, DataType::Decimal128(_, _))
}

/// The largest `k` of `last(x, k)`: a list per left row is built in memory.
pub const MAX_LAST_K: usize = 10_000;

/// One aggregate of a window join, over the right input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowAggregate {
    /// The output column's name.
    pub name: String,
    /// The function.
    pub function: AggFunction,
    /// The value aggregated (`None` for `count(*)`), over the right input.
    pub arg: Option<Expr>,
    /// `last(x, k)`'s `k`.
    pub k: Option<usize>,
    /// The window's width: a duration for timestamp and date times, a number of the times'
    /// own type for integer times. Always greater than zero.
    pub width: Tolerance,
}

impl fmt::Display for WindowAggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arg = self.arg.as_ref().map(|a| a.to_string());
        fmt_aggregate(f, self.function, arg, self.k, &self.width, &self.name)
    }
}

/// `f(arg[, k]) OVER width AS name`, as `EXPLAIN` shows an aggregate (`*` without an argument).
fn fmt_aggregate(
    f: &mut fmt::Formatter<'_>,
    function: AggFunction,
    arg: Option<String>,
    k: Option<usize>,
    width: &Tolerance,
    name: &str,
) -> fmt::Result {
    let arg = arg.unwrap_or_else(|| "*".into());
    let k = k.map(|k| format!(", {k}")).unwrap_or_default();
    write!(f, "{}({arg}{k}) OVER {width} AS {name}", function.name())
}
