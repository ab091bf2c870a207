//! The as-of join the other way round: the left rows (the labels) indexed, the right rows (the
//! feature rows) streamed through once. For a right input much larger than the left (10M
//! feature rows, 1M labels) nothing of the right side is kept but, per left row, the one right
//! row that is its best match so far: memory follows the labels, and the right input is read at
//! the speed of its decoding.
//!
//! # How it runs
//!
//! Build: the left rows are grouped by key and each group sorted by time ([`LeftKeys`], the
//! same index a window join's left build uses); each left row's entry gets a record, empty at
//! first.
//!
//! Stream ([`LeftIndex::apply`], a task per right partition, a chunk of its batches at a time):
//! a right row at time `e` (known at `c`) is eligible, backward, for exactly the left rows of
//! its key at `t >= max(e, c)` (`t > e` for `>`), a suffix of its group's time order; forward,
//! for those at `t <= e` (`t < e`), a prefix. So it is offered to one entry, the first
//! (backward) or last (forward) of its range, and kept there if it beats the record's row under
//! the join's order (the time, then the `TIEBREAK BY` values, then the whole row:
//! docs/semantics.md). A chunk's rows are first put in the order of their left groups (a
//! counting sort of a 16-byte place per row), so the searches move through the left's times in
//! order and the rows reaching one entry come together: only the one of them with the latest
//! time (all of those tied on it) is offered. Only the rows offered get a record, written in
//! arrival order; they are offered under the lock the tasks share, in entry order.
//!
//! Finish ([`LeftIndex::finish`]): one sweep through each group carries the best record forward
//! (backward: each entry takes the better of its own and the one before it; forward, from the
//! end): an entry then holds the best of every right row eligible for it. A tolerance is checked
//! on the result (the best eligible row is the latest; if it is too old, every other one is
//! older still).
//!
//! A record is a row of 64-bit words: the time as a score (greater wins), the tie-break values
//! and the right row's other columns as order-preserving keys, then a word of NULL flags; a
//! column that is the time or a tie-break shares its word, and a record of up to 8 words takes
//! one aligned cache line. It holds the right columns' values, which are read back out of it:
//! so every right column must be of a type a word holds ([`word_type`]), except key columns
//! equal to the left's keys (taken from the left). The exec indexes the right side otherwise.

use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, PrimitiveArray};
use arrow::buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use arrow::compute::SortOptions;
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, DurationMicrosecondType, DurationMillisecondType,
    DurationNanosecondType, DurationSecondType, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, Time32MillisecondType, Time32SecondType, Time64MicrosecondType,
    Time64NanosecondType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::{Result, internal_datafusion_err, internal_err};

use super::kernel::{Direction, MatchSpec};
use super::time::dense_time_keys_into;
use super::window::{LeftKeys, NO_ENTRY, is_null};
use crate::memory::prefetch;

/// The sign bit, flipped to order signed values as unsigned words.
const SIGN: u64 = 1 << 63;
/// In a record's flags word: the record holds a row.
const OCCUPIED: u64 = 1 << 63;
/// How many rows ahead a row's record is fetched.
const AHEAD: usize = 16;

/// A `match` on a type a record keeps in a word, from the one list of those types: each type
/// of signed integers (integers, dates, times, timestamps, durations) as `$signed!(Type,
/// args…)`, each of unsigned integers as `$unsigned!(Type, args…)`, then the arms given (the
/// booleans', the floats', and the rest's). Both directions of the order keys ([`order_keys`],
/// [`from_keys`]) and [`word_type`] read it, so none knows a type the others do not.
macro_rules! match_word_type {
    (
        $dt:expr, $signed:ident, $unsigned:ident, ($($args:tt)*),
        { $($arm:pat => $e:expr),+ $(,)? }
    ) => {
        match $dt {
            DataType::Int8 => $signed!(Int8Type, $($args)*),
            DataType::Int16 => $signed!(Int16Type, $($args)*),
            DataType::Int32 => $signed!(Int32Type, $($args)*),
            DataType::Int64 => $signed!(Int64Type, $($args)*),
            DataType::UInt8 => $unsigned!(UInt8Type, $($args)*),
            DataType::UInt16 => $unsigned!(UInt16Type, $($args)*),
            DataType::UInt32 => $unsigned!(UInt32Type, $($args)*),
            DataType::UInt64 => $unsigned!(UInt64Type, $($args)*),
            DataType::Date32 => $signed!(Date32Type, $($args)*),
            DataType::Date64 => $signed!(Date64Type, $($args)*),
            DataType::Time32(TimeUnit::Second) => $signed!(Time32SecondType, $($args)*),
            DataType::Time32(TimeUnit::Millisecond) => {
                $signed!(Time32MillisecondType, $($args)*)
            }
            DataType::Time64(TimeUnit::Microsecond) => {
                $signed!(Time64MicrosecondType, $($args)*)
            }
            DataType::Time64(TimeUnit::Nanosecond) => $signed!(Time64NanosecondType, $($args)*),
            DataType::Timestamp(TimeUnit::Second, _) => $signed!(TimestampSecondType, $($args)*),
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                $signed!(TimestampMillisecondType, $($args)*)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                $signed!(TimestampMicrosecondType, $($args)*)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                $signed!(TimestampNanosecondType, $($args)*)
            }
            DataType::Duration(TimeUnit::Second) => $signed!(DurationSecondType, $($args)*),
            DataType::Duration(TimeUnit::Millisecond) => {
                $signed!(DurationMillisecondType, $($args)*)
            }
            DataType::Duration(TimeUnit::Microsecond) => {
                $signed!(DurationMicrosecondType, $($args)*)
            }
            DataType::Duration(TimeUnit::Nanosecond) => {
                $signed!(DurationNanosecondType, $($args)*)
            }
            $($arm => $e,)+
        }
    };
}

