//! The window kernel: the right rows grouped by key and sorted by time ([`WindowIndex`]), and the
//! aggregates of a batch of left rows, each over the rows of its key whose time falls in its
//! window.
//!
//! # How it runs
//!
//! Build ([`WindowIndexBuilder`], a batch at a time as the right input arrives): the keys become
//! dense group ids (a hash table by value for one integer key, over [`arrow::row`] bytes
//! otherwise); rows with a NULL key (unless compared with `IS NOT DISTINCT FROM`), a NULL time
//! or a NULL knowledge time are dropped, since no window can hold them. At the end the rest are
//! put in group order (a counting sort), and each group's rows sorted by time and, where a
//! function picks one row (`first`, `last`), by the tie rule: the row `TIEBREAK BY` puts first,
//! then the greatest value, counts as the later one.
//!
//! The aggregates' arguments are then gathered into that order, so the rows of a window are
//! contiguous in every array the probe reads.
//!
//! Probe: per left row, a hash lookup for the group, a binary search for the window's end in the
//! group's times and one per distinct width for its start (aggregates of the same width share
//! it), then one pass per aggregate over the rows between them, skipping rows not yet known at
//! the left time. `O(log g + w)` per left row and aggregate, for a group of `g` rows of which
//! `w` fall in the window; `count(*)` without knowledge time is `O(1)`. Sums are exact (integers
//! in `i128`, floats by [`super::fsum`]), so every result is the same at any partitioning, batch
//! size and row order.

use std::collections::HashSet;

use hashbrown::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Float64Array, Int64Array, ListArray, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::{SortOptions, cast, take};
use arrow::datatypes::{DataType, Decimal128Type, Field, Float64Type, Int64Type, TimeUnit};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{Result, exec_err, internal_err};

use super::fsum::ExactSum;
use super::{AggFunction, MAX_LAST_K};
use crate::asof::Tolerance;
use crate::asof::time::{dense_time_keys, time_keys};
use crate::asof::{group_runs, worker_threads};

/// What the kernel is told about one aggregate.
#[derive(Debug, Clone)]
pub struct KernelAggregate {
    /// The function.
    pub function: AggFunction,
    /// `last(x, k)`'s `k`.
    pub k: Option<usize>,
    /// The window's width.
    pub width: Tolerance,
    /// The name, for errors.
    pub name: String,
}

/// What the kernel is told about a window join.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    /// Per key: its type and whether NULL equals NULL.
    pub keys: Vec<(DataType, bool)>,
    /// The times' type (integer, date or timestamp), the same on both sides.
    pub time_type: DataType,
    /// `[t - d, t)` (the match condition is `>`) instead of `(t - d, t]` (`>=`).
    pub strict: bool,
    /// Whether rows carry a knowledge time.
    pub has_known: bool,
    /// `TIEBREAK BY`'s sort options, one per tie-break array.
    pub tiebreak: Vec<SortOptions>,
    /// The aggregates, in output order.
    pub aggregates: Vec<KernelAggregate>,
}

/// The right input of a window join, evaluated: every array has one value per right row.
pub struct RightArrays {
    /// The key columns, in the order of [`WindowSpec::keys`].
    pub keys: Vec<ArrayRef>,
    /// The event times.
    pub time: ArrayRef,
    /// The knowledge times, if the join has them.
    pub known: Option<ArrayRef>,
    /// The `TIEBREAK BY` columns.
    pub tiebreak: Vec<ArrayRef>,
    /// Per aggregate, its argument (`None` for `count(*)`).
    pub args: Vec<Option<ArrayRef>>,
}

/// An aggregate's argument, in the form its function reads.
enum Values {
    /// `count(*)`.
    None,
    /// `count(x)`, `first`, `last`: the array itself (validity and `take`).
    Array(ArrayRef),
    /// `min`, `max`, `count_distinct`: order-preserving row bytes, and the array for `take`.
    Rows(ArrayRef, Rows),
    /// `min`, `max` of numbers: the values as i64 or f64, compared natively in the order the
    /// row bytes would give (floats by `total_cmp`), and the array for `take`.
    Native(ArrayRef, Native),
    Int(Int64Array),
    Float(Float64Array),
    /// A DECIMAL's raw values and its scale.
    Decimal(Decimal128Array, i8),
}

/// Numbers compared natively.
enum Native {
    Int(Int64Array),
    Float(Float64Array),
}

impl Native {
    /// Whether value `x` orders after value `y`.
    #[inline]
    fn greater(&self, x: usize, y: usize) -> bool {
        match self {
            Native::Int(a) => a.value(x) > a.value(y),
            Native::Float(a) => a.value(x).total_cmp(&a.value(y)).is_gt(),
        }
    }

