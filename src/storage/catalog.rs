//! The warehouse as a DataFusion catalog: schemas are folders, tables are Delta tables opened
//! through deltalake's own table provider (so projection, filter pushdown and file skipping from
//! Delta statistics all apply).
//!
//! Tables are opened lazily, one at a time, when a statement names them: a table with a broken
//! log makes only the statements that read it fail.
//!
//! Time travel reaches the catalog as a table name with a suffix that no folder can have:
//! `orders@v3` (version 3) and `orders@t1767225600000` (the version current at that instant, in
//! milliseconds). The SQL front end rewrites `orders VERSION AS OF 3` to that form.

use std::sync::{Arc, RwLock};

use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::TableType;

use crate::error::{PitlakeError, Result};
use crate::storage::name::{DEFAULT_SCHEMA, TableName};
use crate::storage::table::WarehouseTable;
use crate::storage::warehouse::{TableVersion, Warehouse};

/// Splits `name@v3` / `name@t123` into the table and the version to read.
pub fn decode_versioned_name(raw: &str) -> Result<(&str, TableVersion)> {
    let Some((base, suffix)) = raw.rsplit_once('@') else {
        return Ok((raw, TableVersion::Latest));
    };
    let parsed = if let Some(v) = suffix.strip_prefix('v') {
        v.parse().ok().map(TableVersion::Version)
    } else if let Some(t) = suffix.strip_prefix('t') {
        t.parse().ok().map(TableVersion::Timestamp)
    } else {
        None
    };
    match parsed {
        Some(version) => Ok((base, version)),
        None => Err(PitlakeError::Plan(format!(
            "`{raw}` is not a table name; use `{base} VERSION AS OF <n>` or \
             `{base} TIMESTAMP AS OF '<time>'` to read an older version"
        ))),
    }
}

/// The name the catalog understands for a table at a version.
pub fn encode_versioned_name(table: &str, version: TableVersion) -> String {
    match version {
        TableVersion::Latest => table.to_string(),
        TableVersion::Version(v) => format!("{table}@v{v}"),
        TableVersion::Timestamp(ms) => format!("{table}@t{ms}"),
    }
}

/// Opens a table at a version and wraps it as a DataFusion table provider (deltalake's, with
/// the ranges of its time-like columns: see [`WarehouseTable`]).
pub async fn open_provider(
    warehouse: &Warehouse,
    name: &TableName,
    version: TableVersion,
) -> Result<Arc<dyn TableProvider>> {
    let table = warehouse.open(name, version).await?;
    let provider =
        table
            .table_provider()
            .build()
            .await
            .map_err(|e| PitlakeError::CorruptTable {
                table: name.to_string(),
                message: PitlakeError::from_datafusion(e).to_string(),
            })?;
    Ok(Arc::new(WarehouseTable::new(Arc::new(provider), &table)))
}

/// The catalog of a warehouse. Schema and table *names* (for `SHOW TABLES` and
/// `information_schema`) come from a listing the engine refreshes before statements that need
/// it; tables themselves are always opened fresh.
#[derive(Debug)]
pub struct WarehouseCatalog {
    warehouse: Arc<Warehouse>,
    listing: Arc<RwLock<Vec<TableName>>>,
}

impl WarehouseCatalog {
    /// A catalog over `warehouse` with an empty listing.
    pub fn new(warehouse: Arc<Warehouse>) -> Self {
        Self {
            warehouse,
            listing: Arc::default(),
        }
    }

    /// Re-reads the table listing from storage.
    pub async fn refresh(&self) -> Result<Vec<TableName>> {
        let tables = self.warehouse.list_tables().await?;
        match self.listing.write() {
            Ok(mut guard) => *guard = tables.clone(),
            Err(poisoned) => *poisoned.into_inner() = tables.clone(),
        }
        Ok(tables)
    }

    fn listed(&self) -> Vec<TableName> {
        match self.listing.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl CatalogProvider for WarehouseCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::iter::once(DEFAULT_SCHEMA.to_string())
            .chain(self.listed().into_iter().filter_map(|t| t.schema))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let schema = (name != DEFAULT_SCHEMA).then(|| name.to_string());
        Some(Arc::new(WarehouseSchema {
            warehouse: self.warehouse.clone(),
            listing: self.listing.clone(),
            schema,
        }))
    }
}

/// One schema (the root, or one subfolder) of a warehouse.
#[derive(Debug)]
pub struct WarehouseSchema {
    warehouse: Arc<Warehouse>,
    listing: Arc<RwLock<Vec<TableName>>>,
    schema: Option<String>,
}

#[async_trait::async_trait]
impl SchemaProvider for WarehouseSchema {
    fn table_names(&self) -> Vec<String> {
        let listing = match self.listing.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        listing
            .into_iter()
            .filter(|t| t.schema == self.schema)
            .map(|t| t.table)
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let (base, version) = decode_versioned_name(name)?;
        let table = TableName::new(self.schema.as_deref(), base);
        if table.validate().is_err() || !self.warehouse.table_exists(&table).await? {
            return Ok(None);
        }
        Ok(Some(open_provider(&self.warehouse, &table, version).await?))
    }

    /// Every warehouse table is a base table; answering without opening it keeps `SHOW TABLES`
    /// working when one table's log is broken.
    async fn table_type(&self, name: &str) -> DfResult<Option<TableType>> {
        let (base, _) = decode_versioned_name(name)?;
        let table = TableName::new(self.schema.as_deref(), base);
        let exists = table.validate().is_ok() && self.warehouse.table_exists(&table).await?;
        Ok(exists.then_some(TableType::Base))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|t| t == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_names_round_trip() {
        for v in [
            TableVersion::Latest,
            TableVersion::Version(3),
            TableVersion::Timestamp(1_767_225_600_000),
        ] {
            let encoded = encode_versioned_name("orders", v);
            assert_eq!(decode_versioned_name(&encoded).unwrap(), ("orders", v));
        }
        assert!(decode_versioned_name("orders@x").is_err());
    }
}
