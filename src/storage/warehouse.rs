//! A warehouse: a root on an object store whose Delta tables are SQL tables.
//!
//! Layout: `<root>/<table>/_delta_log/…` is table `<table>` in the default schema;
//! `<root>/<schema>/<table>/_delta_log/…` is `<schema>.<table>`. Folders whose names start with
//! `_` or `.` are pitlake's own (`_pitlake/`, the registry) or hidden, and are not listed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use url::Url;

use crate::config::WarehouseLocation;
use crate::error::{PitlakeError, Result, closest_first};
use crate::storage::log::LogListing;
use crate::storage::name::TableName;
use crate::storage::options::{self, Backend, Environment};
use crate::storage::store;

/// Which state of a table to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableVersion {
    /// The newest committed version.
    Latest,
    /// An exact version number (`VERSION AS OF n`).
    Version(i64),
    /// The newest version committed at or before this instant, in milliseconds since the epoch
    /// (`TIMESTAMP AS OF …`).
    Timestamp(i64),
}

/// In-memory warehouses live for the whole process, keyed by URL, so that every engine (and every
/// table opened) that names `memory:///x` sees the same objects.
fn memory_store(url: &Url) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let key = format!("{}{}", url.host_str().unwrap_or(""), url.path());
    let stores = STORES.get_or_init(Default::default);
    let mut guard = match stores.lock() {
        Ok(guard) => guard,
        // A panic elsewhere while holding the lock leaves the map intact; keep using it.
        Err(poisoned) => poisoned.into_inner(),
    };
    guard
        .entry(key)
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

/// A warehouse root and the object store it lives on.
#[derive(Debug, Clone)]
pub struct Warehouse {
    location: WarehouseLocation,
    /// The store, with `/` at the bucket or file-system root (as deltalake expects).
    store: Arc<dyn ObjectStore>,
    /// The warehouse root inside `store`.
    root: Path,
    /// Whether this store is known to refuse overwriting a commit (checked on the first write).
    commits_safe: Arc<tokio::sync::OnceCell<()>>,
}

impl Warehouse {
    /// Connects to a warehouse. Nothing is read or created yet.
    ///
    /// Object-store settings are resolved here: the location's explicit options, then the
    /// environment and AWS profiles (see `storage::options` for the order).
    pub fn connect(location: WarehouseLocation) -> Result<Self> {
        let backend =
            Backend::of_scheme(location.url.scheme()).ok_or_else(|| PitlakeError::Warehouse {
                url: location.display(),
                message: "has a URL scheme pitlake cannot store tables on; use a folder, \
                          file://, memory://, s3://, gs:// or az://"
                    .into(),
            })?;
        let (store, root): (Arc<dyn ObjectStore>, Path) = match backend {
            Backend::Memory => (
                memory_store(&location.url),
                Path::from_url_path(location.url.path()).map_err(|e| PitlakeError::Warehouse {
                    url: location.display(),
                    message: format!("is not a valid path: {e}"),
                })?,
            ),
            Backend::Local => {
                let (store, root) = object_store::parse_url(&location.url).map_err(|e| {
                    PitlakeError::Warehouse {
                        url: location.display(),
                        message: format!("cannot open the folder: {e}"),
                    }
                })?;
                (Arc::from(store), root)
            }
            Backend::S3 | Backend::Gcs | Backend::Azure => {
                let options =
                    options::resolve(backend, &location.storage_options, &Environment::current())?;
                store::register_log_stores();
                store::build_cloud_store(backend, &location.url, &options)?
            }
        };
        Ok(Self {
            location,
            store,
            root,
            commits_safe: Arc::default(),
        })
    }

