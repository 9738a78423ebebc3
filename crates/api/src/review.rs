//! Send guardrails (issue 13 §3): an agent's send limits, the owner's review
//! of held messages, and what an inbox sent (rules in
//! `agentkeys_core::send_limits`, the doors' part in
//! `agentkeys_submission::guardrails`).
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | GET | `/v1/agents/{agent}/limits` | owner | the agent's limits |
//! | PUT | `/v1/agents/{agent}/limits` | owner | replace them (audited `agent.limits`) |
//! | GET | `/v1/review` | owner | held messages, newest first (`?state=all`: decided ones too) |
//! | GET | `/v1/review/{id}` | owner | one, with its text while it waits |
//! | POST | `/v1/review/{id}/approve` | owner | release it, as held or replaced (audited `review.approve`) |
//! | POST | `/v1/review/{id}/reject` | owner | never send it (audited `review.reject`) |
//! | GET | `/v1/inboxes/{address}/sent[/{id}]` | agent (read capability) | what the inbox sent, with delivery state |
//!
//! Another owner's agent or held message answers 404 exactly like a missing
//! one. An approval is the signed request for that message's path: its
//! `OwnerVerified` proof lets the store record the decision, whose
//! `ReleaseApproved` proof the release (DKIM signing and queueing) requires.

use agentkeys_approval::OwnerGate;
use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::send_limits::{ReviewMode, SendLimits};
use agentkeys_core::{Address, AgentId};
use agentkeys_store::{BlobKey, HeldDecision, HeldRecord, HeldState, SentRecord, StoreError};
use agentkeys_submission::guardrails::{SubmissionStores, release_held, remove_held};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::decode;
use crate::owner::{OwnerApproval, backend_error, field_error, store};

/// The audit operation of a change of an agent's limits.
pub const OP_AGENT_LIMITS: &str = "agent.limits";
/// The audit operation of an approval.
pub const OP_REVIEW_APPROVE: &str = "review.approve";
/// The audit operation of a rejection.
pub const OP_REVIEW_REJECT: &str = "review.reject";

/// An agent's send limits as the API shows and takes them (`null`: no limit).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsView {
    /// Messages per sliding hour.
    #[serde(default)]
    pub per_hour: Option<u32>,
    /// Messages per sliding day.
    #[serde(default)]
    pub per_day: Option<u32>,
    /// New recipients (never sent a released message before) per sliding day.
    #[serde(default)]
    pub new_recipients_per_day: Option<u32>,
    /// Pause sending while this percentage (1-100) or more of the last day's
    /// finished deliveries bounced (judged over at least 10).
    #[serde(default)]
    pub max_bounce_percent: Option<u32>,
    /// `none`, `all` or `new-recipients`: which messages are held for review.
    #[serde(default = "review_none")]
    pub review: String,
}

fn review_none() -> String {
    ReviewMode::None.as_str().to_owned()
}

impl LimitsView {
    fn new(limits: &SendLimits) -> Self {
        Self {
            per_hour: limits.per_hour,
            per_day: limits.per_day,
            new_recipients_per_day: limits.new_recipients_per_day,
            max_bounce_percent: limits.max_bounce_percent,
            review: limits.review.as_str().to_owned(),
        }
    }

    fn limits(&self) -> Result<SendLimits, ApiError> {
        let limits = SendLimits {
            per_hour: self.per_hour,
            per_day: self.per_day,
            new_recipients_per_day: self.new_recipients_per_day,
            max_bounce_percent: self.max_bounce_percent,
            review: self.review.parse().map_err(|e| field_error("review", e))?,
        };
        limits.validate().map_err(|e| ApiError::InvalidRequest { field: None, detail: e })?;
        Ok(limits)
    }
}

fn agent_path(agent: &str) -> Result<AgentId, ApiError> {
    agent.parse().map_err(|_| ApiError::OwnerObjectNotFound { what: "agent" })
}

fn agent_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { .. } => ApiError::OwnerObjectNotFound { what: "agent" },
        other => backend_error(&other),
    }
}

