//! A Delta table version as a plain list of Parquet files, so that a scan crosses process
//! boundaries (see docs/distributed.md, "Delta scans across processes").
//!
//! deltalake's scan operator has no codec, so a plan that reads a Delta table cannot be sent to
//! a Ballista executor. The client, which resolved the version (`VERSION AS OF`, a training
//! set's pins) and holds its snapshot, turns each warehouse table into a [`PinnedDeltaTable`]:
//! the table's schema, its partition columns and the files of that version with their partition
//! values. Its scan is a stock Parquet scan, which `datafusion-proto` serializes and Ballista
//! slices per task; the scheduler plans it without reading the log or the storage.
//!
//! Refused, with the table's name: files with deletion vectors, column mapping, file paths
//! outside the table, and in-memory warehouses (executors cannot see the client's memory).

use std::sync::Arc;

use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result, ScalarValue, TableReference, plan_err};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use object_store::path::Path;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::WarehouseTable;

/// What an encoded pinned table starts with.
const MAGIC: &[u8] = b"PLDTAB01";

/// One data file of the pinned version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct PinnedFile {
    /// The object's path inside the store (not a URL).
    path: String,
    size: u64,
    /// Milliseconds since the epoch, from the log.
    modified_ms: i64,
    /// In the order of [`Pinned::partition_columns`]; `None` is NULL.
    partition_values: Vec<Option<String>>,
}

/// The serializable part of a pinned table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Pinned {
    /// `scheme://authority` of the store the files are in.
    store: String,
    partition_columns: Vec<String>,
    files: Vec<PinnedFile>,
}

/// A Delta table version read as its Parquet files (see the module documentation).
#[derive(Debug)]
pub struct PinnedDeltaTable {
    pinned: Pinned,
    schema: SchemaRef,
}

impl PinnedDeltaTable {
    /// The files of the version `table` reads, or why that version cannot be read this way.
    /// `name` is the table as the statement named it, for the errors.
    pub fn from_warehouse_table(name: &TableReference, table: &WarehouseTable) -> Result<Self> {
        let refuse = |why: &str| {
            plan_err!(
                "`{name}` cannot be read on a cluster: {why}; run the statement without \
                 --cluster, or rewrite the table with CREATE OR REPLACE TABLE … AS SELECT"
            )
        };
        let (Some(root), Some(state)) = (table.root(), table.state()) else {
            return refuse("its Delta snapshot is not loaded");
        };
        if root.scheme() == "memory" {
            return plan_err!(
                "`{name}` is in an in-memory warehouse, which the cluster's executors cannot \
                 read; put the warehouse on storage every executor reaches (a shared folder, \
                 s3://, gs://, az://)"
            );
        }
        let mapping = state
            .metadata()
            .configuration()
            .get("delta.columnMapping.mode")
            .map(String::as_str)
            .unwrap_or("none");
        if mapping != "none" {
            return refuse(&format!("it uses column mapping (`{mapping}`)"));
        }
        let store = format!(
            "{}://{}",
            root.scheme(),
            &root[url::Position::BeforeHost..url::Position::AfterPort]
        );
        let root_path = Path::from_url_path(root.path())
            .map_err(|e| datafusion::common::plan_datafusion_err!("`{name}`: {e}"))?;
        let partition_columns = state.metadata().partition_columns().to_vec();
        let mut files = Vec::new();
        for file in state.log_data().iter() {
            if file.deletion_vector_descriptor().is_some() {
                return refuse("some of its files have deletion vectors");
            }
            let relative = file.path();
            if relative.contains("://") {
                return refuse("some of its files are outside the table's folder");
            }
            let values = file.partition_values_map();
            // The log's path is a URL relative to the root; decoded (`object_store_path`), its
            // segments are the objects' names as they are, which a store path holds unencoded.
            let path: Path = root_path
                .parts()
                .chain(file.object_store_path().parts())
                .collect();
            files.push(PinnedFile {
                path: path.to_string(),
                size: u64::try_from(file.size()).unwrap_or(0),
                modified_ms: file.modification_time(),
                partition_values: partition_columns
                    .iter()
                    .map(|c| values.get(c).cloned().flatten())
                    .collect(),
            });
        }
        let schema = table.schema();
        // The files no row of the scan can come from, by their statistics, stay behind.
        if let Some(keep) = files_kept(state, &schema, &partition_columns, table.prune_filters())
            && keep.len() == files.len()
        {
            let mut keep = keep.into_iter();
            files.retain(|_| keep.next().unwrap_or(true));
        }
        Ok(Self {
            pinned: Pinned {
                store,
                partition_columns,
                files,
            },
            schema,
        })
    }

