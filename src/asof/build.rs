//! The right side of an as-of join: read once, shared by every left partition.
//!
//! Each right partition is decoded by its own task; one [`IndexBuilder`] groups their batches
//! as they come, accounting its memory as it grows (`AsOfJoin[build]`), and orders its groups
//! on every core when the input ends. When the pool refuses more, what it holds goes to bucket
//! files and so does the rest of the input; the join then runs bucket by bucket (see
//! [`super::spill`]). No hash repartition of the right input is needed: the one index holds
//! every key.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::common::runtime::SpawnedTask;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SpillFile, TaskContext};
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::spill::SpillManager;
use futures::StreamExt;

use super::bucket::{BucketWriter, buckets_of, write_giving_back};
use super::kernel::{IndexBuilder, KernelOptions, PreparedBatch, RightIndex};
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
        let prepared = self.prepare(builder.options(), builder.schema(), batch)?;
        builder.push_prepared(prepared)
    }

    /// Evaluates everything and prepares the batch for a builder of `opts` over `schema` (see
    /// [`IndexBuilder::prepare`]); any thread may do it.
    pub(crate) fn prepare(
        &self,
        opts: &KernelOptions,
        schema: &SchemaRef,
        batch: RecordBatch,
    ) -> Result<PreparedBatch> {
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
        IndexBuilder::prepare(opts, schema, batch, keys, &time, known.as_ref(), tiebreak)
    }

    /// Spills batches into bucket files by their keys.
    fn spill(&self, writer: &mut BucketWriter, batch: &RecordBatch) -> Result<()> {
        let keys = self.keys(batch)?;
        writer.write(batch, &buckets_of(&keys, batch.num_rows())?)
    }
}

/// The right side, built.
pub(crate) enum BuildSide {
    /// Everything fit: one index over the whole right input.
    Memory {
        index: Box<RightIndex>,
        _reservation: MemoryReservation,
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
            BuildSide::Memory { index, .. } => f
                .debug_struct("Memory")
                .field("rows", &index.num_rows())
                .finish(),
            BuildSide::Spilled { buckets, .. } => f
                .debug_struct("Spilled")
                .field("files", &buckets.iter().map(Vec::len).sum::<usize>())
                .finish(),
        }
    }
}

/// The right input being read: prepared batches from the reading tasks.
struct Input {
    rx: tokio::sync::mpsc::Receiver<Result<PreparedBatch>>,
    readers: Vec<SpawnedTask<()>>,
}

impl Input {
    /// The next prepared batch, or `None` once every reader has ended; a reader's error or
    /// panic is an error here.
    async fn next(&mut self) -> Result<Option<PreparedBatch>> {
        match self.rx.recv().await {
            Some(prepared) => prepared.map(Some),
            None => {
                for reader in self.readers.drain(..) {
                    reader
                        .join_unwind()
                        .await
                        .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?;
                }
                Ok(None)
            }
        }
    }
}

/// Reads the right partitions into one index, or into bucket files when memory runs out.
pub(crate) struct BuildJob {
    pub(crate) right: Arc<dyn ExecutionPlan>,
    /// The right partitions to read: all of them, or one in the co-partitioned mode.
    pub(crate) partitions: Vec<usize>,
    pub(crate) exprs: Arc<RightExprs>,
    pub(crate) kernel: KernelOptions,
    /// The right columns the output shows (ascending), all the index keeps once built.
    pub(crate) right_output: Vec<usize>,
    pub(crate) metrics: AsOfJoinMetrics,
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

    /// The right partitions' batches, prepared for the index (see [`RightExprs::prepare`]),
    /// each partition decoded and prepared by a task of its own. The tasks stop when the
    /// receiver is dropped.
    fn input(&self) -> Result<Input> {
        let (tx, rx) = tokio::sync::mpsc::channel(self.partitions.len().max(1));
        let schema = self.right.schema();
        let mut readers = Vec::with_capacity(self.partitions.len());
        for &partition in &self.partitions {
            let mut stream = self.right.execute(partition, self.context.clone())?;
            let tx: tokio::sync::mpsc::Sender<Result<PreparedBatch>> = tx.clone();
            let (exprs, kernel, schema) = (self.exprs.clone(), self.kernel.clone(), schema.clone());
            readers.push(SpawnedTask::spawn(async move {
                while let Some(batch) = stream.next().await {
                    let prepared = match batch {
                        Ok(batch) if batch.num_rows() == 0 => continue,
                        Ok(batch) => exprs.prepare(&kernel, &schema, batch),
                        Err(e) => Err(e),
                    };
                    let failed = prepared.is_err();
                    if tx.send(prepared).await.is_err() || failed {
                        break;
                    }
                }
            }));
        }
        Ok(Input { rx, readers })
    }

