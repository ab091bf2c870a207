//! Loading files into a table: CSV, Parquet or newline-delimited JSON, one Delta commit per
//! call, streamed (never collected), with progress reported per row and per file.
//!
//! Schemas: a new table takes the files' schema. Appending to an existing table must match it:
//! for text formats (CSV, JSON) the columns are matched by name and read with the table's types
//! (so a value that does not parse is reported with its file and line); for Parquet the file's
//! own types must widen to the table's. A missing or extra column, or a type that does not fit,
//! refuses the whole load with a message naming the column, and the table keeps its version.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::provider_as_source;
use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{LogicalPlanBuilder, UNNAMED_TABLE};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::{StreamExt, TryStreamExt};

use super::Engine;
use crate::error::{PitlakeError, Result};
use crate::storage::{TableName, WriteMode, WriteOutcome};

/// The format of the files to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestFormat {
    /// Comma-separated values with a header row (`.csv`; `.tsv` means tab-separated).
    Csv,
    /// Parquet.
    Parquet,
    /// Newline-delimited JSON, one object per line.
    Json,
}

impl IngestFormat {
    /// The format a file name implies, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" | "tsv" => Some(IngestFormat::Csv),
            "parquet" | "pq" => Some(IngestFormat::Parquet),
            "json" | "jsonl" | "ndjson" => Some(IngestFormat::Json),
            _ => None,
        }
    }

    fn is_text(self) -> bool {
        matches!(self, IngestFormat::Csv | IngestFormat::Json)
    }
}

/// Receives progress while a load runs (the CLI draws a bar; tests can count).
pub trait IngestProgress: Send + Sync {
    /// The load starts: `files` files of `total_bytes` bytes in all.
    fn start(&self, files: usize, total_bytes: u64);
    /// `rows` more rows were read.
    fn rows(&self, rows: u64);
    /// A whole file of `bytes` bytes was read.
    fn file_done(&self, path: &Path, bytes: u64);
    /// The load ended (committed or failed).
    fn finish(&self);
}

/// A request to load files into a table.
#[derive(Clone)]
pub struct IngestRequest {
    /// The table to load into (created on the first load).
    pub table: TableName,
    /// The files, in order.
    pub files: Vec<PathBuf>,
    /// The format; inferred from the file extensions when `None`.
    pub format: Option<IngestFormat>,
    /// Append (the default) or overwrite.
    pub mode: WriteMode,
    /// Partition columns for a new table.
    pub partition_by: Vec<String>,
    /// CSV: whether the first line holds column names.
    pub has_header: bool,
    /// CSV: the field delimiter (`None`: tab for `.tsv`, comma otherwise).
    pub delimiter: Option<u8>,
    /// Where to report progress.
    pub progress: Option<Arc<dyn IngestProgress>>,
}

impl std::fmt::Debug for IngestRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestRequest")
            .field("table", &self.table)
            .field("files", &self.files)
            .field("format", &self.format)
            .field("mode", &self.mode)
            .finish()
    }
}

impl IngestRequest {
    /// A request with defaults: append, header row, format from the extension.
    pub fn new(table: TableName, files: Vec<PathBuf>) -> Self {
        Self {
            table,
            files,
            format: None,
            mode: WriteMode::Append,
            partition_by: Vec::new(),
            has_header: true,
            delimiter: None,
            progress: None,
        }
    }
}

/// The first error an input file raised. deltalake flattens the errors of the plan it writes
/// into strings, so the file sources keep theirs here, typed, for the final report.
type FirstError = Arc<std::sync::Mutex<Option<PitlakeError>>>;

/// One input file, opened for reading with the schema the load uses.
struct FileSource {
    path: PathBuf,
    bytes: u64,
    plan: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    progress: Option<Arc<dyn IngestProgress>>,
    first_error: FirstError,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.path)
            .finish()
    }
}

impl FileSource {
    /// Records a read error (the first one wins) and returns it for DataFusion.
    fn fail(
        path: &Path,
        first_error: &FirstError,
        err: datafusion::error::DataFusionError,
    ) -> datafusion::error::DataFusionError {
        let message = match input_error(path, err) {
            PitlakeError::Input { message, .. } => message,
            other => other.to_string(),
        };
        if let Ok(mut slot) = first_error.lock()
            && slot.is_none()
        {
            *slot = Some(PitlakeError::Input {
                path: path.display().to_string(),
                message: message.clone(),
            });
        }
        PitlakeError::Input {
            path: path.display().to_string(),
            message,
        }
        .into_datafusion()
    }
}

