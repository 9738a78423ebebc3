//! `POST /v1/credentials/read` and `POST /v1/credentials/oidc`: the broker's mint
//! path over HTTP. The body (at most 16 KiB) is read by the extractor first, but
//! the agent key is checked before anything about the body is answered, then the
//! request is authorized and minted; the token is answered only after its audit
//! record was appended (the broker enforces the order). A valid body is
//! authenticated and authorized with one read of the store
//! (`TokenBroker::authenticate_for`).

use agentkeys_broker::{Minted, scope};
use agentkeys_core::Address;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::{AgentBearer, ApiJson};

/// Body of `POST /v1/credentials/read`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadCredentialRequest {
    /// The inbox to read, e.g. `bot-1@agents.example.com`.
    #[schema(pattern = r#"^[A-Za-z0-9_-]{1,32}(?:\.[A-Za-z0-9_-]{1,15}){0,2}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){0,2}[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"#, example = "bot-1@agents.example.com")]
    pub inbox: String,
    /// Requested lifetime in seconds (default 300). Clamped to 60–1800 and to
    /// what the grant and the key have left; a clamp is not an error.
    #[serde(default, deserialize_with = "crate::extract::optional_integer")]
    #[schema(minimum = 1)]
    pub ttl: Option<i64>,
}

/// Body of `POST /v1/credentials/oidc`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcCredentialRequest {
    /// An inbox the agent holds a `read` grant for; that grant bounds the token's life.
    #[schema(pattern = r#"^[A-Za-z0-9_-]{1,32}(?:\.[A-Za-z0-9_-]{1,15}){0,2}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){0,2}[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"#, example = "bot-1@agents.example.com")]
    pub inbox: String,
    /// Requested lifetime in seconds (default 300). Clamped to 60–3600 and to
    /// what the grant and the key have left; a clamp is not an error.
    #[serde(default, deserialize_with = "crate::extract::optional_integer")]
    #[schema(minimum = 1)]
    pub ttl: Option<i64>,
    /// The `aud` claim. Only the server's configured audience is accepted
    /// (default `sts.amazonaws.com`); omit it to get that one.
    #[serde(default)]
    pub audience: Option<String>,
}

/// A minted credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CredentialResponse {
    /// The token: `akcap1.…` for a read capability, a compact ES256 JWT for OIDC.
    pub token: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: i64,
    /// Lifetime issued, in seconds.
    pub ttl: i64,
    /// Whether the lifetime differs from the one asked for (or the default).
    pub clamped: bool,
    /// Read capabilities on servers whose blobs are in an object store (S3)
    /// only: a presigned `ListObjectsV2` URL (first page, up to 1000 keys) of
    /// the inbox's own prefix `<prefix>/<owner>/<inbox>/`, to GET without any
    /// other credential. The prefix is signed: the URL edited to list anything
    /// else is refused by the store. It expires no later than the capability
    /// (`expires_at`), sooner if the store caps presigned URLs (30 min). Absent
    /// when blobs are in files and for OIDC tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uri")]
    pub list_url: Option<String>,
}

impl From<Minted> for CredentialResponse {
    fn from(m: Minted) -> Self {
        Self { token: m.token, expires_at: m.expires_at, ttl: m.ttl, clamped: m.clamped, list_url: None }
    }
}

fn parse_inbox(inbox: &str) -> Result<Address, ApiError> {
    inbox.parse().map_err(|e: agentkeys_core::IdError| ApiError::InvalidRequest {
        field: Some("inbox".to_owned()),
        detail: format!("inbox: {e}"),
    })
}

fn check_ttl(ttl: Option<i64>) -> Result<(), ApiError> {
    match ttl {
        Some(t) if t <= 0 => Err(ApiError::InvalidTtl { requested: t }),
        _ => Ok(()),
    }
}

