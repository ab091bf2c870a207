//! delta-kernel-rs targeted tables with stated results (`delta-kernel-rs/`).

use super::*;

/// delta-kernel-rs tables with stated results (kernel `read.rs`, `v2_checkpoints.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_kernel_rs_tables() {
    let engine = common::engine(&corpus("delta-kernel-rs"));
    short_deletion_vector(&engine).await;
    v2_checkpoints(&engine).await;
    compacted_log_files(&engine).await;
    timestamp_partition(&engine).await;
    row_level_nulls(&engine).await;
    statistics_disabled(&engine).await;
    column_mapping_modes(&engine).await;
    type_widening_refused(&engine).await;
    malformed_crc(&engine).await;
    the_rest_open_at_every_version(&engine).await;
}

/// A short deletion vector (kernel `short_dv`) removes 3 of 10 rows: ids 3..9.
async fn short_deletion_vector(engine: &Engine) {
    let batches = query(engine, "SELECT id FROM \"with-short-dv\"").await;
    assert_eq!(sorted_ints(&batches, "id"), (3..10).collect::<Vec<i64>>());
    let batches = query(engine, "SELECT * FROM \"table-without-dv-small\"").await;
    assert_eq!(common::count(&batches), 10);
}

/// V2 checkpoints, classic-named v2 checkpoints, sidecars.
async fn v2_checkpoints(engine: &Engine) {
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
        let batches = query(engine, &format!("SELECT id FROM \"{table}\"")).await;
        assert_eq!(sorted_ints(&batches, "id"), ids, "{table}");
    }
}

/// Log compaction files beside the commits: (0,new), (1,after-large-delete), (2,''),
/// (10,merge1-insert), (12,merge2-insert). The manifest writes (2,NULL), reading the blank
/// cell of delta-kernel-rs's pretty-printed expectation (`| 2  |    |`); the comment is an
/// empty string, not NULL: kernel's CDF test of the same table builds that value as `""`.
async fn compacted_log_files(engine: &Engine) {
    let batches = query(
        engine,
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
}

/// A timestamp partition column: (1, 0.5, '', 1971-07-22T03:06:40Z). The manifest writes s as
/// NULL, again from a blank cell of kernel's pretty-printed table; the log declares `s` NOT
/// NULL and its statistics give min = max = "" for it: an empty string.
async fn timestamp_partition(engine: &Engine) {
    let batches = query(
        engine,
        "SELECT id, x, s, time FROM \"timestamp-partitioned-table\"",
    )
    .await;
    assert_eq!(
        sorted_tuples(&batches, &["id", "x", "s", "time"]),
        [["1", "0.5", "", "1971-07-22T03:06:40Z"]]
    );
}

/// Row-level NULLs: part0 5 rows n NULL, part1 5 rows 'non-null', part2 3 NULL + 2
/// 'non-null-mix'. SQL filters rows (delta-kernel-rs's 10/10 is file skipping only).
async fn row_level_nulls(engine: &Engine) {
    let nulls = query(
        engine,
        "SELECT part, count(*) AS n FROM \"mixed-nulls\" WHERE n IS NULL GROUP BY part",
    )
    .await;
    assert_eq!(
        sorted_tuples(&nulls, &["part", "n"]),
        [["0", "5"], ["2", "3"]]
    );
    let not_nulls = query(
        engine,
        "SELECT part, n, count(*) AS c FROM \"mixed-nulls\" WHERE n IS NOT NULL GROUP BY part, n",
    )
    .await;
    assert_eq!(
        sorted_tuples(&not_nulls, &["part", "n", "c"]),
        [["1", "non-null", "5"], ["2", "non-null-mix", "2"]]
    );
}

/// Statistics disabled: row-group skipping must not drop rows; a predicate on a column that
/// does not exist is an error naming it.
async fn statistics_disabled(engine: &Engine) {
    let all = query(engine, "SELECT * FROM parquet_row_group_skipping").await;
    let table = open(
        engine,
        &TableName::bare("parquet_row_group_skipping"),
        TableVersion::Latest,
    )
    .await;
    if let Some(from_log) = rows_from_log(&table) {
        assert_eq!(common::count(&all), from_log);
    }
    let filtered = query(
        engine,
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
        engine,
        "SELECT * FROM parquet_row_group_skipping WHERE no_such_column = 1",
    )
    .await;
    assert_message(&err, &["no_such_column"]);
}

/// Column mapping none / id / name on the same (empty) partitioned table: the same logical
/// columns, `category` the partition column, whatever the physical names.
async fn column_mapping_modes(engine: &Engine) {
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
        let batches = query(engine, &format!("SELECT * FROM partition_cm.\"{mode}\"")).await;
        assert_eq!(common::count(&batches), 0, "partition_cm.{mode}");
    }
}

/// type-widening needs the `typeWidening-preview` reader feature, which deltalake 1.1 does
/// not support: the manifest expects 2 rows; pitlake must give a clear error instead.
async fn type_widening_refused(engine: &Engine) {
    let err = query_error(engine, "SELECT * FROM \"type-widening\"").await;
    assert_unsupported_feature(&err, "type-widening", "TypeWideningPreview");
}

/// A log holding only a malformed .crc: an error, not a panic.
async fn malformed_crc(engine: &Engine) {
    let err = query_error(engine, "SELECT * FROM \"crc-malformed\"").await;
    assert!(matches!(err, PitlakeError::CorruptTable { .. }), "{err:?}");
    assert_message(&err, &["`crc-malformed`"]);
}

/// The rest open at every version (and scan, where the data is there).
async fn the_rest_open_at_every_version(engine: &Engine) {
    for table in [
        "app-txn-checkpoint",
        "app-txn-no-checkpoint",
        "crc-full",
        "external-table-different-nullability",
        "void-column",
    ] {
        every_version(engine, &TableName::bare(table), Data::Present).await;
    }
}
