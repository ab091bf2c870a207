//! The as-of join's physical operator.
//!
//! ```text
//!            left partition 0 ──► probe ──► out 0        (left order kept)
//!            left partition 1 ──► probe ──► out 1
//!                                   ▲
//!                     shared right index (built once)
//!                                   ▲
//!                       one IndexBuilder, groups ordered on every core
//!          ┌────────────────┬───────┴────────┐
//!     right partition 0     …     right partition n-1   (each decoded by its own task)
//! ```
//!
//! The right partitions are read as they come (no hash repartition: one index holds every key),
//! each decoded by its own task, when the first left partition asks for the index; the index
//! then orders its groups on every core. A chain of joins (labels joined to K feature tables)
//! thus builds one right side after the other, top down: each build already has every core, and
//! a finished index is trimmed to the columns the output shows before the next one is read, so
//! the peak memory is the finished indexes plus one being built, not K being built at once.
//!
//! The left input streams: each left batch is looked up in the index without being sorted,
//! and leaves in the order it came, with the right columns gathered only for the rows that
//! matched.
//!
//! In the co-partitioned mode ([`AsOfJoinMode::CoPartitioned`]) the left is hash-partitioned on
//! its keys too, the same way, and partition p builds right partition p alone and probes it with
//! left partition p: no index is shared, so a task that sees only its own partition of each input
//! (a Ballista executor's) answers right. The left's order is not kept across partitions.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::compute::SortOptions;
use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use datafusion::common::JoinType;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, internal_err};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::equivalence::join_equivalence_properties;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{
    EquivalenceProperties, PhysicalExpr, PhysicalExprRef, PhysicalSortExpr,
};
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ColumnStatistics, Statistics};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, SendableRecordBatchStream,
};
use futures::future::WeakShared;
use futures::{FutureExt, TryStreamExt};

use super::build::{self, RightExprs};
use super::build::{BuildFuture, SharedBuild};
use super::kernel::{IndexBuilder, KernelOptions, KeySpec, TiebreakSpec};
use super::labels::{Layout, MAX_VALUES, Source, word_type};
use super::left_build::{self, Fallback, LeftBuild, RightColumn};
use super::logical::{AsOfJoinType, AsOfOperator, Tolerance};
use super::metrics::AsOfJoinMetrics;
use super::probe::Probe;
use super::spill::SpillContext;
use super::stream::AsOfStream;

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

/// `expr` with each column `c@i` renumbered to `c@map(i)`; `None` if a column has no new place.
fn remap_columns(
    expr: &PhysicalExprRef,
    map: &dyn Fn(usize) -> Option<usize>,
) -> Result<Option<PhysicalExprRef>> {
    let mut lost = false;
    let out = expr.clone().transform_up(|e| {
        let Some(column) = e.downcast_ref::<Column>() else {
            return Ok(Transformed::no(e));
        };
        match map(column.index()) {
            Some(i) if i == column.index() => Ok(Transformed::no(e)),
            Some(i) => Ok(Transformed::yes(
                Arc::new(Column::new(column.name(), i)) as PhysicalExprRef
            )),
            None => {
                lost = true;
                Ok(Transformed::no(e))
            }
        }
    })?;
    Ok((!lost).then_some(out.data))
}

/// The column indices `expr` reads.
fn columns_of(expr: &PhysicalExprRef) -> impl Iterator<Item = usize> {
    collect_columns(expr).into_iter().map(|c| c.index())
}

/// A left input with the expressions the join evaluates on it.
struct LeftSide {
    plan: Arc<dyn ExecutionPlan>,
    on: Vec<(PhysicalExprRef, PhysicalExprRef)>,
    time: PhysicalExprRef,
}

