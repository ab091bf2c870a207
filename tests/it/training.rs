//! Training sets through the registry: a brute-force check of the point-in-time rules on random
//! registries and data, exports with manifests that rebuild bit for bit after the inputs moved
//! on, audits that catch leaks, definitions applied from a folder, and concurrent registry
//! writers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use pitlake::storage::{TableName, WriteMode};
use pitlake::{Engine, Output, PitlakeError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{engine, entries, rows};

const MINUTE: i64 = 60_000_000;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

async fn write(engine: &Engine, name: &str, batch: RecordBatch, mode: WriteMode) {
    engine
        .write_batches(&TableName::bare(name), vec![batch], mode)
        .await
        .unwrap();
}

async fn run(engine: &Engine, sql: &str) -> Vec<RecordBatch> {
    match engine.collect(sql).await {
        Ok(batches) => batches,
        Err(e) => panic!("{sql}\nfailed: {e}"),
    }
}

async fn fails(engine: &Engine, sql: &str) -> PitlakeError {
    match engine.sql(sql).await {
        Ok(Output::Rows(stream)) => {
            use futures::TryStreamExt;
            match stream.try_collect::<Vec<_>>().await {
                Ok(_) => panic!("{sql}\nsucceeded"),
                Err(e) => PitlakeError::from_datafusion(e),
            }
        }
        Ok(Output::Done(m)) => panic!("{sql}\nsucceeded: {m}"),
        Err(e) => e,
    }
}

/// A label row: id, entity key, label time (minutes).
type Label = (i64, Option<i64>, Option<i64>);

/// A feature row: key, event time, created time (minutes), value.
#[derive(Clone, Copy, Debug)]
struct FeatureRow {
    key: Option<i64>,
    event: Option<i64>,
    created: i64,
    value: i64,
}

/// A random feature view: its rows and definition.
struct ViewCase {
    rows: Vec<FeatureRow>,
    ttl_minutes: Option<i64>,
    created_time: bool,
}

fn label_batch(labels: &[Label]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("label_id", DataType::Int64, false),
        Field::new("driver_id", DataType::Int64, true),
        Field::new("label_ts", ts_type(), true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(labels.iter().map(|l| l.0))),
            Arc::new(Int64Array::from_iter(labels.iter().map(|l| l.1))),
            Arc::new(
                TimestampMicrosecondArray::from_iter(
                    labels.iter().map(|l| l.2.map(|m| m * MINUTE)),
                )
                .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

fn feature_batch(rows: &[FeatureRow]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("driver_id", DataType::Int64, true),
        Field::new("event_ts", ts_type(), true),
        Field::new("created_ts", ts_type(), false),
        Field::new("value", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.key))),
            Arc::new(
                TimestampMicrosecondArray::from_iter(
                    rows.iter().map(|r| r.event.map(|m| m * MINUTE)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|r| r.created * MINUTE),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.value))),
        ],
    )
    .unwrap()
}

/// The rules of docs/dsl.md, by brute force: the value of the chosen row, or None.
fn expected(label: &Label, view: &ViewCase, knowledge_time: bool) -> Option<i64> {
    let (_, Some(key), Some(at)) = *label else {
        return None;
    };
    view.rows
        .iter()
        .filter(|r| r.key == Some(key))
        .filter_map(|r| r.event.map(|e| (e, r)))
        .filter(|(e, _)| *e <= at)
        .filter(|(e, _)| view.ttl_minutes.is_none_or(|ttl| *e >= at - ttl))
        .filter(|(_, r)| !(view.created_time && knowledge_time) || r.created <= at)
        // Latest event; then (with a created time) latest created. Rows are unique on
        // (key, event, created), and without a created time on (key, event).
        .max_by_key(|(e, r)| (*e, if view.created_time { r.created } else { 0 }))
        .map(|(_, r)| r.value)
}

