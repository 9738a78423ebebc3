//! Gated console actions: each needs the session, its CSRF token and a fresh
//! WebAuthn assertion over a challenge bound to exactly this request
//! ([`super::action_hash`]); `/console/gate` issues that challenge.

use agentkeys_approval::{OwnerGate as _, PasskeyVerified};
use agentkeys_audit::{Actor, AuditEvent, ops};
use agentkeys_core::{AgentId, GrantId, KeyId};
use agentkeys_store::StoreError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use webauthn_rs::prelude::PublicKeyCredential;

use super::auth::{put_challenge, save_counter, stored, take_challenge};
use super::{ConsoleError, FormFields, Session, action_hash, config, meta, unavailable};
use crate::ApiState;
use crate::error::ApiError;

/// Whether `path` is a gated action's path (the gate issues challenges for nothing else).
pub(crate) fn is_gated(path: &str) -> bool {
    if path == "/console/pairings/approve"
        || path == "/console/grants"
        || path == "/console/notifications"
        || path == "/console/inboxes"
    {
        return true;
    }
    let Some(rest) = path.strip_prefix("/console/") else { return false };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(parts.as_slice(), ["agents", id, "stop"] | ["pairings", id, "deny"] | ["grants", id, "revoke" | "change"] | ["keys", id, "revoke"] | ["inboxes", id, "disable" | "enable"] | ["grant-requests", id, "approve" | "deny"] | ["review", id, "approve" | "reject"] if !id.is_empty())
}

const NEEDS_PASSKEY: &str = "This action needs a fresh passkey check made for it. Try again from the console page.";

/// `POST /console/gate`: a challenge bound to the action the form describes
/// (`path` plus its fields), for the signed-in owner's passkeys.
pub(crate) async fn gate(State(state): State<ApiState>, session: Session, body: Bytes) -> Result<Response, ConsoleError> {
    let console = config(&state)?;
    let meta = meta(&state)?;
    let mut fields = FormFields::parse(&body);
    session.check_csrf(fields.get("csrf"))?;
    fields.single_valued()?;
    let path = fields.get("path").unwrap_or("").to_owned();
    if !is_gated(&path) {
        return Err(ConsoleError::BadRequest("path: not a gated console action".to_owned()));
    }
    fields.0.retain(|(k, _)| k != "path");
    let action = action_hash(&session.owner, &path, &fields);
    let passkeys = meta.list_passkeys(&session.owner).await.map_err(|e| unavailable(&e))?;
    let (options, pending) = console.gate.begin_action(&action, &stored(&passkeys)).map_err(|e| {
        tracing::info!(error = %e, "console action challenge not issued");
        ConsoleError::Forbidden("No passkey is registered for you.")
    })?;
    let challenge = put_challenge(meta.as_ref(), &session.owner, pending, state.clock.now()).await?;
    Ok(Json(json!({ "challenge": challenge, "options": options })).into_response())
}

/// How the owner approved a console action: a passkey assertion, or a mailed
/// code ([`super::email_gate`]), each for exactly this request.
#[derive(Debug)]
pub(crate) enum ConsoleProof {
    Passkey(PasskeyVerified),
    EmailCode(super::email_gate::EmailCodeVerified),
}

impl agentkeys_approval::OwnerGate for ConsoleProof {
    fn owner(&self) -> &agentkeys_core::OwnerId {
        match self {
            Self::Passkey(p) => p.owner(),
            Self::EmailCode(p) => p.owner(),
        }
    }

    fn gate(&self) -> agentkeys_approval::Gate {
        match self {
            Self::Passkey(p) => p.gate(),
            Self::EmailCode(p) => p.gate(),
        }
    }
}

