//! The owner's webhook subscriptions (issue 13 §1). Signed like every owner
//! route ([`OwnerApproval`]); another owner's subscription or delivery answers
//! 404 exactly like a missing one. Changes are audited in the same transaction.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/webhooks` | subscribe a URL to event types, optionally of one inbox; answers the secret once |
//! | GET | `/v1/webhooks` | the owner's subscriptions (never their secrets) |
//! | DELETE | `/v1/webhooks/{id}` | delete one, with its deliveries |
//! | POST | `/v1/webhooks/{id}/rotate` | a new secret; the previous one keeps signing for the overlap |
//! | GET | `/v1/webhooks/{id}/deliveries` | its delivery log, newest first |
//! | POST | `/v1/webhook-deliveries/{id}/redeliver` | send a delivery again (same `webhook-id`) |
//! | POST, GET | `/v1/agent/webhooks` | an agent subscribes one inbox its grants cover / lists its own (agent key) |
//! | DELETE | `/v1/agent/webhooks/{id}` | an agent deletes one of its own (agent key) |
//!
//! An agent's subscription is scoped by its grants: one inbox, the `message.*`
//! events only, `message.received` under a grant with `read` on that inbox and
//! the outbound events under one with `send`. The grants are recorded with it
//! and its events are recorded only while they are active (revoke the grant and
//! it falls silent). The owner sees, deletes and rotates it like their own.
//! `include_body` puts the message's text into `message.received`; an agent can
//! only ask for it on a subscription that has the `read` grant, which every
//! agent subscription to `message.received` has.
//!
//! The target URL is checked at creation ([`agentkeys_webhooks::target`]:
//! `https://` or `http://`, its host's addresses public unless the operator
//! allows private ones) and again at every connect by the worker.

use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::time::rfc3339;
use agentkeys_core::{Address, OwnerId, UnixTime};
use agentkeys_broker::scope;
use agentkeys_store::{AgentSubscriber, DeliveryRecord, StoreError, WebhookRecord};
use agentkeys_webhooks::events::{EVENT_TYPES, is_inbox_event};
use agentkeys_webhooks::{
    DEFAULT_ROTATION_OVERLAP_SECS, MAX_ROTATION_OVERLAP_SECS, MAX_WEBHOOKS_PER_OWNER, OP_WEBHOOK_CREATE,
    OP_WEBHOOK_DELETE, OP_WEBHOOK_ROTATE, Target, TargetError, WebhookSecret, WebhookSettings,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::{AgentBearer, ApiJson, decode, is_json};
use crate::owner::{OwnerApproval, backend_error, field_error, store};

/// Default and largest page of a delivery log.
pub const DELIVERY_PAGE_DEFAULT: u32 = 100;
/// Largest `limit` of a delivery log.
pub const DELIVERY_PAGE_MAX: u32 = 1000;

fn settings(state: &ApiState) -> Result<&WebhookSettings, ApiError> {
    state.webhooks.as_ref().ok_or_else(|| {
        tracing::error!("webhook route called on an API without webhook settings");
        ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
    })
}

fn not_found() -> ApiError {
    ApiError::OwnerObjectNotFound { what: "webhook" }
}

/// Body of `POST /v1/webhooks`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where to POST events: `https://…` (or `http://…`); its host must resolve
    /// to public addresses unless the operator allows private ones.
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event types, at least one.
    #[schema(value_type = Vec<EventType>, min_items = 1)]
    pub events: Vec<String>,
    /// Only events of this inbox (one of yours); absent: every inbox, and the
    /// owner-wide events (`grant.expiring`, `key.expiring`).
    #[serde(default)]
    pub inbox: Option<String>,
    /// `message.received` carries the message's text (`data.text`, at most
    /// 64 KiB, `data.text_truncated`); default false: sender, subject, size only.
    #[serde(default)]
    pub include_body: bool,
}