    /// Whether `buf` holds a pinned table.
    pub fn is_encoded(buf: &[u8]) -> bool {
        buf.starts_with(MAGIC)
    }

    /// `MAGIC`, the schema's length and bytes (`datafusion-proto`), then the rest as JSON.
    pub fn encode(&self, buf: &mut Vec<u8>) -> Result<()> {
        let schema = datafusion_proto::protobuf::Schema::try_from(self.schema.as_ref())?;
        let schema = schema.encode_to_vec();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(schema.len() as u64).to_le_bytes());
        buf.extend_from_slice(&schema);
        serde_json::to_writer(&mut *buf, &self.pinned)
            .map_err(|e| datafusion::common::internal_datafusion_err!("pinned table: {e}"))
    }

    /// The inverse of [`PinnedDeltaTable::encode`].
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let bad = |what: &str| datafusion::common::internal_datafusion_err!("pinned table: {what}");
        let rest = buf.strip_prefix(MAGIC).ok_or_else(|| bad("no header"))?;
        let (len, rest) = rest.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
        let len = usize::try_from(u64::from_le_bytes(
            len.try_into().map_err(|_| bad("length"))?,
        ))
        .map_err(|_| bad("length"))?;
        let (schema, rest) = rest.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
        let schema =
            datafusion_proto::protobuf::Schema::decode(schema).map_err(|e| bad(&e.to_string()))?;
        let schema = Schema::try_from(&schema)?;
        let pinned: Pinned = serde_json::from_slice(rest).map_err(|e| bad(&e.to_string()))?;
        for column in &pinned.partition_columns {
            schema.index_of(column)?;
        }
        if pinned
            .files
            .iter()
            .any(|f| f.partition_values.len() != pinned.partition_columns.len())
        {
            return Err(bad("partition values"));
        }
        Ok(Self {
            pinned,
            schema: Arc::new(schema),
        })
    }

    /// How many data files the version has.
    pub fn file_count(&self) -> usize {
        self.pinned.files.len()
    }

    fn partition_value(&self, value: Option<&str>, field: &Field) -> Result<ScalarValue> {
        match value {
            None => ScalarValue::try_from(field.data_type()),
            Some(text) => ScalarValue::Utf8(Some(text.to_string())).cast_to(field.data_type()),
        }
    }
}

