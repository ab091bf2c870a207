//! Reading a Delta log directly: which versions exist, when each was committed, and what each
//! commit did (`DESCRIBE HISTORY`).
//!
//! Commit times follow the Delta protocol: a commit's time is its log file's modification time,
//! made strictly increasing (a commit whose file is not newer than the one before counts as one
//! millisecond after it), as Spark and delta-rs do. Timestamp time travel and `DESCRIBE HISTORY`
//! use the same times, so a timestamp copied from the history always selects that version.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::error::{PitlakeError, Result};
use crate::storage::name::TableName;

/// The commit and checkpoint files of one table's `_delta_log`.
#[derive(Debug, Clone, Default)]
pub struct LogListing {
    commits: BTreeMap<i64, ObjectMeta>,
    checkpoints: BTreeMap<i64, ObjectMeta>,
}

/// What one commit did, as `DESCRIBE HISTORY` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitSummary {
    /// The table version this commit created.
    pub version: i64,
    /// The commit time (see the module docs), in milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// The operation (`WRITE`, `CREATE TABLE`, `MERGE` …), if the writer recorded one.
    pub operation: Option<String>,
    /// The operation's parameters, as JSON.
    pub parameters: Option<String>,
    /// Rows added (from the added files' statistics), when every added file has statistics.
    pub rows_added: Option<i64>,
    /// Data files added.
    pub files_added: i64,
    /// Data files removed.
    pub files_removed: i64,
    /// The writing engine, if recorded.
    pub engine: Option<String>,
}

