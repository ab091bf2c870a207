//! [`WindowJoinExec`]: the window join operator. The right input (every partition) is collected
//! once into a [`WindowIndex`] shared by all left partitions; each left batch then gets its
//! aggregates, in its own order. The index is held in the query's memory pool; a right input
//! that does not fit goes to 64 bucket files by a hash of its keys, and each left partition is
//! then run bucket by bucket and merged back into its order (`spill`). A join without keys has
//! one bucket: it must fit, or it is refused with the limit to raise.
//!
//! In the co-partitioned mode ([`AsOfJoinMode::CoPartitioned`], as for the as-of join) both
//! inputs are hash-partitioned on the keys alike and partition p indexes right partition p
//! alone, for its left partition p: what a cluster's task, which sees one partition of each
//! input, needs. A join without keys reads its right input as one partition.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::JoinType;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_expr::equivalence::join_equivalence_properties;
use datafusion::physical_expr::{
    EquivalenceProperties, PhysicalExpr, PhysicalExprRef, PhysicalSortExpr,
};
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, SpillMetrics,
};
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::stream::{
    RecordBatchReceiverStreamBuilder, RecordBatchStreamAdapter,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use super::kernel::{KernelAggregate, RightArrays, WindowIndex, WindowIndexBuilder, WindowSpec};
use super::labels::{LabelIndex, Scratch, left_build_computes};
use super::spill::{RightBuckets, Sides, SpillRun, SpilledRight, spilled_window};
use super::{AggFunction, WindowAggregate, fmt_aggregate};
use crate::asof::Tolerance;
use crate::asof::bucket::write_giving_back;
use crate::asof::chunks::{
    HALVINGS, Input, LeftInput, empty, halved, held_row_bytes, in_chunks, read_left,
    replay_from_disk,
};
use crate::asof::exec::{AsOfJoinMode, JoinExprs, fmt_on};

/// One aggregate of the operator, its argument a physical expression over the right input.
#[derive(Debug, Clone)]
pub struct PhysicalWindowAggregate {
    /// The output column's name.
    pub name: String,
    /// The function.
    pub function: AggFunction,
    /// The value aggregated (`None` for `count(*)`).
    pub arg: Option<PhysicalExprRef>,
    /// `last(x, k)`'s `k`.
    pub k: Option<usize>,
    /// The window's width.
    pub width: Tolerance,
}

impl fmt::Display for PhysicalWindowAggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arg = self.arg.as_ref().map(|a| a.to_string());
        fmt_aggregate(f, self.function, arg, self.k, &self.width, &self.name)
    }
}

impl PhysicalWindowAggregate {
    /// The logical aggregate's parts with `arg` planned.
    pub fn new(logical: &WindowAggregate, arg: Option<PhysicalExprRef>) -> Self {
        Self {
            name: logical.name.clone(),
            function: logical.function,
            arg,
            k: logical.k,
            width: logical.width.clone(),
        }
    }
}

/// The right side, built: an index in memory, or bucket files when it did not fit.
enum Built {
    InMemory {
        index: Box<WindowIndex>,
        _reservation: MemoryReservation,
    },
    Spilled(SpilledRight),
}

/// Which input a window join indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowBuild {
    /// The right rows by key and time ([`WindowIndex`]); the left streams through. Computes
    /// every aggregate.
    Right,
    /// The left rows by key and time ([`LabelIndex`]); the right streams through once, each
    /// row added to the windows that hold it, and the left comes out when the right is done.
    /// For the aggregates [`left_build_computes`] takes, when the left is not the larger input.
    Left,
}

impl fmt::Display for WindowBuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WindowBuild::Right => "right",
            WindowBuild::Left => "left",
        })
    }
}

