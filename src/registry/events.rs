//! The registry's storage: one append-only Delta table, `<warehouse>/_pitlake/registry`.
//!
//! Every row is an event (an object created, replaced or dropped); every change to the registry
//! — one statement, or a whole `pitlake apply` — is one Delta commit, and the registry's version
//! is that table's version. So definitions have history for free: the state at registry version
//! `v` is the replay of the events of versions `0..=v`.
//!
//! Concurrent writers: a change is validated against the state it read and committed at exactly
//! the next version (no silent rebase). If another writer committed first, the change is
//! re-validated against the new state and retried; a change that no longer makes sense (creating
//! what the other writer just created) fails with a clear conflict error. Nothing is ever half
//! applied: the events of one change are one commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlanBuilder;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;

use super::model::{Kind, Object};
use crate::error::{PitlakeError, Result};
use crate::storage::{TableName, TableVersion, Warehouse, open_provider};

/// What a change does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The object did not exist.
    Create,
    /// The object existed and now has a new definition.
    Replace,
    /// The object is gone.
    Drop,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Replace => "replace",
            Action::Drop => "drop",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "create" => Some(Action::Create),
            "replace" => Some(Action::Replace),
            "drop" => Some(Action::Drop),
            _ => None,
        }
    }
}

/// One change to the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The object's kind.
    pub kind: Kind,
    /// Its key (name; models `name@version`).
    pub key: String,
    /// What happens to it.
    pub action: Action,
    /// The new definition (`None` for a drop).
    pub object: Option<Object>,
}

/// One recorded change, with when and by whom.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The registry version whose commit recorded it.
    pub registry_version: i64,
    /// Its position within that commit.
    pub seq: i32,
    /// The change.
    pub change: Change,
    /// The statement (or definition file) that made it.
    pub statement: String,
    /// When, in microseconds since the epoch.
    pub changed_at_us: i64,
    /// Who.
    pub changed_by: String,
}

/// The registry at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryState {
    /// The registry version (`None`: nothing was ever registered).
    pub version: Option<i64>,
    /// The live objects, by kind and key.
    pub objects: BTreeMap<(Kind, String), Object>,
}

impl RegistryState {
    /// The live object of this kind and key.
    pub fn get(&self, kind: Kind, key: &str) -> Option<&Object> {
        self.objects.get(&(kind, key.to_string()))
    }

    /// The live objects of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.objects
            .iter()
            .filter(move |((k, _), _)| *k == kind)
            .map(|(_, o)| o)
    }

    /// Applies one change (used to replay history and to check a batch of changes).
    pub fn apply(&mut self, change: &Change) {
        let key = (change.kind, change.key.clone());
        match (&change.action, &change.object) {
            (Action::Drop, _) | (_, None) => {
                self.objects.remove(&key);
            }
            (_, Some(object)) => {
                self.objects.insert(key, object.clone());
            }
        }
    }
}

/// A number in `0..bound`, different at each call (std's per-call hash seeds; no need for
/// cryptographic quality to spread retries).
fn random_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(bound);
    hasher.finish() % bound.max(1)
}

/// A registry version that does not exist.
fn no_registry_version(version: i64, hint: String) -> PitlakeError {
    PitlakeError::NotFound {
        kind: "registry version".into(),
        name: version.to_string(),
        hint,
    }
}

fn registry_table() -> TableName {
    TableName {
        schema: Some("_pitlake".to_string()),
        table: "registry".to_string(),
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("registry_version", DataType::Int64, false),
        Field::new("seq", DataType::Int32, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("definition", DataType::Utf8, true),
        Field::new("statement", DataType::Utf8, false),
        Field::new(
            "changed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("changed_by", DataType::Utf8, false),
    ]))
}

/// How many times a change is re-validated and retried when other writers keep winning.
const ATTEMPTS: usize = 16;

/// The registry of a warehouse.
#[derive(Debug, Clone)]
pub struct Registry {
    warehouse: Arc<Warehouse>,
    /// The session the registry table is read in: the engine's, so that reading the registry
    /// counts against the engine's memory pool and runs on its runtime.
    session: SessionState,
}

fn corrupt(message: impl Into<String>) -> PitlakeError {
    PitlakeError::CorruptTable {
        table: "_pitlake.registry".into(),
        message: message.into(),
    }
}

