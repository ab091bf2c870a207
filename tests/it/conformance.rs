//! Conformance: pitlake reads the real third-party Delta tables of the shared corpus
//! (`../shared/testdata`, catalogued in its `MANIFEST.md`) and gets the answers their sources
//! state. Every oracle below is quoted from the manifest or read from a Spark-written `expected/`
//! parquet (or, for a fixture's own log, its JSON); nothing a Delta reader computes is asserted as
//! an answer. Sweeps over every version, where the sources give no values, check each scan
//! against the row count in the log's own `numRecords` statistics.
//!
//! The groups:
//! - DAT: every `expected/vN` and `expected/latest` of every case, data and
//!   `table_version_metadata.json` (version, protocol, properties).
//! - Golden tables (delta-kernel-rs copies of Delta's): the latest snapshot against `expected/`;
//!   negative tables must fail with an error naming the table; the tables delta-kernel-rs skips get
//!   the behaviour the manifest describes, or a clear error where deltalake 1.1 cannot read them;
//!   versions reached by time travel against the `expected/` of the table one step earlier in the
//!   same generator chain.
//! - delta-rs fixtures: the values, versions, file counts and commit-time lookups of delta-rs's
//!   own tests, the logs that must open and those that must not.
//! - Delta (Spark) test tables: per-version id sets of the deletion-vector tables, the oldest
//!   protocol, a log with unknown actions.
//! - delta-kernel-rs targeted tables with stated results.
//! - Malformed parquet files given to `ingest`: an error, never a panic, never a half-made table.
//! - A whole warehouse over the delta-rs folder: the listing, and a broken table not disturbing
//!   the next query.
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
use arrow::util::display::{ArrayFormatter, FormatOptions};
use deltalake::DeltaTable;
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pitlake::engine::{IngestFormat, IngestRequest};
use pitlake::storage::{TableName, TableVersion};
use pitlake::{Engine, PitlakeError};