/// The window join operator. Build it with [`WindowJoinExec::try_new`].
#[derive(Debug)]
pub struct WindowJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    on: Vec<(PhysicalExprRef, PhysicalExprRef)>,
    null_equal: Vec<bool>,
    left_time: PhysicalExprRef,
    right_time: PhysicalExprRef,
    /// `l.t > r.t`: windows `[t - d, t)` instead of `(t - d, t]`.
    strict: bool,
    tiebreak: Vec<PhysicalSortExpr>,
    known_at: Option<PhysicalExprRef>,
    aggregates: Vec<PhysicalWindowAggregate>,
    spec: WindowSpec,
    mode: AsOfJoinMode,
    build: WindowBuild,
    /// With the left indexed: the right rows put in key order at once.
    chunk_rows: usize,
    /// Per aggregate: its argument's type, and the first aggregate with the same argument.
    arg_types: Vec<Option<DataType>>,
    same_arg: Vec<usize>,
    schema: SchemaRef,
    cache: Arc<PlanProperties>,
    built: Arc<tokio::sync::OnceCell<Arc<Built>>>,
    /// Taken by a spilled partition while it indexes its buckets (see `spill`).
    spill_turn: Arc<tokio::sync::Mutex<()>>,
    metrics: ExecutionPlanMetricsSet,
}

impl fmt::Debug for Built {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Built::InMemory { index, .. } => f
                .debug_struct("InMemory")
                .field("rows", &index.num_rows())
                .finish(),
            Built::Spilled(right) => f
                .debug_struct("Spilled")
                .field("files", &right.files.iter().flatten().count())
                .finish(),
        }
    }
}