/// `projection` moved over `join`, whose output holds the old output columns `kept` (ascending,
/// in the old numbering); just `join` when the moved projection would change nothing. `None`
/// if the projection reads a column that is not kept.
fn reproject(
    projection: &ProjectionExec,
    join: Arc<dyn ExecutionPlan>,
    kept: &[usize],
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let map = |i: usize| kept.binary_search(&i).ok();
    let mut exprs = Vec::with_capacity(projection.expr().len());
    for e in projection.expr() {
        let Some(expr) = remap_columns(&e.expr, &map)? else {
            return Ok(None);
        };
        exprs.push(ProjectionExpr::new(expr, e.alias.clone()));
    }
    let schema = join.schema();
    let identity = exprs.len() == schema.fields().len()
        && exprs.iter().enumerate().all(|(i, e)| {
            e.expr
                .downcast_ref::<Column>()
                .is_some_and(|c| c.index() == i && c.name() == e.alias)
        })
        && projection.schema() == schema;
    if identity {
        return Ok(Some(join));
    }
    Ok(Some(Arc::new(ProjectionExec::try_new(exprs, join)?)))
}

/// An as-of or window join's expressions, in the order `apply_expressions` visits them: the key
/// pairs, the two times, the tie-break, the knowledge time, then any others.
pub(crate) struct JoinExprs<'a> {
    pub on: &'a [(PhysicalExprRef, PhysicalExprRef)],
    pub times: [&'a PhysicalExprRef; 2],
    pub tiebreak: &'a [PhysicalSortExpr],
    pub known_at: Option<&'a PhysicalExprRef>,
}

impl<'a> JoinExprs<'a> {
    /// Calls `f` on each expression, then on each of `more`, until it says stop.
    pub fn apply(
        &self,
        more: impl Iterator<Item = &'a PhysicalExprRef>,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let keys = self.on.iter().flat_map(|(l, r)| [l, r]);
        let exprs = keys
            .chain(self.times)
            .chain(self.tiebreak.iter().map(|s| &s.expr))
            .chain(self.known_at)
            .chain(more);
        for expr in exprs {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }
}

/// Key pairs as `EXPLAIN` shows them: `(l, r)`, or `(l IS NOT DISTINCT FROM r)`.
pub(crate) fn fmt_on(
    on: &[(PhysicalExprRef, PhysicalExprRef)],
    null_equal: &[bool],
) -> Vec<String> {
    on.iter()
        .zip(null_equal)
        .map(|((l, r), ne)| {
            let eq = if *ne { " IS NOT DISTINCT FROM " } else { ", " };
            format!("({l}{eq}{r})")
        })
        .collect()
}

/// How an as-of join builds its right side and which left rows probe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsOfJoinMode {
    /// Every right partition read into one index shared by every left partition; the left
    /// keeps its partitioning and order.
    #[default]
    SharedBuild,
    /// Both sides hash-partitioned on the keys alike; partition p builds right partition p
    /// alone and probes it with left partition p.
    CoPartitioned,
}

impl AsOfJoinMode {
    /// The mode a join with `keys` equality keys runs in when asked for this one: a join
    /// without keys cannot be partitioned by them and stays shared, its right side one
    /// partition.
    pub(crate) fn for_keys(self, keys: usize) -> Self {
        if keys == 0 {
            AsOfJoinMode::SharedBuild
        } else {
            self
        }
    }

    /// The partitions of `right` that left partition `partition` of a join in this mode reads:
    /// all of them when shared, its own alone when co-partitioned.
    pub(crate) fn right_partitions(
        self,
        right: &dyn ExecutionPlan,
        partition: usize,
    ) -> Vec<usize> {
        match self {
            AsOfJoinMode::SharedBuild => {
                (0..right.output_partitioning().partition_count()).collect()
            }
            AsOfJoinMode::CoPartitioned => vec![partition],
        }
    }

