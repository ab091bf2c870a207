//! Validated settings: raw flags become a [`Settings`] before anything runs.
//!
//! The CLI (every command, `pitlake serve` included) and the tests build a [`Settings`]; nothing
//! below this layer reads flags or environment variables. The one exception is object-store credentials: the
//! `AWS_*` / `GOOGLE_*` / `AZURE_*` variables and AWS profiles are read when the warehouse
//! connects (`storage::options` documents the order), as every object-store client does.
//!
//! A config file ([`ConfigFile`], TOML) can hold the warehouse and its object-store options:
//!
//! ```toml
//! warehouse = "s3://features/prod"
//!
//! [storage]
//! region = "eu-west-1"
//! aws_server_side_encryption = "aws:kms"
//! aws_sse_kms_key_id = "arn:aws:kms:eu-west-1:111122223333:key/…"
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::error::{PitlakeError, Result};

/// Whether a storage option (or environment variable) holds a secret: credentials, keys,
/// tokens, SAS signatures, passwords. `Debug` output shows such values as `<redacted>`. The test
/// is by name and errs on the side of hiding (an access key id is hidden too).
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // Names with `key` in them that are not secret: which KMS key, whether a bucket key is on.
    const PUBLIC: &[&str] = &["aws_sse_kms_key_id", "aws_sse_bucket_key_enabled"];
    if PUBLIC.contains(&key.as_str()) {
        return false;
    }
    [
        "secret",
        "password",
        "token",
        "sas",
        "key",
        "credential",
        "auth",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// Options as `Debug` shows them: sorted by name, secret values as `<redacted>`. Takes the
/// pairs of a map or of a list (`(&String, &String)`, `(&str, &str)`).
pub fn redacted_options<'a, K, V>(
    options: impl IntoIterator<Item = (&'a K, &'a V)>,
) -> std::collections::BTreeMap<&'a str, &'a str>
where
    K: AsRef<str> + ?Sized + 'a,
    V: AsRef<str> + ?Sized + 'a,
{
    options
        .into_iter()
        .map(|(k, v)| {
            let (k, v) = (k.as_ref(), v.as_ref());
            (k, if is_secret_option(k) { "<redacted>" } else { v })
        })
        .collect()
}

/// Where the warehouse lives, and how to reach it. Its `Debug` hides secret storage options
/// and any password in the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct WarehouseLocation {
    /// The root as a URL (`file:///abs/path`, `memory:///name`, `s3://bucket/prefix`).
    pub url: Url,
    /// Explicit object-store options (endpoint, region, credentials …): `--storage-option`
    /// values over the config file's `[storage]` table. Keys are object_store's
    /// (`aws_endpoint`, `region`, `allow_http` …) plus pitlake's retry and concurrency keys.
    pub storage_options: HashMap<String, String>,
}

impl std::fmt::Debug for WarehouseLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("<redacted>"));
        }
        f.debug_struct("WarehouseLocation")
            .field("url", &url.as_str())
            .field("storage_options", &redacted_options(&self.storage_options))
            .finish()
    }
}

impl WarehouseLocation {
    /// Parses a warehouse given as a URL or as a local path (relative paths are resolved against
    /// the current directory; `~` is expanded).
    pub fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PitlakeError::Config {
                name: "--warehouse".into(),
                message: "is empty; give a folder (./warehouse) or a URL (file:///…, memory:///)"
                    .into(),
            });
        }
        let url = match Url::parse(raw) {
            // A one-letter scheme is a Windows drive letter, not a URL.
            Ok(url) if url.scheme().len() > 1 => url,
            _ => local_path_url(raw)?,
        };
        match url.scheme() {
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss"
                if url.host_str().is_none_or(str::is_empty) =>
            {
                return Err(PitlakeError::Config {
                    name: "--warehouse".into(),
                    message: format!(
                        "`{raw}` names no bucket; write it like {}://bucket/prefix",
                        url.scheme()
                    ),
                });
            }
            "file" | "memory" | "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => {}
            other => {
                return Err(PitlakeError::Config {
                    name: "--warehouse".into(),
                    message: format!(
                        "unknown URL scheme `{other}:`; use a folder path, file://, memory://, \
                         s3://, gs:// or az://"
                    ),
                });
            }
        }
        let mut url = url;
        // One canonical form: no trailing slash, so `root/table` joins are unambiguous.
        let trimmed = url.path().trim_end_matches('/').to_string();
        url.set_path(&trimmed);
        Ok(Self {
            url,
            storage_options: HashMap::new(),
        })
    }

    /// The same location with these explicit object-store options (later keys win).
    pub fn with_storage_options(
        mut self,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        self.storage_options.extend(options);
        self
    }

    /// The local folder, when the warehouse is on the local file system.
    pub fn local_path(&self) -> Option<PathBuf> {
        if self.url.scheme() == "file" {
            self.url.to_file_path().ok()
        } else {
            None
        }
    }

    /// The URL as shown to people: a plain path for local folders.
    pub fn display(&self) -> String {
        match self.local_path() {
            Some(p) => p.display().to_string(),
            None => self.url.to_string(),
        }
    }
}

