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
//! 1. [`rewrite_tokens`] turns every form into `ASOF JOIN r MATCH_CONDITION (__pitlake_asof(…))`,
//!    carrying the join type, the form, the condition and the extension clauses as arguments;
//! 2. [`rewrite_ast`] turns each such join into a `LEFT JOIN` and adds a marker call
//!    `__pitlake_asof_join(…)` to the `WHERE` of the same `SELECT`, so DataFusion resolves and
//!    type-checks every expression in it as part of the query;
//! 3. [`AsOfRule`], an analyzer rule, finds each marker, replaces the join it names with the
//!    `AsOfJoin` node, and removes the marker.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{DataType, IntervalMonthDayNano};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{
    Column, DFSchema, NullEquality, Result, ScalarValue, plan_datafusion_err, plan_err,
};
use datafusion::logical_expr::expr::{ScalarFunction, Sort};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, Extension, Filter, Join, LogicalPlan, Operator,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::sql::parser::Statement as DFStatement;
use sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, JoinConstraint,
    JoinOperator, ObjectNamePart, Select, TableAlias, TableFactor, Value, VisitorMut,
};
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Word};

use crate::asof::{AsOfJoin, AsOfJoinType, AsOfOperator, Tolerance};
use crate::error::PitlakeError;
use crate::frontend::time_travel::visit_statement_mut;

/// The function name that carries an as-of join through sqlparser.
const TOKEN_MARKER: &str = "__pitlake_asof";
/// The marker call in `WHERE` that the analyzer rule consumes.
pub const MARKER: &str = "__pitlake_asof_join";

// ---------------------------------------------------------------------------------------------
// Step 1: tokens

fn is_word(token: &Token, text: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(text))
}

fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(Word { keyword: k, quote_style: None, .. }) if *k == keyword)
}

fn significant(token: &Token) -> bool {
    !matches!(token, Token::Whitespace(_))
}

/// The index of the next significant token at or after `i` (or `tokens.len()`).
fn next_sig(tokens: &[TokenWithSpan], mut i: usize) -> usize {
    while i < tokens.len() && !significant(&tokens[i].token) {
        i += 1;
    }
    i
}

fn prev_sig(tokens: &[TokenWithSpan], i: usize) -> Option<&Token> {
    tokens[..i]
        .iter()
        .rev()
        .map(|t| &t.token)
        .find(|t| significant(t))
}

fn syntax(message: impl Into<String>, at: Option<&TokenWithSpan>) -> PitlakeError {
    let position = at
        .map(|t| {
            format!(
                " at Line: {}, Column: {}",
                t.span.start.line, t.span.start.column
            )
        })
        .unwrap_or_default();
    PitlakeError::Syntax(format!("{}{position}", message.into()))
}

/// An extension clause that starts at token `i`, if one does.
fn extension_at(tokens: &[TokenWithSpan], i: usize) -> Option<Extension_> {
    let token = &tokens.get(i)?.token;
    // `r.tolerance` is a column, not a clause.
    if matches!(prev_sig(tokens, i), Some(Token::Period)) {
        return None;
    }
    let next = tokens.get(next_sig(tokens, i + 1)).map(|t| &t.token);
    if is_word(token, "TOLERANCE") {
        let starts_value = matches!(
            next,
            Some(Token::Number(_, _) | Token::LParen | Token::Minus | Token::SingleQuotedString(_))
        ) || next.is_some_and(|t| is_keyword(t, Keyword::INTERVAL));
        return starts_value.then_some(Extension_::Tolerance);
    }
    if is_word(token, "TIEBREAK") && next.is_some_and(|t| is_keyword(t, Keyword::BY)) {
        return Some(Extension_::Tiebreak);
    }
    if is_word(token, "KNOWN") && next.is_some_and(|t| is_keyword(t, Keyword::AT)) {
        return Some(Extension_::Known);
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extension_ {
    Tolerance,
    Tiebreak,
    Known,
}

/// Whether a token at depth 0 ends the current clause of a `FROM`.
fn ends_clause(token: &Token, commas_end: bool) -> bool {
    match token {
        Token::EOF | Token::SemiColon | Token::RParen => true,
        Token::Comma => commas_end,
        Token::Word(w) if w.quote_style.is_none() => {
            matches!(
                w.keyword,
                Keyword::JOIN
                    | Keyword::LEFT
                    | Keyword::RIGHT
                    | Keyword::INNER
                    | Keyword::FULL
                    | Keyword::CROSS
                    | Keyword::NATURAL
                    | Keyword::ASOF
                    | Keyword::WHERE
                    | Keyword::GROUP
                    | Keyword::HAVING
                    | Keyword::ORDER
                    | Keyword::LIMIT
                    | Keyword::OFFSET
                    | Keyword::UNION
                    | Keyword::EXCEPT
                    | Keyword::INTERSECT
                    | Keyword::WINDOW
                    | Keyword::QUALIFY
                    | Keyword::FETCH
                    | Keyword::SEMI
                    | Keyword::ANTI
                    | Keyword::OUTER
            )
        }
        _ => false,
    }
}

/// The end (exclusive) of a clause starting at `start`: the first token at depth 0 that ends
/// it, or the start of an extension clause.
fn clause_end(tokens: &[TokenWithSpan], start: usize, commas_end: bool) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < tokens.len() {
        let token = &tokens[i].token;
        match token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket if depth > 0 => depth -= 1,
            _ if depth == 0
                && (ends_clause(token, commas_end) || extension_at(tokens, i).is_some()) =>
            {
                return i;
            }
            _ => {}
        }
        i += 1;
    }
    tokens.len()
}

