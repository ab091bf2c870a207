//! Exports written by a cluster's executors (docs/distributed.md, section 5).
//!
//! On a cluster the client does not stream the rows home to write them: it wraps the pinned
//! query in an [`ExportWrite`] node, the scheduler plans it into [`ExportWriteExec`] above the
//! query, and each task writes its partition's rows straight to the destination and returns one
//! row, its [`PartReport`]: how many rows, their content-hash lanes, and what it wrote.
//!
//! - **Delta** (`--format delta`): every partition writes Parquet files under the table's root
//!   with deltalake's data-file writer (statistics included), without committing; the client
//!   checks that it sees every part and that the table has not moved since the export began,
//!   then commits all the parts as one new version. Files of failed attempts and of exports that
//!   fail before the commit are never referenced (the client deletes the parts it was told of;
//!   `VACUUM` removes the rest once the table exists).
//! - **Parquet and CSV**: the query keeps its `ORDER BY`, so its last stage is one partition,
//!   and one task writes the file at its final place the way a single-node export does
//!   (`ExportSink`: the whole object or nothing).
//!
//! There is one report per partition of the export's input: a Ballista job's result holds each
//! final partition's output once, from the attempt that succeeded. The codecs refuse a
//! destination off object storage, so no plan makes an executor write to its own disk.
//!
//! The client builds the manifest from its own plan, as single-node does, with the merged
//! content hash: the same rows give the same hash, whatever the partitioning.
//!
//! Storage credentials never travel in plans: an executor resolves the destination's store with
//! its own settings (flags, config file, environment), given to its codec.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef, internal_datafusion_err};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::{EquivalenceProperties, OrderingRequirements, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::sink::Destination;
use super::{ContentHash, ExportFormat, destination_with, hashing, write_file_to};
use crate::error::{PitlakeError, Result};

/// What one partition of an export wrote: one row of [`ExportWriteExec`]'s output, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartReport {
    /// Rows written.
    pub rows: u64,
    /// The rows' content-hash lanes (see [`ContentHash`]).
    pub sum: [u64; 4],
    /// A file export's size in bytes and SHA-256.
    pub file: Option<(u64, String)>,
    /// A Delta export's data files, not yet committed.
    pub adds: Vec<deltalake::kernel::Add>,
}

/// The one column of [`ExportWriteExec`]'s output.
fn report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "export_part",
        DataType::Utf8,
        false,
    )]))
}

/// A query's rows written to `to` by the nodes that compute them; the output is one
/// [`PartReport`] per partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportWrite {
    input: Arc<LogicalPlan>,
    to: String,
    format: ExportFormat,
    schema: DFSchemaRef,
}

impl ExportWrite {
    /// Writes `input`'s rows to `to` in `format`.
    pub fn new(input: LogicalPlan, to: &str, format: ExportFormat) -> DFResult<Self> {
        Ok(Self {
            input: Arc::new(input),
            to: to.to_string(),
            format,
            schema: Arc::new(DFSchema::try_from(report_schema())?),
        })
    }

    /// As a plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }
}

impl Hash for ExportWrite {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.to.hash(state);
        self.format.hash(state);
    }
}

impl PartialOrd for ExportWrite {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        // Plans are compared only to deduplicate; there is no meaningful order of exports.
        (self == other).then_some(Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for ExportWrite {
    fn name(&self) -> &str {
        "ExportWrite"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![self.input.as_ref()]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ExportWrite: to={}, format={}",
            self.to,
            self.format.as_str()
        )
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        match (exprs.is_empty(), inputs.pop(), inputs.is_empty()) {
            (true, Some(input), true) => Self::new(input, &self.to, self.format),
            _ => Err(internal_datafusion_err!(
                "ExportWrite takes one input and no expressions"
            )),
        }
    }

    fn supports_limit_pushdown(&self) -> bool {
        false
    }
}

/// Writes each partition of its input to the destination and returns one [`PartReport`] per
/// partition. A file export takes one partition (the query's order kept); a Delta export writes
/// every partition in parallel.
pub struct ExportWriteExec {
    input: Arc<dyn ExecutionPlan>,
    to: String,
    format: ExportFormat,
    /// The storage settings the destination's store is built with: the executor's own (from its
    /// codec), never the client's.
    storage: Arc<HashMap<String, String>>,
    cache: Arc<PlanProperties>,
}

impl ExportWriteExec {
    /// Writes `input` to `to`, building the store with `storage`.
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        to: &str,
        format: ExportFormat,
        storage: Arc<HashMap<String, String>>,
    ) -> Self {
        let partitions = match format {
            ExportFormat::Delta => input.output_partitioning().partition_count(),
            ExportFormat::Parquet | ExportFormat::Csv => 1,
        };
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(report_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            to: to.to_string(),
            format,
            storage,
            cache,
        }
    }

