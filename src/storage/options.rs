//! Object-store settings: which options a warehouse's store is built with, and where each one
//! came from.
//!
//! A warehouse on `s3://` takes its settings from four places. Explicit options win; the rest
//! only fill in what is still missing, in the order the AWS CLI uses:
//!
//! 1. explicit options: `--storage-option key=value` (repeatable), then the `[storage]` table of
//!    the config file (`--config` / `PITLAKE_CONFIG`);
//! 2. the AWS profile those options name (`profile = "…"`), if they name one;
//! 3. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!    `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, and every other
//!    `AWS_*` variable that object_store knows;
//! 4. the profile `AWS_PROFILE` names (or `default`), from `~/.aws/credentials` and
//!    `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`).
//!
//! Credentials are taken as a unit (key id, secret and session token from the same place), so a
//! key id from one source is never paired with a secret from another. Profiles with static keys
//! work directly; SSO, `role_arn` and `credential_process` profiles need the AWS CLI to export
//! their credentials first (`aws configure export-credentials --format env`).
//!
//! `gs://` and `az://` (`abfs[s]://`) warehouses take object_store's `GOOGLE_*` / `AZURE_*`
//! environment variables, then the explicit options on top.
//!
//! Beside the stores' own keys, pitlake understands, for every object store:
//! - `max_retries`, `retry_timeout`, `backoff_config.init_backoff`, `backoff_config.max_backoff`,
//!   `backoff_config.base`: how failed requests are retried (the names deltalake uses);
//! - `concurrency_limit`: the most requests in flight at once;
//! - `aws_s3_allow_unsafe_rename`: allow writes to an S3 store that cannot refuse an existing
//!   object (no conditional put), for a warehouse with exactly one writer.
//!
//! An unknown key is an error naming the closest known ones: a misspelt encryption setting must
//! not be dropped silently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::gcp::GoogleConfigKey;
use object_store::{BackoffConfig, RetryConfig};

use crate::config::{is_secret_option, redacted_options};
use crate::error::{PitlakeError, Result, closest_first};

/// The kinds of store a warehouse can live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A local folder (`file://`).
    Local,
    /// The process-wide in-memory store (`memory://`).
    Memory,
    /// Amazon S3 and S3-compatible servers (`s3://`, `s3a://`).
    S3,
    /// Google Cloud Storage (`gs://`).
    Gcs,
    /// Azure Blob Storage / ADLS Gen2 (`az://`, `abfs://`, `abfss://`, `azure://`, `adl://`).
    Azure,
}

impl Backend {
    /// The backend for a URL scheme; `None` for schemes pitlake does not store tables on.
    pub(crate) fn of_scheme(scheme: &str) -> Option<Self> {
        Some(match scheme {
            "file" => Self::Local,
            "memory" => Self::Memory,
            "s3" | "s3a" => Self::S3,
            "gs" => Self::Gcs,
            "az" | "abfs" | "abfss" | "azure" | "adl" => Self::Azure,
            _ => return None,
        })
    }
}

/// The environment the options are resolved in: variables and the home folder. Tests pass their
/// own, so resolution never depends on the machine it runs on. Its `Debug` shows variable names
/// only (values may be credentials).
#[derive(Clone, Default)]
pub(crate) struct Environment {
    /// Environment variables.
    pub vars: HashMap<String, String>,
    /// The home folder (for `~/.aws/…`).
    pub home: Option<PathBuf>,
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.vars.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Environment")
            .field("vars", &names)
            .field("home", &self.home)
            .finish()
    }
}

