//! Warehouses on object storage, against real servers: S3 (moto) and Azure Blob Storage
//! (Azurite); see `server.rs` for how they are found or started — without them these tests
//! fail, they never skip.
//!
//! - the CLI end to end on `s3://` and `az://`: ingest, query, time travel by version and by
//!   commit time, as-of joins, history, drop;
//! - every way of configuring the store: flags, a config file, `AWS_*` variables, a profile,
//!   and their precedence;
//! - concurrent writers, on S3 and on Azure: N processes appending to one table at once end with
//!   exactly N new versions and every row;
//! - commit safety: a store without put-if-absent (or one that ignores it) gets no writes;
//! - faults, through [`proxy::FaultProxy`]: a dead endpoint, a hanging one, 503s, and the server
//!   dying in the middle of a write (before the data is stored, and at the commit) — the command
//!   fails in bounded time with a clear message, and once the server is back the table reads at
//!   its last good version and takes writes again.

mod proxy;
pub mod server;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use proxy::{FaultProxy, Mode};
use server::{StoreServer, azure_server, s3_server};

fn server() -> &'static StoreServer {
    match s3_server() {
        Ok(server) => server,
        Err(why) => panic!("{why}"),
    }
}

fn azure() -> &'static StoreServer {
    match azure_server() {
        Ok(server) => server,
        Err(why) => panic!("{why}"),
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs the CLI with no AWS settings from this machine: only `options` as flags, plus `env`.
fn pitlake_with(
    warehouse: &str,
    options: &[(String, String)],
    env: &[(&str, &str)],
    home: &Path,
    args: &[&str],
) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pitlake"));
    command
        .arg("--warehouse")
        .arg(warehouse)
        .arg("--target-partitions")
        .arg("2");
    for (key, value) in options {
        command
            .arg("--storage-option")
            .arg(format!("{key}={value}"));
    }
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") || name.starts_with("PITLAKE_") {
            command.env_remove(name);
        }
    }
    command
        .env("HOME", home)
        .envs(env.iter().copied())
        .args(args);
    let started = Instant::now();
    let output = command.output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    }
}

fn pitlake(warehouse: &str, options: &[(String, String)], args: &[&str]) -> Run {
    let home = tempfile::tempdir().unwrap();
    pitlake_with(warehouse, options, &[], home.path(), args)
}

fn ok(run: Run) -> Run {
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run
}

fn csv(warehouse: &str, options: &[(String, String)], query: &str) -> String {
    ok(pitlake(
        warehouse,
        options,
        &["sql", query, "--format", "csv"],
    ))
    .stdout
}

/// Options with short, bounded retries, so that fault tests fail fast.
fn impatient(mut options: Vec<(String, String)>) -> Vec<(String, String)> {
    for (k, v) in [
        ("max_retries", "2"),
        ("retry_timeout", "5s"),
        ("backoff_config.init_backoff", "50ms"),
        ("backoff_config.max_backoff", "200ms"),
        ("connect_timeout", "2s"),
        ("timeout", "3s"),
    ] {
        options.push((k.to_string(), v.to_string()));
    }
    options
}

#[test]
fn the_cli_works_the_same_on_s3() {
    cli_round_trip(server());
}

#[test]
fn the_cli_works_the_same_on_azure() {
    cli_round_trip(azure());
}

