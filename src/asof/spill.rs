//! Spilling: how the as-of join runs when its right input does not fit in memory.
//!
//! ```text
//!  right ──hash(keys)──► 64 bucket files          left partition ──hash(keys)──► 64 bucket files
//!                                                  (each row tagged with its ordinal)
//!  for each bucket b:  index(right b)  ◄── probe ── left b  ──► result file b (ordinal order)
//!  k-way merge of the result files by ordinal ──► output, in the left's order
//! ```
//!
//! A key lives in exactly one bucket on both sides, so each bucket is an independent as-of join
//! small enough to index in memory. Left rows keep their order: each bucket's results are in
//! ordinal order, and a streaming merge on the ordinal restores the partition's order. Memory
//! stays bounded by one bucket's index plus one batch per result file during the merge.
//!
//! Buckets are hashed with a seed of their own: in the co-partitioned mode the right input
//! arrives hash-partitioned on the same keys, and reusing that hash would put all of one
//! partition's keys in a few buckets.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, SpillFile, TaskContext};
use datafusion::physical_plan::sorts::streaming_merge::SortedSpillFile;
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tokio::sync::OwnedMutexGuard;

use super::bucket::{BucketWriter, bucket_with_ordinal, contiguous, merge_by_ordinal};
use super::build::{BuildSide, RightExprs, with_ordinal};
use super::kernel::{IndexBuilder, KernelOptions, RightIndex};
use super::metrics::AsOfJoinMetrics;
use super::probe::Probe;

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

/// Runs the join bucket by bucket (the right side is in bucket files) and returns the output,
/// merged back into the left's order.
pub(crate) async fn spilled_join(
    left: SendableRecordBatchStream,
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
    let run = SpilledRun {
        probe,
        spill,
        metrics,
        results_schema: with_ordinal(&schema),
    };

    // 1. The left partition into buckets, each row tagged with its ordinal.
    let mut left = run.bucket_left(left).await?;
    let turn = run.spill.turn.clone().lock_owned().await;

    // 2. Each bucket: index the right rows, probe the left rows, spill the results.
    let results_manager = run.spill_manager(run.results_schema.clone());
    let partition = run.spill.partition;
    let reservation = MemoryConsumer::new(format!("AsOfJoin[{partition}]"))
        .register(run.spill.context.memory_pool());
    let mut results = Vec::new();
    for (bucket, left_file) in std::mem::take(&mut left.files).into_iter().enumerate() {
        let Some(left_file) = left_file else {
            continue;
        };
        let index = run
            .index_bucket(&buckets[bucket], right_manager, &reservation)
            .await?;
        let joined = run
            .probe_bucket(&index, &left, left_file, &results_manager)
            .await?;
        drop(index);
        reservation.free();
        results.extend(joined);
    }

    // 3. Merge the buckets' results back into the left's order.
    if results.is_empty() {
        drop(turn);
        return Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::empty(),
        )));
    }
    run.merge(results, results_manager, schema, turn)
}

/// The left partition written to bucket files, each row tagged with its ordinal.
struct BucketedLeft {
    files: Vec<Option<Arc<dyn SpillFile>>>,
    manager: SpillManager,
    /// The left's columns, before the ordinal.
    width: usize,
}

/// One partition's spilled run.
struct SpilledRun {
    probe: Probe,
    spill: SpillContext,
    metrics: AsOfJoinMetrics,
    /// The output's schema plus the ordinal: the schema of the buckets' results.
    results_schema: SchemaRef,
}

impl SpilledRun {
    fn spill_manager(&self, schema: SchemaRef) -> SpillManager {
        SpillManager::new(
            self.spill.context.runtime_env(),
            self.metrics.spill.clone(),
            schema,
        )
    }

    /// Reads the whole left partition into bucket files, tagging each row with its ordinal.
    async fn bucket_left(&self, left: SendableRecordBatchStream) -> Result<BucketedLeft> {
        let left_schema = left.schema();
        let tagged = with_ordinal(&left_schema);
        let manager = self.spill_manager(tagged.clone());
        let partition = self.spill.partition;
        let files = bucket_with_ordinal(
            left,
            |batch| self.probe.keys(batch),
            tagged,
            manager.clone(),
            &self.spill.context,
            format!("AsOfJoin[{partition}]"),
        )
        .await?;
        Ok(BucketedLeft {
            files,
            manager,
            width: left_schema.fields().len(),
        })
    }

    /// Builds the index of one bucket of the right input, growing `reservation` before each
    /// step; fails with a resources error when even one bucket does not fit.
    async fn index_bucket(
        &self,
        files: &[Arc<dyn SpillFile>],
        manager: &SpillManager,
        reservation: &MemoryReservation,
    ) -> Result<RightIndex> {
        let timer = self.metrics.build_time.timer();
        let too_big = |e: DataFusionError| {
            DataFusionError::ResourcesExhausted(format!(
                "as-of join: one bucket of the right input does not fit in memory even after \
                 spilling (many rows share a few keys?): {e}"
            ))
        };
        // Batches read back from a spill file are slices of one buffer per message, which
        // Arrow's size functions count once per column; the file sizes are the honest measure,
        // and one contiguous batch per bucket keeps the index's own accounting exact.
        let on_disk: u64 = files.iter().filter_map(|f| f.size()).sum();
        reservation
            .try_resize(2 * usize::try_from(on_disk).unwrap_or(usize::MAX))
            .map_err(too_big)?;
        let mut parts = Vec::new();
        for file in files {
            let mut stream = manager.read_spill_as_stream(file.clone(), None)?;
            while let Some(batch) = stream.next().await {
                parts.push(batch?);
            }
        }
        let spill = &self.spill;
        let mut builder = IndexBuilder::try_new(spill.kernel.clone(), spill.right_schema.clone())?;
        if !parts.is_empty() {
            let whole = contiguous(&spill.right_schema, &parts)?;
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
        Ok(index)
    }

    /// Joins one bucket of the left against its index and spills the results, which stay in
    /// ordinal order.
    async fn probe_bucket(
        &self,
        index: &RightIndex,
        left: &BucketedLeft,
        left_file: Arc<dyn SpillFile>,
        results_manager: &SpillManager,
    ) -> Result<Vec<SortedSpillFile>> {
        let partition = self.spill.partition;
        let mut out = BucketWriter::new(
            results_manager.clone(),
            &self.spill.context,
            format!("AsOfJoin[{partition}] out"),
        );
        let mut stream = left.manager.read_spill_as_stream(left_file, None)?;
        while let Some(batch) = stream.next().await {
            let joined = self.probe.join(
                index,
                &batch?,
                left.width,
                &self.results_schema,
                &self.metrics,
            )?;
            if joined.num_rows() > 0 {
                out.write(&joined, &vec![0; joined.num_rows()])?;
            }
        }
        out.finish_sorted()
    }

    /// Merges the buckets' results back into the left's order and drops the ordinal. `turn`
    /// is held until the output stream is dropped (finished or cancelled).
    fn merge(
        self,
        results: Vec<SortedSpillFile>,
        results_manager: SpillManager,
        schema: SchemaRef,
        turn: OwnedMutexGuard<()>,
    ) -> Result<SendableRecordBatchStream> {
        let partition = self.spill.partition;
        merge_by_ordinal(
            results,
            results_manager,
            self.results_schema,
            schema,
            &self.spill.context,
            format!("AsOfJoin[{partition}] merge"),
            turn,
        )
    }
}
