//! The as-of join's physical operator.
//!
//! ```text
//!            left partition 0 ──► probe ──► out 0        (left order kept)
//!            left partition 1 ──► probe ──► out 1
//!                                   ▲
//!                     shared right index (built once)
//!          ┌────────────────┬───────┴────────┐
//!   right hash partition 0   …   right hash partition n-1
//!     (one IndexBuilder each, built in parallel)
//! ```
//!
//! The right input is hash-partitioned on its keys, so each key lives in exactly one partition;
//! each partition is read into its own index by its own task, all in parallel, as soon as the
//! operator starts (every as-of join of a query builds at once). The left input streams: each
//! left batch is looked up in the indexes without being sorted, and leaves in the order it came,
//! with the right columns gathered only for the rows that matched.

use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use datafusion::common::JoinType;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::equivalence::join_equivalence_properties;
use datafusion::physical_expr::{PhysicalExpr, PhysicalExprRef, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet, SpillMetrics};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, SendableRecordBatchStream,
};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};

use super::build::{self, BuildSide, RightExprs};
use super::kernel::{IndexBuilder, KernelOptions, KeySpec, TiebreakSpec};
use super::logical::{AsOfJoinType, AsOfOperator, Tolerance};
use super::metrics::AsOfJoinMetrics;
use super::stream::{AsOfStream, Probe, SpillContext};

type BuildFuture = BoxFuture<'static, std::result::Result<Arc<BuildSide>, Arc<DataFusionError>>>;

pub(crate) type SharedBuild = Shared<BuildFuture>;

/// The build shared by the partitions of one execution.
///
/// The operator holds the build strongly only until every left partition has started; after
/// that only the streams do, so dropping them (a cancelled query, a `LIMIT` that is satisfied)
/// stops the build tasks and frees the index at once, even while the plan itself lives on.
#[derive(Default)]
struct BuildSlot {
    strong: Option<SharedBuild>,
    weak: Option<WeakShared<BuildFuture>>,
    started: usize,
}

impl fmt::Debug for BuildSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildSlot")
            .field("started", &self.started)
            .finish()
    }
}

/// The as-of join operator. Build it with [`AsOfJoinExec::try_new`].
#[derive(Debug)]
pub struct AsOfJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    on: Vec<(PhysicalExprRef, PhysicalExprRef)>,
    null_equal: Vec<bool>,
    left_time: PhysicalExprRef,
    right_time: PhysicalExprRef,
    op: AsOfOperator,
    join_type: AsOfJoinType,
    tolerance: Option<Tolerance>,
    tiebreak: Vec<PhysicalSortExpr>,
    known_at: Option<PhysicalExprRef>,
    kernel: KernelOptions,
    schema: SchemaRef,
    cache: Arc<PlanProperties>,
    build: Mutex<BuildSlot>,
    spill_turn: Arc<tokio::sync::Mutex<()>>,
    metrics: ExecutionPlanMetricsSet,
}

