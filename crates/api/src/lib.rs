//! The HTTP API (axum), thin over the token broker.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/credentials/read` | a read capability for one inbox (agent key) |
//! | POST | `/v1/credentials/oidc` | an OIDC JWT for cloud federation (agent key) |
//! | GET | `/v1/agent/inboxes` | the inboxes the agent's active grants cover (agent key) |
//! | POST | `/v1/agent/inboxes` | a new inbox for the agent under its `create` grant, with an expiry (agent key) |
//! | GET | `/.well-known/openid-configuration` | OIDC discovery (issuer = the public URL) |
//! | GET | `/.well-known/jwks.json` | the OIDC signing keys |
//! | GET | `/.well-known/mta-sts.txt` | the MTA-STS policy, for `Host: mta-sts.<hosted domain>` ([`ApiState::with_mta_sts_policy`]) |
//! | GET | `/v1/openapi.json` | the OpenAPI document of these routes |
//! | POST | `/v1/owners/{owner}/enroll` | redeem an enrollment code, register the owner's master key |
//! | POST, GET | `/v1/grants` | create / list the owner's grants (owner signature) |
//! | PATCH | `/v1/grants/{id}` | narrow a grant's scopes / move its expiry (owner signature) |
//! | DELETE | `/v1/grants/{id}`, `/v1/keys/{id}` | revoke a grant / an agent key (owner signature) |
//! | GET | `/v1/audit` | audit records concerning the owner (owner signature) |
//! | GET | `/v1/agents`, `/v1/inboxes` | the owner's agents (with keys) and inboxes (owner signature) |
//! | POST | `/v1/inboxes` | an inbox for one of the owner's agents (owner signature) |
//! | POST, GET | `/v1/webhooks` | subscribe a URL to events / list subscriptions (owner signature, [`webhooks`]) |
//! | DELETE | `/v1/webhooks/{id}` | delete a subscription (owner signature) |
//! | POST | `/v1/webhooks/{id}/rotate` | a new secret, the previous one signing during the overlap (owner signature) |
//! | GET | `/v1/webhooks/{id}/deliveries` | a subscription's delivery log (owner signature) |
//! | POST | `/v1/webhook-deliveries/{id}/redeliver` | send a delivery again (owner signature) |
//! | POST, GET, DELETE | `/v1/agent/webhooks[/{id}]` | an agent's own subscriptions, scoped by its grants (agent key) |
//! | POST | `/v1/owner/passkey-links` | a one-time passkey registration link for the console (owner signature) |
//! | GET, PATCH | `/v1/owner/notifications` | which notices the owner gets at their address (owner signature, [`notify`]) |
//! | POST | `/v1/pairings` | open a pairing request (agent, public) |
//! | GET | `/v1/pairings/{code}` | show a pairing request (owner signature) |
//! | POST | `/v1/pairings/{code}/approve` | approve it: the agent is created (owner signature) |
//! | POST | `/v1/pairings/{code}/deny` | deny it outright: the waiting agent is told at once (owner signature) |
//! | POST | `/v1/pairings/{code}/collect` | the agent collects its key (device signature, long-poll) |
//! | GET | `/v1/inboxes/{address}/messages` | list an inbox (read capability) |
//! | GET | `/v1/inboxes/{address}/messages/{message_id}` | fetch a raw message, or `307` to a presigned object-store URL (read capability) |
//! | GET | `/v1/inboxes/{address}/events` | new-mail Server-Sent Events (read capability) |
//! | GET, PATCH | `/v1/inboxes/{address}/policy` | an inbox's allow/block lists: read (read capability or owner), change (owner signature) ([`inbox_policy`]) |
//! | POST | `/v1/inboxes/{address}/send` | send from an inbox, JSON or raw MIME: the SMTP submission path ([`send`]) |
//! | GET, POST | `/console/…` | the owner's web console, HTML ([`console`]; its own table, not in the OpenAPI document) |
//!
//! Owners sign requests with their master key (`Authorization: AgentKeys-Owner …`,
//! see [`owner`]); the owner routes need the metadata store ([`ApiState::with_meta`]).
//! Agents authenticate with `Authorization: Bearer ak_…`. Every failure is one
//! [`ApiError`] rendered as RFC 9457 problem JSON with a stable `code`
//! ([`error`] has the table). [`routes`] is the single list the router is built
//! from; a test holds the OpenAPI document ([`openapi::ApiDoc`]) to it.
//!
//! [`StoreBackend`] implements the broker's [`BrokerStore`](agentkeys_broker::BrokerStore)
//! and [`MintAudit`](agentkeys_broker::MintAudit) over the real metadata store.