use crate::common;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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
    let options = FormatOptions::default().with_null("NULL");
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
        let formatters: Vec<_> = arrays
            .iter()
            .map(|a| ArrayFormatter::try_new(a.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = columns
                .iter()
                .zip(&formatters)
                .map(|(name, f)| format!("{name}={}", f.value(row)))
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
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let arrays: Vec<ArrayRef> = columns
            .iter()
            .map(|c| normalize(batch.column_by_name(c).unwrap()))
            .collect();
        let formatters: Vec<_> = arrays
            .iter()
            .map(|a| ArrayFormatter::try_new(a.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
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

// ---------------------------------------------------------------------------------------------
// DAT
// ---------------------------------------------------------------------------------------------

/// DAT cases: (case, [(expected folder, rows)]) as the manifest lists them.
const DAT: &[(&str, &[(&str, usize)])] = &[
    ("basic_append", &[("latest", 5), ("v0", 3), ("v1", 5)]),
    ("basic_partitioned", &[("latest", 6), ("v0", 3), ("v1", 6)]),
    (
        "multi_partitioned",
        &[("latest", 2), ("v0", 3), ("v1", 5), ("v2", 2)],
    ),
    ("with_schema_change", &[("latest", 3), ("v1", 3)]),
];

/// DAT README contract: for each `expected/<latest|vN>`, the table read at that version equals
/// `table_content.parquet`, and the version, protocol and properties equal
/// `table_version_metadata.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dat_cases_match_every_expected_version() {
    // The corpus holds exactly the cases (and expected folders) the manifest lists.
    let on_disk: BTreeSet<String> = std::fs::read_dir(corpus("dat"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('_'))
        .collect();
    let listed: BTreeSet<String> = DAT.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(on_disk, listed);

    let mut failures = Vec::new();
    let mut checked = 0;
    for (case, expectations) in DAT {
        let root = corpus(&format!("dat/{case}"));
        let folders: BTreeSet<String> = std::fs::read_dir(root.join("expected"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        let listed: BTreeSet<String> = expectations.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(folders, listed, "dat/{case}/expected");

        let engine = common::engine(&root);
        let name = TableName::bare("delta");
        for (folder, rows) in *expectations {
            let dir = root.join("expected").join(folder);
            let meta: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("table_version_metadata.json")).unwrap(),
            )
            .unwrap();
            let meta_version = meta["version"].as_i64().unwrap();
            let (sql, version) = match folder.strip_prefix('v') {
                Some(v) => {
                    let v: i64 = v.parse().unwrap();
                    assert_eq!(meta_version, v, "dat/{case}/{folder} metadata version");
                    (
                        format!("SELECT * FROM \"delta\" VERSION AS OF {v}"),
                        TableVersion::Version(v),
                    )
                }
                None => ("SELECT * FROM \"delta\"".to_string(), TableVersion::Latest),
            };
            let context = format!("dat/{case} expected/{folder}");

            let table = open(&engine, &name, version).await;
            let snapshot = table.snapshot().unwrap();
            assert_eq!(version_of(&table), meta_version, "{context}: version");
            assert_eq!(
                i64::from(snapshot.protocol().min_reader_version()),
                meta["min_reader_version"].as_i64().unwrap(),
                "{context}: min_reader_version"
            );
            assert_eq!(
                i64::from(snapshot.protocol().min_writer_version()),
                meta["min_writer_version"].as_i64().unwrap(),
                "{context}: min_writer_version"
            );
            let properties: BTreeMap<String, String> = meta["properties"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let configuration: BTreeMap<String, String> = snapshot
                .metadata()
                .configuration()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(configuration, properties, "{context}: properties");

            let expected = read_expected_parquet(&dir);
            assert_eq!(
                common::count(&expected),
                *rows,
                "{context}: manifest row count"
            );
            let actual = query(&engine, &sql).await;
            if let Some(diff) = diff_rows(&actual, &expected, &[]) {
                failures.push(format!("{context}: {diff}"));
            }
            checked += 1;
        }
        // Every version in the log reads, including those without an expected folder
        // (with_schema_change v0, before its overwriteSchema).
        every_version(&engine, &name, Data::Present).await;
    }
    assert_eq!(checked, 12);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Golden tables
// ---------------------------------------------------------------------------------------------

/// What reading a golden table's latest snapshot must give.
#[derive(Debug, Clone, Copy)]
enum Golden {
    /// Equal to the Spark-written `expected/` (holding this many rows, per the manifest).
    Expected(usize),
    /// Must fail (a negative test, or a log that breaks the protocol); the error names the table
    /// and contains this text.
    MustFail(&'static str),
    /// A reader feature deltalake 1.1 refuses (the manifest expects data): a clear error naming
    /// the feature, never rows.
    Unsupported(&'static str),
    /// Checked by its own test below (named in the comment).
    Own,
}

/// Every golden table in the corpus with what it must give.
const GOLDEN: &[(&str, Golden)] = &[
    ("124-decimal-decode-bug", Golden::Expected(1)),
    ("125-iterator-bug", Golden::Expected(5)),
    ("basic-decimal-table", Golden::Expected(4)),
    ("basic-decimal-table-legacy", Golden::Expected(4)),
    (
        "basic-with-inserts-deletes-checkpoint",
        Golden::Expected(41),
    ),
    ("basic-with-inserts-merge", Golden::Expected(140)),
    (
        "basic-with-inserts-overwrite-restore",
        Golden::Expected(200),
    ),
    ("basic-with-inserts-updates", Golden::Expected(100)),
    // The manifest: "reader feature vacuumProtocolCheck must be accepted by readers";
    // deltalake 1.1's reader refuses it.
    (
        "basic-with-vacuum-protocol-check-feature",
        Golden::Unsupported("VacuumProtocolCheck"),
    ),
    // golden_canonicalized_paths
    ("canonicalized-paths-normal-a", Golden::Own),
    ("canonicalized-paths-normal-b", Golden::Own),
    ("canonicalized-paths-special-a", Golden::Own),
    ("canonicalized-paths-special-b", Golden::Own),
    // golden_checkpoint_keeps_one_file
    ("checkpoint", Golden::Own),
    ("corrupted-last-checkpoint-kernel", Golden::Expected(100)),
    // No metaData action at all (two bare adds): a reader must refuse it.
    (
        "data-reader-absolute-paths-escaped-chars",
        Golden::MustFail("metadata"),
    ),
    ("data-reader-array-complex-objects", Golden::Expected(10)),
    ("data-reader-array-primitives", Golden::Expected(10)),
    ("data-reader-date-types-America", Golden::Expected(1)),
    ("data-reader-date-types-Asia", Golden::Expected(1)),
    ("data-reader-date-types-Etc", Golden::Expected(1)),
    ("data-reader-date-types-Iceland", Golden::Expected(1)),
    ("data-reader-date-types-Jst", Golden::Expected(1)),
    ("data-reader-date-types-Pst", Golden::Expected(1)),
    ("data-reader-date-types-utc", Golden::Expected(1)),
    ("data-reader-escaped-chars", Golden::Expected(3)),
    ("data-reader-map", Golden::Expected(10)),
    ("data-reader-nested-struct", Golden::Expected(10)),
    (
        "data-reader-nullable-field-invalid-schema-key",
        Golden::Expected(1),
    ),
    // golden_partition_values_with_corrected_timestamp
    ("data-reader-partition-values", Golden::Own),
    ("data-reader-primitives", Golden::Expected(11)),
    ("data-reader-timestamp_ntz", Golden::Expected(9)),
    // delta-kernel-rs skips the id-mode tables (unsupported there); pitlake must read them.
    ("data-reader-timestamp_ntz-id-mode", Golden::Expected(9)),
    ("data-reader-timestamp_ntz-name-mode", Golden::Expected(9)),
    ("data-skipping-basic-stats-all-types", Golden::Expected(1)),
    (
        "data-skipping-basic-stats-all-types-checkpoint",
        Golden::Expected(1),
    ),
    (
        "data-skipping-basic-stats-all-types-columnmapping-id",
        Golden::Expected(1),
    ),
    (
        "data-skipping-basic-stats-all-types-columnmapping-name",
        Golden::Expected(1),
    ),
    (
        "data-skipping-change-stats-collected-across-versions",
        Golden::Expected(3),
    ),
    (
        "data-skipping-partition-and-data-column",
        Golden::Expected(4),
    ),
    ("decimal-various-scale-precision", Golden::Expected(3)),
    // golden_delete_re_add_same_file
    (
        "delete-re-add-same-file-different-transactions",
        Golden::Own,
    ),
    // golden_commit_info_without_schema
    ("deltalog-commit-info", Golden::Own),
    ("deltalog-getChanges", Golden::Expected(0)),
    (
        "deltalog-invalid-protocol-version",
        Golden::MustFail("protocol"),
    ),
    (
        "deltalog-state-reconstruction-from-checkpoint-missing-metadata",
        Golden::MustFail("metadata"),
    ),
    // The checkpoint's metaData rows lack schemaString, so deltalake fails while parsing it,
    // before it can notice the missing protocol: still a refusal, for a truthful reason.
    (
        "deltalog-state-reconstruction-from-checkpoint-missing-protocol",
        Golden::MustFail("schemaString"),
    ),
    (
        "deltalog-state-reconstruction-without-metadata",
        Golden::MustFail("metadata"),
    ),
    (
        "deltalog-state-reconstruction-without-protocol",
        Golden::MustFail("protocol"),
    ),
    ("dv-partitioned-with-checkpoint", Golden::Expected(35)),
    ("dv-with-columnmapping", Golden::Expected(35)),
    // golden_hive_layout_is_not_a_table
    ("hive", Golden::Own),
    ("kernel-timestamp-int96", Golden::Expected(5)),
    ("kernel-timestamp-pst", Golden::Expected(5)),
    ("kernel-timestamp-timestamp_micros", Golden::Expected(5)),
    ("kernel-timestamp-timestamp_millis", Golden::Expected(5)),
    ("log-replay-dv-key-cases", Golden::Expected(47)),
    ("log-replay-latest-metadata-protocol", Golden::Expected(40)),
    ("log-replay-special-characters", Golden::Expected(0)),
    ("log-replay-special-characters-a", Golden::Expected(0)),
    // golden_special_character_path
    ("log-replay-special-characters-b", Golden::Own),
    ("multi-part-checkpoint", Golden::Expected(31)),
    // golden_no_delta_log_folder
    ("no-delta-log-folder", Golden::Own),
    ("only-checkpoint-files", Golden::Expected(25)),
    // delta-kernel-rs skips these two over nullability and the legacy list element name; values
    // are compared here, so neither matters.
    ("parquet-all-types", Golden::Expected(200)),
    ("parquet-all-types-legacy-format", Golden::Expected(200)),
    ("snapshot-data0", Golden::Expected(10)),
    ("snapshot-data1", Golden::Expected(20)),
    ("snapshot-data2", Golden::Expected(10)),
    ("snapshot-data2-deleted", Golden::Expected(20)),
    ("snapshot-data3", Golden::Expected(30)),
    ("snapshot-repartitioned", Golden::Expected(20)),
    ("snapshot-vacuumed", Golden::Expected(20)),
    ("table-with-columnmapping-mode-id", Golden::Expected(6)),
    ("table-with-columnmapping-mode-name", Golden::Expected(6)),
    ("time-travel-partition-changes-a", Golden::Expected(10)),
    ("time-travel-partition-changes-b", Golden::Expected(10)),
    ("time-travel-schema-changes-a", Golden::Expected(10)),
    ("time-travel-schema-changes-b", Golden::Expected(20)),
    ("time-travel-start", Golden::Expected(10)),
    ("time-travel-start-start20", Golden::Expected(20)),
    ("time-travel-start-start20-start40", Golden::Expected(30)),
    // Written by Delta Standalone with a metaData action that has no schemaString, which the
    // protocol requires: a reader must refuse it (the manifest gives no expected/ for it).
    ("update-deleted-directory", Golden::MustFail("schemaString")),
    ("v2-checkpoint-json", Golden::Expected(10)),
    ("v2-checkpoint-parquet", Golden::Expected(10)),
    ("versions-not-contiguous", Golden::MustFail("contiguous")),
];

/// An engine over a golden table's folder (whose `delta/` is the table).
fn golden_engine(table: &str) -> Engine {
    common::engine(&corpus(&format!("delta-kernel-rs-golden/{table}")))
}

/// delta-kernel-rs `golden_tables.rs`: read the latest snapshot, sort, compare with all parquet
/// under `expected/`; `negative_test!` tables must fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_tables_latest_snapshot() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(corpus("delta-kernel-rs-golden"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let listed: BTreeSet<String> = GOLDEN.iter().map(|(t, _)| t.to_string()).collect();
    assert_eq!(on_disk, listed, "every golden table has a case");

    let mut failures = Vec::new();
    for (table, golden) in GOLDEN {
        let engine = golden_engine(table);
        let expected_dir = corpus(&format!("delta-kernel-rs-golden/{table}/expected"));
        let sql = "SELECT * FROM \"delta\"";
        match golden {
            Golden::Expected(rows) => {
                let expected = read_expected_parquet(&expected_dir);
                assert_eq!(
                    common::count(&expected),
                    *rows,
                    "{table}: manifest row count"
                );
                match engine.collect(sql).await {
                    Ok(actual) => {
                        if let Some(diff) = diff_rows(&actual, &expected, &[]) {
                            failures.push(format!("{table}: {diff}"));
                        }
                    }
                    Err(e) => failures.push(format!("{table}: {e}")),
                }
            }
            Golden::MustFail(needle) => {
                assert!(!expected_dir.exists(), "{table} has an expected/");
                let err = query_error(&engine, sql).await;
                assert!(
                    matches!(err, PitlakeError::CorruptTable { .. }),
                    "{table}: {err:?}"
                );
                assert_message(&err, &["`delta`"]);
                if !err
                    .to_string()
                    .to_lowercase()
                    .contains(&needle.to_lowercase())
                {
                    failures.push(format!("{table}: error should mention {needle}: {err}"));
                }
            }
            Golden::Unsupported(feature) => {
                let err = query_error(&engine, sql).await;
                assert_unsupported_feature(&err, "delta", feature);
            }
            Golden::Own => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `data-reader-partition-values`: delta-kernel-rs skips it because Spark's `expected/` holds
/// `as_timestamp` shifted by the writer's session time zone (2021-09-08T18:11:11Z); the manifest
/// gives the right value, 2021-09-08T11:11:11+00:00 (the log's partition value
/// `2021-09-08 11:11:11`, in UTC). Every other column must equal `expected/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_partition_values_with_corrected_timestamp() {
    let table = "data-reader-partition-values";
    let engine = golden_engine(table);
    let actual = query(&engine, "SELECT * FROM \"delta\"").await;
    let expected =
        read_expected_parquet(&corpus(&format!("delta-kernel-rs-golden/{table}/expected")));
    assert_eq!(common::count(&expected), 3);
    if let Some(diff) = diff_rows(&actual, &expected, &["as_timestamp"]) {
        panic!("{table}: {diff}");
    }
    // Two partitions hold the timestamp, the third is the all-NULL partition.
    let timestamps: Vec<String> = sorted_tuples(&actual, &["as_timestamp"])
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(
        timestamps,
        ["2021-09-08T11:11:11Z", "2021-09-08T11:11:11Z", "NULL"]
    );
}

/// `canonicalized-paths-*`: an add and a remove spelling the same absolute path differently
/// (`file:/p`, `file:///p`, `/p`) must cancel, leaving version 1 with no files. deltalake 1.1
/// does not canonicalise them (delta-kernel-rs skips these as a BUG too), so a file nobody holds
/// stays active. pitlake must then fail the scan with an error naming the missing file — never
/// rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_canonicalized_paths() {
    for (table, path) in [
        (
            "canonicalized-paths-normal-a",
            "some/unqualified/absolute/path",
        ),
        (
            "canonicalized-paths-normal-b",
            "some/unqualified/absolute/path",
        ),
        (
            "canonicalized-paths-special-a",
            "some/unqualified/with space/p@#h",
        ),
        (
            "canonicalized-paths-special-b",
            "some/unqualified/with space/p@#h",
        ),
    ] {
        let engine = golden_engine(table);
        let name = TableName::bare("delta");
        let latest = open(&engine, &name, TableVersion::Latest).await;
        assert_eq!(version_of(&latest), 1, "{table}");
        // Version 0 holds the one added file, which does not exist anywhere.
        let v0 = open(&engine, &name, TableVersion::Version(0)).await;
        assert_eq!(v0.snapshot().unwrap().log_data().num_files(), 1, "{table}");
        let err = query_error(&engine, "SELECT * FROM \"delta\"").await;
        assert_message(&err, &[path]);
    }
}

/// `checkpoint`: 15 commits each adding file `i+1` and removing file `i`, with a checkpoint at
/// 10. delta-kernel-rs: latest version 14 and exactly one file. The files are one-byte stand-ins,
/// so a scan must fail clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_checkpoint_keeps_one_file() {
    let engine = golden_engine("checkpoint");
    let name = TableName::bare("delta");
    let table = open(&engine, &name, TableVersion::Latest).await;
    assert_eq!(version_of(&table), 14);
    assert_eq!(active_files(&table).into_keys().collect::<Vec<_>>(), ["15"]);
    every_version(&engine, &name, Data::LogOnly).await;
    let err = query_error(&engine, "SELECT * FROM \"delta\"").await;
    assert_message(&err, &["15", "Parquet"]);
}

/// `delete-re-add-same-file-different-transactions`: `foo` added, removed, added again, then
/// `bar` added. The Delta suite: two files, `foo` and `bar`, `foo` with modificationTime
/// 1700000000000 (the re-add, not the original).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_delete_re_add_same_file() {
    let engine = golden_engine("delete-re-add-same-file-different-transactions");
    let table = open(&engine, &TableName::bare("delta"), TableVersion::Latest).await;
    assert_eq!(version_of(&table), 3);
    let files = active_files(&table);
    assert_eq!(files.keys().collect::<Vec<_>>(), ["bar", "foo"]);
    assert_eq!(files["foo"], 1_700_000_000_000);
}

/// `log-replay-special-characters-b`: the add path `special%20p@%23h` names the file
/// `special p@#h` (the Delta suite's assertion). No such file exists, so a scan fails naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_special_character_path() {
    let engine = golden_engine("log-replay-special-characters-b");
    let table = open(&engine, &TableName::bare("delta"), TableVersion::Latest).await;
    assert_eq!(
        active_files(&table).into_keys().collect::<Vec<_>>(),
        ["special p@#h"]
    );
    let err = query_error(&engine, "SELECT * FROM \"delta\"").await;
    assert_message(&err, &["special p@#h"]);
}

/// `deltalog-commit-info`: the Delta suite reads only the commit info of version 0; the
/// metaData action has no schemaString, so the snapshot itself cannot be read. pitlake refuses the
/// snapshot with a clear error but still shows the commit in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_commit_info_without_schema() {
    let engine = golden_engine("deltalog-commit-info");
    let err = query_error(&engine, "SELECT * FROM \"delta\"").await;
    assert!(matches!(err, PitlakeError::CorruptTable { .. }), "{err:?}");
    assert_message(&err, &["`delta`", "schemaString"]);

    let history = query(&engine, "DESCRIBE HISTORY \"delta\"").await;
    let rows = sorted_tuples(&history, &["version", "operation", "parameters"]);
    assert_eq!(rows, [["0", "WRITE", r#"{"test":"test"}"#]]);
}

/// `hive`: Hive-connector fixtures, not a Delta table at `hive/delta` (delta-kernel-rs skips it).
/// pitlake reports no table `delta` there; the Delta tables nested below it, which the Hive
/// connector tests read, are found as tables of schema `delta` and each reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_hive_layout_is_not_a_table() {
    let engine = golden_engine("hive");
    let err = query_error(&engine, "SELECT * FROM \"delta\"").await;
    assert!(matches!(err, PitlakeError::TableNotFound { .. }), "{err:?}");
    let tables = engine.list_tables().await.unwrap();
    let nested: BTreeSet<String> = std::fs::read_dir(corpus("delta-kernel-rs-golden/hive/delta"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("_delta_log").is_dir())
        .map(|p| format!("delta.{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    let listed: BTreeSet<String> = tables.iter().map(|t| t.to_string()).collect();
    assert_eq!(listed, nested);
    for name in &tables {
        every_version(&engine, name, Data::Present).await;
    }
}

/// `deltalog-getChanges`: version 0 adds a one-byte stand-in `fake/path/1` which version 1
/// removes; version 2 records a transaction. The Delta suite: app `fakeAppId` is at transaction
/// version 3, `nonExistentAppId` has none. The latest snapshot (no files) equals `expected/` in the
/// main golden test; version 0's scan must fail naming the stand-in file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_get_changes_transaction() {
    let engine = golden_engine("deltalog-getChanges");
    let table = open(&engine, &TableName::bare("delta"), TableVersion::Latest).await;
    assert_eq!(version_of(&table), 2);
    let snapshot = table.snapshot().unwrap();
    let log_store = table.log_store();
    let app = snapshot
        .transaction_version(log_store.as_ref(), "fakeAppId")
        .await
        .unwrap();
    assert_eq!(app, Some(3));
    let none = snapshot
        .transaction_version(log_store.as_ref(), "nonExistentAppId")
        .await
        .unwrap();
    assert_eq!(none, None);
    let err = query_error(&engine, "SELECT * FROM \"delta\" VERSION AS OF 0").await;
    assert_message(&err, &["fake/path/1"]);
}

/// `no-delta-log-folder`: no `_delta_log`, so there is no table (Delta's
/// DELTA_TABLE_NOT_FOUND): pitlake says the table does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_no_delta_log_folder() {
    let engine = golden_engine("no-delta-log-folder");
    let err = query_error(&engine, "SELECT * FROM \"delta\"").await;
    assert!(matches!(err, PitlakeError::TableNotFound { .. }), "{err:?}");
    assert_message(&err, &["`delta`", "does not exist"]);
}

/// Golden tables are built by generators that extend the previous table of a chain (the
/// manifest: `snapshot-data1` is data0 plus "v1 append data-1-*", `time-travel-schema-changes-b`
/// is -a plus "v1 adds column part … v0 must read with OLD schema", and so on). So version `v` of
/// a later table must equal the `expected/` of the earlier one: time travel checked against
/// Spark's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_time_travel_matches_earlier_tables() {
    let chains: &[(&str, i64, &str)] = &[
        ("snapshot-data1", 0, "snapshot-data0"),
        ("snapshot-data2", 0, "snapshot-data0"),
        ("snapshot-data2", 1, "snapshot-data1"),
        ("snapshot-data3", 0, "snapshot-data0"),
        ("snapshot-data3", 1, "snapshot-data1"),
        ("snapshot-data3", 2, "snapshot-data2"),
        ("snapshot-data2-deleted", 2, "snapshot-data2"),
        ("snapshot-data2-deleted", 3, "snapshot-data3"),
        ("time-travel-start-start20", 0, "time-travel-start"),
        ("time-travel-start-start20-start40", 0, "time-travel-start"),
        (
            "time-travel-start-start20-start40",
            1,
            "time-travel-start-start20",
        ),
        (
            "time-travel-schema-changes-b",
            0,
            "time-travel-schema-changes-a",
        ),
        (
            "time-travel-partition-changes-b",
            0,
            "time-travel-partition-changes-a",
        ),
    ];
    let mut failures = Vec::new();
    for (table, version, earlier) in chains {
        let engine = golden_engine(table);
        let actual = query(
            &engine,
            &format!("SELECT * FROM \"delta\" VERSION AS OF {version}"),
        )
        .await;
        let expected = read_expected_parquet(&corpus(&format!(
            "delta-kernel-rs-golden/{earlier}/expected"
        )));
        if let Some(diff) = diff_rows(&actual, &expected, &[]) {
            failures.push(format!("{table}@v{version} vs {earlier}: {diff}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every version of every readable golden table opens and scans. Some tables' early versions
    // name files that are not in the corpus: stand-ins (a one-byte `fake/path/1`, `special p@#h`)
    // removed again by the latest version, or, in snapshot-vacuumed, files VACUUM deleted. Those
    // tables' versions are only opened.
    let stand_ins = [
        "deltalog-getChanges",
        "log-replay-special-characters",
        "log-replay-special-characters-a",
        "snapshot-vacuumed",
    ];
    for (table, golden) in GOLDEN {
        if matches!(golden, Golden::Expected(_)) {
            let engine = golden_engine(table);
            let data = if stand_ins.contains(table) {
                Data::LogOnly
            } else {
                Data::Present
            };
            every_version(&engine, &TableName::bare("delta"), data).await;
        }
    }
    // snapshot-vacuumed: version 0's files were overwritten at v2 and physically removed by
    // vacuum(0), so reading it fails naming a missing file, never returns fewer rows.
    let engine = golden_engine("snapshot-vacuumed");
    let err = query_error(&engine, "SELECT * FROM \"delta\" VERSION AS OF 0").await;
    assert_message(&err, &[".parquet", "not found"]);
}

/// `time-travel-start*` with their commit times from MTIMES.tsv (start = 2018-10-24T21:14:18Z,
/// +20 min, +40 min): each instant selects the newest version at or before it; before the first
/// commit is pitlake's TimestampTooEarly error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_timestamp_travel() {
    let dir = copy_with_mtimes("delta-kernel-rs-golden/time-travel-start-start20-start40/delta");
    let engine = common::engine(dir.path());
    let cases = [
        ("2018-10-24T21:14:18Z", 10),
        ("2018-10-24T21:33:00Z", 10),
        ("2018-10-24T21:34:18Z", 20),
        ("2018-10-24T21:54:17.999Z", 20),
        ("2018-10-24T21:54:18Z", 30),
        ("2030-01-01T00:00:00Z", 30),
    ];
    for (instant, rows) in cases {
        let batches = query(
            &engine,
            &format!("SELECT id FROM \"delta\" TIMESTAMP AS OF '{instant}'"),
        )
        .await;
        // v0 = ids 0..9, v1 adds 10..19, v2 adds 20..29.
        assert_eq!(
            sorted_ints(&batches, "id"),
            (0..rows).collect::<Vec<i64>>(),
            "{instant}"
        );
    }
    let err = query_error(
        &engine,
        "SELECT id FROM \"delta\" TIMESTAMP AS OF '2018-10-24T21:14:17Z'",
    )
    .await;
    match &err {
        PitlakeError::TimestampTooEarly {
            table,
            first_version,
            ..
        } => {
            assert_eq!((table.as_str(), *first_version), ("delta", 0));
        }
        other => panic!("expected TimestampTooEarly, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// delta-rs fixtures
// ---------------------------------------------------------------------------------------------

/// An engine over the delta-rs fixtures folder (tables by folder name; `data_err_logs` is a
/// schema).
fn delta_rs_engine() -> Engine {
    common::engine(&corpus("delta-rs"))
}

/// `simple_table`: v0 ids [0..4], latest v4 ids [5,7,9]; 5 active files at v4 and 6 at v3; 31
/// tombstones at v4 and 29 at v3; the uncommitted `_delta_log/.tmp/…5.json` is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_simple_table_versions() {
    let engine = delta_rs_engine();
    let name = TableName::bare("simple_table");
    let v0 = query(&engine, "SELECT id FROM simple_table VERSION AS OF 0").await;
    assert_eq!(sorted_ints(&v0, "id"), [0, 1, 2, 3, 4]);
    let latest = query(&engine, "SELECT id FROM simple_table").await;
    assert_eq!(sorted_ints(&latest, "id"), [5, 7, 9]);
    let v4 = query(&engine, "SELECT id FROM simple_table VERSION AS OF 4").await;
    assert_eq!(sorted_ints(&v4, "id"), [5, 7, 9]);

    for (version, files, tombstones) in [(4, 5, 31), (3, 6, 29)] {
        let table = open(&engine, &name, TableVersion::Version(version)).await;
        let snapshot = table.snapshot().unwrap();
        assert_eq!(snapshot.log_data().num_files(), files, "v{version} files");
        let log_store = table.log_store();
        let removed: Vec<_> = snapshot
            .all_tombstones(log_store.as_ref())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(removed.len(), tombstones, "v{version} tombstones");
    }

    // `.tmp/00000000000000000005.json` is not a commit.
    let latest = open(&engine, &name, TableVersion::Latest).await;
    assert_eq!(version_of(&latest), 4);
    let err = query_error(&engine, "SELECT id FROM simple_table VERSION AS OF 5").await;
    assert!(
        matches!(err, PitlakeError::VersionNotFound { requested: 5, .. }),
        "{err:?}"
    );
    assert_message(&err, &["simple_table", "versions 0 to 4"]);
}

/// `simple_table` timestamp travel after applying MTIMES.tsv (delta-rs `time_travel_by_ds`). The
/// first case, an instant before the first commit, is where pitlake deliberately differs from
/// delta-rs (which returns v0): pitlake answers TimestampTooEarly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_simple_table_timestamp_travel() {
    let dir = copy_with_mtimes("delta-rs/simple_table");
    let engine = common::engine(dir.path());
    let name = TableName::bare("simple_table");

    let err = query_error(
        &engine,
        "SELECT id FROM simple_table TIMESTAMP AS OF '2020-05-01T00:47:31-07:00'",
    )
    .await;
    match &err {
        PitlakeError::TimestampTooEarly {
            table,
            first_version,
            first_commit,
            ..
        } => {
            assert_eq!(table, "simple_table");
            assert_eq!(*first_version, 0);
            assert_eq!(first_commit, "2020-05-02T05:47:31.000Z");
        }
        other => panic!("expected TimestampTooEarly, got {other:?}"),
    }

    let cases = [
        ("2020-05-02T22:47:31-07:00", 1),
        ("2020-05-02T23:47:31-07:00", 1),
        ("2020-05-03T22:47:31-07:00", 2),
        ("2020-05-04T22:47:31-07:00", 3),
        ("2020-05-05T21:47:31-07:00", 3),
        ("2020-05-05T22:47:31-07:00", 4),
        // After the uncommitted .tmp/…5.json's time: still 4.
        ("2020-05-25T22:47:31-07:00", 4),
    ];
    for (instant, version) in cases {
        let table = open(&engine, &name, TableVersion::Timestamp(millis(instant))).await;
        assert_eq!(version_of(&table), version, "{instant}");
        // The SQL path (the literal evaluated by the engine) selects the same data.
        let by_time = query(
            &engine,
            &format!("SELECT id FROM simple_table TIMESTAMP AS OF '{instant}'"),
        )
        .await;
        let by_version = query(
            &engine,
            &format!("SELECT id FROM simple_table VERSION AS OF {version}"),
        )
        .await;
        assert_eq!(
            sorted_ints(&by_time, "id"),
            sorted_ints(&by_version, "id"),
            "{instant}"
        );
    }
}

/// `checkpoints_vacuumed`: commits 0-4 were cleaned up (checkpoints at 5 and 10, latest 12).
/// Versions 0-4 are VersionNotFound; 5-12 open. With MTIMES.tsv applied (delta-rs
/// `time_travel_by_ds_checkpoint_vacuumed`): 2020-05-09T00:47:31-07:00 selects v10.
/// 2020-05-02T00:47:31-07:00 is before version 5's commit (5.json, 2020-05-03T05:47:31Z; only
/// the checkpoint file carries the earlier time): delta-rs returns v5 there, pitlake deliberately
/// answers TimestampTooEarly naming version 5. The data files are not in the corpus (log only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_checkpoints_vacuumed() {
    let engine = delta_rs_engine();
    let name = TableName::bare("checkpoints_vacuumed");
    for v in 0..5 {
        let err = query_error(
            &engine,
            &format!("SELECT * FROM checkpoints_vacuumed VERSION AS OF {v} LIMIT 0"),
        )
        .await;
        match &err {
            PitlakeError::VersionNotFound {
                table, requested, ..
            } => assert_eq!((table.as_str(), *requested), ("checkpoints_vacuumed", v)),
            other => panic!("v{v}: expected VersionNotFound, got {other:?}"),
        }
        assert_message(&err, &["versions 5 to 12"]);
    }
    let versions = every_version(&engine, &name, Data::LogOnly).await;
    assert_eq!(
        versions.keys().copied().collect::<Vec<_>>(),
        (5..=12).collect::<Vec<_>>()
    );

    let dir = copy_with_mtimes("delta-rs/checkpoints_vacuumed");
    let engine = common::engine(dir.path());
    let table = open(
        &engine,
        &name,
        TableVersion::Timestamp(millis("2020-05-09T00:47:31-07:00")),
    )
    .await;
    assert_eq!(version_of(&table), 10);
    let table = open(&engine, &name, TableVersion::Latest).await;
    assert_eq!(version_of(&table), 12);
    // The first instant that reaches version 5 is its commit's time.
    let table = open(
        &engine,
        &name,
        TableVersion::Timestamp(millis("2020-05-03T05:47:31Z")),
    )
    .await;
    assert_eq!(version_of(&table), 5);

    let err = query_error(
        &engine,
        "SELECT * FROM checkpoints_vacuumed TIMESTAMP AS OF '2020-05-02T00:47:31-07:00' LIMIT 0",
    )
    .await;
    match &err {
        PitlakeError::TimestampTooEarly {
            table,
            first_version,
            ..
        } => assert_eq!(
            (table.as_str(), *first_version),
            ("checkpoints_vacuumed", 5)
        ),
        other => panic!("expected TimestampTooEarly, got {other:?}"),
    }
}

/// `delta-0.2.0` (old writer, checkpoint at 3): version 2 holds values [1,2,3].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_delta_0_2_0() {
    let engine = delta_rs_engine();
    let v2 = query(&engine, "SELECT value FROM \"delta-0.2.0\" VERSION AS OF 2").await;
    assert_eq!(sorted_ints(&v2, "value"), [1, 2, 3]);
    let versions = every_version(&engine, &TableName::bare("delta-0.2.0"), Data::Present).await;
    assert_eq!(versions.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
}

/// `delta-0.8.0-partitioned`: the latest rows (value, year, month, day as strings) and the
/// metadata id and creation time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_delta_0_8_0_partitioned() {
    let engine = delta_rs_engine();
    let batches = query(&engine, "SELECT * FROM \"delta-0.8.0-partitioned\"").await;
    let value = ["1", "2", "3", "6", "7", "5", "4"];
    let year = ["2020", "2020", "2020", "2021", "2021", "2021", "2021"];
    let month = ["1", "2", "2", "12", "12", "12", "4"];
    let day = ["1", "3", "5", "20", "20", "4", "5"];
    let mut expected: Vec<Vec<String>> = (0..7)
        .map(|i| {
            vec![
                value[i].into(),
                year[i].into(),
                month[i].into(),
                day[i].into(),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(
        sorted_tuples(&batches, &["value", "year", "month", "day"]),
        expected
    );

    let table = open(
        &engine,
        &TableName::bare("delta-0.8.0-partitioned"),
        TableVersion::Latest,
    )
    .await;
    let metadata = table.snapshot().unwrap().metadata();
    assert_eq!(metadata.id(), "fe5a3c11-30d4-4dd7-b115-a1c121e66a4e");
    assert_eq!(metadata.created_time(), Some(1_615_555_644_515));
    assert_eq!(metadata.partition_columns(), ["year", "month", "day"]);
}

/// Partition values: NULL (`__HIVE_DEFAULT_PARTITION__`), escaped characters, typed partition
/// columns. Oracles: the manifest, and the log's own `partitionValues` (read here as JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_partition_values() {
    let engine = delta_rs_engine();

    // Null partition: k is NULL for the __HIVE_DEFAULT_PARTITION__ file (the log's `"k": null`),
    // and `IS NULL` finds exactly those rows.
    let batches = query(&engine, "SELECT k FROM \"delta-0.8.0-null-partition\"").await;
    let k = distinct_tuples(&batches, &["k"]);
    assert_eq!(
        k,
        log_partition_values("delta-rs/delta-0.8.0-null-partition", &["k"])
    );
    assert!(k.contains(&vec!["NULL".to_string()]));
    let null_rows = sorted_tuples(&batches, &["k"])
        .into_iter()
        .filter(|r| r[0] == "NULL")
        .count();
    let nulls = query(
        &engine,
        "SELECT count(*) AS n FROM \"delta-0.8.0-null-partition\" WHERE k IS NULL",
    )
    .await;
    assert_eq!(sorted_ints(&nulls, "n"), [null_rows as i64]);

    // Special characters: 'A/A' and 'B B' stored in x=A%2FA and x=B%20B.
    let batches = query(&engine, "SELECT x FROM \"delta-0.8.0-special-partition\"").await;
    let x: BTreeSet<String> = sorted_tuples(&batches, &["x"])
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(x, BTreeSet::from(["A/A".to_string(), "B B".to_string()]));
    let table = open(
        &engine,
        &TableName::bare("delta-0.8.0-special-partition"),
        TableVersion::Version(0),
    )
    .await;
    assert_eq!(table.snapshot().unwrap().log_data().num_files(), 2);
    let filtered = query(
        &engine,
        "SELECT x FROM \"delta-0.8.0-special-partition\" WHERE x = 'B B'",
    )
    .await;
    assert!(common::count(&filtered) > 0);
    assert!(common::column(&filtered, 0).iter().all(|v| v == "B B"));

    // Typed partition columns: c1 int, c2 string.
    let table = TableName::bare("delta-2.2.0-partitioned-types");
    let columns = engine.describe_table(&table).await.unwrap();
    let c1 = columns.iter().find(|c| c.name == "c1").unwrap();
    assert!(c1.partition && c1.data_type == DataType::Int32, "{c1:?}");
    assert!(columns.iter().any(|c| c.name == "c2" && c.partition));
    let batches = query(
        &engine,
        "SELECT c1, c2 FROM \"delta-2.2.0-partitioned-types\"",
    )
    .await;
    assert_eq!(
        distinct_tuples(&batches, &["c1", "c2"]),
        log_partition_values("delta-rs/delta-2.2.0-partitioned-types", &["c1", "c2"])
    );

    // Every partition tuple the log records comes back, with the log's values.
    let names = ["year", "is_active", "event_date", "category"];
    let batches = query(&engine, "SELECT * FROM \"partition-type-primitives\"").await;
    assert_eq!(
        distinct_tuples(&batches, &names),
        log_partition_values("delta-rs/partition-type-primitives", &names)
    );
    // Partition filters prune correctly: each category alone adds up to the whole.
    let total = common::count(&batches);
    let a = query(
        &engine,
        "SELECT id FROM \"partition-type-primitives\" WHERE category = 'A'",
    )
    .await;
    let b = query(
        &engine,
        "SELECT id FROM \"partition-type-primitives\" WHERE category = 'B'",
    )
    .await;
    assert_eq!(common::count(&a) + common::count(&b), total);
    assert!(common::count(&a) > 0 && common::count(&b) > 0);
}

/// Distinct rows of chosen columns, formatted.
fn distinct_tuples(batches: &[RecordBatch], columns: &[&str]) -> BTreeSet<Vec<String>> {
    sorted_tuples(batches, columns).into_iter().collect()
}

/// The distinct partition-value tuples of the active add actions, read straight from the JSON
/// commits (this table has no removes, so every add is active). `null` prints as `NULL`.
fn log_partition_values(rel: &str, columns: &[&str]) -> BTreeSet<Vec<String>> {
    let log = corpus(rel).join("_delta_log");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&log).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(action.get("remove").is_none(), "{rel} has removes");
            if let Some(add) = action.get("add") {
                let values = &add["partitionValues"];
                out.insert(
                    columns
                        .iter()
                        .map(|c| values[c].as_str().unwrap_or("NULL").to_string())
                        .collect(),
                );
            }
        }
    }
    out
}

/// `table-with-dv-small`: v0 values 0..9; v1's deletion vector removes 0 and 9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_deletion_vectors() {
    let engine = delta_rs_engine();
    let v0 = query(
        &engine,
        "SELECT value FROM \"table-with-dv-small\" VERSION AS OF 0",
    )
    .await;
    assert_eq!(sorted_ints(&v0, "value"), (0..10).collect::<Vec<i64>>());
    let v1 = query(
        &engine,
        "SELECT value FROM \"table-with-dv-small\" VERSION AS OF 1",
    )
    .await;
    assert_eq!(sorted_ints(&v1, "value"), (1..9).collect::<Vec<i64>>());
    let latest = query(&engine, "SELECT value FROM \"table-with-dv-small\"").await;
    assert_eq!(sorted_ints(&latest, "value"), (1..9).collect::<Vec<i64>>());

    // 21 versions of deletion-vector churn and two checkpoints: at every version the rows equal
    // the files' numRecords less their deletion vectors' cardinality.
    let versions = every_version(
        &engine,
        &TableName::bare("table_with_deletion_logs"),
        Data::Present,
    )
    .await;
    assert_eq!(versions.len(), 21);

    // Column mapping (name) + deletion vectors, partitioned by `newid`, 5 versions.
    let versions = every_version(
        &engine,
        &TableName::bare("table_with_partitioning_mapping"),
        Data::Present,
    )
    .await;
    assert_eq!(versions.len(), 5);
}

/// `table_with_column_mapping`: name mode, a partition column with spaces. Queries see the
/// logical names, never the physical `col-…` ones, and filters on the mapped partition column
/// work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_column_mapping() {
    let engine = delta_rs_engine();
    let name = TableName::bare("table_with_column_mapping");
    let columns: Vec<String> = engine
        .describe_table(&name)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(columns, ["Company Very Short", "Super Name"]);
    let all = query(&engine, "SELECT * FROM table_with_column_mapping").await;
    assert_eq!(column_names(&all), columns);
    let companies = distinct_tuples(&all, &["Company Very Short"]);
    let mut total = 0;
    for company in &companies {
        let batches = query(
            &engine,
            &format!(
                "SELECT \"Super Name\" FROM table_with_column_mapping \
                 WHERE \"Company Very Short\" = '{}'",
                company[0]
            ),
        )
        .await;
        assert!(common::count(&batches) > 0, "{company:?}");
        total += common::count(&batches);
    }
    assert_eq!(total, common::count(&all));
}

/// `table_with_edge_timestamps`: INT96 timestamps near 9999-12-31 read without overflow:
/// BIG_DATE [9999-12-31, 9999-12-30], NORMAL_DATE [2022-01-01, 2022-02-01], SOME_VALUE [1,2].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_edge_timestamps() {
    let engine = delta_rs_engine();
    let batches = query(&engine, "SELECT * FROM table_with_edge_timestamps").await;
    let rows: Vec<Vec<String>> =
        sorted_tuples(&batches, &["SOME_VALUE", "BIG_DATE", "NORMAL_DATE"])
            .into_iter()
            .map(|r| vec![r[0].clone(), r[1][..10].to_string(), r[2][..10].to_string()])
            .collect();
    assert_eq!(
        rows,
        [
            ["1", "9999-12-31", "2022-01-01"],
            ["2", "9999-12-30", "2022-02-01"]
        ]
    );
}

/// Log shapes whose latest version must be reached: a checkpoint followed by more commits, a
/// `_last_checkpoint` that lags, a checkpoint without `_last_checkpoint`, a v2 checkpoint, stats
/// only in the checkpoint's `stats_parsed`, liquid clustering, null stats in a NOT NULL struct,
/// CDF files beside the data. (version, data present) per the manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_log_shapes_reach_latest() {
    let engine = delta_rs_engine();
    let cases: &[(&str, i64, Data)] = &[
        ("latest_not_checkpointed", 3, Data::LogOnly),
        ("table_failed_last_checkpoint_update", 3, Data::Present),
        ("with_checkpoint_no_last_checkpoint", 3, Data::LogOnly),
        ("checkpoint-v2-table", 9, Data::Present),
        ("simple_table_with_checkpoint", 10, Data::Present),
        ("delta-1.2.1-only-struct-stats", 12, Data::Present),
        ("checkpoints", 12, Data::LogOnly),
        ("cdf-table", 3, Data::Present),
        ("table_with_liquid_clustering", 0, Data::Present),
        ("table_with_null_stats_in_notnull_struct", 1, Data::Present),
    ];
    for (table, latest, data) in cases {
        let name = TableName::bare(*table);
        let opened = open(&engine, &name, TableVersion::Latest).await;
        assert_eq!(version_of(&opened), *latest, "{table}");
        let listing = engine.warehouse().log_listing(&name).await.unwrap();
        assert_eq!(listing.latest(), Some(*latest), "{table}");
        if *data == Data::LogOnly {
            // The corpus has the log only: a scan fails, naming the missing data file.
            let err = query_error(&engine, &format!("SELECT * FROM \"{table}\"")).await;
            assert_message(&err, &[table, ".parquet", "not found"]);
        }
    }
    // `checkpoints` is partitioned by `date`.
    let table = open(
        &engine,
        &TableName::bare("checkpoints"),
        TableVersion::Latest,
    )
    .await;
    assert_eq!(
        table.snapshot().unwrap().metadata().partition_columns(),
        ["date"]
    );
}

/// Every delta-rs fixture table (outside `data_err_logs`) opens at every version its log holds;
/// where the corpus has the data, each version scans to the row count its log's statistics give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_every_version_of_every_table() {
    // The fixtures that are logs only (MANIFEST: "checkpoint-writer input", "log only").
    let log_only = [
        "checkpoints",
        "checkpoints_vacuumed",
        "latest_not_checkpointed",
        "with_checkpoint_no_last_checkpoint",
    ];
    let engine = delta_rs_engine();
    let mut tables = 0;
    let mut versions = 0;
    for name in engine.list_tables().await.unwrap() {
        if name.schema.is_some() {
            continue;
        }
        let data = if log_only.contains(&name.table.as_str()) {
            Data::LogOnly
        } else {
            Data::Present
        };
        versions += every_version(&engine, &name, data).await.len();
        tables += 1;
    }
    assert_eq!(tables, 23);
    assert_eq!(versions, 118);
}

/// `data_err_logs` (delta-rs `exotic_tables.rs`): table_a and table_b open (table_b's missing
/// v7 is covered by checkpoint 10); table_c (v12 missing after checkpoint 10) and the
/// `catalogOwned` tables d, e, f, h, i must error; table_g (a rogue 9999 checkpoint) is not
/// asserted upstream and must only not panic. All logs only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rs_data_err_logs() {
    let engine = delta_rs_engine();
    for table in ["table_a", "table_b"] {
        let name = TableName::new(Some("data_err_logs"), table);
        let opened = open(&engine, &name, TableVersion::Latest).await;
        assert_eq!(version_of(&opened), 13, "{table}");
    }
    let err = query_error(&engine, "SELECT * FROM data_err_logs.table_c").await;
    assert!(matches!(err, PitlakeError::CorruptTable { .. }), "{err:?}");
    assert_message(&err, &["`data_err_logs.table_c`", "contiguous"]);
    // catalogOwned is a reader feature deltalake 1.1 does not support.
    for table in ["table_d", "table_e", "table_f", "table_h", "table_i"] {
        let err = query_error(&engine, &format!("SELECT * FROM data_err_logs.{table}")).await;
        assert_unsupported_feature(&err, &format!("data_err_logs.{table}"), "catalogOwned");
    }
    // table_a: every version opens. table_b: versions 7 to 9 need the missing 7.json (the
    // checkpoint at 10 only covers 10 and later), so they are refused, naming the table; the rest
    // open.
    let versions = every_version(
        &engine,
        &TableName::new(Some("data_err_logs"), "table_a"),
        Data::LogOnly,
    )
    .await;
    assert_eq!(versions.len(), 14);
    let name = TableName::new(Some("data_err_logs"), "table_b");
    for v in 0..=13 {
        let opened = engine
            .warehouse()
            .open(&name, TableVersion::Version(v))
            .await;
        match opened {
            Ok(table) if !(7..=9).contains(&v) => assert_eq!(version_of(&table), v),
            Err(PitlakeError::CorruptTable { table, .. }) if (7..=9).contains(&v) => {
                assert_eq!(table, "data_err_logs.table_b");
            }
            Ok(_) => panic!("table_b v{v} opened without its commit"),
            Err(e) => panic!("table_b v{v}: {e}"),
        }
    }

    // table_g (a rogue 9999 checkpoint and commit; not asserted upstream): an answer, never a
    // panic. deltalake takes 9999 as the latest version; a refusal would have to be a
    // CorruptTable naming the table. Its data files are not in the corpus, so the scan fails.
    let name = TableName::new(Some("data_err_logs"), "table_g");
    match engine.warehouse().open(&name, TableVersion::Latest).await {
        Ok(_) | Err(PitlakeError::CorruptTable { .. }) => {}
        Err(other) => panic!("table_g: {other:?}"),
    }
    let err = query_error(&engine, "SELECT * FROM data_err_logs.table_g").await;
    assert_message(&err, &["table_g"]);
}

// ---------------------------------------------------------------------------------------------
// Delta (Spark) test tables
// ---------------------------------------------------------------------------------------------

/// Delta's test-only prefix on deletion-vector file names (`spark.databricks.delta.testOnly.
/// dvFileNamePrefix`), which the log does not record: the protocol names the file
/// `deletion_vector_<uuid>.bin`.
const TEST_DV_PREFIX: &str = "test%dv%prefix-";

/// A copy of a Delta test table with the test-only prefix taken off its deletion-vector files,
/// so that they have the names the log gives them.
fn copy_without_dv_prefix(rel: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let leaf = Path::new(rel).file_name().unwrap();
    let table = dir.path().join(leaf);
    copy_tree(&corpus(rel), &table);
    let mut renamed = 0;
    for entry in std::fs::read_dir(&table).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if let Some(real) = name.strip_prefix(TEST_DV_PREFIX) {
            std::fs::rename(&path, table.join(real)).unwrap();
            renamed += 1;
        }
    }
    assert!(renamed > 0, "{rel} has no prefixed deletion vectors");
    dir
}