#[async_trait]
impl TableProvider for PinnedDeltaTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // The scan applies every filter it is given (a FilterExec over the Parquet scan, which
        // DataFusion's filter pushdown moves into the Parquet reader for pruning).
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = &self.schema;
        // The scan's columns: the files' columns in table order, then the partition columns.
        let partition_index = self
            .pinned
            .partition_columns
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let file_index: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !partition_index.contains(i))
            .collect();
        let order: Vec<usize> = file_index.iter().chain(&partition_index).copied().collect();
        let mut position = vec![0; order.len()];
        for (scan_pos, &table_pos) in order.iter().enumerate() {
            position[table_pos] = scan_pos;
        }
        let file_schema = Arc::new(Schema::new(
            file_index
                .iter()
                .map(|&i| schema.field(i).clone())
                .collect::<Vec<_>>(),
        ));
        let partition_fields: Vec<FieldRef> = partition_index
            .iter()
            .map(|&i| Arc::new(schema.field(i).clone()))
            .collect();

        // Filters apply to the table's columns, before the projection.
        let wanted: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..schema.fields().len()).collect());
        let mut read: Vec<usize> = wanted.clone();
        let predicate = conjunction(filters.iter().cloned());
        if let Some(predicate) = &predicate {
            for column in predicate.column_refs() {
                read.push(schema.index_of(&column.name)?);
            }
        }
        read.sort_unstable_by_key(|&i| position[i]);
        read.dedup();

        if self.pinned.files.is_empty() {
            let projected = Arc::new(schema.project(&wanted)?);
            return Ok(Arc::new(EmptyExec::new(projected)));
        }

        let groups = self.file_groups(state.config().target_partitions())?;
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let source = format.file_source(
            TableSchema::builder(file_schema)
                .with_table_partition_cols(partition_fields)
                .build(),
        );
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::parse(&self.pinned.store)?, source)
            .with_file_groups(groups)
            .with_projection_indices(Some(read.iter().map(|&i| position[i]).collect()))?
            .with_limit(if predicate.is_none() { limit } else { None })
            .build();
        let mut plan = format.create_physical_plan(state, config).await?;

        // Now the columns are `read`, in scan order.
        let read_schema = Arc::new(schema.project(&read)?);
        if let Some(predicate) = predicate {
            let df_read = DFSchema::try_from(read_schema.as_ref().clone())?;
            let physical = state.create_physical_expr(predicate, &df_read)?;
            plan = Arc::new(FilterExec::try_new(physical, plan)?);
        }
        if read != wanted {
            let exprs = wanted
                .iter()
                .map(|i| {
                    let at = read.iter().position(|r| r == i).unwrap_or_default();
                    let name = schema.field(*i).name().clone();
                    (
                        Arc::new(Column::new(&name, at))
                            as Arc<dyn datafusion::physical_expr::PhysicalExpr>,
                        name,
                    )
                })
                .collect::<Vec<_>>();
            plan = Arc::new(ProjectionExec::try_new(exprs, plan)?);
        }
        Ok(plan)
    }
}

impl PinnedDeltaTable {
    /// The files in `n` groups of about equal bytes (largest first, each to the lightest group).
    fn file_groups(&self, n: usize) -> Result<Vec<FileGroup>> {
        let fields: Vec<&Field> = self
            .pinned
            .partition_columns
            .iter()
            .map(|c| self.schema.field_with_name(c))
            .collect::<std::result::Result<_, _>>()?;
        let mut files: Vec<&PinnedFile> = self.pinned.files.iter().collect();
        files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
        let n = n.clamp(1, files.len().max(1));
        let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); n];
        for file in files {
            let values = file
                .partition_values
                .iter()
                .zip(&fields)
                .map(|(v, f)| self.partition_value(v.as_deref(), f))
                .collect::<Result<Vec<_>>>()?;
            let Some(lightest) = groups.iter_mut().min_by_key(|(bytes, _)| *bytes) else {
                return Err(datafusion::common::internal_datafusion_err!(
                    "pinned table: no file group"
                ));
            };
            lightest.0 += file.size;
            // The location exactly as encoded (`PartitionedFile::new` would encode it again).
            let location = Path::parse(&file.path)
                .map_err(|e| datafusion::common::internal_datafusion_err!("pinned table: {e}"))?;
            let meta = object_store::ObjectMeta {
                location,
                last_modified: chrono::DateTime::from_timestamp_millis(file.modified_ms)
                    .unwrap_or_default(),
                size: file.size,
                e_tag: None,
                version: None,
            };
            lightest
                .1
                .push(PartitionedFile::new_from_meta(meta).with_partition_values(values));
        }
        Ok(groups
            .into_iter()
            .filter(|(_, files)| !files.is_empty())
            .map(|(_, files)| FileGroup::new(files))
            .collect())
    }
}

