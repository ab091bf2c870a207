//! Bounds on what a statement may ask of the engine, checked before anything is planned.
//!
//! - **Size**: one statement is at most [`MAX_STATEMENT_BYTES`] long.
//! - **Nesting**: expressions and queries nest at most [`MAX_NESTING`] deep. The parser already
//!   bounds parenthesized nesting, but a flat chain such as `1+1+…+1` parses without recursion
//!   into a tree as deep as it is long, and every later walk of that tree (cloning, printing,
//!   dropping, planning) recurses once per level: 3,000 terms were enough to overflow a server
//!   thread's stack and abort the process.
//! - **Constants**: the expressions pitlake evaluates *itself* while planning (`TIMESTAMP AS
//!   OF …`, a feature view's `TTL …`) are constants: literals, intervals, casts, arithmetic and a
//!   short list of time functions. They may not read a table, a column or a subquery: they are
//!   evaluated before the statement's grants are checked, and their value can surface in an
//!   error message, so anything else would be a way to read around the grants.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Query, SetExpr, VisitMut, VisitorMut,
};

use crate::error::{PitlakeError, Result};

/// The longest statement accepted, in bytes (1 MiB).
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// How deep expressions and queries may nest.
pub const MAX_NESTING: usize = 256;

/// Scalar functions a constant may call: they read nothing but their arguments (and the clock).
const CONSTANT_FUNCTIONS: &[&str] = &[
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtimestamp",
    "to_timestamp",
    "to_timestamp_seconds",
    "to_timestamp_millis",
    "to_timestamp_micros",
    "to_timestamp_nanos",
    "to_date",
    "to_unixtime",
    "from_unixtime",
    "make_date",
    "date_trunc",
    "date_bin",
    "date_part",
    "arrow_cast",
];

/// Refuses a statement text longer than [`MAX_STATEMENT_BYTES`].
pub fn check_size(text: &str) -> Result<()> {
    if text.len() > MAX_STATEMENT_BYTES {
        return Err(PitlakeError::Plan(format!(
            "the statement is {} bytes long; at most {MAX_STATEMENT_BYTES} bytes (1 MiB) are \
             accepted: load large value lists into a table and join it instead",
            text.len()
        )));
    }
    Ok(())
}

struct Depth {
    current: usize,
}

impl Depth {
    fn enter(&mut self) -> ControlFlow<()> {
        self.current += 1;
        if self.current > MAX_NESTING {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl VisitorMut for Depth {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &mut Expr) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_expr(&mut self, _: &mut Expr) -> ControlFlow<()> {
        self.current -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        // A chain of set operations (`… UNION ALL … UNION ALL …`) is one query whose body nests
        // once per operator; the parser builds it in a loop, so it is counted here, without
        // recursing. (Queries nested inside it are met by the visitor itself.)
        let chain = set_operation_depth(&query.body);
        self.current += chain;
        let entered = self.enter();
        self.current -= chain;
        entered
    }

    fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
        self.current -= 1;
        ControlFlow::Continue(())
    }
}

/// How deep set operations nest in a query body, walked with a stack of its own.
fn set_operation_depth(body: &SetExpr) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(body, 0usize)];
    while let Some((node, depth)) = pending.pop() {
        if let SetExpr::SetOperation { left, right, .. } = node {
            deepest = deepest.max(depth + 1);
            pending.push((left, depth + 1));
            pending.push((right, depth + 1));
        }
    }
    deepest
}

/// How deep any tree may nest, counted over *every* type of node (one level per struct, enum,
/// list or box, as `{:#?}` indents them), as a backstop behind [`MAX_NESTING`], which counts
/// expressions, queries and set operations: a construct the parser builds in a loop and no
/// check knows of (nested array types `INT[][]…`, say) is refused all the same. A statement
/// within [`MAX_NESTING`] stays far below it.
const MAX_TREE_DEPTH: usize = 2_048;

/// Counts the indentation of pretty `Debug` output as it is written, keeping nothing, and stops
/// the formatting (with an error) at the first line deeper than [`MAX_TREE_DEPTH`]: the walk
/// never recurses past that depth however deep the tree is.
struct IndentProbe {
    at_line_start: bool,
    indent: usize,
}

