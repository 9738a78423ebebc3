//! The daemon's connection to the server: the HTTP API (agent inboxes, read
//! capabilities, list, fetch, the event stream, HTTP send) and SMTP submission.
//!
//! A read capability is minted per inbox (`POST /v1/credentials/read`) when one
//! is first needed and reused until [`CAPABILITY_RENEW_MARGIN_SECS`] before it
//! expires; a `401` on a read route drops it and the request is retried once
//! with a fresh one.
//!
//! **Message bytes from the object store.** When the server keeps blobs in an
//! object store (S3) it brokers instead of proxying: listings carry a
//! presigned `raw_url` per message and the raw-message route answers `307` to
//! one. The client GETs that URL directly, with no credential of ours (the
//! signature is in the URL), over the same HTTP client and trust as the API;
//! plain `http://` is followed only to a loopback host. A `raw_url` that no
//! longer works (expired) falls back to the raw-message route, which hands out
//! a fresh one.
//!
//! The HTTP client is hyper's (already in the tree through axum), HTTP/1.1 over
//! plain TCP or rustls ([`crate::https`]). HTTPS and submission's STARTTLS trust
//! the same certificates ([`crate::tls`]): the one pinned at pairing
//! ([`AgentConfig::server_fingerprint`]), [`AgentConfig::ca_file`], the webpki roots.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{AgentConfig, SendVia};
use crate::https::{HttpClient, error_chain};
use crate::tls::TrustLog;
use crate::sse::{SseEvent, SseParser};

/// Lifetime asked for a read capability, in seconds (the broker may clamp it).
pub const CAPABILITY_TTL_SECS: i64 = 300;
/// A cached capability is replaced this many seconds before it expires, so a
/// request never starts with one about to lapse.
pub const CAPABILITY_RENEW_MARGIN_SECS: i64 = 30;
/// Longest wait for one API request (connect, headers and body).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest SMTP submission (connect, STARTTLS, AUTH, DATA).
pub const SUBMISSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest raw message fetched, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest JSON answer read from the API, in bytes.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;
/// Largest page the list route serves.
pub const MAX_PAGE: u32 = 100;
/// An event stream that ends sooner than this after it was opened is reopened
/// only after [`RECONNECT_PAUSE`], so a server that keeps closing streams at
/// once (shutting down) is not hammered.
pub const SHORT_STREAM: Duration = Duration::from_secs(1);
/// See [`SHORT_STREAM`].
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Why a call to the server failed. The text says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server's certificate was refused; the text says why and what to do.
    #[error("refusing the server at {server}: {detail}")]
    Untrusted {
        /// The configured server (or submission listener).
        server: String,
        /// What was wrong and the fix.
        detail: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server at {server}: {reason} (is `agentkeys serve` running, and {server_env} right?)", server_env = crate::config::SERVER_ENV)]
    Unreachable {
        /// The configured server.
        server: String,
        /// What failed.
        reason: String,
    },
    /// The server did not answer in time.
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent key was refused (`401 INVALID_KEY`).
    #[error("the server refused the agent key (missing, unknown, revoked or expired): pair again with `agentkeys agent pair` or set {} to a valid key", crate::config::AGENT_KEY_ENV)]
    InvalidKey,
    /// No active grant covers the inbox with the needed scope (`403`).
    #[error("no active grant lets this agent {scope} {inbox} ({code}): ask the owner for a grant (`agentkeys grant create`)")]
    NoGrant {
        /// The inbox.
        inbox: String,
        /// `read`, `send` or `create`.
        scope: &'static str,
        /// `NO_GRANT` or `GRANT_EXPIRED`.
        code: String,
    },
    /// The inbox or message does not exist, or this agent may not see it (`404`;
    /// the server answers the same for both).
    #[error("{what} not found (or not visible to this agent)")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// The inbox's allow/block policy withholds the message from the agent
    /// (`403 MESSAGE_WITHHELD`).
    #[error("{what} is withheld by the inbox's allow/block policy (its owner sets it: agentkeys inbox policy)")]
    Withheld {
        /// What was looked for.
        what: String,
    },
    /// The server refused the request with another problem.
    #[error("the server refused the request: {status} {code}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's stable code.
        code: String,
        /// The problem's detail.
        detail: String,
    },
    /// The server's answer was not what the API promises.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The server refused to let this agent send as the inbox (SMTP `535`, HTTP
    /// `401 SEND_NOT_AUTHORIZED`: one answer for every reason).
    #[error("the server refused to send as {inbox} ({reply}): the agent key must be valid and hold an active `send` grant for this inbox")]
    SendRefused {
        /// The inbox.
        inbox: String,
        /// The server's reply.
        reply: String,
    },
    /// SMTP submission failed.
    #[error("sending failed: {0}")]
    Submission(String),
    /// A local problem (TLS configuration, a file).
    #[error("{0}")]
    Local(String),
    /// Reading a message from the object store the server handed out a URL
    /// of failed (unreachable, refused, or a URL this client does not follow).
    #[error("cannot read the message from the object store at {host}: {detail}")]
    ObjectStore {
        /// The store's host (never the whole URL: its query is a credential).
        host: String,
        /// What failed.
        detail: String,
    },
}

/// One inbox this agent may use (`GET /v1/agent/inboxes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InboxEntry {
    /// The address.
    pub address: String,
    /// What the agent may do with it: `read`, `send`, `admin`, `create`.
    pub scopes: Vec<String>,
    /// When the last covering grant expires (Unix seconds).
    pub grant_expires_at: i64,
    /// `active`, `disabled` or `suspended`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When the inbox itself expires and is removed with its mail (Unix
    /// seconds); absent for an inbox that does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// An inbox this agent created (`POST /v1/agent/inboxes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreatedInbox {
    /// The new address: give it to the service as the sign-up address.
    pub address: String,
    /// When it stops receiving and is removed with its mail (Unix seconds).
    pub expires_at: i64,
    /// The grant that allowed it.
    pub grant_id: String,
    /// When that grant expires (Unix seconds).
    pub grant_expires_at: i64,
}

