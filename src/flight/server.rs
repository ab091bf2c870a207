//! Starting and stopping the server.
//!
//! [`start`] binds, then serves in a background task and returns a [`RunningServer`]. Stopping
//! is graceful: [`RunningServer::shutdown`] stops accepting connections and calls, lets running
//! queries finish for the grace period, then cancels the ones still running (their clients
//! receive `UNAVAILABLE`), and returns once every connection has closed. Dropping a
//! [`RunningServer`] stops it at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::engine::Engine;
use crate::error::{PitlakeError, Result};
use crate::flight::auth::Authenticator;
use crate::flight::config::{ServerConfig, Transport};
use crate::flight::layer::AuthLayer;
use crate::flight::prepared::PreparedStatements;
use crate::flight::service::{PitlakeFlightSql, Shared, sql_info};
use crate::flight::tickets::TicketSigner;

/// Prepared statements unused for this long are dropped.
const PREPARED_IDLE: Duration = Duration::from_secs(3600);

/// After the grace period, how long cancelled streams get to close before the server task is
/// stopped regardless (a client that stopped reading cannot see its stream end).
const HARD_STOP_AFTER_GRACE: Duration = Duration::from_secs(10);

/// A server serving in the background.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    tls: bool,
    stop_accepting: CancellationToken,
    cancel_queries: CancellationToken,
    active: Arc<AtomicUsize>,
    grace: Duration,
    task: Option<JoinHandle<std::result::Result<(), tonic::transport::Error>>>,
}

impl RunningServer {
    /// The address it listens on (with the port chosen when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients connect to: `https://` or `http://`, with the address.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Queries whose result streams are open right now.
    pub fn active_queries(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops gracefully (see the module documentation) and reports how serving ended.
    pub async fn shutdown(mut self) -> Result<()> {
        tracing::info!(
            target: "pitlake::flight",
            running = self.active_queries(),
            grace_s = self.grace.as_secs(),
            "shutting down: no new calls; running queries get the grace period"
        );
        self.stop_accepting.cancel();
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        let cancel = self.cancel_queries.clone();
        let grace = self.grace;
        let outcome = tokio::select! {
            joined = &mut task => Some(joined),
            _ = tokio::time::sleep(grace) => None,
        };
        let joined = match outcome {
            Some(joined) => joined,
            None => {
                tracing::info!(
                    target: "pitlake::flight",
                    running = self.active_queries(),
                    "grace period over: cancelling running queries"
                );
                cancel.cancel();
                match tokio::time::timeout(HARD_STOP_AFTER_GRACE, &mut task).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        task.abort();
                        tracing::warn!(
                            target: "pitlake::flight",
                            "connections still open after the grace period; closed them"
                        );
                        return Ok(());
                    }
                }
            }
        };
        cancel.cancel();
        match joined {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(PitlakeError::Io(std::io::Error::other(format!(
                "the Flight server failed: {err}"
            )))),
            Err(err) => Err(PitlakeError::Internal(format!(
                "the Flight server task failed: {err}"
            ))),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop_accepting.cancel();
        self.cancel_queries.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Validates the configuration, binds, and starts serving in the background.
pub async fn start(engine: Arc<Engine>, config: ServerConfig) -> Result<RunningServer> {
    config.validate()?;
    // The dependency graph enables more than one rustls crypto provider (ring here, aws-lc-rs
    // through the AWS SDK), so rustls cannot pick one by itself. Choose ring for the process;
    // if something installed a provider already, that one stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let auth = Arc::new(Authenticator::new(config.auth.clone())?);
    let limits = config.limits.clone();
    let cancel_queries = CancellationToken::new();
    let active = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Shared {
        engine,
        auth: auth.clone(),
        tickets: TicketSigner::new(limits.ticket_ttl)?,
        prepared: PreparedStatements::new(limits.max_prepared_per_user, PREPARED_IDLE),
        slots: Arc::new(Semaphore::new(limits.max_concurrent_queries)),
        cancel_queries: cancel_queries.clone(),
        active: active.clone(),
        sql_info: sql_info(&limits)?,
        limits: limits.clone(),
    });

    let mut builder = Server::builder()
        // A client that vanished without closing is noticed, and its query dropped.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Transport::Tls {
        cert_pem,
        key_pem,
        client_ca_pem,
    } = &config.transport
    {
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        if let Some(ca) = client_ca_pem {
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(tls).map_err(|e| PitlakeError::Config {
            name: "--tls-cert".into(),
            message: format!("the certificate or key cannot be used: {e}"),
        })?;
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| PitlakeError::Config {
            name: "--listen".into(),
            message: format!("cannot listen on {}: {e}", config.listen),
        })?;
    let addr = listener.local_addr()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let service =
        FlightServiceServer::new(PitlakeFlightSql::new(shared)).max_decoding_message_size(16 << 20);
    let stop_accepting = CancellationToken::new();
    let stop = stop_accepting.clone();
    let serving = builder
        .layer(AuthLayer::new(auth))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await });
    let task = tokio::spawn(serving);
    tracing::info!(
        target: "pitlake::flight",
        %addr,
        tls = config.transport.is_tls(),
        mtls = matches!(&config.transport, Transport::Tls { client_ca_pem: Some(_), .. }),
        users = config.auth.users().count(),
        auth_file = ?config.auth_origin,
        max_concurrent_queries = limits.max_concurrent_queries,
        query_timeout_s = limits.query_timeout.as_secs(),
        query_memory_limit = ?limits.query_memory_limit,
        "Flight SQL server listening"
    );
    Ok(RunningServer {
        addr,
        tls: config.transport.is_tls(),
        stop_accepting,
        cancel_queries,
        active,
        grace: limits.shutdown_grace,
        task: Some(task),
    })
}
