//! Pairing over HTTP: an agent asks for an agent key, its owner approves with a
//! signed request, the agent collects the key (DESIGN.md §5; the state machine is
//! [`agentkeys_approval::pairing`]).
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | POST | `/v1/pairings` | agent (public) | open a request for a device public key: 201 pair code, 6 digits, expiry |
//! | GET | `/v1/pairings/{code}` | owner signature | what the owner confirms: agent id, name, device fingerprint (never the 6 digits) |
//! | POST | `/v1/pairings/{code}/approve` | owner signature | approve with the 6 digits the owner typed from the agent's screen: creates the agent under the owner |
//! | POST | `/v1/pairings/{code}/deny` | owner signature | deny it outright: it can never be approved, and a waiting collect answers 403 `DENIED` at once |
//! | POST | `/v1/pairings/{code}/collect` | device signature | long-poll (up to [`COLLECT_WAIT`]): 200 the agent key once, 202 pending, 403 `DENIED` once the owner denied it, 409 `CONFIRMATION_LOCKED` once the owner's tries are spent, 410 expired, 404 otherwise |
//!
//! Requests are stored under the pair code's [`CodeHash`]; state changes are
//! compare-and-set in the store ([`Pairing::approve_pairing`](agentkeys_store::Pairing::approve_pairing),
//! [`Pairing::collect_pairing`](agentkeys_store::Pairing::collect_pairing)), so two approvals or two collections
//! cannot both win. Approval creates the agent, and collection mints the agent
//! key (30 days, stored hashed), each atomically with its audit record. A
//! collect that finds the request pending waits on its code's wake-up
//! ([`agentkeys_store::PairingWakeups`]), which an approval in this process
//! wakes, and, on PostgreSQL, an approval committed on any node (the store
//! notifies the database, every node's listener wakes its waiters); there is
//! no busy polling.
//!
//! **The 6 digits are typed, not shown.** The owner's view never carries them:
//! the owner types what the agent's screen shows and the server compares
//! (derived from the pair code and the device key, so nothing is stored; in
//! constant time). Every approval attempt first spends one of
//! [`MAX_CONFIRMATION_TRIES`] (`Pairing` row counter, compare-and-set across
//! nodes), so at most that many comparisons are ever made; a wrong try is
//! recorded `pairing.approve` / `denied` with its reason, and past the limit
//! the request answers 409 `CONFIRMATION_LOCKED` until it expires.
//!
//! Who sees what is the state machine's: anyone who cannot prove a stake (an
//! owner who did not approve it, a poller without the device key) gets the same
//! 404 `NOT_FOUND` for an unknown, spent or foreign request.

use std::sync::Arc;
use std::time::Duration;

use agentkeys_approval::codes::CodeHash;
use agentkeys_approval::pairing;
use agentkeys_approval::{
    ConfirmationCode, MAX_CONFIRMATION_TRIES, OwnerGate, PAIRING_TTL, PairCode, PairingError, PairingRequest, PairingState, PublicKey, Signature,
};
use agentkeys_audit::{Actor, AuditEvent, hash_to_hex, ops};
use agentkeys_core::time::rfc3339;
use agentkeys_core::{AgentKey, KeyId, MAX_AGENT_KEY_TTL_SECS, UnixTime};
use agentkeys_store::{AgentRecord, KeyRecord, MetadataStore, PairingRecord, PairingStatus, StoreError};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, decode};
use crate::owner::OwnerApproval;

/// How long a collect waits for the owner's approval before answering 202.
pub const COLLECT_WAIT: Duration = Duration::from_secs(25);
/// Requests opened longer ago than this are deleted when a new one is opened.
pub const PAIRING_RETENTION_SECS: i64 = 86_400;
/// Longest agent name, in characters.
pub const MAX_AGENT_NAME_CHARS: usize = 64;
/// How many fresh pair codes opening tries before giving up (40-bit codes: a
/// collision is already unlikely once).
const OPEN_ATTEMPTS: u32 = 3;

