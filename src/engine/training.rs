//! Training sets: a label relation joined, as of each label's time, to registered feature views.
//!
//! A training set lowers to one SQL query: the labels, then one `ASOF LEFT JOIN` per feature
//! view on the entity's join keys, with the view's TTL as tolerance, its created time as the
//! tie-break (newest delivery wins) and — unless switched off — as the knowledge time (a value is
//! used only if it had been delivered by the label time). Every table the query reads is pinned to
//! the Delta version current when it was planned, so the same query rebuilds the same rows later.
//!
//! Rows come out sorted by label time, then the entity keys, then the other label columns: a
//! deterministic order, so an export is identical when rebuilt.

use std::ops::ControlFlow;

use arrow::datatypes::{DataType, SchemaRef};
use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    Expr as SqlExpr, ObjectName, Query, TableFactor, TableVersion as SqlVersion, Value, VisitorMut,
};

use datafusion::sql::parser::Statement as DFStatement;

use super::Engine;
use super::dsl::{check_keys, column_list, resolve_items};
use crate::error::{PitlakeError, Result};
use crate::frontend::dsl::TrainingSetSql;
use crate::frontend::{Statement, parse_sql};
use crate::registry::{Aggregate, Entity, FeatureView, KeyColumn, Kind, Object};

/// A table a training set reads, at the version it reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PinnedInput {
    /// The table.
    pub table: String,
    /// Its Delta version ([`SESSION_TABLE_VERSION`] for a table uploaded for the session).
    pub version: i64,
    /// Why it is read (`labels`, `feature view driver_stats`).
    pub role: String,
    /// For a table uploaded for the session: `sha256:<hex>` of its rows as uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
}

/// The version recorded for a table uploaded for the session (it has no Delta log).
pub const SESSION_TABLE_VERSION: i64 = -1;

/// How one feature view takes part in a training set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewUse {
    /// The view.
    pub view: String,
    /// The features taken from it.
    pub features: Vec<String>,
    /// Its TTL in seconds.
    pub ttl_seconds: Option<i64>,
    /// The created-time column used as tie-break and knowledge time.
    pub created_time: Option<String>,
    /// Whether values had to be known by the label time.
    pub knowledge_time: bool,
    /// The output column with the matched event time in the audit query.
    pub event_time_column: String,
    /// The output column with the matched created time in the audit query.
    pub created_time_column: Option<String>,
    /// Which of `features` are windowed aggregates (computed over a window, not matched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregates: Vec<String>,
}

/// A training set, planned: the pinned query and what it was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingPlan {
    /// The query producing the training set, every table pinned.
    pub query: String,
    /// The same with, per view, the matched event and created times (for audits).
    pub audit_query: String,
    /// The pinned label relation (`SELECT * FROM …`), for counting label rows.
    pub labels_query: String,
    /// The label-time column.
    pub label_time: String,
    /// The registry version the views were read at.
    pub registry_version: Option<i64>,
    /// Every table read, at its version.
    pub inputs: Vec<PinnedInput>,
    /// The views.
    pub views: Vec<ViewUse>,
}

/// Quotes an identifier for generated SQL.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Calls `visit` with each warehouse table a statement names, in order, with its version
/// clause: not the names of its CTEs, not table functions.
struct WarehouseTables<F> {
    ctes: Vec<String>,
    visit: F,
}

impl<F> WarehouseTables<F>
where
    F: FnMut(&ObjectName, &mut Option<SqlVersion>) -> ControlFlow<()>,
{
    fn new(visit: F) -> Self {
        Self {
            ctes: Vec::new(),
            visit,
        }
    }
}

impl<F> VisitorMut for WarehouseTables<F>
where
    F: FnMut(&ObjectName, &mut Option<SqlVersion>) -> ControlFlow<()>,
{
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.push(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            version,
            args: None,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        if name.0.len() == 1
            && self
                .ctes
                .iter()
                .any(|c| name.to_string().eq_ignore_ascii_case(c))
        {
            return ControlFlow::Continue(());
        }
        (self.visit)(name, version)
    }
}

