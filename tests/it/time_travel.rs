//! Timestamp time travel against pinned commit times: Git and copies drop file times, so the
//! tests set the log files' modification times themselves, as the Delta protocol defines commit
//! time by them.

use std::path::Path;
use std::time::{Duration, SystemTime};

use pitlake::PitlakeError;

use crate::common::{count, engine, rows};

const T0: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn set_commit_time(table: &Path, version: u64, unix_seconds: u64) {
    let file = table.join(format!("_delta_log/{version:020}.json"));
    let handle = std::fs::File::options().write(true).open(&file).unwrap();
    handle
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds))
        .unwrap();
}

async fn three_versions(dir: &Path) -> pitlake::Engine {
    let engine = engine(dir);
    engine
        .run_script(
            "CREATE TABLE t AS SELECT 1 AS id; INSERT INTO t VALUES (2); INSERT INTO t VALUES (3)",
            Default::default(),
        )
        .await
        .unwrap();
    let table = dir.join("t");
    set_commit_time(&table, 0, T0);
    set_commit_time(&table, 1, T0 + 3600);
    set_commit_time(&table, 2, T0 + 7200);
    engine
}

async fn count_at(engine: &pitlake::Engine, instant: &str) -> Result<usize, PitlakeError> {
    let batches = engine
        .collect(&format!("SELECT * FROM t TIMESTAMP AS OF '{instant}'"))
        .await?;
    Ok(count(&batches))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_select_the_version_committed_at_or_before() {
    let dir = tempfile::tempdir().unwrap();
    let engine = three_versions(dir.path()).await;
    // Exactly at each commit, just before the next, and long after the last.
    assert_eq!(count_at(&engine, "2026-01-01T00:00:00Z").await.unwrap(), 1);
    assert_eq!(
        count_at(&engine, "2026-01-01T00:59:59.999Z").await.unwrap(),
        1
    );
    assert_eq!(count_at(&engine, "2026-01-01T01:00:00Z").await.unwrap(), 2);
    assert_eq!(
        count_at(&engine, "2026-01-01T03:00:00+02:00")
            .await
            .unwrap(),
        2
    );
    assert_eq!(count_at(&engine, "2026-01-01T02:00:00Z").await.unwrap(), 3);
    assert_eq!(count_at(&engine, "2030-01-01T00:00:00Z").await.unwrap(), 3);
    // A timestamp without a zone is UTC.
    assert_eq!(count_at(&engine, "2026-01-01 01:30:00").await.unwrap(), 2);

    let err = count_at(&engine, "2025-12-31T23:59:59Z").await.unwrap_err();
    assert!(
        matches!(err, PitlakeError::TimestampTooEarly { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "table `t` did not exist at 2025-12-31T23:59:59.000Z: its first commit (version 0) \
         is at 2026-01-01T00:00:00.000Z"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_the_times_time_travel_uses() {
    let dir = tempfile::tempdir().unwrap();
    let engine = three_versions(dir.path()).await;
    let history = engine.collect("DESCRIBE HISTORY t").await.unwrap();
    let got: Vec<(String, String)> = rows(&history)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("2".to_string(), "2026-01-01T02:00:00Z".to_string()),
            ("1".to_string(), "2026-01-01T01:00:00Z".to_string()),
            ("0".to_string(), "2026-01-01T00:00:00Z".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_file_times_are_made_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = three_versions(dir.path()).await;
    // Version 2's file claims to be older than version 1's: as in Spark, it counts as one
    // millisecond after version 1, so version 1 is still reachable and nothing goes back in time.
    set_commit_time(&dir.path().join("t"), 2, T0 + 10);
    assert_eq!(count_at(&engine, "2026-01-01T01:00:00Z").await.unwrap(), 2);
    assert_eq!(
        count_at(&engine, "2026-01-01T01:00:00.001Z").await.unwrap(),
        3
    );
    assert_eq!(count_at(&engine, "2026-01-01T00:30:00Z").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instants_of_one_table_in_one_query() {
    let dir = tempfile::tempdir().unwrap();
    let engine = three_versions(dir.path()).await;
    let batches = engine
        .collect(
            "SELECT (SELECT count(*) FROM t TIMESTAMP AS OF '2026-01-01T00:30:00Z') AS early, \
                    (SELECT count(*) FROM t TIMESTAMP AS OF '2026-01-01T02:30:00Z') AS late",
        )
        .await
        .unwrap();
    assert_eq!(rows(&batches), vec![vec!["1".to_string(), "3".to_string()]]);
}
