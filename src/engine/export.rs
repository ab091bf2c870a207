//! Exporting training sets with a manifest, rebuilding them from it, and auditing them.
//!
//! An export streams the training set (never collected) into Parquet, CSV or a Delta table at a
//! local path or object-store URL, and writes `<output>.manifest.json` beside it: the pinned
//! query, every input table with the exact Delta version read, the registry version, pitlake's
//! version, the semantics options, the row count and a content hash, and what identifies the
//! data written (a file's size and byte hash, a Delta table's version). `reproduce` re-runs the
//! pinned query and proves the rows identical; `verify` reads the exported data and proves it
//! is the manifest's; `audit` checks a training set for leakage and reports how fresh its
//! features were.
//!
//! Export lives in the engine rather than in a layer above it because `EXPORT TRAINING SET` is a
//! statement: the shell, scripts and the Flight server all reach it through `Engine::run`.
//!
//! # An export and its manifest, published in an order a reader can check
//!
//! Two files (or a table and a file) cannot be replaced together atomically, on a disk or on
//! an object store. So each is published atomically on its own (a rename of a temporary file
//! beside it; a completed multipart upload or one PUT; a Delta commit), **data first, then the
//! manifest**, and the manifest records what it belongs to: a Parquet or CSV file's size and
//! the SHA-256 of its bytes (`output.bytes`, `output.sha256`), a Delta table's committed version
//! (`output.delta_version`, whose rows hash to `output.content_hash`). Whatever a crash or two
//! concurrent exports to one place leave — new data under an old manifest, one export's data
//! under the other's manifest — `pitlake verify` (and `reproduce`) reads the data and says it
//! does not belong to the manifest; a pair that verifies is one export's data and its own
//! manifest. Naming the data file by its hash would avoid the mismatch altogether, but exports
//! go where the user said, to be read by name; the check keeps that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

mod remote;
mod sink;

pub use remote::{
    ExportLogicalCodec, ExportPhysicalCodec, ExportPlanner, ExportWrite, ExportWriteExec,
    PartReport,
};
use sink::{Destination, ExportSink, FileDigest, digest_of};

use super::training::{TrainingPlan, ViewUse, quote};
use super::{Engine, Output, ParquetOut, RunOptions};
use crate::config::WarehouseLocation;
use crate::error::{PitlakeError, Result};
use crate::frontend::Statement;
use crate::frontend::dsl::TrainingSetSql;
use crate::storage::{Warehouse, concurrent_write, single_attempt};

/// The manifest format's version.
pub const MANIFEST_VERSION: u32 = 1;

/// Where and how a training set was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// The output's location.
    pub url: String,
    /// `parquet`, `csv` or `delta`.
    pub format: String,
    /// Rows written.
    pub rows: u64,
    /// The content hash (see [`ContentHash`]).
    pub content_hash: String,
    /// The columns, as `name type`.
    pub schema: Vec<String>,
    /// A Parquet or CSV file's size in bytes. Absent for Delta outputs and in manifests written
    /// before pitlake recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The SHA-256 of a Parquet or CSV file's bytes (lowercase hex). Absent like `bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The Delta version a `delta` export committed. Absent for files and in manifests written
    /// before pitlake recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_version: Option<i64>,
}

/// Everything needed to rebuild an exported training set exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format's version.
    pub manifest_version: u32,
    /// The pitlake version that wrote it.
    pub pitlake_version: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// Who.
    pub created_by: String,
    /// The warehouse read.
    pub warehouse: String,
    /// The statement as written.
    pub statement: String,
    /// The training set as planned: its pinned queries, label time, registry version, every
    /// table read at its exact version, and per view the features, TTL, tie-break and
    /// knowledge-time settings (inline in the JSON).
    #[serde(flatten)]
    pub plan: TrainingPlan,
    /// The output.
    pub output: OutputInfo,
}

/// An order-independent content hash: the row count and the 256-bit sum of the SHA-256 digests
/// of the rows (each row encoded with Arrow's row format, which is exact and type-aware). Two
/// outputs with the same hash hold the same rows, whatever their file layout or batch sizes.
pub struct ContentHash {
    converter: RowConverter,
    sum: [u64; 4],
    rows: u64,
}

impl ContentHash {
    /// A hash for rows of `schema`.
    pub fn new(schema: &SchemaRef) -> Result<Self> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Self {
            converter: RowConverter::new(fields)?,
            sum: [0; 4],
            rows: 0,
        })
    }

    /// Adds a batch's rows.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = self.converter.convert_columns(batch.columns())?;
        for row in rows.iter() {
            let digest = ring::digest::digest(&ring::digest::SHA256, row.as_ref());
            for (lane, chunk) in self.sum.iter_mut().zip(digest.as_ref().chunks_exact(8)) {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(chunk);
                *lane = lane.wrapping_add(u64::from_le_bytes(bytes));
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// The rows seen.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The four 64-bit lanes of the digest sum, for [`ContentHash::merge`].
    pub fn lanes(&self) -> [u64; 4] {
        self.sum
    }

    /// Adds the rows another hash saw (its row count and lanes): exact, since the hash is a sum.
    pub fn merge(&mut self, rows: u64, lanes: [u64; 4]) {
        for (lane, other) in self.sum.iter_mut().zip(lanes) {
            *lane = lane.wrapping_add(other);
        }
        self.rows += rows;
    }

    /// The hash as text.
    pub fn finish(&self) -> String {
        format!(
            "rows{}:sha256sum:{:016x}{:016x}{:016x}{:016x}",
            self.rows, self.sum[0], self.sum[1], self.sum[2], self.sum[3]
        )
    }
}

/// The output formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// One Parquet file.
    Parquet,
    /// One CSV file with a header.
    Csv,
    /// A Delta table (created, or overwritten as a new version).
    Delta,
}

impl ExportFormat {
    /// Parses a format name, or infers it from the destination.
    pub fn resolve(name: Option<&str>, to: &str) -> Result<Self> {
        let name = match name {
            Some(n) => n.to_ascii_lowercase(),
            None if to.ends_with(".csv") => "csv".into(),
            None if to.ends_with(".parquet") || to.ends_with(".pq") => "parquet".into(),
            None if !to.contains('.') || to.ends_with('/') => "delta".into(),
            None => "parquet".into(),
        };
        match name.as_str() {
            "parquet" => Ok(ExportFormat::Parquet),
            "csv" => Ok(ExportFormat::Csv),
            "delta" => Ok(ExportFormat::Delta),
            other => Err(PitlakeError::Plan(format!(
                "unknown export format `{other}`; use parquet, csv or delta"
            ))),
        }
    }

    /// The format's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Parquet => "parquet",
            ExportFormat::Csv => "csv",
            ExportFormat::Delta => "delta",
        }
    }
}

