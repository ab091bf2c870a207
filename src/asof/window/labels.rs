//! The window join the other way round: the left rows (the labels) indexed, the right rows (the
//! events) streamed through once, each added to the aggregates of every label whose window holds
//! it. For a right input much larger than the left (10M events, 1M labels) this keeps no right
//! row: memory follows the labels, and the right input is read at the speed of its decoding.
//!
//! # How it runs
//!
//! Build ([`LabelIndex::new`]): the left rows are grouped by key (as the right rows are in
//! [`super::WindowIndex`]) and each group's rows sorted by time; a left row with a NULL key
//! (unless `IS NOT DISTINCT FROM`) or a NULL time gets no entry, so its windows stay empty.
//!
//! Stream ([`LabelIndex::apply`], a task per right partition, a chunk of its batches at a
//! time): a right row at time `e`, known at `c`, is in the window of width `d` of a left row at
//! `t` when `e <= t < e + d` and `c <= t` (`e < t <= e + d` and `c < t` for `[t - d, t)`): the
//! left rows of its key form one run of the group's time order per width, found by binary
//! searches. A chunk's rows are first put in the order of their left groups (a counting sort),
//! so these searches, and the additions after them, move through memory in order. Each
//! aggregate then adds the value to every left row of its run, in one set of [`Accumulators`]
//! the tasks share (under a lock, taken for the additions only): `O(log g + w)` per right row
//! for a group of `g` left rows of which `w` hold it, the same pairs the other way round
//! visits.
//!
//! Finish ([`LabelIndex::finish`]): the accumulators are read out in the left's order, the
//! aggregates side by side. Every result is the one [`super::WindowIndex`] computes, bit for
//! bit: counts and integer sums (in `i128`) are exact, float sums keep Shewchuk's partial sums
//! (up to three per row inline, more in a side table: [`ExactSum`]) and round once, extremes
//! compare in the same order.
//!
//! Only the aggregates that accumulate this way are computed here ([`left_build_computes`]):
//! `count(*)`, `count(x)`, `sum`/`avg` of integers and floats, `min`/`max` of integers and
//! DOUBLEs. The others (`first`, `last`, `count_distinct`, `var`, `stddev`, DECIMAL sums) need
//! a window's rows in time order, which only the right-side index has.

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{Result, exec_err, internal_err};
use std::sync::Mutex;

use hashbrown::HashMap;

use super::AggFunction;
use super::fsum::{BIG, ExactSum, round_partials, two_sum};
use super::kernel::{
    Groups, KeyView, NO_GROUP, RightArrays, Width, WindowSpec, distinct_widths, group_entries,
    int_key, integers, is_null, null_keys,
};
use crate::asof::time::dense_time_keys;
use crate::memory::prefetch;

/// Whether the left-build kernel computes `function` of an argument of type `arg` (`None` for
/// `count(*)`).
pub fn left_build_computes(function: AggFunction, arg: Option<&DataType>) -> bool {
    match (function, arg) {
        (AggFunction::CountStar, _) | (AggFunction::Count, Some(_)) => true,
        (AggFunction::Sum | AggFunction::Avg, Some(t)) => t.is_integer() || t.is_floating(),
        (AggFunction::Min | AggFunction::Max, Some(t)) => {
            int_key(t) || matches!(t, DataType::Float64)
        }
        _ => false,
    }
}

/// What one accumulator computes per left row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Rows (`count(*)`) or non-NULL values (`count(x)`).
    Count,
    /// The exact sum and count of integer values (`sum`, `avg`).
    IntSum,
    /// The exact sum and count of float values (`sum`, `avg`).
    FloatSum,
    /// The greatest (`max: true`) or least integer.
    IntExtreme { max: bool },
    /// The greatest or least DOUBLE, in IEEE total order.
    FloatExtreme { max: bool },
}

/// One accumulator: aggregates of the same kind, width and argument share it (`sum(x)` and
/// `avg(x)` one exact sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    kind: Kind,
    /// Its width in [`LabelIndex::widths`].
    width: usize,
    /// The aggregate whose argument it reads (`None`: `count(*)`).
    arg: Option<usize>,
}

/// The left rows by key, sorted by time, and what each aggregate accumulates.
pub struct LabelIndex {
    spec: WindowSpec,
    left: LeftKeys,
    widths: Vec<Width>,
    slots: Vec<Slot>,
    /// Per aggregate, its slot.
    slot_of: Vec<usize>,
}

/// Left rows grouped by key, each group's rows sorted by time: what a join that indexes its
/// left side (a window join's [`LabelIndex`], the as-of join's left build) looks right rows up
/// in. A left row with a NULL key (unless `IS NOT DISTINCT FROM`) or a NULL time gets no entry.
pub(crate) struct LeftKeys {
    keys: Vec<(DataType, bool)>,
    groups: Groups,
    /// Per group `g`, its entries are `offsets[g]..offsets[g + 1]`.
    pub(crate) offsets: Vec<u32>,
    /// The time of each entry.
    pub(crate) times: Vec<i64>,
    /// Per left row, its entry, or [`NO_ENTRY`].
    pub(crate) entry_of: Vec<u32>,
    /// For one integer key whose values span a small range: the groups by value, a table
    /// looked up without hashing.
    dense: Option<DenseGroups>,
}

/// Groups of integer keys in `min..min + groups.len()`, by value.
struct DenseGroups {
    min: i64,
    groups: Vec<u32>,
}

