//! Conformance: pitlake reads the real third-party Delta tables of the shared corpus
//! (`../shared/testdata`, catalogued in its `MANIFEST.md`) and gets the answers their sources
//! state. Every oracle below is quoted from the manifest or read from a Spark-written `expected/`
//! parquet (or, for a fixture's own log, its JSON); nothing a Delta reader computes is asserted as
//! an answer. Sweeps over every version, where the sources give no values, check each scan
//! against the row count in the log's own `numRecords` statistics.
//!
//! One file per corpus folder:
//! - `dat`: DAT, every expected version of every case, data and metadata;
//! - `golden`: Delta's golden tables (delta-kernel-rs copies) against Spark's `expected/`;
//! - `delta_rs`: delta-rs's fixtures, its error logs, and a whole warehouse over the folder;
//! - `delta_spark`: Delta's (Spark) deletion-vector tables, oldest protocol, unknown actions;
//! - `delta_kernel_rs`: delta-kernel-rs's targeted tables with stated results;
//! - `malformed`: malformed parquet files given to `ingest`.
//!
//! This file holds what they share: reading `expected/` parquet, normalising and comparing rows,
//! opening tables at a version, reading the log's own statistics, copying a table with its
//! commit times.
//!
//! Comparing with Spark's answers: rows are compared as sorted lists of formatted values, matched
//! by column name. Both sides are normalised first so that equal values print equally:
//! dictionary-encoded partition columns are decoded, string and binary views become plain
//! `Utf8`/`Binary`, and timestamps become microseconds with their zone (if any) spelled `UTC`
//! (Spark writes `+00:00` or `UTC` for the same instants). Nothing else is normalised: a naive
//! timestamp never equals a zoned one.
//!
//! Commit times: git drops file times, and the corpus files carry their extraction time rather than
//! those in `MTIMES.tsv`, so the timestamp tests copy a table into a temporary folder and set the
//! file times there from `MTIMES.tsv`. Nothing here writes into the corpus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use deltalake::DeltaTable;
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pitlake::engine::{IngestFormat, IngestRequest};
use pitlake::storage::{TableName, TableVersion};
use pitlake::{Engine, PitlakeError};

use crate::common;

mod dat;
mod delta_kernel_rs;
mod delta_rs;
mod delta_spark;
mod golden;
mod malformed;

/// A path inside the shared corpus.
fn corpus(rel: &str) -> PathBuf {
    common::shared_testdata().join(rel)
}

/// Every parquet file under `dir` (recursively), skipping Spark's `.crc`/`_SUCCESS` side files.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".parquet") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// All rows of all parquet files under `dir`, read with arrow-rs's own reader (not through
/// Delta), as the answer Spark wrote.
fn read_expected_parquet(dir: &Path) -> Vec<RecordBatch> {
    let files = parquet_files(dir);
    assert!(!files.is_empty(), "no parquet under {}", dir.display());
    let mut out = Vec::new();
    for file in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .build()
            .unwrap();
        for batch in reader {
            out.push(batch.unwrap_or_else(|e| panic!("{}: {e}", file.display())));
        }
    }
    out
}

/// Makes equal values of differently typed columns print equally (see the module docs).
fn normalize(array: &ArrayRef) -> ArrayRef {
    let target = match array.data_type() {
        DataType::Dictionary(_, value) => {
            return normalize(&cast(array, value).unwrap());
        }
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Timestamp(_, tz) => {
            DataType::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| "UTC".into()))
        }
        _ => return array.clone(),
    };
    cast(array, &target).unwrap()
}

/// The column names of a result (empty when it has no batches).
fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Each row as `col=value | col=value …` over `columns` (by name, in that order), sorted.
fn sorted_rows_by_columns(batches: &[RecordBatch], columns: &[String]) -> Vec<String> {
    let mut rows = Vec::new();
    for batch in batches {
        let arrays: Vec<ArrayRef> = columns
            .iter()
            .map(|name| {
                let column = batch
                    .column_by_name(name)
                    .unwrap_or_else(|| panic!("no column `{name}` in {:?}", batch.schema()));
                normalize(column)
            })
            .collect();
        for cells in crate::common::cells(&arrays, batch.num_rows()) {
            let cells: Vec<String> = columns
                .iter()
                .zip(cells)
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            rows.push(cells.join(" | "));
        }
    }
    rows.sort();
    rows
}

