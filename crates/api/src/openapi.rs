//! The OpenAPI 3.1 document served at `/v1/openapi.json`, generated from the
//! handlers' annotations. A test compares its paths and methods with
//! [`crate::routes`], the list the router is built from, so they cannot drift.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::credentials::{CredentialResponse, OidcCredentialRequest, ReadCredentialRequest};
use crate::error::Problem;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "AgentKeys Mail API",
        description = "Credential mints for agents (Authorization: Bearer ak_…) and the OIDC issuer. Errors are RFC 9457 problem JSON with a stable `code`."
    ),
    paths(
        crate::credentials::mint_read,
        crate::credentials::mint_oidc,
        crate::well_known::openid_configuration,
        crate::well_known::jwks,
        crate::openapi_json,
    ),
    components(schemas(ReadCredentialRequest, OidcCredentialRequest, CredentialResponse, Problem)),
    modifiers(&AgentKeyAuth),
    tags(
        (name = "credentials", description = "Short-lived credentials minted under an agent's grants"),
        (name = "oidc", description = "OIDC issuer documents"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// Adds the `agent_key` bearer security scheme.
struct AgentKeyAuth;

impl Modify for AgentKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some("ak_<43 base62 characters>".to_owned());
        components.add_security_scheme("agent_key", SecurityScheme::Http(http));
    }
}