    /// The destination.
    pub fn to(&self) -> &str {
        &self.to
    }

    /// The format.
    pub fn format(&self) -> ExportFormat {
        self.format
    }
}

impl fmt::Debug for ExportWriteExec {
    /// Without the storage settings' values, which may hold keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportWriteExec")
            .field("input", &self.input)
            .field("to", &self.to)
            .field("format", &self.format)
            .field("storage", &self.storage.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DisplayAs for ExportWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ExportWriteExec: to={}, format={}",
            self.to,
            self.format.as_str()
        )
    }
}

impl ExecutionPlan for ExportWriteExec {
    fn name(&self) -> &'static str {
        "ExportWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        match self.format {
            ExportFormat::Delta => vec![Distribution::UnspecifiedDistribution],
            ExportFormat::Parquet | ExportFormat::Csv => vec![Distribution::SinglePartition],
        }
    }

    /// A file is written in the query's order.
    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        match self.format {
            ExportFormat::Delta => vec![None],
            ExportFormat::Parquet | ExportFormat::Csv => vec![
                self.input
                    .output_ordering()
                    .cloned()
                    .map(OrderingRequirements::from),
            ],
        }
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let [input]: [Arc<dyn ExecutionPlan>; 1] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("ExportWriteExec takes one child".into()))?;
        Ok(Arc::new(Self::new(
            input,
            &self.to,
            self.format,
            self.storage.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        // A file is its query's one partition, whole: reading a part of it would publish a
        // file (and a manifest) without the other partitions' rows.
        let inputs = self.input.output_partitioning().partition_count();
        if self.format != ExportFormat::Delta && (inputs != 1 || partition != 0) {
            return Err(internal_datafusion_err!(
                "a file export reads one partition, not partition {partition} of {inputs}"
            ));
        }
        let input = self.input.execute(partition, context)?;
        let part = Part {
            to: self.to.clone(),
            format: self.format,
            storage: self.storage.clone(),
        };
        let report = futures::stream::once(async move {
            let to = part.to.clone();
            let report = part.write(input).await.map_err(|e| match e {
                // The query's own error, as it came: Ballista reruns a lost executor's stages
                // and retries I/O errors by their kind.
                PartError::Input(e) => e,
                PartError::Write(e) => {
                    DataFusionError::Execution(format!("{WRITE_FAILED} {to}: {e}"))
                }
            })?;
            let json = serde_json::to_string(&report)
                .map_err(|e| internal_datafusion_err!("export part report: {e}"))?;
            Ok(RecordBatch::try_new(
                report_schema(),
                vec![Arc::new(StringArray::from(vec![json]))],
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            report_schema(),
            report,
        )))
    }
}

/// How an executor's failure to write an export begins (the client finds it in the job's error).
pub(super) const WRITE_FAILED: &str = "an executor could not write the export to";

/// The executor's own words from a failed job's error that an export could not be written (the
/// job's error in words, see `engine::cluster::readable_job_error`): from them to the end.
pub(super) fn write_failure(message: &str) -> Option<String> {
    let start = message.find(WRITE_FAILED)?;
    Some(message[start..].trim_end().to_string())
}

/// Why a part of an export failed: its query, or writing its rows.
enum PartError {
    Input(DataFusionError),
    Write(PitlakeError),
}

/// One partition's share of an export.
struct Part {
    to: String,
    format: ExportFormat,
    storage: Arc<HashMap<String, String>>,
}

impl Part {
    async fn write(
        self,
        input: SendableRecordBatchStream,
    ) -> std::result::Result<PartReport, PartError> {
        let hash = Arc::new(Mutex::new(
            ContentHash::new(&input.schema()).map_err(PartError::Write)?,
        ));
        // The query's first error is kept aside as it came; the writer sees a stand-in.
        let failed: Arc<Mutex<Option<DataFusionError>>> = Arc::default();
        let input = {
            let (schema, failed) = (input.schema(), failed.clone());
            let rows = input.map(move |batch| {
                batch.map_err(|e| {
                    let shown = e.to_string();
                    if let Ok(mut slot) = failed.lock() {
                        slot.get_or_insert(e);
                    }
                    DataFusionError::Execution(shown)
                })
            });
            Box::pin(RecordBatchStreamAdapter::new(schema, rows)) as SendableRecordBatchStream
        };
        let rows = hashing(input, hash.clone(), None);
        let written = async {
            let destination = destination_with(&self.storage, &self.to)?;
            Ok::<_, PitlakeError>(match self.format {
                ExportFormat::Parquet | ExportFormat::Csv => {
                    let digest = write_file_to(rows, destination, &self.to, self.format).await?;
                    (Some((digest.bytes, digest.sha256)), Vec::new())
                }
                ExportFormat::Delta => (None, write_delta_part(rows, destination, &self.to).await?),
            })
        }
        .await;
        let (file, adds) = match written {
            Ok(written) => written,
            Err(e) => {
                let input = failed.lock().ok().and_then(|mut slot| slot.take());
                return Err(match input {
                    Some(input) => PartError::Input(input),
                    None => PartError::Write(e),
                });
            }
        };
        let hash = hash
            .lock()
            .map_err(|_| PartError::Write(PitlakeError::Internal("export hash lock".into())))?;
        tracing::info!(
            to = %self.to,
            rows = hash.rows(),
            files = adds.len() + usize::from(file.is_some()),
            "wrote an export part"
        );
        Ok(PartReport {
            rows: hash.rows(),
            sum: hash.lanes(),
            file,
            adds,
        })
    }
}

/// The size at which a partition's Delta data file is closed and the next begun (deltalake's
/// default).
const TARGET_FILE_SIZE: u64 = 100 << 20;

/// The schema a Delta table stores `schema` as (nanosecond timestamps as microseconds, …), as
/// deltalake's own writer converts it.
pub(super) fn delta_schema(schema: &SchemaRef) -> SchemaRef {
    deltalake::kernel::normalize_for_delta(schema)
}

/// Writes a stream as data files under the Delta table at `destination`, not committed; returns
/// their `Add` actions (statistics included). A failure aborts the uploads under way.
async fn write_delta_part(
    mut rows: SendableRecordBatchStream,
    destination: Destination,
    shown: &str,
) -> Result<Vec<deltalake::kernel::Add>> {
    use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
    let store: Arc<dyn object_store::ObjectStore> = match destination {
        Destination::Store { store, path } => {
            Arc::new(object_store::prefix::PrefixStore::new(store, path))
        }
        Destination::Local(path) => {
            std::fs::create_dir_all(&path).map_err(|e| PitlakeError::Input {
                path: shown.to_string(),
                message: format!("cannot create the table's folder: {e}"),
            })?;
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
                &path,
            )?)
        }
    };
    let schema = delta_schema(&rows.schema());
    // Files roll at deltalake's default target size, as a single-node export's do; statistics
    // for the default number of columns.
    let config = WriterConfig::new(
        schema.clone(),
        Vec::new(),
        None,
        std::num::NonZeroU64::new(TARGET_FILE_SIZE),
        None,
        Default::default(),
        None,
    );
    let mut writer = DeltaWriter::new(store, config);
    let written = async {
        while let Some(batch) = rows.next().await {
            let batch = batch?;
            let batch = if batch.schema() == schema {
                batch
            } else {
                deltalake::kernel::cast_record_batch(&batch, schema.clone(), false, false)?
            };
            writer.write(&batch).await?;
        }
        Ok::<_, PitlakeError>(())
    }
    .await;
    match written {
        Ok(()) => Ok(writer.close().await?),
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(error = %abort, "could not abort an export part's uploads");
            }
            Err(e)
        }
    }
}

