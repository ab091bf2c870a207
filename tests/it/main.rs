//! pitlake's integration tests, one binary with a module per theme.
//!
//! - `cli`: the built `pitlake` binary: commands, output formats, exit codes, bad input;
//! - `conformance`: reading real Delta tables written by Spark and delta-rs
//!   (`../shared/testdata`, see its MANIFEST.md);
//! - `time_travel`: commit-time resolution with pinned log times.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod common;
mod conformance;
mod time_travel;
