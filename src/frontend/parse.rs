//! Splitting a script into statements and parsing each one.
//!
//! The script is split at top-level `;` in one pass; each statement is tokenized on its own and
//! its tokens are moved to where it starts in the script, so the line and column in a syntax
//! error point into the text the user wrote, not into a fragment of it. Every statement is
//! bounded before it is planned (see [`bounds`]): its size, and how deep it nests.

use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use sqlparser::ast::{BinaryOperator, Expr as SqlExpr, ObjectName, VisitorMut};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer, Word};

use crate::error::{PitlakeError, Result};
use crate::frontend::dialect::PitlakeDialect;
use crate::frontend::{bounds, embedded};

/// One parsed statement.
#[derive(Debug, Clone)]
pub enum Statement {
    /// A statement DataFusion plans (queries, DDL, DML, `EXPLAIN` …).
    Sql(Box<DFStatement>),
    /// A statement of the point-in-time DSL (registry, training sets).
    Dsl(Box<crate::frontend::dsl::DslStatement>),
    /// `DESCRIBE HISTORY t [LIMIT n]`: the table's commits, newest first.
    DescribeHistory {
        /// The table.
        table: ObjectName,
        /// At most this many commits.
        limit: Option<usize>,
    },
}

/// A statement with the text it was parsed from.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    /// The statement's own text, trimmed.
    pub text: String,
    /// The parse.
    pub statement: Statement,
}

/// Byte ranges of the statements in `sql`, split at top-level `;` (not inside quotes, comments
/// or dollar-quoted strings). Empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<std::ops::Range<usize>> {
    let bytes = sql.as_bytes();
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == quote {
                        // A doubled quote is an escaped quote inside the literal.
                        if i + 1 < bytes.len() && bytes[i + 1] == quote {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    if bytes[i] == b'\\' && quote == b'\'' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < bytes.len() && depth > 0 {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 1;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 1;
                    }
                    i += 1;
                }
                continue;
            }
            b'$' if bytes.get(i + 1) == Some(&b'$') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'$' && bytes[i + 1] == b'$') {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                ranges.push(start..i);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    ranges.push(start..sql.len());
    ranges
        .into_iter()
        .filter(|r| has_content(&sql[r.clone()]))
        .collect()
}

/// Whether a fragment has anything besides whitespace and comments.
fn has_content(fragment: &str) -> bool {
    let dialect = PitlakeDialect::default();
    match Tokenizer::new(&dialect, fragment).tokenize() {
        Ok(tokens) => tokens
            .iter()
            .any(|t| !matches!(t, Token::Whitespace(_) | Token::EOF)),
        // Let the parser report the problem.
        Err(_) => !fragment.trim().is_empty(),
    }
}

/// A position in a script, moved forward through it once: each statement's tokens are
/// located relative to its own start, then shifted by where it starts, so errors point into
/// the text the user wrote without tokenizing the whole script once per statement.
struct Cursor<'a> {
    sql: &'a str,
    offset: usize,
    at: Location,
}

impl<'a> Cursor<'a> {
    fn new(sql: &'a str) -> Self {
        Self {
            sql,
            offset: 0,
            at: Location::new(1, 1),
        }
    }

    /// The line and column of byte `offset` (not before the last one asked for), counted as
    /// sqlparser's tokenizer counts them: characters, a new line at each `\n`.
    fn advance_to(&mut self, offset: usize) -> Location {
        for c in self.sql[self.offset..offset].chars() {
            if c == '\n' {
                self.at = Location::new(self.at.line + 1, 1);
            } else {
                self.at.column += 1;
            }
        }
        self.offset = offset;
        self.at
    }
}

/// `location` (relative to a fragment) moved to where the fragment starts in the script.
fn shift(location: Location, origin: Location) -> Location {
    match location.line {
        // Line 0 marks an empty span.
        0 => location,
        1 => Location::new(origin.line, origin.column + location.column - 1),
        line => Location::new(origin.line + line - 1, location.column),
    }
}

/// Tokenizes one statement's text, located as if it started at `origin` in its script.
fn tokenize_at(text: &str, origin: Location) -> Result<Vec<TokenWithSpan>> {
    let dialect = PitlakeDialect::default();
    let mut tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|mut e| {
            e.location = shift(e.location, origin);
            PitlakeError::Syntax(e.to_string())
        })?;
    for token in &mut tokens {
        token.span = Span::new(
            shift(token.span.start, origin),
            shift(token.span.end, origin),
        );
    }
    Ok(tokens)
}

