//! Time travel in SQL: `t VERSION AS OF 3`, `t TIMESTAMP AS OF '2026-01-01T00:00:00Z'` (the
//! Delta/Databricks syntax) and `t FOR SYSTEM_TIME AS OF …` (SQL:2011), anywhere a table can be
//! named: in joins, subqueries, CTEs, `INSERT … SELECT`, `CREATE TABLE … AS`.
//!
//! DataFusion ignores table versions, so the statement is rewritten before planning: each
//! versioned table reference becomes a reference to `table@v3` (or `table@t<millis>`), a name the
//! warehouse catalog resolves to that version, and gets an alias equal to the table's own name
//! (when it had none) so `t.column` still resolves. Two versions of one table in a query need two
//! aliases, as any self-join does.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use sqlparser::ast::{
    Expr, Ident, ObjectName, ObjectNamePart, TableAlias, TableFactor, TableVersion as SqlVersion,
    Value, VisitorMut,
};

use crate::error::{PitlakeError, Result};
use crate::frontend::bounds;
use crate::frontend::visit::visit_statement_mut;
use crate::storage::{TableVersion, encode_versioned_name};

/// A version clause as written, before timestamps are evaluated.
#[derive(Debug, Clone, PartialEq)]
pub enum VersionClause {
    /// `VERSION AS OF n`.
    Version(i64),
    /// `TIMESTAMP AS OF expr` / `FOR SYSTEM_TIME AS OF expr`: a constant expression (see
    /// [`bounds::ensure_constant`]) to evaluate to an instant.
    Timestamp(Box<Expr>),
}

struct Collect {
    found: Vec<VersionClause>,
    error: Option<PitlakeError>,
}

impl VisitorMut for Collect {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            version: Some(version),
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let clause = match version {
            SqlVersion::VersionAsOf(Expr::Value(v)) => match &v.value {
                Value::Number(n, _) => match n.parse::<i64>() {
                    Ok(n) => Ok(VersionClause::Version(n)),
                    Err(_) => Err(format!(
                        "`VERSION AS OF {n}` on `{name}`: a version is a whole number (0, 1, 2 …)"
                    )),
                },
                other => Err(format!(
                    "`VERSION AS OF {other}` on `{name}`: a version is a whole number"
                )),
            },
            SqlVersion::TimestampAsOf(expr) | SqlVersion::ForSystemTimeAsOf(expr) => {
                // Evaluated before the statement's grants are checked: a constant, or nothing.
                if let Err(err) =
                    bounds::ensure_constant(expr, &format!("TIMESTAMP AS OF on `{name}`"))
                {
                    self.error = Some(err);
                    return ControlFlow::Break(());
                }
                Ok(VersionClause::Timestamp(Box::new(expr.clone())))
            }
            other => Err(format!(
                "`{other}` on `{name}` is not supported; use `VERSION AS OF <n>` or \
                 `TIMESTAMP AS OF '<time>'`"
            )),
        };
        match clause {
            Ok(clause) => {
                self.found.push(clause);
                ControlFlow::Continue(())
            }
            Err(message) => {
                self.error = Some(PitlakeError::Plan(message));
                ControlFlow::Break(())
            }
        }
    }
}

/// The version clauses of a statement, in the order [`apply_versions`] expects them.
pub fn collect_versions(statement: &mut DFStatement) -> Result<Vec<VersionClause>> {
    let mut collect = Collect {
        found: Vec::new(),
        error: None,
    };
    let _ = visit_statement_mut(statement, &mut collect);
    match collect.error {
        Some(err) => Err(err),
        None => Ok(collect.found),
    }
}

struct Apply<'a> {
    resolved: std::slice::Iter<'a, TableVersion>,
    normalize: bool,
    error: Option<PitlakeError>,
}

fn normalized(ident: &Ident, normalize: bool) -> String {
    if ident.quote_style.is_none() && normalize {
        ident.value.to_lowercase()
    } else {
        ident.value.clone()
    }
}

