//! Tables a caller uploaded for its own session (Flight SQL bulk ingest with `temporary`): read
//! by their bare names, before the warehouse's, by that session's statements only, and gone
//! when dropped or when the session ends. The server keeps them ([`SessionScope`]); an engine
//! acting for the session sees them through a catalog that looks there first
//! ([`Engine::with_session`]).

use std::fmt::Debug;
use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::error::Result as DfResult;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionContext;

use super::{CATALOG, Engine};
use crate::storage::{DEFAULT_SCHEMA, TableName};

/// One uploaded table.
#[derive(Debug, Clone)]
pub struct SessionTable {
    /// Its rows.
    pub provider: Arc<dyn TableProvider>,
    /// `sha256:<hex>` of its rows as uploaded (Arrow IPC), which manifests record.
    pub content_hash: String,
    /// How many rows it has.
    pub rows: usize,
}

/// The tables of one session, as the server keeps them.
pub trait SessionScope: Send + Sync + Debug {
    /// The table called `name`, if the session uploaded one.
    fn table(&self, name: &str) -> Option<SessionTable>;
    /// Drops the table called `name`; whether there was one.
    fn drop_table(&self, name: &str) -> bool;
    /// The names of the session's tables.
    fn table_names(&self) -> Vec<String>;
}

impl Engine {
    /// This engine acting in a session: bare table names are looked up in `scope` first.
    pub fn with_session(&self, scope: Arc<dyn SessionScope>) -> Engine {
        let mut engine = self.clone();
        let state = self.ctx.state();
        let catalogs = Arc::new(SessionCatalogs {
            inner: state.catalog_list().clone(),
            scope: scope.clone(),
        });
        let state = SessionStateBuilder::new_from_existing(state)
            .with_catalog_list(catalogs)
            .build();
        engine.ctx = SessionContext::new_with_state(state);
        engine.base_ctx = self.base_ctx.clone();
        engine.session = Some(scope);
        engine
    }

    /// This engine outside any session (the warehouse's tables only).
    pub(crate) fn without_session(&self) -> Engine {
        match &self.session {
            None => self.clone(),
            Some(_) => {
                let mut engine = self.clone();
                engine.session = None;
                engine.ctx = self.base_ctx.clone();
                engine
            }
        }
    }

    /// The session's table `name` refers to, if it is one (a bare name the session uploaded).
    pub fn session_table(&self, name: &TableName) -> Option<SessionTable> {
        match (&self.session, &name.schema) {
            (Some(scope), None) => scope.table(&name.table),
            _ => None,
        }
    }

    /// The session's tables, when it acts in a session.
    pub fn session_tables(&self) -> Vec<(String, SessionTable)> {
        let Some(scope) = &self.session else {
            return Vec::new();
        };
        scope
            .table_names()
            .into_iter()
            .filter_map(|name| scope.table(&name).map(|t| (name, t)))
            .collect()
    }

    /// Whether a reference in a plan means the session's upload: a bare name (no schema, no
    /// version: `t@v3` is the warehouse table `t` at version 3) that the session uploaded.
    pub(crate) fn is_session_read(&self, reference: &datafusion::common::TableReference) -> bool {
        self.session.is_some()
            && reference.schema().is_none()
            && !reference.table().contains('@')
            && self
                .session
                .as_ref()
                .is_some_and(|scope| scope.table(reference.table()).is_some())
    }

    /// Drops the session's table `name`, if it is one.
    pub(crate) fn drop_session_table(&self, name: &TableName) -> bool {
        match (&self.session, &name.schema) {
            (Some(scope), None) => scope.drop_table(&name.table),
            _ => false,
        }
    }
}

#[derive(Debug)]
struct SessionCatalogs {
    inner: Arc<dyn CatalogProviderList>,
    scope: Arc<dyn SessionScope>,
}

impl CatalogProviderList for SessionCatalogs {
    fn register_catalog(
        &self,
        name: String,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        self.inner.register_catalog(name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        self.inner.catalog_names()
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        let inner = self.inner.catalog(name)?;
        if name != CATALOG {
            return Some(inner);
        }
        Some(Arc::new(SessionCatalog {
            inner,
            scope: self.scope.clone(),
        }))
    }
}

#[derive(Debug)]
struct SessionCatalog {
    inner: Arc<dyn CatalogProvider>,
    scope: Arc<dyn SessionScope>,
}

impl CatalogProvider for SessionCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.inner.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let inner = self.inner.schema(name)?;
        if name != DEFAULT_SCHEMA {
            return Some(inner);
        }
        Some(Arc::new(SessionSchema {
            inner,
            scope: self.scope.clone(),
        }))
    }
}

#[derive(Debug)]
struct SessionSchema {
    inner: Arc<dyn SchemaProvider>,
    scope: Arc<dyn SessionScope>,
}

#[async_trait::async_trait]
impl SchemaProvider for SessionSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.extend(self.scope.table_names());
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match self.scope.table(name) {
            Some(table) => Ok(Some(table.provider)),
            None => self.inner.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.scope.table(name).is_some() || self.inner.table_exist(name)
    }
}
