//! An inbox's allow and block lists (issue 13 §2; rules in
//! `agentkeys_core::policy`, enforcement in `agentkeys_submission::guard` and
//! the agent's read path).
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/inboxes/{address}/policy` | the policy: the inbox's agent (read capability) or its owner (owner signature) |
//! | PATCH | `/v1/inboxes/{address}/policy` | change lists given in the body, keep the others (owner signature, audited `inbox.policy`); an agent with `admin` on the inbox may tighten it (agent key) |
//!
//! Another owner's inbox answers 404 exactly like a missing one; a capability
//! for another inbox answers 404 like the message routes.

use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::Address;
use agentkeys_core::policy::{AddressPattern, InboxPolicy, Unauthenticated};
use agentkeys_store::StoreError;
use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::{AgentBearer, ApiJson, decode};
use agentkeys_broker::scope;
use crate::owner::{OwnerApproval, backend_error, field_error, store};

/// The audit operation of a policy change.
pub const OP_INBOX_POLICY: &str = "inbox.policy";

/// An inbox's policy as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    /// The inbox.
    pub inbox: String,
    /// Only mail whose `From:` matches one of these reaches the inbox (empty: any).
    pub receive_allow: Vec<String>,
    /// Mail whose `From:` or envelope sender matches one of these is refused (`550 5.7.1`).
    pub receive_block: Vec<String>,
    /// The inbox may send only to recipients matching one of these (empty: any).
    pub send_allow: Vec<String>,
    /// The inbox may never send to recipients matching one of these.
    pub send_block: Vec<String>,
    /// `show`, `label` or `hide`: what the agent is shown of unauthenticated mail.
    pub unauthenticated: String,
}

impl PolicyView {
    fn new(inbox: &Address, policy: &InboxPolicy) -> Self {
        let list = |l: &[AddressPattern]| l.iter().map(ToString::to_string).collect();
        Self {
            inbox: inbox.to_string(),
            receive_allow: list(&policy.receive_allow),
            receive_block: list(&policy.receive_block),
            send_allow: list(&policy.send_allow),
            send_block: list(&policy.send_block),
            unauthenticated: policy.unauthenticated.as_str().to_owned(),
        }
    }
}

/// A change of an inbox's policy: each list given replaces the stored one
/// (`[]` empties it), lists not given are kept. A pattern is an address
/// (exact) or a domain (the domain and its subdomains, never a substring).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    /// New receive allow list.
    pub receive_allow: Option<Vec<String>>,
    /// New receive block list.
    pub receive_block: Option<Vec<String>>,
    /// New send allow list.
    pub send_allow: Option<Vec<String>>,
    /// New send block list.
    pub send_block: Option<Vec<String>>,
    /// `show`, `label` or `hide`.
    pub unauthenticated: Option<String>,
}

impl PolicyChange {
    /// The policy after this change, or the field that is wrong.
    pub fn apply(&self, mut policy: InboxPolicy) -> Result<InboxPolicy, ApiError> {
        let parse = |field: &'static str, list: &[String]| -> Result<Vec<AddressPattern>, ApiError> {
            let mut out: Vec<AddressPattern> =
                list.iter().map(|p| p.parse().map_err(|e| field_error(field, e))).collect::<Result<_, _>>()?;
            out.sort_by_key(ToString::to_string);
            out.dedup();
            Ok(out)
        };
        if let Some(l) = &self.receive_allow {
            policy.receive_allow = parse("receive_allow", l)?;
        }
        if let Some(l) = &self.receive_block {
            policy.receive_block = parse("receive_block", l)?;
        }
        if let Some(l) = &self.send_allow {
            policy.send_allow = parse("send_allow", l)?;
        }
        if let Some(l) = &self.send_block {
            policy.send_block = parse("send_block", l)?;
        }
        if let Some(u) = &self.unauthenticated {
            policy.unauthenticated = u.parse::<Unauthenticated>().map_err(|e| field_error("unauthenticated", e))?;
        }
        policy.validate().map_err(|e| ApiError::InvalidRequest { field: None, detail: e })?;
        Ok(policy)
    }
}

fn inbox_path(address: &str) -> Result<Address, ApiError> {
    address.parse().map_err(|_| ApiError::OwnerObjectNotFound { what: "inbox" })
}

fn not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { .. } => ApiError::OwnerObjectNotFound { what: "inbox" },
        other => backend_error(&other),
    }
}

/// The policy of an inbox, for its agent (read capability) or its owner.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{address}/policy",
    tag = "policy",
    params(("address" = String, Path, description = "The inbox")),
    security(("read_capability" = []), ("owner_signature" = [])),
    responses(
        (status = 200, description = "The inbox's lists (empty lists: no restriction)", body = PolicyView),
        (status = 401, description = "INVALID_CAPABILITY, or the owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: not the capability's inbox, or not one of the owner's inboxes (one answer for every reason)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_policy(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let by_owner = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AgentKeys-Owner "));
    let meta = store(&state)?.clone();
    if by_owner {
        let approval = OwnerApproval::from_request(request, &state).await?;
        let inbox = inbox_path(&address)?;
        let policy = meta.owner_inbox_policy(approval.owner(), &inbox).await.map_err(not_found)?;
        return Ok(Json(PolicyView::new(&inbox, &policy)).into_response());
    }
    let bearer = crate::messages::CapabilityBearer::parse(request.headers()).map_err(|reason| {
        tracing::info!(reason, "read capability refused");
        ApiError::InvalidCapability
    })?;
    let capability = crate::messages::authorize(&state, &bearer, &address)?;
    let policy = meta.inbox_policy(capability.inbox()).await.map_err(|e| backend_error(&e))?;
    Ok(Json(PolicyView::new(capability.inbox(), &policy)).into_response())
}

/// Change an inbox's allow/block lists (owner approval; or an agent key whose
/// grant has `admin` on the inbox, tightening only; audited).
#[utoipa::path(
    patch,
    path = "/v1/inboxes/{address}/policy",
    tag = "policy",
    params(("address" = String, Path, description = "One of the owner's inboxes")),
    request_body = PolicyChange,
    security(("owner_signature" = []), ("agent_key" = [])),
    responses(
        (status = 200, description = "The policy now in force", body = PolicyView),
        (status = 400, description = "INVALID_REQUEST: a pattern that is neither an address nor a domain (field names the list), an unknown unauthenticated mode, or a list over its size limit", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused, or INVALID_KEY: the agent key refused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "NO_GRANT / GRANT_EXPIRED: the agent holds no active admin grant on the inbox; POLICY_OWNER_ONLY: the agent's change would loosen a list (field names it)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such inbox among the owner's (another owner's inbox answers the same)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE or AUDIT_UNAVAILABLE: nothing changed; retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn change_policy(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    if let Ok(bearer) = AgentBearer::parse(request.headers()) {
        return change_by_agent(state, address, bearer, request).await;
    }
    let approval = OwnerApproval::from_request(request, &state).await?;
    let meta = store(&state)?;
    if !approval.json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let change: PolicyChange = decode(&approval.body)?;
    let owner = approval.owner().clone();
    let inbox = inbox_path(&address)?;
    let current = meta.owner_inbox_policy(&owner, &inbox).await.map_err(not_found)?;
    let policy = change.apply(current)?;
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), OP_INBOX_POLICY, inbox.as_str())
        .with_detail(change_detail(&owner, &policy, json!({ "approval": approval.evidence() }))?);
    store_policy(&state, &owner, &inbox, &policy, &event).await
}

/// An agent tightens its own inbox's policy: its key, an active grant with
/// `admin` on the inbox, and a change that refuses at least everything the
/// policy refused ([`InboxPolicy::tightens`]); loosening is the owner's.
async fn change_by_agent(state: ApiState, address: String, bearer: AgentBearer, request: Request) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    let ApiJson(change) = ApiJson::<PolicyChange>::from_request(request, &state).await?;
    let inbox = inbox_path(&address)?;
    let authorized = state.broker.authorize(&verified, &inbox, scope::Admin).await?;
    let meta = store(&state)?;
    let owner = verified.owner().clone();
    let current = meta.owner_inbox_policy(&owner, &inbox).await.map_err(not_found)?;
    let policy = change.apply(current.clone())?;
    policy.tightens(&current).map_err(|list| ApiError::PolicyOwnerOnly { list: list.as_str() })?;
    let event = AuditEvent::ok(Actor::Agent(verified.agent().clone()), OP_INBOX_POLICY, inbox.as_str())
        .with_detail(change_detail(&owner, &policy, json!({ "grant": authorized.grant_id() }))?);
    store_policy(&state, &owner, &inbox, &policy, &event).await
}

/// The audit detail of a policy change. Patterns may name third parties'
/// addresses: the record carries sizes and a digest of the policy, never the
/// addresses (DESIGN.md §7); `by` says what allowed the change.
fn change_detail(owner: &agentkeys_core::OwnerId, policy: &InboxPolicy, by: serde_json::Value) -> Result<serde_json::Value, ApiError> {
    let encoded = serde_json::to_vec(policy).map_err(|_| ApiError::Internal)?;
    let digest: String = Sha256::digest(&encoded).iter().map(|b| format!("{b:02x}")).collect();
    let mut detail = json!({
        "owner": owner,
        "receive_allow": policy.receive_allow.len(),
        "receive_block": policy.receive_block.len(),
        "send_allow": policy.send_allow.len(),
        "send_block": policy.send_block.len(),
        "unauthenticated": policy.unauthenticated.as_str(),
        "policy_sha256": digest,
    });
    if let (Some(d), Some(b)) = (detail.as_object_mut(), by.as_object()) {
        d.extend(b.clone());
    }
    Ok(detail)
}

async fn store_policy(
    state: &ApiState,
    owner: &agentkeys_core::OwnerId,
    inbox: &Address,
    policy: &InboxPolicy,
    event: &AuditEvent,
) -> Result<Response, ApiError> {
    let meta = store(state)?;
    let _receipt = meta
        .set_inbox_policy(owner, inbox, policy, state.clock.now(), event)
        .await
        .map_err(|e| match e {
            StoreError::Invalid(detail) => ApiError::InvalidRequest { field: None, detail },
            other => not_found(other),
        })?;
    Ok(Json(PolicyView::new(inbox, policy)).into_response())
}
