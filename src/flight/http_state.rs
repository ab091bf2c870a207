//! What the HTTP port's handlers share (the probes in `http`, the REST API in `rest`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio_util::sync::CancellationToken;

use super::auth::Authenticator;
use super::metrics::Metrics;
use super::service::PitlakeFlightSql;
use crate::engine::Engine;

/// What the HTTP handlers read.
#[derive(Clone)]
pub(crate) struct HttpState {
    pub metrics: Arc<Metrics>,
    pub engine: Arc<Engine>,
    pub active: Arc<AtomicUsize>,
    /// Cancelled when shutdown begins.
    pub draining: CancellationToken,
    /// Cancelled when the server stops taking calls (after the drain delay): the API then
    /// refuses new ones, as the Flight port does.
    pub stopped: CancellationToken,
    /// The Flight SQL service, whose statement path the REST API shares.
    pub service: PitlakeFlightSql,
    /// Who is who.
    pub auth: Arc<Authenticator>,
}

impl HttpState {
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    pub fn service_metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// One HTTP connection, as its handlers see it (a request extension).
#[derive(Clone)]
pub(crate) struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// Requests in progress on it (from arrival to the end of the answer): a busy connection
    /// is not closed for a newcomer, nor at the end of its lifetime until its answer is sent.
    pub busy: Arc<AtomicUsize>,
    /// Cancelled to close the connection at once (evicted, or an answer past its deadline).
    pub closed: CancellationToken,
}
