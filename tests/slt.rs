//! Runs every `sql/**/*.slt` file with sqllogictest, each against its own empty warehouse in a
//! temporary folder.
//!
//! `cargo test --test slt` runs them all; `cargo test --test slt -- asof` runs the files whose
//! path contains `asof`. Set `PITLAKE_SLT_COMPLETE=1` to rewrite the expected results in place
//! (review the diff before committing it).
//!
//! Harness conventions:
//! - a statement whose text starts with `-- force` runs as if `--force` were given (for
//!   `DROP TABLE`); without it a drop is refused, which files also pin;
//! - result values print with Arrow's formatter; NULL is `NULL`, the empty string `(empty)`;
//! - a value with several lines (an `EXPLAIN` plan) prints one result line per text line;
//! - column types: `I` integers, `R` floats and decimals, `T` everything else (checked strictly).

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
#[allow(clippy::ptr_arg)]
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

async fn run_file(path: &Path, complete: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let warehouse = dir.path().join("warehouse");
    std::fs::create_dir_all(&warehouse).map_err(|e| e.to_string())?;
    let make = move || {
        let warehouse = warehouse.clone();
        async move {
            let mut settings =
                Settings::new(WarehouseLocation::parse(&warehouse.display().to_string())?);
            // Small, fixed settings: results must not depend on the machine.
            settings.target_partitions = 2;
            settings.memory_limit = Some(512 << 20);
            Ok::<_, PitlakeError>(PitlakeDb {
                engine: Engine::new(settings)?,
            })
        }
    };
    let mut runner = sqllogictest::Runner::new(make);
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
    let started = Instant::now();
    let mut failed = Vec::new();
    for file in &files {
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        let t = Instant::now();
        match runtime.block_on(run_file(file, complete)) {
            Ok(()) => println!("ok    {shown} ({:.1}s)", t.elapsed().as_secs_f64()),
            Err(err) => {
                println!("FAIL  {shown}\n{err}\n");
                failed.push(shown);
            }
        }
    }
    println!(
        "\n{} files, {} failed, {:.1}s",
        files.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if files.is_empty() {
        eprintln!("no .slt files matched");
        std::process::exit(1);
    }
    if !failed.is_empty() {
        eprintln!("failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}
