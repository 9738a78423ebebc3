//! Grants an agent asks its owner for: the agent names the inboxes, scopes and
//! lifetime it needs and why; the request waits on its owner's console
//! approvals page, where the owner approves it (a fresh passkey assertion for
//! that exact request; the grant is created with the decision, in one
//! transaction) or denies it. Nothing is granted without the owner.
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | POST | `/v1/agent/grant-requests` | agent key | ask: 201 the pending request |
//! | GET | `/v1/agent/grant-requests` | agent key | the agent's own requests and their status (pending, approved, denied, expired) |
//! | GET | `/v1/owner/grant-requests` | owner signature | the owner's pending requests (the CLI's `grant requests`) |
//! | POST | `/v1/owner/grant-requests/{id}/approve` · `/deny` | owner signature | decide with the master key (the CLI's `grant decide`), as the console does with a passkey |
//!
//! An agent has at most [`MAX_PENDING_GRANT_REQUESTS`] pending requests; a
//! request not decided within [`GRANT_REQUEST_TTL_SECS`] is no longer shown or
//! decidable.

use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::time::rfc3339;
use agentkeys_core::ids::random_base62;
use agentkeys_core::{Grant, GrantId, InboxPattern, MAX_GRANT_TTL_SECS, Scope, Scopes, may_create_on_domain};
use agentkeys_store::{GrantDecision, GrantRequestRecord, GrantRequestStatus, StoreError};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::{AgentBearer, ApiJson};

/// Most pending grant requests one agent may have at a time.
pub const MAX_PENDING_GRANT_REQUESTS: u32 = 10;
/// A grant request not decided within this long (7 days) expires.
pub const GRANT_REQUEST_TTL_SECS: i64 = 7 * 86_400;
/// Longest reason, in characters.
pub const MAX_GRANT_REQUEST_REASON_CHARS: usize = 200;
/// Audit operation of an agent's request (actor the agent).
pub const OP_GRANT_REQUEST: &str = "grant.request";
/// Audit operation of a denied request (actor the owner). An approval is
/// recorded as the `grant.create` it made, with the request's id.
pub const OP_GRANT_REQUEST_DENY: &str = "grant.request_deny";
/// Characters after `ar_` in a request id.
const REQUEST_ID_LEN: usize = 16;

/// Body of `POST /v1/agent/grant-requests`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequestBody {
    /// The inbox or pattern the agent asks for (as for `grant create`).
    #[schema(example = "bot@agents.example.com")]
    pub inbox: String,
    /// Any of `read`, `send`, `admin`, `create`.
    #[schema(min_items = 1)]
    pub scopes: Vec<String>,
    /// Lifetime asked for, in seconds; default and maximum 30 days.
    #[serde(default, deserialize_with = "crate::extract::optional_integer")]
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl: Option<i64>,
    /// Why, shown to the owner as text (at most 200 characters).
    #[serde(default)]
    #[schema(max_length = 200)]
    pub reason: Option<String>,
}

/// A grant request as its agent sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantRequestView {
    /// `ar_…`.
    pub id: String,
    /// `pending` until the owner decides.
    pub status: String,
    /// The inbox or pattern asked for.
    pub inbox: String,
    /// The scopes asked for.
    pub scopes: String,
    /// The lifetime asked for, in seconds.
    pub ttl: i64,
    /// When it stops waiting for the owner (RFC 3339).
    pub decide_by: String,
}

fn field(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidRequest { field: Some(name.to_owned()), detail: format!("{name}: {detail}") }
}

fn unavailable(e: &StoreError) -> ApiError {
    tracing::error!(error = %e, "grant request failed in the store");
    ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
}

/// The checked parts of a request body: pattern, scopes, lifetime, reason.
pub(crate) fn check(body: &GrantRequestBody) -> Result<(InboxPattern, Scopes, i64, Option<String>), ApiError> {
    let pattern: InboxPattern = body.inbox.trim().parse().map_err(|e| field("inbox", e))?;
    let scopes: Scopes = body.scopes.join(",").parse().map_err(|e| field("scopes", e))?;
    let ttl = match body.ttl {
        None => MAX_GRANT_TTL_SECS,
        Some(t) if (1..=MAX_GRANT_TTL_SECS).contains(&t) => t,
        Some(t) => return Err(field("ttl", format!("{t}: from 1 to {MAX_GRANT_TTL_SECS} seconds (30 days)"))),
    };
    let reason = match body.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        None => None,
        Some(r) if r.chars().count() > MAX_GRANT_REQUEST_REASON_CHARS || r.chars().any(char::is_control) => {
            return Err(field("reason", format!("at most {MAX_GRANT_REQUEST_REASON_CHARS} characters, no control characters")));
        }
        Some(r) => Some(r.to_owned()),
    };
    Ok((pattern, scopes, ttl, reason))
}