/// Per file of `state` (in the log's order), whether its statistics allow a row that passes
/// `filters`; `None` when no filter can tell. Only the conjuncts over integer, date and timestamp
/// columns outside the partition columns count (strings' statistics may be truncated, floats'
/// are NaN-blind), and a timestamp's maximum is widened by a millisecond: the log keeps
/// timestamps to the millisecond, truncated, so a file's true maximum may lie just above it.
fn files_kept(
    state: &deltalake::table::state::DeltaTableState,
    schema: &SchemaRef,
    partition_columns: &[String],
    filters: &[Expr],
) -> Option<Vec<bool>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::utils::split_conjunction;
    let usable = |expr: &Expr| {
        let columns = expr.column_refs();
        !columns.is_empty()
            && columns.iter().all(|c| {
                !partition_columns.contains(&c.name)
                    && schema
                        .field_with_name(&c.name)
                        .is_ok_and(|f| super::table::bounded_type(f.data_type()))
            })
    };
    let conjuncts: Vec<Expr> = filters
        .iter()
        .flat_map(split_conjunction)
        .filter(|e| usable(e))
        .cloned()
        .collect();
    let predicate = conjunction(conjuncts)?
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) => Transformed::yes(Expr::Column(
                    datafusion::common::Column::new_unqualified(c.name),
                )),
                other => Transformed::no(other),
            })
        })
        .ok()?
        .data;
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).ok()?;
    let physical = datafusion::physical_expr::create_physical_expr(
        &predicate,
        &df_schema,
        &datafusion::execution::context::ExecutionProps::new(),
        &Default::default(),
    )
    .ok()?;
    let pruning = datafusion::physical_optimizer::pruning::PruningPredicateBuilder::new()
        .with_file_schema(schema.clone())
        .build(physical)?;
    pruning.prune(&WidenedStatistics(state.log_data())).ok()
}

/// A table version's file statistics with every timestamp maximum raised by a millisecond (see
/// [`files_kept`]).
struct WidenedStatistics<'a>(deltalake::kernel::LogDataHandler<'a>);

impl datafusion::common::pruning::PruningStatistics for WidenedStatistics<'_> {
    fn min_values(&self, column: &datafusion::common::Column) -> Option<arrow::array::ArrayRef> {
        self.0.min_values(column)
    }

    fn max_values(&self, column: &datafusion::common::Column) -> Option<arrow::array::ArrayRef> {
        use arrow::array::AsArray;
        use arrow::datatypes::{DataType, Int64Type, TimeUnit};
        let max = self.0.max_values(column)?;
        let DataType::Timestamp(unit, _) = max.data_type() else {
            return Some(max);
        };
        let millisecond = match unit {
            TimeUnit::Second | TimeUnit::Millisecond => 1,
            TimeUnit::Microsecond => 1_000,
            TimeUnit::Nanosecond => 1_000_000,
        };
        let ints = arrow::compute::cast(&max, &DataType::Int64).ok()?;
        let widened = ints
            .as_primitive::<Int64Type>()
            .unary::<_, Int64Type>(|v| v.saturating_add(millisecond));
        arrow::compute::cast(&widened, max.data_type()).ok()
    }

    fn num_containers(&self) -> usize {
        self.0.num_containers()
    }

    fn null_counts(&self, column: &datafusion::common::Column) -> Option<arrow::array::ArrayRef> {
        self.0.null_counts(column)
    }

    fn row_counts(&self) -> Option<arrow::array::ArrayRef> {
        self.0.row_counts()
    }

    fn contained(
        &self,
        column: &datafusion::common::Column,
        values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<arrow::array::BooleanArray> {
        self.0.contained(column, values)
    }
}

/// Encodes warehouse tables as [`PinnedDeltaTable`]s and decodes those; everything else goes to
/// `inner` (Ballista's codec).
#[derive(Debug)]
pub struct PinnedTablesCodec {
    inner: Arc<dyn LogicalExtensionCodec>,
}

impl PinnedTablesCodec {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LogicalExtensionCodec>) -> Self {
        Self { inner }
    }
}

impl LogicalExtensionCodec for PinnedTablesCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        if PinnedDeltaTable::is_encoded(buf) {
            return Ok(Arc::new(PinnedDeltaTable::decode(buf)?));
        }
        self.inner
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(table) = super::as_warehouse_table(&node) {
            return PinnedDeltaTable::from_warehouse_table(table_ref, table)?.encode(buf);
        }
        if let Some(table) =
            (node.as_ref() as &dyn std::any::Any).downcast_ref::<PinnedDeltaTable>()
        {
            return table.encode(buf);
        }
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}
