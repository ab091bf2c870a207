//! The pure as-of matching kernel: an index over the right input, probed by left rows.
//!
//! This module implements docs/semantics.md over Arrow arrays, synchronously and single-threaded.
//! The operator pushes the right input's batches into an [`IndexBuilder`] (one per join, per
//! co-partitioned partition or per spill bucket), calls [`IndexBuilder::finish_with`], then
//! streams left batches through [`RightIndex::probe`] and [`RightIndex::gather`].
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
//! `finish` counting-sorts the rows by group and sorts each group by time (`finish_with` splits
//! the groups into runs of whole groups, one thread per core, and gives the same index). Rows
//! that tie on time
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
//!
//! # Files
//!
//! - `options`: what the kernel is told ([`KernelOptions`]) and answers with ([`RowRef`]), the
//!   types it accepts, and the check of evaluated arrays against the options.
//! - `keys`: key tuples to dense group ids, by the kind of key (none, integer, bytes, rows).
//! - `groups`: the interning tables behind `keys`, for byte strings and for integers.
//! - `builder`: [`IndexBuilder`], which collects the right input and runs `finish`.
//! - `entries`: the index entries and the steps of `finish` over them (scatter, sort, compact).
//! - `ties`: the order of rows tied on key and time (`TIEBREAK BY`, then the whole row).
//! - `index`: [`RightIndex`], the finished index: its contents, memory and column trimming.
//! - `search`: [`RightIndex::probe`], the lookup of left rows (lockstep binary searches).
//! - `gather`: [`RightIndex::gather`], the right columns of matched rows.
//! - `tests`: the semantics example, edge cases, and the differential test against the oracle.

mod builder;
mod entries;
mod gather;
mod groups;
mod index;
mod keys;
mod options;
mod search;
mod ties;

pub use builder::{IndexBuilder, PreparedBatch};
pub use index::RightIndex;
pub use options::{
    Direction, KernelOptions, KeySpec, MatchSpec, RowRef, TiebreakSpec, full_row_comparable,
    supported_key_type, supported_tiebreak_type,
};

#[cfg(test)]
mod tests;
