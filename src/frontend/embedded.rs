//! Training sets inside SQL: a `TRAINING SET …` stands wherever a query may, e.g.
//! `SELECT … FROM (TRAINING SET …) AS ts WHERE …`, `WITH ts AS (TRAINING SET …)`,
//! `CREATE TABLE t AS TRAINING SET …`, `EXPLAIN TRAINING SET …`, `TRAINING SET … LIMIT 3`.
//!
//! The parser replaces each by `SELECT * FROM pitlake_training_set('<the training set>')`: a
//! placeholder that carries the training set's own text through DataFusion's SQL parser. Before
//! anything else is planned, the engine parses each placeholder's text again (as a statement
//! of its own; [`embedded`] finds the texts),
//! plans it into its pinned query, and puts that query in the placeholder's place
//! ([`substitute`]). The statement is then planned, authorized and pinned as if its author had
//! written the pinned query: the training set's grants, versions and as-of joins are the same
//! as when it stands alone.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, GroupByExpr, Query, SelectItem, SetExpr,
    TableFactor, Value, Visitor, VisitorMut,
};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Word};

use crate::error::{PitlakeError, Result};
use crate::frontend::dsl;
use crate::frontend::visit::{visit_statement, visit_statement_mut};

/// The table function a training set stands as in SQL until the engine plans it.
pub const PLACEHOLDER: &str = "pitlake_training_set";

/// Whether a training set starts at `tokens[at]`: the unquoted words `TRAINING SET LABELS`
/// where a query may start (the statement's start, after `(`, `AS`, `EXPLAIN [ANALYZE]
/// [VERBOSE]`, or a set operator). Elsewhere the words are names: `UPDATE training SET labels
/// = 1`.
fn starts_training_set(tokens: &[TokenWithSpan], at: usize) -> bool {
    let significant = |t: &&TokenWithSpan| !matches!(t.token, Token::Whitespace(_));
    let word = |t: &TokenWithSpan, w: &str| matches!(&t.token, Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(w));
    let query_may_start = match tokens[..at].iter().rev().find(significant) {
        None => true,
        Some(t) if t.token == Token::LParen => true,
        Some(t) => [
            "AS",
            "EXPLAIN",
            "ANALYZE",
            "VERBOSE",
            "UNION",
            "INTERSECT",
            "EXCEPT",
            "ALL",
            "DISTINCT",
        ]
        .iter()
        .any(|w| word(t, w)),
    };
    let mut next = tokens[at..].iter().filter(significant);
    query_may_start
        && ["TRAINING", "SET", "LABELS"]
            .iter()
            .all(|w| next.next().is_some_and(|t| word(t, w)))
}

/// Whether the statement's first word starts a training set.
pub(crate) fn starts_with_training_set(tokens: &[TokenWithSpan]) -> bool {
    tokens
        .iter()
        .position(|t| !matches!(t.token, Token::Whitespace(_)))
        .is_some_and(|at| starts_training_set(tokens, at))
}

/// Replaces every `TRAINING SET …` in a statement's tokens by the placeholder query;
/// `tokenize(text, at)` tokenizes the replacement as if it stood at `at` in the script.
pub(crate) fn embed(
    tokens: Vec<TokenWithSpan>,
    tokenize: impl Fn(&str, Location) -> Result<Vec<TokenWithSpan>>,
) -> Result<Vec<TokenWithSpan>> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut at = 0;
    while at < tokens.len() {
        if !starts_training_set(&tokens, at) {
            out.push(tokens[at].clone());
            at += 1;
            continue;
        }
        let consumed = dsl::training_set_prefix(&tokens[at..])?;
        let text: String = tokens[at..at + consumed]
            .iter()
            .map(|t| token_text(&t.token))
            .collect();
        let placeholder = format!(
            "SELECT * FROM {PLACEHOLDER}('{}')",
            text.trim().replace('\'', "''")
        );
        out.extend(tokenize(&placeholder, tokens[at].span.start)?);
        at += consumed;
    }
    Ok(out)
}

/// A token as SQL text. sqlparser prints a quoted name without doubling the quotes inside it
/// (`"we""ird"` would come out as `"we"ird"`), so quoted names are written here.
fn token_text(token: &Token) -> String {
    match token {
        Token::Word(Word {
            value,
            quote_style: Some(q),
            ..
        }) => {
            let end = match q {
                '[' => ']',
                other => *other,
            };
            format!("{q}{}{end}", value.replace(end, &format!("{end}{end}")))
        }
        other => other.to_string(),
    }
}

/// The text a placeholder carries: `None` when `factor` is no placeholder, an error when it
/// is one without exactly one string.
fn placeholder_text(factor: &TableFactor) -> Option<Result<String>> {
    let TableFactor::Table {
        name,
        args: Some(args),
        ..
    } = factor
    else {
        return None;
    };
    if !name.to_string().eq_ignore_ascii_case(PLACEHOLDER) {
        return None;
    }
    Some(match args.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(v)))] => match &v.value {
            Value::SingleQuotedString(text) => Ok(text.clone()),
            _ => Err(malformed()),
        },
        _ => Err(malformed()),
    })
}

