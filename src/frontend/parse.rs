//! Splitting a script into statements and parsing each one.
//!
//! Every statement is parsed from the *whole* script text with the other statements blanked
//! out (each of their characters replaced by a space, newlines kept), so the line and column in
//! a syntax error point into the text the user wrote, not into a fragment of it.

use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use sqlparser::ast::{BinaryOperator, Expr as SqlExpr, ObjectName, VisitorMut};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use crate::error::{PitlakeError, Result};
use crate::frontend::dialect::PitlakeDialect;

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

/// `sql` with every character outside `range` replaced by a space (newlines kept), so positions
/// inside the range stay what they were in the full text.
fn isolate(sql: &str, range: &std::ops::Range<usize>) -> String {
    sql.char_indices()
        .map(|(i, c)| {
            if range.contains(&i) || c == '\n' {
                c
            } else {
                ' '
            }
        })
        .collect()
}

/// Tokenizes a statement's isolated text, keeping positions.
pub fn tokenize(text: &str) -> Result<Vec<TokenWithSpan>> {
    let dialect = PitlakeDialect::default();
    Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| PitlakeError::Syntax(e.to_string()))
}

/// Parses a script of one or more `;`-separated statements.
pub fn parse_sql(sql: &str) -> Result<Vec<ParsedStatement>> {
    let mut out = Vec::new();
    for range in split_statements(sql) {
        let isolated = isolate(sql, &range);
        let tokens = tokenize(&isolated)?;
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
            text: sql[range].trim().to_string(),
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
    if crate::frontend::dsl::is_dsl(&tokens) {
        return Ok(Statement::Dsl(Box::new(crate::frontend::dsl::parse_dsl(
            tokens,
        )?)));
    }
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
            let _ = crate::frontend::time_travel::visit_statement_mut(
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
