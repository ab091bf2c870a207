//! What a cluster's processes and clients share (docs/distributed.md): the codecs, the
//! scheduler's session, the executors' functions and object stores, and the client's switch
//! that sends queries to the scheduler.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::{ExecutionPlan, RecordBatchStream};

use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;

use super::{Engine, WarehouseFacts, frontend, pitlake_config, pitlake_functions};
use crate::config::Settings;
use crate::error::{PitlakeError, Result};
use crate::planner::PitlakeQueryPlanner;
use crate::storage::Warehouse;

/// The codecs of the plans a cluster runs: exports written by executors, as-of joins,
/// warehouse tables as pinned Parquet files ([`crate::storage::PinnedDeltaTable`]), and
/// Ballista's own nodes. An export decoded here builds its destination's store with `settings`'
/// storage options (an executor's own: credentials never travel in plans).
pub fn cluster_codecs(
    settings: &Settings,
) -> (
    Arc<dyn datafusion_proto::logical_plan::LogicalExtensionCodec>,
    Arc<dyn datafusion_proto::physical_plan::PhysicalExtensionCodec>,
) {
    let logical =
        super::export::ExportLogicalCodec::new(Arc::new(crate::asof::AsOfLogicalCodec::new(
            Arc::new(crate::storage::PinnedTablesCodec::new(Arc::new(
                ballista_core::serde::BallistaLogicalExtensionCodec::default(),
            ))),
            Arc::new(WarehouseFacts { pinned: true }),
        )));
    let physical = super::export::ExportPhysicalCodec::new(
        Arc::new(crate::asof::AsOfPhysicalCodec::new(Arc::new(
            ballista_core::serde::BallistaPhysicalExtensionCodec::default(),
        ))),
        settings.warehouse.storage_options.clone(),
    );
    (Arc::new(logical), Arc::new(physical))
}

/// The base configuration of a cluster's jobs: Ballista's, with pitlake's settings; each job
/// then takes the settings of the client that sent it.
pub fn cluster_config() -> SessionConfig {
    use ballista_core::extension::SessionConfigExt;
    pitlake_config(SessionConfig::new_with_ballista())
}

/// The session a cluster's scheduler plans one job in: pitlake's planner (as-of joins
/// co-partitioned, see [`PitlakeQueryPlanner::cluster`]), rules and functions, over `runtime`.
pub fn cluster_session_state(
    config: SessionConfig,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> SessionState {
    use ballista_core::extension::{
        ballista_aggregate_functions, ballista_scalar_functions, ballista_window_functions,
    };
    let mut functions = ballista_scalar_functions();
    let ours = pitlake_functions();
    functions.retain(|f| !ours.iter().any(|o| o.name() == f.name()));
    functions.extend(ours);
    SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_query_planner(Arc::new(
            PitlakeQueryPlanner::cluster().with_planner(Arc::new(super::export::ExportPlanner)),
        ))
        .with_analyzer_rule(Arc::new(frontend::AsOfRule))
        .with_optimizer_rules(
            std::iter::once(Arc::new(crate::asof::AsOfRangePruning::new(Arc::new(
                WarehouseFacts { pinned: true },
            ))) as _)
            .chain(ballista_core::optimizer::ballista_default_optimizer_rules())
            .collect(),
        )
        .with_scalar_functions(functions)
        .with_aggregate_functions(ballista_aggregate_functions())
        .with_window_functions(ballista_window_functions())
        .build()
}

/// A runtime built by `builder` whose object stores reach the warehouse of `settings` (local
/// folders need none), for a cluster's scheduler and executors.
pub fn cluster_runtime(
    settings: &Settings,
    builder: RuntimeEnvBuilder,
) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let runtime = builder.build_arc()?;
    let location = &settings.warehouse;
    if matches!(location.url.scheme(), "file" | "memory") {
        return Ok(runtime);
    }
    let warehouse = Warehouse::connect(location.clone())
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let url = url::Url::parse(&format!(
        "{}://{}",
        location.url.scheme(),
        &location.url[url::Position::BeforeHost..url::Position::AfterPort]
    ))
    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    runtime.register_object_store(&url, warehouse.store().clone());
    Ok(runtime)
}

