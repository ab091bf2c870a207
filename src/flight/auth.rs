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
//! token_epoch = 0                       # raise it to end every session token of alice's
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
//! hashes, argon2's own). An unknown user costs a password check all the same, against a decoy
//! hash with the parameters of a configured user's hash (chosen per name with a keyed hash, in
//! proportion to how many users have each parameter set), so timing does not tell which user
//! names exist. A removed user's tokens stop working at once: a token only names the user, whose
//! roles are looked up on every call.
//!
//! Hygiene, checked when the file is read: password hashes must be argon2id, version 19, at
//! least as strong as OWASP's minimum (m=19456 KiB with t=2, or an equivalent), or the file is refused.
//! Static tokens without `expires` and users whose hashes use different parameters are
//! reported as [`AuthConfig::warnings`]. The file only holds static tokens' hashes, so their
//! length is checked when one is presented: shorter than [`MIN_STATIC_TOKEN_CHARS`] is refused.
//!
//! Revocation without a restart: the server re-reads the file (on SIGHUP, and when it changes;
//! see `server`). Removing a static token or a user ends its use at once; raising a user's
//! `token_epoch` ends every session token issued to that user before (tokens carry the epoch
//! they were issued under). Sessions of other users survive a reload: the signing key stays.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::{Argon2, CustomizedPasswordHasher, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ring::rand::{SecureRandom, SystemRandom};

use crate::flight::keys::{Keyring, SigningSecrets};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::codegen::http::HeaderMap;

use crate::config::parse_duration;
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
    /// The session: a digest of the bearer token presented (empty before one is issued).
    /// Uploads made with one token are visible only with that token.
    pub session: String,
}

/// The auth file as written. No `Debug`: it holds password hashes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    token_ttl: Option<String>,
    #[serde(default)]
    users: BTreeMap<String, UserEntry>,
    #[serde(default)]
    roles: BTreeMap<String, RoleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    password_hash: Option<String>,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    token_epoch: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    sha256: String,
    expires: Option<String>,
}

#[derive(Deserialize)]
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
    /// The parameters of `password_hash`, which the decoys copy.
    hash_params: Option<HashParams>,
    tokens: Vec<StaticToken>,
    grants: Arc<Grants>,
    /// Session tokens issued under another epoch are refused.
    token_epoch: u64,
}

/// Validated users, roles and token settings. Its `Debug` shows no secret material.
#[derive(Clone)]
pub struct AuthConfig {
    users: BTreeMap<String, User>,
    /// How long a handshake token is valid.
    pub token_ttl: Duration,
    warnings: Vec<String>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("token_ttl", &self.token_ttl)
            .finish_non_exhaustive()
    }
}

/// The shortest static token accepted when presented (the file holds only hashes, so it cannot be
/// checked at start). 32 characters of a random token (`pitlake serve --new-token` makes 43) are
/// beyond guessing; a shorter one is likely typed by a person.
pub const MIN_STATIC_TOKEN_CHARS: usize = 32;

/// The longest user name in the auth file and in a handshake: longer names are refused before
/// any password work, and bound what the failed-login tables hold.
pub const MAX_USER_NAME_CHARS: usize = 128;

/// The longest password a handshake may carry; longer ones are refused before any password work.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// What an argon2 hash costs, and so what a decoy must copy: algorithm, version, memory (KiB),
/// passes, lanes, output and salt lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct HashParams {
    algorithm: Algorithm,
    version: u32,
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
    output_len: usize,
    salt_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Algorithm {
    Argon2id,
}

impl fmt::Display for HashParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "argon2id v={} m={},t={},p={}",
            self.version, self.m_cost, self.t_cost, self.p_cost
        )
    }
}

/// OWASP's minimum argon2id settings (memory in KiB, passes): equivalent choices trading memory
/// for passes. A hash must reach one of them.
const ARGON2_FLOOR: [(u32, u32); 5] = [(47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5)];

/// The shortest salt and output accepted, in bytes (RFC 9106 recommends 16 and 32).
const MIN_SALT_BYTES: usize = 16;
const MIN_OUTPUT_BYTES: usize = 16;

