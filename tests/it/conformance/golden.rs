//! Delta's golden tables (the delta-kernel-rs copies, `delta-kernel-rs-golden/`): the latest
//! snapshot against `expected/`; negative tables must fail with an error naming the table; the
//! tables delta-kernel-rs skips get the behaviour the manifest describes, or a clear error where
//! deltalake 1.1 cannot read them; versions reached by time travel against the `expected/` of the
//! table one step earlier in the same generator chain.

use super::*;

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
