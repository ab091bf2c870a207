//! Dropping a table so that a crash at any point leaves either the whole table or no table.
//!
//! A Delta table exists while its `_delta_log` holds a commit or a checkpoint; its data files
//! are only read through the log. Deleting the data first (or the log one commit at a time,
//! with older commits still pointing at data already gone) can leave a log that opens but
//! whose files are missing. An object store has no rename and no multi-object delete that is
//! atomic, so the drop makes the table's existence hang on **one object** and deletes that
//! object as its commit point:
//!
//! ```text
//! step                                    a crash after it leaves
//! 1. write a checkpoint of the latest     the whole table (one more log file)
//!    version v
//! 2. delete every other log object        the whole table at v, read from the checkpoint
//!    (commits, older checkpoints, …),      (time travel to older versions is gone)
//!    newer commits first
//! 3. delete `_last_checkpoint`, then the  the whole table at v (readers list the log) …
//!    checkpoint: the commit point          … or, once the checkpoint is gone, no table
//! 4. delete the data files                no table, some unreferenced data files
//! ```
//!
//! Files left by a crash in step 4 are not a table (no log): they are listed nowhere and read
//! by nothing. A later `CREATE TABLE` of the same name starts a fresh log beside them and
//! never reads them (they are not in its log), and that table's `DROP TABLE` deletes them with
//! everything else under the folder.
//!
//! A table pitlake cannot open (a corrupt log) or cannot checkpoint (a multi-part checkpoint
//! at the latest version, a protocol the checkpoint writer does not support) has no readable
//! state to keep: it is deleted log first, then data, and a crash midway leaves a table that
//! is still unreadable, which a second `DROP TABLE` removes.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{PitlakeError, Result};
use crate::storage::name::TableName;
use crate::storage::store;
use crate::storage::warehouse::{TableVersion, Warehouse};

/// The steps of a drop, in order (see the module docs). Tests stop a drop after one of them to
/// see what a crash there would leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DropStep {
    /// The latest version has a single-file checkpoint.
    Checkpointed,
    /// The log holds only that checkpoint and `_last_checkpoint`.
    LogTrimmed,
    /// `_last_checkpoint` is gone; the checkpoint is the log's last object.
    HintGone,
    /// The log is gone: the table no longer exists; its data files remain.
    LogGone,
}

impl Warehouse {
    /// Deletes every object of one table, in an order that keeps the table whole until one
    /// object's deletion removes it (see `storage::drop`). Refuses when the folder holds another
    /// table below it, so a drop can never take another table's files with it. Returns the
    /// number of objects deleted.
    pub async fn drop_table(&self, name: &TableName) -> Result<usize> {
        self.drop_table_until(name, None).await
    }

