//! Grants: what a role may read and change, and the check of one statement against them.
//!
//! A grant is a string in the server's auth file:
//!
//! | grant | allows |
//! |---|---|
//! | `table:<pattern>` | reading matching tables: queries, as-of joins, time travel, `DESCRIBE`, `DESCRIBE HISTORY`, `GetTables` |
//! | `view:<pattern>` | reading matching feature views: training sets over them, and seeing them in the registry (`SHOW`, `DESCRIBE`, history, diffs, "did you mean" hints); a service is seen with every view it uses, a model with its service, an entity with one of its views |
//! | `write:<pattern>` | `CREATE TABLE`, `INSERT`, `DROP TABLE` on matching tables |
//! | `registry:write` | changing the feature registry through its statements; also shows every entity (what a writer needs to define views), not the views themselves |
//! | `files` | statements that read or write the server's files: `COPY … TO`, `CREATE EXTERNAL TABLE`, table functions other than `generate_series`/`range` |
//! | `session` | `SET`: it changes settings of the one engine session every user shares |
//!
//! A pattern is `*` (every table), `schema.*` (every table of a schema), `table` (a table of the
//! default schema `public`) or `schema.table`. `information_schema` is a schema like any other:
//! `SHOW TABLES` and `information_schema.*` need `table:information_schema.*`, since they list
//! tables the user may not be allowed to know of.
//!
//! Nothing is allowed without a grant; DDL other than on tables (`CREATE SCHEMA`, views,
//! functions) needs `write:*`. No grant reaches pitlake's own schema `_pitlake` (the registry's
//! table): not `table:*`, not `write:*`.

use std::collections::BTreeSet;
use std::fmt;

use tonic::Status;

use crate::engine::planning::{Access, TableName, Visibility};
use crate::error::{PitlakeError, Result};

/// Which tables a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pattern {
    /// Every table.
    All,
    /// Every table of a schema (`None`: the default schema).
    Schema(Option<String>),
    /// One table.
    Table(TableName),
}

impl Pattern {
    fn parse(raw: &str) -> Option<Self> {
        let default = |s: &str| (s != "public").then(|| s.to_string());
        match raw.split('.').collect::<Vec<_>>().as_slice() {
            ["*"] => Some(Pattern::All),
            [schema, "*"] if !schema.is_empty() && *schema != "*" => {
                Some(Pattern::Schema(default(schema)))
            }
            [table] if !table.is_empty() && !table.contains('*') => {
                Some(Pattern::Table(TableName::bare(*table)))
            }
            [schema, table] if !schema.is_empty() && !table.is_empty() && !raw.contains('*') => {
                Some(Pattern::Table(TableName {
                    schema: default(schema),
                    table: table.to_string(),
                }))
            }
            _ => None,
        }
    }

    /// Whether the pattern covers a table. No pattern covers pitlake's own schema
    /// (`_pitlake`, the registry), not even `*`: it is reached through the registry statements.
    pub fn matches(&self, name: &TableName) -> bool {
        if name.schema.as_deref().is_some_and(|s| s.starts_with('_')) {
            return false;
        }
        match self {
            Pattern::All => true,
            Pattern::Schema(schema) => name.schema == *schema,
            Pattern::Table(table) => table == name,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::All => write!(f, "*"),
            Pattern::Schema(None) => write!(f, "public.*"),
            Pattern::Schema(Some(schema)) => write!(f, "{schema}.*"),
            Pattern::Table(table) => write!(f, "{table}"),
        }
    }
}

/// One permission.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grant {
    /// `table:<pattern>`: read matching tables.
    ReadTable(Pattern),
    /// `view:<pattern>`: read matching feature views.
    ReadView(Pattern),
    /// `write:<pattern>`: create, insert into and drop matching tables.
    WriteTable(Pattern),
    /// `registry:write`: change the feature registry.
    RegistryWrite,
    /// `files`: read or write the server's files.
    Files,
    /// `session`: change the shared session's settings.
    Session,
}

