//! The objects a registry holds: entities, feature views, feature services and models.
//!
//! Definitions are plain data, stored as JSON in the registry's Delta table; their meaning
//! (what a source must look like, how a training set uses them) lives in the engine.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of object a registry row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An entity: what features describe (a driver, a customer), with its join keys.
    Entity,
    /// A feature view: features of one entity, from one source, with their times.
    FeatureView,
    /// A feature service: a named set of features a model uses.
    FeatureService,
    /// A model version: the service it used and the training set it was trained on.
    Model,
}

impl Kind {
    /// Every kind, in dependency order (entities first).
    pub const ALL: [Kind; 4] = [
        Kind::Entity,
        Kind::FeatureView,
        Kind::FeatureService,
        Kind::Model,
    ];

    /// The name as stored and as written in SQL (`feature view`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Entity => "entity",
            Kind::FeatureView => "feature_view",
            Kind::FeatureService => "feature_service",
            Kind::Model => "model",
        }
    }

    /// The name for people (`feature view`).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Entity => "entity",
            Kind::FeatureView => "feature view",
            Kind::FeatureService => "feature service",
            Kind::Model => "model",
        }
    }

    /// The kind's name in the plural (`entities`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Entity => "entities",
            Kind::FeatureView => "feature views",
            Kind::FeatureService => "feature services",
            Kind::Model => "models",
        }
    }

    /// Parses the stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        Kind::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A join key of an entity: a column name and its SQL type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyColumn {
    /// The column name, in the feature sources and in label relations.
    pub name: String,
    /// The type as Arrow prints it (`Int64`, `Utf8`).
    pub data_type: String,
}

/// An entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// The entity's name.
    pub name: String,
    /// Its join keys, in order.
    pub join_keys: Vec<KeyColumn>,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Where a feature view's rows come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A warehouse table, at its latest version or pinned to one.
    Table {
        /// The table name (`schema.table` or `table`).
        table: String,
        /// A pinned Delta version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<i64>,
    },
    /// A SQL query over warehouse tables.
    Query {
        /// The query text.
        sql: String,
    },
}

impl Source {
    /// The source as a SQL relation (for `FROM …`).
    pub fn relation(&self) -> String {
        match self {
            Source::Table {
                table,
                version: Some(v),
            } => format!("{table} VERSION AS OF {v}"),
            Source::Table {
                table,
                version: None,
            } => table.clone(),
            Source::Query { sql } => format!("({sql})"),
        }
    }
}

/// A feature of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    /// The column name in the source.
    pub name: String,
    /// The type as Arrow prints it.
    pub data_type: String,
    /// What it measures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A windowed aggregate of a view: `function(column) OVER window AS name`, computed for each
/// label over the view's rows whose event time falls in the window ending at the label time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    /// The feature's name.
    pub name: String,
    /// The function (`count`, `sum`, `avg`, `min`, `max`, `first`, `last`, `count_distinct`,
    /// `var`, `var_pop`, `stddev`, `stddev_pop`).
    pub function: String,
    /// The source column aggregated; `None` for `count(*)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// `last(x, k)`'s `k`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// The window's width: seconds for timestamp and date event times, the times' own units for
    /// integer ones.
    pub window: i64,
    /// The result's type as Arrow prints it.
    pub data_type: String,
}

impl Aggregate {
    /// `function(column | *[, k])`, as written.
    pub fn call(&self) -> String {
        let arg = self.column.as_deref().unwrap_or("*");
        match self.k {
            Some(k) => format!("{}({arg}, {k})", self.function),
            None => format!("{}({arg})", self.function),
        }
    }
}

/// A feature view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureView {
    /// The view's name.
    pub name: String,
    /// The entity its rows describe.
    pub entity: String,
    /// Where its rows come from.
    pub source: Source,
    /// The column with the time each value is valid from.
    pub event_time: String,
    /// The column with the time each row was ingested (known), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<String>,
    /// How old a value may be and still be used, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// The features.
    pub features: Vec<Feature>,
    /// The windowed aggregates (`AGGREGATES (…)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregates: Vec<Aggregate>,
    /// `WINDOWS EXCLUSIVE`: windows are `[t - d, t)` instead of `(t - d, t]`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub windows_exclusive: bool,
    /// Who owns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Free tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl FeatureView {
    /// Every feature's name: the plain features, then the aggregates.
    pub fn feature_names(&self) -> Vec<String> {
        self.features
            .iter()
            .map(|f| f.name.clone())
            .chain(self.aggregates.iter().map(|a| a.name.clone()))
            .collect()
    }

    /// The aggregate called `name`, if it is one.
    pub fn aggregate(&self, name: &str) -> Option<&Aggregate> {
        self.aggregates.iter().find(|a| a.name == name)
    }
}

/// One item of a feature service: a whole view or one feature of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FeatureRef {
    /// The view.
    pub view: String,
    /// The feature, or `None` for every feature of the view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
}

impl fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.feature {
            Some(feature) => write!(f, "{}.{feature}", self.view),
            None => write!(f, "{}.*", self.view),
        }
    }
}

/// A feature service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureService {
    /// The service's name.
    pub name: String,
    /// Its features.
    pub features: Vec<FeatureRef>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A registered model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// The model's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The feature service it used.
    pub service: String,
    /// The export manifest of the training set it was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_set: Option<String>,
    /// Where the trained artifact is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// Free metadata (metrics, parameters).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Any registry object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Object {
    /// An entity.
    Entity(Entity),
    /// A feature view.
    FeatureView(FeatureView),
    /// A feature service.
    FeatureService(FeatureService),
    /// A model version.
    Model(Model),
}

impl Object {
    /// The kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Entity(_) => Kind::Entity,
            Object::FeatureView(_) => Kind::FeatureView,
            Object::FeatureService(_) => Kind::FeatureService,
            Object::Model(_) => Kind::Model,
        }
    }

    /// The registry key: the name (models: `name@version`).
    pub fn key(&self) -> String {
        match self {
            Object::Entity(e) => e.name.clone(),
            Object::FeatureView(v) => v.name.clone(),
            Object::FeatureService(s) => s.name.clone(),
            Object::Model(m) => model_key(&m.name, &m.version),
        }
    }

    /// The definition as pretty JSON (for DESCRIBE and diffs).
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// The registry key of a model version.
pub fn model_key(name: &str, version: &str) -> String {
    format!("{name}@{version}")
}