    /// The distributions a join in this mode on the key pairs `on` needs, left then right
    /// (for `required_input_distribution`, which DataFusion 55 still asks in these terms).
    #[expect(
        deprecated,
        reason = "ExecutionPlan::required_input_distribution still speaks HashPartitioned"
    )]
    pub(crate) fn distributions(
        self,
        on: &[(PhysicalExprRef, PhysicalExprRef)],
    ) -> Vec<Distribution> {
        match self {
            // Both sides split by key: partition p of each holds the same keys.
            AsOfJoinMode::CoPartitioned => vec![
                Distribution::HashPartitioned(on.iter().map(|(l, _)| l.clone()).collect()),
                Distribution::HashPartitioned(on.iter().map(|(_, r)| r.clone()).collect()),
            ],
            // Every left partition reads every right partition into one index; without keys
            // the right side is one partition, so a task that sees one partition of each input
            // (a cluster's) still sees it all.
            AsOfJoinMode::SharedBuild if on.is_empty() => vec![
                Distribution::UnspecifiedDistribution,
                Distribution::SinglePartition,
            ],
            AsOfJoinMode::SharedBuild => vec![
                Distribution::UnspecifiedDistribution,
                Distribution::UnspecifiedDistribution,
            ],
        }
    }

    /// What a join in this mode asks of its inputs, given their distributions: co-partitioned,
    /// partition p of each side must hold the same keys (one partitioning for both).
    pub(crate) fn requirements(self, inputs: Vec<Distribution>) -> InputDistributionRequirements {
        match self {
            AsOfJoinMode::SharedBuild => InputDistributionRequirements::new(inputs),
            AsOfJoinMode::CoPartitioned => InputDistributionRequirements::co_partitioned(inputs),
        }
    }
}

impl fmt::Display for AsOfJoinMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AsOfJoinMode::SharedBuild => "shared_build",
            AsOfJoinMode::CoPartitioned => "co_partitioned",
        })
    }
}

/// Which side an as-of join indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsOfBuild {
    /// The right rows by key and time; the left streams through, in its order.
    #[default]
    Right,
    /// The left rows by key and time (`super::labels`); the right streams through once, each
    /// right row kept by the left rows it is the best match of so far, and the left comes out
    /// when the right is done. Only where every right column is a key or of a type a record
    /// holds in a word, the tie-breaks too, and the times are integers, dates or timestamps.
    Left,
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
    mode: AsOfJoinMode,
    side: AsOfBuild,
    /// With the left indexed, at most this many right rows put in key order at once (the index
    /// says how many, `LeftIndex::chunk_rows`).
    chunk_rows: usize,
    /// Left ++ every right column: the schema given to [`AsOfJoinExec::try_new`].
    full_schema: SchemaRef,
    /// The right input's columns the output shows, ascending (all of them unless a projection
    /// above was absorbed, see [`AsOfJoinExec::with_right_output`]).
    right_output: Vec<usize>,
    /// Left ++ the `right_output` columns.
    schema: SchemaRef,
    cache: Arc<PlanProperties>,
    build: Mutex<BuildSlot>,
    spill_turn: Arc<tokio::sync::Mutex<()>>,
    metrics: ExecutionPlanMetricsSet,
}

