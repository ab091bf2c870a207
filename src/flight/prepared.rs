//! Prepared statements, kept on the server under random handles.
//!
//! A handle is 128 random bits and belongs to the user who created it: another user's call
//! with it finds nothing (`NOT_FOUND`, the same as a handle that never existed). Each user may
//! hold a bounded number; statements idle for longer than the idle limit are dropped.

use std::collections::HashMap;
use std::sync::Mutex;
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

/// The open prepared statements.
#[derive(Debug)]
pub(crate) struct PreparedStatements {
    entries: Mutex<HashMap<String, Prepared>>,
    max_per_user: usize,
    idle: Duration,
}

impl PreparedStatements {
    pub fn new(max_per_user: usize, idle: Duration) -> Self {
        Self {
            entries: Mutex::default(),
            max_per_user,
            idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Prepared>> {
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
        entries.retain(|_, p| now.duration_since(p.last_used) < self.idle);
        let held = entries.values().filter(|p| p.user == user).count();
        if held >= self.max_per_user {
            return Err(Status::resource_exhausted(format!(
                "user `{user}` holds {held} open prepared statements; close some first"
            )));
        }
        entries.insert(
            handle.clone(),
            Prepared {
                user: user.to_string(),
                sql: sql.to_string(),
                parameters: None,
                last_used: now,
            },
        );
        Ok(handle)
    }

    /// The statement behind a handle, if the user owns it.
    pub fn get(&self, handle: &[u8], user: &str) -> Result<Prepared, Status> {
        let mut entries = self.lock();
        let entry = std::str::from_utf8(handle)
            .ok()
            .and_then(|h| entries.get_mut(h))
            .filter(|p| p.user == user)
            .ok_or_else(not_found)?;
        entry.last_used = Instant::now();
        Ok(entry.clone())
    }

    /// Binds parameters to a statement the user owns.
    pub fn bind(&self, handle: &[u8], user: &str, parameters: Vec<u8>) -> Result<(), Status> {
        let mut entries = self.lock();
        let entry = std::str::from_utf8(handle)
            .ok()
            .and_then(|h| entries.get_mut(h))
            .filter(|p| p.user == user)
            .ok_or_else(not_found)?;
        entry.parameters = Some(parameters);
        entry.last_used = Instant::now();
        Ok(())
    }

    /// Closes a statement the user owns.
    pub fn remove(&self, handle: &[u8], user: &str) -> Result<(), Status> {
        let mut entries = self.lock();
        let key = std::str::from_utf8(handle)
            .ok()
            .filter(|h| entries.get(*h).is_some_and(|p| p.user == user))
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

    #[test]
    fn handles_belong_to_their_user() {
        let store = PreparedStatements::new(2, Duration::from_secs(60));
        let h = store.insert("alice", "SELECT 1").unwrap();
        assert_eq!(store.get(h.as_bytes(), "alice").unwrap().sql, "SELECT 1");
        assert_eq!(
            store.get(h.as_bytes(), "bob").unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert!(store.bind(h.as_bytes(), "bob", vec![1]).is_err());
        assert!(store.remove(h.as_bytes(), "bob").is_err());
        store.insert("alice", "SELECT 2").unwrap();
        assert_eq!(
            store.insert("alice", "SELECT 3").unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        store.remove(h.as_bytes(), "alice").unwrap();
        assert!(store.get(h.as_bytes(), "alice").is_err());
    }
}
