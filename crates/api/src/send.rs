//! `POST /v1/inboxes/{address}/send`: the second door of submission.
//!
//! One code path, two doors: the request goes through what an SMTP submission
//! goes through, with the same functions.
//! 1. **AUTH.** The inbox in the path is the username and the bearer agent key the
//!    password: `Credentials::parse` (steps 1–2), `AuthLookup::auth_facts`,
//!    `Credentials::evaluate` (steps 3–9) → a `SendAuthorized` proof. Every
//!    refusal is the same 401 `SEND_NOT_AUTHORIZED`, answered no earlier than
//!    `AUTH_FAILURE_FLOOR` plus jitter after the request arrived (SMTP's `535
//!    5.7.8` timing), the reason logged like SMTP AUTH's; a store failure is 503.
//!    The decision's `submission.auth` record is appended first (503 if it
//!    cannot be), and the proof goes on only paired with that record's receipt
//!    (`AuthRecorded`), which storing and queueing require. Only then is the
//!    body read.
//! 2. **Message.** `application/json` ([`SendRequest`]) is built into MIME with
//!    mail-builder (`From:` = the inbox, `Message-ID: <ulid@domain>`); a
//!    `message/rfc822` body is taken as is, its envelope recipients read from
//!    To/Cc/Bcc and every `Bcc:` field removed, `Message-ID:`/`Date:` added when
//!    missing (RFC 6409 §8). Either is at most the SMTP message size
//!    ([`agentkeys_submission::DEFAULT_MAX_MESSAGE_SIZE`]; 413 beyond), with at
//!    most [`MAX_RECIPIENTS`] listed recipients, repeated ones counted (SMTP
//!    counts every `RCPT`).
//! 3. **Message rules.** `agentkeys_submission::check_message`, what SMTP applies
//!    at the end of DATA: no NUL (422 `MESSAGE_INVALID`; SMTP `550 5.6.0`), then
//!    `From:` exactly the inbox with no other address in its display name, and
//!    `Sender:` absent or the inbox (403 `FROM_NOT_AUTHORIZED`; SMTP `550 5.7.1`).
//!    The envelope sender is the inbox.
//! 4. **Routing.** `lookup_recipient` + `route_recipient` per recipient, as for
//!    `RCPT TO`: hosted inboxes get a local copy, other domains are queued; an
//!    unknown or inactive hosted inbox is a 400 naming the field.
//! 5. **Storing.** `http_submission` builds the same `Delivery` (a `Received:`
//!    line `with HTTP`), and `store_delivery_signed` with the server's DKIM
//!    `OutboundSigner` writes it: one `put_durable`, then the queue rows. 202 only
//!    after that.
//!
//! **Idempotency.** With an `Idempotency-Key` header (1 to
//! [`MAX_IDEMPOTENCY_KEY_LEN`] printable characters), after AUTH and reading the
//! body the key is claimed in the store (SHA-256 of the key, with SHA-256 of
//! the media type and body; per inbox and agent; kept
//! [`agentkeys_store::IDEMPOTENCY_KEY_TTL_SECS`]): the same key and body again
//! answer the first 202 (`Idempotent-Replayed: true`) and send nothing, another
//! body is 409 `IDEMPOTENCY_KEY_REUSED`, a send still running is 409
//! `IDEMPOTENCY_KEY_IN_USE`. A request refused or failed after the claim
//! releases it, unless something was stored. The claim records the id of the
//! message it will store, so a claim left behind by a node that died mid-send
//! is resolved after [`agentkeys_store::STALE_CLAIM_SECS`] (15 min) by what
//! was stored: the message is there (indexed or queued) and the retry gets its
//! answer, queueing its remote recipients if the send died before it did; or
//! it is not and the retry sends it. A send stuck that long can store nothing
//! more (its id is past [`agentkeys_store::ACK_WINDOW_SECS`]: the index
//! committer and the queueing step refuse it), so it is never sent twice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_core::{Address, AuthFailure, Credentials, KeyHasher, SendAuthorized, Subaddressing};
use agentkeys_submission::auth_audit::{self, AuthRecorded, Door, RefusalFacts};
use agentkeys_submission::guardrails::{Accepted, SubmissionStores, accept_submission};
use agentkeys_submission::{
    AUTH_FAILURE_FLOOR, AUTH_FAILURE_JITTER, DEFAULT_MAX_MESSAGE_SIZE, DeliveryError, LocalRecipient, MAX_RECIPIENTS,
    MessageRefusal, OutboundSigner, RecipientQuery, RecipientRoute,
};
use agentkeys_store::{BlobStore, IdempotencyClaim, IdempotencyScope, MetadataStore, SendIdempotency};
use axum::{Extension, Json};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::{AgentBearer, decode, is_json};

