//! A naive as-of join, written straight from docs/semantics.md, to check the kernel against.
//!
//! For every left row it looks at every right row, decides eligibility with the four rules of
//! the contract on the original values (as [`ScalarValue`]s, not the kernel's normalised keys),
//! and keeps the best eligible row, ranking ties with Arrow's comparators
//! ([`make_comparator`]). It shares no matching code with the kernel: no hashing, no sorting, no
//! row format. It is quadratic and only meant for tests.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::array::{DynComparator, make_comparator};
use arrow::compute::{SortOptions, concat};
use datafusion::common::{Result, ScalarValue, internal_err, plan_err};

use super::kernel::{Direction, KernelOptions, RowRef, full_row_comparable};

/// One right batch with its evaluated expressions, as the operator pushes it into the kernel.
#[derive(Debug, Clone)]
pub struct RightInput {
    /// The right batch.
    pub batch: RecordBatch,
    /// The evaluated key expressions, one array per key.
    pub keys: Vec<ArrayRef>,
    /// The evaluated time expression.
    pub time: ArrayRef,
    /// The evaluated `KNOWN AT` expression, if any.
    pub knowledge: Option<ArrayRef>,
    /// The evaluated `TIEBREAK BY` expressions.
    pub tiebreak: Vec<ArrayRef>,
}

/// A time as written: integers (dates and timestamps too) exactly, floats as IEEE numbers, so
/// `-0.0 == 0.0`. NaN never gets here.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Time {
    Int(i128),
    Float(f64),
}

fn time_at(array: &ArrayRef, row: usize) -> Result<Option<Time>> {
    use ScalarValue as S;
    let value = ScalarValue::try_from_array(array, row)?;
    Ok(match value {
        S::Int8(v) => v.map(|v| Time::Int(v.into())),
        S::Int16(v) => v.map(|v| Time::Int(v.into())),
        S::Int32(v) => v.map(|v| Time::Int(v.into())),
        S::Int64(v) => v.map(|v| Time::Int(v.into())),
        S::UInt8(v) => v.map(|v| Time::Int(v.into())),
        S::UInt16(v) => v.map(|v| Time::Int(v.into())),
        S::UInt32(v) => v.map(|v| Time::Int(v.into())),
        S::UInt64(v) => v.map(|v| Time::Int(v.into())),
        S::Date32(v) => v.map(|v| Time::Int(v.into())),
        S::Date64(v)
        | S::TimestampSecond(v, _)
        | S::TimestampMillisecond(v, _)
        | S::TimestampMicrosecond(v, _)
        | S::TimestampNanosecond(v, _) => v.map(|v| Time::Int(v.into())),
        // A NaN time is treated as NULL.
        S::Float32(v) => v.filter(|v| !v.is_nan()).map(|v| Time::Float(v.into())),
        S::Float64(v) => v.filter(|v| !v.is_nan()).map(Time::Float),
        other => {
            return internal_err!(
                "the oracle does not know the time type {}",
                other.data_type()
            );
        }
    })
}

/// One right row, read once.
struct Candidate {
    at: RowRef,
    /// The row's index in the concatenated right input, for the comparators.
    index: usize,
    keys: Vec<ScalarValue>,
    time: Option<Time>,
    knowledge: Option<Time>,
}

/// Orders rows of the concatenated right input: Arrow's own comparator per column (nested
/// values, NULLs inside them and NaN included), with the column's sort options.
struct Comparators {
    tiebreak: Vec<DynComparator>,
    row: Vec<DynComparator>,
}

impl Comparators {
    fn try_new(opts: &KernelOptions, right: &[RightInput]) -> Result<Self> {
        let Some(first) = right.first() else {
            return Ok(Self {
                tiebreak: vec![],
                row: vec![],
            });
        };
        let concat_all = |get: &dyn Fn(&RightInput) -> ArrayRef| -> Result<ArrayRef> {
            let arrays: Vec<ArrayRef> = right.iter().map(get).collect();
            let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
            Ok(concat(&refs)?)
        };
        let mut tiebreak = Vec::new();
        for (i, spec) in opts.tiebreak.iter().enumerate() {
            let all = concat_all(&|input| Arc::clone(&input.tiebreak[i]))?;
            tiebreak.push(make_comparator(all.as_ref(), all.as_ref(), spec.options)?);
        }
        // The full-row rule: NULL below any value, the greatest row wins.
        let ascending_nulls_first = SortOptions {
            descending: false,
            nulls_first: true,
        };
        let mut row = Vec::new();
        let schema = first.batch.schema();
        for (c, field) in schema.fields().iter().enumerate() {
            if !full_row_comparable(field.data_type()) {
                continue;
            }
            let all = concat_all(&|input| Arc::clone(input.batch.column(c)))?;
            row.push(make_comparator(
                all.as_ref(),
                all.as_ref(),
                ascending_nulls_first,
            )?);
        }
        Ok(Self { tiebreak, row })
    }