/// Checks the CSRF token and the approval for exactly this request: the
/// mailed code named by `email_code_id` if there is one, else the passkey
/// assertion. The proof and the form.
pub(crate) async fn verified(
    state: &ApiState,
    session: &Session,
    uri: &Uri,
    body: &Bytes,
) -> Result<(ConsoleProof, FormFields), ConsoleError> {
    let console = config(state)?;
    let meta = meta(state)?;
    let fields = FormFields::parse(body);
    session.check_csrf(fields.get("csrf"))?;
    fields.single_valued()?;
    let action = action_hash(&session.owner, uri.path(), &fields);
    if let Some(id) = fields.get("email_code_id").filter(|c| !c.is_empty()) {
        let proof = super::email_gate::check(state, session, &action, id, fields.get("email_code")).await?;
        return Ok((ConsoleProof::EmailCode(proof), fields));
    }
    let challenge = fields.get("challenge").filter(|c| !c.is_empty()).ok_or(ConsoleError::Forbidden(NEEDS_PASSKEY))?;
    let assertion: PublicKeyCredential = fields
        .get("assertion")
        .and_then(|a| serde_json::from_str(a).ok())
        .ok_or(ConsoleError::Forbidden(NEEDS_PASSKEY))?;
    let now = state.clock.now();
    let pending = take_challenge(meta.as_ref(), challenge, Some(&session.owner), now)
        .await?
        .ok_or(ConsoleError::Forbidden(NEEDS_PASSKEY))?;
    let passkeys = meta.list_passkeys(&session.owner).await.map_err(|e| unavailable(&e))?;
    let proof = console.gate.finish_action(&pending, &session.owner, &action, &assertion, &stored(&passkeys)).map_err(|e| {
        tracing::info!(error = %e, path = uri.path(), "console action refused");
        ConsoleError::Forbidden(NEEDS_PASSKEY)
    })?;
    save_counter(meta.as_ref(), &session.owner, &proof, now).await?;
    Ok((ConsoleProof::Passkey(proof), fields))
}

/// The audit detail that ties a change to the approval that allowed it.
pub(crate) fn evidence(proof: &ConsoleProof) -> serde_json::Value {
    match proof {
        ConsoleProof::Passkey(p) => json!({ "gate": p.gate().as_str(), "credential": p.credential_id() }),
        ConsoleProof::EmailCode(p) => json!({ "gate": p.gate().as_str(), "code": p.code_id() }),
    }
}

fn done(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

fn not_found_or_unavailable(e: StoreError) -> ConsoleError {
    match e {
        StoreError::NotFound { .. } => ConsoleError::NotFound,
        other => unavailable(&other),
    }
}

/// `POST /console/pairings/approve`: the pair code and the 6 digits the agent shows.
pub(crate) async fn approve_pairing(
    State(state): State<ApiState>,
    session: Session,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, fields) = verified(&state, &session, &uri, &body).await?;
    let code = fields.get("pair_code").unwrap_or("");
    let confirmation = fields.get("confirmation").unwrap_or("");
    match crate::pairing::approve_as(&state, code, confirmation, &proof, evidence(&proof)).await {
        Ok(_) => Ok(done("/console/agents?done=paired")),
        Err(ApiError::Pairing(agentkeys_approval::PairingError::ConfirmationMismatch)) => Err(ConsoleError::BadRequest(format!(
            "The 6 digits do not match the ones the agent shows. Nothing was approved. \
             A request takes at most {} tries of its digits.",
            agentkeys_approval::MAX_CONFIRMATION_TRIES
        ))),
        Err(ApiError::Pairing(agentkeys_approval::PairingError::ConfirmationLocked)) => Err(ConsoleError::BadRequest(
            "Too many wrong tries of the 6 digits: this request is locked. The agent must pair again.".to_owned(),
        )),
        Err(ApiError::Pairing(agentkeys_approval::PairingError::Expired)) => {
            Err(ConsoleError::BadRequest("This pairing request expired; pair again.".to_owned()))
        }
        Err(ApiError::Pairing(agentkeys_approval::PairingError::AlreadyConsumed)) => {
            Err(ConsoleError::BadRequest("You approved this pairing request already.".to_owned()))
        }
        Err(ApiError::InvalidRequest { detail, .. }) => Err(ConsoleError::BadRequest(detail)),
        Err(ApiError::Pairing(_) | ApiError::AgentExists) => Err(ConsoleError::NotFound),
        Err(other) => Err(unavailable(&format!("{other:?}"))),
    }
}

