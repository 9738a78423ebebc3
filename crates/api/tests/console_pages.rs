//! The console's read pages over the router, in memory, with sessions made in
//! the store (the browser test, `crates/cli/tests/console_browser.rs`, signs in
//! with a real passkey): the server certificate on the approvals page, pending
//! pairings and grant requests shown to their owner only, the sent view and
//! the audit time filter answering another owner's inbox and bad times as they
//! should.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use agentkeys_api::console::ConsoleConfig;
use agentkeys_api::{ApiState, StoreBackend, router};
use agentkeys_approval::DeviceKey;
use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_broker::{AuthorityConfig, BrokerConfig, BrokerParts, Clock, SoftwareAuthority, TokenBroker};
use agentkeys_core::{InboxStatus, KeyHasher, MasterSeed, OwnerId, UnixTime};
use agentkeys_store::roles::*;
use agentkeys_store::{AgentRecord, GrantRequestRecord, GrantRequestStatus, InboxRecord, OwnerRecord, SessionRecord, SqliteStore};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tower::ServiceExt;

const NOW: UnixTime = 1_900_000_000;
const OWNER_A: &str = "0x00000000000000000000000000000000000000aa";
const OWNER_B: &str = "0x00000000000000000000000000000000000000bb";
const AGENT_A: &str = "0x00000000000000000000000000000000000000a1";
const FINGERPRINT: &str = "3F:9A:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:C2";

struct Fixed;
impl Clock for Fixed {
    fn now(&self) -> UnixTime {
        NOW
    }
}

fn owner(id: &str) -> OwnerId {
    id.parse().unwrap()
}

async fn world() -> (Arc<SqliteStore>, axum::Router) {
    let seed = MasterSeed::from_bytes([7; 32]);
    let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    let op = AuditEvent::ok(Actor::Operator, "test.setup", OWNER_A).with_detail(json!({ "owner": OWNER_A }));
    store.ensure_domain(&"agents.example.com".parse().unwrap(), NOW).await.unwrap();
    for (o, token) in [(OWNER_A, "token-a"), (OWNER_B, "token-b")] {
        store.add_owner(&OwnerRecord { id: owner(o), email: None, created_at: NOW }, &op).await.unwrap();
        let session = SessionRecord {
            token_hash: Sha256::digest(token.as_bytes()).into(),
            owner: owner(o),
            created_at: NOW,
            last_seen_at: NOW,
            expires_at: NOW + 3600,
        };
        store.create_session(&session, NOW).await.unwrap();
    }
    store.add_agent(&AgentRecord { id: AGENT_A.parse().unwrap(), owner: owner(OWNER_A), name: Some("ci bot".into()), created_at: NOW }, &op).await.unwrap();
    let bot = InboxRecord {
        address: "bot@agents.example.com".parse().unwrap(),
        owner: owner(OWNER_A),
        agent: AGENT_A.parse().unwrap(),
        status: InboxStatus::Active,
        created_at: NOW,
        expires_at: None,
    };
    store.create_inbox(&bot, &op).await.unwrap();
    let clock: Arc<dyn Clock> = Arc::new(Fixed);
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
    let console = ConsoleConfig::new("https://mail.example.com").unwrap().with_certificate_fingerprint(FINGERPRINT.to_owned());
    let state = ApiState::with_clock(Arc::new(broker), clock).with_meta(store.clone()).with_console(console);
    (store, router(state))
}

