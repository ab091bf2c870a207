//! Step 2, the AST: each as-of join that step 1 left in the one parsed form becomes a `LEFT
//! JOIN`, and a marker call `__pitlake_asof_join('alias', 'using time', <step 1's arguments>)` is
//! added to the `WHERE` of its `SELECT`, so DataFusion resolves and type-checks every expression
//! of the join as part of the query. The relation gets an alias if it has none, so step 3 can
//! find the join by it.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, Function, FunctionArg, FunctionArgExpr, FunctionArguments,
    Ident, Join, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Select, SelectItem,
    TableAlias, TableFactor, Value, VisitorMut,
};

use super::{AGGREGATES_SENTINEL, MARKER, WINDOW_MARKER};
use crate::error::PitlakeError;
use crate::frontend::visit::visit_statement_mut;

/// Turns each parsed as-of join into a `LEFT JOIN` plus a marker in its `SELECT`'s `WHERE`.
pub fn rewrite_ast(
    statement: &mut DFStatement,
    normalize_idents: bool,
) -> Result<(), PitlakeError> {
    let mut lower = LowerJoins {
        normalize: normalize_idents,
        generated: 0,
        error: None,
    };
    let _ = visit_statement_mut(statement, &mut lower);
    match lower.error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// The visitor that lowers the as-of joins of every `SELECT`, stopping at the first error.
struct LowerJoins {
    normalize: bool,
    /// Aliases generated so far for relations that had none.
    generated: usize,
    error: Option<PitlakeError>,
}

fn unnamed(expr: SqlExpr) -> FunctionArg {
    FunctionArg::Unnamed(FunctionArgExpr::Expr(expr))
}

fn sql_string(text: &str) -> SqlExpr {
    SqlExpr::Value(Value::SingleQuotedString(text.to_string()).with_empty_span())
}

fn sql_true() -> SqlExpr {
    SqlExpr::Value(Value::Boolean(true).with_empty_span())
}

/// The join's constraint once its as-of parts are in the marker, and the time column of the
/// DuckDB form's `USING (k, …, t)` (empty otherwise).
fn split_constraint(
    form: &str,
    constraint: JoinConstraint,
) -> Result<(JoinConstraint, String), PitlakeError> {
    Ok(match (form, constraint) {
        (_, JoinConstraint::Natural) => {
            return Err(PitlakeError::Plan(
                "ASOF JOIN cannot be NATURAL; name the keys with ON or USING".into(),
            ));
        }
        ("duckdb", JoinConstraint::Using(mut columns)) => {
            let time = columns.pop().ok_or_else(|| {
                PitlakeError::Plan("ASOF JOIN … USING needs the time column last".into())
            })?;
            let constraint = if columns.is_empty() {
                JoinConstraint::On(sql_true())
            } else {
                JoinConstraint::Using(columns)
            };
            (constraint, time.to_string())
        }
        (_, JoinConstraint::None) => (JoinConstraint::On(sql_true()), String::new()),
        (_, other) => (other, String::new()),
    })
}

impl LowerJoins {
    fn alias_of(&mut self, relation: &mut TableFactor) -> Result<String, PitlakeError> {
        let normalize = self.normalize;
        let norm = |ident: &Ident| {
            if ident.quote_style.is_none() && normalize {
                ident.value.to_lowercase()
            } else {
                ident.value.clone()
            }
        };
        let new_alias = |name: String| TableAlias {
            explicit: true,
            name: Ident::with_quote('"', name),
            columns: Vec::new(),
            at: None,
        };
        match relation {
            TableFactor::Table { name, alias, .. } => {
                if let Some(alias) = alias {
                    return Ok(norm(&alias.name));
                }
                let Some(ObjectNamePart::Identifier(last)) = name.0.last() else {
                    return Err(PitlakeError::Plan(format!(
                        "`{name}` cannot be as-of joined"
                    )));
                };
                let base = norm(last);
                // Time travel already aliased versioned tables; a plain one gets its own name.
                *alias = Some(new_alias(base.clone()));
                Ok(base)
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::UNNEST { alias, .. } => {
                if let Some(alias) = alias {
                    return Ok(norm(&alias.name));
                }
                self.generated += 1;
                let name = format!("__pitlake_asof_right_{}", self.generated);
                *alias = Some(new_alias(name.clone()));
                Ok(name)
            }
            other => Err(PitlakeError::Plan(format!(
                "`{other}` cannot be the right side of an ASOF JOIN; use a table or a \
                 subquery with an alias"
            ))),
        }
    }

    /// Lowers one join if it is an as-of join: it becomes a `LEFT JOIN`, and its marker call is
    /// returned.
    fn lower_join(&mut self, join: &mut Join) -> Result<Option<SqlExpr>, PitlakeError> {
        let JoinOperator::AsOf {
            match_condition,
            constraint,
        } = &join.join_operator
        else {
            return Ok(None);
        };
        let SqlExpr::Function(function) = match_condition else {
            return Err(PitlakeError::Internal(
                "ASOF JOIN without its marker".into(),
            ));
        };
        let FunctionArguments::List(list) = &function.args else {
            return Err(PitlakeError::Internal(
                "ASOF JOIN marker without arguments".into(),
            ));
        };
        let form = match list.args.get(1) {
            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(v)))) => {
                v.value.clone().into_string().unwrap_or_default()
            }
            _ => String::new(),
        };
        let (constraint, time_column) = split_constraint(&form, constraint.clone())?;
        let mut marker: Function = function.clone();
        let alias = self.alias_of(&mut join.relation)?;
        let mut args = vec![
            unnamed(sql_string(&alias)),
            unnamed(sql_string(&time_column)),
        ];
        let sentinel = list.args.iter().position(|a| {
            matches!(a, FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(v)))
                if v.value == Value::SingleQuotedString(AGGREGATES_SENTINEL.into()))
        });
        let (own, aggregates) = list.args.split_at(sentinel.unwrap_or(list.args.len()));
        args.extend(own.iter().cloned());
        let window = aggregates.get(1..).map(<[FunctionArg]>::to_vec);
        marker.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(MARKER))]);
        if let FunctionArguments::List(l) = &mut marker.args {
            l.args = args;
        }
        join.join_operator = JoinOperator::LeftOuter(constraint);
        if let Some(aggregates) = window {
            self.window_relation(join, &alias, &aggregates, &marker)?;
        }
        Ok(Some(SqlExpr::Function(marker)))
    }

    /// Wraps the window join's relation as `(SELECT <alias>.*, __pitlake_window('function',
    /// star, argument, k, width) AS <name>, … FROM <relation>) AS <alias>`, so the query sees the
    /// aggregates as columns of the relation and DataFusion types each argument; step 3 takes
    /// them out again.
    fn window_relation(
        &self,
        join: &mut Join,
        alias: &str,
        aggregates: &[FunctionArg],
        marker: &Function,
    ) -> Result<(), PitlakeError> {
        let template = format!("SELECT {}.* FROM t", Ident::with_quote('"', alias));
        let parsed =
            sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::GenericDialect {}, &template)
                .map_err(|e| PitlakeError::Internal(format!("window relation: {e}")))?;
        let Some(sqlparser::ast::Statement::Query(mut query)) = parsed.into_iter().next() else {
            return Err(PitlakeError::Internal("window relation: no query".into()));
        };
        let sqlparser::ast::SetExpr::Select(select) = query.body.as_mut() else {
            return Err(PitlakeError::Internal("window relation: no SELECT".into()));
        };
        for item in aggregates.chunks(6) {
            let [name, rest @ ..] = item else {
                return Err(PitlakeError::Internal("window relation: bad item".into()));
            };
            let name = match name {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(v))) => {
                    v.value.clone().into_string().unwrap_or_default()
                }
                _ => String::new(),
            };
            let ident = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                Some(quoted) => Ident::with_quote('"', quoted),
                None if self.normalize => Ident::with_quote('"', name.to_lowercase()),
                None => Ident::with_quote('"', name),
            };
            let mut call = marker.clone();
            call.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(WINDOW_MARKER))]);
            if let FunctionArguments::List(l) = &mut call.args {
                l.args = rest.to_vec();
            }
            select.projection.push(SelectItem::ExprWithAlias {
                expr: SqlExpr::Function(call),
                alias: ident,
            });
        }
        let relation = std::mem::replace(
            &mut join.relation,
            TableFactor::Table {
                name: ObjectName(vec![]),
                alias: None,
                args: None,
                with_hints: vec![],
                version: None,
                with_ordinality: false,
                partitions: vec![],
                json_path: None,
                sample: None,
                index_hints: vec![],
            },
        );
        if let Some(from) = select.from.first_mut() {
            from.relation = relation;
        }
        join.relation = TableFactor::Derived {
            lateral: false,
            subquery: query,
            alias: Some(TableAlias {
                explicit: true,
                name: Ident::with_quote('"', alias),
                columns: Vec::new(),
                at: None,
            }),
            sample: None,
        };
        Ok(())
    }

    fn lower(&mut self, select: &mut Select) -> Result<(), PitlakeError> {
        let mut markers: Vec<SqlExpr> = Vec::new();
        for from in &mut select.from {
            for join in &mut from.joins {
                markers.extend(self.lower_join(join)?);
            }
        }
        for marker in markers {
            select.selection = Some(match select.selection.take() {
                Some(existing) => SqlExpr::BinaryOp {
                    left: Box::new(marker),
                    op: BinaryOperator::And,
                    right: Box::new(SqlExpr::Nested(Box::new(existing))),
                },
                None => marker,
            });
        }
        Ok(())
    }
}

impl VisitorMut for LowerJoins {
    type Break = ();

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
        match self.lower(select) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                self.error = Some(err);
                ControlFlow::Break(())
            }
        }
    }
}