/// Reports export progress (rows written so far).
pub trait ExportProgress: Send + Sync {
    /// `rows` more rows were written.
    fn rows(&self, rows: u64);
    /// The export finished or failed.
    fn finish(&self);
}

/// The result of a reproduction.
#[derive(Debug, Clone, PartialEq)]
pub struct Reproduction {
    /// The hash recorded in the manifest.
    pub expected: String,
    /// The hash of the rebuilt rows.
    pub actual: String,
    /// Where the rebuilt rows were written, if asked.
    pub written_to: Option<String>,
    /// The exported data checked against the manifest (see [`Engine::verify`]).
    pub file: Verification,
}

impl Reproduction {
    /// Whether the rebuild gives the manifest's rows and the exported data is the manifest's.
    pub fn ok(&self) -> bool {
        self.expected == self.actual && self.file.ok()
    }
}

/// One comparison of an export with its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was compared: `file` (present), `size`, `sha256`, `rows` (the content hash of the
    /// rows read back) or `row count`.
    pub what: String,
    /// What the manifest records.
    pub expected: String,
    /// What the export holds.
    pub actual: String,
}

impl Check {
    fn new(what: &str, expected: impl Into<String>, actual: impl Into<String>) -> Self {
        Self {
            what: what.to_string(),
            expected: expected.into(),
            actual: actual.into(),
        }
    }

    /// Whether the export holds what the manifest records.
    pub fn matches(&self) -> bool {
        self.expected == self.actual
    }
}

/// An exported output checked against its manifest (`pitlake verify`).
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// The output's location.
    pub url: String,
    /// Its format.
    pub format: String,
    /// The comparisons made, in order.
    pub checks: Vec<Check>,
    /// What could not be checked, and why (older manifests record less).
    pub notes: Vec<String>,
}

impl Verification {
    /// Whether every check matched (and at least one was made).
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(Check::matches)
    }

    /// One line per check, for people.
    pub fn report(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .checks
            .iter()
            .map(|c| {
                if c.matches() {
                    format!("{}: {} (matches the manifest)", c.what, c.actual)
                } else {
                    format!(
                        "{}: the manifest records {}, the export has {}",
                        c.what, c.expected, c.actual
                    )
                }
            })
            .collect();
        lines.extend(self.notes.iter().map(|n| format!("note: {n}")));
        lines
    }

    /// Why the export does not match its manifest, naming each differing check.
    pub fn mismatch(&self) -> String {
        let differing: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.matches())
            .map(|c| {
                format!(
                    "{}: the manifest records {}, the export has {}",
                    c.what, c.expected, c.actual
                )
            })
            .collect();
        format!(
            "the {} export at {} does not match its manifest ({}). It was changed or truncated \
             after the export, or another export to the same place replaced it or its manifest; \
             export again, or rebuild it with `pitlake reproduce MANIFEST --to …`",
            self.format,
            self.url,
            differing.join("; ")
        )
    }
}

fn local_path(to: &str) -> Option<PathBuf> {
    match url::Url::parse(to) {
        Ok(url) if url.scheme() == "file" => url.to_file_path().ok(),
        Ok(url) if url.scheme().len() > 1 => None,
        _ => Some(PathBuf::from(to)),
    }
}

/// Whether `to` is on object storage, which a cluster's executors reach as the client does (a
/// local path or `memory://` is this process's own).
fn on_object_storage(to: &str) -> bool {
    local_path(to).is_none()
        && url::Url::parse(to)
            .is_ok_and(|url| matches!(url.scheme(), "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss"))
}

/// The manifest's location for an output.
pub fn manifest_location(to: &str) -> String {
    format!("{}.manifest.json", to.trim_end_matches('/'))
}

/// The store and path of an output URL on object storage, built like the warehouse's store
/// (the same settings, resolved in the same order; see `storage::options`).
fn output_store(engine: &Engine, url: &str) -> Result<Warehouse> {
    output_store_with(&engine.settings().warehouse.storage_options, url)
}

/// The store and path of an output URL, built with the storage settings `options`.
fn output_store_with(options: &HashMap<String, String>, url: &str) -> Result<Warehouse> {
    let location = WarehouseLocation::parse(url)?.with_storage_options(options.clone());
    Warehouse::connect(location)
}

/// Where a file named by the user goes: a local path, or an object of a store built like the
/// warehouse's.
fn destination(engine: &Engine, to: &str) -> Result<Destination> {
    destination_with(&engine.settings().warehouse.storage_options, to)
}

/// Where a file goes, its store built with the storage settings `options` (an executor's own).
fn destination_with(options: &HashMap<String, String>, to: &str) -> Result<Destination> {
    Ok(match local_path(to) {
        Some(path) => Destination::Local(path),
        None => {
            let out = output_store_with(options, to)?;
            Destination::Store {
                store: out.store().clone(),
                path: out.root().clone(),
            }
        }
    })
}

/// `stream`, each batch added to `hash` and counted in `progress` on its way. Batches are hashed
/// on tasks of their own, up to one per core at once and in order (the hash is a sum, so each
/// task sums its batch and the sums are added): the hashing runs beside the writing instead of
/// before it on the writer's thread.
fn hashing(
    stream: SendableRecordBatchStream,
    hash: Arc<Mutex<ContentHash>>,
    progress: Option<Arc<dyn ExportProgress>>,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let batch_schema = schema.clone();
    let counting = stream
        .map(move |batch| {
            let schema = batch_schema.clone();
            datafusion::common::runtime::SpawnedTask::spawn(async move {
                let batch = batch?;
                let mut one = ContentHash::new(&schema).map_err(PitlakeError::into_datafusion)?;
                one.update(&batch).map_err(PitlakeError::into_datafusion)?;
                Ok::<_, datafusion::error::DataFusionError>((batch, one.rows(), one.lanes()))
            })
        })
        .buffered(crate::parallel::cores())
        .map(move |hashed| {
            let (batch, rows, lanes) = hashed
                .map_err(|e| datafusion::error::DataFusionError::ExecutionJoin(Box::new(e)))??;
            match hash.lock() {
                Ok(mut h) => h.merge(rows, lanes),
                Err(_) => {
                    return Err(PitlakeError::Internal("export hash lock".into()).into_datafusion());
                }
            }
            if let Some(p) = &progress {
                p.rows(batch.num_rows() as u64);
            }
            Ok(batch)
        });
    Box::pin(RecordBatchStreamAdapter::new(schema, counting))
}

/// Writes a small file (a manifest) under a temporary name and publishes it in one step.
async fn publish_bytes(engine: &Engine, to: &str, bytes: &[u8]) -> Result<FileDigest> {
    let mut sink = ExportSink::create(destination(engine, to)?, to)?;
    match sink.put(bytes).await {
        Ok(()) => sink.publish().await,
        Err(e) => {
            sink.abort().await;
            Err(e)
        }
    }
}