/// The gauge `agentkeys_pairing_collects_waiting`: collects long-polling for
/// their approval right now, up while one waits, down when it stops (also when
/// its request is dropped).
struct WaitingCollect;

impl WaitingCollect {
    fn enter() -> Self {
        metrics::gauge!("agentkeys_pairing_collects_waiting").increment(1.0);
        Self
    }
}

impl Drop for WaitingCollect {
    fn drop(&mut self) {
        metrics::gauge!("agentkeys_pairing_collects_waiting").decrement(1.0);
    }
}

fn store(state: &ApiState) -> Result<&Arc<dyn MetadataStore>, ApiError> {
    state.meta.as_ref().ok_or_else(|| {
        tracing::error!("pairing route called on an API without a metadata store");
        ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
    })
}

fn backend_error(e: &StoreError) -> ApiError {
    tracing::error!(error = %e, "pairing request failed in the store");
    ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
}

/// `SHA256:` + unpadded standard base64 of SHA-256 over the 32 raw key bytes
/// (the OpenSSH fingerprint form).
pub fn device_fingerprint(key: &PublicKey) -> String {
    let digest = Sha256::digest(key.to_bytes());
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

/// A malformed pair code names no request: the same 404 as an unknown one.
pub(crate) fn parse_code(code: &str) -> Result<PairCode, ApiError> {
    code.parse().map_err(|_| ApiError::Pairing(PairingError::NotFound))
}

fn restore(rec: &PairingRecord) -> Result<PairingState, ApiError> {
    let corrupt = |what: &str| {
        tracing::error!(what, "stored pairing request is inconsistent");
        ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
    };
    let device_key = PublicKey::from_bytes(&rec.device_key).map_err(|_| corrupt("device key"))?;
    let request =
        PairingRequest::restore(CodeHash(rec.code_hash), device_key, rec.opened_at).with_addressee(rec.addressed_to.clone());
    Ok(match rec.status {
        PairingStatus::Pending => PairingState::Pending(request),
        PairingStatus::Approved => PairingState::Approved {
            request,
            owner: rec.owner.clone().ok_or_else(|| corrupt("owner"))?,
            approved_at: rec.approved_at.ok_or_else(|| corrupt("approved_at"))?,
        },
        PairingStatus::Consumed => {
            PairingState::Consumed { request, owner: rec.owner.clone().ok_or_else(|| corrupt("owner"))? }
        }
        PairingStatus::Denied => PairingState::Denied { request, owner: rec.owner.clone().ok_or_else(|| corrupt("owner"))? },
    })
}

pub(crate) async fn lookup(meta: &Arc<dyn MetadataStore>, code: &PairCode) -> Result<Option<(PairingRecord, PairingState)>, ApiError> {
    lookup_hash(meta, &code.hash()).await
}

async fn lookup_hash(meta: &Arc<dyn MetadataStore>, hash: &CodeHash) -> Result<Option<(PairingRecord, PairingState)>, ApiError> {
    let found = meta.pairing(&hash.0).await.map_err(|e| backend_error(&e))?;
    found.map(|rec| restore(&rec).map(|state| (rec, state))).transpose()
}

/// Longest `owner` an agent may address a pairing request to.
pub const MAX_ADDRESSEE_CHARS: usize = 254;

/// Whom a request addressed to `given` (an owner id or an email) is for: the
/// owner id, or, if no owner has that email, the address itself in lower
/// case, which no owner id equals (nobody can approve it, and the agent is
/// told nothing about which owners exist).
async fn addressee(meta: &dyn MetadataStore, given: &str) -> Result<String, ApiError> {
    if let Ok(id) = given.parse::<agentkeys_core::OwnerId>() {
        return Ok(id.as_str().to_owned());
    }
    if given.chars().count() > MAX_ADDRESSEE_CHARS || given.chars().any(char::is_control) || !given.contains('@') {
        return Err(ApiError::InvalidRequest {
            field: Some("owner".to_owned()),
            detail: format!("owner: an owner id (0x and 40 hex digits) or an email address of at most {MAX_ADDRESSEE_CHARS} characters"),
        });
    }
    let owners = meta.list_owners().await.map_err(|e| backend_error(&e))?;
    Ok(owners
        .into_iter()
        .find(|o| o.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(given)))
        .map_or_else(|| given.to_ascii_lowercase(), |o| o.id.as_str().to_owned()))
}

