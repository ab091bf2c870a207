//! Storage: the warehouse's object store (`store`, its settings in `options`), finding its
//! Delta tables and opening each at a pinned version or timestamp (`warehouse`, names in
//! `name`), reading their log and history (`log`), the DataFusion catalog over them (`catalog`,
//! `table`), writing to them one commit at a time (`write`) and dropping them (`drop`); local
//! output files, written with their columns encoded on every core (`parquet_out`) and replaced
//! whole (`replace`).

mod catalog;
mod drop;
mod log;
mod name;
mod options;
mod parquet_out;
mod pinned;
mod replace;
mod store;
mod table;
mod warehouse;
mod write;

pub use catalog::{
    WarehouseCatalog, WarehouseSchema, decode_versioned_name, encode_versioned_name, open_provider,
};
pub use log::{CommitSummary, LogListing, format_millis};
pub use name::{DEFAULT_SCHEMA, TableName};
pub use parquet_out::ParquetOut;
pub(crate) use parquet_out::chosen_properties;
pub use pinned::{PinnedDeltaTable, PinnedTablesCodec};
pub use replace::Replacement;
pub use table::{ColumnRange, WarehouseTable, as_warehouse_table, bounded_type};
pub use warehouse::{TableVersion, Warehouse};
pub use write::{WriteMode, WriteOutcome, conform_to_table, write_plan};
pub(crate) use write::{concurrent_write, single_attempt};