fn random_case(rng: &mut StdRng, views: usize) -> (Vec<Label>, Vec<ViewCase>) {
    let keys = rng.random_range(1..6);
    let span = rng.random_range(5..60);
    let labels: Vec<Label> = (0..rng.random_range(0..40))
        .map(|id| {
            (
                id,
                rng.random_bool(0.95).then(|| rng.random_range(0..keys)),
                rng.random_bool(0.95).then(|| rng.random_range(0..span)),
            )
        })
        .collect();
    let mut cases = Vec::new();
    for v in 0..views {
        let created_time = rng.random_bool(0.7);
        let mut seen = BTreeSet::new();
        let mut rows = Vec::new();
        for i in 0..rng.random_range(0..60) {
            let key = rng.random_bool(0.95).then(|| rng.random_range(0..keys));
            let event = rng.random_bool(0.95).then(|| rng.random_range(0..span));
            // Deliveries are late by 0 to `span / 2` minutes, sometimes much later (backfills).
            let delay = if rng.random_bool(0.2) {
                rng.random_range(0..span)
            } else {
                rng.random_range(0..span / 2 + 1)
            };
            let created = event.unwrap_or(0) + delay;
            let identity = if created_time {
                (key, event, created)
            } else {
                (key, event, 0)
            };
            if seen.insert(identity) {
                rows.push(FeatureRow {
                    key,
                    event,
                    created,
                    value: (v as i64) * 10_000 + i,
                });
            }
        }
        cases.push(ViewCase {
            rows,
            ttl_minutes: rng.random_bool(0.5).then(|| rng.random_range(0..span)),
            created_time,
        });
    }
    (labels, cases)
}

/// Random registries and data: every training-set value is the one the rules choose, every
/// label row appears once, and rows come sorted by label time, key, label id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_sets_follow_the_point_in_time_rules() {
    let cases = std::env::var("PITLAKE_TRAINING_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24u64);
    check_training_sets(0..cases, None).await;
}

/// The same brute-force check with the queries run on a Ballista cluster of pitlake processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_sets_follow_the_point_in_time_rules_on_a_cluster() {
    let cluster = crate::cluster_processes::shared().unwrap();
    let cases = std::env::var("PITLAKE_TRAINING_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24u64);
    check_training_sets(1000..1000 + cases, Some(cluster.url.clone())).await;
}

async fn check_training_sets(seeds: std::ops::Range<u64>, cluster: Option<String>) {
    let (mut matched, mut unmatched) = (0, 0);
    for seed in seeds {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::common::settings(dir.path());
        settings.cluster = cluster.clone();
        let engine = Engine::new(settings).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let view_count = rng.random_range(1..=3);
        let (labels, views) = random_case(&mut rng, view_count);
        let knowledge_time = rng.random_bool(0.75);
        write(&engine, "labels", label_batch(&labels), WriteMode::Create).await;
        run(&engine, "CREATE ENTITY driver (driver_id BIGINT)").await;
        for (i, view) in views.iter().enumerate() {
            write(
                &engine,
                &format!("f{i}"),
                feature_batch(&view.rows),
                WriteMode::Create,
            )
            .await;
            let created = if view.created_time {
                "CREATED TIME created_ts"
            } else {
                ""
            };
            let ttl = view
                .ttl_minutes
                .map(|m| format!("TTL INTERVAL '{m} minutes'"))
                .unwrap_or_default();
            run(
                &engine,
                &format!(
                    "CREATE FEATURE VIEW v{i} ENTITY driver FROM f{i} EVENT TIME event_ts \
                     {created} {ttl} FEATURES (value)"
                ),
            )
            .await;
        }
        let features: Vec<String> = (0..view_count).map(|i| format!("v{i}.value")).collect();
        let sql = format!(
            "TRAINING SET LABELS labels AT label_ts FEATURES ({}){}",
            features.join(", "),
            if knowledge_time {
                ""
            } else {
                " WITHOUT KNOWLEDGE TIME"
            }
        );
        let batches = run(&engine, &sql).await;
        let got = rows(&batches);
        assert_eq!(got.len(), labels.len(), "seed {seed}: one row per label");
        let mut seen = BTreeSet::new();
        let mut order = Vec::new();
        for row in &got {
            let id: i64 = row[0].parse().unwrap();
            assert!(seen.insert(id), "seed {seed}: label {id} twice");
            let label = labels[id as usize];
            order.push((label.2.is_none(), label.2, label.1.is_none(), label.1, id));
            for (v, view) in views.iter().enumerate() {
                let want = expected(&label, view, knowledge_time)
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "NULL".into());
                if want == "NULL" {
                    unmatched += 1;
                } else {
                    matched += 1;
                }
                assert_eq!(
                    row[3 + v],
                    want,
                    "seed {seed}: label {label:?}, view v{v} (ttl {:?}, created time {}, \
                     knowledge time {knowledge_time})",
                    view.ttl_minutes,
                    view.created_time
                );
            }
        }
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(
            order, sorted,
            "seed {seed}: rows sorted by label time, key, id"
        );
    }
    // The cases exercise both outcomes in earnest.
    assert!(
        matched > 100 && unmatched > 100,
        "{matched} matched, {unmatched} not"
    );
}

