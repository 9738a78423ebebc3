//! Pairing over the router: open, the owner's view and approval, the agent's
//! long-poll collect; single use, expiry (injected clock), and what a prober
//! cannot tell apart.

#![allow(clippy::unwrap_used)]

use agentkeys_store::roles::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use agentkeys_api::{ApiState, StoreBackend, router};
use agentkeys_approval::{DeviceKey, EnrollmentTicket, MasterKey, Nonce, PAIRING_TTL, PairCode, sign_request};
use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_broker::{AuthorityConfig, BrokerConfig, BrokerParts, Clock, SoftwareAuthority, TokenBroker};
use agentkeys_core::{AgentKey, KeyHasher, MasterSeed, OwnerId, UnixTime};
use agentkeys_store::{EnrollmentTicketRecord, OwnerRecord, SqliteStore};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use serde_json::{Value, json};
use tower::ServiceExt;

const NOW: UnixTime = 1_900_000_000;
const OWNER_A: &str = "0x00000000000000000000000000000000000000aa";
const OWNER_B: &str = "0x00000000000000000000000000000000000000bb";

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
    hasher: KeyHasher,
    key_a: MasterKey,
    key_b: MasterKey,
}

fn owner(id: &str) -> OwnerId {
    id.parse().unwrap()
}

/// Two enrolled owners; collects wait at most `wait`.
async fn world(wait: Duration) -> World {
    let seed = MasterSeed::from_bytes([9; 32]);
    let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    let op = AuditEvent::ok(Actor::Operator, "test.setup", "-");
    let (key_a, key_b) = (MasterKey::generate(&mut rand::rngs::OsRng), MasterKey::generate(&mut rand::rngs::OsRng));
    for (o, k) in [(OWNER_A, &key_a), (OWNER_B, &key_b)] {
        store.add_owner(&OwnerRecord { id: owner(o), email: None, created_at: NOW }, &op).await.unwrap();
        let (code, ticket) = EnrollmentTicket::issue(&mut rand::rngs::OsRng, owner(o), NOW);
        let rec = EnrollmentTicketRecord { owner: owner(o), code_hash: ticket.code_hash().0, expires_at: ticket.expires_at(), consumed_at: None };
        store.issue_enrollment(&rec, &op).await.unwrap();
        store.redeem_enrollment(&owner(o), &code.hash().0, &k.public_key().to_bytes(), NOW, &op).await.unwrap();
    }
    let clock = Arc::new(TestClock(AtomicI64::new(NOW)));
    let authority = Arc::new(SoftwareAuthority::new(&seed, AuthorityConfig::default()).unwrap());
    let backend = Arc::new(StoreBackend::new(store.clone(), authority.current_kid()));
    let hasher = KeyHasher::new(&seed);
    let broker = TokenBroker::new(BrokerParts {
        store: backend.clone(),
        audit: backend,
        authority,
        hasher: hasher.clone(),
        clock: clock.clone(),
        config: BrokerConfig::new("https://mail.example.com".parse().unwrap()),
    });
    let state = ApiState::with_clock(Arc::new(broker), clock.clone()).with_meta(store.clone()).with_collect_wait(wait);
    World { store, clock, app: router(state), hasher, key_a, key_b }
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn post_json(path: &str, body: &Value) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap()
}

