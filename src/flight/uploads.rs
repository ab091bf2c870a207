//! Tables uploaded with Flight SQL bulk ingest (`CommandStatementIngest`, ADBC's
//! `adbc_ingest(..., temporary=True)`): kept in memory for the session that uploaded them (the
//! bearer token it presents), read by that session's statements by their bare names, and gone
//! when dropped (`DROP TABLE`), when the session has been idle for the token lifetime, or when
//! the server stops. Their bytes are reserved in the engine's memory pool, so uploads count
//! against `--memory-limit` (while they arrive, too); one user, over all their sessions, may hold
//! at most a quarter of the pool (or `--query-memory-limit`, if smaller), and a session
//! [`MAX_TABLES`] tables.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::MemTable;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use tonic::Status;

use crate::engine::ContentHash;
use crate::engine::session::{SessionScope, SessionTable};
use crate::flight::auth::Principal;

/// The most tables one session may hold at once.
pub(crate) const MAX_TABLES: usize = 64;

/// One uploaded table.
struct Upload {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
    /// The rows' content hash (as exports have), kept up to date on append: the same rows give
    /// the same hash however they were split into batches.
    hash: ContentHash,
}

struct Session {
    user: String,
    tables: BTreeMap<String, Upload>,
    reservation: MemoryReservation,
    used: Instant,
}

/// How an upload treats an existing table of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfExists {
    Fail,
    Append,
    Replace,
}

/// Every session's uploads.
pub(crate) struct Uploads {
    sessions: Mutex<HashMap<String, Session>>,
    pool: Arc<dyn MemoryPool>,
    per_user: usize,
    idle: Duration,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("per_user", &self.per_user)
            .finish()
    }
}

impl Uploads {
    pub fn new(pool: Arc<dyn MemoryPool>, per_user: usize, idle: Duration) -> Self {
        Self {
            sessions: Mutex::default(),
            pool,
            per_user,
            idle,
        }
    }

    /// The most bytes one user (over all their sessions) may hold.
    pub fn per_user(&self) -> usize {
        self.per_user
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        let mut guard = match self.sessions.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let idle = self.idle;
        guard.retain(|_, s| s.used.elapsed() < idle);
        guard
    }

    /// The scope of `principal`'s session, when it has uploaded anything.
    pub fn scope(self: &Arc<Self>, principal: &Principal) -> Option<Arc<dyn SessionScope>> {
        let mut sessions = self.sessions();
        let session = sessions.get_mut(&principal.session)?;
        if session.user != principal.user || session.tables.is_empty() {
            return None;
        }
        session.used = Instant::now();
        Some(Arc::new(Scope {
            uploads: self.clone(),
            session: principal.session.clone(),
        }))
    }

    /// Stores `batches` as `table` for `principal`'s session; returns the table's row count.
    pub fn put(
        &self,
        principal: &Principal,
        table: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        if_exists: IfExists,
    ) -> Result<i64, Status> {
        let bytes: usize = batches.iter().map(batch_bytes).sum();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut sessions = self.sessions();
        // The cap is the user's, over all their sessions: new logins do not multiply it.
        let user_held: usize = sessions
            .iter()
            .filter(|(id, s)| s.user == principal.user && **id != principal.session)
            .map(|(_, s)| s.reservation.size())
            .sum();
        let session = sessions
            .entry(principal.session.clone())
            .or_insert_with(|| Session {
                user: principal.user.clone(),
                tables: BTreeMap::new(),
                reservation: MemoryConsumer::new(format!("uploads of {}", principal.user))
                    .register(&self.pool),
                used: Instant::now(),
            });
        session.used = Instant::now();
        let existing = session.tables.get(table);
        let freed = match (existing, if_exists) {
            (Some(_), IfExists::Fail) => {
                return Err(Status::already_exists(format!(
                    "this session already uploaded a table `{table}`; append to it, replace it or \
                     pick another name"
                )));
            }
            (Some(old), IfExists::Append) if old.schema.fields() != schema.fields() => {
                return Err(Status::invalid_argument(format!(
                    "the rows do not have the columns of the session's table `{table}`"
                )));
            }
            (Some(old), IfExists::Replace) => old.bytes,
            _ => 0,
        };
        if existing.is_none() && session.tables.len() >= MAX_TABLES {
            return Err(Status::resource_exhausted(format!(
                "a session may hold at most {MAX_TABLES} uploaded tables; drop some first"
            )));
        }
        let held = user_held + session.reservation.size() - freed;
        if held + bytes > self.per_user {
            return Err(Status::resource_exhausted(format!(
                "this upload would hold {} MiB for the user's sessions, more than the {} MiB a \
                 user may hold; upload fewer rows or drop other uploads",
                (held + bytes) >> 20,
                self.per_user >> 20
            )));
        }
        session.reservation.try_grow(bytes).map_err(|_| {
            Status::resource_exhausted(
                "the server's memory for uploads is in use (--memory-limit); try again later",
            )
        })?;
        session.reservation.shrink(freed);
        let hash_error =
            |e: crate::error::PitlakeError| Status::internal(format!("hashing an upload: {e}"));
        let upload = match (session.tables.remove(table), if_exists) {
            (Some(mut old), IfExists::Append) => {
                for batch in &batches {
                    old.hash.update(batch).map_err(hash_error)?;
                }
                old.batches.extend(batches);
                Upload {
                    rows: old.rows + rows,
                    bytes: old.bytes + bytes,
                    ..old
                }
            }
            _ => {
                let mut hash = ContentHash::new(&schema).map_err(hash_error)?;
                for batch in &batches {
                    hash.update(batch).map_err(hash_error)?;
                }
                Upload {
                    schema,
                    batches,
                    rows,
                    bytes,
                    hash,
                }
            }
        };
        let total = upload.rows;
        session.tables.insert(table.to_string(), upload);
        Ok(total as i64)
    }

    fn table(&self, session: &str, name: &str) -> Option<SessionTable> {
        let sessions = self.sessions();
        let upload = sessions.get(session)?.tables.get(name)?;
        let provider =
            MemTable::try_new(upload.schema.clone(), vec![upload.batches.clone()]).ok()?;
        Some(SessionTable {
            provider: Arc::new(provider),
            content_hash: upload.hash.finish(),
            rows: upload.rows,
        })
    }

    fn drop_table(&self, session: &str, name: &str) -> bool {
        let mut sessions = self.sessions();
        let Some(s) = sessions.get_mut(session) else {
            return false;
        };
        match s.tables.remove(name) {
            Some(upload) => {
                s.reservation.shrink(upload.bytes.min(s.reservation.size()));
                if s.tables.is_empty() {
                    sessions.remove(session);
                }
                true
            }
            None => false,
        }
    }
}

/// The memory a batch holds: each buffer once, however many columns share it (batches decoded
/// from one IPC message share its buffer).
pub(crate) fn batch_bytes(batch: &RecordBatch) -> usize {
    datafusion::physical_plan::spill::get_record_batch_memory_size(batch)
}

/// One session's view of the uploads.
#[derive(Debug)]
struct Scope {
    uploads: Arc<Uploads>,
    session: String,
}

impl SessionScope for Scope {
    fn table(&self, name: &str) -> Option<SessionTable> {
        self.uploads.table(&self.session, name)
    }

    fn drop_table(&self, name: &str) -> bool {
        self.uploads.drop_table(&self.session, name)
    }

    fn table_names(&self) -> Vec<String> {
        self.uploads
            .sessions()
            .get(&self.session)
            .map(|s| s.tables.keys().cloned().collect())
            .unwrap_or_default()
    }
}
