//! A query's result stream under its limits.
//!
//! The engine's record batch stream is pulled only as fast as gRPC sends (flow control), so a
//! large result is never collected. Wrapped around it:
//!
//! - a deadline: past the query timeout the stream ends with `DEADLINE_EXCEEDED`;
//! - the server's shutdown: once the grace period is over, it ends with `UNAVAILABLE`;
//! - a slot of the concurrent-query semaphore, held until the stream is dropped;
//! - a record that logs user, query id, rows, bytes and duration when the stream is dropped —
//!   finished, failed, or abandoned by a client that went away. Dropping the stream drops the
//!   engine's stream, which cancels the query's tasks.

use super::metrics::{Ended, Metrics};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow_flight::FlightData;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::flight::auth::Principal;
use crate::flight::status::status_for_principal;

/// The stream a `DoGet` answers with.
pub(crate) type FlightStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send>>;

/// How a query ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    Finished,
    Failed,
    TimedOut,
    ShutDown,
}

/// Counts a query's rows and bytes; logs them when dropped.
pub(crate) struct QueryRecord {
    pub user: String,
    pub query_id: String,
    started: Instant,
    rows: AtomicU64,
    bytes: AtomicU64,
    outcome: std::sync::Mutex<Outcome>,
    active: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl QueryRecord {
    pub fn new(
        user: &str,
        query_id: &str,
        active: Arc<AtomicUsize>,
        metrics: Arc<Metrics>,
    ) -> Self {
        active.fetch_add(1, Ordering::SeqCst);
        metrics.query_started();
        Self {
            user: user.to_string(),
            query_id: query_id.to_string(),
            started: Instant::now(),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            outcome: std::sync::Mutex::new(Outcome::Running),
            active,
            metrics,
        }
    }

    /// Counts bytes sent for the query.
    pub fn sent(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn set(&self, outcome: Outcome) {
        match self.outcome.lock() {
            Ok(mut guard) => *guard = outcome,
            Err(poisoned) => *poisoned.into_inner() = outcome,
        }
    }

    /// Marks the query failed before its stream started, and logs why.
    pub fn failed(&self, reason: &str) {
        self.set(Outcome::Failed);
        tracing::info!(
            target: "pitlake::flight",
            user = %self.user,
            query_id = %self.query_id,
            error = reason,
            "query failed"
        );
    }

    /// Marks the query finished (statements without a stream).
    pub fn finished(&self) {
        self.set(Outcome::Finished);
    }

    fn outcome(&self) -> Outcome {
        match self.outcome.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

impl Drop for QueryRecord {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        let (outcome, ended) = match self.outcome() {
            // Dropped while still running: the client went away (or the server stopped it).
            Outcome::Running => ("cancelled", Ended::Cancelled),
            Outcome::Finished => ("finished", Ended::Finished),
            Outcome::Failed => ("failed", Ended::Failed),
            Outcome::TimedOut => ("timed_out", Ended::TimedOut),
            Outcome::ShutDown => ("shut_down", Ended::ShutDown),
        };
        self.metrics.query_ended(
            ended,
            self.started.elapsed(),
            self.rows.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        );
        tracing::info!(
            target: "pitlake::flight",
            user = %self.user,
            query_id = %self.query_id,
            rows = self.rows.load(Ordering::Relaxed),
            bytes = self.bytes.load(Ordering::Relaxed),
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome,
            "query ended"
        );
    }
}

/// What bounds a running query.
pub(crate) struct Bounds {
    pub deadline: tokio::time::Instant,
    pub shutdown: CancellationToken,
    pub _permit: Option<OwnedSemaphorePermit>,
}

/// A query that runs: its engine stream, its bounds, its record and whom it runs for.
pub(crate) struct Running {
    pub stream: SendableRecordBatchStream,
    pub bounds: Bounds,
    pub record: Arc<QueryRecord>,
    pub principal: Principal,
}

impl Running {
    /// The query's batches under its bounds: past the deadline, or once the shutdown's grace
    /// is over, the stream ends with an error; an engine error becomes the caller's status.
    /// Dropping the stream cancels the query.
    pub fn batches(
        self,
    ) -> impl futures::stream::FusedStream<Item = Result<RecordBatch, Status>> + Send + 'static
    {
        futures::stream::unfold(Some(self), |state| async move {
            let mut run = state?;
            let next = tokio::select! {
                biased;
                _ = run.bounds.shutdown.cancelled() => {
                    run.record.set(Outcome::ShutDown);
                    return Some((
                        Err(Status::unavailable(
                            "the server is shutting down; the query was cancelled",
                        )),
                        None,
                    ));
                }
                _ = tokio::time::sleep_until(run.bounds.deadline) => {
                    run.record.set(Outcome::TimedOut);
                    return Some((
                        Err(Status::deadline_exceeded(
                            "the query ran longer than the server's --query-timeout and was \
                             cancelled",
                        )),
                        None,
                    ));
                }
                next = run.stream.next() => next,
            };
            match next {
                Some(Ok(batch)) => {
                    run.record
                        .rows
                        .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    Some((Ok(batch), Some(run)))
                }
                Some(Err(err)) => {
                    run.record.set(Outcome::Failed);
                    let status = status_for_principal(
                        crate::error::PitlakeError::from_datafusion(err),
                        &run.principal,
                    );
                    tracing::info!(
                        target: "pitlake::flight",
                        user = %run.record.user,
                        query_id = %run.record.query_id,
                        error = status.message(),
                        "query failed"
                    );
                    Some((Err(status), None))
                }
                None => {
                    run.record.set(Outcome::Finished);
                    None
                }
            }
        })
        // Polled again after its end (an encoder asking for more), it stays ended.
        .fuse()
    }
}

/// Encodes a query's batches as Flight data under its bounds.
pub(crate) fn flight_stream(running: Running) -> FlightStream {
    let schema = running.stream.schema();
    let record = running.record.clone();
    let batches = running
        .batches()
        .map(|item| item.map_err(|status| FlightError::Tonic(Box::new(status))));
    let encoded = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches);
    Box::pin(encoded.map(move |item| match item {
        Ok(data) => {
            record.sent((data.data_header.len() + data.data_body.len()) as u64);
            Ok(data)
        }
        Err(FlightError::Tonic(status)) => Err(*status),
        Err(other) => Err(Status::internal(format!(
            "encoding the result failed: {other}"
        ))),
    }))
}