fn held_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { .. } => ApiError::OwnerObjectNotFound { what: "held message" },
        StoreError::Conflict { .. } => ApiError::AlreadyDecided,
        other => backend_error(&other),
    }
}

/// An agent's send limits (owner signature).
#[utoipa::path(
    get,
    path = "/v1/agents/{agent}/limits",
    tag = "guardrails",
    params(("agent" = String, Path, description = "One of the owner's agents")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "The limits in force (null: no limit)", body = LimitsView),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent among the owner's (another owner's answers the same)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_limits(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let agent = agent_path(&agent)?;
    let limits = meta.owner_agent_send_limits(approval.owner(), &agent).await.map_err(agent_not_found)?;
    Ok(Json(LimitsView::new(&limits)).into_response())
}

/// Replace an agent's send limits (owner signature; audited).
#[utoipa::path(
    put,
    path = "/v1/agents/{agent}/limits",
    tag = "guardrails",
    params(("agent" = String, Path, description = "One of the owner's agents")),
    request_body = LimitsView,
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "The limits now in force", body = LimitsView),
        (status = 400, description = "INVALID_REQUEST: a value out of bounds or an unknown review mode", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE or AUDIT_UNAVAILABLE: nothing changed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn set_limits(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    if !approval.json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let view: LimitsView = decode(&approval.body)?;
    let limits = view.limits()?;
    let owner = approval.owner().clone();
    let agent = agent_path(&agent)?;
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), OP_AGENT_LIMITS, agent.as_str()).with_detail(json!({
        "owner": owner,
        "per_hour": limits.per_hour,
        "per_day": limits.per_day,
        "new_recipients_per_day": limits.new_recipients_per_day,
        "max_bounce_percent": limits.max_bounce_percent,
        "review": limits.review.as_str(),
        "approval": approval.evidence(),
    }));
    meta.set_agent_send_limits(&owner, &agent, &limits, state.clock.now(), &event).await.map_err(|e| match e {
        StoreError::Invalid(detail) => ApiError::InvalidRequest { field: None, detail },
        other => agent_not_found(other),
    })?;
    Ok(Json(LimitsView::new(&limits)).into_response())
}

/// A held message as the owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeldView {
    /// Its id (a ULID).
    pub id: String,
    /// The sending agent.
    pub agent: String,
    /// The sending inbox.
    pub inbox: String,
    /// Every envelope recipient.
    pub recipients: Vec<String>,
    /// `review-all` or `new-recipients`.
    pub reason: String,
    /// Size in bytes.
    pub size: u64,
    /// Its `Subject:`.
    pub subject: Option<String>,
    /// When it was held (Unix seconds).
    pub held_at: i64,
    /// `held`, `approved` or `rejected`.
    pub state: String,
    /// When the owner decided.
    pub decided_at: Option<i64>,
    /// The id it was stored and queued under once approved.
    pub released_as: Option<String>,
    /// The message as held (`GET /v1/review/{id}` only, while it waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl HeldView {
    fn new(h: &HeldRecord) -> Self {
        Self {
            id: h.id.clone(),
            agent: h.agent.to_string(),
            inbox: h.inbox.to_string(),
            recipients: h.recipients.clone(),
            reason: h.reason.as_str().to_owned(),
            size: h.size,
            subject: h.subject.clone(),
            held_at: h.held_at,
            state: h.state.as_str().to_owned(),
            decided_at: h.decided_at,
            released_as: h.released_as.clone(),
            message: None,
        }
    }
}

/// The owner's held messages.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeldList {
    /// Newest first.
    pub held: Vec<HeldView>,
}

/// Held messages waiting for the owner (`?state=all`: decided ones too), newest first.
#[utoipa::path(
    get,
    path = "/v1/review",
    tag = "guardrails",
    params(("state" = Option<String>, Query, description = "`all` to list decided messages too")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Held messages (at most 200)", body = HeldList),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(
    State(state): State<ApiState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let all = match query.as_deref() {
        None | Some("") => false,
        Some("state=all") => true,
        Some(other) => return Err(field_error("state", format!("{other:?}: give state=all or nothing"))),
    };
    let held = meta
        .held_messages(approval.owner(), !all, agentkeys_store::MAX_LISTED)
        .await
        .map_err(|e| backend_error(&e))?;
    Ok(Json(HeldList { held: held.iter().map(HeldView::new).collect() }).into_response())
}