/// Largest request body of the send route: the SMTP message size limit. (The
/// API's [`crate::MAX_BODY_BYTES`] does not apply here.)
pub const MAX_SEND_BODY_BYTES: usize = DEFAULT_MAX_MESSAGE_SIZE;

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The request header carrying the client's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The `Idempotency-Key` header, if present: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`]
/// printable ASCII characters (spaces allowed inside), else 400.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<[u8; 32]>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    let refuse = || {
        bad(
            "Idempotency-Key",
            format!("must be one header of 1-{MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters, e.g. a UUID"),
        )
    };
    let key = value.to_str().map_err(|_| refuse())?.trim();
    if values.next().is_some()
        || key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(refuse());
    }
    Ok(Some(Sha256::digest(key.as_bytes()).into()))
}

/// SHA-256 over the media type and the body: what "the same request" means.
fn request_hash(json: bool, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(if json { b"json\n".as_slice() } else { b"rfc822\n".as_slice() });
    h.update(body);
    h.finalize().into()
}

/// What the send route needs besides the metadata store.
pub struct SendService {
    /// Where messages are stored.
    pub blobs: Arc<dyn BlobStore>,
    /// DKIM-signs the queued copy (the same signer as SMTP submission).
    pub signer: Option<Arc<dyn OutboundSigner>>,
    /// Hashes presented agent keys.
    pub hasher: KeyHasher,
    /// This server's host name, for the `Received:` line.
    pub hostname: String,
    /// Largest accepted message (the server's SMTP limit, at most [`MAX_SEND_BODY_BYTES`]).
    pub max_message_size: usize,
    /// Woken when remote recipients were queued, so the delivery runner starts at
    /// once (the same signal SMTP submission gives).
    pub queued: Option<Arc<tokio::sync::Notify>>,
    /// Where `Idempotency-Key`s are kept; without it a request with one is 503.
    pub idempotency: Option<Arc<dyn SendIdempotency>>,
}

impl std::fmt::Debug for SendService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendService").field("hostname", &self.hostname).finish_non_exhaustive()
    }
}

/// Body of `POST /v1/inboxes/{address}/send` as JSON. `From:` is the inbox.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// `To:` recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// `Cc:` recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// Blind recipients: envelope only, never in a header.
    #[serde(default)]
    pub bcc: Vec<String>,
    /// The subject (one line).
    #[serde(default)]
    pub subject: Option<String>,
    /// The plain-text body.
    #[serde(default)]
    pub text: Option<String>,
    /// The HTML body.
    #[serde(default)]
    pub html: Option<String>,
    /// `In-Reply-To:`, a message id like `<abc@example.com>`.
    #[serde(default)]
    pub in_reply_to: Option<String>,
    /// `References:`, message ids oldest first.
    #[serde(default)]
    pub references: Vec<String>,
    /// Attachments.
    #[serde(default)]
    pub attachments: Vec<SendAttachment>,
}

/// One attachment of a [`SendRequest`].
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendAttachment {
    /// The file name shown to the recipient.
    pub filename: String,
    /// Its media type, e.g. `application/pdf`.
    pub content_type: String,
    /// The content, base64 (standard alphabet, padded).
    pub content_base64: String,
}

/// A message accepted for delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SendResponse {
    /// The stored message id (ULID): the blob name of local copies and of the
    /// queued copy (`agentkeys queue show <id>`).
    pub message_id: String,
    /// The `Message-ID:` header of the message, with angle brackets.
    pub rfc5322_message_id: String,
    /// `queued` (stored, remote recipients queued) or `held` (held for the
    /// owner's review: signed and queued only once approved).
    #[serde(default = "queued")]
    pub status: String,
}

fn queued() -> String {
    "queued".to_owned()
}

fn bad(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
    let field = field.into();
    ApiError::InvalidRequest { detail: format!("{field}: {}", detail.into()), field: Some(field) }
}

fn unavailable(what: &str, err: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %err, "HTTP send: {what} failed");
    ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
}

/// Why the AUTH order refused (logged and audited), or a backend failure (503).
enum Refusal {
    Credentials(AuthFailure, RefusalFacts),
    Backend(ApiError),
}

/// The submission AUTH order (DESIGN.md §5), the same steps as SMTP's: the
/// bearer key is the password, the path's address the username.
async fn authorize(
    meta: &dyn MetadataStore,
    service: &SendService,
    address: &str,
    headers: &HeaderMap,
    now: i64,
) -> Result<SendAuthorized, Refusal> {
    // Steps 1–2 fail before any lookup: whether the address is ours is not known.
    let unlooked = |failure| Refusal::Credentials(failure, RefusalFacts { username: address.parse().ok(), ..RefusalFacts::default() });
    let key = AgentBearer::parse(headers).map_err(|_| unlooked(AuthFailure::MalformedKey))?;
    let credentials = Credentials::parse(address, key.key(), &service.hasher).map_err(unlooked)?;
    let facts = meta.auth_facts(&credentials).await.map_err(|e| Refusal::Backend(unavailable("AUTH lookup", &e)))?;
    credentials.evaluate(&facts, now).map_err(|failure| {
        let refusal = RefusalFacts {
            username: Some(credentials.address.clone()),
            hosted: facts.inbox.is_some(),
            agent: facts.key.as_ref().map(|k| k.agent.clone()),
        };
        Refusal::Credentials(failure, refusal)
    })
}

