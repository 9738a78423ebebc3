//! The read path (DESIGN.md §5 Read): list an inbox, fetch a raw message, and
//! follow new mail as Server-Sent Events, all under a read capability
//! (`Authorization: Bearer akcap1.…` from `POST /v1/credentials/read`).
//!
//! Every request verifies the capability with the broker's authority
//! ([`TokenAuthority::verify_capability`](agentkeys_broker::TokenAuthority::verify_capability):
//! MAC in constant time, then expiry), then requires the path's inbox to be the
//! capability's own. The owner and inbox that reach the index and the blob store
//! come from the verified capability, never from the request, so no path can
//! name another owner's prefix. A capability for another inbox, an inbox that
//! does not exist, another owner's, a message id that is unknown or malformed:
//! one 404 body ([`ApiError::MailNotFound`]). A missing, malformed, tampered or
//! expired capability: one 401 body ([`ApiError::InvalidCapability`]).
//!
//! **Listing** reads one page from the [message index](agentkeys_store::MessageIndex)
//! (a range scan: cost follows the page size, not the inbox size). **Bytes**:
//! with blobs in files the server reads and sends them; with blobs in an object
//! store it is a broker, not a proxy ([`crate::presign`]): listing entries carry
//! a presigned `raw_url` and the raw-message route answers `307` to one, each
//! for a key built from the capability and expiring no later than it. **Events**:
//! the handler subscribes to the inbox first, then replays from the index what
//! came after `Last-Event-ID`, then follows the subscription; rows carry their
//! commit `seq` and events arrive in `seq` order, so anything at or below the
//! highest `seq` already sent is a duplicate and skipped: no gap, no duplicate.
//! A subscriber that falls behind the hub's buffer catches up from the index the
//! same way. The stream ends when the capability expires or the server stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_broker::ReadCapability;
use agentkeys_core::policy::InboxPolicy;
use agentkeys_core::{Address, OwnerId};
use agentkeys_store::{
    BlobKey, BlobStore as _, IndexedMessage, ListOrder, Mailroom, MessageIndex, Missed, PageQuery, StoreError,
    Subscription,
};
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};

/// Page size when the request names none.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;
/// Largest page a request may ask for; more is a 400.
pub const MAX_PAGE_LIMIT: u32 = 100;
/// Most event streams open at once on one inbox (this server); more is a 429.
pub const MAX_STREAMS_PER_INBOX: usize = 8;
/// Longest silence on an event stream before a comment line keeps it alive.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Rows read from the index per replay query.
pub const REPLAY_PAGE: u32 = 100;
/// The SSE event name of a new message.
pub const MESSAGE_RECEIVED: &str = "message.received";

/// The read capability from `Authorization: Bearer akcap1.…`. `Debug` hides it.
pub struct CapabilityBearer(String);

impl CapabilityBearer {
    /// Parses an `Authorization` header value.
    pub fn parse(headers: &HeaderMap) -> Result<Self, &'static str> {
        crate::extract::bearer_token(headers, "akcap1.", "bearer token is not a read capability").map(Self)
    }
}

impl fmt::Debug for CapabilityBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CapabilityBearer(<redacted>)")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CapabilityBearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Self::parse(&parts.headers).map_err(|reason| {
            tracing::info!(reason, "read capability refused");
            ApiError::InvalidCapability
        })
    }
}

/// Verifies the capability now and checks that it covers `address`.
pub(crate) fn authorize(state: &ApiState, bearer: &CapabilityBearer, address: &str) -> Result<ReadCapability, ApiError> {
    let capability = state.broker.authority().verify_capability(&bearer.0, state.clock.now()).map_err(|e| {
        tracing::info!(reason = %e, "read capability refused");
        ApiError::InvalidCapability
    })?;
    let address: Address = address.parse().map_err(|_| ApiError::MailNotFound)?;
    if &address != capability.inbox() {
        return Err(ApiError::MailNotFound);
    }
    Ok(capability)
}