async fn read_text(engine: &Engine, from: &str) -> Result<String> {
    let bytes = match local_path(from) {
        Some(path) => std::fs::read(&path).map_err(|e| PitlakeError::Input {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?,
        None => {
            let out = output_store(engine, from)?;
            let found = out.store().get(out.root()).await.map_err(|e| match e {
                object_store::Error::NotFound { .. } => PitlakeError::Input {
                    path: from.to_string(),
                    message: "does not exist".into(),
                },
                other => PitlakeError::ObjectStore(other),
            })?;
            found.bytes().await?.to_vec()
        }
    };
    String::from_utf8(bytes).map_err(|e| PitlakeError::Input {
        path: from.to_string(),
        message: format!("is not text: {e}"),
    })
}

/// Bytes written by one side (a Parquet writer) and taken by the other (the export's sink).
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// The bytes written since the last call.
    fn take(&self) -> Result<Vec<u8>> {
        self.0
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .map_err(|_| PitlakeError::Internal("export buffer lock poisoned".into()))
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut b) => {
                b.extend_from_slice(bytes);
                Ok(bytes.len())
            }
            Err(_) => Err(std::io::Error::other("export buffer lock poisoned")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes one Parquet or CSV file under a temporary name and publishes it in one step (see
/// `sink`): a failed export never leaves half a file behind nor spoils an earlier export at
/// the same place. Returns the file's size and SHA-256.
async fn write_file_to(
    mut stream: SendableRecordBatchStream,
    destination: Destination,
    to: &str,
    format: ExportFormat,
) -> Result<FileDigest> {
    let schema = stream.schema();
    let sink = ExportSink::create(destination, to)?;
    let (sink, written) = if format == ExportFormat::Parquet {
        // Encoded on every core (the same bytes as `ArrowWriter`'s file, see `ParquetOut`):
        // into a local file directly, or into a buffer sent on after each batch.
        let mut sink = sink;
        let threads = crate::parallel::cores();
        let written = match sink.local() {
            Some(local) => {
                async {
                    let mut writer = ParquetOut::try_new(local, schema, None, threads)?;
                    while let Some(batch) = stream.next().await {
                        writer.write(&batch?)?;
                    }
                    Ok::<_, PitlakeError>(writer.close()?)
                }
                .await
            }
            None => {
                let buffer = SharedBuffer::default();
                async {
                    let mut writer = ParquetOut::try_new(buffer.clone(), schema, None, threads)?;
                    while let Some(batch) = stream.next().await {
                        writer.write(&batch?)?;
                        sink.put(&buffer.take()?).await?;
                    }
                    writer.close()?;
                    sink.put(&buffer.take()?).await?;
                    Ok::<_, PitlakeError>(())
                }
                .await
            }
        };
        (sink, written)
    } else {
        let mut sink = sink;
        let written = async {
            // One CSV writer per batch into a reused buffer, the header with the first: the
            // same bytes as one writer over the whole file, sent on as they are made.
            let mut buffer = Vec::new();
            let mut header = true;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                buffer.clear();
                arrow::csv::WriterBuilder::new()
                    .with_header(header)
                    .build(&mut buffer)
                    .write(&batch)?;
                header = false;
                sink.put(&buffer).await?;
            }
            Ok::<_, PitlakeError>(())
        }
        .await;
        (sink, written)
    };
    match written {
        Ok(()) => sink.publish().await,
        Err(e) => {
            sink.abort().await;
            Err(e)
        }
    }
}

/// The output of an export that wrote `schema`'s rows, hashed in `hash`.
fn output_info(
    to: &str,
    format: ExportFormat,
    schema: &SchemaRef,
    hash: &ContentHash,
    file: Option<FileDigest>,
    delta_version: Option<i64>,
) -> OutputInfo {
    OutputInfo {
        url: to.to_string(),
        format: format.as_str().to_string(),
        rows: hash.rows(),
        content_hash: hash.finish(),
        schema: schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect(),
        bytes: file.as_ref().map(|f| f.bytes),
        sha256: file.map(|f| f.sha256),
        delta_version,
    }
}

/// What a Delta export on a cluster commits to: the table's columns in Delta's types, and the
/// version it replaces (`None`: it creates the table) and that version's table properties, which
/// the new version keeps.
pub(super) struct DeltaTarget {
    columns: deltalake::kernel::StructType,
    replaces: Option<i64>,
    properties: HashMap<String, String>,
}

impl DeltaTarget {
    /// The target of an export of `schema` to `to`, as the table is now.
    async fn of(engine: &Engine, to: &str, schema: &SchemaRef) -> Result<Self> {
        let table = engine.delta_table_at(to).await;
        Ok(Self {
            columns: delta_columns(schema)?,
            replaces: table.as_ref().and_then(|t| t.version()).map(|v| v as i64),
            properties: table
                .as_ref()
                .and_then(|t| t.snapshot().ok())
                .map(|s| s.metadata().configuration().clone())
                .unwrap_or_default(),
        })
    }
}

/// A query's schema as the columns of the Delta table an export writes.
pub(super) fn delta_columns(schema: &SchemaRef) -> Result<deltalake::kernel::StructType> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    remote::delta_schema(schema)
        .as_ref()
        .try_into_kernel()
        .map_err(|e| PitlakeError::Plan(format!("the training set cannot be a Delta table: {e}")))
}

/// Where an `Add` of the table at `out` is.
fn part_path(out: &Warehouse, add: &deltalake::kernel::Add) -> object_store::path::Path {
    out.root()
        .parts()
        .chain(object_store::path::Path::from(add.path.as_str()).parts())
        .collect()
}

/// `plan` without its final `ORDER BY` (under the projections above it), for an output with no
/// row order; a sort with a limit stays.
fn without_final_sort(
    plan: datafusion::logical_expr::LogicalPlan,
) -> Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::logical_expr::{LogicalPlan, Projection};
    Ok(match plan {
        LogicalPlan::Sort(sort) if sort.fetch.is_none() => Arc::unwrap_or_clone(sort.input),
        LogicalPlan::Projection(projection) => {
            let input = without_final_sort(Arc::unwrap_or_clone(projection.input))?;
            LogicalPlan::Projection(Projection::try_new_with_schema(
                projection.expr,
                Arc::new(input),
                projection.schema,
            )?)
        }
        other => other,
    })
}

impl Engine {
    /// Parses one query, refusing anything else.
    ///
    /// Only a plain SQL query is accepted: the DSL calls this without recursing into itself, and
    /// `reproduce` and `audit` run a manifest's queries through it, which must never write.
    fn query_statement(&self, sql: &str) -> Result<datafusion::sql::parser::Statement> {
        let mut statements = self.parse(sql)?;
        let statement = match (statements.pop(), statements.is_empty()) {
            (Some(statement), true) => statement,
            _ => return Err(PitlakeError::Internal(format!("expected one query: {sql}"))),
        };
        let Statement::Sql(mut statement) = statement.statement else {
            return Err(PitlakeError::Plan(
                "a training set's query must be a SQL query (SELECT …); this one is a DSL \
                 statement"
                    .into(),
            ));
        };
        // The text may come from a manifest, which anyone can edit: run queries only, never a
        // statement that writes, reads files or changes settings.
        crate::frontend::bounds::ensure_query(&mut statement, "a training set's query")?;
        Ok(*statement)
    }

    /// Runs one query and returns its rows as a stream (see [`Engine::query_statement`]).
    pub(crate) async fn sql_stream(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        let statement = self.query_statement(sql)?;
        match self.run_sql(statement, RunOptions::default()).await? {
            Output::Rows(stream) => Ok(stream),
            Output::Done(_) => Err(PitlakeError::Internal("a query returned no rows".into())),
        }
    }

    /// Runs one plain SQL query and collects its rows.
    pub(crate) async fn sql_batches(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        use futures::TryStreamExt;
        Ok(self.sql_stream(sql).await?.try_collect().await?)
    }

    /// Exports a training set and writes its manifest beside it.
    pub async fn export_training_set(
        &self,
        spec: &TrainingSetSql,
        statement: &str,
        to: &str,
        format: Option<&str>,
        progress: Option<Arc<dyn ExportProgress>>,
    ) -> Result<Manifest> {
        let format = ExportFormat::resolve(format, to)?;
        let plan = self.plan_training_set(spec).await?;
        let result = self
            .write_query(&plan.query, to, format, progress.clone())
            .await;
        if let Some(p) = &progress {
            p.finish();
        }
        let output = result?;
        let manifest = Manifest {
            manifest_version: MANIFEST_VERSION,
            pitlake_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: chrono::Utc::now().to_rfc3339(),
            created_by: super::dsl::author(self),
            warehouse: self.warehouse().location().display(),
            statement: statement.to_string(),
            plan: plan.clone(),
            output,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| PitlakeError::Internal(format!("manifest: {e}")))?;
        // The data is published; the manifest goes second (see the module docs). If it cannot
        // be written, an older manifest at its place no longer matches the data, and says so.
        let location = manifest_location(to);
        publish_bytes(self, &location, &json)
            .await
            .map_err(|e| PitlakeError::Input {
                path: location.clone(),
                message: format!(
                    "the training set was written to {to}, but its manifest could not be ({e}); \
                     export again so that the two match (`pitlake verify` tells a mismatched \
                     pair)"
                ),
            })?;
        Ok(manifest)
    }

    /// Streams a query's rows into `to`, hashing them on the way. On a cluster, an export to
    /// object storage is written by the executors (see `remote`); a local path (or `memory://`)
    /// is written here, since an executor's disk is not this machine's.
    async fn write_query(
        &self,
        query: &str,
        to: &str,
        format: ExportFormat,
        progress: Option<Arc<dyn ExportProgress>>,
    ) -> Result<OutputInfo> {
        if self.settings().cluster.is_some() && on_object_storage(to) {
            return self.write_on_cluster(query, to, format, progress).await;
        }
        let stream = self.sql_stream(query).await?;
        let schema = stream.schema();
        let hash = Arc::new(Mutex::new(ContentHash::new(&schema)?));
        let counting = hashing(stream, hash.clone(), progress);
        let (file, delta_version) = match format {
            ExportFormat::Parquet | ExportFormat::Csv => (
                Some(write_file_to(counting, destination(self, to)?, to, format).await?),
                None,
            ),
            ExportFormat::Delta => (None, self.write_delta(counting, to).await?),
        };
        let hash = hash
            .lock()
            .map_err(|_| PitlakeError::Internal("export hash lock".into()))?;
        Ok(output_info(to, format, &schema, &hash, file, delta_version))
    }

    /// An export written by the cluster's executors: each task writes its partition (a Delta
    /// export's parts in parallel; a file from the query's one ordered partition) and reports
    /// its rows' hash; this process merges the hashes and, for Delta, commits the parts as one
    /// version (see [`Engine::commit_delta_parts`]). A failure before the commit leaves no
    /// version and deletes the parts it was told of.
    async fn write_on_cluster(
        &self,
        query: &str,
        to: &str,
        format: ExportFormat,
        progress: Option<Arc<dyn ExportProgress>>,
    ) -> Result<OutputInfo> {
        use futures::TryStreamExt;
        let (state, plan, _) = self.plan_sql(self.query_statement(query)?).await?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let (plan, delta) = match format {
            // A table has no row order (nor has the content hash): every partition writes at
            // once. What the commit needs is checked before any work: the store's conditional
            // writes, the table's schema in Delta's types, and the version the export replaces.
            ExportFormat::Delta => {
                output_store(self, to)?.check_commit_safety().await?;
                let target = DeltaTarget::of(self, to, &schema).await?;
                (without_final_sort(plan)?, Some(target))
            }
            ExportFormat::Parquet | ExportFormat::Csv => (plan, None),
        };
        let export = ExportWrite::new(plan, to, format)?.into_plan();
        let state = self.on_cluster(state, &export).await?;
        let df = datafusion::dataframe::DataFrame::new(state, export);
        let task = Arc::new(df.task_ctx());
        let physical = df.create_physical_plan().await?;
        let stream = datafusion::physical_plan::execute_stream(physical.clone(), task)?;
        let batches: Vec<RecordBatch> = self
            .cancel_cluster_job_on_drop(stream, physical)
            .try_collect()
            .await
            .map_err(|e| {
                let e = PitlakeError::from(e);
                match remote::write_failure(&e.to_string()) {
                    Some(why) => PitlakeError::Execution(format!(
                        "{why}; nothing was exported (no new version, no manifest)"
                    )),
                    None => e,
                }
            })?;
        let reports = remote::parse_reports(&batches)?;
        let mut hash = ContentHash::new(&schema)?;
        for report in &reports {
            hash.merge(report.rows, report.sum);
        }
        if let Some(p) = &progress {
            p.rows(hash.rows());
        }
        let (file, delta_version) = match delta {
            Some(target) => {
                let adds: Vec<_> = reports
                    .iter()
                    .flat_map(|r| r.adds.iter().cloned())
                    .collect();
                (None, self.commit_delta_parts(to, target, adds).await?)
            }
            None => match reports.as_slice() {
                [
                    PartReport {
                        file: Some((bytes, sha256)),
                        ..
                    },
                ] => (
                    Some(FileDigest {
                        bytes: *bytes,
                        sha256: sha256.clone(),
                    }),
                    None,
                ),
                _ => {
                    return Err(PitlakeError::Internal(format!(
                        "a file export was written by {} tasks, not one",
                        reports.len()
                    )));
                }
            },
        };
        Ok(output_info(to, format, &schema, &hash, file, delta_version))
    }

    /// The latest version of the Delta table at `to`, `None` when there is none yet.
    pub(super) async fn delta_version_at(&self, to: &str) -> Option<i64> {
        self.delta_table_at(to).await?.version().map(|v| v as i64)
    }

    /// The Delta table at `to`, loaded at its latest version; `None` when there is none yet.
    async fn delta_table_at(&self, to: &str) -> Option<deltalake::DeltaTable> {
        let mut table = self.delta_output(to).ok()?;
        table.load().await.ok()?;
        Some(table)
    }

    /// Commits data files written by the executors as the one new version of the Delta table at
    /// `to`: created with them, or all its rows replaced by them (schema included). Refused, and
    /// the parts deleted, when a part is missing from the store this process sees (the executors
    /// wrote elsewhere) or another writer committed to the table since the export began (checked
    /// before the commit, which is itself refused if one lands in between). A commit that may
    /// have landed (an error after it was sent) deletes nothing that the table references.
    pub(super) async fn commit_delta_parts(
        &self,
        to: &str,
        target: DeltaTarget,
        adds: Vec<deltalake::kernel::Add>,
    ) -> Result<Option<i64>> {
        let checked = async {
            let out = output_store(self, to)?;
            for add in &adds {
                let path = part_path(&out, add);
                if let Err(e) = out.store().head(&path).await {
                    return Err(PitlakeError::Execution(format!(
                        "the executors wrote the export's part `{}` where this process cannot \
                         read it ({e}); the executors and the client must reach `{to}` with the \
                         same storage settings. Nothing was committed",
                        add.path
                    )));
                }
            }
            let now = self.delta_version_at(to).await;
            if now != target.replaces {
                return Err(PitlakeError::Execution(format!(
                    "another writer committed to `{to}` (version {}) while this export ran; \
                     nothing was committed: export again",
                    now.map_or("none".to_string(), |v| v.to_string())
                )));
            }
            Ok(())
        }
        .await;
        if let Err(e) = checked {
            self.delete_parts(to, &adds).await;
            return Err(e);
        }
        let table = self.delta_output(to)?;
        let committed = deltalake::operations::create::CreateBuilder::new()
            .with_log_store(table.log_store())
            .with_columns(target.columns.fields().cloned())
            // The replaced version's table properties (retention, checkpoints, the user's own)
            // carry over, as a single-node export's WRITE keeps them.
            .with_configuration(target.properties.into_iter().map(|(k, v)| (k, Some(v))))
            .with_raise_if_key_not_exists(false)
            .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
            .with_actions(adds.iter().cloned().map(deltalake::kernel::Action::Add))
            .with_commit_properties(single_attempt())
            .await;
        match committed {
            Ok(table) => Ok(table.version().map(|v| v as i64)),
            Err(e) => {
                // The commit file may have been written before the error (a post-commit step,
                // a reply lost on the way back): keep the parts if the table references them.
                if self.parts_referenced(to, &adds).await == Some(false) {
                    self.delete_parts(to, &adds).await;
                }
                Err(concurrent_write(to, &e).unwrap_or(PitlakeError::Delta(e)))
            }
        }
    }

    /// Whether the latest version of the table at `to` references any of `adds` (`None`: it
    /// cannot be read, so nobody can tell).
    async fn parts_referenced(&self, to: &str, adds: &[deltalake::kernel::Add]) -> Option<bool> {
        let mut table = self.delta_output(to).ok()?;
        if table.load().await.is_err() {
            // No table: the commit did not create it.
            return Some(false);
        }
        let state = table.snapshot().ok()?;
        let ours: std::collections::HashSet<&str> = adds.iter().map(|a| a.path.as_str()).collect();
        Some(
            state
                .log_data()
                .iter()
                .any(|file| ours.contains(file.path().as_ref())),
        )
    }

    /// Deletes the data files of an export that was not committed (best effort: files left
    /// behind are never referenced, and `VACUUM` removes them once the table exists).
    async fn delete_parts(&self, to: &str, adds: &[deltalake::kernel::Add]) {
        let Ok(out) = output_store(self, to) else {
            return;
        };
        for add in adds {
            let path = part_path(&out, add);
            if let Err(e) = out.store().delete(&path).await {
                tracing::warn!(%path, error = %e, "could not delete an uncommitted export part");
            }
        }
    }

    /// A handle on the Delta table an export writes at `to` (not loaded).
    fn delta_output(&self, to: &str) -> Result<deltalake::DeltaTable> {
        Ok(match local_path(to) {
            Some(path) => {
                std::fs::create_dir_all(&path)?;
                let url = url::Url::from_directory_path(std::path::absolute(&path)?)
                    .map_err(|()| PitlakeError::Plan(format!("`{to}` is not a usable folder")))?;
                deltalake::DeltaTableBuilder::from_url(url)?.build()?
            }
            None => {
                let out = output_store(self, to)?;
                let url = out.location().url.clone();
                deltalake::DeltaTableBuilder::from_url(url.clone())?
                    .with_storage_backend(out.store().clone(), url)
                    .build()?
            }
        })
    }

    /// Writes a stream as a Delta table at `to`: created by the first export, a new version of
    /// it (all rows replaced) by later ones; one commit either way, returning its version. A
    /// later export replaces the rows only if nothing else committed since it read the table
    /// (see `storage::write`): two exports racing to one table never leave both one's rows.
    async fn write_delta(
        &self,
        stream: SendableRecordBatchStream,
        to: &str,
    ) -> Result<Option<i64>> {
        if local_path(to).is_none() {
            output_store(self, to)?.check_commit_safety().await?;
        }
        let mut table = self.delta_output(to)?;
        let exists = table.load().await.is_ok();
        let schema = stream.schema();
        let source: Arc<dyn datafusion::catalog::TableProvider> =
            Arc::new(datafusion::catalog::streaming::StreamingTable::try_new(
                schema,
                vec![Arc::new(OnceStream::new(stream))],
            )?);
        let plan = datafusion::logical_expr::LogicalPlanBuilder::scan(
            "training_set",
            datafusion::datasource::provider_as_source(source),
            None,
        )?
        .build()?;
        let mode = if exists {
            deltalake::protocol::SaveMode::Overwrite
        } else {
            deltalake::protocol::SaveMode::ErrorIfExists
        };
        let mut builder = table
            .write(Vec::new())
            .with_input_plan(plan)
            .with_save_mode(mode)
            .with_commit_properties(single_attempt())
            .with_session_state(Arc::new(self.state()));
        if exists {
            builder = builder.with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite);
        }
        let written = builder
            .await
            .map_err(|e| concurrent_write(to, &e).unwrap_or(PitlakeError::Delta(e)))?;
        Ok(written.version().map(|v| v as i64))
    }

    /// Rebuilds an exported training set from its manifest and compares it with the original.
    pub async fn reproduce(&self, manifest_at: &str, output: Option<&str>) -> Result<Reproduction> {
        let manifest = self.read_supported_manifest(manifest_at).await?;
        // Labels uploaded for a session are not in the warehouse: the same rows must be
        // uploaded again, under the same name, in the session that reproduces.
        for input in &manifest.plan.inputs {
            let name = crate::storage::TableName::parse(&input.table)?;
            if input.version == super::training::SESSION_TABLE_VERSION
                && self.session_table(&name).is_none()
            {
                return Err(PitlakeError::Plan(format!(
                    "the training set's {} were uploaded for a session as `{}` ({}); upload the \
                     same rows under that name in a session (the Python client's reproduce does) \
                     and reproduce there",
                    input.role,
                    input.table,
                    input
                        .content_hash
                        .as_deref()
                        .unwrap_or("no content hash recorded")
                )));
            }
        }
        let actual = match output {
            Some(to) => {
                let format = ExportFormat::resolve(Some(&manifest.output.format), to)?;
                self.write_query(&manifest.plan.query, to, format, None)
                    .await?
                    .content_hash
            }
            None => {
                let mut stream = self.sql_stream(&manifest.plan.query).await?;
                let mut hash = ContentHash::new(&stream.schema())?;
                while let Some(batch) = stream.next().await {
                    hash.update(&batch?)?;
                }
                hash.finish()
            }
        };
        // The rebuild proves the inputs still give the manifest's rows; the exported data
        // must also still be the manifest's (a truncated or replaced file would otherwise pass).
        let file = self.verify_output(&manifest.output).await?;
        Ok(Reproduction {
            expected: manifest.output.content_hash,
            actual,
            written_to: output.map(str::to_string),
            file,
        })
    }

    /// Checks an export against its manifest by reading the exported data (never the inputs):
    ///
    /// - a Parquet or CSV file: its size and the SHA-256 of its bytes against `output.bytes` and
    ///   `output.sha256`; for a manifest written before those were recorded, the content hash
    ///   of a Parquet file's rows against `output.content_hash`, and a CSV file's row count
    ///   against `output.rows` (CSV text cannot give back exact rows: NULL and empty text are
    ///   both written as nothing);
    /// - a Delta table: the content hash of its rows at `output.delta_version` (the latest
    ///   version for older manifests) against `output.content_hash`.
    ///
    /// A missing output is a failed check, not an error; an unreadable manifest is an error.
    pub async fn verify(&self, manifest_at: &str) -> Result<Verification> {
        let manifest = self.read_supported_manifest(manifest_at).await?;
        self.verify_output(&manifest.output).await
    }

    /// Loads a manifest of the version this pitlake writes (`reproduce` and `verify` compare
    /// hashes whose meaning the version fixes).
    async fn read_supported_manifest(&self, at: &str) -> Result<Manifest> {
        let manifest = self.read_manifest(at).await?;
        if manifest.manifest_version != MANIFEST_VERSION {
            return Err(PitlakeError::Input {
                path: at.to_string(),
                message: format!(
                    "manifest version {} is not supported (this pitlake reads version \
                     {MANIFEST_VERSION})",
                    manifest.manifest_version
                ),
            });
        }
        Ok(manifest)
    }

    /// Reads an export and compares it with its manifest's `output` (see [`Engine::verify`]).
    async fn verify_output(&self, output: &OutputInfo) -> Result<Verification> {
        let format = ExportFormat::resolve(Some(&output.format), &output.url)?;
        let mut verification = Verification {
            url: output.url.clone(),
            format: format.as_str().to_string(),
            checks: Vec::new(),
            notes: Vec::new(),
        };
        let missing = |what: &str| Check::new(what, "present", "nothing there");
        match (format, output.bytes, &output.sha256) {
            (ExportFormat::Delta, _, _) => match self.delta_output_rows(output).await? {
                None => verification.checks.push(missing("table")),
                Some((version, rows)) => {
                    if output.delta_version.is_none() {
                        verification.notes.push(format!(
                            "the manifest does not record which Delta version its export \
                             committed (it predates `output.delta_version`), so the latest \
                             version, {version}, was checked"
                        ));
                    }
                    verification
                        .checks
                        .push(Check::new("rows", &output.content_hash, rows));
                }
            },
            (_, Some(bytes), Some(sha256)) => {
                let source = destination(self, &output.url)?;
                match digest_of(&source, &output.url, None).await? {
                    None => verification.checks.push(missing("file")),
                    Some(found) => {
                        verification.checks.push(Check::new(
                            "size",
                            format!("{bytes} bytes"),
                            format!("{} bytes", found.bytes),
                        ));
                        verification
                            .checks
                            .push(Check::new("sha256", sha256, found.sha256));
                    }
                }
            }
            (_, _, _) => {
                verification.notes.push(
                    "the manifest predates byte hashes (`output.bytes`, `output.sha256`), so the \
                     file's rows were checked instead of its bytes"
                        .into(),
                );
                // Rows are read from a local file: an object is downloaded to one first.
                let (path, _download) = match destination(self, &output.url)? {
                    Destination::Local(path) => (path, None),
                    source @ Destination::Store { .. } => {
                        let mut download = tempfile::NamedTempFile::new()?;
                        let found =
                            digest_of(&source, &output.url, Some(download.as_file_mut())).await?;
                        if found.is_none() {
                            verification.checks.push(missing("file"));
                            return Ok(verification);
                        }
                        (download.path().to_path_buf(), Some(download))
                    }
                };
                if !path.is_file() {
                    verification.checks.push(missing("file"));
                    return Ok(verification);
                }
                if format == ExportFormat::Parquet {
                    let rows = parquet_rows(&path, &output.schema)
                        .await
                        .unwrap_or_else(|e| format!("a file that does not read as Parquet ({e})"));
                    verification
                        .checks
                        .push(Check::new("rows", &output.content_hash, rows));
                } else {
                    verification.notes.push(
                        "a CSV file's rows cannot be compared exactly (NULL and empty text are \
                         both written as nothing), so only its row count was checked; export \
                         again for a manifest that records the file's bytes"
                            .into(),
                    );
                    let count = csv_rows(&path, output.schema.len())?;
                    verification.checks.push(Check::new(
                        "row count",
                        output.rows.to_string(),
                        count.to_string(),
                    ));
                }
            }
        }
        Ok(verification)
    }

    /// The version and the content hash of the rows of the Delta table an export wrote, at the
    /// version the manifest records (else the latest); `None` when there is no table there.
    async fn delta_output_rows(&self, output: &OutputInfo) -> Result<Option<(i64, String)>> {
        let out = output_store(self, &output.url)?;
        let log = out.root().clone().join("_delta_log");
        match out.store().list(Some(&log)).next().await {
            None | Some(Err(object_store::Error::NotFound { .. })) => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(_)) => {}
        }
        let url = out.location().url.clone();
        let mut table = deltalake::DeltaTableBuilder::from_url(url.clone())?
            .with_storage_backend(out.store().clone(), url)
            .build()?;
        let loaded = match output.delta_version {
            Some(version) => table.load_version(version as u64).await,
            None => table.load().await,
        };
        loaded.map_err(|e| PitlakeError::Input {
            path: output.url.clone(),
            message: format!(
                "cannot read the exported Delta table{}: {e}",
                output
                    .delta_version
                    .map(|v| format!(" at version {v}, the one its manifest records"))
                    .unwrap_or_default()
            ),
        })?;
        let version = table.version().map(|v| v as i64).unwrap_or_default();
        let provider = table.table_provider().build().await?;
        let ctx = datafusion::prelude::SessionContext::new_with_state(self.state());
        let stream = ctx.read_table(Arc::new(provider))?.execute_stream().await?;
        let rows = hash_rows(
            stream.schema(),
            stream.map(|b| b.map_err(PitlakeError::from)),
            &output.schema,
        )
        .await?;
        Ok(Some((version, rows)))
    }

    /// Loads a manifest.
    pub async fn read_manifest(&self, at: &str) -> Result<Manifest> {
        serde_json::from_str(&read_text(self, at).await?).map_err(|e| PitlakeError::Input {
            path: at.to_string(),
            message: format!("is not a pitlake manifest: {e}"),
        })
    }

    /// Audits a training set: every matched feature time at or before its label time, within
    /// the TTL, known by the label time; no label row dropped or duplicated; per view the match
    /// rate and the distribution of feature age at label time. One row per view.
    pub async fn audit(&self, plan: &TrainingPlan) -> Result<SendableRecordBatchStream> {
        // The plan may come from a manifest anyone can edit; its queries are embedded in the
        // audit's own, so each must be one query on its own first.
        for (what, sql) in [
            ("the manifest's query", &plan.query),
            ("the manifest's audit_query", &plan.audit_query),
            ("the manifest's labels_query", &plan.labels_query),
        ] {
            ensure_one_query(sql, what)?;
        }
        let labels = self
            .count(&format!("SELECT count(*) FROM ({})", plan.labels_query))
            .await?;
        let rows = self
            .count(&format!("SELECT count(*) FROM ({})", plan.audit_query))
            .await?;
        let mut audits = Vec::with_capacity(plan.views.len());
        for view in &plan.views {
            let batches = self.sql_batches(&view_audit_sql(plan, view)).await?;
            let batch = batches
                .first()
                .ok_or_else(|| PitlakeError::Internal("audit: no result".into()))?;
            audits.push(ViewAudit::read(&view.view, batch));
        }
        audit_report(labels, rows, &audits)
    }

    /// The one integer a `SELECT count(*) …` returns.
    async fn count(&self, sql: &str) -> Result<i64> {
        let batches = self.sql_batches(sql).await?;
        batches
            .first()
            .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>().cloned())
            .filter(|a| !a.is_empty())
            .map(|a| a.value(0))
            .ok_or_else(|| PitlakeError::Internal("audit: no count".into()))
    }
}

