//! The feature registry: entities, feature views, feature services and models, kept as events in
//! a versioned Delta table under `<warehouse>/_pitlake/`, with history, lineage and safe
//! concurrent changes.

mod events;
mod model;

pub use events::{Action, Change, Event, Registry, RegistryState};
pub use model::{
    Aggregate, Entity, Feature, FeatureRef, FeatureService, FeatureView, KeyColumn, Kind, Model,
    Object, Source, model_key,
};
