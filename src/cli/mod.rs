//! The command-line interface: commands, the shell, and result printing. It reaches the library
//! through the [`Engine`] (and the settings and error types below it); `pitlake serve` also
//! starts the Flight SQL server (`crate::flight`), the one surface it sits on.

pub mod args;
mod demo;
pub mod print;
mod serve;
mod shell;
mod training;

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{Engine, IngestFormat, IngestProgress, IngestRequest, Output, RunOptions};
use crate::engine::{Replacement, TableName, WriteMode};
use crate::error::{PitlakeError, Result};
use args::{Cli, Command, FormatArg, IngestArgs, ModeArg, SqlArgs};
use print::{OutputFormat, check_destination, print_stream};

/// Set when standard output's reader went away (`pitlake sql … | head`).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Standard output that remembers a broken pipe: writers such as Arrow's CSV writer turn the
/// I/O error into their own error type, so the kind would otherwise be lost.
struct Stdout(std::io::Stdout);

impl Stdout {
    fn note(result: std::io::Result<usize>) -> std::io::Result<usize> {
        if let Err(e) = &result
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Stdout::note(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Stdout::note(self.0.flush().map(|()| 0)).map(|_| ())
    }
}

/// Runs a parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    match run_command(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever reads our output stopped reading: that is their choice, not our failure.
        Err(err) if is_broken_pipe(&err) || STDOUT_CLOSED.load(Ordering::Relaxed) => {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("Error: {err}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The exit code for an error: 1 for a statement or data the user can fix, 2 for bad settings,
/// 3 for storage that cannot be reached or written, 70 for a pitlake bug.
pub fn exit_code(err: &PitlakeError) -> u8 {
    match err {
        PitlakeError::TableNotFound { .. }
        | PitlakeError::NotFound { .. }
        | PitlakeError::AlreadyExists { .. }
        | PitlakeError::RegistryConflict(_)
        | PitlakeError::TableExists { .. }
        | PitlakeError::VersionNotFound { .. }
        | PitlakeError::TimestampTooEarly { .. }
        | PitlakeError::CorruptTable { .. }
        | PitlakeError::SchemaMismatch { .. }
        | PitlakeError::Input { .. }
        | PitlakeError::Syntax(_)
        | PitlakeError::Plan(_)
        | PitlakeError::ConfirmationRequired { .. }
        | PitlakeError::InUse(_)
        | PitlakeError::ConcurrentWrite { .. }
        | PitlakeError::Unsupported(_)
        | PitlakeError::Execution(_)
        | PitlakeError::ResourcesExhausted(_)
        | PitlakeError::Arrow(_)
        | PitlakeError::Parquet(_)
        | PitlakeError::DataFusion(_)
        | PitlakeError::Delta(_) => 1,
        PitlakeError::Config { .. } => 2,
        PitlakeError::Warehouse { .. } | PitlakeError::ObjectStore(_) | PitlakeError::Io(_) => 3,
        PitlakeError::Internal(_) => 70,
    }
}

fn is_broken_pipe(err: &PitlakeError) -> bool {
    match err {
        PitlakeError::Io(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
        PitlakeError::Arrow(arrow::error::ArrowError::IoError(_, e)) => {
            e.kind() == std::io::ErrorKind::BrokenPipe
        }
        PitlakeError::Arrow(arrow::error::ArrowError::ExternalError(e)) => e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe),
        _ => false,
    }
}

async fn run_command(cli: Cli) -> Result<()> {
    let settings = cli.global.settings()?;
    let engine = Engine::new(settings)?;
    match cli.command {
        Command::Sql(args) => {
            engine.warehouse().check_exists()?;
            run_sql(&engine, args).await
        }
        Command::Shell(args) => {
            engine.warehouse().check_exists()?;
            shell::run(&engine, args).await
        }
        Command::Ingest(args) => run_ingest(&engine, args).await,
        Command::Demo(args) => demo::run(&engine, args).await,
        Command::Serve(args) => serve::run(engine, *args).await,
        Command::Plan(args) => training::run_plan(&engine, args).await,
        Command::Apply(args) => training::run_apply(&engine, args).await,
        Command::Export(args) => {
            engine.warehouse().check_exists()?;
            training::run_export(&engine, args).await
        }
        Command::Reproduce(args) => {
            engine.warehouse().check_exists()?;
            training::run_reproduce(&engine, args).await
        }
        // Verifying reads only the export and its manifest, never the warehouse.
        Command::Verify(args) => training::run_verify(&engine, args).await,
        Command::Audit(args) => {
            engine.warehouse().check_exists()?;
            training::run_audit(&engine, args).await
        }
        Command::Cluster(command) => run_cluster(engine.settings(), command).await,
    }
}

async fn run_cluster(
    settings: &crate::config::Settings,
    command: args::ClusterCommand,
) -> Result<()> {
    use crate::cluster::{ExecutorOptions, SchedulerOptions, run_executor, run_scheduler};
    let parent = match &command {
        args::ClusterCommand::Scheduler(a) => a.parent_pid,
        args::ClusterCommand::Executor(a) => a.parent_pid,
    };
    let orphaned = async move {
        match parent {
            // Linux: the parent is gone when its /proc entry is.
            Some(pid) => loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
            },
            None => std::future::pending().await,
        }
    };
    let run = async {
        match command {
            args::ClusterCommand::Scheduler(a) => {
                let options = SchedulerOptions {
                    listen: a.listen,
                    advertise: a.advertise,
                    executor_timeout: a.executor_timeout,
                    private_network: a.private_network,
                };
                run_scheduler(options, settings).await
            }
            args::ClusterCommand::Executor(a) => {
                let options = ExecutorOptions {
                    scheduler: a.scheduler,
                    listen: a.listen,
                    task_port: a.task_port,
                    advertise: a.advertise,
                    slots: a.slots.unwrap_or(settings.target_partitions),
                    work_dir: a.work_dir,
                    heartbeat: a.heartbeat,
                    private_network: a.private_network,
                };
                run_executor(options, settings).await
            }
        }
    };
    tokio::select! {
        result = run => result,
        () = serve::stop_signal() => Ok(()),
        () = orphaned => Ok(()),
    }
}

fn read_query(args: &SqlArgs) -> Result<String> {
    if let Some(path) = &args.file {
        return std::fs::read_to_string(path).map_err(|e| PitlakeError::Input {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        });
    }
    match args.query.as_deref() {
        Some("-") | None => {
            let mut sql = String::new();
            std::io::stdin().read_to_string(&mut sql)?;
            Ok(sql)
        }
        Some(sql) => Ok(sql.to_string()),
    }
}

async fn run_sql(engine: &Engine, args: SqlArgs) -> Result<()> {
    let sql = read_query(&args)?;
    let statements = engine.parse(&sql)?;
    if statements.is_empty() {
        return Err(PitlakeError::Syntax("no statement given".into()));
    }
    let mut out = match &args.output {
        Some(path) => Sink::file(path)?,
        None => {
            check_destination(args.format, std::io::stdout().is_terminal())?;
            Sink::Stdout(std::io::BufWriter::new(Stdout(std::io::stdout())))
        }
    };
    let max_rows = (args.max_rows > 0).then_some(args.max_rows);
    let options = RunOptions { force: args.force };
    for statement in statements {
        let started = Instant::now();
        match engine.run(statement, options).await? {
            Output::Rows(stream) => {
                print_stream(stream, args.format, max_rows, &mut out).await?;
            }
            Output::Done(message) => {
                // Reports go where they cannot corrupt machine-readable output.
                if args.format == OutputFormat::Table && args.output.is_none() {
                    writeln!(out, "{message}")?;
                } else {
                    eprintln!("{message}");
                }
            }
        }
        out.flush()?;
        if args.timing {
            eprintln!("Elapsed: {:.3} s", started.elapsed().as_secs_f64());
        }
    }
    out.finish()
}

/// Where `pitlake sql` writes its results. A file given with `--output` is replaced whole once
/// every statement has run: a statement that fails, or an interrupt, leaves the file as it was
/// ([`Replacement`]; a device or a pipe is written to in place).
enum Sink {
    Stdout(std::io::BufWriter<Stdout>),
    InPlace(std::io::BufWriter<std::fs::File>),
    Replace(std::io::BufWriter<Replacement>),
}

impl Sink {
    fn file(path: &Path) -> Result<Self> {
        let error = |e: std::io::Error| PitlakeError::Input {
            path: path.display().to_string(),
            message: format!("cannot create the output file: {e}"),
        };
        Ok(if Replacement::needed(path) {
            let replacement = Replacement::create(path, ".pitlake-output-").map_err(error)?;
            Sink::Replace(std::io::BufWriter::new(replacement))
        } else {
            Sink::InPlace(std::io::BufWriter::new(
                std::fs::File::create(path).map_err(error)?,
            ))
        })
    }

    /// Flushes what is buffered and puts a replaced file in place.
    fn finish(self) -> Result<()> {
        match self {
            Sink::Stdout(mut out) => out.flush()?,
            Sink::InPlace(mut out) => out.flush()?,
            Sink::Replace(out) => {
                let replacement = out.into_inner().map_err(|e| e.into_error())?;
                let target = replacement.target().to_path_buf();
                replacement.persist().map_err(|e| PitlakeError::Input {
                    path: target.display().to_string(),
                    message: format!("cannot replace the output file: {e}"),
                })?;
            }
        }
        Ok(())
    }
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout(out) => out.write(bytes),
            Sink::InPlace(out) => out.write(bytes),
            Sink::Replace(out) => out.write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::InPlace(out) => out.flush(),
            Sink::Replace(out) => out.flush(),
        }
    }
}

