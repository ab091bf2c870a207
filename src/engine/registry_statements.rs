//! Running the DSL's registry statements: validating definitions against the warehouse,
//! committing them, and answering SHOW / DESCRIBE / history / diff.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use super::Engine;
use super::planning::{TableName, Visibility};
use crate::error::{PitlakeError, Result, closest_first};
use crate::frontend::dsl::{DslStatement, FeatureItem, FeatureSql, SourceSql};
use crate::registry::{
    Action, Change, Entity, Feature, FeatureRef, FeatureService, FeatureView, KeyColumn, Kind,
    Model, Object, Registry, RegistryState, Source, model_key,
};

/// The rows of a result built in memory.
pub(crate) fn rows(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<SendableRecordBatchStream> {
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(vec![Ok(batch)]),
    )))
}

fn strings<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}

/// Who is making a change: `PITLAKE_USER`, else the login name.
pub(crate) fn author(engine: &Engine) -> String {
    engine.settings().user.clone()
}

/// Whether a column of type `actual` can carry an entity key declared as `declared` (an Arrow
/// type name): the same type, or both integers, or both strings. Equality on such pairs is
/// exact after DataFusion's coercion; anything else (a float key, a string against a number) is
/// refused rather than silently matched through a cast.
pub(crate) fn key_type_matches(actual: &DataType, declared: &str) -> bool {
    let Ok(declared) = declared.parse::<DataType>() else {
        return actual.to_string() == declared;
    };
    let is_string =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    *actual == declared
        || (actual.is_integer() && declared.is_integer())
        || (is_string(actual) && is_string(&declared))
}

/// Which registry objects the caller of a statement may see: all of them without a caller
/// (the CLI); with one, by its grants (documented in docs/operations.md):
/// - a feature view with `view:<name>`;
/// - a feature service when the caller sees every view it uses;
/// - a model when the caller sees its service (a model whose service is gone: with
///   `registry:write`);
/// - an entity when the caller sees a view of it, or holds `registry:write`.
#[derive(Clone, Copy)]
pub(crate) struct Sight<'a>(pub(crate) Option<&'a dyn Visibility>);

impl Sight<'_> {
    /// Whether `object` (in `state`) is visible.
    pub(crate) fn sees(&self, state: &RegistryState, object: &Object) -> bool {
        let Some(caller) = self.0 else {
            return true;
        };
        let view = |name: &str| caller.can_read_view(&TableName::bare(name));
        match object {
            Object::FeatureView(v) => view(&v.name),
            Object::FeatureService(s) => s.features.iter().all(|f| view(&f.view)),
            Object::Model(m) => match state.get(Kind::FeatureService, &m.service) {
                Some(service) => self.sees(state, service),
                None => caller.can_write_registry(),
            },
            Object::Entity(e) => caller.can_write_registry()
                || state.of_kind(Kind::FeatureView).any(
                    |o| matches!(o, Object::FeatureView(v) if v.entity == e.name && view(&v.name)),
                ),
        }
    }

    /// The object `kind`/`key` of `state`, if it exists and is visible.
    pub(crate) fn get<'s>(
        &self,
        state: &'s RegistryState,
        kind: Kind,
        key: &str,
    ) -> Option<&'s Object> {
        state.get(kind, key).filter(|o| self.sees(state, o))
    }
}

