//! The API router in memory (`tower::ServiceExt::oneshot`) over a real SQLite
//! store, a real software authority and an injected clock.

#![allow(clippy::unwrap_used)]

use agentkeys_store::roles::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use agentkeys_api::{ApiState, StoreBackend, router, routes};
use agentkeys_audit::{Actor, AuditEvent, Outcome};
use agentkeys_broker::{
    AuthorityConfig, BackendError, BrokerConfig, BrokerParts, Clock, MintAudit, MintEvent, MintReceipt, RefusalEvent,
    SoftwareAuthority, TokenAuthority, TokenBroker,
};
use agentkeys_core::{AgentKey, Grant, GrantId, InboxStatus, KeyHasher, KeyId, MasterSeed, UnixTime};
use agentkeys_store::{AgentRecord, InboxRecord, KeyRecord, OwnerRecord, SqliteStore};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

const NOW: UnixTime = 1_900_000_000;
const OWNER_A: &str = "0x00000000000000000000000000000000000000aa";
const OWNER_B: &str = "0x00000000000000000000000000000000000000bb";
const AGENT_A: &str = "0x00000000000000000000000000000000000000a1";
const AGENT_B: &str = "0x00000000000000000000000000000000000000b1";
const BOT: &str = "bot@agents.example.com";
const SPARE: &str = "spare@agents.example.com"; // owner A's, no grant
const OLD: &str = "old@agents.example.com"; // owner A's, expired grant
const OTHER: &str = "other@agents.example.com"; // owner B's
const ISSUER: &str = "https://mail.example.com";

struct TestClock(AtomicI64);
impl Clock for TestClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

struct FailingAudit;
#[async_trait::async_trait]
impl MintAudit for FailingAudit {
    async fn record_mint(&self, _: MintEvent) -> Result<MintReceipt, BackendError> {
        Err(BackendError::new("disk full (injected)"))
    }
    async fn record_refusal(&self, _: RefusalEvent) -> Result<MintReceipt, BackendError> {
        Err(BackendError::new("disk full (injected)"))
    }
}

struct World {
    store: Arc<SqliteStore>,
    key: String,
    revoked: String,
    expired: String,
    unknown: String,
    backend: Arc<StoreBackend>,
    authority: Arc<SoftwareAuthority>,
    hasher: KeyHasher,
    clock: Arc<TestClock>,
}

fn op() -> AuditEvent {
    AuditEvent::ok(Actor::Operator, "test.setup", "x")
}

async fn add_key(store: &SqliteStore, hasher: &KeyHasher, agent: &str, expires_at: i64, revoked: bool) -> String {
    let key = AgentKey::generate(&mut rand::rngs::OsRng);
    let id = KeyId::generate(&mut rand::rngs::OsRng);
    let rec = KeyRecord {
        id: id.clone(),
        agent: agent.parse().unwrap(),
        hash: hasher.hash(&key),
        created_at: NOW - 1000,
        expires_at,
        revoked_at: None,
    };
    store.create_key(&rec, &op()).await.unwrap();
    if revoked {
        store.revoke_key(&id, NOW - 10, &op()).await.unwrap();
    }
    key.expose().to_owned()
}

async fn add_grant(store: &SqliteStore, agent: &str, owner: &str, pattern: &str, expires_at: i64) {
    let g = Grant {
        id: GrantId::generate(&mut rand::rngs::OsRng),
        owner: owner.parse().unwrap(),
        agent: agent.parse().unwrap(),
        pattern: pattern.parse().unwrap(),
        scopes: "read,send".parse().unwrap(),
        created_at: NOW - 1000,
        expires_at,
        revoked_at: None,
    };
    store.add_grant(&g, &op()).await.unwrap();
}

async fn world() -> World {
    let seed = MasterSeed::from_bytes([9; 32]);
    let hasher = KeyHasher::new(&seed);
    let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    store.ensure_domain(&"agents.example.com".parse().unwrap(), NOW).await.unwrap();
    for owner in [OWNER_A, OWNER_B] {
        let rec = OwnerRecord { id: owner.parse().unwrap(), email: None, created_at: NOW - 2000 };
        store.add_owner(&rec, &op()).await.unwrap();
    }
    for (agent, owner) in [(AGENT_A, OWNER_A), (AGENT_B, OWNER_B)] {
        let rec = AgentRecord { id: agent.parse().unwrap(), owner: owner.parse().unwrap(), name: None, created_at: NOW };
        store.add_agent(&rec, &op()).await.unwrap();
    }
    for (inbox, agent, owner) in [(BOT, AGENT_A, OWNER_A), (SPARE, AGENT_A, OWNER_A), (OLD, AGENT_A, OWNER_A), (OTHER, AGENT_B, OWNER_B)] {
        let rec = InboxRecord {
            address: inbox.parse().unwrap(),
            owner: owner.parse().unwrap(),
            agent: agent.parse().unwrap(),
            status: InboxStatus::Active,
            created_at: NOW,
            expires_at: None,
        };
        store.create_inbox(&rec, &op()).await.unwrap();
    }
    add_grant(&store, AGENT_A, OWNER_A, BOT, NOW + 86_400).await;
    add_grant(&store, AGENT_A, OWNER_A, OLD, NOW - 1).await;
    add_grant(&store, AGENT_B, OWNER_B, OTHER, NOW + 86_400).await;
    let key = add_key(&store, &hasher, AGENT_A, NOW + 86_400, false).await;
    let revoked = add_key(&store, &hasher, AGENT_A, NOW + 86_400, true).await;
    let expired = add_key(&store, &hasher, AGENT_A, NOW - 1, false).await;
    let unknown = AgentKey::generate(&mut rand::rngs::OsRng).expose().to_owned();
    let authority = Arc::new(SoftwareAuthority::new(&seed, AuthorityConfig::default()).unwrap());
    let backend = Arc::new(StoreBackend::new(store.clone(), authority.current_kid()));
    World {
        store,
        key,
        revoked,
        expired,
        unknown,
        backend,
        authority,
        hasher,
        clock: Arc::new(TestClock(AtomicI64::new(NOW))),
    }
}