impl DenseGroups {
    /// The table of `map`'s groups, when its keys span at most 8 slots per key (and 64M).
    fn of(map: &HashMap<i64, u32>) -> Option<Self> {
        let min = *map.keys().min()?;
        let max = *map.keys().max()?;
        let span = usize::try_from(max.checked_sub(min)?)
            .ok()?
            .checked_add(1)?;
        if span > 8 * map.len() + 1024 || span > 1 << 26 {
            return None;
        }
        let mut groups = vec![NO_ENTRY; span];
        for (&k, &g) in map {
            groups[(k - min) as usize] = g;
        }
        Some(Self { min, groups })
    }

    /// An empty table for the integer keys of `views` (left rows, `rows` of them), when their
    /// values span at most 4 slots per row (and 16M).
    fn spanning(views: &[KeyView], rows: usize) -> Option<Self> {
        let (mut min, mut max) = (i64::MAX, i64::MIN);
        for view in views {
            let KeyView::Int(keys) = view else {
                return None;
            };
            min = min.min(arrow::compute::min(keys).unwrap_or(i64::MAX));
            max = max.max(arrow::compute::max(keys).unwrap_or(i64::MIN));
        }
        let span = usize::try_from(max.checked_sub(min)?)
            .ok()?
            .checked_add(1)?;
        if span > 4 * rows + 1024 || span > 1 << 24 {
            return None;
        }
        Some(Self {
            min,
            groups: vec![NO_ENTRY; span],
        })
    }

    /// The group of `key` (within the table's span), numbered `next` when first seen.
    #[inline]
    fn get_or_insert(&mut self, key: i64, next: &mut u32) -> u32 {
        let slot = &mut self.groups[(key - self.min) as usize];
        if *slot == NO_ENTRY {
            *slot = *next;
            *next += 1;
        }
        *slot
    }

    #[inline]
    fn get(&self, key: i64) -> Option<u32> {
        let at = usize::try_from(key.checked_sub(self.min)?).ok()?;
        self.groups.get(at).copied().filter(|&g| g != NO_ENTRY)
    }

    /// Asks for the slot of `key` early (nothing outside the table's span).
    #[inline]
    fn prefetch(&self, key: i64) {
        if let Some(at) = key.checked_sub(self.min) {
            prefetch(&self.groups, at as usize);
        }
    }
}

/// No entry (a left row in no window) or no group (a right row in none): the same marker as
/// the right-side index's.
pub(crate) const NO_ENTRY: u32 = NO_GROUP;

/// One left batch's keys and times.
pub struct LeftArrays {
    /// The key columns, in the order of [`WindowSpec::keys`].
    pub keys: Vec<ArrayRef>,
    /// The times.
    pub time: ArrayRef,
}

impl LeftKeys {
    /// Groups the left rows `left` (batch after batch: row numbers run on across them) by the
    /// keys `keys` (type, NULL equals NULL); `join` names the join in errors.
    pub(crate) fn new(keys: &[(DataType, bool)], left: &[LeftArrays], join: &str) -> Result<Self> {
        let rows: usize = left.iter().map(|l| l.time.len()).sum();
        if u32::try_from(rows).is_err() {
            return exec_err!(
                "{join}'s left input has more than {} rows; at most that fits one index",
                u32::MAX - 1
            );
        }
        let mut groups = Groups::new(keys)?;
        let views = left
            .iter()
            .map(|b| groups.view(&b.keys))
            .collect::<Result<Vec<_>>>()?;
        // One integer key whose values span a small range: grouped by value in a table, without
        // hashing (NULL, where it equals NULL, gets a group of its own).
        let mut table = match &groups {
            Groups::Int { .. } => DenseGroups::spanning(&views, rows),
            _ => None,
        };
        let (mut next, mut null_group) = (0u32, None);
        let mut group_of: Vec<u32> = Vec::with_capacity(rows);
        let mut row_times: Vec<i64> = Vec::with_capacity(rows);
        let mut counts: Vec<u32> = Vec::new();
        for (batch, view) in left.iter().zip(&views) {
            let (times, valid) = dense_time_keys(batch.time.as_ref())?;
            let null_keys = null_keys(&batch.keys, keys);
            for (i, &t) in times.iter().enumerate() {
                if is_null(&valid, i) || is_null(&null_keys, i) {
                    group_of.push(NO_ENTRY);
                    row_times.push(0);
                    continue;
                }
                let g = match (&mut table, view) {
                    (Some(table), KeyView::Int(k)) if k.is_valid(i) => {
                        table.get_or_insert(k.value(i), &mut next)
                    }
                    (Some(_), _) => *null_group.get_or_insert_with(|| {
                        next += 1;
                        next - 1
                    }),
                    (None, _) => groups.get_or_insert(view, i),
                };
                if g as usize == counts.len() {
                    counts.push(0);
                }
                counts[g as usize] += 1;
                group_of.push(g);
                row_times.push(t);
            }
        }
        // A counting sort by group, then each group's few rows by time.
        let (offsets, mut entries) = group_entries(&counts, &group_of, &row_times);
        drop((counts, group_of, row_times));
        for w in offsets.windows(2) {
            entries[w[0] as usize..w[1] as usize].sort_unstable();
        }
        let mut entry_of = vec![NO_ENTRY; rows];
        for (p, &(_, row)) in entries.iter().enumerate() {
            entry_of[row as usize] = p as u32;
        }
        let times = entries.iter().map(|e| e.0).collect();
        let dense = match (table, &groups) {
            (Some(table), _) => {
                groups = Groups::Int {
                    map: HashMap::new(),
                    null: null_group,
                };
                Some(table)
            }
            (None, Groups::Int { map, .. }) => DenseGroups::of(map),
            (None, _) => None,
        };
        Ok(Self {
            keys: keys.to_vec(),
            groups,
            offsets,
            times,
            entry_of,
            dense,
        })
    }