fn cli_round_trip(store: &StoreServer) {
    let w = store.warehouse("cli");
    let o = store.options();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("stats.csv");
    std::fs::write(
        &first,
        "driver,event_ts,rate\n1,2026-01-01T00:00:00,0.5\n1,2026-01-02T00:00:00,0.6\n2,2026-01-01T00:00:00,0.7\n",
    )
    .unwrap();
    let second = dir.path().join("more.csv");
    std::fs::write(&second, "driver,event_ts,rate\n2,2026-01-03T00:00:00,0.9\n").unwrap();

    let created = ok(pitlake(
        &w,
        &o,
        &["ingest", "stats", first.to_str().unwrap()],
    ));
    assert!(created.stderr.contains("version 0") || created.stdout.contains("version 0"));
    ok(pitlake(
        &w,
        &o,
        &["ingest", "stats", second.to_str().unwrap()],
    ));
    ok(pitlake(
        &w,
        &o,
        &[
            "sql",
            "CREATE TABLE labels AS SELECT * FROM (VALUES (10, 1, TIMESTAMP '2026-01-01T12:00:00'), \
             (11, 2, TIMESTAMP '2026-01-05T00:00:00')) v(id, driver, at)",
        ],
    ));

    // Queries and the table listing.
    assert_eq!(
        csv(&w, &o, "SELECT count(*) AS n, sum(driver) AS s FROM stats"),
        "n,s\n4,6\n"
    );
    assert_eq!(
        csv(
            &w,
            &o,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' \
             ORDER BY 1"
        ),
        "table_name\nlabels\nstats\n"
    );

    // Time travel by version, and by the commit times DESCRIBE HISTORY shows (the objects'
    // last-modified times on S3, as file times locally).
    assert_eq!(
        csv(&w, &o, "SELECT count(*) AS n FROM stats VERSION AS OF 0"),
        "n\n3\n"
    );
    let history = csv(&w, &o, "DESCRIBE HISTORY stats");
    let lines: Vec<&str> = history.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{history}");
    let v0_time = lines[1].split(',').nth(1).unwrap();
    assert_eq!(
        csv(
            &w,
            &o,
            &format!("SELECT count(*) AS n FROM stats TIMESTAMP AS OF '{v0_time}'")
        ),
        "n\n3\n"
    );

    // An as-of join, on the latest version and on version 0.
    let joined = csv(
        &w,
        &o,
        "SELECT l.id, s.rate FROM labels l ASOF LEFT JOIN stats s \
         ON l.driver = s.driver AND l.at >= s.event_ts ORDER BY l.id",
    );
    assert_eq!(joined, "id,rate\n10,0.5\n11,0.9\n");
    let joined_v0 = csv(
        &w,
        &o,
        "SELECT l.id, s.rate FROM labels l ASOF LEFT JOIN stats VERSION AS OF 0 s \
         ON l.driver = s.driver AND l.at >= s.event_ts ORDER BY l.id",
    );
    assert_eq!(joined_v0, "id,rate\n10,0.5\n11,0.7\n");

    // The registry lives in the store too; exports go to it, with their manifests, and
    // reproduce from it.
    ok(pitlake(
        &w,
        &o,
        &[
            "sql",
            "CREATE ENTITY driver (driver BIGINT); \
             CREATE FEATURE VIEW stats ENTITY driver FROM stats EVENT TIME event_ts FEATURES (rate)",
        ],
    ));
    let training_set = "TRAINING SET LABELS labels AT at FEATURES (stats.rate)";
    assert_eq!(
        csv(&w, &o, training_set),
        "id,driver,at,stats__rate\n10,1,2026-01-01T12:00:00,0.5\n11,2,2026-01-05T00:00:00,0.9\n"
    );
    for (to, format) in [
        (format!("{w}-exports/set.parquet"), "parquet"),
        (format!("{w}-exports/set_delta"), "delta"),
    ] {
        let exported = ok(pitlake(
            &w,
            &o,
            &["export", training_set, "--to", &to, "--format", format],
        ));
        assert!(
            exported.stdout.contains("Exported 2 rows"),
            "{}",
            exported.stdout
        );
        let manifest = format!("{to}.manifest.json");
        let again = ok(pitlake(&w, &o, &["reproduce", &manifest]));
        assert!(again.stdout.contains("Identical"), "{}", again.stdout);
    }
    // The Delta export is a table of a warehouse at its folder.
    assert_eq!(
        csv(
            &format!("{w}-exports"),
            &o,
            "SELECT count(*) AS n FROM set_delta"
        ),
        "n\n2\n"
    );
    let missing = pitlake(
        &w,
        &o,
        &["reproduce", &format!("{w}-exports/none.manifest.json")],
    );
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );

    // Drop: refused without --force, then every object goes.
    let refused = pitlake(&w, &o, &["sql", "DROP TABLE stats"]);
    assert_ne!(refused.code, 0);
    ok(pitlake(&w, &o, &["sql", "DROP TABLE stats", "--force"]));
    let gone = pitlake(&w, &o, &["sql", "SELECT * FROM stats"]);
    assert_eq!(gone.code, 1, "{}", gone.stderr);
    assert!(gone.stderr.contains("does not exist"), "{}", gone.stderr);
    assert_eq!(csv(&w, &o, "SELECT count(*) AS n FROM labels"), "n\n2\n");
}