impl World {
    fn state_with_audit(&self, audit: Arc<dyn MintAudit>) -> ApiState {
        let broker = TokenBroker::new(BrokerParts {
            store: self.backend.clone(),
            audit,
            authority: self.authority.clone(),
            hasher: self.hasher.clone(),
            clock: self.clock.clone(),
            config: BrokerConfig::new(ISSUER.parse().unwrap()),
        });
        ApiState::with_clock(Arc::new(broker), self.clock.clone())
    }

    fn app_with_audit(&self, audit: Arc<dyn MintAudit>) -> axum::Router {
        router(self.state_with_audit(audit))
    }

    /// The app with the store and an MTA-STS policy for the hosted domain.
    fn app_with_mta_sts(&self) -> axum::Router {
        router(
            self.state_with_audit(self.backend.clone())
                .with_meta(self.store.clone())
                .with_mta_sts_policy("version: STSv1\r\nmode: enforce\r\nmx: mx.agents.example.com\r\nmax_age: 604800\r\n"),
        )
    }

    fn app(&self) -> axum::Router {
        self.app_with_audit(self.backend.clone())
    }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

async fn send(app: &axum::Router, req: Request<Body>) -> Answer {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let content_type =
        res.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, content_type, body }
}

fn post(path: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn assert_problem(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.content_type, "application/problem+json");
    assert_eq!(a.body["code"], code, "{}", a.body);
    assert_eq!(a.body["status"], status.as_u16());
    for member in ["type", "title", "detail"] {
        assert!(a.body[member].is_string(), "{member} missing: {}", a.body);
    }
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn read_capability_happy_path_and_clamping() {
    let w = world().await;
    let app = w.app();
    let a = send(&app, post("/v1/credentials/read", Some(&w.key), &json!({ "inbox": BOT }).to_string())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body["token"].as_str().unwrap().starts_with("akcap1."));
    assert_eq!((a.body["ttl"].as_i64(), a.body["clamped"].as_bool()), (Some(300), Some(false)));
    assert_eq!(a.body["expires_at"], NOW + 300);
    let cap = w.authority.verify_capability(a.body["token"].as_str().unwrap(), NOW + 1).unwrap();
    assert!(cap.allows(&format!("{OWNER_A}/{BOT}/01J0000000000000000000000.eml")));

    let a = send(&app, post("/v1/credentials/read", Some(&w.key), &json!({ "inbox": BOT, "ttl": 100_000 }).to_string())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!((a.body["ttl"].as_i64(), a.body["clamped"].as_bool()), (Some(1800), Some(true)));
}

#[tokio::test]
async fn oidc_happy_path_clamping_and_audit() {
    let w = world().await;
    let app = w.app();
    let a = send(&app, post("/v1/credentials/oidc", Some(&w.key), &json!({ "inbox": BOT, "ttl": 900 }).to_string())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!((a.body["ttl"].as_i64(), a.body["clamped"].as_bool()), (Some(900), Some(false)));
    let token = a.body["token"].as_str().unwrap().to_owned();
    let claims = jwt_claims(&token);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], "sts.amazonaws.com");
    assert_eq!(claims["sub"], format!("agentkeys:agent:{AGENT_A}"));
    assert_eq!(claims["exp"], NOW + 900);

    let a = send(
        &app,
        post("/v1/credentials/oidc", Some(&w.key), &json!({ "inbox": BOT, "ttl": 100_000, "audience": "sts.amazonaws.com" }).to_string()),
    )
    .await;
    assert_eq!((a.body["ttl"].as_i64(), a.body["clamped"].as_bool()), (Some(3600), Some(true)), "{}", a.body);

    let records = w.store.audit_all().await.unwrap();
    let mints: Vec<_> = records.iter().filter(|r| r.operation == "credential.oidc").collect();
    assert_eq!(mints.len(), 2);
    let first = mints[0];
    assert_eq!(first.actor.to_string(), format!("agent:{AGENT_A}"));
    assert_eq!(first.subject, BOT);
    assert_eq!(first.detail["jti"], claims["jti"]);
    assert_eq!(first.detail["kid"], w.authority.current_kid());
    assert_eq!(first.detail["ttl"], 900);
    assert_eq!(first.detail["clamped"], false);
    assert_eq!(first.detail["expires_at"], NOW + 900);
    assert!(!first.detail.to_string().contains(&token));
    assert!(!first.detail.to_string().contains(&w.key));
}

#[tokio::test]
async fn no_grant_is_the_same_for_own_foreign_and_missing_inboxes() {
    let w = world().await;
    let app = w.app();
    let mut bodies = Vec::new();
    for path in ["/v1/credentials/read", "/v1/credentials/oidc"] {
        for inbox in [SPARE, OTHER, "nobody@agents.example.com"] {
            let a = send(&app, post(path, Some(&w.key), &json!({ "inbox": inbox }).to_string())).await;
            assert_problem(&a, StatusCode::FORBIDDEN, "NO_GRANT");
            bodies.push(a.body);
        }
    }
    assert!(bodies.windows(2).all(|p| p[0] == p[1]), "{bodies:?}");
}

#[tokio::test]
async fn expired_grant() {
    let w = world().await;
    let app = w.app();
    let a = send(&app, post("/v1/credentials/read", Some(&w.key), &json!({ "inbox": OLD }).to_string())).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "GRANT_EXPIRED");
    // The live grant runs out too: the clock moves past it.
    w.clock.0.store(NOW + 86_400, Ordering::SeqCst);
    let a = send(&app, post("/v1/credentials/oidc", Some(&w.key), &json!({ "inbox": BOT }).to_string())).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "the key expired at the same time: {}", a.body);
}

