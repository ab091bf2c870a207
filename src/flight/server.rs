//! Starting and stopping the server.
//!
//! [`start`] binds, then serves in a background task and returns a [`RunningServer`]. Stopping
//! is graceful: [`RunningServer::shutdown`] stops accepting connections and calls, lets running
//! queries finish for the grace period, then cancels the ones still running (their clients
//! receive `UNAVAILABLE`), and returns once every connection has closed. Dropping a
//! [`RunningServer`] stops it at once.
//!
//! Bounds that hold before any handler runs: at most `max_connections` connections (more are
//! closed as they arrive, see `connections`), `max_streams_per_connection` calls on each, a TLS
//! handshake within [`TLS_HANDSHAKE_TIMEOUT`], HTTP/2 and TCP keepalives that notice vanished
//! clients. The auth file is re-read when it changes (checked every `auth_reload_interval`) and
//! on [`RunningServer::reload_auth`] (SIGHUP in `pitlake serve`); a file that does not parse
//! leaves the previous settings in force.

use super::uploads::Uploads;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
use crate::flight::auth::{AuthConfig, Authenticator};
use crate::flight::config::{Limits, ServerConfig, Transport};
use crate::flight::connections::{Refusals, limit_connections};
use crate::flight::keys::SigningSecrets;
use crate::flight::layer::AuthLayer;
use crate::flight::prepared::{ParameterLimits, PreparedStatements};
use crate::flight::service::{PitlakeFlightSql, Shared, sql_info};
use crate::flight::throttle::{LoginLimits, LoginStats, LoginThrottle};
use crate::flight::tickets::TicketSigner;

/// Prepared statements unused for this long are dropped.
const PREPARED_IDLE: Duration = Duration::from_secs(3600);

/// After the grace period, how long cancelled streams get to close before the server task is
/// stopped regardless (a client that stopped reading cannot see its stream end).
const HARD_STOP_AFTER_GRACE: Duration = Duration::from_secs(10);
/// After the grace period, how long HTTP connections get to finish sending an answer (a
/// cancelled query's error, or the last bytes of one that ended) before the server stops.
const HTTP_CLOSE_AFTER_GRACE: Duration = Duration::from_secs(2);

pub use super::config::TLS_HANDSHAKE_TIMEOUT;

