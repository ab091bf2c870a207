//! The statements that define one registry object (`CREATE ENTITY`, `CREATE FEATURE VIEW`,
//! `CREATE FEATURE SERVICE`, `REGISTER MODEL`): each builds its object, checked against the
//! warehouse and against the objects it refers to, and commits it; a folder of definitions
//! (`engine::definitions`) builds the same objects against what the folder declares.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, Int64Array};
use arrow::datatypes::{DataType, SchemaRef};

use super::sight::{Sight, dependents, resolve_items, shown_dependents, unknown};
use super::{RunDsl, author, column_list, is_string};
use crate::engine::{Engine, Output};
use crate::error::{PitlakeError, Result};
use crate::frontend::dsl::{
    CreateEntity, CreateFeatureService, CreateFeatureView, CreateMode, DslStatement, FeatureSql,
    RegisterModel, SourceSql,
};
use crate::registry::{
    Action, Aggregate, Change, Entity, Feature, FeatureRef, FeatureService, FeatureView, KeyColumn,
    Kind, Object, Registry, RegistryState,
};

/// Whether a column of type `actual` can carry an entity key declared as `declared` (an Arrow
/// type name): the same type, or both integers, or both strings. Equality on such pairs is
/// exact after DataFusion's coercion; anything else (a float key, a string against a number) is
/// refused rather than silently matched through a cast.
pub(crate) fn key_type_matches(actual: &DataType, declared: &str) -> bool {
    let Ok(declared) = declared.parse::<DataType>() else {
        return actual.to_string() == declared;
    };
    *actual == declared
        || (actual.is_integer() && declared.is_integer())
        || (is_string(actual) && is_string(&declared))
}

/// The objects a definition may refer to: the registry (when a statement runs), or the objects
/// a folder of definitions declares (`pitlake plan` / `apply`).
pub(crate) struct Known<'a> {
    /// The objects.
    pub(crate) state: &'a RegistryState,
    /// What the caller may see of them.
    pub(crate) sight: Sight<'a>,
    /// Whether they are a folder's declarations rather than the registry.
    pub(crate) declared: bool,
}

impl Known<'_> {
    /// The object `kind`/`name` that `by` (`feature view `v``) refers to.
    fn require(&self, kind: Kind, name: &str, by: &str) -> Result<&Object> {
        match self.sight.get(self.state, kind, name) {
            Some(object) => Ok(object),
            None if self.declared => Err(PitlakeError::Plan(format!(
                "{by} uses {} `{name}`, which no definition file declares",
                kind.label()
            ))),
            None => Err(unknown(self.state, kind, name, self.sight)),
        }
    }
}

/// A statement that defines one registry object.
pub(crate) trait Define {
    /// The kind of object it defines.
    const KIND: Kind;

    /// How it treats an existing object of its name.
    fn mode(&self) -> CreateMode;

    /// The object, checked against the warehouse and against `known` (what it refers to must
    /// be there).
    async fn object(&self, engine: &Engine, known: &Known<'_>) -> Result<Object>;

    /// The object to commit, given the registry as the commit finds it (another writer may
    /// have committed since [`Define::object`] built it). By default the object as built.
    fn recheck(&self, object: &Object, _at: &Recheck<'_>) -> Result<Object> {
        Ok(object.clone())
    }
}

/// The registry around a definition's commit.
pub(crate) struct Recheck<'a> {
    /// As [`Define::object`] read it.
    before: &'a RegistryState,
    /// As the commit finds it.
    now: &'a RegistryState,
    /// What the caller may see.
    sight: Sight<'a>,
}