/// Parses `00000000000000000012.json` → 12, and checkpoint names → their version.
fn parse_log_name(name: &str) -> Option<(i64, bool)> {
    let (digits, rest) = name.split_at_checked(20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version: i64 = digits.parse().ok()?;
    if rest == ".json" {
        Some((version, true))
    } else if rest.starts_with(".checkpoint") && rest.ends_with(".parquet")
        || rest.starts_with(".checkpoint.") && rest.ends_with(".json")
    {
        Some((version, false))
    } else {
        None
    }
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC.
pub fn format_millis(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

impl LogListing {
    /// Lists a table's `_delta_log` (one LIST request).
    pub async fn read(store: &dyn ObjectStore, table: &Path) -> Result<Self> {
        let log = table.clone().join("_delta_log");
        let metas: Vec<ObjectMeta> = match store.list(Some(&log)).try_collect().await {
            Ok(metas) => metas,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut listing = LogListing::default();
        for meta in metas {
            // Only direct children count: `_delta_log/.tmp/…` holds uncommitted files.
            let Some(rel) = meta.location.prefix_match(&log) else {
                continue;
            };
            let parts: Vec<_> = rel.collect();
            let [name] = parts.as_slice() else {
                continue;
            };
            match parse_log_name(name.as_ref()) {
                Some((version, true)) => {
                    listing.commits.insert(version, meta);
                }
                Some((version, false)) => {
                    listing.checkpoints.entry(version).or_insert(meta);
                }
                None => {}
            }
        }
        Ok(listing)
    }

    /// The newest version, if the log has any.
    pub fn latest(&self) -> Option<i64> {
        let c = self.commits.keys().next_back().copied();
        let k = self.checkpoints.keys().next_back().copied();
        c.max(k)
    }

    /// The oldest version that can still be read: 0 if its commit is there, otherwise the
    /// oldest checkpoint (older commits were cleaned up).
    pub fn earliest(&self) -> Option<i64> {
        if self.commits.contains_key(&0) {
            return Some(0);
        }
        let oldest_checkpoint = self.checkpoints.keys().next().copied();
        oldest_checkpoint.or_else(|| self.commits.keys().next().copied())
    }

    fn range_sentence(&self) -> String {
        match (self.earliest(), self.latest()) {
            (Some(a), Some(b)) if a == b => format!("the only version is {a}"),
            (Some(a), Some(b)) => format!("versions {a} to {b} exist"),
            _ => "the table has no versions".to_string(),
        }
    }

    /// Checks that a version exists.
    pub fn check_version(&self, table: &TableName, version: i64) -> Result<i64> {
        match (self.earliest(), self.latest()) {
            (Some(a), Some(b)) if (a..=b).contains(&version) => Ok(version),
            _ => Err(PitlakeError::VersionNotFound {
                table: table.to_string(),
                requested: version,
                available: self.range_sentence(),
            }),
        }
    }

    /// The commit time of every readable version, oldest first, made strictly increasing.
    pub fn commit_times(&self) -> Vec<(i64, i64)> {
        let (Some(first), Some(last)) = (self.earliest(), self.latest()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut previous = i64::MIN;
        for version in first..=last {
            let meta = self
                .commits
                .get(&version)
                .or_else(|| self.checkpoints.get(&version));
            if let Some(meta) = meta {
                let ms = meta.last_modified.timestamp_millis().max(previous + 1);
                out.push((version, ms));
                previous = ms;
            }
        }
        out
    }

    /// The newest version committed at or before `ms`.
    pub fn version_at(&self, table: &TableName, ms: i64) -> Result<i64> {
        let times = self.commit_times();
        let Some(&(first_version, first_ms)) = times.first() else {
            return Err(PitlakeError::VersionNotFound {
                table: table.to_string(),
                requested: 0,
                available: self.range_sentence(),
            });
        };
        if ms < first_ms {
            return Err(PitlakeError::TimestampTooEarly {
                table: table.to_string(),
                requested: format_millis(ms),
                first_version,
                first_commit: format_millis(first_ms),
            });
        }
        let idx = times.partition_point(|&(_, t)| t <= ms);
        Ok(times[idx - 1].0)
    }

    /// Summaries of the newest `limit` commits (all when `None`), newest first.
    pub async fn history(
        &self,
        store: &dyn ObjectStore,
        limit: Option<usize>,
    ) -> Result<Vec<CommitSummary>> {
        let times: BTreeMap<i64, i64> = self.commit_times().into_iter().collect();
        let wanted: Vec<(i64, ObjectMeta)> = self
            .commits
            .iter()
            .rev()
            .take(limit.unwrap_or(usize::MAX))
            .map(|(v, m)| (*v, m.clone()))
            .collect();
        let summaries = futures::stream::iter(wanted)
            .map(|(version, meta)| {
                let times = &times;
                async move {
                    let bytes = store.get(&meta.location).await?.bytes().await?;
                    let timestamp_ms = times
                        .get(&version)
                        .copied()
                        .unwrap_or_else(|| meta.last_modified.timestamp_millis());
                    Ok::<_, PitlakeError>(summarize(version, timestamp_ms, &bytes))
                }
            })
            .buffered(8)
            .try_collect()
            .await?;
        Ok(summaries)
    }
}

/// Reads one commit file's actions. Lines that are not valid JSON are skipped here: history is
/// a report, and the reader proper rejects a broken log when the version is loaded.
fn summarize(version: i64, timestamp_ms: i64, bytes: &[u8]) -> CommitSummary {
    let mut summary = CommitSummary {
        version,
        timestamp_ms,
        operation: None,
        parameters: None,
        rows_added: Some(0),
        files_added: 0,
        files_removed: 0,
        engine: None,
    };
    for line in bytes.split(|b| *b == b'\n') {
        let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(info) = action.get("commitInfo") {
            summary.operation = info
                .get("operation")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            summary.parameters = info
                .get("operationParameters")
                .filter(|p| p.as_object().is_some_and(|o| !o.is_empty()))
                .map(|p| p.to_string());
            summary.engine = info
                .get("engineInfo")
                .or_else(|| info.get("clientVersion"))
                .and_then(|v| v.as_str())
                .map(str::to_string);
        } else if let Some(add) = action.get("add") {
            if add.get("dataChange").and_then(|v| v.as_bool()) == Some(false) {
                // Compaction rewrites files without changing rows; they are not "added" rows.
                continue;
            }
            summary.files_added += 1;
            let rows = add
                .get("stats")
                .and_then(|s| s.as_str())
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .and_then(|s| s.get("numRecords").and_then(|n| n.as_i64()));
            summary.rows_added = match (summary.rows_added, rows) {
                (Some(total), Some(n)) => Some(total + n),
                _ => None,
            };
        } else if action.get("remove").is_some() {
            summary.files_removed += 1;
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_file_names() {
        assert_eq!(
            parse_log_name("00000000000000000012.json"),
            Some((12, true))
        );
        assert_eq!(
            parse_log_name("00000000000000000010.checkpoint.parquet"),
            Some((10, false))
        );
        assert_eq!(
            parse_log_name("00000000000000000010.checkpoint.0000000001.0000000002.parquet"),
            Some((10, false))
        );
        assert_eq!(parse_log_name("00000000000000000001.crc"), None);
        assert_eq!(parse_log_name("_last_checkpoint"), None);
        assert_eq!(
            parse_log_name("00000000000000000001.00000000000000000003.compacted.json"),
            None
        );
    }

    #[test]
    fn summarizes_a_commit() {
        let commit = br#"{"commitInfo":{"timestamp":1,"operation":"WRITE","operationParameters":{"mode":"Append"},"clientVersion":"delta-rs.1"}}
{"add":{"path":"a.parquet","dataChange":true,"stats":"{\"numRecords\":3}"}}
{"add":{"path":"b.parquet","dataChange":true,"stats":"{\"numRecords\":4}"}}
{"remove":{"path":"c.parquet"}}"#;
        let s = summarize(3, 99, commit);
        assert_eq!(s.operation.as_deref(), Some("WRITE"));
        assert_eq!(s.rows_added, Some(7));
        assert_eq!(s.files_added, 2);
        assert_eq!(s.files_removed, 1);
        assert_eq!(s.engine.as_deref(), Some("delta-rs.1"));
        assert_eq!(s.parameters.as_deref(), Some(r#"{"mode":"Append"}"#));
    }
}
