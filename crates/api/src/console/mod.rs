//! The owner's web console (issue 12), served under `/console` by the same
//! router as the API: server-rendered HTML ([`pages`], maud), one small script
//! of ours for WebAuthn only (`static/console.js`), and passkeys as the gate
//! ([`agentkeys_approval::passkey`], `webauthn-rs`).
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | GET | `/console` | session | overview: approve a pairing (pair code) |
//! | GET | `/console/login`, `/console/passkey/new` | anyone | sign-in page; passkey registration page (token in the fragment) |
//! | POST | `/console/login/begin`, `/console/login/finish` | anyone | WebAuthn sign-in (JSON): a session cookie |
//! | POST | `/console/passkey/begin`, `/console/passkey/finish` | registration link | WebAuthn registration (JSON) |
//! | POST | `/console/logout` | session + CSRF | end the session |
//! | GET | `/console/pairings?code=` | session | a pending pairing: agent, name, device fingerprint |
//! | GET | `/console/agents`, `/console/inboxes`, `/console/inboxes/{address}`, `/console/inboxes/{address}/messages/{id}`, `/console/audit` | session | reads |
//! | POST | `/console/gate` | session + CSRF | a WebAuthn challenge bound to one gated action (JSON) |
//! | POST | `/console/email-code` | session + CSRF | mail the owner a code for one gated action (JSON; [`email_gate`]) |
//! | GET, POST | `/console/email-link/{id}` | the link's token (POST) | the scanner-safe approval page; only the POST approves |
//! | GET, POST | `/console/notifications` | session (+ CSRF and a gate for POST) | which notices the owner gets |
//! | GET | `/console/sent?inbox=` | session | the owner's outbound queue rows: delivery state, attempts, bounces |
//! | GET | `/console/review`, `/console/review/{id}` | session | messages held for the owner's review; one, read-only (sanitized like an inbox message) |
//! | POST | `/console/pairings/approve`, `/console/pairings/{id}/deny`, `/console/grants`, `/console/grants/{id}/change`, `/console/grants/{id}/revoke`, `/console/keys/{id}/revoke`, `/console/agents/{id}/stop`, `/console/inboxes`, `/console/inboxes/{address}/disable`, `/console/inboxes/{address}/enable`, `/console/grant-requests/{id}/approve`, `/console/grant-requests/{id}/deny`, `/console/review/{id}/approve`, `/console/review/{id}/reject` | session + CSRF + a fresh assertion (or an emailed code) for exactly this action | gated actions, audited with their `gate` |
//!
//! **Sessions.** Signing in with a passkey makes a random token; the cookie
//! ([`SESSION_COOKIE`]) is `HttpOnly; Secure; SameSite=Strict; Path=/console`,
//! the store keeps only its SHA-256, and a session ends after
//! [`SESSION_IDLE_SECS`] without a request or [`SESSION_MAX_SECS`] after sign-in.
//! Every form carries a CSRF token derived from the session token
//! ([`csrf_token`]), compared in constant time; every POST must also come from
//! our own origin (`Origin`, and `Sec-Fetch-Site` when sent), so a cross-site
//! form post is refused before anything is read.
//!
//! **Gated actions.** Reads need the session only. An action that changes who
//! may do what needs a WebAuthn assertion made for *that* request: the script
//! asks `/console/gate` for a challenge bound to the canonical hash of the
//! form's path and fields ([`action_hash`]), the authenticator signs it (user
//! verification required), and the handler recomputes the hash from what it
//! received, takes the challenge (single use, across processes) and verifies
//! the assertion against it. Without an assertion, with one for another action,
//! replayed, or without the CSRF token, nothing happens (403).
//!
//! **Owners are isolated.** Every object is looked up through the signed-in
//! owner; another owner's agent, key, grant, inbox or message answers the same
//! 404 page as one that does not exist.
//!
//! **CSP.** Every answer carries `Content-Security-Policy: default-src 'none';
//! script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';
//! form-action 'self'; frame-ancestors 'none'; base-uri 'none'`: no inline
//! script or style, nothing from elsewhere. HTML mail is sanitized with
//! `ammonia` ([`mail_view`]) and shown under the same policy.