fn local_path_url(raw: &str) -> Result<Url> {
    let expanded = if let Some(rest) = raw.strip_prefix("~/") {
        match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(rest),
            None => PathBuf::from(raw),
        }
    } else {
        PathBuf::from(raw)
    };
    let absolute = if expanded.is_absolute() {
        expanded
    } else {
        std::env::current_dir()?.join(expanded)
    };
    let normalized = normalize_path(&absolute);
    Url::from_file_path(&normalized).map_err(|()| PitlakeError::Config {
        name: "--warehouse".into(),
        message: format!("`{raw}` is not a usable path"),
    })
}

/// Removes `.` and `..` components without touching the file system (the folder may not exist).
fn normalize_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Parses one `--storage-option`: `key=value` (the value may contain `=`).
pub fn parse_storage_option(raw: &str) -> std::result::Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!(
            "`{raw}` is not key=value; write it like region=eu-west-1 or allow_http=true"
        )),
    }
}

/// A pitlake config file: the warehouse and its object-store options.
///
/// Flags and their environment variables win over the file; the file wins over defaults.
/// Its `Debug` hides secret storage options.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConfigFile {
    /// `warehouse = "…"`: the warehouse, as `--warehouse` takes it.
    pub warehouse: Option<String>,
    /// The `[storage]` table: object-store options (strings, numbers and booleans).
    pub storage: HashMap<String, String>,
}

impl std::fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigFile")
            .field("warehouse", &self.warehouse)
            .field("storage", &redacted_options(&self.storage))
            .finish()
    }
}