/// Ask the owner for a grant (the agent; the owner decides in the console).
#[utoipa::path(
    post,
    path = "/v1/agent/grant-requests",
    tag = "credentials",
    request_body = GrantRequestBody,
    security(("agent_key" = [])),
    responses(
        (status = 201, description = "Asked: the request waits for the owner", body = GrantRequestView),
        (status = 400, description = "INVALID_REQUEST: inbox, scopes, ttl or reason", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "TOO_MANY_GRANT_REQUESTS: 10 are waiting for the owner already", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE or AUDIT_UNAVAILABLE; nothing was asked", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create(
    State(state): State<ApiState>,
    bearer: AgentBearer,
    body: Result<ApiJson<GrantRequestBody>, ApiError>,
) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    let ApiJson(body) = body?;
    let meta = state.meta.as_ref().ok_or(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" })?;
    let (pattern, scopes, ttl, reason) = check(&body)?;
    let now = state.clock.now();
    let rec = GrantRequestRecord {
        id: format!("ar_{}", random_base62(&mut rand::rngs::OsRng, REQUEST_ID_LEN)),
        owner: verified.owner().clone(),
        agent: verified.agent().clone(),
        pattern,
        scopes,
        ttl,
        reason,
        created_at: now,
        status: GrantRequestStatus::Pending,
        decided_at: None,
        grant: None,
    };
    let event = AuditEvent::ok(Actor::Agent(rec.agent.clone()), OP_GRANT_REQUEST, rec.id.as_str()).with_detail(json!({
        "owner": rec.owner,
        "agent": rec.agent,
        "inbox": rec.pattern.to_string(),
        "scopes": rec.scopes.to_string(),
        "ttl": rec.ttl,
        "reason": rec.reason,
        "key_id": verified.key_id(),
    }));
    meta.add_grant_request(&rec, now - GRANT_REQUEST_TTL_SECS, MAX_PENDING_GRANT_REQUESTS, &event).await.map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::TooManyGrantRequests { max: MAX_PENDING_GRANT_REQUESTS },
        other => unavailable(&other),
    })?;
    let view = GrantRequestView {
        status: rec.status.as_str().to_owned(),
        inbox: rec.pattern.to_string(),
        scopes: rec.scopes.to_string(),
        ttl: rec.ttl,
        decide_by: rfc3339(now + GRANT_REQUEST_TTL_SECS),
        id: rec.id,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// The owner's pending grant requests (newest window of
/// [`GRANT_REQUEST_TTL_SECS`]), oldest first.
pub(crate) async fn pending_for(state: &ApiState, owner: &agentkeys_core::OwnerId) -> Result<Vec<GrantRequestRecord>, ApiError> {
    let meta = state.meta.as_ref().ok_or(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" })?;
    meta.pending_grant_requests(owner, state.clock.now() - GRANT_REQUEST_TTL_SECS).await.map_err(|e| unavailable(&e))
}

/// Decides the pending grant request `id` of the owner who passed `gate`:
/// approved, its grant is created with the decision (the checks of `grant
/// create` included: the owner's inboxes only, `create` on an assigned domain
/// only); denied, nothing is. Another owner's, a decided or an unknown request
/// is `OwnerObjectNotFound`.
pub(crate) async fn decide_as(
    state: &ApiState,
    gate: &impl agentkeys_approval::OwnerGate,
    id: &str,
    approve: bool,
    evidence: serde_json::Value,
) -> Result<Option<Grant>, ApiError> {
    let meta = state.meta.as_ref().ok_or(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" })?;
    let owner = gate.owner().clone();
    let now = state.clock.now();
    let since = now - GRANT_REQUEST_TTL_SECS;
    let not_found = ApiError::OwnerObjectNotFound { what: "grant request" };
    let request = pending_for(state, &owner).await?.into_iter().find(|r| r.id == id).ok_or(not_found)?;
    let mapped = |e: StoreError| match e {
        StoreError::NotFound { what } if what.starts_with("inbox ") => ApiError::OwnerObjectNotFound { what: "inbox" },
        StoreError::NotFound { .. } => ApiError::OwnerObjectNotFound { what: "grant request" },
        other => unavailable(&other),
    };
    if !approve {
        let event = AuditEvent::ok(Actor::Owner(owner.clone()), OP_GRANT_REQUEST_DENY, request.id.as_str()).with_detail(json!({
            "owner": owner,
            "agent": request.agent,
            "inbox": request.pattern.to_string(),
            "scopes": request.scopes.to_string(),
            "approval": evidence,
        }));
        meta.decide_grant_request(&owner, id, since, GrantDecision::Deny, now, &event).await.map_err(mapped)?;
        return Ok(None);
    }
    if request.scopes.contains(Scope::Create)
        && let Some(domain) = request.pattern.domain()
        && !may_create_on_domain(&owner, meta.domain_owner(&domain).await.map_err(|e| unavailable(&e))?.as_ref())
    {
        return Err(ApiError::DomainNotAssigned { domain: domain.to_string() });
    }
    let grant = Grant {
        id: GrantId::generate(&mut rand::rngs::OsRng),
        owner: owner.clone(),
        agent: request.agent.clone(),
        pattern: request.pattern.clone(),
        scopes: request.scopes,
        created_at: now,
        expires_at: now + request.ttl.min(MAX_GRANT_TTL_SECS),
        revoked_at: None,
    };
    let event = AuditEvent::ok(Actor::Owner(owner), agentkeys_audit::ops::GRANT_CREATE, grant.id.as_str()).with_detail(json!({
        "owner": grant.owner,
        "agent": grant.agent,
        "inbox": grant.pattern.to_string(),
        "scopes": grant.scopes.to_string(),
        "expires_at": grant.expires_at,
        "request": request.id,
        "approval": evidence,
    }));
    meta.decide_grant_request(&grant.owner, id, since, GrantDecision::Approve(&grant), now, &event).await.map_err(mapped)?;
    Ok(Some(grant))
}

/// Most requests one listing answers (newest first).
pub const MAX_LISTED_GRANT_REQUESTS: u32 = 50;
/// How far back an agent's listing reaches (decided and expired requests
/// included): 30 days.
pub const GRANT_REQUEST_LIST_WINDOW_SECS: i64 = 30 * 86_400;

/// A grant request and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantRequestState {
    /// `ar_…`.
    pub id: String,
    /// The agent that asked.
    pub agent: String,
    /// `pending` (the owner has not decided), `approved` (see `grant`),
    /// `denied`, or `expired` (not decided within 7 days).
    pub status: String,
    /// The inbox or pattern asked for.
    pub inbox: String,
    /// The scopes asked for.
    pub scopes: String,
    /// The lifetime asked for, in seconds.
    pub ttl: i64,
    /// Why, as the agent said.
    pub reason: Option<String>,
    /// When it was asked (RFC 3339).
    pub created_at: String,
    /// When it stops waiting for the owner (RFC 3339).
    pub decide_by: String,
    /// When the owner decided (RFC 3339), if they did.
    pub decided_at: Option<String>,
    /// The grant the approval created (`gr_…`), if approved.
    pub grant: Option<String>,
}

/// Answer of `GET /v1/agent/grant-requests` and `GET /v1/owner/grant-requests`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantRequestList {
    /// Newest first (the agent's) or oldest first (the owner's pending ones).
    pub requests: Vec<GrantRequestState>,
}

fn state_view(r: &GrantRequestRecord, now: agentkeys_core::UnixTime) -> GrantRequestState {
    let expired = r.status == GrantRequestStatus::Pending && r.created_at < now - GRANT_REQUEST_TTL_SECS;
    GrantRequestState {
        id: r.id.clone(),
        agent: r.agent.to_string(),
        status: if expired { "expired".to_owned() } else { r.status.as_str().to_owned() },
        inbox: r.pattern.to_string(),
        scopes: r.scopes.to_string(),
        ttl: r.ttl,
        reason: r.reason.clone(),
        created_at: rfc3339(r.created_at),
        decide_by: rfc3339(r.created_at + GRANT_REQUEST_TTL_SECS),
        decided_at: r.decided_at.map(rfc3339),
        grant: r.grant.as_ref().map(ToString::to_string),
    }
}

/// The agent's own grant requests and their status (the agent).
#[utoipa::path(
    get,
    path = "/v1/agent/grant-requests",
    tag = "credentials",
    security(("agent_key" = [])),
    responses(
        (status = 200, description = "The agent's requests of the last 30 days, newest first, at most 50: pending, approved (with the grant), denied or expired", body = GrantRequestList),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(State(state): State<ApiState>, bearer: AgentBearer) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    let meta = state.meta.as_ref().ok_or(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" })?;
    let now = state.clock.now();
    let rows = meta
        .agent_grant_requests(verified.agent(), now - GRANT_REQUEST_LIST_WINDOW_SECS, MAX_LISTED_GRANT_REQUESTS)
        .await
        .map_err(|e| unavailable(&e))?;
    // An agent moved to another owner since does not see what it asked the first.
    let requests = rows.iter().filter(|r| &r.owner == verified.owner()).map(|r| state_view(r, now)).collect();
    Ok(Json(GrantRequestList { requests }).into_response())
}

/// The signing owner's pending grant requests, oldest first.
#[utoipa::path(
    get,
    path = "/v1/owner/grant-requests",
    tag = "owner",
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "The requests waiting for the owner's decision, oldest first", body = GrantRequestList),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn owner_list(State(state): State<ApiState>, approval: crate::owner::OwnerApproval) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let requests = pending_for(&state, approval.owner()).await?.iter().map(|r| state_view(r, now)).collect();
    Ok(Json(GrantRequestList { requests }).into_response())
}