#[derive(Debug, Deserialize)]
struct InboxList {
    inboxes: Vec<InboxEntry>,
}

/// One stored message, as the list route and the event stream describe it.
/// `Debug` hides the `raw_url`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MessageEntry {
    /// The message's ULID in the store (time-ordered).
    pub message_id: String,
    /// When it was stored (Unix seconds).
    pub received_at: i64,
    /// Size in bytes.
    pub size: u64,
    /// A presigned URL of the raw message in the server's object store, when
    /// the server handed one out. A bearer credential: never printed, never
    /// part of an answer to the MCP client.
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub raw_url: Option<String>,
    /// The server's summary of the `From:` **header** (its first mailbox;
    /// never the envelope sender), decoded and cut to a bounded length. Free
    /// text chosen by the sender: believe it only when `authenticated` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_from: Option<crate::message::Mailbox>,
    /// The server's summary of the decoded `Subject:` (at most 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The server's verdict on `header_from` at arrival: DMARC pass, or a DKIM
    /// pass aligned with its domain. Absent from servers without summaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<bool>,
}

impl MessageEntry {
    /// An entry with only the store's facts (no header summary).
    pub fn bare(message_id: impl Into<String>, received_at: i64, size: u64) -> Self {
        Self {
            message_id: message_id.into(),
            received_at,
            size,
            raw_url: None,
            header_from: None,
            subject: None,
            authenticated: None,
        }
    }
}

impl std::fmt::Debug for MessageEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageEntry")
            .field("message_id", &self.message_id)
            .field("received_at", &self.received_at)
            .field("size", &self.size)
            .field("raw_url", &self.raw_url.as_ref().map(|_| "<presigned>"))
            .field("header_from", &self.header_from)
            .field("subject", &self.subject)
            .field("authenticated", &self.authenticated)
            .finish()
    }
}

/// One page of the list route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePage {
    /// The messages, in the asked order.
    pub messages: Vec<MessageEntry>,
    /// Where the next page starts (pass as `before` for newest-first, `after` for oldest-first).
    pub next_cursor: Option<String>,
    /// The server's clock when it read the page (Unix milliseconds; the clock
    /// that stamps message ids). Absent from older servers.
    #[serde(default)]
    pub server_time_ms: Option<i64>,
    /// The ids of the messages in the page's range that the inbox's policy
    /// withholds (not listed; empty from older servers, which listed them).
    #[serde(default)]
    pub withheld_ids: Vec<String>,
}

/// One thread of `GET …/threads`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ThreadEntry {
    /// The thread id (the id of its first message in the inbox).
    pub thread_id: String,
    /// How many of its messages the inbox holds.
    pub message_count: u64,
    /// Its newest message.
    pub latest: MessageEntry,
}

/// A page of `GET …/threads`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ThreadPage {
    /// Threads, the most recently active first.
    pub threads: Vec<ThreadEntry>,
    /// Pass as `before` for the next page.
    pub next_cursor: Option<String>,
    /// Newest-message ids of threads the server withheld by the inbox's policy.
    #[serde(default)]
    pub withheld_ids: Vec<String>,
}

/// `GET …/threads/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ThreadMessagesPage {
    /// The thread id.
    pub thread_id: String,
    /// Its messages, oldest first.
    pub messages: Vec<MessageEntry>,
    /// Ids of its messages the server withheld by the inbox's policy.
    #[serde(default)]
    pub withheld_ids: Vec<String>,
    /// What the inbox sent into the thread, oldest first.
    #[serde(default)]
    pub sent: Vec<crate::mailbox::SentMessage>,
}

/// One answer of `GET …/search`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SearchEntry {
    /// The message.
    #[serde(flatten)]
    pub message: MessageEntry,
    /// Its thread.
    pub thread_id: String,
}

/// A page of `GET …/search`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SearchPage {
    /// Matching messages, newest first.
    pub messages: Vec<SearchEntry>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
    /// Ids of matches the server withheld by the inbox's policy.
    #[serde(default)]
    pub withheld_ids: Vec<String>,
}

/// `%`-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Listing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Newest first.
    Desc,
    /// Oldest first.
    Asc,
}

/// A list request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Order.
    pub order: Order,
    /// Only messages after this ULID.
    pub after: Option<String>,
    /// Only messages before this ULID.
    pub before: Option<String>,
    /// Page size, 1..=[`MAX_PAGE`].
    pub limit: u32,
}

/// What a send returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SendReceipt {
    /// `smtp` or `http`.
    pub via: String,
    /// The server's ULID of the queued message (HTTP send only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    /// The `Message-ID` of the message as sent.
    pub rfc5322_message_id: Option<String>,
    /// How many envelope recipients it went to.
    pub recipients: usize,
    /// True when this was a retry with an idempotency key already used for this
    /// message: nothing was sent now; the ids are those of the first send.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

#[derive(Debug, Clone)]
struct Capability {
    token: String,
    expires_at: i64,
}

#[derive(Debug, Deserialize)]
struct CapabilityAnswer {
    token: String,
    expires_at: i64,
}

#[derive(Debug, Deserialize)]
struct ProblemBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    detail: String,
}

fn is_ulid(s: &str) -> bool {
    s.len() == 26 && s.parse::<ulid::Ulid>().is_ok()
}

