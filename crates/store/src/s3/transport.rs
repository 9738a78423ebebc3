//! The HTTP side of the S3 store: hyper's pooled HTTP/1.1 client over plain
//! TCP (`http://`) or rustls (`https://`, Mozilla's roots plus an optional CA
//! bundle), every attempt under a deadline, bounded retries with backoff.
//!
//! Requests are presigned (rusty-s3 signs the query string), so each attempt
//! is signed afresh by the caller's closure and the transport never sees the
//! secret.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{HeaderMap, Method, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng as _;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use url::Url;

use super::S3Limits;

/// Most bytes of an error answer read (S3's XML error documents are small).
pub const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;
/// Longest wait between two attempts (the backoff doubles up to this).
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(2);
/// The ALPN protocol offered to `https://` endpoints.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why an S3 request failed. Carried inside [`crate::BlobError`] as its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    /// No connection, or it broke, on every attempt.
    #[error("{op} {object}: {detail} (after {attempts} attempts)")]
    Transport {
        /// The S3 operation (`PUT`, `GET`, `LIST`, …).
        op: &'static str,
        /// The object key or prefix.
        object: String,
        /// The last error.
        detail: String,
        /// Attempts made.
        attempts: u32,
    },
    /// No complete answer within the deadline, on every attempt.
    #[error("{op} {object}: no answer within {after:?} (after {attempts} attempts)")]
    Timeout {
        /// The S3 operation.
        op: &'static str,
        /// The object key or prefix.
        object: String,
        /// The last attempt's deadline.
        after: Duration,
        /// Attempts made.
        attempts: u32,
    },
    /// The server refused, or kept failing with a retryable status.
    #[error("{op} {object}: HTTP {status} {code}: {message}")]
    Status {
        /// The S3 operation.
        op: &'static str,
        /// The object key or prefix.
        object: String,
        /// The HTTP status.
        status: u16,
        /// S3's error code (`NoSuchBucket`, `AccessDenied`, …), if it sent one.
        code: String,
        /// S3's error message, if any.
        message: String,
    },
    /// An answer we cannot use (too large, malformed XML, a broken listing).
    #[error("{op} {object}: {detail}")]
    Response {
        /// The S3 operation.
        op: &'static str,
        /// The object key or prefix.
        object: String,
        /// What was wrong.
        detail: String,
    },
}

impl S3Error {
    /// The S3 error code of a refusal (empty for other errors).
    pub fn code(&self) -> &str {
        match self {
            Self::Status { code, .. } => code,
            _ => "",
        }
    }

    /// Whether the request may have been applied although it failed (the
    /// answer was lost, late, or a server error): a write in this state must
    /// be undone as if it had succeeded.
    pub(crate) fn outcome_unknown(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } => true,
            Self::Status { status, .. } => *status >= 500,
            Self::Response { .. } => false,
        }
    }
}

/// A complete answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// An earlier attempt of this request failed in a way that may have
    /// applied it (see [`S3Error::outcome_unknown`]).
    pub(crate) earlier_attempt_unknown: bool,
}

impl Reply {
    /// This answer as an [`S3Error::Status`], with S3's code and message.
    pub(crate) fn refusal(&self, op: &'static str, object: &str) -> S3Error {
        let text = String::from_utf8_lossy(&self.body);
        let code = xml_field(&text, "Code")
            .unwrap_or_else(|| self.status.canonical_reason().unwrap_or("unexpected status").replace(' ', ""));
        S3Error::Status {
            op,
            object: object.to_owned(),
            status: self.status.as_u16(),
            code,
            message: xml_field(&text, "Message").unwrap_or_default(),
        }
    }
}

/// The text of `<name>…</name>` in a small XML document (error answers only;
/// listings go through rusty-s3's parser).
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].trim().to_owned())
}

/// One request to send, possibly several times.
pub(crate) struct Request<'a> {
    /// Names the operation in errors.
    pub(crate) op: &'static str,
    /// The object key or prefix, for errors.
    pub(crate) object: &'a str,
    pub(crate) method: Method,
    /// Signs a fresh URL for each attempt.
    pub(crate) sign: &'a (dyn Fn() -> Url + Send + Sync),
    /// Headers to send; every signed header must be here with its signed value.
    pub(crate) headers: &'a [(&'static str, String)],
    pub(crate) body: Bytes,
    /// Most bytes of a successful answer's body read.
    pub(crate) max_body: usize,
}

