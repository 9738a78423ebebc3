//! The delivery HTTP client: one POST per connection, to an address checked
//! at connect time ([`Target::resolve`]), over TLS for `https://` (webpki
//! roots), with its own timeouts. Redirects are not followed: a `3xx` is a
//! failed attempt like any non-`2xx`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::target::{Target, TargetPolicy};

/// Connecting (each address; TLS handshake included) must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole attempt (resolve, connect, request, answer's status) must finish within this.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Most bytes of the receiver's answer read (the rest is dropped with the connection).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The `User-Agent` of deliveries.
pub const USER_AGENT: &str = concat!("agentkeys-webhooks/", env!("CARGO_PKG_VERSION"));

/// How an attempt ended when it did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The target's addresses are refused or do not resolve.
    #[error("{0}")]
    Target(#[from] crate::target::TargetError),
    /// No address accepted a connection (or TLS failed).
    #[error("connect: {0}")]
    Connect(String),
    /// The exchange failed.
    #[error("http: {0}")]
    Http(String),
    /// [`ATTEMPT_TIMEOUT`] passed.
    #[error("timed out after {} s", ATTEMPT_TIMEOUT.as_secs())]
    Timeout,
}

/// A client for deliveries.
#[derive(Clone)]
pub struct WebhookClient {
    tls: tokio_rustls::TlsConnector,
    policy: TargetPolicy,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient").field("policy", &self.policy).finish_non_exhaustive()
    }
}

/// Mozilla's roots (aws-lc-rs crypto).
pub fn default_tls_config() -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl WebhookClient {
    /// A client under `policy`, trusting `tls` for `https://` targets.
    pub fn new(policy: TargetPolicy, tls: Arc<ClientConfig>) -> Self {
        Self { tls: tokio_rustls::TlsConnector::from(tls), policy, timeout: ATTEMPT_TIMEOUT }
    }

    /// POSTs `body` with `headers` to `target`; the receiver's status.
    pub async fn post(&self, target: &Target, headers: &[(&str, String)], body: Bytes) -> Result<u16, SendError> {
        match tokio::time::timeout(self.timeout, self.exchange(target, headers, body)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout),
        }
    }

    async fn exchange(&self, target: &Target, headers: &[(&str, String)], body: Bytes) -> Result<u16, SendError> {
        let addrs = target.resolve(self.policy).await?;
        let tcp = connect_any(&addrs).await?;
        if target.https {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| SendError::Connect(format!("{} is not a TLS server name", target.host)))?;
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
                .await
                .map_err(|_| SendError::Connect("TLS handshake timed out".to_owned()))?
                .map_err(|e| SendError::Connect(format!("TLS: {e}")))?;
            request(tls, target, headers, body).await
        } else {
            request(tcp, target, headers, body).await
        }
    }
}

async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, SendError> {
    let mut last = String::from("no address");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out"),
        }
    }
    Err(SendError::Connect(last))
}

async fn request<S>(stream: S, target: &Target, headers: &[(&str, String)], body: Bytes) -> Result<u16, SendError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Http(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let mut builder = Request::post(target.path_and_query.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, USER_AGENT);
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    let request = builder.body(Full::new(body)).map_err(|e| SendError::Http(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| SendError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    // Read a bounded part of the answer so a well-behaved receiver's connection
    // closes cleanly; what it says is not used.
    let _ = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await;
    driver.abort();
    Ok(status)
}