/// A server serving in the background.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    tls: bool,
    stop_accepting: CancellationToken,
    cancel_queries: CancellationToken,
    active: Arc<AtomicUsize>,
    grace: Duration,
    drain_delay: Duration,
    task: Option<JoinHandle<std::result::Result<(), tonic::transport::Error>>>,
    auth: Arc<Authenticator>,
    auth_origin: Option<PathBuf>,
    logins: Arc<LoginThrottle>,
    refused_connections: Arc<Refusals>,
    /// Cancelled when shutdown begins: `/readyz` answers 503 from then on.
    draining: CancellationToken,
    /// The HTTP endpoint (`--http-listen`): its address, its task and what stops it.
    http: Option<(SocketAddr, JoinHandle<()>, CancellationToken)>,
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

    /// The address `/healthz`, `/readyz` and `/metrics` are served on, if they are.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(addr, _, _)| *addr)
    }

    /// Queries whose result streams are open right now.
    pub fn active_queries(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Counters of the login gates (the most password checks that ran at once).
    pub fn login_stats(&self) -> LoginStats {
        self.logins.stats()
    }

    /// Connections closed so far because `max_connections` were open.
    pub fn refused_connections(&self) -> usize {
        self.refused_connections.count()
    }

    /// Re-reads the auth file: users, roles, grants, static tokens and `token_epoch`s take
    /// effect for every later call; sessions of users whose epoch is unchanged stay valid. On an
    /// error the previous settings stay in force.
    pub async fn reload_auth(&self) -> Result<()> {
        let Some(path) = &self.auth_origin else {
            return Err(PitlakeError::Config {
                name: "--auth-file".into(),
                message: "the auth settings came from PITLAKE_AUTH, which a running server \
                          cannot re-read; restart it, or use --auth-file"
                    .into(),
            });
        };
        reload_from(path, &self.auth).await
    }

    /// Stops gracefully (see the module documentation) and reports how serving ended.
    pub async fn shutdown(mut self) -> Result<()> {
        self.draining.cancel();
        if !self.drain_delay.is_zero() {
            // Not ready, still serving: a load balancer polling /readyz stops sending here
            // before connections are refused.
            tracing::info!(
                target: "pitlake::flight",
                drain_ms = self.drain_delay.as_millis() as u64,
                "shutting down: not ready; still taking calls for the drain delay"
            );
            tokio::time::sleep(self.drain_delay).await;
        }
        let grace_ends = tokio::time::Instant::now() + self.grace;
        let outcome = self.stop_serving().await;
        // The HTTP endpoint answered 503 on /readyz throughout; now it stops too. A REST
        // answer whose query has ended may still be on its way to the client: connections get
        // what is left of the grace (and a little, as cancelled Flight streams do) to send it.
        if let Some((_, mut task, stop)) = self.http.take() {
            stop.cancel();
            let until = grace_ends.max(tokio::time::Instant::now()) + HTTP_CLOSE_AFTER_GRACE;
            if tokio::time::timeout_at(until, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(
                    target: "pitlake::http",
                    "HTTP connections still open after the grace period; closed them"
                );
            }
        }
        outcome
    }

    /// Stops the Flight service: no new calls, the grace period, then cancellation.
    async fn stop_serving(&mut self) -> Result<()> {
        tracing::info!(
            target: "pitlake::flight",
            running = self.active_queries(),
            grace_ms = self.grace.as_millis() as u64,
            "shutting down: no new calls; running queries get the grace period"
        );
        self.stop_accepting.cancel();
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        let cancel = self.cancel_queries.clone();
        let grace = self.grace;
        let grace_ends = tokio::time::Instant::now() + grace;
        let outcome = tokio::select! {
            joined = &mut task => Some(joined),
            _ = tokio::time::sleep(grace) => None,
        };
        let joined = match outcome {
            Some(joined) => {
                // Answers of the HTTP port run outside the Flight task: they get what is left
                // of the grace too.
                while self.active_queries() > 0 && tokio::time::Instant::now() < grace_ends {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if self.active_queries() > 0 {
                    tracing::info!(
                        target: "pitlake::flight",
                        running = self.active_queries(),
                        "grace period over: cancelling running queries"
                    );
                }
                joined
            }
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
        self.draining.cancel();
        self.stop_accepting.cancel();
        self.cancel_queries.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some((_, task, stop)) = self.http.take() {
            stop.cancel();
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
    log_auth_warnings(&config.auth);
    let secrets = match &config.signing {
        Some(secrets) => secrets.clone(),
        None => SigningSecrets::random()?,
    };
    let auth = authenticator(&config.auth, &secrets).await?;
    let limits = &config.limits;
    let shared = Arc::new(shared_state(engine, auth.clone(), limits, &secrets)?);
    let (cancel_queries, active, logins, metrics) = (
        shared.cancel_queries.clone(),
        shared.active.clone(),
        shared.logins.clone(),
        shared.metrics.clone(),
    );
    let draining = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let http = match config.http_listen {
        Some(at) => {
            let state = super::http::HttpState {
                metrics: metrics.clone(),
                engine: shared.engine.clone(),
                active: active.clone(),
                draining: draining.clone(),
                stopped: stop_accepting.clone(),
                service: PitlakeFlightSql::new(shared.clone()),
                auth: auth.clone(),
            };
            let stop = CancellationToken::new();
            // A connection answering a query stays open as long as the query may run, and a
            // little longer for a slow reader; never longer.
            let hard_limit = limits.query_timeout + Duration::from_secs(60);
            let (addr, task) =
                super::http::start(at, state, &config.transport, hard_limit, stop.clone()).await?;
            let scheme = if config.transport.is_tls() {
                "https"
            } else {
                "http"
            };
            tracing::info!(
                target: "pitlake::flight",
                "health, readiness, metrics and the REST API on {scheme}://{addr} (/healthz, \
                 /readyz, /metrics, /v1/openapi.json)"
            );
            Some((addr, task, stop))
        }
        None => None,
    };
    let builder = server_builder(limits, &config.transport)?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| PitlakeError::Config {
            name: "--listen".into(),
            message: format!("cannot listen on {}: {e}", config.listen),
        })?;
    let addr = listener.local_addr()?;
    let refused_connections = Arc::new(Refusals::default());
    let incoming = limit_connections(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        limits.max_connections,
        refused_connections.clone(),
    );
    let service =
        FlightServiceServer::new(PitlakeFlightSql::new(shared)).max_decoding_message_size(16 << 20);
    let stop = stop_accepting.clone();
    let serving = builder
        .layer(AuthLayer::new(auth.clone(), metrics))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await });
    let task = tokio::spawn(serving);
    if let (Some(path), Some(every)) = (&config.auth_origin, limits.auth_reload_interval) {
        tokio::spawn(watch_auth_file(
            path.clone(),
            auth.clone(),
            every,
            stop_accepting.clone(),
        ));
    }
    log_listening(&config, addr);
    Ok(RunningServer {
        addr,
        tls: config.transport.is_tls(),
        stop_accepting,
        cancel_queries,
        active,
        grace: limits.shutdown_grace,
        drain_delay: limits.drain_delay,
        task: Some(task),
        auth,
        auth_origin: config.auth_origin.clone(),
        logins,
        refused_connections,
        draining,
        http,
    })
}

/// The authenticator of these settings (making its decoy hashes runs argon2, off the runtime).
async fn authenticator(
    settings: &AuthConfig,
    secrets: &SigningSecrets,
) -> Result<Arc<Authenticator>> {
    let (settings, secrets) = (settings.clone(), secrets.clone());
    let auth = tokio::task::spawn_blocking(move || Authenticator::new(settings, &secrets))
        .await
        .map_err(|e| PitlakeError::Internal(format!("starting authentication: {e}")))??;
    Ok(Arc::new(auth))
}

/// What every call of the service shares: the engine, authentication, tickets, prepared
/// statements, query slots and the login throttle.
fn shared_state(
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    limits: &Limits,
    secrets: &SigningSecrets,
) -> Result<Shared> {
    let logins = Arc::new(LoginThrottle::new(LoginLimits {
        max_concurrent: limits.max_concurrent_logins,
        max_queued: limits.max_queued_logins,
        max_failed_per_user: limits.max_failed_logins_per_user,
        max_failed_per_peer: limits.max_failed_logins_per_peer,
        lockout: limits.login_lockout,
    }));
    let pool = engine.memory_pool();
    let pool_share = match pool.memory_limit() {
        datafusion::execution::memory_pool::MemoryLimit::Finite(limit) => limit / 4,
        _ => 1 << 30,
    };
    let per_user = limits
        .query_memory_limit
        .map_or(pool_share, |q| q.min(pool_share));
    let uploads = Arc::new(Uploads::new(pool, per_user, auth.token_ttl()));
    Ok(Shared {
        engine,
        auth,
        tickets: TicketSigner::new(limits.ticket_ttl, secrets),
        prepared: PreparedStatements::new(
            limits.max_prepared_per_user,
            PREPARED_IDLE,
            ParameterLimits {
                per_upload: limits.max_parameter_bytes,
                per_user: limits.max_parameter_bytes_per_user,
                total: limits.max_parameter_bytes_total,
            },
        ),
        slots: Arc::new(Semaphore::new(limits.max_concurrent_queries)),
        cancel_queries: CancellationToken::new(),
        active: Arc::new(AtomicUsize::new(0)),
        metrics: Arc::default(),
        uploads,
        sql_info: sql_info(limits)?,
        limits: limits.clone(),
        logins,
    })
}

/// The transport: keepalives, stream limits per connection, and TLS when configured.
fn server_builder(limits: &Limits, transport: &Transport) -> Result<Server> {
    let builder = Server::builder()
        // A client that vanished without closing is noticed, and its query dropped.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        // Streams past the limit are refused by HTTP/2 itself (clients queue them); the tower
        // limit holds back the calls of a client that ignores the setting.
        .max_concurrent_streams(limits.max_streams_per_connection)
        .concurrency_limit_per_connection(limits.max_streams_per_connection as usize);
    let Transport::Tls {
        cert_pem,
        key_pem,
        client_ca_pem,
    } = transport
    else {
        return Ok(builder);
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = client_ca_pem {
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    builder.tls_config(tls).map_err(|e| PitlakeError::Config {
        name: "--tls-cert".into(),
        message: format!("the certificate or key cannot be used: {e}"),
    })
}

/// The line a started server logs: where it listens and the bounds in force.
fn log_listening(config: &ServerConfig, addr: SocketAddr) {
    let limits = &config.limits;
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
        max_connections = limits.max_connections,
        max_streams_per_connection = limits.max_streams_per_connection,
        max_concurrent_logins = limits.max_concurrent_logins,
        password_check_memory_mib =
            (config.auth.max_password_check_bytes() * limits.max_concurrent_logins as u64) >> 20,
        "Flight SQL server listening"
    );
}

fn log_auth_warnings(auth: &AuthConfig) {
    for warning in auth.warnings() {
        tracing::warn!(target: "pitlake::flight", "auth settings: {warning}");
    }
}

/// Reads the auth file and puts it in force (or leaves the previous settings, on an error).
async fn reload_from(path: &Path, auth: &Arc<Authenticator>) -> Result<()> {
    let path = path.to_path_buf();
    let auth = auth.clone();
    // Reading is quick; making the decoy hashes runs argon2.
    tokio::task::spawn_blocking(move || {
        let config = AuthConfig::from_file(&path)?;
        if config.users().next().is_none() {
            return Err(PitlakeError::Config {
                name: "--auth-file".into(),
                message: format!(
                    "`{}` now defines no users; keeping the previous settings",
                    path.display()
                ),
            });
        }
        log_auth_warnings(&config);
        let users = config.users().count();
        auth.reload(config)?;
        tracing::info!(
            target: "pitlake::flight",
            auth_file = %path.display(),
            users,
            "auth settings re-read"
        );
        Ok(())
    })
    .await
    .map_err(|e| PitlakeError::Internal(format!("re-reading the auth file: {e}")))?
}

fn digest_of(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok().map(|bytes| {
        ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .to_vec()
    })
}

/// Re-reads the auth file whenever its content changes, until `stop`.
async fn watch_auth_file(
    path: PathBuf,
    auth: Arc<Authenticator>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut last = digest_of(&path);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || digest_of(&path))
                .await
                .ok()
                .flatten()
        };
        // A file that is missing for a moment (replaced by a rename) is not a change.
        if now.is_none() || now == last {
            continue;
        }
        last = now;
        if let Err(err) = reload_from(&path, &auth).await {
            tracing::error!(
                target: "pitlake::flight",
                auth_file = %path.display(),
                error = %err,
                "the auth file changed but cannot be used; the previous settings stay in force"
            );
        }
    }
}
