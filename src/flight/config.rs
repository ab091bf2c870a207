//! The server's validated settings: where it listens, how the connection is protected, its
//! limits and its users. Built by the CLI from flags and files; checked before anything binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{PitlakeError, Result};
use crate::flight::auth::AuthConfig;

/// How connections are protected.
#[derive(Debug, Clone)]
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
    /// How long a ticket from `GetFlightInfo` may be redeemed with `DoGet`.
    pub ticket_ttl: Duration,
    /// Prepared statements one user may hold open.
    pub max_prepared_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_queries: 16,
            query_timeout: Duration::from_secs(15 * 60),
            query_memory_limit: None,
            shutdown_grace: Duration::from_secs(30),
            ticket_ttl: Duration::from_secs(15 * 60),
            max_prepared_per_user: 256,
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