/// Reads [`ExportWriteExec`]'s rows back into reports.
///
/// There is one per partition of the export's input: a Ballista job's result holds each final
/// partition's output once, from the attempt that succeeded, and a job that cannot complete a
/// partition fails. (A task there runs a plan cut down to its own partitions, so the partition
/// number an operator sees does not identify it across tasks.)
pub(super) fn parse_reports(batches: &[RecordBatch]) -> Result<Vec<PartReport>> {
    let mut reports = Vec::new();
    for batch in batches {
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| PitlakeError::Internal("export reports: not text".into()))?;
        for json in column.iter() {
            let json = json.ok_or_else(|| PitlakeError::Internal("export report: NULL".into()))?;
            reports.push(
                serde_json::from_str::<PartReport>(json)
                    .map_err(|e| PitlakeError::Internal(format!("export report: {e}")))?,
            );
        }
    }
    Ok(reports)
}

/// The codecs' part: an [`ExportWrite`] or [`ExportWriteExec`] is this magic, then a JSON header.
const MAGIC: &[u8; 8] = b"PLEXPW01";

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    to: String,
    format: String,
}

fn encode(to: &str, format: ExportFormat, buf: &mut Vec<u8>) -> DFResult<()> {
    buf.extend_from_slice(MAGIC);
    let header = Header {
        to: to.to_string(),
        format: format.as_str().to_string(),
    };
    serde_json::to_writer(buf, &header).map_err(|e| internal_datafusion_err!("export codec: {e}"))
}