/// A small driver warehouse: labels, stats with a correction and a backfill, and a registry.
async fn driver_warehouse(engine: &Engine) {
    for sql in [
        "CREATE TABLE labels AS SELECT * FROM (VALUES
           (1, 7, TIMESTAMP '2026-01-05 00:00:00', true),
           (2, 7, TIMESTAMP '2026-01-09 00:00:00', false),
           (3, 8, TIMESTAMP '2026-01-05 00:00:00', true)) AS v(label_id, driver_id, at, churned)",
        "CREATE TABLE stats AS SELECT * FROM (VALUES
           (7, TIMESTAMP '2026-01-01 00:00:00', TIMESTAMP '2026-01-01 01:00:00', 0.1),
           (7, TIMESTAMP '2026-01-04 00:00:00', TIMESTAMP '2026-01-06 00:00:00', 0.4),
           (8, TIMESTAMP '2026-01-02 00:00:00', TIMESTAMP '2026-01-02 00:00:00', 0.8))
           AS v(driver_id, event_ts, created_ts, rate)",
        "CREATE ENTITY driver (driver_id BIGINT)",
        "CREATE FEATURE VIEW stats ENTITY driver FROM stats EVENT TIME event_ts \
         CREATED TIME created_ts TTL INTERVAL '30 days' FEATURES (rate)",
    ] {
        run(engine, sql).await;
    }
}

const TRAINING_SET: &str = "TRAINING SET LABELS labels AT at FEATURES (stats.*)";

