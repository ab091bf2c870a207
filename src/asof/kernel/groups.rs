//! Dense group ids for interned values: [`ByteGroups`] for byte strings (string and binary keys,
//! and the row encoding of any other key tuple), [`IntGroups`] for single integer-like keys (a
//! direct table while the keys span a small range, a hash map beyond).

use std::hash::BuildHasher;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

/// The group id of a right row that never matches, and of a left key without a group.
pub(super) const NO_GROUP: u32 = u32::MAX;

/// Interned byte strings, each with a dense group id.
#[derive(Debug, Default)]
pub(super) struct ByteGroups {
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
    pub(super) fn intern(&mut self, bytes: &[u8], next: &mut u32) -> u32 {
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
    pub(super) fn reserve(&mut self, next: &mut u32) -> u32 {
        let g = *next;
        *next += 1;
        self.ends.push(self.arena.len());
        self.hashes.push(0);
        g
    }

    pub(super) fn lookup(&self, bytes: &[u8]) -> u32 {
        let hash = self.state.hash_one(bytes);
        self.table
            .find(hash, |&g| span(&self.ends, &self.arena, g) == bytes)
            .copied()
            .unwrap_or(NO_GROUP)
    }

    pub(super) fn memory_size(&self) -> usize {
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
pub(super) struct IntGroups {
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
    pub(super) fn cover(&mut self, lo: u64, hi: u64, rows: usize) {
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
    pub(super) fn intern(&mut self, v: u64, num_groups: &mut u32) -> u32 {
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
    pub(super) fn get(&self, v: u64) -> u32 {
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

    pub(super) fn memory_size(&self) -> usize {
        self.slots.capacity() * size_of::<u32>() + self.map.allocation_size()
    }
}