/// Decodes an export; refuses a destination off object storage: a plan reaching an executor
/// (from a client, or from whoever reaches the scheduler) never writes to the executor's disk.
fn decode(buf: &[u8]) -> DFResult<Option<(String, ExportFormat)>> {
    let Some(rest) = buf.strip_prefix(MAGIC.as_slice()) else {
        return Ok(None);
    };
    let header: Header =
        serde_json::from_slice(rest).map_err(|e| internal_datafusion_err!("export codec: {e}"))?;
    if !super::on_object_storage(&header.to) {
        return Err(DataFusionError::Plan(format!(
            "an export on a cluster writes to object storage (s3://, gs://, az://, abfss://), \
             not to `{}`",
            header.to
        )));
    }
    let format = ExportFormat::resolve(Some(&header.format), &header.to)
        .map_err(|e| internal_datafusion_err!("export codec: {e}"))?;
    Ok(Some((header.to, format)))
}

/// Encodes and decodes [`ExportWrite`]; everything else goes to `inner`.
#[derive(Debug)]
pub struct ExportLogicalCodec {
    inner: Arc<dyn datafusion_proto::logical_plan::LogicalExtensionCodec>,
}

impl ExportLogicalCodec {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn datafusion_proto::logical_plan::LogicalExtensionCodec>) -> Self {
        Self { inner }
    }
}