/// Runs a definition: builds its object against the registry and commits it.
async fn define<D: Define>(statement: &D, engine: &Engine, text: &str) -> Result<Output> {
    let registry = engine.registry();
    let sight = engine.sight();
    let before = registry.state(None).await?;
    let known = Known {
        state: &before,
        sight,
        declared: false,
    };
    let object = statement.object(engine, &known).await?;
    let what = match &object {
        Object::Model(m) => format!("model `{}` version `{}`", m.name, m.version),
        other => format!("{} `{}`", other.kind().label(), other.key()),
    };
    let version = registry
        .commit(text, &author(engine), |now| {
            let at = Recheck {
                before: &before,
                now,
                sight,
            };
            let object = statement.recheck(&object, &at)?;
            upsert(now, object, statement.mode(), sight)
        })
        .await?;
    Ok(Output::Done(match version {
        Some(v) => format!("{what} (registry version {v})"),
        None => format!("{what}: no change"),
    }))
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
        let schema =
            crate::engine::constant_schema(&format!("SELECT CAST(NULL AS {sql_type}) AS x"))
                .await
                .map_err(|e| PitlakeError::Plan(format!("`{sql_type}` is not a SQL type: {e}")))?;
        Ok(schema.field(0).data_type().clone())
    }

    /// Evaluates a TTL or a window's width (`what`), a constant interval (`INTERVAL '2 hours'`)
    /// or a whole number of seconds (`1800`), to whole seconds. The parser let only constants
    /// through (`bounds::ensure_constant`), and they are evaluated where no table exists.
    pub(crate) async fn interval_seconds(&self, sql: &str, what: &str) -> Result<i64> {
        let advice = "write an interval such as INTERVAL '2 hours' or a whole number of seconds";
        let batches = crate::engine::constant_batches(&format!("SELECT ({sql}) AS width"))
            .await
            .map_err(|e| PitlakeError::Plan(format!("{what} {sql}: {e}; {advice}")))?;
        let Some(column) = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .map(|b| b.column(0).clone())
            .filter(|c| !c.is_null(0))
        else {
            return Err(PitlakeError::Plan(format!(
                "{what} {sql} is NULL; {advice}"
            )));
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
                    .ok_or_else(|| PitlakeError::Internal(format!("{what}: interval cast")))?;
                if value.months != 0 {
                    return Err(PitlakeError::Plan(format!(
                        "{what} {sql}: months and years have no fixed length; give days"
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
                    "{what} {sql} is a {other}, not an interval; {advice}"
                )));
            }
        };
        match seconds {
            Some(s) if s < 0 => Err(PitlakeError::Plan(format!(
                "{what} {sql} is negative; give a length of time"
            ))),
            Some(s) => Ok(s),
            None => Err(PitlakeError::Plan(format!(
                "{what} {sql} is out of range; {advice}"
            ))),
        }
    }

    /// Checks a view's entity keys against its source schema.
    pub(crate) async fn check_view_keys(&self, view: &FeatureView, entity: &Entity) -> Result<()> {
        let schema = self.relation_schema(&view.source.relation()).await?;
        check_keys(&schema, entity, |key, found| {
            PitlakeError::Plan(match found {
                Some(actual) => format!(
                    "feature view `{}`: join key `{}` of entity `{}` is {} but the source has \
                     {actual}",
                    view.name, key.name, entity.name, key.data_type
                ),
                None => format!(
                    "feature view `{}`: its source has no column `{}`, the join key of entity \
                     `{}`; columns are: {}",
                    view.name,
                    key.name,
                    entity.name,
                    column_list(&schema)
                ),
            })
        })
    }
}

/// Checks that `schema` has each join key of `entity`, of a type that can carry it;
/// `error(key, found)` says what is wrong (`found`: the column's type, `None` when missing).
pub(crate) fn check_keys(
    schema: &SchemaRef,
    entity: &Entity,
    error: impl Fn(&KeyColumn, Option<&DataType>) -> PitlakeError,
) -> Result<()> {
    for key in &entity.join_keys {
        match schema.field_with_name(&key.name) {
            Ok(field) if key_type_matches(field.data_type(), &key.data_type) => {}
            Ok(field) => return Err(error(key, Some(field.data_type()))),
            Err(_) => return Err(error(key, None)),
        }
    }
    Ok(())
}

impl Define for CreateEntity {
    const KIND: Kind = Kind::Entity;

    fn mode(&self) -> CreateMode {
        self.mode
    }