mod actions;
mod auth;
pub mod email_gate;
pub mod links;
pub mod mail_view;
mod pages;
mod reads;
mod review;
mod settings;

pub use auth::MAX_PASSKEY_NAME_CHARS;
pub use actions::{MAX_GRANT_DAYS, MAX_INBOX_HOURS};
pub use reads::{AUDIT_PAGE, AUDIT_SCANNED, AUDIT_SHOWN, INBOX_PAGE, SENT_SHOWN, VERIFY_PAGE};
pub use review::REVIEW_SHOWN;

use std::sync::Arc;

use agentkeys_approval::PasskeyGate;
use agentkeys_core::OwnerId;
use agentkeys_store::MetadataStore;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::ApiState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "agentkeys_console";
/// A session ends after this long without a request.
pub const SESSION_IDLE_SECS: i64 = 15 * 60;
/// A session ends this long after sign-in, however active.
pub const SESSION_MAX_SECS: i64 = 12 * 3600;
/// How long a WebAuthn challenge can be answered.
pub const CHALLENGE_TTL_SECS: i64 = 300;
/// How long a passkey registration link (`agentkeys owner passkey add`) is valid.
pub const PASSKEY_LINK_TTL_SECS: i64 = 15 * 60;
/// The policy every console answer carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's settings: the relying party (from the public URL) and the
/// origin every POST must come from.
pub struct ConsoleConfig {
    gate: PasskeyGate,
    origin: String,
    certificate: Option<String>,
    /// The key emailed codes' digits are stored under (HMAC-SHA256): six
    /// digits under a plain hash are one million guesses away for anyone who
    /// reads the database. Every node derives the same one from the seed
    /// ([`ConsoleConfig::with_code_key`]); without it, a random key of this
    /// process's.
    code_key: zeroize::Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl ConsoleConfig {
    /// The console for a server reached at `public_url` (`https://…`, or
    /// `http://localhost…`: browsers refuse passkeys anywhere else). A loopback
    /// address (`http://127.0.0.1:8787`, the zero-configuration default) is
    /// served as `localhost` on the same port, so the console works on this
    /// machine with no setup; other IP addresses are refused.
    pub fn new(public_url: &str) -> Result<Self, agentkeys_approval::PasskeyError> {
        let bad = |why: &str| agentkeys_approval::PasskeyError::Config(format!("{public_url}: {why}"));
        let mut url = url::Url::parse(public_url).map_err(|e| bad(&e.to_string()))?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        };
        if loopback {
            url.set_host(Some("localhost")).map_err(|e| bad(&e.to_string()))?;
        }
        match (url.scheme(), url.host()) {
            (_, Some(url::Host::Ipv4(_) | url::Host::Ipv6(_))) => {
                return Err(bad("passkeys need a host name, not an IP address (use http://localhost:PORT on this machine)"));
            }
            ("https", Some(url::Host::Domain(_))) => {}
            ("http", Some(url::Host::Domain("localhost"))) => {}
            _ => return Err(bad("passkeys need https:// (or http://localhost)")),
        }
        let origin = url.origin().ascii_serialization();
        let gate = PasskeyGate::new(&origin, "AgentKeys")?;
        let mut code_key = zeroize::Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, code_key.as_mut());
        Ok(Self { gate, origin, certificate: None, code_key })
    }

    /// The same console storing emailed codes under `key` (derive it from the
    /// seed with [`CODE_KEY_LABEL`], so every node checks every node's codes).
    #[must_use]
    pub fn with_code_key(mut self, key: [u8; 32]) -> Self {
        self.code_key = zeroize::Zeroizing::new(key);
        self
    }

    /// The key emailed codes are stored under.
    pub(crate) fn code_key(&self) -> &[u8; 32] {
        &self.code_key
    }

    /// The same console showing, on the approvals page, the SHA-256
    /// fingerprint of the certificate the HTTPS listener presents (what an
    /// agent pairing over HTTPS pins and prints), so the owner can compare it.
    #[must_use]
    pub fn with_certificate_fingerprint(mut self, fingerprint: String) -> Self {
        self.certificate = Some(fingerprint);
        self
    }

    /// The origin POSTs must come from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// The seed derivation label of [`ConsoleConfig::with_code_key`].