/// The index just past the `)` matching the `(` at `open`.
fn matching_paren(tokens: &[TokenWithSpan], open: usize) -> Result<usize, PitlakeError> {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
    }
    Err(syntax("unbalanced parentheses", tokens.get(open)))
}

fn word(text: &str) -> TokenWithSpan {
    TokenWithSpan::wrap(Token::make_word(text, None))
}

fn string(text: &str) -> TokenWithSpan {
    TokenWithSpan::wrap(Token::SingleQuotedString(text.to_string()))
}

fn tok(token: Token) -> TokenWithSpan {
    TokenWithSpan::wrap(token)
}

fn trim(tokens: &[TokenWithSpan]) -> &[TokenWithSpan] {
    let start = tokens
        .iter()
        .position(|t| significant(&t.token))
        .unwrap_or(tokens.len());
    let end = tokens
        .iter()
        .rposition(|t| significant(&t.token))
        .map_or(start, |e| e + 1);
    &tokens[start..end]
}

/// `( tokens )`, or `NULL` when there are none.
fn parenthesized_or_null(tokens: &[TokenWithSpan]) -> Vec<TokenWithSpan> {
    let tokens = trim(tokens);
    if tokens.is_empty() {
        return vec![word("NULL")];
    }
    let mut out = vec![tok(Token::LParen)];
    out.extend_from_slice(tokens);
    out.push(tok(Token::RParen));
    out
}

/// `e1 DESC NULLS LAST, e2` → `(e1), 'DESC NULLS LAST', (e2), 'ASC NULLS LAST'`.
fn tiebreak_args(tokens: &[TokenWithSpan]) -> Result<Vec<TokenWithSpan>, PitlakeError> {
    let mut items: Vec<&[TokenWithSpan]> = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                items.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tokens[start..]);
    let mut out = Vec::new();
    for item in items {
        let mut item = trim(item);
        let mut nulls_first = false;
        let mut descending = false;
        // Trailing `NULLS FIRST|LAST`, then `ASC|DESC`.
        if let [rest @ .., n, fl] = strip_ws(item).as_slice()
            && is_keyword(&n.token, Keyword::NULLS)
        {
            nulls_first = is_keyword(&fl.token, Keyword::FIRST);
            if !nulls_first && !is_keyword(&fl.token, Keyword::LAST) {
                return Err(syntax("expected FIRST or LAST after NULLS", Some(fl)));
            }
            item = trim(&item[..position_of(item, rest.len())]);
        }
        if let [.., d] = strip_ws(item).as_slice() {
            if is_keyword(&d.token, Keyword::DESC) {
                descending = true;
                item = trim(&item[..item.len() - 1]);
            } else if is_keyword(&d.token, Keyword::ASC) {
                item = trim(&item[..item.len() - 1]);
            }
        }
        if item.is_empty() {
            return Err(syntax("TIEBREAK BY needs an expression", None));
        }
        if !out.is_empty() {
            out.push(tok(Token::Comma));
        }
        out.extend(parenthesized_or_null(item));
        out.push(tok(Token::Comma));
        out.push(string(&format!(
            "{} NULLS {}",
            if descending { "DESC" } else { "ASC" },
            if nulls_first { "FIRST" } else { "LAST" }
        )));
    }
    Ok(out)
}

fn strip_ws(tokens: &[TokenWithSpan]) -> Vec<&TokenWithSpan> {
    tokens.iter().filter(|t| significant(&t.token)).collect()
}

/// The index in `tokens` just past its `n`-th significant token.
fn position_of(tokens: &[TokenWithSpan], n: usize) -> usize {
    let mut seen = 0;
    for (i, t) in tokens.iter().enumerate() {
        if seen == n {
            return i;
        }
        if significant(&t.token) {
            seen += 1;
        }
    }
    tokens.len()
}

/// Rewrites every `ASOF … JOIN` in a statement's tokens to the one form sqlparser parses.
pub fn rewrite_tokens(tokens: Vec<TokenWithSpan>) -> Result<Vec<TokenWithSpan>, PitlakeError> {
    if !tokens.iter().any(|t| is_keyword(&t.token, Keyword::ASOF)) {
        return Ok(tokens);
    }
    rewrite_range(&tokens)
}