    async fn object(&self, engine: &Engine, _known: &Known<'_>) -> Result<Object> {
        let mut join_keys = Vec::with_capacity(self.keys.len());
        for (column, sql_type) in &self.keys {
            join_keys.push(KeyColumn {
                name: column.clone(),
                data_type: engine.sql_type(sql_type).await?.to_string(),
            });
        }
        Ok(Object::Entity(Entity {
            name: self.name.clone(),
            join_keys,
            description: self.comment.clone(),
        }))
    }

    /// An entity keeps its join keys while anything uses it.
    fn recheck(&self, object: &Object, at: &Recheck<'_>) -> Result<Object> {
        let (now, sight) = (at.now, at.sight);
        let name = &self.name;
        if let (Some(Object::Entity(old)), Object::Entity(new)) =
            (now.get(Kind::Entity, name), object)
            && old.join_keys != new.join_keys
            && !dependents(now, Kind::Entity, name, Sight(None)).is_empty()
        {
            return Err(PitlakeError::Plan(format!(
                "entity `{name}` keeps its join keys while {} use it; drop or move them first",
                shown_dependents(now, Kind::Entity, name, sight)
            )));
        }
        Ok(object.clone())
    }
}

impl RunDsl for CreateEntity {
    async fn run(self, engine: &Engine, text: &str) -> Result<Output> {
        define(&self, engine, text).await
    }
}

impl CreateFeatureView {
    /// The type of column `col` of the source, which the view names as `what`.
    fn column(&self, schema: &SchemaRef, col: &str, what: &str) -> Result<DataType> {
        schema
            .field_with_name(col)
            .map(|f| f.data_type().clone())
            .map_err(|_| {
                PitlakeError::Plan(format!(
                    "feature view `{}`: {what} `{col}` is not a column of its source; columns \
                     are: {}",
                    self.name,
                    column_list(schema)
                ))
            })
    }

    /// The event time is a time; the created time, if any, the same kind of time.
    fn check_times(&self, schema: &SchemaRef) -> Result<()> {
        let (name, event_time) = (&self.name, &self.event_time);
        let event_type = self.column(schema, event_time, "EVENT TIME")?;
        if !crate::asof::supported_time_type(&event_type) {
            return Err(PitlakeError::Plan(format!(
                "feature view `{name}`: EVENT TIME `{event_time}` is {event_type}; it must be a \
                 timestamp, a date or a number"
            )));
        }
        if let Some(created) = &self.created_time {
            let created_type = self.column(schema, created, "CREATED TIME")?;
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
        Ok(())
    }

    /// The windowed aggregates, checked against the source: the event time can bound a window,
    /// each column exists and suits its function, each width is a positive constant, and no
    /// name is taken twice (nor by a feature).
    async fn aggregates(
        &self,
        engine: &Engine,
        schema: &SchemaRef,
        features: &[Feature],
    ) -> Result<Vec<Aggregate>> {
        use crate::asof::window::{AggFunction, MAX_LAST_K};
        if self.aggregates.is_empty() {
            if self.windows_exclusive {
                return Err(PitlakeError::Plan(format!(
                    "feature view `{}`: WINDOWS EXCLUSIVE without AGGREGATES has no windows to \
                     apply to",
                    self.name
                )));
            }
            return Ok(Vec::new());
        }
        let name = &self.name;
        let event_type = self.column(schema, &self.event_time, "EVENT TIME")?;
        if !crate::asof::window::window_time_type(&event_type) {
            return Err(PitlakeError::Plan(format!(
                "feature view `{name}`: AGGREGATES need an EVENT TIME that is a timestamp, a date \
                 or an integer; `{}` is {event_type}",
                self.event_time
            )));
        }
        let plan_error = |e: datafusion::error::DataFusionError| {
            let message = e.strip_backtrace();
            let message = message
                .trim_start_matches("Error during planning: ")
                .to_string();
            PitlakeError::Plan(format!("feature view `{name}`: {message}"))
        };
        let mut names: Vec<&str> = features.iter().map(|f| f.name.as_str()).collect();
        let mut checked = Vec::with_capacity(self.aggregates.len());
        for a in &self.aggregates {
            if names.contains(&a.name.as_str()) {
                return Err(PitlakeError::Plan(format!(
                    "feature view `{name}`: `{}` names two features; give each aggregate its \
                     own name",
                    a.name
                )));
            }
            names.push(&a.name);
            let function =
                AggFunction::from_name(&a.function, a.column.is_none()).map_err(plan_error)?;
            let arg_type = match &a.column {
                Some(c) => Some(self.column(schema, c, "aggregated column")?),
                None => None,
            };
            if let Some(k) = a.k
                && !(1..=MAX_LAST_K).contains(&k)
            {
                return Err(PitlakeError::Plan(format!(
                    "feature view `{name}`: {}: last(x, k) takes k from 1 to {MAX_LAST_K}, not {k}",
                    a.name
                )));
            }
            let output = function
                .output_type(arg_type.as_ref(), a.k)
                .map_err(plan_error)?;
            let what = format!("the window of `{}`", a.name);
            let window = engine.interval_seconds(&a.window, &what).await?;
            if window == 0 {
                return Err(PitlakeError::Plan(format!(
                    "feature view `{name}`: {what} is empty; give a width greater than zero"
                )));
            }
            checked.push(Aggregate {
                name: a.name.clone(),
                function: function.name().to_string(),
                column: a.column.clone(),
                k: a.k,
                window,
                data_type: output.to_string(),
            });
        }
        Ok(checked)
    }

    /// The features, with the source's types (a declared type must be the source's).
    async fn features(&self, engine: &Engine, schema: &SchemaRef) -> Result<Vec<Feature>> {
        let mut checked: Vec<Feature> = Vec::with_capacity(self.features.len());
        for FeatureSql {
            name: feature,
            data_type,
            comment,
        } in &self.features
        {
            let actual = self.column(schema, feature, "feature")?;
            if let Some(declared) = data_type {
                let declared_type = engine.sql_type(declared).await?;
                if declared_type != actual {
                    return Err(PitlakeError::Plan(format!(
                        "feature view `{}`: feature `{feature}` is declared {declared} \
                         ({declared_type}) but the source has {actual}",
                        self.name
                    )));
                }
            }
            checked.push(Feature {
                name: feature.clone(),
                data_type: actual.to_string(),
                description: comment.clone(),
            });
        }
        checked.dedup_by(|a, b| a.name == b.name);
        Ok(checked)
    }
}

impl Define for CreateFeatureView {
    const KIND: Kind = Kind::FeatureView;

