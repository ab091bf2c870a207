//! `TRAINING SET` and `EXPORT TRAINING SET`: a training set lowers to its pinned SQL query
//! (`engine::training`), planned like any query, so its reads are the tables the plan scans,
//! plus the feature views it uses; an export also writes files of the server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::runtime::SpawnedTask;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use super::RunDsl;
use crate::engine::export::manifest_location;
use crate::engine::planning::{PlannedStatement, TableName};
use crate::engine::{Engine, ExportProgress, Manifest, Output, TrainingPlan};
use crate::error::{PitlakeError, Result};
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
        if self.progress {
            return Ok(PlannedStatement::rows(statement, progress_schema(), access));
        }
        Ok(PlannedStatement::change(statement, access))
    }

    async fn run(self, engine: &Engine, text: &str) -> Result<Output> {
        if self.progress {
            return Ok(Output::Rows(export_with_progress(
                engine.clone(),
                self,
                text,
            )));
        }
        let manifest = engine
            .export_training_set(
                &self.training_set,
                text,
                &self.to,
                self.format.as_deref(),
                None,
            )
            .await?;
        Ok(Output::Done(export_report(&manifest, &self.to)))
    }
}

/// The one-line report of an export.
fn export_report(manifest: &Manifest, to: &str) -> String {
    format!(
        "exported {} rows to {} ({}); manifest {}",
        manifest.output.rows,
        manifest.output.url,
        manifest.output.content_hash,
        manifest_location(to)
    )
}

/// How often `EXPORT … WITH PROGRESS` reports while the export runs.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The rows of `EXPORT … WITH PROGRESS`: one per [`PROGRESS_EVERY`] while the export runs
/// (`rows_written` so far, `done` false), then one when it is published (`done` true, `result`
/// the export's report), or the export's error.
pub(crate) fn progress_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("rows_written", DataType::Int64, false),
        Field::new("done", DataType::Boolean, false),
        Field::new("result", DataType::Utf8, true),
    ]))
}

/// Rows written so far, as the export counts them.
#[derive(Default)]
struct Written(AtomicU64);

impl ExportProgress for Written {
    fn rows(&self, rows: u64) {
        self.0.fetch_add(rows, Ordering::Relaxed);
    }

    fn finish(&self) {}
}

/// Runs the export as a task of its own and reports on it. Dropping the stream (a client
/// that goes away, a cancelled query) aborts the task, and with it the export, which then
/// deletes what it had written.
fn export_with_progress(
    engine: Engine,
    export: ExportTrainingSet,
    text: &str,
) -> SendableRecordBatchStream {
    let written = Arc::new(Written::default());
    let counter = written.clone();
    let text = text.to_string();
    let task = SpawnedTask::spawn(async move {
        let manifest = engine
            .export_training_set(
                &export.training_set,
                &text,
                &export.to,
                export.format.as_deref(),
                Some(counter),
            )
            .await?;
        Ok::<String, PitlakeError>(export_report(&manifest, &export.to))
    });
    let schema = progress_schema();
    let row = {
        let schema = schema.clone();
        move |rows: u64, result: Option<String>| -> datafusion::common::Result<RecordBatch> {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(vec![
                    i64::try_from(rows).unwrap_or(i64::MAX),
                ])),
                Arc::new(BooleanArray::from(vec![result.is_some()])),
                Arc::new(StringArray::from(vec![result])),
            ];
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        }
    };
    let joined = Box::pin(task.join_unwind());
    let stream = futures::stream::unfold(Some(joined), move |state| {
        let (written, row) = (written.clone(), row.clone());
        async move {
            let mut joined = state?;
            tokio::select! {
                outcome = &mut joined => {
                    let rows = written.0.load(Ordering::Relaxed);
                    let item = match outcome {
                        Ok(Ok(report)) => row(rows, Some(report)),
                        Ok(Err(e)) => Err(e.into_datafusion()),
                        Err(e) => Err(DataFusionError::ExecutionJoin(Box::new(e))),
                    };
                    Some((item, None))
                }
                _ = tokio::time::sleep(PROGRESS_EVERY) => {
                    Some((row(written.0.load(Ordering::Relaxed), None), Some(joined)))
                }
            }
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}
