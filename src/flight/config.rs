//! The server's validated settings: where it listens, how the connection is protected, its
//! limits and its users. Built by the CLI from flags and files; checked before anything binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{PitlakeError, Result};
use crate::flight::auth::AuthConfig;
use crate::flight::keys::SigningSecrets;

/// A TLS handshake (on the Flight port or the HTTP port) must finish within this, or the
/// connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How connections are protected. Its `Debug` shows no key material.
#[derive(Clone)]
pub enum Transport {
    /// TLS (rustls) with a certificate chain and key in PEM; with `client_ca`, clients must
    /// present a certificate signed by it (mutual TLS).
    Tls {
        /// The server's certificate chain, PEM.
        cert_pem: String,
        /// The server's private key, PEM.
        key_pem: String,
        /// CA certificates (PEM) that client certificates must chain to; `None`: no client
        /// certificates.
        client_ca_pem: Option<String>,
    },
    /// No encryption: tokens and data cross the network in the clear. Allowed on a loopback
    /// address only, unless `non_loopback` is set as well.
    Plaintext {
        /// The operator also asked for plaintext on a non-loopback address.
        non_loopback: bool,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tls {
                cert_pem,
                key_pem: _,
                client_ca_pem,
            } => f
                .debug_struct("Tls")
                .field("cert_pem", &format_args!("<{} bytes>", cert_pem.len()))
                .field("key_pem", &format_args!("<redacted>"))
                .field(
                    "client_ca_pem",
                    &client_ca_pem
                        .as_ref()
                        .map(|c| format!("<{} bytes>", c.len())),
                )
                .finish(),
            Transport::Plaintext { non_loopback } => f
                .debug_struct("Plaintext")
                .field("non_loopback", non_loopback)
                .finish(),
        }
    }
}

impl Transport {
    /// TLS from PEM files.
    pub fn tls_from_files(
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: Option<&std::path::Path>,
    ) -> Result<Self> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| PitlakeError::Config {
                name: flag.into(),
                message: format!("cannot read `{}`: {e}", path.display()),
            })
        };
        let cert_pem = read("--tls-cert", cert)?;
        let key_pem = read("--tls-key", key)?;
        let client_ca_pem = client_ca
            .map(|path| read("--tls-client-ca", path))
            .transpose()?;
        for (flag, pem, marker) in [
            ("--tls-cert", &cert_pem, "CERTIFICATE"),
            ("--tls-key", &key_pem, "PRIVATE KEY"),
        ] {
            if !pem.contains(marker) {
                return Err(PitlakeError::Config {
                    name: flag.into(),
                    message: format!("the file holds no PEM `{marker}` block"),
                });
            }
        }
        Ok(Transport::Tls {
            cert_pem,
            key_pem,
            client_ca_pem,
        })
    }

    /// Whether connections are encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls { .. })
    }
}

/// Per-query and server-wide limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Queries that may run at once; more wait (up to their timeout) for a slot.
    pub max_concurrent_queries: usize,
    /// How long one query may run, from planning to its last batch.
    pub query_timeout: Duration,
    /// Memory one query may reserve (inside the engine's `--memory-limit`); `None`: only the
    /// engine's limit applies.
    pub query_memory_limit: Option<usize>,
    /// On shutdown, how long running queries may go on before they are cancelled.
    pub shutdown_grace: Duration,
    /// How long /readyz answers 503 before the server stops taking connections and calls.
    pub drain_delay: Duration,
    /// How long a ticket from `GetFlightInfo` may be redeemed with `DoGet`.
    pub ticket_ttl: Duration,
    /// Prepared statements one user may hold open.
    pub max_prepared_per_user: usize,
    /// Connections open at once (TLS handshakes included); more are closed as they arrive.
    pub max_connections: usize,
    /// Calls (HTTP/2 streams) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Password checks (argon2) running at once; each takes the hash's memory (19 MiB with the
    /// default parameters).
    pub max_concurrent_logins: usize,
    /// Logins waiting for a password check; more are refused with `UNAVAILABLE`.
    pub max_queued_logins: usize,
    /// Failed logins (or checks in flight) of one user name within the lockout window before
    /// it is locked out.
    pub max_failed_logins_per_user: u32,
    /// The same for one peer address (IPv6: its /64).
    pub max_failed_logins_per_peer: u32,
    /// The failure window and the first lockout; each lockout in a row doubles it (to 1h).
    pub login_lockout: Duration,
    /// Bytes of one parameter upload (`DoPut` to a prepared statement).
    pub max_parameter_bytes: usize,
    /// Bytes of bound parameters one user's uploads and prepared statements hold at once.
    pub max_parameter_bytes_per_user: usize,
    /// The same for all users together.
    pub max_parameter_bytes_total: usize,
    /// How often the auth file is checked for changes (re-read when it changed); `None`: only
    /// on SIGHUP.
    pub auth_reload_interval: Option<Duration>,
}

