//! Which registry objects a caller may see ([`Sight`]), and what follows from it: a hidden
//! object answers exactly like an absent one, in errors, hints and lists of dependents.

use crate::engine::planning::{TableName, Visibility};
use crate::error::{PitlakeError, Result, closest_first};
use crate::frontend::dsl::FeatureItem;
use crate::registry::{Kind, Object, RegistryState};

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
pub(crate) fn unknown(
    state: &RegistryState,
    kind: Kind,
    name: &str,
    sight: Sight<'_>,
) -> PitlakeError {
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
                "registered {}: {}",
                kind.plural(),
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
pub(crate) fn shown_dependents(
    state: &RegistryState,
    kind: Kind,
    key: &str,
    sight: Sight<'_>,
) -> String {
    let all = dependents(state, kind, key, Sight(None)).len();
    let mut shown = dependents(state, kind, key, sight);
    let hidden = all - shown.len();
    if hidden > 0 {
        shown.push(format!("{hidden} object(s) you may not see"));
    }
    shown.join(", ")
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
                let names = v.feature_names();
                if !names.contains(feature) {
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

impl crate::engine::Engine {
    /// Which registry objects this engine's caller may see.
    pub(crate) fn sight(&self) -> Sight<'_> {
        Sight(self.caller())
    }
}
