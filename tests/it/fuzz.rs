//! A bounded fuzz run over what a client can send: statements made of SQL and DSL words, and
//! mutations of valid statements, go through the parser and, when they parse, through the
//! planner of a real warehouse. Nothing may panic, hang, or answer with an internal error; the
//! process must survive inputs built to be deep or large.
//!
//! Seeded, so a failure reproduces: `PITLAKE_FUZZ_SEED=n PITLAKE_FUZZ_CASES=n cargo test --test
//! it fuzz::` (defaults: seed 7, 1,500 cases, planning the first 400 that parse).

use std::time::Duration;

use pitlake::{Engine, PitlakeError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::engine;

/// Words, names, literals and punctuation the generator draws from.
const VOCABULARY: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "WITH",
    "AS",
    "JOIN",
    "ASOF",
    "LEFT",
    "ON",
    "AND",
    "OR",
    "NOT",
    "IN",
    "EXISTS",
    "VERSION",
    "TIMESTAMP",
    "OF",
    "FOR",
    "SYSTEM_TIME",
    "TOLERANCE",
    "TIEBREAK",
    "BY",
    "KNOWN",
    "AT",
    "MATCH_CONDITION",
    "USING",
    "CREATE",
    "OR REPLACE",
    "TABLE",
    "DROP",
    "INSERT",
    "INTO",
    "VALUES",
    "FEATURE",
    "VIEW",
    "VIEWS",
    "ENTITY",
    "SERVICE",
    "TRAINING",
    "SET",
    "LABELS",
    "FEATURES",
    "EXPORT",
    "TO",
    "TTL",
    "EVENT",
    "TIME",
    "CREATED",
    "DESCRIBE",
    "HISTORY",
    "SHOW",
    "DIFF",
    "BETWEEN",
    "REGISTRY",
    "MODEL",
    "REGISTER",
    "INTERVAL",
    "CAST",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "LIMIT",
    "ORDER",
    "GROUP",
    "UNION",
    "ALL",
    "DESC",
    "EXPLAIN",
    "COPY",
    "IS",
    "NULL",
    "DISTINCT",
    "labels",
    "stats",
    "t",
    "x",
    "l",
    "s",
    "v0",
    "driver",
    "\"_pitlake\".registry",
    "l.t",
    "s.t",
    "l.k",
    "s.k",
    "k",
    "v",
    "now()",
    "1",
    "0",
    "-1",
    "1.5",
    "NULL",
    "TRUE",
    "'2026-01-01T00:00:00Z'",
    "'7 days'",
    "$1",
    "?",
    "(",
    ")",
    "(",
    ")",
    ",",
    ";",
    ".",
    "*",
    "+",
    "-",
    "/",
    "=",
    ">=",
    "<=",
    "<",
    ">",
    "::",
    "[",
    "]",
    "'",
    "\"",
    "/*",
    "*/",
    "--",
    "\n",
    "$$",
    "@",
    "count(*)",
    "max(v)",
    "generate_series(1, 3)",
];