/// The id set at each version of the DV tables (DeletionVectorsSuite): start from `v0` and
/// apply removals and re-inserts in order.
fn dv_id_sets(v0: std::ops::Range<i64>, steps: &[(&[i64], &[i64])]) -> Vec<Vec<i64>> {
    let mut current: BTreeSet<i64> = v0.collect();
    let mut out = vec![current.iter().copied().collect()];
    for (removed, reinserted) in steps {
        for id in *removed {
            current.remove(id);
        }
        current.extend(reinserted.iter());
        out.push(current.iter().copied().collect());
    }
    out
}

/// `table-with-dv-large` and `partitioned-table-with-dv-large`: per-version id sets exactly as
/// DeletionVectorsSuite states, and the filtered reads it checks. As shipped, the DV files carry
/// Delta's test-only name prefix, so version 0 (no DVs) reads and later versions fail naming the
/// DV file the log points to; with the prefix removed (as Delta's own test run does), every
/// version has its stated ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_spark_deletion_vector_tables() {
    let plain = dv_id_sets(
        0..2000,
        &[
            (&[0, 180, 300, 700, 1800], &[]),
            (&[], &[300, 700]),
            (&[300, 250, 350, 900, 1353, 1567, 1800], &[]),
            (&[], &[900, 1567]),
        ],
    );
    let partitioned = dv_id_sets(
        0..2000,
        &[
            (&[0, 180, 308, 225, 756, 1007, 1503], &[]),
            (&[], &[308, 756]),
            (&[300, 257, 399, 786, 1353, 1567, 1800], &[]),
            (&[], &[1353, 1567]),
        ],
    );
    // (table, its id column, ids per version)
    for (table, id, expected) in [
        ("table-with-dv-large", "value", &plain),
        ("partitioned-table-with-dv-large", "id", &partitioned),
    ] {
        // As shipped.
        let engine = common::engine(&corpus("delta"));
        let v0 = query(
            &engine,
            &format!("SELECT {id} FROM \"{table}\" VERSION AS OF 0"),
        )
        .await;
        assert_eq!(sorted_ints(&v0, id), expected[0], "{table} v0");
        for version in 1..expected.len() {
            let sql = format!("SELECT {id} FROM \"{table}\" VERSION AS OF {version}");
            let err = query_error(&engine, &sql).await;
            assert_message(&err, &[table, "deletion_vector_", ".bin"]);
        }

        // With the DV files under their protocol names.
        let dir = copy_without_dv_prefix(&format!("delta/{table}"));
        let engine = common::engine(dir.path());
        for (version, ids) in expected.iter().enumerate() {
            let batches = query(
                &engine,
                &format!("SELECT {id} FROM \"{table}\" VERSION AS OF {version}"),
            )
            .await;
            assert_eq!(&sorted_ints(&batches, id), ids, "{table} v{version}");
        }
        let latest = query(&engine, &format!("SELECT {id} FROM \"{table}\"")).await;
        assert_eq!(&sorted_ints(&latest, id), &expected[4], "{table} latest");
    }

    // The partitioned table's filtered reads: v4 partCol=3, v3 partCol=3 AND id>25, v1 id>25,
    // with partCol = id % 10.
    let dir = copy_without_dv_prefix("delta/partitioned-table-with-dv-large");
    let engine = common::engine(dir.path());
    type Keep = fn(i64) -> bool;
    let filtered: [(i64, &str, Keep); 3] = [
        (4, "\"partCol\" = 3", |id| id % 10 == 3),
        (3, "\"partCol\" = 3 AND id > 25", |id| {
            id % 10 == 3 && id > 25
        }),
        (1, "id > 25", |id| id > 25),
    ];
    for (version, predicate, keep) in filtered {
        let batches = query(
            &engine,
            &format!(
                "SELECT id, \"partCol\" FROM \"partitioned-table-with-dv-large\" \
                 VERSION AS OF {version} WHERE {predicate}"
            ),
        )
        .await;
        let want: Vec<i64> = partitioned[version as usize]
            .iter()
            .copied()
            .filter(|id| keep(*id))
            .collect();
        assert_eq!(sorted_ints(&batches, "id"), want, "v{version} {predicate}");
        let pairs = sorted_tuples(&batches, &["id", "partCol"]);
        assert!(
            pairs
                .iter()
                .all(|p| p[0].parse::<i64>().unwrap() % 10 == p[1].parse::<i64>().unwrap()),
            "partCol = id % 10"
        );
    }
}

