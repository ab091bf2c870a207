//! The probe side: one stream per left partition. It waits for the shared right side, then
//! looks each left batch up and emits it with the matched right columns, in the left's order.
//! When the right side was spilled, it runs the join bucket by bucket instead (see
//! [`super::spill`]). The matching itself is the kernel's; this reads, measures and emits.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use arrow::compute::{SortOptions, concat_batches, filter_record_batch};
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalExprRef, PhysicalSortExpr};
use datafusion::physical_plan::metrics::BaselineMetrics;
use datafusion::physical_plan::sorts::streaming_merge::{SortedSpillFile, StreamingMergeBuilder};
use datafusion::physical_plan::spill::{SpillManager, get_record_batch_memory_size};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};

use super::build::{BuildSide, ORDINAL, RightExprs, with_ordinal};
use super::exec::SharedBuild;
use super::kernel::{Direction, IndexBuilder, KernelOptions, RightIndex, RowRef};
use super::logical::{AsOfJoinType, Tolerance};
use super::metrics::AsOfJoinMetrics;
use super::spill::{BucketWriter, buckets_of};
use super::tolerance::tolerance_bound;

/// How a left batch is joined: the left expressions and the join's options.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) left_keys: Vec<PhysicalExprRef>,
    pub(crate) left_time: PhysicalExprRef,
    pub(crate) tolerance: Option<Tolerance>,
    pub(crate) direction: Direction,
    pub(crate) join_type: AsOfJoinType,
}

impl Probe {
    fn keys(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let rows = batch.num_rows();
        self.left_keys
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(rows))
            .collect()
    }

    /// Joins one left batch against the indexes. The output is the first `left_width` columns
    /// of `batch`, then the right columns, then (for spilled runs) the rest of `batch`.
    fn join(
        &self,
        shards: &[&RightIndex],
        batch: &RecordBatch,
        left_width: usize,
        schema: &SchemaRef,
        metrics: &AsOfJoinMetrics,
    ) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        metrics.left_rows.add(rows);
        let timer = metrics.probe_time.timer();
        let keys = self.keys(batch)?;
        let time = self.left_time.evaluate(batch)?.into_array(rows)?;
        let bound = self
            .tolerance
            .as_ref()
            .map(|t| tolerance_bound(&time, t, self.direction))
            .transpose()?;

        // Each key lives in exactly one shard, so at most one shard answers for a row.
        let mut refs: Vec<Option<(usize, RowRef)>> = vec![None; rows];
        for (shard, index) in shards.iter().enumerate() {
            if index.num_rows() == 0 {
                continue;
            }
            let found = index.probe(&keys, &time, bound.as_ref())?;
            for (slot, hit) in refs.iter_mut().zip(found) {
                if let Some(row) = hit {
                    *slot = Some((shard, row));
                }
            }
        }
        let matched = refs.iter().filter(|r| r.is_some()).count();
        metrics.matched_rows.add(matched);
        // The right columns for every left row (NULL where unmatched), from whichever shards
        // matched, in one interleave.
        let right = RightIndex::gather_from(shards, &refs)?;
        timer.done();

        let mut columns: Vec<ArrayRef> = batch.columns()[..left_width].to_vec();
        columns.extend(right);
        columns.extend(batch.columns()[left_width..].iter().cloned());
        let out = RecordBatch::try_new(schema.clone(), columns)?;
        match self.join_type {
            AsOfJoinType::Left => Ok(out),
            AsOfJoinType::Inner if matched == rows => Ok(out),
            AsOfJoinType::Inner => {
                let keep: BooleanArray = refs.iter().map(|r| Some(r.is_some())).collect();
                Ok(filter_record_batch(&out, &keep)?)
            }
        }
    }
}

/// Everything a spilled run needs besides the left stream.
#[derive(Clone)]
pub(crate) struct SpillContext {
    pub(crate) right: Arc<RightExprs>,
    pub(crate) kernel: KernelOptions,
    pub(crate) right_schema: SchemaRef,
    /// The right columns the output shows (see [`RightIndex::retain_columns`]).
    pub(crate) right_output: Vec<usize>,
    pub(crate) context: Arc<TaskContext>,
    pub(crate) partition: usize,
    /// Taken by a spilled partition from its first bucket to the end of its output, so the
    /// partitions of one join take turns: each bucket index and each merge then has the pool to
    /// itself instead of a merge in one partition starving an index in another.
    pub(crate) turn: Arc<tokio::sync::Mutex<()>>,
}

/// Where a probe stream is.
enum State {
    /// Waiting for the right side.
    Building(SharedBuild),
    /// Reading left batches against the in-memory indexes.
    Probing(Arc<BuildSide>),
    /// Streaming the result of a spilled run.
    Spilled(SendableRecordBatchStream),
    /// The left input ended (or failed).
    Done,
}

/// The output stream of one partition of an as-of join.
pub(crate) struct AsOfStream {
    schema: SchemaRef,
    left: Option<SendableRecordBatchStream>,
    state: State,
    probe: Probe,
    spill: SpillContext,
    metrics: AsOfJoinMetrics,
}