/// `POST /console/pairings/{id}/deny`: deny a pairing request outright; `id`
/// is the hex SHA-256 of its pair code (the approvals page lists requests
/// addressed to the owner without their codes). Another owner's, an unknown
/// or a malformed id: the same 404.
pub(crate) async fn deny_pairing(
    State(state): State<ApiState>,
    session: Session,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, _fields) = verified(&state, &session, &uri, &body).await?;
    let hash = agentkeys_audit::hash_from_hex(&id).ok_or(ConsoleError::NotFound)?;
    let hash = agentkeys_approval::codes::CodeHash(hash);
    match crate::pairing::deny_as(&state, &hash, &proof, evidence(&proof)).await {
        Ok(_) => Ok(done("/console?done=pairing-denied")),
        Err(ApiError::Pairing(agentkeys_approval::PairingError::Expired)) => {
            Err(ConsoleError::BadRequest("This pairing request expired already; nothing to deny.".to_owned()))
        }
        Err(ApiError::Pairing(agentkeys_approval::PairingError::AlreadyConsumed)) => {
            Err(ConsoleError::BadRequest("You approved this pairing request already; stop the agent instead.".to_owned()))
        }
        Err(ApiError::Pairing(_)) => Err(ConsoleError::NotFound),
        Err(other) => Err(unavailable(&format!("{other:?}"))),
    }
}

/// Days a console grant form may ask for: 1 to 30 (the grant maximum).
pub const MAX_GRANT_DAYS: i64 = agentkeys_core::MAX_GRANT_TTL_SECS / 86_400;

fn days(fields: &FormFields) -> Result<Option<i64>, ConsoleError> {
    match fields.get("days").map(str::trim).filter(|d| !d.is_empty()) {
        None => Ok(None),
        Some(d) => match d.parse::<i64>() {
            Ok(n) if (1..=MAX_GRANT_DAYS).contains(&n) => Ok(Some(n * 86_400)),
            _ => Err(ConsoleError::BadRequest(format!("days: a whole number from 1 to {MAX_GRANT_DAYS}"))),
        },
    }
}

fn scopes(fields: &FormFields) -> Option<Vec<String>> {
    fields.get("scopes").filter(|s| !s.is_empty()).map(|s| s.split(',').map(|x| x.trim().to_owned()).collect())
}

/// What the console says when the grant routes refuse.
fn grant_refusal(e: ApiError) -> ConsoleError {
    match e {
        ApiError::OwnerObjectNotFound { .. } => ConsoleError::NotFound,
        ApiError::InvalidRequest { detail, .. } => ConsoleError::BadRequest(detail),
        ApiError::InvalidTtl { .. } => ConsoleError::BadRequest(format!("days: a whole number from 1 to {MAX_GRANT_DAYS}")),
        ApiError::GrantChange(e) => ConsoleError::BadRequest(e.to_string()),
        ApiError::Conflict => ConsoleError::BadRequest("The grant changed meanwhile; reload and try again.".to_owned()),
        other => unavailable(&format!("{other:?}")),
    }
}

/// `POST /console/grants`: a grant for one of the owner's agents (agent,
/// inbox or pattern, scopes, days up to 30).
pub(crate) async fn create_grant(
    State(state): State<ApiState>,
    session: Session,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, fields) = verified(&state, &session, &uri, &body).await?;
    let request = crate::owner::CreateGrantRequest {
        agent: fields.get("agent").unwrap_or("").to_owned(),
        inbox: fields.get("inbox").unwrap_or("").trim().to_owned(),
        scopes: scopes(&fields).ok_or_else(|| ConsoleError::BadRequest("scopes: choose read, send or both".to_owned()))?,
        ttl: days(&fields)?,
    };
    crate::owner::create_grant_as(&state, &proof, &request, evidence(&proof)).await.map_err(grant_refusal)?;
    Ok(done("/console/agents?done=grant-created"))
}

