//! Definitions as code: `pitlake plan DIR` and `pitlake apply DIR`.
//!
//! A folder of `.sql` files (kept in Git) declares the entities, feature views and feature
//! services that should exist (and optionally model versions). `plan` compares them with the
//! registry and lists what would be created, changed and dropped; `apply` makes exactly those
//! changes as one registry commit. Entities, views and services not declared are dropped; models
//! are never dropped by `apply` (they are registered by training pipelines), only created or
//! changed when declared. Applying unchanged files changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Engine;
use super::dsl::{Known, author};
use crate::error::{PitlakeError, Result};
use crate::frontend::dsl::DslStatement;
use crate::frontend::{Statement, parse_sql};
use crate::registry::{Action, Change, Kind, Object, RegistryState};

/// One planned change, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    /// `create`, `change` or `drop`.
    pub action: &'static str,
    /// The object's kind.
    pub kind: Kind,
    /// Its key.
    pub name: String,
    /// For changes: the definition fields that differ.
    pub detail: String,
}

/// What `apply` would do (or did).
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionPlan {
    /// The registry version the plan was computed against.
    pub base_version: Option<i64>,
    /// The changes, in the order they apply.
    pub changes: Vec<PlannedChange>,
    /// The registry version `apply` committed (`None` for `plan`, or when nothing changed).
    pub applied_version: Option<i64>,
}

fn sql_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| PitlakeError::Input {
        path: dir.display().to_string(),
        message: format!("cannot read the definitions folder: {e}"),
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            sql_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "sql") {
            out.push(path);
        }
    }
    Ok(())
}

/// Field names whose values differ between two definitions.
fn changed_fields(old: &Object, new: &Object) -> String {
    let fields = |o: &Object| match serde_json::to_value(o) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (fields(old), fields(new));
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statements of a folder of definitions, in file order: each with its file and text.
fn read_statements(dir: &Path) -> Result<Vec<(PathBuf, String, DslStatement)>> {
    let mut files = Vec::new();
    sql_files(dir, &mut files)?;
    if files.is_empty() {
        return Err(PitlakeError::Input {
            path: dir.display().to_string(),
            message: "holds no .sql definition files".into(),
        });
    }
    let mut statements = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| in_file(file, format!("cannot read: {e}")))?;
        for statement in parse_sql(&text).map_err(|e| in_file(file, e))? {
            let Statement::Dsl(dsl) = statement.statement else {
                return Err(in_file(
                    file,
                    format!(
                        "definition files hold CREATE ENTITY, CREATE FEATURE VIEW, CREATE \
                         FEATURE SERVICE and REGISTER MODEL statements; found `{}`",
                        statement.text
                    ),
                ));
            };
            statements.push((file.clone(), statement.text, *dsl));
        }
    }
    Ok(statements)
}

/// An error about a definition file.
fn in_file(file: &Path, message: impl ToString) -> PitlakeError {
    PitlakeError::Input {
        path: file.display().to_string(),
        message: message.to_string(),
    }
}

impl Engine {
    /// Reads and validates a folder of definitions into the objects it declares. Entities
    /// come first, then views, then services and models, whatever the file order, each
    /// checked against what the folder declares before it.
    async fn declared(&self, dir: &Path) -> Result<BTreeMap<(Kind, String), Object>> {
        let statements = read_statements(dir)?;
        let mut declared = RegistryState {
            version: None,
            objects: BTreeMap::new(),
        };
        for kind in Kind::ALL {
            for (file, text, statement) in &statements {
                let known = Known {
                    state: &declared,
                    sight: self.sight(),
                    declared: true,
                };
                let Some(object) = self
                    .declare(statement, text, kind, &known)
                    .await
                    .map_err(|e| in_file(file, e))?
                else {
                    continue;
                };
                let key = (object.kind(), object.key());
                if declared.objects.contains_key(&key) {
                    return Err(in_file(
                        file,
                        format!("{} `{}` is declared twice", key.0.label(), key.1),
                    ));
                }
                declared.objects.insert(key, object);
            }
        }
        Ok(declared.objects)
    }

    /// The changes that turn `state` into the declared objects.
    fn definition_changes(
        state: &RegistryState,
        declared: &BTreeMap<(Kind, String), Object>,
    ) -> (Vec<Change>, Vec<PlannedChange>) {
        let mut changes = Vec::new();
        let mut planned = Vec::new();
        for kind in Kind::ALL {
            for ((k, key), object) in declared.iter().filter(|((k, _), _)| *k == kind) {
                match state.get(*k, key) {
                    Some(existing) if existing == object => {}
                    existing => {
                        planned.push(PlannedChange {
                            action: if existing.is_some() {
                                "change"
                            } else {
                                "create"
                            },
                            kind,
                            name: key.clone(),
                            detail: existing
                                .map(|old| changed_fields(old, object))
                                .unwrap_or_default(),
                        });
                        changes.push(Change {
                            kind,
                            key: key.clone(),
                            action: if existing.is_some() {
                                Action::Replace
                            } else {
                                Action::Create
                            },
                            object: Some(object.clone()),
                        });
                    }
                }
            }
        }
        // Drops last, dependents before what they depend on. Models are never dropped here.
        for kind in [Kind::FeatureService, Kind::FeatureView, Kind::Entity] {
            for object in state.of_kind(kind) {
                let key = object.key();
                if !declared.contains_key(&(kind, key.clone())) {
                    planned.push(PlannedChange {
                        action: "drop",
                        kind,
                        name: key.clone(),
                        detail: String::new(),
                    });
                    changes.push(Change {
                        kind,
                        key,
                        action: Action::Drop,
                        object: None,
                    });
                }
            }
        }
        (changes, planned)
    }

    /// What applying the definitions in `dir` would change.
    pub async fn plan_definitions(&self, dir: &Path) -> Result<DefinitionPlan> {
        let declared = self.declared(dir).await?;
        let state = self.registry().state(None).await?;
        let (_, changes) = Self::definition_changes(&state, &declared);
        Ok(DefinitionPlan {
            base_version: state.version,
            changes,
            applied_version: None,
        })
    }

    /// Applies the definitions in `dir` as one registry commit.
    pub async fn apply_definitions(&self, dir: &Path) -> Result<DefinitionPlan> {
        let declared = self.declared(dir).await?;
        let mut planned = Vec::new();
        let mut base = None;
        let statement = format!("pitlake apply {}", dir.display());
        let version = self
            .registry()
            .commit(&statement, &author(self), |state| {
                let (changes, plan) = Self::definition_changes(state, &declared);
                // A model that stays registered must keep its service.
                let mut after = state.clone();
                for change in &changes {
                    after.apply(change);
                }
                for object in after.of_kind(Kind::Model) {
                    if let Object::Model(m) = object
                        && after.get(Kind::FeatureService, &m.service).is_none()
                    {
                        return Err(PitlakeError::Plan(format!(
                            "model `{}` uses feature service `{}`, which these definitions \
                             drop; declare the service or drop the model first",
                            object.key(),
                            m.service
                        )));
                    }
                }
                planned = plan;
                base = state.version;
                Ok(changes)
            })
            .await?;
        Ok(DefinitionPlan {
            base_version: base,
            changes: planned,
            applied_version: version,
        })
    }
}