impl Engine {
    /// `stream`, the rows of `plan`; when `plan` ran on the cluster and the stream is dropped
    /// before its end (a timeout, a client gone), the job is cancelled on the scheduler so the
    /// executors stop working for nobody.
    pub(crate) fn cancel_cluster_job_on_drop(
        &self,
        stream: SendableRecordBatchStream,
        plan: Arc<dyn ExecutionPlan>,
    ) -> SendableRecordBatchStream {
        match &self.settings.cluster {
            Some(url) => Box::pin(CancelOnDrop {
                inner: stream,
                plan,
                url: url.clone(),
                done: false,
            }),
            None => stream,
        }
    }

    /// `state`, sending the queries planned in it to the cluster of the settings, if any: their
    /// logical plans go to the scheduler, which plans and runs them on its executors. Writes
    /// and registry changes stay here (deltalake commits from this process).
    pub(crate) async fn on_cluster(
        &self,
        state: SessionState,
        plan: &datafusion::logical_expr::LogicalPlan,
    ) -> Result<SessionState> {
        use ballista_core::extension::{SessionConfigExt, SessionStateExt};
        let Some(url) = &self.settings.cluster else {
            return Ok(state);
        };
        only_warehouse_tables(plan)?;
        check_reachable(url).await?;
        let (logical, physical) = cluster_codecs(&self.settings);
        let config = state
            .config()
            .clone()
            .upgrade_for_ballista()
            .with_ballista_logical_extension_codec(logical)
            .with_ballista_physical_extension_codec(physical)
            .with_ballista_job_name(&format!("pitlake:{}", self.settings.user))
            // The static planner: each stage planned once with DataFusion's own rules, the
            // co-partitioned joins' shuffles included.
            .with_ballista_adaptive_query_planner(false);
        let state = SessionStateBuilder::new_from_existing(state)
            .with_config(config)
            .with_optimizer_rule(Arc::new(PruneClusterFiles))
            .build();
        Ok(state.upgrade_for_ballista(url.clone())?)
    }
}

/// On a cluster, gives each warehouse table the filters of the scan that reads it, so that the
/// table travels as only those of its files whose statistics allow a row that passes them (see
/// `storage::pinned`). Runs last in each optimizer pass, when the filters have been pushed into
/// the scans; a later pass that pushes more updates them.
#[derive(Debug)]
struct PruneClusterFiles;

impl datafusion::optimizer::OptimizerRule for PruneClusterFiles {
    fn name(&self) -> &str {
        "pitlake_prune_cluster_files"
    }

    fn apply_order(&self) -> Option<datafusion::optimizer::ApplyOrder> {
        Some(datafusion::optimizer::ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &dyn datafusion::optimizer::OptimizerConfig,
    ) -> datafusion::error::Result<
        datafusion::common::tree_node::Transformed<datafusion::logical_expr::LogicalPlan>,
    > {
        use datafusion::common::tree_node::Transformed;
        use datafusion::logical_expr::LogicalPlan;
        let LogicalPlan::TableScan(scan) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let provider = datafusion::datasource::source_as_provider(&scan.source)?;
        let Some(table) = crate::storage::as_warehouse_table(&provider) else {
            return Ok(Transformed::no(plan));
        };
        if table.prune_filters() == scan.filters.as_slice() {
            return Ok(Transformed::no(plan));
        }
        let table = Arc::new(table.with_prune_filters(scan.filters.clone()));
        let LogicalPlan::TableScan(mut scan) = plan else {
            return Ok(Transformed::no(plan));
        };
        scan.source = datafusion::datasource::provider_as_source(table);
        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
    }
}

/// `plan` as a cluster client sends it: each warehouse table with the filters of its scan, for
/// pruning its files (what [`PruneClusterFiles`] does in the client's optimizer).
pub fn prune_cluster_files(
    plan: datafusion::logical_expr::LogicalPlan,
) -> Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::optimizer::{OptimizerContext, OptimizerRule};
    let config = OptimizerContext::new();
    Ok(plan
        .transform_up_with_subqueries(|node| PruneClusterFiles.rewrite(node, &config))?
        .data)
}

