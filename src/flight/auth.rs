//! Authentication: who is calling.
//!
//! Users, their roles and the roles' grants come from an auth file (TOML or JSON) or from the
//! environment, never from the command line, where they would show in `ps` and shell history:
//!
//! ```toml
//! token_ttl = "1h"                      # lifetime of handshake tokens (default 1h)
//!
//! [users.alice]
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"   # pitlake serve --hash-password
//! roles = ["analyst"]
//!
//! [users.trainer]                       # a service: a static bearer token, stored hashed
//! tokens = [{ sha256 = "9f86d081…", expires = "2027-01-01T00:00:00Z" }]
//! roles = ["analyst"]
//!
//! [roles.analyst]
//! grants = ["table:features.*", "table:orders"]
//! ```
//!
//! Two credentials open a call:
//!
//! - **Handshake tokens.** The Flight handshake with `authorization: Basic …` checks the
//!   password against its argon2 hash and answers with `authorization: Bearer <token>`. The
//!   token is `pl1.<claims>.<mac>`: the user and the expiry, signed with HMAC-SHA256 under a key
//!   drawn at start-up. Nothing is stored per token; a restart (a new key) ends every session.
//! - **Static tokens**, for services: the SHA-256 of each token is in the file, never the token.
//!
//! Every comparison of secret material is constant-time (HMAC verification, `subtle` for token
//! hashes, argon2's own). An unknown user costs a password check all the same, so timing does not
//! tell which user names exist. A removed user's tokens stop working at once: a token only names
//! the user, whose roles are looked up on every call.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::codegen::http::HeaderMap;

use crate::error::{PitlakeError, Result};
use crate::flight::grants::{Grant, Grants};

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A token issued by the handshake.
    Session,
    /// A static token from the auth file.
    StaticToken,
}

/// An authenticated caller: the user and the union of its roles' grants.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user name.
    pub user: String,
    /// What the user may do.
    pub grants: Arc<Grants>,
    /// How the user authenticated.
    pub method: Method,
}

/// The auth file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    token_ttl: Option<String>,
    #[serde(default)]
    users: BTreeMap<String, UserEntry>,
    #[serde(default)]
    roles: BTreeMap<String, RoleEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    password_hash: Option<String>,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    sha256: String,
    expires: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    #[serde(default)]
    grants: Vec<String>,
}

/// A static token: its SHA-256 and when it stops working (milliseconds since the epoch).
#[derive(Clone)]
struct StaticToken {
    sha256: [u8; 32],
    expires_ms: Option<i64>,
}

/// One user as the server knows it.
#[derive(Clone)]
struct User {
    password_hash: Option<String>,
    tokens: Vec<StaticToken>,
    grants: Arc<Grants>,
}

/// Validated users, roles and token settings. Its `Debug` shows no secret material.
#[derive(Clone)]
pub struct AuthConfig {
    users: BTreeMap<String, User>,
    /// How long a handshake token is valid.
    pub token_ttl: Duration,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("token_ttl", &self.token_ttl)
            .finish()
    }
}

/// The format of an auth file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFormat {
    /// TOML.
    Toml,
    /// JSON.
    Json,
}