pub const CODE_KEY_LABEL: &str = "console-email-code/v1";

/// What went wrong, as the console answers it (an HTML page, or JSON for the
/// script's endpoints).
#[derive(Debug)]
pub(crate) enum ConsoleError {
    /// Not signed in (or the session ended): to the sign-in page.
    SignIn,
    /// 404: no such object among the owner's.
    NotFound,
    /// 403: a POST from another origin, without the CSRF token, or without a
    /// valid assertion for this action.
    Forbidden(&'static str),
    /// 400: a malformed form or body; the text says which field.
    BadRequest(String),
    /// 503: the store failed; nothing changed.
    Unavailable,
}

pub(crate) fn unavailable(e: &dyn std::fmt::Display) -> ConsoleError {
    tracing::error!(error = %e, "console request failed in the store");
    ConsoleError::Unavailable
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            Self::SignIn => {
                return (StatusCode::SEE_OTHER, [(header::LOCATION, "/console/login")]).into_response();
            }
            Self::NotFound => (StatusCode::NOT_FOUND, "Not found", "There is nothing here.".to_owned()),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, "Refused", why.to_owned()),
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, "Bad request", why),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The store could not be reached; nothing was changed. Try again.".to_owned(),
            ),
        };
        (status, pages::message_page(title, &text)).into_response()
    }
}

pub(crate) fn config(state: &ApiState) -> Result<&Arc<ConsoleConfig>, ConsoleError> {
    state.console.as_ref().ok_or(ConsoleError::NotFound)
}

pub(crate) fn meta(state: &ApiState) -> Result<&Arc<dyn MetadataStore>, ConsoleError> {
    state.meta.as_ref().ok_or(ConsoleError::Unavailable)
}

/// SHA-256 of a token (sessions and links are stored this way only).
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The CSRF token of a session: derived from its token, so it needs no storage
/// and dies with the session.
pub fn csrf_token(session_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"agentkeys-console-csrf-v1\n");
    h.update(session_token.as_bytes());
    agentkeys_audit::hash_to_hex(&h.finalize().into())
}

/// A signed-in owner (the session cookie named a live session).
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) owner: OwnerId,
    pub(crate) csrf: String,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub(crate) fn check_csrf(&self, presented: Option<&str>) -> Result<(), ConsoleError> {
        let presented = presented.unwrap_or("");
        if presented.len() == self.csrf.len() && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden("The form's CSRF token is missing or wrong. Reload the page and try again."))
        }
    }
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<ApiState> for Session {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ConsoleError> {
        let token = cookie(&parts.headers, SESSION_COOKIE).ok_or(ConsoleError::SignIn)?.to_owned();
        let meta = meta(state)?;
        let now = state.clock.now();
        let found = meta
            .touch_session(&token_hash(&token), now, now - SESSION_IDLE_SECS)
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or(ConsoleError::SignIn)?;
        Ok(Self { owner: found.owner, csrf: csrf_token(&token) })
    }
}

/// A form body (`application/x-www-form-urlencoded`), field order kept.
#[derive(Debug, Clone, Default)]
pub(crate) struct FormFields(pub(crate) Vec<(String, String)>);

