//! Bounds on logging in: how many password checks run at once, how many wait, and how many
//! failed logins a user name or a peer address may have before it must wait.
//!
//! A handshake goes through three gates before argon2 runs, each refusing cheaply:
//!
//! ```text
//!  login ──► lockout? ──────────► admission ──────► in-flight room ──► check slot ──► argon2
//!            user name, peer       running + waiting   failed + in       one per core,    │
//!            locked: refused       ≤ concurrent +      flight < limit,   waits ≤ 10 s     ▼
//!            RESOURCE_EXHAUSTED    queued, else        else waits ≤ 10 s else          failure
//!                                  UNAVAILABLE         for checks to end UNAVAILABLE    counted
//! ```
//!
//! - **Lockout.** Failures are counted per user name (any name, known or not, so the answer does
//!   not tell which exist) and per peer address (IPv6 by /64). Checks still in flight count as
//!   failures until they end, so a burst of parallel guesses cannot slip past the limit: while
//!   failures and checks in flight fill the limit, a further login of that name (or address)
//!   waits for a check to end, and then is refused if the name got locked, or goes on. A burst
//!   of right passwords (many clients of one service user starting at once) is thus checked a
//!   few at a time, never refused for failures that did not happen. At the
//!   limit the name (or address) is locked for the lockout period, doubled for each lockout in a
//!   row, up to [`MAX_LOCKOUT`]; during a lockout even the right password is refused, without a
//!   check. A successful login clears its user name's count (not its address's: one valid
//!   account must not reset the count of guesses at others).
//! - **Admission.** At most `max_concurrent + max_queued` logins are running or waiting; more
//!   are refused at once.
//! - **Check slots.** At most `max_concurrent` argon2 checks run (each takes the hash's `m` of
//!   memory); a check holds its slot until argon2 returns, even if its client went away, so
//!   cancelled handshakes cannot pile up work.
//!
//! The tables of counts hold at most [`MAX_TRACKED`] entries each. Entries expire once they are
//! unlocked and quiet for [`MAX_LOCKOUT`]; when a table is full, the entry whose lock ends first
//! (or that has none and is the oldest) makes room.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// The longest lockout, however many in a row (unless the base lockout is longer).
pub const MAX_LOCKOUT: Duration = Duration::from_secs(3600);

/// Entries per table of failed logins (user names, peer addresses).
pub const MAX_TRACKED: usize = 65_536;

/// How long a login waits for a check slot before it is refused.
pub const CHECK_SLOT_WAIT: Duration = Duration::from_secs(10);

/// The login limits (from `--max-concurrent-logins` and friends).
#[derive(Debug, Clone)]
pub(crate) struct LoginLimits {
    pub max_concurrent: usize,
    pub max_queued: usize,
    pub max_failed_per_user: u32,
    pub max_failed_per_peer: u32,
    pub lockout: Duration,
}

/// Counts of failed logins for one user name or peer.
#[derive(Debug, Clone)]
struct Entry {
    /// Failures in the current window.
    failures: u32,
    /// Checks running now (counted as failures until they end).
    pending: u32,
    window_start: Instant,
    last_event: Instant,
    locked_until: Option<Instant>,
    /// Lockouts in a row; each doubles the next.
    strikes: u32,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            pending: 0,
            window_start: now,
            last_event: now,
            locked_until: None,
            strikes: 0,
        }
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    fn expired(&self, now: Instant) -> bool {
        self.pending == 0
            && self.locked(now).is_none()
            && now.duration_since(self.last_event) >= MAX_LOCKOUT
    }
}

