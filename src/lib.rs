//! pitlake: an offline point-in-time feature store engine.
//!
//! Features live as Delta Lake tables in a *warehouse* (a folder or an object-store prefix); a
//! DataFusion engine queries them with SQL, reads any table at any committed version (time
//! travel), and loads new data one Delta commit at a time.
//!
//! ```no_run
//! # async fn demo() -> pitlake::Result<()> {
//! use pitlake::{Engine, Settings, WarehouseLocation};
//!
//! let engine = Engine::new(Settings::new(WarehouseLocation::parse("./warehouse")?))?;
//! // The value each driver had at version 1, next to today's.
//! let batches = engine
//!     .collect(
//!         "SELECT now.driver_id, old.conv_rate AS then, now.conv_rate AS today \
//!          FROM driver_hourly_stats VERSION AS OF 1 old \
//!          JOIN driver_hourly_stats now USING (driver_id, event_ts)",
//!     )
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The crate is layered (see `docs/architecture.md`): [`error`] and [`config`] at the bottom,
//! [`storage`] and [`asof`] above them, [`frontend`], [`planner`] and [`registry`] next,
//! [`engine`] as the composition root, the Flight SQL server [`flight`] above it, and [`cli`]
//! on top.

pub mod asof;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod error;
pub mod flight;
pub mod frontend;
pub mod memory;
pub mod parallel;
pub mod planner;
pub mod registry;
pub mod storage;

pub use config::{Settings, WarehouseLocation};
pub use engine::{Engine, Output, RunOptions};
pub use error::{PitlakeError, Result};
