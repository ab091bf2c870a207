//! Step 1, tokens: every written form of an as-of join becomes the one form sqlparser parses,
//! `ASOF JOIN r MATCH_CONDITION (__pitlake_asof('kind', 'form', (condition), tolerance, known,
//! tie-break pairs…)) [ON … | USING (…)]`. Nested as-of joins (in the relation, the condition or
//! a clause) are rewritten too.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace, Word};

use super::{AGGREGATES_SENTINEL, TOKEN_MARKER};
use crate::error::PitlakeError;

fn is_word(token: &Token, text: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(text))
}

fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(Word { keyword: k, quote_style: None, .. }) if *k == keyword)
}

/// Whether `tokens[i]` is the unquoted keyword `keyword`.
fn keyword_at(tokens: &[TokenWithSpan], i: usize, keyword: Keyword) -> bool {
    tokens.get(i).is_some_and(|t| is_keyword(&t.token, keyword))
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
fn extension_at(tokens: &[TokenWithSpan], i: usize) -> Option<Clause> {
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
        return starts_value.then_some(Clause::Tolerance);
    }
    if is_word(token, "TIEBREAK") && next.is_some_and(|t| is_keyword(t, Keyword::BY)) {
        return Some(Clause::Tiebreak);
    }
    if is_word(token, "KNOWN") && next.is_some_and(|t| is_keyword(t, Keyword::AT)) {
        return Some(Clause::Known);
    }
    if is_word(token, "AGGREGATES") && matches!(next, Some(Token::LParen)) {
        return Some(Clause::Aggregates);
    }
    None
}

/// An extension clause of an as-of join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clause {
    Tolerance,
    Tiebreak,
    Known,
    Aggregates,
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
    let (kind, join) = join_kind(tokens, start)?;
    let end_of_relation = relation_end(tokens, start, join + 1)?;
    let relation = rewrite_range(&tokens[join + 1..end_of_relation])?;
    let (form, condition, after_condition) = match_condition(tokens, end_of_relation)?;
    let (constraint, after_constraint) = join_constraint(tokens, after_condition)?;
    let (clauses, end) = Clauses::read(tokens, after_constraint)?;
    let parts = AsOfTokens {
        kind,
        form,
        relation,
        condition,
        constraint,
        clauses,
    };
    parts.write(&tokens[start], out)?;
    Ok(end)
}

/// Reads `ASOF [LEFT [OUTER] | INNER] JOIN` from `tokens[start]` (`ASOF`): the join type as
/// written (`left`, `inner`, or `default` when none is) and the index of `JOIN`.
fn join_kind(
    tokens: &[TokenWithSpan],
    start: usize,
) -> Result<(&'static str, usize), PitlakeError> {
    let mut j = next_sig(tokens, start + 1);
    let kind = if keyword_at(tokens, j, Keyword::LEFT) {
        j = next_sig(tokens, j + 1);
        if keyword_at(tokens, j, Keyword::OUTER) {
            j = next_sig(tokens, j + 1);
        }
        "left"
    } else if keyword_at(tokens, j, Keyword::INNER) {
        j = next_sig(tokens, j + 1);
        "inner"
    } else {
        "default"
    };
    if !keyword_at(tokens, j, Keyword::JOIN) {
        return Err(syntax(
            "expected JOIN after ASOF [LEFT | INNER]",
            tokens.get(j),
        ));
    }
    Ok((kind, j))
}

/// The end (exclusive) of the joined relation starting at `relation_start`: the
/// `MATCH_CONDITION`, `ON` or `USING` at depth 0. A token that ends the `FROM` clause first means
/// the join of `tokens[asof]` has no condition.
fn relation_end(
    tokens: &[TokenWithSpan],
    asof: usize,
    relation_start: usize,
) -> Result<usize, PitlakeError> {
    let mut depth = 0usize;
    let mut k = relation_start;
    loop {
        let Some(t) = tokens.get(k) else {
            return Err(asof_needs_condition(tokens.get(asof)));
        };
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen if depth > 0 => depth -= 1,
            token if depth == 0 => {
                if is_keyword(token, Keyword::MATCH_CONDITION)
                    || is_keyword(token, Keyword::ON)
                    || is_keyword(token, Keyword::USING)
                {
                    return Ok(k);
                }
                if k > next_sig(tokens, relation_start) && ends_clause(token, true) {
                    return Err(asof_needs_condition(tokens.get(asof)));
                }
            }
            _ => {}
        }
        k += 1;
    }
}

