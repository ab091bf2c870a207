//! The as-of join (the exact contract is docs/semantics.md): for each left row, the right row
//! with equal keys and the latest time at or before the left time (`>=`, `>`), or the earliest
//! at or after it (`<=`, `<`); ties broken by `TIEBREAK BY`, then by the greatest full row;
//! NULL keys and times never match; a left-preserving join keeps every left row once, in the
//! left's order.
//!
//! `logical` is the DataFusion logical node, `exec` the physical operator, `build` the right
//! side's index build, `probe` the join of a left batch against the indexes, `stream` the probe
//! stream, `spill` the run for a right side larger than memory, `kernel` the pure matching code
//! over Arrow arrays, `time` and `tolerance` the time types and bounds, `prune` the rule that
//! narrows the right input to what the left can reach, `codec` the plan serialization,
//! `metrics` the operator's counters, `oracle` the naive reference the tests compare with.

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

pub use codec::{AsOfLogicalCodec, AsOfPhysicalCodec};
pub use exec::AsOfJoinExec;
pub use kernel::{
    Direction, IndexBuilder, KernelOptions, KeySpec, MatchSpec, RightIndex, RowRef, TiebreakSpec,
    full_row_comparable, supported_key_type, supported_tiebreak_type,
};
pub use logical::{AsOfJoin, AsOfJoinType, AsOfOperator, Tolerance};
pub use metrics::AsOfJoinMetrics;
pub use prune::{AsOfRangePruning, ColumnRange, TableFacts};
pub use time::supported_time_type;
pub use tolerance::tolerance_bound;
