//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use pitlake::{Engine, Settings, WarehouseLocation};

/// The shared corpus of third-party Delta tables: `PITLAKE_SHARED_TESTDATA`, or
/// `../shared/testdata` beside the repository, or `/work/shared/testdata`. Its absence fails the
/// test (it is never skipped).
pub fn shared_testdata() -> PathBuf {
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata");
    let path = std::env::var_os("PITLAKE_SHARED_TESTDATA")
        .map(PathBuf::from)
        .or_else(|| beside.join("MANIFEST.md").is_file().then_some(beside))
        .unwrap_or_else(|| PathBuf::from("/work/shared/testdata"));
    assert!(
        path.join("MANIFEST.md").is_file(),
        "the shared Delta test corpus is not at {} (set PITLAKE_SHARED_TESTDATA)",
        path.display()
    );
    path
}

/// Small fixed settings over `warehouse`.
pub fn settings(warehouse: &Path) -> Settings {
    let mut settings =
        Settings::new(WarehouseLocation::parse(&warehouse.display().to_string()).unwrap());
    settings.target_partitions = 2;
    settings.memory_limit = Some(512 << 20);
    settings
}

/// An engine over `warehouse` with small fixed settings.
pub fn engine(warehouse: &Path) -> Engine {
    Engine::new(settings(warehouse)).unwrap()
}

/// Rows as strings (NULL as `NULL`), in result order.
pub fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    batches
        .iter()
        .flat_map(|batch| cells(batch.columns(), batch.num_rows()))
        .collect()
}

/// The `rows` rows of `arrays` (columns of one batch) as text, NULL as `NULL`.
pub fn cells(arrays: &[ArrayRef], rows: usize) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let formatters: Vec<_> = arrays
        .iter()
        .map(|a| ArrayFormatter::try_new(a.as_ref(), &options).unwrap())
        .collect();
    (0..rows)
        .map(|row| {
            formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect()
        })
        .collect()
}

/// One column of a result as strings.
pub fn column(batches: &[RecordBatch], index: usize) -> Vec<String> {
    rows(batches)
        .into_iter()
        .map(|r| r[index].clone())
        .collect()
}

/// Total rows in a result.
pub fn count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// The names of a folder's entries, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
