//! The HTTP side of `pitlake serve --http-listen ADDR`: `/healthz` (the process answers),
//! `/readyz` (the warehouse answers and takes commits safely; 503 once shutdown has begun, so a
//! load balancer stops sending before connections close) and `/metrics` (Prometheus text).
//!
//! These three paths carry no data and take no credentials; the port binds to loopback unless
//! an address says otherwise, and deployments expose it to the cluster's probes and scraper
//! only (docs/operations.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use datafusion::execution::memory_pool::MemoryLimit;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::{Gauges, Metrics};
use crate::engine::Engine;
use crate::error::{PitlakeError, Result};

/// How long `/readyz` waits for the warehouse before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the HTTP handlers read.
#[derive(Clone)]
pub(crate) struct HttpState {
    pub metrics: Arc<Metrics>,
    pub engine: Arc<Engine>,
    pub active: Arc<AtomicUsize>,
    /// Cancelled when shutdown begins.
    pub draining: CancellationToken,
}

/// Binds `addr` and serves until `stop` is cancelled; returns the bound address and the task.
pub(crate) async fn start(
    addr: SocketAddr,
    state: HttpState,
    stop: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| PitlakeError::Config {
            name: "--http-listen".into(),
            message: format!("cannot listen on {addr}: {e}"),
        })?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let task = tokio::spawn(accept(listener, app, stop));
    Ok((bound, task))
}

/// The most HTTP connections open at once; past it, the oldest is closed for the new one.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's headers, and stay idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open at all.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Accepts connections until `stop`: each gets [`HEADER_TIMEOUT`] to send a request and
/// [`CONNECTION_LIFETIME`] in all, and at most [`MAX_CONNECTIONS`] are open, the oldest closed
/// first, so silent clients can neither pile up descriptors (the Flight port shares them) nor
/// keep the probes out.
async fn accept(listener: tokio::net::TcpListener, app: Router, stop: CancellationToken) {
    let mut open: std::collections::VecDeque<CancellationToken> = std::collections::VecDeque::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(target: "pitlake::http", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        open.retain(|c| !c.is_cancelled());
        while open.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = open.pop_front() {
                oldest.cancel();
            }
        }
        let closed = CancellationToken::new();
        open.push_back(closed.clone());
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = closed.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_LIFETIME, connection) => {}
            }
            closed.cancel();
        });
    }
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match tokio::time::timeout(READY_TIMEOUT, state.engine.warehouse().ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n"),
        Ok(Err(e)) => {
            // The reason goes to the log, not to whoever can reach the port.
            tracing::warn!(target: "pitlake::http", error = %e, "not ready: the warehouse");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the warehouse does not answer (see the server log)\n",
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the warehouse did not answer in time\n",
        ),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let pool = state.engine.memory_pool();
    let stats = state.engine.spill_stats();
    let text = state.metrics.render(&Gauges {
        running: state.active.load(Ordering::SeqCst),
        memory_used: pool.reserved(),
        memory_limit: match pool.memory_limit() {
            MemoryLimit::Finite(limit) => Some(limit),
            _ => None,
        },
        spills: stats.0,
        spilled_bytes: stats.1,
        ready: !state.draining.is_cancelled(),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
