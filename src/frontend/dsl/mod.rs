//! pitlake's point-in-time DSL: SQL-shaped statements for the feature registry and training sets
//! (the grammar, with examples, is docs/dsl.md). Parsed with sqlparser's parser, so names,
//! strings, types, expressions and subqueries follow the SQL dialect exactly.
//!
//! Each statement is a struct of its own that parses itself after its leading keywords:
//! - `definitions`: `CREATE ENTITY`, `CREATE FEATURE VIEW`, `CREATE FEATURE SERVICE`,
//!   `REGISTER MODEL`;
//! - `objects`: `DROP`, `SHOW`, `DESCRIBE`, `SHOW HISTORY OF`, `SHOW DIFF OF`;
//! - `training`: `TRAINING SET`, `EXPORT TRAINING SET`;
//! - `parser`: the small parser they share.
//!
//! What a statement reads, writes and does is the engine's part (`engine::dsl`): this module
//! knows only syntax. [`DslStatement`] lists the statements and [`each_dsl!`] is the one place
//! that dispatches on them.

mod definitions;
mod objects;
mod parser;
mod training;

use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Word};

pub use definitions::{CreateEntity, CreateFeatureService, CreateFeatureView, RegisterModel};
pub use objects::{DescribeObject, DropObject, ObjectRef, ShowDiff, ShowHistory, ShowObjects};
use parser::DslParser;
pub use training::{ExportTrainingSet, TrainingOptions, TrainingSetSql};

use crate::error::Result;
use crate::frontend::dialect::PitlakeDialect;
use crate::registry::Source;

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

impl SourceSql {
    /// The source as the registry keeps it.
    pub fn to_registry(&self) -> Source {
        match self {
            SourceSql::Table { name, version } => Source::Table {
                table: name.clone(),
                version: *version,
            },
            SourceSql::Query(sql) => Source::Query { sql: sql.clone() },
        }
    }

    /// The relation as SQL that can follow `FROM`.
    pub fn relation(&self) -> String {
        self.to_registry().relation()
    }
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

/// How a `CREATE` treats an object of the same name: `OR REPLACE`, `IF NOT EXISTS`, or
/// neither (an error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateMode {
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
}

/// A DSL statement: one struct per statement.
#[derive(Debug, Clone, PartialEq)]
pub enum DslStatement {
    /// `CREATE [OR REPLACE] ENTITY …`.
    CreateEntity(CreateEntity),
    /// `CREATE [OR REPLACE] FEATURE VIEW …`.
    CreateFeatureView(CreateFeatureView),
    /// `CREATE [OR REPLACE] FEATURE SERVICE …`.
    CreateFeatureService(CreateFeatureService),
    /// `REGISTER [OR REPLACE] MODEL …`.
    RegisterModel(RegisterModel),
    /// `DROP ENTITY|FEATURE VIEW|FEATURE SERVICE|MODEL …`.
    Drop(DropObject),
    /// `SHOW ENTITIES | FEATURE VIEWS | FEATURE SERVICES | MODELS …`.
    Show(ShowObjects),
    /// `DESCRIBE ENTITY|FEATURE VIEW|… name …`.
    Describe(DescribeObject),
    /// `SHOW HISTORY OF …`.
    History(ShowHistory),
    /// `SHOW DIFF OF …`.
    Diff(ShowDiff),
    /// `TRAINING SET …`: rows, one per label row.
    TrainingSet(TrainingSetSql),
    /// `EXPORT TRAINING SET … TO 'url' [FORMAT …]`.
    Export(ExportTrainingSet),
}

/// Runs `$body` with `$s` bound to the statement struct inside a [`DslStatement`] (by value or
/// by reference, as `$statement` is): the one `match` over every DSL statement, so a new
/// statement is added here and nowhere else in the dispatch.
macro_rules! each_dsl {
    ($statement:expr, $s:ident => $body:expr) => {
        match $statement {
            $crate::frontend::dsl::DslStatement::CreateEntity($s) => $body,
            $crate::frontend::dsl::DslStatement::CreateFeatureView($s) => $body,
            $crate::frontend::dsl::DslStatement::CreateFeatureService($s) => $body,
            $crate::frontend::dsl::DslStatement::RegisterModel($s) => $body,
            $crate::frontend::dsl::DslStatement::Drop($s) => $body,
            $crate::frontend::dsl::DslStatement::Show($s) => $body,
            $crate::frontend::dsl::DslStatement::Describe($s) => $body,
            $crate::frontend::dsl::DslStatement::History($s) => $body,
            $crate::frontend::dsl::DslStatement::Diff($s) => $body,
            $crate::frontend::dsl::DslStatement::TrainingSet($s) => $body,
            $crate::frontend::dsl::DslStatement::Export($s) => $body,
        }
    };
}
pub(crate) use each_dsl;

/// The leading words of a statement: upper-cased unquoted words, `""` for anything else.
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

/// Parses the tokens of one DSL statement.
pub fn parse_dsl(tokens: Vec<TokenWithSpan>) -> Result<DslStatement> {
    let dialect = PitlakeDialect::default();
    let mut p = DslParser {
        p: Parser::new(&dialect).with_tokens_with_locations(tokens),
    };
    let statement = statement(&mut p)?;
    p.end()?;
    Ok(statement)
}