/// An export's manifest pins every input: after new commits to the labels, the features and
/// the registry, `reproduce` rebuilds the same rows, in every format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_reproduce_after_the_inputs_move_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let engine = engine(&dir.path().join("warehouse"));
    driver_warehouse(&engine).await;
    let spec = |sql: &str| match engine.parse(sql).unwrap().pop().unwrap().statement {
        pitlake::frontend::Statement::Dsl(dsl) => match *dsl {
            pitlake::frontend::dsl::DslStatement::TrainingSet(spec) => spec,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let training_set = spec(TRAINING_SET);
    let mut manifests = Vec::new();
    for (name, format) in [
        ("set.parquet", None),
        ("set.csv", None),
        ("set_delta", Some("delta")),
    ] {
        let to = out.path().join(name).display().to_string();
        let manifest = engine
            .export_training_set(&training_set, TRAINING_SET, &to, format, None)
            .await
            .unwrap();
        assert_eq!(manifest.output.rows, 3);
        let pinned: Vec<(String, i64, String)> = manifest
            .plan
            .inputs
            .iter()
            .map(|i| (i.table.clone(), i.version, i.role.clone()))
            .collect();
        assert_eq!(
            pinned,
            [
                ("labels".to_string(), 0, "labels".to_string()),
                ("stats".to_string(), 0, "feature view stats".to_string())
            ]
        );
        assert!(Path::new(&pitlake::engine::manifest_location(&to)).is_file());
        manifests.push((to, manifest));
    }
    // Every format holds the same rows: the content hashes agree.
    let hashes: BTreeSet<&str> = manifests
        .iter()
        .map(|(_, m)| m.output.content_hash.as_str())
        .collect();
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    // The Delta export is a table pitlake reads back.
    let delta = &manifests[2].0;
    assert!(delta.ends_with("set_delta"));
    let reader = crate::common::engine(out.path());
    let back = rows(&run(&reader, "SELECT count(*), sum(stats__rate) FROM set_delta").await);
    assert_eq!(back, [["3", "1.3"]]);

    // The world moves on: a new label, a new feature value, a changed view.
    for sql in [
        "INSERT INTO labels VALUES (4, 8, TIMESTAMP '2026-01-07 00:00:00', false)",
        "INSERT INTO stats VALUES (7, TIMESTAMP '2026-01-03 00:00:00', TIMESTAMP '2026-01-03 00:00:00', 0.3)",
        "CREATE OR REPLACE FEATURE VIEW stats ENTITY driver FROM stats EVENT TIME event_ts FEATURES (rate)",
    ] {
        run(&engine, sql).await;
    }
    let now = rows(&run(&engine, TRAINING_SET).await);
    assert_eq!(now.len(), 4, "the new label is in a new training set");

    for (to, manifest) in &manifests {
        let location = pitlake::engine::manifest_location(to);
        let again = engine.reproduce(&location, None).await.unwrap();
        assert_eq!(again.expected, manifest.output.content_hash);
        assert_eq!(again.actual, again.expected, "{to} rebuilds identically");
        assert!(again.file.ok(), "{to}: {:?}", again.file);
        assert!(again.ok());
    }
    // Rebuilt into a new file: byte-identical Parquet for the same rows and writer.
    let rebuilt = out.path().join("rebuilt.parquet").display().to_string();
    let manifest = pitlake::engine::manifest_location(&manifests[0].0);
    let again = engine.reproduce(&manifest, Some(&rebuilt)).await.unwrap();
    assert_eq!(again.actual, again.expected);
    assert_eq!(
        std::fs::read(&manifests[0].0).unwrap(),
        std::fs::read(&rebuilt).unwrap(),
        "the rebuilt Parquet file is bit for bit the export"
    );
}

/// Writes a manifest with its `output` fields changed by `edit`, beside the original.
fn edited_manifest(
    location: &str,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> String {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(location).unwrap()).unwrap();
    edit(json["output"].as_object_mut().unwrap());
    let to = Path::new(location).with_file_name(name);
    std::fs::write(&to, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    to.display().to_string()
}

/// `verify` reads the export and checks it against the manifest: the file's size and byte hash
/// (or a Delta table's rows at the version the export committed). A truncated or altered file,
/// a file from another export under this manifest (what a crash between publishing the data and
/// the manifest, or two exports to one place, can leave) and a missing file each fail, naming
/// what differs; `reproduce` fails on them too. Manifests without the new fields still verify,
/// by rows (Parquet, Delta) or row count (CSV).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_the_export_and_catches_what_does_not_belong() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let engine = engine(&dir.path().join("warehouse"));
    driver_warehouse(&engine).await;
    let export = |name: &str| {
        let to = out.path().join(name).display().to_string();
        let engine = &engine;
        async move {
            // Temporary folders have dots in their names: say which format the folder is.
            let format = if to.ends_with("_delta") {
                " FORMAT delta"
            } else {
                ""
            };
            run(engine, &format!("EXPORT {TRAINING_SET} TO '{to}'{format}")).await;
            let location = pitlake::engine::manifest_location(&to);
            let manifest = engine.read_manifest(&location).await.unwrap();
            (to, location, manifest)
        }
    };
    let (parquet, parquet_manifest, first) = export("set.parquet").await;
    let (csv, csv_manifest, _) = export("set.csv").await;
    let (_, delta_manifest, delta_first) = export("set_delta").await;
    // Files record their size and byte hash, the Delta table the version committed.
    assert_eq!(
        first.output.bytes,
        Some(std::fs::metadata(&parquet).unwrap().len())
    );
    assert_eq!(first.output.sha256.as_deref().map(str::len), Some(64));
    assert_eq!(delta_first.output.delta_version, Some(0));
    assert_eq!(delta_first.output.bytes, None);
    // Published under their names; no temporary file is left.
    assert_eq!(
        entries(out.path()),
        [
            "set.csv",
            "set.csv.manifest.json",
            "set.parquet",
            "set.parquet.manifest.json",
            "set_delta",
            "set_delta.manifest.json"
        ]
    );
    for location in [&parquet_manifest, &csv_manifest, &delta_manifest] {
        let verified = engine.verify(location).await.unwrap();
        assert!(verified.ok(), "{location}: {verified:?}");
        assert!(verified.notes.is_empty(), "{verified:?}");
    }
    let checks = |v: &pitlake::engine::Verification| {
        v.checks
            .iter()
            .map(|c| (c.what.clone(), c.matches()))
            .collect::<Vec<_>>()
    };
    let parquet_ok = engine.verify(&parquet_manifest).await.unwrap();
    assert_eq!(
        checks(&parquet_ok),
        [("size".to_string(), true), ("sha256".to_string(), true)]
    );

    // The inputs move on; a second export to the same places replaces data and manifest.
    run(
        &engine,
        "INSERT INTO labels VALUES (4, 8, TIMESTAMP '2026-01-07 00:00:00', false)",
    )
    .await;
    let old_parquet_manifest = std::fs::read(&parquet_manifest).unwrap();
    let old_delta_manifest = std::fs::read(&delta_manifest).unwrap();
    let (_, _, second) = export("set.parquet").await;
    let (_, _, delta_second) = export("set_delta").await;
    assert_eq!(second.output.rows, 4);
    assert_eq!(delta_second.output.delta_version, Some(1));
    assert!(engine.verify(&parquet_manifest).await.unwrap().ok());
    assert!(engine.verify(&delta_manifest).await.unwrap().ok());
    // The first export's Delta manifest still verifies: it pins version 0.
    std::fs::write(&delta_manifest, &old_delta_manifest).unwrap();
    assert!(engine.verify(&delta_manifest).await.unwrap().ok());

    // New data under the old manifest: a crash after the data was published and before the
    // manifest was, or the other half of two racing exports.
    std::fs::write(&parquet_manifest, &old_parquet_manifest).unwrap();
    let mixed = engine.verify(&parquet_manifest).await.unwrap();
    assert!(!mixed.ok());
    assert_eq!(
        checks(&mixed),
        [("size".to_string(), false), ("sha256".to_string(), false)]
    );
    assert!(
        mixed.mismatch().contains("does not match its manifest"),
        "{}",
        mixed.mismatch()
    );
    // `reproduce` rebuilds the old manifest's rows identically, and still fails: the file is
    // not that export's.
    let again = engine.reproduce(&parquet_manifest, None).await.unwrap();
    assert_eq!(again.actual, again.expected);
    assert!(!again.file.ok());
    assert!(!again.ok());

    // A truncated file: the size differs. A changed byte: only the hash does.
    let (_, _, _) = export("set.parquet").await;
    let bytes = std::fs::read(&parquet).unwrap();
    std::fs::write(&parquet, &bytes[..bytes.len() - 10]).unwrap();
    let truncated = engine.verify(&parquet_manifest).await.unwrap();
    assert_eq!(
        checks(&truncated),
        [("size".to_string(), false), ("sha256".to_string(), false)]
    );
    assert!(
        truncated.mismatch().contains(&format!(
            "size: the manifest records {} bytes, the export has {} bytes",
            bytes.len(),
            bytes.len() - 10
        )),
        "{}",
        truncated.mismatch()
    );
    assert!(
        !engine
            .reproduce(&parquet_manifest, None)
            .await
            .unwrap()
            .ok()
    );
    let mut text = std::fs::read(&csv).unwrap();
    let last = text.len() - 2;
    text[last] = if text[last] == b'1' { b'2' } else { b'1' };
    std::fs::write(&csv, &text).unwrap();
    let altered = engine.verify(&csv_manifest).await.unwrap();
    assert_eq!(
        checks(&altered),
        [("size".to_string(), true), ("sha256".to_string(), false)]
    );
    // A missing file.
    std::fs::remove_file(&csv).unwrap();
    let missing = engine.verify(&csv_manifest).await.unwrap();
    assert_eq!(checks(&missing), [("file".to_string(), false)]);

    // Manifests from before the byte hashes and the Delta version: still read, checked by
    // what the export holds.
    std::fs::write(&parquet, &bytes).unwrap();
    let old = edited_manifest(&parquet_manifest, "old.parquet.manifest.json", |o| {
        o.remove("bytes");
        o.remove("sha256");
    });
    let by_rows = engine.verify(&old).await.unwrap();
    assert!(by_rows.ok(), "{by_rows:?}");
    assert_eq!(checks(&by_rows), [("rows".to_string(), true)]);
    assert_eq!(by_rows.notes.len(), 1, "{by_rows:?}");
    std::fs::write(&parquet, &bytes[..bytes.len() - 10]).unwrap();
    let unreadable = engine.verify(&old).await.unwrap();
    assert_eq!(checks(&unreadable), [("rows".to_string(), false)]);
    let (csv, _, _) = export("set.csv").await;
    let old_csv = edited_manifest(&csv_manifest, "old.csv.manifest.json", |o| {
        o.remove("bytes");
        o.remove("sha256");
    });
    let by_count = engine.verify(&old_csv).await.unwrap();
    assert!(by_count.ok(), "{by_count:?}");
    assert_eq!(checks(&by_count), [("row count".to_string(), true)]);
    let text = std::fs::read_to_string(&csv).unwrap();
    let fewer: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&csv, fewer.join("\n") + "\n").unwrap();
    let short = engine.verify(&old_csv).await.unwrap();
    assert_eq!(short.checks[0].expected, "4");
    assert_eq!(short.checks[0].actual, "2");
    // An old Delta manifest is checked against the latest version: here, the second export.
    let old_delta = edited_manifest(&delta_manifest, "old_delta.manifest.json", |o| {
        o.remove("delta_version");
    });
    let latest = engine.verify(&old_delta).await.unwrap();
    assert!(!latest.ok(), "{latest:?}");
    assert!(
        latest.notes[0].contains("version, 1, was checked"),
        "{latest:?}"
    );
    // A manifest that is not one.
    std::fs::write(out.path().join("bad.json"), "{}").unwrap();
    let err = engine
        .verify(&out.path().join("bad.json").display().to_string())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is not a pitlake manifest"),
        "{err}"
    );
}