    /// `arg` as natively compared numbers, when its type converts exactly and in order.
    fn of(arg: &ArrayRef) -> Result<Option<Self>> {
        Ok(match arg.data_type() {
            t if int_key(t) => Some(Native::Int(
                cast(arg, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            )),
            DataType::Float32 | DataType::Float64 => Some(Native::Float(
                cast(arg, &DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            )),
            _ => None,
        })
    }

    fn memory_size(&self) -> usize {
        match self {
            Native::Int(a) => a.get_array_memory_size(),
            Native::Float(a) => a.get_array_memory_size(),
        }
    }
}

/// The groups of the right rows by key: one integer key (an entity id, the usual case) by its
/// value, any other key by its row bytes.
pub(super) enum Groups {
    /// No keys: every row in one group.
    Single { seen: bool },
    Int {
        map: HashMap<i64, u32>,
        /// The group of NULL, for a key where NULL equals NULL.
        null: Option<u32>,
    },
    Bytes {
        converter: RowConverter,
        map: HashMap<Box<[u8]>, u32>,
    },
}

/// A batch's keys, as [`Groups`] reads them.
pub(super) enum KeyView {
    None,
    Int(Int64Array),
    Bytes(Rows),
}

/// Whether values of this type convert to i64 exactly and in order (keys grouped by value,
/// extremes compared natively).
pub(super) fn int_key(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

impl Groups {
    pub(super) fn new(keys: &[(DataType, bool)]) -> Result<Self> {
        Ok(match keys {
            [] => Groups::Single { seen: false },
            [(t, _)] if int_key(t) => Groups::Int {
                map: HashMap::new(),
                null: None,
            },
            _ => Groups::Bytes {
                converter: RowConverter::new(
                    keys.iter()
                        .map(|(t, _)| SortField::new(t.clone()))
                        .collect(),
                )?,
                map: HashMap::new(),
            },
        })
    }

    pub(super) fn view(&self, keys: &[ArrayRef]) -> Result<KeyView> {
        Ok(match self {
            Groups::Single { .. } => KeyView::None,
            Groups::Int { .. } => KeyView::Int(
                cast(&keys[0], &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            Groups::Bytes { converter, .. } => KeyView::Bytes(converter.convert_columns(keys)?),
        })
    }

    /// The group of row `i` of `view`, if it has one.
    #[inline]
    pub(super) fn get(&self, view: &KeyView, i: usize) -> Option<u32> {
        match (self, view) {
            (Groups::Single { seen }, _) => seen.then_some(0),
            (Groups::Int { map, null }, KeyView::Int(keys)) => match keys.is_null(i) {
                true => *null,
                false => map.get(&keys.value(i)).copied(),
            },
            (Groups::Bytes { map, .. }, KeyView::Bytes(rows)) => {
                map.get(rows.row(i).as_ref()).copied()
            }
            _ => None,
        }
    }

    /// The group of row `i` of `view`, made when first seen.
    pub(super) fn get_or_insert(&mut self, view: &KeyView, i: usize) -> u32 {
        let next = self.len() as u32;
        match (self, view) {
            (Groups::Single { seen }, _) => {
                *seen = true;
                0
            }
            (Groups::Int { map, null }, KeyView::Int(keys)) => match keys.is_null(i) {
                true => *null.get_or_insert(next),
                false => *map.entry(keys.value(i)).or_insert(next),
            },
            // Looked up by the borrowed bytes: a key is copied once, when first seen.
            (Groups::Bytes { map, .. }, KeyView::Bytes(rows)) => {
                let bytes = rows.row(i);
                match map.get(bytes.as_ref()) {
                    Some(g) => *g,
                    None => {
                        map.insert(bytes.as_ref().into(), next);
                        next
                    }
                }
            }
            _ => next,
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Groups::Single { seen } => usize::from(*seen),
            Groups::Int { map, null } => map.len() + usize::from(null.is_some()),
            Groups::Bytes { map, .. } => map.len(),
        }
    }

    pub(super) fn memory_size(&self) -> usize {
        match self {
            Groups::Single { .. } => 0,
            Groups::Int { map, .. } => map.capacity() * 16,
            Groups::Bytes { map, .. } => map.keys().map(|k| k.len() + 24).sum(),
        }
    }
}

/// The right rows by key, sorted by time. An entry is a position in that order: every array
/// here (times, knowledge times, the aggregates' values) holds the rows in it.
pub struct WindowIndex {
    spec: WindowSpec,
    groups: Groups,
    /// Per group `g`, its entries are `offsets[g]..offsets[g + 1]`.
    offsets: Vec<u32>,
    /// The time of each entry.
    times: Vec<i64>,
    /// The knowledge time of each entry, when there is one.
    known: Vec<i64>,
    /// Per aggregate, its argument's values by entry.
    values: Vec<Values>,
    /// The distinct window widths.
    widths: Vec<Width>,
    /// Per aggregate, its width in `widths`.
    width_of: Vec<usize>,
}

/// A window's width in time-key units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Width {
    /// A whole number of time keys (7 days of microsecond timestamps): bounds in `i64`.
    Keys(i64),
    /// A width that is not (1 ms of second timestamps) as (numerator, unit): a time `e` is in
    /// the window of `t` when `e * unit > t * unit - numerator`.
    Scaled(i128, i128),
}

impl Width {
    pub(super) fn new(numerator: i128, unit: i128) -> Self {
        match i64::try_from(numerator / unit) {
            Ok(keys) if numerator % unit == 0 => Width::Keys(keys),
            _ => Width::Scaled(numerator, unit),
        }
    }

    /// The first of `times` (ascending, all at or before `t`) in the window of `t`: after
    /// `t - d`, or at or after it when `strict`.
    #[inline]
    fn start(self, times: &[i64], t: i64, strict: bool) -> usize {
        match self {
            Width::Keys(w) => match t.checked_sub(w) {
                Some(bound) if strict => count_before_from_end(times, |e| e < bound),
                Some(bound) => count_before_from_end(times, |e| e <= bound),
                // Below every time.
                None => 0,
            },
            Width::Scaled(numerator, unit) => {
                let t_scaled = i128::from(t) * unit;
                // (t - d, t]: e * unit > t * unit - d, that is e >= floor((t * unit - d) / unit) + 1.
                // [t - d, t): e * unit >= t * unit - d, that is e >= ceil((t * unit - d) / unit).
                let lower = if strict {
                    -(numerator - t_scaled).div_euclid(unit)
                } else {
                    (t_scaled - numerator).div_euclid(unit) + 1
                };
                count_before_from_end(times, |e| i128::from(e) < lower)
            }
        }
    }
}

/// How many of `times` (ascending) come `before` (a predicate true up to some point, then
/// false): a galloping search from the end, since a window holds the last few of its key's rows
/// up to the label's time, so the answer is usually near the end, in cache lines the search for
/// the window's end has just read.
#[inline]
pub(super) fn count_before_from_end(times: &[i64], before: impl Fn(i64) -> bool) -> usize {
    // Every entry at `hi` or later is not before.
    let mut hi = times.len();
    let mut step = 1;
    while step <= hi {
        let probe = hi - step;
        if before(times[probe]) {
            return probe + 1 + times[probe + 1..hi].partition_point(|&e| before(e));
        }
        hi = probe;
        step *= 2;
    }
    times[..hi].partition_point(|&e| before(e))
}

/// Nanoseconds per unit of a time key (1 for integer times, whose widths are plain numbers).
fn unit_nanos(time_type: &DataType) -> i128 {
    match time_type {
        DataType::Timestamp(TimeUnit::Second, _) => 1_000_000_000,
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Date64 => 1_000_000,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
        DataType::Date32 => 86_400_000_000_000,
        _ => 1,
    }
}

/// A width as (numerator, unit) in time-key units (see [`WindowIndex::widths`]).
fn width_in_keys(width: &Tolerance, time_type: &DataType) -> Result<(i128, i128)> {
    let (numerator, unit) = match width {
        Tolerance::Duration(nanos) => (*nanos, unit_nanos(time_type)),
        Tolerance::Number(value) => {
            let v = value.cast_to(&DataType::Int64)?;
            match v {
                datafusion::common::ScalarValue::Int64(Some(v)) => (i128::from(v), 1),
                _ => return internal_err!("window width {value} is not an integer"),
            }
        }
    };
    if numerator <= 0 {
        return internal_err!("window width must be positive");
    }
    Ok((numerator, unit))
}

/// An integer argument of `function` as BIGINT: an error naming the function for a value that
/// does not fit (an UNSIGNED BIGINT past 2^63 - 1), never a NULL in its place.
pub(super) fn integers(function: AggFunction, arg: &ArrayRef) -> Result<Int64Array> {
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = arrow::compute::cast_with_options(arg, &DataType::Int64, &options).map_err(|e| {
        datafusion::error::DataFusionError::Execution(format!(
            "{}(x): a value does not fit BIGINT ({e}); cast x to DECIMAL(38, 0)",
            function.name()
        ))
    })?;
    Ok(cast.as_primitive::<Int64Type>().clone())
}

fn prepare(function: AggFunction, arg: Option<&ArrayRef>) -> Result<Values> {
    let Some(arg) = arg else {
        return Ok(Values::None);
    };
    let rows = || -> Result<Values> {
        let converter = RowConverter::new(vec![SortField::new(arg.data_type().clone())])?;
        Ok(Values::Rows(
            arg.clone(),
            converter.convert_columns(std::slice::from_ref(arg))?,
        ))
    };
    Ok(match function {
        AggFunction::CountStar => Values::None,
        AggFunction::Count | AggFunction::First | AggFunction::Last => Values::Array(arg.clone()),
        AggFunction::Min | AggFunction::Max => match Native::of(arg)? {
            Some(native) => Values::Native(arg.clone(), native),
            None => rows()?,
        },
        AggFunction::CountDistinct => rows()?,
        _ => match arg.data_type() {
            DataType::Decimal128(_, scale) => {
                Values::Decimal(arg.as_primitive::<Decimal128Type>().clone(), *scale)
            }
            t if t.is_integer() => Values::Int(integers(function, arg)?),
            _ => Values::Float(
                cast(arg, &DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            ),
        },
    })
}

impl WindowIndex {
    /// Groups and sorts the right rows.
    pub fn build(spec: WindowSpec, right: RightArrays) -> Result<Self> {
        Self::build_with(spec, right, 1)
    }

    /// Groups and sorts the right rows, sorting with up to `threads` threads.
    pub fn build_with(spec: WindowSpec, right: RightArrays, threads: usize) -> Result<Self> {
        let mut builder = WindowIndexBuilder::new(spec)?;
        builder.push(right)?;
        builder.finish(threads)
    }

    /// Bytes held, for the memory pool.
    pub fn memory_size(&self) -> usize {
        let groups = self.groups.memory_size();
        let values: usize = self
            .values
            .iter()
            .map(|v| match v {
                Values::None => 0,
                Values::Array(a) => a.get_array_memory_size(),
                Values::Rows(a, r) => a.get_array_memory_size() + r.size(),
                Values::Native(a, n) => a.get_array_memory_size() + n.memory_size(),
                Values::Int(a) => a.get_array_memory_size(),
                Values::Float(a) => a.get_array_memory_size(),
                Values::Decimal(a, _) => a.get_array_memory_size(),
            })
            .sum();
        groups + values + 4 * self.offsets.len() + 8 * (self.times.len() + self.known.len())
    }

    /// The right rows that can fall in some window.
    pub fn num_rows(&self) -> usize {
        self.times.len()
    }

    /// The aggregates of `len` left rows with keys `keys` and times `time`: one array per
    /// aggregate.
    pub fn aggregate(&self, keys: &[ArrayRef], time: &ArrayRef) -> Result<Vec<ArrayRef>> {
        let len = time.len();
        let times = time_keys(time.as_ref(), false)?;
        let key_view = self.groups.view(keys)?;
        let strict = self.spec.strict;
        // Per left row: its group's entries up to the window's end, and its time; an empty
        // range for a row that can match nothing.
        let mut ends: Vec<(u32, u32)> = Vec::with_capacity(len);
        let mut at: Vec<i64> = Vec::with_capacity(len);
        let null_keys = null_keys(keys, &self.spec.keys);
        for (i, t) in times.iter().enumerate() {
            let group = match t {
                Some(_) if is_null(&null_keys, i) => None,
                Some(_) => self.groups.get(&key_view, i),
                None => None,
            };
            let (Some(g), Some(t)) = (group, *t) else {
                ends.push((0, 0));
                at.push(0);
                continue;
            };
            let (start, end) = (self.offsets[g as usize], self.offsets[g as usize + 1]);
            let group = &self.times[start as usize..end as usize];
            let end = match strict {
                true => group.partition_point(|&e| e < t),
                false => group.partition_point(|&e| e <= t),
            };
            ends.push((start, start + end as u32));
            at.push(t);
        }
        drop(key_view);
        // Per distinct width, each left row's window.
        let windows: Vec<Vec<(u32, u32)>> = self
            .widths
            .iter()
            .map(|width| {
                ends.iter()
                    .zip(&at)
                    .map(|(&(start, end), &t)| {
                        let group = &self.times[start as usize..end as usize];
                        (start + width.start(group, t, strict) as u32, end)
                    })
                    .collect()
            })
            .collect();
        drop(ends);
        let mut sums = FloatSums::default();
        self.spec
            .aggregates
            .iter()
            .enumerate()
            .map(|(a, agg)| {
                let windows = Windows {
                    ranges: &windows[self.width_of[a]],
                    at: &at,
                };
                self.aggregate_one(a, agg, &windows, &mut sums)
            })
            .collect()
    }

    /// Per left row, the exact sum of the non-NULL values of `arg` in its window for aggregate
    /// `a`, and their number: computed once per array and width, for every sum and mean of
    /// them.
    fn float_sums(
        &self,
        arg: &Float64Array,
        windows: &Windows<'_>,
        a: usize,
        cache: &mut FloatSums,
    ) -> SumsOf {
        let key = (arg.values().as_ptr() as usize, self.width_of[a]);
        if let Some((_, done)) = cache.0.iter().find(|(k, _)| *k == key) {
            return done.clone();
        }
        let mut sum = ExactSum::new();
        let sums: SumsOf = Arc::new(
            (0..windows.len())
                .map(|i| {
                    sum.clear();
                    let mut n = 0;
                    for r in self.rows(windows, i).filter(|&r| arg.is_valid(r)) {
                        sum.add(arg.value(r));
                        n += 1;
                    }
                    (if n > 0 { sum.value() } else { 0.0 }, n)
                })
                .collect(),
        );
        cache.0.push((key, sums.clone()));
        sums
    }

    /// Whether entry `p` is known at time `t`.
    #[inline]
    fn known(&self, p: usize, t: i64) -> bool {
        match self.known.get(p) {
            None => true,
            Some(&c) if self.spec.strict => c < t,
            Some(&c) => c <= t,
        }
    }

    /// The entries of left row `i`'s window, known at its time, from the earliest.
    #[inline]
    fn rows<'a>(
        &'a self,
        windows: &Windows<'_>,
        i: usize,
    ) -> impl DoubleEndedIterator<Item = usize> + 'a {
        let (lo, hi) = windows.ranges[i];
        let t = windows.at[i];
        (lo as usize..hi as usize).filter(move |&p| self.known(p, t))
    }

    /// Per left row, the greatest (`max`) or least non-NULL value of its window by `greater`;
    /// of equal extremes, the first.
    fn extreme(
        &self,
        windows: &Windows<'_>,
        arg: &ArrayRef,
        max: bool,
        greater: impl Fn(usize, usize) -> bool,
    ) -> Result<ArrayRef> {
        let picked: UInt32Array = (0..windows.len())
            .map(|i| {
                self.rows(windows, i)
                    .filter(|&r| arg.is_valid(r))
                    .reduce(|best, r| {
                        if (max && greater(r, best)) || (!max && greater(best, r)) {
                            r
                        } else {
                            best
                        }
                    })
                    .map(|r| r as u32)
            })
            .collect();
        Ok(take(arg.as_ref(), &picked, None)?)
    }

    fn aggregate_one(
        &self,
        a: usize,
        agg: &KernelAggregate,
        windows: &Windows<'_>,
        sums: &mut FloatSums,
    ) -> Result<ArrayRef> {
        let values = &self.values[a];
        let overflow = || {
            datafusion::error::DataFusionError::Execution(format!(
                "{}: the sum of a window leaves the result type; cast the argument to DOUBLE \
                 (or a wider DECIMAL)",
                agg.name
            ))
        };
        Ok(match (agg.function, values) {
            // Without knowledge time every entry of a window counts: its length.
            (AggFunction::CountStar, _) if self.known.is_empty() => {
                Arc::new(Int64Array::from_iter_values(
                    windows.ranges.iter().map(|&(lo, hi)| i64::from(hi - lo)),
                ))
            }
            (AggFunction::CountStar, _) => Arc::new(Int64Array::from_iter_values(
                (0..windows.len()).map(|i| self.rows(windows, i).count() as i64),
            )),
            (AggFunction::Count, Values::Array(arg)) => {
                Arc::new(Int64Array::from_iter_values((0..windows.len()).map(|i| {
                    self.rows(windows, i).filter(|&r| arg.is_valid(r)).count() as i64
                })))
            }
            (AggFunction::CountDistinct, Values::Rows(arg, rows)) => {
                let mut seen: HashSet<&[u8]> = HashSet::new();
                Arc::new(Int64Array::from_iter_values((0..windows.len()).map(|i| {
                    seen.clear();
                    for r in self.rows(windows, i).filter(|&r| arg.is_valid(r)) {
                        seen.insert(rows.row(r).data());
                    }
                    seen.len() as i64
                })))
            }
            (AggFunction::Min | AggFunction::Max, Values::Native(arg, native)) => {
                let max = agg.function == AggFunction::Max;
                self.extreme(windows, arg, max, |x, y| native.greater(x, y))?
            }
            (AggFunction::Min | AggFunction::Max, Values::Rows(arg, rows)) => {
                let max = agg.function == AggFunction::Max;
                self.extreme(windows, arg, max, |x, y| rows.row(x) > rows.row(y))?
            }
            (AggFunction::First, Values::Array(arg)) => {
                let picked: UInt32Array = (0..windows.len())
                    .map(|i| self.first(windows, i, arg.as_ref()))
                    .collect();
                take(arg.as_ref(), &picked, None)?
            }
            (AggFunction::Last, Values::Array(arg)) => match agg.k {
                None => {
                    let picked: UInt32Array = (0..windows.len())
                        .map(|i| {
                            self.rows(windows, i)
                                .rev()
                                .find(|&r| arg.is_valid(r))
                                .map(|r| r as u32)
                        })
                        .collect();
                    take(arg.as_ref(), &picked, None)?
                }
                Some(k) => {
                    let k = k.min(MAX_LAST_K);
                    let mut picked: Vec<u32> = Vec::new();
                    let mut lengths: Vec<usize> = Vec::with_capacity(windows.len());
                    for i in 0..windows.len() {
                        let before = picked.len();
                        picked.extend(
                            self.rows(windows, i)
                                .rev()
                                .filter(|&r| arg.is_valid(r))
                                .take(k)
                                .map(|r| r as u32),
                        );
                        lengths.push(picked.len() - before);
                    }
                    let items = take(arg.as_ref(), &UInt32Array::from(picked), None)?;
                    let field = Arc::new(Field::new("item", arg.data_type().clone(), true));
                    Arc::new(ListArray::try_new(
                        field,
                        OffsetBuffer::from_lengths(lengths),
                        items,
                        None,
                    )?)
                }
            },
            (AggFunction::Sum, Values::Int(arg)) => {
                let mut out = Vec::with_capacity(windows.len());
                for i in 0..windows.len() {
                    let mut sum: i128 = 0;
                    let mut any = false;
                    for r in self.rows(windows, i).filter(|&r| arg.is_valid(r)) {
                        sum += i128::from(arg.value(r));
                        any = true;
                    }
                    out.push(match any {
                        false => None,
                        true => Some(i64::try_from(sum).map_err(|_| overflow())?),
                    });
                }
                Arc::new(Int64Array::from(out))
            }
            (AggFunction::Sum, Values::Decimal(arg, scale)) => {
                const LIMIT: i128 = 10i128.pow(38);
                let mut out = Vec::with_capacity(windows.len());
                for i in 0..windows.len() {
                    let mut sum: Option<i128> = None;
                    for r in self.rows(windows, i).filter(|&r| arg.is_valid(r)) {
                        let s = sum
                            .unwrap_or(0)
                            .checked_add(arg.value(r))
                            .filter(|s| s.abs() < LIMIT);
                        match s {
                            Some(s) => sum = Some(s),
                            None => return Err(overflow()),
                        }
                    }
                    out.push(sum);
                }
                Arc::new(Decimal128Array::from(out).with_precision_and_scale(38, *scale)?)
            }
            (AggFunction::Sum, Values::Float(arg)) => {
                let sums = self.float_sums(arg, windows, a, sums);
                Arc::new(Float64Array::from_iter(
                    sums.iter().map(|&(sum, n)| (n > 0).then_some(sum)),
                ))
            }
            // The mean is the exact sum divided by the count: a sum of the same values over the
            // same windows has it already.
            (AggFunction::Avg, Values::Float(arg)) => {
                let sums = self.float_sums(arg, windows, a, sums);
                Arc::new(Float64Array::from_iter(
                    sums.iter().map(|&(sum, n)| (n > 0).then(|| sum / n as f64)),
                ))
            }
            (
                AggFunction::Avg
                | AggFunction::Var
                | AggFunction::VarPop
                | AggFunction::Stddev
                | AggFunction::StddevPop,
                values,
            ) => {
                let mut xs: Vec<f64> = Vec::new();
                let mut out = Vec::with_capacity(windows.len());
                for i in 0..windows.len() {
                    xs.clear();
                    let rows = self.rows(windows, i);
                    let avg = match values {
                        Values::Int(arg) => {
                            let mut sum: i128 = 0;
                            for r in rows.filter(|&r| arg.is_valid(r)) {
                                let v = arg.value(r);
                                sum += i128::from(v);
                                xs.push(v as f64);
                            }
                            sum as f64 / xs.len() as f64
                        }
                        Values::Decimal(arg, scale) => {
                            let mut sum: i128 = 0;
                            let unit = 10f64.powi(i32::from(*scale));
                            for r in rows.filter(|&r| arg.is_valid(r)) {
                                let v = arg.value(r);
                                sum = sum.saturating_add(v);
                                xs.push(v as f64 / unit);
                            }
                            sum as f64 / unit / xs.len() as f64
                        }
                        Values::Float(arg) => {
                            xs.extend(rows.filter(|&r| arg.is_valid(r)).map(|r| arg.value(r)));
                            super::exact_sum(xs.iter().copied()) / xs.len() as f64
                        }
                        _ => return internal_err!("window {}: no numbers", agg.name),
                    };
                    out.push(moment(agg.function, avg, &xs));
                }
                Arc::new(Float64Array::from(out))
            }
            (f, _) => return internal_err!("window aggregate {} got the wrong values", f.name()),
        })
    }

    /// `first(x)`: the earliest non-NULL value; of rows tied on that time, the one the tie rule
    /// prefers (the last of them in entry order).
    fn first(&self, windows: &Windows<'_>, i: usize, arg: &dyn Array) -> Option<u32> {
        let (lo, hi) = windows.ranges[i];
        let (lo, hi, t) = (lo as usize, hi as usize, windows.at[i]);
        let usable = |p: usize| self.known(p, t) && arg.is_valid(p);
        let first = (lo..hi).find(|&p| usable(p))?;
        let time = self.times[first];
        let last_tied = (first..hi)
            .take_while(|&p| self.times[p] == time)
            .filter(|&p| usable(p))
            .last()?;
        Some(last_tied as u32)
    }
}

/// The float sums of a batch computed so far, by (values, width) (see
/// [`WindowIndex::float_sums`]).
#[derive(Default)]
struct FloatSums(Vec<((usize, usize), SumsOf)>);

/// Per left row, an exact sum and the number of values in it.
type SumsOf = Arc<Vec<(f64, usize)>>;

/// The windows of a batch of left rows for one width: per row, its entries `lo..hi` (before the
/// knowledge-time check) and its time.
struct Windows<'a> {
    ranges: &'a [(u32, u32)],
    at: &'a [i64],
}

impl Windows<'_> {
    fn len(&self) -> usize {
        self.ranges.len()
    }
}

/// A [`WindowIndex`] built from the right input a batch at a time, as it arrives: each batch's
/// rows are grouped and their times read when it comes (while later ones are still being read),
/// the sorting and gathering done once at the end.
pub struct WindowIndexBuilder {
    spec: WindowSpec,
    groups: Groups,
    /// Per row, its group, or [`NO_GROUP`] for a row no window can hold.
    group_of: Vec<u32>,
    /// Per group, its rows.
    counts: Vec<u32>,
    /// Per row, its time key (meaningless for a row without a group).
    times: Vec<i64>,
    /// Per row, its knowledge time key, when the join has them.
    known: Option<Vec<i64>>,
    /// Per aggregate, its argument's arrays, one per batch.
    args: Vec<Option<Vec<ArrayRef>>>,
    /// Per tie-break column, its arrays, one per batch.
    tiebreak: Vec<Vec<ArrayRef>>,
}

/// The group of a row no window can hold (a NULL time, key or knowledge time).
pub(super) const NO_GROUP: u32 = u32::MAX;

impl WindowIndexBuilder {
    /// An index of no rows yet, for the join `spec`.
    pub fn new(spec: WindowSpec) -> Result<Self> {
        Ok(Self {
            groups: Groups::new(&spec.keys)?,
            known: spec.has_known.then(Vec::new),
            args: spec.aggregates.iter().map(|_| None).collect(),
            tiebreak: Vec::new(),
            group_of: Vec::new(),
            counts: Vec::new(),
            times: Vec::new(),
            spec,
        })
    }

