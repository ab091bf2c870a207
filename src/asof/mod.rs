//! The as-of join (see docs/semantics.md).
//!
//! `kernel` is the pure matching code over Arrow arrays; `oracle` is its naive reference, used by
//! the tests.

mod kernel;
#[doc(hidden)]
pub mod oracle;
mod time;

pub use kernel::{
    Direction, IndexBuilder, KernelOptions, KeySpec, MatchSpec, RightIndex, RowRef, TiebreakSpec,
    full_row_comparable, supported_key_type, supported_tiebreak_type,
};
pub use time::supported_time_type;