/// Audits pass for a training set built by the rules and fail, per check, for a manifest whose
/// query was edited to leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_pass_correct_sets_and_catch_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let engine = engine(&dir.path().join("warehouse"));
    driver_warehouse(&engine).await;
    // A value for Jan 7: in the future of label 1 (Jan 5), in the past of label 2 (Jan 9).
    run(
        &engine,
        "INSERT INTO stats VALUES (7, TIMESTAMP '2026-01-07 00:00:00', TIMESTAMP '2026-01-07 00:00:00', 0.7)",
    )
    .await;
    let to = out.path().join("set.parquet").display().to_string();
    run(&engine, &format!("EXPORT {TRAINING_SET} TO '{to}'")).await;
    let location = pitlake::engine::manifest_location(&to);
    let manifest = engine.read_manifest(&location).await.unwrap();

    let audit = |plan: pitlake::engine::TrainingPlan| {
        let engine = &engine;
        async move {
            let stream = engine.audit(&plan).await.unwrap();
            use futures::TryStreamExt;
            let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
            let schema = batches[0].schema();
            let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            rows(&batches)
                .into_iter()
                .map(|r| names.iter().cloned().zip(r).collect::<BTreeMap<_, _>>())
                .collect::<Vec<_>>()
        }
    };
    let clean = audit(manifest.plan.clone()).await;
    assert_eq!(clean.len(), 1);
    let row = &clean[0];
    assert_eq!(row["view"], "stats");
    assert_eq!(row["label_rows"], "3");
    assert_eq!(row["training_rows"], "3");
    assert_eq!(row["matched"], "3");
    assert_eq!(row["after_label_time"], "0");
    assert_eq!(row["older_than_ttl"], "0");
    assert_eq!(row["not_yet_known"], "0");
    assert_eq!(row["ok"], "true");

    // A query edited to ignore knowledge time uses the backfill delivered after label 1's time.
    let mut leaky = manifest.plan.clone();
    assert!(
        leaky.audit_query.contains(" KNOWN AT v0.\"created_ts\""),
        "{}",
        leaky.audit_query
    );
    leaky.audit_query = leaky.audit_query.replace(" KNOWN AT v0.\"created_ts\"", "");
    let found = audit(leaky).await;
    assert_eq!(found[0]["not_yet_known"], "1", "{found:?}");
    assert_eq!(found[0]["ok"], "false");

    // A query edited to look forward uses values from after the label time.
    let mut future = manifest.plan.clone();
    future.audit_query = future
        .audit_query
        .replace("l.\"at\" >= v0.\"event_ts\"", "l.\"at\" <= v0.\"event_ts\"")
        .replace(" KNOWN AT v0.\"created_ts\"", "");
    let found = audit(future).await;
    assert_ne!(found[0]["after_label_time"], "0", "{found:?}");
    assert_eq!(found[0]["ok"], "false");
}

