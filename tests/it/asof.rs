//! As-of joins through the whole engine: SQL over real Delta tables, compared with the oracle;
//! plans shared across several feature tables; serialization with the extension codecs.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use futures::TryStreamExt;
use pitlake::asof::oracle::{RightInput, oracle_asof};
use pitlake::asof::{
    Direction, KernelOptions, KeySpec, MatchSpec, TiebreakSpec, Tolerance, tolerance_bound,
};
use pitlake::storage::{TableName, WriteMode};
use pitlake::{Engine, Settings, WarehouseLocation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::rows;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn engine_with(dir: &std::path::Path, partitions: usize, batch: usize) -> Engine {
    let mut settings = Settings::new(WarehouseLocation::parse(&dir.display().to_string()).unwrap());
    settings.target_partitions = partitions;
    settings.batch_size = batch;
    settings.memory_limit = Some(256 << 20);
    Engine::new(settings).unwrap()
}

async fn write(engine: &Engine, name: &str, batch: RecordBatch, mode: WriteMode) {
    engine
        .write_batches(&TableName::bare(name), vec![batch], mode)
        .await
        .unwrap();
}

/// `n` labels over the entities `keys` at whole seconds in `times`.
fn labels(rng: &mut StdRng, n: usize, keys: Range<i64>, times: Range<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("label_id", DataType::Int64, false),
        Field::new("entity_id", DataType::Int64, true),
        Field::new("label_ts", ts_type(), true),
    ]));
    let ids = Int64Array::from_iter_values(0..n as i64);
    let keys = Int64Array::from_iter((0..n).map(|_| {
        rng.random_bool(0.97)
            .then(|| rng.random_range(keys.clone()))
    }));
    let ts = TimestampMicrosecondArray::from_iter((0..n).map(|_| {
        rng.random_bool(0.97)
            .then(|| rng.random_range(times.clone()) * 1_000_000)
    }))
    .with_timezone("UTC");
    RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(keys), Arc::new(ts)]).unwrap()
}

/// `n` feature rows over `keys` entities at whole seconds in `times`, created up to a quarter
/// of the span later.
fn features(
    rng: &mut StdRng,
    n: usize,
    keys: i64,
    times: Range<i64>,
    first_id: i64,
) -> RecordBatch {
    let span = times.end - times.start;
    let schema = Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Int64, true),
        Field::new("feature_ts", ts_type(), true),
        Field::new("created_ts", ts_type(), true),
        Field::new("row_id", DataType::Int64, false),
    ]));
    let entity = Int64Array::from_iter(
        (0..n).map(|_| rng.random_bool(0.98).then(|| rng.random_range(0..keys))),
    );
    let t: Vec<Option<i64>> = (0..n)
        .map(|_| {
            rng.random_bool(0.98)
                .then(|| rng.random_range(times.clone()))
        })
        .collect();
    let c: Vec<Option<i64>> = t
        .iter()
        .map(|t| {
            t.map(|t| (t + rng.random_range(0..3) * rng.random_range(0..span / 4 + 1)) * 1_000_000)
        })
        .collect();
    let t = t.into_iter().map(|t| t.map(|t| t * 1_000_000));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(entity),
            Arc::new(TimestampMicrosecondArray::from_iter(t).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(c).with_timezone("UTC")),
            Arc::new(Int64Array::from_iter_values(first_id..first_id + n as i64)),
        ],
    )
    .unwrap()
}

