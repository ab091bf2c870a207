//! The statements that define registry objects: `CREATE ENTITY`, `CREATE FEATURE VIEW`,
//! `CREATE FEATURE SERVICE` and `REGISTER MODEL`.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

use super::parser::{DslParser, syntax};
use super::{AggregateSql, CreateMode, DslStatement, FeatureItem, FeatureSql, SourceSql};
use crate::error::{PitlakeError, Result};
use crate::registry::{Kind, Model};

/// `CREATE [OR REPLACE] ENTITY [IF NOT EXISTS] name (key TYPE, …) [COMMENT '…']`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateEntity {
    /// `OR REPLACE` / `IF NOT EXISTS`.
    pub mode: CreateMode,
    /// The entity's name.
    pub name: String,
    /// Join keys with their SQL types.
    pub keys: Vec<(String, String)>,
    /// `COMMENT`.
    pub comment: Option<String>,
}

/// `CREATE [OR REPLACE] FEATURE VIEW name ENTITY … FROM … EVENT TIME … FEATURES (…) …`; the
/// clauses after the name come in any order.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateFeatureView {
    /// `OR REPLACE` / `IF NOT EXISTS`.
    pub mode: CreateMode,
    /// The view's name.
    pub name: String,
    /// `ENTITY`.
    pub entity: String,
    /// `FROM`.
    pub source: SourceSql,
    /// `EVENT TIME column`.
    pub event_time: String,
    /// `CREATED TIME column`.
    pub created_time: Option<String>,
    /// `TTL expr` (a constant interval or number of seconds), as SQL.
    pub ttl: Option<String>,
    /// `FEATURES (…)`.
    pub features: Vec<FeatureSql>,
    /// `AGGREGATES (…)`.
    pub aggregates: Vec<AggregateSql>,
    /// `WINDOWS EXCLUSIVE`: windows `[t - d, t)` instead of `(t - d, t]`.
    pub windows_exclusive: bool,
    /// `OWNER '…'`.
    pub owner: Option<String>,
    /// `TAGS ('k' = 'v', …)`.
    pub tags: Vec<(String, String)>,
    /// `COMMENT '…'`.
    pub comment: Option<String>,
}

/// `CREATE [OR REPLACE] FEATURE SERVICE name (items) [COMMENT '…']`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateFeatureService {
    /// `OR REPLACE` / `IF NOT EXISTS`.
    pub mode: CreateMode,
    /// The service's name.
    pub name: String,
    /// Its features.
    pub items: Vec<FeatureItem>,
    /// `COMMENT`.
    pub comment: Option<String>,
}

/// `REGISTER [OR REPLACE] MODEL name VERSION 'v' SERVICE s [TRAINING SET 'manifest']
/// [ARTIFACT '…'] [METADATA '{json}'] [COMMENT '…']`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterModel {
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// The model as it will be registered (its METADATA checked to be JSON).
    pub model: Model,
}

/// `CREATE [OR REPLACE] <kind> [IF NOT EXISTS] name …`, after `CREATE`.
pub(super) fn create(p: &mut DslParser<'_>) -> Result<DslStatement> {
    let or_replace = p.p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
    let kind = p.kind()?;
    let if_not_exists =
        p.p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    if or_replace && if_not_exists {
        return Err(PitlakeError::Syntax(
            "OR REPLACE and IF NOT EXISTS cannot be combined".into(),
        ));
    }
    let mode = CreateMode {
        or_replace,
        if_not_exists,
    };
    let name = p.name()?;
    match kind {
        Kind::Entity => CreateEntity::parse(p, mode, name).map(DslStatement::CreateEntity),
        Kind::FeatureView => {
            CreateFeatureView::parse(p, mode, name).map(DslStatement::CreateFeatureView)
        }
        Kind::FeatureService => {
            CreateFeatureService::parse(p, mode, name).map(DslStatement::CreateFeatureService)
        }
        Kind::Model => Err(PitlakeError::Syntax(
            "models are registered with REGISTER MODEL name VERSION 'v' SERVICE s".into(),
        )),
    }
}