/// `true`, for any type of [`match_word_type`]'s list.
macro_rules! listed {
    ($t:ty,) => {
        true
    };
}

/// Whether a record keeps values of `data_type` in a word: integers, floats, booleans, dates,
/// times, timestamps and durations.
pub(crate) fn word_type(data_type: &DataType) -> bool {
    match_word_type!(data_type, listed, listed, (), {
        DataType::Boolean | DataType::Float32 | DataType::Float64 => true,
        _ => false,
    })
}

/// The most words a record has: the flags word has a bit per tie-break and column, and one for
/// "occupied".
pub(crate) const MAX_VALUES: usize = 63;

fn typed<T: ArrowPrimitiveType>(array: &dyn Array) -> Result<&PrimitiveArray<T>> {
    array
        .as_primitive_opt::<T>()
        .ok_or_else(|| internal_datafusion_err!("left build: {} expected", T::DATA_TYPE))
}

/// Appends `key` of the values of `values` at `rows`.
#[inline(always)]
fn keys_at<T: Copy>(values: &[T], rows: &[u32], out: &mut Vec<u64>, key: impl Fn(T) -> u64) {
    out.extend(rows.iter().map(|&i| key(values[i as usize])));
}

macro_rules! keys_signed {
    ($t:ty, $array:expr, $rows:expr, $out:expr) => {
        keys_at(typed::<$t>($array)?.values(), $rows, $out, |v| {
            (v as i64 as u64) ^ SIGN
        })
    };
}

macro_rules! keys_unsigned {
    ($t:ty, $array:expr, $rows:expr, $out:expr) => {
        keys_at(typed::<$t>($array)?.values(), $rows, $out, |v| v as u64)
    };
}

/// The bits of an `f64` as a word in IEEE total order (`-NaN < -inf < … < -0.0 < 0.0 < …`).
fn f64_key(v: f64) -> u64 {
    let b = v.to_bits();
    if b & SIGN != 0 { !b } else { b | SIGN }
}

fn f64_of(k: u64) -> f64 {
    f64::from_bits(if k & SIGN != 0 { k & !SIGN } else { !k })
}

fn f32_key(v: f32) -> u64 {
    let b = v.to_bits();
    u64::from(if b & (1 << 31) != 0 {
        !b
    } else {
        b | (1 << 31)
    })
}

fn f32_of(k: u64) -> f32 {
    let k = k as u32;
    f32::from_bits(if k & (1 << 31) != 0 {
        k & !(1 << 31)
    } else {
        !k
    })
}

/// Appends the order key of the value of `array` at each of `rows` (meaningless where it is
/// NULL): a word that orders as the value does (floats in IEEE total order, `false < true`).
fn order_keys(array: &dyn Array, rows: &[u32], out: &mut Vec<u64>) -> Result<()> {
    match_word_type!(array.data_type(), keys_signed, keys_unsigned, (array, rows, out), {
        DataType::Boolean => {
            let values = array.as_boolean().values();
            out.extend(rows.iter().map(|&i| u64::from(values.value(i as usize))));
        },
        DataType::Float32 => keys_at(typed::<Float32Type>(array)?.values(), rows, out, f32_key),
        DataType::Float64 => keys_at(typed::<Float64Type>(array)?.values(), rows, out, f64_key),
        other => return internal_err!("left build: {other} is not kept in a word"),
    });
    Ok(())
}

fn primitive<T: ArrowPrimitiveType>(
    data_type: &DataType,
    keys: &[u64],
    nulls: Option<NullBuffer>,
    value: impl Fn(u64) -> T::Native,
) -> ArrayRef {
    let values: ScalarBuffer<T::Native> = keys.iter().map(|&k| value(k)).collect();
    Arc::new(PrimitiveArray::<T>::new(values, nulls).with_data_type(data_type.clone()))
}

macro_rules! from_signed {
    ($t:ty, $dt:expr, $keys:expr, $nulls:expr) => {
        primitive::<$t>($dt, $keys, $nulls, |k| {
            ((k ^ SIGN) as i64) as <$t as ArrowPrimitiveType>::Native
        })
    };
}

