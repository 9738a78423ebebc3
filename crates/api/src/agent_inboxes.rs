//! The calling agent's inboxes (agent key).
//!
//! `GET /v1/agent/inboxes`: which inboxes the calling agent's active grants
//! cover, so the daemon can offer them (`list_inboxes`). An exact grant names its
//! inbox; a prefix or domain grant covers the existing inboxes of the agent's
//! owner that match. Only the agent's own owner's inboxes are ever listed, and an
//! exact grant for an address that does not exist (or is another owner's) lists
//! nothing, so the answer reveals no other owner's inboxes. Expired inboxes are
//! not listed.
//!
//! `POST /v1/agent/inboxes`: a new inbox for the agent itself, under a grant
//! with the `create` scope whose pattern covers the address
//! ([`TokenBroker::authorize_create`](agentkeys_broker::TokenBroker::authorize_create)),
//! owned by the grant's owner, expiring no later than that grant
//! ([`agentkeys_core::agent_inbox_expiry`]); audited `inbox.create` with the
//! agent as actor.

use std::collections::BTreeMap;

use agentkeys_audit::{Actor, AuditEvent, ops};
use agentkeys_core::{
    Address, AgentId, Domain, Grant, InboxStatus, OwnerId, Scope, UnixTime, agent_inbox_expiry, may_create_on_domain,
};
use agentkeys_store::{InboxRecord, StoreError};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::{AgentBearer, ApiJson};

/// One inbox an agent may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentInbox {
    /// The address (also the inbox id).
    pub address: String,
    /// The scopes the agent's active grants give it on this inbox (`read`,
    /// `send`, `admin`, `create`), the union over every covering grant.
    pub scopes: Vec<String>,
    /// When the last of the covering grants expires, seconds since the Unix epoch.
    pub grant_expires_at: UnixTime,
    /// `active`, `disabled` or `suspended`: only an active inbox takes and sends mail.
    pub status: String,
    /// When the inbox itself expires (seconds since the Unix epoch); absent for
    /// an inbox without expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<UnixTime>,
}

/// Body of `GET /v1/agent/inboxes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentInboxes {
    /// The inboxes, by address.
    pub inboxes: Vec<AgentInbox>,
}

/// The inboxes of `owner` (from `inboxes`) that an active grant `owner` gave
/// `agent` covers, with the union of the covering grants' scopes and the latest
/// of their expiries. Inboxes of another owner, and expired ones, are skipped
/// whatever the grants say.
pub fn covered_inboxes(
    grants: &[Grant],
    inboxes: &[InboxRecord],
    agent: &AgentId,
    owner: &OwnerId,
    now: UnixTime,
) -> Vec<AgentInbox> {
    let active: Vec<&Grant> = grants.iter().filter(|g| g.held_by(agent, owner) && g.is_active(now)).collect();
    let mut out: BTreeMap<&str, AgentInbox> = BTreeMap::new();
    for inbox in inboxes.iter().filter(|i| &i.owner == owner && !i.is_expired(now)) {
        let covering: Vec<&&Grant> = active.iter().filter(|g| g.covers(&inbox.address, &inbox.owner)).collect();
        let Some(expires) = covering.iter().map(|g| g.expires_at).max() else { continue };
        let scopes: Vec<String> = Scope::ALL
            .into_iter()
            .filter(|s| covering.iter().any(|g| g.scopes.contains(*s)))
            .map(|s| s.as_str().to_owned())
            .collect();
        let status = match inbox.status {
            InboxStatus::Active => "active",
            InboxStatus::Disabled => "disabled",
            InboxStatus::Suspended => "suspended",
        };
        out.insert(
            inbox.address.as_str(),
            AgentInbox {
                address: inbox.address.as_str().to_owned(),
                scopes,
                grant_expires_at: expires,
                status: status.to_owned(),
                expires_at: inbox.expires_at,
            },
        );
    }
    out.into_values().collect()
}