    /// Groups one batch's rows and reads their times.
    pub fn push(&mut self, right: RightArrays) -> Result<()> {
        let n = right.time.len();
        if u32::try_from(self.group_of.len() + n).is_err() {
            return exec_err!(
                "a window join's right input has more than {} rows; at most that fits one index",
                u32::MAX - 1
            );
        }
        if right.args.len() != self.spec.aggregates.len()
            || (self.known.is_some() != right.known.is_some())
        {
            return internal_err!("window join: the right arrays do not match the join");
        }
        let spec = &self.spec;
        let key_view = self.groups.view(&right.keys)?;
        let (times, times_valid) = dense_time_keys(right.time.as_ref())?;
        let known = match &right.known {
            Some(k) => Some(dense_time_keys(k.as_ref())?),
            None => None,
        };
        let null_keys = null_keys(&right.keys, &spec.keys);
        self.group_of.reserve(n);
        for i in 0..n {
            if is_null(&times_valid, i)
                || known.as_ref().is_some_and(|(_, valid)| is_null(valid, i))
                || is_null(&null_keys, i)
            {
                self.group_of.push(NO_GROUP);
                continue;
            }
            let g = self.groups.get_or_insert(&key_view, i);
            if g as usize == self.counts.len() {
                self.counts.push(0);
            }
            self.counts[g as usize] += 1;
            self.group_of.push(g);
        }
        drop(key_view);
        self.times.extend_from_slice(&times);
        if let (Some(all), Some((k, _))) = (&mut self.known, known) {
            all.extend_from_slice(&k);
        }
        for (pieces, arg) in self.args.iter_mut().zip(right.args) {
            if let Some(arg) = arg {
                pieces.get_or_insert_with(Vec::new).push(arg);
            }
        }
        if self.tiebreak.is_empty() {
            self.tiebreak = right.tiebreak.iter().map(|_| Vec::new()).collect();
        }
        for (pieces, column) in self.tiebreak.iter_mut().zip(right.tiebreak) {
            pieces.push(column);
        }
        Ok(())
    }