/// One password check per core: argon2 is CPU- and memory-bound, more at once only queue.
pub fn default_concurrent_logins() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_queries: 16,
            query_timeout: Duration::from_secs(15 * 60),
            query_memory_limit: None,
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            ticket_ttl: Duration::from_secs(15 * 60),
            max_prepared_per_user: 256,
            max_connections: 1024,
            max_streams_per_connection: 100,
            max_concurrent_logins: default_concurrent_logins(),
            max_queued_logins: 64,
            max_failed_logins_per_user: 5,
            max_failed_logins_per_peer: 20,
            login_lockout: Duration::from_secs(60),
            max_parameter_bytes: 4 << 20,
            max_parameter_bytes_per_user: 64 << 20,
            max_parameter_bytes_total: 512 << 20,
            auth_reload_interval: Some(Duration::from_secs(10)),
        }
    }
}

/// Everything `pitlake serve` needs besides the engine.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// TLS or plaintext.
    pub transport: Transport,
    /// Limits.
    pub limits: Limits,
    /// Users and roles.
    pub auth: AuthConfig,
    /// Where the auth settings came from, for the start-up log.
    pub auth_origin: Option<PathBuf>,
    /// What tokens and tickets are signed with; `None`: a fresh random secret, good for this
    /// process only (see `flight::keys`).
    pub signing: Option<SigningSecrets>,
    /// Where to serve `/healthz`, `/readyz` and `/metrics` over HTTP (`None`: nowhere).
    pub http_listen: Option<SocketAddr>,
}

