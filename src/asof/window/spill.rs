//! Spilling: how a window join runs when its right input does not fit in memory. The same plan
//! as the as-of join's (`asof::spill`): both sides split by a hash of their keys into bucket
//! files, each bucket aggregated alone against an index of its right rows, and the results
//! merged back into the left's order by each left row's ordinal. A key lives in one bucket on
//! both sides, and a window only holds rows of its key, so every aggregate is the one an
//! in-memory run computes: the same bytes.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, SpillFile, TaskContext};
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use super::kernel::{RightArrays, WindowIndex, WindowSpec};
use crate::asof::bucket::{
    BucketWriter, bucket_with_ordinal, buckets_of, contiguous, merge_by_ordinal,
};
use crate::asof::build::with_ordinal;

/// The right input in bucket files, and how to read them.
pub(super) struct SpilledRight {
    pub files: Vec<Option<Arc<dyn SpillFile>>>,
    pub manager: SpillManager,
}

/// What evaluating the right and left sides needs.
#[derive(Clone)]
pub(super) struct Sides {
    pub right_keys: Vec<PhysicalExprRef>,
    pub right_time: PhysicalExprRef,
    pub known_at: Option<PhysicalExprRef>,
    pub tiebreak: Vec<PhysicalExprRef>,
    pub args: Vec<Option<PhysicalExprRef>>,
    pub left_keys: Vec<PhysicalExprRef>,
    pub left_time: PhysicalExprRef,
    pub spec: WindowSpec,
}

pub(super) fn evaluate(
    expr: &PhysicalExprRef,
    batch: &RecordBatch,
) -> Result<arrow::array::ArrayRef> {
    expr.evaluate(batch)?.into_array(batch.num_rows())
}

impl Sides {
    /// The right side's arrays over `batch`.
    pub fn right_arrays(&self, batch: &RecordBatch) -> Result<RightArrays> {
        Ok(RightArrays {
            keys: self
                .right_keys
                .iter()
                .map(|e| evaluate(e, batch))
                .collect::<Result<_>>()?,
            time: evaluate(&self.right_time, batch)?,
            known: self
                .known_at
                .as_ref()
                .map(|e| evaluate(e, batch))
                .transpose()?,
            tiebreak: self
                .tiebreak
                .iter()
                .map(|e| evaluate(e, batch))
                .collect::<Result<_>>()?,
            args: self
                .args
                .iter()
                .map(|e| e.as_ref().map(|e| evaluate(e, batch)).transpose())
                .collect::<Result<_>>()?,
        })
    }

    /// The left side's keys and time over `batch`.
    pub fn left_arrays(&self, batch: &RecordBatch) -> Result<super::labels::LeftArrays> {
        Ok(super::labels::LeftArrays {
            keys: self
                .left_keys
                .iter()
                .map(|e| evaluate(e, batch))
                .collect::<Result<_>>()?,
            time: evaluate(&self.left_time, batch)?,
        })
    }

    /// The output columns of one left batch: its columns, then the aggregates.
    pub fn aggregate(
        &self,
        index: &WindowIndex,
        batch: &RecordBatch,
    ) -> Result<Vec<arrow::array::ArrayRef>> {
        let left = self.left_arrays(batch)?;
        let mut columns = batch.columns().to_vec();
        columns.extend(index.aggregate(&left.keys, &left.time)?);
        Ok(columns)
    }
}

/// Writes right batches to bucket files by the hash of their keys.
pub(super) struct RightBuckets {
    writer: BucketWriter,
    manager: SpillManager,
}

impl RightBuckets {
    pub fn new(manager: SpillManager, context: &TaskContext) -> Self {
        Self {
            writer: BucketWriter::new(manager.clone(), context, "WindowJoin right"),
            manager,
        }
    }

    pub fn write(&mut self, sides: &Sides, batch: &RecordBatch) -> Result<()> {
        let keys = sides
            .right_keys
            .iter()
            .map(|e| evaluate(e, batch))
            .collect::<Result<Vec<_>>>()?;
        let buckets = buckets_of(&keys, batch.num_rows())?;
        self.writer.write(batch, &buckets)
    }

    pub fn finish(self) -> Result<SpilledRight> {
        Ok(SpilledRight {
            files: self.writer.finish()?,
            manager: self.manager,
        })
    }
}

/// Where a spilled run happens: the task, the operator's metrics, the left partition, and the
/// turn the partitions take.
pub(super) struct SpillRun {
    pub context: Arc<TaskContext>,
    pub metrics: ExecutionPlanMetricsSet,
    pub partition: usize,
    pub turn: Arc<tokio::sync::Mutex<()>>,
}

