//! The owner's side of the API: enrollment, and the routes that need an owner
//! approval (a request signed with the owner's master key).
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/owners/{owner}/enroll` | redeem an enrollment code, register the master public key (public) |
//! | POST | `/v1/grants` | create a grant for one of the owner's agents |
//! | GET | `/v1/grants` | the owner's grants |
//! | PATCH | `/v1/grants/{id}` | narrow a grant's scopes and/or set its expiry |
//! | DELETE | `/v1/grants/{id}` | revoke one of the owner's grants |
//! | DELETE | `/v1/keys/{id}` | revoke a key of one of the owner's agents |
//! | GET | `/v1/audit?after=&limit=` | audit records that concern the owner |
//!
//! Every route but enrollment takes an [`OwnerApproval`]: the extractor reads the
//! body (at most [`crate::MAX_BODY_BYTES`]), parses `Authorization: AgentKeys-Owner
//! …`, looks up the owner's registered key, checks timestamp and signature over
//! method, path with query and the exact body bytes
//! ([`OwnerSignature::verify_signature`]), records the nonce in the shared store
//! ([`OwnerApproval::record_owner_nonce`](agentkeys_store::OwnerApproval::record_owner_nonce)) and only then yields the
//! [`OwnerVerified`] proof the handlers require. An owner acts only on their own
//! agents, grants and keys; anything else answers 404 exactly like a missing id.
//!
//! The audit filter of `GET /v1/audit` is [`AuditLog::audit_list_for_owner`](agentkeys_store::AuditLog::audit_list_for_owner)'s:
//! records whose actor is the owner, whose subject is the owner or one of their
//! agents, inboxes, keys or grants, or whose detail names the owner (`owner`) or
//! one of their agents (`agent`).

use std::sync::Arc;

use agentkeys_approval::enrollment::redeem;
use agentkeys_approval::{
    ApprovalError, EnrollmentCode, EnrollmentError, EnrollmentTicket, MAX_CLOCK_SKEW, OwnerSignature, OwnerVerified,
    PublicKey, Replay,
};
use agentkeys_approval::codes::CodeHash;
use agentkeys_audit::{Actor, AuditEvent, ops};
use agentkeys_core::time::rfc3339;
use agentkeys_core::{
    AgentId, Grant, GrantChange, GrantId, InboxPattern, KeyId, MAX_GRANT_TTL_SECS, OwnerId, Scope, Scopes, UnixTime,
    may_create_on_domain,
};
use agentkeys_store::{MetadataStore, NonceUse, StoreError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, decode};

/// Default and largest page of `GET /v1/audit`.
pub const AUDIT_PAGE_DEFAULT: u32 = 100;
/// Largest `limit` of `GET /v1/audit`.
pub const AUDIT_PAGE_MAX: u32 = 1000;

pub(crate) fn store(state: &ApiState) -> Result<&Arc<dyn MetadataStore>, ApiError> {
    state.meta.as_ref().ok_or_else(|| {
        tracing::error!("owner route called on an API without a metadata store");
        ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
    })
}

pub(crate) fn backend_error(e: &StoreError) -> ApiError {
    tracing::error!(error = %e, "owner request failed in the store");
    ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
}

/// Audit failures of an audited write: nothing changed.
fn write_error(e: StoreError, what: &'static str) -> ApiError {
    match e {
        StoreError::NotFound { .. } => ApiError::OwnerObjectNotFound { what },
        other => backend_error(&other),
    }
}

fn refusal(e: &ApprovalError) -> ApiError {
    tracing::info!(reason = e.code(), error = %e, "owner request refused");
    match e {
        ApprovalError::ReplayGuardUnavailable { .. } => ApiError::Unavailable { code: "REPLAY_GUARD_UNAVAILABLE" },
        ApprovalError::InvalidRequest { detail } => {
            ApiError::InvalidRequest { field: None, detail: format!("cannot verify this request: {detail}") }
        }
        ApprovalError::UnknownOwner | ApprovalError::BadSignature => {
            ApiError::OwnerUnauthorized { code: "OWNER_SIGNATURE_INVALID" }
        }
        other => ApiError::OwnerUnauthorized { code: other.code() },
    }
}

