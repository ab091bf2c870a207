//! pitlake's point-in-time DSL: SQL-shaped statements for the feature registry and training sets
//! (the grammar, with examples, is docs/dsl.md). Parsed with sqlparser's parser, so names,
//! strings, types, expressions and subqueries follow the SQL dialect exactly.

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Word};

use crate::error::{PitlakeError, Result};
use crate::frontend::dialect::PitlakeDialect;
use crate::registry::Kind;

/// A relation a feature view or a training set reads: a table (maybe pinned) or a query.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSql {
    /// A warehouse table.
    Table {
        /// The table name as written (normalized).
        name: String,
        /// `VERSION AS OF n`.
        version: Option<i64>,
    },
    /// `(SELECT …)`.
    Query(String),
}

/// A feature column in `CREATE FEATURE VIEW … FEATURES (…)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSql {
    /// The source column.
    pub name: String,
    /// The declared SQL type, if given (checked against the source).
    pub data_type: Option<String>,
    /// `COMMENT '…'`.
    pub comment: Option<String>,
}

/// One item of a feature list: `view.*`, `view.feature` or `SERVICE name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureItem {
    /// Every feature of a view.
    View(String),
    /// One feature of a view.
    Feature(String, String),
    /// Every feature of a service.
    Service(String),
}

/// What a training set adds besides the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainingOptions {
    /// Per view, the matched row's event time (`<view>__event_time`).
    pub event_times: bool,
    /// Per view, the Delta version of the source table read (`<view>__table_version`).
    pub versions: bool,
    /// Use a value only if it was known (created) by the label time. On by default.
    pub knowledge_time: bool,
}

impl Default for TrainingOptions {
    fn default() -> Self {
        Self {
            event_times: false,
            versions: false,
            knowledge_time: true,
        }
    }
}

/// `TRAINING SET LABELS … AT … FEATURES …`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSetSql {
    /// The label relation.
    pub labels: SourceSql,
    /// The label-time column.
    pub at: String,
    /// The features.
    pub items: Vec<FeatureItem>,
    /// Extra columns and semantics.
    pub options: TrainingOptions,
}

