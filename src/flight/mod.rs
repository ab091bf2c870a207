//! The Arrow Flight SQL server (`pitlake serve`): clients pull query results as Arrow streams
//! over gRPC, authenticated, authorized and (unless told otherwise) encrypted.
//!
//! ```text
//!  client ── TLS ──► AuthLayer ──────────► FlightSqlService ──► Engine
//!                    │ Handshake: basic     │ plan (no rows read)
//!                    │   auth → token       │ authorize (grants × tables read/written)
//!                    │ other RPCs: bearer   │ ticket signed for this user
//!                    │   token → Principal  │ DoGet: verify ticket, re-plan, re-authorize,
//!                    ▼   or UNAUTHENTICATED │   stream batches under limits
//! ```
//!
//! - [`auth`]: users (argon2 password hashes, hashed static tokens), roles, session tokens.
//! - [`grants`]: what a role may touch, and the check of a statement's [`Access`] against it.
//! - `layer`: the tower layer that checks every RPC's credential before any handler runs.
//! - `tickets`: tickets signed with the user inside, so they cannot be forged or used by another.
//! - `service`: the Flight SQL handlers; `stream`: a query's stream under its limits.
//! - [`config`] and [`server`]: validated settings, TLS, start and graceful stop.
//! - `throttle`: bounds on logging in (password checks at once, failed logins per user name and
//!   per peer); `connections`: the bound on open connections; `prepared`: prepared statements
//!   and the byte budget of their bound parameters.
//!
//! Errors: the engine's [`crate::PitlakeError`] becomes a gRPC status in one match (`status`);
//! refusals born here (no credential, no grant, a bad ticket, a full server) are statuses from
//! the start, so they can never surface as `INTERNAL`.
//!
//! [`Access`]: crate::engine::planning::Access

pub mod auth;
pub mod config;
mod connections;
pub mod grants;
mod http;
mod http_state;
pub mod keys;
mod layer;
mod metrics;
mod prepared;
mod rest;
pub mod server;
mod service;
mod status;
mod stream;
mod throttle;
mod tickets;
mod uploads;

pub use auth::{AuthConfig, Principal, hash_password, new_static_token};
pub use config::{Limits, ServerConfig, Transport};
pub use grants::{Grant, Grants};
pub use keys::SigningSecrets;
pub use server::{RunningServer, start};
pub use status::status_for;
pub use throttle::LoginStats;