    /// [`Warehouse::drop_table`], stopping after `stop_after` as a crash there would.
    pub(crate) async fn drop_table_until(
        &self,
        name: &TableName,
        stop_after: Option<DropStep>,
    ) -> Result<usize> {
        if !self.table_exists(name).await? {
            return Err(self.not_found(name).await);
        }
        let prefix = self.table_path(name);
        let log = prefix.clone().join("_delta_log");
        let objects = self.list_objects(name, &prefix).await?;
        if let Some(nested) = objects.iter().find(|p| {
            !p.prefix_matches(&log) && p.parts().any(|part| part.as_ref() == "_delta_log")
        }) {
            return Err(PitlakeError::Plan(format!(
                "refusing to drop `{name}`: its folder also holds another Delta table ({nested}); \
                 move that table out first"
            )));
        }
        let stop = |step: DropStep| stop_after.is_some_and(|s| s == step);

        // 1. One object that holds the latest state.
        let checkpoint = self.checkpoint_latest(name, &log).await;
        if stop(DropStep::Checkpointed) {
            return Ok(0);
        }
        let mut deleted = 0;
        match checkpoint {
            Some((version, checkpoint)) => {
                // 2. Everything else in the log. Commits newer than the checkpoint (a writer
                // racing the drop) go first, newest first, so the log never has a gap after it.
                let hint = log.clone().join("_last_checkpoint");
                let sidecars = log.clone().join("_sidecars");
                let mut rest = self.list_objects(name, &log).await?;
                rest.retain(|p| *p != checkpoint && *p != hint && !p.prefix_matches(&sidecars));
                rest.sort();
                let (newer, older): (Vec<Path>, Vec<Path>) = rest
                    .into_iter()
                    .partition(|p| log_version(&log, p).is_some_and(|v| v > version));
                for path in newer.into_iter().rev() {
                    deleted += self.delete_one(name, &path).await?;
                }
                deleted += self.delete_all(name, older).await?;
                if stop(DropStep::LogTrimmed) {
                    return Ok(deleted);
                }
                // 3. The hint, then the checkpoint: the commit point. A v2 checkpoint's
                // sidecars (pitlake writes none) must outlive it, so they go last.
                deleted += self.delete_one(name, &hint).await?;
                if stop(DropStep::HintGone) {
                    return Ok(deleted);
                }
                deleted += self.delete_one(name, &checkpoint).await?;
                let sidecars = self.list_objects(name, &sidecars).await?;
                deleted += self.delete_all(name, sidecars).await?;
            }
            None => {
                // Nothing readable to keep whole: the log first, so what a crash leaves is at
                // worst still a table that cannot be read, never one that reads missing files.
                let entries = self.list_objects(name, &log).await?;
                deleted += self.delete_all(name, entries).await?;
            }
        }
        if stop(DropStep::LogGone) {
            return Ok(deleted);
        }

        // 4. The data: no log refers to it any more.
        let data = self.list_objects(name, &prefix).await?;
        deleted += self.delete_all(name, data).await?;
        if let Some(local) = self.location().local_path() {
            // Local folders outlive their files; remove the now-empty directories too.
            let dir = name
                .segments()
                .into_iter()
                .fold(local, |p, segment| p.join(segment));
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(deleted)
    }

    /// Writes a checkpoint of the latest version (unless one exists) and returns the version and
    /// the path of a single-file checkpoint of it, or `None` when there is no such file to hang
    /// the table's existence on (see the module docs).
    async fn checkpoint_latest(&self, name: &TableName, log: &Path) -> Option<(i64, Path)> {
        let table = match self.open(name, TableVersion::Latest).await {
            Ok(table) => table,
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "dropping a table that cannot be read");
                return None;
            }
        };
        let version = i64::try_from(table.version()?).ok()?;
        if let Err(e) = deltalake::checkpoints::create_checkpoint(&table, None).await {
            tracing::warn!(table = %name, error = %e, "cannot checkpoint the table being dropped");
            return None;
        }
        let entries = self.list_objects(name, log).await.ok()?;
        single_file_checkpoint(log, &entries, version)
            .map(|path| (version, path))
            .or_else(|| {
                tracing::warn!(table = %name, version, "no single-file checkpoint to drop last");
                None
            })
    }

    async fn list_objects(&self, name: &TableName, prefix: &Path) -> Result<Vec<Path>> {
        match self
            .store()
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
        {
            Ok(paths) => Ok(paths),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(self.drop_error(name, "cannot list", e)),
        }
    }

    /// Deletes one object (a missing one counts as deleted by someone else: 0).
    async fn delete_one(&self, name: &TableName, path: &Path) -> Result<usize> {
        match self.store().delete(path).await {
            Ok(()) => Ok(1),
            Err(object_store::Error::NotFound { .. }) => Ok(0),
            Err(e) => Err(self.drop_error(name, "cannot delete", e)),
        }
    }

    /// Deletes objects whose order does not matter, in bulk where the store can. Objects
    /// already gone are not counted.
    async fn delete_all(&self, name: &TableName, paths: Vec<Path>) -> Result<usize> {
        let stream = futures::stream::iter(paths.into_iter().map(Ok));
        let mut results = self.store().delete_stream(Box::pin(stream));
        let mut deleted = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok(_) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.drop_error(name, "cannot delete", e)),
            }
        }
        Ok(deleted)
    }

    fn drop_error(&self, name: &TableName, what: &str, err: object_store::Error) -> PitlakeError {
        store::storage_error(
            &self.location().display(),
            &format!("{what} objects of table `{name}` while dropping it"),
            err,
        )
    }
}