impl PartitionStream for FileSource {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let path = self.path.clone();
        let bytes = self.bytes;
        let progress = self.progress.clone();
        let on_done = progress.clone();
        let done_path = path.clone();
        let first_error = self.first_error.clone();
        let stream = match execute_stream(self.plan.clone(), ctx) {
            Ok(stream) => {
                let counted = stream.map(move |batch| match batch {
                    Ok(batch) => {
                        if let Some(p) = &progress {
                            p.rows(batch.num_rows() as u64);
                        }
                        Ok(Some(batch))
                    }
                    Err(e) => Err(FileSource::fail(&path, &first_error, e)),
                });
                let done = futures::stream::once(async move {
                    if let Some(p) = &on_done {
                        p.file_done(&done_path, bytes);
                    }
                    Ok(None)
                });
                counted
                    .chain(done)
                    .try_filter_map(|item| futures::future::ready(Ok(item)))
                    .boxed()
            }
            Err(e) => {
                let err = FileSource::fail(&path, &first_error, e);
                futures::stream::once(async move { Err(err) }).boxed()
            }
        };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// An input error naming the file, with 1-based line numbers.
fn input_error(path: &Path, err: datafusion::error::DataFusionError) -> PitlakeError {
    PitlakeError::Input {
        path: path.display().to_string(),
        message: one_based_lines(&PitlakeError::from_datafusion(err).to_string()),
    }
}

/// Arrow's CSV reader counts file lines from 0; people (and editors) count from 1.
fn one_based_lines(message: &str) -> String {
    const MARK: &str = "Error while parsing value";
    const AT: &str = " at line ";
    let Some(start) = message.find(MARK) else {
        return message.to_string();
    };
    let Some(at) = message[start..].find(AT).map(|i| start + i + AT.len()) else {
        return message.to_string();
    };
    let digits: String = message[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    match digits.parse::<u64>() {
        Ok(line) => format!(
            "{}{}{}",
            &message[..at],
            line + 1,
            &message[at + digits.len()..]
        ),
        Err(_) => message.to_string(),
    }
}

/// Each input file's URL and size; a path that is not a readable file is an input error.
fn input_files(files: &[PathBuf]) -> Result<(Vec<ListingTableUrl>, Vec<u64>)> {
    let mut sizes = Vec::with_capacity(files.len());
    let mut urls = Vec::with_capacity(files.len());
    for path in files {
        let meta = std::fs::metadata(path).map_err(|e| PitlakeError::Input {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        if !meta.is_file() {
            return Err(PitlakeError::Input {
                path: path.display().to_string(),
                message: "is not a file".into(),
            });
        }
        sizes.push(meta.len());
        let absolute = std::path::absolute(path)?;
        urls.push(
            ListingTableUrl::parse(absolute.to_string_lossy()).map_err(|e| {
                PitlakeError::Input {
                    path: path.display().to_string(),
                    message: PitlakeError::from_datafusion(e).to_string(),
                }
            })?,
        );
    }
    Ok((urls, sizes))
}

/// The schema the files are read with. Text formats are read with the table's types when the
/// names line up, so "7" in a float column is 7.0 and "x" in it is a parse error at its line;
/// anything else is read as the files say, and checked against the table when written.
fn read_schema(file_schema: &SchemaRef, table_fields: Option<&[Field]>, text: bool) -> SchemaRef {
    let Some(table_fields) = table_fields.filter(|_| text) else {
        return file_schema.clone();
    };
    let same_names = file_schema.fields().len() == table_fields.len()
        && file_schema
            .fields()
            .iter()
            .all(|f| table_fields.iter().any(|t| t.name() == f.name()));
    if !same_names {
        return file_schema.clone();
    }
    Arc::new(Schema::new(
        file_schema
            .fields()
            .iter()
            .filter_map(|f| {
                table_fields
                    .iter()
                    .find(|t| t.name() == f.name())
                    .map(|t| t.clone().with_nullable(true))
            })
            .collect::<Vec<_>>(),
    ))
}

impl Engine {
    /// Loads files into a table as one commit.
    pub async fn ingest(&self, request: IngestRequest) -> Result<WriteOutcome> {
        let outcome = self.ingest_inner(&request).await;
        if let Some(progress) = &request.progress {
            progress.finish();
        }
        outcome
    }

    async fn ingest_inner(&self, request: &IngestRequest) -> Result<WriteOutcome> {
        if request.files.is_empty() {
            return Err(PitlakeError::Plan(
                "no input files given; name one or more CSV, Parquet or JSON files".into(),
            ));
        }
        if !matches!(request.mode, WriteMode::Append | WriteMode::Overwrite) {
            return Err(PitlakeError::Internal(
                "ingest takes append or overwrite".into(),
            ));
        }
        request.table.validate()?;
        let format = self.ingest_format(request)?;
        let state = self.ingest_state();
        let (urls, sizes) = input_files(&request.files)?;

        let options = self.listing_options(request, format);
        let mut inferred: Vec<SchemaRef> = Vec::with_capacity(urls.len());
        for (url, path) in urls.iter().zip(&request.files) {
            let schema = options
                .infer_schema(&state, url)
                .await
                .map_err(|e| input_error(path, e))?;
            inferred.push(schema);
        }
        let file_schema = merge_schemas(&inferred, &request.files, format.is_text())?;
        let existing = self.existing_fields(&request.table).await?;
        let read_schema = read_schema(&file_schema, existing.as_deref(), format.is_text());

        if let Some(progress) = &request.progress {
            progress.start(request.files.len(), sizes.iter().sum());
        }

        let first_error: FirstError = Arc::default();
        let mut partitions: Vec<Arc<dyn PartitionStream>> = Vec::new();
        for ((url, path), bytes) in urls.into_iter().zip(&request.files).zip(sizes) {
            let config = ListingTableConfig::new(url)
                .with_listing_options(options.clone())
                .with_schema(read_schema.clone());
            let table = ListingTable::try_new(config).map_err(|e| input_error(path, e))?;
            let plan = table
                .scan(&state, None, &[], None)
                .await
                .map_err(|e| input_error(path, e))?;
            partitions.push(Arc::new(FileSource {
                path: path.clone(),
                bytes,
                plan,
                schema: read_schema.clone(),
                progress: request.progress.clone(),
                first_error: first_error.clone(),
            }));
        }
        let source: Arc<dyn TableProvider> =
            Arc::new(StreamingTable::try_new(read_schema.clone(), partitions)?);
        let plan =
            LogicalPlanBuilder::scan(UNNAMED_TABLE, provider_as_source(source), None)?.build()?;

        // An overwrite keeps the table's schema; a missing table is created by either mode.
        let mode = match (request.mode, &existing) {
            (WriteMode::Overwrite, Some(_)) => WriteMode::Overwrite,
            _ => WriteMode::Append,
        };
        let written = self
            .write(&state, &request.table, plan, mode, &request.partition_by)
            .await;
        written.map_err(|err| {
            let input = first_error.lock().ok().and_then(|mut slot| slot.take());
            input.unwrap_or(err)
        })
    }

    /// The engine's session, except that a file is never split across partitions: file
    /// positions in parse errors must be lines of the file, so each file is read as one stream
    /// from its start.
    fn ingest_state(&self) -> SessionState {
        let mut config = self.state().config().clone();
        config.options_mut().optimizer.repartition_file_scans = false;
        SessionStateBuilder::new_from_existing(self.state())
            .with_config(config)
            .build()
    }

    /// The columns of the table, if it exists.
    async fn existing_fields(&self, table: &TableName) -> Result<Option<Vec<Field>>> {
        if !self.warehouse().table_exists(table).await? {
            return Ok(None);
        }
        Ok(Some(
            self.describe_table(table)
                .await?
                .into_iter()
                .map(|c| Field::new(c.name, c.data_type, c.nullable))
                .collect(),
        ))
    }

    fn ingest_format(&self, request: &IngestRequest) -> Result<IngestFormat> {
        if let Some(format) = request.format {
            return Ok(format);
        }
        let mut found: Option<IngestFormat> = None;
        for path in &request.files {
            let Some(format) = IngestFormat::from_path(path) else {
                return Err(PitlakeError::Input {
                    path: path.display().to_string(),
                    message: "cannot tell the format from the file name; pass --format csv, \
                              parquet or json"
                        .into(),
                });
            };
            match found {
                Some(previous) if previous != format => {
                    return Err(PitlakeError::Input {
                        path: path.display().to_string(),
                        message: format!(
                            "is {format:?} but earlier files are {previous:?}; load one format \
                             per call, or pass --format"
                        ),
                    });
                }
                _ => found = Some(format),
            }
        }
        found.ok_or_else(|| PitlakeError::Internal("no files".into()))
    }

    fn listing_options(&self, request: &IngestRequest, format: IngestFormat) -> ListingOptions {
        let file_format: Arc<dyn FileFormat> = match format {
            IngestFormat::Csv => {
                let tsv = request
                    .files
                    .first()
                    .and_then(|p| p.extension())
                    .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
                let delimiter = request.delimiter.unwrap_or(if tsv { b'\t' } else { b',' });
                Arc::new(
                    CsvFormat::default()
                        .with_has_header(request.has_header)
                        .with_delimiter(delimiter)
                        .with_schema_infer_max_rec(10_000),
                )
            }
            IngestFormat::Parquet => Arc::new(ParquetFormat::default()),
            IngestFormat::Json => Arc::new(JsonFormat::default()),
        };
        // Files are named one by one, so any extension is fine.
        ListingOptions::new(file_format).with_file_extension("")
    }
}

/// The type two files' inferences of one column agree on: the same type; the other type when
/// one file saw only NULLs; a float when one saw integers and the other decimals; text when one
/// saw text. Anything else is a real disagreement.
fn unify(a: &DataType, b: &DataType, text_format: bool) -> Option<DataType> {
    use DataType::*;
    if a == b {
        return Some(a.clone());
    }
    match (a, b) {
        (Null, other) | (other, Null) => Some(other.clone()),
        (x, y) if x.is_integer() && y.is_integer() => Some(Int64),
        (x, y) if x.is_numeric() && y.is_numeric() => Some(Float64),
        (Date32, Timestamp(unit, tz)) | (Timestamp(unit, tz), Date32) => {
            Some(Timestamp(*unit, tz.clone()))
        }
        (Utf8, _) | (_, Utf8) if text_format => Some(Utf8),
        _ => None,
    }
}

/// One schema for all files: the same column names in the same order, types unified.
fn merge_schemas(schemas: &[SchemaRef], files: &[PathBuf], text_format: bool) -> Result<SchemaRef> {
    let Some(first) = schemas.first() else {
        return Err(PitlakeError::Internal("no schemas to merge".into()));
    };
    let first_names: Vec<&String> = first.fields().iter().map(|f| f.name()).collect();
    let mut fields: Vec<Field> = first.fields().iter().map(|f| f.as_ref().clone()).collect();
    for (schema, path) in schemas.iter().zip(files).skip(1) {
        let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
        if names != first_names {
            return Err(PitlakeError::Input {
                path: path.display().to_string(),
                message: format!(
                    "has columns [{}] but {} has [{}]; load files with the same columns together",
                    names
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    files[0].display(),
                    first_names
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        for (merged, field) in fields.iter_mut().zip(schema.fields()) {
            let Some(data_type) = unify(merged.data_type(), field.data_type(), text_format) else {
                return Err(PitlakeError::Input {
                    path: path.display().to_string(),
                    message: format!(
                        "column `{}` is {} here but {} in {}; load them separately or cast \
                         the column in one of them",
                        field.name(),
                        field.data_type(),
                        merged.data_type(),
                        files[0].display()
                    ),
                });
            };
            *merged = merged
                .clone()
                .with_data_type(data_type)
                .with_nullable(merged.is_nullable() || field.is_nullable());
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_count_from_one() {
        assert_eq!(
            one_based_lines(
                "Parser error: Error while parsing value 'x' as type 'Float64' for column 1 \
                 at line 2. Row data: '[4,x]'"
            ),
            "Parser error: Error while parsing value 'x' as type 'Float64' for column 1 at \
             line 3. Row data: '[4,x]'"
        );
        assert_eq!(one_based_lines("at line 2"), "at line 2");
    }

    #[test]
    fn inferred_types_unify() {
        use DataType::*;
        assert_eq!(unify(&Int64, &Float64, true), Some(Float64));
        assert_eq!(unify(&Null, &Utf8, true), Some(Utf8));
        assert_eq!(unify(&Int64, &Utf8, true), Some(Utf8));
        assert_eq!(unify(&Int64, &Utf8, false), None);
        assert_eq!(unify(&Boolean, &Int64, false), None);
    }
}
