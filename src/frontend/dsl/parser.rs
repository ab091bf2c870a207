//! The small parser the DSL's statements share: sqlparser's parser plus the DSL's words
//! (unquoted, case-insensitive, not SQL keywords), names, strings, versions and clauses.

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Word};

use super::{FeatureItem, SourceSql};
use crate::error::{PitlakeError, Result};
use crate::registry::Kind;

/// sqlparser's parser over one statement's tokens.
pub(super) struct DslParser<'a> {
    pub(super) p: Parser<'a>,
}

/// A sqlparser error as a syntax error.
pub(super) fn syntax(e: ParserError) -> PitlakeError {
    PitlakeError::Syntax(e.to_string())
}

impl DslParser<'_> {
    /// Consumes the word `w` if it comes next.
    pub(super) fn word(&mut self, w: &str) -> bool {
        match &self.p.peek_token().token {
            Token::Word(Word {
                value,
                quote_style: None,
                ..
            }) if value.eq_ignore_ascii_case(w) => {
                self.p.next_token();
                true
            }
            _ => false,
        }
    }

    /// Consumes the words if they all come next; otherwise consumes nothing.
    pub(super) fn words(&mut self, ws: &[&str]) -> bool {
        let all = ws.iter().enumerate().all(|(n, w)| {
            matches!(
                &self.p.peek_nth_token(n).token,
                Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(w)
            )
        });
        if all {
            for _ in ws {
                self.p.next_token();
            }
        }
        all
    }

    pub(super) fn expect_word(&mut self, w: &str) -> Result<()> {
        if self.word(w) {
            Ok(())
        } else {
            Err(PitlakeError::Syntax(format!(
                "expected {w}, found {}",
                self.p.peek_token()
            )))
        }
    }

    pub(super) fn expect_token(&mut self, token: &Token) -> Result<()> {
        self.p.expect_token(token).map(|_| ()).map_err(syntax)
    }

    pub(super) fn expect_keyword(&mut self, keyword: Keyword) -> Result<()> {
        self.p.expect_keyword(keyword).map(|_| ()).map_err(syntax)
    }

    /// An identifier, lower-cased unless quoted.
    pub(super) fn name(&mut self) -> Result<String> {
        let ident = self.p.parse_identifier().map_err(syntax)?;
        Ok(normalize(&ident))
    }

    pub(super) fn string(&mut self) -> Result<String> {
        self.p.parse_literal_string().map_err(syntax)
    }

    /// `ENTITY`, `FEATURE VIEW`, `FEATURE SERVICE` or `MODEL`.
    pub(super) fn kind(&mut self) -> Result<Kind> {
        if self.word("ENTITY") {
            Ok(Kind::Entity)
        } else if self.words(&["FEATURE", "VIEW"]) {
            Ok(Kind::FeatureView)
        } else if self.words(&["FEATURE", "SERVICE"]) {
            Ok(Kind::FeatureService)
        } else if self.word("MODEL") {
            Ok(Kind::Model)
        } else {
            Err(PitlakeError::Syntax(format!(
                "expected ENTITY, FEATURE VIEW, FEATURE SERVICE or MODEL, found {}",
                self.p.peek_token()
            )))
        }
    }

    /// `VERSION 'v'` after a model's name.
    pub(super) fn model_version(&mut self, kind: Kind) -> Result<Option<String>> {
        if kind == Kind::Model && self.p.parse_keyword(Keyword::VERSION) {
            Ok(Some(self.version_literal()?))
        } else {
            Ok(None)
        }
    }

    /// A model version: `'1.2'` or a bare number.
    pub(super) fn version_literal(&mut self) -> Result<String> {
        match self.p.next_token().token {
            Token::SingleQuotedString(s) => Ok(s),
            Token::Number(n, _) => Ok(n),
            Token::Word(w) => Ok(w.value),
            other => Err(PitlakeError::Syntax(format!(
                "expected a model version ('1' or 1), found {other}"
            ))),
        }
    }

    /// `AS OF REGISTRY VERSION n`, if it comes next.
    pub(super) fn registry_version(&mut self) -> Result<Option<i64>> {
        if self.words(&["AS", "OF", "REGISTRY", "VERSION"]) {
            Ok(Some(self.integer()?))
        } else {
            Ok(None)
        }
    }

    pub(super) fn integer(&mut self) -> Result<i64> {
        let value = self.p.parse_literal_uint().map_err(syntax)?;
        i64::try_from(value).map_err(|_| PitlakeError::Syntax(format!("{value} is too large")))
    }

    /// A table (`name [VERSION AS OF n]`) or a parenthesized query.
    pub(super) fn source(&mut self) -> Result<SourceSql> {
        if self.p.consume_token(&Token::LParen) {
            let mut query = self.p.parse_query().map_err(syntax)?;
            crate::frontend::bounds::check_nesting(&mut *query)?;
            self.expect_token(&Token::RParen)?;
            return Ok(SourceSql::Query(query.to_string()));
        }
        let name = self.p.parse_object_name(false).map_err(syntax)?;
        let version = if self.words(&["VERSION", "AS", "OF"]) {
            Some(self.integer()?)
        } else {
            None
        };
        Ok(SourceSql::Table {
            name: object_name(&name),
            version,
        })
    }

    /// A feature list: `view.*`, `view.feature`, `SERVICE name`, separated by commas.
    pub(super) fn items(&mut self) -> Result<Vec<FeatureItem>> {
        let mut items = Vec::new();
        loop {
            if self.word("SERVICE") {
                items.push(FeatureItem::Service(self.name()?));
            } else {
                let view = self.name()?;
                self.expect_token(&Token::Period)?;
                if self.p.consume_token(&Token::Mul) {
                    items.push(FeatureItem::View(view));
                } else {
                    items.push(FeatureItem::Feature(view, self.name()?));
                }
            }
            if !self.p.consume_token(&Token::Comma) {
                return Ok(items);
            }
        }
    }

    /// `COMMENT '…'`, if it comes next.
    pub(super) fn comment(&mut self) -> Result<Option<String>> {
        if self.p.parse_keyword(Keyword::COMMENT) {
            Ok(Some(self.string()?))
        } else {
            Ok(None)
        }
    }

    /// `( item, … )`: `item` parses one element.
    pub(super) fn parenthesized<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.expect_token(&Token::LParen)?;
        let mut list = Vec::new();
        loop {
            list.push(item(self)?);
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        self.expect_token(&Token::RParen)?;
        Ok(list)
    }

    /// The end of the statement.
    pub(super) fn end(&mut self) -> Result<()> {
        match self.p.peek_token().token {
            Token::EOF => Ok(()),
            other => Err(PitlakeError::Syntax(format!(
                "unexpected {other} at the end of the statement"
            ))),
        }
    }
}

fn normalize(ident: &Ident) -> String {
    if ident.quote_style.is_none() {
        ident.value.to_lowercase()
    } else {
        ident.value.clone()
    }
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) if ident.quote_style.is_some() => {
                format!("\"{}\"", ident.value.replace('"', "\"\""))
            }
            ObjectNamePart::Identifier(ident) => ident.value.to_lowercase(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}
