//! The owner routes in memory: enrollment, and the approval gate (signed
//! requests) in front of grants, key revocation and the audit log.

#![allow(clippy::unwrap_used)]

use agentkeys_store::roles::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use agentkeys_api::{ApiState, StoreBackend, router};
use agentkeys_approval::{EnrollmentTicket, MasterKey, Nonce, sign_request};
use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_broker::{AuthorityConfig, BrokerConfig, BrokerParts, Clock, SoftwareAuthority, TokenBroker};
use agentkeys_core::{KeyHash, KeyHasher, KeyId, MasterSeed, OwnerId, UnixTime};
use agentkeys_store::{AgentRecord, EnrollmentTicketRecord, KeyRecord, OwnerRecord, SqliteStore};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

const NOW: UnixTime = 1_900_000_000;
const OWNER_A: &str = "0x00000000000000000000000000000000000000aa";
const OWNER_B: &str = "0x00000000000000000000000000000000000000bb";
const AGENT_A: &str = "0x00000000000000000000000000000000000000a1";
const AGENT_B: &str = "0x00000000000000000000000000000000000000b1";
const KEY_B: &str = "key_bbbbbbbbbbbbbbbb";

struct TestClock(AtomicI64);
impl Clock for TestClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

struct World {
    store: Arc<SqliteStore>,
    clock: Arc<TestClock>,
    app: axum::Router,
    key_a: MasterKey,
    key_b: MasterKey,
}

fn op() -> AuditEvent {
    AuditEvent::ok(Actor::Operator, "test.setup", "-")
}

fn owner(id: &str) -> OwnerId {
    id.parse().unwrap()
}

async fn issue(store: &SqliteStore, id: &str, now: UnixTime) -> String {
    let (code, ticket) = EnrollmentTicket::issue(&mut rand::rngs::OsRng, owner(id), now);
    let rec = EnrollmentTicketRecord {
        owner: owner(id),
        code_hash: ticket.code_hash().0,
        expires_at: ticket.expires_at(),
        consumed_at: None,
    };
    store.issue_enrollment(&rec, &op()).await.unwrap();
    code.expose().to_owned()
}