/// Compares a result with an expected answer: the same column names and the same rows in any
/// order. `skip` leaves columns out of the row comparison (they are still required to exist).
/// Returns a description of the difference, if any.
fn diff_rows(actual: &[RecordBatch], expected: &[RecordBatch], skip: &[&str]) -> Option<String> {
    let (a_count, e_count) = (common::count(actual), common::count(expected));
    if a_count != e_count {
        return Some(format!("{a_count} rows, expected {e_count}"));
    }
    if e_count == 0 {
        return None;
    }
    let a_names: BTreeSet<String> = column_names(actual).into_iter().collect();
    let e_names: BTreeSet<String> = column_names(expected).into_iter().collect();
    if a_names != e_names {
        return Some(format!("columns {a_names:?}, expected {e_names:?}"));
    }
    let columns: Vec<String> = column_names(expected)
        .into_iter()
        .filter(|c| !skip.contains(&c.as_str()))
        .collect();
    let a_rows = sorted_rows_by_columns(actual, &columns);
    let e_rows = sorted_rows_by_columns(expected, &columns);
    if a_rows == e_rows {
        return None;
    }
    let first = a_rows
        .iter()
        .zip(&e_rows)
        .find(|(a, e)| a != e)
        .map(|(a, e)| format!("\n  got      {a}\n  expected {e}"))
        .unwrap_or_default();
    Some(format!("rows differ; first difference:{first}"))
}

/// `"schema"."table"` or `"table"`, quoted for SQL.
fn sql_name(name: &TableName) -> String {
    match &name.schema {
        Some(schema) => format!("\"{schema}\".\"{}\"", name.table),
        None => format!("\"{}\"", name.table),
    }
}

/// Runs a query that must succeed.
async fn query(engine: &Engine, sql: &str) -> Vec<RecordBatch> {
    engine
        .collect(sql)
        .await
        .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"))
}

/// Runs a query that must fail, and returns its error.
async fn query_error(engine: &Engine, sql: &str) -> PitlakeError {
    match engine.collect(sql).await {
        Ok(batches) => panic!(
            "`{sql}` should fail but returned {} rows",
            common::count(&batches)
        ),
        Err(err) => err,
    }
}

/// Asserts an error's message contains every one of `needles`.
fn assert_message(err: &PitlakeError, needles: &[&str]) {
    let message = err.to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "error should mention `{needle}`: {message}"
        );
    }
}

/// Asserts a read was refused over a reader feature pitlake (deltalake 1.1) does not support:
/// an error naming the table and the feature — never rows, never an internal error. Either a
/// table error or "not supported" fits; the message is what a person acts on.
fn assert_unsupported_feature(err: &PitlakeError, table: &str, feature: &str) {
    assert!(
        matches!(
            err,
            PitlakeError::CorruptTable { .. } | PitlakeError::Unsupported(_)
        ),
        "`{table}`: {err:?}"
    );
    assert_message(err, &[&format!("`{table}`"), feature]);
}

/// A column of a result as sorted integers.
fn sorted_ints(batches: &[RecordBatch], column: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for batch in batches {
        let array = cast(batch.column_by_name(column).unwrap(), &DataType::Int64).unwrap();
        let array = array.as_any().downcast_ref::<Int64Array>().unwrap();
        out.extend(array.iter().map(|v| v.unwrap()));
    }
    out.sort_unstable();
    out
}

/// Rows of chosen columns as formatted strings (normalised), sorted.
fn sorted_tuples(batches: &[RecordBatch], columns: &[&str]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for batch in batches {
        let arrays: Vec<ArrayRef> = columns
            .iter()
            .map(|c| normalize(batch.column_by_name(c).unwrap()))
            .collect();
        out.extend(crate::common::cells(&arrays, batch.num_rows()));
    }
    out.sort();
    out
}