/// `plan` lists what `apply` will do; `apply` does it as one registry version; re-applying is a
/// no-op; a bad file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_apply_from_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let defs = tempfile::tempdir().unwrap();
    let engine = engine(&dir.path().join("warehouse"));
    run(
        &engine,
        "CREATE TABLE stats AS SELECT 7 AS driver_id, TIMESTAMP '2026-01-01 00:00:00' AS event_ts, 0.5 AS rate, 3 AS trips",
    )
    .await;
    std::fs::create_dir(defs.path().join("views")).unwrap();
    std::fs::write(
        defs.path().join("entities.sql"),
        "-- who features describe\nCREATE ENTITY driver (driver_id BIGINT);\n",
    )
    .unwrap();
    std::fs::write(
        defs.path().join("views/stats.sql"),
        "CREATE FEATURE VIEW stats ENTITY driver FROM stats EVENT TIME event_ts FEATURES (rate);\n\
         CREATE FEATURE SERVICE churn (stats.rate);\n",
    )
    .unwrap();

    let plan = engine.plan_definitions(defs.path()).await.unwrap();
    let summary: Vec<(String, String)> = plan
        .changes
        .iter()
        .map(|c| (c.action.to_string(), format!("{} {}", c.kind, c.name)))
        .collect();
    assert_eq!(
        summary,
        [
            ("create".to_string(), "entity driver".to_string()),
            ("create".to_string(), "feature view stats".to_string()),
            ("create".to_string(), "feature service churn".to_string()),
        ]
    );
    assert_eq!(
        engine.registry().version().await.unwrap(),
        None,
        "plan changes nothing"
    );

    let applied = engine.apply_definitions(defs.path()).await.unwrap();
    assert_eq!(applied.changes.len(), 3);
    let first = applied.applied_version.expect("a registry version");
    let again = engine.apply_definitions(defs.path()).await.unwrap();
    assert!(again.changes.is_empty());
    assert_eq!(again.applied_version, None);
    assert_eq!(engine.registry().version().await.unwrap(), Some(first));

    // A changed view and a dropped service.
    std::fs::write(
        defs.path().join("views/stats.sql"),
        "CREATE FEATURE VIEW stats ENTITY driver FROM stats EVENT TIME event_ts FEATURES (rate, trips);\n",
    )
    .unwrap();
    let plan = engine.plan_definitions(defs.path()).await.unwrap();
    let summary: Vec<(String, String, String)> = plan
        .changes
        .iter()
        .map(|c| (c.action.to_string(), c.name.clone(), c.detail.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "change".to_string(),
                "stats".to_string(),
                "features".to_string()
            ),
            ("drop".to_string(), "churn".to_string(), String::new()),
        ]
    );
    engine.apply_definitions(defs.path()).await.unwrap();
    let views = rows(&run(&engine, "SHOW FEATURE VIEWS").await);
    assert_eq!(views[0][1], "entity driver, from stats, 2 feature(s)");

    // A bad file: nothing changes, and the error names the file.
    let before = engine.registry().version().await.unwrap();
    std::fs::write(
        defs.path().join("views/broken.sql"),
        "CREATE FEATURE VIEW broken ENTITY driver FROM stats EVENT TIME event_ts FEATURES (nope);\n",
    )
    .unwrap();
    let err = engine.apply_definitions(defs.path()).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("broken.sql"), "{message}");
    assert!(message.contains("nope"), "{message}");
    assert_eq!(engine.registry().version().await.unwrap(), before);
    std::fs::write(defs.path().join("views/broken.sql"), "SELECT 1;\n").unwrap();
    let err = engine.apply_definitions(defs.path()).await.unwrap_err();
    assert!(err.to_string().contains("broken.sql"), "{err}");
    assert_eq!(engine.registry().version().await.unwrap(), before);
}

