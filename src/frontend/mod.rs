//! The SQL front end: pitlake's dialect, statement splitting, pitlake's own statements, and the
//! rewrites that turn pitlake syntax (time travel) into plans DataFusion can build.

mod dialect;
mod parse;
mod time_travel;

pub use dialect::PitlakeDialect;
pub use parse::{ParsedStatement, Statement, parse_sql, split_statements};
pub use time_travel::{VersionClause, apply_versions, collect_versions};