/// A bounded table of failure counts.
#[derive(Debug)]
struct Table<K> {
    entries: HashMap<K, Entry>,
    limit: u32,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(limit: u32, capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            limit,
            capacity,
        }
    }

    /// How long `key` is still locked, if it is.
    fn refusal(&self, key: &K, now: Instant) -> Option<Duration> {
        self.entries.get(key)?.locked(now)
    }

    /// Whether failures and checks in flight fill `key`'s limit: one more check must wait.
    fn full(&self, key: &K, now: Instant, lockout: Duration) -> bool {
        let Some(entry) = self.entries.get(key) else {
            return false;
        };
        let window_over = now.duration_since(entry.window_start) >= lockout;
        let failures = if window_over { 0 } else { entry.failures };
        failures.saturating_add(entry.pending) >= self.limit
    }

    fn entry(&mut self, key: &K, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
            self.make_room(now);
        }
        self.entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now))
    }

    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, e| !e.expired(now));
        if self.entries.len() < self.capacity {
            return;
        }
        // The entry that matters least: no check in flight, the lock that ends first (none
        // counts as already ended), the oldest.
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.pending == 0)
            .min_by_key(|(_, e)| (e.locked_until.unwrap_or(now).max(now), e.last_event))
            .map(|(k, _)| k.clone());
        if let Some(victim) = victim {
            self.entries.remove(&victim);
        }
    }

    fn start(&mut self, key: &K, now: Instant) {
        let entry = self.entry(key, now);
        entry.pending = entry.pending.saturating_add(1);
        entry.last_event = now;
    }

    /// Ends a check of `key`; `failed` counts it, and may lock the key.
    fn finish(&mut self, key: &K, now: Instant, failed: bool, lockout: Duration) {
        let limit = self.limit;
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.pending = entry.pending.saturating_sub(1);
        entry.last_event = now;
        if !failed {
            return;
        }
        if now.duration_since(entry.window_start) >= lockout {
            entry.failures = 0;
            entry.window_start = now;
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures >= limit {
            let factor = 1u32 << entry.strikes.min(16);
            let lock = lockout.saturating_mul(factor).min(MAX_LOCKOUT.max(lockout));
            entry.locked_until = Some(now + lock);
            entry.strikes = entry.strikes.saturating_add(1);
            entry.failures = 0;
            entry.window_start = now + lock;
        }
    }

    fn forget(&mut self, key: &K) {
        if let Some(entry) = self.entries.get(key)
            && entry.pending == 0
        {
            self.entries.remove(key);
        }
    }
}

/// What a peer address counts as: IPv4 addresses whole, IPv6 by their /64 (one host usually has
/// a whole /64 to pick addresses from).
fn peer_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[derive(Debug)]
struct Tables {
    users: Table<String>,
    peers: Table<IpAddr>,
}

/// The login gates (see the module documentation).
#[derive(Debug)]
pub(crate) struct LoginThrottle {
    limits: LoginLimits,
    admission: Arc<Semaphore>,
    checks: Arc<Semaphore>,
    tables: Mutex<Tables>,
    /// Notified whenever an attempt is settled: logins waiting for room try again.
    settled: tokio::sync::Notify,
    /// Password checks running now, and the most seen at once.
    running: AtomicUsize,
    peak: AtomicUsize,
}

/// Counters for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStats {
    /// The most password checks that ran at the same time.
    pub peak_concurrent_checks: usize,
}

impl LoginThrottle {
    pub fn new(limits: LoginLimits) -> Self {
        Self::with_capacity(limits, MAX_TRACKED)
    }

