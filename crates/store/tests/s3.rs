//! `S3BlobStore` against a real S3 server (`s3s-fs`, which checks SigV4
//! signatures, presigned URLs included): the `BlobStore` contract (round
//! trips, paginated listing, removal, all-or-nothing puts), presigned URLs
//! fetched with curl and refused once tampered with or expired, faults
//! injected by an HTTP proxy in front of the server, and a server that never
//! answers.
//!
//! Needs `s3s-fs` on PATH (`scripts/test.sh` installs it:
//! `cargo install s3s-fs --version 0.14.1 --features binary --locked`).
#![cfg(feature = "s3")]
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use agentkeys_store::s3::{
    ENV_ACCESS_KEY_ID, ENV_CA_BUNDLE, ENV_ENDPOINT, ENV_SECRET_ACCESS_KEY, MAX_ERROR_BODY_BYTES, MAX_LIST_PAGE_BYTES,
    MAX_PRESIGN_TTL, S3BlobStore, S3Config, S3Limits,
};
use agentkeys_store::{BlobError, BlobKey, BlobStore};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use rand::RngCore as _;
use tokio::net::{TcpListener, TcpStream};
use ulid::Ulid;
use url::Url;

const ACCESS_KEY: &str = "s3-test-access";
const SECRET_KEY: &str = "s3-test-secret-0123456789";
const BUCKET: &str = "mail";
/// This helper's loopback port range (every server and proxy of this file).
const PORTS: std::ops::RangeInclusive<u16> = 19100..=19199;
/// How long s3s-fs may take to start listening.
const SERVER_START: Duration = Duration::from_secs(20);

static NEXT_PORT: AtomicU16 = AtomicU16::new(*PORTS.start());

/// A listener on the next free port of [`PORTS`].
fn listener_in_range() -> StdListener {
    loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        assert!(PORTS.contains(&port), "out of test ports");
        if let Ok(listener) = StdListener::bind(("127.0.0.1", port)) {
            return listener;
        }
    }
}

/// A running `s3s-fs` over a temporary root, killed (by its PID) when dropped.
struct S3sFs {
    child: Child,
    port: u16,
    root: PathBuf,
    dir: tempfile::TempDir,
}