impl CreateEntity {
    fn parse(p: &mut DslParser<'_>, mode: CreateMode, name: String) -> Result<Self> {
        let keys = p.parenthesized(|p| {
            let column = p.name()?;
            let data_type = p.p.parse_data_type().map_err(syntax)?;
            Ok((column, data_type.to_string()))
        })?;
        Ok(Self {
            mode,
            name,
            keys,
            comment: p.comment()?,
        })
    }
}

impl CreateFeatureService {
    fn parse(p: &mut DslParser<'_>, mode: CreateMode, name: String) -> Result<Self> {
        p.expect_token(&Token::LParen)?;
        let items = p.items()?;
        p.expect_token(&Token::RParen)?;
        Ok(Self {
            mode,
            name,
            items,
            comment: p.comment()?,
        })
    }
}

/// The clauses of a feature view, as they are found.
#[derive(Default)]
struct ViewClauses {
    entity: Option<String>,
    source: Option<SourceSql>,
    event_time: Option<String>,
    created_time: Option<String>,
    ttl: Option<String>,
    features: Option<Vec<FeatureSql>>,
    aggregates: Option<Vec<AggregateSql>>,
    windows_exclusive: bool,
    owner: Option<String>,
    tags: Vec<(String, String)>,
    comment: Option<String>,
}

impl CreateFeatureView {
    fn parse(p: &mut DslParser<'_>, mode: CreateMode, name: String) -> Result<Self> {
        let mut c = ViewClauses::default();
        while Self::clause(p, &mut c)? {}
        let missing = |what: &str| {
            PitlakeError::Syntax(format!(
                "CREATE FEATURE VIEW {name} needs {what} (see docs/dsl.md)"
            ))
        };
        Ok(Self {
            mode,
            entity: c.entity.ok_or_else(|| missing("ENTITY <entity>"))?,
            source: c.source.ok_or_else(|| missing("FROM <table or (query)>"))?,
            event_time: c.event_time.ok_or_else(|| missing("EVENT TIME <column>"))?,
            created_time: c.created_time,
            ttl: c.ttl,
            features: match (c.features, &c.aggregates) {
                (Some(features), _) => features,
                (None, Some(_)) => Vec::new(),
                (None, None) => {
                    return Err(missing(
                        "FEATURES (<column> [TYPE], …) or AGGREGATES (<function>(<column>) OVER \
                         <width> AS <name>, …)",
                    ));
                }
            },
            aggregates: c.aggregates.unwrap_or_default(),
            windows_exclusive: c.windows_exclusive,
            owner: c.owner,
            tags: c.tags,
            comment: c.comment,
            name,
        })
    }