impl AuthConfig {
    /// Reads an auth file (`.json` is JSON, anything else TOML).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PitlakeError::Config {
            name: "--auth-file".into(),
            message: format!("cannot read `{}`: {e}", path.display()),
        })?;
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => AuthFormat::Json,
            _ => AuthFormat::Toml,
        };
        Self::parse(&text, format, &path.display().to_string())
    }

    /// Parses auth settings from text; `origin` names where they came from in errors.
    pub fn parse(text: &str, format: AuthFormat, origin: &str) -> Result<Self> {
        let bad = |message: String| PitlakeError::Config {
            name: origin.to_string(),
            message,
        };
        let file: AuthFile = match format {
            AuthFormat::Toml => toml::from_str(text).map_err(|e| bad(e.to_string()))?,
            AuthFormat::Json => serde_json::from_str(text).map_err(|e| bad(e.to_string()))?,
        };
        let token_ttl = match &file.token_ttl {
            Some(raw) => parse_duration(raw).map_err(|e| bad(format!("token_ttl: {e}")))?,
            None => Duration::from_secs(3600),
        };
        if token_ttl.is_zero() {
            return Err(bad("token_ttl must be longer than 0s".into()));
        }
        let mut roles = BTreeMap::new();
        for (name, role) in &file.roles {
            let grants = role
                .grants
                .iter()
                .map(|g| Grant::parse(g))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| bad(format!("role `{name}`: {e}")))?;
            roles.insert(name.clone(), grants);
        }
        let mut users = BTreeMap::new();
        for (name, entry) in file.users {
            if name.is_empty() || name.contains(':') || name.chars().any(char::is_control) {
                return Err(bad(format!(
                    "user `{name}`: a user name must be non-empty, without `:` or control characters"
                )));
            }
            if entry.password_hash.is_none() && entry.tokens.is_empty() {
                return Err(bad(format!(
                    "user `{name}` has neither a password_hash nor tokens, so cannot log in"
                )));
            }
            if let Some(hash) = &entry.password_hash {
                PasswordHash::new(hash).map_err(|e| {
                    bad(format!(
                        "user `{name}`: password_hash is not a PHC string ({e}); make one with \
                         `pitlake serve --hash-password`"
                    ))
                })?;
            }
            let mut tokens = Vec::new();
            for token in entry.tokens {
                let sha256 = decode_hex32(&token.sha256).ok_or_else(|| {
                    bad(format!(
                        "user `{name}`: a token's sha256 must be 64 hex digits (the SHA-256 of \
                         the token, e.g. from `printf %s TOKEN | sha256sum`)"
                    ))
                })?;
                let expires_ms = match &token.expires {
                    Some(raw) => Some(
                        chrono::DateTime::parse_from_rfc3339(raw)
                            .map_err(|e| {
                                bad(format!(
                                    "user `{name}`: token expiry `{raw}` is not an RFC 3339 \
                                     instant ({e})"
                                ))
                            })?
                            .timestamp_millis(),
                    ),
                    None => None,
                };
                tokens.push(StaticToken { sha256, expires_ms });
            }
            let mut grants = Vec::new();
            for role in &entry.roles {
                let role_grants = roles.get(role).ok_or_else(|| {
                    bad(format!(
                        "user `{name}` has role `{role}`, which is not defined under [roles]"
                    ))
                })?;
                grants.extend(role_grants.iter().cloned());
            }
            users.insert(
                name,
                User {
                    password_hash: entry.password_hash,
                    tokens,
                    grants: Arc::new(Grants::new(grants)),
                },
            );
        }
        Ok(Self { users, token_ttl })
    }

    /// The user names.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }
}

/// Hashes a password for the auth file (argon2id with the crate's recommended parameters).
pub fn hash_password(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PitlakeError::Internal(format!("hashing a password failed: {e}")))
}

/// Parses a duration: `90s`, `15m`, `1h`, `7d`, or a number of seconds.
pub fn parse_duration(raw: &str) -> std::result::Result<Duration, String> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration; write it like 30s, 15m, 1h or 7d"))?;
    let seconds = match unit.trim() {
        "" | "s" => Some(n),
        "ms" => return Ok(Duration::from_millis(n)),
        "m" | "min" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{raw}`; use ms, s, m, h or d"
            ));
        }
    };
    seconds
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{raw}` is too long"))
}

fn decode_hex32(raw: &str) -> Option<[u8; 32]> {
    let raw = raw.trim();
    if raw.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(raw.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The current time in milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> std::result::Result<[u8; N], Status> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| Status::unavailable("the system's random source failed"))?;
    Ok(out)
}

/// Draws a fresh HMAC-SHA256 key.
pub(crate) fn hmac_key() -> Result<hmac::Key> {
    hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
        .map_err(|_| PitlakeError::Internal("the system's random source failed".into()))
}

const TOKEN_PREFIX: &str = "pl1";

/// Standard base64 with or without padding: Go's Flight client (ADBC) sends basic credentials
/// unpadded, C++ and Rust clients padded.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Checks credentials and issues session tokens.
pub struct Authenticator {
    config: AuthConfig,
    key: hmac::Key,
    /// A hash to check unknown users' passwords against, so they cost what known users cost.
    decoy_hash: String,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, Deserialize)]
struct TokenClaims {
    /// The user.
    u: String,
    /// Expiry, milliseconds since the epoch.
    e: i64,
    /// A random nonce, so two tokens issued in the same millisecond differ.
    n: String,
}

impl Authenticator {
    /// An authenticator with a fresh signing key.
    pub fn new(config: AuthConfig) -> Result<Self> {
        let decoy = URL_SAFE_NO_PAD.encode(
            random_bytes::<16>().map_err(|s| PitlakeError::Internal(s.message().to_string()))?,
        );
        // The decoy uses the parameters of the file's first hash, so it costs the same.
        let decoy_hash = match config
            .users
            .values()
            .find_map(|u| u.password_hash.as_deref())
            .and_then(|h| PasswordHash::new(h).ok())
            .and_then(|h| argon2::Params::try_from(&h).ok())
        {
            Some(params) => Argon2::from(params)
                .hash_password(decoy.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| PitlakeError::Internal(format!("hashing a password failed: {e}")))?,
            None => hash_password(&decoy)?,
        };
        Ok(Self {
            config,
            key: hmac_key()?,
            decoy_hash,
        })
    }

    /// How long handshake tokens live.
    pub fn token_ttl(&self) -> Duration {
        self.config.token_ttl
    }