/// The oracle's answer: label id -> matched row id, for the labels kept.
fn oracle(
    labels: &RecordBatch,
    features: &[RecordBatch],
    direction: Direction,
    strict: bool,
    tolerance_secs: Option<i64>,
    known: bool,
    left: bool,
) -> Vec<(i64, Option<i64>)> {
    let opts = KernelOptions {
        spec: MatchSpec { direction, strict },
        keys: vec![KeySpec {
            data_type: DataType::Int64,
            null_equal: false,
        }],
        time_type: ts_type(),
        tiebreak: vec![TiebreakSpec {
            data_type: ts_type(),
            options: arrow::compute::SortOptions {
                descending: true,
                nulls_first: false,
            },
        }],
        has_knowledge: known,
    };
    let right: Vec<RightInput> = features
        .iter()
        .map(|b| RightInput {
            batch: b.clone(),
            keys: vec![b.column(0).clone()],
            time: b.column(1).clone(),
            knowledge: known.then(|| b.column(2).clone()),
            tiebreak: vec![b.column(2).clone()],
        })
        .collect();
    let time: ArrayRef = labels.column(2).clone();
    let bound = tolerance_secs.map(|s| {
        tolerance_bound(
            &time,
            &Tolerance::Duration(i128::from(s) * 1_000_000_000),
            direction,
        )
        .unwrap()
    });
    let found = oracle_asof(
        &opts,
        &right,
        &[labels.column(1).clone()],
        &time,
        bound.as_ref(),
    )
    .unwrap();
    let ids = labels.column(0).as_primitive::<Int64Type>();
    found
        .into_iter()
        .enumerate()
        .filter(|(_, hit)| left || hit.is_some())
        .map(|(row, hit)| {
            let rid = hit.map(|r| {
                features[r.batch as usize]
                    .column(3)
                    .as_primitive::<Int64Type>()
                    .value(r.row as usize)
            });
            (ids.value(row), rid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_delta_tables_matches_the_oracle() {
    let mut rng = StdRng::seed_from_u64(77);
    let (mut checked, mut matched, mut pruned) = (0, 0, 0);
    // PITLAKE_ASOF_CASES widens the check (16 cases by default).
    let cases: usize = std::env::var("PITLAKE_ASOF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    for case in 0..cases {
        let dir = tempfile::tempdir().unwrap();
        let partitions = rng.random_range(1..=4);
        let batch = [7, 64, 8192][rng.random_range(0..3)];
        let engine = engine_with(dir.path(), partitions, batch);
        let keys = [3, 50][rng.random_range(0..2)];
        let times = [20, 5000][rng.random_range(0..2)];
        // Half the cases label a window of the features' span only, so the right side is
        // pruned to it (and whole feature files are skipped).
        let window = if rng.random_bool(0.5) {
            let start = rng.random_range(0..times / 2);
            start..start + times / 4 + 1
        } else {
            0..times
        };
        // And half label a subset of the entities, so the right side is pruned to their keys.
        let entities = if rng.random_bool(0.5) {
            let first = rng.random_range(0..keys);
            first..rng.random_range(first + 1..=keys)
        } else {
            0..keys
        };
        let label_batch = labels(&mut rng, 300, entities, window);
        write(&engine, "labels", label_batch.clone(), WriteMode::Create).await;
        // Features over several commits (several files), each commit a slice of the span.
        let mut feature_batches = Vec::new();
        let commits = rng.random_range(1..=3);
        for c in 0..commits {
            let slice = c * times / commits..(c + 1) * times / commits;
            let b = features(&mut rng, 400, keys, slice, c * 1000);
            let mode = if c == 0 {
                WriteMode::Create
            } else {
                WriteMode::Append
            };
            write(&engine, "feats", b.clone(), mode).await;
            feature_batches.push(b);
        }
        let (op, direction, strict) = [
            (">=", Direction::Backward, false),
            (">", Direction::Backward, true),
            ("<=", Direction::Forward, false),
            ("<", Direction::Forward, true),
        ][rng.random_range(0..4)];
        let known = direction == Direction::Backward && rng.random_bool(0.5);
        let tolerance = rng
            .random_bool(0.4)
            .then(|| rng.random_range(0..times / 2 + 1));
        let left = rng.random_bool(0.6);
        let sql = format!(
            "SELECT l.label_id, f.row_id FROM labels l ASOF {} JOIN feats f \
             ON l.entity_id = f.entity_id AND l.label_ts {op} f.feature_ts \
             {} TIEBREAK BY f.created_ts DESC {} ORDER BY l.label_id",
            if left { "LEFT" } else { "" },
            tolerance
                .map(|s| format!("TOLERANCE INTERVAL '{s} seconds'"))
                .unwrap_or_default(),
            if known { "KNOWN AT f.created_ts" } else { "" },
        );
        let got: Vec<(i64, Option<i64>)> = rows(&engine.collect(&sql).await.unwrap())
            .into_iter()
            .map(|r| (r[0].parse().unwrap(), r[1].parse().ok()))
            .collect();
        // Whether the right side was pruned to the labels' ranges (the answer must not tell).
        let plan = rows(&engine.collect(&format!("EXPLAIN {sql}")).await.unwrap());
        if plan.iter().any(|r| r.join(" ").contains("Filter: feats.")) {
            pruned += 1;
        }
        let want = oracle(
            &label_batch,
            &feature_batches,
            direction,
            strict,
            tolerance,
            known,
            left,
        );
        assert_eq!(
            got, want,
            "case {case}: {sql} (partitions {partitions}, batch {batch})"
        );
        checked += want.len();
        matched += want.iter().filter(|(_, r)| r.is_some()).count();
    }
    // The cases must exercise real matches and pruned right sides, or equality proves little.
    assert!(
        checked > 2000 && matched > checked / 3,
        "{checked} rows, {matched} matched"
    );
    assert!(
        pruned >= cases / 4,
        "only {pruned} of {cases} cases pruned the right side"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_feature_tables_never_sort_the_labels() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), 2, 8192);
    let mut rng = StdRng::seed_from_u64(5);
    write(
        &engine,
        "labels",
        labels(&mut rng, 100, 0..10, 0..100),
        WriteMode::Create,
    )
    .await;
    for k in 0..3 {
        write(
            &engine,
            &format!("f{k}"),
            features(&mut rng, 100, 10, 0..100, 0),
            WriteMode::Create,
        )
        .await;
    }
    let sql = "EXPLAIN SELECT l.label_id, a.row_id, b.row_id, c.row_id FROM labels l \
               ASOF LEFT JOIN f0 a ON l.entity_id = a.entity_id AND l.label_ts >= a.feature_ts \
               ASOF LEFT JOIN f1 b ON l.entity_id = b.entity_id AND l.label_ts >= b.feature_ts \
               ASOF LEFT JOIN f2 c ON l.entity_id = c.entity_id AND l.label_ts >= c.feature_ts";
    let plan = rows(&engine.collect(sql).await.unwrap())
        .into_iter()
        .map(|r| r[1].clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(plan.matches("AsOfJoinExec").count(), 3, "{plan}");
    // The label side streams through three joins unsorted and unshuffled.
    assert!(!plan.contains("SortExec"), "{plan}");
    let hash_repartitions = plan.matches("partitioning=Hash").count();
    assert!(
        hash_repartitions <= 3,
        "only the feature sides are hash-partitioned: {plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_plans_serialize_with_the_codec() {
    use datafusion_proto::bytes::{
        logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), 2, 8192);
    let mut rng = StdRng::seed_from_u64(9);
    write(
        &engine,
        "labels",
        labels(&mut rng, 200, 0..10, 0..1000),
        WriteMode::Create,
    )
    .await;
    write(
        &engine,
        "feats",
        features(&mut rng, 300, 10, 0..1000, 0),
        WriteMode::Create,
    )
    .await;
    for sql in [
        "SELECT l.label_id, f.row_id FROM labels l ASOF LEFT JOIN feats f \
         ON l.entity_id = f.entity_id AND l.label_ts >= f.feature_ts \
         TOLERANCE INTERVAL '100 seconds' TIEBREAK BY f.created_ts DESC KNOWN AT f.created_ts",
        "SELECT l.label_id, f.row_id FROM labels l ASOF JOIN feats f \
         MATCH_CONDITION (l.label_ts < f.feature_ts) ON l.entity_id IS NOT DISTINCT FROM f.entity_id",
        "SELECT x.id, y.id FROM (SELECT label_id AS id, label_id * 10 AS t FROM labels) x \
         ASOF JOIN (SELECT row_id AS id, row_id AS t FROM feats) y ON x.t >= y.t TOLERANCE 25",
        "SELECT l.label_id, f.n, f.s, f.last2 FROM labels l ASOF LEFT JOIN feats f \
         ON l.entity_id = f.entity_id AND l.label_ts >= f.feature_ts KNOWN AT f.created_ts \
         AGGREGATES (count(*) OVER INTERVAL '100 seconds' AS n, \
         sum(f.row_id) OVER INTERVAL '1 hour' AS s, last(f.row_id, 2) OVER INTERVAL '1 day' AS last2)",
        "SELECT x.id, y.n FROM (SELECT label_id AS id, label_id * 10 AS t FROM labels) x \
         ASOF LEFT JOIN (SELECT row_id AS id, row_id AS t FROM feats) y ON x.t > y.t \
         AGGREGATES (count(*) OVER 25 AS n, max(y.id) OVER 7 AS m)",
    ] {
        let plan = engine.logical_plan(sql).await.unwrap();
        let codec = engine.logical_codec();
        let bytes = logical_plan_to_bytes_with_extension_codec(&plan, &codec).unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let back =
            logical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec).unwrap();
        assert_eq!(
            format!("{}", back.display_indent()),
            format!("{}", plan.display_indent()),
            "{sql}"
        );
        let before: Vec<RecordBatch> = engine
            .execute_plan(plan)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let after: Vec<RecordBatch> = engine
            .execute_plan(back)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let (mut before, mut after) = (rows(&before), rows(&after));
        before.sort();
        after.sort();
        assert_eq!(before, after, "{sql}");
        assert!(!before.is_empty());
    }
}