/// A name that does not exist (or is hidden from the caller) in the registry: the error lists
/// what does, of what the caller may see.
fn unknown(state: &RegistryState, kind: Kind, name: &str, sight: Sight<'_>) -> PitlakeError {
    let existing: Vec<String> = state
        .of_kind(kind)
        .filter(|o| sight.sees(state, o))
        .map(Object::key)
        .collect();
    let hint = if existing.is_empty() {
        format!("no {} is registered yet", kind.label())
    } else {
        let ranked = closest_first(name, existing);
        if ranked.len() == 1 {
            format!("did you mean `{}`?", ranked[0])
        } else {
            format!(
                "registered {}s: {}",
                kind.label(),
                ranked
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    PitlakeError::NotFound {
        kind: kind.label().to_string(),
        name: name.to_string(),
        hint,
    }
}

/// The registry objects that refer to `kind`/`key` (what would break if it went away), of those
/// the caller may see.
pub(crate) fn dependents(
    state: &RegistryState,
    kind: Kind,
    key: &str,
    sight: Sight<'_>,
) -> Vec<String> {
    let mut out = Vec::new();
    for object in state.objects.values() {
        let uses = match (kind, object) {
            (Kind::Entity, Object::FeatureView(v)) => v.entity == key,
            (Kind::FeatureView, Object::FeatureService(s)) => {
                s.features.iter().any(|f| f.view == key)
            }
            (Kind::FeatureService, Object::Model(m)) => m.service == key,
            _ => false,
        };
        if uses && sight.sees(state, object) {
            out.push(format!("{} `{}`", object.kind().label(), object.key()));
        }
    }
    out
}

/// [`dependents`] for a message: those the caller may see, and how many others there are.
fn shown_dependents(state: &RegistryState, kind: Kind, key: &str, sight: Sight<'_>) -> String {
    let all = dependents(state, kind, key, Sight(None)).len();
    let mut shown = dependents(state, kind, key, sight);
    let hidden = all - shown.len();
    if hidden > 0 {
        shown.push(format!("{hidden} object(s) you may not see"));
    }
    shown.join(", ")
}

/// How a CREATE treats an existing object.
#[derive(Debug, Clone, Copy)]
struct CreateMode {
    or_replace: bool,
    if_not_exists: bool,
}

/// The change for creating or replacing `object` given the current state (no change when it
/// is already defined exactly so).
fn upsert(
    state: &RegistryState,
    object: Object,
    mode: CreateMode,
    sight: Sight<'_>,
) -> Result<Vec<Change>> {
    let kind = object.kind();
    let key = object.key();
    // A writer may not replace, or learn the definition of, what their grants hide; that the
    // name is taken is all they learn (docs/operations.md).
    if let Some(existing) = state.get(kind, &key)
        && !sight.sees(state, existing)
    {
        return Err(PitlakeError::Plan(format!(
            "{} `{key}` cannot be created or replaced: the name is taken by an object your \
             grants do not let you see; choose another name, or ask for a `view:` grant",
            kind.label()
        )));
    }
    match state.get(kind, &key) {
        Some(existing) if *existing == object => Ok(Vec::new()),
        Some(_) if mode.if_not_exists => Ok(Vec::new()),
        Some(_) if !mode.or_replace => Err(PitlakeError::AlreadyExists {
            kind: kind.label().to_string(),
            name: key,
        }),
        existing => Ok(vec![Change {
            kind,
            key,
            action: if existing.is_some() {
                Action::Replace
            } else {
                Action::Create
            },
            object: Some(object),
        }]),
    }
}

impl Engine {
    /// Which registry objects this engine's caller may see.
    pub(crate) fn sight(&self) -> Sight<'_> {
        Sight(self.caller())
    }

    /// The feature registry of this warehouse.
    pub fn registry(&self) -> Registry {
        Registry::new(self.warehouse().clone(), self.state())
    }

    /// The Arrow schema of a SQL relation (a table, a pinned table, or a subquery).
    pub(crate) async fn relation_schema(&self, relation: &str) -> Result<SchemaRef> {
        let plan = self
            .logical_plan(&format!("SELECT * FROM {relation} AS __source LIMIT 0"))
            .await?;
        Ok(Arc::new(plan.schema().as_arrow().clone()))
    }

    /// The Arrow type of a SQL type name (`BIGINT` → `Int64`).
    /// Only type names pass (`bounds::ensure_type_name`), and they are planned where no table
    /// exists: a type name cannot carry a query.
    pub(crate) async fn sql_type(&self, sql_type: &str) -> Result<DataType> {
        crate::frontend::bounds::ensure_type_name(sql_type)?;
        let schema = super::constant_schema(&format!("SELECT CAST(NULL AS {sql_type}) AS x"))
            .await
            .map_err(|e| PitlakeError::Plan(format!("`{sql_type}` is not a SQL type: {e}")))?;
        Ok(schema.field(0).data_type().clone())
    }

    /// Evaluates a TTL, a constant interval (`INTERVAL '2 hours'`) or a whole number of
    /// seconds (`1800`), to whole seconds. The parser let only constants through
    /// (`bounds::ensure_constant`), and they are evaluated where no table exists.
    pub(crate) async fn interval_seconds(&self, sql: &str) -> Result<i64> {
        let advice = "write an interval such as INTERVAL '2 hours' or a whole number of seconds";
        let batches = super::constant_batches(&format!("SELECT ({sql}) AS ttl"))
            .await
            .map_err(|e| PitlakeError::Plan(format!("TTL {sql}: {e}; {advice}")))?;
        let Some(column) = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .map(|b| b.column(0).clone())
            .filter(|c| !c.is_null(0))
        else {
            return Err(PitlakeError::Plan(format!("TTL {sql} is NULL; {advice}")));
        };
        let seconds = match column.data_type() {
            DataType::Interval(_) => {
                let interval = arrow::compute::cast(
                    &column,
                    &DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
                )?;
                let value = interval
                    .as_any()
                    .downcast_ref::<arrow::array::IntervalMonthDayNanoArray>()
                    .map(|a| a.value(0))
                    .ok_or_else(|| PitlakeError::Internal("TTL: interval cast".into()))?;
                if value.months != 0 {
                    return Err(PitlakeError::Plan(format!(
                        "TTL {sql}: months and years have no fixed length; give days"
                    )));
                }
                i64::from(value.days)
                    .checked_mul(86_400)
                    .and_then(|s| s.checked_add(value.nanoseconds / 1_000_000_000))
            }
            t if t.is_integer() => arrow::compute::cast(&column, &DataType::Int64)
                .ok()
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>().map(|a| a.value(0))),
            other => {
                return Err(PitlakeError::Plan(format!(
                    "TTL {sql} is a {other}, not an interval; {advice}"
                )));
            }
        };
        match seconds {
            Some(s) if s < 0 => Err(PitlakeError::Plan(format!(
                "TTL {sql} is negative; a TTL is how old a value may be"
            ))),
            Some(s) => Ok(s),
            None => Err(PitlakeError::Plan(format!(
                "TTL {sql} is out of range; {advice}"
            ))),
        }
    }

    /// Builds (and checks against its source) the definition of a feature view.
    pub(crate) async fn feature_view_definition(
        &self,
        statement: &DslStatement,
    ) -> Result<FeatureView> {
        let DslStatement::CreateFeatureView {
            name,
            entity,
            source,
            event_time,
            created_time,
            ttl,
            features,
            owner,
            tags,
            comment,
            ..
        } = statement
        else {
            return Err(PitlakeError::Internal("not a feature view".into()));
        };
        let source = match source {
            SourceSql::Table { name, version } => Source::Table {
                table: name.clone(),
                version: *version,
            },
            SourceSql::Query(sql) => Source::Query { sql: sql.clone() },
        };
        let schema = self
            .relation_schema(&source.relation())
            .await
            .map_err(|e| PitlakeError::Plan(format!("feature view `{name}`: its source: {e}")))?;
        let column = |col: &str, what: &str| -> Result<DataType> {
            schema
                .field_with_name(col)
                .map(|f| f.data_type().clone())
                .map_err(|_| {
                    PitlakeError::Plan(format!(
                        "feature view `{name}`: {what} `{col}` is not a column of its source; \
                         columns are: {}",
                        column_list(&schema)
                    ))
                })
        };
        let event_type = column(event_time, "EVENT TIME")?;
        if !crate::asof::supported_time_type(&event_type) {
            return Err(PitlakeError::Plan(format!(
                "feature view `{name}`: EVENT TIME `{event_time}` is {event_type}; it must be a \
                 timestamp, a date or a number"
            )));
        }
        if let Some(created) = created_time {
            let created_type = column(created, "CREATED TIME")?;
            let both_timestamps = matches!(
                (&created_type, &event_type),
                (DataType::Timestamp(_, a), DataType::Timestamp(_, b)) if a.is_some() == b.is_some()
            );
            if created_type != event_type && !both_timestamps {
                return Err(PitlakeError::Plan(format!(
                    "feature view `{name}`: CREATED TIME `{created}` is {created_type} but EVENT \
                     TIME `{event_time}` is {event_type}; they must be the same kind of time"
                )));
            }
        }
        let mut checked = Vec::with_capacity(features.len());
        for FeatureSql {
            name: feature,
            data_type,
            comment,
        } in features
        {
            let actual = column(feature, "feature")?;
            if let Some(declared) = data_type {
                let declared_type = self.sql_type(declared).await?;
                if declared_type != actual {
                    return Err(PitlakeError::Plan(format!(
                        "feature view `{name}`: feature `{feature}` is declared {declared} \
                         ({declared_type}) but the source has {actual}"
                    )));
                }
            }
            checked.push(Feature {
                name: feature.clone(),
                data_type: actual.to_string(),
                description: comment.clone(),
            });
        }
        let ttl_seconds = match ttl {
            Some(ttl) => Some(self.interval_seconds(ttl).await?),
            None => None,
        };
        // The entity is checked against the registry when the change commits; its keys against
        // the source here, so that a view never refers to columns its source lacks.
        let mut view = FeatureView {
            name: name.clone(),
            entity: entity.clone(),
            source,
            event_time: event_time.clone(),
            created_time: created_time.clone(),
            ttl_seconds,
            features: checked,
            owner: owner.clone(),
            tags: tags.iter().cloned().collect::<BTreeMap<_, _>>(),
            description: comment.clone(),
        };
        view.features.dedup_by(|a, b| a.name == b.name);
        Ok(view)
    }

    /// Checks a view's entity keys against its source schema.
    pub(crate) async fn check_view_keys(&self, view: &FeatureView, entity: &Entity) -> Result<()> {
        let schema = self.relation_schema(&view.source.relation()).await?;
        for key in &entity.join_keys {
            match schema.field_with_name(&key.name) {
                Ok(field) if key_type_matches(field.data_type(), &key.data_type) => {}
                Ok(field) => {
                    return Err(PitlakeError::Plan(format!(
                        "feature view `{}`: join key `{}` of entity `{}` is {} but the source \
                         has {}",
                        view.name,
                        key.name,
                        entity.name,
                        key.data_type,
                        field.data_type()
                    )));
                }
                Err(_) => {
                    return Err(PitlakeError::Plan(format!(
                        "feature view `{}`: its source has no column `{}`, the join key of \
                         entity `{}`; columns are: {}",
                        view.name,
                        key.name,
                        entity.name,
                        column_list(&schema)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Runs a registry statement (everything but training sets and exports).
    pub(crate) async fn run_registry(
        &self,
        statement: DslStatement,
        text: &str,
    ) -> Result<super::Output> {
        use super::Output;
        let registry = self.registry();
        let author = author(self);
        let sight = self.sight();
        let done = |version: Option<i64>, what: String| {
            Output::Done(match version {
                Some(v) => format!("{what} (registry version {v})"),
                None => format!("{what}: no change"),
            })
        };
        match statement {
            DslStatement::CreateEntity {
                or_replace,
                if_not_exists,
                name,
                keys,
                comment,
            } => {
                let mut join_keys = Vec::with_capacity(keys.len());
                for (column, sql_type) in &keys {
                    join_keys.push(KeyColumn {
                        name: column.clone(),
                        data_type: self.sql_type(sql_type).await?.to_string(),
                    });
                }
                let entity = Entity {
                    name: name.clone(),
                    join_keys,
                    description: comment,
                };
                let mode = CreateMode {
                    or_replace,
                    if_not_exists,
                };
                let version = registry
                    .commit(text, &author, |state| {
                        if let Some(Object::Entity(old)) = state.get(Kind::Entity, &name)
                            && old.join_keys != entity.join_keys
                        {
                            let users = dependents(state, Kind::Entity, &name, Sight(None));
                            if !users.is_empty() {
                                return Err(PitlakeError::Plan(format!(
                                    "entity `{name}` keeps its join keys while {} use it; drop or \
                                     move them first",
                                    shown_dependents(state, Kind::Entity, &name, sight)
                                )));
                            }
                        }
                        upsert(state, Object::Entity(entity.clone()), mode, sight)
                    })
                    .await?;
                Ok(done(version, format!("entity `{name}`")))
            }
            statement @ DslStatement::CreateFeatureView { .. } => {
                let DslStatement::CreateFeatureView {
                    or_replace,
                    if_not_exists,
                    ..
                } = statement
                else {
                    return Err(PitlakeError::Internal("not a view".into()));
                };
                let view = self.feature_view_definition(&statement).await?;
                let state = registry.state(None).await?;
                let entity = match state.get(Kind::Entity, &view.entity) {
                    Some(Object::Entity(e)) => e.clone(),
                    _ => return Err(unknown(&state, Kind::Entity, &view.entity, sight)),
                };
                self.check_view_keys(&view, &entity).await?;
                let mode = CreateMode {
                    or_replace,
                    if_not_exists,
                };
                let name = view.name.clone();
                let version = registry
                    .commit(text, &author, |state| {
                        match state.get(Kind::Entity, &view.entity) {
                            Some(Object::Entity(now)) if *now == entity => {}
                            Some(_) => {
                                return Err(PitlakeError::Plan(format!(
                                    "entity `{}` changed while this view was being created; \
                                     run the statement again",
                                    view.entity
                                )));
                            }
                            None => {
                                return Err(unknown(state, Kind::Entity, &view.entity, sight));
                            }
                        }
                        upsert(state, Object::FeatureView(view.clone()), mode, sight)
                    })
                    .await?;
                Ok(done(version, format!("feature view `{name}`")))
            }
            DslStatement::CreateFeatureService {
                or_replace,
                if_not_exists,
                name,
                items,
                comment,
            } => {
                let mode = CreateMode {
                    or_replace,
                    if_not_exists,
                };
                let version = registry
                    .commit(text, &author, |state| {
                        let features = resolve_items(state, &items, sight)?;
                        let service = FeatureService {
                            name: name.clone(),
                            features: features
                                .into_iter()
                                .map(|(view, feature)| FeatureRef { view, feature })
                                .collect(),
                            description: comment.clone(),
                        };
                        upsert(state, Object::FeatureService(service), mode, sight)
                    })
                    .await?;
                Ok(done(version, format!("feature service `{name}`")))
            }
            DslStatement::RegisterModel {
                or_replace,
                name,
                version,
                service,
                training_set,
                artifact,
                metadata,
                comment,
            } => {
                let metadata = match metadata {
                    Some(text) => serde_json::from_str(&text).map_err(|e| {
                        PitlakeError::Plan(format!("METADATA is not valid JSON: {e}"))
                    })?,
                    None => serde_json::Value::Null,
                };
                let model = Model {
                    name: name.clone(),
                    version: version.clone(),
                    service: service.clone(),
                    training_set,
                    artifact,
                    metadata,
                    description: comment,
                };
                let mode = CreateMode {
                    or_replace,
                    if_not_exists: false,
                };
                let committed = registry
                    .commit(text, &author, |state| {
                        if sight.get(state, Kind::FeatureService, &service).is_none() {
                            return Err(unknown(state, Kind::FeatureService, &service, sight));
                        }
                        upsert(state, Object::Model(model.clone()), mode, sight)
                    })
                    .await?;
                Ok(done(
                    committed,
                    format!("model `{name}` version `{version}`"),
                ))
            }
            DslStatement::Drop {
                kind,
                name,
                version,
                if_exists,
            } => {
                let key = match (&version, kind) {
                    (Some(v), Kind::Model) => model_key(&name, v),
                    _ => name.clone(),
                };
                let committed = registry
                    .commit(text, &author, |state| {
                        let keys: Vec<String> = if kind == Kind::Model && version.is_none() {
                            // Every version of the model.
                            state
                                .of_kind(Kind::Model)
                                .filter(|o| sight.sees(state, o))
                                .filter_map(|o| match o {
                                    Object::Model(m) if m.name == name => Some(o.key()),
                                    _ => None,
                                })
                                .collect()
                        } else if sight.get(state, kind, &key).is_some() {
                            vec![key.clone()]
                        } else {
                            Vec::new()
                        };
                        if keys.is_empty() {
                            return if if_exists {
                                Ok(Vec::new())
                            } else {
                                Err(unknown(state, kind, &key, sight))
                            };
                        }
                        if !dependents(state, kind, &key, Sight(None)).is_empty() {
                            return Err(PitlakeError::Plan(format!(
                                "{} `{key}` is used by {}; drop those first",
                                kind.label(),
                                shown_dependents(state, kind, &key, sight)
                            )));
                        }
                        Ok(keys
                            .into_iter()
                            .map(|key| Change {
                                kind,
                                key,
                                action: Action::Drop,
                                object: None,
                            })
                            .collect())
                    })
                    .await?;
                Ok(done(committed, format!("dropped {} `{key}`", kind.label())))
            }
            DslStatement::Show { kind, at } => {
                let state = registry.state(at).await?;
                self.show(&state, kind).map(Output::Rows)
            }
            DslStatement::Describe {
                kind,
                name,
                version,
                at,
            } => {
                let key = match (&version, kind) {
                    (Some(v), Kind::Model) => model_key(&name, v),
                    _ => name.clone(),
                };
                self.describe(kind, &key, at).await.map(Output::Rows)
            }
            DslStatement::History {
                kind,
                name,
                version,
            } => {
                let key = match (&version, kind) {
                    (Some(v), Kind::Model) => model_key(&name, v),
                    _ => name,
                };
                self.history_of(kind, &key).await.map(Output::Rows)
            }
            DslStatement::Diff {
                kind,
                name,
                version,
                from,
                to,
            } => {
                let key = match (&version, kind) {
                    (Some(v), Kind::Model) => model_key(&name, v),
                    _ => name,
                };
                self.diff(kind, &key, from, to).await.map(Output::Rows)
            }
            DslStatement::TrainingSet(_) | DslStatement::Export { .. } => Err(
                PitlakeError::Internal("training sets are not registry statements".into()),
            ),
        }
    }

    fn show(&self, state: &RegistryState, kind: Kind) -> Result<SendableRecordBatchStream> {
        let sight = self.sight();
        let objects: Vec<&Object> = state
            .of_kind(kind)
            .filter(|o| sight.sees(state, o))
            .collect();
        let summary = |o: &Object| -> String {
            match o {
                Object::Entity(e) => e
                    .join_keys
                    .iter()
                    .map(|k| format!("{} {}", k.name, k.data_type))
                    .collect::<Vec<_>>()
                    .join(", "),
                Object::FeatureView(v) => format!(
                    "entity {}, from {}, {} feature(s){}",
                    v.entity,
                    v.source.relation(),
                    v.features.len(),
                    v.ttl_seconds
                        .map(|s| format!(", ttl {s}s"))
                        .unwrap_or_default()
                ),
                Object::FeatureService(s) => s
                    .features
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                Object::Model(m) => format!("service {}", m.service),
            }
        };
        let description = |o: &Object| -> Option<String> {
            match o {
                Object::Entity(e) => e.description.clone(),
                Object::FeatureView(v) => v.description.clone(),
                Object::FeatureService(s) => s.description.clone(),
                Object::Model(m) => m.description.clone(),
            }
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("definition", DataType::Utf8, false),
            Field::new("description", DataType::Utf8, true),
        ]));
        let names: Vec<String> = objects.iter().map(|o| o.key()).collect();
        let summaries: Vec<String> = objects.iter().map(|o| summary(o)).collect();
        let descriptions: Vec<Option<String>> = objects.iter().map(|o| description(o)).collect();
        rows(
            schema,
            vec![
                strings(names.iter().map(|s| Some(s.as_str()))),
                strings(summaries.iter().map(|s| Some(s.as_str()))),
                strings(descriptions.iter().map(|s| s.as_deref())),
            ],
        )
    }

    async fn describe(
        &self,
        kind: Kind,
        key: &str,
        at: Option<i64>,
    ) -> Result<SendableRecordBatchStream> {
        let registry = self.registry();
        let sight = self.sight();
        let state = registry.state(at).await?;
        let object = sight
            .get(&state, kind, key)
            .ok_or_else(|| unknown(&state, kind, key, sight))?;
        let (_, events) = registry.events(at).await?;
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.change.kind == kind && e.change.key == key)
            .collect();
        let mut props: Vec<(String, String)> = vec![
            ("kind".into(), kind.label().into()),
            ("name".into(), key.into()),
            ("definition".into(), object.pretty()),
        ];
        if let (Some(first), Some(last)) = (mine.first(), mine.last()) {
            props.push((
                "created".into(),
                format!(
                    "registry version {} by {}",
                    first.registry_version, first.changed_by
                ),
            ));
            props.push((
                "last changed".into(),
                format!(
                    "registry version {} by {} ({} change(s) in all)",
                    last.registry_version,
                    last.changed_by,
                    mine.len()
                ),
            ));
        }
        let used_by = dependents(&state, kind, key, sight);
        props.push((
            "used by".into(),
            if used_by.is_empty() {
                "nothing".into()
            } else {
                used_by.join(", ")
            },
        ));
        match object {
            Object::FeatureView(v) => {
                // Lineage down to models: which models use this view through a service.
                let models: Vec<String> = state
                    .of_kind(Kind::Model)
                    .filter(|o| sight.sees(&state, o))
                    .filter_map(|o| match o {
                        Object::Model(m) => match state.get(Kind::FeatureService, &m.service) {
                            Some(Object::FeatureService(s))
                                if s.features.iter().any(|f| f.view == v.name) =>
                            {
                                Some(o.key())
                            }
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect();
                props.push((
                    "models".into(),
                    if models.is_empty() {
                        "none".into()
                    } else {
                        models.join(", ")
                    },
                ));
            }
            Object::Model(m) => {
                let features = match state.get(Kind::FeatureService, &m.service) {
                    Some(Object::FeatureService(s)) => s
                        .features
                        .iter()
                        .map(|f| f.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => format!("(service `{}` no longer exists)", m.service),
                };
                props.push(("features".into(), features));
                if let Some(manifest) = &m.training_set {
                    props.push(("training set".into(), manifest_summary(manifest)));
                }
            }
            _ => {}
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("property", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
        ]));
        rows(
            schema,
            vec![
                strings(props.iter().map(|(k, _)| Some(k.as_str()))),
                strings(props.iter().map(|(_, v)| Some(v.as_str()))),
            ],
        )
    }

    async fn history_of(&self, kind: Kind, key: &str) -> Result<SendableRecordBatchStream> {
        let (_, events) = self.registry().events(None).await?;
        let state = self.registry().state(None).await?;
        let sight = self.sight();
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.change.kind == kind && e.change.key == key)
            .collect();
        // Visible as its last definition is; and of its past, only the definitions (and the
        // statements that wrote them) the caller could see: an old service may have used a
        // view the caller may not see.
        let last = mine.iter().rev().find_map(|e| e.change.object.as_ref());
        if !last.is_some_and(|o| sight.sees(&state, o)) {
            return Err(unknown(&state, kind, key, sight));
        }
        let mine: Vec<_> = mine
            .into_iter()
            .filter(|e| {
                e.change
                    .object
                    .as_ref()
                    .is_none_or(|o| sight.sees(&state, o))
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("registry_version", DataType::Int64, false),
            Field::new("action", DataType::Utf8, false),
            Field::new(
                "changed_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("changed_by", DataType::Utf8, false),
            Field::new("statement", DataType::Utf8, false),
            Field::new("definition", DataType::Utf8, true),
        ]));
        let actions: Vec<&str> = mine
            .iter()
            .map(|e| match e.change.action {
                Action::Create => "create",
                Action::Replace => "replace",
                Action::Drop => "drop",
            })
            .collect();
        let definitions: Vec<Option<String>> = mine
            .iter()
            .map(|e| e.change.object.as_ref().map(Object::pretty))
            .collect();
        rows(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(
                    mine.iter().map(|e| e.registry_version),
                )),
                strings(actions.iter().map(|a| Some(*a))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        mine.iter().map(|e| e.changed_at_us),
                    )
                    .with_timezone("UTC"),
                ),
                strings(mine.iter().map(|e| Some(e.changed_by.as_str()))),
                strings(mine.iter().map(|e| Some(e.statement.as_str()))),
                strings(definitions.iter().map(|d| d.as_deref())),
            ],
        )
    }

    async fn diff(
        &self,
        kind: Kind,
        key: &str,
        from: i64,
        to: i64,
    ) -> Result<SendableRecordBatchStream> {
        let registry = self.registry();
        let before = registry.state(Some(from)).await?;
        let after = registry.state(Some(to)).await?;
        let as_fields = |state: &RegistryState| -> BTreeMap<String, String> {
            match state.get(kind, key).map(serde_json::to_value) {
                Some(Ok(serde_json::Value::Object(map))) => {
                    map.into_iter().map(|(k, v)| (k, v.to_string())).collect()
                }
                _ => BTreeMap::new(),
            }
        };
        let sight = self.sight();
        let hidden =
            |state: &RegistryState| state.get(kind, key).is_some_and(|o| !sight.sees(state, o));
        if (before.get(kind, key).is_none() && after.get(kind, key).is_none())
            || hidden(&before)
            || hidden(&after)
        {
            return Err(PitlakeError::Plan(format!(
                "{} `{key}` exists at neither registry version {from} nor {to}",
                kind.label()
            )));
        }
        let (old, new) = (as_fields(&before), as_fields(&after));
        let mut fields: Vec<&String> = old.keys().chain(new.keys()).collect();
        fields.sort();
        fields.dedup();
        let changed: Vec<(&String, Option<&String>, Option<&String>)> = fields
            .into_iter()
            .map(|f| (f, old.get(f), new.get(f)))
            .filter(|(_, a, b)| a != b)
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("field", DataType::Utf8, false),
            Field::new(format!("at_version_{from}"), DataType::Utf8, true),
            Field::new(format!("at_version_{to}"), DataType::Utf8, true),
        ]));
        rows(
            schema,
            vec![
                strings(changed.iter().map(|(f, _, _)| Some(f.as_str()))),
                strings(changed.iter().map(|(_, a, _)| a.map(String::as_str))),
                strings(changed.iter().map(|(_, _, b)| b.map(String::as_str))),
            ],
        )
    }
}

/// Expands a feature list into (view, feature) pairs, in order, without duplicates; `None`
/// means every feature of the view. Unknown names list what exists.
pub(crate) fn resolve_items(
    state: &RegistryState,
    items: &[FeatureItem],
    sight: Sight<'_>,
) -> Result<Vec<(String, Option<String>)>> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut push = |pair: (String, Option<String>)| {
        if !out.contains(&pair) {
            out.push(pair);
        }
    };
    for item in items {
        match item {
            FeatureItem::View(view) => {
                if sight.get(state, Kind::FeatureView, view).is_none() {
                    return Err(unknown(state, Kind::FeatureView, view, sight));
                }
                push((view.clone(), None));
            }
            FeatureItem::Feature(view, feature) => {
                let Some(Object::FeatureView(v)) = sight.get(state, Kind::FeatureView, view) else {
                    return Err(unknown(state, Kind::FeatureView, view, sight));
                };
                if !v.features.iter().any(|f| &f.name == feature) {
                    let names: Vec<String> = v.features.iter().map(|f| f.name.clone()).collect();
                    return Err(PitlakeError::Plan(format!(
                        "feature view `{view}` has no feature `{feature}`; its features are: {}",
                        closest_first(feature, names).join(", ")
                    )));
                }
                push((view.clone(), Some(feature.clone())));
            }
            FeatureItem::Service(service) => {
                let Some(Object::FeatureService(s)) =
                    sight.get(state, Kind::FeatureService, service)
                else {
                    return Err(unknown(state, Kind::FeatureService, service, sight));
                };
                for f in &s.features {
                    push((f.view.clone(), f.feature.clone()));
                }
            }
        }
    }
    Ok(out)
}

fn column_list(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How `DESCRIBE MODEL` shows the manifest a model was registered with: its location as
/// recorded, never its content. A registry writer may record any path; opening it on the
/// server (a FIFO, `/dev/zero`, another user's file) would hang, exhaust or leak.
fn manifest_summary(location: &str) -> String {
    format!(
        "{location} (as recorded; pitlake does not open paths stored in the registry: run \
         `pitlake verify` or `pitlake reproduce` on it for its inputs)"
    )
}