/// A request signed by an enrolled owner's master key, fresh and not replayed,
/// with its raw body. The only way into an owner-gated handler.
#[derive(Debug)]
pub struct OwnerApproval {
    /// The proof.
    pub proof: OwnerVerified,
    /// The exact body bytes the signature covers.
    pub body: Bytes,
    /// Whether the body was sent as `Content-Type: application/json`.
    pub json: bool,
}

impl OwnerApproval {
    /// The signing owner.
    pub fn owner(&self) -> &OwnerId {
        self.proof.owner()
    }

    /// The audit detail that ties a change to the approval that allowed it.
    pub(crate) fn evidence(&self) -> serde_json::Value {
        json!({ "gate": agentkeys_approval::Gate::MasterKey.as_str(), "ts": self.proof.timestamp(), "nonce": self.proof.nonce().as_str() })
    }
}

impl FromRequest<ApiState> for OwnerApproval {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let meta = store(state)?.clone();
        let method = req.method().as_str().to_owned();
        let json = crate::extract::is_json(req.headers());
        let path = req.uri().path_and_query().map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
        let header_value = match req.headers().get(header::AUTHORIZATION) {
            Some(v) => v.to_str().map_err(|_| refusal(&ApprovalError::MalformedHeader(agentkeys_approval::HeaderError::Scheme)))?.to_owned(),
            None => return Err(refusal(&ApprovalError::MalformedHeader(agentkeys_approval::HeaderError::Scheme))),
        };
        let signature = OwnerSignature::parse(&header_value).map_err(|e| refusal(&ApprovalError::MalformedHeader(e)))?;
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidRequest { field: None, detail: "the request body could not be read".to_owned() }
            }
        })?;
        let now = state.clock.now();
        let key = meta.owner_public_key(signature.owner()).await.map_err(|e| backend_error(&e))?;
        let key = key.and_then(|bytes| PublicKey::from_bytes(&bytes).ok());
        let checked =
            signature.verify_signature(&method, &path, &body, now, |_| key).map_err(|e| refusal(&e))?;
        // Keep nonces for twice the window, so a server whose clock lags another
        // process sharing the database still sees them.
        let replay = match meta
            .record_owner_nonce(checked.owner(), checked.nonce().as_str(), checked.timestamp(), now - 2 * MAX_CLOCK_SKEW)
            .await
        {
            Ok(NonceUse::Fresh(record)) => Ok(record),
            Ok(NonceUse::Replayed) => Err(Replay::Seen),
            Err(e) => Err(Replay::Unavailable { reason: e.to_string() }),
        };
        let proof = checked.finish(replay).map_err(|e| refusal(&e))?;
        Ok(Self { proof, body, json })
    }
}

/// Body of `POST /v1/owners/{owner}/enroll`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment code the operator gave (`enr_…`, any case).
    #[schema(pattern = r#"^[eE][nN][rR]_[0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{26}$"#)]
    pub code: String,
    /// The owner's Ed25519 master public key, standard base64 of 32 bytes.
    #[schema(pattern = r#"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"#)]
    pub public_key: String,
}

/// Answer of a successful enrollment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    /// The owner.
    pub owner: String,
    /// The registered public key (standard base64).
    pub public_key: String,
    /// When it was registered (RFC 3339).
    pub enrolled_at: String,
}