#[tokio::test]
async fn every_refused_key_gets_the_same_401() {
    let w = world().await;
    let app = w.app();
    let body = json!({ "inbox": BOT }).to_string();
    let mut requests = Vec::new();
    for key in [&w.revoked, &w.expired, &w.unknown, &"ak_short".to_owned(), &"not-a-key".to_owned()] {
        requests.push(post("/v1/credentials/oidc", Some(key), &body));
    }
    requests.push(post("/v1/credentials/oidc", None, &body));
    let mut basic = post("/v1/credentials/read", None, &body);
    basic.headers_mut().insert(header::AUTHORIZATION, format!("Basic {}", w.key).parse().unwrap());
    requests.push(basic);
    // Bad JSON without a valid key is still a 401: the key is checked first.
    requests.push(post("/v1/credentials/read", Some(&w.unknown), "{not json"));
    let mut bodies = Vec::new();
    for req in requests {
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.headers().get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["code"], "INVALID_KEY");
        assert_eq!(body["status"], 401);
        bodies.push(bytes);
    }
    assert!(bodies.windows(2).all(|p| p[0] == p[1]));
}

#[tokio::test]
async fn input_errors_are_problem_json_naming_the_field() {
    let w = world().await;
    let app = w.app();
    let cases: [(&str, &str, &str, Option<&str>); 7] = [
        ("/v1/credentials/read", "{not json", "INVALID_REQUEST", None),
        ("/v1/credentials/read", r#"{"inbox":"bot@agents.example.com","extra":1}"#, "INVALID_REQUEST", Some("extra")),
        ("/v1/credentials/read", r#"{"ttl":60}"#, "INVALID_REQUEST", Some("inbox")),
        ("/v1/credentials/read", r#"{"inbox":"bot@agents.example.com","ttl":"long"}"#, "INVALID_REQUEST", Some("ttl")),
        ("/v1/credentials/oidc", r#"{"inbox":"not an address"}"#, "INVALID_REQUEST", Some("inbox")),
        ("/v1/credentials/oidc", r#"{"inbox":"bot@agents.example.com","ttl":0}"#, "INVALID_TTL", Some("ttl")),
        ("/v1/credentials/oidc", r#"{"inbox":"bot@agents.example.com","audience":"evil"}"#, "AUDIENCE_NOT_ALLOWED", Some("audience")),
    ];
    for (path, body, code, field) in cases {
        let a = send(&app, post(path, Some(&w.key), body)).await;
        assert_problem(&a, StatusCode::BAD_REQUEST, code);
        assert_eq!(a.body["field"].as_str(), field, "{body}: {}", a.body);
    }
    let mut req = post("/v1/credentials/read", Some(&w.key), r#"{"inbox":"bot@agents.example.com"}"#);
    req.headers_mut().remove(header::CONTENT_TYPE);
    assert_problem(&send(&app, req).await, StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");
    let big = format!(r#"{{"inbox":"{}"}}"#, "a".repeat(agentkeys_api::MAX_BODY_BYTES));
    assert_problem(
        &send(&app, post("/v1/credentials/read", Some(&w.key), &big)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    );
    // Nothing was minted.
    assert!(w.store.audit_all().await.unwrap().iter().all(|r| !r.operation.starts_with("credential.")));
}

#[tokio::test]
async fn audit_failure_issues_nothing() {
    let w = world().await;
    let app = w.app_with_audit(Arc::new(FailingAudit));
    let res = app.clone().oneshot(post("/v1/credentials/oidc", Some(&w.key), &json!({ "inbox": BOT }).to_string())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["code"], "AUDIT_UNAVAILABLE");
    assert!(!String::from_utf8_lossy(&bytes).contains("eyJ"), "no JWT in the body");
}

#[tokio::test]
async fn oidc_issuer_documents() {
    let w = world().await;
    let app = w.app();
    let a = send(&app, get("/.well-known/openid-configuration")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["issuer"], ISSUER);
    assert_eq!(a.body["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    let a = send(&app, get("/.well-known/jwks.json")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["keys"][0]["kid"], w.authority.current_kid());
    assert_eq!(a.body["keys"][0]["alg"], "ES256");
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_problem_json() {
    let w = world().await;
    let app = w.app();
    assert_problem(&send(&app, get("/v1/nothing")).await, StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_problem(&send(&app, get("/v1/credentials/read")).await, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
}

/// The OpenAPI document lists exactly the routes the router is built from, and
/// every documented operation is served (not 404/405).
#[tokio::test]
async fn openapi_matches_the_routes() {
    let w = world().await;
    // With the store and a policy, so the MTA-STS route has something to serve.
    let app = w.app_with_mta_sts();
    let a = send(&app, get("/v1/openapi.json")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = Vec::new();
    for (path, item) in a.body["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "options", "head", "patch", "trace"] {
            if item.get(method).is_some() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    let mut served: Vec<(String, String)> =
        routes().into_iter().map(|(verb, path)| (verb.method().to_string(), path.to_owned())).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    for (method, path) in documented {
        // The MTA-STS policy is served by host name; every other route ignores it.
        let req = Request::builder()
            .method(method.as_str())
            .uri(&path)
            .header("host", "mta-sts.agents.example.com")
            .body(Body::empty())
            .unwrap();
        let status = app.clone().oneshot(req).await.unwrap().status();
        assert!(status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {status}");
    }
    assert!(a.body["components"]["securitySchemes"]["agent_key"].is_object());
}

/// Every refused mint that reached the broker leaves a `credential.refused`
/// record (outcome `denied`, the reason, what was known), never the key.
#[tokio::test]
async fn refused_mints_are_audited_without_secrets() {
    let w = world().await;
    let app = w.app();
    let before = w.store.audit_head().await.unwrap().seq;
    let read = |key: Option<&str>, inbox: &str| post("/v1/credentials/read", key, &json!({ "inbox": inbox }).to_string());
    assert_problem(&send(&app, read(Some(&w.key), OTHER)).await, StatusCode::FORBIDDEN, "NO_GRANT");
    assert_problem(&send(&app, read(Some(&w.key), OLD)).await, StatusCode::FORBIDDEN, "GRANT_EXPIRED");
    assert_problem(&send(&app, read(Some(&w.revoked), BOT)).await, StatusCode::UNAUTHORIZED, "INVALID_KEY");
    assert_problem(&send(&app, read(Some(&w.expired), BOT)).await, StatusCode::UNAUTHORIZED, "INVALID_KEY");
    assert_problem(&send(&app, read(Some(&w.unknown), BOT)).await, StatusCode::UNAUTHORIZED, "INVALID_KEY");
    assert_problem(&send(&app, read(Some("ak_short"), BOT)).await, StatusCode::UNAUTHORIZED, "INVALID_KEY");
    // No key at all is not a mint attempt the broker saw: nothing to record.
    assert_problem(&send(&app, read(None, BOT)).await, StatusCode::UNAUTHORIZED, "INVALID_KEY");

    let records: Vec<_> = w.store.audit_all().await.unwrap().into_iter().filter(|r| r.seq > before).collect();
    assert!(records.iter().all(|r| r.operation == agentkeys_api::OP_CREDENTIAL_REFUSED && r.outcome == Outcome::Denied));
    let reasons: Vec<&str> = records.iter().map(|r| r.detail["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["NO_GRANT", "GRANT_EXPIRED", "KEY_REVOKED", "KEY_EXPIRED", "KEY_NOT_FOUND", "MALFORMED_KEY"]);
    let agent_actor = format!("agent:{AGENT_A}");
    let actors: Vec<String> = records.iter().map(|r| r.actor.to_string()).collect();
    assert_eq!(actors[..4], [agent_actor.clone(), agent_actor.clone(), agent_actor.clone(), agent_actor]);
    assert_eq!(actors[4..], ["system", "system"]);
    assert_eq!(records[0].subject, OTHER);
    assert_eq!(records[0].detail["scope"], "read");
    assert_eq!(records[2].detail["key_id"].as_str().unwrap().len(), 20);
    let text = serde_json::to_string(&records).unwrap();
    for secret in [&w.key, &w.revoked, &w.expired, &w.unknown] {
        assert!(!text.contains(secret.as_str()) && !text.contains(&secret[3..]), "a presented key leaked");
    }
    agentkeys_audit::verify(&w.store.audit_all().await.unwrap()).unwrap();
}

/// Fail-closed for refusals too: if the refusal cannot be recorded, the answer is
/// 503 `AUDIT_UNAVAILABLE`, not the refusal.
#[tokio::test]
async fn an_unrecorded_refusal_is_503() {
    let w = world().await;
    let app = w.app_with_audit(Arc::new(FailingAudit));
    let read = |key: &str, inbox: &str| post("/v1/credentials/read", Some(key), &json!({ "inbox": inbox }).to_string());
    for req in [read(&w.unknown, BOT), read(&w.revoked, BOT), read(&w.key, OTHER), read(&w.key, OLD)] {
        assert_problem(&send(&app, req).await, StatusCode::SERVICE_UNAVAILABLE, "AUDIT_UNAVAILABLE");
    }
}

/// The per-address limit counts refused keys only: many successful mints from one
/// address spend nothing; the 21st refusal is a 429, and then even a valid key
/// from that address is a 429 (nothing is learned about keys while throttled).
#[tokio::test]
async fn refused_keys_are_throttled_per_address_and_successes_spend_nothing() {
    use agentkeys_api::throttle::AUTH_FAILURES_PER_IP;
    let w = world().await;
    let peer = std::net::SocketAddr::from(([10, 0, 0, 7], 4000));
    let app = w.app();
    let read = |key: &str| {
        let mut req = post("/v1/credentials/read", Some(key), &json!({ "inbox": BOT }).to_string());
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        req
    };
    for _ in 0..(2 * AUTH_FAILURES_PER_IP) {
        assert_eq!(send(&app, read(&w.key)).await.status, StatusCode::OK);
    }
    for _ in 0..AUTH_FAILURES_PER_IP {
        assert_problem(&send(&app, read(&w.unknown)).await, StatusCode::UNAUTHORIZED, "INVALID_KEY");
    }
    let res = app.clone().oneshot(read(&w.unknown)).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers().get(header::RETRY_AFTER).unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert_problem(&send(&app, read(&w.key)).await, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    // Throttled requests are not audited as refusals (the log is not a flood target).
    let refused = w.store.audit_all().await.unwrap().iter().filter(|r| r.operation == "credential.refused").count();
    assert_eq!(refused, AUTH_FAILURES_PER_IP as usize + 1);
}

/// RFC 8461 §3.2: the policy for `Host: mta-sts.<hosted domain>` (port and case
/// ignored), `text/plain`, as configured; 404 problem JSON for any other host,
/// a domain not hosted here, or no policy configured.
#[tokio::test]
async fn the_mta_sts_policy_is_served_for_hosted_domains_only() {
    let w = world().await;
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.agents.example.com\r\nmax_age: 604800\r\n";
    let fetch = |app: axum::Router, host: &'static str| async move {
        let req = Request::builder().uri("/.well-known/mta-sts.txt").header("host", host).body(Body::empty()).unwrap();
        let response = app.oneshot(req).await.unwrap();
        let status = response.status();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, content_type, String::from_utf8(body.to_vec()).unwrap())
    };
    for host in ["mta-sts.agents.example.com", "MTA-STS.Agents.Example.Com:443", "mta-sts.agents.example.com."] {
        let (status, content_type, body) = fetch(w.app_with_mta_sts(), host).await;
        assert_eq!(status, StatusCode::OK, "{host}");
        assert_eq!(content_type.as_deref(), Some("text/plain"));
        assert_eq!(body, policy, "byte for byte, CRLF");
    }
    for host in ["agents.example.com", "mta-sts.other.example", "mta-sts.sub.agents.example.com", "127.0.0.1:8787"] {
        let (status, content_type, body) = fetch(w.app_with_mta_sts(), host).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{host}");
        assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{host}");
        assert!(body.contains("\"NOT_FOUND\""), "{body}");
    }
    let (status, _, _) = fetch(w.app(), "mta-sts.agents.example.com").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no policy configured: nothing served");
}

/// Only refused keys spend the failure budget: a valid key asking, again and
/// again, for inboxes its grants do not cover (own without a grant, another
/// owner's, missing, expired grant) answers its 403 every time and never
/// throttles its address; malformed, unknown, revoked and expired keys do.
#[tokio::test]
async fn a_valid_key_refused_for_coverage_spends_no_failure_budget() {
    use agentkeys_api::throttle::AUTH_FAILURES_PER_IP;
    let w = world().await;
    let app = w.app();
    let peer = std::net::SocketAddr::from(([10, 0, 0, 8], 4000));
    let ask = |path: &str, key: &str, inbox: &str| {
        let mut req = post(path, Some(key), &json!({ "inbox": inbox }).to_string());
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        req
    };
    for round in 0..(2 * AUTH_FAILURES_PER_IP) {
        let path = if round % 2 == 0 { "/v1/credentials/read" } else { "/v1/credentials/oidc" };
        for inbox in [SPARE, OTHER, "nobody@agents.example.com"] {
            assert_problem(&send(&app, ask(path, &w.key, inbox)).await, StatusCode::FORBIDDEN, "NO_GRANT");
        }
        assert_problem(&send(&app, ask(path, &w.key, OLD)).await, StatusCode::FORBIDDEN, "GRANT_EXPIRED");
    }
    assert_eq!(send(&app, ask("/v1/credentials/read", &w.key, BOT)).await.status, StatusCode::OK);
    // Every kind of refused key counts, until the budget is spent.
    let refused = [w.unknown.clone(), w.revoked.clone(), w.expired.clone(), "ak_short".to_owned()];
    for n in 0..AUTH_FAILURES_PER_IP as usize {
        let key = &refused[n % refused.len()];
        assert_problem(&send(&app, ask("/v1/credentials/read", key, BOT)).await, StatusCode::UNAUTHORIZED, "INVALID_KEY");
    }
    assert_problem(&send(&app, ask("/v1/credentials/read", &w.unknown, BOT)).await, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
}

/// The rule behind issue 15 item 12: every status an operation answers is one
/// its OpenAPI entry lists. Each documented operation gets probes that trip
/// the failures every route shares (no or a refused credential, a body over the
/// limit, another media type, bad JSON, a throttled address, no backend), on a
/// full and on a bare state; every answer's status must be documented for that
/// operation (Schemathesis, in crates/cli/tests/schemathesis.rs, adds generated
/// bodies and parameters against the real server).
#[tokio::test]
async fn every_status_an_operation_answers_is_documented_for_it() {
    use agentkeys_api::throttle::HttpThrottle;
    let w = world().await;
    let doc = send(&w.app(), get("/v1/openapi.json")).await.body;
    let throttled = || {
        HttpThrottle::new(1, std::time::Duration::from_secs(600), 1, std::time::Duration::from_secs(600))
    };
    let apps = [
        ("full", router(w.state_with_audit(w.backend.clone()).with_meta(w.store.clone()).with_throttle(throttled()))),
        ("bare", router(w.state_with_audit(w.backend.clone()).with_throttle(throttled()))),
    ];
    let big = format!(r#"{{"inbox":"{}"}}"#, "a".repeat(agentkeys_api::MAX_BODY_BYTES));
    let owner_auth = format!("AgentKeys-Owner owner={OWNER_A}, ts={NOW}, nonce=probe-nonce-0001, sig=AAAA");
    let mut undocumented = Vec::new();
    let mut probes_run = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{owner}", OWNER_A)
            .replace("{id}", "gr_0123456789abcdefghijkl")
            .replace("{code}", "ABCD-EFGH")
            .replace("{address}", BOT)
            .replace("{message_id}", "01J00000000000000000000000");
        for (method, op) in item.as_object().unwrap() {
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            let probes: Vec<(&str, Option<String>, Option<&str>, String)> = vec![
                ("no credential", None, None, String::new()),
                ("agent key, empty JSON", Some(format!("Bearer {}", w.key)), Some("application/json"), "{}".to_owned()),
                ("unknown key", Some(format!("Bearer {}", w.unknown)), Some("application/json"), "{}".to_owned()),
                ("unknown key again (throttled)", Some(format!("Bearer {}", w.unknown)), Some("application/json"), "{}".to_owned()),
                ("body over the limit", Some(format!("Bearer {}", w.key)), Some("application/json"), big.clone()),
                ("text/plain body", Some(format!("Bearer {}", w.key)), Some("text/plain"), "x".to_owned()),
                ("bad JSON", Some(format!("Bearer {}", w.key)), Some("application/json"), "{not json".to_owned()),
                ("owner signature", Some(owner_auth.clone()), Some("application/json"), "{}".to_owned()),
                ("capability", Some("Bearer akcap1.x.y".to_owned()), None, String::new()),
            ];
            for (label, app) in &apps {
                for (probe, auth, content_type, body) in &probes {
                    let mut req = Request::builder().method(method.to_uppercase().as_str()).uri(&concrete);
                    if let Some(a) = auth {
                        req = req.header(header::AUTHORIZATION, a);
                    }
                    if let Some(t) = content_type {
                        req = req.header(header::CONTENT_TYPE, *t);
                    }
                    let mut req = req.header("host", "mta-sts.agents.example.com").body(Body::from(body.clone())).unwrap();
                    req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 9], 1))));
                    let status = app.clone().oneshot(req).await.unwrap().status();
                    probes_run += 1;
                    if !documented.iter().any(|d| d.as_str() == status.as_str()) {
                        undocumented.push(format!("{} {path} ({label}, {probe}): {status}", method.to_uppercase()));
                    }
                }
            }
        }
    }
    assert!(probes_run > 300, "{probes_run}");
    assert!(undocumented.is_empty(), "answers not in the document:\n{}", undocumented.join("\n"));
}

async fn add_scoped_grant(store: &SqliteStore, agent: &str, owner: &str, pattern: &str, scopes: &str, expires_at: i64) {
    let g = Grant {
        id: GrantId::generate(&mut rand::rngs::OsRng),
        owner: owner.parse().unwrap(),
        agent: agent.parse().unwrap(),
        pattern: pattern.parse().unwrap(),
        scopes: scopes.parse().unwrap(),
        created_at: NOW - 1000,
        expires_at,
        revoked_at: None,
    };
    store.add_grant(&g, &op()).await.unwrap();
}

#[tokio::test]
async fn an_agent_creates_inboxes_only_under_its_create_grant_and_within_its_lifetime() {
    let w = world().await;
    let app = router(w.state_with_audit(w.backend.clone()).with_meta(w.store.clone()));
    let create = |key: &str, body: &str| post("/v1/agent/inboxes", Some(key), body);
    // Read and send on the pattern do not allow creating under it.
    add_scoped_grant(&w.store, AGENT_A, OWNER_A, "signup-*@agents.example.com", "read,send", NOW + 86_400).await;
    let body = r#"{"name":"signup-gh","domain":"agents.example.com"}"#;
    assert_problem(&send(&app, create(&w.key, body)).await, StatusCode::FORBIDDEN, "NO_GRANT");
    // Without a domain, and no create grant to name one: the request must name it.
    let a = send(&app, create(&w.key, r#"{"name":"signup-gh"}"#)).await;
    assert_problem(&a, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_eq!(a.body["field"], "domain");
    add_scoped_grant(&w.store, AGENT_A, OWNER_A, "signup-*@agents.example.com", "read,create", NOW + 600).await;
    // Only on a domain assigned to the grant's owner: shared, or another owner's, nothing is created.
    let body = r#"{"name":"signup-gh","expires_in":60}"#;
    assert_problem(&send(&app, create(&w.key, body)).await, StatusCode::FORBIDDEN, "DOMAIN_NOT_ASSIGNED");
    let domain: agentkeys_core::Domain = "agents.example.com".parse().unwrap();
    w.store.assign_domain(&domain, Some(&OWNER_B.parse().unwrap()), &op()).await.unwrap();
    assert_problem(&send(&app, create(&w.key, body)).await, StatusCode::FORBIDDEN, "DOMAIN_NOT_ASSIGNED");
    w.store.assign_domain(&domain, Some(&OWNER_A.parse().unwrap()), &op()).await.unwrap();

    // A named inbox with a short life: 201, owned by the grant's owner, audited with the agent as actor.
    let a = send(&app, create(&w.key, r#"{"name":"signup-gh","expires_in":60}"#)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["address"], "signup-gh@agents.example.com");
    assert_eq!((a.body["expires_at"].as_i64(), a.body["grant_expires_at"].as_i64()), (Some(NOW + 60), Some(NOW + 600)));
    let listed = w.store.list_inboxes(Some(&OWNER_A.parse().unwrap())).await.unwrap();
    let made = listed.iter().find(|i| i.address.as_str() == "signup-gh@agents.example.com").unwrap();
    assert_eq!((made.agent.as_str(), made.expires_at, made.created_at), (AGENT_A, Some(NOW + 60), NOW));
    let records = w.store.audit_all().await.unwrap();
    let created = records.iter().rev().find(|r| r.operation == "inbox.create").unwrap();
    assert_eq!((created.actor.to_string(), created.subject.as_str()), (format!("agent:{AGENT_A}"), "signup-gh@agents.example.com"));
    assert_eq!((&created.detail["owner"], &created.detail["expires_at"]), (&json!(OWNER_A), &json!(NOW + 60)));
    // It is the agent's to use: listed with its expiry and the grant's scopes.
    let mine = send(&app, Request::get("/v1/agent/inboxes").header(header::AUTHORIZATION, format!("Bearer {}", w.key)).body(Body::empty()).unwrap()).await;
    let entry = mine.body["inboxes"].as_array().unwrap().iter().find(|i| i["address"] == "signup-gh@agents.example.com").cloned().unwrap();
    assert_eq!((entry["expires_at"].as_i64(), entry["scopes"].clone()), (Some(NOW + 60), json!(["read", "send", "create"])));

    // Without a name or a domain: a fresh name under the pattern, as long as the grant allows.
    let a = send(&app, create(&w.key, "{}")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let address = a.body["address"].as_str().unwrap();
    assert!(address.starts_with("signup-") && address.ends_with("@agents.example.com"), "{address}");
    assert_eq!(a.body["expires_at"].as_i64(), Some(NOW + 600), "the grant's expiry bounds the default");

    // Refusals: past the grant (not clamped), outside the pattern, taken, bad names and domains.
    let a = send(&app, create(&w.key, r#"{"name":"signup-late","expires_in":601}"#)).await;
    assert_problem(&a, StatusCode::BAD_REQUEST, "INVALID_EXPIRY");
    assert_eq!(a.body["field"], "expires_in");
    assert_problem(&send(&app, create(&w.key, r#"{"name":"signup-zero","expires_in":0}"#)).await, StatusCode::BAD_REQUEST, "INVALID_EXPIRY");
    assert_problem(&send(&app, create(&w.key, r#"{"name":"login-gh"}"#)).await, StatusCode::FORBIDDEN, "NO_GRANT");
    assert_problem(&send(&app, create(&w.key, r#"{"name":"signup-gh"}"#)).await, StatusCode::CONFLICT, "ADDRESS_TAKEN");
    assert_problem(&send(&app, create(&w.key, r#"{"name":"signup..x"}"#)).await, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_problem(&send(&app, create(&w.key, r#"{"name":"signup+x"}"#)).await, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let a = send(&app, create(&w.key, r#"{"name":"signup-x","domain":"not-hosted.example"}"#)).await;
    assert_problem(&a, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_eq!(a.body["field"], "domain");
    assert_problem(&send(&app, create(&w.key, r#"{"name":"signup-x","ttl":5}"#)).await, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_problem(&send(&app, create(&w.revoked, r#"{"name":"signup-x"}"#)).await, StatusCode::UNAUTHORIZED, "INVALID_KEY");

    // Another owner's agent, even with its own create grant on the same pattern,
    // never creates for this owner: its inbox would be its own owner's.
    let key_b = add_key(&w.store, &w.hasher, AGENT_B, NOW + 86_400, false).await;
    assert_problem(&send(&app, create(&key_b, r#"{"name":"signup-b"}"#)).await, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_problem(
        &send(&app, create(&key_b, r#"{"name":"signup-b","domain":"agents.example.com"}"#)).await,
        StatusCode::FORBIDDEN,
        "NO_GRANT",
    );
    let refusal = w.store.audit_all().await.unwrap().into_iter().rev().find(|r| r.operation == "credential.refused").unwrap();
    assert_eq!((refusal.detail["scope"].as_str(), refusal.subject.as_str()), (Some("create"), "signup-b@agents.example.com"));

    // Once the grant has expired: GRANT_EXPIRED, nothing created.
    w.clock.0.store(NOW + 600, Ordering::SeqCst);
    assert_problem(&send(&app, create(&w.key, r#"{"name":"signup-after"}"#)).await, StatusCode::FORBIDDEN, "GRANT_EXPIRED");
    assert!(w.store.list_inboxes(None).await.unwrap().iter().all(|i| i.address.local_part() != "signup-after"));
}

/// An agent asks its owner for a grant: 201 pending, audited with the agent
/// as actor, visible to its owner only; at most MAX_PENDING_GRANT_REQUESTS
/// wait at once (409 TOO_MANY_GRANT_REQUESTS); bad fields are 400 with the
/// field; an unknown key is 401 and asks nothing.
#[tokio::test]
async fn an_agent_asks_its_owner_for_a_grant() {
    use agentkeys_api::grant_requests::{GRANT_REQUEST_TTL_SECS, MAX_PENDING_GRANT_REQUESTS};
    let w = world().await;
    let app = router(w.state_with_audit(w.backend.clone()).with_meta(w.store.clone()));
    let ask = |key: &str, body: &Value| post("/v1/agent/grant-requests", Some(key), &body.to_string());
    let body = json!({ "inbox": SPARE, "scopes": ["read", "send"], "ttl": 7200, "reason": "sign up at example.com" });
    let a = send(&app, ask(&w.key, &body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!((a.body["status"].as_str(), a.body["scopes"].as_str(), a.body["ttl"].as_i64()), (Some("pending"), Some("read,send"), Some(7200)));
    let id = a.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ar_") && id.len() == 19, "{id}");
    let owner_a = OWNER_A.parse().unwrap();
    let pending = w.store.pending_grant_requests(&owner_a, NOW - GRANT_REQUEST_TTL_SECS).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].id.as_str(), pending[0].agent.as_str(), pending[0].reason.as_deref()), (id.as_str(), AGENT_A, Some("sign up at example.com")));
    assert!(w.store.pending_grant_requests(&OWNER_B.parse().unwrap(), 0).await.unwrap().is_empty(), "another owner sees none");
    let record = w.store.audit_all().await.unwrap().into_iter().rev().find(|r| r.operation == "grant.request").unwrap();
    assert_eq!((record.actor.to_string(), record.subject.as_str()), (format!("agent:{AGENT_A}"), id.as_str()));
    // Nothing is granted by asking.
    assert!(w.store.list_owner_grants(&owner_a).await.unwrap().iter().all(|g| g.pattern.to_string() != SPARE));

    // Bad fields, and keys that are not an agent's.
    for (bad, field) in [
        (json!({ "inbox": "not an inbox", "scopes": ["read"] }), "inbox"),
        (json!({ "inbox": SPARE, "scopes": ["fly"] }), "scopes"),
        (json!({ "inbox": SPARE, "scopes": ["read"], "ttl": 2_592_001 }), "ttl"),
        (json!({ "inbox": SPARE, "scopes": ["read"], "reason": "x".repeat(201) }), "reason"),
    ] {
        let a = send(&app, ask(&w.key, &bad)).await;
        assert_problem(&a, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
        assert_eq!(a.body["field"], field, "{bad}");
    }
    for key in [&w.unknown, &w.revoked, &w.expired] {
        assert_problem(&send(&app, ask(key, &body)).await, StatusCode::UNAUTHORIZED, "INVALID_KEY");
    }
    // The limit of waiting requests.
    for _ in 1..MAX_PENDING_GRANT_REQUESTS {
        assert_eq!(send(&app, ask(&w.key, &body)).await.status, StatusCode::CREATED);
    }
    assert_problem(&send(&app, ask(&w.key, &body)).await, StatusCode::CONFLICT, "TOO_MANY_GRANT_REQUESTS");
    let waiting = w.store.pending_grant_requests(&owner_a, NOW - GRANT_REQUEST_TTL_SECS).await.unwrap();
    assert_eq!(waiting.len(), usize::try_from(MAX_PENDING_GRANT_REQUESTS).unwrap());
}

/// A mint records its key's last use, at most once per KEY_USE_RESOLUTION_SECS.
#[tokio::test]
async fn mints_record_the_keys_last_use_once_a_minute() {
    use agentkeys_store::KEY_USE_RESOLUTION_SECS;
    let w = world().await;
    let app = router(w.state_with_audit(w.backend.clone()).with_meta(w.store.clone()));
    let read = || post("/v1/credentials/read", Some(&w.key), &json!({ "inbox": BOT }).to_string());
    let last_use = || async {
        let uses = w.store.key_last_uses(&OWNER_A.parse().unwrap(), &AGENT_A.parse().unwrap()).await.unwrap();
        uses.into_iter().map(|(_, at)| at).max()
    };
    assert_eq!(last_use().await, None, "never used");
    assert_eq!(send(&app, read()).await.status, StatusCode::OK);
    // The write runs after the answer: wait for it (bounded).
    for _ in 0..100 {
        if last_use().await.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(last_use().await, Some(NOW));
    w.clock.0.store(NOW + KEY_USE_RESOLUTION_SECS - 1, Ordering::SeqCst);
    assert_eq!(send(&app, read()).await.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(last_use().await, Some(NOW), "within the resolution: not written");
    w.clock.0.store(NOW + KEY_USE_RESOLUTION_SECS, Ordering::SeqCst);
    assert_eq!(send(&app, read()).await.status, StatusCode::OK);
    for _ in 0..100 {
        if last_use().await == Some(NOW + KEY_USE_RESOLUTION_SECS) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(last_use().await, Some(NOW + KEY_USE_RESOLUTION_SECS));
}

/// Any authentication with the key records its use, not only a mint: the
/// agent's own inbox list (`GET /v1/agent/inboxes`), once per
/// KEY_USE_RESOLUTION_SECS; a refused key records nothing.
#[tokio::test]
async fn every_agent_key_route_records_the_keys_last_use() {
    use agentkeys_store::KEY_USE_RESOLUTION_SECS;
    let w = world().await;
    let app = router(w.state_with_audit(w.backend.clone()).with_meta(w.store.clone()));
    let list = |key: &str| Request::get("/v1/agent/inboxes").header(header::AUTHORIZATION, format!("Bearer {key}")).body(Body::empty()).unwrap();
    let last_use = || async {
        let uses = w.store.key_last_uses(&OWNER_A.parse().unwrap(), &AGENT_A.parse().unwrap()).await.unwrap();
        uses.into_iter().map(|(_, at)| at).max()
    };
    let wait_for = |want: Option<i64>| async move {
        // The write runs after the answer: wait for it (bounded).
        for _ in 0..100 {
            if last_use().await == want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    assert_eq!(send(&app, list("ak_not_a_key")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(last_use().await, None, "never used");
    assert_eq!(send(&app, list(&w.key)).await.status, StatusCode::OK);
    wait_for(Some(NOW)).await;
    assert_eq!(last_use().await, Some(NOW));
    w.clock.0.store(NOW + KEY_USE_RESOLUTION_SECS, Ordering::SeqCst);
    assert_eq!(send(&app, list(&w.key)).await.status, StatusCode::OK);
    wait_for(Some(NOW + KEY_USE_RESOLUTION_SECS)).await;
    assert_eq!(last_use().await, Some(NOW + KEY_USE_RESOLUTION_SECS));
}