/// Checks that a password hash is argon2id, version 19, with parameters at least as strong as
/// OWASP's minimum ([`ARGON2_FLOOR`]), a salt and an output of at least 16 bytes; returns its
/// parameters. The error says what is weak and what would do.
fn check_argon2_strength(hash: &PasswordHash) -> std::result::Result<HashParams, String> {
    let remedy = "re-hash the password with `pitlake serve --hash-password` (argon2id \
                  m=19456,t=2,p=1)";
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "password_hash uses `{}`; pitlake accepts argon2id only; {remedy}",
            hash.algorithm.as_str()
        ));
    }
    let version = hash.version.unwrap_or(0x10);
    if version != 0x13 {
        return Err(format!(
            "password_hash is argon2 version {version}; pitlake accepts version 19 only; {remedy}"
        ));
    }
    let params = argon2::Params::try_from(hash)
        .map_err(|e| format!("password_hash has unusable parameters ({e}); {remedy}"))?;
    let (m, t) = (params.m_cost(), params.t_cost());
    if !ARGON2_FLOOR
        .iter()
        .any(|&(min_m, min_t)| m >= min_m && t >= min_t)
    {
        return Err(format!(
            "password_hash is too weak: m={m} KiB, t={t}; pitlake needs at least m=19456,t=2 \
             (or OWASP's equivalents m=47104,t=1 / m=12288,t=3 / m=9216,t=4 / m=7168,t=5); \
             {remedy}"
        ));
    }
    let salt_len = hash.salt.as_ref().map_or(0, |s| s.len());
    let output_len = hash.hash.as_ref().map_or(0, |h| h.len());
    if salt_len < MIN_SALT_BYTES || output_len < MIN_OUTPUT_BYTES {
        return Err(format!(
            "password_hash has a {salt_len}-byte salt and a {output_len}-byte output; pitlake \
             needs at least {MIN_SALT_BYTES} and {MIN_OUTPUT_BYTES}; {remedy}"
        ));
    }
    Ok(HashParams {
        algorithm: Algorithm::Argon2id,
        version,
        m_cost: m,
        t_cost: t,
        p_cost: params.p_cost(),
        output_len,
        salt_len,
    })
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
        let file = decode_auth_file(text, format).map_err(bad)?;
        let token_ttl = match &file.token_ttl {
            Some(raw) => parse_duration(raw).map_err(|e| bad(format!("token_ttl: {e}")))?,
            None => Duration::from_secs(3600),
        };
        if token_ttl.is_zero() {
            return Err(bad("token_ttl must be longer than 0s".into()));
        }
        let roles = role_grants(&file.roles).map_err(bad)?;
        let mut users = BTreeMap::new();
        let mut warnings = Vec::new();
        for (name, entry) in file.users {
            let user = User::from_entry(&name, entry, &roles, &mut warnings).map_err(bad)?;
            users.insert(name, user);
        }
        warnings.extend(mixed_hash_params_warning(&users));
        Ok(Self {
            users,
            token_ttl,
            warnings,
        })
    }

    /// The user names.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// What an operator should fix but the server accepts: static tokens without an expiry,
    /// password hashes with mixed parameters. The server logs them at start and on reload.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The most memory one password check takes, in bytes (the largest argon2 `m` in the file).
    pub fn max_password_check_bytes(&self) -> u64 {
        let m = self
            .users
            .values()
            .filter_map(|u| u.hash_params.map(|p| p.m_cost))
            .max()
            .unwrap_or(argon2::Params::DEFAULT_M_COST);
        u64::from(m) * 1024
    }
}

/// Decodes an auth file's text; the error is a message for the operator.
fn decode_auth_file(text: &str, format: AuthFormat) -> std::result::Result<AuthFile, String> {
    match format {
        // The message and the line only: toml's full error quotes the line, which may hold a
        // password hash, and errors reach logs.
        AuthFormat::Toml => toml::from_str(text).map_err(|e: toml::de::Error| {
            let line = e.span().map(|span| {
                let start = span.start.min(text.len());
                text.as_bytes()[..start]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            });
            match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_string(),
            }
        }),
        AuthFormat::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
    }
}

/// Each role's grants, parsed.
fn role_grants(
    roles: &BTreeMap<String, RoleEntry>,
) -> std::result::Result<BTreeMap<String, Vec<Grant>>, String> {
    let mut parsed = BTreeMap::new();
    for (name, role) in roles {
        let grants = role
            .grants
            .iter()
            .map(|g| Grant::parse(g))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| format!("role `{name}`: {e}"))?;
        parsed.insert(name.clone(), grants);
    }
    Ok(parsed)
}

