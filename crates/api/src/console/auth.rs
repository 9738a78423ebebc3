//! Signing in with a passkey, signing out, and registering a passkey with a
//! one-time link. The JSON endpoints are the script's (`static/console.js`).

use agentkeys_approval::passkey::{PendingChallenge, StoredPasskey};
use agentkeys_audit::{Actor, AuditEvent, ops};
use agentkeys_core::OwnerId;
use agentkeys_store::{ChallengeRecord, MetadataStore, PasskeyRecord, SessionRecord, StoreError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rand::RngCore as _;
use serde::Deserialize;
use serde_json::json;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::{
    CHALLENGE_TTL_SECS, ConsoleError, FormFields, SESSION_COOKIE, SESSION_MAX_SECS, Session, config, meta, pages,
    token_hash, unavailable,
};
use crate::ApiState;

/// Longest passkey name, in characters.
pub const MAX_PASSKEY_NAME_CHARS: usize = 64;

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ConsoleError> {
    serde_json::from_slice(body).map_err(|e| ConsoleError::BadRequest(format!("malformed request: {e}")))
}

pub(crate) fn stored(passkeys: &[PasskeyRecord]) -> Vec<StoredPasskey> {
    passkeys
        .iter()
        .map(|p| StoredPasskey { credential_id: p.credential_id.clone(), passkey: p.passkey.clone() })
        .collect()
}

/// Stores a fresh challenge; returns its id.
pub(crate) async fn put_challenge(
    meta: &dyn MetadataStore,
    owner: &OwnerId,
    pending: PendingChallenge,
    now: i64,
) -> Result<String, ConsoleError> {
    let id = random_token();
    let rec = ChallengeRecord {
        id: id.clone(),
        owner: Some(owner.clone()),
        purpose: pending.purpose.to_owned(),
        bound_to: pending.bound_to,
        state: pending.state,
        expires_at: now + CHALLENGE_TTL_SECS,
    };
    meta.put_challenge(&rec, now).await.map_err(|e| unavailable(&e))?;
    Ok(id)
}

/// Takes a challenge of `owner` (single use); `None`: refused.
pub(crate) async fn take_challenge(
    meta: &dyn MetadataStore,
    id: &str,
    owner: Option<&OwnerId>,
    now: i64,
) -> Result<Option<PendingChallenge>, ConsoleError> {
    let found = meta.take_challenge(id, now).await.map_err(|e| unavailable(&e))?;
    Ok(found.filter(|c| owner.is_none_or(|o| c.owner.as_ref() == Some(o))).map(|c| PendingChallenge {
        purpose: match c.purpose.as_str() {
            "register" => "register",
            "sign-in" => "sign-in",
            _ => "action",
        },
        bound_to: c.bound_to,
        state: c.state,
    }))
}

pub(crate) async fn login_page() -> Response {
    pages::login_page().into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBegin {
    /// The owner id (`0x…`) or the owner's email address.
    owner: String,
}

async fn resolve_owner(meta: &dyn MetadataStore, given: &str) -> Result<Option<OwnerId>, ConsoleError> {
    let given = given.trim();
    if let Ok(id) = given.parse::<OwnerId>() {
        return Ok(Some(id));
    }
    let owners = meta.list_owners().await.map_err(|e| unavailable(&e))?;
    Ok(owners.into_iter().find(|o| o.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(given))).map(|o| o.id))
}

pub(crate) async fn login_begin(State(state): State<ApiState>, body: Bytes) -> Result<Response, ConsoleError> {
    let console = config(&state)?;
    let meta = meta(&state)?;
    let body: LoginBegin = json_body(&body)?;
    let owner = resolve_owner(meta.as_ref(), &body.owner).await?.ok_or(ConsoleError::NotFound)?;
    let passkeys = meta.list_passkeys(&owner).await.map_err(|e| unavailable(&e))?;
    let (options, pending) = console.gate.begin_sign_in(&owner, &stored(&passkeys)).map_err(|e| {
        tracing::info!(error = %e, "console sign-in not started");
        ConsoleError::NotFound
    })?;
    let now = state.clock.now();
    let challenge = put_challenge(meta.as_ref(), &owner, pending, now).await?;
    Ok(Json(json!({ "challenge": challenge, "owner": owner, "options": options })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginFinish {
    owner: String,
    challenge: String,
    credential: PublicKeyCredential,
}

pub(crate) async fn login_finish(State(state): State<ApiState>, body: Bytes) -> Result<Response, ConsoleError> {
    let console = config(&state)?;
    let meta = meta(&state)?;
    let body: LoginFinish = json_body(&body)?;
    let refused = ConsoleError::Forbidden("The passkey check failed.");
    let owner: OwnerId = body.owner.parse().map_err(|_| ConsoleError::Forbidden("The passkey check failed."))?;
    let now = state.clock.now();
    let pending = take_challenge(meta.as_ref(), &body.challenge, Some(&owner), now).await?.ok_or(refused)?;
    let passkeys = meta.list_passkeys(&owner).await.map_err(|e| unavailable(&e))?;
    let verified = console.gate.finish_sign_in(&pending, &owner, &body.credential, &stored(&passkeys)).map_err(|e| {
        tracing::info!(error = %e, "console sign-in refused");
        ConsoleError::Forbidden("The passkey check failed.")
    })?;
    save_counter(meta.as_ref(), &owner, &verified, now).await?;
    let token = random_token();
    let session = SessionRecord {
        token_hash: token_hash(&token),
        owner: owner.clone(),
        created_at: now,
        last_seen_at: now,
        expires_at: now + SESSION_MAX_SECS,
    };
    meta.create_session(&session, now).await.map_err(|e| unavailable(&e))?;
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::CONSOLE_SIGN_IN, owner.as_str())
        .with_detail(json!({ "owner": owner, "gate": "passkey", "credential": verified.credential_id() }));
    meta.audit_append(&event).await.map_err(|e| unavailable(&e))?;
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/console; HttpOnly; Secure; SameSite=Strict");
    Ok(([(header::SET_COOKIE, cookie)], Json(json!({ "redirect": "/console" }))).into_response())
}

/// Stores a passkey's moved counter after an assertion.
pub(crate) async fn save_counter(
    meta: &dyn MetadataStore,
    owner: &OwnerId,
    verified: &agentkeys_approval::PasskeyVerified,
    now: i64,
) -> Result<(), ConsoleError> {
    if let Some(updated) = verified.updated_passkey() {
        meta.update_passkey(owner, verified.credential_id(), updated, now).await.map_err(|e| unavailable(&e))?;
    }
    Ok(())
}

pub(crate) async fn logout(State(state): State<ApiState>, session: Session, headers: axum::http::HeaderMap, body: Bytes) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    session.check_csrf(FormFields::parse(&body).get("csrf"))?;
    if let Some(token) = super::cookie(&headers, SESSION_COOKIE) {
        meta.end_session(&token_hash(token)).await.map_err(|e| unavailable(&e))?;
    }
    let expired = format!("{SESSION_COOKIE}=; Path=/console; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, "/console/login".to_owned()), (header::SET_COOKIE, expired)]).into_response())
}

pub(crate) async fn register_page() -> Response {
    pages::register_page().into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterBegin {
    token: String,
}

pub(crate) async fn register_begin(State(state): State<ApiState>, body: Bytes) -> Result<Response, ConsoleError> {
    let console = config(&state)?;
    let meta = meta(&state)?;
    let body: RegisterBegin = json_body(&body)?;
    let link = token_hash(&body.token);
    let now = state.clock.now();
    let owner = meta.passkey_link_owner(&link, now).await.map_err(|e| unavailable(&e))?.ok_or(ConsoleError::NotFound)?;
    let existing = meta.list_passkeys(&owner).await.map_err(|e| unavailable(&e))?;
    let (options, pending) = console.gate.begin_registration(&owner, &link, &stored(&existing)).map_err(|e| {
        tracing::error!(error = %e, "console registration not started");
        ConsoleError::Unavailable
    })?;
    let challenge = put_challenge(meta.as_ref(), &owner, pending, now).await?;
    Ok(Json(json!({ "challenge": challenge, "owner": owner, "options": options })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterFinish {
    token: String,
    challenge: String,
    name: String,
    credential: RegisterPublicKeyCredential,
}

pub(crate) async fn register_finish(State(state): State<ApiState>, body: Bytes) -> Result<Response, ConsoleError> {
    let console = config(&state)?;
    let meta = meta(&state)?;
    let body: RegisterFinish = json_body(&body)?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_PASSKEY_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ConsoleError::BadRequest(format!(
            "name: 1 to {MAX_PASSKEY_NAME_CHARS} characters, no control characters"
        )));
    }
    let link = token_hash(&body.token);
    let now = state.clock.now();
    let owner = meta.passkey_link_owner(&link, now).await.map_err(|e| unavailable(&e))?.ok_or(ConsoleError::NotFound)?;
    let refused = ConsoleError::Forbidden("The passkey check failed.");
    let pending = take_challenge(meta.as_ref(), &body.challenge, Some(&owner), now).await?.ok_or(refused)?;
    let new = console.gate.finish_registration(&pending, &link, &body.credential).map_err(|e| {
        tracing::info!(error = %e, "console registration refused");
        ConsoleError::Forbidden("The passkey check failed.")
    })?;
    let record = PasskeyRecord {
        credential_id: new.credential_id.clone(),
        owner: owner.clone(),
        name: name.clone(),
        passkey: new.passkey,
        created_at: now,
        last_used_at: None,
    };
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::OWNER_PASSKEY_ADD, owner.as_str())
        .with_detail(json!({ "owner": owner, "credential": new.credential_id, "name": name }));
    meta.add_passkey(&link, &record, now, &event).await.map_err(|e| match e {
        StoreError::NotFound { .. } => ConsoleError::NotFound,
        StoreError::Conflict { .. } => ConsoleError::BadRequest("this passkey is registered already".to_owned()),
        other => unavailable(&other),
    })?;
    Ok(Json(json!({ "redirect": "/console/login" })).into_response())
}