/// Sends a message from an inbox (JSON or raw MIME), through the same checks,
/// DKIM signing and queue as SMTP submission.
#[utoipa::path(
    post,
    path = "/v1/inboxes/{address}/send",
    tag = "mail",
    params(
        ("address" = String, Path, description = "The inbox to send from, e.g. bot@agents.example.com"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the same key (1-255 printable characters, e.g. a UUID) with the same body within 24 h answers the first 202 (header Idempotent-Replayed: true) and sends nothing; with another body 409 IDEMPOTENCY_KEY_REUSED. Per inbox and agent."),
    ),
    request_body(content = SendRequest, description = "JSON (application/json), or the raw message as message/rfc822: envelope recipients from To/Cc/Bcc, Bcc removed"),
    security(("agent_key" = [])),
    responses(
        (status = 202, description = "Stored durably: local copies written, remote recipients queued (DKIM-signed), status queued; or held for the owner's review (status held): signed and queued only once the owner approves", body = SendResponse),
        (status = 400, description = "INVALID_REQUEST naming the field (a recipient, the subject, an attachment, …; more than 50 listed recipients, repeated ones counted)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "SEND_NOT_AUTHORIZED: one answer for every AUTH failure (key, grant, inbox)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "FROM_NOT_AUTHORIZED: the raw message's From: is not exactly the inbox, its display name shows another address, or it has a Sender: other than the inbox (field From or Sender; SMTP 550 5.7.1); or SEND_POLICY: the inbox's send allow or block list refuses a recipient (SMTP 550 5.7.1 at RCPT)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: over the SMTP message size limit", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "IDEMPOTENCY_KEY_REUSED: the Idempotency-Key was used within 24 h with another body; IDEMPOTENCY_KEY_IN_USE: a send with this key is still running. Nothing was sent", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "MESSAGE_INVALID: the message (or the named field) contains a NUL character, which mail cannot carry (SMTP 550 5.6.0); send binary content as an attachment", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: nothing was sent; retry later", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; or SEND_LIMIT: one of the agent's send limits (field: per-hour, per-day, new-recipients-per-day or bounce-rate; SMTP 452 4.7.0) refuses the message, nothing was sent. Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn send(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let arrived = tokio::time::Instant::now();
    let (Some(meta), Some(service)) = (state.meta.clone(), state.send.clone()) else {
        return Err(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" });
    };
    let peer = connect.map(|Extension(ConnectInfo(addr))| addr.ip());
    let verdict = authorize(meta.as_ref(), &service, &address, &headers, state.clock.now()).await;
    // Fail-closed: the decision is recorded before it takes effect, like SMTP AUTH.
    let event = match &verdict {
        Ok(proof) => auth_audit::granted_event(proof, Door::Http, peer),
        Err(Refusal::Credentials(failure, facts)) => auth_audit::refused_event(*failure, facts, Door::Http, peer),
        Err(Refusal::Backend(_)) => return Err(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }),
    };
    let receipt = match meta.audit_append(&event).await {
        Ok(receipt) => receipt,
        Err(e) => return Err(unavailable("recording the AUTH decision", &e)),
    };
    // The proof goes on only with the receipt of its record: everything that
    // stores or queues mail below takes the pair (`AuthRecorded`).
    let proof = match verdict {
        Ok(proof) => {
            state.key_uses.record(state.meta.as_ref(), proof.key_id(), state.clock.now());
            AuthRecorded::new(proof, receipt)
        }
        Err(Refusal::Backend(e)) => return Err(e),
        Err(Refusal::Credentials(failure, facts)) => {
            let audit_seq = receipt.seq();
            match &facts.username {
                Some(inbox) => tracing::warn!(%inbox, reason = %failure, audit_seq, door = "http", "send AUTH failed"),
                None => tracing::warn!(reason = %failure, audit_seq, door = "http", "send AUTH failed"),
            }
            metrics::counter!("agentkeys_http_send_total", "result" => "unauthorized").increment(1);
            let jitter_nanos = u64::try_from(AUTH_FAILURE_JITTER.as_nanos()).unwrap_or(u64::MAX);
            let jitter = Duration::from_nanos(rand::random::<u64>() % jitter_nanos.saturating_add(1));
            tokio::time::sleep_until(arrived + AUTH_FAILURE_FLOOR + jitter).await;
            return Err(ApiError::SendUnauthorized { key_refused: failure.refuses_key() });
        }
    };
    let limit = service.max_message_size.min(MAX_SEND_BODY_BYTES);
    let json = is_json(&headers);
    if !json && !is_rfc822(&headers) {
        return Err(ApiError::UnsupportedSendMediaType);
    }
    let key = idempotency_key(&headers)?;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::MessageTooLarge { limit })?;
    // The message's id, chosen before the idempotency claim records it.
    let id = ulid::Ulid::new();
    let Some(key_hash) = key else {
        let response = deliver(&state, meta.as_ref(), &service, proof, json, &bytes, limit, id).await?;
        return Ok((StatusCode::ACCEPTED, Json(response)).into_response());
    };
    let Some(keys) = service.idempotency.clone() else {
        return Err(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" });
    };
    let (inbox, agent) = (proof.proof().inbox().clone(), proof.proof().agent().clone());
    let scope = IdempotencyScope { inbox: &inbox, agent: &agent, key_hash: &key_hash };
    match keys.claim(scope, &request_hash(json, &bytes), id, state.clock.now()).await {
        Err(e) => return Err(unavailable("claiming the idempotency key", &e)),
        Ok(IdempotencyClaim::Mismatch) => return Err(ApiError::IdempotencyKeyReused),
        Ok(IdempotencyClaim::InProgress) => return Err(ApiError::IdempotencyKeyInUse),
        Ok(IdempotencyClaim::Replay(first)) => return replayed(first),
        Ok(IdempotencyClaim::Stored { message, queued }) => {
            // The first send died after storing `message` and before recording
            // its answer: it completes (its remote recipients queued if they
            // were not), and the answer is rebuilt from the same request.
            let first = complete(&state, meta.as_ref(), &service, proof, json, &bytes, message, queued).await?;
            if let Err(e) = keys.finish(scope, message, &first).await {
                tracing::error!(error = %e, "HTTP send: recording the idempotency key's answer failed");
            }
            return replayed(first);
        }
        Ok(IdempotencyClaim::Claimed) => {}
    }
    // Run to the end even if the client goes away, so the claim is always
    // finished or released (only a crash leaves it "in use").
    let task = tokio::spawn(async move {
        let scope = IdempotencyScope { inbox: &inbox, agent: &agent, key_hash: &key_hash };
        match deliver(&state, meta.as_ref(), &service, proof, json, &bytes, limit, id).await {
            Ok(response) => {
                match serde_json::to_string(&response) {
                    // Stored already: a failure to record the answer leaves the
                    // key "in use" (never sent twice); this request succeeded.
                    Ok(text) => {
                        if let Err(e) = keys.finish(scope, id, &text).await {
                            tracing::error!(error = %e, "HTTP send: recording the idempotency key's answer failed");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "HTTP send: encoding the idempotent answer failed"),
                }
                Ok(response)
            }
            Err(refused) => {
                // Kept if anything was stored: the retry completes it instead.
                if let Err(e) = keys.release(scope, id).await {
                    tracing::error!(error = %e, "HTTP send: releasing the idempotency key failed");
                }
                Err(refused)
            }
        }
    });
    let response = task.await.map_err(|e| unavailable("the send task", &e))??;
    Ok((StatusCode::ACCEPTED, Json(response)).into_response())
}

/// The first answer again (`Idempotent-Replayed: true`).
fn replayed(first: String) -> Result<Response, ApiError> {
    metrics::counter!("agentkeys_http_send_total", "result" => "replayed").increment(1);
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotent-replayed", "true")
        .body(Body::from(first))
        .map_err(|e| unavailable("answering a replay", &e))
}

/// Completes message `id`, stored by a send that died before recording its
/// answer, and returns that answer: the request is built again as message
/// `id`; if it has remote recipients and they were not `queued`, they are
/// queued from the stored queue copy. Recipients are routed as they are now.
#[allow(clippy::too_many_arguments)]
async fn complete(
    state: &ApiState,
    meta: &dyn MetadataStore,
    service: &SendService,
    proof: AuthRecorded,
    json: bool,
    bytes: &[u8],
    id: ulid::Ulid,
    queued: bool,
) -> Result<String, ApiError> {
    let now = state.clock.now();
    let built = build(json, bytes, proof.proof().inbox(), id, now)?;
    if !queued {
        let (local, remote) = route(meta, &state.subaddressing, &built.recipients).await?;
        let delivery =
            agentkeys_submission::http_submission(proof, &built.message, local, remote, id, now, &service.hostname);
        agentkeys_submission::queue_stored(service.blobs.as_ref(), meta, &delivery)
            .await
            .map_err(|e: DeliveryError| unavailable("queueing the stored message", &e))?;
        if let Some(outbound) = &delivery.outbound {
            let remote = outbound.recipients.len();
            tracing::warn!(%id, remote, door = "http", "a retry queued the remote recipients of a message stored by a send that died");
            if let Some(notify) = &service.queued {
                notify.notify_one();
            }
        }
    }
    serde_json::to_string(&SendResponse { message_id: id.to_string(), rfc5322_message_id: built.message_id, status: "queued".to_owned() })
        .map_err(|e| unavailable("encoding the idempotent answer", &e))
}

/// The message of a request (JSON or `message/rfc822`), as message `id`.
fn build(json: bool, bytes: &[u8], inbox: &Address, id: ulid::Ulid, now: i64) -> Result<Built, ApiError> {
    if json {
        build_json(&decode::<SendRequest>(bytes)?, inbox, id, now)
    } else {
        take_raw(bytes, inbox, id, now)
    }
}

/// Builds, checks, routes and stores message `id`: steps 2-5 of the module docs.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    state: &ApiState,
    meta: &dyn MetadataStore,
    service: &SendService,
    recorded: AuthRecorded,
    json: bool,
    bytes: &[u8],
    limit: usize,
    id: ulid::Ulid,
) -> Result<SendResponse, ApiError> {
    let now = state.clock.now();
    let proof = recorded.proof();
    let built = build(json, bytes, proof.inbox(), id, now)?;
    if built.message.len() > limit {
        return Err(ApiError::MessageTooLarge { limit });
    }
    check_replacement(&built.message, proof.inbox())?;
    // The inbox's send lists, before anything is routed or stored (SMTP: at RCPT).
    for (_, address) in &built.recipients {
        match agentkeys_submission::guard::send_policy(meta, proof.inbox(), address).await {
            Ok(Ok(())) => {}
            Ok(Err(refusal)) => {
                tracing::info!(inbox = %proof.inbox(), list = refusal.list().as_str(), door = "http", "recipient refused by the send policy");
                metrics::counter!("agentkeys_policy_refusals_total", "door" => "http", "list" => refusal.list().as_str())
                    .increment(1);
                return Err(ApiError::SendPolicy { list: refusal.list().as_str(), recipient: address.clone() });
            }
            Err(e) => return Err(unavailable("reading the inbox policy", &e)),
        }
    }
    let (local, remote) = route(meta, &state.subaddressing, &built.recipients).await?;
    let auth_seq = recorded.receipt().seq();
    let delivery =
        agentkeys_submission::http_submission(recorded, &built.message, local, remote, id, now, &service.hostname);
    // The agent's limits and review (issue 13 §3), then the one durable write.
    let stores = SubmissionStores { blobs: service.blobs.as_ref(), outbox: meta, guardrails: meta, audit: meta };
    let accepted = accept_submission(stores, service.signer.as_deref(), &delivery, now).await.map_err(|e| match e {
        DeliveryError::SendLimit(refusal) => ApiError::SendLimit { refusal },
        e => unavailable("storing the message", &e),
    })?;
    if accepted == Accepted::Held {
        metrics::counter!("agentkeys_http_send_total", "result" => "held").increment(1);
        return Ok(SendResponse {
            message_id: id.to_string(),
            rfc5322_message_id: built.message_id,
            status: "held".to_owned(),
        });
    }
    if let (Some(queued), Some(_)) = (&service.queued, &delivery.outbound) {
        queued.notify_one();
    }
    tracing::info!(
        id = %delivery.id,
        size = delivery.message.len(),
        local = delivery.local.len(),
        remote = delivery.outbound.as_ref().map_or(0, |o| o.recipients.len()),
        auth_seq,
        door = "http",
        "message accepted"
    );
    metrics::counter!("agentkeys_http_send_total", "result" => "accepted").increment(1);
    Ok(SendResponse { message_id: id.to_string(), rfc5322_message_id: built.message_id, status: queued() })
}

/// The sending doors' message rules (`check_message`) as API errors: for a
/// sent message, and for the owner's replacement of a held one.
pub(crate) fn check_replacement(message: &[u8], inbox: &Address) -> Result<(), ApiError> {
    agentkeys_submission::check_message(message, inbox).map_err(|refusal| {
        tracing::warn!(%inbox, %refusal, door = "http", "message refused");
        match refusal {
            MessageRefusal::Nul => ApiError::MessageContainsNul { field: "message".to_owned() },
            MessageRefusal::From => ApiError::FromNotAuthorized,
            MessageRefusal::Sender => ApiError::SenderNotAuthorized,
        }
    })
}

fn is_rfc822(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("message/rfc822"))
}

/// A message ready for the pinning check and routing.
#[derive(Debug)]
struct Built {
    message: Vec<u8>,
    /// `(field, address)` for every envelope recipient, in order, duplicates removed.
    recipients: Vec<(String, String)>,
    message_id: String,
}

/// An address a recipient may be: `local@domain`, printable, no spaces or
/// brackets, at most 254 bytes (RFC 5321 §4.5.3.1.3).
fn check_recipient(field: &str, address: &str) -> Result<(), ApiError> {
    let ok = address.len() <= 254
        && address.bytes().all(|b| b.is_ascii_graphic() && !b"<>()[]\\,;:\"".contains(&b))
        && address.rsplit_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.starts_with('.'));
    if ok { Ok(()) } else { Err(bad(field, format!("{address:?} is not an email address like name@example.com"))) }
}