/// Answer of a decision.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantRequestDecided {
    /// The request (`ar_…`).
    pub id: String,
    /// `approved` or `denied`.
    pub status: String,
    /// The grant created (`gr_…`), if approved.
    pub grant: Option<String>,
    /// When that grant expires (RFC 3339), if approved.
    pub expires_at: Option<String>,
}

async fn decide_route(state: ApiState, id: String, approval: crate::owner::OwnerApproval, approve: bool) -> Result<Response, ApiError> {
    let grant = decide_as(&state, &approval.proof, &id, approve, approval.evidence()).await?;
    Ok(Json(GrantRequestDecided {
        id,
        status: if approve { "approved" } else { "denied" }.to_owned(),
        expires_at: grant.as_ref().map(|g| rfc3339(g.expires_at)),
        grant: grant.map(|g| g.id.to_string()),
    })
    .into_response())
}

/// Approve one of the owner's pending grant requests: the grant is created
/// as asked (owner approval required; audited `grant.create` with the request).
#[utoipa::path(
    post,
    path = "/v1/owner/grant-requests/{id}/approve",
    tag = "owner",
    params(("id" = String, Path, description = "The request id (ar_…)")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Approved: the grant exists", body = GrantRequestDecided),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "DOMAIN_NOT_ASSIGNED: a create scope on a domain the operator did not assign to you", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: no such pending request among the owner's (decided, expired, another owner's, unknown), or its inbox is not the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn owner_approve(
    State(state): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    approval: crate::owner::OwnerApproval,
) -> Result<Response, ApiError> {
    decide_route(state, id, approval, true).await
}

