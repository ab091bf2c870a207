//! Storage: finding the Delta tables of a warehouse, opening each at a pinned version or
//! timestamp, reading their history, and writing to them one commit at a time.

mod catalog;
mod drop;
mod log;
mod options;
mod store;
mod table;
mod warehouse;
mod write;

pub use catalog::{
    WarehouseCatalog, WarehouseSchema, decode_versioned_name, encode_versioned_name, open_provider,
};
pub use log::{CommitSummary, LogListing, format_millis};
pub use table::{ColumnRange, WarehouseTable, as_warehouse_table, bounded_type};
pub use warehouse::{DEFAULT_SCHEMA, TableName, TableVersion, Warehouse};
pub use write::{WriteMode, WriteOutcome, conform_to_table, write_plan};
pub(crate) use write::{concurrent_write, single_attempt};