/// Two owners with one agent each; owner B's agent has a key. Neither owner is enrolled.
async fn world() -> World {
    let seed = MasterSeed::from_bytes([9; 32]);
    let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    for (o, a) in [(OWNER_A, AGENT_A), (OWNER_B, AGENT_B)] {
        store.add_owner(&OwnerRecord { id: owner(o), email: None, created_at: NOW }, &op()).await.unwrap();
        let rec = AgentRecord { id: a.parse().unwrap(), owner: owner(o), name: None, created_at: NOW };
        store.add_agent(&rec, &op()).await.unwrap();
    }
    let key = KeyRecord {
        id: KEY_B.parse::<KeyId>().unwrap(),
        agent: AGENT_B.parse().unwrap(),
        hash: KeyHash([3; 32]),
        created_at: NOW,
        expires_at: NOW + 86_400,
        revoked_at: None,
    };
    store.create_key(&key, &op()).await.unwrap();
    let clock = Arc::new(TestClock(AtomicI64::new(NOW)));
    let authority = Arc::new(SoftwareAuthority::new(&seed, AuthorityConfig::default()).unwrap());
    let backend = Arc::new(StoreBackend::new(store.clone(), authority.current_kid()));
    let broker = TokenBroker::new(BrokerParts {
        store: backend.clone(),
        audit: backend,
        authority,
        hasher: KeyHasher::new(&seed),
        clock: clock.clone(),
        config: BrokerConfig::new("https://mail.example.com".parse().unwrap()),
    });
    let app = router(ApiState::with_clock(Arc::new(broker), clock.clone()).with_meta(store.clone()));
    let key_a = MasterKey::generate(&mut rand::rngs::OsRng);
    let key_b = MasterKey::generate(&mut rand::rngs::OsRng);
    World { store, clock, app, key_a, key_b }
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn enroll_req(owner: &str, code: &str, key: &MasterKey) -> Request<Body> {
    let body = json!({ "code": code, "public_key": key.public_key().to_base64() }).to_string();
    Request::post(format!("/v1/owners/{owner}/enroll"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// A request signed by `key` for `owner` at `ts`; `body_sent` may differ from
/// the signed body to simulate tampering.
fn signed(key: &MasterKey, owner_id: &str, method: &str, path: &str, body: &str, ts: UnixTime, body_sent: &str) -> Request<Body> {
    let nonce = Nonce::generate(&mut rand::rngs::OsRng);
    let sig = sign_request(key, &owner(owner_id), method, path, body.as_bytes(), ts, &nonce).unwrap();
    let mut b = Request::builder().method(method).uri(path).header(header::AUTHORIZATION, sig.header_value());
    if !body_sent.is_empty() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    b.body(Body::from(body_sent.to_owned())).unwrap()
}

async fn enroll_both(w: &World) {
    for (o, k) in [(OWNER_A, &w.key_a), (OWNER_B, &w.key_b)] {
        let code = issue(&w.store, o, NOW).await;
        let (status, body) = send(&w.app, enroll_req(o, &code, k)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

#[tokio::test]
async fn enrollment_codes_are_single_use_and_uniform() {
    let w = world().await;
    let code = issue(&w.store, OWNER_A, NOW).await;
    let other = issue(&w.store, OWNER_B, NOW - 86_400).await; // already expired
    let stranger = "0x00000000000000000000000000000000000000cc";
    // Wrong code, unknown owner, malformed code, another owner's code: one answer.
    let wrong = "enr_00000000000000000000000000";
    for (o, c) in [(OWNER_A, wrong), (stranger, code.as_str()), (OWNER_A, "nope"), (OWNER_A, other.as_str()), ("0xzz", code.as_str())] {
        let (status, body) = send(&w.app, enroll_req(o, c, &w.key_a)).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("INVALID_ENROLLMENT_CODE")), "{o} {c}");
    }
    // EXPIRED only for the right code.
    let (status, body) = send(&w.app, enroll_req(OWNER_B, &other, &w.key_b)).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::GONE, Some("EXPIRED")));
    // The right code, once.
    let (status, body) = send(&w.app, enroll_req(OWNER_A, &code.to_uppercase(), &w.key_a)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["public_key"], w.key_a.public_key().to_base64());
    let (status, body) = send(&w.app, enroll_req(OWNER_A, &code, &w.key_b)).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("INVALID_ENROLLMENT_CODE")));
    assert_eq!(w.store.owner_public_key(&owner(OWNER_A)).await.unwrap(), Some(w.key_a.public_key().to_bytes()));
    // A bad public key is a plain 400 naming the field, and spends nothing.
    let code = issue(&w.store, OWNER_B, NOW).await;
    let req = Request::post(format!("/v1/owners/{OWNER_B}/enroll"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "code": code, "public_key": "AAAA" }).to_string()))
        .unwrap();
    let (status, body) = send(&w.app, req).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("public_key")));
    assert_eq!(send(&w.app, enroll_req(OWNER_B, &code, &w.key_b)).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn signed_grant_lifecycle_and_refusals() {
    let w = world().await;
    // Not enrolled yet: the same 401 as a bad signature.
    let body = json!({ "agent": AGENT_A, "inbox": "*@agents.example.com", "scopes": ["read", "send"], "ttl": 3600 }).to_string();
    let (status, answer) = send(&w.app, signed(&w.key_a, OWNER_A, "POST", "/v1/grants", &body, NOW, &body)).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("OWNER_SIGNATURE_INVALID")));
    enroll_both(&w).await;

    // Valid.
    let req = signed(&w.key_a, OWNER_A, "POST", "/v1/grants", &body, NOW, &body);
    let replay = {
        // The exact same request again, captured before sending.
        let auth = req.headers().get(header::AUTHORIZATION).unwrap().clone();
        Request::post("/v1/grants")
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .unwrap()
    };
    let (status, grant) = send(&w.app, req).await;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    assert_eq!((grant["owner"].as_str(), grant["scopes"].as_str(), grant["state"].as_str()), (Some(OWNER_A), Some("read,send"), Some("active")));
    assert_eq!(grant["expires_at"], "2030-03-17T18:46:40Z");
    let id = grant["id"].as_str().unwrap().to_owned();

    // Replay: refused, and no second grant.
    let (status, answer) = send(&w.app, replay).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("REPLAYED_NONCE")));
    // Stale either way by 61 s; fresh at the edge of 60 s.
    for ts in [NOW - 61, NOW + 61] {
        let (status, answer) = send(&w.app, signed(&w.key_a, OWNER_A, "GET", "/v1/grants", "", ts, "")).await;
        assert_eq!((status, answer["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("STALE_TIMESTAMP")), "{ts}");
    }
    for ts in [NOW - 60, NOW + 60] {
        assert_eq!(send(&w.app, signed(&w.key_a, OWNER_A, "GET", "/v1/grants", "", ts, "")).await.0, StatusCode::OK);
    }
    // Tampered body: the signature covers the exact bytes.
    let wider = body.replace("3600", "3601");
    let (status, answer) = send(&w.app, signed(&w.key_a, OWNER_A, "POST", "/v1/grants", &body, NOW, &wider)).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("OWNER_SIGNATURE_INVALID")));
    // Another owner's key cannot sign for A.
    let (status, _) = send(&w.app, signed(&w.key_b, OWNER_A, "GET", "/v1/grants", "", NOW, "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // No header at all.
    let (status, answer) = send(&w.app, Request::get("/v1/grants").body(Body::empty()).unwrap()).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("BAD_AUTH_HEADER")));

    let (status, list) = send(&w.app, signed(&w.key_a, OWNER_A, "GET", "/v1/grants", "", NOW, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, list_b) = send(&w.app, signed(&w.key_b, OWNER_B, "GET", "/v1/grants", "", NOW, "")).await;
    assert_eq!(list_b, json!([]));

    // Owner B cannot see or touch A's grant, agent, or A's view of B's key: 404 like a missing id.
    let path = format!("/v1/grants/{id}");
    let (status, other) = send(&w.app, signed(&w.key_b, OWNER_B, "DELETE", &path, "", NOW, "")).await;
    let (_, missing) = send(&w.app, signed(&w.key_b, OWNER_B, "DELETE", "/v1/grants/gr_00000000000000000000zz", "", NOW, "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(other, missing);
    let foreign = json!({ "agent": AGENT_A, "inbox": "x@agents.example.com", "scopes": ["read"] }).to_string();
    let (status, answer) = send(&w.app, signed(&w.key_b, OWNER_B, "POST", "/v1/grants", &foreign, NOW, &foreign)).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    let key_path = format!("/v1/keys/{KEY_B}");
    let (status, _) = send(&w.app, signed(&w.key_a, OWNER_A, "DELETE", &key_path, "", NOW, "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(w.store.list_keys(&AGENT_B.parse().unwrap()).await.unwrap()[0].revoked_at, None);
    let (status, _) = send(&w.app, signed(&w.key_b, OWNER_B, "DELETE", &key_path, "", NOW, "")).await;
    assert_eq!(status, StatusCode::OK);

    // TTL over 30 days is refused.
    let long = json!({ "agent": AGENT_A, "inbox": "x@agents.example.com", "scopes": ["read"], "ttl": 30 * 86_400 + 1 }).to_string();
    let (status, answer) = send(&w.app, signed(&w.key_a, OWNER_A, "POST", "/v1/grants", &long, NOW, &long)).await;
    assert_eq!((status, answer["field"].as_str()), (StatusCode::BAD_REQUEST, Some("ttl")));

    // The owner revokes their grant.
    let (status, answer) = send(&w.app, signed(&w.key_a, OWNER_A, "DELETE", &path, "", NOW, "")).await;
    assert_eq!((status, answer["revoked"].as_bool()), (StatusCode::OK, Some(true)));
    let (_, list) = send(&w.app, signed(&w.key_a, OWNER_A, "GET", "/v1/grants", "", NOW, "")).await;
    assert_eq!(list[0]["state"], "revoked");

    // The audit log as owner A sees it: their records only, with the approval evidence.
    w.clock.0.store(NOW + 5, Ordering::SeqCst);
    let (status, page) = send(&w.app, signed(&w.key_a, OWNER_A, "GET", "/v1/audit?after=0&limit=1000", "", NOW + 5, "")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ops: Vec<&str> = page["records"].as_array().unwrap().iter().map(|r| r["operation"].as_str().unwrap()).collect();
    assert!(ops.contains(&"owner.enroll") && ops.contains(&"grant.create") && ops.contains(&"grant.revoke"), "{ops:?}");
    assert!(!ops.contains(&"key.revoke"), "owner B's key revocation leaked: {ops:?}");
    let created = page["records"].as_array().unwrap().iter().find(|r| r["operation"] == "grant.create").unwrap();
    assert_eq!(created["actor"], format!("owner:{OWNER_A}"));
    assert!(created["detail"]["approval"]["nonce"].is_string());
    let (status, page) = send(&w.app, signed(&w.key_a, OWNER_A, "GET", "/v1/audit?limit=1", "", NOW + 5, "")).await;
    assert_eq!((status, page["records"].as_array().unwrap().len()), (StatusCode::OK, 1));
    assert!(page["next_after"].is_u64());
    let (status, answer) = send(&w.app, signed(&w.key_a, OWNER_A, "GET", "/v1/audit?limit=0", "", NOW + 5, "")).await;
    assert_eq!((status, answer["field"].as_str()), (StatusCode::BAD_REQUEST, Some("limit")));
    // The query is signed too: changing it breaks the signature.
    let mut req = signed(&w.key_a, OWNER_A, "GET", "/v1/audit?limit=1", "", NOW + 5, "");
    *req.uri_mut() = "/v1/audit?limit=2".parse().unwrap();
    assert_eq!(send(&w.app, req).await.0, StatusCode::UNAUTHORIZED);
}

/// Issue 15 item 7: a grant names only the owner's inboxes. An exact address of
/// another owner's inbox answers 404 `NOT_FOUND` exactly like one that does not
/// exist, and nothing is stored or audited; a domain or prefix pattern is stored
/// but covers only the owner's inboxes (token minting and the agent's inbox list).
#[tokio::test]
async fn grants_name_only_the_owners_inboxes() {
    use agentkeys_core::{AgentKey, InboxStatus};
    use agentkeys_store::InboxRecord;
    let w = world().await;
    enroll_both(&w).await;
    w.store.ensure_domain(&"agents.example.com".parse().unwrap(), NOW).await.unwrap();
    for (address, o, a) in [("bot-a@agents.example.com", OWNER_A, AGENT_A), ("bot-b@agents.example.com", OWNER_B, AGENT_B)] {
        let rec = InboxRecord {
            address: address.parse().unwrap(),
            owner: owner(o),
            agent: a.parse().unwrap(),
            status: InboxStatus::Active,
            created_at: NOW,
            expires_at: None,
        };
        w.store.create_inbox(&rec, &op()).await.unwrap();
    }
    let create = |inbox: &str| json!({ "agent": AGENT_A, "inbox": inbox, "scopes": ["read", "send"], "ttl": 3600 }).to_string();
    let head = w.store.audit_head().await.unwrap();
    let foreign = create("bot-b@agents.example.com");
    let (status, refused) = send(&w.app, signed(&w.key_a, OWNER_A, "POST", "/v1/grants", &foreign, NOW, &foreign)).await;
    assert_eq!((status, refused["code"].as_str(), refused["field"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND"), Some("inbox")));
    let ghost = create("ghost@agents.example.com");
    let (_, missing) = send(&w.app, signed(&w.key_a, OWNER_A, "POST", "/v1/grants", &ghost, NOW, &ghost)).await;
    assert_eq!(refused, missing, "another owner's inbox answers exactly like a missing one");
    assert_eq!(w.store.audit_head().await.unwrap(), head, "a refused grant is not audited as made");
    let (_, list) = send(&w.app, signed(&w.key_a, OWNER_A, "GET", "/v1/grants", "", NOW, "")).await;
    assert_eq!(list, json!([]));

    // Own exact address, a prefix and the whole domain: stored.
    for inbox in ["bot-a@agents.example.com", "bot-*", "*@agents.example.com"] {
        let body = create(inbox);
        let (status, grant) = send(&w.app, signed(&w.key_a, OWNER_A, "POST", "/v1/grants", &body, NOW, &body)).await;
        assert_eq!(status, StatusCode::CREATED, "{inbox}: {grant}");
    }

    // A's agent, holding all three: its own inbox only.
    let hasher = agentkeys_core::KeyHasher::new(&MasterSeed::from_bytes([9; 32]));
    let secret = AgentKey::generate(&mut rand::rngs::OsRng);
    let rec = KeyRecord {
        id: KeyId::generate(&mut rand::rngs::OsRng),
        agent: AGENT_A.parse().unwrap(),
        hash: hasher.hash(&secret),
        created_at: NOW,
        expires_at: NOW + 86_400,
        revoked_at: None,
    };
    w.store.create_key(&rec, &op()).await.unwrap();
    let bearer = format!("Bearer {}", secret.expose());
    let agent_req = |method: &str, path: &str, body: String| {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, &bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let (status, inboxes) = send(&w.app, agent_req("GET", "/v1/agent/inboxes", String::new())).await;
    assert_eq!(status, StatusCode::OK, "{inboxes}");
    let listed: Vec<&str> = inboxes["inboxes"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    assert_eq!(listed, ["bot-a@agents.example.com"]);
    let (status, own) = send(&w.app, agent_req("POST", "/v1/credentials/read", json!({ "inbox": "bot-a@agents.example.com" }).to_string())).await;
    assert_eq!(status, StatusCode::OK, "{own}");
    let (status, other) = send(&w.app, agent_req("POST", "/v1/credentials/read", json!({ "inbox": "bot-b@agents.example.com" }).to_string())).await;
    assert_eq!((status, other["code"].as_str()), (StatusCode::FORBIDDEN, Some("NO_GRANT")));
}