impl FormFields {
    pub(crate) fn parse(body: &Bytes) -> Self {
        Self(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Refuses a form that names a field twice: the action hash keeps one
    /// value per name, so a second one could act without being approved.
    pub(crate) fn single_valued(&self) -> Result<(), ConsoleError> {
        let mut seen = std::collections::HashSet::new();
        match self.0.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            Some((k, _)) => Err(ConsoleError::BadRequest(format!("{k}: given more than once"))),
            None => Ok(()),
        }
    }
}

/// Fields that carry the gate itself, not the action.
const GATE_FIELDS: [&str; 5] = ["csrf", "challenge", "assertion", "email_code_id", "email_code"];

/// The canonical hash of a gated action: its path (ids included) and every
/// form field but the gate's own.
pub(crate) fn action_hash(owner: &OwnerId, path: &str, fields: &FormFields) -> agentkeys_approval::ActionHash {
    let params = fields
        .0
        .iter()
        .filter(|(k, _)| !GATE_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    agentkeys_approval::ActionHash::of(path, owner, &params)
}

/// Refuses a POST that does not come from our own origin: `Origin` must be the
/// public origin and `Sec-Fetch-Site`, when the browser sends it, `same-origin`.
async fn same_origin_posts(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if request.method() == Method::POST {
        let Some(console) = state.console.as_ref() else {
            return ConsoleError::NotFound.into_response();
        };
        let headers = request.headers();
        let origin_ok = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) == Some(console.origin());
        let site_ok = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|site| site == "same-origin");
        if !origin_ok || !site_ok {
            tracing::info!("console POST refused: not from our origin");
            return ConsoleError::Forbidden("Cross-site requests are refused.").into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: under `no-referrer` browsers send
    // `Origin: null` with a form POST, and the check above needs our origin.
    // Nothing leaks to other sites either way.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

const CONSOLE_JS: &str = include_str!("static/console.js");
const CONSOLE_CSS: &str = include_str!("static/console.css");

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], CONSOLE_JS)
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], CONSOLE_CSS).into_response()
}

/// Every console route, as (method, path): the router is built from the same list.
pub const ROUTES: [(&str, &str); 40] = [
    ("GET", "/console"),
    ("GET", "/console/static/console.js"),
    ("GET", "/console/static/console.css"),
    ("GET", "/console/login"),
    ("POST", "/console/login/begin"),
    ("POST", "/console/login/finish"),
    ("POST", "/console/logout"),
    ("GET", "/console/passkey/new"),
    ("POST", "/console/passkey/begin"),
    ("POST", "/console/passkey/finish"),
    ("GET", "/console/pairings"),
    ("POST", "/console/pairings/approve"),
    ("POST", "/console/pairings/{id}/deny"),
    ("GET", "/console/agents"),
    ("POST", "/console/agents/{id}/stop"),
    ("POST", "/console/grants"),
    ("POST", "/console/grants/{id}/change"),
    ("POST", "/console/grants/{id}/revoke"),
    ("POST", "/console/keys/{id}/revoke"),
    ("GET", "/console/inboxes"),
    ("POST", "/console/inboxes"),
    ("GET", "/console/inboxes/{address}"),
    ("POST", "/console/inboxes/{address}/disable"),
    ("POST", "/console/inboxes/{address}/enable"),
    ("GET", "/console/sent"),
    ("POST", "/console/grant-requests/{id}/approve"),
    ("POST", "/console/grant-requests/{id}/deny"),
    ("GET", "/console/inboxes/{address}/messages/{id}"),
    ("GET", "/console/audit"),
    ("GET", "/console/review"),
    ("GET", "/console/review/{id}"),
    ("POST", "/console/review/{id}/approve"),
    ("POST", "/console/review/{id}/reject"),
    ("POST", "/console/gate"),
    ("GET", "/console/passkeys"),
    ("POST", "/console/email-code"),
    ("GET", "/console/email-link/{id}"),
    ("POST", "/console/email-link/{id}"),
    ("GET", "/console/notifications"),
    ("POST", "/console/notifications"),
];