impl WindowJoinExec {
    /// Builds the operator. The logical node has refused user mistakes, so a mismatch here is an
    /// internal error.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per part of the join; the logical node builds it"
    )]
    pub fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        on: Vec<(PhysicalExprRef, PhysicalExprRef)>,
        null_equal: Vec<bool>,
        left_time: PhysicalExprRef,
        right_time: PhysicalExprRef,
        strict: bool,
        tiebreak: Vec<PhysicalSortExpr>,
        known_at: Option<PhysicalExprRef>,
        aggregates: Vec<PhysicalWindowAggregate>,
        schema: SchemaRef,
    ) -> Result<Self> {
        let (ls, rs) = (left.schema(), right.schema());
        if schema.fields().len() != ls.fields().len() + aggregates.len() {
            return internal_err!("WindowJoinExec: the output schema is not left ++ aggregates");
        }
        let mut keys = Vec::with_capacity(on.len());
        for ((l, r), null_equal) in on.iter().zip(&null_equal) {
            let (lt, rt) = (l.data_type(&ls)?, r.data_type(&rs)?);
            if lt != rt {
                return internal_err!("WindowJoinExec: key types {lt} and {rt} differ");
            }
            keys.push((lt, *null_equal));
        }
        let time_type = left_time.data_type(&ls)?;
        if right_time.data_type(&rs)? != time_type {
            return internal_err!("WindowJoinExec: time types differ");
        }
        let spec = WindowSpec {
            keys,
            time_type,
            strict,
            has_known: known_at.is_some(),
            tiebreak: tiebreak.iter().map(|s| s.options).collect(),
            aggregates: aggregates
                .iter()
                .map(|a| KernelAggregate {
                    function: a.function,
                    k: a.k,
                    width: a.width.clone(),
                    name: a.name.clone(),
                })
                .collect(),
        };
        let arg_types = aggregates
            .iter()
            .map(|a| a.arg.as_ref().map(|e| e.data_type(&rs)).transpose())
            .collect::<Result<Vec<_>>>()?;
        let same_arg = aggregates
            .iter()
            .enumerate()
            .map(|(a, agg)| {
                (0..a)
                    .find(|&b| aggregates[b].arg.is_some() && aggregates[b].arg == agg.arg)
                    .unwrap_or(a)
            })
            .collect();
        let agg_schema = Arc::new(Schema::new(schema.fields()[ls.fields().len()..].to_vec()));
        let mut eq = join_equivalence_properties(
            left.equivalence_properties().clone(),
            EquivalenceProperties::new(agg_schema),
            &JoinType::Left,
            schema.clone(),
            &[true, false],
            None,
            &[],
        )?;
        eq.add_constants(left.equivalence_properties().constants())?;
        let cache = Arc::new(PlanProperties::new(
            eq,
            left.output_partitioning().clone(),
            EmissionType::Incremental,
            left.boundedness(),
        ));
        Ok(Self {
            left,
            right,
            on,
            null_equal,
            left_time,
            right_time,
            strict,
            tiebreak,
            known_at,
            aggregates,
            spec,
            mode: AsOfJoinMode::SharedBuild,
            build: WindowBuild::Right,
            chunk_rows: LabelIndex::CHUNK_ROWS,
            arg_types,
            same_arg,
            schema,
            cache,
            built: Arc::default(),
            spill_turn: Arc::default(),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The same join indexing the side it should when nothing says otherwise (the planner's
    /// choice; a join rebuilt or decoded keeps the side it had, without computing statistics
    /// again): the left when it can compute every aggregate and the inputs' statistics do not
    /// say the left is the larger (the usual training set: fewer labels than events).
    pub fn with_natural_build(self) -> Self {
        let build = self.natural_build();
        self.with_build(build)
    }

    fn natural_build(&self) -> WindowBuild {
        if !self.left_build_computes() {
            return WindowBuild::Right;
        }
        let rows = |plan: &Arc<dyn ExecutionPlan>| {
            StatisticsContext::new()
                .compute(plan.as_ref(), &StatisticsArgs::new())
                .ok()
                .and_then(|s| s.num_rows.get_value().copied())
        };
        match (rows(&self.left), rows(&self.right)) {
            (Some(left), Some(right)) if left > right => WindowBuild::Right,
            _ => WindowBuild::Left,
        }
    }

    fn left_build_computes(&self) -> bool {
        self.aggregates
            .iter()
            .zip(&self.arg_types)
            .all(|(a, t)| left_build_computes(a.function, t.as_ref()))
    }

    /// The same join indexing `build`'s side; [`WindowBuild::Left`] only where it computes every
    /// aggregate (else the join stays [`WindowBuild::Right`]).
    pub fn with_build(mut self, build: WindowBuild) -> Self {
        self.build = match build {
            WindowBuild::Left if self.left_build_computes() => WindowBuild::Left,
            _ => WindowBuild::Right,
        };
        let emission = match self.build {
            WindowBuild::Right => EmissionType::Incremental,
            WindowBuild::Left => EmissionType::Final,
        };
        let properties = self.cache.as_ref().clone().with_emission_type(emission);
        self.cache = Arc::new(properties);
        self
    }

    /// Which side the join indexes.
    pub fn build(&self) -> WindowBuild {
        self.build
    }

    fn rebuild(&self, left: Arc<dyn ExecutionPlan>, right: Arc<dyn ExecutionPlan>) -> Result<Self> {
        Ok(Self::try_new(
            left,
            right,
            self.on.clone(),
            self.null_equal.clone(),
            self.left_time.clone(),
            self.right_time.clone(),
            self.strict,
            self.tiebreak.clone(),
            self.known_at.clone(),
            self.aggregates.clone(),
            self.schema.clone(),
        )?
        .with_mode(self.mode)
        .with_build(self.build)
        .with_chunk_rows(self.chunk_rows))
    }

    /// With the left indexed, the right rows put in key order at once (tests use a few, to
    /// run many chunks).
    pub(crate) fn with_chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows.max(1);
        self
    }

    /// The same join in `mode`. A join without keys cannot be partitioned by them: it stays
    /// [`AsOfJoinMode::SharedBuild`], its right side one partition.
    pub fn with_mode(mut self, mode: AsOfJoinMode) -> Self {
        self.mode = mode.for_keys(self.on.len());
        self
    }

    /// How the join runs.
    pub fn mode(&self) -> AsOfJoinMode {
        self.mode
    }

    /// The aggregates.
    pub fn aggregates(&self) -> &[PhysicalWindowAggregate] {
        &self.aggregates
    }

    /// The equality keys, (left, right).
    pub fn on(&self) -> &[(PhysicalExprRef, PhysicalExprRef)] {
        &self.on
    }

    /// Per key: `IS NOT DISTINCT FROM`.
    pub fn null_equal(&self) -> &[bool] {
        &self.null_equal
    }

    /// The left and right times.
    pub fn times(&self) -> (&PhysicalExprRef, &PhysicalExprRef) {
        (&self.left_time, &self.right_time)
    }

    /// Whether windows exclude the label's instant (`l.t > r.t`).
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The tie-break order.
    pub fn tiebreak(&self) -> &[PhysicalSortExpr] {
        &self.tiebreak
    }

    /// The knowledge time.
    pub fn known_at(&self) -> Option<&PhysicalExprRef> {
        self.known_at.as_ref()
    }

    /// The output schema.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.schema
    }
}

/// How many window joins indexed their left side with chunks narrower than asked for, to fit
/// the memory pool (the tests check that some do).
#[cfg(test)]
pub(crate) static NARROWED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What building the index needs, detached from the operator.
struct BuildJob {
    right: Arc<dyn ExecutionPlan>,
    /// The right partitions to index: all of them, or one in the co-partitioned mode.
    partitions: Vec<usize>,
    sides: Sides,
    build_rows: Count,
    spill: SpillMetrics,
}

fn out_of_memory(e: DataFusionError, what: &str) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "a window join's {what} does not fit in the query's memory ({e}); raise --memory-limit \
         or --query-memory-limit, or narrow the right input"
    ))
}