/// Refuses, clearly and before anything is sent, a plan that reads a table the cluster cannot:
/// only warehouse tables travel (as their pinned files); a table function, a session's upload
/// or a view over one would otherwise fail inside Ballista's serializer. The information schema
/// is exempt: Ballista answers plans that read only it in the client.
fn only_warehouse_tables(plan: &datafusion::logical_expr::LogicalPlan) -> Result<()> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    let mut refused = None;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && scan.table_name.schema() != Some("information_schema")
        {
            let provider = datafusion::datasource::source_as_provider(&scan.source)?;
            if crate::storage::as_warehouse_table(&provider).is_none() {
                refused = Some(scan.table_name.table().to_string());
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match refused {
        Some(name) => Err(PitlakeError::Unsupported(format!(
            "`{name}` is not a warehouse table (a table function such as generate_series, or a \
             session's upload): on a cluster a query reads warehouse tables only; run this \
             statement without --cluster, or write the rows into a table first"
        ))),
        None => Ok(()),
    }
}

/// How long a client waits to reach a cluster's scheduler.
const CLUSTER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Fails clearly, within [`CLUSTER_CONNECT_TIMEOUT`], when the scheduler at `url`
/// (`http://host:port`) does not take connections; Ballista's own client would retry for longer
/// and say less.
async fn check_reachable(url: &str) -> Result<()> {
    let address = url.trim_start_matches("http://");
    let shown = format!("df://{address}");
    let fail = |why: String| PitlakeError::Config {
        name: "--cluster".into(),
        message: format!(
            "the scheduler at {shown} cannot be reached ({why}); start it with `pitlake cluster \
             scheduler`, check the address, or run without --cluster"
        ),
    };
    match tokio::time::timeout(
        CLUSTER_CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(address),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail(format!(
            "no answer within {}s",
            CLUSTER_CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// A cluster query's rows that cancel the job when dropped unfinished.
struct CancelOnDrop {
    inner: SendableRecordBatchStream,
    plan: Arc<dyn ExecutionPlan>,
    url: String,
    done: bool,
}

impl futures::Stream for CancelOnDrop {
    type Item = datafusion::error::Result<arrow::array::RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        match next {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Err(err))) => {
                self.done = true;
                return Poll::Ready(Some(Err(readable_job_error(err))));
            }
            _ => {}
        }
        next
    }
}

/// A failed cluster job's error in words: Ballista passes a task's error to the client as the
/// debug rendering of its error chain (`Job J failed: Job failed due to stage S failed: Task
/// failed due to runtime execution error: DataFusionError(ArrowError(DivideByZero, None))`);
/// this keeps the job and stage and turns the chain into its messages ("Divide by zero"). Other
/// errors pass unchanged; the original is logged at debug level.
fn readable_job_error(
    err: datafusion::error::DataFusionError,
) -> datafusion::error::DataFusionError {
    use datafusion::error::DataFusionError;
    let DataFusionError::Execution(message) = &err else {
        return err;
    };
    let Some(readable) = readable_job_message(message) else {
        return err;
    };
    tracing::debug!(error = %message, "a cluster job failed");
    DataFusionError::Execution(readable)
}

fn readable_job_message(message: &str) -> Option<String> {
    const TASK: &str = "Task failed due to runtime execution error: ";
    let rest = message.strip_prefix("Job ")?;
    let (job, rest) = rest.split_once(" failed: ")?;
    let stage = rest
        .strip_prefix("Job failed due to stage ")
        .and_then(|r| r.split_once(' '))
        .map(|(stage, _)| stage);
    let chain = &rest[rest.find(TASK)? + TASK.len()..];
    let words = debug_chain_words(chain.trim_end());
    if words.is_empty() {
        return None;
    }
    let at = match stage {
        Some(stage) => format!("job {job}, stage {stage}"),
        None => format!("job {job}"),
    };
    Some(format!("the cluster's job failed ({at}): {words}"))
}

/// The words in a Rust debug rendering of an error chain: its string literals, unescaped and
/// joined with ": ", or, when it has none, its innermost variant name in words
/// (`ArrowError(DivideByZero, None)` → "Divide by zero").
fn debug_chain_words(chain: &str) -> String {
    let mut strings: Vec<String> = Vec::new();
    let mut chars = chain.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut text = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => text.push('\n'),
                    Some('t') => text.push('\t'),
                    Some('r') => text.push('\r'),
                    Some('0') => text.push('\0'),
                    Some('u') if chars.peek() == Some(&'{') => {
                        let code: String =
                            chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                        let decoded = u32::from_str_radix(&code, 16).ok().and_then(char::from_u32);
                        text.push(decoded.unwrap_or(char::REPLACEMENT_CHARACTER));
                    }
                    Some(other) => text.push(other),
                    None => {}
                },
                c => text.push(c),
            }
        }
        if !text.is_empty() && !strings.contains(&text) {
            strings.push(text);
        }
    }
    if !strings.is_empty() {
        return strings.join(": ");
    }
    // No literal: the last name that opens nothing or stands alone inside the chain.
    let names: Vec<&str> = chain
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|n| n.starts_with(|c: char| c.is_ascii_uppercase()) && *n != "None" && *n != "Some")
        .collect();
    let Some(name) = names.last() else {
        return String::new();
    };
    let mut words = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
            words.push(c.to_ascii_lowercase());
        } else {
            words.push(c);
        }
    }
    words
}

