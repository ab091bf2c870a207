//! Prepared statements, kept on the server under random handles.
//!
//! A handle is 128 random bits and belongs to the user who created it: another user's call
//! with it finds nothing (`NOT_FOUND`, the same as a handle that never existed). Each user may
//! hold a bounded number; statements idle for longer than the idle limit are dropped.
//!
//! Bound parameters are uploads the server keeps, so their bytes are budgeted ([`ParameterBudget`]):
//! per upload, per user and for the whole server. An upload reserves its bytes as they arrive,
//! before they are decoded; once bound, the reservation moves into the statement and is released
//! when the statement is closed, re-bound or dropped as idle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;

use crate::flight::auth::random_bytes;

/// One prepared statement.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// Its owner.
    pub user: String,
    /// The statement text (`?` placeholders already numbered when it is planned).
    pub sql: String,
    /// The last bound parameters: one row, Arrow IPC stream.
    pub parameters: Option<Vec<u8>>,
    last_used: Instant,
}

/// Limits on the bytes of bound parameters the server holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParameterLimits {
    /// One upload (all its messages).
    pub per_upload: usize,
    /// Uploads in progress and bound parameters of one user.
    pub per_user: usize,
    /// The same, all users together.
    pub total: usize,
}

#[derive(Debug, Default)]
struct Held {
    per_user: HashMap<String, usize>,
    total: usize,
}

/// The bytes of bound parameters held (in uploads and in statements), per user and in all.
#[derive(Debug)]
pub(crate) struct ParameterBudget {
    limits: ParameterLimits,
    held: Mutex<Held>,
}

impl ParameterBudget {
    pub fn new(limits: ParameterLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            held: Mutex::default(),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        match self.held.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// An empty reservation for one upload of `user`'s.
    pub fn reservation(self: &Arc<Self>, user: &str) -> Reservation {
        Reservation {
            budget: self.clone(),
            user: user.to_string(),
            bytes: 0,
        }
    }

    /// Bytes held for `user` now.
    #[cfg(test)]
    fn held_by(&self, user: &str) -> usize {
        self.held().per_user.get(user).copied().unwrap_or(0)
    }

    fn release(&self, user: &str, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut held = self.held();
        held.total = held.total.saturating_sub(bytes);
        if let Some(n) = held.per_user.get_mut(user) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                held.per_user.remove(user);
            }
        }
    }
}

/// Bytes of one upload (then of one statement's parameters), released when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<ParameterBudget>,
    user: String,
    bytes: usize,
}

impl Reservation {
    /// Adds `more` bytes, or refuses (`RESOURCE_EXHAUSTED`) past any of the three limits.
    pub fn grow(&mut self, more: usize) -> Result<(), Status> {
        let limits = self.budget.limits;
        let wanted = self.bytes.saturating_add(more);
        if wanted > limits.per_upload {
            return Err(Status::resource_exhausted(format!(
                "the bound parameters are larger than {} bytes (--max-parameter-bytes); bind \
                 smaller values, or pass large data in a table",
                limits.per_upload
            )));
        }
        let mut held = self.budget.held();
        let user_now = held.per_user.get(&self.user).copied().unwrap_or(0);
        if user_now.saturating_add(more) > limits.per_user {
            return Err(Status::resource_exhausted(format!(
                "user `{}` already holds {user_now} bytes of bound parameters, and {more} more \
                 would pass {} (--max-parameter-bytes-per-user); close prepared statements \
                 you no longer need",
                self.user, limits.per_user
            )));
        }
        if held.total.saturating_add(more) > limits.total {
            return Err(Status::resource_exhausted(format!(
                "the server holds {} bytes of bound parameters from all users, and {more} more \
                 would pass {} (--max-parameter-bytes-total); try again later",
                held.total, limits.total
            )));
        }
        held.total += more;
        *held.per_user.entry(self.user.clone()).or_default() += more;
        self.bytes = wanted;
        Ok(())
    }

    /// Sets the reservation to `bytes` (the stored encoding's size), growing within the limits.
    pub fn resize(&mut self, bytes: usize) -> Result<(), Status> {
        if bytes >= self.bytes {
            return self.grow(bytes - self.bytes);
        }
        self.budget.release(&self.user, self.bytes - bytes);
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(&self.user, self.bytes);
    }
}

/// The entry behind `handle` if `user` owns it; another user's handle is as unknown as one
/// that never existed.
fn owned<'a>(
    entries: &'a mut HashMap<String, Entry>,
    handle: &[u8],
    user: &str,
) -> Result<&'a mut Entry, Status> {
    std::str::from_utf8(handle)
        .ok()
        .and_then(|h| entries.get_mut(h))
        .filter(|e| e.prepared.user == user)
        .ok_or_else(not_found)
}

/// A statement and the reservation of its bound parameters.
#[derive(Debug)]
struct Entry {
    prepared: Prepared,
    _reservation: Option<Reservation>,
}

/// The open prepared statements.
#[derive(Debug)]
pub(crate) struct PreparedStatements {
    entries: Mutex<HashMap<String, Entry>>,
    max_per_user: usize,
    idle: Duration,
    budget: Arc<ParameterBudget>,
}