impl AsOfJoinExec {
    /// Builds the operator, checking that the expressions fit the inputs. The logical node has
    /// already refused user mistakes, so a mismatch here is an internal error.
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
        let right_output: Vec<usize> = (0..rs.fields().len()).collect();
        let cache = Arc::new(Self::compute_properties(
            &left,
            &right,
            &right_output,
            schema.clone(),
        )?);
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
            mode: AsOfJoinMode::SharedBuild,
            side: AsOfBuild::Right,
            chunk_rows: usize::MAX,
            full_schema: schema.clone(),
            right_output,
            schema,
            cache,
            build: Mutex::new(BuildSlot::default()),
            spill_turn: Arc::default(),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// Shows only the right columns `keep` (ascending indices into the right input's schema,
    /// each one shown now): the index then drops the others once it is built, and the output
    /// carries only these. The physical optimizer calls this through
    /// [`ExecutionPlan::try_swapping_with_projection`].
    pub fn with_right_output(mut self, keep: Vec<usize>) -> Result<Self> {
        if keep.windows(2).any(|w| w[0] >= w[1])
            || keep
                .iter()
                .any(|c| self.right_output.binary_search(c).is_err())
        {
            return internal_err!(
                "AsOfJoinExec: right columns {keep:?} are not ascending columns of {:?}",
                self.right_output
            );
        }
        let left_width = self.left.schema().fields().len();
        let mut fields: Vec<FieldRef> = self.full_schema.fields()[..left_width].to_vec();
        fields.extend(
            keep.iter()
                .map(|&c| self.full_schema.fields()[left_width + c].clone()),
        );
        self.schema = Arc::new(Schema::new_with_metadata(
            fields,
            self.full_schema.metadata().clone(),
        ));
        self.cache = Arc::new(Self::compute_properties(
            &self.left,
            &self.right,
            &keep,
            self.schema.clone(),
        )?);
        self.right_output = keep;
        let side = self.side;
        Ok(self.with_build(side))
    }

    /// The same join indexing `build`'s side; [`AsOfBuild::Left`] only where the left build
    /// can hold the right rows (else the join stays [`AsOfBuild::Right`]).
    pub fn with_build(mut self, build: AsOfBuild) -> Self {
        self.side = match build {
            AsOfBuild::Left if self.left_layout().is_some() => AsOfBuild::Left,
            _ => AsOfBuild::Right,
        };
        let emission = match self.side {
            AsOfBuild::Right => EmissionType::Incremental,
            AsOfBuild::Left => EmissionType::Final,
        };
        let properties = self.cache.as_ref().clone().with_emission_type(emission);
        self.cache = Arc::new(properties);
        self
    }

    /// The same join indexing the side it should when nothing says otherwise (the planner's
    /// choice): the left where it can, unless the inputs' statistics say the left is the
    /// larger (a training set has fewer labels than feature rows).
    pub fn with_natural_build(self) -> Self {
        if self.left_layout().is_none() {
            return self;
        }
        let rows = |plan: &Arc<dyn ExecutionPlan>| {
            datafusion::physical_plan::statistics::StatisticsContext::new()
                .compute(plan.as_ref(), &StatisticsArgs::new())
                .ok()
                .and_then(|s| s.num_rows.get_value().copied())
        };
        let build = match (rows(&self.left), rows(&self.right)) {
            (Some(left), Some(right)) if left > right => AsOfBuild::Right,
            _ => AsOfBuild::Left,
        };
        self.with_build(build)
    }