/// Opens a table at a version through the warehouse (the path every query takes).
async fn open(engine: &Engine, name: &TableName, version: TableVersion) -> DeltaTable {
    engine
        .warehouse()
        .open(name, version)
        .await
        .unwrap_or_else(|e| panic!("opening `{name}` at {version:?}: {e}"))
}

/// The version a table was opened at.
fn version_of(table: &DeltaTable) -> i64 {
    table.version().unwrap() as i64
}

/// Rows the log says the snapshot holds: the sum of the active files' `numRecords` less the rows
/// their deletion vectors remove; `None` when a file has no statistics.
fn rows_from_log(table: &DeltaTable) -> Option<usize> {
    let snapshot = table.snapshot().ok()?;
    let mut total = 0usize;
    for file in snapshot.log_data().iter() {
        let records = file.num_records()?;
        let deleted = file
            .deletion_vector_descriptor()
            .map_or(0, |dv| usize::try_from(dv.cardinality).unwrap());
        total += records - deleted;
    }
    Some(total)
}

/// The file names (last path segment, decoded) of a snapshot's active files.
fn active_files(table: &DeltaTable) -> BTreeMap<String, i64> {
    table
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| {
            let path = f.path().to_string();
            let name = path.rsplit('/').next().unwrap().to_string();
            (name, f.modification_time())
        })
        .collect()
}

/// Whether the corpus holds the data files of a table (some fixtures are logs only).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Data {
    /// Data files present: every version is also scanned.
    Present,
    /// Log only: every version is opened, none is scanned.
    LogOnly,
}

/// Opens every version the log holds (oldest readable to latest); checks each opens at exactly
/// that version and, with `Data::Present`, that a full scan returns the number of rows the log's
/// statistics give (or, without statistics, at least succeeds). Returns the row count per
/// version (`None` for log-only tables).
async fn every_version(
    engine: &Engine,
    name: &TableName,
    data: Data,
) -> BTreeMap<i64, Option<usize>> {
    let listing = engine.warehouse().log_listing(name).await.unwrap();
    let (first, last) = (listing.earliest().unwrap(), listing.latest().unwrap());
    let mut out = BTreeMap::new();
    for v in first..=last {
        let table = open(engine, name, TableVersion::Version(v)).await;
        assert_eq!(version_of(&table), v, "`{name}` VERSION AS OF {v}");
        if data == Data::LogOnly {
            out.insert(v, None);
            continue;
        }
        let sql = format!("SELECT * FROM {} VERSION AS OF {v}", sql_name(name));
        let rows = common::count(&query(engine, &sql).await);
        if let Some(from_log) = rows_from_log(&table) {
            assert_eq!(rows, from_log, "`{sql}`: rows vs the log's numRecords");
        }
        out.insert(v, Some(rows));
    }
    out
}

/// Copies the corpus folder `rel` into a fresh temporary folder (as `<tmp>/<last segment of
/// rel>`), then gives every file listed in `MTIMES.tsv` under `rel` its recorded modification
/// time. Returns the temporary folder, which is the warehouse holding the copy.
fn copy_with_mtimes(rel: &str) -> tempfile::TempDir {
    let source = corpus(rel);
    let dir = tempfile::tempdir().unwrap();
    let leaf = Path::new(rel).file_name().unwrap();
    copy_tree(&source, &dir.path().join(leaf));
    let tsv = std::fs::read_to_string(corpus("MTIMES.tsv")).unwrap();
    let mut applied = 0;
    for line in tsv.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [path, _iso, epoch_ms, ..] = fields.as_slice() else {
            panic!("bad MTIMES.tsv line: {line}");
        };
        let Some(inner) = path.strip_prefix(&format!("{rel}/")) else {
            continue;
        };
        let ms: u64 = epoch_ms.parse().unwrap();
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let file = std::fs::File::open(dir.path().join(leaf).join(inner)).unwrap();
        file.set_modified(time).unwrap();
        applied += 1;
    }
    assert!(applied > 0, "MTIMES.tsv lists no file under {rel}");
    dir
}

/// Copies a folder tree (files and folders only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}
