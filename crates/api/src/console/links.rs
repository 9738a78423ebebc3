//! `POST /v1/owner/passkey-links`: a one-time passkey registration link, asked
//! for with the owner's master key (`agentkeys owner passkey add`).

use agentkeys_audit::{Actor, AuditEvent, ops};
use agentkeys_core::time::rfc3339;
use agentkeys_store::PasskeyLinkRecord;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{PASSKEY_LINK_TTL_SECS, token_hash};
use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::owner::{OwnerApproval, backend_error, store};

/// Answer of `POST /v1/owner/passkey-links`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PasskeyLink {
    /// Open it in a browser within the validity to register a passkey (the
    /// token is in the fragment: browsers do not send it in requests or
    /// referrers). Single use.
    pub url: String,
    /// When the link stops working (RFC 3339).
    pub expires_at: String,
}

/// A one-time passkey registration link for the signing owner (owner
/// approval required). The token is stored hashed; the link registers one
/// passkey, within 15 minutes.
#[utoipa::path(
    post,
    path = "/v1/owner/passkey-links",
    tag = "owner",
    security(("owner_signature" = [])),
    responses(
        (status = 201, description = "A link, shown this once", body = PasskeyLink),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: this server has no console (its public URL is not https:// or http://localhost)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_link(State(state): State<ApiState>, approval: OwnerApproval) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let console = state.console.as_ref().ok_or(ApiError::NotFound)?;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = state.clock.now();
    let owner = approval.owner().clone();
    let link = PasskeyLinkRecord { token_hash: token_hash(&token), owner: owner.clone(), expires_at: now + PASSKEY_LINK_TTL_SECS };
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), ops::OWNER_PASSKEY_LINK, owner.as_str())
        .with_detail(json!({ "owner": owner, "expires_at": link.expires_at, "approval": approval.evidence() }));
    meta.issue_passkey_link(&link, &event).await.map_err(|e| backend_error(&e))?;
    let answer = PasskeyLink {
        url: format!("{}/console/passkey/new#t={token}", console.origin()),
        expires_at: rfc3339(link.expires_at),
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}