impl RecordBatchStream for CancelOnDrop {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.inner.schema()
    }
}

/// The job id of the distributed query in `plan`, once submitted.
fn job_id(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    use ballista_core::execution_plans::DistributedQueryExec;
    use datafusion_proto::protobuf::LogicalPlanNode;
    if let Some(query) = plan.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>() {
        return query.job_id().map(|id| id.to_string());
    }
    plan.children().into_iter().find_map(job_id)
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (Some(job), Ok(runtime)) = (job_id(&self.plan), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let url = self.url.clone();
        runtime.spawn(async move {
            use ballista_core::serde::protobuf::CancelJobParams;
            use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
            let cancelled = async {
                let mut client = SchedulerGrpcClient::connect(url).await?;
                client
                    .cancel_job(CancelJobParams {
                        job_id: job.clone(),
                    })
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            match tokio::time::timeout(CLUSTER_CONNECT_TIMEOUT, cancelled).await {
                Ok(Ok(())) => tracing::info!(job, "cancelled the cluster job of a dropped query"),
                Ok(Err(e)) => tracing::warn!(job, error = %e, "could not cancel a cluster job"),
                Err(_) => tracing::warn!(job, "could not cancel a cluster job: no answer"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::readable_job_message;

    #[test]
    fn cluster_job_errors_read_as_words() {
        let cases = [
            ("Job 038H Failed", None),
            (
                "Job 038H failed: Job failed due to stage 2 failed: Task failed due to runtime \
                 execution error: DataFusionError(ArrowError(DivideByZero, None))\n",
                Some("the cluster's job failed (job 038H, stage 2): Divide by zero"),
            ),
            (
                "Job 7 failed: Job failed due to stage 4 failed: Task failed due to runtime \
                 execution error: DataFusionError(ArrowError(CastError(\"Cannot cast string \
                 'x' to value of Int32 type\"), None))",
                Some(
                    "the cluster's job failed (job 7, stage 4): Cannot cast string 'x' to value \
                     of Int32 type",
                ),
            ),
            (
                "Job 9 failed: Job failed due to stage 1 failed: Task failed due to runtime \
                 execution error: DataFusionError(Context(\"reading t\", Execution(\"a \\\"quoted\\\" \
                 word\\nand a line\")))",
                Some(
                    "the cluster's job failed (job 9, stage 1): reading t: a \"quoted\" word\nand \
                     a line",
                ),
            ),
            // Not a task's failure (a lost executor, a cancelled job): unchanged.
            (
                "Job 9 failed: Job failed due to stage 1 failed: Stage 1 has failed 4 times",
                None,
            ),
            ("Divide by zero error", None),
            (
                "Job 3 failed: Job failed due to stage 2 failed: Task failed due to runtime \
                 execution error: DataFusionError(Execution(\"tab\\there \\u{1b}[0m caf\\u{e9}\"",
                Some("the cluster's job failed (job 3, stage 2): tab\there \u{1b}[0m caf\u{e9}"),
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(
                readable_job_message(message).as_deref(),
                expected,
                "{message}"
            );
        }
        // Deeply nested, unterminated, oversized and non-ASCII chains are read in one pass:
        // words or nothing, never a panic.
        let prefix = "Job 1 failed: Job failed due to stage 1 failed: Task failed due to \
                      runtime execution error: ";
        let nested = format!(
            "{prefix}{}DivideByZero{}",
            "E(".repeat(100_000),
            ")".repeat(100_000)
        );
        assert_eq!(
            readable_job_message(&nested).as_deref(),
            Some("the cluster's job failed (job 1, stage 1): Divide by zero")
        );
        let long = format!("{prefix}Execution(\"{}", "é\\u{".repeat(1 << 20));
        assert!(readable_job_message(&long).is_some());
        assert_eq!(readable_job_message(&format!("{prefix}(((")), None);
    }
}