fn held_id(id: &str) -> Result<ulid::Ulid, ApiError> {
    id.parse().map_err(|_| ApiError::OwnerObjectNotFound { what: "held message" })
}

pub(crate) async fn held_bytes(state: &ApiState, id: ulid::Ulid) -> Result<Bytes, ApiError> {
    let service = state.send.as_ref().ok_or(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" })?;
    match service.blobs.get(&BlobKey::held(id)).await {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => {
            tracing::error!(%id, "a held message's bytes are missing");
            Err(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" })
        }
        Err(e) => Err(backend_error(&StoreError::Backend(e.to_string()))),
    }
}

/// One held message, with its text while it waits.
#[utoipa::path(
    get,
    path = "/v1/review/{id}",
    tag = "guardrails",
    params(("id" = String, Path, description = "The held message's id")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "The held message", body = HeldView),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such held message among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let ulid = held_id(&id)?;
    let held = meta.owner_held_message(approval.owner(), &id).await.map_err(held_not_found)?;
    let mut view = HeldView::new(&held);
    if held.state == HeldState::Held {
        view.message = Some(String::from_utf8_lossy(&held_bytes(&state, ulid).await?).into_owned());
    }
    Ok(Json(view).into_response())
}

/// Body of an approval: optionally the message to send instead (an edit).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// The whole message (RFC 5322 text) to send instead of the held one. Its
    /// `From:` must still be the sending inbox; the envelope recipients stay
    /// those of the held message.
    #[serde(default)]
    pub message: Option<String>,
}

/// Release a held message: DKIM-signed and queued now (owner signature; audited).
#[utoipa::path(
    post,
    path = "/v1/review/{id}/approve",
    tag = "guardrails",
    params(("id" = String, Path, description = "The held message's id")),
    request_body = ApproveRequest,
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Released: stored and queued as released_as", body = HeldView),
        (status = 400, description = "INVALID_REQUEST: a recipient that no longer routes", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "FROM_NOT_AUTHORIZED: the replacement's From: or Sender: is not the sending inbox", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such held message among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "ALREADY_DECIDED", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: over the message size limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "MESSAGE_INVALID: the replacement contains a NUL character", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE or AUDIT_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn approve(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    if !approval.body.is_empty() && !approval.json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let request: ApproveRequest = if approval.body.is_empty() { ApproveRequest::default() } else { decode(&approval.body)? };
    let held = approve_as(&state, &id, request.message, &approval.proof, approval.evidence()).await?;
    Ok(Json(HeldView::new(&held)).into_response())
}

/// Releases the owner's held message `id` (as held, or as `replacement`) for
/// the owner who passed `gate` (the master key's signature, or a console
/// passkey assertion or mailed code for this action); `evidence` goes into
/// the `review.approve` record. The decided record.
pub(crate) async fn approve_as(
    state: &ApiState,
    id: &str,
    replacement: Option<String>,
    gate: &impl OwnerGate,
    evidence: serde_json::Value,
) -> Result<HeldRecord, ApiError> {
    let meta = store(state)?.clone();
    let service = state.send.clone().ok_or(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" })?;
    let owner = gate.owner().clone();
    let ulid = held_id(id)?;
    let held = meta.owner_held_message(&owner, id).await.map_err(held_not_found)?;
    if held.state != HeldState::Held {
        return Err(ApiError::AlreadyDecided);
    }
    // Everything that can refuse is checked before the decision is recorded.
    let (message, edited) = match replacement {
        Some(text) => {
            let bytes = Bytes::from(text.into_bytes());
            if bytes.len() > service.max_message_size {
                return Err(ApiError::MessageTooLarge { limit: service.max_message_size });
            }
            crate::send::check_replacement(&bytes, &held.inbox)?;
            (bytes, true)
        }
        None => (held_bytes(state, ulid).await?, false),
    };
    let pairs: Vec<(String, String)> =
        held.recipients.iter().enumerate().map(|(i, r)| (format!("recipients[{i}]"), r.clone())).collect();
    let (local, remote) = crate::send::route(meta.as_ref(), &state.subaddressing, &pairs).await?;
    let released_as = ulid::Ulid::new();
    let digest: String = Sha256::digest(&message).iter().map(|b| format!("{b:02x}")).collect();
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), OP_REVIEW_APPROVE, id).with_detail(json!({
        "owner": owner,
        "agent": held.agent,
        "inbox": held.inbox,
        "recipients": held.recipients.len(),
        "edited": edited,
        "message_sha256": digest,
        "released_as": released_as.to_string(),
        "approval": evidence,
    }));
    let now = state.clock.now();
    let decision = HeldDecision::Approve { released_as: released_as.to_string() };
    let decided = meta.decide_held(&owner, id, &decision, now, &event).await.map_err(held_not_found)?;
    let Some(release) = decided.release else {
        tracing::error!(%id, "an approval was recorded without its release proof");
        return Err(ApiError::Internal);
    };
    let stores = SubmissionStores { blobs: service.blobs.as_ref(), outbox: meta.as_ref(), guardrails: meta.as_ref(), audit: meta.as_ref() };
    let delivery = release_held(release, decided.receipt.clone(), stores, service.signer.as_deref(), message, local, remote, released_as, now)
        .await
        .map_err(|e| {
            tracing::error!(%id, error = %e, "releasing an approved message failed");
            ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
        })?;
    if let (Some(queued), Some(_)) = (&service.queued, &delivery.outbound) {
        queued.notify_one();
    }
    tracing::info!(%id, %released_as, edited, "held message approved and released");
    Ok(decided.held)
}

