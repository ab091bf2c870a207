//! The pure as-of matching kernel: an index over the right input, probed by left rows.
//!
//! This module implements docs/semantics.md over Arrow arrays, synchronously and single-threaded.
//! The operator pushes the right input's batches into an [`IndexBuilder`] (one per hash partition
//! or spill bucket), calls [`IndexBuilder::finish`], then streams left batches through
//! [`RightIndex::probe`] and [`RightIndex::gather`].
//!
//! # What it computes
//!
//! For each left row, the right row with equal keys whose time is the greatest `<=` (`<`) the
//! left time (backward), or the least `>=` (`>`) it (forward); within the tolerance bound if one
//! is given; known (`c <= l.t`) if a knowledge time is given. Ties on time go to the row that
//! sorts first under `TIEBREAK BY`, then to the greatest row comparing all columns (NULL lowest).
//! NULL keys match nothing unless compared with `IS NOT DISTINCT FROM`; NULL or NaN times, NULL
//! knowledge times and NULL bounds match nothing; `-0.0` is `0.0`. Unmatched left rows get
//! `None`, which [`RightIndex::gather`] turns into NULLs.
//!
//! ```text
//!  right: k t  v          left: k t    backward >= : v     forward < : v
//!         1 5  a                1 7                  a                 b
//!         1 10 b                1 10                 b                 NULL
//!         2 3  c                3 1                  NULL              NULL
//! ```
//!
//! ```text
//!  right batches ──push──▶ IndexBuilder ──finish──▶ RightIndex ◀──probe── left keys, time, bound
//!   (kept whole)     keys ─▶ dense group ids                │
//!                    time ─▶ order-preserving i64          └──gather──▶ right columns, NULL rows
//! ```
//!
//! # Data layout
//!
//! Keys become dense group ids: a hash map from the value for a single integer-like key, a hash
//! table over the raw bytes for a single string or binary key, and a hash table over
//! [`arrow::row`] bytes for anything else (several columns, dictionaries, decimals, ...). Each
//! distinct key is stored once, in an arena.
//!
//! Times become order-preserving `i64`s (see `time.rs`), mirrored for the forward direction, so
//! the kernel only ever answers "the best row whose activation is `<=` the left time".
//!
//! `finish` counting-sorts the rows by group and sorts each group by time. Rows that tie on time
//! are ordered by the `TIEBREAK BY` columns and then by the whole row; both comparisons run on
//! [`arrow::row`] bytes built for the tied rows only. Then each group is compacted to the entries
//! a probe can return:
//!
//! - without a knowledge time, the best row of each distinct time: an entry is the activation
//!   (`t`, or `t + 1` for a strict condition: `r < l` is `r + 1 <= l` on integers) and a packed
//!   row reference: 16 bytes;
//! - with a knowledge time `c`, a row is eligible from `a = max(t_adj, c)` on. The group is sorted
//!   by `a` and only the entries where the best row so far (in time, tie-break, whole-row order)
//!   changes are kept, with the winner's time for the tolerance check: 24 bytes.
//!
//! A probe is a hash lookup and one binary search in the group's entries (run for 16 left rows in
//! lockstep, so their cache misses overlap); the tolerance check looks at the found entry only,
//! because the best eligible row has the greatest time.
//!
//! # Complexity
//!
//! Build: `O(n)` hashing plus `O(n log g)` sorting for groups of size `g`, plus row encoding of
//! time-tied rows only. Probe: `O(log g)` per left row. Memory after `finish`: the right batches,
//! 16 (24 with a knowledge time) bytes per distinct (key, time), 4 bytes per group plus the hash
//! table and the distinct key bytes. While building, 12 (20) bytes per right row; `finish` needs
//! another 16 (24) bytes per matchable right row at its peak (see
//! [`IndexBuilder::finish_scratch_size`]).

use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_empty_array, new_null_array};
use arrow::buffer::NullBuffer;
use arrow::compute::{SortOptions, interleave};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, DurationMicrosecondType, DurationMillisecondType,
    DurationNanosecondType, DurationSecondType, Int8Type, Int16Type, Int32Type, Int64Type,
    SchemaRef, Time32MillisecondType, Time32SecondType, Time64MicrosecondType,
    Time64NanosecondType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, internal_err, plan_err};
use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use super::time::{supported_time_type, time_keys};

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

/// The group id of a right row that never matches, and of a left key without a group.
const NO_GROUP: u32 = u32::MAX;

/// At most this many right rows per builder, so group ids and group offsets fit a `u32`.
const MAX_ROWS: usize = (u32::MAX - 1) as usize;

/// Tied rows are ordered in chunks of about this many rows, to bound the memory of their
/// row encodings. Tiny under test, so that the random cases cross chunk boundaries.
const TIE_CHUNK_ROWS: usize = if cfg!(test) { 5 } else { 1 << 16 };

#[inline]
fn pack(batch: usize, row: usize) -> u64 {
    ((batch as u64) << 32) | row as u64
}

#[inline]
fn unpack(packed: u64) -> RowRef {
    RowRef {
        batch: (packed >> 32) as u32,
        row: packed as u32,
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// How a key tuple becomes a group id.
#[derive(Debug)]
enum KeyKind {
    /// No keys: every row is in group 0.
    Unit,
    /// One integer-like key: its value, widened to `u64`, is the hash map key.
    Int,
    /// One string or binary key: its bytes are interned as they are.
    Bytes,
    /// Anything else: the keys' row encoding is interned.
    Rows(RowConverter),
}

impl KeyKind {
    fn new(keys: &[KeySpec]) -> Result<Self> {
        Ok(match keys {
            [] => Self::Unit,
            [key] if is_int_key(&key.data_type) => Self::Int,
            [key] if is_bytes_key(&key.data_type) => Self::Bytes,
            keys => Self::Rows(RowConverter::new(
                keys.iter()
                    .map(|k| SortField::new(k.data_type.clone()))
                    .collect(),
            )?),
        })
    }
}

fn is_int_key(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, _)
            | DataType::Time32(TimeUnit::Second | TimeUnit::Millisecond)
            | DataType::Time64(TimeUnit::Microsecond | TimeUnit::Nanosecond)
            | DataType::Duration(_)
    )
}