impl BuildJob {
    async fn run(self, context: Arc<TaskContext>) -> Result<Arc<Built>> {
        let reservation =
            MemoryConsumer::new("WindowJoinExec[build]").register(context.memory_pool());
        let started = std::time::Instant::now();
        // Each right partition is read (decoded) by a task of its own.
        let mut merged = match self.partitions.as_slice() {
            [one] => self.right.execute(*one, context.clone())?,
            partitions => {
                let mut builder =
                    RecordBatchReceiverStreamBuilder::new(self.right.schema(), partitions.len());
                for &p in partitions {
                    let mut stream = self.right.execute(p, context.clone())?;
                    let tx = builder.tx();
                    builder.spawn(async move {
                        while let Some(batch) = stream.next().await {
                            if tx.send(batch).await.is_err() {
                                break;
                            }
                        }
                        Ok(())
                    });
                }
                builder.build()
            }
        };
        let mut batches = Vec::new();
        // A join with keys that does not fit goes to bucket files (a join without keys has one
        // bucket, so it must fit).
        let may_spill = !self.sides.right_keys.is_empty()
            && context.runtime_env().disk_manager.tmp_files_enabled();
        let mut buckets: Option<RightBuckets> = None;
        // Each batch's rows are grouped as it comes; the batches stay until the index is whole
        // (its arguments are theirs, and a spill would write them out).
        let mut builder = WindowIndexBuilder::new(self.sides.spec.clone())?;
        while let Some(batch) = merged.next().await {
            let batch = batch?;
            self.build_rows.add(batch.num_rows());
            if let Some(buckets) = &mut buckets {
                buckets.write(&self.sides, &batch)?;
                continue;
            }
            // The batches, then the index: twice their size at most.
            match reservation.try_grow(2 * batch.get_array_memory_size()) {
                Ok(()) => {
                    builder.push(self.sides.right_arrays(&batch)?)?;
                    batches.push(batch);
                }
                Err(e) if !may_spill => return Err(out_of_memory(e, "right input")),
                Err(_) => {
                    let manager = SpillManager::new(
                        context.runtime_env(),
                        self.spill.clone(),
                        self.right.schema(),
                    );
                    let mut spilled = RightBuckets::new(manager, &context);
                    // The builder shares the batches' arrays: dropped first, so that each
                    // batch written frees what it gives back.
                    builder = WindowIndexBuilder::new(self.sides.spec.clone())?;
                    write_giving_back(
                        batches.drain(..),
                        &reservation,
                        |held| 2 * held.get_array_memory_size(),
                        |held| spilled.write(&self.sides, held),
                    )?;
                    spilled.write(&self.sides, &batch)?;
                    reservation.free();
                    buckets = Some(spilled);
                    // What the pool held is free now, and the rest of the input goes to disk.
                    crate::memory::release_free_memory();
                }
            }
        }
        if let Some(buckets) = buckets {
            return Ok(Arc::new(Built::Spilled(buckets.finish()?)));
        }
        let read = started.elapsed();
        if batches.is_empty() {
            let empty = RecordBatch::new_empty(self.right.schema());
            builder.push(self.sides.right_arrays(&empty)?)?;
        }
        // The builder holds the arguments' arrays; the batches' other columns go now.
        drop(batches);
        let index = builder.finish(context.session_config().target_partitions())?;
        tracing::debug!(
            target: "pitlake::window",
            rows = index.num_rows(),
            read_and_grouped_ms = read.as_millis() as u64,
            indexed_ms = (started.elapsed() - read).as_millis() as u64,
            "window index built"
        );
        reservation
            .try_resize(index.memory_size())
            .map_err(|e| out_of_memory(e, "index"))?;
        Ok(Arc::new(Built::InMemory {
            index: Box::new(index),
            _reservation: reservation,
        }))
    }
}