/// Redeem an enrollment code and register the owner's master public key.
#[utoipa::path(
    post,
    path = "/v1/owners/{owner}/enroll",
    tag = "owner",
    params(("owner" = String, Path, description = "The owner id (0x + 40 hex)")),
    request_body = EnrollRequest,
    responses(
        (status = 201, description = "Enrolled", body = EnrollResponse),
        (status = 400, description = "Malformed body or public key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "INVALID_ENROLLMENT_CODE: wrong, used or never issued (one answer)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "EXPIRED: the right code, too late", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send the body as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn enroll(
    State(state): State<ApiState>,
    Path(owner): Path<String>,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let public_key = PublicKey::from_base64(&body.public_key).map_err(|e| ApiError::InvalidRequest {
        field: Some("public_key".to_owned()),
        detail: format!("public_key: {e}"),
    })?;
    // A malformed owner or code tells nothing about any ticket: same answer as a wrong code.
    let owner: OwnerId = owner.parse().map_err(|_| ApiError::InvalidEnrollmentCode)?;
    let code: EnrollmentCode = body.code.parse().map_err(|_| ApiError::InvalidEnrollmentCode)?;
    let now = state.clock.now();
    let ticket = meta
        .enrollment_ticket(&owner)
        .await
        .map_err(|e| backend_error(&e))?
        .map(|t| EnrollmentTicket::restore(t.owner, CodeHash(t.code_hash), t.expires_at));
    let redeemed = redeem(ticket, &code, now).map_err(|e| match e {
        EnrollmentError::InvalidCode => ApiError::InvalidEnrollmentCode,
        EnrollmentError::Expired => ApiError::EnrollmentExpired,
    })?;
    let event = AuditEvent::ok(Actor::Owner(redeemed.owner().clone()), ops::OWNER_ENROLL, redeemed.owner().as_str());
    let _receipt = meta
        .redeem_enrollment(redeemed.owner(), &code.hash().0, &public_key.to_bytes(), now, &event)
        .await
        .map_err(|e| match e {
            // Spent or replaced between the check and the write: a used code.
            StoreError::NotFound { .. } => ApiError::InvalidEnrollmentCode,
            other => backend_error(&other),
        })?;
    let answer = EnrollResponse { owner: owner.to_string(), public_key: public_key.to_base64(), enrolled_at: rfc3339(now) };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// A scope a grant gives (documentation of `scopes`; the body carries strings,
/// and any other value is a 400 naming the field).
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ScopeName {
    /// List and fetch mail, follow the event stream.
    Read,
    /// Send as the inbox.
    Send,
    /// Manage the inbox.
    Admin,
    /// Create inboxes under the grant's pattern for the agent itself
    /// (`POST /v1/agent/inboxes`), each expiring no later than the grant.
    Create,
}

/// Body of `POST /v1/grants`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrantRequest {
    /// One of the owner's agents (`0x` + 40 hex digits).
    #[schema(pattern = r#"^0[xX][0-9a-fA-F]{40}$"#)]
    pub agent: String,
    /// An address, a prefix ending in `*` (`bot-*`), a prefix in a domain
    /// (`signup-*@domain`), or `*@domain`.
    #[schema(pattern = r#"^(?:\*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){0,2}[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?|[A-Za-z0-9_-]{1,32}\*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){0,2}[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?|[A-Za-z0-9._@-]{1,64}\*|[A-Za-z0-9_-]{1,32}(?:\.[A-Za-z0-9_-]{1,15}){0,2}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){0,2}[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)$"#)]
    pub inbox: String,
    /// Any of `read`, `send`, `admin`, `create`.
    #[schema(value_type = Vec<ScopeName>, min_items = 1)]
    pub scopes: Vec<String>,
    /// Lifetime in seconds; default and maximum 30 days.
    #[serde(default, deserialize_with = "crate::extract::optional_integer")]
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl: Option<i64>,
}

/// A grant as the owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantView {
    /// `gr_…`.
    pub id: String,
    /// The owner.
    pub owner: String,
    /// The agent.
    pub agent: String,
    /// The inbox pattern.
    pub inbox: String,
    /// Comma-separated scopes.
    pub scopes: String,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// RFC 3339, when revoked.
    pub revoked_at: Option<String>,
}

fn grant_view(g: &Grant, now: UnixTime) -> GrantView {
    let state = if g.revoked_at.is_some() {
        "revoked"
    } else if g.is_active(now) {
        "active"
    } else {
        "expired"
    };
    GrantView {
        id: g.id.to_string(),
        owner: g.owner.to_string(),
        agent: g.agent.to_string(),
        inbox: g.pattern.to_string(),
        scopes: g.scopes.to_string(),
        state: state.to_owned(),
        created_at: rfc3339(g.created_at),
        expires_at: rfc3339(g.expires_at),
        revoked_at: g.revoked_at.map(rfc3339),
    }
}

pub(crate) fn field_error(field: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidRequest { field: Some(field.to_owned()), detail: format!("{field}: {e}") }
}

/// Create a grant (owner approval required).
#[utoipa::path(
    post,
    path = "/v1/grants",
    tag = "owner",
    request_body = CreateGrantRequest,
    security(("owner_signature" = [])),
    responses(
        (status = 201, description = "Created", body = GrantView),
        (status = 400, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "DOMAIN_NOT_ASSIGNED: the create scope on a domain the operator has not assigned to this owner", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent among the owner's, or `inbox` is an address that is not one of the owner's inboxes", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send the body as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_grant(State(state): State<ApiState>, approval: OwnerApproval) -> Result<Response, ApiError> {
    if !approval.json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body: CreateGrantRequest = decode(&approval.body)?;
    let grant = create_grant_as(&state, &approval.proof, &body, approval.evidence()).await?;
    Ok((StatusCode::CREATED, Json(grant_view(&grant, state.clock.now()))).into_response())
}

/// Creates the grant `body` describes for the owner who passed `gate` (the
/// master key's signature, or a console passkey assertion for this action);
/// `evidence` goes into the audit record.
pub(crate) async fn create_grant_as(
    state: &ApiState,
    gate: &impl agentkeys_approval::OwnerGate,
    body: &CreateGrantRequest,
    evidence: serde_json::Value,
) -> Result<Grant, ApiError> {
    let meta = store(state)?;
    let owner = gate.owner().clone();
    let agent: AgentId = body.agent.parse().map_err(|e| field_error("agent", e))?;
    let pattern: InboxPattern = body.inbox.parse().map_err(|e| field_error("inbox", e))?;
    let scopes: Scopes = body.scopes.join(",").parse().map_err(|e| field_error("scopes", e))?;
    let ttl = match body.ttl {
        None => MAX_GRANT_TTL_SECS,
        Some(t) if t <= 0 => return Err(ApiError::InvalidTtl { requested: t }),
        Some(t) if t > MAX_GRANT_TTL_SECS => {
            return Err(field_error("ttl", format!("{t} s is over the maximum of {MAX_GRANT_TTL_SECS} s (30 days)")));
        }
        Some(t) => t,
    };
    // Another owner's agent answers exactly like a missing one.
    let found = meta.get_agent(&agent).await.map_err(|e| backend_error(&e))?;
    if found.is_none_or(|a| a.owner != owner) {
        return Err(ApiError::OwnerObjectNotFound { what: "agent" });
    }
    // `create` names a domain only the operator may have given this owner
    // (a pattern without a domain lets the agent create on such domains only).
    if scopes.contains(Scope::Create)
        && let Some(domain) = pattern.domain()
        && !may_create_on_domain(&owner, meta.domain_owner(&domain).await.map_err(|e| backend_error(&e))?.as_ref())
    {
        return Err(ApiError::DomainNotAssigned { domain: domain.to_string() });
    }
    let now = state.clock.now();
    let grant = Grant {
        id: GrantId::generate(&mut rand::rngs::OsRng),
        owner: owner.clone(),
        agent,
        pattern,
        scopes,
        created_at: now,
        expires_at: now + ttl,
        revoked_at: None,
    };
    let event = AuditEvent::ok(Actor::Owner(owner), ops::GRANT_CREATE, grant.id.as_str()).with_detail(json!({
        "owner": grant.owner,
        "agent": grant.agent,
        "inbox": grant.pattern.to_string(),
        "scopes": grant.scopes.to_string(),
        "expires_at": grant.expires_at,
        "approval": evidence,
    }));
    // An exact address that is not one of the owner's inboxes (another owner's,
    // or none) is NOT_FOUND from the store, like another owner's agent.
    let _receipt = meta.add_grant(&grant, &event).await.map_err(|e| match e {
        StoreError::NotFound { what } if what.starts_with("inbox ") => ApiError::OwnerObjectNotFound { what: "inbox" },
        e => write_error(e, "agent"),
    })?;
    Ok(grant)
}

/// List the owner's grants (owner approval required).
#[utoipa::path(
    get,
    path = "/v1/grants",
    tag = "owner",
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "The owner's grants, oldest first", body = [GrantView]),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_grants(State(state): State<ApiState>, approval: OwnerApproval) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let grants = meta.list_owner_grants(approval.owner()).await.map_err(|e| backend_error(&e))?;
    let now = state.clock.now();
    let views: Vec<GrantView> = grants.iter().map(|g| grant_view(g, now)).collect();
    Ok(Json(views).into_response())
}