/// The query that audits one view of a training set: matched rows, rows whose feature time is
/// after the label time, older than the TTL, or not yet known at the label time, and the
/// distribution of feature age (seconds).
fn view_audit_sql(plan: &TrainingPlan, view: &ViewUse) -> String {
    let t = quote(&plan.label_time);
    let e = quote(&view.event_time_column);
    let age = format!("CAST(to_unixtime({t}) - to_unixtime({e}) AS DOUBLE)");
    let ttl_check = view
        .ttl_seconds
        .map(|s| format!("sum(CASE WHEN {age} > {s} THEN 1 ELSE 0 END)"))
        .unwrap_or_else(|| "0".into());
    let known_check = match (&view.created_time_column, view.knowledge_time) {
        (Some(c), true) => format!(
            "sum(CASE WHEN to_unixtime({}) > to_unixtime({t}) THEN 1 ELSE 0 END)",
            quote(c)
        ),
        _ => "0".into(),
    };
    format!(
        "SELECT count({e}) AS matched, \
         sum(CASE WHEN to_unixtime({e}) > to_unixtime({t}) THEN 1 ELSE 0 END) AS future, \
         {ttl_check} AS stale, {known_check} AS unknown, \
         approx_percentile_cont({age}, 0.5) AS p50, \
         approx_percentile_cont({age}, 0.9) AS p90, \
         approx_percentile_cont({age}, 0.99) AS p99, max({age}) AS max_age \
         FROM ({}) AS audited",
        plan.audit_query
    )
}