/// Never send a held message (owner signature; audited).
#[utoipa::path(
    post,
    path = "/v1/review/{id}/reject",
    tag = "guardrails",
    params(("id" = String, Path, description = "The held message's id")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Rejected: it is never sent and its bytes are removed", body = HeldView),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such held message among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "ALREADY_DECIDED", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE or AUDIT_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn reject(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let held = reject_as(&state, &id, &approval.proof, approval.evidence()).await?;
    Ok(Json(HeldView::new(&held)).into_response())
}

/// Rejects the owner's held message `id` for the owner who passed `gate`;
/// `evidence` goes into the `review.reject` record. The decided record.
pub(crate) async fn reject_as(
    state: &ApiState,
    id: &str,
    gate: &impl OwnerGate,
    evidence: serde_json::Value,
) -> Result<HeldRecord, ApiError> {
    let meta = store(state)?.clone();
    let owner = gate.owner().clone();
    let ulid = held_id(id)?;
    let held = meta.owner_held_message(&owner, id).await.map_err(held_not_found)?;
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), OP_REVIEW_REJECT, id).with_detail(json!({
        "owner": owner,
        "agent": held.agent,
        "inbox": held.inbox,
        "recipients": held.recipients.len(),
        "approval": evidence,
    }));
    let decided =
        meta.decide_held(&owner, id, &HeldDecision::Reject, state.clock.now(), &event).await.map_err(held_not_found)?;
    if let Some(service) = &state.send {
        remove_held(service.blobs.as_ref(), ulid).await;
    }
    Ok(decided.held)
}

/// One delivery of a sent message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SentDeliveryView {
    /// The remote recipient.
    pub recipient: String,
    /// `queued`, `sending`, `delivered`, `deferred` or `bounced`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last response of the receiving server (or our reason).
    pub last_response: Option<String>,
}

