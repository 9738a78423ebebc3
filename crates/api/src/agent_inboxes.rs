//! `GET /v1/agent/inboxes`: which inboxes the calling agent's active grants
//! cover, so the daemon can offer them (`list_inboxes`). An exact grant names its
//! inbox; a prefix or domain grant covers the existing inboxes of the agent's
//! owner that match. Only the agent's own owner's inboxes are ever listed, and an
//! exact grant for an address that does not exist (or is another owner's) lists
//! nothing, so the answer reveals no other owner's inboxes.

use std::collections::BTreeMap;

use agentkeys_core::{AgentId, Grant, InboxStatus, OwnerId, Scope, UnixTime};
use agentkeys_store::InboxRecord;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::AgentBearer;

/// One inbox an agent may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentInbox {
    /// The address (also the inbox id).
    pub address: String,
    /// The scopes the agent's active grants give it on this inbox (`read`,
    /// `send`, `admin`), the union over every covering grant.
    pub scopes: Vec<String>,
    /// When the last of the covering grants expires, seconds since the Unix epoch.
    pub grant_expires_at: UnixTime,
    /// `active`, `disabled` or `suspended`: only an active inbox takes and sends mail.
    pub status: String,
}

/// Body of `GET /v1/agent/inboxes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentInboxes {
    /// The inboxes, by address.
    pub inboxes: Vec<AgentInbox>,
}

/// The inboxes of `owner` (from `inboxes`) that an active grant `owner` gave
/// `agent` covers, with the union of the covering grants' scopes and the latest
/// of their expiries. Inboxes of another owner are skipped whatever the grants say.
pub fn covered_inboxes(
    grants: &[Grant],
    inboxes: &[InboxRecord],
    agent: &AgentId,
    owner: &OwnerId,
    now: UnixTime,
) -> Vec<AgentInbox> {
    let active: Vec<&Grant> = grants.iter().filter(|g| g.held_by(agent, owner) && g.is_active(now)).collect();
    let mut out: BTreeMap<&str, AgentInbox> = BTreeMap::new();
    for inbox in inboxes.iter().filter(|i| &i.owner == owner) {
        let covering: Vec<&&Grant> = active.iter().filter(|g| g.covers(&inbox.address, &inbox.owner)).collect();
        let Some(expires) = covering.iter().map(|g| g.expires_at).max() else { continue };
        let scopes: Vec<String> = [Scope::Read, Scope::Send, Scope::Admin]
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
    let verified = state.broker.authenticate(bearer.key()).await?;
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
        InboxRecord { address: addr.parse().unwrap(), owner: owner(o), agent: agent(o), status, created_at: 0 }
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
