//! The OIDC issuer documents (DESIGN.md §5): discovery and JWKS, both public.

use agentkeys_broker::discovery_document;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::ApiState;

/// How long verifiers may cache the issuer documents.
const CACHE_CONTROL: &str = "public, max-age=300";

fn cached(value: serde_json::Value) -> Response {
    let mut response = Json(value).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    response
}

/// The OpenID Provider configuration; `issuer` is the configured public URL.
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "oidc",
    responses((status = 200, description = "OpenID Provider metadata", body = Object))
)]
pub(crate) async fn openid_configuration(State(state): State<ApiState>) -> Response {
    cached(discovery_document(&state.broker.config().issuer))
}

/// The public keys that verify the OIDC tokens, current key first.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "oidc",
    responses((status = 200, description = "JSON Web Key Set (ES256, P-256)", body = Object))
)]
pub(crate) async fn jwks(State(state): State<ApiState>) -> Response {
    cached(state.broker.authority().jwks(state.clock.now()).to_json())
}
