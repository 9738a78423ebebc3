//! The HTTP listener's accept loop and connections: our own, over hyper's
//! HTTP/1 server, with the limits `axum::serve` does not have.
//!
//! - **Caps.** At most [`HttpLimits::max_connections`] connections at once, and
//!   [`HttpLimits::max_connections_per_ip`] from one address (IPv6: one /64),
//!   counted by the same [`ConnectionLimiter`] as the SMTP listeners. The total
//!   is also bounded by the process's file descriptors after the SMTP
//!   listeners' share (`crate::descriptors`), so idle HTTP clients can never
//!   leave the MX without descriptors. Over a cap the connection gets a
//!   prepared `503` problem JSON (`TOO_MANY_CONNECTIONS`, `Retry-After`) written
//!   without waiting, and is closed.
//! - **Header timeout.** A client has [`HttpLimits::header_timeout`] to send a
//!   whole request head, counted from the connection's start or the end of the
//!   previous response (hyper's `header_read_timeout`): a connection that sends
//!   nothing, or a head at one byte a second, is closed. This is also how long
//!   a keep-alive connection may wait for its next request.
//! - **Idle timeout.** A connection that neither reads nor writes a byte for
//!   [`HttpLimits::idle_timeout`] is closed: a stalled upload, a client that
//!   stopped reading its response. Event streams write a keep-alive comment
//!   every 15 s, so they are never idle.
//! - **Lifetime.** After [`HttpLimits::connection_lifetime`] a connection is
//!   closed, unless a response of type `text/event-stream` (the new-mail event
//!   stream) is open on it: then it takes no further request and closes when the
//!   stream ends (the stream ends itself when its read capability expires, at
//!   most 30 minutes after it was minted, or when the server stops).
//! - **Shutdown.** When the server stops, the loop stops accepting; idle
//!   connections close at once and busy ones after their response
//!   (`graceful_shutdown`); the caller bounds the wait on the connection tracker.
//!
//! - **HTTPS.** [`HttpListener::serve`] with a TLS acceptor (`listen.https`, the
//!   certificate SMTP's STARTTLS uses, `crate::tls`) serves the same router over
//!   TLS 1.2/1.3. The connection holds its permit from the accept, so the caps
//!   count handshakes too, and the handshake must finish within the header
//!   timeout (a client that opens TCP and sends nothing, or a ClientHello at a
//!   byte a second, is closed like a slowloris). Over a cap a TLS connection is
//!   closed without an answer: a plaintext 503 would not be understood.
//!
//! The accept loop hands each accepted socket to [`HttpListener::connection`],
//! which is generic over the stream, so a TLS handshake can sit in between.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use agentkeys_core::peer::{ConnectionLimiter, ConnectionPermit};
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// Default cap on concurrent HTTP connections (`limits.http_max_connections`).
pub(crate) const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1024;
/// Default cap on concurrent HTTP connections from one address
/// (`limits.http_max_connections_per_ip`).
pub(crate) const DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP: usize = 100;
/// Default time to send a whole request head (`limits.http_header_timeout`).
pub(crate) const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest silence in both directions (`limits.http_idle_timeout`).
pub(crate) const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest idle timeout accepted: above the event stream's keep-alive
/// interval (15 s) and the pairing collect's long-poll (25 s), which are silent
/// by design for that long.
pub(crate) const MIN_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest life of a connection that carries no event stream
/// (`limits.http_connection_lifetime`).
pub(crate) const DEFAULT_HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// hyper's read buffer per connection, the largest request head accepted.
pub(crate) const HTTP_MAX_BUFFER: usize = 64 * 1024;

/// The listener's limits; [`Default`] gives the constants above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpLimits {
    /// Concurrent connections in total ([`DEFAULT_HTTP_MAX_CONNECTIONS`]).
    pub(crate) max_connections: usize,
    /// Concurrent connections per address ([`DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP`]).
    pub(crate) max_connections_per_ip: usize,
    /// Time to send a request head ([`DEFAULT_HTTP_HEADER_TIMEOUT`]).
    pub(crate) header_timeout: Duration,
    /// Longest time without a byte read or written ([`DEFAULT_HTTP_IDLE_TIMEOUT`]).
    pub(crate) idle_timeout: Duration,
    /// Longest life without an event stream ([`DEFAULT_HTTP_CONNECTION_LIFETIME`]).
    pub(crate) connection_lifetime: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP,
            header_timeout: DEFAULT_HTTP_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
            connection_lifetime: DEFAULT_HTTP_CONNECTION_LIFETIME,
        }
    }
}

