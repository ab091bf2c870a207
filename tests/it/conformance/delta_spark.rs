//! Delta (Spark) test tables (`delta/`): per-version id sets of the deletion-vector tables, the
//! oldest protocol, a log with unknown actions.

use super::*;

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