    /// Whether `a` beats `b`, both eligible: a better time, else the tie-break columns (the row
    /// sorting first wins), else the full row (the greatest wins).
    fn beats(&self, direction: Direction, a: &Candidate, b: &Candidate) -> Result<bool> {
        let (Some(ta), Some(tb)) = (a.time, b.time) else {
            return internal_err!("an eligible right row has no time");
        };
        if ta != tb {
            return Ok(match direction {
                Direction::Backward => ta > tb,
                Direction::Forward => ta < tb,
            });
        }
        for cmp in &self.tiebreak {
            match cmp(a.index, b.index) {
                Ordering::Less => return Ok(true),
                Ordering::Greater => return Ok(false),
                Ordering::Equal => {}
            }
        }
        for cmp in &self.row {
            match cmp(a.index, b.index) {
                Ordering::Greater => return Ok(true),
                Ordering::Less => return Ok(false),
                Ordering::Equal => {}
            }
        }
        Ok(false)
    }
}

/// The as-of match of every left row, by brute force: for each left row, the best eligible right
/// row (or `None`), with the same [`RowRef`] numbering as the kernel (batches in push order, empty
/// ones included).
///
/// `lower_bound` is the tolerance bound exactly as [`super::RightIndex::probe`] takes it:
/// backward `l.t - d`, forward `l.t + d`, inclusive; a NULL or NaN bound matches nothing.
pub fn oracle_asof(
    opts: &KernelOptions,
    right: &[RightInput],
    left_keys: &[ArrayRef],
    left_time: &ArrayRef,
    lower_bound: Option<&ArrayRef>,
) -> Result<Vec<Option<RowRef>>> {
    if opts.has_knowledge && opts.spec.direction == Direction::Forward {
        return plan_err!("KNOWN AT is not allowed with a forward as-of condition");
    }
    let comparators = Comparators::try_new(opts, right)?;
    let mut candidates = Vec::new();
    for (b, input) in right.iter().enumerate() {
        for r in 0..input.batch.num_rows() {
            candidates.push(Candidate {
                at: RowRef {
                    batch: b as u32,
                    row: r as u32,
                },
                index: candidates.len(),
                keys: input
                    .keys
                    .iter()
                    .map(|k| ScalarValue::try_from_array(k, r))
                    .collect::<Result<_>>()?,
                time: time_at(&input.time, r)?,
                knowledge: match &input.knowledge {
                    Some(k) => time_at(k, r)?,
                    None => None,
                },
            });
        }
    }

    let mut out = Vec::with_capacity(left_time.len());
    for l in 0..left_time.len() {
        let keys: Vec<ScalarValue> = left_keys
            .iter()
            .map(|k| ScalarValue::try_from_array(k, l))
            .collect::<Result<_>>()?;
        let Some(time) = time_at(left_time, l)? else {
            // A left row with a NULL time never matches.
            out.push(None);
            continue;
        };
        let bound = match lower_bound {
            None => None,
            Some(b) => match time_at(b, l)? {
                Some(b) => Some(b),
                None => {
                    out.push(None);
                    continue;
                }
            },
        };
        let mut best: Option<&Candidate> = None;
        for c in &candidates {
            if !eligible(opts, c, &keys, time, bound) {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => comparators.beats(opts.spec.direction, c, b)?,
            };
            if better {
                best = Some(c);
            }
        }
        out.push(best.map(|c| c.at));
    }
    Ok(out)
}

/// The four eligibility rules of docs/semantics.md.
fn eligible(
    opts: &KernelOptions,
    c: &Candidate,
    keys: &[ScalarValue],
    l: Time,
    bound: Option<Time>,
) -> bool {
    // 1. Every key pair is equal; NULL equals NULL only under IS NOT DISTINCT FROM.
    for ((lk, rk), spec) in keys.iter().zip(&c.keys).zip(&opts.keys) {
        let equal = match (lk.is_null(), rk.is_null()) {
            (true, true) => spec.null_equal,
            (false, false) => lk == rk,
            _ => false,
        };
        if !equal {
            return false;
        }
    }
    // A right row with a NULL (or NaN) time is ignored.
    let Some(r) = c.time else {
        return false;
    };
    // 2. The match condition.
    let condition = match (opts.spec.direction, opts.spec.strict) {
        (Direction::Backward, false) => l >= r,
        (Direction::Backward, true) => l > r,
        (Direction::Forward, false) => l <= r,
        (Direction::Forward, true) => l < r,
    };
    if !condition {
        return false;
    }
    // 3. The tolerance, inclusive.
    if let Some(bound) = bound {
        let within = match opts.spec.direction {
            Direction::Backward => r >= bound,
            Direction::Forward => r <= bound,
        };
        if !within {
            return false;
        }
    }
    // 4. The knowledge time: known at the left time; unknown (NULL) is never used.
    if opts.has_knowledge {
        match c.knowledge {
            Some(k) if k <= l => {}
            _ => return false,
        }
    }
    true
}
