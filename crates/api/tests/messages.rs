//! The read path routes in memory (`tower::ServiceExt::oneshot`) over a real
//! SQLite index, a real blob directory, the in-process event hub and a real
//! software authority: paging, isolation by the capability's prefix, the event
//! stream's replay, catch-up after lag, stream limit, keep-alive, expiry and
//! shutdown.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use agentkeys_api::messages::{DEFAULT_PAGE_LIMIT, KEEP_ALIVE_INTERVAL, MAX_PAGE_LIMIT, MAX_STREAMS_PER_INBOX};
use agentkeys_api::{ApiState, StoreBackend, router};
use agentkeys_broker::{
    AuthorityConfig, BrokerConfig, BrokerParts, CapabilityClaims, Clock, SoftwareAuthority, TokenAuthority, TokenBroker,
};
use agentkeys_core::{KeyHasher, MasterSeed, UnixTime};
use agentkeys_store::{BlobKey, BlobStore, EVENT_BUFFER, FsBlobStore, LocalEventHub, Mailroom, SqliteStore};
use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use ulid::Ulid;

const NOW: UnixTime = 1_900_000_000;
const OWNER_A: &str = "0x00000000000000000000000000000000000000aa";
const OWNER_B: &str = "0x00000000000000000000000000000000000000bb";
const BOT: &str = "bot@agents.example.com";
const OTHER: &str = "other@agents.example.com";

struct TestClock(AtomicI64);
impl Clock for TestClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

struct World {
    _dir: tempfile::TempDir,
    mail: Arc<Mailroom>,
    hub: LocalEventHub,
    authority: Arc<SoftwareAuthority>,
    app: axum::Router,
    shutdown: CancellationToken,
}

async fn world() -> World {
    world_with(None).await
}

/// [`world`] reading through `presigner` (blobs on an object store) when given.
async fn world_with(presigner: Option<Arc<dyn agentkeys_api::Presigner>>) -> World {
    let seed = MasterSeed::from_bytes([5; 32]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    let blobs = Arc::new(FsBlobStore::open(dir.path()).unwrap());
    let hub = LocalEventHub::new();
    let mail = Arc::new(Mailroom::new(blobs, store.clone(), Arc::new(hub.clone()), "mx.agents.localhost"));
    let authority = Arc::new(SoftwareAuthority::new(&seed, AuthorityConfig::default()).unwrap());
    let backend = Arc::new(StoreBackend::new(store.clone(), authority.current_kid()));
    let clock = Arc::new(TestClock(AtomicI64::new(NOW)));
    let broker = TokenBroker::new(BrokerParts {
        store: backend.clone(),
        audit: backend,
        authority: authority.clone(),
        hasher: KeyHasher::new(&seed),
        clock: clock.clone(),
        config: BrokerConfig::new("https://mail.example.com".parse().unwrap()),
    });
    let shutdown = CancellationToken::new();
    let mut state = ApiState::with_clock(Arc::new(broker), clock)
        .with_mailroom(mail.clone())
        .with_shutdown(shutdown.clone());
    if let Some(presigner) = presigner {
        state = state.with_presigner(presigner);
    }
    World { _dir: dir, mail, hub, authority, app: router(state), shutdown }
}

impl World {
    fn capability(&self, owner: &str, inbox: &str, ttl: i64) -> String {
        self.authority
            .sign_capability(&CapabilityClaims {
                owner: owner.parse().unwrap(),
                inbox: inbox.parse().unwrap(),
                issued_at: NOW - 600,
                expires_at: NOW + ttl,
                jti: "test".into(),
            })
            .unwrap()
    }

    /// Stores one message through the Mailroom (blob, index, event).
    async fn deliver(&self, owner: &str, inbox: &str, body: &str) -> Ulid {
        let id = Ulid::new();
        let key = BlobKey::message(&owner.parse().unwrap(), &inbox.parse().unwrap(), id);
        self.mail.put_durable(vec![(key, Bytes::from(body.to_owned()))]).await.unwrap();
        id
    }

    async fn request(&self, path: &str, cap: Option<&str>, last_event_id: Option<&str>) -> Response {
        let mut b = Request::get(path);
        if let Some(c) = cap {
            b = b.header(header::AUTHORIZATION, format!("Bearer {c}"));
        }
        if let Some(id) = last_event_id {
            b = b.header("last-event-id", id);
        }
        self.app.clone().oneshot(b.body(Body::empty()).unwrap()).await.unwrap()
    }

    async fn json(&self, path: &str, cap: &str) -> (StatusCode, Value) {
        let res = self.request(path, Some(cap), None).await;
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// Reads SSE frames from a streaming body.
struct Frames {
    body: BodyDataStream,
    buf: String,
}

impl Frames {
    fn new(res: Response) -> Self {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
        Self { body: res.into_body().into_data_stream(), buf: String::new() }
    }

    /// The next frame (`event: …\nid: …\ndata: …` or `: keep-alive`), `None` at the end.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let frame = self.buf[..at].to_owned();
                self.buf.drain(..at + 2);
                return Some(frame);
            }
            let chunk = self.body.next().await?.unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The id of the next event frame, skipping keep-alives.
    async fn next_id(&mut self) -> String {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.next()).await.unwrap().unwrap();
            if frame.starts_with(':') {
                continue;
            }
            let field = |name: &str| {
                frame.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned)).unwrap()
            };
            assert_eq!(field("event"), "message.received");
            let data: Value = serde_json::from_str(&field("data")).unwrap();
            assert_eq!(data["message_id"], field("id"));
            return field("id");
        }
    }
}