    fn mode(&self) -> CreateMode {
        self.mode
    }

    /// Checked against its source (times, features, the entity's keys) and its entity.
    async fn object(&self, engine: &Engine, known: &Known<'_>) -> Result<Object> {
        let name = &self.name;
        let source = self.source.to_registry();
        let schema = engine
            .relation_schema(&source.relation())
            .await
            .map_err(|e| PitlakeError::Plan(format!("feature view `{name}`: its source: {e}")))?;
        self.check_times(&schema)?;
        let features = self.features(engine, &schema).await?;
        let aggregates = self.aggregates(engine, &schema, &features).await?;
        let ttl_seconds = match &self.ttl {
            Some(ttl) => Some(engine.interval_seconds(ttl, "TTL").await?),
            None => None,
        };
        let view = FeatureView {
            name: name.clone(),
            entity: self.entity.clone(),
            source,
            event_time: self.event_time.clone(),
            created_time: self.created_time.clone(),
            ttl_seconds,
            features,
            aggregates,
            windows_exclusive: self.windows_exclusive,
            owner: self.owner.clone(),
            tags: self.tags.iter().cloned().collect::<BTreeMap<_, _>>(),
            description: self.comment.clone(),
        };
        let by = format!("feature view `{name}`");
        let Object::Entity(entity) = known.require(Kind::Entity, &self.entity, &by)? else {
            return Err(PitlakeError::Internal("an entity that is not one".into()));
        };
        engine.check_view_keys(&view, entity).await?;
        Ok(Object::FeatureView(view))
    }