/// Reads `MATCH_CONDITION (…)` at `at` if it is there: the form (`snowflake`, or `duckdb` when
/// the condition is left to `ON` or `USING`), the condition (`TRUE` for the DuckDB form) and the
/// index after it.
fn match_condition(
    tokens: &[TokenWithSpan],
    at: usize,
) -> Result<(&'static str, Vec<TokenWithSpan>, usize), PitlakeError> {
    if !keyword_at(tokens, at, Keyword::MATCH_CONDITION) {
        return Ok(("duckdb", vec![word("TRUE")], at));
    }
    let (open, close) = parenthesized(tokens, at + 1, "MATCH_CONDITION")?;
    let condition = rewrite_range(&tokens[open + 1..close - 1])?;
    Ok(("snowflake", condition, close))
}

/// Reads the join's own `ON …` (its expression rewritten) or `USING (…)` at or after `at`: its
/// tokens, none when there is neither, and the index after it.
fn join_constraint(
    tokens: &[TokenWithSpan],
    at: usize,
) -> Result<(Vec<TokenWithSpan>, usize), PitlakeError> {
    let q = next_sig(tokens, at);
    if keyword_at(tokens, q, Keyword::ON) {
        let end = clause_end(tokens, q + 1, true);
        let mut constraint = vec![tokens[q].clone()];
        constraint.extend(rewrite_range(&tokens[q + 1..end])?);
        Ok((constraint, end))
    } else if keyword_at(tokens, q, Keyword::USING) {
        let (_, close) = parenthesized(tokens, q + 1, "USING")?;
        Ok((tokens[q..close].to_vec(), close))
    } else {
        Ok((Vec::new(), at))
    }
}

/// The `( … )` that must come at or after `at`, following `what`: the index of the `(` and the
/// index just past the matching `)`.
fn parenthesized(
    tokens: &[TokenWithSpan],
    at: usize,
    what: &str,
) -> Result<(usize, usize), PitlakeError> {
    let open = next_sig(tokens, at);
    if !matches!(tokens.get(open).map(|t| &t.token), Some(Token::LParen)) {
        return Err(syntax(format!("expected ( after {what}"), tokens.get(open)));
    }
    Ok((open, matching_paren(tokens, open)?))
}

/// The bodies of an as-of join's extension clauses (rewritten), each written at most once.
#[derive(Default)]
struct Clauses {
    tolerance: Option<Vec<TokenWithSpan>>,
    tiebreak: Option<Vec<TokenWithSpan>>,
    known: Option<Vec<TokenWithSpan>>,
    /// `AGGREGATES (…)`, with its parentheses.
    aggregates: Option<Vec<TokenWithSpan>>,
}

impl Clauses {
    /// Reads the extension clauses from `at` on, in any order; returns them and the index after
    /// the last.
    fn read(tokens: &[TokenWithSpan], mut at: usize) -> Result<(Self, usize), PitlakeError> {
        let mut clauses = Self::default();
        loop {
            let clause_start = next_sig(tokens, at);
            let Some(clause) = extension_at(tokens, clause_start) else {
                return Ok((clauses, at));
            };
            let (body_start, commas_end) = match clause {
                Clause::Tolerance => (clause_start + 1, true),
                Clause::Tiebreak => (next_sig(tokens, clause_start + 1) + 1, false),
                Clause::Known => (next_sig(tokens, clause_start + 1) + 1, true),
                Clause::Aggregates => (clause_start + 1, true),
            };
            let end = clause_end(tokens, body_start, commas_end);
            let body = rewrite_range(&tokens[body_start..end])?;
            if trim(&body).is_empty() {
                return Err(syntax(
                    "the clause needs an expression",
                    tokens.get(clause_start),
                ));
            }
            let slot = match clause {
                Clause::Tolerance => &mut clauses.tolerance,
                Clause::Tiebreak => &mut clauses.tiebreak,
                Clause::Known => &mut clauses.known,
                Clause::Aggregates => &mut clauses.aggregates,
            };
            if slot.is_some() {
                return Err(syntax(
                    "this as-of clause is given twice",
                    tokens.get(clause_start),
                ));
            }
            *slot = Some(body);
            at = end;
        }
    }
}

/// One as-of join's parts, read from its tokens.
struct AsOfTokens {
    /// The join type as written: `left`, `inner` or `default`.
    kind: &'static str,
    /// `snowflake` (`MATCH_CONDITION`) or `duckdb` (the condition is in `ON` or `USING`).
    form: &'static str,
    relation: Vec<TokenWithSpan>,
    condition: Vec<TokenWithSpan>,
    /// `ON …` or `USING (…)`, or nothing.
    constraint: Vec<TokenWithSpan>,
    clauses: Clauses,
}