fn add_recipients(out: &mut Vec<(String, String)>, field: &str, addresses: &[String]) -> Result<(), ApiError> {
    for (i, address) in addresses.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let address = address.trim();
        check_recipient(&field, address)?;
        if !out.iter().any(|(_, a)| a.eq_ignore_ascii_case(address)) {
            out.push((field, address.to_owned()));
        }
    }
    Ok(())
}

/// At least one recipient, and at most [`MAX_RECIPIENTS`] listed: `listed`
/// counts every address given, repeated ones too (as SMTP counts every `RCPT`).
fn check_recipient_count(recipients: &[(String, String)], listed: usize, field: &str) -> Result<(), ApiError> {
    if recipients.is_empty() {
        return Err(bad(field, "at least one recipient is needed (to, cc or bcc)"));
    }
    if listed > MAX_RECIPIENTS {
        return Err(bad(field, format!("at most {MAX_RECIPIENTS} recipients per message (repeated ones count)")));
    }
    Ok(())
}

/// The NUL rule on a JSON text field (the built message is checked as a whole
/// later; this names the field).
fn no_nul(field: &str, value: &str) -> Result<(), ApiError> {
    if agentkeys_submission::contains_nul(value.as_bytes()) {
        Err(ApiError::MessageContainsNul { field: field.to_owned() })
    } else {
        Ok(())
    }
}