    /// Parses one clause into `c`; false when none comes next.
    fn clause(p: &mut DslParser<'_>, c: &mut ViewClauses) -> Result<bool> {
        if p.word("ENTITY") {
            c.entity = Some(p.name()?);
        } else if p.p.parse_keyword(Keyword::FROM) {
            c.source = Some(p.source()?);
        } else if p.words(&["EVENT", "TIME"]) {
            c.event_time = Some(p.name()?);
        } else if p.words(&["CREATED", "TIME"]) {
            c.created_time = Some(p.name()?);
        } else if p.word("TTL") {
            let mut expr = p.p.parse_expr().map_err(syntax)?;
            crate::frontend::bounds::check_nesting(&mut expr)?;
            // Evaluated while the view is defined, before any grant on it is checked.
            crate::frontend::bounds::ensure_constant(&expr, "TTL")?;
            c.ttl = Some(expr.to_string());
        } else if p.word("FEATURES") {
            c.features = Some(p.parenthesized(Self::feature)?);
        } else if p.word("AGGREGATES") {
            c.aggregates = Some(p.parenthesized(Self::aggregate)?);
        } else if p.words(&["WINDOWS", "EXCLUSIVE"]) {
            c.windows_exclusive = true;
        } else if p.word("OWNER") {
            c.owner = Some(p.string()?);
        } else if p.word("TAGS") {
            c.tags = p.parenthesized(|p| {
                let key = p.string()?;
                p.expect_token(&Token::Eq)?;
                Ok((key, p.string()?))
            })?;
        } else if p.p.parse_keyword(Keyword::COMMENT) {
            c.comment = Some(p.string()?);
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// `function(column | * | DISTINCT column [, k]) OVER width AS name`.
    fn aggregate(p: &mut DslParser<'_>) -> Result<AggregateSql> {
        let mut function = p.name()?;
        p.expect_token(&Token::LParen)?;
        let column = if p.p.consume_token(&Token::Mul) {
            None
        } else {
            if p.p.parse_keyword(Keyword::DISTINCT) {
                if function != "count" {
                    return Err(PitlakeError::Syntax(format!(
                        "DISTINCT is only for count; {function}(DISTINCT …) has no meaning here"
                    )));
                }
                function = "count_distinct".into();
            }
            Some(p.name()?)
        };
        let k = if p.p.consume_token(&Token::Comma) {
            match p.p.next_token().token {
                Token::Number(n, _) => Some(n.parse::<usize>().map_err(|_| {
                    PitlakeError::Syntax(format!(
                        "{function}(x, k): k must be a whole number, not {n}"
                    ))
                })?),
                other => {
                    return Err(PitlakeError::Syntax(format!(
                        "{function}(x, k): k must be a whole number, not {other}"
                    )));
                }
            }
        } else {
            None
        };
        p.expect_token(&Token::RParen)?;
        if !p.p.parse_keyword(Keyword::OVER) {
            return Err(PitlakeError::Syntax(format!(
                "{function}(…) needs OVER and the window's width, e.g. OVER INTERVAL '7 days'"
            )));
        }
        let mut width = p.p.parse_expr().map_err(syntax)?;
        crate::frontend::bounds::check_nesting(&mut width)?;
        // Evaluated while the view is defined, before any grant on it is checked.
        crate::frontend::bounds::ensure_constant(&width, "a window's width")?;
        if !p.p.parse_keyword(Keyword::AS) {
            return Err(PitlakeError::Syntax(format!(
                "{function}(…) OVER {width} needs AS and the feature's name"
            )));
        }
        Ok(AggregateSql {
            name: p.name()?,
            function,
            column,
            k,
            window: width.to_string(),
        })
    }

    /// `column [TYPE] [COMMENT '…']`.
    fn feature(p: &mut DslParser<'_>) -> Result<FeatureSql> {
        let name = p.name()?;
        let data_type = match p.p.peek_token().token {
            Token::Comma | Token::RParen => None,
            Token::Word(ref w) if w.keyword == Keyword::COMMENT => None,
            _ => Some(p.p.parse_data_type().map_err(syntax)?.to_string()),
        };
        Ok(FeatureSql {
            name,
            data_type,
            comment: p.comment()?,
        })
    }
}

impl RegisterModel {
    /// After `REGISTER`.
    pub(super) fn parse(p: &mut DslParser<'_>) -> Result<Self> {
        let or_replace = p.p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
        p.expect_word("MODEL")?;
        let name = p.name()?;
        if !p.p.parse_keyword(Keyword::VERSION) {
            return Err(PitlakeError::Syntax(
                "REGISTER MODEL needs VERSION '<version>'".into(),
            ));
        }
        let version = p.version_literal()?;
        let mut model = Model {
            name,
            version,
            service: String::new(),
            training_set: None,
            artifact: None,
            metadata: serde_json::Value::Null,
            description: None,
        };
        let mut service = None;
        loop {
            if p.word("SERVICE") {
                service = Some(p.name()?);
            } else if p.words(&["TRAINING", "SET"]) {
                model.training_set = Some(p.string()?);
            } else if p.word("ARTIFACT") {
                model.artifact = Some(p.string()?);
            } else if p.word("METADATA") {
                let text = p.string()?;
                model.metadata = serde_json::from_str(&text).map_err(|e| {
                    PitlakeError::Syntax(format!("METADATA is not valid JSON: {e}"))
                })?;
            } else if p.p.parse_keyword(Keyword::COMMENT) {
                model.description = Some(p.string()?);
            } else {
                break;
            }
        }
        model.service = service.ok_or_else(|| {
            PitlakeError::Syntax(format!(
                "REGISTER MODEL {} needs SERVICE <feature service>: the features the model was \
                 trained with",
                model.name
            ))
        })?;
        Ok(Self { or_replace, model })
    }
}