impl S3sFs {
    async fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("s3-fs-").tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let port = {
            let listener = listener_in_range();
            listener.local_addr().unwrap().port()
        };
        let child = Self::spawn(dir.path(), &root, port);
        let server = Self { child, port, root, dir };
        server.wait_listening().await;
        server
    }

    fn spawn(dir: &Path, root: &Path, port: u16) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("s3s-fs.log")).unwrap();
        Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run s3s-fs ({e}); install it: cargo install s3s-fs --version 0.14.1 --features binary --locked")
            })
    }

    /// Kills the server (by its PID) and waits for it to exit.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again, on the same root and port.
    async fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path(), &self.root, self.port);
        self.wait_listening().await;
    }

    async fn wait_listening(&self) {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(started.elapsed() < SERVER_START, "s3s-fs did not listen on {} in time", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Object files of `bucket` on the server's disk (keys relative to the
    /// bucket directory), read without S3: what is really stored.
    fn stored_objects(&self, bucket: &str) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else {
                    out.push(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let base = self.root.join(bucket);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A configuration for `location` at `endpoint`, with `secret`.
fn config_at(endpoint: &str, location: &str, secret: &str) -> S3Config {
    config_with(endpoint, location, secret, &[]).unwrap()
}

/// [`config_at`] with more variables.
fn config_with(
    endpoint: &str,
    location: &str,
    secret: &str,
    more: &[(&'static str, String)],
) -> Result<S3Config, agentkeys_store::S3ConfigError> {
    let vars: HashMap<&str, String> = [
        (ENV_ENDPOINT, endpoint.to_owned()),
        (ENV_ACCESS_KEY_ID, ACCESS_KEY.to_owned()),
        (ENV_SECRET_ACCESS_KEY, secret.to_owned()),
    ]
    .into_iter()
    .chain(more.iter().cloned())
    .collect();
    S3Config::from_vars(location, |name| vars.get(name).cloned())
}

/// Limits for faults: short waits, so failing tests fail fast.
fn quick_limits() -> S3Limits {
    S3Limits {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(700),
        retry_backoff: Duration::from_millis(10),
        ..S3Limits::default()
    }
}

async fn store_at(endpoint: &str, location: &str, limits: S3Limits) -> S3BlobStore {
    S3BlobStore::with_limits(&config_at(endpoint, location, SECRET_KEY), limits).unwrap()
}

/// A server with the bucket created, and a store on `s3://mail/prod`.
async fn server_and_store(limits: S3Limits) -> (S3sFs, S3BlobStore) {
    let server = S3sFs::start().await;
    let store = store_at(&server.endpoint(), "s3://mail/prod", limits).await;
    store.create_bucket().await.unwrap();
    (server, store)
}

fn key(s: &str) -> BlobKey {
    BlobKey::parse(s).unwrap()
}

fn message_key(owner: &str, inbox: &str) -> BlobKey {
    key(&format!("{owner}/{inbox}/{}.eml", Ulid::new()))
}

fn random_bytes(len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    Bytes::from(data)
}

fn io_kind(err: &BlobError) -> std::io::ErrorKind {
    match err {
        BlobError::Io { err, .. } | BlobError::StorageFull(err) => err.kind(),
    }
}

// ---------------------------------------------------------------- contract

#[tokio::test]
async fn round_trip_of_many_blobs_binary_and_large() {
    let (server, store) = server_and_store(S3Limits::default()).await;
    let mut items = Vec::new();
    for n in 0..40 {
        let len = [0, 1, 37, 4096, 65_537][n % 5];
        items.push((message_key("0xaa", &format!("bot{}@a.test", n % 3)), random_bytes(len)));
    }
    items.push((key("queue/01JQUEUED0000000000000000.eml"), Bytes::from_static(b"Subject: q\r\n\r\nx\r\n")));
    // Several MB, every byte value.
    let large: Vec<u8> = (0..6 * 1024 * 1024 + 3).map(|i: usize| (i.wrapping_mul(31) % 256) as u8).collect();
    items.push((message_key("0xaa", "big@a.test"), Bytes::from(large)));
    store.put_durable(items.clone()).await.unwrap();

    for (k, bytes) in &items {
        assert_eq!(store.get(k).await.unwrap().as_ref(), Some(bytes), "{k}");
    }
    assert_eq!(store.get(&key("0xaa/bot0@a.test/missing.eml")).await.unwrap(), None);

    // Stored under the prefix, one object per key, as the server's disk shows.
    let mut expected: Vec<String> = items.iter().map(|(k, _)| format!("prod/{k}")).collect();
    expected.sort();
    assert_eq!(server.stored_objects(BUCKET), expected);

    let mut bot0: Vec<BlobKey> =
        items.iter().map(|(k, _)| k.clone()).filter(|k| k.as_str().starts_with("0xaa/bot0@a.test/")).collect();
    bot0.sort();
    assert_eq!(store.list("0xaa/bot0@a.test/").await.unwrap(), bot0);
    assert_eq!(store.list("").await.unwrap().len(), items.len());
    assert_eq!(store.list("queue/").await.unwrap(), [key("queue/01JQUEUED0000000000000000.eml")]);
    assert!(store.list("0xbb/").await.unwrap().is_empty());
    assert!(store.list("../").await.unwrap().is_empty());
}

#[test]
fn generated_batches_round_trip() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_server, store) = runtime.block_on(server_and_store(S3Limits::default()));
    let batch = proptest::collection::vec((0usize..3, proptest::collection::vec(any::<u8>(), 0..2048)), 1..10);
    let mut runner =
        TestRunner::new(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() });
    runner
        .run(&batch, |batch| {
            runtime.block_on(async {
                // A fresh owner per case: cases never see each other's keys.
                let owner = format!("o{}", Ulid::new());
                let items: Vec<(BlobKey, Bytes)> = batch
                    .into_iter()
                    .map(|(inbox, bytes)| (message_key(&owner, &format!("in{inbox}@a.test")), Bytes::from(bytes)))
                    .collect();
                store.put_durable(items.clone()).await.unwrap();
                for (k, bytes) in &items {
                    let stored = store.get(k).await.unwrap();
                    prop_assert_eq!(stored.as_ref(), Some(bytes));
                }
                let mut by_inbox: BTreeMap<usize, Vec<BlobKey>> = BTreeMap::new();
                for (k, _) in &items {
                    let inbox: usize = k.as_str().split('/').nth(1).unwrap()[2..3].parse().unwrap();
                    by_inbox.entry(inbox).or_default().push(k.clone());
                }
                for inbox in 0..3 {
                    let mut expected = by_inbox.remove(&inbox).unwrap_or_default();
                    expected.sort();
                    prop_assert_eq!(store.list(&format!("{owner}/in{inbox}@a.test/")).await.unwrap(), expected);
                }
                Ok(())
            })
        })
        .unwrap();
}

#[tokio::test]
async fn listing_follows_continuation_tokens_across_pages() {
    const PAGE: usize = 7;
    let limits = S3Limits { list_page_size: PAGE, ..S3Limits::default() };
    let (server, store) = server_and_store(limits.clone()).await;
    let mut wanted = Vec::new();
    let mut items = Vec::new();
    for n in 0..100 {
        let k = message_key("0xaa", if n % 3 == 0 { "other@a.test" } else { "bot@a.test" });
        if n % 3 != 0 {
            wanted.push(k.clone());
        }
        items.push((k, Bytes::from(format!("m{n}"))));
    }
    store.put_durable(items).await.unwrap();
    // Objects in the bucket but outside this store's prefix, or not blob keys.
    let sibling = store_at(&server.endpoint(), "s3://mail/staging", limits).await;
    sibling.put_durable(vec![(key("0xaa/bot@a.test/01SIBLING.eml"), Bytes::from_static(b"x"))]).await.unwrap();

    wanted.sort();
    assert!(wanted.len() > 5 * PAGE, "more than a few pages");
    assert_eq!(store.list("0xaa/bot@a.test/").await.unwrap(), wanted);
    assert_eq!(store.list("0xaa/").await.unwrap().len(), 100);
    assert_eq!(sibling.list("").await.unwrap(), [key("0xaa/bot@a.test/01SIBLING.eml")]);
}

#[tokio::test]
async fn remove_answers_whether_it_removed() {
    let (server, store) = server_and_store(S3Limits::default()).await;
    let (a, b) = (message_key("0xaa", "bot@a.test"), message_key("0xaa", "bot@a.test"));
    store
        .put_durable(vec![(a.clone(), Bytes::from_static(b"a")), (b.clone(), Bytes::from_static(b"b"))])
        .await
        .unwrap();
    assert!(store.remove(&a).await.unwrap());
    assert_eq!(store.get(&a).await.unwrap(), None);
    assert!(!store.remove(&a).await.unwrap(), "already gone");
    assert_eq!(store.list("0xaa/").await.unwrap(), std::slice::from_ref(&b));
    assert_eq!(server.stored_objects(BUCKET), [format!("prod/{b}")]);
}

#[tokio::test]
async fn readiness_probe_writes_and_leaves_nothing() {
    let (server, store) = server_and_store(S3Limits::default()).await;
    store.check_writable().await.unwrap();
    assert!(server.stored_objects(BUCKET).is_empty(), "{:?}", server.stored_objects(BUCKET));

    let wrong_secret = S3BlobStore::open(&config_at(&server.endpoint(), "s3://mail/prod", "not-the-secret")).unwrap();
    let err = wrong_secret.check_writable().await.unwrap_err();
    assert_eq!(io_kind(&err), std::io::ErrorKind::PermissionDenied, "{err}");
}

// ------------------------------------------------------ all or nothing

#[tokio::test]
async fn a_put_over_an_existing_key_fails_whole_and_keeps_the_stored_blob() {
    let (server, store) = server_and_store(S3Limits::default()).await;
    let existing = message_key("0xaa", "bot@a.test");
    store.put_durable(vec![(existing.clone(), Bytes::from_static(b"first"))]).await.unwrap();

    let mut batch: Vec<(BlobKey, Bytes)> =
        (0..20).map(|_| (message_key("0xaa", "bot@a.test"), random_bytes(300))).collect();
    batch.insert(10, (existing.clone(), Bytes::from_static(b"second")));
    let err = store.put_durable(batch).await.unwrap_err();
    assert_eq!(io_kind(&err), std::io::ErrorKind::AlreadyExists, "{err}");
    assert!(err.to_string().contains(existing.as_str()), "{err}");

    assert_eq!(store.get(&existing).await.unwrap(), Some(Bytes::from_static(b"first")));
    assert_eq!(store.list("").await.unwrap(), std::slice::from_ref(&existing), "nothing of the batch remains");
    assert_eq!(server.stored_objects(BUCKET), [format!("prod/{existing}")]);
}

#[tokio::test]
async fn refused_credentials_fail_the_put_and_store_nothing() {
    let (server, store) = server_and_store(S3Limits::default()).await;
    let impostor = S3BlobStore::open(&config_at(&server.endpoint(), "s3://mail/prod", "not-the-secret")).unwrap();
    let batch: Vec<_> = (0..5).map(|_| (message_key("0xaa", "bot@a.test"), random_bytes(100))).collect();
    let err = impostor.put_durable(batch).await.unwrap_err();
    assert_eq!(io_kind(&err), std::io::ErrorKind::PermissionDenied, "{err}");
    assert!(store.list("").await.unwrap().is_empty());
    assert!(server.stored_objects(BUCKET).is_empty());
}

/// s3s-fs accepts a PUT into a bucket that does not exist (it creates the
/// directory) and answers a GET there `NoSuchKey`, so only a listing can
/// show a missing bucket here.
#[tokio::test]
async fn a_missing_bucket_is_an_error_not_an_empty_answer() {
    let server = S3sFs::start().await;
    let store = store_at(&server.endpoint(), "s3://nobucket", S3Limits::default()).await;
    let err = store.list("").await.unwrap_err();
    assert_eq!(io_kind(&err), std::io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");
}

#[tokio::test]
async fn a_stopped_server_fails_the_put_and_stores_nothing() {
    let (mut server, store) = server_and_store(quick_limits()).await;
    server.stop();
    let batch: Vec<_> = (0..5).map(|_| (message_key("0xaa", "bot@a.test"), random_bytes(100))).collect();
    let err = store.put_durable(batch).await.unwrap_err();
    assert!(matches!(err, BlobError::Io { .. }), "{err}");

    server.restart().await;
    assert!(store.list("").await.unwrap().is_empty());
}

/// What the proxy does with one request (the count is this method and
/// path's, from 1).
#[derive(Debug, Clone, Copy)]
enum Fault {
    Pass,
    /// Answer this status without asking the server.
    Answer(u16),
    /// Forward, let the server apply it, then lose its answer: this status instead.
    ForwardThenAnswer(u16),
    /// Answer this status with a body of this many bytes.
    Oversized(u16, usize),
}

type Rule = Arc<dyn Fn(&Method, &str, u32) -> Fault + Send + Sync>;

/// An HTTP proxy in front of s3s-fs that injects [`Fault`]s and counts requests.
struct Proxy {
    port: u16,
    hits: Arc<Mutex<HashMap<String, u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    fn start(upstream: u16, rule: Rule) -> Self {
        Self::start_with(upstream, rule, None)
    }

    /// With `tls`, the proxy is an HTTPS endpoint (TLS ends here).
    fn start_with(upstream: u16, rule: Rule, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = listener_in_range();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let listener = TcpListener::from_std(listener).unwrap();
        let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let counts = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (rule, hits, tls) = (Arc::clone(&rule), Arc::clone(&counts), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        Self::handle(upstream, Arc::clone(&rule), Arc::clone(&hits), req)
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Self { port, hits, task }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn hits(&self, method: &Method, path_part: &str) -> u32 {
        let hits = self.hits.lock().unwrap();
        hits.iter().filter(|(k, _)| k.starts_with(method.as_str()) && k.contains(path_part)).map(|(_, n)| n).sum()
    }

    async fn handle(
        upstream: u16,
        rule: Rule,
        hits: Arc<Mutex<HashMap<String, u32>>>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let path = parts.uri.path().to_owned();
        let count = {
            let mut hits = hits.lock().unwrap();
            let n = hits.entry(format!("{} {path}", parts.method)).or_default();
            *n += 1;
            *n
        };
        match rule(&parts.method, &path, count) {
            Fault::Pass => Ok(forward(upstream, parts, body).await),
            Fault::Answer(status) => Ok(error_answer(status)),
            Fault::Oversized(status, len) => {
                let mut response = Response::new(Full::new(Bytes::from(vec![b'x'; len])));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok(response)
            }
            Fault::ForwardThenAnswer(status) => {
                let _ = forward(upstream, parts, body).await;
                Ok(error_answer(status))
            }
        }
    }
}

fn error_answer(status: u16) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\"?><Error><Code>Injected{status}</Code><Message>injected by the test proxy</Message></Error>"
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

async fn forward(upstream: u16, mut parts: hyper::http::request::Parts, body: Bytes) -> Response<Full<Bytes>> {
    let stream = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    let response = sender.send_request(Request::from_parts(parts, Full::new(body))).await.unwrap();
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Response::from_parts(parts, Full::new(body.collect().await.unwrap().to_bytes()))
}

#[tokio::test]
async fn a_batch_with_one_failing_item_is_undone_whole() {
    let (server, direct) = server_and_store(S3Limits::default()).await;
    let rule: Rule =
        Arc::new(
            |method, path, _| {
                if method == Method::PUT && path.contains("poison") { Fault::Answer(503) } else { Fault::Pass }
            },
        );
    let proxy = Proxy::start(server.port, rule);
    let limits = S3Limits { max_parallel_puts: 4, ..quick_limits() };
    let store = store_at(&proxy.endpoint(), "s3://mail/prod", limits.clone()).await;

    let mut batch: Vec<(BlobKey, Bytes)> =
        (0..30).map(|_| (message_key("0xaa", "bot@a.test"), random_bytes(2000))).collect();
    batch.insert(3, (key("0xaa/bot@a.test/poison.eml"), random_bytes(10)));
    let err = store.put_durable(batch).await.unwrap_err();
    assert!(err.to_string().contains("poison"), "{err}");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(proxy.hits(&Method::PUT, "poison"), limits.max_attempts, "retried, and no more than allowed");
    assert!(direct.list("").await.unwrap().is_empty(), "the stored items were removed");
    assert!(server.stored_objects(BUCKET).is_empty(), "{:?}", server.stored_objects(BUCKET));
}

#[tokio::test]
async fn items_after_a_failure_are_not_started() {
    let (server, _direct) = server_and_store(S3Limits::default()).await;
    let rule: Rule =
        Arc::new(
            |method, path, _| {
                if method == Method::PUT && path.contains("poison") { Fault::Answer(403) } else { Fault::Pass }
            },
        );
    let proxy = Proxy::start(server.port, rule);
    // One at a time, the failing item first (tasks start in order on this
    // single-threaded runtime, and the semaphore is fair).
    let store =
        store_at(&proxy.endpoint(), "s3://mail/prod", S3Limits { max_parallel_puts: 1, ..quick_limits() }).await;
    let mut batch: Vec<(BlobKey, Bytes)> =
        (0..10).map(|_| (message_key("0xaa", "bot@a.test"), random_bytes(10))).collect();
    batch.insert(0, (key("0xaa/bot@a.test/poison.eml"), random_bytes(10)));
    let err = store.put_durable(batch).await.unwrap_err();
    assert_eq!(io_kind(&err), std::io::ErrorKind::PermissionDenied, "{err}");
    assert_eq!(proxy.hits(&Method::PUT, "poison"), 1, "a refusal is not retried");
    assert_eq!(proxy.hits(&Method::PUT, "/prod/"), 1, "nothing after the failure was sent");
}

#[tokio::test]
async fn server_errors_are_retried_until_they_pass() {
    let (server, direct) = server_and_store(S3Limits::default()).await;
    let rule: Rule = Arc::new(|method, path, count| {
        if path.contains("flaky") && count < 3 {
            if method == Method::PUT { Fault::Answer(500) } else { Fault::Answer(503) }
        } else {
            Fault::Pass
        }
    });
    let proxy = Proxy::start(server.port, rule);
    let store = store_at(&proxy.endpoint(), "s3://mail/prod", quick_limits()).await;
    let flaky = key("0xaa/bot@a.test/flaky.eml");
    store.put_durable(vec![(flaky.clone(), Bytes::from_static(b"eventually"))]).await.unwrap();
    assert_eq!(proxy.hits(&Method::PUT, "flaky"), 3);
    assert_eq!(store.get(&flaky).await.unwrap(), Some(Bytes::from_static(b"eventually")));
    assert_eq!(direct.list("").await.unwrap(), [flaky]);
}

#[tokio::test]
async fn a_lost_answer_to_a_stored_put_is_recognised_on_retry() {
    let (server, direct) = server_and_store(S3Limits::default()).await;
    let rule: Rule = Arc::new(|method, path, count| {
        if method == Method::PUT && path.contains("lost") && count == 1 {
            Fault::ForwardThenAnswer(502)
        } else {
            Fault::Pass
        }
    });
    let proxy = Proxy::start(server.port, rule);
    let store = store_at(&proxy.endpoint(), "s3://mail/prod", quick_limits()).await;

    // Our first attempt landed; the retry meets If-None-Match, finds our bytes.
    let lost = key("0xaa/bot@a.test/lost1.eml");
    store.put_durable(vec![(lost.clone(), Bytes::from_static(b"ours"))]).await.unwrap();
    assert_eq!(proxy.hits(&Method::PUT, "lost1"), 2);
    assert_eq!(direct.get(&lost).await.unwrap(), Some(Bytes::from_static(b"ours")));

    // Someone else's blob under the key: the retry's 412 is a real conflict.
    let taken = key("0xaa/bot@a.test/lost2.eml");
    direct.put_durable(vec![(taken.clone(), Bytes::from_static(b"theirs"))]).await.unwrap();
    let err = store.put_durable(vec![(taken.clone(), Bytes::from_static(b"ours"))]).await.unwrap_err();
    assert_eq!(io_kind(&err), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(direct.get(&taken).await.unwrap(), Some(Bytes::from_static(b"theirs")), "never overwritten");
}

#[tokio::test]
async fn insufficient_storage_is_storage_full_and_not_retried() {
    let (server, _direct) = server_and_store(S3Limits::default()).await;
    let rule: Rule = Arc::new(|method, _, _| if method == Method::PUT { Fault::Answer(507) } else { Fault::Pass });
    let proxy = Proxy::start(server.port, rule);
    let store = store_at(&proxy.endpoint(), "s3://mail/prod", quick_limits()).await;
    let err = store.put_durable(vec![(message_key("0xaa", "bot@a.test"), random_bytes(10))]).await.unwrap_err();
    assert!(matches!(err, BlobError::StorageFull(_)), "{err}");
    assert_eq!(proxy.hits(&Method::PUT, "/prod/"), 1);
}

#[tokio::test]
async fn oversized_answers_are_not_read_whole() {
    let (server, _direct) = server_and_store(S3Limits::default()).await;
    let rule: Rule = Arc::new(|method, path, _| match (method.as_str(), path) {
        // A listing one byte over its limit.
        ("GET", "/mail/") => Fault::Oversized(200, MAX_LIST_PAGE_BYTES + 1),
        // A refusal whose error document is over its limit.
        ("PUT", _) => Fault::Oversized(403, MAX_ERROR_BODY_BYTES * 8),
        _ => Fault::Pass,
    });
    let proxy = Proxy::start(server.port, rule);
    let store = store_at(&proxy.endpoint(), "s3://mail/prod", quick_limits()).await;
    let err = store.list("0xaa/").await.unwrap_err();
    assert!(err.to_string().contains(&format!("answer larger than {MAX_LIST_PAGE_BYTES} bytes")), "{err}");
    assert_eq!(proxy.hits(&Method::GET, "/mail/"), 1, "an oversized answer is not retried");
    let err = store.put_durable(vec![(message_key("0xaa", "bot@a.test"), random_bytes(10))]).await.unwrap_err();
    assert_eq!(io_kind(&err), std::io::ErrorKind::PermissionDenied, "the status still counts: {err}");
}

#[tokio::test]
async fn a_silent_server_fails_the_put_within_its_deadline() {
    let listener = listener_in_range();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = TcpListener::from_std(listener).unwrap();
    let accepted = Arc::new(AtomicU16::new(0));
    let counter = Arc::clone(&accepted);
    // Accepts, then never reads nor answers; holds every connection open.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            held.push(stream);
        }
    });
    let limits = S3Limits { max_attempts: 2, ..quick_limits() };
    let store = store_at(&format!("http://127.0.0.1:{port}"), "s3://mail/prod", limits.clone()).await;
    let body = random_bytes(1000);
    // Bounded by the store's own deadlines; the outer bound only catches a hang.
    let outer = limits.worst_case(body.len()) + Duration::from_secs(10);
    let put = store.put_durable(vec![(message_key("0xaa", "bot@a.test"), body)]);
    let err = tokio::time::timeout(outer, put).await.expect("put_durable hung on a silent server").unwrap_err();
    assert_eq!(io_kind(&err), std::io::ErrorKind::TimedOut, "{err}");
    assert!(accepted.load(Ordering::Relaxed) >= 1);
    let probe = tokio::time::timeout(outer * 2, store.check_writable()).await.expect("readiness hung");
    assert!(probe.is_err());
    silent.abort();
}

// ---------------------------------------------------- presigned reads

/// GETs `url` with curl: the status and the body.
async fn curl(url: &Url) -> (u16, Vec<u8>) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", url.as_str()])
        .output()
        .await
        .expect("curl runs");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let split = out.stdout.iter().rposition(|&b| b == b'\n').unwrap();
    let status = std::str::from_utf8(&out.stdout[split + 1..]).unwrap().parse().unwrap();
    (status, out.stdout[..split].to_vec())
}

/// `url` with query parameter `name` set to `value` (`None`: removed).
fn with_param(url: &Url, name: &str, value: Option<&str>) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .chain(value.map(|v| (name.to_owned(), v.to_owned())))
        .collect();
    let mut changed = url.clone();
    changed.query_pairs_mut().clear().extend_pairs(pairs);
    changed
}

fn param(url: &Url, name: &str) -> String {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).unwrap()
}

#[tokio::test]
async fn a_presigned_get_reads_one_blob_and_nothing_else() {
    let (_server, store) = server_and_store(S3Limits::default()).await;
    let (mine, other) = (message_key("0xaa", "bot@a.test"), message_key("0xbb", "bot@b.test"));
    let body = random_bytes(100_000);
    store
        .put_durable(vec![(mine.clone(), body.clone()), (other.clone(), Bytes::from_static(b"secret"))])
        .await
        .unwrap();

    let url = store.presign_get(&mine, Duration::from_secs(60));
    assert_eq!(curl(&url).await, (200, body.to_vec()));

    // Another key in the same signed URL.
    let mut elsewhere = url.clone();
    elsewhere.set_path(&format!("/{BUCKET}/{}", store.object_key(&other)));
    assert_eq!(curl(&elsewhere).await.0, 403, "{elsewhere}");
    // A longer life.
    let longer = with_param(&url, "X-Amz-Expires", Some("3600"));
    assert_eq!(curl(&longer).await.0, 403);
    // An earlier signing time (to stretch the window).
    let format = "%Y%m%dT%H%M%SZ";
    let date = jiff::civil::DateTime::strptime(format, param(&url, "X-Amz-Date")).unwrap();
    let earlier_date = (date - jiff::Span::new().hours(1)).strftime(format).to_string();
    let earlier = with_param(&url, "X-Amz-Date", Some(&earlier_date));
    assert_eq!(curl(&earlier).await.0, 403, "{earlier}");
    // No signature at all.
    assert_eq!(curl(&with_param(&url, "X-Amz-Signature", None)).await.0, 403);
}

#[tokio::test]
async fn a_presigned_url_expires() {
    let (_server, store) = server_and_store(S3Limits::default()).await;
    let k = message_key("0xaa", "bot@a.test");
    store.put_durable(vec![(k.clone(), Bytes::from_static(b"soon gone"))]).await.unwrap();

    // The signing time is in whole seconds (rounded down), so a 1 s URL may
    // be spent before curl runs: 2 s, then past them.
    let url = store.presign_get(&k, Duration::from_secs(2));
    assert_eq!(param(&url, "X-Amz-Expires"), "2");
    let list = store.presign_list("0xaa/bot@a.test/", Duration::from_secs(2));
    assert_eq!(curl(&url).await.0, 200, "valid before it expires");
    assert_eq!(curl(&list).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(curl(&url).await.0, 403, "refused after it expired");
    assert_eq!(curl(&list).await.0, 403);

    // Signed in the past: already expired, no wait needed.
    let old = store.presign_get_at(&k, Duration::from_secs(60), SystemTime::now() - Duration::from_secs(120));
    assert_eq!(curl(&old).await.0, 403);
    // Clamped: never longer than the maximum.
    let long = store.presign_get(&k, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(param(&long, "X-Amz-Expires"), MAX_PRESIGN_TTL.as_secs().to_string());
    assert_eq!(curl(&long).await.0, 200);
}

#[tokio::test]
async fn a_presigned_list_lists_its_prefix_only() {
    let (_server, store) = server_and_store(S3Limits::default()).await;
    let mut mine: Vec<BlobKey> = (0..5).map(|_| message_key("0xaa", "bot@a.test")).collect();
    let theirs = message_key("0xaa", "bot2@a.test");
    let foreign = message_key("0xbb", "bot@b.test");
    let mut items: Vec<_> = mine.iter().map(|k| (k.clone(), Bytes::from_static(b"m"))).collect();
    items.push((theirs, Bytes::from_static(b"t")));
    items.push((foreign, Bytes::from_static(b"f")));
    store.put_durable(items).await.unwrap();

    let url = store.presign_list("0xaa/bot@a.test/", Duration::from_secs(60));
    let (status, body) = curl(&url).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let page = rusty_s3::actions::ListObjectsV2::parse_response(std::str::from_utf8(&body).unwrap()).unwrap();
    let mut listed: Vec<BlobKey> = page.contents.iter().map(|c| store.blob_key(&c.key).unwrap()).collect();
    listed.sort();
    mine.sort();
    assert_eq!(listed, mine);

    for prefix in ["prod/0xaa/", "prod/0xbb/bot@b.test/", "prod/", "", "prod/0xaa/bot2@a.test/"] {
        let other = with_param(&url, "prefix", Some(prefix));
        assert_eq!(curl(&other).await.0, 403, "prefix {prefix:?} must not be listable");
    }
    assert_eq!(curl(&with_param(&url, "prefix", None)).await.0, 403, "without a prefix");
    assert_eq!(curl(&with_param(&url, "X-Amz-Expires", Some("1800"))).await.0, 403);
    assert_eq!(curl(&with_param(&url, "max-keys", Some("1000"))).await.0, 403, "no unsigned parameter");
}

// ------------------------------------------------------------------ HTTPS

/// A test CA (PEM) and a TLS acceptor for `localhost` with a leaf it signed.
fn test_ca_and_acceptor() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test]
async fn an_https_endpoint_is_verified_against_the_ca_bundle() {
    let (server, direct) = server_and_store(S3Limits::default()).await;
    let (ca_pem, acceptor) = test_ca_and_acceptor();
    let proxy = Proxy::start_with(server.port, Arc::new(|_: &Method, _: &str, _| Fault::Pass), Some(acceptor));
    let endpoint = format!("https://localhost:{}", proxy.port);
    let dir = tempfile::Builder::new().prefix("s3-ca-").tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, &ca_pem).unwrap();

    let config = config_with(&endpoint, "s3://mail/prod", SECRET_KEY, &[(ENV_CA_BUNDLE, bundle.display().to_string())]);
    let store = S3BlobStore::with_limits(&config.unwrap(), quick_limits()).unwrap();
    let k = message_key("0xaa", "bot@a.test");
    store.put_durable(vec![(k.clone(), Bytes::from_static(b"over TLS"))]).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(Bytes::from_static(b"over TLS")));
    assert_eq!(store.list("0xaa/").await.unwrap(), std::slice::from_ref(&k));
    assert!(proxy.hits(&Method::PUT, "/prod/") >= 1, "the requests went through the HTTPS endpoint");

    // Without the CA, the certificate is unknown: nothing is sent.
    let untrusting =
        S3BlobStore::with_limits(&config_at(&endpoint, "s3://mail/prod", SECRET_KEY), quick_limits()).unwrap();
    let err =
        untrusting.put_durable(vec![(message_key("0xaa", "bot@a.test"), Bytes::from_static(b"x"))]).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    assert_eq!(direct.list("").await.unwrap(), std::slice::from_ref(&k));

    // A bundle that is not there, or holds no certificate, is refused at open.
    let missing =
        config_with(&endpoint, "s3://mail", SECRET_KEY, &[(ENV_CA_BUNDLE, "/nonexistent/s3-ca.pem".to_owned())]);
    assert!(S3BlobStore::open(&missing.unwrap()).is_err());
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let empty = config_with(&endpoint, "s3://mail", SECRET_KEY, &[(ENV_CA_BUNDLE, empty.display().to_string())]);
    let err = S3BlobStore::open(&empty.unwrap()).unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
}