/// One page of rows read for the agent under a read capability: what the
/// inbox's allow/block policy shows, the ids of the messages it withholds,
/// and the next page's cursor. Built by [`AgentRead::page`].
pub(crate) struct AgentPage<T> {
    /// The rows the policy shows, in the order read.
    pub(crate) shown: Vec<T>,
    /// The ids of the messages of the rows it withholds (an id says only when).
    pub(crate) withheld_ids: Vec<String>,
    /// The cursor of the last row, when more rows follow.
    pub(crate) next_cursor: Option<String>,
}

/// What every listing of a read capability (messages, threads, one thread,
/// search) shares around its own index read: the mail backend and the inbox's
/// policy as the agent sees it, then [`AgentRead::page`]. Built from the
/// verified capability only, so it cannot serve a request that was not
/// authorized; owner and inbox come from it, never from the request.
pub(crate) struct AgentRead<'a> {
    capability: &'a ReadCapability,
    index: &'a dyn MessageIndex,
    policy: InboxPolicy,
}

impl<'a> AgentRead<'a> {
    /// The index and the inbox's policy for `capability`.
    pub(crate) async fn new(state: &'a ApiState, capability: &'a ReadCapability) -> Result<Self, ApiError> {
        let index = mailroom(state)?.index().as_ref();
        let policy = agent_view(state, capability.inbox()).await?;
        Ok(Self { capability, index, policy })
    }

    /// The index to read (with [`Self::owner`] and [`Self::inbox`]).
    pub(crate) fn index(&self) -> &'a dyn MessageIndex {
        self.index
    }

    /// The capability's owner.
    pub(crate) fn owner(&self) -> &'a OwnerId {
        self.capability.owner()
    }

    /// The capability's inbox.
    pub(crate) fn inbox(&self) -> &'a Address {
        self.capability.inbox()
    }

    /// How many rows to ask the index for a page of `page`: one more, which
    /// tells whether a next page exists.
    pub(crate) fn ask(page: u32) -> u32 {
        page.saturating_add(1)
    }

    /// The page of what the index answered: at most `page` rows (`None`: one
    /// bounded answer, no next page), the next cursor when more followed, and
    /// the split into shown and withheld by the policy, judged on each row's
    /// message (`message_of`).
    pub(crate) fn page<T>(
        &self,
        read: Result<Vec<T>, StoreError>,
        page: Option<u32>,
        message_of: impl Fn(&T) -> &IndexedMessage,
        cursor_of: impl Fn(&T) -> String,
    ) -> Result<AgentPage<T>, ApiError> {
        let mut rows = read.map_err(|e| backend_error(&e))?;
        let next_cursor = match page {
            Some(n) if rows.len() > n as usize => {
                rows.truncate(n as usize);
                rows.last().map(&cursor_of)
            }
            _ => None,
        };
        let (shown, withheld): (Vec<T>, Vec<T>) = rows.into_iter().partition(|r| shown(&self.policy, message_of(r)));
        let withheld_ids = withheld.iter().map(|r| message_of(r).id.to_string()).collect();
        Ok(AgentPage { shown, withheld_ids, next_cursor })
    }
}

/// A JSON answer no cache keeps (every read of a capability).
pub(crate) fn no_store(body: impl Serialize) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn mailroom(state: &ApiState) -> Result<&Arc<Mailroom>, ApiError> {
    state.mail.as_ref().ok_or(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" })
}

fn backend_error(err: &dyn fmt::Display) -> ApiError {
    tracing::error!(error = %err, "read path backend failed");
    ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
}

/// One message in a listing or an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageSummary {
    /// The message id (a ULID: sorts by arrival).
    pub message_id: String,
    /// Arrival time, seconds since the Unix epoch.
    pub received_at: i64,
    /// Size of the stored message in bytes.
    pub size: u64,
    /// In listings on servers whose blobs are in an object store (S3) only: a
    /// presigned URL that GETs this message's raw bytes straight from the
    /// store, with no other credential. It expires no later than the read
    /// capability the listing was made with, sooner if the store caps
    /// presigned URLs (30 min); after that the raw-message route hands out a
    /// fresh one. Absent when blobs are in files, and in events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uri")]
    pub raw_url: Option<String>,
    /// The message's `From:` **header** field (RFC 5322), its first mailbox:
    /// the field `authenticated` is about, never the SMTP envelope sender.
    /// Decoded (RFC 2047), control and bidi characters removed, the name cut
    /// to 100 and the address limited to 254 characters. `null` when the
    /// header has no usable address, and for messages indexed before
    /// summaries existed. Anyone can write any `From:`: trust it only when
    /// `authenticated` is true.
    #[serde(default)]
    pub header_from: Option<HeaderFromView>,
    /// The decoded `Subject:`, cleaned like `header_from` and cut to 200
    /// characters (`…` marks a cut); `null` when absent.
    #[serde(default)]
    pub subject: Option<String>,
    /// Our MX's verdict on `header_from` when the message arrived: DMARC
    /// passed, or a DKIM signature aligned with its domain passed. False for
    /// unauthenticated mail and mail that did not come through our MX.
    #[serde(default)]
    pub authenticated: bool,
}