macro_rules! from_unsigned {
    ($t:ty, $dt:expr, $keys:expr, $nulls:expr) => {
        primitive::<$t>($dt, $keys, $nulls, |k| {
            k as <$t as ArrowPrimitiveType>::Native
        })
    };
}

/// The array of `data_type` whose values have the order keys `keys` ([`order_keys`]' inverse).
fn from_keys(data_type: &DataType, keys: &[u64], nulls: Option<NullBuffer>) -> Result<ArrayRef> {
    let dt = data_type;
    Ok(
        match_word_type!(dt, from_signed, from_unsigned, (dt, keys, nulls), {
            DataType::Boolean => Arc::new(BooleanArray::new(
                keys.iter().map(|&k| k != 0).collect::<BooleanBuffer>(),
                nulls,
            )),
            DataType::Float32 => primitive::<Float32Type>(dt, keys, nulls, f32_of),
            DataType::Float64 => primitive::<Float64Type>(dt, keys, nulls, f64_of),
            other => return internal_err!("left build: {other} is not kept in a word"),
        }),
    )
}

/// Where a record keeps a right column's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A word of its own.
    Word,
    /// The time's score: the column is the join's time, a signed integer, date or timestamp
    /// (whose order key is its time key), never NULL in a record.
    Score,
    /// The word of tie-break `j`: the column is that tie-break.
    Tiebreak(usize),
}

/// What a record holds: after the time's score, the `TIEBREAK BY` values (in their written
/// order) and the words of the right row's other columns (compared ascending, NULL first, in
/// the right input's order), then the flags. A record of at most 8 words takes 8, one cache
/// line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Per tie-break, its written order.
    pub tiebreak: Vec<SortOptions>,
    /// The right columns a record holds: their types, and where their values are.
    pub columns: Vec<(DataType, Source)>,
}

impl Layout {
    /// The values with a word of their own: the tie-breaks, then the columns of
    /// [`Source::Word`].
    pub(crate) fn values(&self) -> usize {
        self.tiebreak.len() + self.words()
    }

    /// The columns with a word of their own.
    fn words(&self) -> usize {
        self.columns
            .iter()
            .filter(|(_, s)| *s == Source::Word)
            .count()
    }

    /// Words per record: one cache line (8 words) when that holds it.
    pub(crate) fn stride(&self) -> usize {
        let used = 2 + self.values();
        if used <= 8 { 8 } else { used }
    }

    /// Where column `c`'s value is: its word and NULL flag (`None` for the score).
    fn place(&self, c: usize) -> Option<usize> {
        match self.columns[c].1 {
            Source::Score => None,
            Source::Tiebreak(j) => Some(j),
            Source::Word => Some(
                self.tiebreak.len()
                    + self.columns[..c]
                        .iter()
                        .filter(|(_, s)| *s == Source::Word)
                        .count(),
            ),
        }
    }

    /// Whether record `a` holds a better row than record `b` under the join's order: the
    /// greater score (an empty record loses to every row), then the tie-break values (the one
    /// sorting first wins), then the whole row (the greatest wins, NULL least). Equal records
    /// hold rows equal in every compared column: neither beats the other.
    #[inline]
    fn beats(&self, a: &[u64], b: &[u64]) -> bool {
        let flags = a.len() - 1;
        let (fa, fb) = (a[flags], b[flags]);
        if fb & OCCUPIED == 0 || fa & OCCUPIED == 0 {
            return fa & OCCUPIED != 0 && fb & OCCUPIED == 0;
        }
        if a[0] != b[0] {
            return a[0] > b[0];
        }
        for (j, options) in self.tiebreak.iter().enumerate() {
            let (na, nb) = ((fa >> j) & 1 == 1, (fb >> j) & 1 == 1);
            let (ka, kb) = (a[1 + j], b[1 + j]);
            match (na, nb) {
                (true, true) => {}
                (true, false) => return options.nulls_first,
                (false, true) => return !options.nulls_first,
                (false, false) if ka != kb => return options.descending == (ka > kb),
                (false, false) => {}
            }
        }
        // A column kept as the score or a tie-break is equal in rows tied so far.
        for bit in self.tiebreak.len()..self.values() {
            let (na, nb) = ((fa >> bit) & 1 == 1, (fb >> bit) & 1 == 1);
            let (ka, kb) = (a[1 + bit], b[1 + bit]);
            match (na, nb) {
                (true, true) => {}
                (true, false) => return false,
                (false, true) => return true,
                (false, false) if ka != kb => return ka > kb,
                (false, false) => {}
            }
        }
        false
    }
}

/// One right batch, evaluated.
pub(crate) struct RightRows {
    /// The key columns, in the join's order.
    pub keys: Vec<ArrayRef>,
    /// The times.
    pub time: ArrayRef,
    /// The knowledge times, if the join has them.
    pub known: Option<ArrayRef>,
    /// The `TIEBREAK BY` values.
    pub tiebreak: Vec<ArrayRef>,
    /// The columns with a word of their own ([`Source::Word`]), in the layout's order.
    pub columns: Vec<ArrayRef>,
}