/// Deny one of the owner's pending grant requests: nothing is granted
/// (owner approval required; audited `grant.request_deny`).
#[utoipa::path(
    post,
    path = "/v1/owner/grant-requests/{id}/deny",
    tag = "owner",
    params(("id" = String, Path, description = "The request id (ar_…)")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Denied", body = GrantRequestDecided),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: no such pending request among the owner's (decided, expired, another owner's, unknown)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn owner_deny(
    State(state): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    approval: crate::owner::OwnerApproval,
) -> Result<Response, ApiError> {
    decide_route(state, id, approval, false).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn body(inbox: &str, scopes: &[&str], ttl: Option<i64>, reason: Option<&str>) -> GrantRequestBody {
        GrantRequestBody {
            inbox: inbox.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ttl,
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn named_limits() {
        assert_eq!((MAX_PENDING_GRANT_REQUESTS, GRANT_REQUEST_TTL_SECS, MAX_GRANT_REQUEST_REASON_CHARS), (10, 604_800, 200));
        let long = "x".repeat(MAX_GRANT_REQUEST_REASON_CHARS);
        assert!(check(&body("bot@a.test", &["read"], None, Some(&long))).is_ok());
        let longer = "x".repeat(MAX_GRANT_REQUEST_REASON_CHARS + 1);
        assert!(check(&body("bot@a.test", &["read"], None, Some(&longer))).is_err());
        assert!(check(&body("bot@a.test", &["read"], None, Some("two\nlines"))).is_err());
        assert_eq!(check(&body("bot@a.test", &["read"], None, Some("  "))).unwrap().3, None);
        assert_eq!(check(&body("bot@a.test", &["read", "send"], None, None)).unwrap().2, MAX_GRANT_TTL_SECS);
        for bad in [body("not an inbox", &["read"], None, None), body("bot@a.test", &["fly"], None, None), body("bot@a.test", &[], None, None)] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// A lifetime is taken as asked within 1 s..30 d and refused outside, never clamped.
        #[test]
        fn lifetimes_within_the_grant_maximum(ttl in -10i64..MAX_GRANT_TTL_SECS + 10) {
            let checked = check(&body("bot@a.test", &["read"], Some(ttl), None));
            prop_assert_eq!(checked.is_ok(), (1..=MAX_GRANT_TTL_SECS).contains(&ttl));
            if let Ok((_, _, t, _)) = checked { prop_assert_eq!(t, ttl); }
        }
    }
}