/// A DSL statement.
#[derive(Debug, Clone, PartialEq)]
pub enum DslStatement {
    /// `CREATE [OR REPLACE] ENTITY name (key TYPE, …) [COMMENT '…']`.
    CreateEntity {
        /// `OR REPLACE`.
        or_replace: bool,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
        /// The entity's name.
        name: String,
        /// Join keys with their SQL types.
        keys: Vec<(String, String)>,
        /// `COMMENT`.
        comment: Option<String>,
    },
    /// `CREATE [OR REPLACE] FEATURE VIEW name ENTITY … FROM … EVENT TIME … FEATURES (…) …`.
    CreateFeatureView {
        /// `OR REPLACE`.
        or_replace: bool,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
        /// The view's name.
        name: String,
        /// `ENTITY`.
        entity: String,
        /// `FROM`.
        source: SourceSql,
        /// `EVENT TIME column`.
        event_time: String,
        /// `CREATED TIME column`.
        created_time: Option<String>,
        /// `TTL expr` (an interval), as SQL.
        ttl: Option<String>,
        /// `FEATURES (…)`.
        features: Vec<FeatureSql>,
        /// `OWNER '…'`.
        owner: Option<String>,
        /// `TAGS ('k' = 'v', …)`.
        tags: Vec<(String, String)>,
        /// `COMMENT '…'`.
        comment: Option<String>,
    },
    /// `CREATE [OR REPLACE] FEATURE SERVICE name (items) [COMMENT '…']`.
    CreateFeatureService {
        /// `OR REPLACE`.
        or_replace: bool,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
        /// The service's name.
        name: String,
        /// Its features.
        items: Vec<FeatureItem>,
        /// `COMMENT`.
        comment: Option<String>,
    },
    /// `REGISTER [OR REPLACE] MODEL name VERSION 'v' SERVICE s [TRAINING SET 'manifest'] …`.
    RegisterModel {
        /// `OR REPLACE`.
        or_replace: bool,
        /// The model's name.
        name: String,
        /// Its version.
        version: String,
        /// The feature service.
        service: String,
        /// The training-set manifest.
        training_set: Option<String>,
        /// `ARTIFACT '…'`.
        artifact: Option<String>,
        /// `METADATA '{json}'`.
        metadata: Option<String>,
        /// `COMMENT`.
        comment: Option<String>,
    },
    /// `DROP ENTITY|FEATURE VIEW|FEATURE SERVICE|MODEL [IF EXISTS] name [VERSION 'v']`.
    Drop {
        /// What.
        kind: Kind,
        /// Its name.
        name: String,
        /// A model version.
        version: Option<String>,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `SHOW ENTITIES | FEATURE VIEWS | FEATURE SERVICES | MODELS [AS OF REGISTRY VERSION n]`.
    Show {
        /// What.
        kind: Kind,
        /// `AS OF REGISTRY VERSION n`.
        at: Option<i64>,
    },
    /// `DESCRIBE ENTITY|FEATURE VIEW|… name [VERSION 'v'] [AS OF REGISTRY VERSION n]`.
    Describe {
        /// What.
        kind: Kind,
        /// Its name.
        name: String,
        /// A model version.
        version: Option<String>,
        /// `AS OF REGISTRY VERSION n`.
        at: Option<i64>,
    },
    /// `SHOW HISTORY OF ENTITY|… name [VERSION 'v']`.
    History {
        /// What.
        kind: Kind,
        /// Its name.
        name: String,
        /// A model version.
        version: Option<String>,
    },
    /// `SHOW DIFF OF … name BETWEEN REGISTRY VERSION a AND b`.
    Diff {
        /// What.
        kind: Kind,
        /// Its name.
        name: String,
        /// A model version.
        version: Option<String>,
        /// The older registry version.
        from: i64,
        /// The newer one.
        to: i64,
    },
    /// `TRAINING SET …`: rows, one per label row.
    TrainingSet(TrainingSetSql),
    /// `EXPORT TRAINING SET … TO 'url' [FORMAT parquet|csv|delta]`.
    Export {
        /// The training set.
        training_set: TrainingSetSql,
        /// Where to write it.
        to: String,
        /// The format (`parquet` when omitted, or from the extension).
        format: Option<String>,
    },
}

fn words(tokens: &[TokenWithSpan]) -> Vec<String> {
    tokens
        .iter()
        .filter_map(|t| match &t.token {
            Token::Word(Word {
                value,
                quote_style: None,
                ..
            }) => Some(value.to_ascii_uppercase()),
            Token::Whitespace(_) => None,
            _ => Some(String::new()),
        })
        .take(5)
        .collect()
}

/// Whether the tokens start a DSL statement.
pub fn is_dsl(tokens: &[TokenWithSpan]) -> bool {
    let w = words(tokens);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let after_create = match w.as_slice() {
        ["CREATE", "OR", "REPLACE", rest @ ..] => rest,
        ["CREATE", rest @ ..] => rest,
        _ => &[][..],
    };
    matches!(
        after_create,
        ["ENTITY", ..] | ["FEATURE", "VIEW", ..] | ["FEATURE", "SERVICE", ..]
    ) || matches!(
        w.as_slice(),
        ["REGISTER", ..]
            | ["DROP", "ENTITY", ..]
            | ["DROP", "FEATURE", "VIEW" | "SERVICE", ..]
            | ["DROP", "MODEL", ..]
            | ["SHOW", "ENTITIES" | "MODELS", ..]
            | ["SHOW", "FEATURE", "VIEWS" | "SERVICES", ..]
            | ["SHOW", "HISTORY" | "DIFF", "OF", ..]
            | ["DESCRIBE" | "DESC", "ENTITY" | "MODEL", ..]
            | ["DESCRIBE" | "DESC", "FEATURE", "VIEW" | "SERVICE", ..]
            | ["TRAINING", "SET", ..]
            | ["EXPORT", "TRAINING", "SET", ..]
    )
}

struct DslParser<'a> {
    p: Parser<'a>,
}

fn syntax(e: ParserError) -> PitlakeError {
    PitlakeError::Syntax(e.to_string())
}