fn rewrite_range(tokens: &[TokenWithSpan]) -> Result<Vec<TokenWithSpan>, PitlakeError> {
    let mut out = Vec::with_capacity(tokens.len() + 16);
    let mut i = 0;
    while i < tokens.len() {
        if is_keyword(&tokens[i].token, Keyword::ASOF)
            && !matches!(prev_sig(tokens, i), Some(Token::Period))
        {
            i = rewrite_one(tokens, i, &mut out)?;
        } else {
            out.push(tokens[i].clone());
            i += 1;
        }
    }
    Ok(out)
}

/// Rewrites the as-of join starting at `tokens[start]` (`ASOF`), appending to `out`; returns the
/// index after it.
fn rewrite_one(
    tokens: &[TokenWithSpan],
    start: usize,
    out: &mut Vec<TokenWithSpan>,
) -> Result<usize, PitlakeError> {
    let mut j = next_sig(tokens, start + 1);
    let kind = match tokens.get(j).map(|t| &t.token) {
        Some(t) if is_keyword(t, Keyword::LEFT) => {
            j = next_sig(tokens, j + 1);
            if tokens
                .get(j)
                .is_some_and(|t| is_keyword(&t.token, Keyword::OUTER))
            {
                j = next_sig(tokens, j + 1);
            }
            "left"
        }
        Some(t) if is_keyword(t, Keyword::INNER) => {
            j = next_sig(tokens, j + 1);
            "inner"
        }
        _ => "default",
    };
    if !tokens
        .get(j)
        .is_some_and(|t| is_keyword(&t.token, Keyword::JOIN))
    {
        return Err(syntax(
            "expected JOIN after ASOF [LEFT | INNER]",
            tokens.get(j),
        ));
    }
    let relation_start = j + 1;
    // The relation runs to MATCH_CONDITION, ON or USING at depth 0.
    let mut depth = 0usize;
    let mut k = relation_start;
    let relation_end = loop {
        let Some(t) = tokens.get(k) else {
            return Err(asof_needs_condition(tokens.get(start)));
        };
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen if depth > 0 => depth -= 1,
            token if depth == 0 => {
                if is_keyword(token, Keyword::MATCH_CONDITION)
                    || is_keyword(token, Keyword::ON)
                    || is_keyword(token, Keyword::USING)
                {
                    break k;
                }
                if k > next_sig(tokens, relation_start) && ends_clause(token, true) {
                    return Err(asof_needs_condition(tokens.get(start)));
                }
            }
            _ => {}
        }
        k += 1;
    };
    let relation = rewrite_range(&tokens[relation_start..relation_end])?;

    let mut p = relation_end;
    let (form, condition) = if is_keyword(&tokens[p].token, Keyword::MATCH_CONDITION) {
        let open = next_sig(tokens, p + 1);
        if !matches!(tokens.get(open).map(|t| &t.token), Some(Token::LParen)) {
            return Err(syntax("expected ( after MATCH_CONDITION", tokens.get(open)));
        }
        let close = matching_paren(tokens, open)?;
        p = close;
        ("snowflake", rewrite_range(&tokens[open + 1..close - 1])?)
    } else {
        ("duckdb", vec![word("TRUE")])
    };

    // The join's own constraint.
    let mut constraint: Vec<TokenWithSpan> = Vec::new();
    let q = next_sig(tokens, p);
    if tokens
        .get(q)
        .is_some_and(|t| is_keyword(&t.token, Keyword::ON))
    {
        let end = clause_end(tokens, q + 1, true);
        constraint.push(tokens[q].clone());
        constraint.extend(rewrite_range(&tokens[q + 1..end])?);
        p = end;
    } else if tokens
        .get(q)
        .is_some_and(|t| is_keyword(&t.token, Keyword::USING))
    {
        let open = next_sig(tokens, q + 1);
        if !matches!(tokens.get(open).map(|t| &t.token), Some(Token::LParen)) {
            return Err(syntax("expected ( after USING", tokens.get(open)));
        }
        let close = matching_paren(tokens, open)?;
        constraint.extend_from_slice(&tokens[q..close]);
        p = close;
    }

    // Extension clauses.
    let mut tolerance: Option<Vec<TokenWithSpan>> = None;
    let mut tiebreak: Option<Vec<TokenWithSpan>> = None;
    let mut known: Option<Vec<TokenWithSpan>> = None;
    loop {
        let at = next_sig(tokens, p);
        let Some(extension) = extension_at(tokens, at) else {
            break;
        };
        let (body_start, commas_end) = match extension {
            Extension_::Tolerance => (at + 1, true),
            Extension_::Tiebreak => (next_sig(tokens, at + 1) + 1, false),
            Extension_::Known => (next_sig(tokens, at + 1) + 1, true),
        };
        let end = clause_end(tokens, body_start, commas_end);
        let body = rewrite_range(&tokens[body_start..end])?;
        if trim(&body).is_empty() {
            return Err(syntax("the clause needs an expression", tokens.get(at)));
        }
        let slot = match extension {
            Extension_::Tolerance => &mut tolerance,
            Extension_::Tiebreak => &mut tiebreak,
            Extension_::Known => &mut known,
        };
        if slot.is_some() {
            return Err(syntax("this as-of clause is given twice", tokens.get(at)));
        }
        *slot = Some(body);
        p = end;
    }

    // ASOF JOIN <relation> MATCH_CONDITION (__pitlake_asof('kind', 'form', (cond), tol, known, tb…)) <constraint>
    out.push(tokens[start].clone());
    out.push(word("JOIN"));
    out.extend(relation);
    out.push(tok(Token::Whitespace(
        sqlparser::tokenizer::Whitespace::Space,
    )));
    out.push(TokenWithSpan::wrap(Token::make_keyword("MATCH_CONDITION")));
    out.push(tok(Token::LParen));
    out.push(word(TOKEN_MARKER));
    out.push(tok(Token::LParen));
    out.push(string(kind));
    out.push(tok(Token::Comma));
    out.push(string(form));
    out.push(tok(Token::Comma));
    out.extend(parenthesized_or_null(&condition));
    out.push(tok(Token::Comma));
    out.extend(parenthesized_or_null(
        tolerance.as_deref().unwrap_or_default(),
    ));
    out.push(tok(Token::Comma));
    out.extend(parenthesized_or_null(known.as_deref().unwrap_or_default()));
    if let Some(tiebreak) = tiebreak {
        out.push(tok(Token::Comma));
        out.extend(tiebreak_args(trim(&tiebreak))?);
    }
    out.push(tok(Token::RParen));
    out.push(tok(Token::RParen));
    out.push(tok(Token::Whitespace(
        sqlparser::tokenizer::Whitespace::Space,
    )));
    out.extend(constraint);
    out.push(tok(Token::Whitespace(
        sqlparser::tokenizer::Whitespace::Space,
    )));
    Ok(p)
}

