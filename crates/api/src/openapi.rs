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
        description = "Credential mints for agents (Authorization: Bearer ak_…) and the OIDC issuer. Errors are RFC 9457 problem JSON with a stable `code`. Every operation lists every status it answers; besides those, the listener itself answers 503 TOO_MANY_CONNECTIONS (with Retry-After) to a connection over its caps, before any request on it is read."
    ),
    paths(
        crate::credentials::mint_read,
        crate::credentials::mint_oidc,
        crate::agent_inboxes::list,
        crate::agent_inboxes::create,
        crate::grant_requests::create,
        crate::well_known::openid_configuration,
        crate::well_known::jwks,
        crate::well_known::mta_sts_policy,
        crate::openapi_json,
        crate::owner::enroll,
        crate::owner::create_grant,
        crate::owner::list_grants,
        crate::owner::change_grant,
        crate::owner::revoke_grant,
        crate::owner::revoke_key,
        crate::owner::audit,
        crate::owner_directory::list_agents,
        crate::owner_directory::list_inboxes,
        crate::owner_directory::create_inbox,
        crate::webhooks::create,
        crate::webhooks::list,
        crate::webhooks::delete,
        crate::webhooks::rotate,
        crate::webhooks::deliveries,
        crate::webhooks::redeliver,
        crate::webhooks::agent_create,
        crate::webhooks::agent_list,
        crate::webhooks::agent_delete,
        crate::webhooks::agent_rotate,
        crate::webhooks::agent_deliveries,
        crate::webhooks::agent_redeliver,
        crate::pairing::open,
        crate::pairing::view,
        crate::pairing::approve,
        crate::pairing::deny,
        crate::pairing::collect,
        crate::messages::list,
        crate::messages::fetch,
        crate::messages::events,
        crate::threads::list_threads,
        crate::threads::get_thread,
        crate::threads::search,
        crate::send::send,
        crate::inbox_policy::get_policy,
        crate::inbox_policy::change_policy,
        crate::review::get_limits,
        crate::review::set_limits,
        crate::review::list,
        crate::review::show,
        crate::review::approve,
        crate::review::reject,
        crate::review::list_sent,
        crate::review::show_sent,
        crate::console::links::create_link,
        crate::notify::get_settings,
        crate::notify::put_settings,
        crate::grant_requests::list,
        crate::grant_requests::owner_list,
        crate::grant_requests::owner_approve,
        crate::grant_requests::owner_deny,
    ),
    components(schemas(
        ReadCredentialRequest,
        OidcCredentialRequest,
        CredentialResponse,
        Problem,
        crate::messages::MessageSummary,
        crate::messages::HeaderFromView,
        crate::agent_inboxes::AgentInbox,
        crate::agent_inboxes::AgentInboxes,
        crate::agent_inboxes::CreateAgentInboxRequest,
        crate::agent_inboxes::CreatedAgentInbox,
        crate::grant_requests::GrantRequestBody,
        crate::grant_requests::GrantRequestView,
        crate::owner::EnrollRequest,
        crate::owner::EnrollResponse,
        crate::owner::CreateGrantRequest,
        crate::owner::ScopeName,
        crate::owner::ChangeGrantRequest,
        crate::owner::GrantView,
        crate::owner::Revoked,
        crate::owner::AuditPage,
        crate::owner_directory::KeyView,
        crate::owner_directory::AgentView,
        crate::owner_directory::InboxView,
        crate::owner_directory::CreateInboxRequest,
        crate::webhooks::CreateWebhookRequest,
        crate::webhooks::EventType,
        crate::webhooks::WebhookView,
        crate::webhooks::WebhookCreated,
        crate::webhooks::WebhookDeleted,
        crate::webhooks::RotateWebhookRequest,
        crate::webhooks::DeliveryView,
        crate::webhooks::CreateAgentWebhookRequest,
        crate::pairing::OpenPairingRequest,
        crate::pairing::OpenPairingResponse,
        crate::pairing::PairingViewResponse,
        crate::pairing::ApprovePairingRequest,
        crate::pairing::ApprovePairingResponse,
        crate::pairing::DenyPairingResponse,
        crate::pairing::CollectPairingRequest,
        crate::pairing::CollectPairingResponse,
        crate::pairing::ServerInfo,
        crate::messages::MessageSummary,
        crate::messages::MessagePage,
        crate::threads::ThreadView,
        crate::threads::ThreadPage,
        crate::threads::ThreadMessages,
        crate::threads::SearchResult,
        crate::threads::SearchPage,
        crate::send::SendRequest,
        crate::send::SendAttachment,
        crate::send::SendResponse,
        crate::inbox_policy::PolicyView,
        crate::inbox_policy::PolicyChange,
        crate::review::LimitsView,
        crate::review::HeldView,
        crate::review::HeldList,
        crate::review::ApproveRequest,
        crate::review::SentView,
        crate::review::SentDeliveryView,
        crate::review::SentList,
        crate::console::links::PasskeyLink,
        crate::notify::NotificationSettings,
        crate::notify::ChangeNotifications,
        crate::grant_requests::GrantRequestState,
        crate::grant_requests::GrantRequestList,
        crate::grant_requests::GrantRequestDecided,
    )),
    modifiers(&AgentKeyAuth, &OwnerSignatureAuth, &ReadCapabilityAuth),
    tags(
        (name = "credentials", description = "Short-lived credentials minted under an agent's grants"),
        (name = "oidc", description = "OIDC issuer documents"),
        (name = "mta-sts", description = "The MTA-STS policy (RFC 8461) of the hosted domains; serve it over HTTPS through a front with a valid certificate for mta-sts.<domain>"),
        (name = "meta", description = "This document"),
        (name = "owner", description = "Enrollment and the owner's approval gate: requests signed with the owner's master key"),
        (name = "messages", description = "The read path: list, fetch and follow one inbox with a read capability (Authorization: Bearer akcap1.…)"),
        (name = "pairing", description = "An agent asks for an agent key with its device key; its owner approves with a signed request"),
        (name = "webhooks", description = "Events pushed to the owner's URLs, signed with the Standard Webhooks scheme (webhook-id, webhook-timestamp, webhook-signature)"),
        (name = "policy", description = "An inbox's allow and block lists: read by its agent (read capability) or owner, changed by its owner (signed)"),
        (name = "guardrails", description = "An agent's send limits and the owner's review of held messages (owner-signed)"),
        (name = "mail", description = "Sending from an inbox: the same checks, DKIM signing and queue as SMTP submission"),
    )
)]
pub struct ApiDoc;

