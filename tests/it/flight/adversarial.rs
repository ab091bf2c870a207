//! The Flight SQL server attacked as a logged-in user with few grants would attack it: every
//! expression pitlake evaluates while planning, every registry read, every hint in an error,
//! pitlake's own schema, paths stored in the registry, and statements built to exhaust the
//! server. Each class is tried through several clauses, statements and calls, not one example.
//!
//! The secret every test tries to read is an SSN in `salaries`, a table no test user may read.

use super::*;

/// The value no test may ever see in an answer or an error.
const SSN: &str = "918-27-3645";

/// The fixture's warehouse plus `salaries` and a registry: `driver_rates` (carol may read it),
/// `secret_rates` over `salaries` (nobody may), a service and a model over each.
async fn fixture() -> Fixture {
    let fixture = Fixture::start(Options::default()).await;
    fixture
        .engine
        .run_script(
            &format!(
                "CREATE TABLE salaries AS SELECT '{SSN}' AS ssn, \
                   CAST(1 AS BIGINT) AS driver_id, TIMESTAMP '2026-01-01 00:00:00' AS event_ts; \
                 CREATE ENTITY driver (driver_id BIGINT); \
                 CREATE ENTITY employee (driver_id BIGINT); \
                 CREATE FEATURE VIEW driver_rates ENTITY driver FROM driver_stats \
                   EVENT TIME event_ts FEATURES (conv_rate); \
                 CREATE FEATURE VIEW secret_rates ENTITY employee FROM salaries \
                   EVENT TIME event_ts FEATURES (ssn) COMMENT 'hidden'; \
                 CREATE FEATURE SERVICE rates_service (driver_rates.conv_rate); \
                 CREATE FEATURE SERVICE secret_service (secret_rates.ssn, driver_rates.conv_rate); \
                 REGISTER MODEL secret_model VERSION '1' SERVICE secret_service"
            ),
            Default::default(),
        )
        .await
        .unwrap();
    fixture
}

