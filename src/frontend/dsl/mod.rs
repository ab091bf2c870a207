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

/// A windowed aggregate in `CREATE FEATURE VIEW … AGGREGATES (…)`:
/// `function(column | * [, k]) OVER width AS name`.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSql {
    /// The feature's name.
    pub name: String,
    /// The function as written (`count_distinct` for `count(DISTINCT x)`).
    pub function: String,
    /// The source column, `None` for `*`.
    pub column: Option<String>,
    /// `last(x, k)`'s `k`.
    pub k: Option<usize>,
    /// The width, a constant (`INTERVAL '7 days'`, or a number), as SQL.
    pub window: String,
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

/// A statement's parser, called after its first [`Syntax::lead`] words.
type Parse = fn(&mut DslParser<'_>) -> Result<DslStatement>;

/// How a DSL statement starts: the words that tell it from SQL (`OR REPLACE` after the first
/// word is skipped when matching), and its parser, which starts after the first `lead` words.
struct Syntax {
    words: &'static [&'static str],
    lead: usize,
    parse: Parse,
}

const fn syntax(words: &'static [&'static str], lead: usize, parse: Parse) -> Syntax {
    Syntax { words, lead, parse }
}

/// Every DSL statement's start: the one table `is_dsl` and `parse_dsl` read.
const SYNTAX: &[Syntax] = &[
    syntax(&["CREATE", "ENTITY"], 1, definitions::create),
    syntax(&["CREATE", "FEATURE", "VIEW"], 1, definitions::create),
    syntax(&["CREATE", "FEATURE", "SERVICE"], 1, definitions::create),
    syntax(&["REGISTER"], 1, |p| {
        RegisterModel::parse(p).map(DslStatement::RegisterModel)
    }),
    syntax(&["DROP", "ENTITY"], 1, drop),
    syntax(&["DROP", "FEATURE", "VIEW"], 1, drop),
    syntax(&["DROP", "FEATURE", "SERVICE"], 1, drop),
    syntax(&["DROP", "MODEL"], 1, drop),
    syntax(&["SHOW", "ENTITIES"], 1, show),
    syntax(&["SHOW", "MODELS"], 1, show),
    syntax(&["SHOW", "FEATURE", "VIEWS"], 1, show),
    syntax(&["SHOW", "FEATURE", "SERVICES"], 1, show),
    syntax(&["SHOW", "HISTORY", "OF"], 2, |p| {
        ShowHistory::parse(p).map(DslStatement::History)
    }),
    syntax(&["SHOW", "DIFF", "OF"], 2, |p| {
        ShowDiff::parse(p).map(DslStatement::Diff)
    }),
    syntax(&["DESCRIBE", "ENTITY"], 1, describe),
    syntax(&["DESCRIBE", "MODEL"], 1, describe),
    syntax(&["DESCRIBE", "FEATURE", "VIEW"], 1, describe),
    syntax(&["DESCRIBE", "FEATURE", "SERVICE"], 1, describe),
    syntax(&["DESC", "ENTITY"], 1, describe),
    syntax(&["DESC", "MODEL"], 1, describe),
    syntax(&["DESC", "FEATURE", "VIEW"], 1, describe),
    syntax(&["DESC", "FEATURE", "SERVICE"], 1, describe),
    syntax(&["TRAINING", "SET"], 0, |p| {
        TrainingSetSql::parse(p).map(DslStatement::TrainingSet)
    }),
    syntax(&["EXPORT", "TRAINING", "SET"], 1, |p| {
        ExportTrainingSet::parse(p).map(DslStatement::Export)
    }),
];

fn drop(p: &mut DslParser<'_>) -> Result<DslStatement> {
    DropObject::parse(p).map(DslStatement::Drop)
}

fn show(p: &mut DslParser<'_>) -> Result<DslStatement> {
    ShowObjects::parse(p).map(DslStatement::Show)
}

fn describe(p: &mut DslParser<'_>) -> Result<DslStatement> {
    DescribeObject::parse(p).map(DslStatement::Describe)
}

/// The statement's entry in [`SYNTAX`], if it is a DSL statement.
fn syntax_of(tokens: &[TokenWithSpan]) -> Option<&'static Syntax> {
    let mut words: Vec<String> = tokens
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
        .take(6)
        .collect();
    if words.get(1..3).is_some_and(|w| w == ["OR", "REPLACE"]) {
        words.drain(1..3);
    }
    SYNTAX
        .iter()
        .find(|s| s.words.len() <= words.len() && s.words.iter().zip(&words).all(|(a, b)| a == b))
}

/// Whether the tokens start a DSL statement.
pub fn is_dsl(tokens: &[TokenWithSpan]) -> bool {
    syntax_of(tokens).is_some()
}

/// Parses the tokens of one DSL statement.
pub fn parse_dsl(tokens: Vec<TokenWithSpan>) -> Result<DslStatement> {
    let syntax = syntax_of(&tokens).ok_or_else(|| {
        crate::error::PitlakeError::Syntax("not a statement of pitlake's DSL".into())
    })?;
    let dialect = PitlakeDialect::default();
    let mut p = DslParser {
        p: Parser::new(&dialect).with_tokens_with_locations(tokens),
    };
    for _ in 0..syntax.lead {
        p.p.next_token();
    }
    let statement = (syntax.parse)(&mut p)?;
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
