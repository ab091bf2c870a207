//! pitlake on a Ballista cluster: warehouse tables pinned to their Parquet files read what
//! deltalake reads (in process, through the cluster codecs), and the CLI against a scheduler and
//! two executors started as processes on loopback (`cluster_processes`).

use std::process::Command;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use datafusion::physical_plan::displayable;
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::{
    logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
};
use pitlake::engine::{cluster_codecs, cluster_config, cluster_runtime, cluster_session_state};

use crate::common::{engine, rows};

use crate::cluster_processes as processes;

/// A partitioned table with three versions (a NULL partition, a partition column in the middle
/// of the schema, several files) and a feature table, written through the engine.
async fn fixture(engine: &pitlake::Engine) {
    for sql in [
        "CREATE TABLE labels AS SELECT * FROM (VALUES (1, 10, TIMESTAMP '2024-01-01 00:00:10'), \
         (2, 20, TIMESTAMP '2024-01-01 00:00:20'), (3, 10, TIMESTAMP '2024-01-01 00:00:30'), \
         (4, 30, TIMESTAMP '2024-01-01 00:00:05'), (5, NULL, TIMESTAMP '2024-01-01 00:00:40')) \
         AS v(label_id, entity, at)",
        "CREATE TABLE feats AS SELECT * FROM (VALUES (10, 'a', TIMESTAMP '2024-01-01 00:00:01', 1.5), \
         (10, 'b', TIMESTAMP '2024-01-01 00:00:25', 2.5), (20, 'c', TIMESTAMP '2024-01-01 00:00:20', 3.5), \
         (30, 'd', TIMESTAMP '2024-01-01 00:00:06', 4.5), (NULL, 'e', TIMESTAMP '2024-01-01 00:00:01', 5.5), \
         (10, NULL, TIMESTAMP '2024-01-01 00:00:28', 7.5)) \
         AS v(entity, region, ts, value)",
        "INSERT INTO feats VALUES (20, 'a', TIMESTAMP '2024-01-01 00:00:02', 6.5)",
    ] {
        engine.sql(sql).await.unwrap();
    }
    // A copy of feats partitioned by region (the partition column sits between others).
    let state = engine.state();
    let plan = engine
        .logical_plan("SELECT entity, region, ts, value FROM feats")
        .await
        .unwrap();
    engine
        .write(
            &state,
            &pitlake::engine::TableName::bare("feats_by_region"),
            plan,
            pitlake::engine::WriteMode::Create,
            &["region".to_string()],
        )
        .await
        .unwrap();
    engine
        .sql("INSERT INTO feats_by_region VALUES (30, 'z', TIMESTAMP '2024-01-01 00:00:03', 8.5)")
        .await
        .unwrap();
}

fn sorted(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut rows = rows(batches);
    rows.sort();
    rows
}

#[tokio::test]
async fn pinned_tables_read_what_deltalake_reads() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    fixture(&engine).await;
    let remote = scheduler(&engine, 3);
    for sql in [
        "SELECT * FROM feats_by_region",
        "SELECT value, region FROM feats_by_region WHERE region = 'a' OR region IS NULL",
        "SELECT region FROM feats_by_region WHERE value > 3",
        "SELECT entity, value FROM feats_by_region VERSION AS OF 0",
        "SELECT count(*) FROM feats_by_region",
        "SELECT * FROM feats_by_region WHERE region = 'z' LIMIT 1",
        "SELECT l.label_id, f.region, f.value FROM labels l ASOF LEFT JOIN feats_by_region f \
         ON l.entity = f.entity AND l.at >= f.ts",
        "SELECT l.label_id, f.value FROM labels l ASOF JOIN feats f \
         MATCH_CONDITION (l.at < f.ts) ON l.entity IS NOT DISTINCT FROM f.entity",
    ] {
        let expected = sorted(&engine.collect(sql).await.unwrap());
        let df = remote
            .execute_logical_plan(sent(&engine, sql, &remote).await)
            .await
            .unwrap();
        let physical = df.clone().create_physical_plan().await.unwrap();
        let shown = displayable(physical.as_ref()).indent(true).to_string();
        assert!(
            shown.contains("DataSourceExec") && !shown.contains("DeltaScan"),
            "{sql}: the decoded plan must read Parquet files, not deltalake's scan:\n{shown}"
        );
        if sql.contains("ASOF") {
            assert!(shown.contains("mode=co_partitioned"), "{sql}:\n{shown}");
        }
        let got = sorted(&df.collect().await.unwrap());
        if sql.contains("LIMIT") {
            assert_eq!(got.len(), 1, "{sql}");
        } else {
            assert_eq!(got, expected, "{sql}");
        }
        assert!(!expected.is_empty(), "{sql}");
    }
    // The pinned version's files, not the latest: version 0 has no 'z' row.
    let v0 = engine
        .collect("SELECT count(*) FROM feats_by_region VERSION AS OF 0 WHERE region = 'z'")
        .await
        .unwrap();
    assert_eq!(rows(&v0), vec![vec!["0".to_string()]]);
}