    /// Checks, once per warehouse, that the store refuses to overwrite an existing object, so
    /// concurrent commits cannot be lost (see `storage::store`). Local folders and memory stores
    /// always do.
    pub async fn check_commit_safety(&self) -> Result<()> {
        if matches!(self.location.url.scheme(), "file" | "memory") {
            return Ok(());
        }
        let shown = self.location.display();
        self.commits_safe
            .get_or_try_init(|| store::check_commit_safety(self.store.as_ref(), &self.root, &shown))
            .await?;
        Ok(())
    }

    /// Whether the warehouse answers: its root can be listed, and (on object stores) commits
    /// are safe there (see [`Warehouse::check_commit_safety`]). For readiness probes.
    pub async fn ping(&self) -> Result<()> {
        self.check_commit_safety().await?;
        self.store.list_with_delimiter(Some(&self.root)).await?;
        Ok(())
    }

    /// Where the warehouse is.
    pub fn location(&self) -> &WarehouseLocation {
        &self.location
    }

    /// The object store (rooted at the bucket or file-system root).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The warehouse root inside [`Warehouse::store`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that the warehouse root exists (local folders only; object stores have no folders).
    pub fn check_exists(&self) -> Result<()> {
        if let Some(path) = self.location.local_path() {
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(PitlakeError::Warehouse {
                        url: self.location.display(),
                        message: "is a file, not a folder".into(),
                    });
                }
                Err(_) => {
                    return Err(PitlakeError::Warehouse {
                        url: self.location.display(),
                        message: "does not exist; run `pitlake demo` to build a sample \
                                  warehouse there, `pitlake ingest` to load data, or pass \
                                  --warehouse"
                            .into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates the warehouse root if it is a local folder that does not exist, and checks that it
    /// is writable.
    pub fn ensure_writable(&self) -> Result<()> {
        if let Some(path) = self.location.local_path() {
            std::fs::create_dir_all(&path).map_err(|e| PitlakeError::Warehouse {
                url: self.location.display(),
                message: format!("cannot create the folder: {e}"),
            })?;
            let probe = path.join(format!(".pitlake-write-probe-{}", std::process::id()));
            std::fs::write(&probe, b"").map_err(|e| PitlakeError::Warehouse {
                url: self.location.display(),
                message: format!("is not writable: {e}"),
            })?;
            // The probe only tested permissions; a leftover would be harmless but untidy.
            let _ = std::fs::remove_file(&probe);
        }
        Ok(())
    }

    /// The path of a table's folder inside the store.
    pub fn table_path(&self, name: &TableName) -> Path {
        name.segments()
            .into_iter()
            .fold(self.root.clone(), |path, segment| path.join(segment))
    }

    /// The URL of a table's folder.
    pub fn table_url(&self, name: &TableName) -> Result<Url> {
        let mut url = self.location.url.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| PitlakeError::Warehouse {
                    url: self.location.display(),
                    message: "cannot hold tables (the URL has no path)".into(),
                })?;
            segments.pop_if_empty();
            for segment in name.segments() {
                segments.push(segment);
            }
        }
        Ok(url)
    }

    /// Whether a Delta table exists at this name (its `_delta_log` has at least one object).
    pub async fn table_exists(&self, name: &TableName) -> Result<bool> {
        let log = self.table_path(name).join("_delta_log");
        let mut listing = self.store.list(Some(&log));
        match listing.next().await {
            Some(Ok(_)) => Ok(true),
            Some(Err(object_store::Error::NotFound { .. })) | None => Ok(false),
            Some(Err(e)) => Err(store::storage_error(
                &self.location.display(),
                &format!("cannot list table `{name}`"),
                e,
            )),
        }
    }

    /// Every table in the warehouse, sorted (default schema first).
    pub async fn list_tables(&self) -> Result<Vec<TableName>> {
        let mut tables = Vec::new();
        for folder in self.child_folders(&self.root).await? {
            let as_table = TableName::bare(folder.clone());
            if self.table_exists(&as_table).await? {
                tables.push(as_table);
                continue;
            }
            let schema_path = self.root.clone().join(folder.as_str());
            for child in self.child_folders(&schema_path).await? {
                let name = TableName::new(Some(&folder), child);
                if self.table_exists(&name).await? {
                    tables.push(name);
                }
            }
        }
        tables.sort();
        Ok(tables)
    }

    /// The schemas that hold at least one table (besides the default schema).
    pub async fn list_schemas(&self) -> Result<Vec<String>> {
        let mut schemas: Vec<String> = self
            .list_tables()
            .await?
            .into_iter()
            .filter_map(|t| t.schema)
            .collect();
        schemas.dedup();
        Ok(schemas)
    }

    async fn child_folders(&self, path: &Path) -> Result<Vec<String>> {
        let listing = match self.store.list_with_delimiter(Some(path)).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => {
                return Err(store::storage_error(
                    &self.location.display(),
                    "cannot list tables",
                    e,
                ));
            }
        };
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|n| !n.starts_with('_') && !n.starts_with('.') && !n.contains('@'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// An error for a name that is not a table, listing the tables that exist.
    pub async fn not_found(&self, name: &TableName) -> PitlakeError {
        let existing = self.list_tables().await.unwrap_or_default();
        PitlakeError::TableNotFound {
            name: name.to_string(),
            candidates: closest_first(
                &name.to_string(),
                existing.into_iter().map(|t| t.to_string()),
            ),
        }
    }

    /// A builder for the Delta table at `name`, sharing this warehouse's store.
    pub fn table_builder(&self, name: &TableName) -> Result<DeltaTableBuilder> {
        let url = self.table_url(name)?;
        // The store is pitlake's, fully configured; deltalake gets no options of its own to
        // build another from.
        let builder =
            DeltaTableBuilder::from_url(url.clone())?.with_storage_backend(self.store.clone(), url);
        Ok(builder)
    }

    /// The Delta log listing of a table (versions, commit times).
    pub async fn log_listing(&self, name: &TableName) -> Result<LogListing> {
        LogListing::read(self.store.as_ref(), &self.table_path(name)).await
    }

    /// Opens a table at a version. A missing table, a version that does not exist and a
    /// timestamp before the first commit are each their own clear error; a table whose log or
    /// metadata cannot be read is [`PitlakeError::CorruptTable`].
    pub async fn open(&self, name: &TableName, version: TableVersion) -> Result<DeltaTable> {
        if !self.table_exists(name).await? {
            return Err(self.not_found(name).await);
        }
        let listing = self.log_listing(name).await?;
        let resolved = match version {
            TableVersion::Latest => None,
            TableVersion::Version(v) => Some(listing.check_version(name, v)?),
            TableVersion::Timestamp(ms) => Some(listing.version_at(name, ms)?),
        };
        let mut table = self.table_builder(name)?.build()?;
        let loaded = match resolved {
            None => table.load().await,
            Some(v) => table.load_version(v as u64).await,
        };
        loaded.map_err(|e| corrupt(name, e))?;
        Ok(table)
    }
}

/// Classifies a failure to load a table: a missing version stays that, the rest is a table
/// that cannot be read.
pub(crate) fn corrupt(name: &TableName, err: DeltaTableError) -> PitlakeError {
    // An unreachable store is not a broken table: say so, and exit as a storage failure.
    let err = match err {
        DeltaTableError::ObjectStore { source }
            if !matches!(source, object_store::Error::NotFound { .. }) =>
        {
            return store::storage_error(&name.to_string(), "cannot read", source);
        }
        other => other,
    };
    PitlakeError::CorruptTable {
        table: name.to_string(),
        message: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_urls_join_segments() {
        let w = Warehouse::connect(WarehouseLocation::parse("/tmp/wh").unwrap()).unwrap();
        let url = w
            .table_url(&TableName::new(Some("features"), "driver stats"))
            .unwrap();
        assert_eq!(url.as_str(), "file:///tmp/wh/features/driver%20stats");
    }
}