impl User {
    /// Checks one user's entry of the auth file and resolves its roles; what the server
    /// accepts but an operator should fix goes to `warnings`.
    fn from_entry(
        name: &str,
        entry: UserEntry,
        roles: &BTreeMap<String, Vec<Grant>>,
        warnings: &mut Vec<String>,
    ) -> std::result::Result<Self, String> {
        if name.is_empty()
            || name.contains(':')
            || name.chars().any(char::is_control)
            || name.chars().count() > MAX_USER_NAME_CHARS
        {
            return Err(format!(
                "user `{name}`: a user name must be non-empty, at most {MAX_USER_NAME_CHARS} \
                 characters, without `:` or control characters"
            ));
        }
        if entry.password_hash.is_none() && entry.tokens.is_empty() {
            return Err(format!(
                "user `{name}` has neither a password_hash nor tokens, so cannot log in"
            ));
        }
        let hash_params = match &entry.password_hash {
            Some(hash) => {
                let parsed = PasswordHash::new(hash).map_err(|e| {
                    format!(
                        "user `{name}`: password_hash is not a PHC string ({e}); make one with \
                         `pitlake serve --hash-password`"
                    )
                })?;
                Some(
                    check_argon2_strength(&parsed)
                        .map_err(|message| format!("user `{name}`: {message}"))?,
                )
            }
            None => None,
        };
        let tokens = entry
            .tokens
            .iter()
            .map(|token| StaticToken::from_entry(name, token, warnings))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut grants = Vec::new();
        for role in &entry.roles {
            let role_grants = roles.get(role).ok_or_else(|| {
                format!("user `{name}` has role `{role}`, which is not defined under [roles]")
            })?;
            grants.extend(role_grants.iter().cloned());
        }
        Ok(User {
            password_hash: entry.password_hash,
            hash_params,
            tokens,
            grants: Arc::new(Grants::new(grants)),
            token_epoch: entry.token_epoch,
        })
    }
}

impl StaticToken {
    /// Checks one of user `name`'s static tokens; one without an expiry is warned about.
    fn from_entry(
        name: &str,
        token: &TokenEntry,
        warnings: &mut Vec<String>,
    ) -> std::result::Result<Self, String> {
        let sha256 = decode_hex32(&token.sha256).ok_or_else(|| {
            format!(
                "user `{name}`: a token's sha256 must be 64 hex digits (the SHA-256 of the \
                 token, e.g. from `printf %s TOKEN | sha256sum`)"
            )
        })?;
        let expires_ms = match &token.expires {
            Some(raw) => Some(
                chrono::DateTime::parse_from_rfc3339(raw)
                    .map_err(|e| {
                        format!(
                            "user `{name}`: token expiry `{raw}` is not an RFC 3339 instant ({e})"
                        )
                    })?
                    .timestamp_millis(),
            ),
            None => {
                warnings.push(format!(
                    "user `{name}` has a static token without `expires`: it works until it is \
                     removed from the file; give it an expiry"
                ));
                None
            }
        };
        Ok(StaticToken { sha256, expires_ms })
    }
}