/// Turns `t AS a` with a version into `(SELECT * FROM t VERSION AS OF n) AS a`: sqlparser
/// prints a table's alias before its version but parses only the version first, so the pinned
/// text of `FROM labels AS x` would not parse again.
struct VersionsBeforeAliases;

impl VisitorMut for VersionsBeforeAliases {
    type Break = ();

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias: alias @ Some(_),
            version: Some(version),
            args: None,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let inner = format!("SELECT * FROM {name} {version}");
        let Ok(Some(Statement::Sql(statement))) =
            parse_sql(&inner).map(|mut s| s.pop().map(|s| s.statement))
        else {
            return ControlFlow::Continue(());
        };
        let DFStatement::Statement(statement) = *statement else {
            return ControlFlow::Continue(());
        };
        let sqlparser::ast::Statement::Query(query) = *statement else {
            return ControlFlow::Continue(());
        };
        *factor = TableFactor::Derived {
            lateral: false,
            subquery: query,
            alias: alias.take(),
            sample: None,
        };
        ControlFlow::Continue(())
    }
}

impl Engine {
    /// Pins every table a relation reads to a version (the latest, unless the relation already
    /// names one). Returns the pinned relation as a subquery and the tables with versions.
    pub(crate) async fn pin_relation(
        &self,
        relation: &str,
    ) -> Result<(String, Vec<(String, i64)>)> {
        let sql = format!("SELECT * FROM {relation}");
        let mut statements = parse_sql(&sql)?;
        let Some(Statement::Sql(mut statement)) = statements.pop().map(|s| s.statement) else {
            return Err(PitlakeError::Internal("pinning: not a query".into()));
        };
        let mut tables: Vec<(ObjectName, Option<i64>)> = Vec::new();
        let mut error = None;
        let mut pin = WarehouseTables::new(|name, version| {
            let pinned = match version {
                None => None,
                Some(SqlVersion::VersionAsOf(SqlExpr::Value(v))) => match &v.value {
                    Value::Number(n, _) => n.parse().ok(),
                    _ => None,
                },
                Some(other) => {
                    error = Some(PitlakeError::Plan(format!(
                        "`{name} {other}`: a training set pins tables by version; write VERSION \
                         AS OF <n>"
                    )));
                    return ControlFlow::Break(());
                }
            };
            tables.push((name.clone(), pinned));
            ControlFlow::Continue(())
        });
        let _ = crate::frontend::visit::visit_statement_mut(&mut statement, &mut pin);
        if let Some(err) = error {
            return Err(err);
        }
        let mut versions = Vec::with_capacity(tables.len());
        let mut inputs = Vec::with_capacity(tables.len());
        for (name, pinned) in tables {
            let table = self.table_name(&name)?;
            if self.session_table(&table).is_some() {
                if pinned.is_some() {
                    return Err(PitlakeError::Plan(format!(
                        "`{table}` is a table this session uploaded: it has no versions (a \
                         warehouse table of that name is not reachable from this session by \
                         its bare name)"
                    )));
                }
                // Uploaded for this session: no version to pin; its content hash is recorded.
                versions.push(None);
                inputs.push((table.to_string(), SESSION_TABLE_VERSION));
                continue;
            }
            if !self.warehouse().table_exists(&table).await? {
                return Err(self.warehouse().not_found(&table).await);
            }
            let version = match pinned {
                Some(v) => self
                    .warehouse()
                    .log_listing(&table)
                    .await?
                    .check_version(&table, v)?,
                None => self
                    .warehouse()
                    .log_listing(&table)
                    .await?
                    .latest()
                    .ok_or_else(|| PitlakeError::CorruptTable {
                        table: table.to_string(),
                        message: "its log has no versions".into(),
                    })?,
            };
            versions.push(Some(version));
            inputs.push((table.to_string(), version));
        }
        let mut pinned = versions.iter();
        let mut apply = WarehouseTables::new(|_, version| {
            if let Some(Some(v)) = pinned.next() {
                *version = Some(SqlVersion::VersionAsOf(SqlExpr::Value(
                    Value::Number(v.to_string(), false).with_empty_span(),
                )));
            }
            ControlFlow::Continue(())
        });
        let _ = crate::frontend::visit::visit_statement_mut(&mut statement, &mut apply);
        let _ =
            crate::frontend::visit::visit_statement_mut(&mut statement, &mut VersionsBeforeAliases);
        let text = statement.to_string();
        let relation = text
            .strip_prefix("SELECT * FROM ")
            .map(str::to_string)
            .unwrap_or_else(|| format!("({text})"));
        Ok((relation, inputs))
    }