/// Body of `POST /v1/pairings`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenPairingRequest {
    /// The agent's Ed25519 device public key, standard base64 of 32 bytes.
    #[schema(pattern = r#"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"#)]
    pub device_public_key: String,
    /// A display name for the agent (at most 64 characters).
    #[serde(default)]
    pub name: Option<String>,
    /// The owner whose approval the agent asks for: an owner id (`0x…`) or an
    /// owner's email address. Only that owner can approve it; the answer is the
    /// same whether or not such an owner exists.
    #[serde(default)]
    pub owner: Option<String>,
}

/// Answer of `POST /v1/pairings`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpenPairingResponse {
    /// The pair code (`ABCD-EFGH`) to give the owner.
    pub pair_code: String,
    /// The 6 digits the owner must see too.
    pub confirmation_code: String,
    /// The agent id derived from the device key.
    pub agent_id: String,
    /// When the request expires unapproved (RFC 3339).
    pub expires_at: String,
}

/// Open a pairing request (public; the agent).
#[utoipa::path(
    post,
    path = "/v1/pairings",
    tag = "pairing",
    request_body = OpenPairingRequest,
    responses(
        (status = 201, description = "Opened; valid for 10 minutes", body = OpenPairingResponse),
        (status = 400, description = "Malformed key, name or owner", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send the body as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many pairing requests from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn open(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<OpenPairingRequest>,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let device_key = PublicKey::from_base64(&body.device_public_key).map_err(|e| ApiError::InvalidRequest {
        field: Some("device_public_key".to_owned()),
        detail: format!("device_public_key: {e}"),
    })?;
    let name = match body.name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()) {
        Some(n) if n.chars().count() > MAX_AGENT_NAME_CHARS || n.chars().any(char::is_control) => {
            return Err(ApiError::InvalidRequest {
                field: Some("name".to_owned()),
                detail: format!("name: at most {MAX_AGENT_NAME_CHARS} characters, no control characters"),
            });
        }
        other => other,
    };
    let addressed_to = match body.owner.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
        None => None,
        Some(given) => Some(addressee(meta.as_ref(), given).await?),
    };
    let now = state.clock.now();
    for _ in 0..OPEN_ATTEMPTS {
        let (code, confirmation, opened) = PairingState::open(&mut rand::rngs::OsRng, device_key, now);
        let opened = opened.with_addressee(addressed_to.clone());
        let request = opened.request();
        let rec = PairingRecord {
            code_hash: code.hash().0,
            device_key: device_key.to_bytes(),
            agent: request.agent_id().clone(),
            name: name.clone(),
            opened_at: now,
            status: PairingStatus::Pending,
            owner: None,
            approved_at: None,
            addressed_to: addressed_to.clone(),
        };
        // Audited in the same transaction: the agent-to-be, its name and device
        // key, the expiry; never the pair code or the confirmation digits.
        let event = AuditEvent::ok(Actor::Agent(rec.agent.clone()), ops::PAIRING_OPEN, rec.agent.as_str()).with_detail(json!({
            "name": rec.name,
            "device_key": hash_to_hex(&rec.device_key),
            "expires_at": request.expires_at(),
            "addressed_to": rec.addressed_to,
        }));
        match meta.open_pairing(&rec, now - PAIRING_RETENTION_SECS, &event).await {
            Ok(_receipt) => {
                notify_addressee(&state, &rec, &device_key, request.expires_at());
                let answer = OpenPairingResponse {
                    pair_code: code.to_string(),
                    confirmation_code: confirmation.to_string(),
                    agent_id: request.agent_id().to_string(),
                    expires_at: rfc3339(request.expires_at()),
                };
                return Ok((StatusCode::CREATED, Json(answer)).into_response());
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(backend_error(&e)),
        }
    }
    tracing::error!("could not draw an unused pair code");
    Err(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" })
}

/// Mails the owner a request is addressed to (if any, and if their settings
/// want it), off the answer's path: the agent's name and id, the device
/// fingerprint, the expiry and a link to the console, never the pair code or
/// the 6 digits.
fn notify_addressee(state: &ApiState, rec: &PairingRecord, device_key: &PublicKey, expires_at: i64) {
    let (Some(notifier), Some(owner)) =
        (state.notifier.clone(), rec.addressed_to.as_deref().and_then(|a| a.parse::<agentkeys_core::OwnerId>().ok()))
    else {
        return;
    };
    let name = rec.name.clone().unwrap_or_else(|| "(no name)".to_owned());
    let mut notice = crate::notify::Notice::new(
        crate::notify::NoticeKind::Pairing,
        format!("Pairing request from agent \"{name}\""),
        vec![
            format!("An agent asks to be paired with you: \"{name}\", agent id {}.", rec.agent),
            format!("Device fingerprint: {}.", device_fingerprint(device_key)),
            format!("The request expires at {}. Approve it only if you started this agent: type the pair code and the 6 digits its screen shows.", rfc3339(expires_at)),
        ],
    );
    if let Some(origin) = notifier.origin() {
        notice = notice.with_link("Open your pending approvals", format!("{origin}/console"));
    }
    let now = state.clock.now();
    let link = notifier.origin().map(|origin| format!("{origin}/console"));
    tokio::spawn(async move {
        let capped = notifier
            .notify_capped(&owner, &notice, "pairing", MAX_PAIRING_NOTICES_PER_HOUR, |max| pairing_summary(max, now, link), now)
            .await;
        if let Err(e) = capped {
            tracing::warn!(error = %e, %owner, "the pairing notice was not sent");
        }
    });
}

/// The most pairing notices one owner is mailed per clock hour. Anyone who
/// knows an owner's id or address can open pairing requests addressed to
/// them (up to the pairing-open limit per IP address, from many addresses),
/// so past this many the owner gets one summary for the rest of the hour and
/// then nothing; every request stays listed on the console's approvals page.
pub const MAX_PAIRING_NOTICES_PER_HOUR: u32 = 5;

/// The one mail an owner gets in an hour once [`MAX_PAIRING_NOTICES_PER_HOUR`] is reached.
fn pairing_summary(max: u32, now: UnixTime, link: Option<String>) -> crate::notify::Notice {
    let next_hour = (now.div_euclid(3600) + 1) * 3600;
    let mut notice = crate::notify::Notice::new(
        crate::notify::NoticeKind::Pairing,
        "More pairing requests addressed to you",
        vec![
            format!("More than {max} pairing requests addressed to you were opened this hour. Further ones are not mailed until {}.", rfc3339(next_hour)),
            "Every request is listed on your console's pending approvals page. If you did not start that many agents, someone may be trying to get one approved by mistake: approve only the request whose pair code and 6 digits your own agent shows.".to_owned(),
        ],
    );
    if let Some(link) = link {
        notice = notice.with_link("Open your pending approvals", link);
    }
    notice
}

/// What the owner confirms before approving.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PairingViewResponse {
    /// The pair code.
    pub pair_code: String,
    /// The agent id that will be created.
    pub agent_id: String,
    /// The name the agent asked for.
    pub name: Option<String>,
    /// The device public key (standard base64).
    pub device_public_key: String,
    /// `SHA256:` + base64 of the key's SHA-256.
    pub device_fingerprint: String,
    /// When the request expires (RFC 3339).
    pub expires_at: String,
}

/// Show a pending pairing request (owner approval required).
#[utoipa::path(
    get,
    path = "/v1/pairings/{code}",
    tag = "pairing",
    params(("code" = String, Path, description = "The pair code (ABCD-EFGH)")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "The pending request", body = PairingViewResponse),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: unknown, or approved by someone else (one answer)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "ALREADY_CONSUMED: you already approved it", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "EXPIRED", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn view(
    State(state): State<ApiState>,
    Path(code): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let code = parse_code(&code)?;
    let found = lookup(meta, &code).await?;
    let now = state.clock.now();
    let seen = pairing::view(found.as_ref().map(|(_, s)| s), &code, &approval.proof, now).map_err(ApiError::Pairing)?;
    let name = found.and_then(|(rec, _)| rec.name);
    Ok(Json(PairingViewResponse {
        pair_code: code.to_string(),
        agent_id: seen.agent_id.to_string(),
        name,
        device_public_key: seen.device_key.to_base64(),
        device_fingerprint: device_fingerprint(&seen.device_key),
        expires_at: rfc3339(seen.expires_at),
    })
    .into_response())
}

/// Body of `POST /v1/pairings/{code}/approve`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovePairingRequest {
    /// The 6 digits shown on the agent's screen.
    #[schema(pattern = r#"^[0-9]{6}$"#)]
    pub confirmation_code: String,
}