/// A warning when password hashes use different argon2 parameters: the time a login takes
/// would tell which set a user name has.
fn mixed_hash_params_warning(users: &BTreeMap<String, User>) -> Option<String> {
    let params: std::collections::BTreeSet<HashParams> =
        users.values().filter_map(|u| u.hash_params).collect();
    (params.len() > 1).then(|| {
        format!(
            "password hashes use {} different parameter sets ({}): how long a login takes may \
             tell which set a user name has; re-hash them alike with \
             `pitlake serve --hash-password`",
            params.len(),
            params
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// Hashes a password for the auth file (argon2id with the crate's recommended parameters).
pub fn hash_password(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PitlakeError::Internal(format!("hashing a password failed: {e}")))
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

const TOKEN_PREFIX: &str = "pl1";

/// Standard base64 with or without padding: Go's Flight client (ADBC) sends basic credentials
/// unpadded, C++ and Rust clients padded.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Checks credentials and issues session tokens.
pub struct Authenticator {
    /// Signs and verifies session tokens (and picks decoys).
    keys: Keyring,
    /// The users and their decoys; replaced whole when the auth file is re-read.
    state: RwLock<Arc<AuthState>>,
}

/// One version of the auth settings, with the decoy hashes made for it.
struct AuthState {
    config: AuthConfig,
    /// One decoy hash per parameter set in the file (or one with the defaults when no user has a
    /// password), to check unknown users' passwords against, so they cost what known users cost.
    decoys: Vec<String>,
    /// For each password user, in name order: the index of the decoy with its parameters.
    /// An unknown name picks one of these with a keyed hash, so the decoys' parameters turn up
    /// in the proportion the users' do, and always the same one for the same name.
    decoy_of_user: Vec<usize>,
}

impl AuthState {
    fn new(config: AuthConfig) -> Result<Self> {
        let mut sets: Vec<HashParams> = Vec::new();
        let mut decoy_of_user = Vec::new();
        for params in config.users.values().filter_map(|u| u.hash_params) {
            let index = match sets.iter().position(|p| *p == params) {
                Some(index) => index,
                None => {
                    sets.push(params);
                    sets.len() - 1
                }
            };
            decoy_of_user.push(index);
        }
        let password = URL_SAFE_NO_PAD.encode(
            random_bytes::<16>().map_err(|s| PitlakeError::Internal(s.message().to_string()))?,
        );
        let decoys = if sets.is_empty() {
            vec![hash_password(&password)?]
        } else {
            sets.iter()
                .map(|params| decoy_hash(&password, params))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Self {
            config,
            decoys,
            decoy_of_user,
        })
    }
}

/// A hash of `password` with exactly these parameters (and a random salt of the same length).
fn decoy_hash(password: &str, params: &HashParams) -> Result<String> {
    let failed = |e: &dyn fmt::Display| PitlakeError::Internal(format!("making a decoy hash: {e}"));
    let argon2_params = argon2::Params::new(
        params.m_cost,
        params.t_cost,
        params.p_cost,
        Some(params.output_len),
    )
    .map_err(|e| failed(&e))?;
    let salt = random_bytes::<64>().map_err(|s| failed(&s.message()))?;
    let salt = salt.get(..params.salt_len).ok_or_else(|| {
        PitlakeError::Internal(format!(
            "a {}-byte salt is longer than decoys support",
            params.salt_len
        ))
    })?;
    Argon2::default()
        .hash_password_customized(
            password.as_bytes(),
            salt,
            Some("argon2id"),
            Some(params.version),
            argon2_params,
        )
        .map(|h| h.to_string())
        .map_err(|e| failed(&e))
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.state().config)
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
    /// The user's `token_epoch` when the token was issued.
    #[serde(default)]
    g: u64,
}

/// User name and password from a handshake's basic credentials. `Debug` hides the password.
pub(crate) struct BasicCredentials {
    /// The user name as sent (at most [`MAX_USER_NAME_CHARS`] characters).
    pub user: String,
    password: String,
}

impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

fn refused() -> Status {
    Status::unauthenticated("invalid user name or password")
}

/// Reads `authorization: Basic …` without any password work, refusing names and passwords
/// longer than any the server accepts.
pub(crate) fn basic_credentials(
    headers: &HeaderMap,
) -> std::result::Result<BasicCredentials, Status> {
    let value = headers
        .get("authorization")
        .ok_or_else(|| {
            Status::unauthenticated(
                "the handshake needs `authorization: Basic <base64(user:password)>`",
            )
        })?
        .to_str()
        .map_err(|_| refused())?;
    let encoded = strip_scheme(value, "Basic")
        .ok_or_else(|| Status::unauthenticated("the handshake needs `authorization: Basic …`"))?;
    let decoded = BASIC.decode(encoded.trim()).map_err(|_| refused())?;
    let decoded = String::from_utf8(decoded).map_err(|_| refused())?;
    let (user, password) = decoded.split_once(':').ok_or_else(refused)?;
    if user.chars().count() > MAX_USER_NAME_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(refused());
    }
    Ok(BasicCredentials {
        user: user.to_string(),
        password: password.to_string(),
    })
}

impl Authenticator {
    /// An authenticator whose tokens are signed with `secrets` (see `flight::keys`). Makes the
    /// decoy hashes (argon2: slow).
    pub fn new(config: AuthConfig, secrets: &SigningSecrets) -> Result<Self> {
        Ok(Self {
            keys: secrets.keyring("token"),
            state: RwLock::new(Arc::new(AuthState::new(config)?)),
        })
    }

    /// Replaces the users, roles and tokens (a re-read auth file); session tokens stay valid
    /// unless their user is gone or its `token_epoch` changed. Makes decoy hashes (slow).
    pub fn reload(&self, config: AuthConfig) -> Result<()> {
        let state = Arc::new(AuthState::new(config)?);
        match self.state.write() {
            Ok(mut guard) => *guard = state,
            Err(poisoned) => *poisoned.into_inner() = state,
        }
        Ok(())
    }

    fn state(&self) -> Arc<AuthState> {
        match self.state.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How long handshake tokens live.
    pub fn token_ttl(&self) -> Duration {
        self.state().config.token_ttl
    }

    fn principal(state: &AuthState, user: &str, method: Method) -> Option<Principal> {
        state.config.users.get(user).map(|u| Principal {
            user: user.to_string(),
            grants: u.grants.clone(),
            method,
            session: String::new(),
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
        let state = self.state();
        let principal = if token.starts_with(TOKEN_PREFIX) && token.split('.').count() == 3 {
            self.verify_session_token(&state, token)
        } else {
            verify_static_token(&state, token)
        };
        principal.map(|mut p| {
            p.session = session_of(token);
            p
        })
    }

    fn verify_session_token(
        &self,
        state: &AuthState,
        token: &str,
    ) -> std::result::Result<Principal, Status> {
        let invalid = || Status::unauthenticated("invalid token; authenticate again");
        let mut parts = token.splitn(3, '.');
        let (Some(_), Some(claims), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| invalid())?;
        let signed = &token[..TOKEN_PREFIX.len() + 1 + claims.len()];
        if !self.keys.verify(signed.as_bytes(), &mac) {
            return Err(invalid());
        }
        let claims = URL_SAFE_NO_PAD.decode(claims).map_err(|_| invalid())?;
        let claims: TokenClaims = serde_json::from_slice(&claims).map_err(|_| invalid())?;
        if claims.e <= now_ms() {
            return Err(Status::unauthenticated(
                "the token has expired; authenticate again with the handshake",
            ));
        }
        let user = state.config.users.get(&claims.u).ok_or_else(invalid)?;
        if user.token_epoch != claims.g {
            return Err(Status::unauthenticated(
                "the token was revoked (the user's token_epoch changed); authenticate again",
            ));
        }
        Self::principal(state, &claims.u, Method::Session).ok_or_else(invalid)
    }

    /// Checks `authorization: Basic …` (the handshake) and issues a session token.
    ///
    /// Runs argon2 (deliberately slow): call it off the async threads.
    pub fn login_basic(
        &self,
        headers: &HeaderMap,
    ) -> std::result::Result<(Principal, String), Status> {
        self.check_password(&basic_credentials(headers)?)
    }

    /// Checks a password against the user's argon2 hash (or, for a name without a password, a
    /// decoy with the same cost) and issues a session token.
    ///
    /// Runs argon2 (deliberately slow): call it off the async threads, under the server's bound
    /// on concurrent password checks.
    pub(crate) fn check_password(
        &self,
        credentials: &BasicCredentials,
    ) -> std::result::Result<(Principal, String), Status> {
        let state = self.state();
        let user = credentials.user.as_str();
        let known = state
            .config
            .users
            .get(user)
            .filter(|u| u.password_hash.is_some());
        let hash = match known.and_then(|u| u.password_hash.as_deref()) {
            Some(hash) => hash,
            None => self.decoy_for(&state, user),
        };
        let parsed = PasswordHash::new(hash).map_err(|_| refused())?;
        let verified = Argon2::default()
            .verify_password(credentials.password.as_bytes(), &parsed)
            .is_ok();
        if !(verified && known.is_some()) {
            return Err(refused());
        }
        let principal = Self::principal(&state, user, Method::Session).ok_or_else(refused)?;
        let token = self.issue_token_in(&state, user)?;
        Ok((principal, token))
    }

    /// The decoy an unknown name is checked against: always the same for the same name.
    fn decoy_for<'a>(&self, state: &'a AuthState, user: &str) -> &'a str {
        let fallback = state.decoys.first().map(String::as_str).unwrap_or_default();
        if state.decoy_of_user.is_empty() {
            return fallback;
        }
        let mut message = b"decoy\0".to_vec();
        message.extend_from_slice(user.as_bytes());
        let tag = self.keys.sign(&message);
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        let pick = u64::from_le_bytes(first) % state.decoy_of_user.len() as u64;
        usize::try_from(pick)
            .ok()
            .and_then(|i| state.decoy_of_user.get(i))
            .and_then(|&d| state.decoys.get(d))
            .map_or(fallback, String::as_str)
    }

    /// A signed token for a user, valid for the configured lifetime.
    pub fn issue_token(&self, user: &str) -> std::result::Result<String, Status> {
        self.issue_token_in(&self.state(), user)
    }

    fn issue_token_in(&self, state: &AuthState, user: &str) -> std::result::Result<String, Status> {
        let ttl = i64::try_from(state.config.token_ttl.as_millis()).unwrap_or(i64::MAX);
        let claims = TokenClaims {
            u: user.to_string(),
            e: now_ms().saturating_add(ttl),
            n: URL_SAFE_NO_PAD.encode(random_bytes::<12>()?),
            g: state.config.users.get(user).map_or(0, |u| u.token_epoch),
        };
        let claims = serde_json::to_vec(&claims)
            .map_err(|e| Status::internal(format!("encoding a token failed: {e}")))?;
        let signed = format!("{TOKEN_PREFIX}.{}", URL_SAFE_NO_PAD.encode(claims));
        let mac = self.keys.sign(signed.as_bytes());
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())))
    }
}

