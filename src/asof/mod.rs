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
mod codec;
mod exec;
#[cfg(test)]
mod exec_tests;
mod kernel;
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
pub use exec::{AsOfJoinExec, AsOfJoinMode};
pub use kernel::{
    Direction, IndexBuilder, KernelOptions, KeySpec, MatchSpec, PreparedBatch, RightIndex, RowRef,
    TiebreakSpec, full_row_comparable, supported_key_type, supported_tiebreak_type,
};
pub use logical::{AsOfJoin, AsOfJoinType, AsOfOperator, Tolerance};
pub use metrics::AsOfJoinMetrics;
pub use prune::{AsOfRangePruning, ColumnRange, TableFacts};
pub use time::supported_time_type;
pub use tolerance::tolerance_bound;

/// The cores this process may use: at least one.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `f` of every item, on up to `threads` threads (each takes the next item not yet taken, so
/// unequal items still share the threads out), in the items' order. A thread that panics gives
/// `panicked()`; the first error (in the items' order) is returned.
pub(crate) fn on_threads<T: Send, R: Send, E: Send>(
    threads: usize,
    items: Vec<T>,
    f: impl Fn(T) -> Result<R, E> + Sync,
    panicked: impl Fn() -> E,
) -> Result<Vec<R>, E> {
    let threads = threads.min(items.len());
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let slots: Vec<std::sync::Mutex<Option<T>>> = items
        .into_iter()
        .map(|item| std::sync::Mutex::new(Some(item)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(slot) = slots.get(at) else {
                return done;
            };
            // Each slot is taken once; a poisoned one only means another thread panicked.
            let item = slot.lock().map(|mut s| s.take()).ok().flatten();
            if let Some(item) = item {
                done.push((at, f(item)));
            }
        }
    };
    // Per thread, what it did (`None`: it panicked).
    let runs: Vec<Option<Vec<_>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    let mut out: Vec<Option<Result<R, E>>> = (0..slots.len()).map(|_| None).collect();
    for run in runs {
        for (at, r) in run.ok_or_else(&panicked)? {
            out[at] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(panicked())))
        .collect()
}

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

#[cfg(test)]
mod thread_tests {
    use super::on_threads;

    /// Results in the items' order however the threads share them out, the first error in that
    /// order, and a panicking thread an error, not a panic.
    #[test]
    fn on_threads_keeps_order_errors_and_panics() {
        for threads in [1, 2, 3, 16] {
            let items: Vec<u64> = (0..100).collect();
            // Unequal work, so the threads take items out of step.
            let squares = on_threads(
                threads,
                items,
                |i| -> Result<u64, String> {
                    std::thread::sleep(std::time::Duration::from_micros((i % 7) * 50));
                    Ok(i * i)
                },
                || "panicked".to_string(),
            )
            .unwrap();
            assert_eq!(squares, (0..100).map(|i| i * i).collect::<Vec<_>>());
            let failed = on_threads(
                threads,
                (0..50).collect(),
                |i: u32| {
                    if i % 20 == 13 {
                        Err(format!("item {i}"))
                    } else {
                        Ok(i)
                    }
                },
                || "panicked".to_string(),
            );
            assert_eq!(failed, Err("item 13".to_string()), "{threads} threads");
        }
        let panicked = on_threads(
            2,
            vec![1, 2, 3],
            |i: i32| -> Result<i32, String> {
                if i == 2 {
                    panic!("a task that panics");
                }
                Ok(i)
            },
            || "a thread panicked".to_string(),
        );
        assert_eq!(panicked, Err("a thread panicked".to_string()));
        let none: Result<Vec<u8>, String> = on_threads(4, Vec::new(), Ok, String::new);
        assert_eq!(none, Ok(Vec::new()));
    }
}