impl VisitorMut for Apply<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias,
            version,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        if version.is_none() {
            return ControlFlow::Continue(());
        }
        let Some(resolved) = self.resolved.next() else {
            self.error = Some(PitlakeError::Internal(
                "time travel: fewer resolved versions than clauses".into(),
            ));
            return ControlFlow::Break(());
        };
        let Some(ObjectNamePart::Identifier(last)) = name.0.last().cloned() else {
            self.error = Some(PitlakeError::Plan(format!(
                "`{name}` cannot be read at a version"
            )));
            return ControlFlow::Break(());
        };
        let base = normalized(&last, self.normalize);
        let mut parts = name.0.clone();
        parts.pop();
        parts.push(ObjectNamePart::Identifier(Ident::with_quote(
            '"',
            encode_versioned_name(&base, *resolved),
        )));
        *name = ObjectName(parts);
        *version = None;
        if alias.is_none() {
            *alias = Some(TableAlias {
                explicit: true,
                name: Ident::with_quote('"', base),
                columns: Vec::new(),
                at: None,
            });
        }
        ControlFlow::Continue(())
    }
}

/// Rewrites every versioned table reference to the catalog's versioned name. `resolved` holds one
/// version per clause returned by [`collect_versions`], in the same order.
pub fn apply_versions(
    statement: &mut DFStatement,
    resolved: &[TableVersion],
    normalize_idents: bool,
) -> Result<()> {
    let mut apply = Apply {
        resolved: resolved.iter(),
        normalize: normalize_idents,
        error: None,
    };
    let _ = visit_statement_mut(statement, &mut apply);
    if let Some(err) = apply.error {
        return Err(err);
    }
    if apply.resolved.next().is_some() {
        return Err(PitlakeError::Internal(
            "time travel: more resolved versions than clauses".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::parse::{Statement, parse_sql};

    fn sql_statement(sql: &str) -> DFStatement {
        match parse_sql(sql).unwrap().remove(0).statement {
            Statement::Sql(s) => *s,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rewrites_versions_in_joins_and_subqueries() {
        let mut stmt = sql_statement(
            "select * from Orders version as of 1 o join (select * from orders timestamp as of \
             '2026-01-01T00:00:00Z') x on o.id = x.id",
        );
        let clauses = collect_versions(&mut stmt).unwrap();
        assert_eq!(clauses.len(), 2);
        assert_eq!(clauses[0], VersionClause::Version(1));
        assert!(matches!(clauses[1], VersionClause::Timestamp(_)));
        apply_versions(
            &mut stmt,
            &[TableVersion::Version(1), TableVersion::Timestamp(5)],
            true,
        )
        .unwrap();
        let text = stmt.to_string();
        assert!(text.contains(r#""orders@v1" o"#), "{text}");
        assert!(text.contains(r#""orders@t5" AS "orders""#), "{text}");
        assert!(!text.contains("AS OF"), "{text}");
    }

    #[test]
    fn timestamps_are_constants_only() {
        for sql in [
            "with salaries as (select 1 as x) select * from orders timestamp as of \
             (select string_agg(ssn, ',') from salaries)",
            "select * from orders for system_time as of (select max(ts) from salaries)",
            "select * from orders timestamp as of orders.ts",
            "select * from orders where id in (select id from t timestamp as of \
             now() - (select 1))",
        ] {
            let err = collect_versions(&mut sql_statement(sql)).unwrap_err();
            assert!(
                err.to_string().contains("must be a constant"),
                "{sql}: {err}"
            );
        }
        let ok = "select * from t timestamp as of now() - interval '1 day'";
        assert_eq!(collect_versions(&mut sql_statement(ok)).unwrap().len(), 1);
    }

    #[test]
    fn refuses_non_integer_versions() {
        let err =
            collect_versions(&mut sql_statement("select * from t version as of 1.5")).unwrap_err();
        assert!(err.to_string().contains("whole number"), "{err}");
    }
}