impl std::fmt::Write for IndentProbe {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        for byte in text.bytes() {
            match byte {
                b'\n' => {
                    self.at_line_start = true;
                    self.indent = 0;
                }
                b' ' if self.at_line_start => {
                    self.indent += 1;
                    if self.indent / 4 > MAX_TREE_DEPTH {
                        return Err(std::fmt::Error);
                    }
                }
                _ => self.at_line_start = false,
            }
        }
        Ok(())
    }
}

/// Refuses a tree deeper than [`MAX_TREE_DEPTH`] levels of any kind (see there).
pub fn check_tree_depth<T: std::fmt::Debug + ?Sized>(node: &T) -> Result<()> {
    use std::fmt::Write;
    let mut probe = IndentProbe {
        at_line_start: true,
        indent: 0,
    };
    match write!(probe, "{node:#?}") {
        Ok(()) => Ok(()),
        Err(_) => Err(too_deep()),
    }
}

fn too_deep() -> PitlakeError {
    PitlakeError::Plan(format!(
        "the statement nests expressions or subqueries more than {MAX_NESTING} levels deep (a \
         chain like `a + b + c + …` counts one level per operator); split it, or use IN (…) \
         lists, arrays or a table for long lists"
    ))
}

/// Refuses a parsed node (statement, query or expression) that nests deeper than
/// [`MAX_NESTING`]. The walk itself is safe at any depth: sqlparser's visitor grows its stack
/// as it recurses.
pub fn check_nesting<T: VisitMut + std::fmt::Debug + ?Sized>(node: &mut T) -> Result<()> {
    let mut depth = Depth { current: 0 };
    match node.visit(&mut depth) {
        ControlFlow::Break(()) => Err(too_deep()),
        ControlFlow::Continue(()) => check_tree_depth(node),
    }
}

/// [`check_nesting`] for a DataFusion statement.
pub fn check_statement_nesting(statement: &mut DFStatement) -> Result<()> {
    let mut depth = Depth { current: 0 };
    match crate::frontend::visit::visit_statement_mut(statement, &mut depth) {
        ControlFlow::Break(()) => Err(too_deep()),
        ControlFlow::Continue(()) => check_tree_depth(statement),
    }
}

struct OnlyQueries {
    found: Option<String>,
}

impl VisitorMut for OnlyQueries {
    type Break = ();