/// Body of `PATCH /v1/grants/{id}`: what to change; at least one field.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeGrantRequest {
    /// New scopes, a subset of the current ones (a change only narrows).
    #[serde(default)]
    #[schema(value_type = Option<Vec<ScopeName>>, min_items = 1)]
    pub scopes: Option<Vec<String>>,
    /// New lifetime in seconds from now (the new expiry), at most 30 days.
    #[serde(default, deserialize_with = "crate::extract::optional_integer")]
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl: Option<i64>,
}

/// Change one of the owner's grants: narrow its scopes and/or move its expiry
/// within the next 30 days (owner approval required). Never widens it.
#[utoipa::path(
    patch,
    path = "/v1/grants/{id}",
    tag = "owner",
    params(("id" = String, Path, description = "The grant id (gr_…)")),
    request_body = ChangeGrantRequest,
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Changed", body = GrantView),
        (status = 400, description = "SCOPE_WIDENING, INVALID_TTL or INVALID_REQUEST", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such grant among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "GRANT_REVOKED, or CONFLICT (changed meanwhile)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send the body as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn change_grant(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    if !approval.json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body: ChangeGrantRequest = decode(&approval.body)?;
    let after = change_grant_as(&state, &approval.proof, &id, &body, approval.evidence()).await?;
    Ok(Json(grant_view(&after, state.clock.now())).into_response())
}