/// `delta-0.1.0` (R1/W1, the oldest protocol): rows {(4,d),(5,e),(6,f)}, id INT and value
/// STRING, partitioned by id; every version opens. `transaction_log_schema_evolvability`: a log
/// with an unknown action and a checkpoint with an unknown column opens at every version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_spark_old_and_evolved_logs() {
    let engine = common::engine(&corpus("delta"));
    let batches = query(&engine, "SELECT id, value FROM \"delta-0.1.0\"").await;
    assert_eq!(
        sorted_tuples(&batches, &["id", "value"]),
        [["4", "d"], ["5", "e"], ["6", "f"]]
    );
    let name = TableName::bare("delta-0.1.0");
    let columns = engine.describe_table(&name).await.unwrap();
    let id = columns.iter().find(|c| c.name == "id").unwrap();
    assert!(id.partition && id.data_type == DataType::Int32, "{id:?}");
    let value = columns.iter().find(|c| c.name == "value").unwrap();
    assert!(!value.partition, "{value:?}");
    let table = open(&engine, &name, TableVersion::Latest).await;
    assert_eq!(version_of(&table), 3);
    let protocol = table.snapshot().unwrap().protocol();
    assert_eq!(
        (protocol.min_reader_version(), protocol.min_writer_version()),
        (1, 1)
    );
    every_version(&engine, &name, Data::Present).await;

    let name = TableName::bare("transaction_log_schema_evolvability");
    let versions = every_version(&engine, &name, Data::Present).await;
    assert_eq!(
        versions.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
}