    /// A pinned input, with the content hash of a table uploaded for the session.
    fn pinned_input(&self, table: String, version: i64, role: String) -> PinnedInput {
        let content_hash = (version == SESSION_TABLE_VERSION)
            .then(|| {
                crate::storage::TableName::parse(&table)
                    .ok()
                    .and_then(|name| self.session_table(&name))
                    .map(|t| t.content_hash)
            })
            .flatten();
        PinnedInput {
            table,
            version,
            role,
            content_hash,
        }
    }

    /// Parses `TRAINING SET …` or `EXPORT TRAINING SET …` (one statement, a trailing `;`
    /// allowed) into its training set and its text.
    pub fn parse_training_set(&self, text: &str) -> Result<(TrainingSetSql, String)> {
        use crate::frontend::Statement;
        use crate::frontend::dsl::DslStatement;
        let not_a_training_set = |text: &str| {
            PitlakeError::Syntax(format!(
                "expected `TRAINING SET LABELS <table or (query)> AT <column> FEATURES \
                 (<view>.*, …)`, found `{}`",
                text.chars().take(80).collect::<String>()
            ))
        };
        let mut statements = self.parse(text)?;
        let statement = match (statements.pop(), statements.is_empty()) {
            (Some(statement), true) => statement,
            (None, _) => return Err(PitlakeError::Syntax("no training set given".into())),
            (Some(_), false) => {
                return Err(PitlakeError::Syntax(
                    "expected one TRAINING SET statement, found several".into(),
                ));
            }
        };
        match statement.statement {
            Statement::Dsl(dsl) => match *dsl {
                DslStatement::TrainingSet(spec) => Ok((spec, statement.text)),
                DslStatement::Export(export) => Ok((export.training_set, statement.text)),
                _ => Err(not_a_training_set(&statement.text)),
            },
            _ => Err(not_a_training_set(&statement.text)),
        }
    }