fn is_bytes_key(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

/// Calls `f` with each value of an integer-like key array, widened to `u64` (`None` for NULL).
/// Sign extension keeps distinct values distinct, which is all a hash key needs.
fn visit_int_keys(array: &dyn Array, mut f: impl FnMut(Option<u64>)) -> Result<()> {
    macro_rules! go {
        ($t:ty) => {{
            let Some(a) = array.as_primitive_opt::<$t>() else {
                return internal_err!("as-of key array is not a {}", array.data_type());
            };
            if a.null_count() == 0 {
                a.values().iter().for_each(|v| f(Some(*v as u64)));
            } else {
                a.iter().for_each(|v| f(v.map(|v| v as u64)));
            }
        }};
    }
    match array.data_type() {
        DataType::Int8 => go!(Int8Type),
        DataType::Int16 => go!(Int16Type),
        DataType::Int32 => go!(Int32Type),
        DataType::Int64 => go!(Int64Type),
        DataType::UInt8 => go!(UInt8Type),
        DataType::UInt16 => go!(UInt16Type),
        DataType::UInt32 => go!(UInt32Type),
        DataType::UInt64 => go!(UInt64Type),
        DataType::Date32 => go!(Date32Type),
        DataType::Date64 => go!(Date64Type),
        DataType::Timestamp(TimeUnit::Second, _) => go!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => go!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => go!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => go!(TimestampNanosecondType),
        DataType::Time32(TimeUnit::Second) => go!(Time32SecondType),
        DataType::Time32(TimeUnit::Millisecond) => go!(Time32MillisecondType),
        DataType::Time64(TimeUnit::Microsecond) => go!(Time64MicrosecondType),
        DataType::Time64(TimeUnit::Nanosecond) => go!(Time64NanosecondType),
        DataType::Duration(TimeUnit::Second) => go!(DurationSecondType),
        DataType::Duration(TimeUnit::Millisecond) => go!(DurationMillisecondType),
        DataType::Duration(TimeUnit::Microsecond) => go!(DurationMicrosecondType),
        DataType::Duration(TimeUnit::Nanosecond) => go!(DurationNanosecondType),
        other => return internal_err!("{other} is not an integer-like as-of key"),
    }
    Ok(())
}

/// Calls `f` with the bytes of each value of a string or binary key array (`None` for NULL).
fn visit_bytes_keys(array: &dyn Array, mut f: impl FnMut(Option<&[u8]>)) -> Result<()> {
    macro_rules! go {
        ($opt:expr, $to_bytes:expr) => {{
            let Some(a) = $opt else {
                return internal_err!("as-of key array is not a {}", array.data_type());
            };
            a.iter().for_each(|v| f(v.map($to_bytes)));
        }};
    }
    match array.data_type() {
        DataType::Utf8 => go!(array.as_string_opt::<i32>(), str::as_bytes),
        DataType::LargeUtf8 => go!(array.as_string_opt::<i64>(), str::as_bytes),
        DataType::Utf8View => go!(array.as_string_view_opt(), str::as_bytes),
        DataType::Binary => go!(array.as_binary_opt::<i32>(), |v: &[u8]| v),
        DataType::LargeBinary => go!(array.as_binary_opt::<i64>(), |v: &[u8]| v),
        DataType::BinaryView => go!(array.as_binary_view_opt(), |v: &[u8]| v),
        other => return internal_err!("{other} is not a string or binary as-of key"),
    }
    Ok(())
}

/// Interned byte strings, each with a dense group id.
#[derive(Debug, Default)]
struct ByteGroups {
    state: DefaultHashBuilder,
    /// Group ids, hashed by their bytes.
    table: HashTable<u32>,
    /// Per group id: the hash of its bytes (so growing the table never rehashes bytes).
    hashes: Vec<u64>,
    /// Per group id: where its bytes end in `arena`; they start where the previous group's end.
    ends: Vec<usize>,
    arena: Vec<u8>,
}

fn span<'a>(ends: &[usize], arena: &'a [u8], group: u32) -> &'a [u8] {
    let g = group as usize;
    let start = if g == 0 { 0 } else { ends[g - 1] };
    &arena[start..ends[g]]
}

impl ByteGroups {
    /// The group id of `bytes`, allocating `next` (and incrementing it) for new bytes.
    fn intern(&mut self, bytes: &[u8], next: &mut u32) -> u32 {
        let hash = self.state.hash_one(bytes);
        let Self {
            table,
            hashes,
            ends,
            arena,
            ..
        } = self;
        let entry = table.entry(
            hash,
            |&g| span(ends, arena, g) == bytes,
            |&g| hashes[g as usize],
        );
        match entry {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let g = *next;
                *next += 1;
                e.insert(g);
                arena.extend_from_slice(bytes);
                ends.push(arena.len());
                hashes.push(hash);
                g
            }
        }
    }

    /// Reserves a group id that no bytes map to (the NULL group), keeping ids and spans aligned.
    fn reserve(&mut self, next: &mut u32) -> u32 {
        let g = *next;
        *next += 1;
        self.ends.push(self.arena.len());
        self.hashes.push(0);
        g
    }

    fn lookup(&self, bytes: &[u8]) -> u32 {
        let hash = self.state.hash_one(bytes);
        self.table
            .find(hash, |&g| span(&self.ends, &self.arena, g) == bytes)
            .copied()
            .unwrap_or(NO_GROUP)
    }

    fn memory_size(&self) -> usize {
        self.table.allocation_size()
            + self.hashes.capacity() * size_of::<u64>()
            + self.ends.capacity() * size_of::<usize>()
            + self.arena.capacity()
    }
}

/// The largest span of integer keys a direct table covers: 4M slots, 16 MiB.
const DIRECT_SPAN_MAX: u64 = 1 << 22;
/// Spans up to this many slots (4 MiB) are always direct; beyond, only while the table has at
/// most 4 slots per row seen, so sparse keys do not cost more than a hash map.
const DIRECT_SPAN_FREE: u64 = 1 << 20;

/// Group ids of single integer keys: a direct table indexed by `value - base` while the keys
/// seen span a small range (entity ids usually do), a hash map once they do not. The direct
/// table turns a build's hash insert and a probe's hash lookup, each a likely cache miss, into
/// one array access.
#[derive(Debug, Default)]
struct IntGroups {
    /// Whether `map` is in use (the keys spread too far for a direct table).
    hashed: bool,
    base: u64,
    /// `slots[v - base]`: the group of key `v`, or [`NO_GROUP`].
    slots: Vec<u32>,
    map: HashMap<u64, u32>,
    rows: u64,
}