/// One view's audit, as [`view_audit_sql`] computes it.
struct ViewAudit {
    view: String,
    matched: i64,
    future: i64,
    stale: i64,
    unknown: i64,
    /// p50, p90, p99 and the maximum of feature age (seconds), when anything matched.
    ages: [Option<f64>; 4],
}

impl ViewAudit {
    fn read(view: &str, batch: &RecordBatch) -> Self {
        let int = |i: usize| -> i64 {
            arrow::compute::cast(batch.column(i), &DataType::Int64)
                .ok()
                .and_then(|a| a.as_any().downcast_ref::<Int64Array>().cloned())
                .filter(|a| !a.is_empty() && !arrow::array::Array::is_null(a, 0))
                .map(|a| a.value(0))
                .unwrap_or(0)
        };
        let float = |i: usize| -> Option<f64> {
            arrow::compute::cast(batch.column(i), &DataType::Float64)
                .ok()
                .and_then(|a| a.as_any().downcast_ref::<Float64Array>().cloned())
                .filter(|a| !a.is_empty() && !arrow::array::Array::is_null(a, 0))
                .map(|a| a.value(0))
        };
        Self {
            view: view.to_string(),
            matched: int(0),
            future: int(1),
            stale: int(2),
            unknown: int(3),
            ages: [float(4), float(5), float(6), float(7)],
        }
    }
}

