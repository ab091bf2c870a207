//! Malformed parquet files (`malformed-inputs/`) given to `ingest`: an error, never a panic, never
//! a half-made table.

use super::*;

/// What arrow-rs (pitlake's parquet reader) does with a file of parquet-testing `bad_data/`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BadParquet {
    /// arrow-rs rejects it (schema or data): the load must fail with an input error naming the
    /// file.
    Rejected,
    /// arrow-rs rejects its data, but its schema holds a type Delta cannot store (a timestamp at
    /// `+02:00`), so the load fails on that before reading any data: an error all the same.
    RejectedBeforeRead,
    /// arrow-rs reads it in full (the manifest's oracle is for the C++ reader: RLE bit-width 0 is
    /// valid for arrow-rs), so the load must bring exactly the rows arrow-rs reads.
    ReadsFine,
}

/// Every file of parquet-testing `bad_data/`, with what arrow-rs does with it.
const BAD_PARQUET: &[(&str, BadParquet)] = &[
    ("ARROW-GH-41317.parquet", BadParquet::Rejected),
    ("ARROW-GH-41321.parquet", BadParquet::RejectedBeforeRead),
    ("ARROW-GH-43605.parquet", BadParquet::ReadsFine),
    ("ARROW-GH-45185.parquet", BadParquet::Rejected),
    ("ARROW-GH-47662.parquet", BadParquet::Rejected),
    ("ARROW-RS-GH-6229-DICTHEADER.parquet", BadParquet::Rejected),
    ("ARROW-RS-GH-6229-LEVELS.parquet", BadParquet::Rejected),
    ("PARQUET-1481.parquet", BadParquet::Rejected),
];

/// Reads a parquet file with arrow-rs directly: its rows, or the first error.
fn read_parquet_directly(file: &Path) -> Result<Vec<RecordBatch>, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .map_err(|e| e.to_string())?;
    let reader = builder.build().map_err(|e| e.to_string())?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// parquet-testing `bad_data/`: every file, loaded into a fresh warehouse. Files arrow-rs rejects
/// must fail the load — an error, never a panic — and leave no table behind; the one arrow-rs
/// reads must load exactly its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_parquet_ingest() {
    let dir = corpus("malformed-inputs/parquet-testing-bad_data");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let listed: BTreeSet<String> = BAD_PARQUET.iter().map(|(f, _)| f.to_string()).collect();
    assert_eq!(on_disk, listed, "every bad file has a case");

    for (name, expect) in BAD_PARQUET {
        let file = dir.join(name);
        let direct = read_parquet_directly(&file);
        assert_eq!(
            direct.is_ok(),
            *expect == BadParquet::ReadsFine,
            "{name}: arrow-rs gives {:?}",
            direct.as_ref().map(|b| common::count(b))
        );

        let warehouse = tempfile::tempdir().unwrap();
        let engine = common::engine(warehouse.path());
        let t = TableName::bare("t");
        let mut request = IngestRequest::new(t.clone(), vec![file.clone()]);
        request.format = Some(IngestFormat::Parquet);
        let outcome = engine.ingest(request).await;
        let exists = engine.warehouse().table_exists(&t).await.unwrap();
        match (expect, outcome) {
            (BadParquet::ReadsFine, Ok(outcome)) => {
                let rows = direct.unwrap();
                assert_eq!(outcome.version, Some(0), "{name}");
                let loaded = query(&engine, "SELECT * FROM t").await;
                assert!(
                    diff_rows(&loaded, &rows, &[]).is_none(),
                    "{name}: {:?}",
                    diff_rows(&loaded, &rows, &[])
                );
            }
            (BadParquet::ReadsFine, Err(err)) => panic!("{name}: arrow-rs reads it, ingest: {err}"),
            (_, Ok(outcome)) => panic!("{name}: loaded ({}) instead of failing", outcome.message()),
            (BadParquet::Rejected, Err(err)) => {
                assert!(matches!(err, PitlakeError::Input { .. }), "{name}: {err:?}");
                assert_message(&err, &[name]);
                assert!(!exists, "{name}: table `t` exists after the failed load");
            }
            (BadParquet::RejectedBeforeRead, Err(err)) => {
                assert_message(&err, &["Timestamp"]);
                assert!(!exists, "{name}: table `t` exists after the failed load");
            }
        }
    }
}