async fn page(app: &axum::Router, token: &str, path: &str) -> (StatusCode, String) {
    let req = Request::get(path).header(header::COOKIE, format!("agentkeys_console={token}")).body(Body::empty()).unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn approvals_show_the_certificate_and_only_the_owners_requests() {
    let (store, app) = world().await;
    // A pairing addressed to owner A, opened over the API.
    let device = DeviceKey::generate(&mut rand::rngs::OsRng);
    let open = json!({ "device_public_key": device.public_key().to_base64(), "name": "pairing bot", "owner": OWNER_A }).to_string();
    let req = Request::post("/v1/pairings").header(header::CONTENT_TYPE, "application/json").body(Body::from(open)).unwrap();
    let opened = app.clone().oneshot(req).await.unwrap();
    assert_eq!(opened.status(), StatusCode::CREATED);
    let opened: serde_json::Value = serde_json::from_slice(&axum::body::to_bytes(opened.into_body(), 1 << 16).await.unwrap()).unwrap();
    let digits = opened["confirmation_code"].as_str().unwrap().to_owned();
    // A grant request of owner A's agent.
    let asked = GrantRequestRecord {
        id: "ar_0000000000000001".into(),
        owner: owner(OWNER_A),
        agent: AGENT_A.parse().unwrap(),
        pattern: "bot@agents.example.com".parse().unwrap(),
        scopes: "read".parse().unwrap(),
        ttl: 2 * 86_400,
        reason: Some("<script>alert(1)</script> sign up".into()),
        created_at: NOW,
        status: GrantRequestStatus::Pending,
        decided_at: None,
        grant: None,
    };
    let event = AuditEvent::ok(Actor::Agent(AGENT_A.parse().unwrap()), "grant.request", "ar_0000000000000001");
    store.add_grant_request(&asked, NOW - 60, 10, &event).await.unwrap();

    let (status, mine) = page(&app, "token-a", "/console").await;
    assert_eq!(status, StatusCode::OK);
    assert!(mine.contains(&format!("SHA-256 {FINGERPRINT}")), "the certificate to compare");
    assert!(mine.contains("pairing bot") && mine.contains("ci bot"), "{mine}");
    assert!(!mine.contains(&digits), "the page never shows the digits the owner has to type");
    assert!(mine.contains("&lt;script&gt;alert(1)&lt;/script&gt; sign up") && !mine.contains("<script>alert"), "the reason is text");
    assert!(mine.contains("/console/grant-requests/ar_0000000000000001/approve") && mine.contains("2 days"));
    // The request can be denied from the list: named by its code's hash (the
    // list never shows the pair code).
    let code: agentkeys_approval::PairCode = opened["pair_code"].as_str().unwrap().parse().unwrap();
    let deny = format!("/console/pairings/{}/deny", agentkeys_audit::hash_to_hex(&code.hash().0));
    assert!(mine.contains(&deny) && !mine.contains(opened["pair_code"].as_str().unwrap()), "{mine}");
    let (status, theirs) = page(&app, "token-b", "/console").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!theirs.contains("pairing bot") && !theirs.contains("ar_0000000000000001") && !theirs.contains("sign up"), "{theirs}");
    assert!(!theirs.contains("/deny"), "{theirs}");
    // No session: to the sign-in page.
    assert_eq!(page(&app, "nobody", "/console").await.0, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_sent_view_and_the_audit_filter_answer_as_documented() {
    let (_store, app) = world().await;
    let (status, missing) = page(&app, "token-b", "/console/sent?inbox=nobody@agents.example.com").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Owner A's inbox asked by owner B: the same page as a missing one.
    assert_eq!(page(&app, "token-b", "/console/sent?inbox=bot@agents.example.com").await, (StatusCode::NOT_FOUND, missing));
    let (status, sent) = page(&app, "token-a", "/console/sent?inbox=bot@agents.example.com").await;
    assert_eq!(status, StatusCode::OK);
    assert!(sent.contains("0 recipients") && sent.contains("Nothing sent"), "{sent}");
    for bad in ["yesterday", "2026-13-01", "16:05"] {
        let (status, body) = page(&app, "token-a", &format!("/console/audit?from={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body.contains("a UTC time like"), "{body}");
    }
    // The records are stamped by the store's clock (today): inside a window
    // from 2000 on, outside one that ends in 2000 or starts in 2999.
    let (status, audit) = page(&app, "token-a", "/console/audit?from=2000-01-01T00:00").await;
    assert_eq!(status, StatusCode::OK);
    assert!(audit.contains("test.setup"), "{audit}");
    for outside in ["/console/audit?to=2000-01-01", "/console/audit?from=2999-01-01T00:00:00"] {
        let (status, body) = page(&app, "token-a", outside).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("test.setup") && body.contains("0 records"), "{outside}: {body}");
    }
}

/// The review page: the owner's held messages only; an id that is not one of
/// the owner's (unknown, malformed) is the same 404 page.
#[tokio::test]
async fn the_review_page_lists_nothing_foreign_and_unknown_ids_are_missing() {
    let (_store, app) = world().await;
    let (status, list) = page(&app, "token-a", "/console/review").await;
    assert_eq!(status, StatusCode::OK);
    assert!(list.contains("Held for review") && list.contains("Nothing waiting."), "{list}");
    assert!(list.contains("href=\"/console/review\" aria-current=\"page\""), "the navigation marks the page");
    let (status, missing) = page(&app, "token-a", "/console/review/01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(page(&app, "token-a", "/console/review/not-a-ulid").await, (StatusCode::NOT_FOUND, missing));
    assert_eq!(page(&app, "nobody", "/console/review").await.0, StatusCode::SEE_OTHER);
}