    /// Bytes held, for the memory pool.
    pub(crate) fn memory_size(&self) -> usize {
        self.groups.memory_size()
            + self.dense.as_ref().map_or(0, |d| 4 * d.groups.len())
            + 4 * (self.offsets.len() + self.entry_of.len())
            + 8 * self.times.len()
    }

    /// The number of groups.
    pub(crate) fn num_groups(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Appends to `out` the group of each right row whose keys are `keys`, [`NO_ENTRY`] for a
    /// row whose key no left row has, a NULL key (unless NULL equals NULL), or `skip(i)`.
    pub(crate) fn groups_of(
        &self,
        keys: &[ArrayRef],
        rows: usize,
        skip: impl Fn(usize) -> bool,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let view = self.groups.view(keys)?;
        let dense = match (&self.dense, &view) {
            (Some(dense), KeyView::Int(keys)) => Some((dense, keys)),
            _ => None,
        };
        let null_keys = null_keys(keys, &self.keys);
        out.extend((0..rows).map(|i| {
            // The right rows' keys come in no order: a table slot a few rows on is asked for
            // now (at the shared workload's medium scale, half of this loop waited on them).
            if let Some((dense, keys)) = dense
                && i + AHEAD < keys.len()
            {
                dense.prefetch(keys.value(i + AHEAD));
            }
            if skip(i) || is_null(&null_keys, i) {
                return NO_ENTRY;
            }
            let group = match dense {
                Some((dense, keys)) if keys.is_valid(i) => dense.get(keys.value(i)),
                _ => self.groups.get(&view, i),
            };
            group.unwrap_or(NO_ENTRY)
        }));
        Ok(())
    }

    /// The times of group `g`'s entries, and the entry of the first.
    #[inline]
    pub(crate) fn group(&self, g: usize) -> (&[i64], usize) {
        let (from, to) = (self.offsets[g] as usize, self.offsets[g + 1] as usize);
        (&self.times[from..to], from)
    }

    /// Per left row of `rows`, in the left's order, its entry (`None`: it has none). The
    /// entries are spread over the groups, so each would be a cache miss: `touch` is called
    /// with the entry of the row [`AHEAD`] on, to ask for its memory early, and the loads
    /// overlap.
    pub(crate) fn entries<'a>(
        &'a self,
        rows: std::ops::Range<usize>,
        touch: impl Fn(usize) + 'a,
    ) -> impl Iterator<Item = Option<usize>> + 'a {
        let of = &self.entry_of;
        rows.map(move |r| {
            if let Some(&ahead) = of.get(r + AHEAD)
                && ahead != NO_ENTRY
            {
                touch(ahead as usize);
            }
            match of[r] {
                NO_ENTRY => None,
                p => Some(p as usize),
            }
        })
    }
}

impl LabelIndex {
    /// Indexes the left rows `left` (batch after batch: row numbers run on across them) for the
    /// join `spec`. `arg_types[a]` is aggregate `a`'s argument type and `same_arg[a]` the first
    /// aggregate whose argument is the same expression (`a` itself when none before it is).
    /// Refuses (as an internal error) aggregates [`left_build_computes`] does not take.
    pub fn new(
        spec: WindowSpec,
        arg_types: &[Option<DataType>],
        same_arg: &[usize],
        left: &[LeftArrays],
    ) -> Result<Self> {
        if arg_types.len() != spec.aggregates.len() || same_arg.len() != spec.aggregates.len() {
            return internal_err!("window join: the arguments do not match the aggregates");
        }
        let (widths, width_of) = distinct_widths(&spec)?;
        let mut slots: Vec<Slot> = Vec::new();
        let mut slot_of = Vec::with_capacity(spec.aggregates.len());
        for (a, agg) in spec.aggregates.iter().enumerate() {
            let arg = arg_types[a].as_ref();
            if !left_build_computes(agg.function, arg) {
                return internal_err!(
                    "window join: {} is not computed with the left side indexed",
                    agg.name
                );
            }
            let kind = match (agg.function, arg) {
                (AggFunction::CountStar | AggFunction::Count, _) => Kind::Count,
                (AggFunction::Sum | AggFunction::Avg, Some(t)) if t.is_integer() => Kind::IntSum,
                (AggFunction::Sum | AggFunction::Avg, _) => Kind::FloatSum,
                (f, Some(t)) if int_key(t) => Kind::IntExtreme {
                    max: f == AggFunction::Max,
                },
                (f, _) => Kind::FloatExtreme {
                    max: f == AggFunction::Max,
                },
            };
            let slot = Slot {
                kind,
                width: width_of[a],
                arg: (agg.function != AggFunction::CountStar).then(|| same_arg[a]),
            };
            slot_of.push(match slots.iter().position(|s| *s == slot) {
                Some(at) => at,
                None => {
                    slots.push(slot);
                    slots.len() - 1
                }
            });
        }

        Ok(Self {
            left: LeftKeys::new(&spec.keys, left, "a window join")?,
            spec,
            widths,
            slots,
            slot_of,
        })
    }

    /// Bytes held, for the memory pool.
    pub fn memory_size(&self) -> usize {
        self.left.memory_size()
    }