fn asof_needs_condition(at: Option<&TokenWithSpan>) -> PitlakeError {
    syntax(
        "ASOF JOIN needs a match condition: `MATCH_CONDITION (l.t >= r.t)` (optionally with ON \
         or USING for the keys), or DuckDB's `ON l.k = r.k AND l.t >= r.t` / `USING (k, t)`",
        at,
    )
}

// ---------------------------------------------------------------------------------------------
// Step 2: the AST

struct LowerJoins {
    normalize: bool,
    generated: usize,
    error: Option<PitlakeError>,
}

fn unnamed(expr: SqlExpr) -> FunctionArg {
    FunctionArg::Unnamed(FunctionArgExpr::Expr(expr))
}

fn sql_string(text: &str) -> SqlExpr {
    SqlExpr::Value(Value::SingleQuotedString(text.to_string()).with_empty_span())
}

impl LowerJoins {
    fn alias_of(&mut self, relation: &mut TableFactor) -> Result<String, PitlakeError> {
        let normalize = self.normalize;
        let norm = |ident: &Ident| {
            if ident.quote_style.is_none() && normalize {
                ident.value.to_lowercase()
            } else {
                ident.value.clone()
            }
        };
        let new_alias = |name: String| TableAlias {
            explicit: true,
            name: Ident::with_quote('"', name),
            columns: Vec::new(),
            at: None,
        };
        match relation {
            TableFactor::Table { name, alias, .. } => {
                if let Some(alias) = alias {
                    return Ok(norm(&alias.name));
                }
                let Some(ObjectNamePart::Identifier(last)) = name.0.last() else {
                    return Err(PitlakeError::Plan(format!(
                        "`{name}` cannot be as-of joined"
                    )));
                };
                let base = norm(last);
                // Time travel already aliased versioned tables; a plain one gets its own name.
                *alias = Some(new_alias(base.clone()));
                Ok(base)
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::UNNEST { alias, .. } => {
                if let Some(alias) = alias {
                    return Ok(norm(&alias.name));
                }
                self.generated += 1;
                let name = format!("__pitlake_asof_right_{}", self.generated);
                *alias = Some(new_alias(name.clone()));
                Ok(name)
            }
            other => Err(PitlakeError::Plan(format!(
                "`{other}` cannot be the right side of an ASOF JOIN; use a table or a \
                 subquery with an alias"
            ))),
        }
    }

    fn lower(&mut self, select: &mut Select) -> Result<(), PitlakeError> {
        let mut markers: Vec<SqlExpr> = Vec::new();
        for from in &mut select.from {
            for join in &mut from.joins {
                let JoinOperator::AsOf {
                    match_condition,
                    constraint,
                } = &join.join_operator
                else {
                    continue;
                };
                let SqlExpr::Function(function) = match_condition else {
                    return Err(PitlakeError::Internal(
                        "ASOF JOIN without its marker".into(),
                    ));
                };
                let FunctionArguments::List(list) = &function.args else {
                    return Err(PitlakeError::Internal(
                        "ASOF JOIN marker without arguments".into(),
                    ));
                };
                let form = match list.args.get(1) {
                    Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(v)))) => {
                        v.value.clone().into_string().unwrap_or_default()
                    }
                    _ => String::new(),
                };
                let (constraint, time_column) = match (form.as_str(), constraint.clone()) {
                    (_, JoinConstraint::Natural) => {
                        return Err(PitlakeError::Plan(
                            "ASOF JOIN cannot be NATURAL; name the keys with ON or USING".into(),
                        ));
                    }
                    ("duckdb", JoinConstraint::Using(mut columns)) => {
                        let time = columns.pop().ok_or_else(|| {
                            PitlakeError::Plan(
                                "ASOF JOIN … USING needs the time column last".into(),
                            )
                        })?;
                        let constraint = if columns.is_empty() {
                            JoinConstraint::On(SqlExpr::Value(
                                Value::Boolean(true).with_empty_span(),
                            ))
                        } else {
                            JoinConstraint::Using(columns)
                        };
                        (constraint, time.to_string())
                    }
                    (_, JoinConstraint::None) => (
                        JoinConstraint::On(SqlExpr::Value(Value::Boolean(true).with_empty_span())),
                        String::new(),
                    ),
                    (_, other) => (other, String::new()),
                };
                let alias = self.alias_of(&mut join.relation)?;
                let mut args = vec![
                    unnamed(sql_string(&alias)),
                    unnamed(sql_string(&time_column)),
                ];
                args.extend(list.args.iter().cloned());
                let mut marker = function.clone();
                marker.name = sqlparser::ast::ObjectName(vec![ObjectNamePart::Identifier(
                    Ident::new(MARKER),
                )]);
                if let FunctionArguments::List(l) = &mut marker.args {
                    l.args = args;
                }
                markers.push(SqlExpr::Function(marker));
                join.join_operator = JoinOperator::LeftOuter(constraint);
            }
        }
        for marker in markers {
            select.selection = Some(match select.selection.take() {
                Some(existing) => SqlExpr::BinaryOp {
                    left: Box::new(marker),
                    op: sqlparser::ast::BinaryOperator::And,
                    right: Box::new(SqlExpr::Nested(Box::new(existing))),
                },
                None => marker,
            });
        }
        Ok(())
    }
}