impl Registry {
    /// The registry of `warehouse`, read in `session` (the engine's session state, carrying
    /// its memory pool and runtime).
    pub fn new(warehouse: Arc<Warehouse>, session: SessionState) -> Self {
        Self { warehouse, session }
    }

    /// The latest registry version, if anything was ever registered.
    pub async fn version(&self) -> Result<Option<i64>> {
        let table = registry_table();
        if !self.warehouse.table_exists(&table).await? {
            return Ok(None);
        }
        Ok(self.warehouse.log_listing(&table).await?.latest())
    }

    /// Every event up to registry version `at` (the latest when `None`), oldest first.
    pub async fn events(&self, at: Option<i64>) -> Result<(Option<i64>, Vec<Event>)> {
        let table = registry_table();
        if !self.warehouse.table_exists(&table).await? {
            if let Some(v) = at {
                return Err(no_registry_version(
                    v,
                    "nothing has been registered yet".into(),
                ));
            }
            return Ok((None, Vec::new()));
        }
        let version = match at {
            Some(v) => TableVersion::Version(v),
            None => TableVersion::Latest,
        };
        let delta = match self.warehouse.open(&table, version).await {
            Ok(delta) => delta,
            // Said in the registry's words, not its table's.
            Err(PitlakeError::VersionNotFound { requested, .. }) => {
                let latest = self.version().await?;
                return Err(no_registry_version(
                    requested,
                    latest.map_or_else(
                        || "nothing has been registered yet".into(),
                        |l| format!("the registry's versions are 0 to {l}"),
                    ),
                ));
            }
            Err(other) => return Err(other),
        };
        let read_version = delta.version().map(|v| v as i64);
        let provider = open_provider(
            &self.warehouse,
            &table,
            TableVersion::Version(read_version.unwrap_or(0)),
        )
        .await?;
        let plan =
            LogicalPlanBuilder::scan("registry", provider_as_source(provider), None)?.build()?;
        let batches = DataFrame::new(self.session.clone(), plan).collect().await?;
        let mut events = Vec::new();
        for batch in &batches {
            events.extend(decode(batch)?);
        }
        events.sort_by_key(|e| (e.registry_version, e.seq));
        Ok((read_version, events))
    }

    /// The registry as of version `at` (the latest when `None`).
    pub async fn state(&self, at: Option<i64>) -> Result<RegistryState> {
        let (version, events) = self.events(at).await?;
        let mut state = RegistryState {
            version,
            objects: BTreeMap::new(),
        };
        for event in &events {
            state.apply(&event.change);
        }
        Ok(state)
    }

    /// Commits the changes `plan` decides on, as one registry version.
    ///
    /// `plan` sees the current state and returns the changes to make (or an error: a name that
    /// is taken, a reference to something that does not exist). If another writer commits
    /// first, `plan` runs again on the new state. Returns the new version, or `None` when `plan`
    /// had nothing to change.
    pub async fn commit(
        &self,
        statement: &str,
        author: &str,
        mut plan: impl FnMut(&RegistryState) -> Result<Vec<Change>>,
    ) -> Result<Option<i64>> {
        let table = registry_table();
        for attempt in 0..ATTEMPTS {
            let started = std::time::Instant::now();
            let state = self.state(None).await?;
            let changes = plan(&state)?;
            if changes.is_empty() {
                return Ok(None);
            }
            let next = state.version.map_or(0, |v| v + 1);
            let batch = encode(next, &changes, statement, author)?;
            match self.write(&table, batch, state.version).await {
                Ok(()) => return Ok(Some(next)),
                Err(err) if is_conflict(&err) => {
                    // Someone else committed this version: re-read, re-check, try again after
                    // a pause drawn at random below a bound that doubles each time, so writers
                    // (tasks of one process too) do not collide in lockstep. The bound starts at
                    // what this attempt took (at least 10 ms): on a slow store or a busy machine
                    // an attempt is long, and pauses shorter than it would only collide again.
                    let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    let bound = took.max(10).saturating_mul(1 << attempt.min(6));
                    tokio::time::sleep(std::time::Duration::from_millis(random_below(bound))).await;
                }
                Err(err) => return Err(err),
            }
        }
        Err(PitlakeError::RegistryConflict(format!(
            "the registry kept changing under this change ({ATTEMPTS} attempts); nothing was \
             written, try again"
        )))
    }

