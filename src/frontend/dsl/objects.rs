//! The statements about registry objects by name: `DROP`, `SHOW`, `DESCRIBE`, `SHOW HISTORY OF`
//! and `SHOW DIFF OF`.

use sqlparser::keywords::Keyword;

use super::parser::DslParser;
use crate::error::{PitlakeError, Result};
use crate::registry::{Kind, model_key};

/// A registry object by kind and name; a model maybe by version too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// What.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// A model's version (`VERSION 'v'`).
    pub version: Option<String>,
}

impl ObjectRef {
    /// `<kind> name [VERSION 'v']`.
    fn parse(p: &mut DslParser<'_>) -> Result<Self> {
        let kind = p.kind()?;
        Self::parse_name(p, kind)
    }

    /// `name [VERSION 'v']` of an object of `kind`.
    fn parse_name(p: &mut DslParser<'_>, kind: Kind) -> Result<Self> {
        let name = p.name()?;
        let version = p.model_version(kind)?;
        Ok(Self {
            kind,
            name,
            version,
        })
    }

    /// The registry key: the name, or `name@version` for a model version.
    pub fn key(&self) -> String {
        match (&self.version, self.kind) {
            (Some(v), Kind::Model) => model_key(&self.name, v),
            _ => self.name.clone(),
        }
    }
}

/// `DROP ENTITY|FEATURE VIEW|FEATURE SERVICE|MODEL [IF EXISTS] name [VERSION 'v']`; a model
/// without a version drops all its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropObject {
    /// What.
    pub object: ObjectRef,
    /// `IF EXISTS`.
    pub if_exists: bool,
}

impl DropObject {
    /// After `DROP`.
    pub(super) fn parse(p: &mut DslParser<'_>) -> Result<Self> {
        let kind = p.kind()?;
        let if_exists = p.p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let object = ObjectRef::parse_name(p, kind)?;
        Ok(Self { object, if_exists })
    }
}

/// `SHOW ENTITIES | FEATURE VIEWS | FEATURE SERVICES | MODELS [AS OF REGISTRY VERSION n]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowObjects {
    /// What.
    pub kind: Kind,
    /// `AS OF REGISTRY VERSION n`.
    pub at: Option<i64>,
}

impl ShowObjects {
    /// After `SHOW`.
    pub(super) fn parse(p: &mut DslParser<'_>) -> Result<Self> {
        let kind = if p.word("ENTITIES") {
            Kind::Entity
        } else if p.words(&["FEATURE", "VIEWS"]) {
            Kind::FeatureView
        } else if p.words(&["FEATURE", "SERVICES"]) {
            Kind::FeatureService
        } else if p.word("MODELS") {
            Kind::Model
        } else {
            return Err(PitlakeError::Syntax(format!(
                "expected ENTITIES, FEATURE VIEWS, FEATURE SERVICES or MODELS, found {}",
                p.p.peek_token()
            )));
        };
        Ok(Self {
            kind,
            at: p.registry_version()?,
        })
    }
}

/// `DESCRIBE ENTITY|FEATURE VIEW|… name [VERSION 'v'] [AS OF REGISTRY VERSION n]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeObject {
    /// What.
    pub object: ObjectRef,
    /// `AS OF REGISTRY VERSION n`.
    pub at: Option<i64>,
}

impl DescribeObject {
    /// After `DESCRIBE` or `DESC`.
    pub(super) fn parse(p: &mut DslParser<'_>) -> Result<Self> {
        Ok(Self {
            object: ObjectRef::parse(p)?,
            at: p.registry_version()?,
        })
    }
}

/// `SHOW HISTORY OF ENTITY|… name [VERSION 'v']`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowHistory {
    /// Whose.
    pub object: ObjectRef,
}

impl ShowHistory {
    /// After `SHOW HISTORY`.
    pub(super) fn parse(p: &mut DslParser<'_>) -> Result<Self> {
        p.expect_keyword(Keyword::OF)?;
        Ok(Self {
            object: ObjectRef::parse(p)?,
        })
    }
}

/// `SHOW DIFF OF … name BETWEEN [REGISTRY VERSION] a AND [REGISTRY VERSION] b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowDiff {
    /// Whose.
    pub object: ObjectRef,
    /// The older registry version.
    pub from: i64,
    /// The newer one.
    pub to: i64,
}

impl ShowDiff {
    /// After `SHOW DIFF`.
    pub(super) fn parse(p: &mut DslParser<'_>) -> Result<Self> {
        p.expect_keyword(Keyword::OF)?;
        let object = ObjectRef::parse(p)?;
        p.expect_keyword(Keyword::BETWEEN)?;
        let _ = p.words(&["REGISTRY", "VERSION"]);
        let from = p.integer()?;
        p.expect_keyword(Keyword::AND)?;
        let _ = p.words(&["REGISTRY", "VERSION"]);
        let to = p.integer()?;
        Ok(Self { object, from, to })
    }
}