/// The `From:` header's first mailbox (not the envelope sender).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeaderFromView {
    /// The address, as written in the header.
    pub address: String,
    /// The decoded display name, if any. Free text chosen by the sender.
    #[serde(default)]
    pub name: Option<String>,
}

impl From<&IndexedMessage> for MessageSummary {
    fn from(m: &IndexedMessage) -> Self {
        Self {
            message_id: m.id.to_string(),
            received_at: m.received_at,
            size: m.size,
            raw_url: None,
            header_from: m
                .summary
                .header_from
                .as_ref()
                .map(|f| HeaderFromView { address: f.address.clone(), name: f.name.clone() }),
            subject: m.summary.subject.clone(),
            authenticated: m.summary.authenticated,
        }
    }
}

/// A page of an inbox's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessagePage {
    /// The messages, in the requested order.
    pub messages: Vec<MessageSummary>,
    /// Where the next page starts, `null` on the last page: pass it as `before`
    /// (order `desc`) or `after` (order `asc`).
    pub next_cursor: Option<String>,
    /// The server's clock when the page was read, in Unix milliseconds: the clock
    /// that stamps message ids, so a client can place a look-back window ("the
    /// last 2 minutes") on it without trusting its own clock.
    pub server_time_ms: i64,
    /// The ids of the messages in this page's range that the inbox's
    /// allow/block policy withholds from the agent: not listed, never described
    /// (an id says only when). A page may so hold fewer than `limit` messages
    /// while `next_cursor` still leads on.
    #[serde(default)]
    pub withheld_ids: Vec<String>,
}

/// Now on the clock that stamps message ids (the MX's ULIDs), in Unix milliseconds.
fn server_time_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn bad_query(field: &str, detail: String) -> ApiError {
    ApiError::InvalidRequest { field: Some(field.to_owned()), detail }
}

fn parse_cursor(field: &str, value: &str) -> Result<Ulid, ApiError> {
    Ulid::from_string(value).map_err(|_| bad_query(field, format!("{field}: {value:?} is not a message id (a ULID)")))
}

/// Parses `order`, `after`, `before`, `limit`; anything else, a repeated or a
/// bad value is a 400 naming the parameter.
pub fn parse_page_query(query: Option<&str>) -> Result<PageQuery, ApiError> {
    let mut page = PageQuery { after: None, before: None, order: ListOrder::NewestFirst, limit: DEFAULT_PAGE_LIMIT };
    let mut seen: Vec<&str> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if seen.contains(&name) {
            return Err(bad_query(name, format!("{name} is given more than once")));
        }
        seen.push(name);
        match name {
            "order" => {
                page.order = match value {
                    "desc" => ListOrder::NewestFirst,
                    "asc" => ListOrder::OldestFirst,
                    _ => return Err(bad_query("order", format!("order: expected desc or asc, got {value:?}"))),
                }
            }
            "after" => page.after = Some(parse_cursor("after", value)?),
            "before" => page.before = Some(parse_cursor("before", value)?),
            "limit" => {
                page.limit = match value.parse::<u32>() {
                    Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(bad_query(
                            "limit",
                            format!("limit: expected a whole number from 1 to {MAX_PAGE_LIMIT}, got {value:?}"),
                        ));
                    }
                }
            }
            other => {
                return Err(bad_query(
                    other,
                    format!("unknown query parameter {other:?}; use order, after, before, limit"),
                ));
            }
        }
    }
    Ok(page)
}

