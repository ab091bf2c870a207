//! The index's entries: their layout with and without a knowledge time, and the steps of
//! `finish` that make them: scatter the rows by group, sort each group by time (reporting the
//! runs tied on time), then compact each group to the entries a probe can return.

use std::ops::Range;

use super::options::RowRef;

#[inline]
fn pack(batch: usize, row: usize) -> u64 {
    ((batch as u64) << 32) | row as u64
}

#[inline]
pub(super) fn unpack(packed: u64) -> RowRef {
    RowRef {
        batch: (packed >> 32) as u32,
        row: packed as u32,
    }
}

/// An entry without a knowledge time. While building, `key` is the row's time; after `finish`,
/// it is the activation (`t`, or `t + 1` when strict) of the best row with that time.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PlainEntry {
    pub(super) key: i64,
    pub(super) rref: u64,
}

/// An entry with a knowledge time. While building, `key` is the row's knowledge time; after
/// `finish`, it is the activation from which `rref` is the best eligible row.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct KnownEntry {
    pub(super) key: i64,
    pub(super) time: i64,
    pub(super) rref: u64,
}

/// What the tie ordering needs to see of an entry.
pub(super) trait Ranked: Copy + Default {
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
pub(super) enum Entries {
    Plain(Vec<PlainEntry>),
    Known(Vec<KnownEntry>),
}

/// Places every eligible row of the groups `first..first + ends.len()` in its group's slice of
/// `out`, in push order; group `first + j` ends at `ends[j]` within `out`. Rows of other groups
/// are passed over, so that runs of groups can be filled side by side.
pub(super) fn scatter<E: Ranked>(
    groups: &[u32],
    batch_rows: &[usize],
    first: u32,
    ends: &[u32],
    out: &mut [E],
    make: impl Fn(usize, u64) -> E,
) {
    let mut cursor = Vec::with_capacity(ends.len());
    cursor.push(0u32);
    cursor.extend_from_slice(&ends[..ends.len().saturating_sub(1)]);
    let count = ends.len() as u32;
    let mut i = 0;
    for (b, &rows) in batch_rows.iter().enumerate() {
        for r in 0..rows {
            // `NO_GROUP` and groups before `first` wrap around to at least `count`.
            let g = groups[i].wrapping_sub(first);
            if g < count {
                let c = &mut cursor[g as usize];
                out[*c as usize] = make(i, pack(b, r));
                *c += 1;
            }
            i += 1;
        }
    }
}

/// Sorts each group by time and returns the runs of more than one row with equal time. Group
/// `g` is `entries[ends[g - 1]..ends[g]]`, the first starting at 0.
pub(super) fn sort_groups<E: Ranked>(entries: &mut [E], ends: &[u32]) -> Vec<Range<usize>> {
    let mut ties = Vec::new();
    let mut from = 0;
    for &end in ends {
        let (from_here, end) = (from, end as usize);
        from = end;
        let group = &mut entries[from_here..end];
        group.sort_unstable_by_key(|e| e.time());
        let mut start = 0;
        for i in 1..=group.len() {
            if i == group.len() || group[i].time() != group[start].time() {
                if i - start > 1 {
                    ties.push(from_here + start..from_here + i);
                }
                start = i;
            }
        }
    }
    ties
}

/// Keeps the best (last) row of each distinct time of each group, keyed by its activation, at
/// the front of `entries`. `ends[g]` is where group `g` ends in `entries` (the groups are
/// contiguous from 0); it becomes where the group ends once compacted. Returns the entries kept.
pub(super) fn compact_plain(entries: &mut [PlainEntry], ends: &mut [u32], strict: i64) -> usize {
    let mut w = 0;
    let mut start = 0;
    for end in ends.iter_mut() {
        let stop = *end as usize;
        for i in start..stop {
            if i + 1 == stop || entries[i + 1].key != entries[i].key {
                entries[w] = PlainEntry {
                    key: entries[i].key + strict,
                    rref: entries[i].rref,
                };
                w += 1;
            }
        }
        start = stop;
        *end = w as u32;
    }
    w
}

/// Turns each group (sorted worst to best) into the entries where the best eligible row
/// changes, keyed by activation `max(t_adj, c)`, at the front of `entries`; `ends` as for
/// [`compact_plain`]. Returns the entries kept.
///
/// Works in place with one scratch vector of 16 bytes per row of the largest group.
pub(super) fn compact_known(entries: &mut [KnownEntry], ends: &mut [u32], strict: i64) -> usize {
    let mut w = 0;
    let mut start = 0;
    // Per row of the group: (activation, rank), then compacted in place to the emitted pairs.
    let mut by_activation: Vec<(i64, u32)> = Vec::new();
    for end_of_group in ends.iter_mut() {
        let end = *end_of_group as usize;
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
        *end_of_group = w as u32;
    }
    w
}