/// Draws ingest progress on a terminal: a bar over the input bytes, with the row count.
struct BarProgress {
    bar: ProgressBar,
    rows: std::sync::atomic::AtomicU64,
}

impl IngestProgress for BarProgress {
    fn start(&self, files: usize, total_bytes: u64) {
        self.bar.set_length(total_bytes);
        self.bar.set_message(format!(
            "0 rows from {files} file{}",
            if files == 1 { "" } else { "s" }
        ));
    }

    fn rows(&self, rows: u64) {
        let total = self
            .rows
            .fetch_add(rows, std::sync::atomic::Ordering::Relaxed)
            + rows;
        self.bar.set_message(format!("{total} rows"));
    }

    fn file_done(&self, _path: &Path, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

async fn run_ingest(engine: &Engine, args: IngestArgs) -> Result<()> {
    engine.warehouse().ensure_writable()?;
    let table = TableName::parse(&args.table)?;
    let mut request = IngestRequest::new(table, args.files);
    request.format = args.format.map(|f| match f {
        FormatArg::Csv => IngestFormat::Csv,
        FormatArg::Parquet => IngestFormat::Parquet,
        FormatArg::Json => IngestFormat::Json,
    });
    request.mode = match args.mode {
        ModeArg::Append => WriteMode::Append,
        ModeArg::Overwrite => WriteMode::Overwrite,
    };
    request.partition_by = args.partition_by;
    request.has_header = !args.no_header;
    request.delimiter = args.delimiter;
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} ingesting [{bar:30}] {bytes}/{total_bytes} {msg} ({elapsed})",
            )
            .map_err(|e| PitlakeError::Internal(e.to_string()))?
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        request.progress = Some(Arc::new(BarProgress {
            bar,
            rows: Default::default(),
        }));
    }
    let outcome = engine.ingest(request).await?;
    println!("{}", outcome.message());
    Ok(())
}
