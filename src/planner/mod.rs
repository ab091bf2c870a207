//! The one query planner: DataFusion's physical planner with the extension planners pitlake
//! needs — deltalake's own logical nodes (used by its writer) and pitlake's operators.

use std::sync::Arc;

use arrow::compute::SortOptions;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use deltalake::delta_datafusion::planner::DeltaExtensionPlanner;

use crate::asof::window::{PhysicalWindowAggregate, WindowJoinExec};
use crate::asof::{AsOfJoin, AsOfJoinExec, AsOfJoinMode, AsOfOperator};

datafusion::common::extensions_options! {
    /// pitlake's settings of a session (`SET pitlake.<name> = …`).
    pub struct PitlakeOptions {
        /// How as-of and window joins with keys run. `false` (the default): the right side is
        /// built into one index that every left partition probes, keeping the left's partitions
        /// and order. `true`: both sides are hash-partitioned on the keys alike and each
        /// partition builds and probes its own index (what a cluster needs, where a task sees
        /// one partition of each input, and what a cluster's scheduler always does); the left's
        /// order is not kept.
        pub asof_co_partitioned: bool, default = false
    }
}

impl datafusion::common::config::ConfigExtension for PitlakeOptions {
    const PREFIX: &'static str = "pitlake";
}

/// Plans logical plans, including pitlake's and deltalake's extension nodes.
#[derive(Default)]
pub struct PitlakeQueryPlanner {
    cluster: bool,
    /// Planners of nodes the layers above add (the engine's exports).
    more: Vec<Arc<dyn ExtensionPlanner + Send + Sync>>,
}

impl std::fmt::Debug for PitlakeQueryPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PitlakeQueryPlanner")
            .field("cluster", &self.cluster)
            .field("more", &self.more.len())
            .finish()
    }
}

impl PitlakeQueryPlanner {
    /// The planner of a cluster's scheduler: every as-of join with keys is co-partitioned,
    /// whatever the session says, since a task there sees one partition of each input (a shared
    /// build would silently miss rows).
    pub fn cluster() -> Self {
        Self {
            cluster: true,
            more: Vec::new(),
        }
    }

    /// This planner, also planning the nodes `planner` knows.
    pub fn with_planner(mut self, planner: Arc<dyn ExtensionPlanner + Send + Sync>) -> Self {
        self.more.push(planner);
        self
    }

    fn extension_planners(&self) -> Vec<Arc<dyn ExtensionPlanner + Send + Sync>> {
        let mut planners: Vec<Arc<dyn ExtensionPlanner + Send + Sync>> = vec![
            Arc::new(AsOfPlanner {
                cluster: self.cluster,
            }),
            DeltaExtensionPlanner::new(),
        ];
        planners.extend(self.more.iter().cloned());
        planners
    }
}

#[async_trait]
impl QueryPlanner for PitlakeQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(self.extension_planners())
            .create_physical_plan(logical_plan, session)
            .await
    }
}

/// Plans [`AsOfJoin`] nodes as [`AsOfJoinExec`], or [`WindowJoinExec`] when they have
/// aggregates.
#[derive(Debug, Default)]
pub struct AsOfPlanner {
    /// Always co-partitioned (see [`PitlakeQueryPlanner::cluster`]).
    cluster: bool,
}

#[async_trait]
impl ExtensionPlanner for AsOfPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(join) = node.as_any().downcast_ref::<AsOfJoin>() else {
            return Ok(None);
        };
        let ([left_plan, right_plan], [left, right]) = (logical_inputs, physical_inputs) else {
            return Err(DataFusionError::Internal(
                "AsOfJoin has two inputs".to_string(),
            ));
        };
        let (ls, rs) = (left_plan.schema(), right_plan.schema());
        let on = join
            .on
            .iter()
            .map(|(l, r)| {
                Ok((
                    planner.create_physical_expr(l, ls, session, planning_ctx)?,
                    planner.create_physical_expr(r, rs, session, planning_ctx)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let tiebreak = join
            .tiebreak
            .iter()
            .map(|s| {
                Ok(PhysicalSortExpr::new(
                    planner.create_physical_expr(&s.expr, rs, session, planning_ctx)?,
                    SortOptions {
                        descending: !s.asc,
                        nulls_first: s.nulls_first,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let known_at = join
            .known_at
            .as_ref()
            .map(|e| planner.create_physical_expr(e, rs, session, planning_ctx))
            .transpose()?;
        let left_time = planner.create_physical_expr(&join.left_time, ls, session, planning_ctx)?;
        let right_time =
            planner.create_physical_expr(&join.right_time, rs, session, planning_ctx)?;
        let co_partitioned = self.cluster
            || session
                .config_options()
                .extensions
                .get::<PitlakeOptions>()
                .is_some_and(|o| o.asof_co_partitioned);
        let mode = if co_partitioned {
            AsOfJoinMode::CoPartitioned
        } else {
            AsOfJoinMode::SharedBuild
        };
        if !join.aggregates.is_empty() {
            let aggregates = join
                .aggregates
                .iter()
                .map(|a| {
                    let arg = a
                        .arg
                        .as_ref()
                        .map(|e| planner.create_physical_expr(e, rs, session, planning_ctx))
                        .transpose()?;
                    Ok(PhysicalWindowAggregate::new(a, arg))
                })
                .collect::<Result<Vec<_>>>()?;
            let exec = WindowJoinExec::try_new(
                left.clone(),
                right.clone(),
                on,
                join.null_equal.clone(),
                left_time,
                right_time,
                join.op == AsOfOperator::Gt,
                tiebreak,
                known_at,
                aggregates,
                Arc::new(node.schema().as_arrow().clone()),
            )?;
            return Ok(Some(Arc::new(exec.with_mode(mode).with_natural_build())));
        }
        let exec = AsOfJoinExec::try_new(
            left.clone(),
            right.clone(),
            on,
            join.null_equal.clone(),
            left_time,
            right_time,
            join.op,
            join.join_type,
            join.tolerance.clone(),
            tiebreak,
            known_at,
            Arc::new(node.schema().as_arrow().clone()),
        )?;
        Ok(Some(Arc::new(exec.with_mode(mode).with_natural_build())))
    }
}