pub mod agent_inboxes;
pub mod backend;
pub mod console;
pub mod credentials;
pub mod error;
pub mod extract;
pub mod grant_requests;
pub mod inbox_policy;
pub mod key_use;
pub mod messages;
pub mod notify;
pub mod openapi;
pub mod owner;
pub mod owner_directory;
pub mod pairing;
pub mod presign;
pub mod review;
pub mod send;
pub mod threads;
pub mod throttle;
pub mod webhooks;
pub mod well_known;

use std::sync::Arc;

use agentkeys_broker::{Clock, SystemClock, TokenBroker};
use agentkeys_store::{Mailroom, MetadataStore};
use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, MethodRouter, on};

pub use backend::{OP_CREDENTIAL_OIDC, OP_CREDENTIAL_READ, OP_CREDENTIAL_REFUSED, StoreBackend};
pub use credentials::{CredentialResponse, OidcCredentialRequest, ReadCredentialRequest};
pub use error::{ApiError, PROBLEM_JSON, Problem};
pub use presign::{PresignedReads, Presigner};

/// Largest accepted request body, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    broker: Arc<TokenBroker>,
    clock: Arc<dyn Clock>,
    openapi: Arc<serde_json::Value>,
    /// The metadata store the owner routes use; without it they answer 503.
    meta: Option<Arc<dyn MetadataStore>>,
    /// Wake-ups of collects waiting for an approval (shared with the store's
    /// listener on PostgreSQL, so approvals on other nodes wake them too).
    pairings: agentkeys_store::PairingWakeups,
    /// How long a collect waits for the approval ([`pairing::COLLECT_WAIT`]).
    collect_wait: std::time::Duration,
    /// Cancelled when the server stops: waiting collects answer 202 at once.
    shutdown: tokio_util::sync::CancellationToken,
    /// Blobs, message index and events for the read path; without it those routes answer 503.
    mail: Option<Arc<Mailroom>>,
    /// Presigned object-store URLs for the read path (blobs on S3); without
    /// it the server serves message bytes itself ([`presign`]).
    presigned: Option<PresignedReads>,
    /// The HTTP send door (blobs, DKIM signer, hasher); without it the route answers 503.
    send: Option<Arc<send::SendService>>,
    /// Per-address limits: refused agent keys, pairing opens ([`throttle`]).
    throttle: Arc<throttle::HttpThrottle>,
    /// The MTA-STS policy file served for `mta-sts.<hosted domain>`; `None`: 404.
    mta_sts_policy: Option<Arc<str>>,
    /// Handed to a paired agent with its key ([`pairing::ServerInfo`]).
    server_info: Option<Arc<pairing::ServerInfo>>,
    /// How recipients with a tag resolve, and which inbox names are refused.
    subaddressing: agentkeys_core::Subaddressing,
    /// Seals new webhook secrets and checks targets; without it the webhook
    /// routes that create secrets answer 503.
    webhooks: Option<agentkeys_webhooks::WebhookSettings>,
    /// The owner's web console under `/console` ([`console`]); `None`: 404.
    console: Option<Arc<console::ConsoleConfig>>,
    /// Mail to owners' addresses ([`notify`]): pairing notices and the
    /// console's emailed codes; `None`: neither is sent.
    notifier: Option<Arc<notify::Notifier>>,
    /// When keys last minted, written at most once a minute per key ([`key_use`]).
    key_uses: Arc<key_use::KeyUses>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("broker", &self.broker).finish_non_exhaustive()
    }
}