impl AsOfStream {
    pub(crate) fn new(
        schema: SchemaRef,
        left: SendableRecordBatchStream,
        build: SharedBuild,
        probe: Probe,
        spill: SpillContext,
        metrics: AsOfJoinMetrics,
    ) -> Self {
        Self {
            schema,
            left: Some(left),
            state: State::Building(build),
            probe,
            spill,
            metrics,
        }
    }

    fn start_spilled(&mut self, side: Arc<BuildSide>) -> Result<SendableRecordBatchStream> {
        let left = self
            .left
            .take()
            .ok_or_else(|| DataFusionError::Internal("as-of stream: left taken twice".into()))?;
        let run = spilled_join(
            left,
            side,
            self.probe.clone(),
            self.spill.clone(),
            self.schema.clone(),
            self.metrics.clone(),
        );
        let stream = futures::stream::once(run).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// Runs the join bucket by bucket (the right side is in bucket files) and returns the output,
/// merged back into the left's order.
async fn spilled_join(
    mut left: SendableRecordBatchStream,
    side: Arc<BuildSide>,
    probe: Probe,
    spill: SpillContext,
    schema: SchemaRef,
    metrics: AsOfJoinMetrics,
) -> Result<SendableRecordBatchStream> {
    let BuildSide::Spilled {
        buckets,
        manager: right_manager,
    } = side.as_ref()
    else {
        return Err(DataFusionError::Internal(
            "as-of join: spilled run without spilled right side".into(),
        ));
    };
    let env = spill.context.runtime_env();
    let pool = spill.context.memory_pool();
    let partition = spill.partition;

    // 1. The left partition into buckets, each row tagged with its ordinal.
    let left_schema = left.schema();
    let left_width = left_schema.fields().len();
    let tagged = with_ordinal(&left_schema);
    let left_manager = SpillManager::new(env.clone(), metrics.spill.clone(), tagged.clone());
    let mut writer = BucketWriter::new(left_manager.clone(), format!("AsOfJoin[{partition}]"));
    let mut ordinal = 0u64;
    while let Some(batch) = left.next().await {
        let batch = batch?;
        let rows = batch.num_rows() as u64;
        if rows == 0 {
            continue;
        }
        let keys = probe.keys(&batch)?;
        let buckets_of_rows = buckets_of(&keys, batch.num_rows())?;
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_iter_values(
            ordinal..ordinal + rows,
        )));
        ordinal += rows;
        writer.write(
            &RecordBatch::try_new(tagged.clone(), columns)?,
            &buckets_of_rows,
        )?;
    }
    let left_files = writer.finish()?;
    let turn = spill.turn.clone().lock_owned().await;

    // 2. Each bucket: index the right rows, probe the left rows, spill the results.
    let results_schema = with_ordinal(&schema);
    let results_manager =
        SpillManager::new(env.clone(), metrics.spill.clone(), results_schema.clone());
    let reservation = MemoryConsumer::new(format!("AsOfJoin[{partition}]")).register(pool);
    let mut results = Vec::new();
    for (bucket, left_file) in left_files.into_iter().enumerate() {
        let Some(left_file) = left_file else {
            continue;
        };
        let timer = metrics.build_time.timer();
        let too_big = |e: DataFusionError| {
            DataFusionError::ResourcesExhausted(format!(
                "as-of join: one bucket of the right input does not fit in memory even after \
                 spilling (many rows share a few keys?): {e}"
            ))
        };
        // Batches read back from a spill file are slices of one buffer per message, which
        // Arrow's size functions count once per column; the file sizes are the honest measure,
        // and one contiguous batch per bucket keeps the index's own accounting exact.
        let on_disk: u64 = buckets[bucket].iter().filter_map(|f| f.size()).sum();
        reservation
            .try_resize(2 * usize::try_from(on_disk).unwrap_or(usize::MAX))
            .map_err(too_big)?;
        let mut parts = Vec::new();
        for file in &buckets[bucket] {
            let mut stream = right_manager.read_spill_as_stream(file.clone(), None)?;
            while let Some(batch) = stream.next().await {
                parts.push(batch?);
            }
        }
        let mut builder = IndexBuilder::try_new(spill.kernel.clone(), spill.right_schema.clone())?;
        if !parts.is_empty() {
            let whole = concat_batches(&spill.right_schema, &parts)?;
            drop(parts);
            spill.right.push(&mut builder, whole)?;
        }
        reservation
            .try_resize(builder.memory_size())
            .map_err(too_big)?;
        reservation
            .try_resize(builder.memory_size() + builder.finish_scratch_size())
            .map_err(too_big)?;
        let mut index = builder.finish()?;
        index.retain_columns(&spill.right_output)?;
        reservation
            .try_resize(index.memory_size())
            .map_err(too_big)?;
        timer.done();
        let mut out = BucketWriter::new(
            results_manager.clone(),
            format!("AsOfJoin[{partition}] out"),
        );
        let mut largest = 0;
        let mut stream = left_manager.read_spill_as_stream(left_file, None)?;
        while let Some(batch) = stream.next().await {
            let joined = probe.join(&[&index], &batch?, left_width, &results_schema, &metrics)?;
            if joined.num_rows() > 0 {
                largest = largest.max(get_record_batch_memory_size(&joined));
                out.write(&joined, &vec![0; joined.num_rows()])?;
            }
        }
        drop(index);
        reservation.free();
        results.extend(
            out.finish()?
                .into_iter()
                .flatten()
                .map(|file| SortedSpillFile {
                    file,
                    max_record_batch_memory: largest,
                }),
        );
    }