fn one_line(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains(['\r', '\n']) { Err(bad(field, "must be one line")) } else { Ok(()) }
}

/// A message id without its angle brackets: `left@right`, no spaces.
fn msg_id<'a>(field: &str, value: &'a str) -> Result<&'a str, ApiError> {
    let id = value.trim().trim_start_matches('<').trim_end_matches('>');
    let ok = id.contains('@') && id.bytes().all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
    if ok { Ok(id) } else { Err(bad(field, format!("{value:?} is not a message id like <abc@example.com>"))) }
}

/// The JSON form, built into MIME with mail-builder.
fn build_json(request: &SendRequest, inbox: &Address, id: ulid::Ulid, now: i64) -> Result<Built, ApiError> {
    use mail_builder::MessageBuilder;
    use mail_builder::headers::address::Address as MbAddress;
    let mut recipients = Vec::new();
    add_recipients(&mut recipients, "to", &request.to)?;
    add_recipients(&mut recipients, "cc", &request.cc)?;
    add_recipients(&mut recipients, "bcc", &request.bcc)?;
    check_recipient_count(&recipients, request.to.len() + request.cc.len() + request.bcc.len(), "to")?;
    for (field, value) in [("subject", &request.subject), ("text", &request.text), ("html", &request.html)] {
        if let Some(value) = value {
            no_nul(field, value)?;
        }
    }
    for (i, a) in request.attachments.iter().enumerate() {
        no_nul(&format!("attachments[{i}].filename"), &a.filename)?;
    }
    let message_id = format!("{id}@{}", inbox.domain()).to_ascii_lowercase();
    let mut builder = MessageBuilder::new()
        .from(inbox.as_str())
        .message_id(message_id.as_str())
        .date(now);
    if !request.to.is_empty() {
        builder = builder.to(MbAddress::new_list(request.to.iter().map(|a| MbAddress::from(a.trim())).collect()));
    }
    if !request.cc.is_empty() {
        builder = builder.cc(MbAddress::new_list(request.cc.iter().map(|a| MbAddress::from(a.trim())).collect()));
    }
    if let Some(subject) = &request.subject {
        one_line("subject", subject)?;
        builder = builder.subject(subject.as_str());
    }
    if let Some(in_reply_to) = &request.in_reply_to {
        builder = builder.in_reply_to(msg_id("in_reply_to", in_reply_to)?);
    }
    if !request.references.is_empty() {
        let ids = request
            .references
            .iter()
            .enumerate()
            .map(|(i, r)| msg_id(&format!("references[{i}]"), r))
            .collect::<Result<Vec<&str>, _>>()?;
        builder = builder.references(ids);
    }
    match (&request.text, &request.html) {
        (None, None) => builder = builder.text_body(""),
        (text, html) => {
            if let Some(text) = text {
                builder = builder.text_body(text.as_str());
            }
            if let Some(html) = html {
                builder = builder.html_body(html.as_str());
            }
        }
    }
    for (i, a) in request.attachments.iter().enumerate() {
        let field = |name: &str| format!("attachments[{i}].{name}");
        one_line(&field("filename"), &a.filename)?;
        if a.filename.is_empty() || a.filename.contains('"') {
            return Err(bad(field("filename"), "a non-empty name without double quotes"));
        }
        let media = a.content_type.as_str();
        let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
        if !media.split_once('/').is_some_and(|(t, s)| token(t) && token(s)) {
            return Err(bad(field("content_type"), format!("{media:?} is not a media type like application/pdf")));
        }
        let content = base64::engine::general_purpose::STANDARD
            .decode(a.content_base64.as_bytes())
            .map_err(|e| bad(field("content_base64"), format!("not base64: {e}")))?;
        builder = builder.attachment(media.to_owned(), a.filename.clone(), content);
    }
    let message = builder.write_to_vec().map_err(|e| {
        tracing::error!(error = %e, "building MIME failed");
        ApiError::Internal
    })?;
    Ok(Built { message, recipients, message_id: format!("<{message_id}>") })
}