/// The console's routes, with their origin check and security headers; merged
/// into [`crate::router`].
pub(crate) fn router(state: ApiState) -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/console", get(reads::overview))
        .route("/console/static/console.js", get(script))
        .route("/console/static/console.css", get(style))
        .route("/console/login", get(auth::login_page))
        .route("/console/login/begin", post(auth::login_begin))
        .route("/console/login/finish", post(auth::login_finish))
        .route("/console/logout", post(auth::logout))
        .route("/console/passkey/new", get(auth::register_page))
        .route("/console/passkey/begin", post(auth::register_begin))
        .route("/console/passkey/finish", post(auth::register_finish))
        .route("/console/passkeys", get(reads::passkeys))
        .route("/console/pairings", get(reads::pairing))
        .route("/console/pairings/approve", post(actions::approve_pairing))
        .route("/console/pairings/{id}/deny", post(actions::deny_pairing))
        .route("/console/agents", get(reads::agents))
        .route("/console/agents/{id}/stop", post(actions::stop_agent))
        .route("/console/grants", post(actions::create_grant))
        .route("/console/grants/{id}/change", post(actions::change_grant))
        .route("/console/grants/{id}/revoke", post(actions::revoke_grant))
        .route("/console/keys/{id}/revoke", post(actions::revoke_key))
        .route("/console/inboxes", get(reads::inboxes).post(actions::create_inbox))
        .route("/console/inboxes/{address}", get(reads::inbox))
        .route("/console/inboxes/{address}/disable", post(actions::set_inbox_status))
        .route("/console/inboxes/{address}/enable", post(actions::set_inbox_status))
        .route("/console/sent", get(reads::sent))
        .route("/console/grant-requests/{id}/approve", post(actions::decide_grant_request))
        .route("/console/grant-requests/{id}/deny", post(actions::decide_grant_request))
        .route("/console/inboxes/{address}/messages/{id}", get(reads::message))
        .route("/console/audit", get(reads::audit))
        .route("/console/review", get(review::list))
        .route("/console/review/{id}", get(review::show))
        .route("/console/review/{id}/approve", post(review::approve))
        .route("/console/review/{id}/reject", post(review::reject))
        .route("/console/gate", post(actions::gate))
        .route("/console/email-code", post(email_gate::request))
        .route("/console/email-link/{id}", get(email_gate::link_page).post(email_gate::link_approve))
        .route("/console/notifications", get(settings::page).post(settings::save))
        .layer(axum::middleware::from_fn_with_state(state, same_origin_posts))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn owner() -> OwnerId {
        "0x00000000000000000000000000000000000000aa".parse().unwrap()
    }

    #[test]
    fn the_gate_fields_are_not_part_of_the_action() {
        let plain = FormFields(vec![("confirmation".into(), "123456".into()), ("pair_code".into(), "ABCD-EFGH".into())]);
        let mut gated = plain.clone();
        gated.0.push(("csrf".into(), "x".into()));
        gated.0.push(("challenge".into(), "y".into()));
        gated.0.push(("assertion".into(), "{}".into()));
        let path = "/console/pairings/approve";
        assert_eq!(action_hash(&owner(), path, &plain), action_hash(&owner(), path, &gated));
        assert_ne!(action_hash(&owner(), path, &plain), action_hash(&owner(), "/console/keys/key_1/revoke", &plain));
    }

    #[test]
    fn loopback_addresses_are_served_as_localhost_and_other_ips_refused() {
        let origin = |u: &str| ConsoleConfig::new(u).map(|c| c.origin().to_owned());
        assert_eq!(origin("http://127.0.0.1:8787").unwrap(), "http://localhost:8787");
        assert_eq!(origin("http://[::1]:8787/").unwrap(), "http://localhost:8787");
        assert_eq!(origin("http://localhost:9000").unwrap(), "http://localhost:9000");
        assert_eq!(origin("https://mail.example.com").unwrap(), "https://mail.example.com");
        assert!(origin("http://192.0.2.7:8787").is_err(), "another machine's IP");
        assert!(origin("https://192.0.2.7").is_err());
        assert!(origin("http://mail.example.com").is_err(), "plain http off localhost");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("x_agentkeys_console=no; agentkeys_console=tok; other=1"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    proptest! {
        /// The CSRF token is the session's and no other's, and only it passes.
        #[test]
        fn csrf_tokens_are_per_session(a in "[A-Za-z0-9]{20,40}", b in "[A-Za-z0-9]{20,40}") {
            let session = Session { owner: owner(), csrf: csrf_token(&a) };
            prop_assert!(session.check_csrf(Some(&csrf_token(&a))).is_ok());
            prop_assert_eq!(session.check_csrf(Some(&csrf_token(&b))).is_ok(), a == b);
            prop_assert!(session.check_csrf(None).is_err());
            prop_assert!(session.check_csrf(Some(&a)).is_err());
        }
    }
}