    /// Sorts the rows pushed by (group, time, tie rule) and gathers the arguments into that
    /// order, sorting with up to `threads` threads.
    pub fn finish(self, threads: usize) -> Result<WindowIndex> {
        let WindowIndexBuilder {
            spec,
            groups,
            group_of,
            counts,
            times,
            known,
            args,
            tiebreak,
        } = self;
        let started = std::time::Instant::now();
        // (time, row) per entry; within a group, rows in their input order.
        let (offsets, mut entries) = group_entries(&counts, &group_of, &times);
        drop((counts, group_of, times));
        // The arguments and tie-break columns whole, an argument read by several aggregates
        // (`sum(x)`, `avg(x)`) made once, so it is gathered once below.
        let mut args: Vec<Option<ArrayRef>> = {
            let mut whole: Vec<(usize, ArrayRef)> = Vec::new();
            let mut out = Vec::with_capacity(args.len());
            for (a, pieces) in args.iter().enumerate() {
                let Some(pieces) = pieces else {
                    out.push(None);
                    continue;
                };
                let same = whole.iter().find(|(b, _)| {
                    args[*b].as_ref().is_some_and(|other| {
                        other.len() == pieces.len()
                            && other.iter().zip(pieces).all(|(x, y)| Arc::ptr_eq(x, y))
                    })
                });
                let array = match same {
                    Some((_, array)) => array.clone(),
                    None => concat_pieces(pieces)?,
                };
                whole.push((a, array.clone()));
                out.push(Some(array));
            }
            out
        };
        let tiebreak: Vec<ArrayRef> = tiebreak
            .iter()
            .map(|pieces| concat_pieces(pieces))
            .collect::<Result<_>>()?;

        let positional: Vec<&ArrayRef> = spec
            .aggregates
            .iter()
            .zip(&args)
            .filter(|(a, _)| a.function.is_positional())
            .filter_map(|(_, arg)| arg.as_ref())
            .collect();
        if positional.is_empty() {
            sort_groups(&mut entries, &offsets, threads, |a, b| a.cmp(b));
        } else {
            // Within a (group, time), the row the tie rule prefers sorts last: `TIEBREAK BY`
            // reversed, then the values ascending (the greatest wins, NULL lowest).
            let mut fields: Vec<SortField> = tiebreak
                .iter()
                .zip(&spec.tiebreak)
                .map(|(a, o)| {
                    SortField::new_with_options(
                        a.data_type().clone(),
                        SortOptions {
                            descending: !o.descending,
                            nulls_first: !o.nulls_first,
                        },
                    )
                })
                .collect();
            let mut columns: Vec<ArrayRef> = tiebreak.clone();
            for arg in positional {
                fields.push(SortField::new(arg.data_type().clone()));
                columns.push(arg.clone());
            }
            let tie = RowConverter::new(fields)?.convert_columns(&columns)?;
            sort_groups(&mut entries, &offsets, threads, |a, b| {
                a.0.cmp(&b.0)
                    .then_with(|| tie.row(a.1 as usize).cmp(&tie.row(b.1 as usize)))
                    .then(a.1.cmp(&b.1))
            });
        }

        let sorted = started.elapsed();
        let sorted_times: Vec<i64> = entries.iter().map(|e| e.0).collect();
        let sorted_known: Vec<i64> = match known {
            // Rows without a knowledge time were left out above.
            Some(k) => entries.iter().map(|e| k[e.1 as usize]).collect(),
            None => Vec::new(),
        };
        drop(tiebreak);
        let order = UInt32Array::from_iter_values(entries.iter().map(|e| e.1));
        drop(entries);

        // The arguments in entry order, each array gathered once however many aggregates read
        // it (`sum(x)` and `avg(x)` get the same array).
        let mut gathered: Vec<(ArrayRef, ArrayRef)> = Vec::new();
        let mut values = Vec::with_capacity(spec.aggregates.len());
        for (a, arg) in spec.aggregates.iter().zip(args.iter_mut()) {
            // Each whole argument goes once gathered.
            let arg = arg.take();
            let arg = match arg {
                None => None,
                Some(arg) => Some(
                    match gathered.iter().find(|(of, _)| Arc::ptr_eq(of, &arg)) {
                        Some((_, done)) => done.clone(),
                        None => {
                            let done = gather(&arg, &order, threads)?;
                            gathered.push((arg.clone(), done.clone()));
                            done
                        }
                    },
                ),
            };
            values.push(prepare(a.function, arg.as_ref())?);
        }
        drop(gathered);
        tracing::debug!(
            target: "pitlake::window",
            groups = groups.len(),
            sorted_ms = sorted.as_millis() as u64,
            gathered_ms = (started.elapsed() - sorted).as_millis() as u64,
            "window index: phases"
        );
        let (widths, width_of) = distinct_widths(&spec)?;
        Ok(WindowIndex {
            spec,
            groups,
            offsets,
            times: sorted_times,
            known: sorted_known,
            values,
            widths,
            width_of,
        })
    }
}

/// The rows `order` of `array`, in that order, taken by up to `threads` threads (one per core
/// at most), each a run of `order`, and the runs concatenated.
pub(super) fn gather(array: &ArrayRef, order: &UInt32Array, threads: usize) -> Result<ArrayRef> {
    // Below this many rows a thread costs more than it saves.
    let threads = worker_threads(threads, order.len(), 1 << 18);
    if threads == 1 {
        return Ok(take(array.as_ref(), order, None)?);
    }
    let per = order.len().div_ceil(threads);
    let runs: Vec<Result<ArrayRef>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..order.len())
            .step_by(per)
            .map(|from| {
                let run = order.slice(from, per.min(order.len() - from));
                scope.spawn(move || Ok(take(array.as_ref(), &run, None)?))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    internal_err!("window join: a thread gathering the index's values panicked")
                })
            })
            .collect()
    });
    let runs = runs.into_iter().collect::<Result<Vec<_>>>()?;
    concat_pieces(&runs)
}

