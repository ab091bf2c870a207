//! pitlake: an offline point-in-time feature store engine.
pub mod asof;