/// Per left entry, the record of its best right row so far: `all[start..]`, whose first word
/// starts a cache line.
pub(crate) struct Best {
    all: Vec<u64>,
    start: usize,
    /// Per entry, the score of its record (0 while it has none, which no row's score is below):
    /// a row whose score is lower cannot beat the record, and one whose score is higher does,
    /// so only ties read the records. An eighth of their size, these stay in the cache where
    /// the records do not, and most rows offered to an entry lose (in arrival order only the
    /// running maxima win: about ln n + 0.58 of n rows, expected, when the order is unrelated
    /// to the times).
    scores: Vec<u64>,
}

impl Best {
    fn words(&self) -> &[u64] {
        &self.all[self.start..]
    }

    fn words_mut(&mut self) -> &mut [u64] {
        &mut self.all[self.start..]
    }
}

/// A task's buffers, kept from chunk to chunk, and from one join of a chain to the next
/// (fresh pages cost a fault each).
#[derive(Default)]
pub(crate) struct Scratch {
    /// Per row of the chunk: its group, then (once sorted) the number of its offer, or
    /// [`NO_ENTRY`] if it is not offered; its time and knowledge time.
    group_of: Vec<u32>,
    times: Vec<i64>,
    known: Vec<i64>,
    /// Per group, where its rows go (a counting sort).
    counts: Vec<u32>,
    /// Per row with a group, in group order: (the group, the row, its time).
    places: Vec<(u32, u32, i64)>,
    /// Their knowledge times, in group order.
    sorted_known: Vec<i64>,
    /// Per row offered, in arrival order, its record. This, the two before and the one after
    /// are only ever grown: a chunk writes every place it reads, so what an earlier chunk
    /// left is never seen, and clearing them would write each chunk's records twice.
    records: Vec<u64>,
    /// Per offer, in entry order, where its record is.
    slots: Vec<u32>,
    /// Per offer, in entry order, its entry.
    entries: Vec<u32>,
    /// Per left group, the index in its times the last search of this task gave, the next
    /// search's first guess ([`search`]): kept from chunk to chunk, as the right side's time
    /// moves on slowly. Any value is only a guess, so one left by another join is harmless.
    hints: Vec<u32>,
    /// The rows of a batch that are offered, and one value's order keys for them.
    chosen: Vec<u32>,
    keys: Vec<u64>,
}

/// The number of `times` (ascending) for which `below` holds (a prefix), checked first at
/// `hint` and the index after it: the answer an earlier row of the same group got, which a
/// right side coming in about its time order mostly shares or passes by one. A hint past the
/// end is ignored; one on the wrong side narrows the search all the same.
#[inline(always)]
fn search(times: &[i64], hint: usize, below: impl Fn(i64) -> bool) -> usize {
    let len = times.len();
    if hint > len {
        return times.partition_point(|&t| below(t));
    }
    if hint > 0 && !below(times[hint - 1]) {
        return times[..hint - 1].partition_point(|&t| below(t));
    }
    if hint == len || !below(times[hint]) {
        return hint;
    }
    if hint + 1 == len || !below(times[hint + 1]) {
        return hint + 1;
    }
    hint + 2 + times[hint + 2..].partition_point(|&t| below(t))
}

/// `buffer` at least `len` long, what it holds kept.
fn grow<T: Copy + Default>(buffer: &mut Vec<T>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, T::default());
    }
}

/// Copies a record: one cache line as eight moves when it is one (the usual case), not a call.
#[inline]
fn copy_record(to: &mut [u64], from: &[u64]) {
    match (
        <&mut [u64; 8]>::try_from(&mut *to),
        <&[u64; 8]>::try_from(from),
    ) {
        (Ok(to), Ok(from)) => *to = *from,
        _ => to.copy_from_slice(from),
    }
}

/// The left rows by key and time, and how records are laid out.
pub(crate) struct LeftIndex {
    left: Arc<LeftKeys>,
    spec: MatchSpec,
    has_known: bool,
    layout: Layout,
}

impl LeftIndex {
    /// The index of the grouped left rows `left` for a join with the match condition `spec`.
    pub(crate) fn new(
        left: Arc<LeftKeys>,
        spec: MatchSpec,
        has_known: bool,
        layout: Layout,
    ) -> Result<Self> {
        if layout.values() > MAX_VALUES {
            return internal_err!("left build: more than {MAX_VALUES} values per record");
        }
        if has_known && spec.direction == Direction::Forward {
            return internal_err!("left build: a knowledge time with a forward condition");
        }
        Ok(Self {
            left,
            spec,
            has_known,
            layout,
        })
    }

    /// Bytes held by one [`Best`] (the grouped left rows, which the joins of a chain share,
    /// not counted).
    pub(crate) fn records_size(&self) -> usize {
        8 * ((self.layout.stride() + 1) * self.left.times.len() + 8)
    }

