//! The as-of join (see docs/semantics.md).
