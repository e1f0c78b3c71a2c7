//! The accept loop of one listener: HTTP/1.1 by hyper, with the protective timeouts
//! `axum::serve` does not offer, and a graceful shutdown.
//!
//! - **Header-read timeout**: a client that has not sent a whole request head within
//!   `header_read_timeout` of the connection opening, or of the previous response, is
//!   disconnected, so sockets that send half a request line and stall ("slowloris") cannot
//!   pile up.
//! - **Idle timeout**: a connection on which no byte arrives for `idle_timeout` (between
//!   keep-alive requests, or before the first) is closed. It is longer than the request
//!   timeout, so a request in progress is never cut by it.
//! - Each request carries the peer's address ([`axum::extract::ConnectInfo`]) for the
//!   per-IP rate limit of the callback.
//!
//! Both timeouts are kept by one watchdog per connection ([`Watch`]) that sleeps until the
//! earlier of the two deadlines, wakes, and sleeps again if the connection made progress in
//! the meantime. A request costs two atomic stores and a clock read, and no timer: hyper's
//! own header-read timeout and a read-timeout stream each armed a timer for every request,
//! which the hot path's profile showed (`docs/benchmarks.md`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::ServiceExt as _;

/// The timeouts of a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionTimeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for
/// the open connections to finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: ConnectionTimeouts,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    // The watchdog keeps the header-read timeout; hyper's would arm a timer per request.
    http.header_read_timeout(None);
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let watch = Arc::new(Watch::new());
        let stream = Watched {
            inner: stream,
            watch: watch.clone(),
        };
        let app = app.clone();
        let requests = watch.clone();
        let service = tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            requests.request_began();
            let app = app.clone();
            let requests = requests.clone();
            async move {
                let response = app
                    .oneshot(request.map(axum::body::Body::new))
                    .await
                    .unwrap_or_else(|never: Infallible| match never {});
                requests.request_ended();
                Ok::<_, Infallible>(response)
            }
        });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                biased;
                // A closed connection is routine, not an error worth a log line.
                ended = connection => if let Err(e) = ended {
                    tracing::debug!(error = %e, %peer, "connection ended");
                },
                expired = watch.expiry(timeouts) => {
                    tracing::debug!(%peer, timeout = expired, "connection closed by its timeout");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What the watchdog of a connection reads: when a byte last arrived, and since when the
/// connection has been waiting for a request head (none while a request is handled).
/// Milliseconds since the connection opened.
struct Watch {
    opened: Instant,
    last_read: AtomicU64,
    awaiting_head_since: AtomicU64,
}

/// `awaiting_head_since` while a request is being handled.
const HANDLING: u64 = u64::MAX;

impl Watch {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_read: AtomicU64::new(0),
            awaiting_head_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(HANDLING - 1)
    }

    fn bytes_arrived(&self) {
        self.last_read.store(self.now(), Ordering::Relaxed);
    }

    fn request_began(&self) {
        self.awaiting_head_since.store(HANDLING, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        self.awaiting_head_since
            .store(self.now(), Ordering::Relaxed);
    }

    /// Completes when a timeout expires, naming it; sleeps through the connection's life
    /// otherwise, waking once per deadline to look at the progress made.
    async fn expiry(&self, timeouts: ConnectionTimeouts) -> &'static str {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(HANDLING - 1);
        let (idle, header_read) = (millis(timeouts.idle), millis(timeouts.header_read));
        loop {
            let idle_deadline = self.last_read.load(Ordering::Relaxed).saturating_add(idle);
            let head_deadline = match self.awaiting_head_since.load(Ordering::Relaxed) {
                HANDLING => u64::MAX,
                since => since.saturating_add(header_read),
            };
            let now = self.now();
            if now >= idle_deadline {
                return "idle";
            }
            if now >= head_deadline {
                return "header_read";
            }
            let deadline = idle_deadline.min(head_deadline);
            tokio::time::sleep_until(self.opened + Duration::from_millis(deadline)).await;
        }
    }
}

/// A connection's socket that tells its [`Watch`] when bytes arrive.
struct Watched<S> {
    inner: S,
    watch: Arc<Watch>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