#[test]
fn settings_come_from_flags_a_config_file_the_environment_and_profiles() {
    let s3 = server();
    let w = s3.warehouse("settings");
    let home = tempfile::tempdir().unwrap();

    // A config file with the warehouse and [storage]; no flags.
    let config = home.path().join("pitlake.toml");
    std::fs::write(
        &config,
        format!(
            "warehouse = \"{w}\"\n[storage]\nendpoint = \"{}\"\nallow_http = true\n\
             region = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            s3.endpoint,
            server::ACCESS_KEY_ID,
            server::SECRET_ACCESS_KEY
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_pitlake"));
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") || name.starts_with("PITLAKE_") {
            command.env_remove(name);
        }
    }
    let out = command
        .env("HOME", home.path())
        .env("PITLAKE_CONFIG", &config)
        .args(["sql", "CREATE TABLE t AS SELECT 1 AS x"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // AWS_* variables only.
    let env = [
        ("AWS_ENDPOINT_URL", s3.endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", server::ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", server::SECRET_ACCESS_KEY),
    ];
    let run = ok(pitlake_with(
        &w,
        &[],
        &env,
        home.path(),
        &["sql", "INSERT INTO t VALUES (2)"],
    ));
    assert!(run.stdout.contains("version 1"), "{}", run.stdout);

    // A named profile: credentials from ~/.aws/credentials, endpoint and region from
    // ~/.aws/config.
    let aws = home.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[pitlake]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            server::ACCESS_KEY_ID,
            server::SECRET_ACCESS_KEY
        ),
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile pitlake]\nregion = us-east-1\nendpoint_url = {}\n",
            s3.endpoint
        ),
    )
    .unwrap();
    let profile_env = [("AWS_PROFILE", "pitlake"), ("AWS_ALLOW_HTTP", "true")];
    let run = ok(pitlake_with(
        &w,
        &[],
        &profile_env,
        home.path(),
        &["sql", "SELECT sum(x) AS s FROM t", "--format", "csv"],
    ));
    assert_eq!(run.stdout, "s\n3\n");

    // Precedence: a flag wins over the environment (whose endpoint is dead here).
    let dead = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", server::ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", server::SECRET_ACCESS_KEY),
    ];
    let flag = vec![("endpoint".to_string(), s3.endpoint.clone())];
    let run = ok(pitlake_with(
        &w,
        &flag,
        &dead,
        home.path(),
        &["sql", "SELECT count(*) AS n FROM t", "--format", "csv"],
    ));
    assert_eq!(run.stdout, "n\n2\n");

    // Plain HTTP must be asked for; a misspelt option is named, not ignored.
    let mut no_http = s3.options();
    no_http.retain(|(k, _)| k != "aws_allow_http");
    let run = pitlake(&w, &no_http, &["sql", "SELECT 1"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("allow_http=true"), "{}", run.stderr);
    let mut typo = s3.options();
    typo.push(("aws_server_side_encrypton".into(), "AES256".into()));
    let run = pitlake(&w, &typo, &["sql", "SELECT 1"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("did you mean `aws_server_side_encryption`"),
        "{}",
        run.stderr
    );

    // Server-side encryption settings pass through to the requests (SSE-S3 here; moto accepts
    // the header and stores the object).
    let mut sse = s3.options();
    sse.push(("aws_server_side_encryption".into(), "AES256".into()));
    ok(pitlake(&w, &sse, &["sql", "INSERT INTO t VALUES (3)"]));
    assert_eq!(
        csv(&w, &s3.options(), "SELECT sum(x) AS s FROM t"),
        "s\n6\n"
    );
}

#[test]
fn concurrent_writers_lose_no_commit_on_s3() {
    concurrent_appends(server());
}

#[test]
fn concurrent_writers_lose_no_commit_on_azure() {
    concurrent_appends(azure());
}

fn concurrent_appends(store: &StoreServer) {
    const WRITERS: usize = 8;
    let w = store.warehouse("concurrent");
    let o = store.options();
    ok(pitlake(
        &w,
        &o,
        &["sql", "CREATE TABLE events (writer BIGINT, n BIGINT)"],
    ));

    // N processes append at once; each commit races the others for the next version.
    let home = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..WRITERS)
        .map(|i| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_pitlake"));
            command.arg("--warehouse").arg(&w);
            for (k, v) in &o {
                command.arg("--storage-option").arg(format!("{k}={v}"));
            }
            command
                .env("HOME", home.path())
                .args([
                    "sql",
                    &format!("INSERT INTO events SELECT {i}, value FROM range(100)"),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut succeeded = Vec::new();
    let mut versions = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            succeeded.push(i);
            let v: i64 = stdout
                .rsplit("version ")
                .next()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no version in {stdout}"));
            versions.push(v);
        } else {
            eprintln!(
                "writer {i} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // deltalake retries a commit that lost the race (appends do not conflict), so every
    // writer gets through, each at its own version.
    assert_eq!(succeeded.len(), WRITERS, "every writer commits");
    versions.sort();
    assert_eq!(versions, (1..=WRITERS as i64).collect::<Vec<_>>());
    let history = csv(&w, &o, "DESCRIBE HISTORY events");
    assert_eq!(history.lines().count(), 1 + 1 + WRITERS, "{history}");
    let per_writer = csv(
        &w,
        &o,
        "SELECT writer, count(*) AS n, count(DISTINCT n) AS d FROM events GROUP BY writer ORDER BY writer",
    );
    let expected: String = std::iter::once("writer,n,d\n".to_string())
        .chain(succeeded.iter().map(|i| format!("{i},100,100\n")))
        .collect();
    assert_eq!(per_writer, expected);
}

#[test]
fn writes_are_refused_without_put_if_absent() {
    let s3 = server();
    let w = s3.warehouse("unsafe");
    let mut disabled = s3.options();
    disabled.push(("aws_conditional_put".into(), "disabled".into()));
    let run = pitlake(&w, &disabled, &["sql", "CREATE TABLE t AS SELECT 1 AS x"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("refusing to write") && run.stderr.contains("put-if-absent"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("aws_s3_allow_unsafe_rename=true"));
    // Nothing was written.
    let run = pitlake(&w, &s3.options(), &["sql", "SELECT * FROM t"]);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    // Reads need no put-if-absent.
    ok(pitlake(
        &w,
        &s3.options(),
        &["sql", "CREATE TABLE t AS SELECT 1 AS x"],
    ));
    assert_eq!(csv(&w, &disabled, "SELECT x FROM t"), "x\n1\n");
    // The one-writer opt-in lets writes through.
    let mut opted_in = disabled.clone();
    opted_in.push(("aws_s3_allow_unsafe_rename".into(), "true".into()));
    ok(pitlake(&w, &opted_in, &["sql", "INSERT INTO t VALUES (2)"]));
    assert_eq!(
        csv(&w, &s3.options(), "SELECT sum(x) AS s FROM t"),
        "s\n3\n"
    );
}

#[test]
fn a_server_that_ignores_if_none_match_gets_no_writes() {
    let s3 = server();
    let w = s3.warehouse("ignores");
    let proxy = FaultProxy::start(&s3.endpoint);
    proxy.set_mode(Mode::IgnoreConditionalPut);
    let run = pitlake(
        &w,
        &s3.options_for(&proxy.endpoint),
        &["sql", "CREATE TABLE t AS SELECT 1 AS x"],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("ignored `If-None-Match: *`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_dead_or_hanging_endpoint_fails_within_a_bound() {
    let s3 = server();
    let w = s3.warehouse("dead");
    ok(pitlake(
        &w,
        &s3.options(),
        &["sql", "CREATE TABLE t AS SELECT 1 AS x"],
    ));
    let proxy = FaultProxy::start(&s3.endpoint);
    let through = impatient(s3.options_for(&proxy.endpoint));

    proxy.set_mode(Mode::Down);
    for query in ["SELECT * FROM t", "INSERT INTO t VALUES (2)"] {
        let run = pitlake(&w, &through, &["sql", query]);
        assert_eq!(run.code, 3, "{query}: {}", run.stderr);
        assert!(
            run.took < Duration::from_secs(15),
            "{query} took {:?}",
            run.took
        );
        assert!(run.stderr.contains("max_retries"), "{}", run.stderr);
    }

    proxy.set_mode(Mode::Hang);
    let run = pitlake(&w, &through, &["sql", "SELECT * FROM t"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    // Three attempts of at most `timeout` (3s) each, plus backoff.
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);

    proxy.set_mode(Mode::Forward);
    assert_eq!(csv(&w, &through, "SELECT count(*) AS n FROM t"), "n\n1\n");
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let s3 = server();
    let w = s3.warehouse("errors");
    ok(pitlake(
        &w,
        &s3.options(),
        &["sql", "CREATE TABLE t AS SELECT 1 AS x"],
    ));
    let proxy = FaultProxy::start(&s3.endpoint);
    let mut through = impatient(s3.options_for(&proxy.endpoint));
    through.retain(|(k, _)| k != "max_retries");
    through.push(("max_retries".into(), "3".into()));
    proxy.set_mode(Mode::ServerErrors);
    let run = pitlake(&w, &through, &["sql", "SELECT * FROM t"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("503"), "{}", run.stderr);
    // The first request (listing the table's log) was tried once and retried three times.
    assert_eq!(proxy.errors_served(), 4);

    // Once the server answers again, so does pitlake.
    proxy.set_mode(Mode::Forward);
    assert_eq!(csv(&w, &through, "SELECT count(*) AS n FROM t"), "n\n1\n");
}

#[test]
fn a_server_dying_mid_write_leaves_the_last_good_version() {
    let s3 = server();
    // The server goes away while the data file is being stored, and again at the very
    // request that would have committed.
    let cuts = [
        ("", ".parquet"),
        ("PUT", "_delta_log/00000000000000000002.json"),
    ];
    for (method, pattern) in cuts {
        let w = s3.warehouse("dies");
        let o = s3.options();
        ok(pitlake(&w, &o, &["sql", "CREATE TABLE t AS SELECT 1 AS x"]));
        ok(pitlake(&w, &o, &["sql", "INSERT INTO t VALUES (2)"]));

        let proxy = FaultProxy::start(&s3.endpoint);
        let through = impatient(s3.options_for(&proxy.endpoint));
        proxy.set_mode(Mode::DieAt {
            method: method.into(),
            pattern: pattern.into(),
        });
        let run = pitlake(
            &w,
            &through,
            &["sql", "INSERT INTO t SELECT value FROM range(10000)"],
        );
        assert_eq!(proxy.mode(), Mode::Down, "the cut at {pattern} never came");
        assert_ne!(run.code, 0, "the write succeeded with its server gone");
        assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
        assert!(
            run.stderr.contains("cannot write") || run.stderr.contains("object storage"),
            "{}",
            run.stderr
        );

        // The server comes back: the table is at version 1 with its two rows, and writable.
        proxy.set_mode(Mode::Forward);
        let history = csv(&w, &through, "DESCRIBE HISTORY t LIMIT 1");
        assert!(
            history.lines().nth(1).unwrap().starts_with("1,"),
            "{history}"
        );
        assert_eq!(
            csv(&w, &through, "SELECT count(*) AS n, sum(x) AS s FROM t"),
            "n,s\n2,3\n"
        );
        let run = ok(pitlake(&w, &through, &["sql", "INSERT INTO t VALUES (4)"]));
        assert!(run.stdout.contains("version 2"), "{}", run.stdout);
    }
}