/// Answer of an approval.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovePairingResponse {
    /// The agent now under the owner.
    pub agent_id: String,
    /// The approving owner.
    pub owner: String,
    /// Always `approved`.
    pub status: String,
    /// By when the agent must collect its key (RFC 3339).
    pub collect_by: String,
}

/// Approve a pairing request: the agent is created under the signing owner
/// (owner approval required).
#[utoipa::path(
    post,
    path = "/v1/pairings/{code}/approve",
    tag = "pairing",
    params(("code" = String, Path, description = "The pair code (ABCD-EFGH)")),
    request_body = ApprovePairingRequest,
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Approved", body = ApprovePairingResponse),
        (status = 400, description = "CONFIRMATION_MISMATCH or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: unknown, or approved by someone else (one answer)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "ALREADY_CONSUMED (you approved it already), AGENT_EXISTS (the device is another owner's agent) or CONFIRMATION_LOCKED (its 5 tries of the 6 digits are spent; the agent pairs again)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "EXPIRED", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send the body as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn approve(
    State(state): State<ApiState>,
    Path(code): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    if !approval.json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body: ApprovePairingRequest = decode(&approval.body)?;
    let answer = approve_as(&state, &code, &body.confirmation_code, &approval.proof, approval.evidence()).await?;
    Ok(Json(answer).into_response())
}

/// Approves the pairing request `code` for the owner who passed `gate` (the
/// master key's signature, or a console passkey assertion for this action),
/// who confirmed the 6 digits `confirmation`; `evidence` goes into the audit
/// record. The agent is created under that owner.
pub(crate) async fn approve_as(
    state: &ApiState,
    code: &str,
    confirmation: &str,
    gate: &impl OwnerGate,
    evidence: serde_json::Value,
) -> Result<ApprovePairingResponse, ApiError> {
    let meta = store(state)?;
    let confirmation: ConfirmationCode = confirmation.parse().map_err(|_| ApiError::InvalidRequest {
        field: Some("confirmation_code".to_owned()),
        detail: "confirmation_code: exactly 6 digits".to_owned(),
    })?;
    let code = parse_code(code)?;
    let now = state.clock.now();
    let found = lookup(meta, &code).await?;
    let name = found.as_ref().and_then(|(rec, _)| rec.name.clone());
    let agent_to_be = found.as_ref().map(|(rec, _)| rec.agent.to_string()).unwrap_or_default();
    // Only a request this owner may approve now spends a try (unknown, foreign,
    // expired or spent: the state machine's answer, nothing counted)…
    pairing::view(found.as_ref().map(|(_, s)| s), &code, gate, now).map_err(ApiError::Pairing)?;
    // …and it spends one before the digits are compared, so at most
    // MAX_CONFIRMATION_TRIES comparisons are ever made, across nodes.
    let tries = meta.take_pairing_try(&code.hash().0, MAX_CONFIRMATION_TRIES).await.map_err(|e| backend_error(&e))?;
    let Some(tries) = tries else {
        // Approved meanwhile, or locked.
        let again = lookup(meta, &code).await?.map(|(_, s)| s);
        let e = pairing::view(again.as_ref(), &code, gate, now).err().unwrap_or(PairingError::ConfirmationLocked);
        return Err(ApiError::Pairing(e));
    };
    let approved = match pairing::approve(found.map(|(_, s)| s), &code, &confirmation, gate, now) {
        Ok(approved) => approved,
        Err(e) => {
            if e == PairingError::ConfirmationMismatch {
                // Recorded before it is answered (fail closed like every refusal).
                let refused = AuditEvent {
                    outcome: agentkeys_audit::Outcome::Denied,
                    ..AuditEvent::ok(Actor::Owner(gate.owner().clone()), ops::PAIRING_APPROVE, agent_to_be.clone())
                }
                .with_detail(json!({
                    "owner": gate.owner(),
                    "agent": agent_to_be,
                    "reason": "the 6 digits do not match the agent's",
                    "tries": tries,
                    "max_tries": MAX_CONFIRMATION_TRIES,
                    "approval": evidence,
                }));
                meta.audit_append(&refused).await.map_err(|e| backend_error(&e))?;
                if tries >= MAX_CONFIRMATION_TRIES {
                    // The last try is spent: a waiting collect answers CONFIRMATION_LOCKED now.
                    state.pairings.wake(&code.hash().0);
                }
            }
            return Err(ApiError::Pairing(e));
        }
    };
    let PairingState::Approved { request, owner, approved_at } = approved else {
        return Err(ApiError::Internal);
    };
    let agent = AgentRecord { id: request.agent_id().clone(), owner: owner.clone(), name, created_at: now };
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::PAIRING_APPROVE, agent.id.as_str()).with_detail(json!({
        "owner": owner,
        "agent": agent.id,
        "device_fingerprint": device_fingerprint(request.device_key()),
        "approval": evidence,
    }));
    match meta.approve_pairing(&code.hash().0, &agent, approved_at, &event).await {
        Ok(_receipt) => {}
        // A concurrent approval won: answer what this owner may learn about it now.
        Err(StoreError::NotFound { .. }) => {
            let found = lookup(meta, &code).await?.map(|(_, s)| s);
            let e = pairing::approve(found, &code, &confirmation, gate, now)
                .err()
                .unwrap_or(PairingError::AlreadyConsumed);
            return Err(ApiError::Pairing(e));
        }
        Err(StoreError::Conflict { .. }) => return Err(ApiError::AgentExists),
        Err(e) => return Err(backend_error(&e)),
    }
    state.pairings.wake(&code.hash().0);
    Ok(ApprovePairingResponse {
        agent_id: agent.id.to_string(),
        owner: owner.to_string(),
        status: "approved".to_owned(),
        collect_by: rfc3339(approved_at + PAIRING_TTL),
    })
}