#[test]
fn limits_are_named_constants() {
    assert_eq!((DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT), (50, 100));
    assert_eq!(MAX_STREAMS_PER_INBOX, 8);
    assert_eq!(KEEP_ALIVE_INTERVAL, Duration::from_secs(15));
}

#[tokio::test]
async fn pages_follow_the_cursor_and_stay_inside_the_capability_prefix() {
    let w = world().await;
    let mut ids = Vec::new();
    for i in 0..120 {
        ids.push(w.deliver(OWNER_A, BOT, &format!("Subject: {i}\r\n\r\nx\r\n")).await);
    }
    // Same inbox name under another owner's prefix (never produced by the MX,
    // but the prefix, not the name, is the boundary) and another inbox.
    w.deliver(OWNER_B, BOT, "Subject: not A's\r\n\r\n").await;
    w.deliver(OWNER_A, OTHER, "Subject: other inbox\r\n\r\n").await;
    let cap = w.capability(OWNER_A, BOT, 300);

    // Listing is by id; ids made in the same millisecond sort by their random part.
    ids.sort();
    let (status, page) = w.json(&format!("/v1/inboxes/{BOT}/messages"), &cap).await;
    assert_eq!(status, StatusCode::OK);
    let first = page["messages"].as_array().unwrap();
    assert_eq!(first.len(), DEFAULT_PAGE_LIMIT as usize);
    assert!(first.iter().all(|m| m.get("raw_url").is_none()), "blobs in files: no presigned URLs");
    assert_eq!(first[0]["message_id"], ids[119].to_string(), "newest first");
    assert_eq!(page["next_cursor"], ids[70].to_string());
    // The server's clock, the one that stamped the ids: never before the newest.
    let server_ms = page["server_time_ms"].as_i64().expect("server_time_ms");
    assert!(u64::try_from(server_ms).unwrap() >= ids[119].timestamp_ms(), "{page}");

    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/v1/inboxes/{BOT}/messages?order=asc&limit={MAX_PAGE_LIMIT}{cursor}");
        let (_, page) = w.json(&path, &cap).await;
        seen.extend(page["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&after={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().map(Ulid::to_string).collect::<Vec<_>>(), "A's inbox only, all of it, in order");

    // Exactly a full last page: no cursor to an empty page.
    let (_, page) = w.json(&format!("/v1/inboxes/{BOT}/messages?order=asc&after={}&limit=20", ids[99]), &cap).await;
    assert_eq!((page["messages"].as_array().unwrap().len(), &page["next_cursor"]), (20, &Value::Null));

    // The copy under owner B's prefix is not reachable with A's capability.
    let (status, _) = w.json(&format!("/v1/inboxes/{OTHER}/messages"), &cap).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn replay_after_last_event_id_then_live_without_gap_or_duplicate() {
    let w = world().await;
    let cap = w.capability(OWNER_A, BOT, 300);
    // Delivered one after the other: commit order is call order (ids made in
    // the same millisecond need not sort that way, and need not here).
    let mut early = Vec::new();
    for i in 0..5 {
        early.push(w.deliver(OWNER_A, BOT, &format!("{i}")).await);
    }
    let res = w.request(&format!("/v1/inboxes/{BOT}/events"), Some(&cap), Some(&early[1].to_string())).await;
    let mut frames = Frames::new(res);
    let live = w.deliver(OWNER_A, BOT, "live").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(frames.next_id().await);
    }
    // What was committed after the Last-Event-ID, in commit order, then live.
    let expected: Vec<String> = early[2..].iter().chain([&live]).map(Ulid::to_string).collect();
    assert_eq!(got, expected);

    // An unknown Last-Event-ID (expired, or never ours) replays every greater id.
    let res = w.request(&format!("/v1/inboxes/{BOT}/events"), Some(&cap), Some("01B00000000000000000000000")).await;
    let mut frames = Frames::new(res);
    let mut all = Vec::new();
    for _ in 0..6 {
        all.push(frames.next_id().await);
    }
    all.sort();
    let mut expected: Vec<String> = early.iter().chain([&live]).map(Ulid::to_string).collect();
    expected.sort();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn a_lagging_stream_catches_up_from_the_index() {
    let w = world().await;
    let cap = w.capability(OWNER_A, BOT, 300);
    let res = w.request(&format!("/v1/inboxes/{BOT}/events"), Some(&cap), None).await;
    let mut frames = Frames::new(res);
    // More events than the hub buffers, while the stream is not read.
    let n = EVENT_BUFFER + 44;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(w.deliver(OWNER_A, BOT, &format!("{i}")).await.to_string());
    }
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(frames.next_id().await);
    }
    assert_eq!(got, ids, "every message once, in order");
    // Nothing more is pending: the next event is the next message.
    let next = w.deliver(OWNER_A, BOT, "next").await;
    assert_eq!(frames.next_id().await, next.to_string());
}

#[tokio::test]
async fn streams_per_inbox_are_limited() {
    let w = world().await;
    let cap = w.capability(OWNER_A, BOT, 300);
    let path = format!("/v1/inboxes/{BOT}/events");
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS_PER_INBOX {
        let res = w.request(&path, Some(&cap), None).await;
        assert_eq!(res.status(), StatusCode::OK);
        open.push(res);
    }
    let (status, problem) = w.json(&path, &cap).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("TOO_MANY_STREAMS")));
    // Another inbox is not affected; closing one stream frees a place.
    let other = w.capability(OWNER_B, OTHER, 300);
    assert_eq!(w.request(&format!("/v1/inboxes/{OTHER}/events"), Some(&other), None).await.status(), StatusCode::OK);
    open.pop();
    assert_eq!(w.request(&path, Some(&cap), None).await.status(), StatusCode::OK);
    drop(open);
    assert_eq!(w.hub.subscribers(&OWNER_A.parse().unwrap(), &BOT.parse().unwrap()), 0, "closed streams unsubscribe");
}