    fn with_capacity(limits: LoginLimits, capacity: usize) -> Self {
        Self {
            admission: Arc::new(Semaphore::new(
                limits.max_concurrent.saturating_add(limits.max_queued),
            )),
            checks: Arc::new(Semaphore::new(limits.max_concurrent)),
            tables: Mutex::new(Tables {
                users: Table::new(limits.max_failed_per_user, capacity),
                peers: Table::new(limits.max_failed_per_peer, capacity),
            }),
            settled: tokio::sync::Notify::new(),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            limits,
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        match self.tables.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> LoginStats {
        LoginStats {
            peak_concurrent_checks: self.peak.load(Ordering::SeqCst),
        }
    }

    /// Admits a login attempt, or refuses it before any password work. While the user name's
    /// (or the peer's) failures and checks in flight fill its limit, the attempt waits (at
    /// most [`CHECK_SLOT_WAIT`]) for one of them to end. The attempt counts against the user
    /// name and the peer until it is settled (or dropped).
    pub async fn admit(
        self: &Arc<Self>,
        user: &str,
        peer: Option<IpAddr>,
    ) -> Result<Attempt, Status> {
        let deadline = tokio::time::Instant::now() + CHECK_SLOT_WAIT;
        let mut admission = None;
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if let Some(attempt) = self.try_admit(user, peer, &mut admission)? {
                return Ok(attempt);
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return Err(Status::unavailable(format!(
                    "other logins of user name `{user}` (or from this address) were still being \
                     checked after {}s; try again in a moment",
                    CHECK_SLOT_WAIT.as_secs()
                )));
            }
        }
    }

    /// One pass of [`Self::admit`]: an error if locked or the server is full, `None` if the
    /// attempt must wait for room. `admission` keeps the admission permit between passes.
    fn try_admit(
        self: &Arc<Self>,
        user: &str,
        peer: Option<IpAddr>,
        admission: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<Option<Attempt>, Status> {
        let now = Instant::now();
        let peer = peer.map(peer_key);
        let lockout = self.limits.lockout;
        let mut tables = self.tables();
        let user_key = user.to_string();
        if let Some(wait) = tables.users.refusal(&user_key, now) {
            return Err(locked_out(
                &format!("for user name `{user}`"),
                wait,
                "--max-failed-logins-per-user",
            ));
        }
        if let Some(peer) = peer
            && let Some(wait) = tables.peers.refusal(&peer, now)
        {
            return Err(locked_out(
                &format!("from address {peer}"),
                wait,
                "--max-failed-logins-per-peer",
            ));
        }
        if admission.is_none() {
            *admission = Some(self.admission.clone().try_acquire_owned().map_err(|_| {
                Status::unavailable(format!(
                    "the server is busy checking passwords ({} running or waiting: \
                     --max-concurrent-logins, --max-queued-logins); try again in a moment",
                    self.limits.max_concurrent + self.limits.max_queued
                ))
            })?);
        }
        if tables.users.full(&user_key, now, lockout)
            || peer.is_some_and(|p| tables.peers.full(&p, now, lockout))
        {
            return Ok(None);
        }
        let Some(admission) = admission.take() else {
            return Ok(None);
        };
        tables.users.start(&user_key, now);
        if let Some(peer) = peer {
            tables.peers.start(&peer, now);
        }
        Ok(Some(Attempt {
            throttle: self.clone(),
            user: user_key,
            peer,
            _admission: admission,
            slot: None,
            settled: false,
        }))
    }

    fn settle(&self, user: &str, peer: Option<IpAddr>, outcome: Option<bool>) {
        let now = Instant::now();
        let lockout = self.limits.lockout;
        let mut tables = self.tables();
        let user = user.to_string();
        let failed = outcome == Some(false);
        tables.users.finish(&user, now, failed, lockout);
        if let Some(peer) = peer {
            tables.peers.finish(&peer, now, failed, lockout);
        }
        if outcome == Some(true) {
            tables.users.forget(&user);
        }
        drop(tables);
        self.settled.notify_waiters();
    }
}

fn locked_out(whom: &str, wait: Duration, flag: &str) -> Status {
    let seconds = wait.as_secs_f64().ceil().max(1.0);
    Status::resource_exhausted(format!(
        "too many failed logins {whom}; try again in {seconds:.0}s ({flag}, --login-lockout)"
    ))
}

/// One admitted login attempt. Dropped unsettled (its client went away before the check), it
/// counts as nothing.
#[derive(Debug)]
pub(crate) struct Attempt {
    throttle: Arc<LoginThrottle>,
    user: String,
    peer: Option<IpAddr>,
    _admission: OwnedSemaphorePermit,
    slot: Option<OwnedSemaphorePermit>,
    settled: bool,
}

impl Attempt {
    /// Waits (at most [`CHECK_SLOT_WAIT`]) for a password-check slot.
    pub async fn wait_for_slot(&mut self) -> Result<(), Status> {
        let checks = self.throttle.checks.clone();
        match tokio::time::timeout(CHECK_SLOT_WAIT, checks.acquire_owned()).await {
            Ok(Ok(permit)) => {
                self.slot = Some(permit);
                Ok(())
            }
            Ok(Err(_)) => Err(Status::unavailable("the server is shutting down")),
            Err(_) => Err(Status::unavailable(format!(
                "no password check could start within {}s (--max-concurrent-logins); try \
                 again in a moment",
                CHECK_SLOT_WAIT.as_secs()
            ))),
        }
    }

    /// Runs `check` (argon2) holding the slot, counted in the peak of concurrent checks;
    /// settles the attempt with its outcome. Call from a blocking thread.
    pub fn run<T>(mut self, check: impl FnOnce() -> Result<T, Status>) -> Result<T, Status> {
        let throttle = self.throttle.clone();
        let now_running = throttle.running.fetch_add(1, Ordering::SeqCst) + 1;
        throttle.peak.fetch_max(now_running, Ordering::SeqCst);
        let outcome = check();
        throttle.running.fetch_sub(1, Ordering::SeqCst);
        self.settled = true;
        throttle.settle(&self.user, self.peer, Some(outcome.is_ok()));
        outcome
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.throttle.settle(&self.user, self.peer, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_user: u32, per_peer: u32) -> LoginLimits {
        LoginLimits {
            max_concurrent: 1,
            max_queued: 1,
            max_failed_per_user: per_user,
            max_failed_per_peer: per_peer,
            lockout: Duration::from_secs(60),
        }
    }

    /// One pass of admission: `Ok(None)` means the attempt would wait.
    fn admit_now(
        throttle: &Arc<LoginThrottle>,
        user: &str,
        peer: Option<IpAddr>,
    ) -> Result<Option<Attempt>, Status> {
        throttle.try_admit(user, peer, &mut None)
    }

    fn fail(throttle: &Arc<LoginThrottle>, user: &str, peer: Option<IpAddr>) {
        let attempt = admit_now(throttle, user, peer).unwrap().unwrap();
        let _ = attempt.run(|| Err::<(), _>(Status::unauthenticated("no")));
    }

    #[test]
    fn failures_lock_a_name_then_expire_with_doubling() {
        let lockout = Duration::from_secs(60);
        let mut table: Table<&str> = Table::new(3, 100);
        let t0 = Instant::now();
        let fail = |table: &mut Table<&str>, now: Instant| {
            table.start(&"alice", now);
            table.finish(&"alice", now, true, lockout);
        };
        for _ in 0..3 {
            assert_eq!(table.refusal(&"alice", t0), None);
            fail(&mut table, t0);
        }
        assert_eq!(table.refusal(&"alice", t0), Some(lockout));
        assert_eq!(table.refusal(&"bob", t0), None);
        // Over after the lockout; three more failures lock it for twice as long.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(table.refusal(&"alice", t1), None);
        for _ in 0..3 {
            fail(&mut table, t1);
        }
        assert_eq!(table.refusal(&"alice", t1), Some(2 * lockout));
        // Never past the longest lockout.
        let mut t = t1;
        for _ in 0..12 {
            t += MAX_LOCKOUT + Duration::from_secs(1);
            for _ in 0..3 {
                fail(&mut table, t);
            }
        }
        assert_eq!(table.refusal(&"alice", t), Some(MAX_LOCKOUT));
        // Failures spread wider than the window do not add up.
        let mut slow: Table<&str> = Table::new(3, 100);
        for i in 0..10 {
            let now = t0 + lockout * (i + 1);
            slow.start(&"carol", now);
            slow.finish(&"carol", now, true, lockout);
            assert_eq!(slow.refusal(&"carol", now), None);
            assert!(!slow.full(&"carol", now, lockout));
        }
    }

    #[test]
    fn a_success_clears_the_user_count() {
        let throttle = Arc::new(LoginThrottle::new(limits(3, 100)));
        for _ in 0..2 {
            fail(&throttle, "alice", None);
        }
        let attempt = admit_now(&throttle, "alice", None).unwrap().unwrap();
        attempt.run(|| Ok(())).unwrap();
        for _ in 0..2 {
            fail(&throttle, "alice", None);
        }
        assert!(admit_now(&throttle, "alice", None).unwrap().is_some());
        fail(&throttle, "alice", None);
        let err = admit_now(&throttle, "alice", None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("try again in 60s"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn checks_in_flight_count_and_peers_are_limited_too() {
        let throttle = Arc::new(LoginThrottle::new(LoginLimits {
            max_queued: 10,
            ..limits(2, 3)
        }));
        let peer: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        let a = admit_now(&throttle, "alice", Some(peer)).unwrap().unwrap();
        let b = admit_now(&throttle, "alice", Some(peer)).unwrap().unwrap();
        // Two checks of alice in flight: a third waits for one to end.
        assert!(admit_now(&throttle, "alice", Some(peer)).unwrap().is_none());
        // Dropped unsettled (the client left): counts as nothing.
        drop(a);
        drop(b);
        fail(&throttle, "u1", Some(peer));
        fail(&throttle, "u2", Some(neighbour));
        fail(&throttle, "u3", Some(peer));
        // The same /64 is one peer: three failures lock it for any name.
        let err = admit_now(&throttle, "carol", Some(neighbour)).unwrap_err();
        assert!(err.message().contains("2001:db8::"), "{}", err.message());
        assert!(
            admit_now(&throttle, "carol", Some("192.0.2.1".parse().unwrap()))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn admission_is_bounded() {
        let throttle = Arc::new(LoginThrottle::new(LoginLimits {
            max_concurrent: 1,
            max_queued: 2,
            ..limits(100, 100)
        }));
        let held: Vec<_> = (0..3)
            .map(|i| {
                admit_now(&throttle, &format!("u{i}"), None)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let err = admit_now(&throttle, "u9", None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("--max-queued-logins"));
        drop(held);
        assert!(admit_now(&throttle, "u9", None).unwrap().is_some());
    }

    #[test]
    fn tables_stay_bounded() {
        let throttle = Arc::new(LoginThrottle::with_capacity(
            LoginLimits {
                max_queued: 100,
                ..limits(1, 1_000_000)
            },
            16,
        ));
        for i in 0..1000 {
            fail(&throttle, &format!("spray{i}"), None);
        }
        assert!(throttle.tables().users.entries.len() <= 16);
    }

    /// Runs `n` logins of one user at once, each with `check`'s outcome; their results.
    async fn burst(
        throttle: &Arc<LoginThrottle>,
        n: usize,
        right: bool,
    ) -> Vec<Result<(), Status>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let throttle = throttle.clone();
                tokio::spawn(async move {
                    let mut attempt = throttle.admit("svc", None).await?;
                    attempt.wait_for_slot().await?;
                    tokio::task::spawn_blocking(move || {
                        attempt.run(|| {
                            std::thread::sleep(Duration::from_millis(20));
                            if right {
                                Ok(())
                            } else {
                                Err(Status::unauthenticated("wrong"))
                            }
                        })
                    })
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    }

    #[tokio::test]
    async fn a_burst_of_right_passwords_is_checked_a_few_at_a_time_not_refused() {
        let throttle = Arc::new(LoginThrottle::new(LoginLimits {
            max_concurrent: 2,
            max_queued: 64,
            ..limits(3, 100)
        }));
        let results = burst(&throttle, 16, true).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        // A burst of wrong ones: at most the limit is checked, the rest refused once locked.
        let results = burst(&throttle, 16, false).await;
        let checked = results
            .iter()
            .filter(|r| matches!(r, Err(s) if s.code() == tonic::Code::Unauthenticated))
            .count();
        assert_eq!(checked, 3, "{results:?}");
        assert!(
            results
                .iter()
                .filter(|r| r
                    .as_ref()
                    .is_err_and(|s| s.code() != tonic::Code::Unauthenticated))
                .all(|r| r.as_ref().unwrap_err().code() == tonic::Code::ResourceExhausted),
            "{results:?}"
        );
    }
}