impl AsOfTokens {
    /// Appends the join in the form sqlparser parses, starting with `asof` (the `ASOF` token):
    /// `ASOF JOIN <relation> MATCH_CONDITION (__pitlake_asof('kind', 'form', (condition),
    /// tolerance, known, tie-break pairs…)) <constraint>`.
    fn write(self, asof: &TokenWithSpan, out: &mut Vec<TokenWithSpan>) -> Result<(), PitlakeError> {
        out.push(asof.clone());
        out.push(word("JOIN"));
        out.extend(self.relation);
        out.push(tok(Token::Whitespace(Whitespace::Space)));
        out.push(TokenWithSpan::wrap(Token::make_keyword("MATCH_CONDITION")));
        out.push(tok(Token::LParen));
        out.push(word(TOKEN_MARKER));
        out.push(tok(Token::LParen));
        out.push(string(self.kind));
        out.push(tok(Token::Comma));
        out.push(string(self.form));
        out.push(tok(Token::Comma));
        out.extend(parenthesized_or_null(&self.condition));
        out.push(tok(Token::Comma));
        out.extend(parenthesized_or_null(
            self.clauses.tolerance.as_deref().unwrap_or_default(),
        ));
        out.push(tok(Token::Comma));
        out.extend(parenthesized_or_null(
            self.clauses.known.as_deref().unwrap_or_default(),
        ));
        if let Some(tiebreak) = &self.clauses.tiebreak {
            out.push(tok(Token::Comma));
            out.extend(tiebreak_args(trim(tiebreak))?);
        }
        if let Some(aggregates) = &self.clauses.aggregates {
            out.push(tok(Token::Comma));
            out.push(string(AGGREGATES_SENTINEL));
            for item in aggregate_items(trim(aggregates))? {
                out.push(tok(Token::Comma));
                out.extend(item);
            }
        }
        out.push(tok(Token::RParen));
        out.push(tok(Token::RParen));
        out.push(tok(Token::Whitespace(Whitespace::Space)));
        out.extend(self.constraint);
        out.push(tok(Token::Whitespace(Whitespace::Space)));
        Ok(())
    }
}

/// Splits `tokens` at the commas at depth 0.
fn split_commas(tokens: &[TokenWithSpan]) -> Vec<&[TokenWithSpan]> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                items.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tokens[start..]);
    items
}

const AGGREGATES_SYNTAX: &str = "AGGREGATES (<function>(<column> | *) OVER <width> AS <name>, …), \
                                 e.g. AGGREGATES (count(*) OVER INTERVAL '7 days' AS trips_7d)";

/// `(f(x) OVER w AS n, …)` → per aggregate the marker arguments `'n', 'f', star, (x) | NULL,
/// (k) | NULL, (w)`: its name (in double quotes if it was quoted), the function as written
/// (`count_distinct` for `count(DISTINCT x)`), whether the argument is `*`, the argument, the
/// count of `last(x, k)` and the width.
fn aggregate_items(tokens: &[TokenWithSpan]) -> Result<Vec<Vec<TokenWithSpan>>, PitlakeError> {
    let inner = match tokens {
        [open, inner @ .., close]
            if open.token == Token::LParen && close.token == Token::RParen =>
        {
            trim(inner)
        }
        _ => return Err(syntax(AGGREGATES_SYNTAX, tokens.first())),
    };
    if inner.is_empty() {
        return Err(syntax(
            format!("AGGREGATES needs at least one aggregate: {AGGREGATES_SYNTAX}"),
            tokens.first(),
        ));
    }
    let items: Vec<(String, Vec<TokenWithSpan>)> = split_commas(inner)
        .into_iter()
        .map(|item| aggregate_item(trim(item), tokens.first()))
        .collect::<Result<_, _>>()?;
    for (i, (name, _)) in items.iter().enumerate() {
        if items[..i].iter().any(|(other, _)| other == name) {
            return Err(syntax(
                format!("AGGREGATES names `{}` twice", name.trim_matches('"')),
                tokens.first(),
            ));
        }
    }
    Ok(items.into_iter().map(|(_, item)| item).collect())
}