/// A request whose body was `refused`: the key is checked first anyway (an
/// invalid key is answered, and audited, before anything about the body).
async fn refuse_after_key<T>(state: &ApiState, bearer: &AgentBearer, refused: ApiError) -> Result<T, ApiError> {
    crate::key_use::authenticate(state, bearer.key()).await?;
    Err(refused)
}

fn token_response(body: CredentialResponse) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Mints a read capability for one inbox.
#[utoipa::path(
    post,
    path = "/v1/credentials/read",
    tag = "credentials",
    request_body = ReadCredentialRequest,
    security(("agent_key" = [])),
    responses(
        (status = 200, description = "A read capability for the inbox's messages; on object-store deployments with `list_url`", body = CredentialResponse),
        (status = 400, description = "INVALID_REQUEST or INVALID_TTL", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "NO_GRANT (also for an inbox that does not exist or is another owner's) or GRANT_EXPIRED", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE or AUDIT_UNAVAILABLE; nothing was issued", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn mint_read(
    State(state): State<ApiState>,
    bearer: AgentBearer,
    body: Result<ApiJson<ReadCredentialRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let checked = body.and_then(|ApiJson(request)| {
        let inbox = parse_inbox(&request.inbox)?;
        check_ttl(request.ttl)?;
        Ok((inbox, request))
    });
    let (inbox, request) = match checked {
        Ok(checked) => checked,
        Err(refused) => return refuse_after_key(&state, &bearer, refused).await,
    };
    let authorized = state.broker.authenticate_for(bearer.key(), &inbox, scope::Read).await?;
    let minted = state.broker.mint_read(&authorized, request.ttl).await?;
    state.key_uses.record(state.meta.as_ref(), authorized.key_id(), state.clock.now());
    let mut body = CredentialResponse::from(minted);
    // The inbox's prefix comes from the authorization the capability was minted from.
    body.list_url = state
        .presigned
        .as_ref()
        .and_then(|reads| reads.inbox_list_url(authorized.owner(), authorized.inbox(), body.expires_at, state.clock.now()))
        .map(String::from);
    Ok(token_response(body))
}

/// Mints an OIDC ID token (ES256 JWT) for cloud federation.
#[utoipa::path(
    post,
    path = "/v1/credentials/oidc",
    tag = "credentials",
    request_body = OidcCredentialRequest,
    security(("agent_key" = [])),
    responses(
        (status = 200, description = "An OIDC token; verify it with /.well-known/jwks.json", body = CredentialResponse),
        (status = 400, description = "INVALID_REQUEST, INVALID_TTL or AUDIENCE_NOT_ALLOWED", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_KEY: missing, malformed, unknown, revoked or expired agent key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "NO_GRANT (also for an inbox that does not exist or is another owner's) or GRANT_EXPIRED", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE or AUDIT_UNAVAILABLE; nothing was issued", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED: too many refused agent keys from this address; Retry-After says when to try again", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn mint_oidc(
    State(state): State<ApiState>,
    bearer: AgentBearer,
    body: Result<ApiJson<OidcCredentialRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let allowed = &state.broker.config().audience;
    let checked = body.and_then(|ApiJson(request)| {
        let inbox = parse_inbox(&request.inbox)?;
        check_ttl(request.ttl)?;
        if let Some(aud) = &request.audience
            && aud != allowed
        {
            return Err(ApiError::AudienceNotAllowed { allowed: allowed.clone() });
        }
        Ok((inbox, request))
    });
    let (inbox, request) = match checked {
        Ok(checked) => checked,
        Err(refused) => return refuse_after_key(&state, &bearer, refused).await,
    };
    let authorized = state.broker.authenticate_for(bearer.key(), &inbox, scope::Read).await?;
    let minted = state.broker.mint_oidc(&authorized, request.ttl).await?;
    state.key_uses.record(state.meta.as_ref(), authorized.key_id(), state.clock.now());
    Ok(token_response(CredentialResponse::from(minted)))
}