/// A counting sort of rows by group: per group `g` (of `counts[g]` rows) its entries are
/// `offsets[g]..offsets[g + 1]`, each entry a row's `(times[row], row)`, rows of a group in
/// their input order; a row of group [`NO_GROUP`] has none.
pub(super) fn group_entries(
    counts: &[u32],
    group_of: &[u32],
    times: &[i64],
) -> (Vec<u32>, Vec<(i64, u32)>) {
    let mut offsets = Vec::with_capacity(counts.len() + 1);
    offsets.push(0u32);
    for c in counts {
        offsets.push(offsets[offsets.len() - 1] + c);
    }
    let mut next: Vec<u32> = offsets[..offsets.len() - 1].to_vec();
    let mut entries: Vec<(i64, u32)> = vec![(0, 0); offsets[offsets.len() - 1] as usize];
    for (row, &g) in group_of.iter().enumerate() {
        if g != NO_GROUP {
            let at = &mut next[g as usize];
            entries[*at as usize] = (times[row], row as u32);
            *at += 1;
        }
    }
    (offsets, entries)
}

/// The distinct window widths of `spec`'s aggregates, and per aggregate its width's place among
/// them (aggregates of one width share the search for their windows).
pub(super) fn distinct_widths(spec: &WindowSpec) -> Result<(Vec<Width>, Vec<usize>)> {
    let mut widths = Vec::new();
    let mut width_of = Vec::with_capacity(spec.aggregates.len());
    for a in &spec.aggregates {
        let (numerator, unit) = width_in_keys(&a.width, &spec.time_type)?;
        let width = Width::new(numerator, unit);
        width_of.push(match widths.iter().position(|w| *w == width) {
            Some(at) => at,
            None => {
                widths.push(width);
                widths.len() - 1
            }
        });
    }
    Ok((widths, width_of))
}