    fn principal(&self, user: &str, method: Method) -> Option<Principal> {
        self.config.users.get(user).map(|u| Principal {
            user: user.to_string(),
            grants: u.grants.clone(),
            method,
        })
    }

    /// Checks an `authorization: Bearer …` header: a handshake token or a static token.
    pub fn authenticate_bearer(
        &self,
        headers: &HeaderMap,
    ) -> std::result::Result<Principal, Status> {
        let Some(value) = headers.get("authorization") else {
            return Err(Status::unauthenticated(
                "no credential: authenticate with the Flight handshake (basic auth) and send \
                 `authorization: Bearer <token>` on every call",
            ));
        };
        let value = value
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
        let Some(token) = strip_scheme(value, "Bearer") else {
            return Err(Status::unauthenticated(
                "the authorization header must be `Bearer <token>` (basic auth is accepted by the \
                 handshake only)",
            ));
        };
        if token.starts_with(TOKEN_PREFIX) && token.split('.').count() == 3 {
            return self.verify_session_token(token);
        }
        self.verify_static_token(token)
    }

    fn verify_session_token(&self, token: &str) -> std::result::Result<Principal, Status> {
        let invalid = || Status::unauthenticated("invalid token; authenticate again");
        let mut parts = token.splitn(3, '.');
        let (Some(_), Some(claims), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| invalid())?;
        let signed = &token[..TOKEN_PREFIX.len() + 1 + claims.len()];
        hmac::verify(&self.key, signed.as_bytes(), &mac).map_err(|_| invalid())?;
        let claims = URL_SAFE_NO_PAD.decode(claims).map_err(|_| invalid())?;
        let claims: TokenClaims = serde_json::from_slice(&claims).map_err(|_| invalid())?;
        if claims.e <= now_ms() {
            return Err(Status::unauthenticated(
                "the token has expired; authenticate again with the handshake",
            ));
        }
        self.principal(&claims.u, Method::Session)
            .ok_or_else(invalid)
    }

    fn verify_static_token(&self, token: &str) -> std::result::Result<Principal, Status> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let now = now_ms();
        let mut found: Option<(&str, Option<i64>)> = None;
        // Every configured token is compared, whichever matches, so the time taken does not
        // depend on where (or whether) the token is in the file.
        for (name, user) in &self.config.users {
            for candidate in &user.tokens {
                if bool::from(candidate.sha256.ct_eq(digest.as_ref())) {
                    found = Some((name, candidate.expires_ms));
                }
            }
        }
        match found {
            Some((_, Some(expires))) if expires <= now => Err(Status::unauthenticated(
                "the token has expired; ask for a new one",
            )),
            Some((name, _)) => self
                .principal(name, Method::StaticToken)
                .ok_or_else(|| Status::unauthenticated("invalid token")),
            None => Err(Status::unauthenticated("invalid token")),
        }
    }

    /// Checks `authorization: Basic …` (the handshake) and issues a session token.
    ///
    /// Runs argon2 (deliberately slow): call it off the async threads.
    pub fn login_basic(
        &self,
        headers: &HeaderMap,
    ) -> std::result::Result<(Principal, String), Status> {
        let refused = || Status::unauthenticated("invalid user name or password");
        let value = headers
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated(
                    "the handshake needs `authorization: Basic <base64(user:password)>`",
                )
            })?
            .to_str()
            .map_err(|_| refused())?;
        let encoded = strip_scheme(value, "Basic").ok_or_else(|| {
            Status::unauthenticated("the handshake needs `authorization: Basic …`")
        })?;
        let decoded = BASIC.decode(encoded.trim()).map_err(|_| refused())?;
        let decoded = String::from_utf8(decoded).map_err(|_| refused())?;
        let (user, password) = decoded.split_once(':').ok_or_else(refused)?;
        let known = self.config.users.get(user);
        let hash = known
            .and_then(|u| u.password_hash.as_deref())
            .unwrap_or(&self.decoy_hash);
        let parsed = PasswordHash::new(hash).map_err(|_| refused())?;
        let verified = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        let has_password = known.is_some_and(|u| u.password_hash.is_some());
        if !(verified && has_password) {
            return Err(refused());
        }
        let principal = self.principal(user, Method::Session).ok_or_else(refused)?;
        let token = self.issue_token(user)?;
        Ok((principal, token))
    }

    /// A signed token for a user, valid for the configured lifetime.
    pub fn issue_token(&self, user: &str) -> std::result::Result<String, Status> {
        let ttl = i64::try_from(self.config.token_ttl.as_millis()).unwrap_or(i64::MAX);
        let claims = TokenClaims {
            u: user.to_string(),
            e: now_ms().saturating_add(ttl),
            n: URL_SAFE_NO_PAD.encode(random_bytes::<12>()?),
        };
        let claims = serde_json::to_vec(&claims)
            .map_err(|e| Status::internal(format!("encoding a token failed: {e}")))?;
        let signed = format!("{TOKEN_PREFIX}.{}", URL_SAFE_NO_PAD.encode(claims));
        let mac = hmac::sign(&self.key, signed.as_bytes());
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())))
    }
}