fn signed(key: &MasterKey, owner_id: &str, method: &str, path: &str, body: &str, ts: UnixTime) -> Request<Body> {
    let nonce = Nonce::generate(&mut rand::rngs::OsRng);
    let sig = sign_request(key, &owner(owner_id), method, path, body.as_bytes(), ts, &nonce).unwrap();
    let mut b = Request::builder().method(method).uri(path).header(header::AUTHORIZATION, sig.header_value());
    if !body.is_empty() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

async fn open(w: &World, device: &DeviceKey, name: Option<&str>) -> Value {
    let body = json!({ "device_public_key": device.public_key().to_base64(), "name": name });
    let (status, answer) = send(&w.app, post_json("/v1/pairings", &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer
}

fn view(w: &World, key: &MasterKey, o: &str, code: &str) -> Request<Body> {
    signed(key, o, "GET", &format!("/v1/pairings/{code}"), "", w.clock.now())
}

fn approve(w: &World, key: &MasterKey, o: &str, code: &str, digits: &str) -> Request<Body> {
    let body = json!({ "confirmation_code": digits }).to_string();
    signed(key, o, "POST", &format!("/v1/pairings/{code}/approve"), &body, w.clock.now())
}

fn collect(code: &str, device: &DeviceKey) -> Request<Body> {
    let pair: PairCode = code.parse().unwrap();
    let sig = base64::engine::general_purpose::STANDARD.encode(device.sign_collect(&pair).to_bytes());
    post_json(&format!("/v1/pairings/{code}/collect"), &json!({ "signature": sig }))
}

fn wrong_digits(digits: &str) -> String {
    let n: u32 = digits.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

#[tokio::test]
async fn pair_approve_collect_once() {
    let w = world(Duration::from_millis(200)).await;
    let device = DeviceKey::generate(&mut rand::rngs::OsRng);
    let opened = open(&w, &device, Some("build bot")).await;
    let code = opened["pair_code"].as_str().unwrap().to_owned();
    let digits = opened["confirmation_code"].as_str().unwrap().to_owned();
    assert_eq!(opened["agent_id"], device.agent_id().to_string());
    assert_eq!(opened["expires_at"], agentkeys_core::time::rfc3339(NOW + PAIRING_TTL));
    assert_eq!(digits.len(), 6);

    // Pending: the long-poll answers 202 after its wait.
    let (status, answer) = send(&w.app, collect(&code, &device)).await;
    assert_eq!((status, answer["status"].as_str()), (StatusCode::ACCEPTED, Some("pending")), "{answer}");

    // The owner's view: name and fingerprint, never the digits (the owner types
    // what the agent's screen shows; the server compares).
    let (status, seen) = send(&w.app, view(&w, &w.key_a, OWNER_A, &code)).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["name"].as_str(), Some("build bot"));
    assert!(seen.get("confirmation_code").is_none() && !seen.to_string().contains(&digits), "{seen}");
    assert!(seen["device_fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    assert_eq!(seen["agent_id"], device.agent_id().to_string());

    // Wrong digits: refused (one of MAX_CONFIRMATION_TRIES spent), nothing approved.
    let (status, answer) = send(&w.app, approve(&w, &w.key_a, OWNER_A, &code, &wrong_digits(&digits))).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::BAD_REQUEST, Some("CONFIRMATION_MISMATCH")));
    let (status, answer) = send(&w.app, approve(&w, &w.key_a, OWNER_A, &code, "12345")).await;
    assert_eq!((status, answer["field"].as_str()), (StatusCode::BAD_REQUEST, Some("confirmation_code")));

    // Approve once; the second answers ALREADY_CONSUMED; another owner NOT_FOUND.
    let (status, answer) = send(&w.app, approve(&w, &w.key_a, OWNER_A, &code, &digits)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!((answer["agent_id"].as_str(), answer["owner"].as_str()), (Some(device.agent_id().as_str()), Some(OWNER_A)));
    let (status, answer) = send(&w.app, approve(&w, &w.key_a, OWNER_A, &code, &digits)).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::CONFLICT, Some("ALREADY_CONSUMED")));
    let (status, answer) = send(&w.app, approve(&w, &w.key_b, OWNER_B, &code, &digits)).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    let agent = w.store.get_agent(&device.agent_id()).await.unwrap().unwrap();
    assert_eq!((agent.owner, agent.name.as_deref()), (owner(OWNER_A), Some("build bot")));

    // A poller without the device key: NOT_FOUND. The device: its key, once.
    let stranger = DeviceKey::generate(&mut rand::rngs::OsRng);
    let (status, answer) = send(&w.app, collect(&code, &stranger)).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    let (status, got) = send(&w.app, collect(&code, &device)).await;
    assert_eq!((status, got["status"].as_str()), (StatusCode::OK, Some("approved")), "{got}");
    assert_eq!(got["expires_at"], agentkeys_core::time::rfc3339(NOW + 30 * 86_400));
    let secret = AgentKey::parse(got["agent_key"].as_str().unwrap()).unwrap();
    let facts = w.store.key_facts_by_hash(&w.hasher.hash(&secret)).await.unwrap().expect("stored hashed");
    assert_eq!(facts.agent, device.agent_id());
    let (status, answer) = send(&w.app, collect(&code, &device)).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::CONFLICT, Some("ALREADY_CONSUMED")));

    // Audited: the approval (actor owner) and the collection (actor agent).
    let records = w.store.audit_all().await.unwrap();
    let approve_rec = records.iter().find(|r| r.operation == "pairing.approve").unwrap();
    assert_eq!(approve_rec.actor.to_string(), format!("owner:{OWNER_A}"));
    let collect_rec = records.iter().find(|r| r.operation == "pairing.collect").unwrap();
    assert_eq!(collect_rec.subject, got["key_id"].as_str().unwrap());
    assert!(!serde_json::to_string(&records.iter().map(|r| &r.detail).collect::<Vec<_>>()).unwrap().contains(got["agent_key"].as_str().unwrap()));
}