/// Tokenizes a statement's text, keeping positions.
#[cfg(test)]
pub fn tokenize(text: &str) -> Result<Vec<TokenWithSpan>> {
    tokenize_at(text, Location::new(1, 1))
}

/// The stack of the thread that parses. A statement within [`bounds::MAX_STATEMENT_BYTES`] can
/// still parse into a tree half a million levels deep (`1+1+…`): the parser builds it without
/// recursing, but dropping it recurses once per level. Parsing on a thread of its own, with a
/// stack that holds the deepest such tree, lets [`bounds::check_nesting`] refuse it and drop it
/// there; only trees within [`bounds::MAX_NESTING`] leave that thread. The stack is reserved
/// address space, touched only as deep as a statement goes.
const PARSER_STACK_BYTES: usize = 1 << 30;

/// Scripts longer than this are parsed one at a time: a 1 MiB statement can make a tree of a
/// few hundred MB before it is refused, and sixteen at once (one per query slot) would take
/// gigabytes.
const LARGE_SCRIPT_BYTES: usize = 64 << 10;

static LARGE_SCRIPTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Parses a script of one or more `;`-separated statements. A large script waits for its turn
/// (see [`LARGE_SCRIPT_BYTES`]), blocking the calling thread: a server calls this from a
/// blocking task.
pub fn parse_sql(sql: &str) -> Result<Vec<ParsedStatement>> {
    let _turn = (sql.len() > LARGE_SCRIPT_BYTES).then(|| match LARGE_SCRIPTS.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    });
    std::thread::scope(|scope| {
        let parser = std::thread::Builder::new()
            .name("pitlake-parser".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, || parse_script(sql))
            .map_err(|e| PitlakeError::Internal(format!("cannot start the parser thread: {e}")))?;
        parser
            .join()
            .unwrap_or_else(|_| Err(PitlakeError::Internal("the SQL parser panicked".into())))
    })
}

fn parse_script(sql: &str) -> Result<Vec<ParsedStatement>> {
    let mut out = Vec::new();
    let mut cursor = Cursor::new(sql);
    for range in split_statements(sql) {
        let text = &sql[range.clone()];
        bounds::check_size(text)?;
        let tokens = tokenize_at(text, cursor.advance_to(range.start))?;
        let statement = parse_tokens(tokens).map_err(|err| match err {
            // sqlparser gives no position for the end of input; say where that end is.
            PitlakeError::Syntax(msg) if msg.ends_with("found: EOF") => {
                let line = sql[..range.end].lines().count().max(1);
                PitlakeError::Syntax(format!(
                    "{msg} (the statement ends too early, at line {line})"
                ))
            }
            other => other,
        })?;
        out.push(ParsedStatement {
            text: text.trim().to_string(),
            statement,
        });
    }
    Ok(out)
}

fn is_word(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(Word { keyword: k, .. }) if *k == keyword)
}

/// Parses the tokens of exactly one statement.
pub fn parse_tokens(tokens: Vec<TokenWithSpan>) -> Result<Statement> {
    // A training set followed by SQL (`TRAINING SET … LIMIT 3`) is a query around one.
    let leads_a_query = embedded::starts_with_training_set(&tokens)
        && embedded_training_set_leads_a_query(&tokens)?;
    if crate::frontend::dsl::is_dsl(&tokens) && !leads_a_query {
        return Ok(Statement::Dsl(Box::new(crate::frontend::dsl::parse_dsl(
            tokens,
        )?)));
    }
    let tokens = embedded::embed(tokens, tokenize_at)?;
    let significant: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .collect();
    if let [first, second, ..] = significant.as_slice()
        && (is_word(first, Keyword::DESCRIBE) || is_word(first, Keyword::DESC))
        && is_word(second, Keyword::HISTORY)
    {
        return parse_describe_history(tokens);
    }
    let tokens = crate::frontend::asof::rewrite_tokens(tokens)?;
    let dialect = PitlakeDialect::default();
    let mut parser = DFParserBuilder::new(tokens)
        .with_dialect(&dialect)
        .build()
        .map_err(PitlakeError::from_datafusion)?;
    let mut statements = parser
        .parse_statements()
        .map_err(PitlakeError::from_datafusion)?;
    match (statements.pop_front(), statements.is_empty()) {
        (Some(mut statement), true) => {
            bounds::check_statement_nesting(&mut statement)?;
            let _ = crate::frontend::visit::visit_statement_mut(
                &mut statement,
                &mut DistinctFromPrecedence,
            );
            Ok(Statement::Sql(Box::new(statement)))
        }
        (None, _) => Err(PitlakeError::Syntax("empty statement".into())),
        (Some(_), false) => Err(PitlakeError::Internal(
            "a split statement parsed as several".into(),
        )),
    }
}