impl ConfigFile {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PitlakeError::Config {
            name: "--config".into(),
            message: format!("cannot read `{}`: {e}", path.display()),
        })?;
        Self::parse(&text).map_err(|message| PitlakeError::Config {
            name: "--config".into(),
            message: format!("`{}`: {message}", path.display()),
        })
    }

    /// Parses a config file's text; the error says what is wrong and where.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let mut out = Self::default();
        for (key, value) in table {
            match (key.as_str(), value) {
                ("warehouse", toml::Value::String(w)) => out.warehouse = Some(w),
                ("storage", toml::Value::Table(storage)) => {
                    for (k, v) in storage {
                        let v = match v {
                            toml::Value::String(s) => s,
                            toml::Value::Integer(i) => i.to_string(),
                            toml::Value::Float(f) => f.to_string(),
                            toml::Value::Boolean(b) => b.to_string(),
                            other => {
                                return Err(format!(
                                    "[storage] {k} is a {}; give a string, number or boolean",
                                    other.type_str()
                                ));
                            }
                        };
                        out.storage.insert(k, v);
                    }
                }
                ("warehouse" | "storage", other) => {
                    return Err(format!(
                        "`{key}` is a {}; warehouse is a string and storage a table ([storage])",
                        other.type_str()
                    ));
                }
                (other, _) => {
                    return Err(format!(
                        "unknown key `{other}`; a config file holds `warehouse` and a \
                         [storage] table"
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Settings for one engine: the warehouse and the execution limits.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The warehouse root.
    pub warehouse: WarehouseLocation,
    /// The memory pool size in bytes; operators spill to disk beyond it. `None` = unbounded.
    pub memory_limit: Option<usize>,
    /// How many partitions queries run with (parallelism).
    pub target_partitions: usize,
    /// Rows per record batch.
    pub batch_size: usize,
    /// Where spill files go (`None` = the system temp folder).
    pub spill_dir: Option<PathBuf>,
    /// Who is acting: recorded as the author of registry changes and exports. Default:
    /// `PITLAKE_USER`, else the operating-system user (`USER`, `USERNAME`), else `unknown`.
    pub user: String,
    /// The Ballista scheduler queries run on (`http://host:port`), or `None` to run them here.
    pub cluster: Option<String>,
}

impl Settings {
    /// Settings with laptop-friendly defaults for the given warehouse: half the physical memory,
    /// one partition per core, 8192-row batches.
    pub fn new(warehouse: WarehouseLocation) -> Self {
        Self {
            warehouse,
            memory_limit: default_memory_limit(),
            target_partitions: default_target_partitions(),
            batch_size: 8192,
            spill_dir: None,
            user: default_user(),
            cluster: None,
        }
    }

    /// Validates the numeric settings.
    pub fn validate(&self) -> Result<()> {
        if self.target_partitions == 0 || self.target_partitions > 1024 {
            return Err(PitlakeError::Config {
                name: "--target-partitions".into(),
                message: format!("{} is out of range; use 1 to 1024", self.target_partitions),
            });
        }
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return Err(PitlakeError::Config {
                name: "--batch-size".into(),
                message: format!("{} is out of range; use 1 to 1048576", self.batch_size),
            });
        }
        if let Some(limit) = self.memory_limit
            && limit < 16 << 20
        {
            return Err(PitlakeError::Config {
                name: "--memory-limit".into(),
                message: format!(
                    "{} is too small to run queries; use at least 16MiB",
                    format_bytes(limit)
                ),
            });
        }
        Ok(())
    }
}

/// `PITLAKE_USER`, else the operating-system user, else `unknown`.
pub fn default_user() -> String {
    ["PITLAKE_USER", "USER", "USERNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// One partition per available core.
pub fn default_target_partitions() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Half of the physical memory, read from `/proc/meminfo` where there is one.
pub fn default_memory_limit() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024 / 2)
}

/// Parses a byte size: `1GiB`, `512MiB`, `1.5 GiB`, `2g`, `512MB`, `1048576`, or `unlimited`
/// (also `none` and `0`).
///
/// bytesize reads the number and the unit. One convention is pitlake's: a decimal or bare
/// suffix (`k`, `MB`, `2g`) means the power of 1024, as it does for the JVM's and Docker's
/// memory flags, which is what users of `--memory-limit` expect; bytesize alone would read `2g`
/// as 2·10⁹ bytes. So those suffixes are given to it as their binary twins.
pub fn parse_bytes(raw: &str) -> std::result::Result<Option<usize>, String> {
    let text = raw.trim();
    if matches!(
        text.to_ascii_lowercase().as_str(),
        "unlimited" | "none" | "0"
    ) {
        return Ok(None);
    }
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let (number, unit) = (number.trim(), unit.trim());
    let binary = match unit.to_ascii_lowercase().as_str() {
        "k" | "kb" => "KiB",
        "m" | "mb" => "MiB",
        "g" | "gb" => "GiB",
        "t" | "tb" => "TiB",
        _ => unit,
    };
    let size: bytesize::ByteSize = format!("{number}{binary}").parse().map_err(|_| {
        if number.parse::<f64>().is_ok() && !unit.is_empty() {
            format!("unknown unit `{unit}` in `{raw}`; use B, KiB, MiB, GiB or TiB")
        } else {
            format!("`{raw}` is not a size; write it like 512MiB, 2GiB or 1048576")
        }
    })?;
    // bytesize saturates a product that does not fit at u64::MAX, and truncates below a byte.
    match size.as_u64() {
        0 | u64::MAX => Err(format!("`{raw}` is out of range")),
        bytes => usize::try_from(bytes)
            .map(Some)
            .map_err(|_| format!("`{raw}` is out of range")),
    }
}

/// Parses a duration as every duration setting takes it: humantime's syntax (`250ms`, `30s`,
/// `15m`, `1h`, `7d`, `1h 30m`, `1.5s`; units are case-sensitive, `M` is months), or a bare
/// number of seconds (`90`).
pub fn parse_duration(raw: &str) -> std::result::Result<Duration, String> {
    let text = raw.trim();
    // A bare number is seconds: humantime asks for a unit, but these settings have always taken
    // seconds without one.
    let bare = !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.');
    let parsed = if bare {
        humantime::parse_duration(&format!("{text}s"))
    } else {
        humantime::parse_duration(text)
    };
    parsed.map_err(|e| {
        format!("`{raw}` is not a duration ({e}); write it like 500ms, 30s, 15m, 1h or 7d")
    })
}

/// Formats a byte count for people (`1.5 GiB`).
pub fn format_bytes(bytes: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("1GiB"), Ok(Some(1 << 30)));
        assert_eq!(parse_bytes("512mb"), Ok(Some(512 << 20)));
        assert_eq!(parse_bytes("2g"), Ok(Some(2 << 30)));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(Some(3 << 29)));
        assert_eq!(parse_bytes("4096"), Ok(Some(4096)));
        assert_eq!(parse_bytes("unlimited"), Ok(None));
        assert!(parse_bytes("lots").is_err());
        assert!(
            parse_bytes("3 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 3 "), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        // humantime's longer units are accepted too.
        assert_eq!(
            parse_duration("2 weeks"),
            Ok(Duration::from_secs(14 * 86_400))
        );
        let err = parse_duration("2 fortnights").unwrap_err();
        assert!(err.contains("`2 fortnights` is not a duration"), "{err}");
        assert!(err.contains("write it like"), "{err}");
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        assert!(parse_bytes("0.1").is_err());
        assert!(
            parse_bytes("99999999999999 TiB")
                .unwrap_err()
                .contains("out of range")
        );
        assert_eq!(parse_bytes("512MiB"), Ok(Some(512 << 20)));
        assert_eq!(parse_bytes("64mib"), Ok(Some(64 << 20)));
        assert_eq!(parse_bytes("4 KiB"), Ok(Some(4096)));
    }

    #[test]
    fn warehouse_paths_become_urls() {
        let w = WarehouseLocation::parse("/tmp/wh/").unwrap();
        assert_eq!(w.url.as_str(), "file:///tmp/wh");
        let w = WarehouseLocation::parse("/tmp/a/../wh").unwrap();
        assert_eq!(w.url.as_str(), "file:///tmp/wh");
        let w = WarehouseLocation::parse("memory:///test").unwrap();
        assert_eq!(w.url.scheme(), "memory");
        assert!(WarehouseLocation::parse("ftp://x").is_err());
        let w = WarehouseLocation::parse("s3://bucket/team/prod/").unwrap();
        assert_eq!(w.url.as_str(), "s3://bucket/team/prod");
        assert!(WarehouseLocation::parse("s3:///nobucket").is_err());
        assert!(WarehouseLocation::parse("").is_err());
    }

    #[test]
    fn config_files_and_storage_options_parse() {
        let c = ConfigFile::parse(
            "warehouse = \"s3://b/p\"\n[storage]\nregion = \"eu-west-1\"\nallow_http = true\nmax_retries = 3\n",
        )
        .unwrap();
        assert_eq!(c.warehouse.as_deref(), Some("s3://b/p"));
        assert_eq!(c.storage["allow_http"], "true");
        assert_eq!(c.storage["max_retries"], "3");
        assert!(
            ConfigFile::parse("wherehouse = 1")
                .unwrap_err()
                .contains("unknown key")
        );
        assert!(
            ConfigFile::parse("[storage]\nx = [1]")
                .unwrap_err()
                .contains("array")
        );
        assert_eq!(
            parse_storage_option("aws_sse_customer_key_base64=ab=="),
            Ok(("aws_sse_customer_key_base64".into(), "ab==".into()))
        );
        assert!(parse_storage_option("region").is_err());
    }

    #[test]
    fn validates_ranges() {
        let mut s = Settings::new(WarehouseLocation::parse("memory:///x").unwrap());
        assert!(s.validate().is_ok());
        s.target_partitions = 0;
        assert!(s.validate().is_err());
        s.target_partitions = 2;
        s.memory_limit = Some(1024);
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("at least 16MiB")
        );
    }

    #[test]
    fn debug_hides_secret_storage_options() {
        let location = WarehouseLocation::parse("s3://bucket/prefix")
            .unwrap()
            .with_storage_options([
                ("region".to_string(), "eu-west-1".to_string()),
                ("aws_secret_access_key".to_string(), "SECRET-1".to_string()),
                (
                    "azure_storage_account_key".to_string(),
                    "SECRET-2".to_string(),
                ),
                ("azure_storage_sas_key".to_string(), "SECRET-3".to_string()),
                ("aws_session_token".to_string(), "SECRET-4".to_string()),
                (
                    "google_service_account_key".to_string(),
                    "SECRET-5".to_string(),
                ),
                (
                    "aws_sse_customer_key_base64".to_string(),
                    "SECRET-6".to_string(),
                ),
            ]);
        let settings = Settings::new(location.clone());
        let file = ConfigFile {
            warehouse: None,
            storage: location.storage_options.clone(),
        };
        for shown in [format!("{settings:?}"), format!("{file:?}")] {
            assert!(!shown.contains("SECRET-"), "{shown}");
            assert!(shown.contains("eu-west-1"), "{shown}");
        }
        assert!(!is_secret_option("aws_sse_kms_key_id"));
        assert!(!is_secret_option("endpoint"));
    }
}