impl DslParser<'_> {
    fn word(&mut self, w: &str) -> bool {
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
    fn words(&mut self, ws: &[&str]) -> bool {
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

    fn expect_word(&mut self, w: &str) -> Result<()> {
        if self.word(w) {
            Ok(())
        } else {
            Err(PitlakeError::Syntax(format!(
                "expected {w}, found {}",
                self.p.peek_token()
            )))
        }
    }

    fn name(&mut self) -> Result<String> {
        let ident = self.p.parse_identifier().map_err(syntax)?;
        Ok(normalize(&ident))
    }

    fn string(&mut self) -> Result<String> {
        self.p.parse_literal_string().map_err(syntax)
    }

    fn kind(&mut self) -> Result<Kind> {
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

    fn model_version(&mut self, kind: Kind) -> Result<Option<String>> {
        if kind == Kind::Model && self.p.parse_keyword(Keyword::VERSION) {
            Ok(Some(self.version_literal()?))
        } else {
            Ok(None)
        }
    }

    /// A model version: `'1.2'` or a bare number.
    fn version_literal(&mut self) -> Result<String> {
        match self.p.next_token().token {
            Token::SingleQuotedString(s) => Ok(s),
            Token::Number(n, _) => Ok(n),
            Token::Word(w) => Ok(w.value),
            other => Err(PitlakeError::Syntax(format!(
                "expected a model version ('1' or 1), found {other}"
            ))),
        }
    }

    fn registry_version(&mut self) -> Result<Option<i64>> {
        if self.words(&["AS", "OF", "REGISTRY", "VERSION"]) {
            Ok(Some(self.integer()?))
        } else {
            Ok(None)
        }
    }

    fn integer(&mut self) -> Result<i64> {
        let value = self.p.parse_literal_uint().map_err(syntax)?;
        i64::try_from(value).map_err(|_| PitlakeError::Syntax(format!("{value} is too large")))
    }

    fn source(&mut self) -> Result<SourceSql> {
        if self.p.consume_token(&Token::LParen) {
            let mut query = self.p.parse_query().map_err(syntax)?;
            crate::frontend::bounds::check_nesting(&mut *query)?;
            self.p.expect_token(&Token::RParen).map_err(syntax)?;
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

    fn items(&mut self) -> Result<Vec<FeatureItem>> {
        let mut items = Vec::new();
        loop {
            if self.word("SERVICE") {
                items.push(FeatureItem::Service(self.name()?));
            } else {
                let view = self.name()?;
                self.p.expect_token(&Token::Period).map_err(syntax)?;
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

    fn end(&mut self) -> Result<()> {
        match self.p.peek_token().token {
            Token::EOF => Ok(()),
            other => Err(PitlakeError::Syntax(format!(
                "unexpected {other} at the end of the statement"
            ))),
        }
    }

    fn statement(&mut self) -> Result<DslStatement> {
        if self.p.parse_keyword(Keyword::CREATE) {
            let or_replace = self.p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
            let kind = self.kind()?;
            let if_not_exists =
                self.p
                    .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            if or_replace && if_not_exists {
                return Err(PitlakeError::Syntax(
                    "OR REPLACE and IF NOT EXISTS cannot be combined".into(),
                ));
            }
            let name = self.name()?;
            let statement = match kind {
                Kind::Entity => self.create_entity(or_replace, if_not_exists, name)?,
                Kind::FeatureView => self.create_view(or_replace, if_not_exists, name)?,
                Kind::FeatureService => {
                    self.p.expect_token(&Token::LParen).map_err(syntax)?;
                    let items = self.items()?;
                    self.p.expect_token(&Token::RParen).map_err(syntax)?;
                    let comment = self.comment()?;
                    DslStatement::CreateFeatureService {
                        or_replace,
                        if_not_exists,
                        name,
                        items,
                        comment,
                    }
                }
                Kind::Model => {
                    return Err(PitlakeError::Syntax(
                        "models are registered with REGISTER MODEL name VERSION 'v' SERVICE s"
                            .into(),
                    ));
                }
            };
            self.end()?;
            return Ok(statement);
        }
        if self.word("REGISTER") {
            let or_replace = self.p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
            self.expect_word("MODEL")?;
            let name = self.name()?;
            if !self.p.parse_keyword(Keyword::VERSION) {
                return Err(PitlakeError::Syntax(
                    "REGISTER MODEL needs VERSION '<version>'".into(),
                ));
            }
            let version = self.version_literal()?;
            let (mut service, mut training_set, mut artifact, mut metadata, mut comment) =
                (None, None, None, None, None);
            loop {
                if self.word("SERVICE") {
                    service = Some(self.name()?);
                } else if self.words(&["TRAINING", "SET"]) {
                    training_set = Some(self.string()?);
                } else if self.word("ARTIFACT") {
                    artifact = Some(self.string()?);
                } else if self.word("METADATA") {
                    metadata = Some(self.string()?);
                } else if self.p.parse_keyword(Keyword::COMMENT) {
                    comment = Some(self.string()?);
                } else {
                    break;
                }
            }
            self.end()?;
            let service = service.ok_or_else(|| {
                PitlakeError::Syntax(format!(
                    "REGISTER MODEL {name} needs SERVICE <feature service>: the features the \
                     model was trained with"
                ))
            })?;
            return Ok(DslStatement::RegisterModel {
                or_replace,
                name,
                version,
                service,
                training_set,
                artifact,
                metadata,
                comment,
            });
        }
        if self.p.parse_keyword(Keyword::DROP) {
            let kind = self.kind()?;
            let if_exists = self.p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = self.name()?;
            let version = self.model_version(kind)?;
            self.end()?;
            return Ok(DslStatement::Drop {
                kind,
                name,
                version,
                if_exists,
            });
        }
        if self.p.parse_keyword(Keyword::SHOW) {
            if self.word("HISTORY") {
                self.p.expect_keyword(Keyword::OF).map_err(syntax)?;
                let kind = self.kind()?;
                let name = self.name()?;
                let version = self.model_version(kind)?;
                self.end()?;
                return Ok(DslStatement::History {
                    kind,
                    name,
                    version,
                });
            }
            if self.word("DIFF") {
                self.p.expect_keyword(Keyword::OF).map_err(syntax)?;
                let kind = self.kind()?;
                let name = self.name()?;
                let version = self.model_version(kind)?;
                self.p.expect_keyword(Keyword::BETWEEN).map_err(syntax)?;
                let _ = self.words(&["REGISTRY", "VERSION"]);
                let from = self.integer()?;
                self.p.expect_keyword(Keyword::AND).map_err(syntax)?;
                let _ = self.words(&["REGISTRY", "VERSION"]);
                let to = self.integer()?;
                self.end()?;
                return Ok(DslStatement::Diff {
                    kind,
                    name,
                    version,
                    from,
                    to,
                });
            }
            let kind = if self.word("ENTITIES") {
                Kind::Entity
            } else if self.words(&["FEATURE", "VIEWS"]) {
                Kind::FeatureView
            } else if self.words(&["FEATURE", "SERVICES"]) {
                Kind::FeatureService
            } else if self.word("MODELS") {
                Kind::Model
            } else {
                return Err(PitlakeError::Syntax(format!(
                    "expected ENTITIES, FEATURE VIEWS, FEATURE SERVICES or MODELS, found {}",
                    self.p.peek_token()
                )));
            };
            let at = self.registry_version()?;
            self.end()?;
            return Ok(DslStatement::Show { kind, at });
        }
        if self.p.parse_keyword(Keyword::DESCRIBE) || self.p.parse_keyword(Keyword::DESC) {
            let kind = self.kind()?;
            let name = self.name()?;
            let version = self.model_version(kind)?;
            let at = self.registry_version()?;
            self.end()?;
            return Ok(DslStatement::Describe {
                kind,
                name,
                version,
                at,
            });
        }
        if self.word("EXPORT") {
            let training_set = self.training_set()?;
            self.p.expect_keyword(Keyword::TO).map_err(syntax)?;
            let to = self.string()?;
            let format = if self.p.parse_keyword(Keyword::FORMAT) {
                Some(self.name()?.to_ascii_lowercase())
            } else {
                None
            };
            self.end()?;
            return Ok(DslStatement::Export {
                training_set,
                to,
                format,
            });
        }
        let training_set = self.training_set()?;
        self.end()?;
        Ok(DslStatement::TrainingSet(training_set))
    }

    fn training_set(&mut self) -> Result<TrainingSetSql> {
        self.expect_word("TRAINING")?;
        self.p.expect_keyword(Keyword::SET).map_err(syntax)?;
        self.expect_word("LABELS")?;
        let labels = self.source()?;
        self.p.expect_keyword(Keyword::AT).map_err(syntax)?;
        let at = self.name()?;
        self.expect_word("FEATURES")?;
        // `FEATURES (a.*, b.c)`; the parentheses may be left out.
        let parenthesized = self.p.consume_token(&Token::LParen);
        let items = self.items()?;
        if parenthesized {
            self.p.expect_token(&Token::RParen).map_err(syntax)?;
        }
        let mut options = TrainingOptions::default();
        loop {
            if self.words(&["WITH", "EVENT", "TIMES"]) {
                options.event_times = true;
            } else if self.words(&["WITH", "VERSIONS"]) {
                options.versions = true;
            } else if self.words(&["WITHOUT", "KNOWLEDGE", "TIME"]) {
                options.knowledge_time = false;
            } else {
                break;
            }
        }
        Ok(TrainingSetSql {
            labels,
            at,
            items,
            options,
        })
    }

    fn comment(&mut self) -> Result<Option<String>> {
        if self.p.parse_keyword(Keyword::COMMENT) {
            Ok(Some(self.string()?))
        } else {
            Ok(None)
        }
    }

    fn create_entity(
        &mut self,
        or_replace: bool,
        if_not_exists: bool,
        name: String,
    ) -> Result<DslStatement> {
        self.p.expect_token(&Token::LParen).map_err(syntax)?;
        let mut keys = Vec::new();
        loop {
            let column = self.name()?;
            let data_type = self.p.parse_data_type().map_err(syntax)?;
            keys.push((column, data_type.to_string()));
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        self.p.expect_token(&Token::RParen).map_err(syntax)?;
        let comment = self.comment()?;
        Ok(DslStatement::CreateEntity {
            or_replace,
            if_not_exists,
            name,
            keys,
            comment,
        })
    }

    fn create_view(
        &mut self,
        or_replace: bool,
        if_not_exists: bool,
        name: String,
    ) -> Result<DslStatement> {
        let (mut entity, mut source, mut event_time, mut created_time, mut ttl) =
            (None, None, None, None, None);
        let (mut features, mut owner, mut tags, mut comment) = (None, None, Vec::new(), None);
        loop {
            if self.word("ENTITY") {
                entity = Some(self.name()?);
            } else if self.p.parse_keyword(Keyword::FROM) {
                source = Some(self.source()?);
            } else if self.words(&["EVENT", "TIME"]) {
                event_time = Some(self.name()?);
            } else if self.words(&["CREATED", "TIME"]) {
                created_time = Some(self.name()?);
            } else if self.word("TTL") {
                let mut expr = self.p.parse_expr().map_err(syntax)?;
                crate::frontend::bounds::check_nesting(&mut expr)?;
                // Evaluated while the view is defined, before any grant on it is checked.
                crate::frontend::bounds::ensure_constant(&expr, "TTL")?;
                ttl = Some(expr.to_string());
            } else if self.word("FEATURES") {
                self.p.expect_token(&Token::LParen).map_err(syntax)?;
                let mut list = Vec::new();
                loop {
                    let column = self.name()?;
                    let data_type = match self.p.peek_token().token {
                        Token::Comma | Token::RParen => None,
                        Token::Word(ref w) if w.keyword == Keyword::COMMENT => None,
                        _ => Some(self.p.parse_data_type().map_err(syntax)?.to_string()),
                    };
                    let comment = self.comment()?;
                    list.push(FeatureSql {
                        name: column,
                        data_type,
                        comment,
                    });
                    if !self.p.consume_token(&Token::Comma) {
                        break;
                    }
                }
                self.p.expect_token(&Token::RParen).map_err(syntax)?;
                features = Some(list);
            } else if self.word("OWNER") {
                owner = Some(self.string()?);
            } else if self.word("TAGS") {
                self.p.expect_token(&Token::LParen).map_err(syntax)?;
                loop {
                    let key = self.string()?;
                    self.p.expect_token(&Token::Eq).map_err(syntax)?;
                    tags.push((key, self.string()?));
                    if !self.p.consume_token(&Token::Comma) {
                        break;
                    }
                }
                self.p.expect_token(&Token::RParen).map_err(syntax)?;
            } else if self.p.parse_keyword(Keyword::COMMENT) {
                comment = Some(self.string()?);
            } else {
                break;
            }
        }
        let missing = |what: &str| {
            PitlakeError::Syntax(format!(
                "CREATE FEATURE VIEW {name} needs {what} (see docs/dsl.md)"
            ))
        };
        Ok(DslStatement::CreateFeatureView {
            or_replace,
            if_not_exists,
            entity: entity.ok_or_else(|| missing("ENTITY <entity>"))?,
            source: source.ok_or_else(|| missing("FROM <table or (query)>"))?,
            event_time: event_time.ok_or_else(|| missing("EVENT TIME <column>"))?,
            created_time,
            ttl,
            features: features.ok_or_else(|| missing("FEATURES (<column> [TYPE], …)"))?,
            owner,
            tags,
            comment,
            name,
        })
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

/// Parses the tokens of one DSL statement.
pub fn parse_dsl(tokens: Vec<TokenWithSpan>) -> Result<DslStatement> {
    let dialect = PitlakeDialect::default();
    let mut parser = DslParser {
        p: Parser::new(&dialect).with_tokens_with_locations(tokens),
    };
    parser.statement()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::parse::tokenize;

    fn parse(sql: &str) -> DslStatement {
        let tokens = tokenize(sql).unwrap();
        assert!(is_dsl(&tokens), "{sql}");
        parse_dsl(tokens).unwrap()
    }

    #[test]
    fn parses_a_feature_view() {
        let s = parse(
            "CREATE OR REPLACE FEATURE VIEW Driver_Stats ENTITY driver \
             FROM features.driver_hourly_stats VERSION AS OF 3 EVENT TIME event_ts \
             CREATED TIME created_ts TTL INTERVAL '2 hours' \
             FEATURES (conv_rate DOUBLE COMMENT 'rate', acc_rate, trips BIGINT) \
             OWNER 'ml' TAGS ('team' = 'pricing') COMMENT 'hourly'",
        );
        let DslStatement::CreateFeatureView {
            or_replace,
            name,
            source,
            ttl,
            features,
            tags,
            ..
        } = s
        else {
            panic!("{s:?}")
        };
        assert!(or_replace);
        assert_eq!(name, "driver_stats");
        assert_eq!(
            source,
            SourceSql::Table {
                name: "features.driver_hourly_stats".into(),
                version: Some(3)
            }
        );
        assert_eq!(ttl.as_deref(), Some("INTERVAL '2 hours'"));
        assert_eq!(features.len(), 3);
        assert_eq!(features[1].data_type, None);
        assert_eq!(features[0].comment.as_deref(), Some("rate"));
        assert_eq!(tags, vec![("team".into(), "pricing".into())]);
    }

    #[test]
    fn parses_training_sets_and_the_rest() {
        let s = parse(
            "EXPORT TRAINING SET LABELS (SELECT * FROM orders WHERE label) AT event_ts \
             FEATURES driver_stats.*, customer.balance, SERVICE churn WITH EVENT TIMES \
             WITHOUT KNOWLEDGE TIME TO '/tmp/x.parquet' FORMAT parquet",
        );
        let DslStatement::Export {
            training_set, to, ..
        } = s
        else {
            panic!()
        };
        assert_eq!(to, "/tmp/x.parquet");
        assert_eq!(training_set.items.len(), 3);
        assert!(training_set.options.event_times && !training_set.options.knowledge_time);
        assert!(matches!(
            parse("SHOW FEATURE VIEWS AS OF REGISTRY VERSION 2"),
            DslStatement::Show {
                kind: Kind::FeatureView,
                at: Some(2)
            }
        ));
        assert!(matches!(
            parse("DROP MODEL IF EXISTS churn VERSION '2'"),
            DslStatement::Drop {
                kind: Kind::Model,
                if_exists: true,
                ..
            }
        ));
        assert!(matches!(
            parse("SHOW DIFF OF FEATURE VIEW v BETWEEN 1 AND 3"),
            DslStatement::Diff { from: 1, to: 3, .. }
        ));
        assert!(!is_dsl(&tokenize("SELECT 1").unwrap()));
        assert!(!is_dsl(&tokenize("CREATE TABLE t AS SELECT 1").unwrap()));
    }

    #[test]
    fn missing_clauses_are_named() {
        let err =
            parse_dsl(tokenize("CREATE FEATURE VIEW v ENTITY e FROM t").unwrap()).unwrap_err();
        assert!(err.to_string().contains("needs EVENT TIME"), "{err}");
    }
}