    /// Reads every partition into one [`IndexBuilder`] (the batches are grouped as they come,
    /// while the next ones are decoded), accounting its memory as it grows. When the pool
    /// refuses more, what is held goes to bucket files and so does the rest of the input.
    pub(crate) async fn run(self) -> Result<BuildSide> {
        let reservation =
            MemoryConsumer::new("AsOfJoin[build]").register(self.context.memory_pool());
        let started = std::time::Instant::now();
        let mut input = self.input()?;
        let mut builder = Some(IndexBuilder::try_new(
            self.kernel.clone(),
            self.right.schema(),
        )?);
        let mut writer: Option<BucketWriter> = None;
        let has_keys = !self.exprs.keys.is_empty();
        while let Some(prepared) = input.next().await? {
            self.metrics.right_rows.add(prepared.batch().num_rows());
            let timer = self.metrics.build_time.timer();
            if let Some(writer) = writer.as_mut() {
                self.exprs.spill(writer, prepared.batch())?;
                timer.done();
                continue;
            }
            if let Some(b) = builder.as_mut() {
                b.push_prepared(prepared)?;
                // Account before holding more: a limit that is too small spills here instead
                // of being exceeded.
                if let Err(err) = reservation.try_resize(b.memory_size()) {
                    out_of_memory(err, has_keys)?;
                    writer = Some(self.spill_builder(builder.take(), &reservation)?);
                    reservation.free();
                }
            }
            timer.done();
        }
        if let Some(writer) = writer {
            return self.spilled(writer);
        }
        let Some(builder) = builder else {
            return Err(DataFusionError::Internal(
                "as-of build: neither building nor spilling".into(),
            ));
        };
        let needed = builder.memory_size() + builder.finish_scratch_size();
        if let Err(err) = reservation.try_resize(needed) {
            out_of_memory(err, has_keys)?;
            let writer = self.spill_builder(Some(builder), &reservation)?;
            reservation.free();
            return self.spilled(writer);
        }
        let read = started.elapsed();
        let timer = self.metrics.build_time.timer();
        let threads = self.context.session_config().target_partitions();
        let mut index = builder.finish_with(threads)?;
        // Matching needs none of the columns now; those the output does not show go.
        index.retain_columns(&self.right_output)?;
        timer.done();
        tracing::debug!(
            target: "pitlake::asof",
            rows = index.num_rows(),
            groups = index.num_groups(),
            read_and_grouped_ms = read.as_millis() as u64,
            indexed_ms = (started.elapsed() - read).as_millis() as u64,
            "as-of index built"
        );
        reservation.try_resize(index.memory_size())?;
        Ok(BuildSide::Memory {
            index: Box::new(index),
            _reservation: reservation,
        })
    }

    /// Writes the batches `builder` holds to bucket files, giving back to the pool what each
    /// held as it goes ([`write_giving_back`]), and returns the writer.
    fn spill_builder(
        &self,
        builder: Option<IndexBuilder>,
        reservation: &MemoryReservation,
    ) -> Result<BucketWriter> {
        let mut writer = BucketWriter::new(self.manager(), &self.context, "AsOfJoin[build]");
        write_giving_back(
            builder.map(IndexBuilder::into_batches).unwrap_or_default(),
            reservation,
            RecordBatch::get_array_memory_size,
            |batch| self.exprs.spill(&mut writer, batch),
        )?;
        // What the pool held is free now, and the rest of the input goes to disk.
        crate::memory::release_free_memory();
        Ok(writer)
    }

    fn spilled(&self, writer: BucketWriter) -> Result<BuildSide> {
        let buckets = writer.finish()?.into_iter().map(Vec::from_iter).collect();
        Ok(BuildSide::Spilled {
            buckets,
            manager: self.manager(),
        })
    }
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