/// An event type (documentation of `events`; any other value is a 400 naming the field).
#[derive(Debug, Clone, Copy, ToSchema)]
pub enum EventType {
    /// A message arrived in an inbox.
    #[schema(rename = "message.received")]
    MessageReceived,
    /// An inbox queued a message for remote recipients.
    #[schema(rename = "message.sent")]
    MessageSent,
    /// A remote server accepted it for one recipient.
    #[schema(rename = "message.delivered")]
    MessageDelivered,
    /// A temporary failure; retried.
    #[schema(rename = "message.deferred")]
    MessageDeferred,
    /// A permanent failure.
    #[schema(rename = "message.bounced")]
    MessageBounced,
    /// A grant expires within the notice period.
    #[schema(rename = "grant.expiring")]
    GrantExpiring,
    /// An agent key expires within the notice period.
    #[schema(rename = "key.expiring")]
    KeyExpiring,
    /// One of an agent's send limits refused a send (once per agent, limit and hour).
    #[schema(rename = "send.limited")]
    SendLimited,
    /// A message was held for the owner's review.
    #[schema(rename = "message.held")]
    MessageHeld,
}

/// A subscription as its owner sees it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// `wh_…`.
    pub id: String,
    /// The target.
    pub url: String,
    /// Its event types.
    pub events: Vec<String>,
    /// The inbox filter, if any.
    pub inbox: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: until when the previous secret also signs (after a rotation).
    pub previous_secret_until: Option<String>,
    /// Whether `message.received` carries the message's text.
    pub include_body: bool,
    /// The agent that made it (under its grants); absent: the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// Answer of `POST /v1/webhooks` and of a rotation: the secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookCreated {
    /// `wh_…`.
    pub id: String,
    /// `whsec_<base64>`: verify `webhook-signature` with it (Standard Webhooks).
    /// Shown once; it cannot be read again, only rotated.
    pub secret: String,
    /// The subscription.
    pub webhook: WebhookView,
}

fn view(w: &WebhookRecord, now: UnixTime) -> WebhookView {
    WebhookView {
        id: w.id.clone(),
        url: w.url.clone(),
        events: w.events.clone(),
        inbox: w.inbox.as_ref().map(ToString::to_string),
        created_at: rfc3339(w.created_at),
        previous_secret_until: w.previous_until.filter(|&t| t > now).map(rfc3339),
        include_body: w.include_body,
        agent: w.agent.as_ref().map(|a| a.agent.to_string()),
    }
}

/// Checks `url` against the form rules and, resolved, the target policy.
async fn check_url(url: &str, settings: &WebhookSettings) -> Result<Target, ApiError> {
    let target = Target::parse(url).map_err(|e| field_error("url", e.to_string().trim_start_matches("url: ")))?;
    target.resolve(settings.policy).await.map_err(|e| match e {
        TargetError::Url(d) => field_error("url", d),
        other => field_error("url", other.to_string().trim_start_matches("url: ")),
    })?;
    Ok(target)
}