/// Valid statements to mutate.
const SEEDS: &[&str] = &[
    "SELECT * FROM labels l ASOF LEFT JOIN stats s ON l.k = s.k AND l.t >= s.t",
    "SELECT l.k, s.v FROM labels l ASOF JOIN stats s MATCH_CONDITION (l.t >= s.t) ON l.k = s.k \
     TOLERANCE 5 TIEBREAK BY s.v DESC",
    "SELECT count(*) FROM stats VERSION AS OF 0",
    "SELECT * FROM stats TIMESTAMP AS OF now() - INTERVAL '1 day'",
    "WITH a AS (SELECT * FROM labels) SELECT * FROM a WHERE k IN (SELECT k FROM stats)",
    "CREATE ENTITY driver (k BIGINT)",
    "CREATE FEATURE VIEW fv ENTITY driver FROM stats EVENT TIME t TTL 1800 FEATURES (v)",
    "TRAINING SET LABELS labels AT t FEATURES (fv.v) WITH EVENT TIMES",
    "SHOW FEATURE VIEWS",
    "DESCRIBE HISTORY stats LIMIT 2",
    "SHOW DIFF OF FEATURE VIEW fv BETWEEN REGISTRY VERSION 0 AND 1",
];

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn random_statement(rng: &mut SmallRng) -> String {
    let len = rng.random_range(1..40);
    (0..len)
        .map(|_| VOCABULARY[rng.random_range(0..VOCABULARY.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn mutated_statement(rng: &mut SmallRng) -> String {
    let seed = SEEDS[rng.random_range(0..SEEDS.len())];
    let mut words: Vec<String> = seed.split(' ').map(str::to_string).collect();
    // Some seeds go through whole, so the planner sees valid statements of every kind too.
    for _ in 0..rng.random_range(0..3) {
        let at = rng.random_range(0..words.len());
        match rng.random_range(0..4) {
            0 => {
                words.remove(at);
                if words.is_empty() {
                    words.push("SELECT".into());
                }
            }
            1 => words.insert(at, VOCABULARY[rng.random_range(0..VOCABULARY.len())].into()),
            2 => {
                // A long run of one operator or one nesting: the inputs that overflowed stacks.
                let unit = ["1+", "(", "NOT ", "x AND ", "- "][rng.random_range(0..5)];
                words.insert(at, unit.repeat(rng.random_range(100..3_000)));
            }
            _ => {
                let copy = words[rng.random_range(0..words.len())].clone();
                words.insert(at, copy);
            }
        }
    }
    words.join(" ")
}

fn is_internal(err: &PitlakeError) -> bool {
    matches!(err, PitlakeError::Internal(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_dsl_and_planner_survive_random_and_mutated_statements() {
    let dir = tempfile::tempdir().unwrap();
    let engine: Engine = engine(dir.path());
    engine
        .run_script(
            "CREATE TABLE labels AS SELECT 1 AS k, TIMESTAMP '2026-01-02 00:00:00' AS t; \
             CREATE TABLE stats AS SELECT 1 AS k, TIMESTAMP '2026-01-01 00:00:00' AS t, 0.5 AS v; \
             CREATE ENTITY driver (k BIGINT); \
             CREATE FEATURE VIEW fv ENTITY driver FROM stats EVENT TIME t FEATURES (v)",
            Default::default(),
        )
        .await
        .unwrap();
    let cases = setting("PITLAKE_FUZZ_CASES", 1_500);
    let mut plan_budget = cases.min(400);
    let mut rng = SmallRng::seed_from_u64(setting("PITLAKE_FUZZ_SEED", 7));
    let (mut parsed, mut planned) = (0, 0);
    for case in 0..cases {
        let sql = if case % 2 == 0 {
            random_statement(&mut rng)
        } else {
            mutated_statement(&mut rng)
        };
        let statements = match engine.parse(&sql) {
            Ok(statements) => statements,
            Err(err) => {
                assert!(!is_internal(&err), "case {case}: `{sql:.300}`: {err}");
                continue;
            }
        };
        parsed += 1;
        for statement in statements {
            if plan_budget == 0 {
                break;
            }
            plan_budget -= 1;
            // Planning reads no rows and writes nothing, whatever the statement.
            let outcome =
                tokio::time::timeout(Duration::from_secs(30), engine.plan_statement(statement))
                    .await
                    .unwrap_or_else(|_| panic!("case {case}: planning `{sql:.300}` hung"));
            match outcome {
                Ok(_) => planned += 1,
                Err(err) => assert!(!is_internal(&err), "case {case}: `{sql:.300}`: {err}"),
            }
        }
    }
    // The generator reaches the parser's and the planner's paths, not only its errors.
    assert!(parsed > cases / 20, "only {parsed} of {cases} parsed");
    assert!(
        planned > 50,
        "only {planned} of {parsed} parsed statements planned"
    );
    // And nothing was changed by planning.
    assert_eq!(engine.registry().version().await.unwrap(), Some(1));
    let tables = engine.list_tables().await.unwrap();
    assert_eq!(tables.len(), 2, "{tables:?}");
}