/// Narrows and/or moves the expiry of grant `id` of the owner who passed
/// `gate`, as `body` says (never widens it, never beyond 30 days from now);
/// `evidence` goes into the audit record.
pub(crate) async fn change_grant_as(
    state: &ApiState,
    gate: &impl agentkeys_approval::OwnerGate,
    id: &str,
    body: &ChangeGrantRequest,
    evidence: serde_json::Value,
) -> Result<Grant, ApiError> {
    let meta = store(state)?;
    let id: GrantId = id.parse().map_err(|_| ApiError::OwnerObjectNotFound { what: "grant" })?;
    let owner = gate.owner().clone();
    let scopes = body
        .scopes
        .as_ref()
        .map(|s| s.join(",").parse::<Scopes>().map_err(|e| field_error("scopes", e)))
        .transpose()?;
    let ttl = match body.ttl {
        Some(t) if t <= 0 => return Err(ApiError::InvalidTtl { requested: t }),
        Some(t) if t > MAX_GRANT_TTL_SECS => {
            return Err(field_error("ttl", format!("{t} s is over the maximum of {MAX_GRANT_TTL_SECS} s (30 days)")));
        }
        other => other,
    };
    let now = state.clock.now();
    // Another owner's grant answers exactly like a missing one.
    let before = meta
        .list_owner_grants(&owner)
        .await
        .map_err(|e| backend_error(&e))?
        .into_iter()
        .find(|g| g.id == id)
        .ok_or(ApiError::OwnerObjectNotFound { what: "grant" })?;
    let change = GrantChange { scopes, expires_at: ttl.map(|t| now + t) };
    let after = before.changed(&change, now).map_err(ApiError::GrantChange)?;
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::GRANT_CHANGE, id.as_str()).with_detail(json!({
        "owner": owner,
        "agent": after.agent,
        "scopes": after.scopes.to_string(),
        "expires_at": after.expires_at,
        "previous_scopes": before.scopes.to_string(),
        "previous_expires_at": before.expires_at,
        "approval": evidence,
    }));
    let _receipt = meta.change_owner_grant(&owner, &before, &after, &event).await.map_err(|e| match e {
        StoreError::NotFound { .. } => ApiError::OwnerObjectNotFound { what: "grant" },
        StoreError::Conflict { .. } => ApiError::Conflict,
        other => backend_error(&other),
    })?;
    Ok(after)
}

