//! Runs every `sql/**/*.slt` file with sqllogictest, each against its own empty warehouse, once
//! per storage backend: a temporary local folder, `s3://<bucket>/<unique prefix>/warehouse` on an
//! S3 server (moto) and `az://<container>/<unique prefix>/warehouse` on an Azure Blob Storage
//! emulator (Azurite). `tests/it/s3/server.rs` says how the servers are found or started;
//! without one, its runs fail: they are never skipped.
//!
//! `cargo test --test slt` runs them all; `cargo test --test slt -- asof` runs the files whose
//! path contains `asof`. `PITLAKE_SLT_BACKENDS=local` (or `s3`, `azure`, `local,s3` …) runs
//! some backends only. Set
//! `PITLAKE_SLT_COMPLETE=1` to rewrite the expected results in place (review the diff before
//! committing it; completion runs on the local backend).
//!
//! A file that is inherently about local folders opts out of the object-store runs with a header
//! line
//! `# backends: local (<why>)`.
//!
//! Harness conventions:
//! - a statement whose text starts with `-- force` runs as if `--force` were given (for
//!   `DROP TABLE`); without it a drop is refused, which files also pin;
//! - result values print with Arrow's formatter; NULL is `NULL`, the empty string `(empty)`;
//! - a value with several lines (an `EXPLAIN` plan) prints one result line per text line;
//! - column types: `I` integers, `R` floats and decimals, `T` everything else (checked strictly);
//! - the cluster runs carry the label `cluster`: a record whose answer is a plan (`EXPLAIN`)
//!   says `skipif cluster` and has an `onlyif cluster` twin with the cluster's plan.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use futures::TryStreamExt;
use pitlake::{Engine, Output, PitlakeError, RunOptions, Settings, WarehouseLocation};
use sqllogictest::{DBOutput, DefaultColumnType};

#[path = "it/s3/server.rs"]
mod store_servers;

#[path = "it/cluster_processes.rs"]
mod cluster;

/// Where a file's warehouse lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// A temporary local folder.
    Local,
    /// A fresh prefix on the S3 test server.
    S3,
    /// A fresh prefix on the Azure Blob Storage test server.
    Azure,
    /// A temporary local folder, queries run on a Ballista cluster of pitlake processes on
    /// loopback (a scheduler and two executors, started once for the whole run).
    Cluster,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::S3 => "s3",
            Backend::Azure => "azure",
            Backend::Cluster => "cluster",
        }
    }

    fn server(self) -> Result<&'static store_servers::StoreServer, String> {
        match self {
            Backend::Local | Backend::Cluster => Err("a local folder has no server".into()),
            Backend::S3 => store_servers::s3_server(),
            Backend::Azure => store_servers::azure_server(),
        }
    }
}

/// The backends a file runs on: every storage backend, unless its header says
/// `# backends: local (…)`; and the cluster for the as-of join files and the training sets,
/// unless its header says `# cluster: no (…)`.
fn file_backends(path: &Path) -> Vec<Backend> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let header = |prefix: &str| {
        text.lines()
            .take_while(|l| l.starts_with('#') || l.trim().is_empty())
            .any(|l| l.trim_start_matches('#').trim().starts_with(prefix))
    };
    let mut backends = if header("backends: local") {
        vec![Backend::Local]
    } else {
        vec![Backend::Local, Backend::S3, Backend::Azure]
    };
    let shown = path.to_string_lossy().replace('\\', "/");
    if (shown.contains("/sql/asof/") || shown.ends_with("/sql/dsl/training_set.slt"))
        && !header("cluster: no")
    {
        backends.push(Backend::Cluster);
    }
    backends
}

struct PitlakeDb {
    engine: Engine,
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DefaultColumnType::Integer,
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => DefaultColumnType::FloatingPoint,
        DataType::Dictionary(_, value) => column_type(value),
        _ => DefaultColumnType::Text,
    }
}

fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, PitlakeError> {
    let options = FormatOptions::default()
        .with_null("NULL")
        .with_display_error(true);
    let mut out = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .zip(batch.columns())
                .map(|(f, column)| {
                    let text = f.value(row).to_string();
                    if text.is_empty() && !column.is_null(row) {
                        "(empty)".to_string()
                    } else {
                        text
                    }
                })
                .collect();
            // Multi-line values (EXPLAIN plans) become one result line per text line, the
            // other columns shown on the first line only.
            let height = cells.iter().map(|c| c.lines().count()).max().unwrap_or(1);
            for line in 0..height.max(1) {
                out.push(
                    cells
                        .iter()
                        .map(|c| c.lines().nth(line).unwrap_or("").to_string())
                        .collect(),
                );
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl sqllogictest::AsyncDB for PitlakeDb {
    type Error = PitlakeError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, PitlakeError> {
        let force = sql.trim_start().starts_with("-- force");
        let mut last = DBOutput::StatementComplete(0);
        for statement in self.engine.parse(sql)? {
            last = match self.engine.run(statement, RunOptions { force }).await? {
                Output::Rows(stream) => {
                    let schema = stream.schema();
                    let batches: Vec<RecordBatch> = stream.try_collect().await?;
                    DBOutput::Rows {
                        types: schema
                            .fields()
                            .iter()
                            .map(|f| column_type(f.data_type()))
                            .collect(),
                        rows: rows(&batches)?,
                    }
                }
                Output::Done(_) => DBOutput::StatementComplete(0),
            };
        }
        Ok(last)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "pitlake"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn normalize(line: &str) -> String {
    line.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

/// Compares results line by line with whitespace collapsed; `<slt:ignore>` in an expected line
/// skips any text there (sqllogictest's own marker, here also applied to normalized lines).
fn validator(
    _normalizer: sqllogictest::Normalizer,
    actual: &[Vec<String>],
    expected: &[String],
) -> bool {
    const IGNORE: &str = "<slt:ignore>";
    let actual: Vec<String> = actual.iter().map(|row| normalize(&row.join(" "))).collect();
    let expected: Vec<String> = expected.iter().map(|line| normalize(line)).collect();
    if !expected.iter().any(|line| line.contains(IGNORE)) {
        return actual == expected;
    }
    let actual = actual.join("\n");
    let expected = expected.join("\n");
    let mut pos = 0;
    for fragment in expected.split(IGNORE).filter(|f| !f.is_empty()) {
        match actual[pos..].find(fragment) {
            Some(at) => pos += at + fragment.len(),
            None => return false,
        }
    }
    true
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

async fn run_file(path: &Path, backend: Backend, complete: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let location = match backend {
        Backend::Local | Backend::Cluster => {
            let warehouse = dir.path().join("warehouse");
            std::fs::create_dir_all(&warehouse).map_err(|e| e.to_string())?;
            WarehouseLocation::parse(&warehouse.display().to_string()).map_err(|e| e.to_string())?
        }
        Backend::S3 | Backend::Azure => {
            let server = backend.server()?;
            // `…/warehouse` like the local folder, so pinned plans read the same.
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("file");
            let url = format!("{}/warehouse", server.warehouse(&format!("slt-{stem}")));
            WarehouseLocation::parse(&url)
                .map_err(|e| e.to_string())?
                .with_storage_options(server.options())
        }
    };
    let cluster = match backend {
        Backend::Cluster => Some(cluster::shared()?.url.clone()),
        _ => None,
    };
    let make = move || {
        let location = location.clone();
        let cluster = cluster.clone();
        async move {
            let mut settings = Settings::new(location);
            settings.cluster = cluster;
            // Small, fixed settings: results must not depend on the machine.
            settings.target_partitions = 2;
            settings.memory_limit = Some(512 << 20);
            settings.user = "slt".into();
            Ok::<_, PitlakeError>(PitlakeDb {
                engine: Engine::new(settings)?,
            })
        }
    };
    let mut runner = sqllogictest::Runner::new(make);
    // `onlyif cluster` / `skipif cluster`: records whose answer is the plan, which differs.
    if backend == Backend::Cluster {
        runner.add_label("cluster");
    }
    runner.with_column_validator(sqllogictest::strict_column_validator);
    runner.with_validator(validator);
    if complete {
        runner
            .update_test_file(
                path,
                " ",
                validator,
                sqllogictest::default_normalizer,
                sqllogictest::strict_column_validator,
            )
            .await
            .map_err(|e| e.to_string())
    } else {
        runner
            .run_file_async(path)
            .await
            .map_err(|e| e.display(true).to_string())
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() {
        files.retain(|f| {
            filters
                .iter()
                .any(|p| f.to_string_lossy().contains(p.as_str()))
        });
    }
    let complete = std::env::var_os("PITLAKE_SLT_COMPLETE").is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let wanted: Vec<String> = std::env::var("PITLAKE_SLT_BACKENDS")
        .unwrap_or_else(|_| "local,s3,azure,cluster".to_string())
        .split(',')
        .map(|b| b.trim().to_ascii_lowercase())
        .collect();
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut runs = 0;
    let mut wanted = wanted;
    for backend in [Backend::S3, Backend::Azure] {
        let name = backend.name();
        if wanted.iter().any(|w| w == name)
            && !complete
            && let Err(why) = backend.server()
        {
            // Said once, not once per file; the runs count as failed, never as skipped.
            println!("FAIL  [{name}] every file: {why}\n");
            failed.push(format!("[{name}] every file (no server)"));
            runs += 1;
            wanted.retain(|w| w != name);
        }
    }
    if wanted.iter().any(|w| w == "cluster")
        && !complete
        && files
            .iter()
            .any(|f| file_backends(f).contains(&Backend::Cluster))
        && let Err(why) = cluster::shared()
    {
        println!("FAIL  [cluster] every file: {why}\n");
        failed.push("[cluster] every file (no cluster)".to_string());
        runs += 1;
        wanted.retain(|w| w != "cluster");
    }
    for file in &files {
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        for backend in file_backends(file) {
            // Completion rewrites the file: once is enough.
            if !wanted.iter().any(|w| w == backend.name())
                || (complete && backend != Backend::Local)
            {
                continue;
            }
            runs += 1;
            let t = Instant::now();
            let label = format!("[{}] {shown}", backend.name());
            match runtime.block_on(run_file(file, backend, complete)) {
                Ok(()) => println!("ok    {label} ({:.1}s)", t.elapsed().as_secs_f64()),
                Err(err) => {
                    println!("FAIL  {label}\n{err}\n");
                    failed.push(label);
                }
            }
        }
    }
    if let Some(cluster) = cluster::if_started() {
        cluster.stop();
    }
    println!(
        "\n{} files, {runs} runs ({}), {} failed, {:.1}s",
        files.len(),
        wanted.join(", "),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if files.is_empty() || runs == 0 {
        eprintln!(
            "no .slt files matched (or PITLAKE_SLT_BACKENDS named no backend: local, s3, azure, cluster)"
        );
        std::process::exit(1);
    }
    if !failed.is_empty() {
        eprintln!("failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}