/// One aggregate's marker arguments and its name as compared for duplicates (lower-cased unless
/// quoted).
fn aggregate_item(
    item: &[TokenWithSpan],
    clause: Option<&TokenWithSpan>,
) -> Result<(String, Vec<TokenWithSpan>), PitlakeError> {
    let at = item.first().or(clause);
    let err = |what: &str| syntax(format!("{what}: {AGGREGATES_SYNTAX}"), at);
    let sig: Vec<usize> = (0..item.len())
        .filter(|&i| significant(&item[i].token))
        .collect();
    // f ( … ) OVER … AS name
    let [f, open, ..] = sig.as_slice() else {
        return Err(err("an aggregate needs a function call"));
    };
    let Token::Word(function) = &item[*f].token else {
        return Err(err("an aggregate starts with its function's name"));
    };
    if item[*open].token != Token::LParen {
        return Err(err(&format!("expected ( after {}", function.value)));
    }
    let close = matching_paren(item, *open)?;
    let over = next_sig(item, close);
    if !item
        .get(over)
        .is_some_and(|t| is_keyword(&t.token, Keyword::OVER))
    {
        return Err(err(&format!(
            "{}(…) needs OVER and the window's width",
            function.value
        )));
    }
    let &[.., as_kw, name_at] = sig.as_slice() else {
        return Err(err("an aggregate needs AS and a name"));
    };
    let Token::Word(name) = &item[name_at].token else {
        return Err(err("an aggregate needs AS and a name"));
    };
    if as_kw <= over || !is_keyword(&item[as_kw].token, Keyword::AS) {
        return Err(err(&format!(
            "{}(…) OVER … needs AS and a name",
            function.value
        )));
    }
    let width = trim(&item[over + 1..as_kw]);
    if width.is_empty() {
        return Err(err("OVER needs the window's width"));
    }
    let args = trim(&item[*open + 1..close - 1]);
    let mut parts = split_commas(args).into_iter().map(trim);
    let mut first = parts.next().unwrap_or_default();
    let mut function_name = function.value.clone();
    if first
        .first()
        .is_some_and(|t| is_keyword(&t.token, Keyword::DISTINCT))
    {
        if !function.value.eq_ignore_ascii_case("count") {
            return Err(err(&format!(
                "DISTINCT is only for count; {}(DISTINCT …) has no meaning here",
                function.value
            )));
        }
        function_name = "count_distinct".to_string();
        first = trim(&first[1..]);
    }
    let star = matches!(first, [t] if t.token == Token::Mul);
    let k = parts.next().unwrap_or_default();
    if parts.next().is_some() {
        return Err(err(&format!(
            "{}(…) takes at most two arguments",
            function.value
        )));
    }
    let name_text = match name.quote_style {
        Some(_) => format!("\"{}\"", name.value),
        None => name.value.clone(),
    };
    let mut out = vec![
        string(&name_text),
        tok(Token::Comma),
        string(&function_name),
        tok(Token::Comma),
        word(if star { "TRUE" } else { "FALSE" }),
        tok(Token::Comma),
    ];
    if star {
        out.push(word("NULL"));
    } else {
        out.extend(parenthesized_or_null(&rewrite_range(first)?));
    }
    out.push(tok(Token::Comma));
    out.extend(parenthesized_or_null(k));
    out.push(tok(Token::Comma));
    out.extend(parenthesized_or_null(&rewrite_range(width)?));
    let compared = match name.quote_style {
        Some(_) => name_text,
        None => name.value.to_lowercase(),
    };
    Ok((compared, out))
}

fn asof_needs_condition(at: Option<&TokenWithSpan>) -> PitlakeError {
    syntax(
        "ASOF JOIN needs a match condition: `MATCH_CONDITION (l.t >= r.t)` (optionally with ON \
         or USING for the keys), or DuckDB's `ON l.k = r.k AND l.t >= r.t` / `USING (k, t)`",
        at,
    )
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
    fn aggregates_become_marker_arguments() {
        let out = rewritten(
            "select * from l asof left join r on l.k = r.k and l.t >= r.t \
             aggregates (count(*) over interval '7 days' as n, last(r.v, 3) over 10 as \"Last\", \
             count(distinct r.v) over 5 as d) where x",
        );
        assert!(
            out.contains(
                "'__pitlake_aggregates','n','count',TRUE,NULL,NULL,(interval '7 days'),\
                 '\"Last\"','last',FALSE,(r.v),(3),(10),'d','count_distinct',FALSE,(r.v),NULL,(5)))"
            ),
            "{out}"
        );
        assert!(out.ends_with("where x"), "{out}");
        for bad in [
            "aggregates (count(*) over interval '1 day')",
            "aggregates (count(*) as n)",
            "aggregates ()",
            "aggregates (sum(distinct r.v) over 3 as s)",
            "aggregates (last(r.v, 1, 2) over 3 as s)",
        ] {
            let sql = format!("select * from l asof join r on l.k = r.k and l.t >= r.t {bad}");
            let err = rewrite_tokens(tokenize(&sql).unwrap()).unwrap_err();
            assert!(err.to_string().contains("AGGREGATES"), "{bad}: {err}");
        }
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