/// Runs one left partition bucket by bucket against the spilled right side; the output is in
/// the left's order.
pub(super) async fn spilled_window(
    left: SendableRecordBatchStream,
    right: &SpilledRight,
    sides: &Sides,
    schema: SchemaRef,
    run: SpillRun,
) -> Result<SendableRecordBatchStream> {
    let SpillRun {
        context,
        metrics,
        partition,
        turn,
    } = run;
    let (context, metrics) = (&context, &metrics);
    let spill_metrics = datafusion::physical_plan::metrics::SpillMetrics::new(metrics, partition);
    // 1. The left partition into buckets, each row tagged with its ordinal.
    let left_schema = left.schema();
    let tagged = with_ordinal(&left_schema);
    let left_manager =
        SpillManager::new(context.runtime_env(), spill_metrics.clone(), tagged.clone());
    let left_keys = |batch: &RecordBatch| -> Result<Vec<arrow::array::ArrayRef>> {
        sides.left_keys.iter().map(|e| evaluate(e, batch)).collect()
    };
    let left_files = bucket_with_ordinal(
        left,
        left_keys,
        tagged,
        left_manager.clone(),
        context,
        format!("WindowJoin[{partition}] left"),
    )
    .await?;

    // 2. Each bucket: index the right rows, aggregate the left rows, spill the results (in
    //    ordinal order, as the left rows were written). The partitions take turns, from their
    //    first bucket to the end of their output, so each bucket index and each merge has the
    //    pool to itself.
    let turn = turn.lock_owned().await;
    let results_schema = with_ordinal(&schema);
    let results_manager =
        SpillManager::new(context.runtime_env(), spill_metrics, results_schema.clone());
    let reservation = MemoryConsumer::new(format!("WindowJoin[{partition}] bucket"))
        .register(context.memory_pool());
    let width = left_schema.fields().len();
    let mut results = Vec::new();
    for (bucket, left_file) in left_files.into_iter().enumerate() {
        let Some(left_file) = left_file else { continue };
        let index = index_bucket(right, bucket, sides, &reservation).await?;
        let mut out = BucketWriter::new(
            results_manager.clone(),
            context,
            format!("WindowJoin[{partition}] out"),
        );
        let mut stream = left_manager.read_spill_as_stream(left_file, None)?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let ordinals = batch.column(width).clone();
            let mut columns =
                sides.aggregate(&index, &batch.project(&(0..width).collect::<Vec<_>>())?)?;
            columns.push(ordinals);
            let joined = RecordBatch::try_new(results_schema.clone(), columns)?;
            out.write(&joined, &vec![0; joined.num_rows()])?;
        }
        drop(index);
        reservation.free();
        results.extend(out.finish_sorted()?);
    }
    if results.is_empty() {
        return Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::empty(),
        )));
    }

    // 3. Merge the buckets' results back into the left's order and drop the ordinal.
    merge_by_ordinal(
        results,
        results_manager,
        results_schema,
        schema,
        context,
        format!("WindowJoin[{partition}] merge"),
        turn,
    )
}

/// The index of one bucket of the right input; a resources error when even one bucket does
/// not fit.
async fn index_bucket(
    right: &SpilledRight,
    bucket: usize,
    sides: &Sides,
    reservation: &MemoryReservation,
) -> Result<WindowIndex> {
    let too_big = |e: DataFusionError| {
        DataFusionError::ResourcesExhausted(format!(
            "window join: one bucket of the right input does not fit in memory even after \
             spilling (many rows share a few keys?): {e}"
        ))
    };
    let Some(file) = right.files.get(bucket).cloned().flatten() else {
        let empty = RecordBatch::new_empty(right.manager.schema().clone());
        return WindowIndex::build(sides.spec.clone(), sides.right_arrays(&empty)?);
    };
    let on_disk = file.size().unwrap_or(0);
    reservation
        .try_resize(usize::try_from(on_disk).unwrap_or(usize::MAX))
        .map_err(too_big)?;
    let mut parts = Vec::new();
    let mut stream = right.manager.read_spill_as_stream(file, None)?;
    while let Some(batch) = stream.next().await {
        parts.push(batch?);
    }
    let whole = contiguous(right.manager.schema(), &parts)?;
    drop(parts);
    reservation
        .try_resize(2 * whole.get_array_memory_size())
        .map_err(too_big)?;
    let index = WindowIndex::build(sides.spec.clone(), sides.right_arrays(&whole)?)?;
    drop(whole);
    reservation
        .try_resize(index.memory_size())
        .map_err(too_big)?;
    Ok(index)
}