impl IntGroups {
    /// Makes room for keys in `lo..=hi` (in `u64` order), or switches to the hash map.
    fn cover(&mut self, lo: u64, hi: u64, rows: usize) {
        self.rows += rows as u64;
        if self.hashed {
            return;
        }
        let (lo, hi) = if self.slots.is_empty() {
            (lo, hi)
        } else {
            (
                lo.min(self.base),
                hi.max(self.base + self.slots.len() as u64 - 1),
            )
        };
        let limit = DIRECT_SPAN_MAX.min(DIRECT_SPAN_FREE.max(4 * self.rows));
        if hi - lo >= limit {
            for (i, &g) in self.slots.iter().enumerate() {
                if g != NO_GROUP {
                    self.map.insert(self.base + i as u64, g);
                }
            }
            self.slots = Vec::new();
            self.hashed = true;
            return;
        }
        let span = hi - lo + 1;
        if self.slots.is_empty() || lo < self.base {
            let mut slots = vec![NO_GROUP; span as usize];
            if !self.slots.is_empty() {
                let at = (self.base - lo) as usize;
                slots[at..at + self.slots.len()].copy_from_slice(&self.slots);
            }
            self.slots = slots;
            self.base = lo;
        } else if span as usize > self.slots.len() {
            self.slots.resize(span as usize, NO_GROUP);
        }
    }

    /// The group of `v`, created if new (call [`IntGroups::cover`] for its batch first).
    #[inline]
    fn intern(&mut self, v: u64, num_groups: &mut u32) -> u32 {
        let slot = if self.hashed {
            self.map.entry(v).or_insert(NO_GROUP)
        } else {
            &mut self.slots[(v - self.base) as usize]
        };
        if *slot == NO_GROUP {
            *slot = *num_groups;
            *num_groups += 1;
        }
        *slot
    }

    #[inline]
    fn get(&self, v: u64) -> u32 {
        if self.hashed {
            self.map.get(&v).copied().unwrap_or(NO_GROUP)
        } else {
            let i = v.wrapping_sub(self.base);
            if i < self.slots.len() as u64 {
                self.slots[i as usize]
            } else {
                NO_GROUP
            }
        }
    }

    fn memory_size(&self) -> usize {
        self.slots.capacity() * size_of::<u32>() + self.map.allocation_size()
    }
}

/// Maps key tuples to dense group ids.
#[derive(Debug)]
struct KeyTable {
    kind: KeyKind,
    null_equal: Vec<bool>,
    num_groups: u32,
    /// `Int` and `Bytes` under `IS NOT DISTINCT FROM`: the group of the NULL key, once seen.
    null_group: Option<u32>,
    ints: IntGroups,
    bytes: ByteGroups,
}

/// The rows whose keys can match: NULL where a key compared with `=` (not
/// `IS NOT DISTINCT FROM`) is NULL. `None` when every row can match.
fn key_validity(keys: &[ArrayRef], null_equal: &[bool]) -> Option<NullBuffer> {
    keys.iter()
        .zip(null_equal)
        .filter(|(_, ne)| !**ne)
        .fold(None, |acc, (k, _)| {
            NullBuffer::union(acc.as_ref(), k.logical_nulls().as_ref())
        })
}

impl KeyTable {
    fn try_new(keys: &[KeySpec]) -> Result<Self> {
        Ok(Self {
            kind: KeyKind::new(keys)?,
            null_equal: keys.iter().map(|k| k.null_equal).collect(),
            num_groups: 0,
            null_group: None,
            ints: IntGroups::default(),
            bytes: ByteGroups::default(),
        })
    }

