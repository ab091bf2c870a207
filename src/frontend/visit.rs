//! Visiting every sqlparser AST inside a DataFusion statement: the one walk the front end's
//! checks and rewrites (bounds, time travel, as-of joins, embedded training sets) share.

use std::ops::ControlFlow;

use datafusion::sql::parser::{CopyToSource, Statement as DFStatement};
use sqlparser::ast::{Visit, VisitMut, Visitor, VisitorMut};

/// Applies `f` to every sqlparser AST inside a DataFusion statement.
pub(crate) fn visit_statement_mut<V: VisitorMut>(
    statement: &mut DFStatement,
    visitor: &mut V,
) -> ControlFlow<V::Break> {
    match statement {
        DFStatement::Statement(s) => s.visit(visitor),
        DFStatement::Explain(explain) => visit_statement_mut(&mut explain.statement, visitor),
        DFStatement::CopyTo(copy) => match &mut copy.source {
            CopyToSource::Query(query) => query.visit(visitor),
            CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        DFStatement::CreateExternalTable(_) | DFStatement::Reset(_) => ControlFlow::Continue(()),
    }
}

/// [`visit_statement_mut`] for a visitor that only reads.
pub(crate) fn visit_statement<V: Visitor>(
    statement: &DFStatement,
    visitor: &mut V,
) -> ControlFlow<V::Break> {
    match statement {
        DFStatement::Statement(s) => s.visit(visitor),
        DFStatement::Explain(explain) => visit_statement(&explain.statement, visitor),
        DFStatement::CopyTo(copy) => match &copy.source {
            CopyToSource::Query(query) => query.visit(visitor),
            CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        DFStatement::CreateExternalTable(_) | DFStatement::Reset(_) => ControlFlow::Continue(()),
    }
}
