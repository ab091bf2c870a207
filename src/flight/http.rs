//! The HTTP side of `pitlake serve --http-listen ADDR`: `/healthz` (the process answers),
//! `/readyz` (the warehouse answers and takes commits safely; 503 once shutdown has begun, so a
//! load balancer stops sending before connections close), `/metrics` (Prometheus text), and
//! the REST API under `/v1` (`rest`).
//!
//! The three probes carry no data and take no credentials; `/v1` takes the same tokens and
//! grants as Flight. The port speaks TLS when the Flight port does (the same certificate,
//! key and client CA), plain HTTP when Flight is plaintext; it binds to loopback unless an
//! address says otherwise (docs/operations.md).

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

use super::config::Transport;
pub(crate) use super::http_state::{Connection, HttpState};
use super::metrics::Gauges;
use crate::error::{PitlakeError, Result};

/// How long `/readyz` waits for the warehouse before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves until `stop` is cancelled; returns the bound address and the task.
/// `hard_limit` bounds how long one connection may stay open, busy or not.
pub(crate) async fn start(
    addr: SocketAddr,
    state: HttpState,
    transport: &Transport,
    hard_limit: Duration,
    stop: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let tls = tls_acceptor(transport)?;
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
        .merge(super::rest::routes())
        .fallback(super::rest::not_found)
        .method_not_allowed_fallback(super::rest::method_not_allowed)
        .with_state(state);
    let task = tokio::spawn(accept(listener, app, tls, hard_limit, stop));
    Ok((bound, task))
}

/// The TLS side of the port: Flight's certificate, key and client CA.
fn tls_acceptor(transport: &Transport) -> Result<Option<tokio_rustls::TlsAcceptor>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let Transport::Tls {
        cert_pem,
        key_pem,
        client_ca_pem,
    } = transport
    else {
        return Ok(None);
    };
    let bad = |what: &str, e: &dyn std::fmt::Display| PitlakeError::Config {
        name: "--tls-cert".into(),
        message: format!("the HTTP port cannot use the TLS settings: {what}: {e}"),
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("the certificate chain", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad("the private key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("the protocol versions", &e))?;
    let builder = match client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots
                    .add(cert.map_err(|e| bad("the client CA", &e))?)
                    .map_err(|e| bad("the client CA", &e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| bad("the client CA", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("the certificate and key", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Connections kept open at most while some are idle: past it, the oldest idle one is closed
/// for a new one.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's headers, and stay idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may stay open without answering: past it, it closes once its current
/// answer is sent.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The most HTTP connections open at all, busy ones included.
const MAX_OPEN: usize = 256;

/// Counts a request in progress on its connection while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::SeqCst);
        Self(busy.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection as the accept loop tracks it.
struct Tracked {
    closed: CancellationToken,
    busy: Arc<AtomicUsize>,
}

/// Accepts connections until `stop`: each gets [`HEADER_TIMEOUT`] to send a request,
/// [`CONNECTION_LIFETIME`] to be idle in all, and `hard_limit` to be open at all; at most
/// [`MAX_CONNECTIONS`] are open, the oldest idle one closed first, so silent clients can
/// neither pile up descriptors (the Flight port shares them) nor keep the probes out, nor cut
/// another client's answer short.
async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    hard_limit: Duration,
    stop: CancellationToken,
) {
    let mut open: std::collections::VecDeque<Tracked> = std::collections::VecDeque::new();
    loop {
        let (stream, peer) = tokio::select! {
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
        open.retain(|c| !c.closed.is_cancelled());
        let idle = open
            .iter()
            .filter(|c| c.busy.load(Ordering::SeqCst) == 0)
            .count();
        // Past MAX_CONNECTIONS the oldest idle connection makes room; connections in the
        // middle of a request are never closed for a newcomer. Busy ones are bounded by what a
        // request can hold (query slots, login admission), and all of them by MAX_OPEN.
        if open.len() >= MAX_CONNECTIONS && idle > 0 {
            if let Some(at) = open.iter().position(|c| c.busy.load(Ordering::SeqCst) == 0)
                && let Some(oldest) = open.remove(at)
            {
                oldest.closed.cancel();
            }
        } else if open.len() >= MAX_OPEN {
            tracing::info!(
                target: "pitlake::http",
                peer = %peer,
                "connection refused: {MAX_OPEN} connections are in the middle of requests"
            );
            drop(stream);
            continue;
        }
        let connection = Connection {
            peer,
            busy: Arc::default(),
            closed: CancellationToken::new(),
        };
        let closed = connection.closed.clone();
        open.push_back(Tracked {
            closed: closed.clone(),
            busy: connection.busy.clone(),
        });
        let app = app.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                request.extensions_mut().insert(connection.clone());
                let mut app = app.clone();
                // Busy from the request's arrival until its answer is sent (or dropped).
                let busy = Busy::new(&connection.busy);
                async move {
                    use futures::StreamExt;
                    use tower_service::Service;
                    let response = app.call(request.map(axum::body::Body::new)).await?;
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
                            let _ = &busy;
                            chunk
                        }))
                    }))
                }
            });
            let _ = stream.set_nodelay(true);
            match tls {
                None => {
                    serve(
                        hyper_util::rt::TokioIo::new(stream),
                        service,
                        &closed,
                        &stop,
                        hard_limit,
                    )
                    .await
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        super::config::TLS_HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    );
                    let stream = tokio::select! {
                        _ = closed.cancelled() => None,
                        _ = stop.cancelled() => None,
                        done = handshake => match done {
                            Ok(Ok(stream)) => Some(stream),
                            Ok(Err(e)) => {
                                tracing::debug!(target: "pitlake::http", peer = %peer, error = %e, "TLS handshake failed");
                                None
                            }
                            Err(_) => None,
                        },
                    };
                    if let Some(stream) = stream {
                        serve(
                            hyper_util::rt::TokioIo::new(stream),
                            service,
                            &closed,
                            &stop,
                            hard_limit,
                        )
                        .await
                    }
                }
            }
            closed.cancel();
        });
    }
    // No new connections; those open finish the answer they are sending (idle ones close at
    // once, see `serve`). The process must not exit under an answer still in the socket's
    // buffers, though its query has ended: the caller bounds this wait by the grace.
    drop(listener);
    for connection in open {
        connection.closed.cancelled().await;
    }
}

/// Serves one connection: closed at once when evicted, gracefully (after its answer) at the
/// end of its lifetime or when the server stops, and at once past `hard_limit`.
async fn serve<I, S>(
    io: I,
    service: S,
    closed: &CancellationToken,
    stopping: &CancellationToken,
    hard_limit: Duration,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
    let hard = tokio::time::sleep(hard_limit.max(CONNECTION_LIFETIME));
    tokio::pin!(lifetime, hard);
    let mut ending = false;
    loop {
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = &mut hard => return,
            _ = &mut lifetime, if !ending => {
                ending = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = stopping.cancelled(), if !ending => {
                ending = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = connection.as_mut() => return,
        }
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