    /// Appends the group id of each of `len` rows to `out`, creating groups for new keys.
    fn assign(&mut self, keys: &[ArrayRef], len: usize, out: &mut Vec<u32>) -> Result<()> {
        out.reserve(len);
        let Self {
            kind,
            null_equal,
            num_groups,
            null_group,
            ints,
            bytes,
        } = self;
        match kind {
            KeyKind::Unit => {
                if len > 0 {
                    *num_groups = 1;
                }
                out.extend(std::iter::repeat_n(0, len));
            }
            KeyKind::Int => {
                let null_equal = null_equal[0];
                let (mut lo, mut hi) = (u64::MAX, 0u64);
                visit_int_keys(keys[0].as_ref(), |v| {
                    if let Some(v) = v {
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                })?;
                if lo <= hi {
                    ints.cover(lo, hi, len);
                }
                visit_int_keys(keys[0].as_ref(), |v| {
                    let g = match v {
                        Some(v) => ints.intern(v, num_groups),
                        None if null_equal => *null_group.get_or_insert_with(|| {
                            *num_groups += 1;
                            *num_groups - 1
                        }),
                        None => NO_GROUP,
                    };
                    out.push(g);
                })?;
            }
            KeyKind::Bytes => {
                let null_equal = null_equal[0];
                visit_bytes_keys(keys[0].as_ref(), |v| {
                    let g = match v {
                        Some(v) => bytes.intern(v, num_groups),
                        None if null_equal => {
                            *null_group.get_or_insert_with(|| bytes.reserve(num_groups))
                        }
                        None => NO_GROUP,
                    };
                    out.push(g);
                })?;
            }
            KeyKind::Rows(converter) => {
                let rows = converter.convert_columns(keys)?;
                let valid = key_validity(keys, null_equal);
                for i in 0..len {
                    let g = match &valid {
                        Some(v) if v.is_null(i) => NO_GROUP,
                        _ => bytes.intern(rows.row(i).data(), num_groups),
                    };
                    out.push(g);
                }
            }
        }
        Ok(())
    }

    /// The group id of each of `len` rows, [`NO_GROUP`] where no right row has the key.
    fn lookup(&self, keys: &[ArrayRef], len: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(len);
        match &self.kind {
            KeyKind::Unit => {
                let g = if self.num_groups > 0 { 0 } else { NO_GROUP };
                out.extend(std::iter::repeat_n(g, len));
            }
            KeyKind::Int => {
                let null_group = self.null_group.unwrap_or(NO_GROUP);
                visit_int_keys(keys[0].as_ref(), |v| {
                    out.push(match v {
                        Some(v) => self.ints.get(v),
                        None => null_group,
                    })
                })?;
            }
            KeyKind::Bytes => {
                let null_group = self.null_group.unwrap_or(NO_GROUP);
                visit_bytes_keys(keys[0].as_ref(), |v| {
                    out.push(match v {
                        Some(v) => self.bytes.lookup(v),
                        None => null_group,
                    })
                })?;
            }
            KeyKind::Rows(converter) => {
                let rows = converter.convert_columns(keys)?;
                let valid = key_validity(keys, &self.null_equal);
                for i in 0..len {
                    out.push(match &valid {
                        Some(v) if v.is_null(i) => NO_GROUP,
                        _ => self.bytes.lookup(rows.row(i).data()),
                    });
                }
            }
        }
        Ok(out)
    }

    fn memory_size(&self) -> usize {
        let converter = match &self.kind {
            KeyKind::Rows(c) => c.size(),
            _ => 0,
        };
        converter + self.ints.memory_size() + self.bytes.memory_size()
    }
}

// ---------------------------------------------------------------------------------------------
// Index entries
// ---------------------------------------------------------------------------------------------

/// An entry without a knowledge time. While building, `key` is the row's time; after `finish`,
/// it is the activation (`t`, or `t + 1` when strict) of the best row with that time.
#[derive(Debug, Clone, Copy, Default)]
struct PlainEntry {
    key: i64,
    rref: u64,
}

/// An entry with a knowledge time. While building, `key` is the row's knowledge time; after
/// `finish`, it is the activation from which `rref` is the best eligible row.
#[derive(Debug, Clone, Copy, Default)]
struct KnownEntry {
    key: i64,
    time: i64,
    rref: u64,
}

/// What the tie ordering needs to see of an entry.
trait Ranked: Copy + Default {
    fn time(&self) -> i64;
    fn rref(&self) -> u64;
}

impl Ranked for PlainEntry {
    fn time(&self) -> i64 {
        self.key
    }
    fn rref(&self) -> u64 {
        self.rref
    }
}

impl Ranked for KnownEntry {
    fn time(&self) -> i64 {
        self.time
    }
    fn rref(&self) -> u64 {
        self.rref
    }
}

#[derive(Debug)]
enum Entries {
    Plain(Vec<PlainEntry>),
    Known(Vec<KnownEntry>),
}

/// Places every eligible row in its group's slice, in push order.
fn scatter<E: Ranked>(
    groups: &[u32],
    offsets: &[u32],
    batch_rows: &[usize],
    make: impl Fn(usize, u64) -> E,
) -> Vec<E> {
    let total = offsets.last().copied().unwrap_or(0) as usize;
    let mut out = vec![E::default(); total];
    let mut cursor = offsets[..offsets.len().saturating_sub(1)].to_vec();
    let mut i = 0;
    for (b, &rows) in batch_rows.iter().enumerate() {
        for r in 0..rows {
            let g = groups[i];
            if g != NO_GROUP {
                let c = &mut cursor[g as usize];
                out[*c as usize] = make(i, pack(b, r));
                *c += 1;
            }
            i += 1;
        }
    }
    out
}

/// Sorts each group by time and returns the runs of more than one row with equal time.
fn sort_groups<E: Ranked>(entries: &mut [E], offsets: &[u32]) -> Vec<Range<usize>> {
    let mut ties = Vec::new();
    for w in offsets.windows(2) {
        let group = &mut entries[w[0] as usize..w[1] as usize];
        group.sort_unstable_by_key(|e| e.time());
        let mut start = 0;
        for i in 1..=group.len() {
            if i == group.len() || group[i].time() != group[start].time() {
                if i - start > 1 {
                    ties.push(w[0] as usize + start..w[0] as usize + i);
                }
                start = i;
            }
        }
    }
    ties
}

/// Which rows of which batches to interleave: slot 0 is an extra one-row array (all NULL in
/// `gather`), the other slots are the batches actually referenced. Handing `interleave` only those
/// keeps its cost independent of the number of right batches (its dictionary merge scans every
/// input array).
struct Interleaving {
    batches: Vec<usize>,
    indices: Vec<(usize, usize)>,
}

impl Interleaving {
    fn new(num_batches: usize, refs: impl Iterator<Item = Option<RowRef>>) -> Self {
        let mut slot = vec![0usize; num_batches];
        let mut batches = Vec::new();
        let indices = refs
            .map(|r| match r {
                None => (0, 0),
                Some(r) => {
                    let s = &mut slot[r.batch as usize];
                    if *s == 0 {
                        batches.push(r.batch as usize);
                        *s = batches.len();
                    }
                    (*s, r.row as usize)
                }
            })
            .collect();
        Self { batches, indices }
    }

    /// Interleaves one column: `extra` is slot 0, `column(b)` the array of batch `b`.
    fn column<'a>(
        &self,
        extra: &'a dyn Array,
        column: impl Fn(usize) -> &'a dyn Array,
    ) -> Result<ArrayRef> {
        let values: Vec<&dyn Array> = std::iter::once(extra)
            .chain(self.batches.iter().map(|&b| column(b)))
            .collect();
        Ok(interleave(&values, &self.indices)?)
    }
}

/// A column type and its order, for a row encoding.
type OrderField = (DataType, SortOptions);

/// Orders the rows of each run (a slice of `entries`) ascending by the row encoding of `fields`
/// over `columns` (indexed `[column][batch]`), and returns the sub-runs still tied.
fn order_runs<E: Ranked>(
    entries: &mut [E],
    runs: &[Range<usize>],
    fields: &[OrderField],
    columns: &[Vec<&dyn Array>],
) -> Result<Vec<Range<usize>>> {
    let converter = RowConverter::new(
        fields
            .iter()
            .map(|(t, o)| SortField::new_with_options(t.clone(), *o))
            .collect(),
    )?;
    let extra: Vec<ArrayRef> = fields.iter().map(|(t, _)| new_null_array(t, 1)).collect();
    let num_batches = columns.first().map_or(0, Vec::len);
    let mut still_tied = Vec::new();
    let mut perm: Vec<usize> = Vec::new();
    let mut scratch: Vec<E> = Vec::new();
    let mut chunk_start = 0;
    while chunk_start < runs.len() {
        let mut chunk_end = chunk_start;
        let mut rows = 0;
        while chunk_end < runs.len()
            && (rows == 0 || rows + runs[chunk_end].len() <= TIE_CHUNK_ROWS)
        {
            rows += runs[chunk_end].len();
            chunk_end += 1;
        }
        let chunk = &runs[chunk_start..chunk_end];
        chunk_start = chunk_end;

        let plan = Interleaving::new(
            num_batches,
            chunk
                .iter()
                .flat_map(|r| entries[r.clone()].iter().map(|e| Some(unpack(e.rref())))),
        );
        let arrays = columns
            .iter()
            .zip(&extra)
            .map(|(per_batch, extra)| plan.column(extra.as_ref(), |b| per_batch[b]))
            .collect::<Result<Vec<_>>>()?;
        let encoded = converter.convert_columns(&arrays)?;

        let mut base = 0;
        for run in chunk {
            let len = run.len();
            perm.clear();
            perm.extend(0..len);
            perm.sort_unstable_by(|&a, &b| encoded.row(base + a).cmp(&encoded.row(base + b)));
            scratch.clear();
            scratch.extend(perm.iter().map(|&p| entries[run.start + p]));
            entries[run.clone()].copy_from_slice(&scratch);
            let mut start = 0;
            for i in 1..=len {
                if i == len || encoded.row(base + perm[i]) != encoded.row(base + perm[start]) {
                    if i - start > 1 {
                        still_tied.push(run.start + start..run.start + i);
                    }
                    start = i;
                }
            }
            base += len;
        }
    }
    Ok(still_tied)
}