/// The credential after `scheme ` (the scheme matched case-insensitively, as HTTP says).
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then_some(rest.trim())
        .filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::HeaderValue;

    fn fast_hash(password: &str) -> String {
        let params = argon2::Params::new(1024, 1, 1, None).unwrap();
        Argon2::from(params)
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string()
    }

    fn sha256_hex(token: &str) -> String {
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn config() -> AuthConfig {
        let text = format!(
            r#"
token_ttl = "10m"
[users.alice]
password_hash = "{}"
roles = ["reader"]
[users.svc]
tokens = [{{ sha256 = "{}" }}, {{ sha256 = "{}", expires = "2001-01-01T00:00:00Z" }}]
roles = ["reader"]
[roles.reader]
grants = ["table:*"]
"#,
            fast_hash("secret"),
            sha256_hex("svc-token"),
            sha256_hex("old-token")
        );
        AuthConfig::parse(&text, AuthFormat::Toml, "test").unwrap()
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        headers(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        ))
    }

    #[test]
    fn handshake_tokens_work_until_tampered_or_expired() {
        let auth = Authenticator::new(config()).unwrap();
        let (principal, token) = auth.login_basic(&basic("alice", "secret")).unwrap();
        // Unpadded base64, as Go clients send it.
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode("alice:secret");
        assert!(
            auth.login_basic(&headers(&format!("Basic {unpadded}")))
                .is_ok()
        );
        assert_eq!(principal.user, "alice");
        let again = auth
            .authenticate_bearer(&headers(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(again.user, "alice");
        assert_eq!(again.method, Method::Session);
        // Flip one character of the claims: the signature no longer matches.
        let mut tampered = token.clone().into_bytes();
        tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let err = auth
            .authenticate_bearer(&headers(&format!("Bearer {tampered}")))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // Another server (another key) does not accept it.
        let other = Authenticator::new(config()).unwrap();
        assert!(
            other
                .authenticate_bearer(&headers(&format!("Bearer {token}")))
                .is_err()
        );
    }

    #[test]
    fn wrong_passwords_and_unknown_users_read_alike() {
        let auth = Authenticator::new(config()).unwrap();
        let wrong = auth.login_basic(&basic("alice", "nope")).unwrap_err();
        let unknown = auth.login_basic(&basic("mallory", "secret")).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert_eq!(wrong.message(), unknown.message());
        // A token-only user cannot log in with a password.
        assert!(auth.login_basic(&basic("svc", "")).is_err());
        assert!(auth.authenticate_bearer(&HeaderMap::new()).is_err());
        assert!(auth.authenticate_bearer(&basic("alice", "secret")).is_err());
    }

    #[test]
    fn static_tokens_are_checked_by_hash_and_expiry() {
        let auth = Authenticator::new(config()).unwrap();
        let p = auth
            .authenticate_bearer(&headers("Bearer svc-token"))
            .unwrap();
        assert_eq!((p.user.as_str(), p.method), ("svc", Method::StaticToken));
        let err = auth
            .authenticate_bearer(&headers("Bearer old-token"))
            .unwrap_err();
        assert!(err.message().contains("expired"));
        assert!(auth.authenticate_bearer(&headers("Bearer nope")).is_err());
    }

    #[test]
    fn config_errors_name_the_problem() {
        let err = |text: &str| {
            AuthConfig::parse(text, AuthFormat::Toml, "auth.toml")
                .unwrap_err()
                .to_string()
        };
        assert!(err("[users.a]\nroles = []").contains("neither a password_hash nor tokens"));
        assert!(err("[users.a]\npassword_hash = \"x\"").contains("not a PHC string"));
        assert!(
            err("[users.a]\ntokens = [{ sha256 = \"00\" }]\nroles = [\"r\"]")
                .contains("64 hex digits")
        );
        let missing_role = format!(
            "[users.a]\ntokens = [{{ sha256 = \"{}\" }}]\nroles = [\"r\"]",
            "0".repeat(64)
        );
        assert!(err(&missing_role).contains("role `r`, which is not defined"));
        assert!(err("[roles.r]\ngrants = [\"tables:*\"]").contains("tables:*"));
        assert!(err("token_ttl = \"soon\"").contains("token_ttl"));
        assert!(err("bogus = 1").contains("bogus"));
        let json = AuthConfig::parse(
            r#"{"users": {}, "roles": {"r": {"grants": ["files"]}}}"#,
            AuthFormat::Json,
            "env",
        );
        assert!(json.is_ok());
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("2 weeks").is_err());
    }
}
