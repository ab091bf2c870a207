//! Exporting training sets with a manifest, rebuilding them from it, and auditing them.
//!
//! An export streams the training set (never collected) into Parquet, CSV or a Delta table at a
//! local path or object-store URL, and writes `<output>.manifest.json` beside it: the pinned
//! query, every input table with the exact Delta version read, the registry version, pitlake's
//! version, the semantics options, the row count and a content hash. `reproduce` re-runs the
//! pinned query and proves the rows identical; `audit` checks a training set for leakage and
//! reports how fresh its features were.
//!
//! Export lives in the engine rather than in a layer above it because `EXPORT TRAINING SET` is a
//! statement: the shell, scripts and the Flight server all reach it through `Engine::run`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::training::{PinnedInput, TrainingPlan, ViewUse, quote};
use super::{Engine, Output, RunOptions};
use crate::config::WarehouseLocation;
use crate::error::{PitlakeError, Result};
use crate::frontend::Statement;
use crate::frontend::dsl::TrainingSetSql;
use crate::storage::Warehouse;

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
    /// The training set's query with every table pinned to a version.
    pub query: String,
    /// The same query with matched event and created times, for audits.
    pub audit_query: String,
    /// The pinned label relation.
    pub labels_query: String,
    /// The label-time column.
    pub label_time: String,
    /// The registry version the feature definitions were read at.
    pub registry_version: Option<i64>,
    /// Every table read, at its exact version.
    pub inputs: Vec<PinnedInput>,
    /// Per view: features, TTL, tie-break and knowledge-time settings.
    pub views: Vec<ViewUse>,
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

    /// The hash as text.
    pub fn finish(&self) -> String {
        format!(
            "rows{}:sha256sum:{:016x}{:016x}{:016x}{:016x}",
            self.rows, self.sum[0], self.sum[1], self.sum[2], self.sum[3]
        )
    }
}

/// The output formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    fn as_str(self) -> &'static str {
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
}

fn local_path(to: &str) -> Option<PathBuf> {
    match url::Url::parse(to) {
        Ok(url) if url.scheme() == "file" => url.to_file_path().ok(),
        Ok(url) if url.scheme().len() > 1 => None,
        _ => Some(PathBuf::from(to)),
    }
}

/// The manifest's location for an output.
pub fn manifest_location(to: &str) -> String {
    format!("{}.manifest.json", to.trim_end_matches('/'))
}

/// The store and path of an output URL on object storage, built like the warehouse's store
/// (the same settings, resolved in the same order; see `storage::options`).
fn output_store(engine: &Engine, url: &str) -> Result<Warehouse> {
    let location = WarehouseLocation::parse(url)?
        .with_storage_options(engine.settings().warehouse.storage_options.clone());
    Warehouse::connect(location)
}