impl Environment {
    /// The process's environment.
    pub(crate) fn current() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Everything a store is built with, resolved and validated. Its `Debug` hides secret values.
#[derive(Clone)]
pub(crate) struct StoreOptions {
    /// The store's own options (object_store config keys, canonical names), in the order given.
    pub store: Vec<(String, String)>,
    /// How failed requests are retried.
    pub retry: RetryConfig,
    /// The most requests in flight at once (`None`: unlimited).
    pub concurrency_limit: Option<usize>,
    /// The user accepted commits without put-if-absent (one writer only).
    pub allow_unsafe_rename: bool,
    /// Where the credentials came from, for messages (`--storage-option`, `environment`,
    /// `profile default`); `None` when none were found.
    pub credentials_from: Option<String>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store: Vec<(&str, &str)> = self
            .store
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_option(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("StoreOptions")
            .field("store", &store)
            .field("retry", &self.retry)
            .field("concurrency_limit", &self.concurrency_limit)
            .field("allow_unsafe_rename", &self.allow_unsafe_rename)
            .field("credentials_from", &self.credentials_from)
            .finish()
    }
}

impl StoreOptions {
    /// The value of a store option, by its canonical name.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.store
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

const RETRY_KEYS: [&str; 5] = [
    "max_retries",
    "retry_timeout",
    "backoff_config.init_backoff",
    "backoff_config.max_backoff",
    "backoff_config.base",
];
const CONCURRENCY_KEY: &str = "concurrency_limit";
const UNSAFE_KEY: &str = "aws_s3_allow_unsafe_rename";
const PROFILE_KEYS: [&str; 2] = ["profile", "aws_profile"];

/// Keys named in "did you mean" lists (the common ones; object_store accepts more aliases).
const KNOWN_S3_KEYS: &[&str] = &[
    "region",
    "endpoint",
    "allow_http",
    "access_key_id",
    "secret_access_key",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region",
    "aws_endpoint_url",
    "aws_allow_http",
    "aws_virtual_hosted_style_request",
    "aws_server_side_encryption",
    "aws_sse_kms_key_id",
    "aws_sse_bucket_key_enabled",
    "aws_sse_customer_key_base64",
    "aws_conditional_put",
    "aws_skip_signature",
    "aws_request_payer",
    "aws_checksum_algorithm",
    "aws_role_arn",
    "aws_web_identity_token_file",
    "aws_s3_addressing_style",
    "profile",
    "timeout",
    "connect_timeout",
    "allow_invalid_certificates",
    "proxy_url",
    "max_retries",
    "retry_timeout",
    "backoff_config.init_backoff",
    "backoff_config.max_backoff",
    "backoff_config.base",
    "concurrency_limit",
    "aws_s3_allow_unsafe_rename",
];

/// Resolves a warehouse's options for `backend` from the explicit options and `env`.
///
/// `explicit` holds `--storage-option` values over config-file values (the caller merged them).
pub(crate) fn resolve(
    backend: Backend,
    explicit: &HashMap<String, String>,
    env: &Environment,
) -> Result<StoreOptions> {
    let mut out = StoreOptions {
        store: Vec::new(),
        retry: RetryConfig::default(),
        concurrency_limit: None,
        allow_unsafe_rename: false,
        credentials_from: None,
    };
    // Sorted, so that errors and the resulting store do not depend on hash order.
    let mut keys: Vec<(&String, &String)> = explicit.iter().collect();
    keys.sort();
    let mut rest: Vec<(String, String)> = Vec::new();
    for (key, value) in keys {
        let lower = key.trim().to_ascii_lowercase();
        let value = value.trim().to_string();
        if RETRY_KEYS.contains(&lower.as_str()) {
            apply_retry(&mut out.retry, &lower, &value)?;
        } else if lower == CONCURRENCY_KEY {
            out.concurrency_limit = Some(parse_positive(&lower, &value)?);
        } else if lower == UNSAFE_KEY {
            out.allow_unsafe_rename = parse_bool(&lower, &value)?;
        } else {
            rest.push((lower, value));
        }
    }
    match backend {
        Backend::Local | Backend::Memory => {}
        Backend::S3 => resolve_s3(&mut out, rest, env)?,
        Backend::Gcs => {
            for (key, value) in rest {
                let canonical = GoogleConfigKey::from_str(&key)
                    .map(|k| k.as_ref().to_string())
                    .map_err(|_| unknown_key(&key, "gs://", &["google_service_account"]))?;
                out.store.push((canonical, value));
            }
        }
        Backend::Azure => {
            for (key, value) in rest {
                let canonical = AzureConfigKey::from_str(&key)
                    .map(|k| k.as_ref().to_string())
                    .map_err(|_| {
                        unknown_key(
                            &key,
                            "az://",
                            &[
                                "azure_storage_account_name",
                                "azure_storage_account_key",
                                "azure_storage_use_emulator",
                            ],
                        )
                    })?;
                out.store.push((canonical, value));
            }
        }
    }
    check_plain_http(&out)?;
    Ok(out)
}

fn unknown_key(key: &str, scheme: &str, known: &[&str]) -> PitlakeError {
    let candidates = closest_first(key, known.iter().map(|k| k.to_string()));
    let hint = match candidates.as_slice() {
        [one] => format!("did you mean `{one}`?"),
        _ => format!(
            "common ones are: {}",
            known
                .iter()
                .take(12)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    PitlakeError::Config {
        name: format!("--storage-option {key}"),
        message: format!(
            "is not an option for {scheme} warehouses; {hint} (docs/operations.md lists them)"
        ),
    }
}

/// The canonical name of an S3 key, or `None` when object_store does not know it.
fn s3_key(key: &str) -> Option<String> {
    // deltalake's spelling of the addressing style; object_store's is a boolean.
    if key == "aws_s3_addressing_style" || key == "addressing_style" {
        return Some("aws_s3_addressing_style".to_string());
    }
    AmazonS3ConfigKey::from_str(key)
        .ok()
        .map(|k| k.as_ref().to_string())
}

const KEY_ID: &str = "aws_access_key_id";
const SECRET: &str = "aws_secret_access_key";
const TOKEN: &str = "aws_session_token";
const REGION: &str = "aws_region";
const ENDPOINT: &str = "aws_endpoint";

/// One source of S3 settings, canonical keys. Its `Debug` hides secret values.
#[derive(Default)]
struct Source {
    name: String,
    values: HashMap<String, String>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("values", &redacted_options(&self.values))
            .finish()
    }
}

impl Source {
    fn has_credentials(&self) -> bool {
        self.values.contains_key(KEY_ID)
    }
}

fn resolve_s3(
    out: &mut StoreOptions,
    explicit: Vec<(String, String)>,
    env: &Environment,
) -> Result<()> {
    let mut given = Source {
        name: "--storage-option / config file".into(),
        values: HashMap::new(),
    };
    let mut explicit_profile = None;
    for (key, value) in explicit {
        if PROFILE_KEYS.contains(&key.as_str()) {
            explicit_profile = Some(value);
            continue;
        }
        let Some(canonical) = s3_key(&key) else {
            return Err(unknown_key(&key, "s3://", KNOWN_S3_KEYS));
        };
        given.values.insert(canonical, value);
    }
    let environment = env_source(env);
    let profile_name = explicit_profile
        .clone()
        .or_else(|| env.var("AWS_PROFILE").map(str::to_string));
    // A profile that was named must exist; the implicit `default` may be absent.
    let profile = read_profile(
        env,
        profile_name.as_deref().unwrap_or("default"),
        profile_name.is_some(),
    )?;
    let order: Vec<&Source> = if explicit_profile.is_some() {
        [Some(&given), profile.as_ref(), Some(&environment)]
            .into_iter()
            .flatten()
            .collect()
    } else {
        [Some(&given), Some(&environment), profile.as_ref()]
            .into_iter()
            .flatten()
            .collect()
    };

    if given.values.contains_key(SECRET) && !given.values.contains_key(KEY_ID) {
        return Err(PitlakeError::Config {
            name: "--storage-option aws_secret_access_key".into(),
            message: "is given without aws_access_key_id; give both (or neither, to use the \
                      environment or a profile)"
                .into(),
        });
    }
    let mut merged: Vec<(String, String)> = Vec::new();
    if let Some(source) = order.iter().find(|s| s.has_credentials()) {
        let Some(secret) = source.values.get(SECRET) else {
            return Err(PitlakeError::Config {
                name: "aws_access_key_id".into(),
                message: format!(
                    "from {} has no aws_secret_access_key beside it; give both",
                    source.name
                ),
            });
        };
        merged.push((KEY_ID.into(), source.values[KEY_ID].clone()));
        merged.push((SECRET.into(), secret.clone()));
        if let Some(token) = source.values.get(TOKEN) {
            merged.push((TOKEN.into(), token.clone()));
        }
        out.credentials_from = Some(source.name.clone());
    }
    let mut seen: Vec<String> = vec![KEY_ID.into(), SECRET.into(), TOKEN.into()];
    for source in &order {
        let mut keys: Vec<&String> = source.values.keys().collect();
        keys.sort();
        for key in keys {
            if seen.contains(key) {
                continue;
            }
            seen.push(key.clone());
            merged.push((key.clone(), source.values[key].clone()));
        }
    }
    // `path` / `virtual` (deltalake's spelling) becomes object_store's boolean.
    if let Some(pos) = merged
        .iter()
        .position(|(k, _)| k == "aws_s3_addressing_style")
    {
        let (_, style) = merged.remove(pos);
        let virtual_hosted = match style.to_ascii_lowercase().as_str() {
            "virtual" => "true",
            "path" => "false",
            other => {
                return Err(PitlakeError::Config {
                    name: "--storage-option aws_s3_addressing_style".into(),
                    message: format!("`{other}` is not an addressing style; use path or virtual"),
                });
            }
        };
        if !merged
            .iter()
            .any(|(k, _)| k == "aws_virtual_hosted_style_request")
        {
            merged.push((
                "aws_virtual_hosted_style_request".into(),
                virtual_hosted.into(),
            ));
        }
    }
    // deltalake's unsafe-rename switch may come from the environment, as deltalake reads it.
    if !out.allow_unsafe_rename
        && let Some(value) = env.var("AWS_S3_ALLOW_UNSAFE_RENAME")
    {
        out.allow_unsafe_rename = parse_bool("AWS_S3_ALLOW_UNSAFE_RENAME", value)?;
    }
    out.store = merged;
    Ok(())
}

/// The `AWS_*` variables object_store knows, as one source.
fn env_source(env: &Environment) -> Source {
    let mut values = HashMap::new();
    let mut names: Vec<&String> = env.vars.keys().collect();
    names.sort();
    for name in names {
        if !name.starts_with("AWS_")
            || name == "AWS_PROFILE"
            || name == "AWS_S3_ALLOW_UNSAFE_RENAME"
        {
            continue;
        }
        let Some(value) = env.var(name) else { continue };
        if let Some(key) = s3_key(&name.to_ascii_lowercase()) {
            values.insert(key, value.to_string());
        }
    }
    // AWS_REGION wins over AWS_DEFAULT_REGION, as in the AWS SDKs.
    if let Some(region) = env.var("AWS_REGION") {
        values.insert(REGION.into(), region.to_string());
    }
    values.remove("aws_default_region");
    if !values.contains_key(REGION)
        && let Some(region) = env.var("AWS_DEFAULT_REGION")
    {
        values.insert(REGION.into(), region.to_string());
    }
    Source {
        name: "the environment (AWS_*)".into(),
        values,
    }
}

/// Reads a profile from the shared credentials and config files.
fn read_profile(env: &Environment, name: &str, required: bool) -> Result<Option<Source>> {
    let home_file = |parts: &[&str]| {
        env.home.as_ref().map(|h| {
            parts
                .iter()
                .fold(h.clone(), |path: PathBuf, part| path.join(part))
        })
    };
    let credentials_path = env
        .var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home_file(&[".aws", "credentials"]));
    let config_path = env
        .var("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home_file(&[".aws", "config"]));
    let credentials = credentials_path
        .as_deref()
        .and_then(|p| ini_section(p, name, false));
    let config = config_path
        .as_deref()
        .and_then(|p| ini_section(p, name, true));
    if credentials.is_none() && config.is_none() {
        if required {
            return Err(PitlakeError::Config {
                name: "profile".into(),
                message: format!(
                    "AWS profile `{name}` is in neither {} nor {}; check the name, or set \
                     AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE",
                    shown(credentials_path.as_deref()),
                    shown(config_path.as_deref())
                ),
            });
        }
        return Ok(None);
    }
    let mut raw: HashMap<String, String> = config.unwrap_or_default();
    // The credentials file wins over the config file, as in the AWS CLI.
    raw.extend(credentials.unwrap_or_default());
    let mut values = HashMap::new();
    for (key, value) in &raw {
        let canonical = match key.as_str() {
            "aws_access_key_id" => KEY_ID,
            "aws_secret_access_key" => SECRET,
            "aws_session_token" => TOKEN,
            "region" => REGION,
            "endpoint_url" => ENDPOINT,
            _ => continue,
        };
        values.insert(canonical.to_string(), value.clone());
    }
    if !values.contains_key(KEY_ID)
        && required
        && let Some(kind) = [
            "sso_start_url",
            "sso_session",
            "role_arn",
            "credential_process",
        ]
        .into_iter()
        .find(|k| raw.contains_key(*k))
    {
        return Err(PitlakeError::Config {
            name: "profile".into(),
            message: format!(
                "AWS profile `{name}` gets its credentials through `{kind}`, which pitlake does \
                 not run itself; export them first (eval \"$(aws configure \
                 export-credentials --profile {name} --format env)\") or give \
                 aws_access_key_id / aws_secret_access_key"
            ),
        });
    }
    Ok(Some(Source {
        name: format!("AWS profile `{name}`"),
        values,
    }))
}

fn shown(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.aws/credentials".into())
}

/// The `key = value` lines of one section of an AWS ini file (`[name]`, or `[profile name]` in
/// the config file). Nested blocks (indented lines) are skipped.
fn ini_section(path: &Path, name: &str, config_file: bool) -> Option<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let wanted: Vec<String> = if config_file && name != "default" {
        vec![format!("profile {name}")]
    } else if config_file {
        vec!["default".into(), "profile default".into()]
    } else {
        vec![name.to_string()]
    };
    let mut found = None;
    let mut current: Option<HashMap<String, String>> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if let Some(done) = current.take() {
                found.get_or_insert_with(HashMap::new).extend(done);
            }
            let header = header.split_whitespace().collect::<Vec<_>>().join(" ");
            if wanted.contains(&header) {
                current = Some(HashMap::new());
            }
            continue;
        }
        if let Some(section) = current.as_mut()
            && let Some((key, value)) = line.split_once('=')
        {
            section.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    if let Some(done) = current.take() {
        found.get_or_insert_with(HashMap::new).extend(done);
    }
    found
}

/// Plain HTTP only when asked for: credentials and data travel in the clear over it.
fn check_plain_http(options: &StoreOptions) -> Result<()> {
    let endpoint = options
        .get(ENDPOINT)
        .or_else(|| options.get("azure_storage_endpoint"))
        .or_else(|| options.get("google_base_url"));
    let Some(endpoint) = endpoint else {
        return Ok(());
    };
    if !endpoint.to_ascii_lowercase().starts_with("http://") {
        return Ok(());
    }
    let allowed = options
        .get("allow_http")
        .or_else(|| options.get("aws_allow_http"))
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    if allowed {
        return Ok(());
    }
    Err(PitlakeError::Config {
        name: "endpoint".into(),
        message: format!(
            "`{endpoint}` is plain HTTP, and pitlake talks to object stores over HTTPS unless \
             told otherwise; use an https:// endpoint, or for a local test server add \
             --storage-option allow_http=true"
        ),
    })
}

fn apply_retry(retry: &mut RetryConfig, key: &str, value: &str) -> Result<()> {
    let backoff: &mut BackoffConfig = &mut retry.backoff;
    match key {
        "max_retries" => retry.max_retries = parse_count(key, value)?,
        "retry_timeout" => retry.retry_timeout = parse_duration(key, value)?,
        "backoff_config.init_backoff" => backoff.init_backoff = parse_duration(key, value)?,
        "backoff_config.max_backoff" => backoff.max_backoff = parse_duration(key, value)?,
        "backoff_config.base" => {
            backoff.base = value
                .parse::<f64>()
                .ok()
                .filter(|b| b.is_finite() && *b >= 1.0)
                .ok_or_else(|| PitlakeError::Config {
                    name: format!("--storage-option {key}"),
                    message: format!("`{value}` is not a number of at least 1 (e.g. 2)"),
                })?;
        }
        _ => {}
    }
    Ok(())
}

fn parse_count(key: &str, value: &str) -> Result<usize> {
    value.parse().map_err(|_| PitlakeError::Config {
        name: format!("--storage-option {key}"),
        message: format!("`{value}` is not a whole number (e.g. 3)"),
    })
}

fn parse_positive(key: &str, value: &str) -> Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(PitlakeError::Config {
            name: format!("--storage-option {key}"),
            message: format!("`{value}` is not a positive whole number (e.g. 16)"),
        }),
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(PitlakeError::Config {
            name: key.to_string(),
            message: format!("`{value}` is not true or false"),
        }),
    }
}