#[tokio::test]
async fn collect_wakes_on_approval_without_polling() {
    let w = world(Duration::from_secs(20)).await;
    let device = DeviceKey::generate(&mut rand::rngs::OsRng);
    let opened = open(&w, &device, None).await;
    let code = opened["pair_code"].as_str().unwrap().to_owned();
    let digits = opened["confirmation_code"].as_str().unwrap().to_owned();
    let app = w.app.clone();
    let req = collect(&code, &device);
    let started = Instant::now();
    let waiting = tokio::spawn(async move { send(&app, req).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the collect waits for the approval");
    assert_eq!(send(&w.app, approve(&w, &w.key_a, OWNER_A, &code, &digits)).await.0, StatusCode::OK);
    let (status, got) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{got}");
    assert!(got["agent_key"].as_str().unwrap().starts_with("ak_"));
    assert!(started.elapsed() < Duration::from_secs(5), "woken by the approval, not by the timeout");
}

#[tokio::test]
async fn expiry_with_an_injected_clock() {
    let w = world(Duration::from_millis(100)).await;
    let device = DeviceKey::generate(&mut rand::rngs::OsRng);
    let opened = open(&w, &device, None).await;
    let code = opened["pair_code"].as_str().unwrap().to_owned();
    let digits = opened["confirmation_code"].as_str().unwrap().to_owned();
    w.clock.0.store(NOW + PAIRING_TTL, Ordering::SeqCst);
    for req in [view(&w, &w.key_a, OWNER_A, &code), approve(&w, &w.key_a, OWNER_A, &code, &digits), collect(&code, &device)] {
        let (status, answer) = send(&w.app, req).await;
        assert_eq!((status, answer["code"].as_str()), (StatusCode::GONE, Some("EXPIRED")), "{answer}");
    }
    assert!(w.store.get_agent(&device.agent_id()).await.unwrap().is_none());

    // Approved at the last second, then not collected within PAIRING_TTL: EXPIRED too.
    w.clock.0.store(NOW, Ordering::SeqCst);
    let opened = open(&w, &device, None).await;
    let code = opened["pair_code"].as_str().unwrap().to_owned();
    w.clock.0.store(NOW + PAIRING_TTL - 1, Ordering::SeqCst);
    let digits = opened["confirmation_code"].as_str().unwrap();
    assert_eq!(send(&w.app, approve(&w, &w.key_a, OWNER_A, &code, digits)).await.0, StatusCode::OK);
    w.clock.0.store(NOW + PAIRING_TTL - 1 + PAIRING_TTL, Ordering::SeqCst);
    let (status, answer) = send(&w.app, collect(&code, &device)).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::GONE, Some("EXPIRED")));
}