/// The audit's rows, one per view: a view is `ok` when no feature is from after the label
/// time, older than the TTL or not yet known, and no label row was dropped or duplicated.
fn audit_report(labels: i64, rows: i64, audits: &[ViewAudit]) -> Result<SendableRecordBatchStream> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("label_rows", DataType::Int64, false),
        Field::new("training_rows", DataType::Int64, false),
        Field::new("matched", DataType::Int64, false),
        Field::new("match_rate", DataType::Float64, false),
        Field::new("after_label_time", DataType::Int64, false),
        Field::new("older_than_ttl", DataType::Int64, false),
        Field::new("not_yet_known", DataType::Int64, false),
        Field::new("age_p50_s", DataType::Float64, true),
        Field::new("age_p90_s", DataType::Float64, true),
        Field::new("age_p99_s", DataType::Float64, true),
        Field::new("age_max_s", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, false),
    ]));
    let n = audits.len();
    let ints = |f: fn(&ViewAudit) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(audits.iter().map(f)))
    };
    let age = |i: usize| -> ArrayRef {
        Arc::new(Float64Array::from_iter(audits.iter().map(|a| a.ages[i])))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            audits.iter().map(|a| &a.view),
        )),
        Arc::new(Int64Array::from(vec![labels; n])),
        Arc::new(Int64Array::from(vec![rows; n])),
        ints(|a| a.matched),
        Arc::new(Float64Array::from_iter_values(audits.iter().map(|a| {
            if rows > 0 {
                a.matched as f64 / rows as f64
            } else {
                0.0
            }
        }))),
        ints(|a| a.future),
        ints(|a| a.stale),
        ints(|a| a.unknown),
        age(0),
        age(1),
        age(2),
        age(3),
        Arc::new(arrow::array::BooleanArray::from_iter(audits.iter().map(
            |a| Some(a.future == 0 && a.stale == 0 && a.unknown == 0 && rows == labels),
        ))),
    ];
    super::dsl::rows(schema, columns)
}

