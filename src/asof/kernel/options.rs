//! What the kernel is told about a join ([`KernelOptions`]: the match condition, the key, time
//! and tie-break types, whether a knowledge time is given), what it answers with ([`RowRef`]),
//! which types it accepts, and the check that evaluated arrays fit the options.

use arrow::array::ArrayRef;
use arrow::compute::SortOptions;
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, internal_err};

/// Which way the match condition looks from the left time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `l.t >= r.t` or `l.t > r.t`: the latest right row at or before the left time.
    Backward,
    /// `l.t <= r.t` or `l.t < r.t`: the earliest right row at or after the left time.
    Forward,
}

/// The match condition: a direction and whether equal times match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatchSpec {
    /// Backward (`>=`, `>`) or forward (`<=`, `<`).
    pub direction: Direction,
    /// `>` or `<`: a right row at exactly the left time does not match.
    pub strict: bool,
}

/// One equality key pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec {
    /// The type of the key on both sides (the planner coerces them to one type).
    pub data_type: DataType,
    /// `IS NOT DISTINCT FROM`: a NULL key equals a NULL key. Otherwise a NULL key never matches.
    pub null_equal: bool,
}

/// One `TIEBREAK BY` expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TiebreakSpec {
    /// The type of the evaluated expression.
    pub data_type: DataType,
    /// The written order; among rows tied on time, the row that sorts first under it wins.
    /// `TIEBREAK BY x` without `NULLS FIRST` must arrive here with `nulls_first: false`, so that a
    /// NULL never beats a value.
    pub options: SortOptions,
}

/// Everything the kernel needs to know about one as-of join, fixed at planning time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelOptions {
    /// The match condition.
    pub spec: MatchSpec,
    /// The equality keys, in order; may be empty (every row is in one group).
    pub keys: Vec<KeySpec>,
    /// The type of the time on both sides, of the tolerance bound and of the knowledge time.
    pub time_type: DataType,
    /// The `TIEBREAK BY` expressions, in order.
    pub tiebreak: Vec<TiebreakSpec>,
    /// Whether a `KNOWN AT` expression is given (backward direction only).
    pub has_knowledge: bool,
}

/// A row of the right input: the index of the pushed batch (counting every push, empty batches
/// included) and the row within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowRef {
    /// The batch, in push order from 0.
    pub batch: u32,
    /// The row within the batch.
    pub row: u32,
}

/// Whether the kernel accepts `data_type` as an equality key type: every type the
/// [`arrow::row`] format encodes, which covers integers, floats, decimals, booleans, strings,
/// binaries, dates, timestamps, dictionaries and nested types.
///
/// Floats compare like Arrow's `=`: by their bits, so NaN equals NaN and `-0.0` differs from `0.0`.
pub fn supported_key_type(data_type: &DataType) -> bool {
    RowConverter::supports_fields(&[SortField::new(data_type.clone())])
}

/// Whether the kernel accepts `data_type` as a `TIEBREAK BY` type: every type the
/// [`arrow::row`] format orders.
pub fn supported_tiebreak_type(data_type: &DataType) -> bool {
    supported_key_type(data_type)
}

/// Whether a right column of type `data_type` takes part in the "greatest full row" rule.
///
/// Columns of types the [`arrow::row`] format cannot encode are left out of the comparison: two
/// rows that differ only in such columns count as identical, and which one is taken may depend on
/// the order the rows arrived in.
pub fn full_row_comparable(data_type: &DataType) -> bool {
    supported_key_type(data_type)
}

/// Checks that the evaluated key and time arrays of one side have the declared types and `n`
/// rows each.
pub(super) fn check_arrays(
    side: &str,
    opts: &KernelOptions,
    n: usize,
    keys: &[ArrayRef],
    time: &ArrayRef,
) -> Result<()> {
    if keys.len() != opts.keys.len()
        || keys
            .iter()
            .zip(&opts.keys)
            .any(|(a, s)| a.data_type() != &s.data_type || a.len() != n)
    {
        return internal_err!(
            "as-of {side} key arrays ({:?}) do not match the declared keys ({:?})",
            keys.iter().map(|k| k.data_type()).collect::<Vec<_>>(),
            opts.keys
        );
    }
    if time.data_type() != &opts.time_type || time.len() != n {
        return internal_err!(
            "as-of {side} time array ({}, {} rows) does not match {} ({n} rows)",
            time.data_type(),
            time.len(),
            opts.time_type
        );
    }
    Ok(())
}