impl Grant {
    /// Parses a grant as written in the auth file.
    pub fn parse(raw: &str) -> Result<Self> {
        let bad = |why: &str| PitlakeError::Config {
            name: "grants".into(),
            message: format!(
                "`{raw}` {why}; write table:<pattern>, view:<pattern>, write:<pattern>, \
                 registry:write, files or session, where a pattern is *, schema.*, table or \
                 schema.table"
            ),
        };
        let raw_trimmed = raw.trim();
        match raw_trimmed {
            "registry:write" => return Ok(Grant::RegistryWrite),
            "files" => return Ok(Grant::Files),
            "session" => return Ok(Grant::Session),
            _ => {}
        }
        let Some((kind, pattern)) = raw_trimmed.split_once(':') else {
            return Err(bad("is not a grant"));
        };
        let pattern = Pattern::parse(pattern).ok_or_else(|| bad("has a malformed pattern"))?;
        match kind {
            "table" => Ok(Grant::ReadTable(pattern)),
            "view" => Ok(Grant::ReadView(pattern)),
            "write" => Ok(Grant::WriteTable(pattern)),
            _ => Err(bad("is not a grant")),
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::ReadTable(p) => write!(f, "table:{p}"),
            Grant::ReadView(p) => write!(f, "view:{p}"),
            Grant::WriteTable(p) => write!(f, "write:{p}"),
            Grant::RegistryWrite => write!(f, "registry:write"),
            Grant::Files => write!(f, "files"),
            Grant::Session => write!(f, "session"),
        }
    }
}

/// The union of the grants of a user's roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(BTreeSet<Grant>);

impl Grants {
    /// Grants from a list.
    pub fn new(grants: impl IntoIterator<Item = Grant>) -> Self {
        Self(grants.into_iter().collect())
    }

    /// Whether the table may be read.
    pub fn can_read_table(&self, table: &TableName) -> bool {
        self.0
            .iter()
            .any(|g| matches!(g, Grant::ReadTable(p) if p.matches(table)))
    }

    /// Whether the table may be created, written or dropped.
    pub fn can_write_table(&self, table: &TableName) -> bool {
        self.0
            .iter()
            .any(|g| matches!(g, Grant::WriteTable(p) if p.matches(table)))
    }

    /// Whether the feature view may be read.
    pub fn can_read_view(&self, view: &TableName) -> bool {
        self.0
            .iter()
            .any(|g| matches!(g, Grant::ReadView(p) if p.matches(view)))
    }

    /// Whether the grant is held exactly.
    pub fn has(&self, grant: &Grant) -> bool {
        self.0.contains(grant)
    }

    /// Checks the tables and feature views a statement's text names, before it is planned:
    /// each table must be readable or writable, each view readable. A forbidden object is
    /// refused the same way whether it exists or not.
    pub fn authorize_named(
        &self,
        user: &str,
        tables: &BTreeSet<TableName>,
        views: &BTreeSet<TableName>,
    ) -> std::result::Result<(), Status> {
        if let Some(table) = tables
            .iter()
            .find(|t| !self.can_read_table(t) && !self.can_write_table(t))
        {
            return Err(Status::permission_denied(format!(
                "user `{user}` may not use table `{table}`: none of its roles grants \
                 `table:{table}` or `write:{table}`"
            )));
        }
        if let Some(view) = views.iter().find(|v| !self.can_read_view(v)) {
            return Err(Status::permission_denied(format!(
                "user `{user}` may not read feature view `{view}`: none of its roles grants \
                 `view:{view}`"
            )));
        }
        Ok(())
    }

    /// Checks everything a statement touches; the first object refused is named.
    pub fn authorize(&self, user: &str, access: &Access) -> std::result::Result<(), Status> {
        let denied = |what: String, grant: String| {
            Status::permission_denied(format!(
                "user `{user}` may not {what}: none of its roles grants `{grant}`"
            ))
        };
        // Writes first: `CREATE TABLE t AS SELECT …` by a reader names the write, which is
        // what the user tried to do.
        for table in &access.writes {
            if !self.can_write_table(table) {
                return Err(denied(
                    format!("write table `{table}`"),
                    format!("write:{table}"),
                ));
            }
        }
        if let Some(ddl) = &access.other_ddl
            && !self.has(&Grant::WriteTable(Pattern::All))
        {
            return Err(denied(format!("run {ddl}"), "write:*".into()));
        }
        if access.registry_write && !self.has(&Grant::RegistryWrite) {
            return Err(denied(
                "change the feature registry".into(),
                "registry:write".into(),
            ));
        }
        if access.session && !self.has(&Grant::Session) {
            return Err(denied(
                "change session settings (SET changes them for every user of the server)".into(),
                "session".into(),
            ));
        }
        if access.files && !self.has(&Grant::Files) {
            return Err(denied(
                "read or write the server's files (COPY, external tables)".into(),
                "files".into(),
            ));
        }
        if let Some(function) = access.functions.iter().next()
            && !self.has(&Grant::Files)
        {
            return Err(denied(
                format!("call table function `{function}`"),
                "files".into(),
            ));
        }
        for view in &access.views {
            if !self.can_read_view(view) {
                return Err(denied(
                    format!("read feature view `{view}`"),
                    format!("view:{view}"),
                ));
            }
        }
        for table in &access.reads {
            if !self.can_read_table(table) {
                return Err(denied(
                    format!("read table `{table}`"),
                    format!("table:{table}"),
                ));
            }
        }
        Ok(())
    }
}