impl VisitorMut for LowerJoins {
    type Break = ();

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
        match self.lower(select) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                self.error = Some(err);
                ControlFlow::Break(())
            }
        }
    }
}

/// Turns each parsed as-of join into a `LEFT JOIN` plus a marker in its `SELECT`'s `WHERE`.
pub fn rewrite_ast(
    statement: &mut DFStatement,
    normalize_idents: bool,
) -> Result<(), PitlakeError> {
    let mut lower = LowerJoins {
        normalize: normalize_idents,
        generated: 0,
        error: None,
    };
    let _ = visit_statement_mut(statement, &mut lower);
    match lower.error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Step 3: the plan

/// The marker function. It is never executed: [`AsOfRule`] removes every call to it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AsOfMarker {
    signature: Signature,
}

impl Default for AsOfMarker {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for AsOfMarker {
    fn name(&self) -> &str {
        MARKER
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        plan_err!(
            "ASOF JOIN could not be planned here: as-of joins must be in the FROM clause of a \
             SELECT"
        )
    }
}

/// The marker as a DataFusion function, for registering with a session.
pub fn marker_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(AsOfMarker::default())
}

fn is_marker(expr: &Expr) -> bool {
    matches!(expr, Expr::ScalarFunction(ScalarFunction { func, .. }) if func.name() == MARKER)
}

/// Replaces marked joins with [`AsOfJoin`] nodes.
#[derive(Debug, Default)]
pub struct AsOfRule;

impl AnalyzerRule for AsOfRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(lower_filter)
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "pitlake_asof_join"
    }
}

fn lower_filter(node: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Filter(filter) = node else {
        return Ok(Transformed::no(node));
    };
    let has_marker = split_conjunction_owned(filter.predicate.clone())
        .iter()
        .any(is_marker);
    if !has_marker {
        return Ok(Transformed::no(LogicalPlan::Filter(filter)));
    }
    let (markers, rest): (Vec<Expr>, Vec<Expr>) = split_conjunction_owned(filter.predicate)
        .into_iter()
        .partition(is_marker);
    let mut input = filter.input;
    for marker in markers {
        let Expr::ScalarFunction(call) = marker else {
            continue;
        };
        input = Arc::new(replace_join(Arc::unwrap_or_clone(input), &call.args)?);
    }
    let plan = match conjunction(rest) {
        Some(predicate) => LogicalPlan::Filter(Filter::try_new(predicate, input)?),
        None => Arc::unwrap_or_clone(input),
    };
    Ok(Transformed::yes(plan))
}