/// Refuses an idle timeout below [`MIN_HTTP_IDLE_TIMEOUT`], saying why.
pub(crate) fn check_idle_timeout(timeout: Duration) -> Result<Duration, String> {
    if timeout < MIN_HTTP_IDLE_TIMEOUT {
        return Err(format!(
            "expected at least {}s: event streams are silent for up to 15 s between keep-alives and pairing collects wait up to 25 s",
            MIN_HTTP_IDLE_TIMEOUT.as_secs()
        ));
    }
    Ok(timeout)
}

impl HttpLimits {
    /// The checks that involve more than one key.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.connection_lifetime < self.header_timeout {
            return Err("the connection lifetime must be at least the header timeout".to_owned());
        }
        Ok(())
    }
}

/// The HTTP service: the router, its limits and the connection counts.
pub(crate) struct HttpListener {
    app: Router,
    limits: HttpLimits,
    limiter: Arc<ConnectionLimiter>,
    /// The whole answer to a connection over a cap, prepared once.
    refusal: Vec<u8>,
}

impl HttpListener {
    /// A listener serving `app` under `limits`, with at most `max_connections`
    /// (the configured cap, or less when descriptors are short).
    pub(crate) fn new(app: Router, limits: HttpLimits, max_connections: usize) -> Arc<Self> {
        let limiter = ConnectionLimiter::observed(
            max_connections,
            limits.max_connections_per_ip,
            Some(|open| metrics::gauge!("agentkeys_http_active_connections").set(open as f64)),
        );
        Arc::new(Self { app, limits, limiter, refusal: refusal_response() })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open_connections(&self) -> usize {
        self.limiter.open()
    }

    /// Accepts connections on `listener` until `shutdown` is cancelled, serving
    /// each on `connections`. A failed accept (out of descriptors, …) is logged
    /// and retried ([`agentkeys_smtp::next_connection`], the SMTP listeners' loop
    /// too); the loop never ends on one.
    /// With `tls`, every connection is a TLS session first (HTTPS).
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: CancellationToken,
        connections: TaskTracker,
    ) {
        let name = if tls.is_some() { "https" } else { "http" };
        while let Some((stream, peer)) = agentkeys_smtp::next_connection(&listener, &shutdown, name).await {
            metrics::counter!("agentkeys_http_connections_total").increment(1);
            let Some(permit) = self.limiter.try_acquire(peer.ip()) else {
                if tls.is_some() {
                    metrics::counter!("agentkeys_http_rejections_total").increment(1);
                    tracing::info!(%peer, "HTTPS connection refused: too many connections");
                    drop(stream);
                } else {
                    self.refuse(&stream, peer);
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let listener = Arc::clone(&self);
            let shutdown = shutdown.clone();
            let span = tracing::debug_span!("http", %peer, tls = tls.is_some());
            match &tls {
                None => connections.spawn(listener.connection(stream, peer, shutdown, permit).instrument(span)),
                Some(acceptor) => connections
                    .spawn(listener.tls_connection(acceptor.clone(), stream, peer, shutdown, permit).instrument(span)),
            };
        }
        tracing::info!("{} listener stopped accepting", name.to_ascii_uppercase());
    }

    /// The TLS handshake, within the header timeout (and abandoned when the
    /// server stops), then the connection as over plain TCP.
    async fn tls_connection(
        self: Arc<Self>,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
        permit: ConnectionPermit,
    ) {
        let handshake = tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream));
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    metrics::counter!("agentkeys_http_tls_failures_total").increment(1);
                    tracing::debug!(error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("agentkeys_http_tls_failures_total").increment(1);
                    tracing::debug!("TLS handshake not done within the header timeout");
                    return;
                }
            },
            () = shutdown.cancelled() => return,
        };
        self.connection(tls, peer, shutdown, permit).await;
    }

    /// Over a cap: the prepared 503, written without waiting (a fresh socket's
    /// send buffer always takes it), whatever the client already sent read and
    /// dropped (so the close is a FIN, not a reset that could discard the 503),
    /// then closed. Nothing here waits, so refusals hold no descriptor. (On a
    /// TLS listener a plaintext 503 would not be understood: close only, as the
    /// SMTP implicit-TLS listener does.)
    fn refuse(&self, stream: &TcpStream, peer: SocketAddr) {
        metrics::counter!("agentkeys_http_rejections_total").increment(1);
        tracing::info!(%peer, "HTTP connection refused: too many connections");
        let mut scratch = [0u8; 4096];
        for _ in 0..4 {
            if !matches!(stream.try_read(&mut scratch), Ok(n) if n > 0) {
                break;
            }
        }
        let _ = stream.try_write(&self.refusal);
    }

    /// Serves one connection until the client closes it, a limit closes it, or
    /// the server stops. Generic over the stream (plain TCP, or TLS later).
    pub(crate) async fn connection<S>(
        self: Arc<Self>,
        io: S,
        peer: SocketAddr,
        shutdown: CancellationToken,
        _permit: ConnectionPermit,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let streams = Arc::new(AtomicUsize::new(0));
        let service = {
            let (app, streams) = (self.app.clone(), Arc::clone(&streams));
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let (app, streams) = (app.clone(), Arc::clone(&streams));
                async move {
                    let mut request = request.map(Body::new);
                    // The peer address feeds the API's per-address limits.
                    request.extensions_mut().insert(ConnectInfo(peer));
                    let response = tower::ServiceExt::oneshot(app, request).await?;
                    Ok::<_, Infallible>(track_streams(response, &streams))
                }
            })
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .keep_alive(true)
            .max_buf_size(HTTP_MAX_BUFFER);
        let watched = Watched { inner: io, activity: Arc::clone(&activity) };
        let conn = builder.serve_connection(TokioIo::new(watched), service);
        tokio::pin!(conn);
        let lifetime = tokio::time::sleep(self.limits.connection_lifetime);
        tokio::pin!(lifetime);
        let idle = tokio::time::sleep(self.limits.idle_timeout);
        tokio::pin!(idle);
        let (mut draining, mut aged) = (false, false);
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "HTTP connection ended");
                    }
                    return;
                }
                () = shutdown.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = &mut lifetime, if !aged => {
                    aged = true;
                    if streams.load(Ordering::SeqCst) == 0 {
                        tracing::debug!("HTTP connection reached its lifetime");
                        return;
                    }
                    // An event stream is open: no further request, close after it.
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = &mut idle => {
                    let quiet = activity.quiet_for();
                    if quiet >= self.limits.idle_timeout {
                        tracing::debug!("HTTP connection idle too long");
                        return;
                    }
                    idle.as_mut().reset(Instant::now() + (self.limits.idle_timeout - quiet));
                }
            }
        }
    }
}

