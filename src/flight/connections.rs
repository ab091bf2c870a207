//! A bound on open connections: each accepted TCP connection holds a permit until it closes
//! (TLS handshake, HTTP/2 and every call on it included). At the limit, a new connection is
//! closed as soon as it is accepted: its client sees the connection end (`UNAVAILABLE`, which
//! clients treat as "retry later") and the server spends nothing on it. The refusals are logged,
//! at most once per [`WARN_EVERY`].
//!
//! Closing rather than not accepting is deliberate: unaccepted connections would wait in the
//! kernel's backlog, and their clients would hang until their own timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The refusal warning is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A connection that holds one of the server's connection permits while it is open.
pub(crate) struct LimitedConnection {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for LimitedConnection {
    // The plain TCP information, so `Request::remote_addr` finds the peer as usual.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Connections refused for being over the limit, and when that was last logged.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    count: AtomicUsize,
    last_warned: Mutex<Option<Instant>>,
}

impl Refusals {
    /// Connections closed so far for being over the limit.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn refused(&self, max: usize) {
        let total = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = match self.last_warned.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                target: "pitlake::flight",
                max_connections = max,
                refused_so_far = total,
                "connection closed: the server has --max-connections open"
            );
        }
    }
}

/// `incoming` with at most `max` connections open at once (see the module documentation).
pub(crate) fn limit_connections<S>(
    incoming: S,
    max: usize,
    refusals: Arc<Refusals>,
) -> impl Stream<Item = std::io::Result<LimitedConnection>>
where
    S: Stream<Item = std::io::Result<TcpStream>>,
{
    let permits = Arc::new(Semaphore::new(max));
    incoming.filter_map(move |accepted| {
        let outcome = match accepted {
            Err(err) => Some(Err(err)),
            Ok(stream) => match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(Ok(LimitedConnection {
                    inner: stream,
                    _permit: permit,
                })),
                Err(_) => {
                    refusals.refused(max);
                    drop(stream);
                    None
                }
            },
        };
        std::future::ready(outcome)
    })
}