fn malformed() -> PitlakeError {
    PitlakeError::Plan(format!(
        "{PLACEHOLDER}(…) takes the text of one training set; write TRAINING SET … where a \
         query may stand instead"
    ))
}

/// Visits the placeholders of a statement in order, to replace them.
struct Placeholders<F> {
    visit: F,
    error: Option<PitlakeError>,
}

impl<F> VisitorMut for Placeholders<F>
where
    F: FnMut(&mut TableFactor) -> Result<()>,
{
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let result = match placeholder_text(factor) {
            None => return ControlFlow::Continue(()),
            Some(Err(err)) => Err(err),
            Some(Ok(_)) => (self.visit)(factor),
        };
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                self.error = Some(err);
                ControlFlow::Break(())
            }
        }
    }
}

/// Collects the placeholders' texts in order.
#[derive(Default)]
struct Texts {
    found: Vec<String>,
    error: Option<PitlakeError>,
}

impl Visitor for Texts {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match placeholder_text(factor) {
            None => ControlFlow::Continue(()),
            Some(Ok(text)) => {
                self.found.push(text);
                ControlFlow::Continue(())
            }
            Some(Err(err)) => {
                self.error = Some(err);
                ControlFlow::Break(())
            }
        }
    }
}

/// The texts of the training sets embedded in a statement, in order. A placeholder may be
/// written by hand, so its text is parsed like any statement ([`crate::frontend::parse_sql`]:
/// on the parser's own thread, bounded in size and nesting), never here.
pub fn embedded(statement: &DFStatement) -> Result<Vec<String>> {
    let mut texts = Texts::default();
    let _ = visit_statement(statement, &mut texts);
    texts.error.map_or(Ok(texts.found), Err)
}

/// Puts `queries` (one per embedded training set, in order) in the placeholders' places.
pub fn substitute(statement: &mut DFStatement, queries: Vec<Query>) -> Result<()> {
    let whole = bare_training_set(statement).is_some();
    substitute_each(statement, queries)?;
    if whole {
        keep_order(statement);
    }
    Ok(())
}

/// The statement an `EXPLAIN` (or `EXPLAIN ANALYZE`) explains, or `statement` itself: an
/// explained training set is planned as it runs, order included.
fn explained(statement: &mut DFStatement) -> &mut DFStatement {
    match statement {
        DFStatement::Explain(explain) => explained(&mut explain.statement),
        other => other,
    }
}

/// The query of a statement that only takes rows from one training set, `SELECT * FROM
/// <placeholder or its query>` with at most a LIMIT / OFFSET / FETCH, and orders nothing
/// itself (as `TRAINING SET … LIMIT 3` parses).
fn bare_training_set(statement: &mut DFStatement) -> Option<&mut Query> {
    let DFStatement::Statement(inner) = explained(statement) else {
        return None;
    };
    let sqlparser::ast::Statement::Query(outer) = inner.as_mut() else {
        return None;
    };
    let SetExpr::Select(select) = outer.body.as_ref() else {
        return None;
    };
    let bare = outer.order_by.is_none()
        && outer.with.is_none()
        && matches!(select.projection.as_slice(), [SelectItem::Wildcard(_)])
        && select.selection.is_none()
        && select.having.is_none()
        && select.distinct.is_none()
        && matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
        && matches!(select.from.as_slice(), [from] if from.joins.is_empty() && matches!(
            &from.relation,
            TableFactor::Table { name, args: Some(_), .. } if name.to_string().eq_ignore_ascii_case(PLACEHOLDER)
        ));
    bare.then_some(outer.as_mut())
}

/// Makes a bare query around one training set ([`bare_training_set`]) the training set's own
/// query, which keeps its ORDER BY; DataFusion would not keep a subquery's order.
fn keep_order(statement: &mut DFStatement) {
    let DFStatement::Statement(inner) = explained(statement) else {
        return;
    };
    let sqlparser::ast::Statement::Query(outer) = inner.as_mut() else {
        return;
    };
    let SetExpr::Select(select) = outer.body.as_ref() else {
        return;
    };
    let Some(TableFactor::Derived { subquery, .. }) = select.from.first().map(|f| &f.relation)
    else {
        return;
    };
    if subquery.limit_clause.is_some() || subquery.fetch.is_some() {
        return;
    }
    let mut merged = subquery.as_ref().clone();
    merged.limit_clause = outer.limit_clause.take();
    merged.fetch = outer.fetch.take();
    **outer = merged;
}

fn substitute_each(statement: &mut DFStatement, queries: Vec<Query>) -> Result<()> {
    let mut queries = queries.into_iter();
    let mut visitor = Placeholders {
        visit: |factor: &mut TableFactor| {
            let TableFactor::Table { alias, .. } = factor else {
                return Err(PitlakeError::Internal(
                    "a placeholder that is not a table".into(),
                ));
            };
            let alias = alias.take();
            let subquery = queries.next().ok_or_else(|| {
                PitlakeError::Internal("fewer training sets than placeholders".into())
            })?;
            *factor = TableFactor::Derived {
                lateral: false,
                subquery: Box::new(subquery),
                alias,
                sample: None,
            };
            Ok(())
        },
        error: None,
    };
    let _ = visit_statement_mut(statement, &mut visitor);
    visitor.error.map_or(Ok(()), Err)
}