impl AsOfJoinExec {
    /// Builds the operator, checking that the expressions fit the inputs. The logical node has
    /// already refused user mistakes, so a mismatch here is an internal error.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        on: Vec<(PhysicalExprRef, PhysicalExprRef)>,
        null_equal: Vec<bool>,
        left_time: PhysicalExprRef,
        right_time: PhysicalExprRef,
        op: AsOfOperator,
        join_type: AsOfJoinType,
        tolerance: Option<Tolerance>,
        tiebreak: Vec<PhysicalSortExpr>,
        known_at: Option<PhysicalExprRef>,
        schema: SchemaRef,
    ) -> Result<Self> {
        let (ls, rs) = (left.schema(), right.schema());
        if on.len() != null_equal.len() {
            return internal_err!(
                "AsOfJoinExec: {} keys, {} null rules",
                on.len(),
                null_equal.len()
            );
        }
        if schema.fields().len() != ls.fields().len() + rs.fields().len() {
            return internal_err!("AsOfJoinExec: the output schema is not left ++ right");
        }
        let mut keys = Vec::with_capacity(on.len());
        for ((l, r), null_equal) in on.iter().zip(&null_equal) {
            let (lt, rt) = (l.data_type(&ls)?, r.data_type(&rs)?);
            if lt != rt {
                return internal_err!("AsOfJoinExec: key types {lt} and {rt} differ");
            }
            keys.push(KeySpec {
                data_type: lt,
                null_equal: *null_equal,
            });
        }
        let time_type = left_time.data_type(&ls)?;
        if right_time.data_type(&rs)? != time_type {
            return internal_err!("AsOfJoinExec: time types differ");
        }
        let tiebreak_specs = tiebreak
            .iter()
            .map(|s| {
                Ok(TiebreakSpec {
                    data_type: s.expr.data_type(&rs)?,
                    options: s.options,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let kernel = KernelOptions {
            spec: op.spec(),
            keys,
            time_type,
            tiebreak: tiebreak_specs,
            has_knowledge: known_at.is_some(),
        };
        // Fail at planning, not at execution, if the kernel would refuse these options.
        IndexBuilder::try_new(kernel.clone(), rs.clone())?;
        let cache = Arc::new(Self::compute_properties(&left, &right, schema.clone())?);
        Ok(Self {
            left,
            right,
            on,
            null_equal,
            left_time,
            right_time,
            op,
            join_type,
            tolerance,
            tiebreak,
            known_at,
            kernel,
            schema,
            cache,
            build: Mutex::new(BuildSlot::default()),
            spill_turn: Arc::default(),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    fn compute_properties(
        left: &Arc<dyn ExecutionPlan>,
        right: &Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
    ) -> Result<PlanProperties> {
        // Left columns keep their positions in the output and every left row's order within
        // its partition is kept, so the left's orderings and constants describe the output too.
        // The right side contributes nothing (its rows are looked up, not streamed).
        let left_eq = left.equivalence_properties().clone();
        let mut eq = join_equivalence_properties(
            left_eq.clone(),
            right.equivalence_properties().clone(),
            &JoinType::Left,
            schema,
            &[true, false],
            None,
            &[],
        )?;
        eq.add_constants(left_eq.constants())?;
        Ok(PlanProperties::new(
            eq,
            left.output_partitioning().clone(),
            EmissionType::Incremental,
            left.boundedness(),
        ))
    }

    /// The left input.
    pub fn left(&self) -> &Arc<dyn ExecutionPlan> {
        &self.left
    }

    /// The right input.
    pub fn right(&self) -> &Arc<dyn ExecutionPlan> {
        &self.right
    }

    /// The key pairs.
    pub fn on(&self) -> &[(PhysicalExprRef, PhysicalExprRef)] {
        &self.on
    }

    /// Per key, whether NULL equals NULL.
    pub fn null_equal(&self) -> &[bool] {
        &self.null_equal
    }

    /// The left and right time expressions.
    pub fn times(&self) -> (&PhysicalExprRef, &PhysicalExprRef) {
        (&self.left_time, &self.right_time)
    }

    /// The match operator.
    pub fn op(&self) -> AsOfOperator {
        self.op
    }

    /// The join type.
    pub fn join_type(&self) -> AsOfJoinType {
        self.join_type
    }

    /// The tolerance.
    pub fn tolerance(&self) -> Option<&Tolerance> {
        self.tolerance.as_ref()
    }

    /// The tie-break order.
    pub fn tiebreak(&self) -> &[PhysicalSortExpr] {
        &self.tiebreak
    }

    /// The knowledge time.
    pub fn known_at(&self) -> Option<&PhysicalExprRef> {
        self.known_at.as_ref()
    }

    fn rebuild(&self, left: Arc<dyn ExecutionPlan>, right: Arc<dyn ExecutionPlan>) -> Result<Self> {
        Self::try_new(
            left,
            right,
            self.on.clone(),
            self.null_equal.clone(),
            self.left_time.clone(),
            self.right_time.clone(),
            self.op,
            self.join_type,
            self.tolerance.clone(),
            self.tiebreak.clone(),
            self.known_at.clone(),
            self.schema.clone(),
        )
    }

    /// The shared build, started by the first partition that executes.
    fn shared_build(&self, context: &Arc<TaskContext>) -> Result<SharedBuild> {
        let mut slot = self
            .build
            .lock()
            .map_err(|_| DataFusionError::Internal("AsOfJoinExec: build lock poisoned".into()))?;
        let existing = slot
            .strong
            .clone()
            .or_else(|| slot.weak.as_ref().and_then(WeakShared::upgrade));
        let build = match existing {
            Some(build) => build,
            None => {
                let build = self.start_build(context);
                slot.weak = build.downgrade();
                slot.strong = Some(build.clone());
                slot.started = 0;
                build
            }
        };
        slot.started += 1;
        if slot.started >= self.left.output_partitioning().partition_count() {
            slot.strong = None;
        }
        Ok(build)
    }

    /// The expressions the build and the spilled runs evaluate on right batches.
    fn right_exprs(&self) -> Arc<RightExprs> {
        Arc::new(RightExprs {
            keys: self.on.iter().map(|(_, r)| r.clone()).collect(),
            time: self.right_time.clone(),
            known_at: self.known_at.clone(),
            tiebreak: self.tiebreak.iter().map(|s| s.expr.clone()).collect(),
        })
    }

    /// Spawns the build (one task per right partition) and returns its shared result.
    fn start_build(&self, context: &Arc<TaskContext>) -> SharedBuild {
        let metrics = self.metrics.clone();
        let spill_metrics = SpillMetrics::new(&self.metrics, 0);
        let job = build::build(
            self.right.clone(),
            self.right_exprs(),
            self.kernel.clone(),
            move |partition| AsOfJoinMetrics::new(&metrics, partition),
            spill_metrics,
            context.clone(),
        );
        // Spawned now, not on first poll: every as-of join of a query builds at once.
        let task = SpawnedTask::spawn(job);
        let build: BuildFuture = async move {
            task.join_unwind()
                .await
                .map_err(|e| Arc::new(DataFusionError::ExecutionJoin(Box::new(e))))?
                .map(Arc::new)
                .map_err(Arc::new)
        }
        .boxed();
        build.shared()
    }
}

impl DisplayAs for AsOfJoinExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let on: Vec<String> = self
            .on
            .iter()
            .zip(&self.null_equal)
            .map(|((l, r), ne)| {
                let eq = if *ne { " IS NOT DISTINCT FROM " } else { ", " };
                format!("({l}{eq}{r})")
            })
            .collect();
        let tiebreak: Vec<String> = self
            .tiebreak
            .iter()
            .map(|s| {
                let SortOptions {
                    descending,
                    nulls_first,
                } = s.options;
                format!(
                    "{} {} NULLS {}",
                    s.expr,
                    if descending { "DESC" } else { "ASC" },
                    if nulls_first { "FIRST" } else { "LAST" }
                )
            })
            .collect();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(
                    f,
                    "AsOfJoinExec: type={}, on=[{}], match={} {} {}",
                    self.join_type,
                    on.join(", "),
                    self.left_time,
                    self.op.symbol(),
                    self.right_time
                )?;
            }
            DisplayFormatType::TreeRender => {
                writeln!(f, "type={}", self.join_type)?;
                writeln!(f, "on=[{}]", on.join(", "))?;
                write!(
                    f,
                    "match={} {} {}",
                    self.left_time,
                    self.op.symbol(),
                    self.right_time
                )?;
            }
        }
        if let Some(tolerance) = &self.tolerance {
            write!(f, ", tolerance={tolerance}")?;
        }
        if !tiebreak.is_empty() {
            write!(f, ", tiebreak=[{}]", tiebreak.join(", "))?;
        }
        if let Some(known) = &self.known_at {
            write!(f, ", known_at={known}")?;
        }
        Ok(())
    }
}

#[allow(deprecated)]
impl ExecutionPlan for AsOfJoinExec {
    fn name(&self) -> &'static str {
        "AsOfJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let right = if self.on.is_empty() {
            Distribution::SinglePartition
        } else {
            Distribution::HashPartitioned(self.on.iter().map(|(_, r)| r.clone()).collect())
        };
        vec![Distribution::UnspecifiedDistribution, right]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true, false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false, true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let mut exprs: Vec<&PhysicalExprRef> = Vec::new();
        for (l, r) in &self.on {
            exprs.push(l);
            exprs.push(r);
        }
        exprs.push(&self.left_time);
        exprs.push(&self.right_time);
        exprs.extend(self.tiebreak.iter().map(|s| &s.expr));
        exprs.extend(self.known_at.iter());
        for expr in exprs {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right]: [Arc<dyn ExecutionPlan>; 2] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("AsOfJoinExec takes two children".into()))?;
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
        let build = self.shared_build(&context)?;
        let left = self.left.execute(partition, context.clone())?;
        let metrics = AsOfJoinMetrics::new(&self.metrics, partition);
        let probe = Probe {
            left_keys: self.on.iter().map(|(l, _)| l.clone()).collect(),
            left_time: self.left_time.clone(),
            tolerance: self.tolerance.clone(),
            direction: self.op.spec().direction,
            join_type: self.join_type,
        };
        let spill = SpillContext {
            right: self.right_exprs(),
            kernel: self.kernel.clone(),
            right_schema: self.right.schema(),
            context: context.clone(),
            partition,
            turn: self.spill_turn.clone(),
        };
        let stream = AsOfStream::new(self.schema.clone(), left, build, probe, spill, metrics);
        Ok(datafusion::physical_plan::coop::make_cooperative(Box::pin(
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