/// The document as this server serves it: [`ApiDoc`] with what only the
/// configuration knows, the one OIDC `audience` it issues tokens for (an enum
/// of one), so every request valid against the document is one it accepts.
pub fn document(audience: &str) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(property) = doc.pointer_mut("/components/schemas/OidcCredentialRequest/properties/audience") {
        property["enum"] = serde_json::json!([audience]);
    }
    doc
}

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

/// Adds the `read_capability` bearer security scheme.
struct ReadCapabilityAuth;

impl Modify for ReadCapabilityAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some("akcap1.<payload>.<mac> from POST /v1/credentials/read".to_owned());
        components.add_security_scheme("read_capability", SecurityScheme::Http(http));
    }
}

/// Adds the `owner_signature` scheme: `Authorization: AgentKeys-Owner owner=…,
/// ts=…, nonce=…, sig=…`, an Ed25519 signature over method, path with query,
/// body hash, timestamp, nonce and owner (see `agentkeys_approval::signed_request`).
struct OwnerSignatureAuth;

impl Modify for OwnerSignatureAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "owner_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "AgentKeys-Owner owner=0x…, ts=<unix seconds>, nonce=<16-64 of A-Za-z0-9-_>, sig=<base64url Ed25519 signature of the canonical request>",
            ))),
        );
    }
}