impl ApiState {
    /// State over `broker`, with the system clock for the JWKS.
    pub fn new(broker: Arc<TokenBroker>) -> Self {
        Self::with_clock(broker, Arc::new(SystemClock))
    }

    /// State with an injected clock (use the broker's, so the JWKS and the mints
    /// agree on the time).
    pub fn with_clock(broker: Arc<TokenBroker>, clock: Arc<dyn Clock>) -> Self {
        let openapi = openapi::document(&broker.config().audience);
        Self {
            broker,
            clock,
            openapi: Arc::new(openapi),
            meta: None,
            pairings: agentkeys_store::PairingWakeups::default(),
            collect_wait: pairing::COLLECT_WAIT,
            shutdown: tokio_util::sync::CancellationToken::new(),
            mail: None,
            presigned: None,
            send: None,
            throttle: Arc::default(),
            mta_sts_policy: None,
            server_info: None,
            subaddressing: agentkeys_core::Subaddressing::default(),
            webhooks: None,
            console: None,
            notifier: None,
            key_uses: Arc::default(),
        }
    }

    /// The same state serving the webhook routes ([`webhooks`]): new secrets
    /// sealed by `settings.sealer`, targets checked under `settings.policy`.
    #[must_use]
    pub fn with_webhooks(mut self, settings: agentkeys_webhooks::WebhookSettings) -> Self {
        self.webhooks = Some(settings);
        self
    }

    /// The same state with another subaddress separator (default `+`): sending
    /// to `bot+tag@<hosted>` reaches `bot@<hosted>`, and inboxes containing the
    /// separator cannot be created.
    #[must_use]
    pub fn with_subaddressing(mut self, subaddressing: agentkeys_core::Subaddressing) -> Self {
        self.subaddressing = subaddressing;
        self
    }

    /// The same state serving `policy` (an RFC 8461 §3.2 policy file) at
    /// `/.well-known/mta-sts.txt` to requests for `mta-sts.<domain>` where the
    /// domain is hosted (it also needs [`ApiState::with_meta`]).
    #[must_use]
    pub fn with_mta_sts_policy(mut self, policy: impl Into<String>) -> Self {
        self.mta_sts_policy = Some(Arc::from(policy.into()));
        self
    }

    /// The same state handing `info` to agents at pairing (the collect's answer).
    #[must_use]
    pub fn with_server_info(mut self, info: pairing::ServerInfo) -> Self {
        self.server_info = Some(Arc::new(info));
        self
    }

    /// The same state serving `POST /v1/inboxes/{address}/send` with `service`
    /// (it also needs [`ApiState::with_meta`]).
    #[must_use]
    pub fn with_send(mut self, service: send::SendService) -> Self {
        self.send = Some(Arc::new(service));
        self
    }

    /// The same state waking pairing collects through `wakeups`: give it the
    /// ones `PgEvents` wakes when an approval commits on any node
    /// (`PgEvents::pairings`), so an agent long-polling this node is answered
    /// when its owner approves on another.
    #[must_use]
    pub fn with_pairing_wakeups(mut self, wakeups: agentkeys_store::PairingWakeups) -> Self {
        self.pairings = wakeups;
        self
    }

    /// The same state with other per-address limits: other budgets (tests), or
    /// counters shared by every node
    /// ([`throttle::HttpThrottle::with_shared_counters`]).
    #[must_use]
    pub fn with_throttle(mut self, throttle: throttle::HttpThrottle) -> Self {
        self.throttle = Arc::new(throttle);
        self
    }

    /// The same state serving the owner routes (enrollment, grants, key
    /// revocation, audit) over `meta`.
    #[must_use]
    pub fn with_meta(mut self, meta: Arc<dyn MetadataStore>) -> Self {
        self.meta = Some(meta);
        self
    }

    /// The same state serving the read path (list, fetch, events) over `mail`.
    #[must_use]
    pub fn with_mailroom(mut self, mail: Arc<Mailroom>) -> Self {
        self.mail = Some(mail);
        self
    }