fn check_events(events: &[String], inbox: bool) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(field_error("events", format!("give at least one of {}", EVENT_TYPES.join(", "))));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(field_error("events", format!("{e:?} is not an event type; use {}", EVENT_TYPES.join(", "))));
        }
        if inbox && !is_inbox_event(e) {
            return Err(field_error(
                "events",
                format!("{e} concerns the owner, not one inbox: subscribe to it without `inbox`"),
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// Subscribe a URL to events (owner approval required).
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    request_body = CreateWebhookRequest,
    security(("owner_signature" = [])),
    responses(
        (status = 201, description = "Created; the secret is shown this once", body = WebhookCreated),
        (status = 400, description = "INVALID_REQUEST: a bad url (scheme, form, or an address refused by the SSRF rules), unknown event type, or the owner's subscription limit", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`inbox` is not one of the owner's inboxes", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send the body as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create(State(state): State<ApiState>, approval: OwnerApproval) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let settings = settings(&state)?;
    if !approval.json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body: CreateWebhookRequest = decode(&approval.body)?;
    let owner = approval.owner().clone();
    let inbox: Option<Address> =
        body.inbox.as_deref().map(|i| i.parse::<Address>().map_err(|e| field_error("inbox", e))).transpose()?;
    let events = check_events(&body.events, inbox.is_some())?;
    let target = check_url(&body.url, settings).await?;
    if let Some(inbox) = &inbox {
        // Another owner's inbox answers exactly like a missing one.
        let mine = meta.list_inboxes(Some(&owner)).await.map_err(|e| backend_error(&e))?;
        if !mine.iter().any(|i| &i.address == inbox) {
            return Err(ApiError::OwnerObjectNotFound { what: "inbox" });
        }
    }
    let created = store_new(&state, NewSubscription {
        owner: owner.clone(),
        target,
        events,
        inbox,
        agent: None,
        include_body: body.include_body,
        actor: Actor::Owner(owner.clone()),
        approval: Some(approval.evidence()),
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// A subscription about to be stored, checked already.
struct NewSubscription {
    owner: agentkeys_core::OwnerId,
    target: Target,
    events: Vec<String>,
    inbox: Option<Address>,
    agent: Option<AgentSubscriber>,
    include_body: bool,
    actor: Actor,
    approval: Option<serde_json::Value>,
}

/// Stores `new` (within the owner's limit) with a fresh secret, audited; the answer shows the secret once.
async fn store_new(state: &ApiState, new: NewSubscription) -> Result<WebhookCreated, ApiError> {
    let meta = store(state)?;
    let settings = settings(state)?;
    let NewSubscription { owner, target, events, inbox, agent, include_body, actor, approval } = new;
    let existing = meta.list_webhooks(&owner).await.map_err(|e| backend_error(&e))?;
    if existing.len() >= MAX_WEBHOOKS_PER_OWNER {
        return Err(field_error(
            "url",
            format!("you have {MAX_WEBHOOKS_PER_OWNER} subscriptions, the most allowed; delete one first"),
        ));
    }
    let now = state.clock.now();
    let id = format!("wh_{}", ulid::Ulid::new());
    let secret = WebhookSecret::generate();
    let sealed = settings.sealer.seal(&id, &secret).map_err(|e| {
        tracing::error!(error = %e, "cannot seal a webhook secret");
        ApiError::Internal
    })?;
    let record = WebhookRecord {
        id: id.clone(),
        owner: owner.clone(),
        url: target.url.clone(),
        events,
        inbox,
        secret_sealed: sealed,
        previous_secret_sealed: None,
        previous_until: None,
        created_at: now,
        agent,
        include_body,
    };
    // The URL's path and query may carry a receiver's token: the record keeps the host only.
    let event = AuditEvent::ok(actor, OP_WEBHOOK_CREATE, id.as_str()).with_detail(json!({
        "owner": owner,
        "host": target.host,
        "events": record.events,
        "inbox": record.inbox,
        "include_body": include_body,
        "grants": record.agent.as_ref().map(|a| json!({
            "read": a.read_grant.as_ref().map(agentkeys_core::GrantId::as_str),
            "send": a.send_grant.as_ref().map(agentkeys_core::GrantId::as_str),
        })),
        "approval": approval,
    }));
    let _receipt = meta.create_webhook(&record, &event).await.map_err(|e| backend_error(&e))?;
    Ok(WebhookCreated { id: id.clone(), secret: secret.to_text().to_string(), webhook: view(&record, now) })
}


/// List the owner's subscriptions (owner approval required).
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "The owner's subscriptions, oldest first (never their secrets)", body = [WebhookView]),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(State(state): State<ApiState>, approval: OwnerApproval) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let now = state.clock.now();
    let hooks = meta.list_webhooks(approval.owner()).await.map_err(|e| backend_error(&e))?;
    Ok(Json(hooks.iter().map(|w| view(w, now)).collect::<Vec<_>>()).into_response())
}

/// Answer of a deletion.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookDeleted {
    /// The subscription.
    pub id: String,
    /// Always `true`.
    pub deleted: bool,
}

/// Delete one of the owner's subscriptions with its delivery log (owner approval required).
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The subscription id (wh_…)")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Deleted; pending deliveries are dropped", body = WebhookDeleted),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let owner = approval.owner().clone();
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), OP_WEBHOOK_DELETE, id.as_str())
        .with_detail(json!({ "owner": owner, "approval": approval.evidence() }));
    meta.delete_webhook(&owner, &id, &event).await.map_err(|e| match e {
        StoreError::NotFound { .. } => not_found(),
        other => backend_error(&other),
    })?;
    Ok(Json(WebhookDeleted { id, deleted: true }).into_response())
}