impl datafusion_proto::logical_plan::LogicalExtensionCodec for ExportLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DFResult<Extension> {
        let Some((to, format)) = decode(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx);
        };
        let [input] = inputs else {
            return Err(internal_datafusion_err!(
                "export codec: {} inputs",
                inputs.len()
            ));
        };
        Ok(Extension {
            node: Arc::new(ExportWrite::new(input.clone(), &to, format)?),
        })
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DFResult<()> {
        match node.node.as_any().downcast_ref::<ExportWrite>() {
            Some(export) => encode(&export.to, export.format, buf),
            None => self.inner.try_encode(node, buf),
        }
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &datafusion::common::TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DFResult<Arc<dyn datafusion::catalog::TableProvider>> {
        self.inner
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &datafusion::common::TableReference,
        node: Arc<dyn datafusion::catalog::TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DFResult<()> {
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DFResult<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> DFResult<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

/// Encodes and decodes [`ExportWriteExec`] (its store built with this process's `storage`
/// settings); everything else goes to `inner`.
pub struct ExportPhysicalCodec {
    inner: Arc<dyn datafusion_proto::physical_plan::PhysicalExtensionCodec>,
    storage: Arc<HashMap<String, String>>,
}

impl fmt::Debug for ExportPhysicalCodec {
    /// Without the storage settings' values, which may hold keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportPhysicalCodec")
            .field("inner", &self.inner)
            .field("storage", &self.storage.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ExportPhysicalCodec {
    /// Wraps `inner`; decoded exports build their stores with `storage`.
    pub fn new(
        inner: Arc<dyn datafusion_proto::physical_plan::PhysicalExtensionCodec>,
        storage: HashMap<String, String>,
    ) -> Self {
        Self {
            inner,
            storage: Arc::new(storage),
        }
    }
}

impl datafusion_proto::physical_plan::PhysicalExtensionCodec for ExportPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn datafusion_proto::physical_plan::PhysicalProtoConverterExtension,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let Some((to, format)) = decode(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        let [input] = inputs else {
            return Err(internal_datafusion_err!(
                "export codec: {} inputs",
                inputs.len()
            ));
        };
        Ok(Arc::new(ExportWriteExec::new(
            input.clone(),
            &to,
            format,
            self.storage.clone(),
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn datafusion_proto::physical_plan::PhysicalProtoConverterExtension,
    ) -> DFResult<()> {
        match node.downcast_ref::<ExportWriteExec>() {
            Some(export) => encode(&export.to, export.format, buf),
            None => self.inner.try_encode(node, buf, proto_converter),
        }
    }
}

/// Plans [`ExportWrite`] as [`ExportWriteExec`]. The store settings are left empty: a plan
/// reaches the executors through the codec, which gives them theirs.
#[derive(Debug, Default)]
pub struct ExportPlanner;

#[async_trait::async_trait]
impl datafusion::physical_planner::ExtensionPlanner for ExportPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn datafusion::physical_planner::PhysicalPlanner,
        node: &dyn datafusion::logical_expr::UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(export) = node.as_any().downcast_ref::<ExportWrite>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return Err(internal_datafusion_err!("ExportWrite has one input"));
        };
        Ok(Some(Arc::new(ExportWriteExec::new(
            input.clone(),
            &export.to,
            export.format,
            Arc::default(),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::{Settings, WarehouseLocation};
    use arrow::array::{Int64Array, TimestampNanosecondArray};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::prelude::SessionContext;
    use datafusion_proto::logical_plan::LogicalExtensionCodec;
    use datafusion_proto::physical_plan::{DefaultPhysicalProtoConverter, PhysicalExtensionCodec};

    /// Rows `from..to` as (id, ts ns, value or NULL every 7th).
    fn batch(from: i64, to: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
                false,
            ),
            Field::new("value", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(from..to)),
                Arc::new(TimestampNanosecondArray::from_iter_values(
                    (from..to).map(|i| i * 1_000_000_000),
                )),
                Arc::new(Int64Array::from_iter(
                    (from..to).map(|i| (i % 7 != 0).then_some(i * 10)),
                )),
            ],
        )
        .unwrap()
    }

    /// Partitions of rows, some empty, as a plan.
    fn input(partitions: &[Vec<RecordBatch>]) -> Arc<dyn ExecutionPlan> {
        MemorySourceConfig::try_new_exec(partitions, batch(0, 0).schema(), None).unwrap()
    }

    async fn run_parts(exec: Arc<dyn ExecutionPlan>) -> Vec<PartReport> {
        let ctx = SessionContext::new();
        let batches = datafusion::physical_plan::collect(exec, ctx.task_ctx())
            .await
            .unwrap();
        parse_reports(&batches).unwrap()
    }

    fn content_hash(batches: &[RecordBatch]) -> String {
        let mut hash = ContentHash::new(&batches[0].schema()).unwrap();
        for b in batches {
            hash.update(b).unwrap();
        }
        hash.finish()
    }

    /// A client engine over a fresh warehouse, and a Delta destination beside it.
    fn engine_and_destination() -> (tempfile::TempDir, Engine, String) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(Settings::new(
            WarehouseLocation::parse(&dir.path().join("wh").display().to_string()).unwrap(),
        ))
        .unwrap();
        let to = dir.path().join("out").display().to_string();
        (dir, engine, to)
    }

    /// Every partition writes its own Delta parts; the client commits them as one version, which
    /// holds exactly the rows (by content hash and count) — created first, then replaced with
    /// other rows and another schema by a second export, each time with the merged hash of the
    /// reports equal to the rows'.
    #[tokio::test]
    async fn delta_parts_written_per_partition_commit_as_one_version() {
        let (_dir, engine, to) = engine_and_destination();
        let first = vec![
            vec![batch(0, 100), batch(100, 150)],
            vec![],
            vec![batch(150, 400)],
        ];
        let exec = Arc::new(ExportWriteExec::new(
            input(&first),
            &to,
            ExportFormat::Delta,
            Arc::default(),
        ));
        let reports = run_parts(exec).await;
        assert_eq!(reports.len(), 3, "one report per partition");
        let empty: Vec<_> = reports.iter().filter(|r| r.rows == 0).collect();
        assert!(
            matches!(empty.as_slice(), [r] if r.adds.is_empty()),
            "{reports:?}"
        );
        let schema = batch(0, 0).schema();
        let mut merged = ContentHash::new(&schema).unwrap();
        for r in &reports {
            merged.merge(r.rows, r.sum);
        }
        let all: Vec<RecordBatch> = first.iter().flatten().cloned().collect();
        assert_eq!(merged.finish(), content_hash(&all));
        let adds: Vec<_> = reports.iter().flat_map(|r| r.adds.clone()).collect();
        assert_eq!(adds.len(), 2);
        assert!(
            adds.iter()
                .all(|a| a.stats.as_deref().is_some_and(|s| s.contains("numRecords")))
        );
        // Created with a table property (as a user might have set one on an earlier version).
        let mut first = target(&engine, &to, &schema).await;
        first.properties.insert(
            "delta.logRetentionDuration".into(),
            "interval 60 days".into(),
        );
        let version = engine.commit_delta_parts(&to, first, adds).await.unwrap();
        assert_eq!(version, Some(0));
        let read = read_delta(&to).await;
        assert_eq!(read.iter().map(|b| b.num_rows()).sum::<usize>(), 400);
        // The table stores microseconds (Delta's timestamps), as a single-node export does.
        assert_eq!(
            read[0].schema().field(1).data_type(),
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None)
        );

        // A second export replaces every row, with another schema.
        let narrow = |b: RecordBatch| b.project(&[0, 2]).unwrap();
        let second = vec![
            vec![narrow(batch(1000, 1010))],
            vec![narrow(batch(1010, 1030))],
        ];
        let exec = Arc::new(ExportWriteExec::new(
            MemorySourceConfig::try_new_exec(&second, second[0][0].schema(), None).unwrap(),
            &to,
            ExportFormat::Delta,
            Arc::default(),
        ));
        let reports = run_parts(exec).await;
        let adds: Vec<_> = reports.iter().flat_map(|r| r.adds.clone()).collect();
        let version = engine
            .commit_delta_parts(
                &to,
                target(&engine, &to, &second[0][0].schema()).await,
                adds,
            )
            .await
            .unwrap();
        assert_eq!(version, Some(1));
        let read = read_delta(&to).await;
        let all: Vec<RecordBatch> = second.iter().flatten().cloned().collect();
        assert_eq!(content_hash(&read), content_hash(&all));
        // The replaced version's table properties carry over.
        let table = deltalake::open_table(url::Url::from_directory_path(&to).unwrap())
            .await
            .unwrap();
        assert_eq!(
            table
                .snapshot()
                .unwrap()
                .metadata()
                .configuration()
                .get("delta.logRetentionDuration")
                .map(String::as_str),
            Some("interval 60 days")
        );
    }

    /// What a cluster export of `schema` to `to` commits against, as the client takes it before
    /// the job.
    async fn target(engine: &Engine, to: &str, schema: &SchemaRef) -> super::super::DeltaTarget {
        super::super::DeltaTarget::of(engine, to, schema)
            .await
            .unwrap()
    }

    /// Parts are not committed, and are deleted, when the table moved on while the export ran or
    /// when a part is not where the client looks; nothing else changes.
    #[tokio::test]
    async fn parts_are_refused_and_deleted_when_the_table_moved_or_a_part_is_missing() {
        let (_dir, engine, to) = engine_and_destination();
        let schema = batch(0, 0).schema();
        let write = |rows: (i64, i64)| {
            Arc::new(ExportWriteExec::new(
                input(&[vec![batch(rows.0, rows.1)]]),
                &to,
                ExportFormat::Delta,
                Arc::default(),
            ))
        };
        let adds = |reports: Vec<PartReport>| -> Vec<_> {
            reports.into_iter().flat_map(|r| r.adds).collect()
        };
        let parquet_files = || {
            std::fs::read_dir(&to)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "parquet")
                })
                .count()
        };
        // Export A begins against no table; export B creates it meanwhile.
        let before = target(&engine, &to, &schema).await;
        let a = adds(run_parts(write((0, 10))).await);
        let b = adds(run_parts(write((10, 20))).await);
        let later = target(&engine, &to, &schema).await;
        assert_eq!(
            engine.commit_delta_parts(&to, later, b).await.unwrap(),
            Some(0)
        );
        assert_eq!(parquet_files(), 2);
        let err = engine.commit_delta_parts(&to, before, a).await.unwrap_err();
        assert!(
            err.to_string().contains("another writer committed"),
            "{err}"
        );
        assert_eq!(parquet_files(), 1, "A's part is deleted, B's stays");
        assert_eq!(
            read_delta(&to)
                .await
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            10
        );

        // A part the client cannot find: nothing committed, the others deleted.
        let mut c = adds(run_parts(write((20, 30))).await);
        let mut missing = c[0].clone();
        missing.path = "part-that-is-not-there.parquet".into();
        c.push(missing);
        let now = target(&engine, &to, &schema).await;
        let err = engine.commit_delta_parts(&to, now, c).await.unwrap_err();
        assert!(err.to_string().contains("same storage settings"), "{err}");
        assert_eq!(parquet_files(), 1);
        assert_eq!(engine.delta_version_at(&to).await, Some(0));
    }

    async fn read_delta(to: &str) -> Vec<RecordBatch> {
        let url = url::Url::from_directory_path(to).unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        ctx.sql("SELECT * FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    }

    /// A file export is written by one task, in its input's order, at its final place.
    #[tokio::test]
    async fn a_file_export_is_one_partition_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("ts.parquet").display().to_string();
        let exec = Arc::new(ExportWriteExec::new(
            input(&[vec![batch(0, 10), batch(10, 30)]]),
            &to,
            ExportFormat::Parquet,
            Arc::default(),
        ));
        #[expect(deprecated)]
        let required = exec.required_input_distribution();
        assert!(matches!(
            required.as_slice(),
            [Distribution::SinglePartition]
        ));
        let reports = run_parts(exec).await;
        let [report] = reports.as_slice() else {
            panic!("{reports:?}")
        };
        assert_eq!(report.rows, 30);
        let bytes = std::fs::read(&to).unwrap();
        let (size, sha) = report.file.clone().unwrap();
        assert_eq!(size, bytes.len() as u64);
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sha, hex);
        let read: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                bytes::Bytes::from(bytes),
                1024,
            )
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(read, vec![batch(0, 30)]);
    }

    /// A session, a one-row plan and the logical codec over DataFusion's own.
    async fn codec_fixture() -> (SessionContext, LogicalPlan, ExportLogicalCodec) {
        let ctx = SessionContext::new();
        let plan = ctx
            .sql("SELECT 1 AS x")
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        let logical = ExportLogicalCodec::new(Arc::new(
            datafusion_proto::logical_plan::DefaultLogicalExtensionCodec {},
        ));
        (ctx, plan, logical)
    }

    /// Both nodes travel through the codecs: the logical node as it is, the physical one with
    /// the decoding process's storage settings, never the encoder's.
    #[tokio::test]
    async fn exports_round_trip_through_the_codecs() {
        let (ctx, plan, logical) = codec_fixture().await;
        let node = ExportWrite::new(plan.clone(), "s3://b/ts", ExportFormat::Delta).unwrap();
        let mut buf = Vec::new();
        logical
            .try_encode(
                &Extension {
                    node: Arc::new(node.clone()),
                },
                &mut buf,
            )
            .unwrap();
        let decoded = logical.try_decode(&buf, &[plan], &ctx.task_ctx()).unwrap();
        let decoded = decoded.node.as_any().downcast_ref::<ExportWrite>().unwrap();
        assert_eq!(decoded, &node);

        let storage: HashMap<String, String> =
            [("region".to_string(), "eu-west-1".to_string())].into();
        let physical = ExportPhysicalCodec::new(
            Arc::new(datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec {}),
            storage.clone(),
        );
        let exec: Arc<dyn ExecutionPlan> = Arc::new(ExportWriteExec::new(
            input(&[vec![batch(0, 3)]]),
            "s3://b/ts.csv",
            ExportFormat::Csv,
            Arc::new([("aws_secret_access_key".to_string(), "SECRET".to_string())].into()),
        ));
        let mut buf = Vec::new();
        physical
            .try_encode(exec.clone(), &mut buf, &DefaultPhysicalProtoConverter {})
            .unwrap();
        assert!(!String::from_utf8_lossy(&buf).contains("SECRET"));
        let decoded = physical
            .try_decode(
                &buf,
                &[input(&[vec![batch(0, 3)]])],
                &ctx.task_ctx(),
                &DefaultPhysicalProtoConverter {},
            )
            .unwrap();
        let decoded = decoded.downcast_ref::<ExportWriteExec>().unwrap();
        assert_eq!(
            (decoded.to(), decoded.format(), decoded.storage.as_ref()),
            ("s3://b/ts.csv", ExportFormat::Csv, &storage)
        );
    }

    /// The client finds the executor's words in the job's error (in words already).
    #[test]
    fn a_failed_write_is_told_in_the_executors_words() {
        let job = "the cluster's job failed (job 1, stage 4): an executor could not write the \
                   export to s3://b/ts.parquet: object storage: \"ts.parquet\") not found\n";
        assert_eq!(
            write_failure(job).as_deref(),
            Some(
                "an executor could not write the export to s3://b/ts.parquet: object storage: \
                 \"ts.parquet\") not found"
            )
        );
        assert_eq!(
            write_failure("the cluster's job failed (job 1, stage 2): Divide by zero"),
            None
        );
    }

    /// A plan that reaches an executor never writes to its disk: the codecs refuse any
    /// destination off object storage, whoever built the plan.
    #[tokio::test]
    async fn the_codecs_refuse_destinations_off_object_storage() {
        let (ctx, plan, logical) = codec_fixture().await;
        let physical = ExportPhysicalCodec::new(
            Arc::new(datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec {}),
            HashMap::new(),
        );
        for to in [
            "/etc/cron.d/x.csv",
            "file:///tmp/x",
            "memory:///x",
            "relative/x.parquet",
        ] {
            let mut buf = Vec::new();
            encode(to, ExportFormat::Csv, &mut buf).unwrap();
            let err = logical
                .try_decode(&buf, std::slice::from_ref(&plan), &ctx.task_ctx())
                .unwrap_err();
            assert!(
                err.to_string().contains("writes to object storage"),
                "{to}: {err}"
            );
            let err = physical
                .try_decode(
                    &buf,
                    &[input(&[vec![batch(0, 1)]])],
                    &ctx.task_ctx(),
                    &DefaultPhysicalProtoConverter {},
                )
                .unwrap_err();
            assert!(
                err.to_string().contains("writes to object storage"),
                "{to}: {err}"
            );
        }
        // Bytes after the magic that are not a header (garbage, deeply nested, the wrong type)
        // are an error, never a panic; an oversized destination decodes as what it is.
        let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for rest in [&b"\xff\x00{"[..], nested.as_bytes(), br#"{"to":1}"#] {
            let buf = [MAGIC.as_slice(), rest].concat();
            assert!(
                logical
                    .try_decode(&buf, std::slice::from_ref(&plan), &ctx.task_ctx())
                    .is_err()
            );
        }
        let long = format!("s3://b/{}", "x".repeat(8 << 20));
        let mut buf = Vec::new();
        encode(&long, ExportFormat::Delta, &mut buf).unwrap();
        let decoded = logical
            .try_decode(&buf, std::slice::from_ref(&plan), &ctx.task_ctx())
            .unwrap();
        let decoded = decoded.node.as_any().downcast_ref::<ExportWrite>().unwrap();
        assert_eq!(decoded.to.len(), long.len());
        // Debug output shows the settings' names, never their values.
        let exec = ExportWriteExec::new(
            input(&[vec![batch(0, 1)]]),
            "s3://b/x",
            ExportFormat::Delta,
            Arc::new([("aws_secret_access_key".to_string(), "SECRET-9".to_string())].into()),
        );
        let shown = format!("{exec:?} {:?}", physical);
        assert!(
            !shown.contains("SECRET-9") && shown.contains("aws_secret_access_key"),
            "{shown}"
        );
    }

    /// The query's own error reaches the job as it came (Ballista retries I/O errors and reruns
    /// lost stages by their kind), not as a failure to write; and a file export reads exactly one
    /// partition.
    #[tokio::test]
    async fn a_query_error_is_not_a_write_error_and_a_file_is_one_partition() {
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
        use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
        #[derive(Debug)]
        struct Failing(SchemaRef);
        impl PartitionStream for Failing {
            fn schema(&self) -> &SchemaRef {
                &self.0
            }
            fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
                let rows = futures::stream::iter(vec![
                    Ok(batch(0, 5)),
                    Err(DataFusionError::ResourcesExhausted(
                        "the pool is full".into(),
                    )),
                ]);
                Box::pin(RecordBatchStreamAdapter::new(self.0.clone(), rows))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let schema = batch(0, 0).schema();
        for (format, to) in [
            (
                ExportFormat::Delta,
                dir.path().join("t").display().to_string(),
            ),
            (
                ExportFormat::Parquet,
                dir.path().join("t.parquet").display().to_string(),
            ),
        ] {
            let failing = Arc::new(
                StreamingTableExec::try_new(
                    schema.clone(),
                    vec![Arc::new(Failing(schema.clone()))],
                    None,
                    Vec::<datafusion::physical_expr::LexOrdering>::new(),
                    false,
                    None,
                )
                .unwrap(),
            );
            let exec = Arc::new(ExportWriteExec::new(failing, &to, format, Arc::default()));
            let ctx = SessionContext::new();
            let err = datafusion::physical_plan::collect(exec, ctx.task_ctx())
                .await
                .unwrap_err();
            assert!(
                matches!(err.find_root(), DataFusionError::ResourcesExhausted(_)),
                "{format:?}: {err:?}"
            );
            assert!(!err.to_string().contains(WRITE_FAILED), "{err}");
            assert!(!std::path::Path::new(&to).join("_delta_log").exists());
        }
        assert!(!dir.path().join("t.parquet").exists(), "no half file");
        let two = Arc::new(ExportWriteExec::new(
            input(&[vec![batch(0, 1)], vec![batch(1, 2)]]),
            &dir.path().join("u.parquet").display().to_string(),
            ExportFormat::Parquet,
            Arc::default(),
        ));
        let ctx = SessionContext::new();
        assert!(two.execute(0, ctx.task_ctx()).is_err());
    }
}