    /// Appends the events as the version after `read` (creating the table when `read` is
    /// `None`); fails, without retrying, if that version exists by then.
    async fn write(&self, table: &TableName, batch: RecordBatch, read: Option<i64>) -> Result<()> {
        let create = read.is_none();
        let source = Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?);
        let plan = LogicalPlanBuilder::scan("registry_events", provider_as_source(source), None)?
            .build()?;
        let delta = match read {
            None => self.warehouse.table_builder(table)?.build()?,
            // Exactly the version the change was validated against: the commit then targets
            // the next version and loses, rather than rebases, if another writer took it.
            Some(v) => self.warehouse.open(table, TableVersion::Version(v)).await?,
        };
        let mode = if create {
            SaveMode::ErrorIfExists
        } else {
            SaveMode::Append
        };
        delta
            .write(Vec::new())
            .with_input_plan(plan)
            .with_save_mode(mode)
            .with_table_name("registry")
            .with_commit_properties(CommitProperties::default().with_max_retries(0))
            .await
            .map_err(PitlakeError::Delta)?;
        Ok(())
    }
}

/// Whether a failed commit lost a race with another writer.
fn is_conflict(err: &PitlakeError) -> bool {
    match err {
        PitlakeError::Delta(e) => {
            matches!(
                e,
                DeltaTableError::VersionAlreadyExists(_)
                    | DeltaTableError::Transaction { .. }
                    | DeltaTableError::VersionMismatch(_, _)
            ) || {
                let text = e.to_string();
                text.contains("already exists") || text.contains("commit attempts")
            }
        }
        _ => false,
    }
}

fn encode(version: i64, changes: &[Change], statement: &str, author: &str) -> Result<RecordBatch> {
    let now = chrono::Utc::now().timestamp_micros();
    let definitions = changes
        .iter()
        .map(|c| {
            c.object
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| PitlakeError::Internal(format!("registry encoding: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let n = changes.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![version; n])),
        Arc::new(Int32Array::from_iter_values(0..n as i32)),
        Arc::new(StringArray::from_iter_values(
            changes.iter().map(|c| c.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            changes.iter().map(|c| c.key.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            changes.iter().map(|c| c.action.as_str()),
        )),
        Arc::new(StringArray::from(definitions)),
        Arc::new(StringArray::from(vec![statement; n])),
        Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
        Arc::new(StringArray::from(vec![author; n])),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

fn decode(batch: &RecordBatch) -> Result<Vec<Event>> {
    let column = |name: &str| -> Result<&ArrayRef> {
        batch
            .schema()
            .index_of(name)
            .map(|i| batch.column(i))
            .map_err(|_| corrupt(format!("the registry table has no column {name}")))
    };
    let strings = |name: &str| -> Result<StringArray> {
        let array = arrow::compute::cast(column(name)?, &DataType::Utf8)?;
        Ok(array.as_string::<i32>().clone())
    };
    let versions = column("registry_version")?
        .as_primitive::<Int64Type>()
        .clone();
    let seqs = column("seq")?.as_primitive::<Int32Type>().clone();
    let kinds = strings("kind")?;
    let keys = strings("key")?;
    let actions = strings("action")?;
    let definitions = strings("definition")?;
    let statements = strings("statement")?;
    let changed_by = strings("changed_by")?;
    let changed_at = arrow::compute::cast(
        column("changed_at")?,
        &DataType::Timestamp(TimeUnit::Microsecond, None),
    )?;
    let changed_at = changed_at.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let kind = Kind::parse(kinds.value(row))
            .ok_or_else(|| corrupt(format!("unknown kind {}", kinds.value(row))))?;
        let action = Action::parse(actions.value(row))
            .ok_or_else(|| corrupt(format!("unknown action {}", actions.value(row))))?;
        let object = if definitions.is_null(row) {
            None
        } else {
            Some(
                serde_json::from_str::<Object>(definitions.value(row))
                    .map_err(|e| corrupt(format!("definition of {}: {e}", keys.value(row))))?,
            )
        };
        out.push(Event {
            registry_version: versions.value(row),
            seq: seqs.value(row),
            change: Change {
                kind,
                key: keys.value(row).to_string(),
                action,
                object,
            },
            statement: statements.value(row).to_string(),
            changed_at_us: changed_at.value(row),
            changed_by: changed_by.value(row).to_string(),
        });
    }
    Ok(out)
}