/// Writers on separate engines (separate processes, as far as the registry can tell) commit
/// concurrently: every distinct change lands exactly once, and of two creating the same name one
/// wins and the other is told it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registry_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("warehouse");
    run(&engine(&warehouse), "CREATE ENTITY seed (id BIGINT)").await;
    let writers = 6;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let warehouse = warehouse.clone();
        tasks.push(tokio::spawn(async move {
            let engine = engine(&warehouse);
            let mut outcomes = Vec::new();
            for i in 0..3 {
                let own = engine
                    .sql(&format!("CREATE ENTITY e_{w}_{i} (id BIGINT)"))
                    .await
                    .map(|_| ());
                outcomes.push((false, own.map_err(|e| e.to_string())));
            }
            // Each writer's definition differs, so all but the first are refused (an identical
            // definition would be a no-op, not a conflict).
            let shared = engine
                .sql(&format!(
                    "CREATE ENTITY contested (id BIGINT) COMMENT 'writer {w}'"
                ))
                .await
                .map(|_| ());
            outcomes.push((true, shared.map_err(|e| e.to_string())));
            outcomes
        }));
    }
    let mut won = 0;
    for task in tasks {
        for (contested, outcome) in task.await.unwrap() {
            match (contested, outcome) {
                (false, Ok(())) => {}
                (true, Ok(())) => won += 1,
                (true, Err(e)) => assert!(e.contains("already exists"), "{e}"),
                (false, Err(e)) => panic!("creating an entity of its own: {e}"),
            }
        }
    }
    assert_eq!(won, 1, "exactly one writer creates `contested`");
    let engine = engine(&warehouse);
    let names: BTreeSet<String> = rows(&run(&engine, "SHOW ENTITIES").await)
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(names.len(), 1 + writers * 3 + 1, "{names:?}");
    // One registry version per change, numbered without gaps.
    let version = engine.registry().version().await.unwrap().unwrap();
    assert_eq!(version as usize, writers * 3 + 1);
}

