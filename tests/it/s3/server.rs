//! The object-store servers the tests run against — S3 (moto) and Azure Blob Storage (Azurite) —
//! shared by the slt runner and the integration tests (`#[path]`-included by both).
//!
//! - `PITLAKE_TEST_S3_ENDPOINT` / `PITLAKE_TEST_AZURE_ENDPOINT` set (scripts/test.sh and CI start
//!   the servers once for the whole run; `eval "$(scripts/storage-servers.sh start)"` does the
//!   same in a shell): those servers are used, with the bucket `PITLAKE_TEST_S3_BUCKET` and the
//!   container `PITLAKE_TEST_AZURE_CONTAINER` (both default `pitlake-test`).
//! - Unset: the first test that needs one starts it (`scripts/s3_server.py`,
//!   `scripts/azure_server.py`) from the venv `PITLAKE_PY_VENV` (default
//!   `~/.cache/pitlake-py-venv`) and Azurite in `PITLAKE_NODE_DIR` (default
//!   `~/.cache/pitlake-node`), on 127.0.0.1; the server exits when this test process does.
//! - Neither possible: the test fails (never skips) and says how to get a server.

#![allow(
    dead_code,
    reason = "shared by tests/slt.rs and tests/it, which use different parts of it"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Credentials the test server accepts (moto accepts any; these are fixed for readability).
pub const ACCESS_KEY_ID: &str = "pitlake-test";
/// The secret paired with [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "pitlake-test-secret";

/// Azurite's well-known development account and its documented, public key.
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
/// The key of [`AZURE_ACCOUNT`].
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Which kind of store a test server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// S3 (moto).
    S3,
    /// Azure Blob Storage (Azurite).
    Azure,
}

/// A running object-store server.
#[derive(Debug)]
pub struct StoreServer {
    /// What it speaks.
    pub kind: Kind,
    /// `http://127.0.0.1:PORT` (Azure: `…/devstoreaccount1`).
    pub endpoint: String,
    /// A bucket (container) that exists on it.
    pub bucket: String,
}

impl StoreServer {
    /// Storage options that reach this server (or `endpoint`, e.g. a proxy in front of it).
    pub fn options_for(&self, endpoint: &str) -> Vec<(String, String)> {
        let pairs: Vec<(&str, &str)> = match self.kind {
            Kind::S3 => vec![
                ("aws_endpoint", endpoint),
                ("aws_allow_http", "true"),
                ("aws_region", "us-east-1"),
                ("aws_access_key_id", ACCESS_KEY_ID),
                ("aws_secret_access_key", SECRET_ACCESS_KEY),
            ],
            Kind::Azure => vec![
                ("azure_storage_endpoint", endpoint),
                ("allow_http", "true"),
                ("azure_storage_account_name", AZURE_ACCOUNT),
                ("azure_storage_account_key", AZURE_KEY),
            ],
        };
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Storage options that reach this server.
    pub fn options(&self) -> Vec<(String, String)> {
        self.options_for(&self.endpoint)
    }

    /// A fresh warehouse URL on the server: `s3://<bucket>/<tag>-<unique>` (`az://…`).
    pub fn warehouse(&self, tag: &str) -> String {
        let scheme = match self.kind {
            Kind::S3 => "s3",
            Kind::Azure => "az",
        };
        format!("{scheme}://{}/{}", self.bucket, unique(tag))
    }
}

/// A name no other test (in this run or an earlier one against the same server) uses.
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let safe: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!(
        "{safe}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The S3 server for this test process, or why there is none (with what to do about it).
pub fn s3_server() -> Result<&'static StoreServer, String> {
    static SERVER: OnceLock<Result<StoreServer, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| find_or_start(Kind::S3))
        .as_ref()
        .map_err(Clone::clone)
}

/// The Azure Blob Storage emulator for this test process, or why there is none.
pub fn azure_server() -> Result<&'static StoreServer, String> {
    static SERVER: OnceLock<Result<StoreServer, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| find_or_start(Kind::Azure))
        .as_ref()
        .map_err(Clone::clone)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn find_or_start(kind: Kind) -> Result<StoreServer, String> {
    let (endpoint_var, bucket_var, name) = match kind {
        Kind::S3 => (
            "PITLAKE_TEST_S3_ENDPOINT",
            "PITLAKE_TEST_S3_BUCKET",
            "S3 (moto)",
        ),
        Kind::Azure => (
            "PITLAKE_TEST_AZURE_ENDPOINT",
            "PITLAKE_TEST_AZURE_CONTAINER",
            "Azure (Azurite)",
        ),
    };
    let bucket = env_or(bucket_var, "pitlake-test");
    if let Some(endpoint) = std::env::var(endpoint_var).ok().filter(|e| !e.is_empty()) {
        return Ok(StoreServer {
            kind,
            endpoint,
            bucket,
        });
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let venv = std::env::var_os("PITLAKE_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/pitlake-py-venv"));
    let node = std::env::var_os("PITLAKE_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/pitlake-node"));
    let python = venv.join("bin/python");
    let azurite = node.join("node_modules/.bin/azurite-blob");
    let how = "run scripts/test.sh (it installs and starts the servers), or run \
               `scripts/storage-servers.sh install` once so that cargo test can start its own, \
               or start them with `eval \"$(scripts/storage-servers.sh start)\"` (which sets \
               PITLAKE_TEST_S3_ENDPOINT and PITLAKE_TEST_AZURE_ENDPOINT)";
    let import = match kind {
        Kind::S3 => "import moto.server, boto3",
        Kind::Azure => "import azure.storage.blob",
    };
    let ready = Command::new(&python)
        .args(["-c", import])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && (kind == Kind::S3 || azurite.exists());
    if !ready {
        return Err(format!(
            "the {name} tests need their server: {endpoint_var} is unset and {} cannot run it \
             (Python packages in {}, Azurite in {}); {how}",
            name,
            venv.display(),
            node.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("pitlake-storage-{}", unique("server")));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let port_file = dir.join("endpoint");
    let log = std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())?;
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut command = Command::new(&python);
    match kind {
        Kind::S3 => command
            .arg(scripts.join("s3_server.py"))
            .args(["--port", "0", "--bucket", &bucket]),
        Kind::Azure => command
            .arg(scripts.join("azure_server.py"))
            .arg("--azurite")
            .arg(&azurite)
            .args(["--container", &bucket]),
    };
    let mut child = command
        .arg("--parent-pid")
        .arg(std::process::id().to_string())
        .arg("--port-file")
        .arg(&port_file)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start the {name} test server: {e}; {how}"))?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        if let Ok(text) = std::fs::read_to_string(&port_file)
            && !text.trim().is_empty()
        {
            return Ok(StoreServer {
                kind,
                endpoint: text.trim().to_string(),
                bucket,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            return Err(format!(
                "the {name} test server exited ({status}) before it answered:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Err(format!(
        "the {name} test server did not answer within 90s (log: {})",
        dir.join("log").display()
    ))
}