/// What one output partition runs.
struct PartitionRun {
    job: BuildJob,
    built: Arc<tokio::sync::OnceCell<Arc<Built>>>,
    co_partitioned: bool,
    sides: Arc<Sides>,
    schema: SchemaRef,
    baseline: BaselineMetrics,
    spill: SpillRun,
}

/// What indexing the left needs beyond [`Sides`].
struct LabelJob {
    arg_types: Vec<Option<DataType>>,
    same_arg: Vec<usize>,
    output_types: Vec<DataType>,
    /// The right rows put in key order at once ([`LabelIndex::CHUNK_ROWS`]).
    chunk_rows: usize,
}

impl PartitionRun {
    /// The right side indexed (or in bucket files), the left streamed through it.
    async fn index_right(
        self,
        left: SendableRecordBatchStream,
    ) -> Result<SendableRecordBatchStream> {
        let PartitionRun {
            job,
            built,
            co_partitioned,
            sides,
            schema,
            baseline,
            spill,
        } = self;
        // Co-partitioned: this partition's own index; else one shared by every partition.
        let built = if co_partitioned {
            job.run(spill.context.clone()).await?
        } else {
            built
                .get_or_try_init(|| job.run(spill.context.clone()))
                .await?
                .clone()
        };
        if let Built::Spilled(right) = built.as_ref() {
            let sides = sides.as_ref().clone();
            return spilled_window(left, right, &sides, schema, spill).await;
        }
        // Up to one left batch per core at once, each on a task of its own, in the order they
        // came: a left in one partition (a labels file of one Parquet row group) still uses
        // every core.
        let parallel = crate::asof::cores();
        let batch_schema = schema.clone();
        let stream = left
            .map(move |batch| {
                let (built, sides, schema, baseline) = (
                    built.clone(),
                    sides.clone(),
                    batch_schema.clone(),
                    baseline.clone(),
                );
                SpawnedTask::spawn(async move {
                    let batch = batch?;
                    let Built::InMemory { index, .. } = built.as_ref() else {
                        return internal_err!("window join: probing a spilled side");
                    };
                    let timer = baseline.elapsed_compute().timer();
                    let columns = sides.aggregate(index, &batch)?;
                    let out = RecordBatch::try_new(schema, columns)?;
                    timer.done();
                    baseline.record_output(out.num_rows());
                    Ok(out)
                })
            })
            .buffered(parallel)
            .map(|joined| joined.map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    /// The left side indexed, the right streamed through it once (each right partition by a
    /// task of its own, into accumulators they share); the left comes out in its order. A left side that does not fit in memory goes the other way
    /// ([`PartitionRun::index_right`], which spills), with the batches already read.
    async fn index_left(
        self,
        left: SendableRecordBatchStream,
        labels: LabelJob,
    ) -> Result<SendableRecordBatchStream> {
        let context = self.spill.context.clone();
        let mut reservation =
            MemoryConsumer::new("WindowJoinExec[left index]").register(context.memory_pool());
        let started = std::time::Instant::now();
        let left_schema = left.schema();
        let give_up = || {
            tracing::debug!(
                target: "pitlake::window",
                "window join: the left side does not fit in memory; indexing the right"
            )
        };
        let held = match read_left(left, &mut reservation, &context, &self.job.spill).await? {
            LeftInput::Held(held) => held,
            LeftInput::TooLarge(left) => {
                give_up();
                return self.index_right(left).await;
            }
        };
        let arrays = held
            .iter()
            .map(|b| self.sides.left_arrays(b))
            .collect::<Result<Vec<_>>>()?;
        let index = LabelIndex::new(
            self.sides.spec.clone(),
            &labels.arg_types,
            &labels.same_arg,
            &arrays,
        )?;
        drop(arrays);
        let input = Input::of(&self.job.right, &self.job.partitions, &context)?;
        let tasks = input.readers();
        // The accumulators, and per task a chunk of right rows held and put in key order:
        // narrower chunks where the pool does not hold those asked for ([`HALVINGS`]).
        let wide = labels.chunk_rows.min(LabelIndex::CHUNK_ROWS);
        let row_bytes = LabelIndex::CHUNK_ROW_BYTES + held_row_bytes(&self.job.right.schema());
        let fixed = index.memory_size() + index.accumulators_size();
        let Some(chunk) = (0..=HALVINGS).map(|h| halved(wide, h)).find(|&chunk| {
            reservation
                .try_grow(fixed + tasks * chunk * row_bytes)
                .is_ok()
        }) else {
            drop((index, reservation));
            give_up();
            let left = replay_from_disk(held, empty(left_schema), &context, &self.job.spill);
            return self.index_right(left).await;
        };
        #[cfg(test)]
        if chunk < wide {
            NARROWED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let indexed = started.elapsed();
        MetricBuilder::new(&self.spill.metrics)
            .counter("left_index_rows", self.spill.partition)
            .add(held.iter().map(|b| b.num_rows()).sum());
        let index = Arc::new(index);
        let shared = Arc::new(std::sync::Mutex::new(index.accumulators()));
        let sides = self.sides.clone();
        let prepare = move |batch: &RecordBatch| sides.right_arrays(batch);
        let (applying, accumulators) = (index.clone(), shared.clone());
        let apply = move |scratch: &mut Scratch, chunk: &[RightArrays]| {
            applying.apply(&accumulators, scratch, chunk)
        };
        let rows = &self.job.build_rows;
        in_chunks(
            &input,
            &context,
            chunk,
            rows,
            Arc::new(prepare),
            Arc::new(apply),
        )
        .await?;
        let Some(all) = Arc::into_inner(shared).and_then(|m| m.into_inner().ok()) else {
            return internal_err!("window join: the accumulators are still shared");
        };
        let streamed = started.elapsed();
        let timer = self.baseline.elapsed_compute().timer();
        let columns = index.finish(all, &labels.output_types)?;
        timer.done();
        tracing::debug!(
            target: "pitlake::window",
            left_rows = columns.first().map_or(0, |c| c.len()),
            indexed_ms = indexed.as_millis() as u64,
            streamed_ms = (streamed - indexed).as_millis() as u64,
            finished_ms = (started.elapsed() - streamed).as_millis() as u64,
            "window join: left indexed, right streamed"
        );
        let mut out = Vec::with_capacity(held.len());
        let mut offset = 0;
        for batch in held {
            let n = batch.num_rows();
            let mut all = batch.columns().to_vec();
            all.extend(columns.iter().map(|c| c.slice(offset, n)));
            offset += n;
            let joined = RecordBatch::try_new(self.schema.clone(), all)?;
            self.baseline.record_output(n);
            out.push(Ok(joined));
        }
        drop(reservation);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(out),
        )))
    }
}