/// Body of `POST /v1/webhooks/{id}/rotate`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateWebhookRequest {
    /// Seconds the previous secret keeps signing beside the new one (default
    /// one day, at most seven; 0 ends it now).
    #[serde(default, deserialize_with = "crate::extract::optional_integer")]
    #[schema(minimum = 0, maximum = 604_800)]
    pub overlap: Option<i64>,
}

/// Rotate a subscription's secret (owner approval required): the answer has
/// the new secret; deliveries carry a signature with each secret until the overlap ends.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate",
    tag = "webhooks",
    params(("id" = String, Path, description = "The subscription id (wh_…)")),
    request_body = RotateWebhookRequest,
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Rotated; the new secret is shown this once", body = WebhookCreated),
        (status = 400, description = "INVALID_REQUEST: overlap out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send the body as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn rotate(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let overlap = rotation_overlap(approval.json, &approval.body)?;
    let owner = approval.owner().clone();
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), OP_WEBHOOK_ROTATE, id.as_str())
        .with_detail(json!({ "owner": owner, "overlap": overlap, "approval": approval.evidence() }));
    rotate_secret(&state, &owner, id, overlap, &event).await
}

/// The overlap a rotation asks for: an empty body is the default, anything
/// else must be a JSON [`RotateWebhookRequest`] within range.
fn rotation_overlap(json: bool, body: &[u8]) -> Result<i64, ApiError> {
    let body: RotateWebhookRequest = if body.is_empty() {
        RotateWebhookRequest::default()
    } else if !json {
        return Err(ApiError::UnsupportedMediaType);
    } else {
        decode(body)?
    };
    let overlap = body.overlap.unwrap_or(DEFAULT_ROTATION_OVERLAP_SECS);
    if !(0..=MAX_ROTATION_OVERLAP_SECS).contains(&overlap) {
        return Err(field_error("overlap", format!("{overlap} s is not between 0 and {MAX_ROTATION_OVERLAP_SECS} s (7 days)")));
    }
    Ok(overlap)
}

/// Seals a new secret for `owner`'s subscription `id`, keeps the previous one
/// signing for `overlap` s, records `event`; answers the new secret, once.
async fn rotate_secret(state: &ApiState, owner: &OwnerId, id: String, overlap: i64, event: &AuditEvent) -> Result<Response, ApiError> {
    let meta = store(state)?;
    let settings = settings(state)?;
    let now = state.clock.now();
    let secret = WebhookSecret::generate();
    let sealed = settings.sealer.seal(&id, &secret).map_err(|e| {
        tracing::error!(error = %e, "cannot seal a webhook secret");
        ApiError::Internal
    })?;
    meta.rotate_webhook_secret(owner, &id, &sealed, now + overlap, event).await.map_err(|e| match e {
        StoreError::NotFound { .. } => not_found(),
        other => backend_error(&other),
    })?;
    let hooks = meta.list_webhooks(owner).await.map_err(|e| backend_error(&e))?;
    let record = hooks.into_iter().find(|w| w.id == id).ok_or_else(not_found)?;
    let answer = WebhookCreated { id, secret: secret.to_text().to_string(), webhook: view(&record, now) };
    Ok(Json(answer).into_response())
}