    /// The same state reading message bytes straight from the object store:
    /// listings carry a presigned `raw_url` per message, the raw-message route
    /// answers `307` to one, and read capabilities come with a presigned
    /// `list_url` of their inbox ([`presign`]). Every URL expires no later than
    /// the capability it was handed out under.
    #[must_use]
    pub fn with_presigner(mut self, presigner: Arc<dyn Presigner>) -> Self {
        self.presigned = Some(PresignedReads::new(presigner));
        self
    }

    /// The same state, ending long-polls (pairing collects answer 202) when
    /// `shutdown` is cancelled, so a graceful shutdown does not wait for them.
    #[must_use]
    pub fn with_shutdown(mut self, shutdown: tokio_util::sync::CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The same state serving the owner's web console under `/console`
    /// ([`console`]; it also needs [`ApiState::with_meta`], and
    /// [`ApiState::with_mailroom`] for the inbox pages).
    #[must_use]
    pub fn with_console(mut self, console: console::ConsoleConfig) -> Self {
        self.console = Some(Arc::new(console));
        self
    }

    /// The same state mailing owners through `notifier` ([`notify`]): a new
    /// pairing request addressed to an owner, and the console's emailed codes.
    #[must_use]
    pub fn with_notifier(mut self, notifier: Arc<notify::Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// The notifier given with [`ApiState::with_notifier`], for other senders
    /// of owner notices (bounce rates, send limits: [`notify::NoticeKind`]).
    pub fn notifier(&self) -> Option<&Arc<notify::Notifier>> {
        self.notifier.as_ref()
    }

    /// The same state with another long-poll limit for pairing collects (tests).
    #[must_use]
    pub fn with_collect_wait(mut self, wait: std::time::Duration) -> Self {
        self.collect_wait = wait;
        self
    }
}

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// GET.
    Get,
    /// POST.
    Post,
    /// DELETE.
    Delete,
    /// PATCH.
    Patch,
    /// PUT.
    Put,
}

impl Verb {
    /// The method.
    pub fn method(self) -> Method {
        match self {
            Self::Get => Method::GET,
            Self::Post => Method::POST,
            Self::Delete => Method::DELETE,
            Self::Patch => Method::PATCH,
            Self::Put => Method::PUT,
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Delete => MethodFilter::DELETE,
            Self::Patch => MethodFilter::PATCH,
            Self::Put => MethodFilter::PUT,
        }
    }
}

struct Route {
    verb: Verb,
    path: &'static str,
    handler: MethodRouter<ApiState>,
}

fn route<H, T>(verb: Verb, path: &'static str, handler: H) -> Route
where
    H: Handler<T, ApiState>,
    T: 'static,
{
    Route { verb, path, handler: on(verb.filter(), handler) }
}

/// The one table of routes: the router is built from it and [`routes`] lists it.
fn table() -> Vec<Route> {
    vec![
        route(Verb::Post, "/v1/credentials/read", credentials::mint_read),
        route(Verb::Post, "/v1/credentials/oidc", credentials::mint_oidc),
        route(Verb::Get, "/v1/agent/inboxes", agent_inboxes::list),
        route(Verb::Post, "/v1/agent/inboxes", agent_inboxes::create),
        route(Verb::Post, "/v1/agent/grant-requests", grant_requests::create),
        route(Verb::Get, "/.well-known/openid-configuration", well_known::openid_configuration),
        route(Verb::Get, "/.well-known/jwks.json", well_known::jwks),
        route(Verb::Get, "/.well-known/mta-sts.txt", well_known::mta_sts_policy),
        route(Verb::Get, "/v1/openapi.json", openapi_json),
        route(Verb::Post, "/v1/owners/{owner}/enroll", owner::enroll),
        route(Verb::Post, "/v1/grants", owner::create_grant),
        route(Verb::Get, "/v1/grants", owner::list_grants),
        route(Verb::Patch, "/v1/grants/{id}", owner::change_grant),
        route(Verb::Delete, "/v1/grants/{id}", owner::revoke_grant),
        route(Verb::Delete, "/v1/keys/{id}", owner::revoke_key),
        route(Verb::Get, "/v1/audit", owner::audit),
        route(Verb::Get, "/v1/agents", owner_directory::list_agents),
        route(Verb::Get, "/v1/inboxes", owner_directory::list_inboxes),
        route(Verb::Post, "/v1/inboxes", owner_directory::create_inbox),
        route(Verb::Post, "/v1/webhooks", webhooks::create),
        route(Verb::Get, "/v1/webhooks", webhooks::list),
        route(Verb::Delete, "/v1/webhooks/{id}", webhooks::delete),
        route(Verb::Post, "/v1/webhooks/{id}/rotate", webhooks::rotate),
        route(Verb::Get, "/v1/webhooks/{id}/deliveries", webhooks::deliveries),
        route(Verb::Post, "/v1/webhook-deliveries/{id}/redeliver", webhooks::redeliver),
        route(Verb::Post, "/v1/agent/webhooks", webhooks::agent_create),
        route(Verb::Get, "/v1/agent/webhooks", webhooks::agent_list),
        route(Verb::Delete, "/v1/agent/webhooks/{id}", webhooks::agent_delete),
        route(Verb::Post, "/v1/agent/webhooks/{id}/rotate", webhooks::agent_rotate),
        route(Verb::Get, "/v1/agent/webhooks/{id}/deliveries", webhooks::agent_deliveries),
        route(Verb::Post, "/v1/agent/webhooks/{id}/deliveries/{delivery}/redeliver", webhooks::agent_redeliver),
        route(Verb::Post, "/v1/owner/passkey-links", console::links::create_link),
        route(Verb::Get, "/v1/owner/notifications", notify::get_settings),
        route(Verb::Patch, "/v1/owner/notifications", notify::put_settings),
        route(Verb::Post, "/v1/pairings", pairing::open),
        route(Verb::Get, "/v1/pairings/{code}", pairing::view),
        route(Verb::Post, "/v1/pairings/{code}/approve", pairing::approve),
        route(Verb::Post, "/v1/pairings/{code}/deny", pairing::deny),
        route(Verb::Post, "/v1/pairings/{code}/collect", pairing::collect),
        route(Verb::Get, "/v1/inboxes/{address}/messages", messages::list),
        route(Verb::Get, "/v1/inboxes/{address}/messages/{message_id}", messages::fetch),
        route(Verb::Get, "/v1/inboxes/{address}/events", messages::events),
        route(Verb::Get, "/v1/inboxes/{address}/threads", threads::list_threads),
        route(Verb::Get, "/v1/inboxes/{address}/threads/{thread_id}", threads::get_thread),
        route(Verb::Get, "/v1/inboxes/{address}/search", threads::search),
        route(Verb::Get, "/v1/inboxes/{address}/policy", inbox_policy::get_policy),
        route(Verb::Patch, "/v1/inboxes/{address}/policy", inbox_policy::change_policy),
        route(Verb::Get, "/v1/inboxes/{address}/sent", review::list_sent),
        route(Verb::Get, "/v1/inboxes/{address}/sent/{message_id}", review::show_sent),
        route(Verb::Get, "/v1/agents/{agent}/limits", review::get_limits),
        route(Verb::Put, "/v1/agents/{agent}/limits", review::set_limits),
        route(Verb::Get, "/v1/review", review::list),
        route(Verb::Get, "/v1/review/{id}", review::show),
        route(Verb::Post, "/v1/review/{id}/reject", review::reject),
        route(Verb::Get, "/v1/agent/grant-requests", grant_requests::list),
        route(Verb::Get, "/v1/owner/grant-requests", grant_requests::owner_list),
        route(Verb::Post, "/v1/owner/grant-requests/{id}/approve", grant_requests::owner_approve),
        route(Verb::Post, "/v1/owner/grant-requests/{id}/deny", grant_requests::owner_deny),
        // The owner's replacement is a whole message: the SMTP size limit.
        Route {
            verb: Verb::Post,
            path: "/v1/review/{id}/approve",
            handler: on(Verb::Post.filter(), review::approve).layer(DefaultBodyLimit::max(send::MAX_SEND_BODY_BYTES)),
        },
        // A whole message: the SMTP size limit, not MAX_BODY_BYTES (the route's layer wins).
        Route {
            verb: Verb::Post,
            path: "/v1/inboxes/{address}/send",
            handler: on(Verb::Post.filter(), send::send).layer(DefaultBodyLimit::max(send::MAX_SEND_BODY_BYTES)),
        },
    ]
}

/// Every route the router serves, as (method, path).
pub fn routes() -> Vec<(Verb, &'static str)> {
    table().into_iter().map(|r| (r.verb, r.path)).collect()
}

/// The fixed-path routes that take an agent key (`Authorization: Bearer ak_…`):
/// their refused keys spend the client address's failure budget ([`throttle`]). The
/// send route (`/v1/inboxes/{address}/send`) does too ([`takes_agent_key`]).
pub const AGENT_KEY_ROUTES: [&str; 4] =
    ["/v1/credentials/read", "/v1/credentials/oidc", "/v1/agent/inboxes", "/v1/agent/grant-requests"];

/// Whether `path` is a route that authenticates with an agent key.
pub fn takes_agent_key(path: &str) -> bool {
    AGENT_KEY_ROUTES.contains(&path)
        || path.strip_prefix("/v1/inboxes/").and_then(|rest| rest.strip_suffix("/send")).is_some_and(|a| !a.contains('/'))
}

/// The API router. Unknown paths answer 404 and wrong methods 405, both as
/// problem JSON; bodies over [`MAX_BODY_BYTES`] answer 413; per-address limits
/// answer 429 (needs the peer address as a `ConnectInfo<SocketAddr>` request
/// extension, as the CLI's listener and `into_make_service_with_connect_info`
/// put it).
pub fn router(state: ApiState) -> axum::Router {
    let mut router = axum::Router::new();
    for r in table() {
        router = router.route(r.path, r.handler);
    }
    router
        .merge(console::router(state.clone()))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), rate_limits))
        .with_state(state)
}