/// Answer of a denial.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DenyPairingResponse {
    /// The agent id the request would have created.
    pub agent_id: String,
    /// The denying owner.
    pub owner: String,
    /// Always `denied`.
    pub status: String,
}

/// Deny a pairing request outright: it can never be approved, and the agent
/// waiting on it is told at once (owner approval required; any body is ignored).
#[utoipa::path(
    post,
    path = "/v1/pairings/{code}/deny",
    tag = "pairing",
    params(("code" = String, Path, description = "The pair code (ABCD-EFGH)")),
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Denied", body = DenyPairingResponse),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: unknown, denied already, addressed to another owner, or approved by someone else (one answer)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "ALREADY_CONSUMED: you approved it already", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "EXPIRED", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn deny(
    State(state): State<ApiState>,
    Path(code): Path<String>,
    approval: OwnerApproval,
) -> Result<Response, ApiError> {
    let code = parse_code(&code)?;
    let answer = deny_as(&state, &code.hash(), &approval.proof, approval.evidence()).await?;
    Ok(Json(answer).into_response())
}

/// Denies the pairing request stored under `hash` for the owner who passed
/// `gate` (the master key's signature, or a console passkey assertion or
/// mailed code for this action); `evidence` goes into the audit record. A
/// collect waiting on it (on any node) answers `DENIED` at once.
pub(crate) async fn deny_as(
    state: &ApiState,
    hash: &CodeHash,
    gate: &impl OwnerGate,
    evidence: serde_json::Value,
) -> Result<DenyPairingResponse, ApiError> {
    let meta = store(state)?;
    let now = state.clock.now();
    let found = lookup_hash(meta, hash).await?;
    let name = found.as_ref().and_then(|(rec, _)| rec.name.clone());
    let denied = pairing::deny(found.map(|(_, s)| s), hash, gate, now).map_err(ApiError::Pairing)?;
    let PairingState::Denied { request, owner } = denied else {
        return Err(ApiError::Internal);
    };
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::PAIRING_DENY, request.agent_id().as_str()).with_detail(json!({
        "owner": owner,
        "agent": request.agent_id(),
        "name": name,
        "device_fingerprint": device_fingerprint(request.device_key()),
        "approval": evidence,
    }));
    match meta.deny_pairing(&hash.0, &owner, now, &event).await {
        Ok(_receipt) => {}
        // Approved (or denied) meanwhile: what this owner may learn about it now.
        Err(StoreError::NotFound { .. }) => {
            let found = lookup_hash(meta, hash).await?.map(|(_, s)| s);
            let e = pairing::deny(found, hash, gate, now).err().unwrap_or(PairingError::NotFound);
            return Err(ApiError::Pairing(e));
        }
        Err(e) => return Err(backend_error(&e)),
    }
    state.pairings.wake(&hash.0);
    Ok(DenyPairingResponse { agent_id: request.agent_id().to_string(), owner: owner.to_string(), status: "denied".to_owned() })
}