    /// Empty accumulators, shared by the tasks streaming right rows.
    pub fn accumulators(&self) -> Accumulators {
        let n = self.left.times.len();
        Accumulators {
            slots: self
                .slots
                .iter()
                .map(|s| match s.kind {
                    Kind::Count => Acc::Count(vec![0; n]),
                    Kind::IntSum => Acc::IntSum(vec![0; n], vec![0; n]),
                    Kind::FloatSum => Acc::FloatSum(vec![[0; INLINE + 1]; n], HashMap::new()),
                    Kind::IntExtreme { .. } => Acc::IntExtreme(vec![0; n], vec![false; n]),
                    Kind::FloatExtreme { .. } => Acc::FloatExtreme(vec![0.0; n], vec![false; n]),
                })
                .collect(),
        }
    }

    /// The bytes one [`LabelIndex::accumulators`] holds, before any float sum needs its side
    /// table.
    pub fn accumulators_size(&self) -> usize {
        let per_entry: usize = self
            .slots
            .iter()
            .map(|s| match s.kind {
                Kind::Count => 8,
                Kind::IntSum => 24,
                Kind::FloatSum => std::mem::size_of::<FloatAcc>(),
                Kind::IntExtreme { .. } | Kind::FloatExtreme { .. } => 9,
            })
            .sum();
        per_entry * self.left.times.len()
    }

    /// How many right rows [`LabelIndex::apply`] should get at once: enough that, put in key
    /// order, they reach the left rows' accumulators close to one another, few enough that
    /// their sorted copy stays small (about 30 bytes a row). At the windowed benchmark's
    /// medium scale, 2^18 rows took as long as 2^19 and 2^20 and 50 MB less memory than 2^19
    /// (benches/README.md); 2^17 and 2^16 were slower.
    pub const CHUNK_ROWS: usize = 1 << 18;

    /// About the bytes a chunk's row takes while [`LabelIndex::apply`] runs: its group, place,
    /// times and an argument, sorted.
    pub const CHUNK_ROW_BYTES: usize = 40;

