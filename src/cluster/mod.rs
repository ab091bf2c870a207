//! pitlake on a Ballista cluster (docs/distributed.md): pitlake's builds of Ballista's
//! scheduler and executor, which know pitlake's plan nodes, functions and object stores (the
//! pieces come from the engine).
//!
//! A client (`pitlake --cluster df://host:port …`) plans a statement as always (grants, pins,
//! as-of joins) and sends the logical plan to the scheduler; the scheduler plans it with
//! pitlake's planner, where every as-of join with keys is co-partitioned, cuts it into stages
//! and hands the tasks to the executors.

mod processes;

pub use processes::{ExecutorOptions, SchedulerOptions, run_executor, run_scheduler};
