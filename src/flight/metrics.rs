//! The server's counters, served at `/metrics` in the Prometheus text format (version 0.0.4):
//! queries started and ended by outcome, a query duration histogram, rows and bytes sent,
//! queries running and waiting for a slot, the memory pool's use and limit, spills, handshakes,
//! refused calls by reason, and the build.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Finished,
    Failed,
    Cancelled,
    TimedOut,
    ShutDown,
}

const OUTCOMES: [(Ended, &str); 5] = [
    (Ended::Finished, "finished"),
    (Ended::Failed, "failed"),
    (Ended::Cancelled, "cancelled"),
    (Ended::TimedOut, "timed_out"),
    (Ended::ShutDown, "shut_down"),
];

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No valid credential.
    Unauthenticated,
    /// The caller's grants do not allow it.
    PermissionDenied,
    /// Every query slot stayed busy for the whole timeout.
    Busy,
    /// A login was refused by the throttle (lockout, full queue) or a wrong password.
    Login,
}

const REFUSALS: [(Refusal, &str); 4] = [
    (Refusal::Unauthenticated, "unauthenticated"),
    (Refusal::PermissionDenied, "permission_denied"),
    (Refusal::Busy, "busy"),
    (Refusal::Login, "login"),
];

/// Upper bounds (seconds) of the query duration histogram's buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 900.0,
];

/// The counters. Every method is lock-free.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    started: AtomicU64,
    ended: [AtomicU64; 5],
    /// Per bucket (not cumulative), then the overflow bucket.
    durations: [AtomicU64; 15],
    duration_micros: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
    waiting: AtomicI64,
    handshakes: AtomicU64,
    refused: [AtomicU64; 4],
}

/// What the server reads from elsewhere when it renders the metrics.
pub(crate) struct Gauges {
    pub running: usize,
    pub memory_used: usize,
    pub memory_limit: Option<usize>,
    pub spills: u64,
    pub spilled_bytes: u64,
    pub ready: bool,
}

impl Metrics {
    pub fn query_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn query_ended(&self, ended: Ended, took: Duration, rows: u64, bytes: u64) {
        let at = OUTCOMES.iter().position(|(e, _)| *e == ended).unwrap_or(0);
        self.ended[at].fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.durations[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A query waits for a slot until the guard is dropped.
    pub fn waiting(&self) -> WaitingGuard<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(&self.waiting)
    }

    pub fn handshake_succeeded(&self) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) {
        let at = REFUSALS.iter().position(|(r, _)| *r == why).unwrap_or(0);
        self.refused[at].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let n = family_into(
            &mut out,
            "pitlake_queries_started_total",
            "counter",
            "Queries and statements started over Flight SQL.",
        );
        let _ = writeln!(out, "{n} {}", load(&self.started));

        let n = family_into(
            &mut out,
            "pitlake_queries_ended_total",
            "counter",
            "Queries ended, by outcome.",
        );
        for ((_, label), count) in OUTCOMES.iter().zip(&self.ended) {
            let _ = writeln!(out, "{n}{{outcome=\"{label}\"}} {}", load(count));
        }

        let n = family_into(
            &mut out,
            "pitlake_query_duration_seconds",
            "histogram",
            "How long queries ran, from their start to the end of their result stream.",
        );
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.durations) {
            cumulative += load(count);
            let _ = writeln!(out, "{n}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += load(&self.durations[BUCKETS.len()]);
        let _ = writeln!(out, "{n}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{n}_sum {}", load(&self.duration_micros) as f64 / 1e6);
        let _ = writeln!(out, "{n}_count {cumulative}");

        let simple: [(&str, &str, &str, String); 11] = [
            (
                "pitlake_rows_sent_total",
                "counter",
                "Result rows sent to clients.",
                load(&self.rows).to_string(),
            ),
            (
                "pitlake_bytes_sent_total",
                "counter",
                "Result bytes sent to clients (Arrow IPC, as encoded).",
                load(&self.bytes).to_string(),
            ),
            (
                "pitlake_queries_running",
                "gauge",
                "Queries whose result streams are open.",
                gauges.running.to_string(),
            ),
            (
                "pitlake_queries_waiting",
                "gauge",
                "Queries waiting for a slot (--max-concurrent-queries).",
                self.waiting.load(Ordering::Relaxed).max(0).to_string(),
            ),
            (
                "pitlake_memory_pool_used_bytes",
                "gauge",
                "Memory reserved by running queries in the engine's pool.",
                gauges.memory_used.to_string(),
            ),
            (
                "pitlake_memory_pool_limit_bytes",
                "gauge",
                "The engine's memory limit (--memory-limit); NaN when unlimited.",
                gauges
                    .memory_limit
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "NaN".into()),
            ),
            (
                "pitlake_spills_total",
                "counter",
                "Spill files written by operators that ran out of memory.",
                gauges.spills.to_string(),
            ),
            (
                "pitlake_spilled_bytes_total",
                "counter",
                "Bytes written to spill files.",
                gauges.spilled_bytes.to_string(),
            ),
            (
                "pitlake_handshakes_total",
                "counter",
                "Logins that issued a token.",
                load(&self.handshakes).to_string(),
            ),
            (
                "pitlake_ready",
                "gauge",
                "1 while the server takes new queries, 0 once shutdown has begun.",
                u8::from(gauges.ready).to_string(),
            ),
            (
                "pitlake_build_info",
                "gauge",
                "The running build (always 1).",
                String::new(),
            ),
        ];
        for (name, kind, help, value) in simple {
            let n = family_into(&mut out, name, kind, help);
            if name == "pitlake_build_info" {
                let _ = writeln!(out, "{n}{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
            } else {
                let _ = writeln!(out, "{n} {value}");
            }
        }

        let n = family_into(
            &mut out,
            "pitlake_refused_calls_total",
            "counter",
            "Calls and logins refused, by reason.",
        );
        for ((_, label), count) in REFUSALS.iter().zip(&self.refused) {
            let _ = writeln!(out, "{n}{{reason=\"{label}\"}} {}", load(count));
        }
        out
    }
}

fn family_into(out: &mut String, name: &str, kind: &str, help: &str) -> String {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    name.to_string()
}

/// Counts a query as waiting while it lives.
pub(crate) struct WaitingGuard<'a>(&'a AtomicI64);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.query_started();
        m.query_started();
        m.query_ended(Ended::Finished, Duration::from_millis(3), 10, 100);
        m.query_ended(Ended::Failed, Duration::from_secs(2), 0, 0);
        m.refused(Refusal::PermissionDenied);
        let text = m.render(&Gauges {
            running: 1,
            memory_used: 5,
            memory_limit: None,
            spills: 0,
            spilled_bytes: 0,
            ready: true,
        });
        assert!(text.contains("pitlake_queries_started_total 2\n"), "{text}");
        assert!(text.contains("pitlake_queries_ended_total{outcome=\"failed\"} 1\n"));
        assert!(text.contains("pitlake_query_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("pitlake_query_duration_seconds_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("pitlake_query_duration_seconds_bucket{le=\"2.5\"} 2\n"));
        assert!(text.contains("pitlake_query_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("pitlake_query_duration_seconds_count 2\n"));
        assert!(text.contains("pitlake_rows_sent_total 10\n"));
        assert!(text.contains("pitlake_memory_pool_limit_bytes NaN\n"));
        assert!(text.contains("pitlake_refused_calls_total{reason=\"permission_denied\"} 1\n"));
        assert!(text.contains("pitlake_build_info{version=\""));
    }
}
