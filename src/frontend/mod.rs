//! The SQL front end: pitlake's dialect, statement splitting, pitlake's own statements, and the
//! rewrites that turn pitlake syntax (time travel, as-of joins) into plans DataFusion can build.

mod asof;
pub mod bounds;
mod dialect;
pub mod dsl;
pub mod embedded;
mod parse;
pub(crate) mod time_travel;
pub(crate) mod visit;

pub use asof::{
    AsOfMarker, AsOfRule, MARKER as ASOF_MARKER, WINDOW_MARKER, WindowMarker, marker_udf,
    rewrite_ast as rewrite_asof, window_marker_udf,
};
pub use dialect::PitlakeDialect;
pub use parse::{ParsedStatement, Statement, parse_sql, split_statements};
pub use time_travel::{VersionClause, apply_versions, collect_versions};