/// One array of `pieces` (one per batch).
fn concat_pieces(pieces: &[ArrayRef]) -> Result<ArrayRef> {
    Ok(match pieces {
        [one] => one.clone(),
        _ => {
            let arrays: Vec<&dyn Array> = pieces.iter().map(|a| a.as_ref()).collect();
            arrow::compute::concat(&arrays)?
        }
    })
}

/// Sorts each group's entries (`offsets[g]..offsets[g + 1]`) by `cmp`, the groups split into up
/// to `threads` runs of about equal size sorted side by side.
fn sort_groups<T: Send>(
    entries: &mut [T],
    offsets: &[u32],
    threads: usize,
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering + Sync,
) {
    let sort = |entries: &mut [T], offsets: &[u32]| {
        let base = offsets[0] as usize;
        for w in offsets.windows(2) {
            entries[w[0] as usize - base..w[1] as usize - base].sort_unstable_by(&cmp);
        }
    };
    // Below this many entries a thread costs more than it saves.
    let threads = worker_threads(threads, entries.len(), 1 << 16);
    if threads == 1 || offsets.len() < 2 {
        return sort(entries, offsets);
    }
    std::thread::scope(|scope| {
        let mut rest = entries;
        for w in group_runs(offsets, threads).windows(2) {
            let (first, last) = (w[0], w[1]);
            let (run, tail) = rest.split_at_mut((offsets[last] - offsets[first]) as usize);
            rest = tail;
            let groups = &offsets[first..=last];
            let sort = &sort;
            scope.spawn(move || sort(run, groups));
        }
    });
}