#[tokio::test]
async fn keep_alives_then_the_stream_ends_when_the_capability_expires() {
    let w = world().await;
    let cap = w.capability(OWNER_A, BOT, 40);
    let res = w.request(&format!("/v1/inboxes/{BOT}/events"), Some(&cap), None).await;
    let mut frames = Frames::new(res);
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    let mut keep_alives = 0;
    while let Some(frame) = frames.next().await {
        assert_eq!(frame, ": keep-alive");
        keep_alives += 1;
    }
    let elapsed = start.elapsed();
    assert_eq!(keep_alives, 2, "at 15 s and 30 s");
    // The capability's 40 s began at its mint, a moment of real time before the
    // clock was paused (a loaded machine once measured 39.996 s here).
    assert!(elapsed >= Duration::from_secs(39) && elapsed < Duration::from_secs(45), "{elapsed:?}");
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let w = world().await;
    let cap = w.capability(OWNER_A, BOT, 300);
    let res = w.request(&format!("/v1/inboxes/{BOT}/events"), Some(&cap), None).await;
    let mut frames = Frames::new(res);
    w.shutdown.cancel();
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), frames.next()).await.unwrap(), None);
}

#[tokio::test]
async fn fetch_answers_the_bytes_and_one_404_for_everything_else() {
    let w = world().await;
    let id = w.deliver(OWNER_A, BOT, "Subject: hi\r\n\r\nbody\r\n").await;
    let cap = w.capability(OWNER_A, BOT, 300);
    let res = w.request(&format!("/v1/inboxes/{BOT}/messages/{id}"), Some(&cap), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "message/rfc822");
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap(), "Subject: hi\r\n\r\nbody\r\n");

    let (_, reference) = w.json(&format!("/v1/inboxes/{BOT}/messages/{}", Ulid::new()), &cap).await;
    assert_eq!(reference["code"], "NOT_FOUND");
    for path in [
        format!("/v1/inboxes/{OTHER}/messages/{id}"),
        format!("/v1/inboxes/BOT@agents.example.com.evil/messages/{id}"),
        format!("/v1/inboxes/{BOT}/messages/{}", id.to_string().to_lowercase() + "0"),
        format!("/v1/inboxes/{BOT}/messages/..%2F{id}"),
        format!("/v1/inboxes/not-an-address/messages/{id}"),
    ] {
        let (status, body) = w.json(&path, &cap).await;
        assert_eq!((status, &body), (StatusCode::NOT_FOUND, &reference), "{path}");
    }
    // The address in the path is matched as an address (case-insensitively).
    let res = w.request(&format!("/v1/inboxes/BOT@Agents.Example.com/messages/{id}"), Some(&cap), None).await;
    assert_eq!(res.status(), StatusCode::OK);

    // Expired (by the injected clock) and missing capabilities: 401.
    let expired = w.capability(OWNER_A, BOT, -1);
    for cap in [Some(expired.as_str()), None, Some("akcap1.bad.token")] {
        let res = w.request(&format!("/v1/inboxes/{BOT}/messages/{id}"), cap, None).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}