/// The version of a log file directly in `log` (`…/00000000000000000012.json` → 12).
fn log_version(log: &Path, path: &Path) -> Option<i64> {
    let mut rel = path.prefix_match(log)?;
    let name = rel.next()?;
    if rel.next().is_some() {
        return None;
    }
    let digits = name.as_ref().get(..20)?;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())
        .flatten()
}

/// The single-file checkpoint of `version` among `entries`: the classic
/// `<version>.checkpoint.parquet`, else a v2 `<version>.checkpoint.<uuid>.parquet|json`. A
/// multi-part checkpoint (`<version>.checkpoint.<part>.<parts>.parquet`) is not one file.
fn single_file_checkpoint(log: &Path, entries: &[Path], version: i64) -> Option<Path> {
    let classic = format!("{version:020}.checkpoint.parquet");
    let v2_prefix = format!("{version:020}.checkpoint.");
    let name_of = |p: &Path| -> Option<String> {
        let mut rel = p.prefix_match(log)?;
        let name = rel.next()?.as_ref().to_string();
        rel.next().is_none().then_some(name)
    };
    if let Some(found) = entries
        .iter()
        .find(|p| name_of(p).as_deref() == Some(&classic))
    {
        return Some(found.clone());
    }
    entries
        .iter()
        .find(|p| {
            name_of(p).is_some_and(|name| {
                name.strip_prefix(&v2_prefix).is_some_and(|rest| {
                    let parts: Vec<&str> = rest.split('.').collect();
                    matches!(parts.as_slice(), [uuid, "parquet" | "json"]
                        if !uuid.bytes().all(|b| b.is_ascii_digit()))
                })
            })
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::{MemTable, provider_as_source};
    use datafusion::logical_expr::LogicalPlanBuilder;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::config::WarehouseLocation;
    use crate::storage::{WriteMode, open_provider, write_plan};

    fn warehouse(dir: &std::path::Path) -> Warehouse {
        Warehouse::connect(WarehouseLocation::parse(&dir.display().to_string()).unwrap()).unwrap()
    }

    async fn write(w: &Warehouse, name: &TableName, ids: &[i64], mode: WriteMode) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]));
        let notes: Vec<String> = ids.iter().map(|i| format!("row {i}")).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(notes)),
            ],
        )
        .unwrap();
        let source = Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap());
        let plan = LogicalPlanBuilder::scan("input", provider_as_source(source), None)
            .unwrap()
            .build()
            .unwrap();
        // deltalake's own session: its writer plans a node only its planner knows.
        let state = deltalake::delta_datafusion::create_session().state();
        write_plan(w, &state, name, plan, mode, &[]).await.unwrap();
    }

    /// The ids of the table at its latest version, sorted: every data file it names is read.
    async fn ids(w: &Warehouse, name: &TableName) -> Vec<i64> {
        let provider = open_provider(w, name, TableVersion::Latest).await.unwrap();
        let ctx = SessionContext::new();
        let batches = ctx
            .read_table(provider)
            .unwrap()
            .select_columns(&["id"])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        ids.sort();
        ids
    }

    /// A table with history: a create, appends, an overwrite (files removed from the latest
    /// version but still on disk for time travel) and more than one version.
    async fn table_with_history(w: &Warehouse, name: &TableName) -> Vec<i64> {
        write(w, name, &[1, 2], WriteMode::Create).await;
        write(w, name, &[3], WriteMode::Append).await;
        write(w, name, &[10, 11], WriteMode::Overwrite).await;
        write(w, name, &[12], WriteMode::Append).await;
        vec![10, 11, 12]
    }

    /// Stopping a drop after each step, as a crash there would, leaves either the whole table
    /// (readable at its latest version, every file it names present) or no table; a later drop
    /// or create copes with what is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_at_any_step_leaves_the_table_or_nothing() {
        for step in [
            DropStep::Checkpointed,
            DropStep::LogTrimmed,
            DropStep::HintGone,
            DropStep::LogGone,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let w = warehouse(dir.path());
            let name = TableName::bare("t");
            let other = TableName::bare("t2");
            let latest = table_with_history(&w, &name).await;
            write(&w, &other, &[7], WriteMode::Create).await;
            assert_eq!(ids(&w, &name).await, latest);

            w.drop_table_until(&name, Some(step)).await.unwrap();
            let log = dir.path().join("t/_delta_log");
            let left = std::fs::read_dir(&log).map(|d| d.count()).unwrap_or(0);
            let expected_left = match step {
                DropStep::Checkpointed => left.max(6),
                DropStep::LogTrimmed => 2,
                DropStep::HintGone => 1,
                DropStep::LogGone => 0,
            };
            assert_eq!(left, expected_left, "log objects after {step:?}");
            // A new process looks at what the "crash" left.
            let after = warehouse(dir.path());
            let exists = after.table_exists(&name).await.unwrap();
            assert_eq!(exists, step < DropStep::LogGone, "after {step:?}");
            if exists {
                assert_eq!(ids(&after, &name).await, latest, "after {step:?}");
                let listed = after.list_tables().await.unwrap();
                assert!(listed.contains(&name), "after {step:?}: {listed:?}");
                // A second drop finishes the job.
                after.drop_table(&name).await.unwrap();
                assert!(!dir.path().join("t").exists(), "after {step:?}");
            } else {
                // Leftover data files: not a table, not listed.
                assert!(dir.path().join("t").is_dir(), "after {step:?}");
                assert!(!after.list_tables().await.unwrap().contains(&name));
                assert!(matches!(
                    after.open(&name, TableVersion::Latest).await,
                    Err(PitlakeError::TableNotFound { .. })
                ));
                // A new table of the same name ignores them, and its drop removes them.
                write(&after, &name, &[100], WriteMode::Create).await;
                assert_eq!(ids(&after, &name).await, vec![100], "after {step:?}");
                after.drop_table(&name).await.unwrap();
                assert!(!dir.path().join("t").exists(), "after {step:?}");
            }
            // The neighbour whose name starts the same is untouched.
            assert_eq!(ids(&after, &other).await, vec![7], "after {step:?}");
        }
    }

    /// A complete drop deletes every object and the folder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drop_deletes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let w = warehouse(dir.path());
        let name = TableName::bare("t");
        table_with_history(&w, &name).await;
        let deleted = w.drop_table(&name).await.unwrap();
        // Four commits and at least four data files, plus the checkpoint and its hint.
        assert!(deleted >= 10, "{deleted}");
        assert!(!dir.path().join("t").exists());
        assert!(!w.table_exists(&name).await.unwrap());
    }

    /// A table whose log cannot be read is still dropped (log first).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_table_can_be_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let w = warehouse(dir.path());
        let name = TableName::bare("t");
        write(&w, &name, &[1], WriteMode::Create).await;
        std::fs::write(
            dir.path().join("t/_delta_log/00000000000000000000.json"),
            "{ not json",
        )
        .unwrap();
        assert!(w.open(&name, TableVersion::Latest).await.is_err());
        w.drop_table_until(&name, Some(DropStep::LogGone))
            .await
            .unwrap();
        assert!(!w.table_exists(&name).await.unwrap());
        write(&w, &name, &[2], WriteMode::Create).await;
        assert_eq!(ids(&w, &name).await, vec![2]);
    }

    #[test]
    fn single_file_checkpoints_are_found() {
        let log = Path::from("w/t/_delta_log");
        let p = |n: &str| log.clone().join(n);
        let entries = vec![
            p("00000000000000000003.json"),
            p("00000000000000000003.checkpoint.0000000001.0000000002.parquet"),
            p("00000000000000000003.checkpoint.0000000002.0000000002.parquet"),
        ];
        assert_eq!(single_file_checkpoint(&log, &entries, 3), None);
        let mut with_v2 = entries.clone();
        with_v2.push(p("00000000000000000003.checkpoint.80a083e8-7026.json"));
        assert_eq!(
            single_file_checkpoint(&log, &with_v2, 3),
            Some(p("00000000000000000003.checkpoint.80a083e8-7026.json"))
        );
        let mut classic = with_v2.clone();
        classic.push(p("00000000000000000003.checkpoint.parquet"));
        assert_eq!(
            single_file_checkpoint(&log, &classic, 3),
            Some(p("00000000000000000003.checkpoint.parquet"))
        );
        assert_eq!(single_file_checkpoint(&log, &classic, 2), None);
        assert_eq!(log_version(&log, &p("00000000000000000012.json")), Some(12));
        assert_eq!(log_version(&log, &p("_last_checkpoint")), None);
    }
}