/// Body of `POST /v1/pairings/{code}/collect`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectPairingRequest {
    /// Standard base64 of the device key's Ed25519 signature over
    /// `"AGENTKEYS-PAIR-COLLECT-V1\n{pair code}\n{agent id}"`.
    #[schema(pattern = r#"^[A-Za-z0-9+/]{85}[AQgw]==$"#)]
    pub signature: String,
}

/// Answer of a collect.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CollectPairingResponse {
    /// `approved` (with the key) or `pending`.
    pub status: String,
    /// The agent id.
    pub agent_id: String,
    /// The owner (approved only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The agent key, shown this once (approved only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_key: Option<String>,
    /// Its key id (approved only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// When the key (approved) or the request (pending) expires (RFC 3339).
    pub expires_at: String,
    /// What the agent needs to send (approved only, when the server knows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerInfo>,
}

/// The server facts pairing hands the agent with its key, so the first send
/// works without settings: the submission listener (STARTTLS) and the server's
/// hostname (the authserv-id of the `Authentication-Results` its MX writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// The server's hostname.
    pub hostname: String,
    /// The submission (STARTTLS) listener's port, on the API's host.
    pub submission_port: u16,
}

/// Collect the agent key of an approved request, waiting up to 25 s for the
/// approval (the agent, signing with its device key).
#[utoipa::path(
    post,
    path = "/v1/pairings/{code}/collect",
    tag = "pairing",
    params(("code" = String, Path, description = "The pair code (ABCD-EFGH)")),
    request_body = CollectPairingRequest,
    responses(
        (status = 200, description = "Approved: the agent key, this once", body = CollectPairingResponse),
        (status = 202, description = "Still pending; poll again", body = CollectPairingResponse),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "DENIED: the owner denied this pairing; it can never be approved", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: unknown code or not signed by the request's device key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "ALREADY_CONSUMED: collected before, or CONFIRMATION_LOCKED: the owner's tries of the 6 digits are spent, so it can never be approved; pair again", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "EXPIRED", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send the body as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn collect(
    State(state): State<ApiState>,
    Path(code): Path<String>,
    ApiJson(body): ApiJson<CollectPairingRequest>,
) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let bad_signature = || ApiError::InvalidRequest {
        field: Some("signature".to_owned()),
        detail: "signature: standard base64 of a 64-byte Ed25519 signature".to_owned(),
    };
    let raw = base64::engine::general_purpose::STANDARD.decode(body.signature.as_bytes()).map_err(|_| bad_signature())?;
    let signature = Signature::from_slice(&raw).map_err(|_| bad_signature())?;
    let code = parse_code(&code)?;
    let hash = code.hash();
    let notify = state.pairings.subscribe(&hash.0);
    let give_up = tokio::time::Instant::now() + state.collect_wait;
    loop {
        // Registered before the read, so an approval between the read and the
        // wait still wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let found = lookup(meta, &code).await?;
        let agent_id = found.as_ref().map(|(rec, _)| rec.agent.to_string()).unwrap_or_default();
        let found = found.map(|(_, s)| s);
        let deadline = found.as_ref().and_then(PairingState::deadline);
        let now = state.clock.now();
        match pairing::collect(found, &code, &signature, now) {
            Ok((proof, _consumed)) => {
                let key = AgentKey::generate(&mut rand::rngs::OsRng);
                let rec = KeyRecord {
                    id: KeyId::generate(&mut rand::rngs::OsRng),
                    agent: proof.agent_id().clone(),
                    hash: state.broker.hasher().hash(&key),
                    created_at: now,
                    expires_at: now + MAX_AGENT_KEY_TTL_SECS,
                    revoked_at: None,
                };
                let event = AuditEvent::ok(Actor::Agent(proof.agent_id().clone()), ops::PAIRING_COLLECT, rec.id.as_str())
                    .with_detail(json!({ "owner": proof.owner(), "agent": proof.agent_id(), "expires_at": rec.expires_at }));
                match meta.collect_pairing(&hash.0, &rec, now, &event).await {
                    Ok(_receipt) => {
                        return Ok(Json(CollectPairingResponse {
                            status: "approved".to_owned(),
                            agent_id: proof.agent_id().to_string(),
                            owner: Some(proof.owner().to_string()),
                            agent_key: Some(key.expose().to_owned()),
                            key_id: Some(rec.id.to_string()),
                            expires_at: rfc3339(rec.expires_at),
                            server: state.server_info.as_deref().cloned(),
                        })
                        .into_response());
                    }
                    // Another collect won: the next read says ALREADY_CONSUMED.
                    Err(StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(backend_error(&e)),
                }
            }
            Err(PairingError::Pending) => {
                // Its device key signed this collect: the agent may learn that
                // the owner's tries are spent, and stop waiting for an approval
                // that can no longer come.
                if meta.pairing_tries(&hash.0).await.map_err(|e| backend_error(&e))? >= MAX_CONFIRMATION_TRIES {
                    return Err(ApiError::Pairing(PairingError::ConfirmationLocked));
                }
                let remaining = give_up.saturating_duration_since(tokio::time::Instant::now());
                let until_expiry = deadline.map_or(0, |d: UnixTime| (d - now).max(0));
                let wait = remaining.min(Duration::from_secs(u64::try_from(until_expiry).unwrap_or(0) + 1));
                if remaining.is_zero() || state.shutdown.is_cancelled() {
                    let answer = CollectPairingResponse {
                        status: "pending".to_owned(),
                        agent_id,
                        owner: None,
                        agent_key: None,
                        key_id: None,
                        expires_at: rfc3339(deadline.unwrap_or(now)),
                        server: None,
                    };
                    return Ok((StatusCode::ACCEPTED, Json(answer)).into_response());
                }
                let _waiting = WaitingCollect::enter();
                tokio::select! {
                    _ = tokio::time::timeout(wait, notified) => {}
                    () = state.shutdown.cancelled() => {}
                }
            }
            Err(e) => return Err(ApiError::Pairing(e)),
        }
    }
}
