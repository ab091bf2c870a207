//! The statements about registry objects by name: `DROP` changes the registry; `SHOW`,
//! `DESCRIBE`, `SHOW HISTORY OF` and `SHOW DIFF OF` answer from it, showing only what the
//! caller may see.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Int64Array, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::execution::SendableRecordBatchStream;

use super::sight::{Sight, dependents, shown_dependents, unknown};
use super::{RunDsl, author, rows, strings};
use crate::engine::planning::TableName;
use crate::engine::{Engine, Output};
use crate::error::{PitlakeError, Result};
use crate::frontend::dsl::{
    DescribeObject, DropObject, ObjectRef, ShowDiff, ShowHistory, ShowObjects,
};
use crate::registry::{Action, Change, Kind, Object, RegistryState};

impl RunDsl for DropObject {
    async fn run(self, engine: &Engine, text: &str) -> Result<Output> {
        let sight = engine.sight();
        let DropObject { object, if_exists } = self;
        let (kind, key) = (object.kind, object.key());
        let committed = engine
            .registry()
            .commit(text, &author(engine), |state| {
                let keys = dropped_keys(state, &object, sight);
                if keys.is_empty() {
                    return if if_exists {
                        Ok(Vec::new())
                    } else {
                        Err(unknown(state, kind, &key, sight))
                    };
                }
                if !dependents(state, kind, &key, Sight(None)).is_empty() {
                    return Err(PitlakeError::InUse(format!(
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
        let what = format!("dropped {} `{key}`", kind.label());
        Ok(Output::Done(match committed {
            Some(v) => format!("{what} (registry version {v})"),
            None => format!("{what}: no change"),
        }))
    }
}

/// The keys a `DROP` removes, of those the caller may see: the object, or every version of a
/// model named without one.
fn dropped_keys(state: &RegistryState, object: &ObjectRef, sight: Sight<'_>) -> Vec<String> {
    if object.kind == Kind::Model && object.version.is_none() {
        return state
            .of_kind(Kind::Model)
            .filter(|o| sight.sees(state, o))
            .filter_map(|o| match o {
                Object::Model(m) if m.name == object.name => Some(o.key()),
                _ => None,
            })
            .collect();
    }
    let key = object.key();
    if sight.get(state, object.kind, &key).is_some() {
        vec![key]
    } else {
        Vec::new()
    }
}

/// A feature view named as the object of a registry read.
fn named_view(object: &ObjectRef) -> BTreeSet<TableName> {
    if object.kind == Kind::FeatureView {
        BTreeSet::from([TableName::bare(&object.name)])
    } else {
        BTreeSet::new()
    }
}

impl RunDsl for ShowObjects {
    const CHANGES_REGISTRY: bool = false;

    async fn run(self, engine: &Engine, _text: &str) -> Result<Output> {
        let state = engine.registry().state(self.at).await?;
        engine.show(&state, self.kind).map(Output::Rows)
    }
}

impl RunDsl for DescribeObject {
    const CHANGES_REGISTRY: bool = false;

    fn named_views(&self) -> BTreeSet<TableName> {
        named_view(&self.object)
    }

    async fn run(self, engine: &Engine, _text: &str) -> Result<Output> {
        let (kind, key) = (self.object.kind, self.object.key());
        engine.describe(kind, &key, self.at).await.map(Output::Rows)
    }
}

impl RunDsl for ShowHistory {
    const CHANGES_REGISTRY: bool = false;

    fn named_views(&self) -> BTreeSet<TableName> {
        named_view(&self.object)
    }

    async fn run(self, engine: &Engine, _text: &str) -> Result<Output> {
        let (kind, key) = (self.object.kind, self.object.key());
        engine.history_of(kind, &key).await.map(Output::Rows)
    }
}

impl RunDsl for ShowDiff {
    const CHANGES_REGISTRY: bool = false;

    fn named_views(&self) -> BTreeSet<TableName> {
        named_view(&self.object)
    }

    async fn run(self, engine: &Engine, _text: &str) -> Result<Output> {
        let (kind, key) = (self.object.kind, self.object.key());
        engine
            .diff(kind, &key, self.from, self.to)
            .await
            .map(Output::Rows)
    }
}

impl Engine {
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
                    "entity {}, from {}, {} feature(s){}{}",
                    v.entity,
                    v.source.relation(),
                    v.features.len(),
                    match v.aggregates.len() {
                        0 => String::new(),
                        n => format!(", {n} aggregate(s)"),
                    },
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
        props.extend(lineage(&state, object, sight));
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

/// What `DESCRIBE` adds about where an object leads: the models that use a view (through a
/// service), a model's features and the manifest it was registered with.
fn lineage(state: &RegistryState, object: &Object, sight: Sight<'_>) -> Vec<(String, String)> {
    match object {
        Object::FeatureView(v) => {
            let models: Vec<String> = state
                .of_kind(Kind::Model)
                .filter(|o| sight.sees(state, o))
                .filter(|o| {
                    let Object::Model(m) = o else { return false };
                    matches!(
                        state.get(Kind::FeatureService, &m.service),
                        Some(Object::FeatureService(s)) if s.features.iter().any(|f| f.view == v.name)
                    )
                })
                .map(Object::key)
                .collect();
            let models = if models.is_empty() {
                "none".into()
            } else {
                models.join(", ")
            };
            vec![("models".into(), models)]
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
            let mut props = vec![("features".into(), features)];
            if let Some(manifest) = &m.training_set {
                props.push(("training set".into(), manifest_summary(manifest)));
            }
            props
        }
        _ => Vec::new(),
    }
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