fn literal_string(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Literal(ScalarValue::Utf8(Some(s)), _)
        | Expr::Literal(ScalarValue::Utf8View(Some(s)), _)
        | Expr::Literal(ScalarValue::LargeUtf8(Some(s)), _) => Some(s.clone()),
        _ => None,
    }
}

fn is_null_literal(expr: &Expr) -> bool {
    matches!(expr, Expr::Literal(v, _) if v.is_null())
}

/// Finds the join whose right input is the relation `alias` and lowers it.
fn replace_join(plan: LogicalPlan, args: &[Expr]) -> Result<LogicalPlan> {
    let alias = args
        .first()
        .and_then(literal_string)
        .ok_or_else(|| plan_datafusion_err!("as-of marker without its relation"))?;
    let mut found = false;
    let plan = plan
        .transform_down(|node| {
            if found {
                return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
            }
            match node {
                LogicalPlan::Join(join) if right_is(&join, &alias) => {
                    found = true;
                    let lowered = lower_join(join, args)?;
                    Ok(Transformed::new(lowered, true, TreeNodeRecursion::Jump))
                }
                // The join is in this SELECT's FROM, not inside a nested query.
                LogicalPlan::SubqueryAlias(_) => {
                    Ok(Transformed::new(node, false, TreeNodeRecursion::Jump))
                }
                other => Ok(Transformed::no(other)),
            }
        })?
        .data;
    if !found {
        return plan_err!("ASOF JOIN with `{alias}` could not be matched to its join");
    }
    Ok(plan)
}

fn right_is(join: &Join, alias: &str) -> bool {
    let schema = join.right.schema();
    !schema.fields().is_empty()
        && schema
            .iter()
            .all(|(q, _)| q.is_some_and(|q| q.table() == alias))
}

/// Which sides an expression reads: (left, right).
fn sides(expr: &Expr, left: &DFSchema, right: &DFSchema) -> (bool, bool) {
    let mut l = false;
    let mut r = false;
    for c in expr.column_refs() {
        if left.has_column(c) {
            l = true;
        }
        if right.has_column(c) {
            r = true;
        }
    }
    (l, r)
}

fn comparison(op: Operator) -> Option<AsOfOperator> {
    match op {
        Operator::GtEq => Some(AsOfOperator::GtEq),
        Operator::Gt => Some(AsOfOperator::Gt),
        Operator::LtEq => Some(AsOfOperator::LtEq),
        Operator::Lt => Some(AsOfOperator::Lt),
        _ => None,
    }
}

const ALLOWED: &str = "an ASOF JOIN's ON may hold only equalities between the two sides \
                       (l.k = r.k, l.k IS NOT DISTINCT FROM r.k) and, in the DuckDB form, one \
                       match condition (l.t >= r.t, >, <= or <)";

/// Orients `a OP b` as (left, op, right), or says why it cannot be.
fn orient(
    a: Expr,
    op: AsOfOperator,
    b: Expr,
    left: &DFSchema,
    right: &DFSchema,
) -> Result<(Expr, AsOfOperator, Expr)> {
    let (al, ar) = sides(&a, left, right);
    let (bl, br) = sides(&b, left, right);
    match ((al, ar), (bl, br)) {
        ((true, false), (false, true)) => Ok((a, op, b)),
        ((false, true), (true, false)) => Ok((b, op.swap(), a)),
        _ => plan_err!(
            "the as-of condition `{a} {} {b}` must compare an expression of the left input with \
             one of the right input",
            op.symbol()
        ),
    }
}