async fn write_bytes(engine: &Engine, to: &str, bytes: Vec<u8>) -> Result<()> {
    match local_path(to) {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, bytes).map_err(|e| PitlakeError::Input {
                path: path.display().to_string(),
                message: format!("cannot write: {e}"),
            })
        }
        None => {
            let out = output_store(engine, to)?;
            out.store().put(out.root(), bytes.into()).await?;
            Ok(())
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

impl Engine {
    /// Runs `EXPORT TRAINING SET … TO …` and the `TRAINING SET` query form.
    pub(crate) async fn run_training(
        &self,
        statement: crate::frontend::dsl::DslStatement,
        text: &str,
    ) -> Result<Output> {
        use crate::frontend::dsl::DslStatement;
        match statement {
            DslStatement::TrainingSet(spec) => {
                let plan = self.plan_training_set(&spec).await?;
                Ok(Output::Rows(self.sql_stream(&plan.query).await?))
            }
            DslStatement::Export {
                training_set,
                to,
                format,
            } => {
                let manifest = self
                    .export_training_set(&training_set, text, &to, format.as_deref(), None)
                    .await?;
                Ok(Output::Done(format!(
                    "exported {} rows to {} ({}); manifest {}",
                    manifest.output.rows,
                    manifest.output.url,
                    manifest.output.content_hash,
                    manifest_location(&to)
                )))
            }
            _ => Err(PitlakeError::Internal(
                "not a training-set statement".into(),
            )),
        }
    }

    /// Runs one query and returns its rows as a stream.
    ///
    /// Only a plain SQL query is accepted: the DSL calls this without recursing into itself, and
    /// `reproduce` and `audit` run a manifest's queries through it, which must never write.
    pub(crate) async fn sql_stream(&self, sql: &str) -> Result<SendableRecordBatchStream> {
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
        match self.run_sql(*statement, RunOptions::default()).await? {
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
            created_by: super::registry_statements::author(self),
            warehouse: self.warehouse().location().display(),
            statement: statement.to_string(),
            query: plan.query.clone(),
            audit_query: plan.audit_query.clone(),
            labels_query: plan.labels_query.clone(),
            label_time: plan.label_time.clone(),
            registry_version: plan.registry_version,
            inputs: plan.inputs.clone(),
            views: plan.views.clone(),
            output,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| PitlakeError::Internal(format!("manifest: {e}")))?;
        write_bytes(self, &manifest_location(to), json).await?;
        Ok(manifest)
    }

    /// Streams a query's rows into `to`, hashing them on the way.
    async fn write_query(
        &self,
        query: &str,
        to: &str,
        format: ExportFormat,
        progress: Option<Arc<dyn ExportProgress>>,
    ) -> Result<OutputInfo> {
        let stream = self.sql_stream(query).await?;
        let schema = stream.schema();
        let hash = Arc::new(Mutex::new(ContentHash::new(&schema)?));
        let counting = {
            let hash = hash.clone();
            stream.map(move |batch| {
                let batch = batch?;
                match hash.lock() {
                    Ok(mut h) => h.update(&batch).map_err(PitlakeError::into_datafusion)?,
                    Err(_) => {
                        return Err(
                            PitlakeError::Internal("export hash lock".into()).into_datafusion()
                        );
                    }
                }
                if let Some(p) = &progress {
                    p.rows(batch.num_rows() as u64);
                }
                Ok(batch)
            })
        };
        let counting: SendableRecordBatchStream =
            Box::pin(RecordBatchStreamAdapter::new(schema.clone(), counting));
        match format {
            ExportFormat::Parquet | ExportFormat::Csv => {
                self.write_file(counting, to, format).await?
            }
            ExportFormat::Delta => self.write_delta(counting, to).await?,
        }
        let hash = hash
            .lock()
            .map_err(|_| PitlakeError::Internal("export hash lock".into()))?;
        Ok(OutputInfo {
            url: to.to_string(),
            format: format.as_str().to_string(),
            rows: hash.rows(),
            content_hash: hash.finish(),
            schema: schema
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect(),
        })
    }

    /// Writes one Parquet or CSV file, first to a temporary file: beside the target for a local
    /// path (then renamed over it, atomically), in the temp folder for an object store (then
    /// uploaded whole). A failed export never leaves half a file behind nor spoils an earlier
    /// export at the same place.
    async fn write_file(
        &self,
        mut stream: SendableRecordBatchStream,
        to: &str,
        format: ExportFormat,
    ) -> Result<()> {
        let schema = stream.schema();
        let local = local_path(to);
        let temp = match &local {
            Some(path) => {
                let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(parent) => parent.to_path_buf(),
                    None => PathBuf::from("."),
                };
                std::fs::create_dir_all(&parent).map_err(|e| PitlakeError::Input {
                    path: parent.display().to_string(),
                    message: format!("cannot create the output folder: {e}"),
                })?;
                tempfile::Builder::new()
                    .prefix(".pitlake-export-")
                    .tempfile_in(&parent)
                    .map_err(|e| PitlakeError::Input {
                        path: parent.display().to_string(),
                        message: format!("cannot write to the output folder: {e}"),
                    })?
            }
            None => tempfile::NamedTempFile::new()?,
        };
        let sink = std::io::BufWriter::new(temp.reopen()?);
        if format == ExportFormat::Parquet {
            let mut writer = parquet::arrow::ArrowWriter::try_new(sink, schema, None)?;
            while let Some(batch) = stream.next().await {
                writer.write(&batch?)?;
            }
            writer.close()?;
        } else {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(sink);
            while let Some(batch) = stream.next().await {
                writer.write(&batch?)?;
            }
            use std::io::Write;
            writer.into_inner().flush()?;
        }
        match local {
            Some(path) => {
                temp.persist(&path).map_err(|e| PitlakeError::Input {
                    path: path.display().to_string(),
                    message: format!("cannot replace: {}", e.error),
                })?;
            }
            None => {
                let bytes = std::fs::read(temp.path())?;
                write_bytes(self, to, bytes).await?;
            }
        }
        Ok(())
    }

    /// Writes a stream as a Delta table at `to`: created by the first export, a new version of
    /// it (all rows replaced) by later ones; one commit either way.
    async fn write_delta(&self, stream: SendableRecordBatchStream, to: &str) -> Result<()> {
        let mut table = match local_path(to) {
            Some(path) => {
                std::fs::create_dir_all(&path)?;
                let url = url::Url::from_directory_path(std::path::absolute(&path)?)
                    .map_err(|()| PitlakeError::Plan(format!("`{to}` is not a usable folder")))?;
                deltalake::DeltaTableBuilder::from_url(url)?.build()?
            }
            None => {
                let out = output_store(self, to)?;
                out.check_commit_safety().await?;
                let url = out.location().url.clone();
                deltalake::DeltaTableBuilder::from_url(url.clone())?
                    .with_storage_backend(out.store().clone(), url)
                    .build()?
            }
        };
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
            .with_session_state(Arc::new(self.state()));
        if exists {
            builder = builder.with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite);
        }
        builder.await?;
        Ok(())
    }

    /// Rebuilds an exported training set from its manifest and compares it with the original.
    pub async fn reproduce(&self, manifest_at: &str, output: Option<&str>) -> Result<Reproduction> {
        let manifest: Manifest = serde_json::from_str(&read_text(self, manifest_at).await?)
            .map_err(|e| PitlakeError::Input {
                path: manifest_at.to_string(),
                message: format!("is not a pitlake manifest: {e}"),
            })?;
        if manifest.manifest_version != MANIFEST_VERSION {
            return Err(PitlakeError::Input {
                path: manifest_at.to_string(),
                message: format!(
                    "manifest version {} is not supported (this pitlake reads version \
                     {MANIFEST_VERSION})",
                    manifest.manifest_version
                ),
            });
        }
        let actual = match output {
            Some(to) => {
                let format = ExportFormat::resolve(Some(&manifest.output.format), to)?;
                self.write_query(&manifest.query, to, format, None)
                    .await?
                    .content_hash
            }
            None => {
                let mut stream = self.sql_stream(&manifest.query).await?;
                let mut hash = ContentHash::new(&stream.schema())?;
                while let Some(batch) = stream.next().await {
                    hash.update(&batch?)?;
                }
                hash.finish()
            }
        };
        Ok(Reproduction {
            expected: manifest.output.content_hash,
            actual,
            written_to: output.map(str::to_string),
        })
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
        let count = |sql: String| async move {
            let batches = self.sql_batches(&sql).await?;
            batches
                .first()
                .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>().cloned())
                .filter(|a| !a.is_empty())
                .map(|a| a.value(0))
                .ok_or_else(|| PitlakeError::Internal("audit: no count".into()))
        };
        let labels = count(format!("SELECT count(*) FROM ({})", plan.labels_query)).await?;
        let rows = count(format!("SELECT count(*) FROM ({})", plan.audit_query)).await?;
        let t = quote(&plan.label_time);
        let mut names = Vec::new();
        let (mut matched, mut rates, mut future, mut stale, mut unknown) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut p50, mut p90, mut p99, mut max) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for view in &plan.views {
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
            let sql = format!(
                "SELECT count({e}) AS matched, \
                 sum(CASE WHEN to_unixtime({e}) > to_unixtime({t}) THEN 1 ELSE 0 END) AS future, \
                 {ttl_check} AS stale, {known_check} AS unknown, \
                 approx_percentile_cont({age}, 0.5) AS p50, \
                 approx_percentile_cont({age}, 0.9) AS p90, \
                 approx_percentile_cont({age}, 0.99) AS p99, max({age}) AS max_age \
                 FROM ({}) AS audited",
                plan.audit_query
            );
            let batches = self.sql_batches(&sql).await?;
            let batch = batches
                .first()
                .ok_or_else(|| PitlakeError::Internal("audit: no result".into()))?;
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
            names.push(view.view.clone());
            let m = int(0);
            matched.push(m);
            rates.push(if rows > 0 {
                m as f64 / rows as f64
            } else {
                0.0
            });
            future.push(int(1));
            stale.push(int(2));
            unknown.push(int(3));
            p50.push(float(4));
            p90.push(float(5));
            p99.push(float(6));
            max.push(float(7));
        }
        let ok: Vec<bool> = (0..names.len())
            .map(|i| future[i] == 0 && stale[i] == 0 && unknown[i] == 0 && rows == labels)
            .collect();
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
        let n = names.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(Int64Array::from(vec![labels; n])),
            Arc::new(Int64Array::from(vec![rows; n])),
            Arc::new(Int64Array::from(matched)),
            Arc::new(Float64Array::from(rates)),
            Arc::new(Int64Array::from(future)),
            Arc::new(Int64Array::from(stale)),
            Arc::new(Int64Array::from(unknown)),
            Arc::new(Float64Array::from(p50)),
            Arc::new(Float64Array::from(p90)),
            Arc::new(Float64Array::from(p99)),
            Arc::new(Float64Array::from(max)),
            Arc::new(arrow::array::BooleanArray::from(ok)),
        ];
        super::registry_statements::rows(schema, columns)
    }
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

/// The audit plan recorded in a manifest.
pub fn plan_from_manifest(manifest: &Manifest) -> TrainingPlan {
    TrainingPlan {
        query: manifest.query.clone(),
        audit_query: manifest.audit_query.clone(),
        labels_query: manifest.labels_query.clone(),
        label_time: manifest.label_time.clone(),
        registry_version: manifest.registry_version,
        inputs: manifest.inputs.clone(),
        views: manifest.views.clone(),
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
