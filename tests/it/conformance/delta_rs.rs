//! delta-rs fixtures (`delta-rs/`): the values, versions, file counts and commit-time lookups of
//! delta-rs's own tests, the logs that must open and those that must not; and a whole warehouse
//! over the folder: the listing, and a broken table not disturbing the next query.

use super::*;

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