/// A scheduler's session (in this process) over `engine`'s storage, planning `partitions`
/// partitions.
fn scheduler(engine: &pitlake::Engine, partitions: usize) -> SessionContext {
    let runtime = cluster_runtime(engine.settings(), Default::default()).unwrap();
    SessionContext::new_with_state(cluster_session_state(
        cluster_config().with_target_partitions(partitions),
        runtime,
    ))
}

/// `sql` planned by `engine` as a cluster client sends it (each table's files pruned by its
/// scan's filters), through the cluster codec, as `remote` decodes it.
async fn sent(
    engine: &pitlake::Engine,
    sql: &str,
    remote: &SessionContext,
) -> datafusion::logical_expr::LogicalPlan {
    let (logical, _) = cluster_codecs(engine.settings());
    let plan =
        pitlake::engine::prune_cluster_files(engine.logical_plan(sql).await.unwrap()).unwrap();
    let bytes = logical_plan_to_bytes_with_extension_codec(&plan, logical.as_ref()).unwrap();
    logical_plan_from_bytes_with_extension_codec(&bytes, &remote.task_ctx(), logical.as_ref())
        .unwrap()
}

/// The rows of `plan` run in `remote`, sorted.
async fn run_sorted(
    remote: &SessionContext,
    plan: datafusion::logical_expr::LogicalPlan,
) -> Vec<Vec<String>> {
    sorted(
        &remote
            .execute_logical_plan(plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    )
}

/// The rows of `sql` planned by `engine`, sent through the cluster codec and run in a
/// scheduler's session (in this process).
async fn through_pinned(engine: &pitlake::Engine, sql: &str) -> Vec<Vec<String>> {
    let remote = scheduler(engine, 2);
    let back = sent(engine, sql, &remote).await;
    run_sorted(&remote, back).await
}

/// Tables written by other engines (DAT: partitioned, multi-partitioned, a schema change),
/// every version, read as pinned files equal what deltalake reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_tables_read_other_engines_tables_at_every_version() {
    let corpus = crate::common::shared_testdata().join("dat");
    let mut checked = 0;
    // Each case at every version, with an integer column of that version.
    for (case, columns) in [
        ("basic_append", &["number", "number"][..]),
        ("basic_partitioned", &["number", "number"][..]),
        ("multi_partitioned", &["number", "number", "number"][..]),
        ("with_schema_change", &["number", "num1"][..]),
    ] {
        let engine = engine(&corpus.join(case));
        for (v, column) in columns.iter().enumerate() {
            // Whole, and filtered on the integer column (Spark's file statistics prune files).
            for filter in [String::new(), format!(" WHERE {column} > 3")] {
                let sql = format!("SELECT * FROM \"delta\" VERSION AS OF {v}{filter}");
                let expected = engine.collect(&sql).await.unwrap();
                assert_eq!(
                    through_pinned(&engine, &sql).await,
                    sorted(&expected),
                    "dat/{case} v{v}{filter}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 18);
}

#[tokio::test]
async fn pinned_tables_refuse_what_they_cannot_read() {
    // An in-memory warehouse: executors cannot see this process's memory.
    let mut settings = pitlake::Settings::new(
        pitlake::WarehouseLocation::parse("memory:///cluster-test").unwrap(),
    );
    settings.target_partitions = 2;
    let engine = pitlake::Engine::new(settings).unwrap();
    engine.sql("CREATE TABLE t AS SELECT 1 AS x").await.unwrap();
    let plan = engine.logical_plan("SELECT x FROM t").await.unwrap();
    let (logical, _) = cluster_codecs(engine.settings());
    let err = logical_plan_to_bytes_with_extension_codec(&plan, logical.as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("in-memory warehouse") && err.contains("`t`"),
        "{err}"
    );
}

fn pitlake(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pitlake"))
        .args(args)
        .env_remove("PITLAKE_CLUSTER")
        .output()
        .unwrap()
}

/// `pitlake ARGS`, which must succeed: its output, or a failure with its error and `what`.
fn pitlake_ok(args: &[&str], what: &str) -> std::process::Output {
    let out = pitlake(args);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The CLI through a scheduler and two executors gives the single-node answers.
#[test]
fn the_cli_runs_queries_on_the_cluster() {
    let cluster = processes::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("warehouse");
    std::fs::create_dir_all(&warehouse).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(fixture(&engine(&warehouse)));
    let wh = warehouse.display().to_string();
    for sql in [
        "SELECT l.label_id, f.region, f.value FROM labels l ASOF LEFT JOIN feats_by_region f \
         ON l.entity = f.entity AND l.at >= f.ts ORDER BY l.label_id",
        "SELECT region, count(*) AS n FROM feats_by_region GROUP BY region ORDER BY region",
    ] {
        let local = pitlake_ok(
            &[
                "-w",
                &wh,
                "--target-partitions",
                "2",
                "sql",
                "--format",
                "csv",
                sql,
            ],
            sql,
        );
        let remote = pitlake_ok(
            &[
                "-w",
                &wh,
                "--cluster",
                &cluster.address,
                "sql",
                "--format",
                "csv",
                sql,
            ],
            sql,
        );
        assert_eq!(
            String::from_utf8_lossy(&remote.stdout),
            String::from_utf8_lossy(&local.stdout),
            "{sql}"
        );
    }
}

/// A scheduler nobody listens at: a clear error, soon.
#[test]
fn an_unreachable_scheduler_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("df://127.0.0.1:{port}");
    let started = Instant::now();
    let out = pitlake(&[
        "-w",
        &dir.path().display().to_string(),
        "--cluster",
        &address,
        "sql",
        "SELECT 1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("the scheduler at {address} cannot be reached")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // A malformed address is refused before anything runs.
    let out = pitlake(&["--cluster", "http://x:1", "sql", "SELECT 1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("df://HOST:PORT"),
        "{stderr}"
    );
}

/// The cluster's ports authenticate nobody: a listen address other than loopback needs the
/// operator to say the network is private.
#[test]
fn cluster_processes_listen_on_loopback_unless_told_the_network_is_private() {
    for args in [
        vec!["cluster", "scheduler", "--listen", "0.0.0.0:0"],
        vec![
            "cluster",
            "executor",
            "--scheduler",
            "127.0.0.1:1",
            "--listen",
            "0.0.0.0:0",
        ],
    ] {
        let out = pitlake(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("not a loopback address") && stderr.contains("--private-network"),
            "{stderr}"
        );
    }
}

/// On a cluster: a table function is refused clearly before anything is sent, and the capped
/// functions are capped on the executors too (an oversized value cannot take their memory).
#[test]
fn the_cluster_refuses_table_functions_and_caps_functions() {
    let cluster = processes::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().display().to_string();
    let create = "CREATE TABLE sizes AS SELECT 1000000000 AS n";
    pitlake_ok(&["-w", &warehouse, "sql", create], create);
    let out = pitlake(&[
        "-w",
        &warehouse,
        "--cluster",
        &cluster.address,
        "sql",
        "SELECT count(*) FROM generate_series(1, 10)",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not a warehouse table") && !stderr.contains("internal error"),
        "{stderr}"
    );
    let out = pitlake(&[
        "-w",
        &warehouse,
        "--cluster",
        &cluster.address,
        "sql",
        "SELECT length(repeat('x', n)) FROM sizes",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("at most 256 MiB is allowed"), "{stderr}");
}

/// On a cluster a table travels as only those of its files whose statistics allow a row that
/// passes the scan's filters (integer, date and timestamp columns; a timestamp's logged maximum,
/// truncated to the millisecond, widened by one), and the rows are single-node's.
#[tokio::test]
async fn pinned_tables_leave_out_the_files_the_filters_exclude() {
    use datafusion::common::tree_node::TreeNode;
    use datafusion::logical_expr::LogicalPlan;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    for sql in [
        "CREATE TABLE ev AS SELECT 1 AS k, CAST('2024-01-01 00:00:00.000500' AS TIMESTAMP) AS t, \
         'a' AS s",
        "INSERT INTO ev VALUES (2, TIMESTAMP '2024-02-01 00:00:00', 'b')",
        "INSERT INTO ev VALUES (3, TIMESTAMP '2024-03-01 00:00:00', 'c')",
    ] {
        engine.sql(sql).await.unwrap();
    }
    let remote = scheduler(&engine, 2);
    for (filter, files) in [
        ("t > TIMESTAMP '2024-01-15 00:00:00'", 2),
        ("t >= TIMESTAMP '2024-03-01 00:00:00' AND k > 0", 1),
        ("k = 2", 1),
        ("t < TIMESTAMP '2023-01-01 00:00:00'", 0),
        // Logged as 00:00:00.000; its rows reach .000500.
        ("t > TIMESTAMP '2024-01-01 00:00:00.000200'", 3),
        // Strings' statistics may be truncated: not used.
        ("s > 'b'", 3),
        ("k > 1 OR s = 'a'", 3),
    ] {
        let sql = format!("SELECT k FROM ev WHERE {filter}");
        let back = sent(&engine, &sql, &remote).await;
        let mut pinned = Vec::new();
        back.apply(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let provider = datafusion::datasource::source_as_provider(&scan.source).unwrap();
                let table = (provider.as_ref() as &dyn std::any::Any)
                    .downcast_ref::<pitlake::storage::PinnedDeltaTable>()
                    .unwrap();
                pinned.push(table.file_count());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        assert_eq!(pinned, vec![files], "{filter}");
        let got = run_sorted(&remote, back).await;
        assert_eq!(
            got,
            sorted(&engine.collect(&sql).await.unwrap()),
            "{filter}"
        );
    }
}