/// Checks a message id the caller gave before it goes into a URL.
pub fn check_message_id(id: &str) -> Result<(), ClientError> {
    if is_ulid(id) {
        Ok(())
    } else {
        Err(ClientError::NotFound { what: format!("message {id:?} (message ids are 26-character ULIDs)") })
    }
}

/// Checks an inbox address the caller gave before it goes into a URL.
pub fn check_inbox(inbox: &str) -> Result<String, ClientError> {
    let lower = inbox.trim().to_ascii_lowercase();
    let ok = lower.len() <= 254
        && lower.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty()
                && !d.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
                && d.bytes().all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
        });
    if ok { Ok(lower) } else { Err(ClientError::NotFound { what: format!("inbox {inbox:?} (not an address)") }) }
}

/// The host of an object-store URL this client will GET: `https`, or `http`
/// to a loopback host only (a test or a local S3 server).
pub fn object_store_host(uri: &hyper::Uri) -> Result<String, ClientError> {
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let refuse = |why: &str| Err(ClientError::ObjectStore { host: host.clone(), detail: why.to_owned() });
    if host.is_empty() {
        return refuse("the URL has no host");
    }
    match uri.scheme_str() {
        Some("https") => Ok(host),
        Some("http") => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(host)
            } else {
                refuse("refusing plain http to a host that is not loopback: the object store must use https")
            }
        }
        _ => refuse("not an http(s) URL"),
    }
}

/// The event stream of one inbox: `message.received` events, with a fresh
/// capability and resumption (`Last-Event-ID`) when the server ends the stream.
pub struct EventStream {
    client: ApiClient,
    inbox: String,
    last_id: Option<String>,
    body: Option<Incoming>,
    opened_at: std::time::Instant,
    parser: SseParser,
    queued: std::collections::VecDeque<SseEvent>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").field("inbox", &self.inbox).field("last_id", &self.last_id).finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next `message.received` event. Reconnects (with `Last-Event-ID`) when
    /// the server ends the stream, e.g. at capability expiry.
    pub async fn next(&mut self) -> Result<MessageEntry, ClientError> {
        loop {
            while let Some(event) = self.queued.pop_front() {
                if let Some(id) = &event.id {
                    self.last_id = Some(id.clone());
                }
                if event.event != "message.received" {
                    continue;
                }
                let entry: MessageEntry = serde_json::from_str(&event.data)
                    .map_err(|e| ClientError::Protocol(format!("event data is not a message entry: {e}")))?;
                self.last_id = Some(entry.message_id.clone());
                return Ok(entry);
            }
            let Some(body) = self.body.as_mut() else {
                if self.opened_at.elapsed() < SHORT_STREAM {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                let response = self.client.open_events(&self.inbox, self.last_id.as_deref()).await?;
                self.opened_at = std::time::Instant::now();
                self.body = Some(response.into_body());
                self.parser = SseParser::new();
                continue;
            };
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let events = self.parser.feed(data).map_err(|e| ClientError::Protocol(e.to_string()))?;
                        self.queued.extend(events);
                    }
                }
                // The server ended the stream (capability expiry, shutdown) or the
                // connection broke: reconnect from the last id seen.
                Some(Err(_)) | None => self.body = None,
            }
        }
    }

    /// The id of the last event seen (what a reconnect resumes after).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }
}

/// The connection to the server. Cheap to clone; clones share the capability cache.
#[derive(Clone)]
pub struct ApiClient {
    config: Arc<AgentConfig>,
    http: HttpClient,
    trust_log: Arc<TrustLog>,
    caps: Arc<tokio::sync::Mutex<HashMap<String, Capability>>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("server", &self.config.server).finish_non_exhaustive()
    }
}

enum Auth<'a> {
    AgentKey,
    Capability(&'a str),
}

