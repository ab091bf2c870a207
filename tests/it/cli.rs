//! The built `pitlake` binary: every command, the output formats, exit codes and bad input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn pitlake(warehouse: &Path, args: &[&str]) -> Run {
    pitlake_in(&std::env::temp_dir(), warehouse, args)
}

fn pitlake_in(cwd: &Path, warehouse: &Path, args: &[&str]) -> Run {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_pitlake"))
        .current_dir(cwd)
        .arg("--warehouse")
        .arg(warehouse)
        .arg("--target-partitions")
        .arg("2")
        .args(args)
        .env_remove("PITLAKE_WAREHOUSE")
        .output()
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn ok(run: Run) -> Run {
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn sql(warehouse: &Path, query: &str, format: &str) -> String {
    ok(pitlake(warehouse, &["sql", query, "--format", format])).stdout
}

fn latest_version(warehouse: &Path, table: &str) -> String {
    sql(
        warehouse,
        &format!("DESCRIBE HISTORY {table} LIMIT 1"),
        "csv",
    )
    .lines()
    .nth(1)
    .unwrap()
    .split(',')
    .next()
    .unwrap()
    .to_string()
}

#[test]
fn demo_builds_the_warehouse_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    // The default warehouse is ./warehouse.
    let run = Command::new(env!("CARGO_BIN_EXE_pitlake"))
        .current_dir(dir.path())
        .args(["--target-partitions", "2", "demo"])
        .env_remove("PITLAKE_WAREHOUSE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for table in ["driver_hourly_stats", "customer_profile", "orders"] {
        assert!(
            dir.path()
                .join("warehouse")
                .join(table)
                .join("_delta_log")
                .is_dir()
        );
        assert!(stdout.contains(table), "{stdout}");
    }
    assert!(stdout.contains("VERSION AS OF"), "{stdout}");
    assert!(stdout.contains("TIMESTAMP AS OF"), "{stdout}");

    let warehouse = dir.path().join("warehouse");
    assert_eq!(latest_version(&warehouse, "driver_hourly_stats"), "2");
    let counts = sql(
        &warehouse,
        "SELECT (SELECT count(*) FROM orders) AS o, (SELECT count(*) FROM customer_profile) AS c",
        "csv",
    );
    assert!(counts.ends_with("2000,2800\n"), "{counts}");

    // Again: nothing is rebuilt, no new version.
    let again = ok(pitlake(&warehouse, &["demo", "--no-tour"]));
    assert!(again.stdout.contains("already built"), "{}", again.stdout);
    assert_eq!(latest_version(&warehouse, "driver_hourly_stats"), "2");

    // --reset rebuilds the same data.
    ok(pitlake(&warehouse, &["demo", "--reset", "--no-tour"]));
    assert_eq!(latest_version(&warehouse, "driver_hourly_stats"), "2");
    let after = sql(
        &warehouse,
        "SELECT count(*), round(sum(conv_rate), 4) FROM driver_hourly_stats",
        "csv",
    );
    let before = sql(
        &warehouse,
        "SELECT count(*), round(sum(conv_rate), 4) FROM driver_hourly_stats VERSION AS OF 2",
        "csv",
    );
    assert_eq!(after, before);
}

fn small_warehouse() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("wh");
    std::fs::create_dir(&warehouse).unwrap();
    ok(pitlake(
        &warehouse,
        &[
            "sql",
            "CREATE TABLE t AS SELECT * FROM (VALUES (1, 'a', 0.5), (2, NULL, 1.5), (3, 'c', NULL)) AS v(id, name, score)",
        ],
    ));
    (dir, warehouse)
}