/// One delivery in the log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// `msg_…`: the `webhook-id` header of every attempt.
    pub id: String,
    /// The subscription.
    pub webhook: String,
    /// The event type.
    pub event: String,
    /// `pending`, `sending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// RFC 3339: when the event was recorded.
    pub created_at: String,
    /// RFC 3339: the next attempt, while pending.
    pub next_attempt_at: Option<String>,
    /// RFC 3339: when the last attempt ended.
    pub last_attempt_at: Option<String>,
    /// The receiver's last HTTP status.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

fn delivery_view(d: &DeliveryRecord) -> DeliveryView {
    DeliveryView {
        id: d.id.clone(),
        webhook: d.subscription_id.clone(),
        event: d.event_type.clone(),
        state: d.state.as_str().to_owned(),
        attempts: d.attempts,
        created_at: rfc3339(d.created_at),
        next_attempt_at: (d.state == agentkeys_store::DeliveryState::Pending).then(|| rfc3339(d.next_attempt_ms / 1000)),
        last_attempt_at: d.last_attempt_at.map(rfc3339),
        last_status: d.last_status,
        last_error: d.last_error.clone(),
    }
}

/// Query of a delivery log.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Most deliveries (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

impl DeliveryQuery {
    /// Parses `limit=N`; anything else is a 400 naming it.
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut limit = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("limit", v)) => {
                    limit = Some(v.parse::<u32>().map_err(|_| field_error("limit", format!("{v:?} is not a number")))?);
                }
                _ => return Err(field_error(pair, "unknown query parameter; only limit is known")),
            }
        }
        Ok(Self { limit })
    }
}

/// The delivery log of one of the owner's subscriptions, newest first (owner approval required).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "The subscription id (wh_…)"), DeliveryQuery),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Deliveries, newest first", body = [DeliveryView]),
        (status = 400, description = "INVALID_REQUEST: limit out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn deliveries(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    uri: Uri,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    delivery_log(&state, approval.owner(), &id, &uri).await
}

/// The delivery log of `owner`'s subscription `id` (`?limit=`), newest first.
async fn delivery_log(state: &ApiState, owner: &OwnerId, id: &str, uri: &Uri) -> Result<Response, ApiError> {
    let meta = store(state)?;
    let limit = DeliveryQuery::parse(uri.query().unwrap_or(""))?.limit.unwrap_or(DELIVERY_PAGE_DEFAULT);
    if !(1..=DELIVERY_PAGE_MAX).contains(&limit) {
        return Err(field_error("limit", format!("{limit} is not between 1 and {DELIVERY_PAGE_MAX}")));
    }
    let rows = meta.list_webhook_deliveries(owner, id, limit).await.map_err(|e| match e {
        StoreError::NotFound { .. } => not_found(),
        other => backend_error(&other),
    })?;
    Ok(Json(rows.iter().map(delivery_view).collect::<Vec<_>>()).into_response())
}

/// Send a delivery again, with the same `webhook-id` (owner approval required).
#[utoipa::path(
    post,
    path = "/v1/webhook-deliveries/{id}/redeliver",
    tag = "webhooks",
    params(("id" = String, Path, description = "The delivery id (msg_…)")),
    security(("owner_signature" = [])),
    responses(
        (status = 202, description = "Due now; the worker sends it", body = DeliveryView),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "CONFLICT: an attempt is running right now; retry after it", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn redeliver(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    redeliver_one(&state, approval.owner(), None, &id).await
}

/// Makes `owner`'s delivery `id` (of `subscription`, when given) due now.
async fn redeliver_one(state: &ApiState, owner: &OwnerId, subscription: Option<&str>, id: &str) -> Result<Response, ApiError> {
    let meta = store(state)?;
    let record = meta.redeliver_webhook(owner, subscription, id, state.clock.now() * 1000).await.map_err(|e| match e {
        StoreError::NotFound { .. } => ApiError::OwnerObjectNotFound { what: "delivery" },
        StoreError::Conflict { .. } => ApiError::Conflict,
        other => backend_error(&other),
    })?;
    Ok((StatusCode::ACCEPTED, Json(delivery_view(&record))).into_response())
}

/// Body of `POST /v1/agent/webhooks`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentWebhookRequest {
    /// Where to POST events (the same rules as the owner's subscriptions).
    #[schema(max_length = 2048)]
    pub url: String,
    /// `message.*` event types, at least one: `message.received` needs a grant
    /// with `read` on the inbox, the others one with `send`.
    #[schema(value_type = Vec<EventType>, min_items = 1)]
    pub events: Vec<String>,
    /// The inbox: one that this agent's grants cover.
    pub inbox: String,
    /// `message.received` carries the message's text (the `read` grant allows it).
    #[serde(default)]
    pub include_body: bool,
}

