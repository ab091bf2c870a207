//! A TCP proxy in front of the S3 test server that can break the way real networks and servers
//! break: go away (connections refused), hang, answer 503, die in the middle of a chosen request,
//! or drop the `If-None-Match` header like a server that ignores conditional writes.
//!
//! moto keeps its objects in memory, so killing moto itself would also lose the table; the proxy
//! plays the server that stops and restarts while the data stays, as it does on real S3. It
//! binds 127.0.0.1 port 0, runs on its own thread and runtime, and stops on drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the proxy treats requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Pass everything through.
    Forward,
    /// Not listening: connections are refused, as with a stopped server.
    Down,
    /// Accept, read, never answer.
    Hang,
    /// Answer every request with `503 Service Unavailable`.
    ServerErrors,
    /// Pass through until a request whose first line starts with `method` and contains
    /// `pattern`; drop that request unsent, cut every connection and go [`Mode::Down`].
    DieAt {
        /// The HTTP method (`PUT`), or empty for any.
        method: String,
        /// A fragment of the request path.
        pattern: String,
    },
    /// Pass through, removing `If-None-Match` request headers.
    IgnoreConditionalPut,
}

struct Shared {
    mode: Mutex<Mode>,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
    /// Mode changes, for the accept loop.
    changed: watch::Sender<u64>,
    /// Requests answered with 503.
    errors_served: AtomicUsize,
}

/// The proxy; see the module docs.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy to `upstream` (`http://host:port`), forwarding.
    pub fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Forward),
            cut: watch::channel(0).0,
            changed: watch::channel(0).0,
            errors_served: AtomicUsize::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let inner = shared.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let first = TcpListener::from_std(std_listener).unwrap();
                tokio::select! {
                    _ = serve(first, addr, upstream, inner) => {}
                    _ = stop_rx => {}
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        Self {
            endpoint: format!("http://{addr}"),
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Switches mode; leaving a mode cuts the connections it held.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        self.shared.cut.send_modify(|g| *g += 1);
        self.shared.changed.send_modify(|g| *g += 1);
    }

    /// The current mode (a [`Mode::DieAt`] proxy that fired is [`Mode::Down`]).
    pub fn mode(&self) -> Mode {
        self.shared.mode.lock().unwrap().clone()
    }

    /// Requests answered with 503 so far.
    pub fn errors_served(&self) -> usize {
        self.shared.errors_served.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(first: TcpListener, addr: SocketAddr, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut listener = Some(first);
    let mut changed = shared.changed.subscribe();
    loop {
        let down = *shared.mode.lock().unwrap() == Mode::Down;
        if down {
            // Stop listening: a connect is refused, as with a stopped server.
            listener = None;
            let _ = changed.changed().await;
            continue;
        }
        let Some(l) = listener.as_ref() else {
            // Back up on the same port (SO_REUSEADDR is set by tokio on Unix).
            for _ in 0..100 {
                if let Ok(l) = TcpListener::bind(addr).await {
                    listener = Some(l);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                if let Ok((client, _)) = accepted {
                    tokio::spawn(handle(client, upstream, shared.clone()));
                }
            }
            _ = changed.changed() => {}
        }
    }
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut cut = shared.cut.subscribe();
    let mode = shared.mode.lock().unwrap().clone();
    match mode {
        Mode::Down => {}
        Mode::Hang => {
            let mut sink = [0u8; 8192];
            loop {
                tokio::select! {
                    n = client.read(&mut sink) => if matches!(n, Ok(0) | Err(_)) { return },
                    _ = cut.changed() => return,
                }
            }
        }
        Mode::ServerErrors => {
            // One 503 per request head, then close, so that every retry is a new connection.
            let mut head = Vec::new();
            let mut buf = [0u8; 8192];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            shared.errors_served.fetch_add(1, Ordering::SeqCst);
            let _ = client
                .write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            let _ = client.shutdown().await;
        }
        Mode::Forward | Mode::DieAt { .. } | Mode::IgnoreConditionalPut => {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let up = async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut chunk = buf[..n].to_vec();
                    let mode = shared.mode.lock().unwrap().clone();
                    match mode {
                        Mode::DieAt { method, pattern } => {
                            let first_line = chunk.split(|b| *b == b'\n').next().unwrap_or(&[]);
                            let line = String::from_utf8_lossy(first_line);
                            if line.starts_with(&method) && line.contains(&pattern) {
                                *shared.mode.lock().unwrap() = Mode::Down;
                                shared.cut.send_modify(|g| *g += 1);
                                shared.changed.send_modify(|g| *g += 1);
                                return;
                            }
                        }
                        Mode::IgnoreConditionalPut => chunk = strip_if_none_match(&chunk),
                        Mode::Down | Mode::Hang | Mode::ServerErrors => return,
                        Mode::Forward => {}
                    }
                    if server_write.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            };
            let down = tokio::io::copy(&mut server_read, &mut client_write);
            tokio::select! {
                _ = up => {}
                _ = down => {}
                _ = cut.changed() => {}
            }
        }
    }
}

/// Removes `If-None-Match:` header lines from a request head in `chunk`.
fn strip_if_none_match(chunk: &[u8]) -> Vec<u8> {
    let Some(end) = chunk.windows(4).position(|w| w == b"\r\n\r\n") else {
        return chunk.to_vec();
    };
    let head = String::from_utf8_lossy(&chunk[..end]).into_owned();
    let kept: Vec<&str> = head
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("if-none-match:"))
        .collect();
    let mut out = kept.join("\r\n").into_bytes();
    out.extend_from_slice(&chunk[end..]);
    out
}