/// Answer of a revocation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    /// The grant or key id.
    pub id: String,
    /// Always `true`.
    pub revoked: bool,
}

/// Revoke one of the owner's grants (owner approval required).
#[utoipa::path(
    delete,
    path = "/v1/grants/{id}",
    tag = "owner",
    params(("id" = String, Path, description = "The grant id (gr_…)")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Revoked (revoking twice keeps the first time)", body = Revoked),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such grant among the owner's", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke_grant(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let id: GrantId = id.parse().map_err(|_| ApiError::OwnerObjectNotFound { what: "grant" })?;
    let owner = approval.owner().clone();
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::GRANT_REVOKE, id.as_str())
        .with_detail(json!({ "owner": owner, "approval": approval.evidence() }));
    let _receipt =
        meta.revoke_owner_grant(&owner, &id, state.clock.now(), &event).await.map_err(|e| write_error(e, "grant"))?;
    Ok(Json(Revoked { id: id.to_string(), revoked: true }).into_response())
}

/// Revoke a key of one of the owner's agents (owner approval required).
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "owner",
    params(("id" = String, Path, description = "The key id (key_…)")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Revoked (revoking twice keeps the first time)", body = Revoked),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key among the owner's agents'", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke_key(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let id: KeyId = id.parse().map_err(|_| ApiError::OwnerObjectNotFound { what: "key" })?;
    let owner = approval.owner().clone();
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::KEY_REVOKE, id.as_str())
        .with_detail(json!({ "owner": owner, "approval": approval.evidence() }));
    let _receipt =
        meta.revoke_owner_key(&owner, &id, state.clock.now(), &event).await.map_err(|e| write_error(e, "key"))?;
    Ok(Json(Revoked { id: id.to_string(), revoked: true }).into_response())
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records with a larger seq (default 0).
    pub after: Option<u64>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<u32>,
}

impl AuditQuery {
    /// Parses `after=…&limit=…` (both optional, decimal); anything else is a 400
    /// naming the parameter.
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut out = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "after" => out.after = Some(value.parse().map_err(|_| field_error("after", "not a sequence number"))?),
                "limit" => out.limit = Some(value.parse().map_err(|_| field_error("limit", "not a number"))?),
                other => return Err(field_error(other, "unknown query parameter (use after and limit)")),
            }
        }
        Ok(out)
    }
}

/// A page of audit records.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The records (`seq`, `ts`, `actor`, `operation`, `subject`, `outcome`, `detail`, hex `prev_hash` and `hash`).
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<serde_json::Value>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<u64>,
}

/// Audit records that concern the owner (owner approval required).
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "owner",
    params(AuditQuery),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Records in seq order", body = AuditPage),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn audit(
    State(state): State<ApiState>,
    uri: Uri,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let query = AuditQuery::parse(uri.query().unwrap_or(""))?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(AUDIT_PAGE_DEFAULT);
    if limit == 0 || limit > AUDIT_PAGE_MAX {
        return Err(field_error("limit", format!("must be 1–{AUDIT_PAGE_MAX}")));
    }
    let records = meta.audit_list_for_owner(approval.owner(), after, limit).await.map_err(|e| backend_error(&e))?;
    let next_after = (records.len() == limit as usize).then(|| records.last().map(|r| r.seq)).flatten();
    let records = records
        .iter()
        .map(|r| {
            json!({
                "seq": r.seq, "ts": r.ts, "actor": r.actor.to_string(), "operation": r.operation,
                "subject": r.subject, "outcome": r.outcome.as_str(), "detail": r.detail,
                "prev_hash": agentkeys_audit::hash_to_hex(&r.prev_hash), "hash": agentkeys_audit::hash_to_hex(&r.hash),
            })
        })
        .collect();
    Ok(Json(AuditPage { records, next_after }).into_response())
}
