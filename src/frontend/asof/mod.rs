//! `ASOF JOIN` in SQL: both the Snowflake/DataFusion form and the DuckDB form, plus pitlake's
//! extensions, lowered to the [`AsOfJoin`](crate::asof::AsOfJoin) logical node.
//!
//! ```sql
//! -- Snowflake / DataFusion form: keeps every left row unless INNER is written
//! FROM l ASOF [LEFT | INNER] JOIN r MATCH_CONDITION (l.t >= r.t) [ON l.k = r.k [AND …] | USING (k, …)]
//! -- DuckDB form: ASOF JOIN is inner, ASOF LEFT JOIN keeps left rows
//! FROM l ASOF [LEFT | INNER] JOIN r ON l.k = r.k AND l.t >= r.t
//! FROM l ASOF [LEFT | INNER] JOIN r USING (k, …, t)          -- last column: l.t >= r.t
//! -- extensions, after the join's condition, in any order, in both forms
//!   TOLERANCE INTERVAL '30 days'            -- or a number for integer/float times
//!   TIEBREAK BY r.created_ts DESC [NULLS FIRST | LAST], …
//!   KNOWN AT r.created_ts
//! ```
//!
//! sqlparser 0.62 parses only `ASOF JOIN r MATCH_CONDITION (…)`, so the lowering happens in three
//! steps, none of which forks the parser:
//! 1. [`rewrite_tokens`] (`tokens.rs`) turns every form into
//!    `ASOF JOIN r MATCH_CONDITION (__pitlake_asof(…))`, carrying the join type, the form, the
//!    condition and the extension clauses as arguments;
//! 2. [`rewrite_ast`] (`ast.rs`) turns each such join into a `LEFT JOIN` and adds a marker call
//!    `__pitlake_asof_join(…)` to the `WHERE` of the same `SELECT`, so DataFusion resolves and
//!    type-checks every expression in it as part of the query;
//! 3. [`AsOfRule`] (`rule.rs`), an analyzer rule, finds each marker, replaces the join it names
//!    with the `AsOfJoin` node (built in `lower.rs`), and removes the marker.

mod ast;
mod lower;
mod rule;
mod tokens;
mod window;

pub use ast::rewrite_ast;
pub use rule::{AsOfMarker, AsOfRule, marker_udf};
pub use tokens::rewrite_tokens;
pub use window::{WindowMarker, window_marker_udf};

/// The function name that carries an as-of join through sqlparser.
const TOKEN_MARKER: &str = "__pitlake_asof";
/// The marker argument after which step 1 lists the aggregates of `AGGREGATES (…)`.
const AGGREGATES_SENTINEL: &str = "__pitlake_aggregates";
/// The function that stands for one aggregate in the window join's right relation.
pub const WINDOW_MARKER: &str = "__pitlake_window";
/// The marker call in `WHERE` that the analyzer rule consumes.
pub const MARKER: &str = "__pitlake_asof_join";