/// The error of a statement run as a query (GetFlightInfo, then DoGet).
async fn refused(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> (Code, String) {
    match query(client, sql).await {
        Ok(batches) => panic!("`{sql}` was answered with {} rows", count(&batches)),
        Err(err) => (code(&err), message(&err)),
    }
}

/// Every cell of a result, as text.
fn cells(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_bounds_and_ttls_cannot_read_around_the_grants() {
    let fixture = fixture().await;
    let mut bob = fixture.login("bob", "bob-pw").await;
    let leak = "(SELECT string_agg(ssn, ',') FROM salaries)";
    // The example, then other clauses and other places for the same subquery.
    for sql in [
        format!("WITH salaries AS (SELECT 1 AS x) SELECT * FROM labels TIMESTAMP AS OF {leak}"),
        format!("SELECT * FROM labels TIMESTAMP AS OF {leak}"),
        format!("SELECT * FROM labels FOR SYSTEM_TIME AS OF {leak}"),
        format!("SELECT * FROM labels TIMESTAMP AS OF now() - {leak}"),
        format!("SELECT * FROM labels TIMESTAMP AS OF to_timestamp({leak})"),
        format!(
            "SELECT * FROM driver_stats WHERE driver_id IN \
             (SELECT driver_id FROM labels TIMESTAMP AS OF {leak})"
        ),
        format!(
            "WITH l AS (SELECT * FROM labels TIMESTAMP AS OF {leak}) \
             SELECT * FROM l ASOF LEFT JOIN driver_stats s \
             ON l.driver_id = s.driver_id AND l.ts >= s.event_ts"
        ),
        format!(
            "SELECT * FROM labels l ASOF LEFT JOIN driver_stats s \
             ON l.driver_id = s.driver_id AND l.ts >= s.event_ts TOLERANCE {leak}"
        ),
        "SELECT * FROM labels l TIMESTAMP AS OF l.ts".to_string(),
    ] {
        let (code, msg) = refused(&mut bob, &sql).await;
        assert_ne!(code, Code::Ok, "{sql}");
        assert!(!msg.contains(SSN), "{sql}: the secret leaked: {msg}");
    }
    // A constant bound still works.
    let got = query(
        &mut bob,
        "SELECT count(*) FROM labels TIMESTAMP AS OF now() + INTERVAL '1 day'",
    )
    .await
    .unwrap();
    assert_eq!(count(&got), 1);
    // The same through a prepared statement and an update.
    let shadowed =
        format!("WITH salaries AS (SELECT 1 AS x) SELECT * FROM labels TIMESTAMP AS OF {leak}");
    let err = bob.prepare(shadowed.clone(), None).await.unwrap_err();
    assert!(!message(&err).contains(SSN), "{}", message(&err));
    assert!(
        message(&err).contains("must be a constant"),
        "{}",
        message(&err)
    );
    let mut admin = fixture.login("admin", "admin-pw").await;
    let err = admin
        .execute_update(format!("CREATE TABLE copy AS {shadowed}"), None)
        .await
        .unwrap_err();
    assert!(
        message(&err).contains("must be a constant"),
        "{}",
        message(&err)
    );
    assert!(!message(&err).contains(SSN), "{}", message(&err));

    // A TTL is evaluated when the view is defined, by a user with only `registry:write`.
    let mut carol = fixture.login("carol", "bob-pw").await;
    let before = fixture.engine.registry().version().await.unwrap();
    // A type name is pasted into SQL to learn its Arrow type: it must carry no query.
    for sql in [
        "CREATE ENTITY inj (k foo('1)) AS x FROM salaries WHERE zzz = 1 --'))",
        "CREATE ENTITY inj (k foo('1)) AS x FROM nosuchtable --'))",
        "CREATE FEATURE VIEW inj ENTITY driver FROM driver_stats EVENT TIME event_ts \
         FEATURES (conv_rate foo('1)) AS x FROM salaries VERSION AS OF 7 --'))",
    ] {
        let err = carol.execute_update(sql.into(), None).await.unwrap_err();
        let msg = message(&err);
        assert!(msg.contains("is not a SQL type"), "{sql}: {msg}");
        for hidden in ["ssn", "secret", "version 0", "tables are"] {
            assert!(!msg.contains(hidden), "{sql}: {msg}");
        }
    }
    // Deeply nested or oversized types in a definition: refused, and the server lives on.
    for sql in [
        format!("CREATE ENTITY deep (k INT{})", "[]".repeat(30_000)),
        format!(
            "CREATE FEATURE VIEW deep ENTITY driver FROM driver_stats EVENT TIME event_ts \
             FEATURES (conv_rate DECIMAL(10, 2){})",
            "[]".repeat(30_000)
        ),
        format!(
            "CREATE ENTITY wide (k STRUCT<{}>)",
            "a INT, ".repeat(200) + "z INT"
        ),
    ] {
        let err = carol.execute_update(sql.clone(), None).await.unwrap_err();
        assert_eq!(code(&err), Code::InvalidArgument, "{}", message(&err));
    }
    for ttl in [
        leak.to_string(),
        format!("INTERVAL '1 day' + {leak}"),
        "event_ts".to_string(),
        "(SELECT 1)".to_string(),
    ] {
        let err = carol
            .execute_update(
                format!(
                    "CREATE FEATURE VIEW stolen ENTITY driver FROM driver_stats \
                     EVENT TIME event_ts TTL {ttl} FEATURES (conv_rate)"
                ),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(
            code(&err),
            Code::InvalidArgument,
            "{ttl}: {}",
            message(&err)
        );
        assert!(
            message(&err).contains("must be a constant"),
            "{}",
            message(&err)
        );
        assert!(!message(&err).contains(SSN), "{}", message(&err));
    }
    assert_eq!(fixture.engine.registry().version().await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_shows_each_user_only_what_their_grants_let_them_see() {
    let fixture = fixture().await;
    // carol: view:driver_rates and registry:write.
    let mut carol = fixture.login("carol", "bob-pw").await;
    let views = query(&mut carol, "SHOW FEATURE VIEWS").await.unwrap();
    assert_eq!(crate::common::column(&views, 0), ["driver_rates"]);
    let services = query(&mut carol, "SHOW FEATURE SERVICES").await.unwrap();
    assert_eq!(crate::common::column(&services, 0), ["rates_service"]);
    let models = query(&mut carol, "SHOW MODELS").await.unwrap();
    assert_eq!(count(&models), 0);
    // Entities: a writer sees them all (to define views), their names only.
    let entities = query(&mut carol, "SHOW ENTITIES").await.unwrap();
    assert_eq!(count(&entities), 2);
    // What uses a visible object lists only visible users.
    let described = cells(
        &query(&mut carol, "DESCRIBE FEATURE VIEW driver_rates")
            .await
            .unwrap(),
    );
    assert!(described.contains("rates_service"), "{described}");
    assert!(!described.contains("secret"), "{described}");
    for sql in [
        "DESCRIBE FEATURE VIEW secret_rates",
        "DESCRIBE FEATURE VIEW secret_rates AS OF REGISTRY VERSION 5",
        "DESCRIBE FEATURE SERVICE secret_service",
        "DESCRIBE MODEL secret_model VERSION '1'",
        "SHOW HISTORY OF FEATURE SERVICE secret_service",
        "SHOW HISTORY OF FEATURE VIEW secret_rates",
        "SHOW HISTORY OF MODEL secret_model VERSION '1'",
        "SHOW DIFF OF FEATURE SERVICE secret_service BETWEEN REGISTRY VERSION 1 AND 8",
        // "did you mean": the hidden names must not be offered.
        "DESCRIBE FEATURE VIEW secret_rate",
        "DESCRIBE FEATURE SERVICE secret_servic",
        "TRAINING SET LABELS labels AT ts FEATURES (secret_rate.ssn)",
        "TRAINING SET LABELS labels AT ts FEATURES (SERVICE secret_servic)",
        // A hidden view's features must not be listed.
        "TRAINING SET LABELS labels AT ts FEATURES (secret_rates.nope)",
        "TRAINING SET LABELS labels AT ts FEATURES (SERVICE secret_service)",
    ] {
        let (code, msg) = refused(&mut carol, sql).await;
        assert_ne!(code, Code::Ok, "{sql}");
        for hidden in [
            "secret_rates",
            "secret_service",
            "ssn",
            "salaries",
            "hidden",
        ] {
            if sql.contains(hidden) {
                continue;
            }
            assert!(!msg.contains(hidden), "{sql}: names `{hidden}`: {msg}");
        }
        assert!(!msg.contains("FROM salaries"), "{sql}: {msg}");
    }
    // A hidden object reads exactly as an absent one: the same code, the same hint.
    let (hidden_code, hidden) =
        refused(&mut carol, "DESCRIBE FEATURE SERVICE secret_service").await;
    let (absent_code, absent) =
        refused(&mut carol, "DESCRIBE FEATURE SERVICE secret_servicf").await;
    assert_eq!(hidden_code, Code::NotFound, "{hidden}");
    assert_eq!(absent_code, Code::NotFound, "{absent}");
    assert_eq!(
        hidden.replace("secret_service", "X"),
        absent.replace("secret_servicf", "X")
    );

    // bob: tables only. No view, service, model or entity is his to see.
    let mut bob = fixture.login("bob", "bob-pw").await;
    for kind in ["FEATURE VIEWS", "FEATURE SERVICES", "MODELS", "ENTITIES"] {
        let shown = query(&mut bob, &format!("SHOW {kind}")).await.unwrap();
        assert_eq!(count(&shown), 0, "SHOW {kind}");
    }
    let (_, msg) = refused(&mut bob, "DESCRIBE ENTITY employe").await;
    assert!(!msg.contains("employee"), "{msg}");

    // A writer cannot replace what their grants hide, under any form of CREATE.
    let before = fixture.engine.registry().version().await.unwrap();
    for sql in [
        "CREATE OR REPLACE FEATURE SERVICE secret_service (driver_rates.conv_rate)",
        "CREATE FEATURE SERVICE secret_service (driver_rates.conv_rate)",
        "CREATE OR REPLACE FEATURE VIEW secret_rates ENTITY driver FROM driver_stats \
         EVENT TIME event_ts FEATURES (conv_rate)",
        "REGISTER OR REPLACE MODEL secret_model VERSION '1' SERVICE rates_service",
        "DROP FEATURE SERVICE secret_service",
        "DROP MODEL secret_model",
    ] {
        let err = carol.execute_update(sql.into(), None).await.unwrap_err();
        assert!(
            !message(&err).contains("ssn") && !message(&err).contains("salaries"),
            "{sql}: {}",
            message(&err)
        );
    }
    assert_eq!(fixture.engine.registry().version().await.unwrap(), before);
    let views = cells(
        &fixture
            .engine
            .collect("DESCRIBE FEATURE VIEW secret_rates")
            .await
            .unwrap(),
    );
    assert!(views.contains("salaries"), "{views}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_set_over_forbidden_labels_says_nothing_about_them() {
    let fixture = fixture().await;
    let mut carol = fixture.login("carol", "bob-pw").await;
    for sql in [
        "TRAINING SET LABELS salaries AT nope FEATURES (driver_rates.conv_rate)",
        "TRAINING SET LABELS salaries VERSION AS OF 0 AT nope FEATURES (driver_rates.*)",
        "TRAINING SET LABELS (SELECT * FROM salaries) AT nope FEATURES (driver_rates.*)",
        "TRAINING SET LABELS (SELECT * FROM labels WHERE driver_id IN (SELECT driver_id FROM \
         salaries)) AT nope FEATURES (driver_rates.*)",
        "CREATE FEATURE VIEW v ENTITY driver FROM salaries EVENT TIME nope FEATURES (x)",
        "CREATE FEATURE VIEW v ENTITY driver FROM (SELECT * FROM salaries) EVENT TIME nope \
         FEATURES (x)",
    ] {
        let (code, msg) = refused(&mut carol, sql).await;
        assert_eq!(code, Code::PermissionDenied, "{sql}: {msg}");
        assert!(!msg.contains("ssn"), "{sql}: lists the columns: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitlakes_own_schema_is_out_of_reach_of_every_grant() {
    let fixture = fixture().await;
    let mut admin = fixture.login("admin", "admin-pw").await;
    let before = fixture.engine.registry().version().await.unwrap();
    for sql in [
        "SELECT * FROM \"_pitlake\".registry",
        "SELECT * FROM _pitlake.registry VERSION AS OF 0",
        "DESCRIBE HISTORY \"_pitlake\".registry",
        "DESCRIBE \"_pitlake\".registry",
    ] {
        let (code, msg) = refused(&mut admin, sql).await;
        assert_ne!(code, Code::Ok, "{sql}: {msg}");
        assert!(!msg.contains("CREATE FEATURE"), "{sql}: {msg}");
    }
    for sql in [
        "DROP TABLE \"_pitlake\".registry",
        "DROP TABLE IF EXISTS _pitlake.registry",
        "INSERT INTO \"_pitlake\".registry SELECT * FROM \"_pitlake\".registry",
        "CREATE TABLE \"_pitlake\".x AS SELECT 1 AS a",
        "CREATE OR REPLACE TABLE \"_pitlake\".registry AS SELECT 1 AS a",
    ] {
        let err = admin.execute_update(sql.into(), None).await.unwrap_err();
        assert_ne!(code(&err), Code::Ok, "{sql}");
    }
    // The registry is whole.
    assert_eq!(fixture.engine.registry().version().await.unwrap(), before);
    let views = fixture.engine.collect("SHOW FEATURE VIEWS").await.unwrap();
    assert_eq!(count(&views), 2);
    // Not through the engine's own SQL either (the CLI).
    let err = fixture
        .engine
        .run_script(
            "DROP TABLE \"_pitlake\".registry",
            pitlake::RunOptions { force: true },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("registry statements"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_model_opens_no_path_stored_in_the_registry() {
    let fixture = fixture().await;
    let fifo = fixture.dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let mut carol = fixture.login("carol", "bob-pw").await;
    for (version, path) in [("1", fifo.display().to_string()), ("2", "/dev/zero".into())] {
        carol
            .execute_update(
                format!(
                    "REGISTER MODEL m VERSION '{version}' SERVICE rates_service \
                     TRAINING SET '{path}'"
                ),
                None,
            )
            .await
            .unwrap();
        // Reading a FIFO blocks until a writer comes; /dev/zero never ends.
        let described = tokio::time::timeout(
            Duration::from_secs(30),
            query(&mut carol, &format!("DESCRIBE MODEL m VERSION '{version}'")),
        )
        .await
        .expect("DESCRIBE MODEL hung on a path stored in the registry")
        .unwrap();
        let text = cells(&described);
        assert!(text.contains("as recorded"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_built_to_exhaust_the_server_are_refused_and_it_lives_on() {
    let fixture = fixture().await;
    let mut bob = fixture.login("bob", "bob-pw").await;
    let chain = |n: usize| format!("SELECT {}1", "1+".repeat(n));
    for (what, sql) in [
        ("3,000 terms", chain(3_000)),
        ("half a million terms", chain(500_000)),
        (
            "a deep WHERE",
            format!(
                "SELECT * FROM labels WHERE {}true",
                "true AND ".repeat(5_000)
            ),
        ),
        (
            "a deep chain in a subquery",
            format!(
                "SELECT * FROM labels WHERE driver_id IN (SELECT {}1)",
                "1*".repeat(5_000)
            ),
        ),
        (
            "a deep chain in a training set's labels",
            format!(
                "TRAINING SET LABELS (SELECT *, {}1 AS x FROM labels) AT ts \
                 FEATURES (driver_rates.*)",
                "1-".repeat(5_000)
            ),
        ),
        (
            "half a million terms in an embedded training set's labels",
            format!(
                "SELECT * FROM (TRAINING SET LABELS (SELECT *, {}1 AS x FROM labels) AT ts \
                 FEATURES (driver_rates.*)) AS t",
                "1-".repeat(500_000)
            ),
        ),
        (
            "half a million terms in a training set written as its placeholder",
            format!(
                "SELECT * FROM pitlake_training_set('TRAINING SET LABELS (SELECT *, {}1 AS x \
                 FROM labels) AT ts FEATURES (driver_rates.*)')",
                "1-".repeat(500_000)
            ),
        ),
        ("two MiB", format!("SELECT '{}'", "x".repeat(2 << 20))),
        // Chains the parser builds in a loop from other parts than expressions.
        (
            "600 set operations",
            format!("SELECT 1 AS a{}", " UNION ALL SELECT 1 AS a".repeat(600)),
        ),
        (
            "30,000 nested array types",
            format!("SELECT CAST(NULL AS INT{})", "[]".repeat(30_000)),
        ),
        (
            "nested array types in a time-travel bound",
            format!(
                "SELECT * FROM labels TIMESTAMP AS OF CAST(NULL AS INT{})",
                "[]".repeat(10_000)
            ),
        ),
        ("4,000 statements", "SELECT 1;".repeat(4_000)),
    ] {
        let (code, msg) = refused(&mut bob, &sql).await;
        assert_eq!(code, Code::InvalidArgument, "{what}: {msg}");
    }
    // Through the other calls that plan.
    let err = bob.prepare(chain(3_000), None).await.unwrap_err();
    assert!(message(&err).contains("levels deep"), "{}", message(&err));
    let err = bob.execute_update(chain(3_000), None).await.unwrap_err();
    assert!(message(&err).contains("levels deep"), "{}", message(&err));
    // The server is alive and answers as before.
    assert_eq!(count(&query(&mut bob, TRAINING_SET).await.unwrap()), 4);
    // A chain within the bound is answered.
    let got = query(&mut bob, &chain(200)).await.unwrap();
    assert_eq!(count(&got), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_manifest_cannot_run_writes() {
    let fixture = fixture().await;
    let engine = &fixture.engine;
    let to = fixture.dir.path().join("ts.parquet").display().to_string();
    engine
        .sql(&format!(
            "EXPORT TRAINING SET LABELS labels AT ts FEATURES (driver_rates.*) TO '{to}'"
        ))
        .await
        .unwrap();
    let manifest_path = pitlake::engine::manifest_location(&to);
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    for evil in [
        "DROP TABLE labels",
        "CREATE TABLE owned AS SELECT * FROM labels",
        "COPY (SELECT * FROM labels) TO '/tmp/pitlake-owned.csv'",
        "WITH a AS (SELECT 1) INSERT INTO labels SELECT * FROM labels",
        "SELECT * INTO owned FROM labels",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let mut manifest: serde_json::Value = serde_json::from_str(&original).unwrap();
        manifest["query"] = evil.into();
        manifest["audit_query"] = evil.into();
        manifest["labels_query"] = evil.into();
        std::fs::write(&manifest_path, manifest.to_string()).unwrap();
        let err = engine.reproduce(&manifest_path, None).await.unwrap_err();
        assert!(err.to_string().contains("must be a query"), "{evil}: {err}");
        let manifest = engine.read_manifest(&manifest_path).await.unwrap();
        let plan = manifest.plan.clone();
        let Err(err) = engine.audit(&plan).await else {
            panic!("{evil}: an edited manifest was audited");
        };
        assert!(err.to_string().contains("must be a query"), "{evil}: {err}");
    }
    // Nothing was written or dropped.
    let tables = engine.list_tables().await.unwrap();
    assert!(tables.iter().any(|t| t.table == "labels"));
    assert!(!tables.iter().any(|t| t.table == "owned"));
    assert_eq!(
        count(&engine.collect("SELECT * FROM labels").await.unwrap()),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_set_inside_sql_is_refused_as_it_is_on_its_own() {
    let fixture = fixture().await;
    let mut carol = fixture.login("carol", "bob-pw").await;
    // Allowed: the same rows inside a query as on their own (in an order of their own, as
    // for any subquery, unless the query orders them).
    let alone = TRAINING_SET_OF_CAROL;
    let inside = format!("SELECT * FROM ({alone}) AS ts ORDER BY ts, driver_id");
    let direct = query(&mut carol, alone).await.unwrap();
    let wrapped = query(&mut carol, &inside).await.unwrap();
    assert!(count(&direct) > 0);
    assert_eq!(cells(&direct), cells(&wrapped));
    // Forbidden: each form of embedding is refused with the code the training set gets on its
    // own, and says nothing of what it may not see.
    for training_set in [
        "TRAINING SET LABELS salaries AT nope FEATURES (driver_rates.conv_rate)",
        "TRAINING SET LABELS labels AT ts FEATURES (secret_rates.ssn)",
        "TRAINING SET LABELS labels AT ts FEATURES (SERVICE secret_service)",
        "TRAINING SET LABELS (SELECT * FROM salaries) AT event_ts FEATURES (driver_rates.*)",
    ] {
        let (alone_code, _) = refused(&mut carol, training_set).await;
        let escaped = training_set.replace('\'', "''");
        for sql in [
            format!("SELECT * FROM ({training_set}) AS ts"),
            format!("WITH ts AS ({training_set}) SELECT count(*) FROM ts"),
            format!("{training_set} LIMIT 1"),
            format!("EXPLAIN {training_set}"),
            // The placeholder the parser writes, written by hand.
            format!("SELECT * FROM pitlake_training_set('{escaped}')"),
        ] {
            let (code, msg) = refused(&mut carol, &sql).await;
            assert_eq!(code, alone_code, "{sql}: {msg}");
            assert!(!msg.contains(SSN) && !msg.contains("ssn`"), "{sql}: {msg}");
            if !training_set.contains("secret") {
                assert!(!msg.contains("secret"), "{sql}: {msg}");
            }
        }
    }
}

/// A training set carol may build: her view over labels she may read.
const TRAINING_SET_OF_CAROL: &str =
    "TRAINING SET LABELS labels AT ts FEATURES (driver_rates.conv_rate)";