#[test]
fn sql_output_formats() {
    let (dir, warehouse) = small_warehouse();
    let query = "SELECT * FROM t ORDER BY id";

    let table = sql(&warehouse, query, "table");
    assert!(table.contains("│ 2  ┆ NULL ┆ 1.5   │"), "{table}");
    assert!(table.ends_with("3 rows\n"), "{table}");

    let csv = sql(&warehouse, query, "csv");
    assert_eq!(csv, "id,name,score\n1,a,0.5\n2,,1.5\n3,c,\n");

    let json = sql(&warehouse, query, "json");
    assert_eq!(
        json.trim(),
        r#"[{"id":1,"name":"a","score":0.5},{"id":2,"score":1.5},{"id":3,"name":"c"}]"#
    );

    let ndjson = sql(&warehouse, query, "ndjson");
    assert_eq!(ndjson.lines().count(), 3);

    // Parquet goes to a file and reads back.
    let out = dir.path().join("out.parquet");
    ok(pitlake(
        &warehouse,
        &[
            "sql",
            query,
            "--format",
            "parquet",
            "--output",
            out.to_str().unwrap(),
        ],
    ));
    let file = std::fs::File::open(&out).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 3);

    // The table view caps rows and says how many were left out.
    let capped = ok(pitlake(&warehouse, &["sql", query, "--max-rows", "2"])).stdout;
    assert!(capped.contains("1 more row (3 in all"), "{capped}");

    // An empty result still has its header.
    let empty = sql(&warehouse, "SELECT * FROM t WHERE id > 10", "csv");
    assert_eq!(empty, "id,name,score\n");

    // Several statements run in order; reports go to stderr in machine formats.
    let run = ok(pitlake(
        &warehouse,
        &[
            "sql",
            "INSERT INTO t VALUES (4, 'd', 2.0); SELECT count(*) AS n FROM t",
            "--format",
            "csv",
        ],
    ));
    assert_eq!(run.stdout, "n\n4\n");
    assert!(
        run.stderr.contains("wrote table `t`: 1 row in version 1"),
        "{}",
        run.stderr
    );
}

#[test]
fn sql_reads_files_and_stdin() {
    let (dir, warehouse) = small_warehouse();
    let script = write_file(
        dir.path(),
        "q.sql",
        "-- a comment\nSELECT count(*) AS n\nFROM t;\n",
    );
    let run = ok(pitlake(
        &warehouse,
        &["sql", "--file", script.to_str().unwrap(), "--format", "csv"],
    ));
    assert_eq!(run.stdout, "n\n3\n");

    let mut child = Command::new(env!("CARGO_BIN_EXE_pitlake"))
        .arg("--warehouse")
        .arg(&warehouse)
        .args(["sql", "-", "--format", "csv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT max(id) AS m FROM t")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "m\n3\n");
}