    // 3. Merge the buckets' results back into the left's order. The merge reads as many result
    // files at once as memory allows, merging in several passes when it must.
    let ordinal_column = results_schema.fields().len() - 1;
    let ordering = LexOrdering::new(vec![PhysicalSortExpr::new(
        Arc::new(Column::new(ORDINAL, ordinal_column)),
        SortOptions::default(),
    )])
    .ok_or_else(|| DataFusionError::Internal("as-of merge ordering".into()))?;
    if results.is_empty() {
        drop(turn);
        return Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::empty(),
        )));
    }
    let merged = StreamingMergeBuilder::new()
        .with_sorted_spill_files(results)
        .with_spill_manager(results_manager)
        .with_schema(results_schema)
        .with_expressions(&ordering)
        .with_metrics(BaselineMetrics::new(
            &datafusion::physical_plan::metrics::ExecutionPlanMetricsSet::new(),
            partition,
        ))
        .with_batch_size(spill.context.session_config().batch_size())
        // The merge can merge in passes and spill between them, so it takes only its fair
        // share of the pool and never starves another partition's bucket index.
        .with_reservation(
            MemoryConsumer::new(format!("AsOfJoin[{partition}] merge"))
                .with_can_spill(true)
                .register(spill.context.memory_pool()),
        )
        .build()?;
    let projection: Vec<usize> = (0..ordinal_column).collect();
    let output = merged.map(move |batch| {
        // The turn ends when this stream is dropped (finished or cancelled).
        let _turn = &turn;
        Ok(batch?.project(&projection)?)
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
}

impl Stream for AsOfStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut self.state {
                State::Building(build) => match build.poll_unpin(cx) {
                    Poll::Ready(Ok(side)) => match side.as_ref() {
                        BuildSide::Memory { .. } => self.state = State::Probing(side),
                        BuildSide::Spilled { .. } => match self.start_spilled(side) {
                            Ok(stream) => self.state = State::Spilled(stream),
                            Err(err) => {
                                self.state = State::Done;
                                return Poll::Ready(Some(Err(err)));
                            }
                        },
                    },
                    Poll::Ready(Err(err)) => {
                        self.state = State::Done;
                        return Poll::Ready(Some(Err(DataFusionError::Shared(err))));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Probing(side) => {
                    let side = side.clone();
                    let Some(left) = self.left.as_mut() else {
                        self.state = State::Done;
                        continue;
                    };
                    match left.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(batch))) => {
                            let elapsed = self.metrics.baseline.elapsed_compute().clone();
                            let timer = elapsed.timer();
                            let out = match side.as_ref() {
                                BuildSide::Memory { shards, .. } => {
                                    let shards: Vec<&RightIndex> = shards.iter().collect();
                                    let width = batch.num_columns();
                                    self.probe.join(
                                        &shards,
                                        &batch,
                                        width,
                                        &self.schema,
                                        &self.metrics,
                                    )
                                }
                                BuildSide::Spilled { .. } => Err(DataFusionError::Internal(
                                    "as-of join: probing a spilled side".into(),
                                )),
                            };
                            timer.done();
                            match out {
                                Ok(out) if out.num_rows() == 0 => continue,
                                Ok(out) => {
                                    let poll = Poll::Ready(Some(Ok(out)));
                                    return self.metrics.baseline.record_poll(poll);
                                }
                                Err(err) => {
                                    self.state = State::Done;
                                    return Poll::Ready(Some(Err(err)));
                                }
                            }
                        }
                        Poll::Ready(Some(Err(err))) => {
                            self.state = State::Done;
                            return Poll::Ready(Some(Err(err)));
                        }
                        Poll::Ready(None) => {
                            self.state = State::Done;
                            self.metrics.baseline.done();
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Spilled(stream) => match stream.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(batch))) => {
                        return self
                            .metrics
                            .baseline
                            .record_poll(Poll::Ready(Some(Ok(batch))));
                    }
                    Poll::Ready(Some(Err(err))) => {
                        self.state = State::Done;
                        return Poll::Ready(Some(Err(err)));
                    }
                    Poll::Ready(None) => {
                        self.state = State::Done;
                        self.metrics.baseline.done();
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

impl RecordBatchStream for AsOfStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