/// Lists an inbox's messages, newest first by default.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{address}/messages",
    tag = "messages",
    security(("read_capability" = [])),
    params(
        ("address" = String, Path, description = "The inbox the capability reads"),
        ("order" = Option<String>, Query, description = "`desc` (default, newest first) or `asc`"),
        ("after" = Option<String>, Query, description = "Only messages with a greater id (a ULID)"),
        ("before" = Option<String>, Query, description = "Only messages with a smaller id (a ULID)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (default 50)"),
    ),
    responses(
        (status = 200, description = "One page", body = MessagePage),
        (status = 400, description = "INVALID_REQUEST: a bad order, cursor or limit, or an unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_CAPABILITY: missing, malformed, tampered or expired", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: not the capability's inbox (one answer for every reason)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    RawQuery(query): RawQuery,
    bearer: Result<CapabilityBearer, ApiError>,
) -> Result<Response, ApiError> {
    let capability = authorize(&state, &bearer?, &address)?;
    let page = parse_page_query(query.as_deref())?;
    let server_time_ms = server_time_ms();
    let read = AgentRead::new(&state, &capability).await?;
    let rows = read.index().list_messages(read.owner(), read.inbox(), &PageQuery { limit: AgentRead::ask(page.limit), ..page }).await;
    let rows = read.page(rows, Some(page.limit), |m: &IndexedMessage| m, |m| m.id.to_string())?;
    let now = state.clock.now();
    let messages = rows
        .shown
        .iter()
        .map(|m| MessageSummary {
            raw_url: state.presigned.as_ref().and_then(|p| p.message_url(&capability, m.id, now)).map(String::from),
            ..MessageSummary::from(m)
        })
        .collect();
    Ok(no_store(MessagePage { messages, next_cursor: rows.next_cursor, server_time_ms, withheld_ids: rows.withheld_ids }))
}

/// Fetches one message as stored: our `Received:` (and `Authentication-Results:`)
/// headers, then the bytes as received. When blobs are in an object store, the
/// bytes do not pass through this server: the answer is `307` to a presigned
/// URL of the message that expires no later than the capability.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{address}/messages/{message_id}",
    tag = "messages",
    security(("read_capability" = [])),
    params(
        ("address" = String, Path, description = "The inbox the capability reads"),
        ("message_id" = String, Path, description = "The message id (a ULID)"),
    ),
    responses(
        (status = 200, description = "The raw message (blobs in files)", content_type = "message/rfc822", body = String),
        (status = 307, description = "Blobs in an object store (S3): GET the raw message from `Location`, a presigned URL of the store that needs no other credential and expires no later than the capability (at most 30 min)", headers(("Location" = String, description = "The presigned URL"))),
        (status = 401, description = "INVALID_CAPABILITY: missing, malformed, tampered or expired", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "MESSAGE_WITHHELD: the inbox's allow/block policy withholds this message from the agent (its owner reads it)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: not the capability's inbox, or no such message (one answer)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn fetch(
    State(state): State<ApiState>,
    Path((address, message_id)): Path<(String, String)>,
    bearer: Result<CapabilityBearer, ApiError>,
) -> Result<Response, ApiError> {
    let capability = authorize(&state, &bearer?, &address)?;
    let id = Ulid::from_string(&message_id).map_err(|_| ApiError::MailNotFound)?;
    let key = BlobKey::message(capability.owner(), capability.inbox(), id);
    if !capability.allows(key.as_str()) {
        return Err(ApiError::MailNotFound);
    }
    let mail = mailroom(&state)?;
    let policy = agent_view(&state, capability.inbox()).await?;
    // The index row: whether the message is there (for a presigned answer) and
    // what the policy judges it by. Not needed for a file read under an open policy.
    let indexed = if state.presigned.is_some() || !policy.is_open() {
        let row = mail.index().indexed_message(capability.owner(), capability.inbox(), id).await;
        let row = row.map_err(|e| backend_error(&e))?.ok_or(ApiError::MailNotFound)?;
        if !shown(&policy, &row) {
            return Err(ApiError::MessageWithheld);
        }
        Some(row)
    } else {
        None
    };
    if let Some(presigned) = &state.presigned {
        // Broker, not proxy: the index says whether it is there, the store serves it.
        let url = presigned.message_url(&capability, id, state.clock.now()).filter(|_| indexed.is_some());
        let url = url.ok_or(ApiError::MailNotFound)?;
        let location = HeaderValue::from_str(url.as_str()).map_err(|e| backend_error(&e))?;
        let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::LOCATION, location);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    let bytes = mail.get(&key).await.map_err(|e| backend_error(&e))?.ok_or(ApiError::MailNotFound)?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("message/rfc822"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Follows an inbox: one `message.received` event per message made durable in
/// it, `id` = the message id. With `Last-Event-ID`, first every message stored
/// after that one. Comment lines keep the connection alive; the stream ends when
/// the capability expires.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{address}/events",
    tag = "messages",
    security(("read_capability" = [])),
    params(
        ("address" = String, Path, description = "The inbox the capability reads"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last message id received: resume after it"),
    ),
    responses(
        (status = 200, description = "text/event-stream of `message.received` events; each event's data is one MessageSummary as JSON: {message_id, received_at, size, header_from: {address, name} (the From: header, not the envelope), subject, authenticated}", content_type = "text/event-stream", body = String),
        (status = 400, description = "INVALID_REQUEST: Last-Event-ID is not a message id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_CAPABILITY: missing, malformed, tampered or expired", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: not the capability's inbox (one answer for every reason)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "TOO_MANY_STREAMS: the inbox has the most open streams allowed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn events(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    headers: HeaderMap,
    bearer: Result<CapabilityBearer, ApiError>,
) -> Result<Response, ApiError> {
    let capability = authorize(&state, &bearer?, &address)?;
    let last = match headers.get("last-event-id") {
        None => None,
        Some(v) => {
            let text = v.to_str().unwrap_or("").trim();
            Some(Ulid::from_string(text).map_err(|_| {
                bad_query("Last-Event-ID", format!("Last-Event-ID: {text:?} is not a message id (a ULID)"))
            })?)
        }
    };
    let mail = mailroom(&state)?;
    let owner = capability.owner().clone();
    let inbox = capability.inbox().clone();
    // Subscribe before reading the index, so nothing falls between the two.
    let subscription = mail
        .events()
        .subscribe(&owner, &inbox, MAX_STREAMS_PER_INBOX)
        .map_err(|_| ApiError::TooManyStreams { max: MAX_STREAMS_PER_INBOX })?;
    let index = Arc::clone(mail.index());
    let (high, catch_up) = match last {
        None => (0, None),
        Some(id) => match index.indexed_message(&owner, &inbox, id).await.map_err(|e| backend_error(&e))? {
            Some(row) => (row.seq, Some((row.seq, None))),
            // Not indexed (expired, or never ours): everything with a greater id.
            None => (0, Some((0, Some(id)))),
        },
    };
    let remaining = capability.expires_at().saturating_sub(state.clock.now()).max(0);
    let feed = Feed {
        subscription,
        index,
        meta: state.meta.clone(),
        owner,
        inbox,
        pending: VecDeque::new(),
        high,
        catch_up,
        deadline: tokio::time::Instant::now() + Duration::from_secs(remaining.unsigned_abs()),
        shutdown: state.shutdown.clone(),
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        feed.next().await.map(|event| (Ok::<_, Infallible>(event), feed))
    });
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE_INTERVAL).text("keep-alive"));
    let mut response = sse.into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// One event stream's state: replay from the index, then the live subscription.
struct Feed {
    subscription: Subscription,
    index: Arc<dyn MessageIndex>,
    /// Where the inbox's policy is read, once per event (a change applies at once).
    meta: Option<Arc<dyn agentkeys_store::MetadataStore>>,
    owner: OwnerId,
    inbox: Address,
    /// Replayed rows not sent yet.
    pending: VecDeque<IndexedMessage>,
    /// Highest `seq` sent or replayed through: anything at or below is a duplicate.
    high: i64,
    /// A replay to run: rows after this `seq` (and, if set, this id).
    catch_up: Option<(i64, Option<Ulid>)>,
    /// When the capability expires.
    deadline: tokio::time::Instant,
    shutdown: CancellationToken,
}

fn message_event(m: &IndexedMessage) -> Event {
    let data = serde_json::to_string(&MessageSummary::from(m)).unwrap_or_default();
    Event::default().event(MESSAGE_RECEIVED).id(m.id.to_string()).data(data)
}

impl Feed {
    /// The next event, or `None` when the stream ends (expiry, shutdown, a
    /// backend failure: the client reconnects with `Last-Event-ID`).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.shutdown.is_cancelled() || tokio::time::Instant::now() >= self.deadline {
                return None;
            }
            if let Some(m) = self.pending.pop_front() {
                if m.seq <= self.high {
                    continue;
                }
                self.high = m.seq;
                match self.shows(&m).await {
                    Some(true) => return Some(message_event(&m)),
                    Some(false) => continue,
                    None => return None,
                }
            }
            if let Some((after_seq, after_id)) = self.catch_up {
                let rows = match self.index.messages_since(&self.owner, &self.inbox, after_seq, after_id, REPLAY_PAGE).await
                {
                    Ok(rows) => rows,
                    Err(err) => {
                        replay_failed(&err);
                        return None;
                    }
                };
                self.catch_up = match rows.last() {
                    Some(last) if rows.len() == REPLAY_PAGE as usize => Some((last.seq, after_id)),
                    _ => None,
                };
                self.pending.extend(rows);
                continue;
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep_until(self.deadline) => return None,
                received = self.subscription.recv() => match received {
                    Ok(m) if m.seq <= self.high => continue,
                    Ok(m) => {
                        self.high = m.seq;
                        match self.shows(&m).await {
                            Some(true) => return Some(message_event(&m)),
                            Some(false) => continue,
                            None => return None,
                        }
                    }
                    Err(Missed::Lagged(n)) => {
                        tracing::info!(dropped = n, "event subscriber lagged; catching up from the index");
                        self.catch_up = Some((self.high, None));
                    }
                    Err(Missed::Closed) => return None,
                },
            }
        }
    }
}

impl Feed {
    /// Whether the inbox's policy, as it is now, shows `m` to the agent; `None`
    /// when the policy could not be read (the stream ends; the client
    /// reconnects with `Last-Event-ID` and misses nothing).
    async fn shows(&self, m: &IndexedMessage) -> Option<bool> {
        let Some(meta) = &self.meta else { return Some(true) };
        match meta.inbox_policy(&self.inbox).await {
            Ok(policy) => Some(shown(&policy, m)),
            Err(err) => {
                tracing::error!(error = %err, "reading the inbox policy for an event failed; ending the stream");
                None
            }
        }
    }
}

/// The inbox's allow/block policy as the read routes apply it to the agent
/// (open without a metadata store).
async fn agent_view(state: &ApiState, inbox: &Address) -> Result<InboxPolicy, ApiError> {
    match &state.meta {
        Some(meta) => meta.inbox_policy(inbox).await.map_err(|e| backend_error(&e)),
        None => Ok(InboxPolicy::default()),
    }
}

/// Whether `policy` shows the agent this message, judged on the header summary
/// the index took at acceptance ([`InboxPolicy::shows`]: the rule the agent's
/// tools apply too). The server enforces it so that a capability cannot read
/// past the tools: listing skips and counts it, fetching answers `403
/// MESSAGE_WITHHELD`, events skip it.
fn shown(policy: &InboxPolicy, m: &IndexedMessage) -> bool {
    policy.is_open() || policy.shows(m.summary.header_from.as_ref().map(|f| f.address.as_str()), m.summary.authenticated)
}

fn replay_failed(err: &StoreError) {
    tracing::error!(error = %err, "event replay from the index failed; ending the stream");
}