/// The schema to hash rows read back from an export with: the types the manifest records
/// (`name type`, in order) where they parse, so that a reader's choice of types (a view or a
/// large string, a timestamp unit) does not change the hash of the same values.
fn recorded_schema(read: &SchemaRef, recorded: &[String]) -> SchemaRef {
    if read.fields().len() != recorded.len() {
        return read.clone();
    }
    let fields: Vec<Field> = read
        .fields()
        .iter()
        .zip(recorded)
        .map(|(field, recorded)| {
            let data_type = recorded
                .strip_prefix(field.name().as_str())
                .and_then(|t| t.strip_prefix(' '))
                .and_then(|t| t.parse::<DataType>().ok())
                .unwrap_or_else(|| field.data_type().clone());
            Field::new(field.name(), data_type, true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// The content hash of rows read back from an export (see [`recorded_schema`]).
async fn hash_rows(
    read: SchemaRef,
    mut batches: impl futures::Stream<Item = Result<RecordBatch>> + Unpin,
    recorded: &[String],
) -> Result<String> {
    let target = recorded_schema(&read, recorded);
    let mut hash = ContentHash::new(&target)?;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let columns = batch
            .columns()
            .iter()
            .zip(target.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    arrow::compute::cast(column, field.data_type())
                }
            })
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        hash.update(&RecordBatch::try_new_with_options(
            target.clone(),
            columns,
            &options,
        )?)?;
    }
    Ok(hash.finish())
}

/// The content hash of a local Parquet file's rows.
async fn parquet_rows(path: &Path, recorded: &[String]) -> Result<String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| PitlakeError::Input {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
    let stream = parquet::arrow::ParquetRecordBatchStreamBuilder::new(file)
        .await?
        .build()?;
    let schema = stream.schema().clone();
    hash_rows(
        schema,
        stream.map(|b| b.map_err(PitlakeError::from)),
        recorded,
    )
    .await
}

/// The number of records of a local CSV file with a header and `columns` columns.
fn csv_rows(path: &Path, columns: usize) -> Result<u64> {
    let file = std::fs::File::open(path).map_err(|e| PitlakeError::Input {
        path: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })?;
    // Every column as text: only the records are counted, so nothing need parse as a value.
    let schema = Arc::new(Schema::new(
        (0..columns.max(1))
            .map(|i| Field::new(format!("c{i}"), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = arrow::csv::ReaderBuilder::new(schema)
        .with_header(true)
        .build(file)?;
    let mut rows = 0u64;
    for batch in reader {
        rows += batch?.num_rows() as u64;
    }
    Ok(rows)
}

/// A stream handed to DataFusion as a one-partition table (executed once).
struct OnceStream {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl OnceStream {
    fn new(stream: SendableRecordBatchStream) -> Self {
        Self {
            schema: stream.schema(),
            stream: Mutex::new(Some(stream)),
        }
    }
}

impl std::fmt::Debug for OnceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnceStream")
    }
}

impl PartitionStream for OnceStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        match taken {
            Some(stream) => stream,
            None => Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async {
                    Err(
                        PitlakeError::Internal("the export stream was read twice".into())
                            .into_datafusion(),
                    )
                }),
            )),
        }
    }
}