/// Whether a status is worth another attempt: server errors and throttling,
/// not refusals (`4xx`), `501 Not Implemented` or `507 Insufficient Storage`.
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The pooled client and the limits it applies.
#[derive(Clone)]
pub(crate) struct Transport {
    client: Client<Connector, Full<Bytes>>,
    limits: S3Limits,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Transport {
    /// A client trusting Mozilla's roots plus the certificates of `ca_file`.
    pub(crate) fn new(limits: S3Limits, ca_file: Option<&Path>) -> Result<Self, String> {
        let tls = tls_config(ca_file)?;
        let connector = Connector { tls: tokio_rustls::TlsConnector::from(tls), timeout: limits.connect_timeout };
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(limits.pool_idle_timeout).build(connector);
        Ok(Self { client, limits })
    }

    /// Sends `request` until an answer that is not retryable, at most
    /// [`S3Limits::max_attempts`] times, waiting a growing, jittered backoff in
    /// between. Any status comes back as a [`Reply`] unless it stayed
    /// retryable to the last attempt.
    pub(crate) async fn send(&self, request: &Request<'_>) -> Result<Reply, S3Error> {
        let attempts = self.limits.max_attempts.max(1);
        let mut earlier_attempt_unknown = false;
        let mut attempt = 1;
        loop {
            let outcome = self.attempt(request).await;
            let last = attempt >= attempts;
            match outcome {
                Ok(mut reply) if !retryable(reply.status) || last => {
                    reply.earlier_attempt_unknown = earlier_attempt_unknown;
                    return Ok(reply);
                }
                Ok(reply) => {
                    tracing::debug!(op = request.op, object = request.object, status = %reply.status, attempt, "S3 request retried");
                }
                // Retrying cannot help an answer too large or a request we cannot build.
                Err(err @ (AttemptError::TooLarge(_) | AttemptError::Local(_))) => {
                    return Err(err.into_error(request, attempt));
                }
                Err(err) if last => return Err(err.into_error(request, attempts)),
                Err(err) => {
                    tracing::debug!(op = request.op, object = request.object, %err, attempt, "S3 request retried");
                }
            }
            earlier_attempt_unknown = true;
            tokio::time::sleep(backoff(self.limits.retry_backoff, attempt)).await;
            attempt += 1;
        }
    }

    /// One attempt: the answer's head within [`S3Limits::request_timeout`]
    /// plus the upload's time at [`S3Limits::min_transfer_rate`], then its body
    /// within the request timeout plus the body's time at that rate.
    async fn attempt(&self, request: &Request<'_>) -> Result<Reply, AttemptError> {
        let url = (request.sign)();
        let mut builder = hyper::Request::builder().method(request.method.clone()).uri(url.as_str());
        for (name, value) in request.headers {
            builder = builder.header(*name, value.as_str());
        }
        if request.method == Method::PUT || request.method == Method::POST {
            builder = builder.header(hyper::header::CONTENT_LENGTH, request.body.len());
        }
        let http = builder.body(Full::new(request.body.clone())).map_err(|e| AttemptError::Local(e.to_string()))?;

        let head_deadline = self.limits.request_timeout + self.limits.transfer_time(request.body.len());
        let response = match tokio::time::timeout(head_deadline, self.client.request(http)).await {
            Err(_) => return Err(AttemptError::Timeout(head_deadline)),
            Ok(Err(err)) => return Err(AttemptError::Transport(error_chain(&err))),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let headers = response.headers().clone();
        let limit = if status.is_success() { request.max_body } else { MAX_ERROR_BODY_BYTES };
        let announced = headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(limit);
        let body_deadline = self.limits.request_timeout + self.limits.transfer_time(announced.min(limit));
        let body = match tokio::time::timeout(body_deadline, Limited::new(response.into_body(), limit).collect()).await
        {
            Err(_) => return Err(AttemptError::Timeout(body_deadline)),
            Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() && status.is_success() => {
                return Err(AttemptError::TooLarge(limit));
            }
            // An error document too large to read whole: keep the status.
            Ok(Err(_)) if !status.is_success() => Bytes::new(),
            Ok(Err(err)) => return Err(AttemptError::Transport(error_chain(&*err))),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        Ok(Reply { status, headers, body, earlier_attempt_unknown: false })
    }
}

/// How one attempt failed.
enum AttemptError {
    Transport(String),
    Timeout(Duration),
    /// The answer is larger than the request allows (not retried).
    TooLarge(usize),
    /// The request could not be built (not retried).
    Local(String),
}

impl AttemptError {
    fn into_error(self, request: &Request<'_>, attempts: u32) -> S3Error {
        let (op, object) = (request.op, request.object.to_owned());
        match self {
            Self::Transport(detail) => S3Error::Transport { op, object, detail, attempts },
            Self::Timeout(after) => S3Error::Timeout { op, object, after, attempts },
            Self::TooLarge(limit) => {
                S3Error::Response { op, object, detail: format!("answer larger than {limit} bytes") }
            }
            Self::Local(detail) => {
                S3Error::Response { op, object, detail: format!("cannot build the request: {detail}") }
            }
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(detail) | Self::Local(detail) => f.write_str(detail),
            Self::Timeout(after) => write!(f, "no answer within {after:?}"),
            Self::TooLarge(limit) => write!(f, "answer larger than {limit} bytes"),
        }
    }
}

/// The wait after failed attempt `attempt` (1-based): `base · 2^(attempt-1)`,
/// capped at [`MAX_RETRY_BACKOFF`], jittered down to half so that writers
/// retrying together spread out.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_RETRY_BACKOFF);
    rand::thread_rng().gen_range(full / 2..=full)
}

/// The text of an error and all its sources, `: `-joined.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// TLS 1.2+ with aws-lc-rs, Mozilla's roots and the certificates of `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("{}: cannot read the CA bundle: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: the CA bundle holds no certificate", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("{}: not a usable trust anchor: {e}", path.display()))?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// A connection to the endpoint: plain or TLS.
#[derive(Debug)]
pub(crate) enum Stream {
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

/// Opens TCP connections (`TCP_NODELAY`) and, for `https://`, a TLS session.
/// Connect and handshake together have `timeout`.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl Connector {
    async fn open(tls: tokio_rustls::TlsConnector, timeout: Duration, uri: Uri) -> io::Result<TokioIo<Stream>> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(io::Error::other(format!("unsupported URL scheme {other:?}"))),
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
            Ok(result) => result.map(TokioIo::new),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn error_documents_give_code_and_message() {
        let reply = Reply {
            status: StatusCode::NOT_FOUND,
            headers: HeaderMap::new(),
            body: Bytes::from_static(
                b"<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>",
            ),
            earlier_attempt_unknown: false,
        };
        let err = reply.refusal("PUT", "k");
        assert_eq!(err.code(), "NoSuchBucket");
        assert!(err.to_string().contains("HTTP 404 NoSuchBucket: The specified bucket does not exist"), "{err}");
        let bare = Reply { body: Bytes::new(), status: StatusCode::FORBIDDEN, ..reply };
        assert_eq!(bare.refusal("GET", "k").code(), "Forbidden");
    }

    #[test]
    fn only_server_errors_and_throttling_are_retried() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(status).unwrap()), "{status}");
        }
        for status in [200, 204, 301, 400, 403, 404, 409, 412, 501, 507] {
            assert!(!retryable(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }

    proptest! {
        /// The backoff grows, never exceeds its cap and never drops below half
        /// of its un-jittered value.
        #[test]
        fn backoff_is_bounded(base_ms in 1u64..5_000, attempt in 1u32..100) {
            let base = Duration::from_millis(base_ms);
            let wait = backoff(base, attempt);
            let full = base.saturating_mul(1 << (attempt - 1).min(16)).min(MAX_RETRY_BACKOFF);
            prop_assert!(wait <= MAX_RETRY_BACKOFF);
            prop_assert!(wait >= full / 2 && wait <= full);
        }
    }
}