    /// Empty records, one per entry, the first on a cache line's start.
    pub(crate) fn best(&self) -> Best {
        let len = self.layout.stride() * self.left.times.len();
        let all = vec![0; len + 8];
        let start = (all.as_ptr() as usize).wrapping_neg() % 64 / 8;
        let scores = vec![0; self.left.times.len()];
        Best { all, start, scores }
    }

    /// How many right rows [`LeftIndex::apply`] should get at once: put in key order, they
    /// reach the left's times and records close to one another (as a window join's left build
    /// does, `LabelIndex::CHUNK_ROWS`). At the shared workload's medium scale (1M labels),
    /// 2^18 rows ran the three joins 5% faster than 2^17, for 60 MB more (benches/README.md).
    pub(crate) const CHUNK_ROWS: usize = 1 << 18;

    /// The right rows [`LeftIndex::apply`] should get at once for this left side, where the
    /// pool holds them: at least [`LeftIndex::CHUNK_ROWS`], and one per two left rows up to
    /// 2^20. The more of an entry's right rows a chunk holds, the fewer of them reach the
    /// shared records (only the best of a chunk's rows reaching an entry is offered): at the
    /// shared workload's medium scale (1M labels, 10M rows per right side in time order),
    /// chunks of 500,000 rows offered about 6M rows where 2^18 offered 8M, and the query took
    /// 0.1-0.15 CPU-s (4-5%) less, for about 60 MB more (benches/README.md).
    pub(crate) fn chunk_rows(&self) -> usize {
        (self.left.times.len() / 2).clamp(Self::CHUNK_ROWS, 1 << 20)
    }

    /// About the bytes a chunk's row takes while [`LeftIndex::apply`] runs, at most: its
    /// record (if every row is offered), group, times, place and offer.
    pub(crate) fn chunk_row_bytes(&self) -> usize {
        8 * self.layout.stride() + 52
    }

    /// Offers each row of a chunk of right batches to the entry it reaches, keeping it where it
    /// beats the entry's record. A narrow (group, row, time) per row is put in the order of the
    /// left groups (a counting sort), so that the searches move through the left's times in
    /// order; the rows of a chunk that reach one entry then come one after another, and only
    /// the latest of them (all of those tied on its time) is offered to the shared records, in
    /// entry order. Only the rows offered get a record, written in arrival order.
    pub(crate) fn apply(
        &self,
        shared: &Mutex<Best>,
        scratch: &mut Scratch,
        chunk: &[RightRows],
    ) -> Result<()> {
        let Scratch {
            group_of,
            times,
            known,
            counts,
            places,
            sorted_known,
            records,
            slots,
            entries,
            hints,
            chosen,
            keys,
        } = scratch;
        for right in chunk {
            if right.tiebreak.len() != self.layout.tiebreak.len()
                || right.columns.len() != self.layout.words()
                || right.known.is_some() != self.has_known
            {
                return internal_err!("left build: the right arrays do not match the join");
            }
        }

        // 1. Each row's group, time and knowledge time, the chunk's rows one after the other.
        group_of.clear();
        times.clear();
        known.clear();
        for right in chunk {
            let valid = dense_time_keys_into(right.time.as_ref(), times)?;
            let known_valid = match &right.known {
                Some(k) => dense_time_keys_into(k.as_ref(), known)?,
                None => None,
            };
            let skip = |i: usize| is_null(&valid, i) || is_null(&known_valid, i);
            self.left
                .groups_of(&right.keys, right.time.len(), skip, group_of)?;
        }

        // 2. Each row's group, place and time in the order of the groups (a counting sort:
        // 16 bytes a row written out of order), with its knowledge time. A row's slot in
        // `group_of` is then free: it is to hold the offer it is part of, if it is.
        let layout = &self.layout;
        let stride = layout.stride();
        let backward = self.spec.direction == Direction::Backward;
        let score_of = |time: i64| {
            let key = (time as u64) ^ SIGN;
            if backward { key } else { !key }
        };
        counts.clear();
        counts.resize(self.left.num_groups() + 1, 0);
        for &g in group_of.iter() {
            if g != NO_ENTRY {
                counts[g as usize + 1] += 1;
            }
        }
        for g in 1..counts.len() {
            counts[g] += counts[g - 1];
        }
        let kept = counts[counts.len() - 1] as usize;
        let has_known = self.has_known;
        // Only ever grown: a chunk writes every place it reads.
        grow(places, kept);
        grow(sorted_known, if has_known { kept } else { 0 });
        for (r, slot) in group_of.iter_mut().enumerate() {
            let g = std::mem::replace(slot, NO_ENTRY);
            if g == NO_ENTRY {
                continue;
            }
            let pos = counts[g as usize] as usize;
            counts[g as usize] += 1;
            places[pos] = (g, r as u32, times[r]);
            if has_known {
                sorted_known[pos] = known[r];
            }
        }

        // 3. The entry each row reaches, in group order: the searches move through the left's
        // times in the order they are laid out. A group's rows of one chunk come close
        // together in time (a table appended to as events arrive), so they mostly reach one
        // entry, the one the row before reached, or the one an earlier chunk's rows of the
        // group reached: that is checked before a search. Of each run of rows reaching the
        // same entry only the one of the greatest score is offered (all of those tied on it,
        // the rest of the order being in the records, not read here). The offers are listed
        // in entry order; a row offered has its offer's number in its slot of `group_of`.
        let strict = self.spec.strict;
        entries.clear();
        let mut offer = |r: u32, entry: u32| {
            group_of[r as usize] = entries.len() as u32;
            entries.push(entry);
        };
        // The run: its entry, its best row and that one's score.
        let mut run: Option<(u32, u32, u64)> = None;
        grow(hints, self.left.num_groups());
        for pos in 0..kept {
            if let Some(&(ahead, _, _)) = places.get(pos + AHEAD) {
                prefetch(&self.left.times, self.left.offsets[ahead as usize] as usize);
            }
            let (g, r, e) = places[pos];
            let (group, from) = self.left.group(g as usize);
            // The number of the group's times before the row's range (backward: those at or
            // before the time, strict, or before it, and those before its knowledge time) or
            // in it (forward: those before the time, strict, or at or before it).
            let hint = hints[g as usize] as usize;
            // What an earlier chunk left in `sorted_known` (the scratch being a task's, shared
            // by the joins of a chain) is not this join's.
            let known_at = has_known.then(|| sorted_known[pos]);
            let at = match (backward, strict) {
                (true, true) => match known_at {
                    // `t <= e || t < c` as one bound: `t < c` where that takes in `t <= e`.
                    Some(c) if c > e.saturating_add(1) => search(group, hint, |t| t < c),
                    _ => search(group, hint, |t| t <= e),
                },
                (true, false) => {
                    let x = known_at.map_or(e, |c| e.max(c));
                    search(group, hint, |t| t < x)
                }
                (false, true) => search(group, hint, |t| t < e),
                (false, false) => search(group, hint, |t| t <= e),
            };
            hints[g as usize] = at as u32;
            let entry = if backward {
                if at == group.len() {
                    continue;
                }
                from + at
            } else {
                if at == 0 {
                    continue;
                }
                from + at - 1
            };
            let (entry, score) = (entry as u32, score_of(e));
            match run {
                Some((at, best, top)) if at == entry => match score.cmp(&top) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Greater => run = Some((entry, r, score)),
                    std::cmp::Ordering::Equal => {
                        offer(best, at);
                        run = Some((entry, r, score));
                    }
                },
                _ => {
                    if let Some((at, best, _)) = run {
                        offer(best, at);
                    }
                    run = Some((entry, r, score));
                }
            }
        }
        if let Some((at, best, _)) = run {
            offer(best, at);
        }