// ---------------------------------------------------------------------------------------------
// delta-kernel-rs targeted tables
// ---------------------------------------------------------------------------------------------

/// delta-kernel-rs tables with stated results (kernel `read.rs`, `v2_checkpoints.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_kernel_rs_tables() {
    let engine = common::engine(&corpus("delta-kernel-rs"));

    // A short deletion vector (kernel `short_dv`) removes 3 of 10 rows: ids 3..9.
    let batches = query(&engine, "SELECT id FROM \"with-short-dv\"").await;
    assert_eq!(sorted_ints(&batches, "id"), (3..10).collect::<Vec<i64>>());
    let batches = query(&engine, "SELECT * FROM \"table-without-dv-small\"").await;
    assert_eq!(common::count(&batches), 10);

    // V2 checkpoints, classic-named v2 checkpoints, sidecars.
    let zero_to = |n: i64| (0..n).collect::<Vec<i64>>();
    let mut with_sidecars = vec![0, 0, 0];
    for n in [30, 100, 100, 1000] {
        with_sidecars.extend(0..n);
    }
    with_sidecars.sort_unstable();
    let mut without_sidecars = zero_to(10);
    without_sidecars.push(2718);
    let v2: [(&str, Vec<i64>); 8] = [
        ("v2-checkpoints-json-with-last-checkpoint", zero_to(10)),
        ("v2-checkpoints-parquet-with-last-checkpoint", zero_to(10)),
        ("v2-checkpoints-json-with-sidecars", with_sidecars.clone()),
        ("v2-checkpoints-parquet-with-sidecars", with_sidecars),
        (
            "v2-checkpoints-json-without-sidecars",
            without_sidecars.clone(),
        ),
        ("v2-checkpoints-parquet-without-sidecars", without_sidecars),
        ("v2-classic-checkpoint-json", zero_to(20)),
        ("v2-classic-checkpoint-parquet", zero_to(20)),
    ];
    for (table, ids) in v2 {
        let batches = query(&engine, &format!("SELECT id FROM \"{table}\"")).await;
        assert_eq!(sorted_ints(&batches, "id"), ids, "{table}");
    }

    // Log compaction files beside the commits: (0,new), (1,after-large-delete), (2,''),
    // (10,merge1-insert), (12,merge2-insert). The manifest writes (2,NULL), reading the blank
    // cell of delta-kernel-rs's pretty-printed expectation (`| 2  |    |`); the comment is an
    // empty string, not NULL: kernel's CDF test of the same table builds that value as `""`.
    let batches = query(
        &engine,
        "SELECT id, comment FROM \"compacted-log-files-table\"",
    )
    .await;
    assert_eq!(
        sorted_tuples(&batches, &["id", "comment"]),
        [
            ["0", "new"],
            ["1", "after-large-delete"],
            ["10", "merge1-insert"],
            ["12", "merge2-insert"],
            ["2", ""],
        ]
    );

    // A timestamp partition column: (1, 0.5, '', 1971-07-22T03:06:40Z). The manifest writes s as
    // NULL, again from a blank cell of kernel's pretty-printed table; the log declares `s` NOT
    // NULL and its statistics give min = max = "" for it: an empty string.
    let batches = query(
        &engine,
        "SELECT id, x, s, time FROM \"timestamp-partitioned-table\"",
    )
    .await;
    assert_eq!(
        sorted_tuples(&batches, &["id", "x", "s", "time"]),
        [["1", "0.5", "", "1971-07-22T03:06:40Z"]]
    );

    // Row-level NULLs: part0 5 rows n NULL, part1 5 rows 'non-null', part2 3 NULL + 2
    // 'non-null-mix'. SQL filters rows (delta-kernel-rs's 10/10 is file skipping only).
    let nulls = query(
        &engine,
        "SELECT part, count(*) AS n FROM \"mixed-nulls\" WHERE n IS NULL GROUP BY part",
    )
    .await;
    assert_eq!(
        sorted_tuples(&nulls, &["part", "n"]),
        [["0", "5"], ["2", "3"]]
    );
    let not_nulls = query(
        &engine,
        "SELECT part, n, count(*) AS c FROM \"mixed-nulls\" WHERE n IS NOT NULL GROUP BY part, n",
    )
    .await;
    assert_eq!(
        sorted_tuples(&not_nulls, &["part", "n", "c"]),
        [["1", "non-null", "5"], ["2", "non-null-mix", "2"]]
    );

    // Statistics disabled: row-group skipping must not drop rows; a predicate on a column that
    // does not exist is an error naming it.
    let all = query(&engine, "SELECT * FROM parquet_row_group_skipping").await;
    let table = open(
        &engine,
        &TableName::bare("parquet_row_group_skipping"),
        TableVersion::Latest,
    )
    .await;
    if let Some(from_log) = rows_from_log(&table) {
        assert_eq!(common::count(&all), from_log);
    }
    let filtered = query(
        &engine,
        "SELECT * FROM parquet_row_group_skipping WHERE bool = true",
    )
    .await;
    let unfiltered_true = all
        .iter()
        .map(|b| {
            let c = b.column_by_name("bool").unwrap();
            let c = c
                .as_any()
                .downcast_ref::<arrow::array::BooleanArray>()
                .unwrap();
            c.iter().filter(|v| *v == Some(true)).count()
        })
        .sum::<usize>();
    assert_eq!(common::count(&filtered), unfiltered_true);
    let err = query_error(
        &engine,
        "SELECT * FROM parquet_row_group_skipping WHERE no_such_column = 1",
    )
    .await;
    assert_message(&err, &["no_such_column"]);

    // Column mapping none / id / name on the same (empty) partitioned table: the same logical
    // columns, `category` the partition column, whatever the physical names.
    for mode in ["none", "id", "name"] {
        let name = TableName::new(Some("partition_cm"), mode);
        let columns: Vec<(String, bool)> = engine
            .describe_table(&name)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.partition))
            .collect();
        assert_eq!(
            columns,
            [("value".to_string(), false), ("category".to_string(), true)],
            "partition_cm.{mode}"
        );
        let batches = query(&engine, &format!("SELECT * FROM partition_cm.\"{mode}\"")).await;
        assert_eq!(common::count(&batches), 0, "partition_cm.{mode}");
    }

    // type-widening needs the `typeWidening-preview` reader feature, which deltalake 1.1 does
    // not support: the manifest expects 2 rows; pitlake must give a clear error instead.
    let err = query_error(&engine, "SELECT * FROM \"type-widening\"").await;
    assert_unsupported_feature(&err, "type-widening", "TypeWideningPreview");

    // A log holding only a malformed .crc: an error, not a panic.
    let err = query_error(&engine, "SELECT * FROM \"crc-malformed\"").await;
    assert!(matches!(err, PitlakeError::CorruptTable { .. }), "{err:?}");
    assert_message(&err, &["`crc-malformed`"]);

    // The rest open at every version (and scan, where the data is there).
    for table in [
        "app-txn-checkpoint",
        "app-txn-no-checkpoint",
        "crc-full",
        "external-table-different-nullability",
        "void-column",
    ] {
        every_version(&engine, &TableName::bare(table), Data::Present).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed parquet given to ingest
// ---------------------------------------------------------------------------------------------

/// What arrow-rs (pitlake's parquet reader) does with a file of parquet-testing `bad_data/`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BadParquet {
    /// arrow-rs rejects it (schema or data): the load must fail with an input error naming the
    /// file.
    Rejected,
    /// arrow-rs rejects its data, but its schema holds a type Delta cannot store (a timestamp at
    /// `+02:00`), so the load fails on that before reading any data: an error all the same.
    RejectedBeforeRead,
    /// arrow-rs reads it in full (the manifest's oracle is for the C++ reader: RLE bit-width 0 is
    /// valid for arrow-rs), so the load must bring exactly the rows arrow-rs reads.
    ReadsFine,
}