    /// Plans a training set against the current registry.
    pub async fn plan_training_set(&self, spec: &TrainingSetSql) -> Result<TrainingPlan> {
        let state = self.registry().state(None).await?;
        let wanted = wanted_features(resolve_items(&state, &spec.items, self.sight())?)?;
        let (labels, label_inputs) = self.pin_relation(&spec.labels.relation()).await?;
        let label_schema = self.relation_schema(&labels).await?;
        let label_time_type = label_schema
            .field_with_name(&spec.at)
            .map(|f| f.data_type().clone())
            .map_err(|_| {
                PitlakeError::Plan(format!(
                    "the labels have no column `{}` for AT; their columns are: {}",
                    spec.at,
                    column_list(&label_schema)
                ))
            })?;
        let mut inputs: Vec<PinnedInput> = label_inputs
            .into_iter()
            .map(|(table, version)| self.pinned_input(table, version, "labels".into()))
            .collect();
        let (mut select, mut audit_select) = (vec!["l.*".to_string()], vec!["l.*".to_string()]);
        let (mut joins, mut audit_joins) = (String::new(), String::new());
        let mut views = Vec::new();
        let mut key_columns: Vec<String> = Vec::new();
        for (i, (view_name, features)) in wanted.iter().enumerate() {
            let (view, entity) = view_and_entity(&state, view_name)?;
            check_keys(&label_schema, entity, |key, problem| {
                label_key_error(&label_schema, entity, view_name, key, problem)
            })?;
            for key in &entity.join_keys {
                if !key_columns.contains(&key.name) {
                    key_columns.push(key.name.clone());
                }
            }
            // A view's source names warehouse tables: never a session's upload.
            let (source, pinned) = self
                .without_session()
                .pin_relation(&view.source.relation())
                .await?;
            inputs.extend(pinned.iter().map(|(table, version)| {
                self.pinned_input(table.clone(), *version, format!("feature view {view_name}"))
            }));
            let join = ViewJoin {
                spec,
                view,
                entity,
                alias: format!("v{i}"),
                features: match features {
                    Some(list) => list.clone(),
                    None => view.feature_names(),
                },
                temporal: is_temporal(&label_time_type),
            };
            join.columns(&pinned, &mut select, &mut audit_select);
            let (clause, window) = (join.clause(&source), join.window_clause(&source));
            if join.matches_in_query() {
                joins.push_str(&clause);
            }
            joins.push_str(&window);
            audit_joins.push_str(&clause);
            audit_joins.push_str(&window);
            views.push(join.view_use());
        }
        let order = order_by(spec, &key_columns, &label_schema);
        let from = format!("FROM (SELECT * FROM {labels}) AS l{joins}\nORDER BY {order}");
        let audit_from =
            format!("FROM (SELECT * FROM {labels}) AS l{audit_joins}\nORDER BY {order}");
        inputs.sort();
        inputs.dedup();
        Ok(TrainingPlan {
            query: format!("SELECT {}\n{from}", select.join(", ")),
            audit_query: format!("SELECT {}\n{audit_from}", audit_select.join(", ")),
            labels_query: format!("SELECT * FROM {labels}"),
            label_time: spec.at.clone(),
            registry_version: state.version,
            inputs,
            views,
        })
    }
}

/// The wanted features grouped by view, in first-mention order; `None` for every feature of
/// the view.
fn wanted_features(
    pairs: Vec<(String, Option<String>)>,
) -> Result<Vec<(String, Option<Vec<String>>)>> {
    if pairs.is_empty() {
        return Err(PitlakeError::Plan("a training set needs FEATURES".into()));
    }
    let mut wanted: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for (view, feature) in pairs {
        let at = match wanted.iter().position(|(v, _)| *v == view) {
            Some(at) => at,
            None => {
                wanted.push((view, Some(Vec::new())));
                wanted.len() - 1
            }
        };
        let entry = &mut wanted[at].1;
        match (entry.as_mut(), feature) {
            (Some(list), Some(f)) => {
                if !list.contains(&f) {
                    list.push(f);
                }
            }
            (_, None) => *entry = None,
            (None, Some(_)) => {}
        }
    }
    Ok(wanted)
}

/// The deterministic order of a training set's rows: label time, keys, then every other
/// label column that can be ordered.
fn order_by(spec: &TrainingSetSql, key_columns: &[String], labels: &SchemaRef) -> String {
    let mut order_by = vec![format!("l.{}", quote(&spec.at))];
    for key in key_columns {
        order_by.push(format!("l.{}", quote(key)));
    }
    for field in labels.fields() {
        if field.name() != &spec.at
            && !key_columns.contains(field.name())
            && is_orderable(field.data_type())
        {
            order_by.push(format!("l.{}", quote(field.name())));
        }
    }
    order_by.join(", ")
}

/// One feature view's part of a training set's query: its columns and its as-of join.
struct ViewJoin<'a> {
    spec: &'a TrainingSetSql,
    view: &'a FeatureView,
    entity: &'a Entity,
    /// The view's alias in the query (`v0`, `v1` …).
    alias: String,
    /// The features taken.
    features: Vec<String>,
    /// Whether the label time is a date or timestamp (else a number).
    temporal: bool,
}

