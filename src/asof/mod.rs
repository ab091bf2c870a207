//! The as-of join (the exact contract is docs/semantics.md): for each left row, the right row
//! with equal keys and the latest time at or before the left time (`>=`, `>`), or the earliest
//! at or after it (`<=`, `<`); ties broken by `TIEBREAK BY`, then by the greatest full row;
//! NULL keys and times never match; a left-preserving join keeps every left row once, in the
//! left's order.
//!
//! # Files
//!
//! - `logical`: the logical node [`AsOfJoin`]; every user mistake is refused in its `try_new`.
//! - `prune`: [`AsOfRangePruning`], the rule that narrows the right input to what the left can
//!   reach.
//! - `exec`: the physical operator [`AsOfJoinExec`]: its properties, display, and absorbing the
//!   projection above it.
//! - `build`: the right side's index build, one task per right partition, shared by every left
//!   partition.
//! - `probe`: the join of one left batch against the built indexes.
//! - `stream`: the probe stream of one left partition, an explicit state machine.
//! - `bucket`: bucket files, an input split by a hash of its keys into spill files.
//! - `spill`: the bucket-by-bucket run for a right side larger than memory.
//! - `kernel`: the pure matching code over Arrow arrays (its module doc lists its files).
//! - `time`: time values as order-preserving `i64` keys, and which types a time may have.
//! - `tolerance`: the tolerance bound of each left row, saturating.
//! - `codec`: the serialization of as-of plans, logical and physical.
//! - `metrics`: [`AsOfJoinMetrics`], the operator's counters.
//! - `window`: window joins, the as-of join with `AGGREGATES`: counts, sums, averages, extremes
//!   and last-k over a window ending at each left row's time (its module doc lists its files).
//! - `oracle`: the naive reference join the tests compare with.
//! - `exec_tests`: the operator against the oracle on random inputs (tests only).

mod bucket;
mod build;
mod chunks;
mod codec;
mod exec;
#[cfg(test)]
mod exec_tests;
mod kernel;
mod labels;
mod left_build;
mod logical;
mod metrics;
#[doc(hidden)]
pub mod oracle;
mod probe;
mod prune;
mod spill;
mod stream;
mod time;
mod tolerance;
pub mod window;

pub use codec::{AsOfLogicalCodec, AsOfPhysicalCodec};
pub use exec::{AsOfBuild, AsOfJoinExec, AsOfJoinMode};
pub use kernel::{
    Direction, IndexBuilder, KernelOptions, KeySpec, MatchSpec, PreparedBatch, RightIndex, RowRef,
    TiebreakSpec, full_row_comparable, supported_key_type, supported_tiebreak_type,
};
pub use logical::{AsOfJoin, AsOfJoinType, AsOfOperator, Tolerance};
pub use metrics::AsOfJoinMetrics;
pub use prune::{AsOfRangePruning, ColumnRange, TableFacts};
pub use time::supported_time_type;
pub use tolerance::tolerance_bound;

pub(crate) use crate::parallel::{cores, on_threads};

/// The threads for `items` of work, at most `asked`, at most one per core (a session may set
/// any number of partitions; more threads than cores only cost memory and switches), and at
/// least `per_thread` items each: at least one.
pub(crate) fn worker_threads(asked: usize, items: usize, per_thread: usize) -> usize {
    asked.min(cores()).min(items / per_thread).max(1)
}

/// Splits the groups `offsets` describes (group `g` is `offsets[g]..offsets[g + 1]`) into about
/// `runs` runs of whole groups of about equal size: the first group of each run, then the
/// number of groups. A run ends on the first group boundary at least `total / runs` entries on.
pub(crate) fn group_runs(offsets: &[u32], runs: usize) -> Vec<usize> {
    let num_groups = offsets.len().saturating_sub(1);
    let total = offsets.last().copied().unwrap_or(0) as usize;
    let per = total.div_ceil(runs.max(1));
    let mut bounds = vec![0usize];
    while let Some(&first) = bounds.last()
        && first < num_groups
    {
        let from = offsets[first] as usize;
        let last = offsets
            .partition_point(|&o| (o as usize) < from + per)
            .clamp(first + 1, num_groups);
        bounds.push(last);
    }
    bounds
}
