//! DAT (delta-incubator/dat, `dat/`): every `expected/vN` and `expected/latest` of every case,
//! data and `table_version_metadata.json` (version, protocol, properties).

use super::*;

/// DAT cases: (case, [(expected folder, rows)]) as the manifest lists them.
const DAT: &[(&str, &[(&str, usize)])] = &[
    ("basic_append", &[("latest", 5), ("v0", 3), ("v1", 5)]),
    ("basic_partitioned", &[("latest", 6), ("v0", 3), ("v1", 6)]),
    (
        "multi_partitioned",
        &[("latest", 2), ("v0", 3), ("v1", 5), ("v2", 2)],
    ),
    ("with_schema_change", &[("latest", 3), ("v1", 3)]),
];

/// DAT README contract: for each `expected/<latest|vN>`, the table read at that version equals
/// `table_content.parquet`, and the version, protocol and properties equal
/// `table_version_metadata.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dat_cases_match_every_expected_version() {
    // The corpus holds exactly the cases (and expected folders) the manifest lists.
    let on_disk: BTreeSet<String> = std::fs::read_dir(corpus("dat"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('_'))
        .collect();
    let listed: BTreeSet<String> = DAT.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(on_disk, listed);

    let mut failures = Vec::new();
    let mut checked = 0;
    for (case, expectations) in DAT {
        let root = corpus(&format!("dat/{case}"));
        let folders: BTreeSet<String> = std::fs::read_dir(root.join("expected"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        let listed: BTreeSet<String> = expectations.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(folders, listed, "dat/{case}/expected");

        let engine = common::engine(&root);
        let name = TableName::bare("delta");
        for (folder, rows) in *expectations {
            let dir = root.join("expected").join(folder);
            let meta: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("table_version_metadata.json")).unwrap(),
            )
            .unwrap();
            let meta_version = meta["version"].as_i64().unwrap();
            let (sql, version) = match folder.strip_prefix('v') {
                Some(v) => {
                    let v: i64 = v.parse().unwrap();
                    assert_eq!(meta_version, v, "dat/{case}/{folder} metadata version");
                    (
                        format!("SELECT * FROM \"delta\" VERSION AS OF {v}"),
                        TableVersion::Version(v),
                    )
                }
                None => ("SELECT * FROM \"delta\"".to_string(), TableVersion::Latest),
            };
            let context = format!("dat/{case} expected/{folder}");

            let table = open(&engine, &name, version).await;
            let snapshot = table.snapshot().unwrap();
            assert_eq!(version_of(&table), meta_version, "{context}: version");
            assert_eq!(
                i64::from(snapshot.protocol().min_reader_version()),
                meta["min_reader_version"].as_i64().unwrap(),
                "{context}: min_reader_version"
            );
            assert_eq!(
                i64::from(snapshot.protocol().min_writer_version()),
                meta["min_writer_version"].as_i64().unwrap(),
                "{context}: min_writer_version"
            );
            let properties: BTreeMap<String, String> = meta["properties"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let configuration: BTreeMap<String, String> = snapshot
                .metadata()
                .configuration()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(configuration, properties, "{context}: properties");

            let expected = read_expected_parquet(&dir);
            assert_eq!(
                common::count(&expected),
                *rows,
                "{context}: manifest row count"
            );
            let actual = query(&engine, &sql).await;
            if let Some(diff) = diff_rows(&actual, &expected, &[]) {
                failures.push(format!("{context}: {diff}"));
            }
            checked += 1;
        }
        // Every version in the log reads, including those without an expected folder
        // (with_schema_change v0, before its overwriteSchema).
        every_version(&engine, &name, Data::Present).await;
    }
    assert_eq!(checked, 12);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