impl PreparedStatements {
    pub fn new(max_per_user: usize, idle: Duration, parameters: ParameterLimits) -> Self {
        Self {
            entries: Mutex::default(),
            max_per_user,
            idle,
            budget: ParameterBudget::new(parameters),
        }
    }

    /// The budget uploads of bound parameters reserve from.
    pub fn budget(&self) -> &Arc<ParameterBudget> {
        &self.budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Stores a statement and returns its handle.
    pub fn insert(&self, user: &str, sql: &str) -> Result<String, Status> {
        let handle: String = random_bytes::<16>()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|_, e| now.duration_since(e.prepared.last_used) < self.idle);
        let held = entries.values().filter(|e| e.prepared.user == user).count();
        if held >= self.max_per_user {
            return Err(Status::resource_exhausted(format!(
                "user `{user}` holds {held} open prepared statements; close some first"
            )));
        }
        entries.insert(
            handle.clone(),
            Entry {
                prepared: Prepared {
                    user: user.to_string(),
                    sql: sql.to_string(),
                    parameters: None,
                    last_used: now,
                },
                _reservation: None,
            },
        );
        Ok(handle)
    }

    /// The statement behind a handle, if the user owns it.
    pub fn get(&self, handle: &[u8], user: &str) -> Result<Prepared, Status> {
        let mut entries = self.lock();
        let entry = owned(&mut entries, handle, user)?;
        entry.prepared.last_used = Instant::now();
        Ok(entry.prepared.clone())
    }

    /// Binds parameters to a statement the user owns; `reservation` (sized to them) stays with
    /// the statement until it is closed, re-bound or dropped.
    pub fn bind(
        &self,
        handle: &[u8],
        user: &str,
        parameters: Vec<u8>,
        reservation: Reservation,
    ) -> Result<(), Status> {
        let mut entries = self.lock();
        let entry = owned(&mut entries, handle, user)?;
        entry.prepared.parameters = Some(parameters);
        entry.prepared.last_used = Instant::now();
        entry._reservation = Some(reservation);
        Ok(())
    }

    /// Closes a statement the user owns.
    pub fn remove(&self, handle: &[u8], user: &str) -> Result<(), Status> {
        let mut entries = self.lock();
        let key = std::str::from_utf8(handle)
            .ok()
            .filter(|h| entries.get(*h).is_some_and(|e| e.prepared.user == user))
            .map(str::to_string)
            .ok_or_else(not_found)?;
        entries.remove(&key);
        Ok(())
    }
}

fn not_found() -> Status {
    Status::not_found("no open prepared statement has this handle (closed, expired, or not yours)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal names the flag that sets the limit it hit.
    fn assert_mentions(err: &Status, flag: &str) {
        assert!(err.message().contains(flag), "{}", err.message());
    }

    const LIMITS: ParameterLimits = ParameterLimits {
        per_upload: 100,
        per_user: 150,
        total: 250,
    };

    #[test]
    fn handles_belong_to_their_user() {
        let store = PreparedStatements::new(2, Duration::from_secs(60), LIMITS);
        let h = store.insert("alice", "SELECT 1").unwrap();
        assert_eq!(store.get(h.as_bytes(), "alice").unwrap().sql, "SELECT 1");
        assert_eq!(
            store.get(h.as_bytes(), "bob").unwrap_err().code(),
            tonic::Code::NotFound
        );
        let bobs = store.budget().reservation("bob");
        assert!(store.bind(h.as_bytes(), "bob", vec![1], bobs).is_err());
        assert!(store.remove(h.as_bytes(), "bob").is_err());
        store.insert("alice", "SELECT 2").unwrap();
        assert_eq!(
            store.insert("alice", "SELECT 3").unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        store.remove(h.as_bytes(), "alice").unwrap();
        assert!(store.get(h.as_bytes(), "alice").is_err());
    }

    #[test]
    fn parameter_bytes_are_bounded_per_upload_user_and_server() {
        let store = PreparedStatements::new(10, Duration::from_secs(60), LIMITS);
        let budget = store.budget().clone();
        let mut one = budget.reservation("alice");
        let err = one.grow(101).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert_mentions(&err, "(--max-parameter-bytes)");
        one.grow(60).unwrap();
        one.grow(40).unwrap();
        assert!(one.grow(1).is_err());
        let h1 = store.insert("alice", "SELECT $1").unwrap();
        one.resize(80).unwrap();
        store
            .bind(h1.as_bytes(), "alice", vec![0; 80], one)
            .unwrap();
        assert_eq!(budget.held_by("alice"), 80);
        // A second upload of alice's passes her per-user limit.
        let mut two = budget.reservation("alice");
        two.grow(70).unwrap();
        let err = two.grow(1).unwrap_err();
        assert_mentions(&err, "--max-parameter-bytes-per-user");
        drop(two);
        // Others fill the server.
        let mut bob = budget.reservation("bob");
        bob.grow(100).unwrap();
        let mut carol = budget.reservation("carol");
        carol.grow(70).unwrap();
        let err = carol.grow(1).unwrap_err();
        assert_mentions(&err, "--max-parameter-bytes-total");
        // Closing alice's statement gives her bytes back.
        store.remove(h1.as_bytes(), "alice").unwrap();
        assert_eq!(budget.held_by("alice"), 0);
        carol.grow(30).unwrap();
        drop((bob, carol));
        assert_eq!(budget.held().total, 0);
    }
}
