//! `TRAINING SET …` and `EXPORT TRAINING SET … TO …`.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

use super::parser::DslParser;
use super::{FeatureItem, SourceSql};
use crate::error::Result;

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

/// `TRAINING SET LABELS … AT … FEATURES … [WITH EVENT TIMES] [WITH VERSIONS]
/// [WITHOUT KNOWLEDGE TIME]`.
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

impl TrainingSetSql {
    /// From `TRAINING`.
    pub(super) fn parse(p: &mut DslParser<'_>) -> Result<Self> {
        p.expect_word("TRAINING")?;
        p.expect_keyword(Keyword::SET)?;
        p.expect_word("LABELS")?;
        let labels = p.source()?;
        p.expect_keyword(Keyword::AT)?;
        let at = p.name()?;
        p.expect_word("FEATURES")?;
        // `FEATURES (a.*, b.c)`; the parentheses may be left out.
        let parenthesized = p.p.consume_token(&Token::LParen);
        let items = p.items()?;
        if parenthesized {
            p.expect_token(&Token::RParen)?;
        }
        let mut options = TrainingOptions::default();
        loop {
            if p.words(&["WITH", "EVENT", "TIMES"]) {
                options.event_times = true;
            } else if p.words(&["WITH", "VERSIONS"]) {
                options.versions = true;
            } else if p.words(&["WITHOUT", "KNOWLEDGE", "TIME"]) {
                options.knowledge_time = false;
            } else {
                break;
            }
        }
        Ok(Self {
            labels,
            at,
            items,
            options,
        })
    }

    /// The feature views the statement names in `FEATURES` (not those reached through a
    /// service).
    pub fn feature_views(&self) -> impl Iterator<Item = &str> {
        self.items.iter().filter_map(|item| match item {
            FeatureItem::View(view) | FeatureItem::Feature(view, _) => Some(view.as_str()),
            FeatureItem::Service(_) => None,
        })
    }
}

/// `EXPORT TRAINING SET … TO 'url' [FORMAT parquet|csv|delta]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportTrainingSet {
    /// The training set.
    pub training_set: TrainingSetSql,
    /// Where to write it.
    pub to: String,
    /// The format (`parquet` when omitted, or from the extension).
    pub format: Option<String>,
    /// `WITH PROGRESS`: answer with rows that report the rows written as the export runs.
    pub progress: bool,
}

impl ExportTrainingSet {
    /// After `EXPORT`.
    pub(super) fn parse(p: &mut DslParser<'_>) -> Result<Self> {
        let training_set = TrainingSetSql::parse(p)?;
        p.expect_keyword(Keyword::TO)?;
        let to = p.string()?;
        let format = if p.p.parse_keyword(Keyword::FORMAT) {
            Some(p.name()?.to_ascii_lowercase())
        } else {
            None
        };
        let progress = p.words(&["WITH", "PROGRESS"]);
        Ok(Self {
            training_set,
            to,
            format,
            progress,
        })
    }
}