impl ViewJoin<'_> {
    fn name(&self) -> &str {
        &self.view.name
    }

    fn event_column(&self) -> String {
        format!("{}__event_time", self.name())
    }

    fn created_column(&self) -> Option<String> {
        self.view
            .created_time
            .as_ref()
            .map(|_| format!("{}__created_time", self.name()))
    }

    /// `<alias>.<column> AS <name>`.
    fn output(&self, column: &str, name: &str) -> String {
        format!("{}.{} AS {}", self.alias, quote(column), quote(name))
    }

    /// The alias of the view's window join.
    fn window_alias(&self) -> String {
        format!("{}w", self.alias)
    }

    /// The wanted features that are windowed aggregates, in the order asked.
    fn aggregates(&self) -> Vec<&Aggregate> {
        self.features
            .iter()
            .filter_map(|f| self.view.aggregate(f))
            .collect()
    }

    /// Whether the query needs the view's as-of join: for a plain feature, or for the matched
    /// event times (`WITH EVENT TIMES`). A view used for aggregates only has it in the audit
    /// query alone.
    fn matches_in_query(&self) -> bool {
        self.spec.options.event_times
            || self
                .features
                .iter()
                .any(|f| self.view.aggregate(f).is_none())
    }

    /// Adds its columns to the query's and to the audit query's select lists.
    fn columns(&self, pinned: &[(String, i64)], select: &mut Vec<String>, audit: &mut Vec<String>) {
        for feature in &self.features {
            let name = format!("{}__{feature}", self.name());
            let column = match self.view.aggregate(feature) {
                Some(_) => format!(
                    "{}.{} AS {}",
                    self.window_alias(),
                    quote(feature),
                    quote(&name)
                ),
                None => self.output(feature, &name),
            };
            select.push(column.clone());
            audit.push(column);
        }
        let event = self.output(&self.view.event_time, &self.event_column());
        if self.spec.options.event_times {
            select.push(event.clone());
        }
        audit.push(event);
        if let (Some(created), Some(column)) = (&self.view.created_time, self.created_column()) {
            audit.push(self.output(created, &column));
        }
        if self.spec.options.versions {
            let version = match (&self.view.source, pinned) {
                (crate::registry::Source::Table { .. }, [(_, v)]) => v.to_string(),
                _ => "CAST(NULL AS BIGINT)".to_string(),
            };
            select.push(format!(
                "{version} AS {}",
                quote(&format!("{}__table_version", self.name()))
            ));
        }
    }

    /// `ASOF LEFT JOIN (SELECT * FROM <source>) AS <alias> ON <keys> AND l.<at> <op> <alias>.<event
    /// time>`.
    fn join_on(&self, source: &str, alias: &str, op: &str) -> String {
        let on: Vec<String> = self
            .entity
            .join_keys
            .iter()
            .map(|k| format!("l.{} = {alias}.{}", quote(&k.name), quote(&k.name)))
            .chain(std::iter::once(format!(
                "l.{} {op} {alias}.{}",
                quote(&self.spec.at),
                quote(&self.view.event_time)
            )))
            .collect();
        format!(
            "\nASOF LEFT JOIN (SELECT * FROM {source}) AS {alias} ON {}",
            on.join(" AND ")
        )
    }

    /// ` TIEBREAK BY <created> DESC [KNOWN AT <created>]` when the view has a created time.
    fn known_clauses(&self, alias: &str) -> String {
        let Some(created) = &self.view.created_time else {
            return String::new();
        };
        let mut clauses = format!(" TIEBREAK BY {alias}.{} DESC", quote(created));
        if self.spec.options.knowledge_time {
            clauses.push_str(&format!(" KNOWN AT {alias}.{}", quote(created)));
        }
        clauses
    }

    /// `ASOF LEFT JOIN (<pinned source>) AS <alias> ON keys AND time [TOLERANCE] [TIEBREAK]
    /// [KNOWN AT]`.
    fn clause(&self, source: &str) -> String {
        let mut clause = self.join_on(source, &self.alias, ">=");
        if let Some(ttl) = self.view.ttl_seconds {
            if self.temporal {
                clause.push_str(&format!(" TOLERANCE INTERVAL '{ttl} seconds'"));
            } else {
                clause.push_str(&format!(" TOLERANCE {ttl}"));
            }
        }
        clause.push_str(&self.known_clauses(&self.alias));
        clause
    }

    /// `ASOF LEFT JOIN (<pinned source>) AS <alias>w ON keys AND time [TIEBREAK] [KNOWN AT]
    /// AGGREGATES (…)`, or nothing when no aggregate is wanted.
    fn window_clause(&self, source: &str) -> String {
        let aggregates = self.aggregates();
        if aggregates.is_empty() {
            return String::new();
        }
        let alias = self.window_alias();
        let op = if self.view.windows_exclusive {
            ">"
        } else {
            ">="
        };
        let mut clause = self.join_on(source, &alias, op);
        clause.push_str(&self.known_clauses(&alias));
        let items: Vec<String> = aggregates
            .iter()
            .map(|a| {
                let arg = match &a.column {
                    Some(c) => format!("{alias}.{}", quote(c)),
                    None => "*".into(),
                };
                let k = a.k.map(|k| format!(", {k}")).unwrap_or_default();
                let width = if self.temporal {
                    format!("INTERVAL '{} seconds'", a.window)
                } else {
                    a.window.to_string()
                };
                format!(
                    "{}({arg}{k}) OVER {width} AS {}",
                    a.function,
                    quote(&a.name)
                )
            })
            .collect();
        clause.push_str(&format!(" AGGREGATES ({})", items.join(", ")));
        clause
    }

    /// What the manifest records of the view.
    fn view_use(&self) -> ViewUse {
        ViewUse {
            view: self.name().to_string(),
            features: self.features.clone(),
            ttl_seconds: self.view.ttl_seconds,
            created_time: self.view.created_time.clone(),
            knowledge_time: self.spec.options.knowledge_time && self.view.created_time.is_some(),
            event_time_column: self.event_column(),
            created_time_column: self.created_column(),
            aggregates: self.aggregates().iter().map(|a| a.name.clone()).collect(),
        }
    }
}