        // 4. The records of the rows offered, one after the other in arrival order (where each
        // offer's is noted): the score, the values' order keys and their NULL flags. Only
        // those rows' values are read (about a third of a chunk's at the shared workload's
        // medium scale).
        let flags = stride - 1;
        grow(records, entries.len() * stride);
        grow(slots, entries.len());
        let mut first = 0;
        let mut base = 0;
        for right in chunk {
            let n = right.time.len();
            // The batch's rows offered, and their records' places.
            chosen.clear();
            for i in 0..n {
                let offer = group_of[base + i];
                if offer != NO_ENTRY {
                    slots[offer as usize] = (first + chosen.len()) as u32;
                    chosen.push(i as u32);
                }
            }
            let m = chosen.len();
            let mine = &mut records[first * stride..(first + m) * stride];
            for (record, &i) in mine.chunks_exact_mut(stride).zip(chosen.iter()) {
                record[0] = score_of(times[base + i as usize]);
                record[flags] = OCCUPIED;
            }
            for (v, array) in right.tiebreak.iter().chain(&right.columns).enumerate() {
                keys.clear();
                order_keys(array.as_ref(), chosen, keys)?;
                for (record, &key) in mine.chunks_exact_mut(stride).zip(keys.iter()) {
                    record[1 + v] = key;
                }
                if let Some(nulls) = array.logical_nulls().filter(|n| n.null_count() > 0) {
                    for (record, &i) in mine.chunks_exact_mut(stride).zip(chosen.iter()) {
                        if nulls.is_null(i as usize) {
                            record[flags] |= 1 << v;
                        }
                    }
                }
            }
            first += m;
            base += n;
        }

