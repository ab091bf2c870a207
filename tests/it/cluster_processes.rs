//! A Ballista cluster of pitlake processes on loopback, for the tests: `pitlake cluster
//! scheduler` and two `pitlake cluster executor`s, started once per test binary. They exit with
//! the test process (`--parent-pid`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running cluster.
pub struct Cluster {
    /// The scheduler as `Settings::cluster` takes it, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The scheduler as the CLI takes it, `df://127.0.0.1:PORT`.
    pub address: String,
    /// Where the processes' logs are.
    pub dir: PathBuf,
    children: Mutex<Vec<Child>>,
}

impl Cluster {
    /// Stops every process (they would also stop when the test process exits).
    pub fn stop(&self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        children.clear();
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Spawns `pitlake cluster <args>` and waits for the line starting with `wait_for` on its
/// standard output; returns the child and that line.
fn spawn(args: &[String], log: PathBuf, wait_for: &str) -> Result<(Child, String), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pitlake"))
        .arg("cluster")
        .args(args)
        .args(["--parent-pid", &std::process::id().to_string()])
        .env("PITLAKE_MEMORY_LIMIT", "1GiB")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start pitlake cluster {}: {e}", args[0]))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = wait_for.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(&wanted) {
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => Ok((child, line)),
        Err(_) => {
            let _ = child.kill();
            Err(format!(
                "pitlake cluster {} did not print `{wait_for}` within 60s: {}",
                args[0],
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }
}

fn start() -> Result<Cluster, String> {
    let dir = tempfile::Builder::new()
        .prefix("pitlake-cluster-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let started = Instant::now();
    let (scheduler, line) = spawn(
        &[
            "scheduler".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--executor-timeout".into(),
            "5s".into(),
        ],
        dir.join("scheduler.log"),
        "listening on ",
    )?;
    let address = line.trim_start_matches("listening on ").trim().to_string();
    let mut children = vec![scheduler];
    for i in 0..2 {
        let port = free_port()?;
        let (executor, _) = spawn(
            &[
                "executor".into(),
                "--scheduler".into(),
                address.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--task-port".into(),
                free_port()?.to_string(),
                "--slots".into(),
                "2".into(),
                "--heartbeat".into(),
                "1s".into(),
                "--work-dir".into(),
                dir.join(format!("executor-{i}")).display().to_string(),
            ],
            dir.join(format!("executor-{i}.log")),
            "ready",
        )
        .inspect_err(|_| {
            for child in children.iter_mut() {
                let _ = child.kill();
            }
        })?;
        children.push(executor);
    }
    eprintln!(
        "cluster: scheduler {address} and 2 executors ready in {:.1}s (logs in {})",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(Cluster {
        url: format!("http://{address}"),
        address: format!("df://{address}"),
        dir,
        children: Mutex::new(children),
    })
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster of this test process, started on first use.
pub fn shared() -> Result<&'static Cluster, String> {
    CLUSTER.get_or_init(start).as_ref().map_err(Clone::clone)
}

/// The cluster, if one was started.
pub fn if_started() -> Option<&'static Cluster> {
    CLUSTER.get().and_then(|c| c.as_ref().ok())
}
