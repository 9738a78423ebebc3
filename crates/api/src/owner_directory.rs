//! The owner's own directory: their agents with their keys, their inboxes, and
//! a new inbox for one of their agents, so a paired agent need not wait on the
//! operator. Signed like every owner route ([`OwnerApproval`]); another owner's
//! agent answers 404 exactly like a missing one.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/v1/agents` | the owner's agents and their keys |
//! | GET | `/v1/inboxes` | the owner's inboxes |
//! | POST | `/v1/inboxes` | a new inbox for one of the owner's agents (audited) |

use agentkeys_audit::{Actor, AuditEvent, ops};
use agentkeys_core::time::rfc3339;
use agentkeys_core::{Address, AgentId, Domain, InboxStatus, UnixTime, owner_inbox_expiry};
use agentkeys_store::{InboxRecord, KeyRecord, StoreError};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::decode;
use crate::owner::{OwnerApproval, backend_error, field_error, store};

/// One agent key as its owner sees it (never the secret or its hash).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// `key_…`.
    pub id: String,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// RFC 3339, when revoked.
    pub revoked_at: Option<String>,
}

/// One of the owner's agents.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    /// `0x` + 40 hex digits.
    pub id: String,
    /// Display name, if any.
    pub name: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// The agent's keys, oldest first.
    pub keys: Vec<KeyView>,
}

/// One of the owner's inboxes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InboxView {
    /// The address.
    pub address: String,
    /// The agent that uses it.
    pub agent: String,
    /// `active`, `disabled`, …
    pub status: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: when it stops receiving and is removed with its mail (inboxes
    /// an agent created under a `create` grant); absent if it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Body of `POST /v1/inboxes`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInboxRequest {
    /// One of the owner's agents (`0x` + 40 hex digits).
    #[schema(pattern = r#"^0[xX][0-9a-fA-F]{40}$"#)]
    pub agent: String,
    /// The new address, in a domain this server hosts.
    #[schema(pattern = r#"^[A-Za-z0-9_-]{1,32}(?:\.[A-Za-z0-9_-]{1,15}){0,2}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){0,2}[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"#, example = "signup@agents.example.com")]
    pub address: String,
    /// Seconds until the inbox stops receiving (`550 5.1.1`) and the retention
    /// sweeper removes it with its mail; at most 30 days (2592000), else 400
    /// `INVALID_EXPIRY`. Absent: the inbox does not expire.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2592000)]
    pub expires_in: Option<i64>,
}

fn key_view(k: &KeyRecord, now: UnixTime) -> KeyView {
    let state = match (k.revoked_at, k.expires_at <= now) {
        (Some(_), _) => "revoked",
        (None, true) => "expired",
        (None, false) => "active",
    };
    KeyView {
        id: k.id.to_string(),
        state: state.to_owned(),
        created_at: rfc3339(k.created_at),
        expires_at: rfc3339(k.expires_at),
        revoked_at: k.revoked_at.map(rfc3339),
    }
}

fn inbox_view(i: &InboxRecord) -> InboxView {
    InboxView {
        address: i.address.to_string(),
        agent: i.agent.to_string(),
        status: i.status.to_string(),
        created_at: rfc3339(i.created_at),
        expires_at: i.expires_at.map(rfc3339),
    }
}

/// The owner's agents and their keys (owner approval required).
#[utoipa::path(
    get,
    path = "/v1/agents",
    tag = "owner",
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "The owner's agents, oldest first, with their keys", body = [AgentView]),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_agents(State(state): State<ApiState>, approval: OwnerApproval) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let now = state.clock.now();
    let agents = meta.list_agents(Some(approval.owner())).await.map_err(|e| backend_error(&e))?;
    let mut views = Vec::with_capacity(agents.len());
    for a in agents {
        let keys = meta.list_keys(&a.id).await.map_err(|e| backend_error(&e))?;
        views.push(AgentView {
            id: a.id.to_string(),
            name: a.name,
            created_at: rfc3339(a.created_at),
            keys: keys.iter().map(|k| key_view(k, now)).collect(),
        });
    }
    Ok(Json(views).into_response())
}

