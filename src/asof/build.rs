//! The right side of an as-of join: read once, shared by every left partition.
//!
//! Each right partition is read by its own task into an [`IndexBuilder`], accounting its memory
//! as it grows (`AsOfJoin[build n]`). When the pool refuses more, that task spills what it holds
//! into bucket files and keeps spilling what it reads; if any task spilled, the finished indexes
//! of the others are spilled too, and the join runs bucket by bucket (see [`super::spill`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SpillFile, TaskContext};
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::SpillMetrics;
use datafusion::physical_plan::spill::SpillManager;
use futures::StreamExt;

use super::bucket::{BUCKETS, BucketWriter, buckets_of};
use super::kernel::{IndexBuilder, KernelOptions, RightIndex};
use super::metrics::AsOfJoinMetrics;

/// The expressions evaluated on right batches.
#[derive(Debug, Clone)]
pub(crate) struct RightExprs {
    pub(crate) keys: Vec<PhysicalExprRef>,
    pub(crate) time: PhysicalExprRef,
    pub(crate) known_at: Option<PhysicalExprRef>,
    pub(crate) tiebreak: Vec<PhysicalExprRef>,
}

impl RightExprs {
    fn eval(e: &PhysicalExprRef, batch: &RecordBatch) -> Result<ArrayRef> {
        e.evaluate(batch)?.into_array(batch.num_rows())
    }

    /// The key arrays of a batch.
    pub(crate) fn keys(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.keys.iter().map(|e| Self::eval(e, batch)).collect()
    }

    /// Evaluates everything and pushes the batch into `builder`.
    pub(crate) fn push(&self, builder: &mut IndexBuilder, batch: RecordBatch) -> Result<()> {
        let keys = self.keys(&batch)?;
        let time = Self::eval(&self.time, &batch)?;
        let known = self
            .known_at
            .as_ref()
            .map(|e| Self::eval(e, &batch))
            .transpose()?;
        let tiebreak = self
            .tiebreak
            .iter()
            .map(|e| Self::eval(e, &batch))
            .collect::<Result<Vec<_>>>()?;
        builder.push(batch, &keys, &time, known.as_ref(), &tiebreak)
    }

    /// Spills batches into bucket files by their keys.
    fn spill(&self, writer: &mut BucketWriter, batch: &RecordBatch) -> Result<()> {
        let keys = self.keys(batch)?;
        writer.write(batch, &buckets_of(&keys, batch.num_rows())?)
    }
}

/// The right side, built.
pub(crate) enum BuildSide {
    /// Everything fit: one index per right partition.
    Memory {
        shards: Vec<RightIndex>,
        _reservations: Vec<MemoryReservation>,
    },
    /// The right side is in bucket files (one list of files per bucket).
    Spilled {
        buckets: Vec<Vec<Arc<dyn SpillFile>>>,
        manager: SpillManager,
    },
}

impl std::fmt::Debug for BuildSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildSide::Memory { shards, .. } => f
                .debug_struct("Memory")
                .field(
                    "rows",
                    &shards.iter().map(RightIndex::num_rows).sum::<usize>(),
                )
                .finish(),
            BuildSide::Spilled { buckets, .. } => f
                .debug_struct("Spilled")
                .field("files", &buckets.iter().map(Vec::len).sum::<usize>())
                .finish(),
        }
    }
}

/// What one right partition became.
enum Shard {
    Memory(Box<RightIndex>, MemoryReservation),
    Spilled(Vec<Option<Arc<dyn SpillFile>>>),
}

/// Reads one right partition into an index, or into bucket files when memory runs out.
pub(crate) struct BuildJob {
    pub(crate) right: Arc<dyn ExecutionPlan>,
    pub(crate) exprs: Arc<RightExprs>,
    pub(crate) kernel: KernelOptions,
    pub(crate) metrics: AsOfJoinMetrics,
    pub(crate) partition: usize,
    pub(crate) context: Arc<TaskContext>,
}

/// Memory ran out while building: a clear message, or spilling when the join has keys.
fn out_of_memory(err: DataFusionError, keys: bool) -> Result<()> {
    if keys {
        Ok(())
    } else {
        Err(DataFusionError::ResourcesExhausted(format!(
            "the right side of an as-of join without keys must fit in memory (it cannot be split \
             by key): {err}"
        )))
    }
}

impl BuildJob {
    fn manager(&self) -> SpillManager {
        SpillManager::new(
            self.context.runtime_env(),
            self.metrics.spill.clone(),
            self.right.schema(),
        )
    }

    fn writer(&self) -> BucketWriter {
        BucketWriter::new(
            self.manager(),
            format!("AsOfJoin[build {}]", self.partition),
        )
    }