/// `POST /console/grants/{id}/change`: narrow the scopes and/or set the expiry
/// to `days` from now (at most 30; never widens).
pub(crate) async fn change_grant(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    session: Session,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, fields) = verified(&state, &session, &uri, &body).await?;
    let request = crate::owner::ChangeGrantRequest { scopes: scopes(&fields), ttl: days(&fields)? };
    if request.scopes.is_none() && request.ttl.is_none() {
        return Err(ConsoleError::BadRequest("Nothing to change: choose scopes or days.".to_owned()));
    }
    crate::owner::change_grant_as(&state, &proof, &id, &request, evidence(&proof)).await.map_err(grant_refusal)?;
    Ok(done("/console/agents?done=grant-changed"))
}

/// `POST /console/grants/{id}/revoke`.
pub(crate) async fn revoke_grant(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    session: Session,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, _) = verified(&state, &session, &uri, &body).await?;
    let meta = meta(&state)?;
    let id: GrantId = id.parse().map_err(|_| ConsoleError::NotFound)?;
    let owner = proof.owner().clone();
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::GRANT_REVOKE, id.as_str())
        .with_detail(json!({ "owner": owner, "approval": evidence(&proof) }));
    meta.revoke_owner_grant(&owner, &id, state.clock.now(), &event).await.map_err(not_found_or_unavailable)?;
    Ok(done("/console/agents?done=grant-revoked"))
}

/// `POST /console/keys/{id}/revoke`.
pub(crate) async fn revoke_key(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    session: Session,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, _) = verified(&state, &session, &uri, &body).await?;
    let meta = meta(&state)?;
    let id: KeyId = id.parse().map_err(|_| ConsoleError::NotFound)?;
    let owner = proof.owner().clone();
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::KEY_REVOKE, id.as_str())
        .with_detail(json!({ "owner": owner, "approval": evidence(&proof) }));
    meta.revoke_owner_key(&owner, &id, state.clock.now(), &event).await.map_err(not_found_or_unavailable)?;
    Ok(done("/console/agents?done=key-revoked"))
}

/// `POST /console/agents/{id}/stop`: every key and grant of the agent revoked at once.
pub(crate) async fn stop_agent(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    session: Session,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, _) = verified(&state, &session, &uri, &body).await?;
    let meta = meta(&state)?;
    let agent: AgentId = id.parse().map_err(|_| ConsoleError::NotFound)?;
    let owner = proof.owner().clone();
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::AGENT_STOP, agent.as_str())
        .with_detail(json!({ "owner": owner, "agent": agent, "approval": evidence(&proof) }));
    meta.stop_owner_agent(&owner, &agent, state.clock.now(), &event).await.map_err(not_found_or_unavailable)?;
    Ok(done("/console/agents?done=agent-stopped"))
}

/// `POST /console/grant-requests/{id}/approve` and `…/deny`: the owner decides
/// an agent's grant request; an approval creates the grant it asked for.
pub(crate) async fn decide_grant_request(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    session: Session,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, _) = verified(&state, &session, &uri, &body).await?;
    let approve = uri.path().ends_with("/approve");
    match crate::grant_requests::decide_as(&state, &proof, &id, approve, evidence(&proof)).await {
        Ok(_) => Ok(done(if approve { "/console?done=grant-request-approved" } else { "/console?done=grant-request-denied" })),
        Err(ApiError::DomainNotAssigned { domain }) => Err(ConsoleError::BadRequest(format!(
            "The request asks to create inboxes on {domain}, which is not assigned to you; deny it."
        ))),
        Err(e) => Err(grant_refusal(e)),
    }
}