impl Visibility for Grants {
    fn can_read_table(&self, table: &TableName) -> bool {
        Grants::can_read_table(self, table)
    }

    fn can_write_table(&self, table: &TableName) -> bool {
        Grants::can_write_table(self, table)
    }

    fn can_read_view(&self, view: &TableName) -> bool {
        Grants::can_read_view(self, view)
    }

    fn can_write_registry(&self) -> bool {
        self.has(&Grant::RegistryWrite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(list: &[&str]) -> Grants {
        Grants::new(list.iter().map(|g| Grant::parse(g).unwrap()))
    }

    #[test]
    fn parses_and_prints_grants() {
        for raw in [
            "table:*",
            "table:orders",
            "table:features.*",
            "table:features.driver_stats",
            "view:*",
            "write:scratch.*",
            "registry:write",
            "files",
            "session",
        ] {
            assert_eq!(Grant::parse(raw).unwrap().to_string(), raw);
        }
        assert_eq!(
            Grant::parse("table:public.orders").unwrap(),
            Grant::parse("table:orders").unwrap()
        );
        for bad in [
            "table",
            "table:",
            "read:orders",
            "table:a.b.c",
            "table:*.x",
            "tables:*",
        ] {
            let err = Grant::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn patterns_match_schemas_and_tables() {
        let g = grants(&["table:orders", "table:features.*"]);
        assert!(g.can_read_table(&TableName::bare("orders")));
        assert!(g.can_read_table(&TableName::new(Some("features"), "x")));
        assert!(!g.can_read_table(&TableName::bare("x")));
        assert!(!g.can_read_table(&TableName::new(Some("other"), "orders")));
        assert!(!g.can_write_table(&TableName::bare("orders")));
    }

    #[test]
    fn authorize_names_the_first_refused_object() {
        let g = grants(&["table:a"]);
        let mut access = Access::default();
        access.reads.insert(TableName::bare("a"));
        assert!(g.authorize("bob", &access).is_ok());
        access.reads.insert(TableName::new(Some("s"), "b"));
        let err = g.authorize("bob", &access).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("read table `s.b`"),
            "{}",
            err.message()
        );
        access.writes.insert(TableName::bare("c"));
        let err = g.authorize("bob", &access).unwrap_err();
        assert!(
            err.message().contains("write table `c`"),
            "{}",
            err.message()
        );
        let access = Access {
            session: true,
            ..Access::default()
        };
        assert!(g.authorize("bob", &access).is_err());
        assert!(grants(&["session"]).authorize("bob", &access).is_ok());
    }

    #[test]
    fn views_and_the_registry_have_their_own_grants() {
        let mut access = Access::default();
        access.views.insert(TableName::bare("driver_features"));
        let err = grants(&["table:*"]).authorize("bob", &access).unwrap_err();
        assert!(
            err.message()
                .contains("read feature view `driver_features`"),
            "{}",
            err.message()
        );
        assert!(grants(&["view:*"]).authorize("bob", &access).is_ok());
        assert!(
            grants(&["view:driver_features"])
                .authorize("bob", &access)
                .is_ok()
        );
        let access = Access {
            registry_write: true,
            ..Access::default()
        };
        assert!(
            grants(&["table:*", "view:*"])
                .authorize("bob", &access)
                .is_err()
        );
        assert!(
            grants(&["registry:write"])
                .authorize("bob", &access)
                .is_ok()
        );
    }
}