/// Blobs on S3 (the real signer, offline: signing does no I/O): listings carry
/// a `raw_url` per message and the raw route answers 307 to the same URL, each
/// for the capability's own key and ending when the capability does (or at the
/// store's 30 min ceiling); what the capability does not cover is one 404 with
/// no URL. Events carry no URL.
#[cfg(feature = "s3")]
#[tokio::test]
async fn on_s3_listings_and_the_raw_route_hand_out_presigned_urls_bounded_by_the_capability() {
    use agentkeys_store::S3BlobStore;
    use agentkeys_store::s3::{ENV_ACCESS_KEY_ID, ENV_ENDPOINT, ENV_SECRET_ACCESS_KEY, MAX_PRESIGN_TTL, S3Config};

    let config = S3Config::from_vars("s3://mail/prod", |name| {
        match name {
            ENV_ENDPOINT => Some("http://127.0.0.1:9"),
            ENV_ACCESS_KEY_ID => Some("AKID"),
            ENV_SECRET_ACCESS_KEY => Some("secret"),
            _ => None,
        }
        .map(str::to_owned)
    })
    .unwrap();
    let w = world_with(Some(Arc::new(S3BlobStore::open(&config).unwrap()))).await;
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(w.deliver(OWNER_A, BOT, &format!("Subject: {i}\r\n\r\nx\r\n")).await);
    }
    let b_id = w.deliver(OWNER_B, BOT, "Subject: B's\r\n\r\n").await;
    let other_id = w.deliver(OWNER_A, OTHER, "Subject: other\r\n\r\n").await;
    let signed_at = jiff::Timestamp::from_second(NOW).unwrap().strftime("%Y%m%dT%H%M%SZ").to_string();
    let query = |url: &str, name: &str| {
        let q = url.split_once('?').unwrap().1;
        q.split('&').find_map(|p| p.strip_prefix(&format!("{name}="))).map(str::to_owned)
    };
    let bot_path = BOT.replace('@', "%40");

    for (ttl, lives) in [(300, 300), (1, 1), (86_400, MAX_PRESIGN_TTL.as_secs())] {
        let cap = w.capability(OWNER_A, BOT, ttl);
        let (status, page) = w.json(&format!("/v1/inboxes/{BOT}/messages?order=asc"), &cap).await;
        assert_eq!(status, StatusCode::OK);
        let listed = page["messages"].as_array().unwrap();
        assert_eq!(listed.len(), 3, "{page}");
        for (m, id) in listed.iter().zip(&mine) {
            let url = m["raw_url"].as_str().expect("a raw_url on S3");
            assert!(url.starts_with(&format!("http://127.0.0.1:9/mail/prod/{OWNER_A}/{bot_path}/{id}.eml?")), "{url}");
            assert_eq!(query(url, "X-Amz-Date"), Some(signed_at.clone()), "signed on the broker's clock");
            assert_eq!(query(url, "X-Amz-Expires"), Some(lives.to_string()), "capability of {ttl} s: {url}");

            let res = w.request(&format!("/v1/inboxes/{BOT}/messages/{id}"), Some(&cap), None).await;
            assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
            assert_eq!(res.headers()[header::LOCATION], url, "the route hands out the listing's URL");
        }
        // Ids of other inboxes (same name under another owner, another inbox of
        // the owner), an unknown id, another inbox's path: 404, no URL.
        for path in [
            format!("/v1/inboxes/{BOT}/messages/{b_id}"),
            format!("/v1/inboxes/{BOT}/messages/{other_id}"),
            format!("/v1/inboxes/{BOT}/messages/{}", Ulid::new()),
            format!("/v1/inboxes/{OTHER}/messages/{other_id}"),
        ] {
            let res = w.request(&path, Some(&cap), None).await;
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
            assert!(res.headers().get(header::LOCATION).is_none(), "{path}");
        }
    }
    // Expired: 401, nothing handed out.
    let expired = w.capability(OWNER_A, BOT, 0);
    let res = w.request(&format!("/v1/inboxes/{BOT}/messages/{}", mine[0]), Some(&expired), None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().get(header::LOCATION).is_none());

    // Events: ids and sizes only.
    let cap = w.capability(OWNER_A, BOT, 300);
    let res = w.request(&format!("/v1/inboxes/{BOT}/events"), Some(&cap), Some(&mine[0].to_string())).await;
    let mut frames = Frames::new(res);
    let frame = loop {
        let f = tokio::time::timeout(Duration::from_secs(30), frames.next()).await.unwrap().unwrap();
        if !f.starts_with(':') {
            break f;
        }
    };
    assert!(frame.contains(&mine[1].to_string()) && !frame.contains("raw_url"), "{frame}");
}