fn is_temporal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
    )
}

fn is_orderable(t: &DataType) -> bool {
    !matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(_, _)
            | DataType::Struct(_)
            | DataType::Map(_, _)
            | DataType::Union(_, _)
    )
}

fn view_and_entity<'a>(
    state: &'a crate::registry::RegistryState,
    view: &str,
) -> Result<(&'a FeatureView, &'a Entity)> {
    let Some(Object::FeatureView(v)) = state.get(Kind::FeatureView, view) else {
        return Err(PitlakeError::Plan(format!(
            "feature view `{view}` does not exist"
        )));
    };
    let Some(Object::Entity(e)) = state.get(Kind::Entity, &v.entity) else {
        return Err(PitlakeError::Plan(format!(
            "feature view `{view}` refers to entity `{}`, which no longer exists",
            v.entity
        )));
    };
    Ok((v, e))
}

/// Why the labels cannot join `entity` (of feature view `view`) on `key`: `found` is the
/// labels' column of that name, of a type that cannot carry the key, or `None` when missing.
fn label_key_error(
    labels: &SchemaRef,
    entity: &Entity,
    view: &str,
    key: &KeyColumn,
    found: Option<&DataType>,
) -> PitlakeError {
    PitlakeError::Plan(match found {
        Some(actual) => format!(
            "the labels' `{}` is {actual} but entity `{}` (of feature view `{view}`) keys on {} \
             {}; cast the label column",
            key.name, entity.name, key.name, key.data_type
        ),
        None => format!(
            "the labels have no column `{}`, the join key of entity `{}` (feature view `{view}` \
             needs it); their columns are: {}",
            key.name,
            entity.name,
            column_list(labels)
        ),
    })
}