// ---------------------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------------------

/// Collects the right input and builds a [`RightIndex`].
#[derive(Debug)]
pub struct IndexBuilder {
    opts: KernelOptions,
    schema: SchemaRef,
    keys: KeyTable,
    batches: Vec<RecordBatch>,
    batch_bytes: usize,
    /// Per batch, the evaluated `TIEBREAK BY` arrays (empty without tie-break); needed only to
    /// order time-tied rows in `finish`.
    tiebreak: Vec<Vec<ArrayRef>>,
    /// Bytes of tie-break arrays that are not columns of their batch.
    tiebreak_bytes: usize,
    /// Per right row in push order: its group, or [`NO_GROUP`] if it can never match.
    groups: Vec<u32>,
    /// Per right row: its time key (mirrored for the forward direction); 0 where ignored.
    times: Vec<i64>,
    /// Per right row: its knowledge time key (empty without a knowledge time).
    known: Vec<i64>,
    /// One all-NULL row per column, for the index.
    null_row: Vec<ArrayRef>,
}

impl IndexBuilder {
    /// Validates `opts` against the right input's schema.
    ///
    /// Types the kernel cannot handle are plan errors with a message for the user; the planner
    /// should have refused them already (see [`supported_key_type`], [`supported_time_type`] and
    /// [`supported_tiebreak_type`]).
    pub fn try_new(opts: KernelOptions, right_schema: SchemaRef) -> Result<Self> {
        if opts.has_knowledge && opts.spec.direction == Direction::Forward {
            return plan_err!(
                "KNOWN AT is not allowed with a forward as-of condition (<= or <): a row that is \
                 both in the future and already known has no meaning; use >= or >"
            );
        }
        for (i, key) in opts.keys.iter().enumerate() {
            if !supported_key_type(&key.data_type) {
                return plan_err!(
                    "as-of key {} has type {}, which cannot be compared for equality; use a \
                     primitive, string, binary, decimal, dictionary or nested type",
                    i + 1,
                    key.data_type
                );
            }
        }
        if !supported_time_type(&opts.time_type) {
            return plan_err!(
                "as-of time has type {}; the time must be a timestamp, a date, an integer or a \
                 float",
                opts.time_type
            );
        }
        for (i, tb) in opts.tiebreak.iter().enumerate() {
            if !supported_tiebreak_type(&tb.data_type) {
                return plan_err!(
                    "TIEBREAK BY expression {} has type {}, which has no order",
                    i + 1,
                    tb.data_type
                );
            }
        }
        let null_row = right_schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        Ok(Self {
            keys: KeyTable::try_new(&opts.keys)?,
            opts,
            schema: right_schema,
            null_row,
            batches: Vec::new(),
            batch_bytes: 0,
            tiebreak: Vec::new(),
            tiebreak_bytes: 0,
            groups: Vec::new(),
            times: Vec::new(),
            known: Vec::new(),
        })
    }

    fn check_push(
        &self,
        batch: &RecordBatch,
        keys: &[ArrayRef],
        time: &ArrayRef,
        knowledge: Option<&ArrayRef>,
        tiebreak: &[ArrayRef],
    ) -> Result<()> {
        let n = batch.num_rows();
        let schema = batch.schema();
        if schema.fields().len() != self.schema.fields().len()
            || schema
                .fields()
                .iter()
                .zip(self.schema.fields())
                .any(|(a, b)| a.data_type() != b.data_type())
        {
            return internal_err!(
                "as-of right batch schema {schema:?} does not match the declared {:?}",
                self.schema
            );
        }
        check_arrays("right", &self.opts, n, keys, time)?;
        match (knowledge, self.opts.has_knowledge) {
            (Some(k), true) if k.data_type() == &self.opts.time_type && k.len() == n => {}
            (None, false) => {}
            _ => return internal_err!("as-of knowledge time array does not match the options"),
        }
        if tiebreak.len() != self.opts.tiebreak.len()
            || tiebreak
                .iter()
                .zip(&self.opts.tiebreak)
                .any(|(a, s)| a.data_type() != &s.data_type || a.len() != n)
        {
            return internal_err!("as-of tie-break arrays do not match the options");
        }
        if self.batches.len() >= u32::MAX as usize || self.groups.len() + n > MAX_ROWS {
            return internal_err!(
                "an as-of partition holds more than {MAX_ROWS} right rows; use more partitions"
            );
        }
        Ok(())
    }

    /// Adds one right batch with its evaluated expressions, each as long as the batch: the keys
    /// (one array per key, of the declared types), the time, the knowledge time (exactly when
    /// `has_knowledge`) and the tie-break arrays.
    pub fn push(
        &mut self,
        batch: RecordBatch,
        keys: &[ArrayRef],
        time: &ArrayRef,
        knowledge: Option<&ArrayRef>,
        tiebreak: &[ArrayRef],
    ) -> Result<()> {
        self.check_push(&batch, keys, time, knowledge, tiebreak)?;
        let n = batch.num_rows();
        let mirror = self.opts.spec.direction == Direction::Forward;
        let strict = self.opts.spec.strict;
        let times = time_keys(time.as_ref(), mirror)?;
        let known = match knowledge {
            Some(k) => Some(time_keys(k.as_ref(), false)?),
            None => None,
        };
        let base = self.groups.len();
        if let Err(e) = self.keys.assign(keys, n, &mut self.groups) {
            // Keep the per-row arrays aligned; keys interned so far only make empty groups.
            self.groups.truncate(base);
            return Err(e);
        }
        self.times.reserve(n);
        for (i, t) in times.into_iter().enumerate() {
            let group = &mut self.groups[base + i];
            match t {
                // Under a strict condition the greatest time can never be strictly before a
                // left time; dropping it here lets activations be `t + 1` without overflow.
                Some(t) if !(strict && t == i64::MAX) => self.times.push(t),
                _ => {
                    *group = NO_GROUP;
                    self.times.push(0);
                }
            }
        }
        if let Some(known) = known {
            self.known.reserve(n);
            for (i, c) in known.into_iter().enumerate() {
                match c {
                    Some(c) => self.known.push(c),
                    None => {
                        // Not known when it became known: never used (no leakage).
                        self.groups[base + i] = NO_GROUP;
                        self.known.push(0);
                    }
                }
            }
        }
        if !tiebreak.is_empty() {
            self.tiebreak_bytes += tiebreak
                .iter()
                .filter(|a| !batch.columns().iter().any(|c| std::sync::Arc::ptr_eq(a, c)))
                .map(|a| a.get_array_memory_size())
                .sum::<usize>();
            self.tiebreak.push(tiebreak.to_vec());
        }
        self.batch_bytes += batch.get_array_memory_size();
        self.batches.push(batch);
        Ok(())
    }

