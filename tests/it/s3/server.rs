//! The S3-compatible server the tests run against, shared by the slt runner and the integration
//! tests (`#[path]`-included by both).
//!
//! - `PITLAKE_TEST_S3_ENDPOINT` set (scripts/test.sh and CI start one server for the whole run,
//!   `eval "$(scripts/s3-server.sh start)"` does the same in a shell): that server is used, with
//!   the bucket `PITLAKE_TEST_S3_BUCKET` (default `pitlake-test`).
//! - Unset: the first test that needs it starts `scripts/s3_server.py` (moto) from the venv
//!   `PITLAKE_PY_VENV` (default `~/.cache/pitlake-py-venv`) on 127.0.0.1, port 0; the server
//!   exits when this test process does.
//! - Neither possible: the test fails (never skips) and says how to get a server.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Credentials the test server accepts (moto accepts any; these are fixed for readability).
pub const ACCESS_KEY_ID: &str = "pitlake-test";
/// The secret paired with [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "pitlake-test-secret";

/// A running S3-compatible server.
#[derive(Debug)]
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// A bucket that exists on it.
    pub bucket: String,
}

impl S3Server {
    /// Storage options that reach this server (or `endpoint`, e.g. a proxy in front of it).
    pub fn options_for(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("aws_endpoint", endpoint),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", ACCESS_KEY_ID),
            ("aws_secret_access_key", SECRET_ACCESS_KEY),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Storage options that reach this server.
    pub fn options(&self) -> Vec<(String, String)> {
        self.options_for(&self.endpoint)
    }

    /// A fresh warehouse URL on the server: `s3://<bucket>/<tag>-<unique>`.
    pub fn warehouse(&self, tag: &str) -> String {
        format!("s3://{}/{}", self.bucket, unique(tag))
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

/// The server for this test process, or why there is none (with what to do about it).
pub fn s3_server() -> Result<&'static S3Server, String> {
    static SERVER: OnceLock<Result<S3Server, String>> = OnceLock::new();
    SERVER
        .get_or_init(find_or_start)
        .as_ref()
        .map_err(Clone::clone)
}

fn find_or_start() -> Result<S3Server, String> {
    let bucket = std::env::var("PITLAKE_TEST_S3_BUCKET")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "pitlake-test".to_string());
    if let Some(endpoint) = std::env::var("PITLAKE_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    {
        return Ok(S3Server { endpoint, bucket });
    }
    let venv = std::env::var_os("PITLAKE_PY_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/pitlake-py-venv")))
        .unwrap_or_else(|| PathBuf::from(".cache/pitlake-py-venv"));
    let python = venv.join("bin/python");
    let how = "run scripts/test.sh (it installs and starts the server), or run \
               `scripts/s3-server.sh install` once so that cargo test can start its own, or \
               start one with `eval \"$(scripts/s3-server.sh start)\"` (which sets \
               PITLAKE_TEST_S3_ENDPOINT)";
    let has_moto = Command::new(&python)
        .args(["-c", "import moto.server, boto3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_moto {
        return Err(format!(
            "the S3 tests need an S3-compatible server: PITLAKE_TEST_S3_ENDPOINT is unset and \
             {} cannot import moto; {how}",
            python.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("pitlake-s3-{}", unique("server")));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let port_file = dir.join("endpoint");
    let log = std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3_server.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .args(["--port", "0", "--bucket", &bucket, "--parent-pid"])
        .arg(std::process::id().to_string())
        .arg("--port-file")
        .arg(&port_file)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}; {how}", script.display()))?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(text) = std::fs::read_to_string(&port_file)
            && !text.trim().is_empty()
        {
            return Ok(S3Server {
                endpoint: text.trim().to_string(),
                bucket,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            return Err(format!(
                "the S3 test server exited ({status}) before it answered:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Err(format!(
        "the S3 test server did not answer within 60s (log: {})",
        dir.join("log").display()
    ))
}
