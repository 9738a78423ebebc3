//! The HTTP(S) transport of every client of the server's API: hyper's pooled
//! HTTP/1.1 client over a connector that speaks plain TCP for `http://` and
//! rustls (TLS 1.2+, [`crate::tls`]'s trust: pin, CA file, webpki roots) for
//! `https://`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::{Trust, TrustLog};

/// The ALPN protocol the API clients offer.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A connection to the API: plain or TLS.
#[derive(Debug)]
pub enum Stream {
    /// `http://`.
    Plain(TcpStream),
    /// `https://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, data),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens TCP connections (with `TCP_NODELAY`) and, for `https://`, a TLS session
/// under [`Trust`]. Connect and handshake together have `timeout`.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl Connector {
    /// A connector for `trust`; the returned log records the certificates met.
    pub fn new(trust: &Trust, timeout: Duration) -> Result<(Self, Arc<TrustLog>), String> {
        let (config, log) = crate::tls::client_config(trust, &[ALPN_HTTP1])?;
        Ok((Self { tls: tokio_rustls::TlsConnector::from(config), timeout }, log))
    }

    async fn open(tls: tokio_rustls::TlsConnector, timeout: Duration, uri: Uri) -> io::Result<TokioIo<Stream>> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(io::Error::other(format!("unsupported URL scheme {other:?} (http or https)"))),
        };
        let host = uri.host().ok_or_else(|| io::Error::other("the URL has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let work = async {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            if !https {
                return Ok(Stream::Plain(tcp));
            }
            let name = ServerName::try_from(host.clone())
                .map_err(|_| io::Error::other(format!("{host} is not a TLS server name")))?;
            Ok(Stream::Tls(Box::new(tls.connect(name, tcp).await?)))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r.map(TokioIo::new),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("no connection within {timeout:?}"))),
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(Self::open(self.tls.clone(), self.timeout, uri))
    }
}

/// The pooled client over [`Connector`].
pub type HttpClient = Client<Connector, Full<Bytes>>;

/// A pooled client for `trust`, and its trust log.
pub fn http_client(trust: &Trust, connect_timeout: Duration) -> Result<(HttpClient, Arc<TrustLog>), String> {
    let (connector, log) = Connector::new(trust, connect_timeout)?;
    Ok((Client::builder(TokioExecutor::new()).build(connector), log))
}

/// The text of an error and all its sources, `: `-joined.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        // hyper and io errors often repeat their source's text.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// One request with a whole body, for the owner's and the pairing commands.
#[derive(Clone)]
pub struct SimpleClient {
    http: HttpClient,
    log: Arc<TrustLog>,
    timeout: Duration,
}

/// Why a [`SimpleClient`] request failed; the text names the URL and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimpleError {
    /// The certificate was refused ([`crate::tls`]); the text says what to do.
    #[error("{url}: {detail}")]
    Untrusted {
        /// The URL.
        url: String,
        /// What was wrong and the fix.
        detail: String,
    },
    /// Not reached, or broken on the way.
    #[error("cannot reach {url}: {detail} (is `agentkeys serve` running there, and is the URL right?)")]
    Unreachable {
        /// The URL.
        url: String,
        /// The error.
        detail: String,
    },
    /// No answer in time.
    #[error("{url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// Something local.
    #[error("{0}")]
    Local(String),
}

impl SimpleClient {
    /// A client for `trust`; `timeout` bounds each request, body included.
    pub fn new(trust: &Trust, timeout: Duration) -> Result<Self, String> {
        let (http, log) = http_client(trust, timeout)?;
        Ok(Self { http, log, timeout })
    }

    /// The certificate of the last TLS connection, and why it was accepted.
    pub fn seen(&self) -> Option<crate::tls::SeenCert> {
        self.log.seen()
    }

    /// Sends one request and reads at most `limit` bytes of the answer,
    /// whatever the status.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        authorization: Option<&str>,
        body: Option<&[u8]>,
        limit: usize,
    ) -> Result<(u16, Bytes), SimpleError> {
        let method = hyper::Method::from_bytes(method.as_bytes()).map_err(|e| SimpleError::Local(e.to_string()))?;
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header(hyper::header::USER_AGENT, concat!("agentkeys/", env!("CARGO_PKG_VERSION")));
        if let Some(a) = authorization {
            builder = builder.header(hyper::header::AUTHORIZATION, a);
        }
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
            .map_err(|e| SimpleError::Local(format!("{url}: {e}")))?;
        let timeout = self.timeout;
        let work = async {
            let response = self.http.request(request).await.map_err(|e| self.failure(url, &e))?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| SimpleError::Unreachable { url: url.to_owned(), detail: format!("reading the answer: {e}") })?
                .to_bytes();
            Ok((status, bytes))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(SimpleError::Timeout { url: url.to_owned(), timeout }),
        }
    }

    fn failure(&self, url: &str, e: &(dyn std::error::Error + 'static)) -> SimpleError {
        match self.log.take_refusal() {
            Some(detail) => SimpleError::Untrusted { url: url.to_owned(), detail },
            None => SimpleError::Unreachable { url: url.to_owned(), detail: error_chain(e) },
        }
    }
}