impl ServerConfig {
    /// Checks the combination: plaintext only on loopback unless asked twice, sane limits.
    pub fn validate(&self) -> Result<()> {
        if let Transport::Plaintext { non_loopback } = self.transport
            && !self.listen.ip().is_loopback()
            && !non_loopback
        {
            return Err(PitlakeError::Config {
                name: "--insecure-plaintext".into(),
                message: format!(
                    "refusing to serve plaintext on {}, which is not a loopback address: \
                     passwords, tokens and data would cross the network unencrypted. Use \
                     --tls-cert/--tls-key, listen on 127.0.0.1, or add \
                     --insecure-plaintext-on-network if a proxy in front encrypts",
                    self.listen.ip()
                ),
            });
        }
        if self.limits.max_concurrent_queries == 0 {
            return Err(PitlakeError::Config {
                name: "--max-concurrent-queries".into(),
                message: "must be at least 1".into(),
            });
        }
        if self.limits.query_timeout.is_zero() {
            return Err(PitlakeError::Config {
                name: "--query-timeout".into(),
                message: "must be longer than 0s".into(),
            });
        }
        if let Some(limit) = self.limits.query_memory_limit
            && limit < 1 << 20
        {
            return Err(PitlakeError::Config {
                name: "--query-memory-limit".into(),
                message: format!("{limit} bytes is too small; use at least 1MiB"),
            });
        }
        let at_least_one = [
            ("--max-connections", self.limits.max_connections),
            (
                "--max-streams-per-connection",
                self.limits.max_streams_per_connection as usize,
            ),
            ("--max-concurrent-logins", self.limits.max_concurrent_logins),
            (
                "--max-failed-logins-per-user",
                self.limits.max_failed_logins_per_user as usize,
            ),
            (
                "--max-failed-logins-per-peer",
                self.limits.max_failed_logins_per_peer as usize,
            ),
            ("--max-parameter-bytes", self.limits.max_parameter_bytes),
        ];
        if let Some((name, _)) = at_least_one.iter().find(|(_, n)| *n == 0) {
            return Err(PitlakeError::Config {
                name: (*name).into(),
                message: "must be at least 1".into(),
            });
        }
        if self.limits.login_lockout.is_zero() {
            return Err(PitlakeError::Config {
                name: "--login-lockout".into(),
                message: "must be longer than 0s".into(),
            });
        }
        if self
            .limits
            .auth_reload_interval
            .is_some_and(|i| i.is_zero())
        {
            return Err(PitlakeError::Config {
                name: "--auth-reload-interval".into(),
                message: "must be longer than 0s (or `off`)".into(),
            });
        }
        let (upload, user, total) = (
            self.limits.max_parameter_bytes,
            self.limits.max_parameter_bytes_per_user,
            self.limits.max_parameter_bytes_total,
        );
        if upload > user || user > total {
            return Err(PitlakeError::Config {
                name: "--max-parameter-bytes".into(),
                message: format!(
                    "the parameter limits must grow from one upload ({upload}) to one user \
                     ({user}, --max-parameter-bytes-per-user) to the server ({total}, \
                     --max-parameter-bytes-total)"
                ),
            });
        }
        if self.auth.users().next().is_none() {
            return Err(PitlakeError::Config {
                name: "--auth-file".into(),
                message: "defines no users, so nobody could connect; add a [users.NAME] \
                          section (see docs/operations.md)"
                    .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flight::auth::AuthFormat;

    fn config(listen: &str, transport: Transport) -> ServerConfig {
        let auth = AuthConfig::parse(
            &format!(
                "[users.a]\ntokens = [{{ sha256 = \"{}\" }}]",
                "0".repeat(64)
            ),
            AuthFormat::Toml,
            "test",
        )
        .unwrap();
        ServerConfig {
            listen: listen.parse().unwrap(),
            transport,
            limits: Limits::default(),
            auth,
            auth_origin: None,
            signing: None,
            http_listen: None,
        }
    }

    #[test]
    fn plaintext_only_on_loopback_unless_asked_twice() {
        let plain = Transport::Plaintext {
            non_loopback: false,
        };
        assert!(config("127.0.0.1:0", plain.clone()).validate().is_ok());
        assert!(config("[::1]:0", plain.clone()).validate().is_ok());
        let err = config("0.0.0.0:50051", plain).validate().unwrap_err();
        assert!(err.to_string().contains("not a loopback address"), "{err}");
        let twice = Transport::Plaintext { non_loopback: true };
        assert!(config("0.0.0.0:50051", twice).validate().is_ok());
    }

    #[test]
    fn limits_and_users_are_checked() {
        let plain = Transport::Plaintext {
            non_loopback: false,
        };
        let mut c = config("127.0.0.1:0", plain);
        c.limits.max_concurrent_queries = 0;
        assert!(c.validate().is_err());
        c.limits.max_concurrent_queries = 1;
        c.limits.query_memory_limit = Some(1024);
        assert!(c.validate().unwrap_err().to_string().contains("1MiB"));
        c.limits.query_memory_limit = None;
        c.auth = AuthConfig::parse("", AuthFormat::Toml, "empty").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("no users"));
    }

    #[test]
    fn limits_must_be_usable() {
        let plain = Transport::Plaintext {
            non_loopback: false,
        };
        let mut c = config("127.0.0.1:0", plain);
        c.limits.max_concurrent_logins = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--max-concurrent-logins"), "{err}");
        c.limits.max_concurrent_logins = 1;
        c.limits.max_parameter_bytes = c.limits.max_parameter_bytes_per_user + 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("must grow from one upload"), "{err}");
        c.limits = Limits::default();
        c.limits.login_lockout = Duration::ZERO;
        assert!(c.validate().is_err());
        c.limits = Limits::default();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn debug_hides_the_tls_key() {
        let transport = Transport::Tls {
            cert_pem: "-----BEGIN CERTIFICATE-----cert".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----very-secret-key".into(),
            client_ca_pem: None,
        };
        let shown = format!("{:?}", config("127.0.0.1:0", transport));
        assert!(!shown.contains("very-secret-key"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn tls_files_must_hold_pem() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let err = Transport::tls_from_files(&cert, &key, None).unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        let missing = Transport::tls_from_files(&dir.path().join("nope"), &key, None).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }
}