/// Whether SQL follows the training set that starts `tokens`.
fn embedded_training_set_leads_a_query(tokens: &[TokenWithSpan]) -> Result<bool> {
    let start = tokens
        .iter()
        .position(|t| !matches!(t.token, Token::Whitespace(_)))
        .unwrap_or_default();
    let end = start + crate::frontend::dsl::training_set_prefix(&tokens[start..])?;
    Ok(tokens[end..].iter().any(|t| {
        !matches!(
            t.token,
            Token::Whitespace(_) | Token::EOF | Token::SemiColon
        )
    }))
}

/// Gives `IS [NOT] DISTINCT FROM` the precedence of `=`.
///
/// sqlparser 0.62 parses its right operand as a whole expression, so `a IS NOT DISTINCT FROM b
/// AND c` arrives as `a IS NOT DISTINCT FROM (b AND c)`. This rotates such trees back:
/// `(a IS NOT DISTINCT FROM b) AND c`.
struct DistinctFromPrecedence;

fn binds_looser_than_comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::And
            | BinaryOperator::Or
            | BinaryOperator::Xor
            | BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    )
}

fn rotate(expr: SqlExpr) -> SqlExpr {
    let (left, right, negated) = match expr {
        SqlExpr::IsNotDistinctFrom(l, r) => (l, r, true),
        SqlExpr::IsDistinctFrom(l, r) => (l, r, false),
        other => return other,
    };
    match *right {
        SqlExpr::BinaryOp {
            left: inner,
            op,
            right: rest,
        } if binds_looser_than_comparison(&op) => {
            let fixed = if negated {
                SqlExpr::IsNotDistinctFrom(left, inner)
            } else {
                SqlExpr::IsDistinctFrom(left, inner)
            };
            SqlExpr::BinaryOp {
                left: Box::new(rotate(fixed)),
                op,
                right: rest,
            }
        }
        right if negated => SqlExpr::IsNotDistinctFrom(left, Box::new(right)),
        right => SqlExpr::IsDistinctFrom(left, Box::new(right)),
    }
}

impl VisitorMut for DistinctFromPrecedence {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> std::ops::ControlFlow<()> {
        if matches!(
            expr,
            SqlExpr::IsNotDistinctFrom(_, _) | SqlExpr::IsDistinctFrom(_, _)
        ) {
            let taken = std::mem::replace(expr, SqlExpr::Value(sqlparser::ast::Value::Null.into()));
            *expr = rotate(taken);
        }
        std::ops::ControlFlow::Continue(())
    }
}