    /// With the left indexed, the right rows put in key order at once (tests use a few, to
    /// run many chunks).
    pub(crate) fn with_chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows.max(1);
        self
    }

    /// Which side the join indexes.
    pub fn build(&self) -> AsOfBuild {
        self.side
    }

    /// How a left build keeps the right rows: the record layout, the right columns with a word
    /// of their own in the records, and per right column whether the records hold it or it is
    /// a key read from the left. `None` where a left build cannot run this join.
    fn left_layout(&self) -> Option<(Layout, Vec<usize>, Vec<RightColumn>)> {
        if !super::time::integer_or_datetime(&self.kernel.time_type)
            || !self.kernel.tiebreak.iter().all(|t| word_type(&t.data_type))
        {
            return None;
        }
        let right = self.right.schema();
        let column_of = |e: &PhysicalExprRef| e.downcast_ref::<Column>().map(|col| col.index());
        let time_column = column_of(&self.right_time).filter(|_| {
            // The score is the time key, which is the order key of signed types only.
            !self.kernel.time_type.is_unsigned_integer()
        });
        let mut columns = Vec::new();
        let mut stored = Vec::new();
        let mut from = Vec::with_capacity(right.fields().len());
        for (c, field) in right.fields().iter().enumerate() {
            let key = self.on.iter().position(|(_, r)| column_of(r) == Some(c));
            if let Some(k) = key {
                from.push(RightColumn::LeftKey(k));
                continue;
            }
            if !word_type(field.data_type()) {
                return None;
            }
            let tiebreak = self
                .tiebreak
                .iter()
                .position(|t| column_of(&t.expr) == Some(c));
            let source = match (time_column == Some(c), tiebreak) {
                (true, _) => Source::Score,
                (false, Some(j)) => Source::Tiebreak(j),
                (false, None) => {
                    stored.push(c);
                    Source::Word
                }
            };
            columns.push((field.data_type().clone(), source));
            from.push(RightColumn::Stored(columns.len() - 1));
        }
        let layout = Layout {
            tiebreak: self.kernel.tiebreak.iter().map(|t| t.options).collect(),
            columns,
        };
        if layout.values() > MAX_VALUES {
            return None;
        }
        Some((layout, stored, from))
    }

    /// The same join in `mode`. A join without keys cannot be partitioned by them: it stays
    /// [`AsOfJoinMode::SharedBuild`], its right side one partition.
    pub fn with_mode(mut self, mode: AsOfJoinMode) -> Self {
        self.mode = mode.for_keys(self.on.len());
        self
    }

    /// How the right side is built and probed.
    pub fn mode(&self) -> AsOfJoinMode {
        self.mode
    }

    /// The right input's columns the output shows, ascending.
    pub fn right_output(&self) -> &[usize] {
        &self.right_output
    }

    fn compute_properties(
        left: &Arc<dyn ExecutionPlan>,
        right: &Arc<dyn ExecutionPlan>,
        right_output: &[usize],
        schema: SchemaRef,
    ) -> Result<PlanProperties> {
        // Left columns keep their positions in the output and every left row's order within
        // its partition is kept, so the left's orderings and constants describe the output too.
        // The right side contributes nothing (its rows are looked up, not streamed).
        let left_eq = left.equivalence_properties().clone();
        let right_schema = Arc::new(right.schema().project(right_output)?);
        let mut eq = join_equivalence_properties(
            left_eq.clone(),
            EquivalenceProperties::new(right_schema),
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

    /// The same join over `right` and a new left input (on which `on` and `left_time` are
    /// evaluated), rebuilt through [`AsOfJoinExec::try_new`]; it shows every right column.
    fn rebuild_over(
        &self,
        left: LeftSide,
        right: Arc<dyn ExecutionPlan>,
        full_schema: SchemaRef,
    ) -> Result<Self> {
        Ok(Self::try_new(
            left.plan,
            right,
            left.on,
            self.null_equal.clone(),
            left.time,
            self.right_time.clone(),
            self.op,
            self.join_type,
            self.tolerance.clone(),
            self.tiebreak.clone(),
            self.known_at.clone(),
            full_schema,
        )?
        .with_mode(self.mode)
        .with_build(self.side)
        .with_chunk_rows(self.chunk_rows))
    }

    /// The same join over other inputs (`with_new_children`, `reset_state`).
    fn rebuild(&self, left: Arc<dyn ExecutionPlan>, right: Arc<dyn ExecutionPlan>) -> Result<Self> {
        self.rebuild_over(self.left_side(left), right, self.full_schema.clone())?
            .with_right_output(self.right_output.clone())
    }

    /// `plan` as the left input, with this join's key pairs and left time unchanged.
    fn left_side(&self, plan: Arc<dyn ExecutionPlan>) -> LeftSide {
        LeftSide {
            plan,
            on: self.on.clone(),
            time: self.left_time.clone(),
        }
    }

    /// The left input projected to the columns `keep` (ascending), with the key pairs and the
    /// left time renumbered to read it; `None` if they read a column not kept.
    fn pruned_left(&self, keep: &[usize]) -> Result<Option<LeftSide>> {
        let schema = self.left.schema();
        let exprs = keep
            .iter()
            .map(|&i| {
                let name = schema.field(i).name();
                ProjectionExpr::new(Arc::new(Column::new(name, i)), name.clone())
            })
            .collect::<Vec<_>>();
        let plan: Arc<dyn ExecutionPlan> =
            Arc::new(ProjectionExec::try_new(exprs, self.left.clone())?);
        let map = |i: usize| keep.binary_search(&i).ok();
        let mut on = Vec::with_capacity(self.on.len());
        for (l, r) in &self.on {
            let Some(l) = remap_columns(l, &map)? else {
                return Ok(None);
            };
            on.push((l, r.clone()));
        }
        let Some(time) = remap_columns(&self.left_time, &map)? else {
            return Ok(None);
        };
        Ok(Some(LeftSide { plan, on, time }))
    }

    /// The joins that run as one with this one, innermost first and this one last: where this
    /// join's left input is another as-of join over the same left keys and time, and both
    /// index their left side, the left rows are read and grouped once for both, each join's
    /// right side is streamed through them in turn, and the feature columns of every join are
    /// gathered onto the left rows at the end, instead of the outer join reading and grouping
    /// the inner one's whole output again (docs/semantics.md, "How it runs"). Just this join
    /// when it runs alone.
    pub fn chain(&self) -> Vec<&AsOfJoinExec> {
        let mut chain = vec![self];
        let mut outer = self;
        while let Some(inner) = outer.left.downcast_ref::<AsOfJoinExec>()
            && outer.chains_onto(inner)
        {
            chain.push(inner);
            outer = inner;
        }
        chain.reverse();
        chain
    }

    /// Whether this join runs as one with `inner`, its left input ([`AsOfJoinExec::chain`]):
    /// both index their single left partition, and this join's left keys and time are
    /// `inner`'s (the left's columns keep their places in `inner`'s output).
    fn chains_onto(&self, inner: &AsOfJoinExec) -> bool {
        let indexes_left = |join: &AsOfJoinExec| {
            join.side == AsOfBuild::Left
                && join.mode == AsOfJoinMode::SharedBuild
                && join.left.output_partitioning().partition_count() == 1
                && join.left_layout().is_some()
        };
        indexes_left(self)
            && indexes_left(inner)
            && self.kernel.keys == inner.kernel.keys
            && self.on.len() == inner.on.len()
            && self
                .on
                .iter()
                .zip(&inner.on)
                .all(|((outer, _), (inner, _))| outer == inner)
            && self.left_time.eq(&inner.left_time)
    }

    /// The run indexing the left side for left partition `partition`, if this join indexes it
    /// (else it indexes its right side, [`AsOfJoinExec::fallback`]).
    fn left_build(
        &self,
        partition: usize,
        context: &Arc<TaskContext>,
        metrics: AsOfJoinMetrics,
    ) -> Option<LeftBuild> {
        // Indexing the left needs all of it: one partition, or this partition's keys alone.
        let co_partitioned = self.mode == AsOfJoinMode::CoPartitioned;
        if self.side != AsOfBuild::Left
            || !(co_partitioned || self.left.output_partitioning().partition_count() == 1)
        {
            return None;
        }
        let (layout, stored, from) = self.left_layout()?;
        Some(LeftBuild {
            left_keys: self.on.iter().map(|(l, _)| l.clone()).collect(),
            left_time: self.left_time.clone(),
            key_specs: self
                .kernel
                .keys
                .iter()
                .map(|k| (k.data_type.clone(), k.null_equal))
                .collect(),
            spec: self.op.spec(),
            tolerance: self.tolerance.clone(),
            join_type: self.join_type,
            right: self.right.clone(),
            partitions: self.mode.right_partitions(self.right.as_ref(), partition),
            exprs: self.right_exprs(),
            layout,
            stored,
            outputs: self.right_output.iter().map(|&c| from[c]).collect(),
            schema: self.schema.clone(),
            metrics,
            context: context.clone(),
            chunk_rows: self.chunk_rows,
        })
    }

    /// The join of left partition `partition` over a given left stream with the right side
    /// indexed (built, or spilled, when the stream is first polled).
    fn fallback(
        &self,
        partition: usize,
        context: &Arc<TaskContext>,
        metrics: AsOfJoinMetrics,
    ) -> Result<Fallback> {
        let build = match self.mode {
            AsOfJoinMode::SharedBuild => self.shared_build(context)?,
            // Right partition p alone, for left partition p alone.
            AsOfJoinMode::CoPartitioned => self.start_build_of(vec![partition], partition, context),
        };
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
            right_output: self.right_output.clone(),
            context: context.clone(),
            partition,
            turn: self.spill_turn.clone(),
        };
        let schema = self.schema.clone();
        Ok(Box::new(move |left| {
            Box::pin(AsOfStream::new(schema, left, build, probe, spill, metrics))
        }))
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

    /// Spawns the build of every right partition (one task each) and returns its shared
    /// result.
    fn start_build(&self, context: &Arc<TaskContext>) -> SharedBuild {
        let partitions = self.right.output_partitioning().partition_count();
        self.start_build_of((0..partitions).collect(), 0, context)
    }

    /// Spawns the build of the right partitions `partitions`; spills are counted under
    /// `spill_partition`.
    fn start_build_of(
        &self,
        partitions: Vec<usize>,
        spill_partition: usize,
        context: &Arc<TaskContext>,
    ) -> SharedBuild {
        let job = build::BuildJob {
            right: self.right.clone(),
            partitions,
            exprs: self.right_exprs(),
            kernel: self.kernel.clone(),
            right_output: self.right_output.clone(),
            metrics: AsOfJoinMetrics::new(&self.metrics, spill_partition),
            context: context.clone(),
        }
        .run();
        // Spawned on first poll, not now: the joins of a chain build one after the other.
        let build: BuildFuture = async move {
            SpawnedTask::spawn(job)
                .join_unwind()
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
        let on = fmt_on(&self.on, &self.null_equal);
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
        if self.mode != AsOfJoinMode::SharedBuild {
            write!(f, ", mode={}", self.mode)?;
        }
        if self.side == AsOfBuild::Left {
            write!(f, ", build=left")?;
        }
        if let Some(inner) = self.left.downcast_ref::<AsOfJoinExec>()
            && self.chains_onto(inner)
        {
            // Run as one with the as-of join below (`AsOfJoinExec::chain`).
            write!(f, ", chained")?;
        }
        if self.on.is_empty() {
            // No keys to partition by: the right side is one partition, read whole by each task.
            write!(f, ", mode=single")?;
        }
        let right = self.right.schema();
        if self.right_output.len() < right.fields().len() {
            let shown: Vec<String> = self
                .right_output
                .iter()
                .map(|&c| format!("{}@{c}", right.field(c).name()))
                .collect();
            write!(f, ", right_output=[{}]", shown.join(", "))?;
        }
        Ok(())
    }
}

#[expect(
    deprecated,
    reason = "ExecutionPlan still requires its deprecated methods to be implemented"
)]
impl ExecutionPlan for AsOfJoinExec {
    fn name(&self) -> &'static str {
        "AsOfJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let mut distributions = self.mode.distributions(&self.on);
        // Indexing the left, one task indexes all of it: every right row is read once.
        if self.side == AsOfBuild::Left && self.mode == AsOfJoinMode::SharedBuild {
            distributions[0] = Distribution::SinglePartition;
        }
        distributions
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.mode.requirements(self.required_input_distribution())
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition), ChildStats::Skip]
    }

    /// The left's row count and column statistics carry over (every left row is kept once; an
    /// inner join keeps a subset, so its figures become bounds); the right's columns are unknown.
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let Some(left) = input_stats.first() else {
            return Ok(Arc::new(Statistics::new_unknown(&self.schema)));
        };
        let mut columns = left.column_statistics.clone();
        columns.resize(self.schema.fields().len(), ColumnStatistics::new_unknown());
        let stats = Statistics {
            num_rows: left.num_rows,
            total_byte_size: Precision::Absent,
            column_statistics: columns,
        };
        Ok(Arc::new(match self.join_type {
            AsOfJoinType::Left => stats,
            AsOfJoinType::Inner => stats.to_inexact(),
        }))
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true, false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![self.mode == AsOfJoinMode::CoPartitioned, true]
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
        exprs.apply(std::iter::empty(), f)
    }

    /// Absorbs a projection above: the right columns it does not read are neither kept in the
    /// index nor gathered, and the left columns neither it nor the join reads are projected
    /// away below (where the next join down can absorb that projection in turn).
    fn try_swapping_with_projection(
        &self,
        projection: &ProjectionExec,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let left_width = self.left.schema().fields().len();
        let used: BTreeSet<usize> = projection
            .expr()
            .iter()
            .flat_map(|e| columns_of(&e.expr))
            .collect();
        let mut left_keep: BTreeSet<usize> =
            used.iter().copied().filter(|&i| i < left_width).collect();
        for (l, _) in &self.on {
            left_keep.extend(columns_of(l));
        }
        left_keep.extend(columns_of(&self.left_time));
        let left_keep: Vec<usize> = left_keep.into_iter().collect();
        let right_keep: Vec<usize> = used
            .iter()
            .filter(|&&i| i >= left_width)
            .map(|&i| self.right_output[i - left_width])
            .collect();
        let prune_left = left_keep.len() < left_width;
        if !prune_left && right_keep.len() == self.right_output.len() {
            return Ok(None);
        }
        let left = if prune_left {
            let Some(left) = self.pruned_left(&left_keep)? else {
                return Ok(None);
            };
            left
        } else {
            self.left_side(self.left.clone())
        };
        // The old output columns the new join still shows, in their old numbering.
        let kept: Vec<usize> = left_keep
            .iter()
            .copied()
            .chain(right_keep.iter().map(|&c| {
                let at = self.right_output.binary_search(&c).unwrap_or_default();
                left_width + at
            }))
            .collect();
        let full_schema = Arc::new(Schema::new_with_metadata(
            left.plan
                .schema()
                .fields()
                .iter()
                .cloned()
                .chain(self.full_schema.fields()[left_width..].iter().cloned())
                .collect::<Vec<FieldRef>>(),
            self.full_schema.metadata().clone(),
        ));
        let join = self
            .rebuild_over(left, self.right.clone(), full_schema)?
            .with_right_output(right_keep)?;
        reproject(projection, Arc::new(join), &kept)
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
        let chain = self.chain();
        let left = chain[0].left.execute(partition, context.clone())?;
        let mut runs = Vec::with_capacity(chain.len());
        let mut fallbacks = Vec::with_capacity(chain.len());
        for join in &chain {
            let metrics = AsOfJoinMetrics::new(&join.metrics, partition);
            fallbacks.push(join.fallback(partition, &context, metrics.clone())?);
            runs.extend(join.left_build(partition, &context, metrics));
        }
        let schema = self.schema.clone();
        let stream: SendableRecordBatchStream = if runs.len() < chain.len() {
            let [fallback] = <[Fallback; 1]>::try_from(fallbacks).map_err(|_| {
                DataFusionError::Internal("AsOfJoinExec: a chain that cannot run".into())
            })?;
            fallback(left)
        } else {
            let stream =
                futures::stream::once(left_build::run(runs, fallbacks, left)).try_flatten();
            Box::pin(RecordBatchStreamAdapter::new(schema, stream))
        };
        Ok(datafusion::physical_plan::coop::make_cooperative(stream))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