/// Counts the open `text/event-stream` responses of a connection: the count
/// goes up now and down when the body is dropped (finished, or the connection gone).
fn track_streams(response: Response<Body>, streams: &Arc<AtomicUsize>) -> Response<Body> {
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
    if !streaming {
        return response;
    }
    streams.fetch_add(1, Ordering::SeqCst);
    let open = OpenStream(Arc::clone(streams));
    // The body owns the guard: it lives exactly as long as the stream.
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _ = &open;
            frame
        }))
    })
}

/// One open event stream of a connection.
struct OpenStream(Arc<AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// When a connection last read or wrote a byte.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// A stream that records every byte read or written in its [`Activity`].
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The answer to a connection over a cap: `503` problem JSON
/// (`TOO_MANY_CONNECTIONS`), `Retry-After`, `Connection: close`.
fn refusal_response() -> Vec<u8> {
    let error = agentkeys_api::ApiError::TooManyConnections;
    let body = serde_json::to_vec(&error.problem()).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: {}\r\nCache-Control: no-store\r\nRetry-After: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        agentkeys_api::PROBLEM_JSON,
        agentkeys_api::error::TOO_MANY_CONNECTIONS_RETRY_AFTER_SECS,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
#[path = "http_listener_tests.rs"]
mod tests;