impl ApiClient {
    /// A client for `config`; fails only when the CA file cannot be used.
    pub fn new(config: AgentConfig) -> Result<Self, ClientError> {
        let (http, trust_log) = crate::https::http_client(&config.trust(), REQUEST_TIMEOUT).map_err(ClientError::Local)?;
        Ok(Self { config: Arc::new(config), http, trust_log, caps: Arc::default() })
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> ClientError {
        match self.trust_log.take_refusal() {
            Some(detail) => ClientError::Untrusted { server: self.config.server.clone(), detail },
            None => ClientError::Unreachable { server: self.config.server.clone(), reason: reason.to_string() },
        }
    }

    async fn send_request(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<(&'static str, Bytes)>,
        accept: &'static str,
        last_event_id: Option<&str>,
    ) -> Result<Response<Incoming>, ClientError> {
        self.send_request_with(method, path, auth, body, accept, last_event_id.map(|id| ("last-event-id", id))).await
    }

    async fn send_request_with(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<(&'static str, Bytes)>,
        accept: &'static str,
        extra_header: Option<(&'static str, &str)>,
    ) -> Result<Response<Incoming>, ClientError> {
        let bearer = match auth {
            Auth::AgentKey => format!("Bearer {}", self.config.agent_key.expose()),
            Auth::Capability(token) => format!("Bearer {token}"),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.config.server))
            .header(header::HOST, self.config.http_authority.as_str())
            .header(header::AUTHORIZATION, bearer)
            .header(header::ACCEPT, accept)
            .header(header::USER_AGENT, concat!("agentkeys-daemon/", env!("CARGO_PKG_VERSION")));
        if let Some((name, value)) = extra_header {
            builder = builder.header(name, value);
        }
        let request = match body {
            Some((content_type, bytes)) => builder.header(header::CONTENT_TYPE, content_type).body(Full::new(bytes)),
            None => builder.body(Full::new(Bytes::new())),
        }
        .map_err(|e| ClientError::Local(format!("cannot build the request: {e}")))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request)).await {
            Err(_) => Err(ClientError::Timeout(REQUEST_TIMEOUT)),
            Ok(Err(e)) => Err(self.unreachable(error_chain(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    async fn read_body(response: Response<Incoming>, limit: usize) -> Result<Bytes, ClientError> {
        let body = Limited::new(response.into_body(), limit);
        match tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await {
            Err(_) => Err(ClientError::Timeout(REQUEST_TIMEOUT)),
            Ok(Err(e)) => Err(ClientError::Protocol(format!("cannot read the answer (over {limit} bytes?): {e}"))),
            Ok(Ok(c)) => Ok(c.to_bytes()),
        }
    }

    async fn problem(response: Response<Incoming>) -> (u16, ProblemBody) {
        let status = response.status().as_u16();
        let body = Self::read_body(response, MAX_JSON_BYTES).await.unwrap_or_default();
        let problem = serde_json::from_slice(&body).unwrap_or(ProblemBody {
            code: String::new(),
            detail: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
        (status, problem)
    }

    /// Maps a refused answer to an error; `what` names the object for a 404.
    async fn refusal(response: Response<Incoming>, inbox: &str, scope: &'static str, what: String) -> ClientError {
        let (status, problem) = Self::problem(response).await;
        match (status, problem.code.as_str()) {
            (401, "INVALID_KEY") => ClientError::InvalidKey,
            (401, "SEND_NOT_AUTHORIZED") => {
                ClientError::SendRefused { inbox: inbox.to_owned(), reply: format!("{status} {}", problem.code) }
            }
            (403, code @ ("NO_GRANT" | "GRANT_EXPIRED")) => {
                ClientError::NoGrant { inbox: inbox.to_owned(), scope, code: code.to_owned() }
            }
            (404, _) => ClientError::NotFound { what },
            (403, "MESSAGE_WITHHELD") => ClientError::Withheld { what },
            _ => ClientError::Refused { status, code: problem.code, detail: problem.detail },
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(response: Response<Incoming>) -> Result<T, ClientError> {
        let body = Self::read_body(response, MAX_JSON_BYTES).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `GET /v1/agent/inboxes`: the inboxes this agent's active grants cover.
    pub async fn list_inboxes(&self) -> Result<Vec<InboxEntry>, ClientError> {
        let r = self.send_request(Method::GET, "/v1/agent/inboxes", Auth::AgentKey, None, "application/json", None).await?;
        if r.status() != StatusCode::OK {
            return Err(Self::refusal(r, "any inbox", "list", "the agent inbox listing".to_owned()).await);
        }
        Ok(Self::json::<InboxList>(r).await?.inboxes)
    }

    /// `POST /v1/agent/grant-requests`: asks the owner for a grant on `inbox`
    /// (an address or pattern) with `scopes`, for `ttl` seconds (default 30
    /// days), saying why; the owner decides on the console. The server's
    /// answer: the pending request (`id`, `status`, `decide_by`).
    pub async fn request_grant(
        &self,
        inbox: &str,
        scopes: &[String],
        ttl: Option<i64>,
        reason: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::json!({ "inbox": inbox, "scopes": scopes, "ttl": ttl, "reason": reason }).to_string();
        let r = self
            .send_request(
                Method::POST,
                "/v1/agent/grant-requests",
                Auth::AgentKey,
                Some(("application/json", Bytes::from(body))),
                "application/json",
                None,
            )
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(Self::refusal(r, inbox, "request", format!("a grant request for {inbox}")).await);
        }
        Self::json(r).await
    }

    /// `GET /v1/agent/grant-requests`: this agent's grant requests of the last
    /// 30 days, newest first, each `pending`, `approved` (with its `grant`),
    /// `denied` or `expired`.
    pub async fn grant_requests(&self) -> Result<serde_json::Value, ClientError> {
        let r = self.send_request(Method::GET, "/v1/agent/grant-requests", Auth::AgentKey, None, "application/json", None).await?;
        if r.status() != StatusCode::OK {
            return Err(Self::refusal(r, "any inbox", "request", "the grant request listing".to_owned()).await);
        }
        Self::json(r).await
    }

    /// `POST /v1/agent/inboxes`: a new inbox for this agent under its `create`
    /// grant; `name`, `domain` and the lifetime `expires_in` (seconds) are
    /// optional (the server picks a name under the grant's pattern, the domain
    /// the grant names, and as long as the grant allows).
    pub async fn create_inbox(
        &self,
        name: Option<&str>,
        domain: Option<&str>,
        expires_in: Option<i64>,
    ) -> Result<CreatedInbox, ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(name) = name {
            body.insert("name".into(), name.into());
        }
        if let Some(domain) = domain {
            body.insert("domain".into(), domain.into());
        }
        if let Some(secs) = expires_in {
            body.insert("expires_in".into(), secs.into());
        }
        let body = serde_json::Value::Object(body).to_string();
        let r = self
            .send_request(
                Method::POST,
                "/v1/agent/inboxes",
                Auth::AgentKey,
                Some(("application/json", Bytes::from(body))),
                "application/json",
                None,
            )
            .await?;
        if r.status() != StatusCode::CREATED {
            let what = match (name, domain) {
                (Some(n), Some(d)) => format!("{n}@{d}"),
                (Some(n), None) => n.to_owned(),
                _ => "a new inbox".to_owned(),
            };
            return Err(Self::refusal(r, &what, "create", what.clone()).await);
        }
        Self::json(r).await
    }

    /// A read capability for `inbox`: the cached one if it has more than
    /// [`CAPABILITY_RENEW_MARGIN_SECS`] left, else a new one.
    async fn capability(&self, inbox: &str) -> Result<String, ClientError> {
        let mut caps = self.caps.lock().await;
        let now = unix_now();
        if let Some(cap) = caps.get(inbox)
            && cap.expires_at - CAPABILITY_RENEW_MARGIN_SECS > now
        {
            return Ok(cap.token.clone());
        }
        caps.remove(inbox);
        let body = serde_json::json!({ "inbox": inbox, "ttl": CAPABILITY_TTL_SECS }).to_string();
        let r = self
            .send_request(
                Method::POST,
                "/v1/credentials/read",
                Auth::AgentKey,
                Some(("application/json", Bytes::from(body))),
                "application/json",
                None,
            )
            .await?;
        if r.status() != StatusCode::OK {
            return Err(Self::refusal(r, inbox, "read", format!("inbox {inbox}")).await);
        }
        let answer: CapabilityAnswer = Self::json(r).await?;
        caps.insert(inbox.to_owned(), Capability { token: answer.token.clone(), expires_at: answer.expires_at });
        Ok(answer.token)
    }

    async fn forget_capability(&self, inbox: &str) {
        self.caps.lock().await.remove(inbox);
    }

    /// A GET on a read route with the inbox's capability; on `401` the
    /// capability is replaced and the request retried once.
    async fn read_route(
        &self,
        inbox: &str,
        path: &str,
        accept: &'static str,
        last_event_id: Option<&str>,
        what: impl Fn() -> String,
    ) -> Result<Response<Incoming>, ClientError> {
        for attempt in 0..2 {
            let token = self.capability(inbox).await?;
            let r = self.send_request(Method::GET, path, Auth::Capability(&token), None, accept, last_event_id).await?;
            match r.status() {
                // 307: the raw-message route pointing at the object store.
                StatusCode::OK | StatusCode::TEMPORARY_REDIRECT => return Ok(r),
                StatusCode::UNAUTHORIZED if attempt == 0 => {
                    self.forget_capability(inbox).await;
                }
                _ => return Err(Self::refusal(r, inbox, "read", what()).await),
            }
        }
        Err(ClientError::Protocol("the server refused a freshly minted capability".to_owned()))
    }

    /// `GET /v1/inboxes/{inbox}/messages`.
    pub async fn list_messages(&self, inbox: &str, query: &ListQuery) -> Result<MessagePage, ClientError> {
        let inbox = check_inbox(inbox)?;
        let mut path = format!(
            "/v1/inboxes/{inbox}/messages?order={}&limit={}",
            match query.order {
                Order::Desc => "desc",
                Order::Asc => "asc",
            },
            query.limit.clamp(1, MAX_PAGE)
        );
        for (name, value) in [("after", &query.after), ("before", &query.before)] {
            if let Some(v) = value {
                if !is_ulid(v) {
                    return Err(ClientError::Local(format!("{name} {v:?} is not a message id (a 26-character ULID)")));
                }
                path.push_str(&format!("&{name}={v}"));
            }
        }
        let r = self.read_route(&inbox, &path, "application/json", None, || format!("inbox {inbox}")).await?;
        Self::json(r).await
    }

    /// `GET /v1/inboxes/{inbox}/threads`: threads, the most recently active first.
    pub async fn list_threads(&self, inbox: &str, before: Option<&str>, limit: u32) -> Result<ThreadPage, ClientError> {
        let inbox = check_inbox(inbox)?;
        let mut path = format!("/v1/inboxes/{inbox}/threads?limit={}", limit.clamp(1, MAX_PAGE));
        if let Some(b) = before {
            if !is_ulid(b) {
                return Err(ClientError::Local(format!("before {b:?} is not a message id (a 26-character ULID)")));
            }
            path.push_str(&format!("&before={b}"));
        }
        let r = self.read_route(&inbox, &path, "application/json", None, || format!("inbox {inbox}")).await?;
        Self::json(r).await
    }

    /// `GET /v1/inboxes/{inbox}/threads/{thread_id}`: one thread's messages, oldest first.
    pub async fn get_thread(&self, inbox: &str, thread_id: &str) -> Result<ThreadMessagesPage, ClientError> {
        let inbox = check_inbox(inbox)?;
        if !is_ulid(thread_id) {
            return Err(ClientError::Local(format!("thread id {thread_id:?} is not a 26-character ULID")));
        }
        let path = format!("/v1/inboxes/{inbox}/threads/{thread_id}");
        let r = self.read_route(&inbox, &path, "application/json", None, || format!("thread {thread_id} in {inbox}")).await?;
        Self::json(r).await
    }

    /// `GET /v1/inboxes/{inbox}/search?…`: `params` are (name, value) pairs of
    /// the route's parameters, escaped here.
    pub async fn search(&self, inbox: &str, params: &[(&str, String)]) -> Result<SearchPage, ClientError> {
        let inbox = check_inbox(inbox)?;
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", query_escape(v))).collect();
        let path = format!("/v1/inboxes/{inbox}/search?{}", query.join("&"));
        let r = self.read_route(&inbox, &path, "application/json", None, || format!("inbox {inbox}")).await?;
        Self::json(r).await
    }

    /// `GET /v1/inboxes/{inbox}/policy`: the inbox's allow/block lists as its
    /// owner set them (issue 13 §2). The waits and the OTP tools apply them to
    /// every message they would hand out.
    pub async fn inbox_policy(&self, inbox: &str) -> Result<agentkeys_core::policy::InboxPolicy, ClientError> {
        let inbox = check_inbox(inbox)?;
        let path = format!("/v1/inboxes/{inbox}/policy");
        let r = self.read_route(&inbox, &path, "application/json", None, || format!("the policy of inbox {inbox}")).await?;
        let mut view: serde_json::Value = Self::json(r).await?;
        // The view names the inbox besides the policy's own fields.
        if let Some(o) = view.as_object_mut() {
            o.remove("inbox");
        }
        serde_json::from_value(view).map_err(|e| ClientError::Protocol(format!("the inbox policy does not parse: {e}")))
    }

    /// `PATCH /v1/inboxes/{inbox}/policy` with the agent key: `change` (a
    /// JSON object of the lists to replace) applied to the inbox's policy. The
    /// server takes it only from an agent with `admin` on the inbox and only
    /// when it tightens the policy (`403 POLICY_OWNER_ONLY` otherwise).
    pub async fn change_policy(
        &self,
        inbox: &str,
        change: &serde_json::Value,
    ) -> Result<agentkeys_core::policy::InboxPolicy, ClientError> {
        let inbox = check_inbox(inbox)?;
        let path = format!("/v1/inboxes/{inbox}/policy");
        let body = Bytes::from(change.to_string());
        let r = self
            .send_request(Method::PATCH, &path, Auth::AgentKey, Some(("application/json", body)), "application/json", None)
            .await?;
        if r.status() != StatusCode::OK {
            return Err(Self::refusal(r, &inbox, "admin", format!("inbox {inbox}")).await);
        }
        let mut view: serde_json::Value = Self::json(r).await?;
        if let Some(o) = view.as_object_mut() {
            o.remove("inbox");
        }
        serde_json::from_value(view).map_err(|e| ClientError::Protocol(format!("the inbox policy does not parse: {e}")))
    }

    /// `GET /v1/inboxes/{inbox}/sent[/{id}]`: what the inbox sent, with each
    /// message's delivery state (issue 13 §3), as the server answers it.
    pub async fn sent(&self, inbox: &str, message_id: Option<&str>) -> Result<serde_json::Value, ClientError> {
        let inbox = check_inbox(inbox)?;
        let path = match message_id {
            Some(id) => {
                check_message_id(id)?;
                format!("/v1/inboxes/{inbox}/sent/{id}")
            }
            None => format!("/v1/inboxes/{inbox}/sent"),
        };
        let r = self
            .read_route(&inbox, &path, "application/json", None, || match message_id {
                Some(id) => format!("sent message {id} of {inbox}"),
                None => format!("the sent messages of {inbox}"),
            })
            .await?;
        Self::json(r).await
    }

    /// `GET /v1/inboxes/{inbox}/messages/{id}`: the raw stored message, from
    /// the server or, when it answers `307`, from the object store it points at.
    pub async fn fetch_message(&self, inbox: &str, message_id: &str) -> Result<Bytes, ClientError> {
        let inbox = check_inbox(inbox)?;
        check_message_id(message_id)?;
        let path = format!("/v1/inboxes/{inbox}/messages/{message_id}");
        let what = || format!("message {message_id} in {inbox}");
        let r = self.read_route(&inbox, &path, "message/rfc822", None, what).await?;
        if r.status() == StatusCode::TEMPORARY_REDIRECT {
            let location = r.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let location = location
                .ok_or_else(|| ClientError::Protocol("a 307 without a usable Location header".to_owned()))?;
            return self.fetch_object(&location, what).await;
        }
        Self::read_body(r, MAX_MESSAGE_BYTES).await
    }

    /// The raw message of a listed `entry`: straight from its `raw_url` when
    /// the listing carried one, else (or if that URL no longer works, e.g.
    /// expired) through [`Self::fetch_message`].
    pub async fn fetch_entry(&self, inbox: &str, entry: &MessageEntry) -> Result<Bytes, ClientError> {
        if let Some(url) = &entry.raw_url {
            match self.fetch_object(url, || format!("message {}", entry.message_id)).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => tracing::info!(message_id = %entry.message_id, error = %e, "the listed raw_url did not work; asking the server again"),
            }
        }
        self.fetch_message(inbox, &entry.message_id).await
    }

    /// GETs a presigned object-store URL the server handed out: no
    /// credential of ours goes with it, `https` under the API's trust, plain
    /// `http` only to a loopback host.
    async fn fetch_object(&self, url: &str, what: impl Fn() -> String) -> Result<Bytes, ClientError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| ClientError::Protocol(format!("the server handed out a message URL that does not parse: {e}")))?;
        let host = object_store_host(&uri)?;
        let store_error = |detail: String| ClientError::ObjectStore { host: host.clone(), detail };
        let request = Request::get(uri.clone())
            .header(header::USER_AGENT, concat!("agentkeys-daemon/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Local(format!("cannot build the request: {e}")))?;
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request)).await {
            Err(_) => return Err(ClientError::Timeout(REQUEST_TIMEOUT)),
            Ok(Err(e)) => {
                return Err(match self.trust_log.take_refusal() {
                    Some(detail) => ClientError::Untrusted { server: host.clone(), detail },
                    None => store_error(error_chain(&e)),
                });
            }
            Ok(Ok(r)) => r,
        };
        match response.status() {
            StatusCode::OK => Self::read_body(response, MAX_MESSAGE_BYTES).await,
            StatusCode::NOT_FOUND => Err(ClientError::NotFound { what: what() }),
            status => {
                // S3 answers XML; its <Code> says why (AccessDenied: expired or not signed for this).
                let body = Self::read_body(response, MAX_JSON_BYTES).await.unwrap_or_default();
                let text = String::from_utf8_lossy(&body);
                let code = text.split_once("<Code>").and_then(|(_, rest)| rest.split_once("</Code>")).map(|(c, _)| c);
                Err(store_error(format!("{status} {}", code.unwrap_or("(no S3 error code)"))))
            }
        }
    }

    async fn open_events(&self, inbox: &str, last_event_id: Option<&str>) -> Result<Response<Incoming>, ClientError> {
        let path = format!("/v1/inboxes/{inbox}/events");
        self.read_route(inbox, &path, "text/event-stream", last_event_id, || format!("inbox {inbox}")).await
    }

    /// Subscribes to `inbox`'s new-mail events. With `after`, messages stored
    /// after that id are replayed first (no gap between a listing and the stream).
    /// The connection is opened now, so events from this point on are not missed.
    pub async fn events(&self, inbox: &str, after: Option<String>) -> Result<EventStream, ClientError> {
        let inbox = check_inbox(inbox)?;
        if let Some(a) = &after
            && !is_ulid(a)
        {
            return Err(ClientError::Local(format!("{a:?} is not a message id (a 26-character ULID)")));
        }
        let response = self.open_events(&inbox, after.as_deref()).await?;
        Ok(EventStream {
            client: self.clone(),
            inbox,
            last_id: after,
            body: Some(response.into_body()),
            opened_at: std::time::Instant::now(),
            parser: SseParser::new(),
            queued: std::collections::VecDeque::new(),
        })
    }

    /// Submits `message` (complete RFC 5322 bytes, no `Bcc:` header) from
    /// `inbox` to `recipients` by the configured way.
    pub async fn send(
        &self,
        inbox: &str,
        recipients: &[String],
        message: Vec<u8>,
        rfc5322_message_id: Option<String>,
    ) -> Result<SendReceipt, ClientError> {
        let inbox = check_inbox(inbox)?;
        if recipients.is_empty() {
            return Err(ClientError::Local("no recipients: give at least one of to, cc, bcc".to_owned()));
        }
        match self.config.send_via {
            SendVia::Smtp => self.send_smtp(&inbox, recipients, message, rfc5322_message_id).await,
            SendVia::Http => self.send_http(&inbox, recipients, message, rfc5322_message_id).await,
        }
    }

    async fn send_http(
        &self,
        inbox: &str,
        recipients: &[String],
        message: Vec<u8>,
        rfc5322_message_id: Option<String>,
    ) -> Result<SendReceipt, ClientError> {
        #[derive(Deserialize)]
        struct Accepted {
            message_id: Option<String>,
            rfc5322_message_id: Option<String>,
        }
        let path = format!("/v1/inboxes/{inbox}/send");
        let r = self
            .send_request(
                Method::POST,
                &path,
                Auth::AgentKey,
                Some(("message/rfc822", Bytes::from(message))),
                "application/json",
                None,
            )
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            return Err(Self::refusal(r, inbox, "send", format!("inbox {inbox}")).await);
        }
        let a: Accepted = Self::json(r).await?;
        Ok(SendReceipt {
            via: "http".to_owned(),
            queue_id: a.message_id,
            rfc5322_message_id: a.rfc5322_message_id.or(rfc5322_message_id),
            recipients: recipients.len(),
            replayed: false,
        })
    }

    /// Sends a JSON send request (`POST /v1/inboxes/{inbox}/send`, the server
    /// builds the message) with an `Idempotency-Key`: a retry with the same key
    /// and request sends nothing and answers the first send's ids.
    pub async fn send_json_idempotent(
        &self,
        inbox: &str,
        request: &serde_json::Value,
        idempotency_key: &str,
        recipients: usize,
    ) -> Result<SendReceipt, ClientError> {
        #[derive(Deserialize)]
        struct Accepted {
            message_id: Option<String>,
            rfc5322_message_id: Option<String>,
        }
        let inbox = check_inbox(inbox)?;
        let key = idempotency_key.trim();
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(ClientError::Local(
                "idempotency_key must be 1-255 printable ASCII characters, e.g. a UUID".to_owned(),
            ));
        }
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Local(e.to_string()))?;
        let path = format!("/v1/inboxes/{inbox}/send");
        let r = self
            .send_request_with(
                Method::POST,
                &path,
                Auth::AgentKey,
                Some(("application/json", Bytes::from(body))),
                "application/json",
                Some(("idempotency-key", key)),
            )
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            return Err(Self::refusal(r, &inbox, "send", format!("inbox {inbox}")).await);
        }
        let replayed = r.headers().get("idempotent-replayed").is_some_and(|v| v.as_bytes() == b"true");
        let a: Accepted = Self::json(r).await?;
        Ok(SendReceipt {
            via: "http".to_owned(),
            queue_id: a.message_id,
            rfc5322_message_id: a.rfc5322_message_id,
            recipients,
            replayed,
        })
    }

    /// The submission TLS client: the same trust as HTTPS ([`crate::tls`]).
    fn tls_connector(&self) -> Result<(tokio_rustls::TlsConnector, Arc<TrustLog>), ClientError> {
        let (config, log) = crate::tls::client_config(&self.config.trust(), &[]).map_err(ClientError::Local)?;
        Ok((tokio_rustls::TlsConnector::from(config), log))
    }

    async fn send_smtp(
        &self,
        inbox: &str,
        recipients: &[String],
        message: Vec<u8>,
        rfc5322_message_id: Option<String>,
    ) -> Result<SendReceipt, ClientError> {
        use mail_send::SmtpClientBuilder;
        use mail_send::smtp::message::Message;
        let (connector, trust_log) = self.tls_connector()?;
        let host = self.config.submission_host.clone();
        let port = self.config.submission_port;
        let builder = SmtpClientBuilder::new_with_tls_connector(host.clone(), port, connector)
            .implicit_tls(false)
            .helo_host("agentkeys-daemon")
            .timeout(SUBMISSION_TIMEOUT)
            .credentials((inbox.to_owned(), self.config.agent_key.expose().to_owned()));
        let describe = |e: mail_send::Error| -> ClientError {
            match e {
                mail_send::Error::AuthenticationFailed(r) => ClientError::SendRefused {
                    inbox: inbox.to_owned(),
                    reply: format!("{} {}", r.code(), r.message()),
                },
                mail_send::Error::UnexpectedReply(r) => {
                    ClientError::Submission(format!("the server answered {} {}", r.code(), r.message()))
                }
                mail_send::Error::Io(e) => ClientError::Unreachable {
                    server: format!("{host}:{port} (submission)"),
                    reason: format!(
                        "{e}; set {}=http to send through the HTTP API, or {} to the submission listener",
                        crate::config::SEND_VIA_ENV,
                        crate::config::SUBMISSION_ENV
                    ),
                },
                mail_send::Error::Tls(e) => match trust_log.take_refusal() {
                    Some(detail) => ClientError::Untrusted { server: format!("{host}:{port} (submission)"), detail },
                    None => ClientError::Submission(format!(
                        "TLS with {host}:{port} failed ({e}); pair again, or set {} to the server's certificate (<data-dir>/tls/cert.pem)",
                        crate::config::CA_FILE_ENV
                    )),
                },
                other => ClientError::Submission(other.to_string()),
            }
        };
        let mut client = builder.connect().await.map_err(describe)?;
        let to: Vec<&str> = recipients.iter().map(String::as_str).collect();
        client.send(Message::new(inbox, to, message.as_slice())).await.map_err(describe)?;
        let _ = client.quit().await;
        Ok(SendReceipt {
            via: "smtp".to_owned(),
            queue_id: None,
            rfc5322_message_id,
            recipients: recipients.len(),
            replayed: false,
        })
    }
}

/// Whether the submission listener at `host:port` answers and completes
/// STARTTLS under `trust` (no AUTH, nothing sent): pairing's check before it
/// chooses SMTP over the HTTP send route. The error says what failed.
pub async fn probe_submission(host: &str, port: u16, trust: &crate::tls::Trust, timeout: Duration) -> Result<(), String> {
    let (config, log) = crate::tls::client_config(trust, &[])?;
    let builder = mail_send::SmtpClientBuilder::new_with_tls_connector(
        host.to_owned(),
        port,
        tokio_rustls::TlsConnector::from(config),
    )
    .implicit_tls(false)
    .helo_host("agentkeys-daemon")
    .timeout(timeout);
    match tokio::time::timeout(timeout, builder.connect()).await {
        Ok(Ok(client)) => {
            let _ = client.quit().await;
            Ok(())
        }
        Ok(Err(e)) => Err(log.take_refusal().unwrap_or_else(|| e.to_string())),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_addresses_are_checked_before_urls() {
        assert!(check_message_id("01HZZZZZZZZZZZZZZZZZZZZZZZ").is_ok());
        for bad in ["", "../../etc", "01HZZZZZZZZZZZZZZZZZZZZZZZ/x", "01hz"] {
            assert!(check_message_id(bad).is_err(), "{bad}");
        }
        assert_eq!(check_inbox(" Bot@Agents.Localhost ").unwrap(), "bot@agents.localhost");
        for bad in ["", "bot", "@x", "a@", "a/b@x", "a@x/y", "a@x?y", "a b@x"] {
            assert!(check_inbox(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_store_urls_are_followed_over_https_or_to_loopback_only() {
        for ok in [
            "https://s3.eu-west-1.amazonaws.com/mail/p/x.eml?X-Amz-Signature=1",
            "https://mail.s3.example.com/x.eml",
            "http://127.0.0.1:9000/mail/x.eml",
            "http://127.8.9.10/x",
            "http://[::1]:9000/mail/x.eml",
            "http://localhost:9000/x",
        ] {
            assert!(object_store_host(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "http://s3.amazonaws.com/mail/x.eml",
            "http://10.0.0.1/x",
            "http://[::2]/x",
            "http://localhost.example.com/x",
            "ftp://127.0.0.1/x",
            "/relative/x.eml",
        ] {
            let err = object_store_host(&bad.parse().unwrap()).unwrap_err();
            assert!(matches!(err, ClientError::ObjectStore { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn a_listed_raw_url_is_read_but_never_written_out() {
        let json = r#"{"message_id":"01HZZZZZZZZZZZZZZZZZZZZZZZ","received_at":5,"size":9,"raw_url":"https://s3.example/x?X-Amz-Signature=s"}"#;
        let entry: MessageEntry = serde_json::from_str(json).unwrap();
        assert_eq!(entry.raw_url.as_deref(), Some("https://s3.example/x?X-Amz-Signature=s"));
        let out = serde_json::to_string(&entry).unwrap();
        assert!(!out.contains("raw_url") && !out.contains("Signature"), "{out}");
        let schema = serde_json::to_value(schemars::schema_for!(MessageEntry)).unwrap();
        assert!(schema["properties"]["message_id"].is_object() && schema["properties"].get("raw_url").is_none(), "{schema}");
        assert!(!format!("{entry:?}").contains("Signature"));
    }

    #[test]
    fn renew_margin_is_well_inside_the_ttl() {
        const { assert!(CAPABILITY_RENEW_MARGIN_SECS > 0 && CAPABILITY_RENEW_MARGIN_SECS * 4 <= CAPABILITY_TTL_SECS) };
        const { assert!(MAX_PAGE == 100) };
    }
}
