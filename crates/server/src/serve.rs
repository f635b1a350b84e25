//! The listeners' accept loop: HTTP/1.1 connections served by hyper with the limits a public
//! edge needs — a deadline for a request's headers (slowloris), an idle timeout between
//! requests, a cap on the connections one client address holds and on all of them — and a
//! graceful stop (requests in flight finish). Accept errors (out of descriptors, say) pause the
//! loop briefly instead of spinning or ending it.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request's headers must have arrived within this of the first byte (or of the
    /// connection's start).
    pub header_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed (after the
    /// request in flight, if any, is answered).
    pub idle_timeout: Duration,
    /// Connections held at once from one client address.
    pub per_client: usize,
    /// Connections held at once in all.
    pub total: usize,
}

impl ConnectionLimits {
    /// `total` connections per listener (a quarter of them, at most 256, per client), 10 s for
    /// headers, 75 s idle (nginx's keep-alive default); the operator's settings override.
    pub fn new(total: usize, settings: &crate::limits::LimitSettings) -> ConnectionLimits {
        let seconds =
            |s: Option<u64>, default: u64| Duration::from_secs(s.unwrap_or(default).max(1));
        ConnectionLimits {
            header_timeout: seconds(settings.header_timeout_s, 10),
            idle_timeout: seconds(settings.idle_connection_s, 75),
            per_client: settings
                .connections_per_client
                .map_or((total / 4).clamp(1, 256), |n| n.max(1) as usize),
            total,
        }
    }
}

/// How long a stop waits for the requests in flight (Kubernetes' default grace period).
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long a connection closed for idleness may still take to finish the request it holds:
/// the longest deadline an app may set (900 s), and a minute.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(960);

/// What a refused connection is told, in the one write a full server can afford.
static TOO_MANY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body = r#"{"error":{"code":"unavailable","message":"too many connections from this client; retry shortly"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Connections held, per client address.
#[derive(Default)]
struct Held {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// One connection's place in [`Held`], given back on drop.
struct Slot {
    held: Arc<Mutex<Held>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total -= 1;
        if let Some(n) = held.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                held.by_client.remove(&self.client);
            }
        }
    }
}

fn take_slot(held: &Arc<Mutex<Held>>, client: IpAddr, limits: &ConnectionLimits) -> Option<Slot> {
    let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
    let mine = h.by_client.get(&client).copied().unwrap_or(0);
    if h.total >= limits.total || mine >= limits.per_client {
        return None;
    }
    h.total += 1;
    *h.by_client.entry(client).or_insert(0) += 1;
    Some(Slot {
        held: held.clone(),
        client,
    })
}

/// Serves `router` on `listener` until `shutdown`, then waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let held = Arc::new(Mutex::new(Held::default()));
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: the condition passes as connections close.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = take_slot(&held, peer.ip(), &limits) else {
            let _ = stream.try_write(&TOO_MANY);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            serve_connection(stream, router, limits, shutdown).await;
            drop(slot);
        });
    }
    tasks.close();
    // Requests in flight finish; a connection that would hold the stop for longer is dropped.
    if tokio::time::timeout(STOP_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open {STOP_GRACE:?} after the stop began were dropped");
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
        epoch,
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let mut closing = false;
    // Once closing, the request in flight gets this long; then the connection is dropped (a
    // client that stopped reading, or a request whose body never comes, holds nothing longer).
    let force = tokio::time::sleep(Duration::from_secs(365 * 86_400));
    tokio::pin!(force);
    let mut check = tokio::time::interval(limits.idle_timeout / 4);
    check.tick().await;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = &mut force, if closing => return,
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                force.as_mut().reset(tokio::time::Instant::now() + STOP_GRACE);
                conn.as_mut().graceful_shutdown();
            }
            _ = check.tick(), if !closing => {
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                if epoch.elapsed().saturating_sub(last) >= limits.idle_timeout {
                    // Answers what is in flight, then closes.
                    closing = true;
                    force.as_mut().reset(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A stream that notes when bytes last moved (ms since `epoch`).
struct Watched {
    inner: TcpStream,
    activity: Arc<AtomicU64>,
    epoch: Instant,
}

impl Watched {
    fn touch(&self) {
        self.activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
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