    /// Bytes held now: the batches, the kept tie-break arrays, the per-row build arrays and the
    /// key table.
    pub fn memory_size(&self) -> usize {
        self.batch_bytes
            + self.tiebreak_bytes
            + self.batches.capacity() * size_of::<RecordBatch>()
            + self.groups.capacity() * size_of::<u32>()
            + self.times.capacity() * size_of::<i64>()
            + self.known.capacity() * size_of::<i64>()
            + self.keys.memory_size()
            + null_row_size(&self.null_row)
    }

    /// An upper bound of the bytes [`finish`](Self::finish) allocates beyond
    /// [`memory_size`](Self::memory_size) at its peak, for reserving memory before calling it:
    /// the entries (16 bytes per matchable row, 24 with a knowledge time), the group offsets and,
    /// with a knowledge time, 16 bytes per row of the largest group. The per-row build arrays
    /// are freed before `finish` returns, so the index ends up smaller than `memory_size` plus
    /// this.
    ///
    /// Not included: ordering rows that tie on key and time encodes them in the row format, in
    /// chunks of about 64k rows, but a single run of tied rows is encoded whole.
    pub fn finish_scratch_size(&self) -> usize {
        let num_groups = self.keys.num_groups as usize;
        let mut counts = vec![0u32; num_groups];
        for &g in &self.groups {
            if g != NO_GROUP {
                counts[g as usize] += 1;
            }
        }
        let matchable: usize = counts.iter().map(|&c| c as usize).sum();
        let (entry, per_group_row) = if self.opts.has_knowledge {
            (size_of::<KnownEntry>(), size_of::<(i64, u32)>())
        } else {
            (size_of::<PlainEntry>(), 0)
        };
        let largest = counts.iter().max().copied().unwrap_or(0) as usize;
        matchable * entry + largest * per_group_row + (num_groups + 1) * 2 * size_of::<u32>()
    }

    /// Gives the pushed batches back (the operator spills them when memory runs out).
    pub fn into_batches(self) -> Vec<RecordBatch> {
        self.batches
    }

    /// Builds the index. The batches move into it; everything else is dropped.
    pub fn finish(self) -> Result<RightIndex> {
        let Self {
            opts,
            schema,
            keys,
            batches,
            batch_bytes,
            tiebreak,
            groups,
            times,
            known,
            null_row,
            ..
        } = self;
        let num_groups = keys.num_groups as usize;
        let mut offsets = vec![0u32; num_groups + 1];
        for &g in &groups {
            if g != NO_GROUP {
                offsets[g as usize + 1] += 1;
            }
        }
        for i in 0..num_groups {
            offsets[i + 1] += offsets[i];
        }
        let batch_rows: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        let strict = i64::from(opts.spec.strict);

        let tie_columns = TieColumns {
            opts: &opts,
            schema: &schema,
            batches: &batches,
            tiebreak: &tiebreak,
        };
        let entries = if opts.has_knowledge {
            let mut entries = scatter(&groups, &offsets, &batch_rows, |i, rref| KnownEntry {
                key: known[i],
                time: times[i],
                rref,
            });
            drop((groups, times, known));
            let ties = sort_groups(&mut entries, &offsets);
            tie_columns.resolve(&mut entries, ties)?;
            Entries::Known(compact_known(entries, &mut offsets, strict))
        } else {
            let mut entries = scatter(&groups, &offsets, &batch_rows, |i, rref| PlainEntry {
                key: times[i],
                rref,
            });
            drop((groups, times, known));
            let ties = sort_groups(&mut entries, &offsets);
            tie_columns.resolve(&mut entries, ties)?;
            Entries::Plain(compact_plain(entries, &mut offsets, strict))
        };
        drop(tiebreak);
        Ok(RightIndex {
            opts,
            schema,
            num_rows: batch_rows.iter().sum(),
            keys,
            offsets,
            entries,
            batches,
            batch_bytes,
            null_row,
        })
    }
}

fn null_row_size(null_row: &[ArrayRef]) -> usize {
    null_row.iter().map(|a| a.get_array_memory_size()).sum()
}

fn check_arrays(
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

/// The columns that order time-tied rows.
struct TieColumns<'a> {
    opts: &'a KernelOptions,
    schema: &'a SchemaRef,
    batches: &'a [RecordBatch],
    tiebreak: &'a [Vec<ArrayRef>],
}

impl TieColumns<'_> {
    /// Orders each run of time-tied rows so that the best row comes last: first by the tie-break
    /// columns (the row sorting first under the written order is best, so the order is reversed),
    /// then, for rows still tied, by all comparable columns, greatest last.
    fn resolve<E: Ranked>(&self, entries: &mut [E], mut runs: Vec<Range<usize>>) -> Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        if !self.opts.tiebreak.is_empty() {
            let fields: Vec<OrderField> = self
                .opts
                .tiebreak
                .iter()
                .map(|t| {
                    // Reversing both the direction and the NULL placement reverses the order.
                    let reversed = SortOptions {
                        descending: !t.options.descending,
                        nulls_first: !t.options.nulls_first,
                    };
                    (t.data_type.clone(), reversed)
                })
                .collect();
            let columns: Vec<Vec<&dyn Array>> = (0..fields.len())
                .map(|c| self.tiebreak.iter().map(|b| b[c].as_ref()).collect())
                .collect();
            runs = order_runs(entries, &runs, &fields, &columns)?;
        }
        if runs.is_empty() {
            return Ok(());
        }
        let ascending = SortOptions {
            descending: false,
            nulls_first: true,
        };
        let (fields, columns): (Vec<OrderField>, Vec<Vec<&dyn Array>>) = self
            .schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| full_row_comparable(f.data_type()))
            .map(|(c, f)| {
                (
                    (f.data_type().clone(), ascending),
                    self.batches.iter().map(|b| b.column(c).as_ref()).collect(),
                )
            })
            .unzip();
        if !fields.is_empty() {
            // Rows still tied now are equal in every comparable column: either is right.
            order_runs(entries, &runs, &fields, &columns)?;
        }
        Ok(())
    }
}

