//! The public `/.well-known/` documents: the OIDC issuer's (DESIGN.md §5):
//! discovery and JWKS; and the MTA-STS policy (RFC 8461 §3.2) of our hosted
//! domains.

use agentkeys_broker::discovery_document;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::{ApiError, ApiState};

/// The host name prefix senders fetch a domain's MTA-STS policy from.
pub const MTA_STS_HOST_PREFIX: &str = "mta-sts.";

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

/// The domain whose MTA-STS policy a request asks for: the `Host` (or the
/// request target's authority) without its port and trailing dot, lowercase,
/// after `mta-sts.`. `None` for any other host.
pub fn mta_sts_domain(host: &str) -> Option<String> {
    let host = host.trim();
    // A name, optionally with a port (an IPv6 literal never starts with mta-sts.).
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let domain = name.strip_prefix(MTA_STS_HOST_PREFIX)?;
    (!domain.is_empty()).then(|| domain.to_owned())
}

/// The MTA-STS policy (RFC 8461 §3.2, `text/plain`, CRLF lines) when the
/// request's host is `mta-sts.<a hosted domain>` and a policy is configured;
/// 404 problem JSON otherwise. RFC 8461 requires HTTPS with a valid
/// certificate for that name: put an HTTPS front before this listener.
#[utoipa::path(
    get,
    path = "/.well-known/mta-sts.txt",
    tag = "mta-sts",
    responses(
        (status = 200, description = "The MTA-STS policy of the domain named by Host: mta-sts.<domain>", body = String, content_type = "text/plain"),
        (status = 404, description = "NOT_FOUND: no policy is configured, or the host is not mta-sts.<a hosted domain>", body = crate::Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE", body = crate::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn mta_sts_policy(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    let Some(policy) = state.mta_sts_policy.clone() else {
        return Err(ApiError::NotFound);
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()));
    let Some(domain) = host.as_deref().and_then(mta_sts_domain) else {
        return Err(ApiError::NotFound);
    };
    let meta = state.meta.as_ref().ok_or(ApiError::NotFound)?;
    match meta.is_hosted_domain(&domain).await {
        Ok(true) => Ok(([(header::CONTENT_TYPE, "text/plain")], policy.to_string()).into_response()),
        Ok(false) => Err(ApiError::NotFound),
        Err(err) => {
            tracing::error!(%err, %domain, "cannot look up a hosted domain for its MTA-STS policy");
            Err(ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mta_sts_domain;

    #[test]
    fn the_policy_host_names_the_domain() {
        let cases: &[(&str, Option<&str>)] = &[
            ("mta-sts.example.com", Some("example.com")),
            ("MTA-STS.Example.COM:8443", Some("example.com")),
            ("mta-sts.example.com.", Some("example.com")),
            ("mta-sts.example.com.:443", Some("example.com")),
            ("example.com", None),
            ("mta-sts.", None),
            ("www.mta-sts.example.com", None),
            ("[::1]:8787", None),
            ("127.0.0.1:8787", None),
        ];
        for (host, want) in cases {
            assert_eq!(mta_sts_domain(host).as_deref(), *want, "{host}");
        }
    }
}