fn lower_join(join: Join, args: &[Expr]) -> Result<LogicalPlan> {
    // args: alias, using-time column, kind, form, condition, tolerance, known, tiebreak pairs…
    let [
        _,
        using_time,
        kind,
        form,
        condition,
        tolerance,
        known,
        tiebreak @ ..,
    ] = args
    else {
        return plan_err!("as-of marker has {} arguments", args.len());
    };
    let using_time = literal_string(using_time).unwrap_or_default();
    let kind = literal_string(kind).unwrap_or_default();
    let form = literal_string(form).unwrap_or_default();
    let (left, right) = (join.left.schema().clone(), join.right.schema().clone());
    let snowflake = form == "snowflake";
    let join_type = match (kind.as_str(), snowflake) {
        ("left", _) | ("default", true) => AsOfJoinType::Left,
        _ => AsOfJoinType::Inner,
    };

    let mut keys: Vec<(Expr, Expr)> = Vec::new();
    let mut null_equal: Vec<bool> = Vec::new();
    let pairs_null_equal = join.null_equality == NullEquality::NullEqualsNull;
    for (l, r) in join.on {
        keys.push((l, r));
        null_equal.push(pairs_null_equal);
    }
    let mut matched: Option<(Expr, AsOfOperator, Expr)> = None;
    if snowflake {
        match condition {
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op,
                right: b,
            }) => match comparison(*op) {
                Some(op) => matched = Some(orient(*a.clone(), op, *b.clone(), &left, &right)?),
                None if *op == Operator::Eq => {
                    return plan_err!(
                        "`{condition}`: `=` is not an as-of match condition; use >= (the latest \
                         right row at or before the left time), >, <= or <"
                    );
                }
                None => {
                    return plan_err!(
                        "MATCH_CONDITION ({condition}) must be one comparison l.t >= r.t (or >, \
                         <=, <)"
                    );
                }
            },
            other => {
                return plan_err!(
                    "MATCH_CONDITION ({other}) must be one comparison l.t >= r.t (or >, <=, <)"
                );
            }
        }
    }
    if !using_time.is_empty() {
        let (lq, lf) = left.qualified_field_with_unqualified_name(&using_time)?;
        let (rq, rf) = right.qualified_field_with_unqualified_name(&using_time)?;
        matched = Some((
            Expr::Column(Column::new(lq.cloned(), lf.name())),
            AsOfOperator::GtEq,
            Expr::Column(Column::new(rq.cloned(), rf.name())),
        ));
    }
    for conjunct in join.filter.map(split_conjunction_owned).unwrap_or_default() {
        match conjunct {
            Expr::Literal(ScalarValue::Boolean(Some(true)), _) => {}
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op,
                right: b,
            }) if matches!(op, Operator::Eq | Operator::IsNotDistinctFrom) => {
                let (a, _, b) =
                    orient(*a, AsOfOperator::GtEq, *b, &left, &right).map_err(|_| {
                        plan_datafusion_err!(
                            "{ALLOWED}; `{op}` here does not compare the two sides"
                        )
                    })?;
                keys.push((a, b));
                null_equal.push(op == Operator::IsNotDistinctFrom);
            }
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op,
                right: b,
            }) if comparison(op).is_some() && !snowflake && using_time.is_empty() => {
                if matched.is_some() {
                    return plan_err!("{ALLOWED}; this ON has a second inequality `{a} {op} {b}`");
                }
                let op = comparison(op).ok_or_else(|| plan_datafusion_err!("{ALLOWED}"))?;
                matched = Some(orient(*a, op, *b, &left, &right)?);
            }
            other => return plan_err!("{ALLOWED}; found `{other}`"),
        }
    }
    let Some((left_time, op, right_time)) = matched else {
        return plan_err!(
            "this ASOF JOIN has no match condition; add `l.t >= r.t` (or >, <=, <) to ON, or \
             use MATCH_CONDITION (l.t >= r.t)"
        );
    };

    let time_type = {
        use datafusion::logical_expr::ExprSchemable;
        left_time.get_type(&left)?
    };
    let tolerance = if is_null_literal(tolerance) {
        None
    } else {
        Some(to_tolerance(tolerance, &time_type)?)
    };
    // `KNOWN AT` is compared with the left time: give it the times' type, as SQL coercion gives
    // the two sides of the match condition one type.
    let known_at = if is_null_literal(known) {
        None
    } else if sides(known, &left, &right).0 {
        // Reads the left side: `AsOfJoin::try_new` refuses it with the reason.
        Some(known.clone())
    } else {
        use datafusion::logical_expr::ExprSchemable;
        let known_type = known.get_type(&right)?;
        let coercible = matches!(
            (&known_type, &time_type),
            (DataType::Timestamp(_, a), DataType::Timestamp(_, b)) if a.is_some() == b.is_some()
        ) || (known_type.is_integer() && time_type.is_integer())
            || (known_type.is_numeric() && time_type.is_floating())
            // A date is its midnight, as SQL compares a date with a timestamp.
            || (matches!(known_type, DataType::Date32 | DataType::Date64)
                && matches!(
                    time_type,
                    DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
                ));
        Some(if known_type != time_type && coercible {
            known.clone().cast_to(&time_type, &right)?
        } else {
            known.clone()
        })
    };
    let mut sorts = Vec::new();
    for pair in tiebreak.chunks(2) {
        let [expr, order] = pair else {
            return plan_err!("as-of marker: an odd tie-break list");
        };
        let order = literal_string(order).unwrap_or_default();
        sorts.push(Sort::new(
            expr.clone(),
            order.starts_with("ASC"),
            order.ends_with("FIRST"),
        ));
    }
    let node = AsOfJoin::try_new(
        join.left, join.right, keys, null_equal, left_time, right_time, op, join_type, tolerance,
        sorts, known_at,
    )?;
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    }))
}

