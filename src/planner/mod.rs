//! The one query planner: DataFusion's physical planner with the extension planners pitlake
//! needs — deltalake's own logical nodes (used by its writer) and pitlake's operators.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use deltalake::delta_datafusion::planner::DeltaExtensionPlanner;

/// Plans logical plans, including pitlake's and deltalake's extension nodes.
#[derive(Debug, Default)]
pub struct PitlakeQueryPlanner;

impl PitlakeQueryPlanner {
    fn extension_planners() -> Vec<Arc<dyn ExtensionPlanner + Send + Sync>> {
        vec![DeltaExtensionPlanner::new()]
    }
}

#[async_trait]
impl QueryPlanner for PitlakeQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(Self::extension_planners())
            .create_physical_plan(logical_plan, session)
            .await
    }
}