fn parse_describe_history(tokens: Vec<TokenWithSpan>) -> Result<Statement> {
    let dialect = PitlakeDialect::default();
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let syntax = |e: sqlparser::parser::ParserError| PitlakeError::Syntax(e.to_string());
    if !parser.parse_keyword(Keyword::DESCRIBE) {
        parser.expect_keyword(Keyword::DESC).map_err(syntax)?;
    }
    parser.expect_keyword(Keyword::HISTORY).map_err(syntax)?;
    let table = parser.parse_object_name(false).map_err(syntax)?;
    let limit = if parser.parse_keyword(Keyword::LIMIT) {
        let value = parser.parse_literal_uint().map_err(syntax)?;
        Some(usize::try_from(value).unwrap_or(usize::MAX))
    } else {
        None
    };
    if parser.peek_token().token != Token::EOF {
        return Err(PitlakeError::Syntax(format!(
            "expected the end of `DESCRIBE HISTORY <table> [LIMIT n]`, found {}",
            parser.peek_token()
        )));
    }
    Ok(Statement::DescribeHistory { table, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons() {
        let sql = "select 1; select ';' -- a;b\n; /* x; y */ select 2;;";
        let parts: Vec<&str> = split_statements(sql).into_iter().map(|r| &sql[r]).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].trim(), "select 1");
        assert!(parts[1].contains("';'"));
        assert!(parts[2].contains("select 2"));
    }

    #[test]
    fn syntax_errors_keep_their_position() {
        let err = parse_sql("select 1;\nselect * frm t").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("Line: 2"), "{msg}");
    }

    #[test]
    fn positions_are_those_of_the_whole_script() {
        let alone = parse_sql("          select * frm t")
            .unwrap_err()
            .to_string();
        let after = parse_sql("select 1; select * frm t")
            .unwrap_err()
            .to_string();
        assert_eq!(alone, after);
        let tokens = tokenize_at("a\n b", Location::new(3, 5)).unwrap();
        let words: Vec<_> = tokens
            .iter()
            .filter(|t| matches!(t.token, Token::Word(_)))
            .map(|t| (t.span.start.line, t.span.start.column))
            .collect();
        assert_eq!(words, vec![(3, 5), (4, 2)]);
    }

    #[test]
    fn splits_thousands_of_statements() {
        let script = "SELECT 1;".repeat(4000);
        assert_eq!(parse_sql(&script).unwrap().len(), 4000);
    }

    #[test]
    fn deep_chains_are_refused_without_overflowing() {
        // Half a million levels: any recursion on this thread's stack would overflow it.
        let deep = format!("SELECT {}1", "1+".repeat(500_000));
        let err = parse_sql(&deep).unwrap_err().to_string();
        assert!(err.contains("levels deep"), "{err}");
        let err = parse_sql(&format!(
            "SELECT 1 WHERE {}",
            "true AND ".repeat(300) + "true"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("levels deep"), "{err}");
        parse_sql(&format!("SELECT {}1", "1+".repeat(200))).unwrap();
        // Chains built from set operations and from types, not expressions.
        let unions = format!("SELECT 1 AS a{}", " UNION ALL SELECT 1 AS a".repeat(2_000));
        assert!(
            parse_sql(&unions)
                .unwrap_err()
                .to_string()
                .contains("levels deep")
        );
        let arrays = format!("SELECT CAST(NULL AS INT{})", "[]".repeat(100_000));
        assert!(
            parse_sql(&arrays)
                .unwrap_err()
                .to_string()
                .contains("levels deep")
        );
        parse_sql(&format!("SELECT CAST(NULL AS INT{})", "[]".repeat(3))).unwrap();
        let big = format!("SELECT '{}'", "x".repeat(bounds::MAX_STATEMENT_BYTES));
        let err = parse_sql(&big).unwrap_err().to_string();
        assert!(err.contains("1 MiB"), "{err}");
    }

    #[test]
    fn parses_describe_history() {
        let parsed = parse_sql("describe history sales.orders limit 3").unwrap();
        match &parsed[0].statement {
            Statement::DescribeHistory { table, limit } => {
                assert_eq!(table.to_string(), "sales.orders");
                assert_eq!(*limit, Some(3));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_sql("describe history t extra").is_err());
    }

    #[test]
    fn distinct_from_binds_like_equality() {
        let text = |sql: &str| match &parse_sql(sql).unwrap()[0].statement {
            Statement::Sql(s) => s.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        let where_clause = text("select * from t where a is not distinct from b + 1 and c or d");
        assert!(
            where_clause.contains("WHERE a IS NOT DISTINCT FROM b + 1 AND c OR d"),
            "{where_clause}"
        );
        let parsed = parse_sql("select 1 is not distinct from 1 and true").unwrap();
        let Statement::Sql(statement) = &parsed[0].statement else {
            panic!("not SQL");
        };
        assert!(
            format!("{statement:?}")
                .contains("projection: [UnnamedExpr(BinaryOp { left: IsNotDistinctFrom(")
        );
    }

    #[test]
    fn parses_table_versions() {
        let parsed = parse_sql(
            "select * from t version as of 3 join u timestamp as of '2026-01-01' on true",
        )
        .unwrap();
        let text = match &parsed[0].statement {
            Statement::Sql(s) => s.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        assert!(text.contains("VERSION AS OF 3"), "{text}");
        assert!(text.contains("TIMESTAMP AS OF '2026-01-01'"), "{text}");
    }
}
