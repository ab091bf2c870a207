//! The `pitlake` command. Everything happens in the library; this only parses flags, starts the
//! runtime and turns the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use pitlake::cli::{self, args::Cli};

fn main() -> ExitCode {
    pitlake::memory::tune_allocator();
    let cli = Cli::parse();
    // A cluster's processes say what Ballista does (jobs, executors, lost tasks) by default.
    let default_filter = match cli.command {
        cli::args::Command::Cluster(_) => {
            "pitlake=info,ballista_scheduler=info,ballista_executor=info"
        }
        _ => "pitlake=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PITLAKE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    // Planning walks statement trees recursively; the parser bounds their depth, and worker
    // stacks larger than tokio's 2 MiB default leave a margin for the deepest allowed.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 << 20)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: cannot start the async runtime: {err}");
            return ExitCode::from(70);
        }
    };
    runtime.block_on(cli::run(cli))
}