// ------------------------------------------------------------ the Mailroom

#[tokio::test]
async fn the_mailroom_over_s3_indexes_and_reconciles() {
    use agentkeys_core::{Address, OwnerId};
    use agentkeys_store::roles::{Directory, MessageIndex};
    use agentkeys_store::{LocalEventHub, Mailroom, SqliteStore};

    let (_server, s3) = server_and_store(S3Limits::default()).await;
    let dir = tempfile::Builder::new().prefix("s3-meta-").tempdir().unwrap();
    let meta = Arc::new(SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap());
    meta.ensure_domain(&"agents.localhost".parse().unwrap(), 0).await.unwrap();
    let raw = Arc::new(s3.clone());
    let mail = Mailroom::new(raw.clone(), meta.clone(), Arc::new(LocalEventHub::new()), "mx.agents.localhost");
    let owner: OwnerId = "0x00000000000000000000000000000000000000aa".parse().unwrap();
    let inbox: Address = "bot@agents.localhost".parse().unwrap();
    let (kept, orphan, gone) = (Ulid::new(), Ulid::new(), Ulid::new());
    let copy =
        |id: Ulid, body: &'static str| (BlobKey::message(&owner, &inbox, id), Bytes::from_static(body.as_bytes()));

    mail.put_durable(vec![copy(kept, "kept"), copy(gone, "gone")]).await.unwrap();
    assert_eq!(meta.indexed_ids(&owner, &inbox).await.unwrap().len(), 2);
    // A crash between the blob write and the index commit; a blob lost by hand.
    raw.put_durable(vec![copy(orphan, "orphan!")]).await.unwrap();
    assert!(raw.remove(&BlobKey::message(&owner, &inbox, gone)).await.unwrap());
    // Too young to judge: left, not indexed; settled: removed (never acknowledged).
    let now = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap();
    let report = mail.reconcile(&[(owner.clone(), inbox.clone())], now).await.unwrap();
    assert_eq!((report.removed, report.pending, report.dropped), (0, 1, 1));
    assert_eq!(meta.indexed_ids(&owner, &inbox).await.unwrap(), [kept].into_iter().collect());
    let settled = now + agentkeys_store::ACK_WINDOW_SECS + agentkeys_store::CLOCK_SKEW_SECS + 1;
    let report = mail.reconcile(&[(owner.clone(), inbox.clone())], settled).await.unwrap();
    assert_eq!((report.removed, report.pending, report.dropped), (1, 0, 0));
    assert_eq!(s3.list("").await.unwrap(), [BlobKey::message(&owner, &inbox, kept)]);
    // Removing through the Mailroom drops the row and the object.
    assert!(mail.remove(&BlobKey::message(&owner, &inbox, kept)).await.unwrap());
    assert!(s3.list("").await.unwrap().is_empty());
    assert!(meta.indexed_ids(&owner, &inbox).await.unwrap().is_empty());
}