    /// Adds a chunk of right rows (several batches) to `acc`. The rows are first put in the
    /// order of their left groups (a counting sort), with their times and the values the
    /// aggregates read, so the left's times and the accumulators are then visited in order,
    /// not at random: at millions of left rows, the difference between streaming through
    /// memory and a cache miss per row.
    pub fn apply(
        &self,
        shared: &Mutex<Accumulators>,
        scratch: &mut Scratch,
        chunk: &[RightArrays],
    ) -> Result<()> {
        for right in chunk {
            if right.args.len() != self.spec.aggregates.len()
                || right.known.is_some() != self.spec.has_known
            {
                return internal_err!("window join: the right arrays do not match the join");
            }
        }
        let strict = self.spec.strict;
        let num_groups = self.left.num_groups();

        // 1. Each row's group (`NO_ENTRY` for a row in no window).
        // Every buffer is the task's, kept from chunk to chunk (fresh pages cost a fault each).
        let Scratch {
            group_of,
            counts,
            next,
            place,
            sorted_group,
            sorted_time,
            sorted_known,
            hits,
            ends,
            spare_valid,
            spare_ints,
            spare_floats,
        } = scratch;
        refill(group_of, 0, 0);
        refill(counts, num_groups, 0);
        let mut times = Vec::with_capacity(chunk.len());
        for right in chunk {
            let (t, valid) = dense_time_keys(right.time.as_ref())?;
            let known = match &right.known {
                Some(k) => Some(dense_time_keys(k.as_ref())?),
                None => None,
            };
            let from = group_of.len();
            let skip = |i| is_null(&valid, i) || known.as_ref().is_some_and(|(_, v)| is_null(v, i));
            self.left.groups_of(&right.keys, t.len(), skip, group_of)?;
            for &g in &group_of[from..] {
                if g != NO_ENTRY {
                    counts[g as usize] += 1;
                }
            }
            times.push((t, known.map(|(k, _)| k)));
        }

        // 2. The rows in group order: per row its place, and per place the row's group, time
        // and knowledge time.
        refill(next, 0, 0);
        let mut kept = 0u32;
        for &c in counts.iter() {
            next.push(kept);
            kept += c;
        }
        let kept = kept as usize;
        refill(place, 0, 0);
        refill(sorted_group, kept, 0);
        refill(sorted_time, kept, 0);
        refill(sorted_known, if self.spec.has_known { kept } else { 0 }, 0);
        let mut r = 0;
        for (t, known) in &times {
            for i in 0..t.len() {
                let g = group_of[r];
                if let Some(&ahead) = group_of.get(r + AHEAD) {
                    prefetch(next, ahead as usize);
                }
                r += 1;
                if g == NO_ENTRY {
                    place.push(NO_ENTRY);
                    continue;
                }
                let p = next[g as usize];
                next[g as usize] += 1;
                place.push(p);
                let p = p as usize;
                sorted_group[p] = g;
                sorted_time[p] = t[i];
                if let Some(k) = known {
                    sorted_known[p] = k[i];
                }
            }
        }
        drop(times);

        // 3. Per row in some window, in group order: its place and the first entry it reaches;
        // per width, the entry past the last.
        let widths = self.widths.len();
        refill(hits, 0, (0, 0));
        refill(ends, 0, 0);
        for p in 0..kept {
            if let Some(&ahead) = sorted_group.get(p + AHEAD) {
                prefetch(&self.left.times, self.left.offsets[ahead as usize] as usize);
            }
            let (group, from) = self.left.group(sorted_group[p] as usize);
            let e = sorted_time[p];
            let lowest = match self.spec.has_known {
                true => e.max(sorted_known[p]),
                false => e,
            };
            let start = match strict {
                true => group.partition_point(|&t| t <= lowest),
                false => group.partition_point(|&t| t < lowest),
            };
            if start == group.len() {
                continue;
            }
            let mut any = false;
            for width in &self.widths {
                let last = upper_bound(*width, e, strict);
                let end = start + group[start..].partition_point(|&t| t <= last);
                any |= end > start;
                ends.push((from + end) as u32);
            }
            if any {
                hits.push((p as u32, (from + start) as u32));
            } else {
                ends.truncate(ends.len() - widths);
            }
        }

        // 4. Each accumulator over the rows in windows, its values put in group order first.
        let (hits, ends) = (&*hits, &*ends);
        // Each run with the first entry of the run `AHEAD` on, to fetch it early.
        let runs = |w: usize| {
            hits.iter().enumerate().map(move |(j, &(p, start))| {
                let ahead = hits.get(j + AHEAD).map_or(usize::MAX, |h| h.1 as usize);
                (
                    p as usize,
                    start as usize..ends[j * widths + w] as usize,
                    ahead,
                )
            })
        };
        // The values first, then the accumulators, shared by the tasks, under their lock.
        let view_of = |slot: &Slot| match slot.kind {
            Kind::Count => View::Valid,
            Kind::IntSum | Kind::IntExtreme { .. } => View::Int,
            Kind::FloatSum | Kind::FloatExtreme { .. } => View::Float,
        };
        let mut columns: Vec<((usize, View), Column)> = Vec::new();
        for slot in &self.slots {
            let Some(a) = slot.arg else { continue };
            let view = view_of(slot);
            if !columns.iter().any(|(key, _)| *key == (a, view)) {
                let function = self.spec.aggregates[a].function;
                let spares = (&mut *spare_valid, &mut *spare_ints, &mut *spare_floats);
                let column = Column::sorted(chunk, a, view, function, place, kept, spares)?;
                columns.push(((a, view), column));
            }
        }
        let mut shared = match shared.lock() {
            Ok(shared) => shared,
            Err(_) => return internal_err!("window join: a task adding to the windows panicked"),
        };
        if shared.slots.len() != self.slots.len() {
            return internal_err!("window join: the accumulators do not match the join");
        }
        for (slot, acc) in self.slots.iter().zip(shared.slots.iter_mut()) {
            let column = slot.arg.and_then(|a| {
                columns
                    .iter()
                    .find(|(key, _)| *key == (a, view_of(slot)))
                    .map(|(_, c)| c)
            });
            match (acc, column) {
                (Acc::Count(counts), None) => {
                    for (_, run, ahead) in runs(slot.width) {
                        prefetch(counts, ahead);
                        counts[run].iter_mut().for_each(|c| *c += 1);
                    }
                }
                (Acc::Count(counts), Some(Column::Valid(valid))) => {
                    for (p, run, ahead) in runs(slot.width) {
                        prefetch(counts, ahead);
                        if valid[p] {
                            counts[run].iter_mut().for_each(|c| *c += 1);
                        }
                    }
                }
                (Acc::IntSum(sums, counts), Some(Column::Int(values, valid))) => {
                    for (p, run, ahead) in runs(slot.width) {
                        prefetch(sums, ahead);
                        prefetch(counts, ahead);
                        if valid[p] {
                            let v = i128::from(values[p]);
                            sums[run.clone()].iter_mut().for_each(|s| *s += v);
                            counts[run].iter_mut().for_each(|c| *c += 1);
                        }
                    }
                }
                (Acc::FloatSum(sums, side), Some(Column::Float(values, valid))) => {
                    for (p, run, ahead) in runs(slot.width) {
                        prefetch(sums, ahead);
                        if valid[p] {
                            let v = values[p];
                            for e in run {
                                sums[e].add_count(1);
                                add_float(sums, side, e, v);
                            }
                        }
                    }
                }
                (Acc::IntExtreme(best, seen), Some(Column::Int(values, valid))) => {
                    let max = slot.kind == Kind::IntExtreme { max: true };
                    let beats = |v: i64, b: i64| if max { v > b } else { v < b };
                    add_extremes(best, seen, values, valid, runs(slot.width), beats);
                }
                (Acc::FloatExtreme(best, seen), Some(Column::Float(values, valid))) => {
                    let max = slot.kind == Kind::FloatExtreme { max: true };
                    let beats = |v: f64, b: f64| match max {
                        true => v.total_cmp(&b).is_gt(),
                        false => v.total_cmp(&b).is_lt(),
                    };
                    add_extremes(best, seen, values, valid, runs(slot.width), beats);
                }
                _ => return internal_err!("window join: an accumulator got the wrong values"),
            }
        }
        drop(shared);
        for (_, column) in columns {
            column.give_back(spare_valid, spare_ints, spare_floats);
        }
        Ok(())
    }