/// Keeps the best (last) row of each distinct time of each group, keyed by its activation.
fn compact_plain(
    mut entries: Vec<PlainEntry>,
    offsets: &mut [u32],
    strict: i64,
) -> Vec<PlainEntry> {
    let mut w = 0;
    let mut start = 0;
    for g in 0..offsets.len().saturating_sub(1) {
        let end = offsets[g + 1] as usize;
        for i in start..end {
            if i + 1 == end || entries[i + 1].key != entries[i].key {
                entries[w] = PlainEntry {
                    key: entries[i].key + strict,
                    rref: entries[i].rref,
                };
                w += 1;
            }
        }
        start = end;
        offsets[g + 1] = w as u32;
    }
    entries.truncate(w);
    entries.shrink_to_fit();
    entries
}

/// Turns each group (sorted worst to best) into the entries where the best eligible row
/// changes, keyed by activation `max(t_adj, c)`.
///
/// Works in place with one scratch vector of 16 bytes per row of the largest group.
fn compact_known(
    mut entries: Vec<KnownEntry>,
    offsets: &mut [u32],
    strict: i64,
) -> Vec<KnownEntry> {
    let mut w = 0;
    let mut start = 0;
    // Per row of the group: (activation, rank), then compacted in place to the emitted pairs.
    let mut by_activation: Vec<(i64, u32)> = Vec::new();
    for g in 0..offsets.len().saturating_sub(1) {
        let end = offsets[g + 1] as usize;
        by_activation.clear();
        by_activation.extend(
            entries[start..end]
                .iter()
                .enumerate()
                .map(|(rank, e)| ((e.time + strict).max(e.key), rank as u32)),
        );
        by_activation.sort_unstable_by_key(|&(a, _)| a);
        let mut emitted = 0;
        let mut best: Option<u32> = None;
        let mut last: Option<u32> = None;
        for i in 0..by_activation.len() {
            let (a, rank) = by_activation[i];
            best = best.max(Some(rank));
            let last_of_activation = i + 1 == by_activation.len() || by_activation[i + 1].0 != a;
            if let Some(b) = best
                && last_of_activation
                && best != last
            {
                by_activation[emitted] = (a, b);
                emitted += 1;
                last = best;
            }
        }
        // Emitted ranks strictly increase, so the j-th is read from `start + rank >= start + j`
        // before anything is written there, and writes go to `w + j <= start + j`.
        for j in 0..emitted {
            let (a, rank) = by_activation[j];
            let e = entries[start + rank as usize];
            entries[w + j] = KnownEntry {
                key: a,
                time: e.time,
                rref: e.rref,
            };
        }
        w += emitted;
        start = end;
        offsets[g + 1] = w as u32;
    }
    entries.truncate(w);
    entries.shrink_to_fit();
    entries
}

// ---------------------------------------------------------------------------------------------
// Index
// ---------------------------------------------------------------------------------------------

/// The finished index over the right input: probe it with left rows, gather the matched rows.
#[derive(Debug)]
pub struct RightIndex {
    opts: KernelOptions,
    schema: SchemaRef,
    num_rows: usize,
    keys: KeyTable,
    /// Group `g`'s entries are `entries[offsets[g]..offsets[g + 1]]`, ascending by activation.
    offsets: Vec<u32>,
    entries: Entries,
    batches: Vec<RecordBatch>,
    batch_bytes: usize,
    /// One all-NULL row per column, interleaved for unmatched left rows.
    null_row: Vec<ArrayRef>,
}

/// One left row to look up: its group's entries `start..start + len`, its time key and its
/// tolerance bound.
struct Query {
    row: usize,
    start: usize,
    len: usize,
    l: i64,
    bound: Option<i64>,
}

/// How many binary searches advance in lockstep.
const LANES: usize = 16;

/// Calls `found` with each query and the last entry of its range whose key is at most `q.l`,
/// for the queries that have one.
///
/// The binary searches of [`LANES`] queries advance one step at a time, side by side: each step
/// is a load from a random place of a large index, usually a cache miss, and independent loads
/// overlap where the dependent loads of a single search cannot. Each step is branch-free.
fn search_many<E>(
    entries: &[E],
    key: impl Fn(&E) -> i64,
    queries: &[Query],
    mut found: impl FnMut(&Query, &E),
) {
    for chunk in queries.chunks(LANES) {
        let mut base = [0usize; LANES];
        let mut size = [0usize; LANES];
        for (k, q) in chunk.iter().enumerate() {
            base[k] = q.start;
            size[k] = q.len;
        }
        loop {
            let mut active = false;
            for (k, q) in chunk.iter().enumerate() {
                let n = size[k];
                if n > 1 {
                    // Keep the upper half when its first entry is still `<= l`: the last entry
                    // `<= l` stays within `base..base + size`.
                    let half = n / 2;
                    let mid = base[k] + half;
                    base[k] = if key(&entries[mid]) <= q.l {
                        mid
                    } else {
                        base[k]
                    };
                    size[k] = n - half;
                    active = true;
                }
            }
            if !active {
                break;
            }
        }
        for (k, q) in chunk.iter().enumerate() {
            if q.len > 0 && key(&entries[base[k]]) <= q.l {
                found(q, &entries[base[k]]);
            }
        }
    }
}

impl RightIndex {
    /// Bytes held: the right batches, the index and the key table.
    pub fn memory_size(&self) -> usize {
        let entries = match &self.entries {
            Entries::Plain(e) => e.capacity() * size_of::<PlainEntry>(),
            Entries::Known(e) => e.capacity() * size_of::<KnownEntry>(),
        };
        self.batch_bytes
            + entries
            + self.offsets.capacity() * size_of::<u32>()
            + self.keys.memory_size()
            + null_row_size(&self.null_row)
    }

    /// Gives the right batches back (the operator spills them when another shard could not fit).
    pub fn into_batches(self) -> Vec<RecordBatch> {
        self.batches
    }