    fn pre_visit_select(&mut self, select: &mut sqlparser::ast::Select) -> ControlFlow<()> {
        // `SELECT … INTO t` is a query that creates a table.
        if select.into.is_some() {
            self.found = Some("SELECT … INTO".into());
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(
        &mut self,
        statement: &mut sqlparser::ast::Statement,
    ) -> ControlFlow<()> {
        if matches!(statement, sqlparser::ast::Statement::Query(_)) {
            return ControlFlow::Continue(());
        }
        let text = statement.to_string();
        self.found = Some(
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        );
        ControlFlow::Break(())
    }
}

/// Refuses a statement that is not a query: anything that writes, changes settings or reads
/// files (`INSERT`, `DROP`, `COPY`, `SET`, `EXPLAIN` …), at the top or nested in a query
/// (`WITH … INSERT`). `what` names the statement's origin for the message.
pub fn ensure_query(statement: &mut DFStatement, what: &str) -> Result<()> {
    let refuse = |found: &str| {
        PitlakeError::Plan(format!(
            "{what} must be a query (SELECT …), but it is `{found} …`; pitlake runs only \
             queries from it"
        ))
    };
    let DFStatement::Statement(inner) = statement else {
        let text = statement.to_string();
        return Err(refuse(
            &text
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ));
    };
    let mut only = OnlyQueries { found: None };
    let _ = inner.visit(&mut only);
    match only.found {
        Some(found) => Err(refuse(&found)),
        None => Ok(()),
    }
}

/// Refuses a SQL type name that holds anything but words, numbers and the punctuation of
/// types (`DECIMAL(10, 2)`, `ARRAY<INT>`, `INT[]`): no string literal, comment or statement
/// can ride in one. A type name from the registry is pasted into SQL to learn its Arrow type.
pub fn ensure_type_name(text: &str) -> Result<()> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let dialect = crate::frontend::dialect::PitlakeDialect::default();
    let refuse = || {
        PitlakeError::Plan(format!(
            "`{}` is not a SQL type; write a type such as BIGINT, VARCHAR, DECIMAL(10, 2), \
             TIMESTAMP or INT[]",
            text.chars().take(80).collect::<String>()
        ))
    };
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize()
        .map_err(|_| refuse())?;
    let fine = tokens.iter().all(|t| {
        matches!(
            t,
            Token::Word(w) if w.quote_style.is_none()
        ) || matches!(
            t,
            Token::Number(_, _)
                | Token::LParen
                | Token::RParen
                | Token::Comma
                | Token::Lt
                | Token::Gt
                | Token::LBracket
                | Token::RBracket
                | Token::Whitespace(sqlparser::tokenizer::Whitespace::Space)
        )
    });
    if !fine || text.len() > 256 {
        return Err(refuse());
    }
    Ok(())
}

/// Refuses an expression that is not a constant (see the module doc). `clause` names where it
/// was written, for the message (`TIMESTAMP AS OF`, `TTL`).
pub fn ensure_constant(expr: &Expr, clause: &str) -> Result<()> {
    match non_constant(expr, 0) {
        None => Ok(()),
        Some(found) => Err(PitlakeError::Plan(format!(
            "{clause} must be a constant, such as '2026-01-01T00:00:00Z', INTERVAL '2 hours', \
             now() - INTERVAL '1 day' or a number; found {found}, which pitlake does not \
             evaluate while planning"
        ))),
    }
}

/// What makes `expr` not a constant, if anything.
fn non_constant(expr: &Expr, depth: usize) -> Option<String> {
    if depth > MAX_NESTING {
        return Some("an expression nested too deep".into());
    }
    let inner = |e: &Expr| non_constant(e, depth + 1);
    match expr {
        Expr::Value(value) => match &value.value {
            sqlparser::ast::Value::Placeholder(p) => Some(format!("the parameter {p}")),
            _ => None,
        },
        Expr::TypedString(_) => None,
        Expr::Interval(interval) => inner(&interval.value),
        Expr::Nested(e) | Expr::UnaryOp { expr: e, .. } => inner(e),
        Expr::Cast { expr: e, .. } => inner(e),
        Expr::BinaryOp { left, right, .. } => inner(left).or_else(|| inner(right)),
        Expr::AtTimeZone {
            timestamp,
            time_zone,
        } => inner(timestamp).or_else(|| inner(time_zone)),
        Expr::Extract { expr: e, .. } => inner(e),
        Expr::Function(function) => {
            let name = function.name.to_string().to_lowercase();
            if !CONSTANT_FUNCTIONS.contains(&name.as_str()) {
                return Some(format!("a call of `{name}`"));
            }
            if function.filter.is_some() || function.over.is_some() {
                return Some(format!("an aggregate or window use of `{name}`"));
            }
            match &function.args {
                FunctionArguments::None => None,
                FunctionArguments::Subquery(_) => Some("a subquery".into()),
                FunctionArguments::List(list) => list.args.iter().find_map(|arg| {
                    let arg = match arg {
                        FunctionArg::Unnamed(a) => a,
                        FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } => arg,
                    };
                    match arg {
                        FunctionArgExpr::Expr(e) => inner(e),
                        _ => Some(format!("a wildcard argument of `{name}`")),
                    }
                }),
            }
        }
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
            Some("a subquery".into())
        }
        Expr::Identifier(ident) => Some(format!("the column `{}`", ident.value)),
        Expr::CompoundIdentifier(parts) => Some(format!(
            "the column `{}`",
            parts
                .iter()
                .map(|p| p.value.as_str())
                .collect::<Vec<_>>()
                .join(".")
        )),
        _ => Some(
            "an expression other than literals, intervals, casts, arithmetic and time \
                   functions"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::parser::Parser;

    fn expr(sql: &str) -> Expr {
        Parser::new(&crate::frontend::dialect::PitlakeDialect::default())
            .try_with_sql(sql)
            .unwrap()
            .parse_expr()
            .unwrap()
    }

    #[test]
    fn constants_are_literals_intervals_casts_and_time_functions() {
        for ok in [
            "'2026-01-01T00:00:00Z'",
            "TIMESTAMP '2026-01-01 00:00:00'",
            "now() - INTERVAL '1 day'",
            "CAST('2026-01-01' AS DATE) + INTERVAL '2 hours'",
            "to_timestamp(1700000000)",
            "current_timestamp",
            "1800",
            "-(3600 * 2)",
            "date_trunc('day', now())",
            "extract(epoch FROM INTERVAL '2 hours')",
        ] {
            ensure_constant(&expr(ok), "TIMESTAMP AS OF").unwrap();
        }
    }

    #[test]
    fn anything_that_reads_is_refused_with_what_it_found() {
        for (bad, found) in [
            ("(SELECT max(ts) FROM salaries)", "a subquery"),
            (
                "now() - (SELECT string_agg(ssn, ',') FROM salaries)",
                "a subquery",
            ),
            ("ts", "the column `ts`"),
            ("s.ts + INTERVAL '1 day'", "the column `s.ts`"),
            ("EXISTS (SELECT 1 FROM t)", "a subquery"),
            ("1 IN (SELECT 1 FROM t)", "a subquery"),
            ("read_parquet('/etc/passwd')", "a call of `read_parquet`"),
            ("to_timestamp((SELECT 1))", "a subquery"),
            ("$1", "the parameter $1"),
        ] {
            let err = ensure_constant(&expr(bad), "TTL").unwrap_err().to_string();
            assert!(err.contains(found), "{bad}: {err}");
            assert!(err.contains("TTL must be a constant"), "{err}");
        }
    }

    #[test]
    fn deep_chains_are_refused_and_shallow_ones_pass() {
        let chain = |n: usize| vec!["1"; n].join("+");
        check_nesting(&mut expr(&chain(MAX_NESTING))).unwrap();
        // Longer chains are tested through `parse_sql`, whose thread can drop them.
        let err = check_nesting(&mut expr(&chain(MAX_NESTING + 2))).unwrap_err();
        assert!(err.to_string().contains("more than 256 levels"), "{err}");
    }

    #[test]
    fn only_queries_pass_as_queries() {
        let statement = |sql: &str| match crate::frontend::parse_sql(sql).unwrap().remove(0) {
            crate::frontend::ParsedStatement {
                statement: crate::frontend::Statement::Sql(s),
                ..
            } => *s,
            other => panic!("{other:?}"),
        };
        ensure_query(&mut statement("SELECT * FROM (SELECT 1) x"), "m").unwrap();
        ensure_query(&mut statement("WITH a AS (SELECT 1) SELECT * FROM a"), "m").unwrap();
        for bad in [
            "DROP TABLE orders",
            "INSERT INTO t SELECT 1",
            "CREATE TABLE t AS SELECT 1",
            "COPY (SELECT 1) TO '/tmp/x.csv'",
            "SET datafusion.execution.batch_size = 1",
            "EXPLAIN SELECT 1",
            "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a",
            "SELECT * INTO pwned FROM secret",
        ] {
            let err = ensure_query(&mut statement(bad), "the manifest's query")
                .unwrap_err()
                .to_string();
            assert!(err.contains("must be a query"), "{bad}: {err}");
        }
    }

    #[test]
    fn type_names_carry_no_sql() {
        for ok in [
            "BIGINT",
            "DECIMAL(10, 2)",
            "ARRAY<INT>",
            "INT[]",
            "TIMESTAMP(3)",
        ] {
            ensure_type_name(ok).unwrap();
        }
        for bad in [
            "foo('1)) AS x FROM secret --')",
            "INT) AS x FROM secret --",
            "INT; DROP TABLE t",
            "\"INT\"",
            "INT /* x */",
        ] {
            assert!(ensure_type_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oversized_statements_are_refused() {
        check_size(&"x".repeat(MAX_STATEMENT_BYTES)).unwrap();
        let err = check_size(&"x".repeat(MAX_STATEMENT_BYTES + 1)).unwrap_err();
        assert!(err.to_string().contains("1 MiB"), "{err}");
    }
}