        // 5. Each row offered kept where it beats its entry's record, in entry order (the
        // entries' scores and records are met in the order they are laid out).
        let mut best = match shared.lock() {
            Ok(best) => best,
            Err(_) => return internal_err!("left build: a task offering right rows panicked"),
        };
        let Best { all, start, scores } = &mut *best;
        let words = &mut all[*start..];
        for (h, &entry) in entries.iter().enumerate() {
            if let Some(&ahead) = entries.get(h + AHEAD) {
                prefetch(scores, ahead as usize);
                prefetch(records, slots[h + AHEAD] as usize * stride);
            }
            // Most rows win where the right side comes in about its time order: the record's
            // line is asked for too, later than the score so as not to crowd it out.
            if let Some(&ahead) = entries.get(h + AHEAD / 2) {
                prefetch(words, ahead as usize * stride);
            }
            let entry = entry as usize;
            let slot = slots[h] as usize;
            let record = &records[slot * stride..(slot + 1) * stride];
            let at = entry * stride;
            let beats = match record[0].cmp(&scores[entry]) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => layout.beats(record, &words[at..at + stride]),
            };
            if beats {
                copy_record(&mut words[at..at + stride], record);
                scores[entry] = record[0];
            }
        }
        Ok(())
    }

    /// Carries each group's best record along its time order, so that every entry holds the
    /// best of all the right rows eligible for it.
    pub(crate) fn finish(&self, best: &mut Best) {
        let stride = self.layout.stride();
        let words = best.words_mut();
        // Entry `e` takes entry `from`'s record where that holds the better row.
        let mut carry = |from: usize, e: usize| {
            let (a, b) = (from * stride, e * stride);
            if self
                .layout
                .beats(&words[a..a + stride], &words[b..b + stride])
            {
                words.copy_within(a..a + stride, b);
            }
        };
        for g in 0..self.left.num_groups() {
            let (group, first) = self.left.group(g);
            let entries = first..first + group.len();
            match self.spec.direction {
                Direction::Backward => entries.skip(1).for_each(|e| carry(e - 1, e)),
                Direction::Forward => entries.rev().skip(1).for_each(|e| carry(e + 1, e)),
            }
        }
    }

    /// Per left row of `rows`, in the left's order, its entry (`None`: it has none), the
    /// records of the rows ahead asked for early ([`LeftKeys::entries`]).
    pub(crate) fn entries<'a>(
        &'a self,
        best: &'a Best,
        rows: std::ops::Range<usize>,
    ) -> impl Iterator<Item = Option<usize>> + 'a {
        let stride = self.layout.stride();
        self.left
            .entries(rows, move |e| prefetch(best.words(), e * stride))
    }

    /// The entry holding a left row's match, if it has one within the tolerance: `entry` is the
    /// row's entry ([`LeftIndex::entries`]) and `bound` its tolerance bound as a time key
    /// (`Some(None)`: a NULL bound, which nothing meets).
    pub(crate) fn matched(
        &self,
        best: &Best,
        entry: Option<usize>,
        bound: Option<Option<i64>>,
    ) -> Option<usize> {
        let entry = entry?;
        let stride = self.layout.stride();
        let record = &best.words()[entry * stride..(entry + 1) * stride];
        if record[stride - 1] & OCCUPIED == 0 {
            return None;
        }
        let backward = self.spec.direction == Direction::Backward;
        let score = if backward { record[0] } else { !record[0] };
        let time = (score ^ SIGN) as i64;
        let within = match bound {
            None => true,
            Some(None) => false,
            Some(Some(b)) if backward => time >= b,
            Some(Some(b)) => time <= b,
        };
        within.then_some(entry)
    }

    /// Columns `cs` of the layout for the entries `entries` (`None`: NULL), each entry's
    /// record read once for all of them.
    pub(crate) fn columns(
        &self,
        best: &Best,
        cs: &[usize],
        entries: &[Option<usize>],
    ) -> Result<Vec<ArrayRef>> {
        let stride = self.layout.stride();
        let backward = self.spec.direction == Direction::Backward;
        let places: Vec<Option<usize>> = cs.iter().map(|&c| self.layout.place(c)).collect();
        let words = best.words();
        let rows = entries.len();
        let mut keys: Vec<Vec<u64>> = cs.iter().map(|_| Vec::with_capacity(rows)).collect();
        let mut valid: Vec<Vec<bool>> = cs.iter().map(|_| Vec::with_capacity(rows)).collect();
        for entry in entries {
            match entry {
                Some(e) => {
                    let record = &words[e * stride..(e + 1) * stride];
                    let bits = record[stride - 1];
                    for ((keys, valid), place) in keys.iter_mut().zip(&mut valid).zip(&places) {
                        match *place {
                            Some(at) => {
                                keys.push(record[1 + at]);
                                valid.push((bits >> at) & 1 == 0);
                            }
                            None => {
                                keys.push(if backward { record[0] } else { !record[0] });
                                valid.push(true);
                            }
                        }
                    }
                }
                None => {
                    for (keys, valid) in keys.iter_mut().zip(&mut valid) {
                        keys.push(0);
                        valid.push(false);
                    }
                }
            }
        }
        cs.iter()
            .zip(keys.iter().zip(valid))
            .map(|(&c, (keys, valid))| {
                let nulls = NullBuffer::from(valid);
                let nulls = (nulls.null_count() > 0).then_some(nulls);
                from_keys(&self.layout.columns[c].0, keys, nulls)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Order keys order as the values do, and read back to the same values, for every type a
    /// record holds.
    #[test]
    fn order_keys_keep_order_and_read_back() {
        use arrow::array::{Float32Array, Float64Array, Int8Array, UInt64Array};
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int8Array::from(vec![i8::MIN, -1, 0, 1, i8::MAX])),
            Arc::new(UInt64Array::from(vec![0, 1, 1 << 63, u64::MAX])),
            Arc::new(Float64Array::from(vec![
                f64::NEG_INFINITY,
                -1.5,
                -0.0,
                0.0,
                f64::MIN_POSITIVE,
                f64::INFINITY,
                f64::NAN,
            ])),
            Arc::new(Float32Array::from(vec![
                f32::NEG_INFINITY,
                -0.0,
                0.0,
                2.5,
                f32::NAN,
            ])),
            Arc::new(BooleanArray::from(vec![false, true])),
            Arc::new(
                PrimitiveArray::<TimestampMicrosecondType>::from(vec![i64::MIN, 0, i64::MAX])
                    .with_timezone("UTC"),
            ),
        ];
        for array in arrays {
            let all: Vec<u32> = (0..array.len() as u32).collect();
            let mut keys = Vec::new();
            order_keys(array.as_ref(), &all, &mut keys).unwrap();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "{array:?}: {keys:?}");
            let back = from_keys(array.data_type(), &keys, None).unwrap();
            assert_eq!(back.data_type(), array.data_type());
            let mut again = Vec::new();
            order_keys(back.as_ref(), &all, &mut again).unwrap();
            assert_eq!(again, keys, "{array:?}");
            // A selection of the rows: their keys, in the selection's order.
            let some: Vec<u32> = all.iter().rev().step_by(2).copied().collect();
            let mut picked = Vec::new();
            order_keys(array.as_ref(), &some, &mut picked).unwrap();
            let expected: Vec<u64> = some.iter().map(|&i| keys[i as usize]).collect();
            assert_eq!(picked, expected, "{array:?}");
        }
    }

    /// Every type of the one list is a word type whose order keys order and read back (the
    /// values 0, 1, 2 cast to it); others are not word types.
    #[test]
    fn every_listed_type_is_kept_in_a_word() {
        let listed = [
            DataType::Int8,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::UInt8,
            DataType::UInt16,
            DataType::UInt32,
            DataType::UInt64,
            DataType::Float32,
            DataType::Float64,
            DataType::Date32,
            DataType::Date64,
            DataType::Time32(TimeUnit::Second),
            DataType::Time32(TimeUnit::Millisecond),
            DataType::Time64(TimeUnit::Microsecond),
            DataType::Time64(TimeUnit::Nanosecond),
            DataType::Timestamp(TimeUnit::Second, None),
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            DataType::Timestamp(TimeUnit::Microsecond, None),
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            DataType::Duration(TimeUnit::Second),
            DataType::Duration(TimeUnit::Millisecond),
            DataType::Duration(TimeUnit::Microsecond),
            DataType::Duration(TimeUnit::Nanosecond),
        ];
        let values: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![0, 1, 2]));
        for data_type in listed {
            assert!(word_type(&data_type), "{data_type}");
            // Times of 32 bits are cast to from 32-bit integers only.
            let array = arrow::compute::cast(&values, &data_type)
                .or_else(|_| {
                    let narrow = arrow::compute::cast(&values, &DataType::Int32)?;
                    arrow::compute::cast(&narrow, &data_type)
                })
                .unwrap();
            let mut keys = Vec::new();
            order_keys(array.as_ref(), &[0, 1, 2], &mut keys).unwrap();
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "{data_type}: {keys:?}"
            );
            let back = from_keys(&data_type, &keys, None).unwrap();
            assert_eq!(&back, &array, "{data_type}");
        }
        assert!(word_type(&DataType::Boolean));
        for other in [DataType::Utf8, DataType::Decimal128(10, 2), DataType::Null] {
            assert!(!word_type(&other), "{other}");
        }
    }

    /// The search gives `partition_point`'s answer whatever its hint: right, one short, one
    /// over, far off either way, or past the end.
    #[test]
    fn search_matches_partition_point_for_every_hint() {
        let groups: [&[i64]; 5] = [
            &[],
            &[5],
            &[1, 3, 3, 3, 7],
            &[2, 2, 2],
            &[0, 1, 2, 4, 8, 16],
        ];
        for times in groups {
            for bound in -1..=18 {
                let expected = times.partition_point(|&t| t <= bound);
                let strict = times.partition_point(|&t| t < bound);
                for hint in 0..=times.len() + 3 {
                    assert_eq!(
                        search(times, hint, |t| t <= bound),
                        expected,
                        "{times:?} <= {bound} from {hint}"
                    );
                    assert_eq!(
                        search(times, hint, |t| t < bound),
                        strict,
                        "{times:?} < {bound} from {hint}"
                    );
                }
            }
        }
    }
}
