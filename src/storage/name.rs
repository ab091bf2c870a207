//! Table names: how a folder under the warehouse root is named in SQL (`table` or
//! `schema.table`), and which folder names cannot be tables.
//!
//! Its own module because both the warehouse (which opens tables) and the log reader (which
//! names the table in its errors) need it, and neither should depend on the other for it.

use std::fmt;

use crate::error::{PitlakeError, Result};

/// The schema that tables directly under the root belong to.
pub const DEFAULT_SCHEMA: &str = "public";

/// A table's name: an optional schema (a subfolder of the root) and the table (a folder).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// The schema folder, `None` for tables directly under the root.
    pub schema: Option<String>,
    /// The table folder.
    pub table: String,
}

impl TableName {
    /// A table directly under the root.
    pub fn bare(table: impl Into<String>) -> Self {
        Self {
            schema: None,
            table: table.into(),
        }
    }

    /// A table in a schema; the default schema maps to the root.
    pub fn new(schema: Option<&str>, table: impl Into<String>) -> Self {
        Self {
            schema: schema
                .filter(|s| *s != DEFAULT_SCHEMA)
                .map(|s| s.to_string()),
            table: table.into(),
        }
    }

    /// Parses `table` or `schema.table` (no quoting: names as folders have them).
    pub fn parse(raw: &str) -> Result<Self> {
        let parts: Vec<&str> = raw.split('.').collect();
        let name = match parts.as_slice() {
            [table] => Self::bare(*table),
            [schema, table] => Self::new(Some(schema), *table),
            _ => {
                return Err(PitlakeError::Plan(format!(
                    "`{raw}` is not a table name; write `table` or `schema.table`"
                )));
            }
        };
        name.validate()?;
        Ok(name)
    }

    /// Checks that the name can be a folder and round-trips through SQL.
    pub fn validate(&self) -> Result<()> {
        for part in self.schema.iter().chain(std::iter::once(&self.table)) {
            let bad = part.is_empty()
                || part.starts_with('_')
                || part.starts_with('.')
                || part.contains(['/', '\\', '@'])
                || part.chars().any(char::is_control);
            if bad {
                return Err(PitlakeError::Plan(format!(
                    "`{part}` cannot be a table or schema name: names must not be empty, start \
                     with `_` or `.`, or contain `/`, `\\` or `@`"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn segments(&self) -> Vec<&str> {
        self.schema
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.table.as_str()))
            .collect()
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.table),
            None => write!(f, "{}", self.table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_validate() {
        assert_eq!(
            TableName::parse("orders").unwrap(),
            TableName::bare("orders")
        );
        let n = TableName::parse("features.driver_stats").unwrap();
        assert_eq!(n.schema.as_deref(), Some("features"));
        assert_eq!(TableName::parse("public.t").unwrap(), TableName::bare("t"));
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse("_pitlake").is_err());
        assert!(TableName::parse("t@v1").is_err());
    }
}