/// The per-address limits around the routes they guard: a throttled address gets
/// 429 before its agent key is looked at, a refused key
/// ([`throttle::KeyRefused`]) spends its failure budget (the one that finds it
/// spent becomes a 429), and each pairing open spends the pairing budget.
/// Requests without a peer address are not limited.
async fn rate_limits(
    axum::extract::State(state): axum::extract::State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let Some(ip) = peer else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if takes_agent_key(path) {
        if let Err(limited) = state.throttle.check_agent_key(ip).await {
            return limited.into_response();
        }
        let response = next.run(request).await;
        if response.extensions().get::<throttle::KeyRefused>().is_some()
            && let Some(limited) = state.throttle.record_agent_key_failure(ip).await
        {
            return limited.into_response();
        }
        return response;
    }
    if request.method() == Method::POST
        && path == "/v1/pairings"
        && let Err(limited) = state.throttle.check_pairing(ip).await
    {
        return limited.into_response();
    }
    next.run(request).await
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object))
)]
pub(crate) async fn openapi_json(
    axum::extract::State(state): axum::extract::State<ApiState>,
) -> impl IntoResponse {
    Json(state.openapi.as_ref().clone())
}

#[cfg(test)]
mod agent_key_routes {
    use super::takes_agent_key;

    #[test]
    fn every_agent_key_route_spends_the_failure_budget_and_nothing_else_does() {
        for path in ["/v1/credentials/read", "/v1/credentials/oidc", "/v1/agent/inboxes", "/v1/agent/grant-requests", "/v1/inboxes/bot@agents.localhost/send"] {
            assert!(takes_agent_key(path), "{path}");
        }
        for path in [
            "/v1/inboxes/bot@agents.localhost/messages",
            "/v1/inboxes/bot@agents.localhost/events",
            "/v1/inboxes/a/b/send",
            "/v1/inboxes//send/x",
            "/v1/grants",
            "/v1/pairings",
        ] {
            assert!(!takes_agent_key(path), "{path}");
        }
    }
}