/// The mean (`avg`), or the variance or standard deviation around it, of `xs`: NULL for no
/// values, and for fewer than two for the sample forms.
fn moment(function: AggFunction, mean: f64, xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    let sample = matches!(function, AggFunction::Var | AggFunction::Stddev);
    if n == 0 || (sample && n < 2) {
        return None;
    }
    if function == AggFunction::Avg {
        return Some(mean);
    }
    let squares = super::exact_sum(xs.iter().map(|x| (x - mean) * (x - mean)));
    let var = squares / (if sample { n - 1 } else { n }) as f64;
    Some(match function {
        AggFunction::Stddev | AggFunction::StddevPop => var.sqrt(),
        _ => var,
    })
}

/// The rows with a NULL in a key that does not treat NULL as equal, as one bitmap (`None`: no
/// such row): checked per row as a bit, not through each key array's vtable.
pub(super) fn null_keys(keys: &[ArrayRef], specs: &[(DataType, bool)]) -> Option<NullBuffer> {
    keys.iter()
        .zip(specs)
        .filter(|(_, (_, null_equal))| !null_equal)
        .fold(None, |nulls, (k, _)| {
            NullBuffer::union(nulls.as_ref(), k.nulls())
        })
}

/// Whether row `i` is NULL in `valid` (`None`: no row is), a bitmap such as [`null_keys`] or
/// `dense_time_keys` give.
#[inline]
pub(crate) fn is_null(valid: &Option<NullBuffer>, i: usize) -> bool {
    valid.as_ref().is_some_and(|v| v.is_null(i))
}