/// Refuses `sql` unless it is exactly one query (see `bounds::ensure_query`).
fn ensure_one_query(sql: &str, what: &str) -> Result<()> {
    let mut statements = crate::frontend::parse_sql(sql)?;
    match (statements.pop(), statements.is_empty()) {
        (
            Some(crate::frontend::ParsedStatement {
                statement: Statement::Sql(mut statement),
                ..
            }),
            true,
        ) => crate::frontend::bounds::ensure_query(&mut statement, what),
        _ => Err(PitlakeError::Plan(format!(
            "{what} must be a query (SELECT …), but it is not one statement of SQL; pitlake \
             runs only queries from it"
        ))),
    }
}

/// Whether a path looks like a manifest.
pub fn is_manifest(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;

    #[test]
    fn content_hash_ignores_batching_and_order() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, true)]));
        let batch = |v: Vec<Option<i32>>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(v))]).unwrap()
        };
        let mut a = ContentHash::new(&schema).unwrap();
        a.update(&batch(vec![Some(1), None, Some(3)])).unwrap();
        let mut b = ContentHash::new(&schema).unwrap();
        b.update(&batch(vec![Some(3)])).unwrap();
        b.update(&batch(vec![None, Some(1)])).unwrap();
        assert_eq!(a.finish(), b.finish());
        let mut c = ContentHash::new(&schema).unwrap();
        c.update(&batch(vec![Some(1), Some(2), Some(3)])).unwrap();
        assert_ne!(a.finish(), c.finish());
    }

    #[test]
    fn only_object_storage_is_written_by_a_clusters_executors() {
        for to in [
            "s3://b/ts",
            "gs://b/ts.parquet",
            "az://c/ts",
            "abfss://c@a.dfs/ts",
        ] {
            assert!(on_object_storage(to), "{to}");
        }
        for to in [
            "ts.parquet",
            "/tmp/ts",
            "file:///tmp/ts",
            "memory:///ts",
            "C:/ts",
        ] {
            assert!(!on_object_storage(to), "{to}");
        }
    }

    #[test]
    fn formats_resolve_from_names_and_paths() {
        assert_eq!(
            ExportFormat::resolve(None, "x.csv").unwrap(),
            ExportFormat::Csv
        );
        assert_eq!(
            ExportFormat::resolve(None, "out/x.parquet").unwrap(),
            ExportFormat::Parquet
        );
        assert_eq!(
            ExportFormat::resolve(None, "out/table").unwrap(),
            ExportFormat::Delta
        );
        assert_eq!(
            ExportFormat::resolve(Some("CSV"), "x").unwrap(),
            ExportFormat::Csv
        );
        assert!(ExportFormat::resolve(Some("xml"), "x").is_err());
    }
}