    /// Reads out one array per aggregate, one value per left row in the left's order;
    /// `output_types[a]` is aggregate `a`'s output type.
    pub fn finish(&self, all: Accumulators, output_types: &[DataType]) -> Result<Vec<ArrayRef>> {
        if all.slots.len() != self.slots.len() {
            return internal_err!("window join: the accumulators do not match the join");
        }
        let rows = self.left.entry_of.len();
        let jobs: Vec<(usize, &super::KernelAggregate)> =
            self.spec.aggregates.iter().enumerate().collect();
        on_cores(jobs, |(a, agg)| -> Result<ArrayRef> {
            let overflow = || {
                datafusion::error::DataFusionError::Execution(format!(
                    "{}: the sum of a window leaves the result type; cast the argument to \
                         DOUBLE (or a wider DECIMAL)",
                    agg.name
                ))
            };
            let avg = agg.function == AggFunction::Avg;
            let array: ArrayRef = match &all.slots[self.slot_of[a]] {
                Acc::Count(counts) => std::sync::Arc::new(Int64Array::from_iter_values(
                    self.left
                        .entries(0..rows, |p| prefetch(counts, p))
                        .map(|e| e.map_or(0, |p| counts[p] as i64)),
                )),
                Acc::IntSum(sums, counts) if avg => std::sync::Arc::new(Float64Array::from_iter(
                    self.left
                        .entries(0..rows, |p| prefetch(counts, p))
                        .map(|e| {
                            let p = e.filter(|&p| counts[p] > 0)?;
                            Some(sums[p] as f64 / counts[p] as f64)
                        }),
                )),
                Acc::IntSum(sums, counts) => {
                    let values = self
                        .left
                        .entries(0..rows, |p| {
                            prefetch(sums, p);
                            prefetch(counts, p)
                        })
                        .map(|e| match e.filter(|&p| counts[p] > 0) {
                            None => Ok(None),
                            Some(p) => i64::try_from(sums[p]).map(Some).map_err(|_| overflow()),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    std::sync::Arc::new(Int64Array::from(values))
                }
                Acc::FloatSum(sums, side) => std::sync::Arc::new(Float64Array::from_iter(
                    self.left.entries(0..rows, |p| prefetch(sums, p)).map(|e| {
                        let p = e.filter(|&p| sums[p].count() > 0)?;
                        let sum = float_value(sums, side, p);
                        Some(match avg {
                            true => sum / sums[p].count() as f64,
                            false => sum,
                        })
                    }),
                )),
                Acc::IntExtreme(best, seen) => cast(
                    &Int64Array::from_iter(
                        self.left
                            .entries(0..rows, |p| prefetch(best, p))
                            .map(|e| e.filter(|&p| seen[p]).map(|p| best[p])),
                    ),
                    &output_types[a],
                )?,
                Acc::FloatExtreme(best, seen) => std::sync::Arc::new(Float64Array::from_iter(
                    self.left
                        .entries(0..rows, |p| prefetch(best, p))
                        .map(|e| e.filter(|&p| seen[p]).map(|p| best[p])),
                )),
            };
            if array.data_type() != &output_types[a] {
                return internal_err!(
                    "window join: {} is {}, not {}",
                    agg.name,
                    array.data_type(),
                    output_types[a]
                );
            }
            Ok(array)
        })
    }
}

/// The last time `t` whose window of `width` holds a right row at `e`: `t < e + d` (`t <= e + d`
/// for `[t - d, t)`), saturating at the end of time.
#[inline]
fn upper_bound(width: Width, e: i64, strict: bool) -> i64 {
    match width {
        Width::Keys(d) => match strict {
            true => e.saturating_add(d),
            false => e.saturating_add(d - 1),
        },
        // e * unit > t * unit - numerator (or >=), solved for the greatest whole t.
        Width::Scaled(numerator, unit) => {
            let reach = i128::from(e) * unit + numerator - i128::from(!strict);
            i64::try_from(reach.div_euclid(unit)).unwrap_or(i64::MAX)
        }
    }
}

/// Keeps, per entry of each run, the value of right row `p` when it `beats` the entry's best
/// so far (or is its first); NULL values are skipped.
fn add_extremes<T: Copy>(
    best: &mut [T],
    seen: &mut [bool],
    values: &[T],
    valid: &[bool],
    runs: impl Iterator<Item = (usize, std::ops::Range<usize>, usize)>,
    beats: impl Fn(T, T) -> bool,
) {
    for (p, run, ahead) in runs {
        prefetch(best, ahead);
        prefetch(seen, ahead);
        if !valid[p] {
            continue;
        }
        let v = values[p];
        for e in run {
            if !seen[e] || beats(v, best[e]) {
                best[e] = v;
                seen[e] = true;
            }
        }
    }
}

/// How many rows ahead [`LabelIndex::apply`] asks for the memory a row will read: its loads
/// then overlap instead of waiting one after another.
const AHEAD: usize = 16;

fn floats(arg: &ArrayRef) -> Result<Float64Array> {
    Ok(cast(arg, &DataType::Float64)?
        .as_primitive::<Float64Type>()
        .clone())
}

/// How an accumulator reads its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// Whether it is NULL (`count(x)`).
    Valid,
    /// As BIGINT.
    Int,
    /// As DOUBLE.
    Float,
}

/// An argument's values for the rows of a chunk in group order (by their places), and whether
/// each is valid.
enum Column {
    Valid(Vec<bool>),
    Int(Vec<i64>, Vec<bool>),
    Float(Vec<f64>, Vec<bool>),
}

impl Column {
    /// Aggregate `a`'s argument over `chunk` in `view`, each row at its place (`NO_ENTRY`: left
    /// out); `kept` places in all.
    fn sorted(
        chunk: &[RightArrays],
        a: usize,
        view: View,
        function: AggFunction,
        place: &[u32],
        kept: usize,
        (spare_valid, spare_ints, spare_floats): Spares<'_>,
    ) -> Result<Self> {
        let mut valid = spare_valid.pop().unwrap_or_default();
        refill(&mut valid, kept, false);
        let mut ints = spare_ints.pop().unwrap_or_default();
        refill(&mut ints, if view == View::Int { kept } else { 0 }, 0);
        let mut floats_out = spare_floats.pop().unwrap_or_default();
        refill(
            &mut floats_out,
            if view == View::Float { kept } else { 0 },
            0.0,
        );
        let mut r = 0;
        for right in chunk {
            let Some(arg) = &right.args[a] else {
                return internal_err!("window join: an argument is missing");
            };
            let places = &place[r..r + arg.len()];
            r += arg.len();
            match view {
                View::Valid => {
                    for (i, &p) in places.iter().enumerate() {
                        if p != NO_ENTRY {
                            valid[p as usize] = arg.is_valid(i);
                        }
                    }
                }
                View::Int => {
                    let values = integers(function, arg)?;
                    for (i, &p) in places.iter().enumerate() {
                        if p != NO_ENTRY {
                            valid[p as usize] = values.is_valid(i);
                            ints[p as usize] = values.value(i);
                        }
                    }
                }
                View::Float => {
                    let values = floats(arg)?;
                    for (i, &p) in places.iter().enumerate() {
                        if p != NO_ENTRY {
                            valid[p as usize] = values.is_valid(i);
                            floats_out[p as usize] = values.value(i);
                        }
                    }
                }
            }
        }
        Ok(match view {
            View::Valid => Column::Valid(valid),
            View::Int => Column::Int(ints, valid),
            View::Float => Column::Float(floats_out, valid),
        })
    }
}

impl Column {
    /// Returns the buffers to the spares, for the next chunk.
    fn give_back(
        self,
        spare_valid: &mut Vec<Vec<bool>>,
        spare_ints: &mut Vec<Vec<i64>>,
        spare_floats: &mut Vec<Vec<f64>>,
    ) {
        match self {
            Column::Valid(valid) => spare_valid.push(valid),
            Column::Int(ints, valid) => {
                spare_ints.push(ints);
                spare_valid.push(valid);
            }
            Column::Float(floats, valid) => {
                spare_floats.push(floats);
                spare_valid.push(valid);
            }
        }
    }
}

/// Spare column buffers: validity, integers, floats.
type Spares<'a> = (
    &'a mut Vec<Vec<bool>>,
    &'a mut Vec<Vec<i64>>,
    &'a mut Vec<Vec<f64>>,
);