fn agent_unavailable(e: &StoreError) -> ApiError {
    tracing::error!(error = %e, "agent webhook route failed in the store");
    ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
}

/// Subscribe a URL to one inbox's events, under this agent's grants (agent key).
#[utoipa::path(
    post,
    path = "/v1/agent/webhooks",
    tag = "webhooks",
    request_body = CreateAgentWebhookRequest,
    security(("agent_key" = [])),
    responses(
        (status = 201, description = "Created; the secret is shown this once", body = WebhookCreated),
        (status = 400, description = "INVALID_REQUEST: a bad url (scheme, form, or an address refused by the SSRF rules), an event type that is not message.*, or the owner's subscription limit", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "NO_GRANT: no active grant of this agent covers the inbox with read (message.received) or send (the outbound events); GRANT_EXPIRED: the covering ones have expired", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: nothing was created", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn agent_create(
    State(state): State<ApiState>,
    bearer: AgentBearer,
    body: Result<ApiJson<CreateAgentWebhookRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    let ApiJson(request) = body?;
    let settings = settings(&state)?;
    let inbox: Address = request.inbox.parse().map_err(|e| field_error("inbox", e))?;
    let events = check_events(&request.events, true)?;
    let target = check_url(&request.url, settings).await?;
    // Each kind of event is proven by its own scope on this inbox; the proofs'
    // grants are stored, and the subscription lives only while they do.
    let read_grant = if events.iter().any(|e| e == agentkeys_webhooks::events::MESSAGE_RECEIVED) {
        Some(state.broker.authorize(&verified, &inbox, scope::Read).await?.grant_id().clone())
    } else {
        None
    };
    let send_grant = if events.iter().any(|e| e != agentkeys_webhooks::events::MESSAGE_RECEIVED) {
        Some(state.broker.authorize(&verified, &inbox, scope::Send).await?.grant_id().clone())
    } else {
        None
    };
    if request.include_body && read_grant.is_none() {
        return Err(field_error("include_body", "only message.received carries a body; add it to events or leave include_body out"));
    }
    let created = store_new(&state, NewSubscription {
        owner: verified.owner().clone(),
        target,
        events,
        inbox: Some(inbox),
        agent: Some(AgentSubscriber { agent: verified.agent().clone(), read_grant, send_grant }),
        include_body: request.include_body,
        actor: Actor::Agent(verified.agent().clone()),
        approval: None,
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// This agent's own subscriptions, oldest first (agent key).
#[utoipa::path(
    get,
    path = "/v1/agent/webhooks",
    tag = "webhooks",
    security(("agent_key" = [])),
    responses(
        (status = 200, description = "The subscriptions this agent made (never their secrets)", body = [WebhookView]),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn agent_list(State(state): State<ApiState>, bearer: AgentBearer) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    let meta = store(&state)?;
    let now = state.clock.now();
    let hooks = meta.list_webhooks(verified.owner()).await.map_err(|e| agent_unavailable(&e))?;
    let mine: Vec<WebhookView> =
        hooks.iter().filter(|w| w.agent.as_ref().is_some_and(|a| &a.agent == verified.agent())).map(|w| view(w, now)).collect();
    Ok(Json(mine).into_response())
}

/// Delete one of this agent's own subscriptions (agent key); the owner's and
/// other agents' answer 404 like missing ones.
#[utoipa::path(
    delete,
    path = "/v1/agent/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The subscription id (wh_…)")),
    security(("agent_key" = [])),
    responses(
        (status = 200, description = "Deleted; pending deliveries are dropped", body = WebhookDeleted),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription among this agent's", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: nothing was changed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn agent_delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    bearer: AgentBearer,
) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    let meta = store(&state)?;
    agents_own(&state, &verified, &id).await?;
    let event = AuditEvent::ok(Actor::Agent(verified.agent().clone()), OP_WEBHOOK_DELETE, id.as_str())
        .with_detail(json!({ "owner": verified.owner() }));
    meta.delete_webhook(verified.owner(), &id, &event).await.map_err(|e| match e {
        StoreError::NotFound { .. } => not_found(),
        other => agent_unavailable(&other),
    })?;
    Ok(Json(WebhookDeleted { id, deleted: true }).into_response())
}

/// Checks that `id` is a subscription `verified`'s agent made; the owner's and
/// other agents' answer 404 like missing ones. The agent that made a
/// subscription never changes, so the change that follows acts by owner and id.
async fn agents_own(state: &ApiState, verified: &agentkeys_broker::KeyVerified, id: &str) -> Result<(), ApiError> {
    let meta = store(state)?;
    let hooks = meta.list_webhooks(verified.owner()).await.map_err(|e| agent_unavailable(&e))?;
    let mine = hooks.iter().any(|w| w.id == id && w.agent.as_ref().is_some_and(|a| &a.agent == verified.agent()));
    if mine { Ok(()) } else { Err(not_found()) }
}

/// Rotate the secret of one of this agent's own subscriptions (agent key).
#[utoipa::path(
    post,
    path = "/v1/agent/webhooks/{id}/rotate",
    tag = "webhooks",
    params(("id" = String, Path, description = "The subscription id (wh_…)")),
    request_body = RotateWebhookRequest,
    security(("agent_key" = [])),
    responses(
        (status = 200, description = "Rotated; the new secret is shown this once", body = WebhookCreated),
        (status = 400, description = "INVALID_REQUEST: overlap out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription among this agent's", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send the body as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: nothing was changed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn agent_rotate(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    bearer: AgentBearer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    let overlap = rotation_overlap(is_json(&headers), &body)?;
    agents_own(&state, &verified, &id).await?;
    let event = AuditEvent::ok(Actor::Agent(verified.agent().clone()), OP_WEBHOOK_ROTATE, id.as_str())
        .with_detail(json!({ "owner": verified.owner(), "overlap": overlap }));
    rotate_secret(&state, verified.owner(), id, overlap, &event).await
}

/// The delivery log of one of this agent's own subscriptions, newest first (agent key).
#[utoipa::path(
    get,
    path = "/v1/agent/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "The subscription id (wh_…)"), DeliveryQuery),
    security(("agent_key" = [])),
    responses(
        (status = 200, description = "Deliveries, newest first", body = [DeliveryView]),
        (status = 400, description = "INVALID_REQUEST: limit out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription among this agent's", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn agent_deliveries(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    uri: Uri,
    bearer: AgentBearer,
) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    agents_own(&state, &verified, &id).await?;
    delivery_log(&state, verified.owner(), &id, &uri).await
}

/// Send a delivery of one of this agent's own subscriptions again, with the
/// same `webhook-id` (agent key).
#[utoipa::path(
    post,
    path = "/v1/agent/webhooks/{id}/deliveries/{delivery}/redeliver",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The subscription id (wh_…)"),
        ("delivery" = String, Path, description = "The delivery id (msg_…)"),
    ),
    security(("agent_key" = [])),
    responses(
        (status = 202, description = "Due now; the worker sends it", body = DeliveryView),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription among this agent's, or no such delivery of it", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "CONFLICT: an attempt is running right now; retry after it", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: nothing was changed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn agent_redeliver(
    State(state): State<ApiState>,
    Path((id, delivery)): Path<(String, String)>,
    bearer: AgentBearer,
) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    agents_own(&state, &verified, &id).await?;
    redeliver_one(&state, verified.owner(), Some(&id), &delivery).await
}
