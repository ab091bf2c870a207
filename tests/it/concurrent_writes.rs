//! Writers racing on one table in a local folder: a write that replaces the rows (`CREATE OR
//! REPLACE`, `INSERT OVERWRITE`) and an append that commits while it runs. The loser fails with
//! a conflict that says to retry, and the table is exactly what the winner left: never the
//! replacement's rows beside the append's, never two schemas at once.
//!
//! The race is made deterministic with a gated input: the first writer's rows are held back
//! until the second writer has committed, so the first has read the table (its snapshot) before
//! the second commits and commits after it.

use std::sync::{Arc, Mutex};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::provider_as_source;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use pitlake::storage::{TableName, WriteMode};
use pitlake::{Engine, Output, PitlakeError};
use tokio::sync::oneshot;

use crate::common::{engine, rows};

/// One batch, produced only after `go` fires; `started` fires when the writer asks for it.
#[derive(Debug)]
struct Gated {
    schema: SchemaRef,
    batch: RecordBatch,
    started: Mutex<Option<oneshot::Sender<()>>>,
    go: Mutex<Option<oneshot::Receiver<()>>>,
}

impl PartitionStream for Gated {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let started = self.started.lock().unwrap().take();
        let go = self.go.lock().unwrap().take();
        let batch = self.batch.clone();
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::once(async move {
                if let Some(started) = started {
                    let _ = started.send(());
                }
                if let Some(go) = go {
                    let _ = go.await;
                }
                Ok(batch)
            }),
        ))
    }
}

/// A plan over `batch` that waits for `go`, and the signal that it started.
fn gated(batch: RecordBatch) -> (LogicalPlan, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (started_tx, started_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel();
    let schema = batch.schema();
    let partition = Arc::new(Gated {
        schema: schema.clone(),
        batch,
        started: Mutex::new(Some(started_tx)),
        go: Mutex::new(Some(go_rx)),
    });
    let table = StreamingTable::try_new(schema, vec![partition]).unwrap();
    let plan = LogicalPlanBuilder::scan("input", provider_as_source(Arc::new(table)), None)
        .unwrap()
        .build()
        .unwrap();
    (plan, started_rx, go_tx)
}

/// Rows in the table's first schema: `id BIGINT, note VARCHAR`.
fn notes(ids: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("note", DataType::Utf8, true),
    ]));
    let notes: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(notes)),
        ],
    )
    .unwrap()
}

/// Rows in the replacement schema: `id BIGINT, score DOUBLE`.
fn scores(ids: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("score", DataType::Float64, true),
    ]));
    let scores: Vec<f64> = ids.iter().map(|i| *i as f64 / 2.0).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(Float64Array::from(scores)),
        ],
    )
    .unwrap()
}

async fn sql(engine: &Engine, sql: &str) {
    match engine.sql(sql).await {
        Ok(Output::Done(_)) => {}
        Ok(Output::Rows(_)) => panic!("{sql} returned rows"),
        Err(e) => panic!("{sql}\nfailed: {e}"),
    }
}

/// The table's rows, as text, sorted.
async fn table(engine: &Engine) -> Vec<Vec<String>> {
    rows(&engine.collect("SELECT * FROM t ORDER BY id").await.unwrap())
}

/// The table's columns, as `name type`.
async fn columns(engine: &Engine) -> Vec<String> {
    let batches = engine.collect("SELECT * FROM t").await.unwrap();
    batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect()
}

/// Runs `first` (gated) and, once it has read the table, `second` to completion; then lets
/// `first` finish. Returns `first`'s result.
async fn race(
    engine: &Engine,
    first_rows: RecordBatch,
    first_mode: WriteMode,
    second: &str,
) -> Result<(), PitlakeError> {
    let (plan, started, go) = gated(first_rows);
    let state = engine.state();
    let name = TableName::bare("t");
    let first = engine.write(&state, &name, plan, first_mode, &[]);
    let second = async {
        started.await.unwrap();
        sql(engine, second).await;
        go.send(()).unwrap();
    };
    let (first, ()) = tokio::join!(first, second);
    first.map(|_| ())
}

fn assert_conflict(result: Result<(), PitlakeError>) {
    match result {
        Err(PitlakeError::ConcurrentWrite { table, message }) => {
            assert_eq!(table, "t");
            let shown = PitlakeError::ConcurrentWrite {
                table: table.clone(),
                message: message.clone(),
            }
            .to_string();
            assert!(
                shown.contains("changed while this statement ran")
                    && shown.contains("run the statement again"),
                "{shown}"
            );
        }
        other => panic!("expected a concurrent-write conflict, got {other:?}"),
    }
}

/// `CREATE OR REPLACE` with a new schema, while an append in the old schema commits: the
/// replace fails and the table keeps its schema and both old and appended rows. Retried, the
/// replace wins alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_racing_an_append_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    sql(
        &engine,
        "CREATE TABLE t AS SELECT * FROM (VALUES (1, 'n1'), (2, 'n2')) AS v(id, note)",
    )
    .await;
    let result = race(
        &engine,
        scores(&[10, 11]),
        WriteMode::CreateOrReplace,
        "INSERT INTO t VALUES (3, 'n3')",
    )
    .await;
    assert_conflict(result);
    assert_eq!(columns(&engine).await, ["id Int64", "note Utf8View"]);
    assert_eq!(
        table(&engine).await,
        [["1", "n1"], ["2", "n2"], ["3", "n3"]]
    );
    // Run again, it replaces everything: one schema, only its rows.
    let (plan, _, go) = gated(scores(&[10, 11]));
    go.send(()).unwrap();
    engine
        .write(
            &engine.state(),
            &TableName::bare("t"),
            plan,
            WriteMode::CreateOrReplace,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(columns(&engine).await, ["id Int64", "score Float64"]);
    assert_eq!(table(&engine).await, [["10", "5.0"], ["11", "5.5"]]);
}

/// An append that read the table before a `CREATE OR REPLACE` committed a new schema: the
/// append fails (its rows have the old schema) and the table is the replacement alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_racing_a_replace_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    sql(
        &engine,
        "CREATE TABLE t AS SELECT * FROM (VALUES (1, 'n1'), (2, 'n2')) AS v(id, note)",
    )
    .await;
    let result = race(
        &engine,
        notes(&[3]),
        WriteMode::Append,
        "CREATE OR REPLACE TABLE t AS SELECT * FROM (VALUES (10, 5.0)) AS v(id, score)",
    )
    .await;
    assert_conflict(result);
    assert_eq!(columns(&engine).await, ["id Int64", "score Float64"]);
    assert_eq!(table(&engine).await, [["10", "5.0"]]);
}

/// `INSERT OVERWRITE` (same schema) while an append commits: the overwrite fails rather than
/// keep the appended rows beside its own; the table is the old rows plus the append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwrite_racing_an_append_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    sql(
        &engine,
        "CREATE TABLE t AS SELECT * FROM (VALUES (1, 'n1'), (2, 'n2')) AS v(id, note)",
    )
    .await;
    let result = race(
        &engine,
        notes(&[20, 21]),
        WriteMode::Overwrite,
        "INSERT INTO t VALUES (3, 'n3')",
    )
    .await;
    assert_conflict(result);
    assert_eq!(
        table(&engine).await,
        [["1", "n1"], ["2", "n2"], ["3", "n3"]]
    );
    // Two appends racing both land: appends do not conflict with each other.
    let result = race(
        &engine,
        notes(&[4]),
        WriteMode::Append,
        "INSERT INTO t VALUES (5, 'n5')",
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(table(&engine).await.len(), 5);
}
