//! pitlake's integration tests, one binary with a module per theme.
//!
//! - `asof`: as-of joins end to end over Delta tables, against the oracle; plan serialization;
//! - `cli`: the built `pitlake` binary: commands, output formats, exit codes, bad input;
//! - `cluster`: warehouse tables pinned to their Parquet files; the CLI on a Ballista cluster of
//!   pitlake processes on loopback (`cluster_processes`);
//! - `concurrent_writes`: a replace or overwrite racing an append on a local folder ends in a
//!   conflict, never a table mixing the two;
//! - `conformance`: reading real Delta tables written by Spark and delta-rs
//!   (`../shared/testdata`, see its MANIFEST.md);
//! - `flight`: the Flight SQL server with the Rust Flight SQL client: auth, grants, TLS, limits;
//!   `flight::adversarial` attacks it as a user with few grants would;
//! - `fuzz`: random and mutated statements through the parser, the DSL and the planner;
//! - `layers`: the crate's layers, checked on its source;
//! - `s3`: warehouses on a real S3-compatible server: the CLI, settings, concurrent writers,
//!   commit safety and faults;
//! - `time_travel`: commit-time resolution with pinned log times;
//! - `training`: training sets through the registry against brute force; exports, manifests,
//!   reproduction, verification and audits; definitions applied from a folder; concurrent
//!   registry writers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod asof;
mod cli;
mod cluster;
mod cluster_processes;
mod common;
mod concurrent_writes;
mod conformance;
mod flight;
mod fuzz;
mod layers;
mod s3;
mod time_travel;
mod training;