/// Evaluates a `TOLERANCE` expression (a constant) into a [`Tolerance`] for times of
/// `time_type`.
fn to_tolerance(expr: &Expr, time_type: &DataType) -> Result<Tolerance> {
    let value = match expr {
        Expr::Literal(value, _) => value.clone(),
        Expr::Negative(inner) => match inner.as_ref() {
            Expr::Literal(value, _) => value.arithmetic_negate()?,
            _ => return plan_err!("TOLERANCE {expr} must be a constant"),
        },
        Expr::Cast(cast) => match cast.expr.as_ref() {
            Expr::Literal(value, _) => value.cast_to(cast.field.data_type())?,
            _ => return plan_err!("TOLERANCE {expr} must be a constant"),
        },
        other => {
            return plan_err!("TOLERANCE {other} must be a constant such as INTERVAL '7 days'");
        }
    };
    let temporal = matches!(
        time_type,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
    );
    let nanos = |months: i64, days: i64, nanos: i128| -> Result<Tolerance> {
        if months != 0 {
            return plan_err!(
                "TOLERANCE {value}: months and years have no fixed length; give days (e.g. \
                 INTERVAL '30 days')"
            );
        }
        let total = i128::from(days) * 86_400_000_000_000 + nanos;
        if total < 0 {
            return plan_err!("TOLERANCE must be zero or positive, not {value}");
        }
        Ok(Tolerance::Duration(total))
    };
    match &value {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano {
            months,
            days,
            nanoseconds,
        })) => nanos((*months).into(), (*days).into(), (*nanoseconds).into()),
        ScalarValue::IntervalDayTime(Some(v)) => {
            nanos(0, v.days.into(), i128::from(v.milliseconds) * 1_000_000)
        }
        ScalarValue::IntervalYearMonth(Some(m)) => nanos((*m).into(), 0, 0),
        ScalarValue::DurationSecond(Some(s)) => nanos(0, 0, i128::from(*s) * 1_000_000_000),
        ScalarValue::DurationMillisecond(Some(s)) => nanos(0, 0, i128::from(*s) * 1_000_000),
        ScalarValue::DurationMicrosecond(Some(s)) => nanos(0, 0, i128::from(*s) * 1_000),
        ScalarValue::DurationNanosecond(Some(s)) => nanos(0, 0, i128::from(*s)),
        number if !temporal && !number.is_null() => {
            let cast = number.cast_to(time_type).map_err(|_| {
                plan_datafusion_err!(
                    "TOLERANCE {number} does not fit the as-of times' type {time_type}"
                )
            })?;
            Ok(Tolerance::Number(cast))
        }
        other if temporal => plan_err!(
            "TOLERANCE {other} is not an interval; the as-of times are {time_type}, so write \
             e.g. INTERVAL '7 days'"
        ),
        other => plan_err!("TOLERANCE {other} is not a number of the times' type {time_type}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::parse::tokenize;

    fn rewritten(sql: &str) -> String {
        let tokens = tokenize(sql).unwrap();
        rewrite_tokens(tokens)
            .unwrap()
            .iter()
            .map(|t| t.token.to_string())
            .collect::<String>()
    }

    #[test]
    fn duckdb_form_gets_a_marker_and_keeps_its_on() {
        let out = rewritten("select * from l asof left join r on l.k = r.k and l.t >= r.t where x");
        assert!(
            out.contains("JOIN r  MATCH_CONDITION(__pitlake_asof('left','duckdb',(TRUE),NULL,NULL)) on l.k = r.k and l.t >= r.t  where x"),
            "{out}"
        );
    }

    #[test]
    fn snowflake_form_with_extensions() {
        let out = rewritten(
            "select * from l asof join r match_condition (l.t >= r.t) using (k) \
             tolerance interval '1 day' tiebreak by r.c desc, r.d nulls first known at r.c, other",
        );
        assert!(out.contains("'default','snowflake',(l.t >= r.t)"), "{out}");
        assert!(out.contains("(interval '1 day'),(r.c)"), "{out}");
        assert!(
            out.contains("(r.c),'DESC NULLS LAST',(r.d),'ASC NULLS FIRST'))"),
            "{out}"
        );
        assert!(out.contains("using (k) , other"), "{out}");
    }

    #[test]
    fn a_column_named_tolerance_is_not_a_clause() {
        let out = rewritten(
            "select * from l asof join r on l.k = r.k and l.t >= r.t and r.tolerance > 0",
        );
        assert!(out.contains("r.tolerance > 0"), "{out}");
        assert!(out.contains("NULL,NULL))"), "{out}");
    }

    #[test]
    fn errors_point_at_the_join() {
        let err =
            rewrite_tokens(tokenize("select * from l asof join r where x").unwrap()).unwrap_err();
        assert!(err.to_string().contains("needs a match condition"), "{err}");
        let err = rewrite_tokens(tokenize("select * from l asof right join r on true").unwrap())
            .unwrap_err();
        assert!(
            err.to_string().contains("expected JOIN after ASOF"),
            "{err}"
        );
    }
}