/// How many of `tokens` one `TRAINING SET …` at their start takes: the training set ends
/// where its clauses do, so SQL may follow it (`) AS ts`, `LIMIT 3`).
pub fn training_set_prefix(tokens: &[TokenWithSpan]) -> Result<usize> {
    let dialect = PitlakeDialect::default();
    let mut p = DslParser {
        p: Parser::new(&dialect).with_tokens_with_locations(tokens.to_vec()),
    };
    TrainingSetSql::parse(&mut p)?;
    Ok(p.p.index())
}

/// Parses the text of one `TRAINING SET …`, as [`training_set_prefix`] delimited it.
pub fn parse_training_set(text: &str) -> Result<TrainingSetSql> {
    let dialect = PitlakeDialect::default();
    let tokens = sqlparser::tokenizer::Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| crate::error::PitlakeError::Syntax(e.to_string()))?;
    let mut p = DslParser {
        p: Parser::new(&dialect).with_tokens_with_locations(tokens),
    };
    let training_set = TrainingSetSql::parse(&mut p)?;
    p.end()?;
    Ok(training_set)
}

/// Reads the leading keywords and hands the rest to the statement's own parser.
fn statement(p: &mut DslParser<'_>) -> Result<DslStatement> {
    if p.p.parse_keyword(Keyword::CREATE) {
        return definitions::create(p);
    }
    if p.word("REGISTER") {
        return RegisterModel::parse(p).map(DslStatement::RegisterModel);
    }
    if p.p.parse_keyword(Keyword::DROP) {
        return DropObject::parse(p).map(DslStatement::Drop);
    }
    if p.p.parse_keyword(Keyword::SHOW) {
        if p.word("HISTORY") {
            return ShowHistory::parse(p).map(DslStatement::History);
        }
        if p.word("DIFF") {
            return ShowDiff::parse(p).map(DslStatement::Diff);
        }
        return ShowObjects::parse(p).map(DslStatement::Show);
    }
    if p.p.parse_keyword(Keyword::DESCRIBE) || p.p.parse_keyword(Keyword::DESC) {
        return DescribeObject::parse(p).map(DslStatement::Describe);
    }
    if p.word("EXPORT") {
        return ExportTrainingSet::parse(p).map(DslStatement::Export);
    }
    TrainingSetSql::parse(p).map(DslStatement::TrainingSet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::parse::tokenize;
    use crate::registry::Kind;

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
        let DslStatement::CreateFeatureView(view) = s else {
            panic!("{s:?}")
        };
        assert!(view.mode.or_replace);
        assert_eq!(view.name, "driver_stats");
        assert_eq!(
            view.source,
            SourceSql::Table {
                name: "features.driver_hourly_stats".into(),
                version: Some(3)
            }
        );
        assert_eq!(view.ttl.as_deref(), Some("INTERVAL '2 hours'"));
        assert_eq!(view.features.len(), 3);
        assert_eq!(view.features[1].data_type, None);
        assert_eq!(view.features[0].comment.as_deref(), Some("rate"));
        assert_eq!(view.tags, vec![("team".into(), "pricing".into())]);
    }

    #[test]
    fn parses_training_sets_and_the_rest() {
        let s = parse(
            "EXPORT TRAINING SET LABELS (SELECT * FROM orders WHERE label) AT event_ts \
             FEATURES driver_stats.*, customer.balance, SERVICE churn WITH EVENT TIMES \
             WITHOUT KNOWLEDGE TIME TO '/tmp/x.parquet' FORMAT parquet",
        );
        let DslStatement::Export(export) = s else {
            panic!()
        };
        assert_eq!(export.to, "/tmp/x.parquet");
        let training_set = export.training_set;
        assert_eq!(training_set.items.len(), 3);
        assert!(training_set.options.event_times && !training_set.options.knowledge_time);
        assert!(matches!(
            parse("SHOW FEATURE VIEWS AS OF REGISTRY VERSION 2"),
            DslStatement::Show(ShowObjects {
                kind: Kind::FeatureView,
                at: Some(2)
            })
        ));
        let DslStatement::Drop(drop) = parse("DROP MODEL IF EXISTS churn VERSION '2'") else {
            panic!()
        };
        assert!(drop.if_exists);
        assert_eq!(drop.object.kind, Kind::Model);
        assert_eq!(drop.object.key(), "churn@2");
        assert!(matches!(
            parse("SHOW DIFF OF FEATURE VIEW v BETWEEN 1 AND 3"),
            DslStatement::Diff(ShowDiff { from: 1, to: 3, .. })
        ));
        assert!(!is_dsl(&tokenize("SELECT 1").unwrap()));
        assert!(!is_dsl(&tokenize("CREATE TABLE t AS SELECT 1").unwrap()));
    }

    #[test]
    fn a_model_keeps_its_fields_and_checks_its_metadata() {
        let DslStatement::RegisterModel(model) = parse(
            "REGISTER MODEL churn VERSION 2 SERVICE s TRAINING SET 'm.json' ARTIFACT 'a' \
             METADATA '{\"auc\": 0.8}' COMMENT 'c'",
        ) else {
            panic!()
        };
        assert_eq!(model.model.version, "2");
        assert_eq!(model.model.metadata["auc"], 0.8);
        assert_eq!(model.model.description.as_deref(), Some("c"));
        let err = parse_dsl(tokenize("REGISTER MODEL m VERSION 1 SERVICE s METADATA '{'").unwrap())
            .unwrap_err();
        assert!(
            err.to_string().contains("METADATA is not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn missing_clauses_are_named() {
        let err =
            parse_dsl(tokenize("CREATE FEATURE VIEW v ENTITY e FROM t").unwrap()).unwrap_err();
        assert!(err.to_string().contains("needs EVENT TIME"), "{err}");
    }
}