#[expect(
    deprecated,
    reason = "ExecutionPlan still requires its deprecated methods to be implemented"
)]
impl ExecutionPlan for WindowJoinExec {
    fn name(&self) -> &'static str {
        "WindowJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true, false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        let co_partitioned = self.mode == AsOfJoinMode::CoPartitioned;
        vec![co_partitioned, co_partitioned]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let mut distributions = self.mode.distributions(&self.on);
        // Indexing the left, one task indexes all of it: every right row is read once.
        if self.build == WindowBuild::Left && self.mode == AsOfJoinMode::SharedBuild {
            distributions[0] = Distribution::SinglePartition;
        }
        distributions
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.mode.requirements(self.required_input_distribution())
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let exprs = JoinExprs {
            on: &self.on,
            times: [&self.left_time, &self.right_time],
            tiebreak: &self.tiebreak,
            known_at: self.known_at.as_ref(),
        };
        exprs.apply(self.aggregates.iter().filter_map(|a| a.arg.as_ref()), f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right]: [Arc<dyn ExecutionPlan>; 2] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("WindowJoinExec takes two children".into()))?;
        Ok(Arc::new(self.rebuild(left, right)?))
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(
            self.rebuild(self.left.clone(), self.right.clone())?,
        ))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let left = self.left.execute(partition, context.clone())?;
        let sides = Sides {
            right_keys: self.on.iter().map(|(_, r)| r.clone()).collect(),
            right_time: self.right_time.clone(),
            known_at: self.known_at.clone(),
            tiebreak: self.tiebreak.iter().map(|s| s.expr.clone()).collect(),
            args: self.aggregates.iter().map(|a| a.arg.clone()).collect(),
            left_keys: self.on.iter().map(|(l, _)| l.clone()).collect(),
            left_time: self.left_time.clone(),
            spec: self.spec.clone(),
        };
        let co_partitioned = self.mode == AsOfJoinMode::CoPartitioned;
        let job = BuildJob {
            right: self.right.clone(),
            partitions: self.mode.right_partitions(self.right.as_ref(), partition),
            sides: sides.clone(),
            build_rows: MetricBuilder::new(&self.metrics).counter("build_input_rows", partition),
            spill: SpillMetrics::new(&self.metrics, partition),
        };
        let run = PartitionRun {
            job,
            built: self.built.clone(),
            co_partitioned,
            sides: Arc::new(sides),
            schema: self.schema.clone(),
            baseline: BaselineMetrics::new(&self.metrics, partition),
            spill: SpillRun {
                context,
                metrics: self.metrics.clone(),
                partition,
                turn: self.spill_turn.clone(),
            },
        };
        // Indexing the left needs all of it: one partition, or this partition's keys alone.
        let left_build = self.build == WindowBuild::Left
            && (co_partitioned || self.left.output_partitioning().partition_count() == 1);
        let labels = LabelJob {
            chunk_rows: self.chunk_rows,
            arg_types: self.arg_types.clone(),
            same_arg: self.same_arg.clone(),
            output_types: self.schema.fields()[self.left.schema().fields().len()..]
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
        };
        let schema = self.schema.clone();
        let stream = futures::stream::once(async move {
            match left_build {
                true => run.index_left(left, labels).await,
                false => run.index_right(left).await,
            }
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

impl DisplayAs for WindowJoinExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let on = fmt_on(&self.on, &self.null_equal);
        let aggregates: Vec<String> = self.aggregates.iter().map(|a| a.to_string()).collect();
        let op = if self.strict { ">" } else { ">=" };
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "WindowJoinExec: on=[{}], match={} {op} {}, aggregates=[{}]",
                on.join(", "),
                self.left_time,
                self.right_time,
                aggregates.join(", ")
            )?,
            DisplayFormatType::TreeRender => {
                writeln!(f, "on=[{}]", on.join(", "))?;
                writeln!(f, "match={} {op} {}", self.left_time, self.right_time)?;
                write!(f, "aggregates=[{}]", aggregates.join(", "))?;
            }
        }
        if let Some(known) = &self.known_at {
            write!(f, ", known_at={known}")?;
        }
        if self.mode != AsOfJoinMode::SharedBuild {
            write!(f, ", mode={}", self.mode)?;
        }
        if self.build == WindowBuild::Left {
            write!(f, ", build=left")?;
        }
        if self.on.is_empty() {
            write!(f, ", mode=single")?;
        }
        Ok(())
    }
}