    async fn run(self) -> Result<Shard> {
        let reservation = MemoryConsumer::new(format!("AsOfJoin[build {}]", self.partition))
            .register(self.context.memory_pool());
        let mut stream = self.right.execute(self.partition, self.context.clone())?;
        let mut builder = Some(IndexBuilder::try_new(
            self.kernel.clone(),
            self.right.schema(),
        )?);
        let mut writer: Option<BucketWriter> = None;
        let has_keys = !self.exprs.keys.is_empty();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let rows = batch.num_rows();
            if rows == 0 {
                continue;
            }
            self.metrics.right_rows.add(rows);
            let timer = self.metrics.build_time.timer();
            if let Some(writer) = writer.as_mut() {
                self.exprs.spill(writer, &batch)?;
                timer.done();
                continue;
            }
            if let Some(b) = builder.as_mut() {
                self.exprs.push(b, batch)?;
                // Account before holding more: a limit that is too small spills here instead
                // of being exceeded.
                if let Err(err) = reservation.try_resize(b.memory_size()) {
                    out_of_memory(err, has_keys)?;
                    writer = Some(self.spill_builder(builder.take())?);
                    reservation.free();
                }
            }
            timer.done();
        }
        if let Some(writer) = writer {
            return Ok(Shard::Spilled(writer.finish()?));
        }
        let Some(builder) = builder else {
            return Err(DataFusionError::Internal(
                "as-of build: neither building nor spilling".into(),
            ));
        };
        let needed = builder.memory_size() + builder.finish_scratch_size();
        if let Err(err) = reservation.try_resize(needed) {
            out_of_memory(err, has_keys)?;
            let writer = self.spill_builder(Some(builder))?;
            reservation.free();
            return Ok(Shard::Spilled(writer.finish()?));
        }
        let timer = self.metrics.build_time.timer();
        let index = builder.finish()?;
        timer.done();
        reservation.try_resize(index.memory_size())?;
        Ok(Shard::Memory(Box::new(index), reservation))
    }

    fn spill_builder(&self, builder: Option<IndexBuilder>) -> Result<BucketWriter> {
        let mut writer = self.writer();
        for batch in builder.map(IndexBuilder::into_batches).unwrap_or_default() {
            self.exprs.spill(&mut writer, &batch)?;
        }
        Ok(writer)
    }
}

/// Builds the right partitions `partitions` (each by its own task, in parallel) and assembles
/// the result.
#[expect(
    clippy::too_many_arguments,
    reason = "what to read, how to index it, and where to account it"
)]
pub(crate) async fn build(
    right: Arc<dyn ExecutionPlan>,
    partitions: Vec<usize>,
    exprs: Arc<RightExprs>,
    kernel: KernelOptions,
    right_output: Vec<usize>,
    metrics: impl Fn(usize) -> AsOfJoinMetrics,
    spill_metrics: SpillMetrics,
    context: Arc<TaskContext>,
) -> Result<BuildSide> {
    use datafusion::common::runtime::SpawnedTask;
    let tasks: Vec<SpawnedTask<Result<Shard>>> = partitions
        .into_iter()
        .map(|partition| {
            let job = BuildJob {
                right: right.clone(),
                exprs: exprs.clone(),
                kernel: kernel.clone(),
                metrics: metrics(partition),
                partition,
                context: context.clone(),
            };
            SpawnedTask::spawn(job.run())
        })
        .collect();
    let mut shards = Vec::with_capacity(tasks.len());
    for task in tasks {
        let shard = task
            .join_unwind()
            .await
            .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
        shards.push(shard);
    }
    let manager = SpillManager::new(context.runtime_env(), spill_metrics, right.schema());
    if shards.iter().all(|s| matches!(s, Shard::Memory(..))) {
        let (shards, reservations) = shards
            .into_iter()
            .filter_map(|s| match s {
                Shard::Memory(index, reservation) => Some((*index, reservation)),
                Shard::Spilled(_) => None,
            })
            .map(|(mut index, reservation)| {
                // Only now: until every shard is built, any of them may still have to go to
                // disk, which needs the key and time columns.
                index.retain_columns(&right_output)?;
                reservation.try_resize(index.memory_size())?;
                Ok((index, reservation))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        return Ok(BuildSide::Memory {
            shards,
            _reservations: reservations,
        });
    }
    // One partition did not fit: the join runs bucket by bucket, so the rest go to disk too.
    let mut buckets: Vec<Vec<Arc<dyn SpillFile>>> = vec![Vec::new(); BUCKETS];
    for shard in shards {
        let files = match shard {
            Shard::Spilled(files) => files,
            Shard::Memory(index, reservation) => {
                let mut writer = BucketWriter::new(manager.clone(), "AsOfJoin[build]");
                for batch in index.into_batches() {
                    exprs.spill(&mut writer, &batch)?;
                }
                drop(reservation);
                writer.finish()?
            }
        };
        for (bucket, file) in files.into_iter().enumerate() {
            buckets[bucket].extend(file);
        }
    }
    Ok(BuildSide::Spilled { buckets, manager })
}

/// A schema with one more column, the ordinal that restores the left's order after spilling.
pub(crate) fn with_ordinal(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<arrow::datatypes::FieldRef> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(arrow::datatypes::Field::new(
        ORDINAL,
        arrow::datatypes::DataType::UInt64,
        false,
    )));
    Arc::new(arrow::datatypes::Schema::new(fields))
}

/// The name of the ordinal column.
pub(crate) const ORDINAL: &str = "__pitlake_left_ordinal";

/// A build in progress, whose result the partitions of one execution share.
pub(crate) type BuildFuture = futures::future::BoxFuture<
    'static,
    std::result::Result<Arc<BuildSide>, Arc<datafusion::error::DataFusionError>>,
>;

/// The shared handle on a [`BuildFuture`].
pub(crate) type SharedBuild = futures::future::Shared<BuildFuture>;