    /// The entity is still the one the view was checked against.
    fn recheck(&self, object: &Object, at: &Recheck<'_>) -> Result<Object> {
        let (before, now, sight) = (at.before, at.now, at.sight);
        let entity = &self.entity;
        match now.get(Kind::Entity, entity) {
            None => Err(unknown(now, Kind::Entity, entity, sight)),
            Some(e) if Some(e) != before.get(Kind::Entity, entity) => {
                Err(PitlakeError::Plan(format!(
                    "entity `{entity}` changed while this view was being created; run the \
                     statement again"
                )))
            }
            Some(_) => Ok(object.clone()),
        }
    }
}

impl RunDsl for CreateFeatureView {
    fn named_relation(&self) -> Option<&SourceSql> {
        Some(&self.source)
    }

    async fn run(self, engine: &Engine, text: &str) -> Result<Output> {
        define(&self, engine, text).await
    }
}

impl CreateFeatureService {
    /// The service over what `state` holds.
    fn service(&self, state: &RegistryState, sight: Sight<'_>) -> Result<Object> {
        let features = resolve_items(state, &self.items, sight)?;
        Ok(Object::FeatureService(FeatureService {
            name: self.name.clone(),
            features: features
                .into_iter()
                .map(|(view, feature)| FeatureRef { view, feature })
                .collect(),
            description: self.comment.clone(),
        }))
    }
}

impl Define for CreateFeatureService {
    const KIND: Kind = Kind::FeatureService;

    fn mode(&self) -> CreateMode {
        self.mode
    }

    async fn object(&self, _engine: &Engine, known: &Known<'_>) -> Result<Object> {
        self.service(known.state, known.sight)
    }

    /// Its views resolved again, as the registry has them now.
    fn recheck(&self, _object: &Object, at: &Recheck<'_>) -> Result<Object> {
        let (now, sight) = (at.now, at.sight);
        self.service(now, sight)
    }
}

impl RunDsl for CreateFeatureService {
    async fn run(self, engine: &Engine, text: &str) -> Result<Output> {
        define(&self, engine, text).await
    }
}

impl Define for RegisterModel {
    const KIND: Kind = Kind::Model;

    fn mode(&self) -> CreateMode {
        CreateMode {
            or_replace: self.or_replace,
            if_not_exists: false,
        }
    }

    async fn object(&self, _engine: &Engine, known: &Known<'_>) -> Result<Object> {
        let by = format!("model `{}`", self.model.name);
        known.require(Kind::FeatureService, &self.model.service, &by)?;
        Ok(Object::Model(self.model.clone()))
    }

    /// Its service still exists.
    fn recheck(&self, object: &Object, at: &Recheck<'_>) -> Result<Object> {
        let (now, sight) = (at.now, at.sight);
        let service = &self.model.service;
        if sight.get(now, Kind::FeatureService, service).is_none() {
            return Err(unknown(now, Kind::FeatureService, service, sight));
        }
        Ok(object.clone())
    }
}

impl RunDsl for RegisterModel {
    async fn run(self, engine: &Engine, text: &str) -> Result<Output> {
        define(&self, engine, text).await
    }
}

/// The object `statement` declares, if it is a definition of `kind`.
async fn declare_one<D: Define>(
    statement: &D,
    engine: &Engine,
    kind: Kind,
    known: &Known<'_>,
) -> Result<Option<Object>> {
    if D::KIND != kind {
        return Ok(None);
    }
    statement.object(engine, known).await.map(Some)
}

impl Engine {
    /// The object a definition statement declares, if it defines one of `kind`, checked
    /// against `known`; an error for a statement that defines nothing (`text` as written).
    pub(crate) async fn declare(
        &self,
        statement: &DslStatement,
        text: &str,
        kind: Kind,
        known: &Known<'_>,
    ) -> Result<Option<Object>> {
        match statement {
            DslStatement::CreateEntity(s) => declare_one(s, self, kind, known).await,
            DslStatement::CreateFeatureView(s) => declare_one(s, self, kind, known).await,
            DslStatement::CreateFeatureService(s) => declare_one(s, self, kind, known).await,
            DslStatement::RegisterModel(s) => declare_one(s, self, kind, known).await,
            other => Err(PitlakeError::Plan(format!(
                "definition files declare objects; `{text}` is a {} statement",
                match other {
                    DslStatement::Drop(_) => "DROP",
                    _ => "query",
                }
            ))),
        }
    }
}