/// The inboxes the agent's active grants cover.
#[utoipa::path(
    get,
    path = "/v1/agent/inboxes",
    tag = "credentials",
    security(("agent_key" = [])),
    responses(
        (status = 200, description = "The inboxes this agent's active grants cover (its owner's only)", body = AgentInboxes),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(State(state): State<ApiState>, bearer: AgentBearer) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    let meta = state.meta.as_ref().ok_or_else(|| {
        tracing::error!("agent inbox listing called on an API without a metadata store");
        ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
    })?;
    let unavailable = |e: agentkeys_store::StoreError| {
        tracing::error!(error = %e, "agent inbox listing failed in the store");
        ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
    };
    let grants = meta.list_grants(Some(verified.agent())).await.map_err(unavailable)?;
    let inboxes = meta.list_inboxes(Some(verified.owner())).await.map_err(unavailable)?;
    let now = state.clock.now();
    let body = AgentInboxes { inboxes: covered_inboxes(&grants, &inboxes, verified.agent(), verified.owner(), now) };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Body of `POST /v1/agent/inboxes`. Every field is optional: `{}` asks for
/// a fresh name under the agent's `create` grant, for as long as it allows.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentInboxRequest {
    /// The local part (`signup-github`), by the same rules as `inbox create`:
    /// 1-64 of `a-z 0-9 . _ -`, no dot first, last or twice in a row, without
    /// the subaddress separator. Default: the grant's prefix (`signup-`, or
    /// `bot-` for `*@domain`) and 10 random characters.
    #[serde(default)]
    #[schema(pattern = r#"^[A-Za-z0-9_-]{1,32}(?:\.[A-Za-z0-9_-]{1,15}){0,2}$"#, example = "signup-github")]
    pub name: Option<String>,
    /// A domain this server hosts. Default: the domain the agent's `create`
    /// grants name, when they name exactly one.
    #[serde(default)]
    #[schema(pattern = r#"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){0,2}[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"#, example = "agents.example.com")]
    pub domain: Option<String>,
    /// Lifetime in seconds. It may not end after the grant that allows the
    /// inbox nor be over 30 days (refused, not clamped). Default: as long as
    /// both allow.
    #[serde(default, deserialize_with = "crate::extract::optional_integer")]
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub expires_in: Option<i64>,
}

/// Answer of `POST /v1/agent/inboxes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedAgentInbox {
    /// The new address: give it to a service as its sign-up address.
    pub address: String,
    /// When it stops receiving and is removed with its mail, seconds since the Unix epoch.
    pub expires_at: UnixTime,
    /// The grant that allowed it (its pattern covers the address).
    pub grant_id: String,
    /// When that grant expires, seconds since the Unix epoch.
    pub grant_expires_at: UnixTime,
}

fn field(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidRequest { field: Some(name.to_owned()), detail: format!("{name}: {detail}") }
}