#[tokio::test]
async fn unknown_and_consumed_are_indistinguishable_to_others() {
    let w = world(Duration::from_millis(100)).await;
    let device = DeviceKey::generate(&mut rand::rngs::OsRng);
    let opened = open(&w, &device, None).await;
    let code = opened["pair_code"].as_str().unwrap().to_owned();
    let digits = opened["confirmation_code"].as_str().unwrap().to_owned();
    assert_eq!(send(&w.app, approve(&w, &w.key_a, OWNER_A, &code, &digits)).await.0, StatusCode::OK);
    assert_eq!(send(&w.app, collect(&code, &device)).await.0, StatusCode::OK);
    let unknown = if code == "ABCD-EFGH" { "ABCD-EFGJ" } else { "ABCD-EFGH" };

    // Owner B (who did not approve it): the spent code answers exactly like an unknown or malformed one.
    let mut answers = Vec::new();
    for c in [code.as_str(), unknown, "not-a-code"] {
        answers.push(send(&w.app, view(&w, &w.key_b, OWNER_B, c)).await);
        answers.push(send(&w.app, approve(&w, &w.key_b, OWNER_B, c, &digits)).await);
    }
    for a in &answers {
        assert_eq!(a, &answers[0]);
    }
    assert_eq!((answers[0].0, answers[0].1["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));

    // A poller without the device key: the same for spent and unknown codes.
    let stranger = DeviceKey::generate(&mut rand::rngs::OsRng);
    let spent = send(&w.app, collect(&code, &stranger)).await;
    let missing = send(&w.app, collect(unknown, &stranger)).await;
    assert_eq!(spent, missing);
    assert_eq!(spent, answers[0]);
    // Unsigned owner routes: 401, whatever the code.
    let unsigned = |c: &str| Request::get(format!("/v1/pairings/{c}")).body(Body::empty()).unwrap();
    assert_eq!(send(&w.app, unsigned(&code)).await, send(&w.app, unsigned(unknown)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_approvals_have_one_winner() {
    let w = world(Duration::from_millis(100)).await;
    let device = DeviceKey::generate(&mut rand::rngs::OsRng);
    let opened = open(&w, &device, None).await;
    let code = opened["pair_code"].as_str().unwrap().to_owned();
    let digits = opened["confirmation_code"].as_str().unwrap().to_owned();
    let reqs: Vec<_> = (0..4).map(|_| approve(&w, &w.key_a, OWNER_A, &code, &digits)).collect();
    let results = futures_join(&w.app, reqs).await;
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(ok, 1, "{results:?}");
    for (s, b) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!((*s, b["code"].as_str()), (StatusCode::CONFLICT, Some("ALREADY_CONSUMED")));
    }
    let approvals = w.store.audit_all().await.unwrap().into_iter().filter(|r| r.operation == "pairing.approve").count();
    assert_eq!(approvals, 1);
}

async fn futures_join(app: &axum::Router, reqs: Vec<Request<Body>>) -> Vec<(StatusCode, Value)> {
    let handles: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, r).await })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn shutdown_ends_a_waiting_collect() {
    let mut w = world(Duration::from_secs(20)).await;
    let token = tokio_util::sync::CancellationToken::new();
    // Rebuild the router over the same store with the shutdown token.
    let seed = MasterSeed::from_bytes([9; 32]);
    let authority = Arc::new(SoftwareAuthority::new(&seed, AuthorityConfig::default()).unwrap());
    let backend = Arc::new(StoreBackend::new(w.store.clone(), authority.current_kid()));
    let broker = TokenBroker::new(BrokerParts {
        store: backend.clone(),
        audit: backend,
        authority,
        hasher: w.hasher.clone(),
        clock: w.clock.clone(),
        config: BrokerConfig::new("https://mail.example.com".parse().unwrap()),
    });
    let state = ApiState::with_clock(Arc::new(broker), w.clock.clone()).with_meta(w.store.clone()).with_shutdown(token.clone());
    w.app = router(state);
    let device = DeviceKey::generate(&mut rand::rngs::OsRng);
    let code = open(&w, &device, None).await["pair_code"].as_str().unwrap().to_owned();
    let app = w.app.clone();
    let req = collect(&code, &device);
    let started = Instant::now();
    let waiting = tokio::spawn(async move { send(&app, req).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    token.cancel();
    let (status, answer) = waiting.await.unwrap();
    assert_eq!((status, answer["status"].as_str()), (StatusCode::ACCEPTED, Some("pending")));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Every approval attempt spends one of MAX_CONFIRMATION_TRIES before the
/// digits are compared: after `wrong` wrong tries the right digits approve
/// exactly when a try is left; past the limit the request is locked (409
/// CONFIRMATION_LOCKED, for the owner and for the agent's collect), no agent is created, and each wrong try is one
/// `pairing.approve` record with outcome `denied` and its reason.
#[tokio::test]
async fn wrong_digits_count_and_lock_the_request() {
    use agentkeys_approval::MAX_CONFIRMATION_TRIES;
    let limit = usize::try_from(MAX_CONFIRMATION_TRIES).unwrap();
    let w = world(Duration::from_millis(50)).await;
    for wrong in 0..=limit + 1 {
        let device = DeviceKey::generate(&mut rand::rngs::OsRng);
        let opened = open(&w, &device, None).await;
        let code = opened["pair_code"].as_str().unwrap().to_owned();
        let digits = opened["confirmation_code"].as_str().unwrap().to_owned();
        for n in 0..wrong {
            let (status, answer) = send(&w.app, approve(&w, &w.key_a, OWNER_A, &code, &wrong_digits(&digits))).await;
            let expected = if n < limit { "CONFIRMATION_MISMATCH" } else { "CONFIRMATION_LOCKED" };
            assert_eq!(answer["code"].as_str(), Some(expected), "wrong try {} of {wrong}: {answer}", n + 1);
            assert_eq!(status, if n < limit { StatusCode::BAD_REQUEST } else { StatusCode::CONFLICT });
        }
        let (status, answer) = send(&w.app, approve(&w, &w.key_a, OWNER_A, &code, &digits)).await;
        if wrong < limit {
            assert_eq!(status, StatusCode::OK, "right digits after {wrong} wrong: {answer}");
            assert!(w.store.get_agent(&device.agent_id()).await.unwrap().is_some());
        } else {
            assert_eq!((status, answer["code"].as_str()), (StatusCode::CONFLICT, Some("CONFIRMATION_LOCKED")), "after {wrong} wrong");
            assert!(w.store.get_agent(&device.agent_id()).await.unwrap().is_none(), "locked: nothing approved");
            // The agent's collect learns it is locked and stops waiting.
            let (status, answer) = send(&w.app, collect(&code, &device)).await;
            assert_eq!((status, answer["code"].as_str()), (StatusCode::CONFLICT, Some("CONFIRMATION_LOCKED")), "{answer}");
            // Another device's signature learns nothing: the same 404 as an unknown code.
            let stranger = DeviceKey::generate(&mut rand::rngs::OsRng);
            let (status, _) = send(&w.app, collect(&code, &stranger)).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
        }
    }
    let denied: Vec<_> = w
        .store
        .audit_all()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.operation == "pairing.approve" && r.outcome.as_str() == "denied")
        .collect();
    // Wrong tries within the limit are recorded (the ones past it are refused before the comparison).
    let expected: usize = (0..=limit + 1).map(|wrong: usize| wrong.min(limit)).sum();
    assert_eq!(denied.len(), expected);
    assert!(denied.iter().all(|r| r.detail["reason"].as_str().is_some_and(|t| t.contains("6 digits"))), "{denied:?}");
    assert!(denied.iter().all(|r| r.actor.to_string() == format!("owner:{OWNER_A}")));
}