/// A message the inbox sent, with where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SentView {
    /// The id the send answered with.
    pub message_id: String,
    /// When it was accepted (Unix seconds).
    pub sent_at: i64,
    /// Every envelope recipient.
    pub recipients: Vec<String>,
    /// Its `Subject:` (none for sends made before threads showed sent mail).
    pub subject: Option<String>,
    /// `held`, `rejected`, `queued`, `sending`, `deferred`, `bounced` or
    /// `delivered`: the least advanced of its deliveries (`delivered` when
    /// every remote one is, or it had only hosted recipients).
    pub state: String,
    /// The last response of the least advanced delivery.
    pub last_response: Option<String>,
    /// Per remote recipient.
    pub deliveries: Vec<SentDeliveryView>,
}

/// The overall state of a sent message: held / rejected, else the least
/// advanced delivery (sending and queued before deferred, deferred before bounced and delivered).
pub fn sent_state(record: &SentRecord) -> (String, Option<String>) {
    match record.held {
        Some(HeldState::Held) => return ("held".to_owned(), None),
        Some(HeldState::Rejected) => return ("rejected".to_owned(), None),
        _ => {}
    }
    let rank = |s: &str| match s {
        "queued" => 0,
        "sending" => 1,
        "deferred" => 2,
        "bounced" => 3,
        _ => 4,
    };
    match record.deliveries.iter().min_by_key(|d| rank(&d.state)) {
        Some(d) => (d.state.clone(), d.last_response.clone()),
        None => ("delivered".to_owned(), None),
    }
}

impl SentView {
    pub(crate) fn new(r: &SentRecord) -> Self {
        let (state, last_response) = sent_state(r);
        Self {
            message_id: r.message_id.clone(),
            sent_at: r.at,
            recipients: r.recipients.clone(),
            subject: r.subject.clone(),
            state,
            last_response,
            deliveries: r
                .deliveries
                .iter()
                .map(|d| SentDeliveryView {
                    recipient: d.recipient.clone(),
                    state: d.state.clone(),
                    attempts: d.attempts,
                    last_response: d.last_response.clone(),
                })
                .collect(),
        }
    }
}

/// What an inbox sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SentList {
    /// Newest first (at most 200).
    pub sent: Vec<SentView>,
}

fn capability(state: &ApiState, headers: &HeaderMap, address: &str) -> Result<Address, ApiError> {
    let bearer = crate::messages::CapabilityBearer::parse(headers).map_err(|reason| {
        tracing::info!(reason, "read capability refused");
        ApiError::InvalidCapability
    })?;
    Ok(crate::messages::authorize(state, &bearer, address)?.inbox().clone())
}

/// Messages the inbox sent, newest first, with their delivery state (read capability).
#[utoipa::path(
    get,
    path = "/v1/inboxes/{address}/sent",
    tag = "mail",
    params(("address" = String, Path, description = "The inbox")),
    security(("read_capability" = [])),
    responses(
        (status = 200, description = "Sent messages with their delivery state", body = SentList),
        (status = 401, description = "INVALID_CAPABILITY", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: not the capability's inbox", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_sent(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let inbox = capability(&state, &headers, &address)?;
    let meta = store(&state)?;
    let sent = meta.sent_messages(&inbox, None, agentkeys_store::MAX_LISTED).await.map_err(|e| backend_error(&e))?;
    Ok(Json(SentList { sent: sent.iter().map(SentView::new).collect() }).into_response())
}

/// One message the inbox sent, with its delivery state (read capability).
#[utoipa::path(
    get,
    path = "/v1/inboxes/{address}/sent/{message_id}",
    tag = "mail",
    params(
        ("address" = String, Path, description = "The inbox"),
        ("message_id" = String, Path, description = "The id the send answered with"),
    ),
    security(("read_capability" = [])),
    responses(
        (status = 200, description = "The sent message's delivery state", body = SentView),
        (status = 401, description = "INVALID_CAPABILITY", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: not the capability's inbox, or no such sent message", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn show_sent(
    State(state): State<ApiState>,
    Path((address, message_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let inbox = capability(&state, &headers, &address)?;
    let meta = store(&state)?;
    let sent = meta.sent_messages(&inbox, Some(&message_id), 1).await.map_err(|e| backend_error(&e))?;
    let record = sent.first().ok_or(ApiError::MailNotFound)?;
    Ok(Json(SentView::new(record)).into_response())
}