/// A session's identifier: the first 16 bytes of the SHA-256 of its token, in hex.
fn session_of(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn verify_static_token(state: &AuthState, token: &str) -> std::result::Result<Principal, Status> {
    if token.chars().count() < MIN_STATIC_TOKEN_CHARS {
        return Err(Status::unauthenticated(format!(
            "invalid token: static tokens are at least {MIN_STATIC_TOKEN_CHARS} characters \
             (make one with `pitlake serve --new-token`)"
        )));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let now = now_ms();
    let mut found: Option<(&str, Option<i64>)> = None;
    // Every configured token is compared, whichever matches, so the time taken does not
    // depend on where (or whether) the token is in the file.
    for (name, user) in &state.config.users {
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
        Some((name, _)) => Authenticator::principal(state, name, Method::StaticToken)
            .ok_or_else(|| Status::unauthenticated("invalid token")),
        None => Err(Status::unauthenticated("invalid token")),
    }
}

/// A new random static token (32 bytes, URL-safe base64: 43 characters) and the SHA-256 (hex)
/// the auth file holds for it.
pub fn new_static_token() -> Result<(String, String)> {
    let token = URL_SAFE_NO_PAD
        .encode(random_bytes::<32>().map_err(|s| PitlakeError::Internal(s.message().to_string()))?);
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let hex = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok((token, hex))
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

    const SVC_TOKEN: &str = "svc-token-0123456789abcdefghijklmnopqrstuv";
    const OLD_TOKEN: &str = "old-token-0123456789abcdefghijklmnopqrstuv";

    /// A hash at the floor, made once (argon2 is slow on purpose).
    fn secret_hash() -> &'static str {
        static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        HASH.get_or_init(|| hash_password("secret").unwrap())
    }

    fn hash_with(password: &str, algorithm: argon2::Algorithm, m: u32, t: u32) -> String {
        let params = argon2::Params::new(m, t, 1, None).unwrap();
        Argon2::new(algorithm, argon2::Version::V0x13, params)
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

    fn config_text(alice_epoch: u64) -> String {
        format!(
            r#"
token_ttl = "10m"
[users.alice]
password_hash = "{}"
roles = ["reader"]
token_epoch = {alice_epoch}
[users.svc]
tokens = [{{ sha256 = "{}" }}, {{ sha256 = "{}", expires = "2001-01-01T00:00:00Z" }}]
roles = ["reader"]
[roles.reader]
grants = ["table:*"]
"#,
            secret_hash(),
            sha256_hex(SVC_TOKEN),
            sha256_hex(OLD_TOKEN)
        )
    }

    fn config() -> AuthConfig {
        AuthConfig::parse(&config_text(0), AuthFormat::Toml, "test").unwrap()
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
        let auth = Authenticator::new(config(), &SigningSecrets::random().unwrap()).unwrap();
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
        let other = Authenticator::new(config(), &SigningSecrets::random().unwrap()).unwrap();
        assert!(
            other
                .authenticate_bearer(&headers(&format!("Bearer {token}")))
                .is_err()
        );
    }

    #[test]
    fn wrong_passwords_and_unknown_users_read_alike() {
        let auth = Authenticator::new(config(), &SigningSecrets::random().unwrap()).unwrap();
        let wrong = auth.login_basic(&basic("alice", "nope")).unwrap_err();
        let unknown = auth.login_basic(&basic("mallory", "secret")).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert_eq!(wrong.message(), unknown.message());
        // A token-only user cannot log in with a password.
        assert!(auth.login_basic(&basic("svc", "")).is_err());
        assert!(auth.authenticate_bearer(&HeaderMap::new()).is_err());
        assert!(auth.authenticate_bearer(&basic("alice", "secret")).is_err());
        // Over-long names and passwords are refused before any password work, alike.
        let long_name = auth
            .login_basic(&basic(&"a".repeat(MAX_USER_NAME_CHARS + 1), "secret"))
            .unwrap_err();
        assert_eq!(long_name.message(), wrong.message());
        let long_password = basic_credentials(&basic("alice", &"p".repeat(2000))).unwrap_err();
        assert_eq!(long_password.message(), wrong.message());
    }

    #[test]
    fn decoys_copy_the_parameters_of_configured_hashes() {
        // Two parameter sets: an unknown name is checked against a decoy with one of them,
        // always the same one for the same name.
        let weak_ok = hash_with("pw", argon2::Algorithm::Argon2id, 7168, 5);
        let text = format!(
            "[users.a]\npassword_hash = \"{}\"\n[users.b]\npassword_hash = \"{weak_ok}\"\n",
            secret_hash()
        );
        let config = AuthConfig::parse(&text, AuthFormat::Toml, "test").unwrap();
        assert!(
            config
                .warnings()
                .iter()
                .any(|w| w.contains("2 different parameter sets")),
            "{:?}",
            config.warnings()
        );
        let auth = Authenticator::new(config, &SigningSecrets::random().unwrap()).unwrap();
        let state = auth.state();
        let params = |hash: &str| check_argon2_strength(&PasswordHash::new(hash).unwrap()).unwrap();
        let configured = [params(secret_hash()), params(&weak_ok)];
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..64 {
            let name = format!("nobody{i}");
            let decoy = auth.decoy_for(&state, &name);
            assert_eq!(
                decoy,
                auth.decoy_for(&state, &name),
                "a name keeps its decoy"
            );
            let p = params(decoy);
            assert!(
                configured.contains(&p),
                "{p} is none of the configured sets"
            );
            seen.insert(p);
        }
        assert_eq!(seen.len(), 2, "both parameter sets serve as decoys");
    }

    #[test]
    fn weak_or_foreign_hashes_are_refused() {
        let err = |hash: &str| {
            AuthConfig::parse(
                &format!("[users.a]\npassword_hash = \"{hash}\""),
                AuthFormat::Toml,
                "auth.toml",
            )
            .unwrap_err()
            .to_string()
        };
        let weak = err(&hash_with("pw", argon2::Algorithm::Argon2id, 1024, 1));
        assert!(
            weak.contains("too weak") && weak.contains("m=1024"),
            "{weak}"
        );
        assert!(weak.contains("--hash-password"), "{weak}");
        let argon2i = err(&hash_with("pw", argon2::Algorithm::Argon2i, 19456, 2));
        assert!(argon2i.contains("argon2id only"), "{argon2i}");
        // Just under the floor on each axis.
        assert!(err(&hash_with("pw", argon2::Algorithm::Argon2id, 19455, 2)).contains("too weak"));
        assert!(err(&hash_with("pw", argon2::Algorithm::Argon2id, 7168, 4)).contains("too weak"));
    }

    #[test]
    fn static_tokens_are_checked_by_hash_length_and_expiry() {
        let config = config();
        assert!(
            config
                .warnings()
                .iter()
                .any(|w| w.contains("`svc`") && w.contains("without `expires`")),
            "{:?}",
            config.warnings()
        );
        let auth = Authenticator::new(config, &SigningSecrets::random().unwrap()).unwrap();
        let p = auth
            .authenticate_bearer(&headers(&format!("Bearer {SVC_TOKEN}")))
            .unwrap();
        assert_eq!((p.user.as_str(), p.method), ("svc", Method::StaticToken));
        let err = auth
            .authenticate_bearer(&headers(&format!("Bearer {OLD_TOKEN}")))
            .unwrap_err();
        assert!(err.message().contains("expired"));
        let short = auth
            .authenticate_bearer(&headers("Bearer nope"))
            .unwrap_err();
        assert!(
            short.message().contains("at least 32"),
            "{}",
            short.message()
        );
        assert!(
            auth.authenticate_bearer(&headers(&format!("Bearer {}", "x".repeat(40))))
                .is_err()
        );
        let (token, sha) = new_static_token().unwrap();
        assert!(token.len() >= MIN_STATIC_TOKEN_CHARS);
        assert_eq!(sha, sha256_hex(&token));
    }

    #[test]
    fn reloading_revokes_by_epoch_and_by_removal() {
        let auth = Authenticator::new(config(), &SigningSecrets::random().unwrap()).unwrap();
        let (_, token) = auth.login_basic(&basic("alice", "secret")).unwrap();
        let bearer = headers(&format!("Bearer {token}"));
        // A reload that changes nothing for alice keeps her session.
        auth.reload(config()).unwrap();
        assert!(auth.authenticate_bearer(&bearer).is_ok());
        // A new epoch ends it; a new login works under the new epoch.
        let bumped = AuthConfig::parse(&config_text(1), AuthFormat::Toml, "test").unwrap();
        auth.reload(bumped).unwrap();
        let err = auth.authenticate_bearer(&bearer).unwrap_err();
        assert!(err.message().contains("revoked"), "{}", err.message());
        let (_, fresh) = auth.login_basic(&basic("alice", "secret")).unwrap();
        assert!(
            auth.authenticate_bearer(&headers(&format!("Bearer {fresh}")))
                .is_ok()
        );
        // Removing the static token (and the user) ends it.
        let svc = headers(&format!("Bearer {SVC_TOKEN}"));
        assert!(auth.authenticate_bearer(&svc).is_ok());
        let without = format!(
            "[users.alice]\npassword_hash = \"{}\"\ntoken_epoch = 1\n",
            secret_hash()
        );
        auth.reload(AuthConfig::parse(&without, AuthFormat::Toml, "test").unwrap())
            .unwrap();
        assert!(auth.authenticate_bearer(&svc).is_err());
        assert!(
            auth.authenticate_bearer(&headers(&format!("Bearer {fresh}")))
                .is_ok()
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let config = config();
        let auth = Authenticator::new(config.clone(), &SigningSecrets::random().unwrap()).unwrap();
        let credentials = basic_credentials(&basic("alice", "hunter2-password")).unwrap();
        for shown in [
            format!("{config:?}"),
            format!("{auth:?}"),
            format!("{credentials:?}"),
        ] {
            assert!(!shown.contains("argon2"), "{shown}");
            assert!(!shown.contains(&sha256_hex(SVC_TOKEN)), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
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
        let long_name = format!(
            "[users.{}]\ntokens = [{{ sha256 = \"{}\" }}]",
            "a".repeat(MAX_USER_NAME_CHARS + 1),
            "0".repeat(64)
        );
        assert!(err(&long_name).contains("at most 128 characters"));
        assert!(err("[roles.r]\ngrants = [\"tables:*\"]").contains("tables:*"));
        assert!(err("token_ttl = \"soon\"").contains("token_ttl"));
        assert!(err("bogus = 1").contains("bogus"));
        // A syntax error names the line but does not quote it (it may hold a hash).
        let quoted = err("[users.a]\npassword_hash = \"$argon2id$secret-hash\" x\n");
        assert!(
            quoted.contains("line 2") && !quoted.contains("secret-hash"),
            "{quoted}"
        );
        let json = AuthConfig::parse(
            r#"{"users": {}, "roles": {"r": {"grants": ["files"]}}}"#,
            AuthFormat::Json,
            "env",
        );
        assert!(json.is_ok());
    }
}