/// The raw form: recipients from To/Cc/Bcc, the `Bcc:` fields that parse
/// found removed, `Message-ID:` and `Date:` added when missing.
fn take_raw(bytes: &[u8], inbox: &Address, id: ulid::Ulid, now: i64) -> Result<Built, ApiError> {
    use mail_parser::{HeaderName, MessageParser};
    let parser = MessageParser::new()
        .header_address(HeaderName::To)
        .header_address(HeaderName::Cc)
        .header_address(HeaderName::Bcc)
        .header_id(HeaderName::MessageId)
        .default_header_ignore();
    let parsed = parser
        .parse_headers(bytes)
        .ok_or_else(|| bad("message", "not an RFC 5322 message (no header section)"))?;
    let mut recipients = Vec::new();
    let mut listed = 0;
    for (field, list) in [("To", parsed.to()), ("Cc", parsed.cc()), ("Bcc", parsed.bcc())] {
        let addresses: Vec<String> =
            list.map(|l| l.iter().filter_map(|a| a.address()).map(str::to_owned).collect()).unwrap_or_default();
        listed += addresses.len();
        add_recipients(&mut recipients, field, &addresses)?;
    }
    check_recipient_count(&recipients, listed, "To")?;
    let existing_id = parsed.message_id().map(str::to_owned);
    let has_date = parsed.headers().iter().any(|h| h.name == HeaderName::Date);
    // Every Bcc field the recipients were read from, whole (name to line end).
    let mut message = Vec::with_capacity(bytes.len());
    let mut pos = 0;
    for bcc in parsed.headers().iter().filter(|h| h.name == HeaderName::Bcc) {
        let (start, end) = (bcc.offset_field as usize, bcc.offset_end as usize);
        message.extend_from_slice(bytes.get(pos..start).unwrap_or_default());
        pos = end.max(pos);
    }
    message.extend_from_slice(bytes.get(pos..).unwrap_or_default());
    let mut added = String::new();
    let message_id = match existing_id {
        Some(existing) => format!("<{existing}>"),
        None => {
            let generated = format!("<{id}@{}>", inbox.domain()).to_ascii_lowercase();
            added.push_str(&format!("Message-ID: {generated}\r\n"));
            generated
        }
    };
    if !has_date {
        added.push_str(&format!("Date: {}\r\n", agentkeys_core::time::rfc5322(now)));
    }
    if !added.is_empty() {
        message.splice(0..0, added.bytes());
    }
    Ok(Built { message, recipients, message_id })
}

