//! `pitlake serve`: flags and files become a validated [`ServerConfig`]; the server runs until
//! SIGTERM or Ctrl-C, then stops gracefully.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::cli::args::{MemoryLimit, ReloadInterval, ServeArgs};
use crate::engine::Engine;
use crate::error::{PitlakeError, Result};
use crate::flight::auth::AuthFormat;
use crate::flight::config::default_concurrent_logins;
use crate::flight::{
    AuthConfig, Limits, RunningServer, ServerConfig, SigningSecrets, Transport, hash_password,
    new_static_token,
};

/// The environment variable that may hold the auth settings inline.
const AUTH_ENV: &str = "PITLAKE_AUTH";

/// Runs the server (or, with `--hash-password`, hashes a password and exits).
pub async fn run(engine: Engine, args: ServeArgs) -> Result<()> {
    if args.hash_password {
        let mut password = String::new();
        std::io::stdin().lock().read_line(&mut password)?;
        let password = password.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(PitlakeError::Config {
                name: "--hash-password".into(),
                message: "standard input held no password".into(),
            });
        }
        let mut out = std::io::stdout();
        writeln!(out, "{}", hash_password(password)?)?;
        return Ok(());
    }
    if args.new_token {
        let (token, sha256) = new_static_token()?;
        let mut out = std::io::stdout();
        writeln!(out, "token:     {token}")?;
        writeln!(
            out,
            "auth file: tokens = [{{ sha256 = \"{sha256}\", expires = \"…\" }}]"
        )?;
        return Ok(());
    }
    engine.warehouse().check_exists()?;
    let config = server_config(&args)?;
    let warehouse = engine.warehouse().location().display();
    let server = crate::flight::start(Arc::new(engine), config).await?;
    eprintln!(
        "pitlake: serving warehouse {warehouse} over Flight SQL at {} (SIGTERM or Ctrl-C stops)",
        server.url()
    );
    serve_until_stopped(&server).await;
    eprintln!(
        "pitlake: stopping; {} running quer{} may finish within {}",
        server.active_queries(),
        if server.active_queries() == 1 {
            "y"
        } else {
            "ies"
        },
        humantime::format_duration(args.shutdown_grace)
    );
    server.shutdown().await
}

fn server_config(args: &ServeArgs) -> Result<ServerConfig> {
    let (auth, auth_origin) = auth_settings(args)?;
    let config = ServerConfig {
        listen: args.listen,
        transport: transport(args)?,
        limits: limits(args),
        auth,
        auth_origin,
        signing: signing_secrets(args)?,
        http_listen: args.http_listen.as_deref().map(http_address).transpose()?,
    };
    config.validate()?;
    Ok(config)
}

/// `--http-listen`: an address, or a port alone (`8080`, `:8080`) on loopback.
fn http_address(text: &str) -> Result<std::net::SocketAddr> {
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| PitlakeError::Config {
        name: "--http-listen".into(),
        message: format!(
            "`{text}` is not an address; write 127.0.0.1:8080, 0.0.0.0:8080 or a port alone \
             (loopback)"
        ),
    })
}

/// The signing secrets from `--signing-key-file` or `PITLAKE_SIGNING_KEY`; `None` when neither
/// is given (a fresh secret per process).
fn signing_secrets(args: &ServeArgs) -> Result<Option<SigningSecrets>> {
    let from_env = std::env::var("PITLAKE_SIGNING_KEY").ok();
    match (&args.signing_key_file, from_env) {
        (Some(_), Some(_)) => Err(PitlakeError::Config {
            name: "--signing-key-file".into(),
            message: "PITLAKE_SIGNING_KEY is set too; give the signing secrets one way".into(),
        }),
        (Some(path), None) => SigningSecrets::from_file(path).map(Some),
        (None, Some(current)) => {
            let previous = std::env::var("PITLAKE_SIGNING_KEY_PREVIOUS").unwrap_or_default();
            let previous: Vec<&str> = previous
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            SigningSecrets::parse(&current, &previous, "PITLAKE_SIGNING_KEY").map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// The auth settings, from `--auth-file` or else the environment, and the file they came from.
fn auth_settings(args: &ServeArgs) -> Result<(AuthConfig, Option<PathBuf>)> {
    match (&args.auth_file, std::env::var(AUTH_ENV)) {
        (Some(path), _) => Ok((AuthConfig::from_file(path)?, Some(path.clone()))),
        (None, Ok(text)) => {
            let format = if text.trim_start().starts_with('{') {
                AuthFormat::Json
            } else {
                AuthFormat::Toml
            };
            Ok((AuthConfig::parse(&text, format, AUTH_ENV)?, None))
        }
        (None, Err(_)) => Err(PitlakeError::Config {
            name: "--auth-file".into(),
            message: format!(
                "the server needs users: give --auth-file (TOML or JSON) or set {AUTH_ENV}; \
                 see docs/operations.md"
            ),
        }),
    }
}

/// TLS from `--tls-cert`/`--tls-key`, or plaintext when asked for explicitly.
fn transport(args: &ServeArgs) -> Result<Transport> {
    match (&args.tls_cert, &args.tls_key, args.insecure_plaintext) {
        (Some(cert), Some(key), _) => {
            Transport::tls_from_files(cert, key, args.tls_client_ca.as_deref())
        }
        (_, _, true) => Ok(Transport::Plaintext {
            non_loopback: args.insecure_plaintext_on_network,
        }),
        _ => Err(PitlakeError::Config {
            name: "--tls-cert".into(),
            message: "the server encrypts connections: give --tls-cert and --tls-key (PEM), \
                      or --insecure-plaintext to serve unencrypted on a loopback address"
                .into(),
        }),
    }
}

/// The server's bounds from the flags; the rest keep their defaults.
fn limits(args: &ServeArgs) -> Limits {
    Limits {
        max_concurrent_queries: args.max_concurrent_queries as usize,
        query_timeout: args.query_timeout,
        query_memory_limit: args.query_memory_limit.and_then(|MemoryLimit(limit)| limit),
        shutdown_grace: args.shutdown_grace,
        drain_delay: args.drain_delay,
        max_connections: args.max_connections as usize,
        max_streams_per_connection: args.max_streams_per_connection,
        max_concurrent_logins: args
            .max_concurrent_logins
            .map_or_else(default_concurrent_logins, |n| n as usize),
        max_queued_logins: args.max_queued_logins as usize,
        max_failed_logins_per_user: args.max_failed_logins_per_user,
        max_failed_logins_per_peer: args.max_failed_logins_per_peer,
        login_lockout: args.login_lockout,
        max_parameter_bytes: args.max_parameter_bytes,
        max_parameter_bytes_per_user: args.max_parameter_bytes_per_user,
        max_parameter_bytes_total: args.max_parameter_bytes_total,
        auth_reload_interval: {
            let ReloadInterval(every) = args.auth_reload_interval;
            every
        },
        ..Limits::default()
    }
}

/// Serves until Ctrl-C or SIGTERM; on SIGHUP (Unix) re-reads the auth file.
async fn serve_until_stopped(server: &RunningServer) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            let stop = stop_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = hangup.recv() => match server.reload_auth().await {
                        Ok(()) => eprintln!("pitlake: SIGHUP: auth settings re-read"),
                        Err(err) => eprintln!(
                            "pitlake: SIGHUP: the auth settings were not re-read, the previous \
                             ones stay in force: {err}"
                        ),
                    },
                }
            }
        }
    }
    let _ = server;
    stop_signal().await;
}

/// Waits for Ctrl-C or, on Unix, SIGTERM.
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