/// Empties `v` and fills it with `len` copies of `value`, keeping its allocation.
fn refill<T: Clone>(v: &mut Vec<T>, len: usize, value: T) {
    v.clear();
    v.resize(len, value);
}

/// A task's buffers for [`LabelIndex::apply`], kept from chunk to chunk.
#[derive(Default)]
pub struct Scratch {
    group_of: Vec<u32>,
    counts: Vec<u32>,
    next: Vec<u32>,
    place: Vec<u32>,
    sorted_group: Vec<u32>,
    sorted_time: Vec<i64>,
    sorted_known: Vec<i64>,
    hits: Vec<(u32, u32)>,
    ends: Vec<u32>,
    spare_valid: Vec<Vec<bool>>,
    spare_ints: Vec<Vec<i64>>,
    spare_floats: Vec<Vec<f64>>,
}

/// The partial-sum count of a float sum kept in the side table.
const SIDE: usize = 7;

/// The partial sums a float sum keeps inline.
const INLINE: usize = 3;

/// A float sum kept inline, in 32 bytes: Shewchuk's partial sums while three suffice (almost
/// every sum of values of similar magnitudes), else ([`SIDE`]) an [`ExactSum`] in the side
/// table; and the count of values added. Words: the partial sums' bits, then the counts (of
/// values in the low 61 bits, of partial sums in the top 3). Plain words, so that a vector of
/// empty ones is allocated zeroed (pages the kernel zeroes when first touched, on the tasks
/// that touch them) instead of written over before the first right row.
type FloatAcc = [u64; INLINE + 1];

/// What [`FloatAcc`]'s words hold.
trait Inline {
    const COUNT: u64 = (1 << 61) - 1;
    fn len(&self) -> usize;
    fn set_len(&mut self, len: usize);
    fn count(&self) -> u64;
    /// Counts `n` more values (a count never reaches 2^61: that many rows are never read).
    fn add_count(&mut self, n: u64);
    fn partials(&self) -> [f64; INLINE];
    fn set_partials(&mut self, partials: &[f64]);
}

impl Inline for FloatAcc {
    #[inline]
    fn len(&self) -> usize {
        (self[INLINE] >> 61) as usize
    }

    #[inline]
    fn set_len(&mut self, len: usize) {
        self[INLINE] = (self[INLINE] & Self::COUNT) | ((len as u64) << 61);
    }

    #[inline]
    fn count(&self) -> u64 {
        self[INLINE] & Self::COUNT
    }

    #[inline]
    fn add_count(&mut self, n: u64) {
        self[INLINE] += n;
    }

    #[inline]
    fn partials(&self) -> [f64; INLINE] {
        std::array::from_fn(|j| f64::from_bits(self[j]))
    }

    #[inline]
    fn set_partials(&mut self, partials: &[f64]) {
        for (word, p) in self.iter_mut().zip(partials) {
            *word = p.to_bits();
        }
    }
}