/// Every file of parquet-testing `bad_data/`, with what arrow-rs does with it.
const BAD_PARQUET: &[(&str, BadParquet)] = &[
    ("ARROW-GH-41317.parquet", BadParquet::Rejected),
    ("ARROW-GH-41321.parquet", BadParquet::RejectedBeforeRead),
    ("ARROW-GH-43605.parquet", BadParquet::ReadsFine),
    ("ARROW-GH-45185.parquet", BadParquet::Rejected),
    ("ARROW-GH-47662.parquet", BadParquet::Rejected),
    ("ARROW-RS-GH-6229-DICTHEADER.parquet", BadParquet::Rejected),
    ("ARROW-RS-GH-6229-LEVELS.parquet", BadParquet::Rejected),
    ("PARQUET-1481.parquet", BadParquet::Rejected),
];

/// Reads a parquet file with arrow-rs directly: its rows, or the first error.
fn read_parquet_directly(file: &Path) -> Result<Vec<RecordBatch>, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .map_err(|e| e.to_string())?;
    let reader = builder.build().map_err(|e| e.to_string())?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// parquet-testing `bad_data/`: every file, loaded into a fresh warehouse. Files arrow-rs rejects
/// must fail the load — an error, never a panic — and leave no table behind; the one arrow-rs
/// reads must load exactly its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_parquet_ingest() {
    let dir = corpus("malformed-inputs/parquet-testing-bad_data");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let listed: BTreeSet<String> = BAD_PARQUET.iter().map(|(f, _)| f.to_string()).collect();
    assert_eq!(on_disk, listed, "every bad file has a case");

    for (name, expect) in BAD_PARQUET {
        let file = dir.join(name);
        let direct = read_parquet_directly(&file);
        assert_eq!(
            direct.is_ok(),
            *expect == BadParquet::ReadsFine,
            "{name}: arrow-rs gives {:?}",
            direct.as_ref().map(|b| common::count(b))
        );

        let warehouse = tempfile::tempdir().unwrap();
        let engine = common::engine(warehouse.path());
        let t = TableName::bare("t");
        let mut request = IngestRequest::new(t.clone(), vec![file.clone()]);
        request.format = Some(IngestFormat::Parquet);
        let outcome = engine.ingest(request).await;
        let exists = engine.warehouse().table_exists(&t).await.unwrap();
        match (expect, outcome) {
            (BadParquet::ReadsFine, Ok(outcome)) => {
                let rows = direct.unwrap();
                assert_eq!(outcome.version, Some(0), "{name}");
                let loaded = query(&engine, "SELECT * FROM t").await;
                assert!(
                    diff_rows(&loaded, &rows, &[]).is_none(),
                    "{name}: {:?}",
                    diff_rows(&loaded, &rows, &[])
                );
            }
            (BadParquet::ReadsFine, Err(err)) => panic!("{name}: arrow-rs reads it, ingest: {err}"),
            (_, Ok(outcome)) => panic!("{name}: loaded ({}) instead of failing", outcome.message()),
            (BadParquet::Rejected, Err(err)) => {
                assert!(matches!(err, PitlakeError::Input { .. }), "{name}: {err:?}");
                assert_message(&err, &[name]);
                assert!(!exists, "{name}: table `t` exists after the failed load");
            }
            (BadParquet::RejectedBeforeRead, Err(err)) => {
                assert_message(&err, &["Timestamp"]);
                assert!(!exists, "{name}: table `t` exists after the failed load");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A whole warehouse
// ---------------------------------------------------------------------------------------------

/// An engine over the whole delta-rs folder lists every table (folders with a `_delta_log`,
/// one level of schema folders), and a failing query on a broken table leaves the engine fine
/// for the next query on a good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_over_delta_rs_fixtures() {
    let on_disk = delta_rs_tables_on_disk();
    assert_eq!(on_disk.len(), 32, "23 tables + 9 under data_err_logs");

    let engine = delta_rs_engine();
    let listed: BTreeSet<String> = engine
        .list_tables()
        .await
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(listed, on_disk);

    for _ in 0..2 {
        let err = query_error(&engine, "SELECT * FROM data_err_logs.table_c").await;
        assert!(matches!(err, PitlakeError::CorruptTable { .. }), "{err:?}");
        assert_message(&err, &["`data_err_logs.table_c`"]);
        let good = query(&engine, "SELECT id FROM simple_table").await;
        assert_eq!(sorted_ints(&good, "id"), [5, 7, 9]);
    }
    // A join of a good and a broken table fails as a whole, naming the broken one.
    let err = query_error(
        &engine,
        "SELECT * FROM simple_table s JOIN data_err_logs.table_d d ON true",
    )
    .await;
    assert_message(&err, &["table_d"]);
    let good = query(&engine, "SELECT value FROM \"delta-0.2.0\" VERSION AS OF 2").await;
    assert_eq!(sorted_ints(&good, "value"), [1, 2, 3]);
}

/// The tables folders of the delta-rs corpus: `<table>` or `<schema>.<table>` for every folder
/// holding a `_delta_log`, one level of schema folders deep.
fn delta_rs_tables_on_disk() -> BTreeSet<String> {
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(corpus("delta-rs")).unwrap() {
        let path = entry.unwrap().path();
        let folder = path.file_name().unwrap().to_string_lossy().to_string();
        if path.join("_delta_log").is_dir() {
            on_disk.insert(folder);
            continue;
        }
        for child in std::fs::read_dir(&path).unwrap() {
            let child = child.unwrap().path();
            if child.join("_delta_log").is_dir() {
                on_disk.insert(format!(
                    "{folder}.{}",
                    child.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    on_disk
}

/// `SHOW TABLES` (information_schema.tables) over the delta-rs folder names every table,
/// including the ones whose logs are broken: listing names reads no table, so a broken log must
/// not fail it (the catalog's contract: "a table with a broken log makes only the statements that
/// read it fail").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_show_tables_lists_broken_tables_too() {
    let engine = delta_rs_engine();
    let shown = query(&engine, "SHOW TABLES").await;
    let shown: BTreeSet<String> = sorted_tuples(&shown, &["table_schema", "table_name"])
        .into_iter()
        .filter(|r| r[0] != "information_schema")
        .map(|r| match r[0].as_str() {
            "public" => r[1].clone(),
            schema => format!("{schema}.{}", r[1]),
        })
        .collect();
    assert_eq!(shown, delta_rs_tables_on_disk());
}