    /// Keeps only the right columns `keep` (ascending indices into the right input's schema):
    /// once the index is built, matching needs none of the columns, so those the output does
    /// not show (keys, times, tie-breaks, usually) can go. [`RightIndex::gather`] then returns
    /// these columns, in this order.
    pub fn retain_columns(&mut self, keep: &[usize]) -> Result<()> {
        if keep.windows(2).any(|w| w[0] >= w[1])
            || keep
                .last()
                .is_some_and(|&c| c >= self.schema.fields().len())
        {
            return internal_err!(
                "as-of index: columns {keep:?} to keep are not ascending indices"
            );
        }
        if keep.len() == self.schema.fields().len() {
            return Ok(());
        }
        let mut batches = Vec::with_capacity(self.batches.len());
        for batch in &self.batches {
            batches.push(batch.project(keep)?);
        }
        self.batches = batches;
        self.schema = Arc::new(self.schema.project(keep)?);
        self.null_row = keep.iter().map(|&c| self.null_row[c].clone()).collect();
        self.batch_bytes = self
            .batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        Ok(())
    }

    /// The number of right rows pushed, matchable or not.
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// The number of distinct right keys (0 without right rows; 1 without keys).
    pub fn num_groups(&self) -> usize {
        self.keys.num_groups as usize
    }

    /// The schema of the columns held: the right input's, as given to [`IndexBuilder::try_new`],
    /// less those dropped by [`RightIndex::retain_columns`].
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// For each left row, the matched right row or `None`.
    ///
    /// `keys` and `time` are the left's evaluated key and time expressions (declared types, equal
    /// lengths). `lower_bound` is the tolerance bound per left row in the time's own type,
    /// computed by the caller: `l.t - d` for the backward direction, `l.t + d` for the forward
    /// one. It is inclusive. A NULL (or NaN) bound matches nothing; compute it saturating so that
    /// overflow cannot turn into NULL. `None` means no tolerance.
    pub fn probe(
        &self,
        keys: &[ArrayRef],
        time: &ArrayRef,
        lower_bound: Option<&ArrayRef>,
    ) -> Result<Vec<Option<RowRef>>> {
        let n = time.len();
        check_arrays("left", &self.opts, n, keys, time)?;
        if let Some(b) = lower_bound
            && (b.data_type() != &self.opts.time_type || b.len() != n)
        {
            return internal_err!(
                "as-of tolerance bound ({}, {} rows) does not match the time ({}, {n} rows)",
                b.data_type(),
                b.len(),
                self.opts.time_type
            );
        }
        let mirror = self.opts.spec.direction == Direction::Forward;
        let groups = self.keys.lookup(keys, n)?;
        let times = time_keys(time.as_ref(), mirror)?;
        let bounds = match lower_bound {
            Some(b) => Some(time_keys(b.as_ref(), mirror)?),
            None => None,
        };
        let mut queries = Vec::with_capacity(n);
        for (row, (&g, &l)) in groups.iter().zip(&times).enumerate() {
            let (Some(l), true) = (l, g != NO_GROUP) else {
                continue;
            };
            let bound = match &bounds {
                None => None,
                Some(b) => match b[row] {
                    Some(b) => Some(b),
                    // A NULL bound: `r.t >= NULL` is never true.
                    None => continue,
                },
            };
            let start = self.offsets[g as usize] as usize;
            let end = self.offsets[g as usize + 1] as usize;
            queries.push(Query {
                row,
                start,
                len: end - start,
                l,
                bound,
            });
        }
        let mut out = vec![None; n];
        let strict = i64::from(self.opts.spec.strict);
        match &self.entries {
            Entries::Plain(entries) => search_many(
                entries,
                |e| e.key,
                &queries,
                |q, e| {
                    if q.bound.is_none_or(|b| e.key - strict >= b) {
                        out[q.row] = Some(unpack(e.rref));
                    }
                },
            ),
            Entries::Known(entries) => search_many(
                entries,
                |e| e.key,
                &queries,
                |q, e| {
                    if q.bound.is_none_or(|b| e.time >= b) {
                        out[q.row] = Some(unpack(e.rref));
                    }
                },
            ),
        }
        Ok(out)
    }

    /// The right columns for `refs` from several indexes of the same right input (hash
    /// partitions): each ref names the index and the row, one output row per ref; `None` gives
    /// NULL in every column. One interleave per column, whatever the number of indexes. Types
    /// are kept (dictionaries stay dictionaries, views stay views).
    pub fn gather_from(
        indexes: &[&RightIndex],
        refs: &[Option<(usize, RowRef)>],
    ) -> Result<Vec<ArrayRef>> {
        let Some(first) = indexes.first() else {
            return internal_err!("as-of gather without a right index");
        };
        if refs.iter().all(Option::is_none) {
            return Ok(first
                .schema
                .fields()
                .iter()
                .map(|f| match refs.len() {
                    0 => new_empty_array(f.data_type()),
                    n => new_null_array(f.data_type(), n),
                })
                .collect());
        }
        // Number every batch of every index: (index, batch) -> flat batch id.
        let mut offsets = Vec::with_capacity(indexes.len());
        let mut owners: Vec<(usize, usize)> = Vec::new();
        for (i, index) in indexes.iter().enumerate() {
            if index.schema != first.schema {
                return internal_err!("as-of gather over indexes of different schemas");
            }
            offsets.push(owners.len());
            owners.extend((0..index.batches.len()).map(|b| (i, b)));
        }
        let mut flat = Vec::with_capacity(refs.len());
        for r in refs {
            flat.push(match r {
                None => None,
                Some((i, row)) => {
                    let rows = indexes
                        .get(*i)
                        .and_then(|index| index.batches.get(row.batch as usize))
                        .map(RecordBatch::num_rows);
                    if rows.is_none_or(|rows| row.row as usize >= rows) {
                        return internal_err!("as-of row reference {i}:{row:?} is out of range");
                    }
                    Some(RowRef {
                        batch: (offsets[*i] + row.batch as usize) as u32,
                        row: row.row,
                    })
                }
            });
        }
        let plan = Interleaving::new(owners.len(), flat.into_iter());
        first
            .null_row
            .iter()
            .enumerate()
            .map(|(c, null)| {
                plan.column(null.as_ref(), |b| {
                    let (i, batch) = owners[b];
                    indexes[i].batches[batch].column(c).as_ref()
                })
            })
            .collect()
    }

    /// The right input's columns for `refs`, one output row per ref; `None` gives NULL in every
    /// column (see [`RightIndex::gather_from`]).
    pub fn gather(&self, refs: &[Option<RowRef>]) -> Result<Vec<ArrayRef>> {
        let refs: Vec<Option<(usize, RowRef)>> =
            refs.iter().map(|r| r.map(|row| (0, row))).collect();
        Self::gather_from(&[self], &refs)
    }
}

#[cfg(test)]
mod tests;