/// Parses a storage option's duration (`crate::config::parse_duration`: `250ms`, `30s`, `2m`, a
/// bare number of seconds), at most about 31 years, so that object_store's retry arithmetic on
/// instants cannot overflow.
pub(crate) fn parse_duration(key: &str, value: &str) -> Result<Duration> {
    let refused = |message: String| PitlakeError::Config {
        name: format!("--storage-option {key}"),
        message,
    };
    let duration = crate::config::parse_duration(value).map_err(refused)?;
    if duration >= Duration::from_secs(1_000_000_000) {
        return Err(refused(format!(
            "`{value}` is too long; write at most a few years, like 60s or 10m"
        )));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        Environment {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: None,
        }
    }

    fn explicit(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn explicit_options_win_over_the_environment() {
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "env-key"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "https://env.example"),
        ]);
        let o = resolve(
            Backend::S3,
            &explicit(&[
                ("endpoint", "https://given.example"),
                ("REGION", "us-west-2"),
            ]),
            &e,
        )
        .unwrap();
        assert_eq!(o.get("aws_endpoint"), Some("https://given.example"));
        assert_eq!(o.get("aws_region"), Some("us-west-2"));
        assert_eq!(o.get("aws_access_key_id"), Some("env-key"));
        assert_eq!(
            o.credentials_from.as_deref(),
            Some("the environment (AWS_*)")
        );
    }

    #[test]
    fn credentials_come_as_a_unit() {
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "env-key"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-token"),
        ]);
        let o = resolve(
            Backend::S3,
            &explicit(&[("access_key_id", "k"), ("secret_access_key", "s")]),
            &e,
        )
        .unwrap();
        assert_eq!(o.get("aws_access_key_id"), Some("k"));
        assert_eq!(o.get("aws_secret_access_key"), Some("s"));
        // The environment's token belongs to the environment's key: not used.
        assert_eq!(o.get("aws_session_token"), None);
        let half = resolve(
            Backend::S3,
            &explicit(&[("aws_secret_access_key", "s")]),
            &e,
        );
        assert!(
            half.unwrap_err()
                .to_string()
                .contains("without aws_access_key_id")
        );
    }

    #[test]
    fn profiles_fill_in_and_a_named_profile_beats_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let aws = dir.path().join(".aws");
        std::fs::create_dir_all(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = dk\naws_secret_access_key = ds\n\n\
             [team]\naws_access_key_id=tk\naws_secret_access_key=ts\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = eu-central-1\n[profile team]\nregion = ap-south-1\n\
             endpoint_url = https://team.example\ns3 =\n  addressing_style = path\n\
             [profile sso]\nsso_session = corp\n",
        )
        .unwrap();
        let mut e = env(&[("AWS_ACCESS_KEY_ID", "ek"), ("AWS_SECRET_ACCESS_KEY", "es")]);
        e.home = Some(dir.path().to_path_buf());
        // The default profile only fills what the environment lacks.
        let o = resolve(Backend::S3, &HashMap::new(), &e).unwrap();
        assert_eq!(o.get("aws_access_key_id"), Some("ek"));
        assert_eq!(o.get("aws_region"), Some("eu-central-1"));
        // A profile named in the options comes before the environment.
        let o = resolve(Backend::S3, &explicit(&[("profile", "team")]), &e).unwrap();
        assert_eq!(o.get("aws_access_key_id"), Some("tk"));
        assert_eq!(o.get("aws_region"), Some("ap-south-1"));
        assert_eq!(o.get("aws_endpoint"), Some("https://team.example"));
        // AWS_PROFILE names a profile below the environment's keys.
        e.vars.insert("AWS_PROFILE".into(), "team".into());
        let o = resolve(Backend::S3, &HashMap::new(), &e).unwrap();
        assert_eq!(o.get("aws_access_key_id"), Some("ek"));
        assert_eq!(o.get("aws_region"), Some("ap-south-1"));
        let missing = resolve(Backend::S3, &explicit(&[("profile", "nope")]), &e);
        assert!(missing.unwrap_err().to_string().contains("profile `nope`"));
        e.vars.clear();
        let sso = resolve(Backend::S3, &explicit(&[("profile", "sso")]), &e);
        assert!(sso.unwrap_err().to_string().contains("export-credentials"));
    }

    #[test]
    fn unknown_keys_and_plain_http_are_refused() {
        let e = env(&[]);
        let err = resolve(
            Backend::S3,
            &explicit(&[("aws_server_side_encrypton", "aws:kms")]),
            &e,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("aws_server_side_encryption"),
            "{err}"
        );
        let err = resolve(
            Backend::S3,
            &explicit(&[("endpoint", "http://127.0.0.1:9000")]),
            &e,
        )
        .unwrap_err();
        assert!(err.to_string().contains("allow_http=true"), "{err}");
        let ok = resolve(
            Backend::S3,
            &explicit(&[
                ("endpoint", "http://127.0.0.1:9000"),
                ("allow_http", "true"),
            ]),
            &e,
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn pitlake_keys_configure_retries_limits_and_styles() {
        let o = resolve(
            Backend::S3,
            &explicit(&[
                ("max_retries", "2"),
                ("retry_timeout", "5s"),
                ("backoff_config.init_backoff", "50ms"),
                ("concurrency_limit", "8"),
                ("aws_s3_addressing_style", "virtual"),
                ("aws_server_side_encryption", "aws:kms"),
                ("aws_sse_kms_key_id", "arn:aws:kms:key"),
            ]),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(o.retry.max_retries, 2);
        assert_eq!(o.retry.retry_timeout, Duration::from_secs(5));
        assert_eq!(o.retry.backoff.init_backoff, Duration::from_millis(50));
        assert_eq!(o.concurrency_limit, Some(8));
        assert_eq!(o.get("aws_virtual_hosted_style_request"), Some("true"));
        assert_eq!(o.get("aws_server_side_encryption"), Some("aws:kms"));
        assert_eq!(o.get("aws_sse_kms_key_id"), Some("arn:aws:kms:key"));
        assert!(!o.allow_unsafe_rename);
        assert!(
            resolve(
                Backend::S3,
                &explicit(&[("max_retries", "many")]),
                &env(&[])
            )
            .is_err()
        );
        let unsafe_env = env(&[("AWS_S3_ALLOW_UNSAFE_RENAME", "true")]);
        assert!(
            resolve(Backend::S3, &HashMap::new(), &unsafe_env)
                .unwrap()
                .allow_unsafe_rename
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_duration("k", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("k", "2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("k", "3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("k", "soon").is_err());
    }

    #[test]
    fn debug_hides_credentials() {
        let e = env(&[
            ("AWS_SECRET_ACCESS_KEY", "hunter-env"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        let o = resolve(
            Backend::S3,
            &explicit(&[
                ("access_key_id", "key-id"),
                ("secret_access_key", "hunter-flag"),
                ("session_token", "hunter-token"),
            ]),
            &e,
        )
        .unwrap();
        assert_eq!(o.get("aws_secret_access_key"), Some("hunter-flag"));
        for shown in [format!("{o:?}"), format!("{e:?}")] {
            assert!(!shown.contains("hunter"), "{shown}");
        }
        assert!(format!("{e:?}").contains("AWS_SECRET_ACCESS_KEY"));
    }
}