/// The owner's inboxes (owner approval required).
#[utoipa::path(
    get,
    path = "/v1/inboxes",
    tag = "owner",
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "The owner's inboxes", body = [InboxView]),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_inboxes(State(state): State<ApiState>, approval: OwnerApproval) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let inboxes = meta.list_inboxes(Some(approval.owner())).await.map_err(|e| backend_error(&e))?;
    Ok(Json(inboxes.iter().map(inbox_view).collect::<Vec<_>>()).into_response())
}

/// Create an inbox for one of the owner's agents (owner approval required). It
/// receives mail at once; the agent reads or sends from it once a grant covers it.
#[utoipa::path(
    post,
    path = "/v1/inboxes",
    tag = "owner",
    request_body = CreateInboxRequest,
    security(("owner_signature" = [])),
    responses(
        (status = 201, description = "Created", body = InboxView),
        (status = 400, description = "INVALID_REQUEST (a field, or a domain this server does not host) or INVALID_EXPIRY (expires_in not positive or over 30 days)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "ADDRESS_TAKEN: an inbox with this address exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send the body as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_inbox(State(state): State<ApiState>, approval: OwnerApproval) -> Result<Response, ApiError> {
    if !approval.json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body: CreateInboxRequest = decode(&approval.body)?;
    let rec = create_inbox_as(&state, &approval.proof, &body.agent, &body.address, body.expires_in, approval.evidence()).await?;
    Ok((StatusCode::CREATED, Json(inbox_view(&rec))).into_response())
}

/// Creates the inbox `address` for `agent`, one of the agents of the owner who
/// passed `gate` (the master key's signature, or a console passkey assertion
/// for this action), ending after `expires_in` seconds if given; `evidence`
/// goes into the audit record. Another owner's agent is the same 404 as a
/// missing one.
pub(crate) async fn create_inbox_as(
    state: &ApiState,
    gate: &impl agentkeys_approval::OwnerGate,
    agent: &str,
    address: &str,
    expires_in: Option<i64>,
    evidence: serde_json::Value,
) -> Result<InboxRecord, ApiError> {
    let meta = store(state)?;
    let owner = gate.owner().clone();
    let agent: AgentId = agent.parse().map_err(|e| field_error("agent", e))?;
    let address: Address = address.parse().map_err(|e| field_error("address", e))?;
    state.subaddressing.check_new_inbox(&address).map_err(|e| field_error("address", e))?;
    let now = state.clock.now();
    let expires_at = owner_inbox_expiry(expires_in, now).map_err(ApiError::InboxExpiry)?;
    // A domain assigned to another owner answers like one this server does not host.
    let domain: Domain = address.domain().parse().map_err(|e| field_error("address", e))?;
    let assigned_elsewhere = meta.domain_owner(&domain).await.map_err(|e| backend_error(&e))?.is_some_and(|o| o != owner);
    if assigned_elsewhere || !meta.is_hosted_domain(address.domain()).await.map_err(|e| backend_error(&e))? {
        return Err(field_error("address", format!("{} is not a domain this server hosts", address.domain())));
    }
    // Another owner's agent answers exactly like a missing one.
    let found = meta.get_agent(&agent).await.map_err(|e| backend_error(&e))?;
    if found.is_none_or(|a| a.owner != owner) {
        return Err(ApiError::OwnerObjectNotFound { what: "agent" });
    }
    let rec = InboxRecord {
        address: address.clone(),
        owner: owner.clone(),
        agent: agent.clone(),
        status: InboxStatus::Active,
        created_at: now,
        expires_at,
    };
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::INBOX_CREATE, address.as_str()).with_detail(json!({
        "owner": owner,
        "agent": agent,
        "status": rec.status,
        "expires_at": rec.expires_at,
        "approval": evidence,
    }));
    let _receipt = meta.create_inbox(&rec, &event).await.map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::AddressTaken,
        StoreError::NotFound { .. } => ApiError::OwnerObjectNotFound { what: "agent" },
        other => backend_error(&other),
    })?;
    Ok(rec)
}