/// The address an agent's create request names: `name` at `domain`; without a
/// domain, the one domain the agent's unrevoked `create` grants (`creatable`,
/// longest-lasting first) name; without a name, a fresh one under the first of
/// those grants that can name one in the domain, else `bot-<random>` (which no
/// grant may cover: then the authorization refuses it). Whether a grant allows
/// the address is decided afterwards, by the one coverage rule.
fn new_address(
    request: &CreateAgentInboxRequest,
    creatable: &[&Grant],
    rng: &mut impl rand::RngCore,
) -> Result<Address, ApiError> {
    let domain: Domain = match &request.domain {
        Some(d) => d.parse().map_err(|e| field("domain", e))?,
        None => {
            let named: std::collections::BTreeSet<Domain> = creatable.iter().filter_map(|g| g.pattern.domain()).collect();
            let mut named = named.into_iter();
            match (named.next(), named.next()) {
                (Some(only), None) => only,
                (None, _) => {
                    return Err(field(
                        "domain",
                        "give the domain: no create grant of this agent names one (ask the owner for a grant such as \
                         signup-*@<domain> with the create scope)",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(field("domain", "give the domain: this agent's create grants name several"));
                }
            }
        }
    };
    match &request.name {
        Some(name) => Address::new(name, &domain).map_err(|e| field("name", e)),
        None => Ok(creatable
            .iter()
            .find_map(|g| g.pattern.random_address(rng, Some(&domain)))
            .unwrap_or_else(|| Address::random_bot(rng, &domain))),
    }
}

/// Create an inbox for this agent under its `create` grant. It receives mail
/// at once and is removed with its mail at `expires_at`.
#[utoipa::path(
    post,
    path = "/v1/agent/inboxes",
    tag = "credentials",
    request_body = CreateAgentInboxRequest,
    security(("agent_key" = [])),
    responses(
        (status = 201, description = "Created: the address and when it expires", body = CreatedAgentInbox),
        (status = 400, description = "INVALID_REQUEST (name, domain, or a domain this server does not host) or INVALID_EXPIRY (expires_in not positive, after the grant's expiry, or over 30 days)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "NO_GRANT: no active grant of this agent with the create scope covers the address; GRANT_EXPIRED: the covering ones have expired; DOMAIN_NOT_ASSIGNED: the domain is not assigned to the grant's owner", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "ADDRESS_TAKEN: an inbox with this address exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE or AUDIT_UNAVAILABLE; nothing was created", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create(
    State(state): State<ApiState>,
    bearer: AgentBearer,
    body: Result<ApiJson<CreateAgentInboxRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let verified = crate::key_use::authenticate(&state, bearer.key()).await?;
    let ApiJson(request) = body?;
    let meta = state.meta.as_ref().ok_or_else(|| {
        tracing::error!("agent inbox creation called on an API without a metadata store");
        ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
    })?;
    let unavailable = |e: StoreError| {
        tracing::error!(error = %e, "agent inbox creation failed in the store");
        ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
    };
    let now = state.clock.now();
    // Expired ones included, so their domain and prefix still name the address
    // and the authorization answers GRANT_EXPIRED rather than a 400.
    let grants = meta.list_grants(Some(verified.agent())).await.map_err(unavailable)?;
    let mut creatable: Vec<&Grant> = grants
        .iter()
        .filter(|g| {
            g.held_by(verified.agent(), verified.owner()) && g.revoked_at.is_none() && g.scopes.contains(Scope::Create)
        })
        .collect();
    creatable.sort_by_key(|g| std::cmp::Reverse(g.expires_at));
    let address = new_address(&request, &creatable, &mut rand::thread_rng())?;
    state.subaddressing.check_new_inbox(&address).map_err(|e| field("name", e))?;
    if !meta.is_hosted_domain(address.domain()).await.map_err(unavailable)? {
        return Err(field("domain", format!("{} is not a domain this server hosts", address.domain())));
    }
    // The one coverage rule, audited when it refuses.
    let authorized = state.broker.authorize_create(&verified, &address).await?;
    // And only on a domain the operator assigned to the grant's owner (a grant
    // made before the domain was reassigned or shared again creates nothing).
    let domain = address.domain().parse::<Domain>().map_err(|e| field("domain", e))?;
    let domain_owner = meta.domain_owner(&domain).await.map_err(unavailable)?;
    if !may_create_on_domain(authorized.owner(), domain_owner.as_ref()) {
        tracing::info!(agent = %authorized.agent(), %domain, "inbox creation refused: the domain is not assigned to the grant's owner");
        return Err(ApiError::DomainNotAssigned { domain: domain.to_string() });
    }
    let expires_at =
        agent_inbox_expiry(request.expires_in, authorized.grant_expires_at(), now).map_err(ApiError::InboxExpiry)?;
    let rec = InboxRecord {
        address: address.clone(),
        owner: authorized.owner().clone(),
        agent: authorized.agent().clone(),
        status: InboxStatus::Active,
        created_at: now,
        expires_at: Some(expires_at),
    };
    let event = AuditEvent::ok(Actor::Agent(rec.agent.clone()), ops::INBOX_CREATE, address.as_str()).with_detail(json!({
        "owner": rec.owner,
        "agent": rec.agent,
        "status": rec.status,
        "expires_at": expires_at,
        "grant_id": authorized.grant_id(),
        "key_id": authorized.key_id(),
    }));
    let _receipt = meta.create_granted_inbox(&rec, authorized.grant_id(), &event).await.map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::AddressTaken,
        // The domain stopped being hosted since the check above.
        StoreError::Invalid(detail) => field("domain", detail),
        other => unavailable(other),
    })?;
    let body = CreatedAgentInbox {
        address: address.to_string(),
        expires_at,
        grant_id: authorized.grant_id().to_string(),
        grant_expires_at: authorized.grant_expires_at(),
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkeys_core::{Address, GrantId, InboxPattern, Scopes};

    fn owner(n: u8) -> OwnerId {
        format!("0x{}", format!("{n:02x}").repeat(20)).parse().unwrap()
    }
    fn agent(n: u8) -> AgentId {
        format!("0x{}", format!("{:02x}", n + 100).repeat(20)).parse().unwrap()
    }
    fn inbox(addr: &str, o: u8, status: InboxStatus) -> InboxRecord {
        InboxRecord { address: addr.parse().unwrap(), owner: owner(o), agent: agent(o), status, created_at: 0, expires_at: None }
    }
    fn grant(id: &str, o: u8, a: u8, pattern: &str, scopes: &str, expires_at: i64, revoked: bool) -> Grant {
        Grant {
            id: { let _ = id; GrantId::generate(&mut rand::rngs::OsRng) },
            owner: owner(o),
            agent: agent(a),
            pattern: pattern.parse::<InboxPattern>().unwrap(),
            scopes: scopes.parse::<Scopes>().unwrap(),
            created_at: 0,
            expires_at,
            revoked_at: revoked.then_some(1),
        }
    }

    #[test]
    fn coverage_unions_scopes_and_skips_inactive_and_foreign() {
        let inboxes = vec![
            inbox("a@x.test", 1, InboxStatus::Active),
            inbox("b-1@x.test", 1, InboxStatus::Disabled),
            inbox("c@x.test", 1, InboxStatus::Active),
            inbox("z@x.test", 2, InboxStatus::Active),
        ];
        let grants = vec![
            grant("gr_1", 1, 1, "a@x.test", "read", 100, false),
            grant("gr_2", 1, 1, "*@x.test", "send", 200, false),
            grant("gr_3", 1, 1, "c@x.test", "admin", 300, true),
            grant("gr_4", 1, 1, "c@x.test", "admin", 5, false),
            // another agent's grant does not count
            grant("gr_5", 1, 2, "c@x.test", "read", 900, false),
        ];
        let got = covered_inboxes(&grants, &inboxes, &agent(1), &owner(1), 10);
        let view: Vec<(&str, Vec<&str>, i64, &str)> = got
            .iter()
            .map(|i| (i.address.as_str(), i.scopes.iter().map(String::as_str).collect(), i.grant_expires_at, i.status.as_str()))
            .collect();
        assert_eq!(
            view,
            vec![
                ("a@x.test", vec!["read", "send"], 200, "active"),
                ("b-1@x.test", vec!["send"], 200, "disabled"),
                ("c@x.test", vec!["send"], 200, "active"),
            ]
        );
        // z@x.test is another owner's: never listed, even under a matching pattern.
        assert!(got.iter().all(|i| i.address != "z@x.test"));
        let _: Address = "z@x.test".parse().unwrap();
    }

    #[test]
    fn no_active_grant_lists_nothing() {
        let inboxes = vec![inbox("a@x.test", 1, InboxStatus::Active)];
        let grants = vec![grant("gr_1", 1, 1, "a@x.test", "read", 100, false)];
        assert!(covered_inboxes(&grants, &inboxes, &agent(1), &owner(1), 100).is_empty());
        assert!(covered_inboxes(&[], &inboxes, &agent(1), &owner(1), 0).is_empty());
    }
}