/// Wrong names and types in training sets are refused with what exists, before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_set_errors_name_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir.path().join("warehouse"));
    driver_warehouse(&engine).await;
    run(&engine, "CREATE TABLE text_labels AS SELECT 'seven' AS driver_id, TIMESTAMP '2026-01-05 00:00:00' AS at").await;
    let e = fails(
        &engine,
        "TRAINING SET LABELS text_labels AT at FEATURES (stats.*)",
    )
    .await;
    assert!(
        e.to_string()
            .contains("the labels' `driver_id` is Utf8View but entity `driver`"),
        "{e}"
    );
    let e = fails(
        &engine,
        "TRAINING SET LABELS labelz AT at FEATURES (stats.*)",
    )
    .await;
    assert!(e.to_string().contains("did you mean `labels`"), "{e}");
    // Pinned to a version that does not exist.
    let e = fails(
        &engine,
        "TRAINING SET LABELS labels VERSION AS OF 9 AT at FEATURES (stats.*)",
    )
    .await;
    assert!(e.to_string().contains("version 9"), "{e}");
}

/// Integer label and event times work too, with a TTL in the time's own units (seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_times_and_composite_keys() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir.path().join("warehouse"));
    let labels = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("store", DataType::Utf8, false),
            Field::new("sku", DataType::Int32, false),
            Field::new("t", DataType::Int64, false),
        ])),
        vec![
            Arc::new(arrow::array::StringArray::from(vec!["a", "a", "b"])),
            Arc::new(arrow::array::Int32Array::from(vec![1, 1, 1])),
            Arc::new(Int64Array::from(vec![100, 1000, 100])),
        ],
    )
    .unwrap();
    write(&engine, "labels", labels, WriteMode::Create).await;
    run(
        &engine,
        "CREATE TABLE prices AS SELECT * FROM (VALUES ('a', 1, 90, 5.0), ('a', 1, 95, 6.0), ('b', 1, 50, 7.0)) AS v(store, sku, t, price)",
    )
    .await;
    run(&engine, "CREATE ENTITY item (store VARCHAR, sku BIGINT)").await;
    run(
        &engine,
        "CREATE FEATURE VIEW prices ENTITY item FROM prices EVENT TIME t TTL INTERVAL '60 seconds' FEATURES (price)",
    )
    .await;
    let got = rows(
        &run(
            &engine,
            "TRAINING SET LABELS labels AT t FEATURES (prices.price)",
        )
        .await,
    );
    assert_eq!(
        got,
        [
            ["a", "1", "100", "6.0"],
            ["b", "1", "100", "7.0"],
            ["a", "1", "1000", "NULL"],
        ]
    );
}