/// Routes every recipient with the SMTP submission's rule.
/// Two addresses of one inbox (`bot+a@d`, `bot+b@d`) make one copy, as in SMTP.
pub(crate) async fn route(
    meta: &dyn MetadataStore,
    subaddressing: &Subaddressing,
    recipients: &[(String, String)],
) -> Result<(Vec<LocalRecipient>, Vec<String>), ApiError> {
    let (mut local, mut remote) = (Vec::<LocalRecipient>::new(), Vec::new());
    for (field, address) in recipients {
        let query =
            RecipientQuery::parse_with(address, subaddressing).ok_or_else(|| bad(field, "not an email address"))?;
        if query.inbox.as_ref().is_some_and(|inbox| local.iter().any(|r| &r.inbox == inbox)) {
            continue;
        }
        let answer = agentkeys_submission::lookup_recipient(meta, &query)
            .await
            .map_err(|e| unavailable("recipient lookup", &e))?;
        match agentkeys_submission::route_recipient(query, answer) {
            RecipientRoute::Local(r) => local.push(r),
            RecipientRoute::Remote(a) => remote.push(a),
            RecipientRoute::Unknown => return Err(bad(field, format!("no such inbox here: {address} (5.1.1)"))),
            RecipientRoute::Inactive => return Err(bad(field, format!("inbox disabled: {address} (5.2.1)"))),
        }
    }
    Ok((local, remote))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn inbox() -> Address {
        "bot@agents.test".parse().unwrap()
    }

    #[test]
    fn json_builds_mime_with_pinned_from_and_no_bcc_header() {
        let request = SendRequest {
            to: vec!["a@example.com".into()],
            cc: vec!["c@agents.test".into(), "A@example.com".into()],
            bcc: vec!["hidden@example.com".into()],
            subject: Some("Re: hi".into()),
            text: Some("hello".into()),
            in_reply_to: Some("<x@y>".into()),
            references: vec!["<w@y>".into(), "x@y".into()],
            attachments: vec![SendAttachment {
                filename: "a.txt".into(),
                content_type: "text/plain".into(),
                content_base64: "aGk=".into(),
            }],
            ..SendRequest::default()
        };
        let built = build_json(&request, &inbox(), ulid::Ulid::nil(), 0).unwrap();
        let text = String::from_utf8(built.message.clone()).unwrap();
        assert_eq!(agentkeys_submission::check_message(&built.message, &inbox()), Ok(()), "{text}");
        assert!(!text.to_ascii_lowercase().contains("hidden@"), "{text}");
        assert!(text.contains("In-Reply-To: <x@y>"), "{text}");
        assert!(text.contains("References: <w@y> <x@y>"), "{text}");
        assert!(text.contains("filename=\"a.txt\""), "{text}");
        let addrs: Vec<&str> = built.recipients.iter().map(|(_, a)| a.as_str()).collect();
        assert_eq!(addrs, ["a@example.com", "c@agents.test", "hidden@example.com"], "deduplicated");
        assert_eq!(built.message_id, "<00000000000000000000000000@agents.test>");
    }

    #[test]
    fn json_input_errors_name_the_field() {
        let field = |r: SendRequest| match build_json(&r, &inbox(), ulid::Ulid::nil(), 0) {
            Err(ApiError::InvalidRequest { field, .. }) => field.unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(field(SendRequest::default()), "to");
        let to = || vec!["a@example.com".to_owned()];
        assert_eq!(field(SendRequest { to: vec!["a@example.com".into(), "not an address".into()], ..Default::default() }), "to[1]");
        assert_eq!(field(SendRequest { to: to(), subject: Some("a\r\nBcc: x@y".into()), ..Default::default() }), "subject");
        assert_eq!(field(SendRequest { to: to(), in_reply_to: Some("nope".into()), ..Default::default() }), "in_reply_to");
        let att = |ct: &str, b64: &str| SendAttachment { filename: "f".into(), content_type: ct.into(), content_base64: b64.into() };
        assert_eq!(field(SendRequest { to: to(), attachments: vec![att("text/plain", "!!")], ..Default::default() }), "attachments[0].content_base64");
        assert_eq!(field(SendRequest { to: to(), attachments: vec![att("text", "aGk=")], ..Default::default() }), "attachments[0].content_type");
        let many = (0..=MAX_RECIPIENTS).map(|i| format!("r{i}@example.com")).collect();
        assert_eq!(field(SendRequest { to: many, ..Default::default() }), "to");
    }

    #[test]
    fn repeated_recipients_count_toward_the_limit() {
        let listed = |n: usize| SendRequest { to: vec!["a@example.com".to_owned(); n], ..SendRequest::default() };
        assert!(build_json(&listed(MAX_RECIPIENTS), &inbox(), ulid::Ulid::nil(), 0).is_ok());
        assert!(matches!(
            build_json(&listed(MAX_RECIPIENTS + 1), &inbox(), ulid::Ulid::nil(), 0),
            Err(ApiError::InvalidRequest { field: Some(f), .. }) if f == "to"
        ));
        let to = vec!["a@example.com"; MAX_RECIPIENTS + 1].join(", ");
        let raw = format!("From: bot@agents.test\r\nTo: {to}\r\n\r\nhi\r\n");
        assert!(matches!(
            take_raw(raw.as_bytes(), &inbox(), ulid::Ulid::nil(), 0),
            Err(ApiError::InvalidRequest { field: Some(f), .. }) if f == "To"
        ));
    }

    #[test]
    fn a_nul_in_a_json_text_field_is_refused_naming_the_field() {
        let to = || vec!["a@example.com".to_owned()];
        let field = |r: SendRequest| match build_json(&r, &inbox(), ulid::Ulid::nil(), 0) {
            Err(ApiError::MessageContainsNul { field }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(SendRequest { to: to(), text: Some("a\r\n\0.\r\n".into()), ..Default::default() }), "text");
        assert_eq!(field(SendRequest { to: to(), html: Some("<p>\0</p>".into()), ..Default::default() }), "html");
        assert_eq!(field(SendRequest { to: to(), subject: Some("\0".into()), ..Default::default() }), "subject");
        let att = SendAttachment { filename: "a\0".into(), content_type: "text/plain".into(), content_base64: "AA==".into() };
        assert_eq!(field(SendRequest { to: to(), attachments: vec![att], ..Default::default() }), "attachments[0].filename");
        // NUL bytes inside an attachment are content: base64 on the wire.
        let att = SendAttachment { filename: "z.bin".into(), content_type: "application/octet-stream".into(), content_base64: "AAAA".into() };
        let built = build_json(&SendRequest { to: to(), attachments: vec![att], ..Default::default() }, &inbox(), ulid::Ulid::nil(), 0).unwrap();
        assert_eq!(agentkeys_submission::check_message(&built.message, &inbox()), Ok(()));
    }

    #[test]
    fn raw_takes_recipients_from_headers_and_drops_bcc() {
        let raw = b"From: bot@agents.test\r\nTo: A <a@example.com>, b@agents.test\r\nBcc: secret@example.com,\r\n\tother@example.com\r\nSubject: s\r\n\r\nbody Bcc: x\r\n";
        let built = take_raw(raw, &inbox(), ulid::Ulid::nil(), 0).unwrap();
        let text = String::from_utf8(built.message).unwrap();
        assert!(!text.contains("secret@") && !text.contains("other@"), "{text}");
        assert!(text.contains("body Bcc: x"), "the body is untouched: {text}");
        assert!(text.starts_with("Message-ID: <00000000000000000000000000@agents.test>\r\nDate: "), "{text}");
        let addrs: Vec<&str> = built.recipients.iter().map(|(_, a)| a.as_str()).collect();
        assert_eq!(addrs, ["a@example.com", "b@agents.test", "secret@example.com", "other@example.com"]);
        let raw = b"From: bot@agents.test\r\nMessage-ID: <keep@x>\r\nDate: Thu, 1 Jan 1970 00:00:00 +0000\r\nTo: a@example.com\r\n\r\n";
        let built = take_raw(raw, &inbox(), ulid::Ulid::nil(), 0).unwrap();
        assert_eq!(built.message_id, "<keep@x>");
        assert_eq!(built.message, raw.to_vec(), "nothing added");
        assert!(matches!(
            take_raw(b"From: bot@agents.test\r\nSubject: none\r\n\r\n", &inbox(), ulid::Ulid::nil(), 0),
            Err(ApiError::InvalidRequest { field: Some(f), .. }) if f == "To"
        ));
    }
}
