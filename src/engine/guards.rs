//! Scalar functions whose output grows with an argument (`repeat('x', 1e9)`, `lpad(s, 1e9)`,
//! `range(1e9)`), capped: their results are built outside the memory pool, so one statement
//! could otherwise take all the server's memory (and, being one long call, ignore the query
//! timeout). Each is the built-in function under the same name, with a check of how much one
//! call would make before it runs.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::{cast, kernels::length::length};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, plan_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// The most bytes one call of a capped function may make (over all rows of its batch).
pub const MAX_FUNCTION_OUTPUT: i128 = 256 << 20;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) × n` bytes.
    Repeat,
    /// `lpad(s, n …)`, `rpad`: `n` characters, up to 4 bytes each.
    Pad,
    /// `array_repeat(x, n)`: `n` elements, at least 8 bytes each.
    ArrayRepeat,
    /// `range(stop)`, `range(start, stop[, step])`, `generate_series`: their element count, 8
    /// bytes each (integer arguments; other kinds are not checked).
    Range,
}

/// A built-in function with a cap on what one call may make.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Capped {
    inner: ScalarUDF,
    growth: Growth,
}

/// The capped functions, to register over the built-ins of `ctx`.
pub fn capped_functions(ctx: &SessionContext) -> Vec<ScalarUDF> {
    [
        ("repeat", Growth::Repeat),
        ("lpad", Growth::Pad),
        ("rpad", Growth::Pad),
        ("array_repeat", Growth::ArrayRepeat),
        ("range", Growth::Range),
        ("generate_series", Growth::Range),
    ]
    .into_iter()
    .filter_map(|(name, growth)| {
        let inner = ctx.udf(name).ok()?;
        Some(ScalarUDF::new_from_impl(Capped {
            inner: inner.as_ref().clone(),
            growth,
        }))
    })
    .collect()
}

/// Argument `i` as i64 values, one per row (NULL as 0); `None` when it is not an integer.
fn ints(args: &[ColumnarValue], i: usize, rows: usize) -> Result<Option<Vec<i64>>> {
    let Some(arg) = args.get(i) else {
        return Ok(None);
    };
    let array = arg.to_array(rows)?;
    if !array.data_type().is_integer() {
        return Ok(None);
    }
    Ok(Some(as_i64s(&array)?))
}

/// An integer array's values as i64, NULL as 0.
fn as_i64s(array: &ArrayRef) -> Result<Vec<i64>> {
    let values = cast(array, &DataType::Int64)?;
    let values = values.as_primitive::<Int64Type>();
    Ok((0..values.len())
        .map(|r| {
            if values.is_null(r) {
                0
            } else {
                values.value(r)
            }
        })
        .collect())
}

/// The byte length of each string of argument `i`.
fn string_lengths(args: &[ColumnarValue], i: usize, rows: usize) -> Result<Option<Vec<i64>>> {
    let Some(arg) = args.get(i) else {
        return Ok(None);
    };
    let array: ArrayRef = arg.to_array(rows)?;
    let lengths = match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary => {
            length(&array)?
        }
        DataType::Utf8View => length(&cast(&array, &DataType::Utf8)?)?,
        _ => return Ok(None),
    };
    Ok(Some(as_i64s(&lengths)?))
}

impl Capped {
    /// The bytes one call with these arguments would make, as far as it can be told cheaply.
    fn estimate(&self, args: &[ColumnarValue], rows: usize) -> Result<i128> {
        let positive = |v: i64| i128::from(v.max(0));
        Ok(match self.growth {
            Growth::Repeat => match (string_lengths(args, 0, rows)?, ints(args, 1, rows)?) {
                (Some(lengths), Some(counts)) => lengths
                    .iter()
                    .zip(&counts)
                    .map(|(&l, &n)| positive(l) * positive(n))
                    .sum(),
                _ => 0,
            },
            Growth::Pad => {
                ints(args, 1, rows)?.map_or(0, |n| n.iter().map(|&n| 4 * positive(n)).sum())
            }
            Growth::ArrayRepeat => {
                ints(args, 1, rows)?.map_or(0, |n| n.iter().map(|&n| 8 * positive(n)).sum())
            }
            Growth::Range => {
                let (start, stop, step) = match args.len() {
                    1 => (None, ints(args, 0, rows)?, None),
                    2 => (ints(args, 0, rows)?, ints(args, 1, rows)?, None),
                    _ => (
                        ints(args, 0, rows)?,
                        ints(args, 1, rows)?,
                        ints(args, 2, rows)?,
                    ),
                };
                let Some(stop) = stop else { return Ok(0) };
                (0..rows)
                    .map(|r| {
                        let from = start.as_ref().map_or(0, |s| i128::from(s[r]));
                        let by = step.as_ref().map_or(1, |s| i128::from(s[r])).abs().max(1);
                        8 * ((i128::from(stop[r]) - from).abs() / by + 1)
                    })
                    .sum()
            }
        })
    }
}

impl ScalarUDFImpl for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let estimate = self.estimate(&args.args, args.number_rows.max(1))?;
        if estimate > MAX_FUNCTION_OUTPUT {
            return plan_err!(
                "{} would make about {} MiB in one call; at most {} MiB is allowed (a value \
                 this large does not belong in a query: build it in a table, or ask for less)",
                self.inner.name(),
                estimate >> 20,
                MAX_FUNCTION_OUTPUT >> 20
            );
        }
        self.inner.invoke_with_args(args)
    }
}