/// What the console says when inbox creation is refused.
fn inbox_refusal(e: ApiError) -> ConsoleError {
    match e {
        ApiError::OwnerObjectNotFound { .. } => ConsoleError::NotFound,
        ApiError::InvalidRequest { detail, .. } => ConsoleError::BadRequest(detail),
        ApiError::InboxExpiry(e) => ConsoleError::BadRequest(format!("hours: {e}")),
        ApiError::AddressTaken => ConsoleError::BadRequest("address: an inbox with this address exists already".to_owned()),
        other => unavailable(&format!("{other:?}")),
    }
}

/// Hours a console inbox form may ask it to live: empty (forever) or 1 to 720 (30 days).
pub const MAX_INBOX_HOURS: i64 = agentkeys_core::MAX_AGENT_INBOX_LIFETIME_SECS / 3600;

/// `POST /console/inboxes`: a new inbox (`address`) for one of the owner's
/// agents (`agent`), optionally ending after `hours`.
pub(crate) async fn create_inbox(
    State(state): State<ApiState>,
    session: Session,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, fields) = verified(&state, &session, &uri, &body).await?;
    let hours = match fields.get("hours").map(str::trim).filter(|h| !h.is_empty()) {
        None => None,
        Some(h) => match h.parse::<i64>() {
            Ok(n) if (1..=MAX_INBOX_HOURS).contains(&n) => Some(n * 3600),
            _ => return Err(ConsoleError::BadRequest(format!("hours: empty (no end) or a whole number from 1 to {MAX_INBOX_HOURS}"))),
        },
    };
    let agent = fields.get("agent").unwrap_or("");
    let address = fields.get("address").unwrap_or("").trim();
    crate::owner_directory::create_inbox_as(&state, &proof, agent, address, hours, evidence(&proof))
        .await
        .map_err(inbox_refusal)?;
    Ok(done("/console/inboxes?done=inbox-created"))
}

/// `POST /console/inboxes/{address}/disable` and `…/enable`: the owner's
/// inbox stops (`550 5.2.1` at RCPT, no AUTH) or takes mail again.
pub(crate) async fn set_inbox_status(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    session: Session,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, _) = verified(&state, &session, &uri, &body).await?;
    let meta = meta(&state)?;
    let disable = uri.path().ends_with("/disable");
    let status = if disable { agentkeys_core::InboxStatus::Disabled } else { agentkeys_core::InboxStatus::Active };
    let address: agentkeys_core::Address = address.parse().map_err(|_| ConsoleError::NotFound)?;
    let owner = proof.owner().clone();
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::INBOX_SET_STATUS, address.as_str())
        .with_detail(json!({ "owner": owner, "status": status, "approval": evidence(&proof) }));
    meta.set_owner_inbox_status(&owner, &address, status, &event).await.map_err(not_found_or_unavailable)?;
    Ok(done(if disable { "/console/inboxes?done=inbox-disabled" } else { "/console/inboxes?done=inbox-enabled" }))
}

#[cfg(test)]
mod tests {
    use super::is_gated;

    #[test]
    fn only_gated_actions_get_challenges() {
        for p in ["/console/pairings/approve", "/console/grants", "/console/inboxes", "/console/inboxes/a@b.test/disable", "/console/inboxes/a@b.test/enable", "/console/grant-requests/ar_1/approve", "/console/grant-requests/ar_1/deny", "/console/agents/0xab/stop", "/console/grants/gr_1/revoke", "/console/grants/gr_1/change", "/console/keys/key_1/revoke"] {
            assert!(is_gated(p), "{p}");
        }
        assert!(is_gated("/console/notifications"));
        for p in ["/console", "/console/login/finish", "/console/agents//stop", "/console/inboxes//disable", "/console/inboxes/a@b.test", "/console/grants/a/b/revoke", "/v1/grants", "/console/gate"] {
            assert!(!is_gated(p), "{p}");
        }
    }
}