/// Adds `x` to float sum `p`, as [`ExactSum::add`] adds it (the same partial sums, so the same
/// rounded value). The value's count is the caller's.
#[inline]
fn add_float(sums: &mut [FloatAcc], side: &mut HashMap<u32, ExactSum>, p: usize, x: f64) {
    let acc = &mut sums[p];
    let len = acc.len();
    if len == SIDE {
        side.entry(p as u32).or_default().add(x);
        return;
    }
    let partials = acc.partials();
    if !x.is_finite() || x.abs() >= BIG || (len > 0 && partials[len - 1].abs() >= BIG) {
        let mut sum = ExactSum::from_partials(&partials[..len]);
        sum.add(x);
        side.insert(p as u32, sum);
        acc.set_len(SIDE);
        return;
    }
    let mut x = x;
    let mut out = [0.0f64; INLINE + 1];
    let mut kept = 0;
    for &partial in &partials[..len] {
        let (hi, lo) = two_sum(x, partial);
        if lo != 0.0 {
            out[kept] = lo;
            kept += 1;
        }
        x = hi;
    }
    out[kept] = x;
    kept += 1;
    if kept <= INLINE {
        acc.set_partials(&out[..INLINE]);
        acc.set_len(kept);
    } else {
        side.insert(p as u32, ExactSum::from_partials(&out));
        acc.set_len(SIDE);
    }
}

/// The correctly rounded value of float sum `p`.
fn float_value(sums: &[FloatAcc], side: &HashMap<u32, ExactSum>, p: usize) -> f64 {
    match sums[p].len() {
        SIDE => side.get(&(p as u32)).map_or(0.0, ExactSum::value),
        len => round_partials(&sums[p].partials()[..len]),
    }
}

/// One task's aggregates per left row (see [`LabelIndex::accumulators`]).
pub struct Accumulators {
    slots: Vec<Acc>,
}

enum Acc {
    Count(Vec<u64>),
    IntSum(Vec<i128>, Vec<u64>),
    FloatSum(Vec<FloatAcc>, HashMap<u32, ExactSum>),
    IntExtreme(Vec<i64>, Vec<bool>),
    FloatExtreme(Vec<f64>, Vec<bool>),
}

/// `f` of every item, on up to one thread per core, in the items' order.
fn on_cores<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> Result<R> + Sync) -> Result<Vec<R>> {
    crate::asof::on_threads(crate::asof::cores(), items, f, || {
        datafusion::error::DataFusionError::Internal(
            "window join: a thread finishing the aggregates panicked".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::asof::window::exact_sum;

    fn value(sums: &[FloatAcc], side: &HashMap<u32, ExactSum>) -> f64 {
        float_value(sums, side, 0)
    }

    /// The direct table of integer keys: built only for keys in a small range (never for keys
    /// a client spreads over the whole of BIGINT), and a lookup of any key, however far out,
    /// is a group or none.
    #[test]
    fn the_direct_key_table_is_small_and_takes_any_key() {
        let map = |keys: &[i64]| -> HashMap<i64, u32> {
            keys.iter()
                .enumerate()
                .map(|(g, &k)| (k, g as u32))
                .collect()
        };
        assert!(DenseGroups::of(&map(&[i64::MIN, i64::MAX])).is_none());
        assert!(DenseGroups::of(&map(&[0, 1 << 40])).is_none());
        assert!(DenseGroups::of(&map(&[])).is_none());
        let dense = DenseGroups::of(&map(&[-5, 7, 3])).unwrap();
        assert_eq!(dense.groups.len(), 13);
        assert_eq!(
            [-5, 7, 3, 0, -6, 8, i64::MIN, i64::MAX].map(|k| dense.get(k)),
            [Some(0), Some(1), Some(2), None, None, None, None, None]
        );
    }

    /// A sum kept inline (three partial sums), or moved to the side table when it needs more or
    /// meets NaN, an infinity or a huge value, rounds to the bits `exact_sum` gives.
    #[test]
    fn inline_partial_sums_round_as_an_exact_sum_does() {
        let values = [
            1e16,
            1.0,
            1e-16,
            0.1,
            3e-300,
            1e300,
            5e-324,
            -0.0,
            0.0,
            2f64.powi(-53),
            f64::MAX / 2.0,
            f64::NAN,
            f64::INFINITY,
        ];
        let mut rng = StdRng::seed_from_u64(3);
        let (mut inline, mut sided) = (0, 0);
        for _ in 0..5000 {
            let n = rng.random_range(1..10);
            let xs: Vec<f64> = (0..n)
                .map(|_| {
                    let sign = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
                    // Rarely the last three (huge, NaN, infinity).
                    let pick = match rng.random_bool(0.05) {
                        true => rng.random_range(0..values.len()),
                        false => rng.random_range(0..values.len() - 3),
                    };
                    sign * f64::from(rng.random_range(1..5)) * values[pick]
                })
                .collect();
            let mut sums = vec![FloatAcc::default()];
            let mut side = HashMap::new();
            for &x in &xs {
                add_float(&mut sums, &mut side, 0, x);
            }
            let want = exact_sum(xs.iter().copied());
            assert_eq!(value(&sums, &side).to_bits(), want.to_bits(), "{xs:?}");
            match sums[0].len() {
                SIDE => sided += 1,
                _ => inline += 1,
            }
        }
        assert!(
            inline > 1000 && sided > 500,
            "{inline} inline, {sided} sided"
        );
    }
}
