//! `TRAINING SET` and `EXPORT TRAINING SET`: a training set lowers to its pinned SQL query
//! (`engine::training`), planned like any query, so its reads are the tables the plan scans,
//! plus the feature views it uses; an export also writes files of the server.

use std::collections::BTreeSet;

use super::RunDsl;
use crate::engine::export::manifest_location;
use crate::engine::planning::{PlannedStatement, TableName};
use crate::engine::{Engine, Output, TrainingPlan};
use crate::error::Result;
use crate::frontend::ParsedStatement;
use crate::frontend::dsl::{ExportTrainingSet, SourceSql, TrainingSetSql};

/// The views a planned training set reads.
fn views_of(plan: &TrainingPlan) -> BTreeSet<TableName> {
    plan.views
        .iter()
        .map(|v| TableName::bare(&v.view))
        .collect()
}

impl RunDsl for TrainingSetSql {
    fn named_views(&self) -> BTreeSet<TableName> {
        self.feature_views().map(TableName::bare).collect()
    }

    fn named_relation(&self) -> Option<&SourceSql> {
        Some(&self.labels)
    }

    async fn plan(&self, engine: &Engine, statement: ParsedStatement) -> Result<PlannedStatement> {
        let plan = engine.plan_training_set(self).await?;
        let query = engine.parse_one(&plan.query)?;
        let planned = Box::pin(engine.plan_statement(query)).await?;
        Ok(planned.for_training_set(statement, views_of(&plan)))
    }

    async fn run(self, engine: &Engine, _text: &str) -> Result<Output> {
        let plan = engine.plan_training_set(&self).await?;
        Ok(Output::Rows(engine.sql_stream(&plan.query).await?))
    }
}

impl RunDsl for ExportTrainingSet {
    fn named_views(&self) -> BTreeSet<TableName> {
        self.training_set.named_views()
    }

    fn named_relation(&self) -> Option<&SourceSql> {
        Some(&self.training_set.labels)
    }

    async fn plan(&self, engine: &Engine, statement: ParsedStatement) -> Result<PlannedStatement> {
        let plan = engine.plan_training_set(&self.training_set).await?;
        let query = engine.parse_one(&plan.query)?;
        let mut access = Box::pin(engine.plan_statement(query)).await?.access;
        access.views = views_of(&plan);
        access.files = true;
        Ok(PlannedStatement::change(statement, access))
    }

    async fn run(self, engine: &Engine, text: &str) -> Result<Output> {
        let manifest = engine
            .export_training_set(
                &self.training_set,
                text,
                &self.to,
                self.format.as_deref(),
                None,
            )
            .await?;
        Ok(Output::Done(format!(
            "exported {} rows to {} ({}); manifest {}",
            manifest.output.rows,
            manifest.output.url,
            manifest.output.content_hash,
            manifest_location(&self.to)
        )))
    }
}