#[test]
fn errors_have_messages_and_exit_codes() {
    let (dir, warehouse) = small_warehouse();

    let run = pitlake(&warehouse, &["sql", "SELECT * FROM tt"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("table `tt` does not exist; did you mean `t`?"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());

    let run = pitlake(&warehouse, &["sql", "SELECT * FRM t"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("SQL syntax error"), "{}", run.stderr);
    assert!(run.stderr.contains("Line: 1, Column: 10"), "{}", run.stderr);

    let run = pitlake(&warehouse, &["sql", "SELECT * FROM t VERSION AS OF 7"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("table `t` has no version 7; the only version is 0"),
        "{}",
        run.stderr
    );

    // Settings that cannot work are usage errors (2).
    let run = pitlake(&warehouse, &["--memory-limit", "lots", "sql", "SELECT 1"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("is not a size"), "{}", run.stderr);
    let run = pitlake(&warehouse, &["--target-partitions", "0", "sql", "SELECT 1"]);
    assert_eq!(run.code, 2);

    // A warehouse that does not exist (3), with what to do about it.
    let missing = dir.path().join("nope");
    let run = pitlake(&missing, &["sql", "SELECT 1"]);
    assert_eq!(run.code, 3);
    assert!(
        run.stderr.contains("does not exist; run `pitlake demo`"),
        "{}",
        run.stderr
    );

    // A warehouse that cannot be created (its parent is a file) (3).
    let file = write_file(dir.path(), "plain-file", "x");
    let run = pitlake(&file.join("wh"), &["ingest", "x", "whatever.csv"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot create the folder"),
        "{}",
        run.stderr
    );

    // Parquet refuses to go to a terminal-less stdout? No: pipes are fine; the check is for
    // terminals only, which a test cannot be. So: an output file that cannot be created.
    let run = pitlake(
        &warehouse,
        &[
            "sql",
            "SELECT 1",
            "--output",
            file.join("x").to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cannot create the output file"),
        "{}",
        run.stderr
    );

    // Unknown subcommands and flags are clap's usage errors.
    let run = pitlake(&warehouse, &["frobnicate"]);
    assert_eq!(run.code, 2);
}

/// `--output` replaces the file only once every statement has run: a query that fails, at
/// planning, at its second statement or while its rows are written, leaves the old file as it
/// was and no temporary file beside it; a named pipe is written to in place.
#[test]
fn a_failed_query_leaves_the_output_file_as_it_was() {
    let (dir, warehouse) = small_warehouse();
    let out_dir = dir.path().join("results");
    std::fs::create_dir(&out_dir).unwrap();
    let out = write_file(&out_dir, "scores.csv", "earlier results\n");
    let listing = || crate::common::entries(&out_dir);
    let run_to = |query: &str, path: &Path| {
        pitlake(
            &warehouse,
            &[
                "sql",
                query,
                "--format",
                "csv",
                "--output",
                path.to_str().unwrap(),
            ],
        )
    };
    for failing in [
        "SELECT * FROM no_such_table",
        "SELECT id FROM t; SELECT no_such_column FROM t",
        "SELECT CAST(name AS INT) FROM t",
    ] {
        let run = run_to(failing, &out);
        assert_eq!(run.code, 1, "{failing}: {}", run.stderr);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "earlier results\n",
            "{failing}"
        );
        assert_eq!(listing(), ["scores.csv"], "{failing}");
    }

    #[cfg(unix)]
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    ok(run_to(
        "SELECT id FROM t ORDER BY id; SELECT count(*) AS n FROM t",
        &out,
    ));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "id\n1\n2\n3\nn\n3\n"
    );
    assert_eq!(listing(), ["scores.csv"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "the replaced file keeps its permissions");
        // A named pipe is written to in place (renamed over, it would become a file), and
        // its reader gets the rows.
        let pipe = out_dir.join("pipe");
        assert!(
            Command::new("mkfifo")
                .arg(&pipe)
                .status()
                .unwrap()
                .success()
        );
        let reader = {
            let pipe = pipe.clone();
            std::thread::spawn(move || std::fs::read_to_string(pipe).unwrap())
        };
        ok(run_to("SELECT 1 AS one", &pipe));
        assert_eq!(reader.join().unwrap(), "one\n1\n");
        assert!(std::fs::metadata(&pipe).unwrap().file_type().is_fifo());
    }
}

#[test]
fn drop_needs_force() {
    let (_dir, warehouse) = small_warehouse();
    let run = pitlake(&warehouse, &["sql", "DROP TABLE t"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("rerun with --force"), "{}", run.stderr);
    assert!(warehouse.join("t/_delta_log").is_dir());
    let run = ok(pitlake(&warehouse, &["sql", "DROP TABLE t", "--force"]));
    assert!(run.stdout.contains("dropped table `t`"), "{}", run.stdout);
    assert!(!warehouse.join("t").exists());
}

#[test]
fn ingest_csv_creates_appends_and_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("wh");
    let first = write_file(
        dir.path(),
        "a.csv",
        "driver_id,event_ts,conv_rate\n1,2026-01-01T00:00:00,0.5\n2,2026-01-01T01:00:00,0.25\n",
    );
    let second = write_file(
        dir.path(),
        "b.csv",
        "driver_id,event_ts,conv_rate\n3,2026-01-02T00:00:00,1\n",
    );
    // The first load creates the table (and the warehouse folder); two files, one commit.
    let run = ok(pitlake(
        &warehouse,
        &[
            "ingest",
            "stats",
            first.to_str().unwrap(),
            second.to_str().unwrap(),
        ],
    ));
    assert!(
        run.stdout
            .contains("created table `stats`: 3 rows in version 0"),
        "{}",
        run.stdout
    );
    // No progress bar when stderr is not a terminal.
    assert!(!run.stderr.contains("ingesting"), "{}", run.stderr);

    let types = sql(
        &warehouse,
        "SELECT arrow_typeof(driver_id), arrow_typeof(event_ts), arrow_typeof(conv_rate) FROM stats LIMIT 1",
        "csv",
    );
    assert!(types.contains("Int64,Timestamp(µs),Float64"), "{types}");

    // Appending: columns matched by name, read with the table's types ("7" is a float here).
    let third = write_file(
        dir.path(),
        "c.csv",
        "conv_rate,driver_id,event_ts\n7,4,2026-01-03T00:00:00\n",
    );
    let run = ok(pitlake(
        &warehouse,
        &["ingest", "stats", third.to_str().unwrap()],
    ));
    assert!(
        run.stdout
            .contains("wrote table `stats`: 1 row in version 1"),
        "{}",
        run.stdout
    );
    assert_eq!(
        sql(
            &warehouse,
            "SELECT conv_rate FROM stats WHERE driver_id = 4",
            "csv"
        ),
        "conv_rate\n7.0\n"
    );

    // Overwrite keeps the schema and replaces the rows.
    let run = ok(pitlake(
        &warehouse,
        &[
            "ingest",
            "stats",
            first.to_str().unwrap(),
            "--mode",
            "overwrite",
        ],
    ));
    assert!(run.stdout.contains("in version 2"), "{}", run.stdout);
    assert_eq!(
        sql(&warehouse, "SELECT count(*) AS n FROM stats", "csv"),
        "n\n2\n"
    );
    assert_eq!(
        sql(
            &warehouse,
            "SELECT count(*) AS n FROM stats VERSION AS OF 1",
            "csv"
        ),
        "n\n4\n"
    );
}

#[test]
fn ingest_refuses_mismatched_or_malformed_input_without_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("wh");
    let good = write_file(dir.path(), "good.csv", "id,score\n1,0.5\n2,0.75\n");
    ok(pitlake(
        &warehouse,
        &["ingest", "scores", good.to_str().unwrap()],
    ));

    // A missing column.
    let missing = write_file(dir.path(), "missing.csv", "id\n3\n");
    let run = pitlake(&warehouse, &["ingest", "scores", missing.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("column `score` (Float64) is missing from the input"),
        "{}",
        run.stderr
    );

    // An extra column.
    let extra = write_file(dir.path(), "extra.csv", "id,score,bonus\n3,0.5,1\n");
    let run = pitlake(&warehouse, &["ingest", "scores", extra.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("the input has column `bonus` which the table does not have"),
        "{}",
        run.stderr
    );

    // A wrong type in a typed file (Parquet keeps its types).
    let parquet_path = dir.path().join("wrong.parquet");
    ok(pitlake(
        &warehouse,
        &[
            "sql",
            "SELECT 3 AS id, 'high' AS score",
            "--format",
            "parquet",
            "--output",
            parquet_path.to_str().unwrap(),
        ],
    ));
    let run = pitlake(
        &warehouse,
        &["ingest", "scores", parquet_path.to_str().unwrap()],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("column `score` has type Utf8")
            && run.stderr.contains("but Float64 in the table"),
        "{}",
        run.stderr
    );

    // A malformed line: the file and the line are named.
    let bad = write_file(dir.path(), "bad.csv", "id,score\n3,0.5\n4,oops\n5,0.1\n");
    let run = pitlake(&warehouse, &["ingest", "scores", bad.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("bad.csv"), "{}", run.stderr);
    assert!(run.stderr.contains("oops"), "{}", run.stderr);
    assert!(run.stderr.contains("line 3"), "{}", run.stderr);

    // A ragged line.
    let ragged = write_file(dir.path(), "ragged.csv", "id,score\n3,0.5,9\n");
    let run = pitlake(&warehouse, &["ingest", "scores", ragged.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);

    // A file that does not exist, and one whose format cannot be told.
    let run = pitlake(&warehouse, &["ingest", "scores", "/no/such/file.csv"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("cannot read"), "{}", run.stderr);
    let odd = write_file(dir.path(), "data.txt", "id,score\n1,1\n");
    let run = pitlake(&warehouse, &["ingest", "scores", odd.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("pass --format"), "{}", run.stderr);
    // … which --format fixes.
    ok(pitlake(
        &warehouse,
        &["ingest", "scores", odd.to_str().unwrap(), "--format", "csv"],
    ));

    // Every refusal above left the table alone: version 0 plus the one good --format load.
    assert_eq!(latest_version(&warehouse, "scores"), "1");
    assert_eq!(
        sql(&warehouse, "SELECT count(*) AS n FROM scores", "csv"),
        "n\n3\n"
    );
}

#[test]
fn ingest_parquet_json_and_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("wh");
    let json = write_file(
        dir.path(),
        "events.jsonl",
        "{\"region\":\"eu\",\"n\":1}\n{\"region\":\"us\",\"n\":2}\n{\"region\":\"eu\",\"n\":3}\n",
    );
    ok(pitlake(
        &warehouse,
        &[
            "ingest",
            "events",
            json.to_str().unwrap(),
            "--partition-by",
            "region",
        ],
    ));
    assert!(warehouse.join("events/region=eu").is_dir());
    assert_eq!(
        sql(
            &warehouse,
            "SELECT region, sum(n) AS n FROM events GROUP BY region ORDER BY region",
            "csv"
        ),
        "region,n\neu,4\nus,2\n"
    );

    let parquet_path = dir.path().join("more.parquet");
    ok(pitlake(
        &warehouse,
        &[
            "sql",
            "SELECT 'ap' AS region, CAST(5 AS BIGINT) AS n",
            "--format",
            "parquet",
            "--output",
            parquet_path.to_str().unwrap(),
        ],
    ));
    ok(pitlake(
        &warehouse,
        &["ingest", "events", parquet_path.to_str().unwrap()],
    ));
    assert_eq!(
        sql(&warehouse, "SELECT sum(n) AS n FROM events", "csv"),
        "n\n11\n"
    );
    // A partition column that does not exist.
    let run = pitlake(
        &warehouse,
        &[
            "ingest",
            "other",
            json.to_str().unwrap(),
            "--partition-by",
            "country",
        ],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("partition column `country` is not in the data"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_corrupt_table_fails_alone() {
    let (dir, warehouse) = small_warehouse();
    ok(pitlake(
        &warehouse,
        &["sql", "CREATE TABLE good AS SELECT 1 AS x"],
    ));

    // A broken commit file.
    let log = warehouse.join("t/_delta_log/00000000000000000000.json");
    std::fs::write(&log, "{ this is not json").unwrap();
    let run = pitlake(&warehouse, &["sql", "SELECT * FROM t"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("table `t` cannot be read"),
        "{}",
        run.stderr
    );
    assert_eq!(sql(&warehouse, "SELECT x FROM good", "csv"), "x\n1\n");
    // Listing still works, and names the broken table.
    let tables = sql(&warehouse, "SHOW TABLES", "csv");
    assert!(
        tables.contains(",t,") && tables.contains(",good,"),
        "{tables}"
    );

    // A broken data file.
    let data = std::fs::read_dir(warehouse.join("good"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    std::fs::write(&data, b"PAR1 garbage").unwrap();
    let run = pitlake(&warehouse, &["sql", "SELECT * FROM good"]);
    assert_eq!(run.code, 1);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(run.stderr.starts_with("Error: "), "{}", run.stderr);
    drop(dir);
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let (_dir, warehouse) = small_warehouse();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pitlake"))
        .arg("--warehouse")
        .arg(&warehouse)
        .args([
            "sql",
            "SELECT * FROM generate_series(1, 2000000) AS s(x)",
            "--format",
            "csv",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `plan`, `apply`, `export`, `reproduce` and `audit`: their output and exit codes.
#[test]
fn registry_and_training_set_commands() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("warehouse");
    let defs = dir.path().join("features");
    std::fs::create_dir(&defs).unwrap();
    std::fs::create_dir(&warehouse).unwrap();
    ok(pitlake(
        &warehouse,
        &[
            "sql",
            "CREATE TABLE labels AS SELECT * FROM (VALUES (1, 7, TIMESTAMP '2026-01-05 00:00:00'), (2, 8, TIMESTAMP '2026-01-05 00:00:00')) AS v(label_id, driver_id, at); \
             CREATE TABLE stats AS SELECT * FROM (VALUES (7, TIMESTAMP '2026-01-01 00:00:00', 0.5)) AS v(driver_id, event_ts, rate)",
        ],
    ));
    write_file(
        &defs,
        "driver.sql",
        "CREATE ENTITY driver (driver_id BIGINT);\n\
         CREATE FEATURE VIEW stats ENTITY driver FROM stats EVENT TIME event_ts FEATURES (rate);\n",
    );
    let dir_arg = defs.display().to_string();
    let planned = ok(pitlake(&warehouse, &["plan", &dir_arg])).stdout;
    assert!(
        planned.contains("Would apply 2 change(s) to an empty registry"),
        "{planned}"
    );
    assert!(planned.contains("+ create entity `driver`"), "{planned}");
    let applied = ok(pitlake(&warehouse, &["apply", &dir_arg])).stdout;
    assert!(applied.contains("Applied 2 change(s)"), "{applied}");
    assert!(applied.contains("Registry version 0."), "{applied}");
    let again = ok(pitlake(&warehouse, &["apply", &dir_arg])).stdout;
    assert!(again.contains("No changes"), "{again}");

    let to = dir.path().join("out/set.parquet").display().to_string();
    let training_set = "TRAINING SET LABELS labels AT at FEATURES (stats.rate)";
    let exported = ok(pitlake(&warehouse, &["export", training_set, "--to", &to])).stdout;
    assert!(exported.contains("Exported 2 rows"), "{exported}");
    assert!(
        exported.contains("labels v0, stats v0 with registry version 0"),
        "{exported}"
    );
    let manifest = format!("{to}.manifest.json");
    let reproduced = ok(pitlake(&warehouse, &["reproduce", &manifest])).stdout;
    assert!(reproduced.contains("Identical"), "{reproduced}");
    let audited = ok(pitlake(
        &warehouse,
        &["audit", &manifest, "--format", "csv"],
    ))
    .stdout;
    assert!(
        audited.starts_with("view,label_rows,training_rows,matched"),
        "{audited}"
    );
    assert!(audited.contains("stats,2,2,1,0.5,0,0,0,"), "{audited}");
    let audited = ok(pitlake(
        &warehouse,
        &["audit", training_set, "--format", "csv"],
    ))
    .stdout;
    assert!(audited.contains("stats,2,2,1"), "{audited}");

    // A manifest whose hash does not match what its inputs give: exit 1, both hashes named.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hash = json["output"]["content_hash"].as_str().unwrap().to_string();
    let tampered = dir.path().join("tampered.manifest.json");
    std::fs::write(
        &tampered,
        text.replace(&hash, &format!("{}0", &hash[..hash.len() - 1])),
    )
    .unwrap();
    let run = pitlake(&warehouse, &["reproduce", &tampered.display().to_string()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("differs from the export"),
        "{}",
        run.stderr
    );

    // Not a training set, not a manifest.
    let run = pitlake(&warehouse, &["export", "SELECT 1", "--to", &to]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("expected `TRAINING SET LABELS"),
        "{}",
        run.stderr
    );
    let run = pitlake(
        &warehouse,
        &[
            "reproduce",
            &dir.path().join("missing.json").display().to_string(),
        ],
    );
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("missing.json"), "{}", run.stderr);

    // `verify` reads the exported file: exit 0 while it is the manifest's, 1 once it is not,
    // naming what differs; `reproduce` then fails too, though the rebuild is identical.
    let verified = ok(pitlake(&warehouse, &["verify", &manifest])).stdout;
    assert!(
        verified.contains("Verified: the parquet export at") && verified.contains("sha256: "),
        "{verified}"
    );
    let bytes = std::fs::read(&to).unwrap();
    std::fs::write(&to, &bytes[..bytes.len() / 2]).unwrap();
    let run = pitlake(&warehouse, &["verify", &manifest]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("does not match its manifest")
            && run.stderr.contains(&format!(
                "size: the manifest records {} bytes, the export has {} bytes",
                bytes.len(),
                bytes.len() / 2
            )),
        "{}",
        run.stderr
    );
    let run = pitlake(&warehouse, &["reproduce", &manifest]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.contains("Identical"), "{}", run.stdout);
    assert!(
        run.stderr.contains("does not match its manifest"),
        "{}",
        run.stderr
    );
    // Verifying needs no warehouse; a missing manifest is named.
    let run = pitlake(
        &dir.path().join("no-warehouse"),
        &[
            "verify",
            &dir.path().join("missing.json").display().to_string(),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("missing.json"), "{}", run.stderr);
}
