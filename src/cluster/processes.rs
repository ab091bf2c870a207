//! `pitlake cluster scheduler` and `pitlake cluster executor`: Ballista's scheduler and
//! executor with pitlake's planner, codecs, functions and object stores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

use crate::config::Settings;
use crate::engine::{
    cluster_codecs, cluster_config, cluster_runtime, cluster_session_state, pitlake_functions,
};
use crate::error::{PitlakeError, Result};

/// How to run a scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Where to listen (port 0: any free port; the one taken is printed).
    pub listen: SocketAddr,
    /// The host executors and clients reach this scheduler at (default: the listen address).
    pub advertise: Option<String>,
    /// An executor silent this long is taken as lost and its tasks run elsewhere.
    pub executor_timeout: Duration,
    /// Whether a listen address other than loopback is allowed.
    pub private_network: bool,
}

/// How to run an executor.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `host:port`.
    pub scheduler: String,
    /// Where this executor serves its shuffle data (Arrow Flight) to the others and to clients.
    pub listen: SocketAddr,
    /// The port (on the listen address) where the scheduler hands this executor its tasks and
    /// cancels them; default: the listen port + 1.
    pub task_port: Option<u16>,
    /// The host others reach this executor at (default: the listen address).
    pub advertise: Option<String>,
    /// Tasks run at once.
    pub slots: usize,
    /// Where shuffle files go (default: a temporary folder).
    pub work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat: Duration,
    /// Whether a listen address other than loopback is allowed.
    pub private_network: bool,
}

/// Refuses a listen address other than loopback unless the operator said the network is private:
/// Ballista's ports authenticate nobody.
fn check_listen(listen: SocketAddr, private_network: bool) -> Result<()> {
    if listen.ip().is_loopback() || private_network {
        return Ok(());
    }
    Err(PitlakeError::Config {
        name: "--listen".into(),
        message: format!(
            "{listen} is not a loopback address, and the cluster's ports have no authentication \
             and no TLS: whoever reaches them can run any plan with the executors' storage \
             credentials. Listen on 127.0.0.1, or add --private-network if only pitlake clients \
             and gateways can reach this network (see docs/distributed.md)"
        ),
    })
}

fn ballista(e: impl std::fmt::Display) -> PitlakeError {
    PitlakeError::Execution(format!("cluster: {e}"))
}

/// Runs a scheduler (until the future is dropped).
pub async fn run_scheduler(options: SchedulerOptions, settings: &Settings) -> Result<()> {
    check_listen(options.listen, options.private_network)?;
    if options.executor_timeout < Duration::from_secs(1) {
        return Err(PitlakeError::Config {
            name: "--executor-timeout".into(),
            message: "must be at least 1s".into(),
        });
    }
    let runtime = cluster_runtime(settings, RuntimeEnvBuilder::new())?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| PitlakeError::Config {
            name: "--listen".into(),
            message: format!("cannot listen on {}: {e}", options.listen),
        })?;
    let bound = listener.local_addr()?;
    let (logical, physical) = cluster_codecs(settings);
    let config = SchedulerConfig {
        bind_host: bound.ip().to_string(),
        bind_port: bound.port(),
        external_host: options
            .advertise
            .clone()
            .unwrap_or_else(|| bound.ip().to_string()),
        // Push: the scheduler hands tasks to executors and can cancel them (pull-mode executors
        // serve no task port, so a cancelled job's running tasks would run to their end).
        scheduling_policy: TaskSchedulingPolicy::PushStaged,
        executor_timeout_seconds: options.executor_timeout.as_secs(),
        expire_dead_executor_interval_seconds: options.executor_timeout.as_secs().clamp(1, 15),
        no_executors_grace_period_seconds: options.executor_timeout.as_secs(),
        override_config_producer: Some(Arc::new(cluster_config)),
        override_session_builder: Some(Arc::new(move |config| {
            Ok(cluster_session_state(config, runtime.clone()))
        })),
        override_logical_codec: Some(logical),
        override_physical_codec: Some(physical),
        ..SchedulerConfig::default()
    };
    config.validate().map_err(ballista)?;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(ballista)?;
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
            .await
            .map_err(ballista)?;
    println!("listening on {bound}");
    start_grpc_service_with_listener(listener, scheduler)
        .await
        .map_err(ballista)
}

/// Runs an executor until the process is stopped (SIGTERM, Ctrl-C) or the scheduler stops it.
pub async fn run_executor(options: ExecutorOptions, settings: &Settings) -> Result<()> {
    let (host, port) = options
        .scheduler
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| PitlakeError::Config {
            name: "--scheduler".into(),
            message: format!("`{}` is not HOST:PORT", options.scheduler),
        })?;
    check_listen(options.listen, options.private_network)?;
    let task_port = match options.task_port {
        Some(port) => Some(port),
        None => options.listen.port().checked_add(1),
    };
    let (flight_port, Some(task_port)) = (options.listen.port(), task_port.filter(|p| *p != 0))
    else {
        return Err(PitlakeError::Config {
            name: "--task-port".into(),
            message: "the listen port + 1 is not a port; give --task-port".into(),
        });
    };
    if flight_port == 0 || task_port == flight_port {
        return Err(PitlakeError::Config {
            name: "--listen".into(),
            message: format!(
                "an executor needs two fixed ports, the listen port ({flight_port}) and the task port \
                 ({task_port}), different and not 0: the scheduler and the other executors \
                 connect to them"
            ),
        });
    }
    if options.slots == 0 || options.slots > 1024 {
        return Err(PitlakeError::Config {
            name: "--slots".into(),
            message: format!("{} is out of range; use 1 to 1024", options.slots),
        });
    }
    let (logical, physical) = cluster_codecs(settings);
    let mut functions = BallistaFunctionRegistry::default();
    for udf in pitlake_functions() {
        functions
            .scalar_functions
            .insert(udf.name().to_string(), udf);
    }
    let work_dir = match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Some(dir.display().to_string())
        }
        None => None,
    };
    let runtime_settings = settings.clone();
    let spill_dir = work_dir.clone();
    let health = ballista_executor::health::ExecutorHealth::new();
    let config = ExecutorProcessConfig {
        bind_host: options.listen.ip().to_string(),
        external_host: Some(
            options
                .advertise
                .clone()
                .unwrap_or_else(|| options.listen.ip().to_string()),
        ),
        port: options.listen.port(),
        grpc_port: task_port,
        scheduler_host: host,
        scheduler_port: port,
        scheduler_connect_timeout_seconds: 10,
        vcores: options.slots,
        task_scheduling_policy: TaskSchedulingPolicy::PushStaged,
        work_dir,
        executor_heartbeat_interval_seconds: options.heartbeat.as_secs().max(1),
        memory_pool_size: settings.memory_limit.map(|b| b as u64),
        override_function_registry: Some(Arc::new(functions)),
        override_config_producer: Some(Arc::new(cluster_config)),
        override_runtime_producer: Some(Arc::new(move |_| {
            let mut builder = RuntimeEnvBuilder::new();
            if let Some(dir) = &spill_dir {
                builder = builder.with_temp_file_path(dir);
            }
            cluster_runtime(&runtime_settings, builder)
        })),
        override_logical_codec: Some(logical),
        override_physical_codec: Some(physical),
        health: health.clone(),
        ..ExecutorProcessConfig::default()
    };
    println!("listening on {}", options.listen);
    let ready = tokio::spawn(async move {
        while !health.is_ready() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("ready");
    });
    let result = start_executor_process(Arc::new(config))
        .await
        .map_err(ballista);
    ready.abort();
    result
}
