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
use arrow::datatypes::{Schema, SchemaRef};
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
use datafusion::physical_plan::stream::{
    RecordBatchReceiverStreamBuilder, RecordBatchStreamAdapter,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use super::kernel::{KernelAggregate, WindowIndex, WindowIndexBuilder, WindowSpec};
use super::spill::{RightBuckets, Sides, SpillRun, SpilledRight, spilled_window};
use super::{AggFunction, WindowAggregate, fmt_aggregate};
use crate::asof::Tolerance;
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
            schema,
            cache,
            built: Arc::default(),
            spill_turn: Arc::default(),
            metrics: ExecutionPlanMetricsSet::new(),
        })
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
        .with_mode(self.mode))
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
                    let mut spilled = RightBuckets::new(manager);
                    for held in batches.drain(..) {
                        spilled.write(&self.sides, &held)?;
                    }
                    spilled.write(&self.sides, &batch)?;
                    reservation.free();
                    buckets = Some(spilled);
                    builder = WindowIndexBuilder::new(self.sides.spec.clone())?;
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
        self.mode.distributions(&self.on)
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
            partitions: if co_partitioned {
                vec![partition]
            } else {
                (0..self.right.output_partitioning().partition_count()).collect()
            },
            sides: sides.clone(),
            build_rows: MetricBuilder::new(&self.metrics).counter("build_input_rows", partition),
            spill: SpillMetrics::new(&self.metrics, partition),
        };
        let built = self.built.clone();
        let schema = self.schema.clone();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let metrics = self.metrics.clone();
        let turn = self.spill_turn.clone();
        let out_schema = schema.clone();
        let stream = futures::stream::once(async move {
            // Co-partitioned: this partition's own index; else one shared by every partition.
            let built = if co_partitioned {
                job.run(context.clone()).await?
            } else {
                built
                    .get_or_try_init(|| job.run(context.clone()))
                    .await?
                    .clone()
            };
            let batches: SendableRecordBatchStream = match built.as_ref() {
                Built::Spilled(right) => {
                    let run = SpillRun {
                        context,
                        metrics,
                        partition,
                        turn,
                    };
                    spilled_window(left, right, &sides, out_schema, run).await?
                }
                Built::InMemory { .. } => {
                    // Up to one left batch per core at once, each on a task of its own, in the
                    // order they came: a left in one partition (a labels file of one Parquet
                    // row group) still uses every core.
                    let parallel = crate::asof::cores();
                    let built = built.clone();
                    let batch_schema = out_schema.clone();
                    let sides = Arc::new(sides);
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
                        .map(|joined| {
                            joined.map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
                        });
                    Box::pin(RecordBatchStreamAdapter::new(out_schema.clone(), stream))
                }
            };
            Ok::<_, DataFusionError>(batches)
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
        if self.on.is_empty() {
            write!(f, ", mode=single")?;
        }
        Ok(())
    }
}
