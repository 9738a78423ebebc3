//! [`BlobStore`] on Amazon S3 or an S3-compatible server (feature `s3`).
//!
//! Keys are the blob keys (`<owner>/<inbox>/<ulid>.eml`, `queue/<ulid>.eml`)
//! under the configured prefix: `s3://mail/prod` stores `queue/X.eml` as the
//! object `prod/queue/X.eml` of bucket `mail`. Configuration comes from that
//! URL and the usual AWS variables ([`S3Config`]).
//!
//! - **Durable put.** [`BlobStore::put_durable`] PUTs every item (at most
//!   [`S3Limits::max_parallel_puts`] at once) and answers `Ok` only when every
//!   PUT was acknowledged: S3 acknowledges a write once it is durably stored.
//!   If any item fails, the items not yet started are skipped, the ones that
//!   were stored (or whose outcome is unknown: a lost answer, a timeout, a
//!   `5xx`) are deleted, best effort, and the put fails, so the MX answers
//!   `451 4.3.0`. A delete that fails too leaves a blob the next start's
//!   reconciliation finds; a PUT still in flight on the server after our
//!   deadline can land after its delete, the same way.
//! - **Write once.** Each PUT carries `If-None-Match: *`, so a put never
//!   replaces a stored message (`412`, and the put fails). A `412` answering a
//!   retry of an attempt whose outcome was unknown is checked: if the object
//!   holds exactly our bytes, it was our first attempt and counts as stored.
//!   Servers that ignore conditional writes still work, without this guarantee.
//! - **Integrity.** Each PUT carries `x-amz-checksum-sha256` (signed), which
//!   the server verifies before storing; a GET verifies the checksum the
//!   server returns, when it returns one.
//! - **Deadlines and retries.** Every attempt has a deadline
//!   ([`S3Limits::request_timeout`] plus the body's time at
//!   [`S3Limits::min_transfer_rate`]); transport errors, timeouts, `408`, `429`
//!   and `5xx` (but `501`, `507`) are retried up to [`S3Limits::max_attempts`]
//!   with jittered exponential backoff. `507` and quota errors are
//!   [`BlobError::StorageFull`] (`452 4.3.1`).
//! - **Listing** follows `ListObjectsV2` continuation tokens to the end,
//!   [`S3Limits::list_page_size`] keys a page; objects under the prefix whose
//!   names are not blob keys are skipped.
//! - **Broker, not proxy.** [`S3BlobStore::presign_get`] and
//!   [`S3BlobStore::presign_list`] hand out URLs that read one message, or
//!   list one prefix, directly from S3: the key, or the `prefix` query
//!   parameter, is inside the signature, so changing it (or the expiry) makes
//!   the server refuse the URL. Their lifetime is clamped to
//!   [`MAX_PRESIGN_TTL`].
//!
//! Requests are signed with SigV4 by `rusty-s3` (sans-IO, presigned query
//! strings) and sent by hyper over plain TCP or rustls; the secret never
//! leaves this process.

mod config;
mod transport;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, Credentials, S3Action as _, UrlStyle};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use ulid::Ulid;
use url::Url;

pub use self::config::{
    Addressing, DEFAULT_CUSTOM_REGION, ENV_ACCESS_KEY_ID, ENV_AWS_ENDPOINT, ENV_AWS_ENDPOINT_S3, ENV_CA_BUNDLE,
    ENV_DEFAULT_REGION, ENV_ENDPOINT, ENV_REGION, ENV_SECRET_ACCESS_KEY, ENV_SESSION_TOKEN, S3Config, S3ConfigError,
};
pub use self::transport::{MAX_ERROR_BODY_BYTES, MAX_RETRY_BACKOFF, S3Error};
use self::transport::{Reply, Request, Transport};
use crate::blob::{BlobError, BlobKey};
use crate::{BlobStore, READINESS_PROBE_BYTES};

/// Connecting (TCP and TLS handshake) must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An attempt's answer must start within this (plus the upload's time at
/// [`MIN_TRANSFER_RATE`]), and its body end within this plus the body's time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest transfer tolerated, in bytes per second: a 10 MB message gets
/// 10 s on top of [`REQUEST_TIMEOUT`].
pub const MIN_TRANSFER_RATE: u64 = 1024 * 1024;
/// Attempts per request (the first one included).
pub const MAX_ATTEMPTS: u32 = 3;
/// The first wait before a retry; it doubles each time, up to [`MAX_RETRY_BACKOFF`].
pub const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Keys per `ListObjectsV2` page (S3's own maximum).
pub const MAX_LIST_PAGE: usize = 1000;
/// PUTs of one batch in flight at once.
pub const MAX_PARALLEL_PUTS: usize = 16;
/// Idle pooled connections are closed after this (S3 closes them at about 20 s).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest blob a GET reads (messages are at most tens of MB).
pub const MAX_BLOB_BYTES: usize = 256 * 1024 * 1024;
/// Largest `ListObjectsV2` answer read (a page of 1000 keys is about 300 KB).
pub const MAX_LIST_PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Longest lifetime of a presigned URL handed out: no longer than the longest
/// read capability (`READ_CAPABILITY_MAX_TTL_SECS`, 30 min).
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(1_800);
/// Shortest lifetime of a presigned URL (S3 counts in whole seconds).
pub const MIN_PRESIGN_TTL: Duration = Duration::from_secs(1);
/// Lifetime of the signature of the store's own requests: covers every retry
/// of one request and a few minutes of clock skew, nothing more.
pub const REQUEST_SIGNATURE_TTL: Duration = Duration::from_secs(15 * 60);
/// Where readiness probes are written, under the prefix (a leading dot: never
/// a blob key, so never listed).
pub const READINESS_PREFIX: &str = ".readiness/";

/// The store's timeouts, retries and batch sizes. [`Default`] is the named
/// constants; tests shorten them.
#[derive(Debug, Clone)]
pub struct S3Limits {
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// See [`MIN_TRANSFER_RATE`] (bytes per second, at least 1).
    pub min_transfer_rate: u64,
    /// See [`MAX_ATTEMPTS`] (at least 1).
    pub max_attempts: u32,
    /// See [`RETRY_BACKOFF`].
    pub retry_backoff: Duration,
    /// See [`MAX_LIST_PAGE`] (1 to [`MAX_LIST_PAGE`]).
    pub list_page_size: usize,
    /// See [`MAX_PARALLEL_PUTS`] (at least 1).
    pub max_parallel_puts: usize,
    /// See [`POOL_IDLE_TIMEOUT`].
    pub pool_idle_timeout: Duration,
}

impl Default for S3Limits {
    fn default() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            min_transfer_rate: MIN_TRANSFER_RATE,
            max_attempts: MAX_ATTEMPTS,
            retry_backoff: RETRY_BACKOFF,
            list_page_size: MAX_LIST_PAGE,
            max_parallel_puts: MAX_PARALLEL_PUTS,
            pool_idle_timeout: POOL_IDLE_TIMEOUT,
        }
    }
}

impl S3Limits {
    /// How long `bytes` take at the minimum transfer rate.
    fn transfer_time(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.min_transfer_rate.max(1) as f64)
    }

    /// The longest a request can take, all attempts and waits included, for a
    /// body of `bytes` (what a caller waits at worst).
    pub fn worst_case(&self, bytes: usize) -> Duration {
        let attempt = self.connect_timeout + 2 * (self.request_timeout + self.transfer_time(bytes));
        let attempts = self.max_attempts.max(1);
        attempt * attempts + MAX_RETRY_BACKOFF * (attempts - 1)
    }
}

/// Clamps a presigned URL's lifetime to [`MIN_PRESIGN_TTL`]..=[`MAX_PRESIGN_TTL`].
pub fn clamp_presign_ttl(ttl: Duration) -> Duration {
    ttl.clamp(MIN_PRESIGN_TTL, MAX_PRESIGN_TTL)
}

/// A [`BlobStore`] on an S3 bucket. Cheap to clone: clones share the
/// connection pool. Must be used inside a Tokio runtime.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: Bucket,
    credentials: Credentials,
    /// `""` or `a/b/`.
    prefix: String,
    transport: Transport,
    limits: S3Limits,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("bucket", &self.bucket.name())
            .field("prefix", &self.prefix)
            .field("endpoint", &self.bucket.base_url().as_str())
            .finish_non_exhaustive()
    }
}

/// How one item of a batch ended.
enum PutOutcome {
    Stored,
    /// Another item failed before this one started.
    NotTried,
    Failed(S3Error),
}

impl S3BlobStore {
    /// A store for `config` with the default [`S3Limits`]. Does no I/O (the
    /// first request, or [`BlobStore::check_writable`], meets the server).
    pub fn open(config: &S3Config) -> Result<Self, BlobError> {
        Self::with_limits(config, S3Limits::default())
    }

    /// A store for `config` with `limits`.
    pub fn with_limits(config: &S3Config, limits: S3Limits) -> Result<Self, BlobError> {
        let setup_error = |detail: String| BlobError::Io { path: config.location(), err: io::Error::other(detail) };
        let style = match config.addressing {
            config::Addressing::Path => UrlStyle::Path,
            config::Addressing::VirtualHost => UrlStyle::VirtualHost,
        };
        let bucket = Bucket::new(config.endpoint.clone(), style, config.bucket.clone(), config.region.clone())
            .map_err(|e| setup_error(format!("cannot address the bucket: {e:?}")))?;
        let credentials = match &config.session_token {
            Some(token) => Credentials::new_with_token(&config.access_key_id, &config.secret_access_key, token),
            None => Credentials::new(&config.access_key_id, &config.secret_access_key),
        };
        let limits = S3Limits {
            min_transfer_rate: limits.min_transfer_rate.max(1),
            max_attempts: limits.max_attempts.max(1),
            list_page_size: limits.list_page_size.clamp(1, MAX_LIST_PAGE),
            max_parallel_puts: limits.max_parallel_puts.max(1),
            ..limits
        };
        let transport = Transport::new(limits.clone(), config.ca_file.as_deref()).map_err(setup_error)?;
        Ok(Self { inner: Arc::new(Inner { bucket, credentials, prefix: config.prefix.clone(), transport, limits }) })
    }

    /// `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.inner.bucket.name(), self.inner.prefix)
    }

    /// The object key of a blob: the prefix, then the blob key.
    pub fn object_key(&self, key: &BlobKey) -> String {
        self.inner.object_key(key.as_str())
    }

    /// The blob key of an object key (the inverse of [`Self::object_key`]);
    /// `None` outside the prefix or for a name that is not a blob key. For
    /// reading the keys of a presigned listing.
    pub fn blob_key(&self, object_key: &str) -> Option<BlobKey> {
        BlobKey::parse(object_key.strip_prefix(self.inner.prefix.as_str())?)
    }

    /// Creates the bucket (in the configured region); an existing bucket of
    /// ours is fine. For setup and tests: the store never creates it itself.
    pub async fn create_bucket(&self) -> Result<(), BlobError> {
        let inner = &self.inner;
        let action = inner.bucket.create_bucket(&inner.credentials);
        let body = Bytes::from(action.body());
        let sign = || action.sign(REQUEST_SIGNATURE_TTL);
        let request = Request {
            op: "CREATE BUCKET",
            object: inner.bucket.name(),
            method: Method::PUT,
            sign: &sign,
            headers: &[],
            body,
            max_body: MAX_ERROR_BODY_BYTES,
        };
        let reply = inner.transport.send(&request).await.map_err(|e| inner.blob_error("", e))?;
        if reply.status.is_success() {
            return Ok(());
        }
        let refusal = reply.refusal("CREATE BUCKET", inner.bucket.name());
        if refusal.code() == "BucketAlreadyOwnedByYou" {
            return Ok(());
        }
        Err(inner.blob_error("", refusal))
    }

    /// A URL that GETs `key` directly from S3 for `ttl` (clamped by
    /// [`clamp_presign_ttl`]) from now. Nothing in it can be changed: the key
    /// is the signed path, the expiry a signed parameter.
    pub fn presign_get(&self, key: &BlobKey, ttl: Duration) -> Url {
        self.presign_get_at(key, ttl, SystemTime::now())
    }

    /// [`Self::presign_get`], signed as of `signed_at` (the broker's clock).
    pub fn presign_get_at(&self, key: &BlobKey, ttl: Duration, signed_at: SystemTime) -> Url {
        let inner = &self.inner;
        let object = inner.object_key(key.as_str());
        inner
            .bucket
            .get_object(Some(&inner.credentials), &object)
            .sign_with_time(clamp_presign_ttl(ttl), &timestamp(signed_at))
    }

    /// A URL that lists (`ListObjectsV2`, the first page of up to 1000 keys,
    /// URL-encoded as `encoding-type=url` asks) the blobs whose key starts with
    /// `prefix` (`<owner>/<inbox>/`), directly from S3, for `ttl` (clamped)
    /// from now. The prefix is a signed query parameter: a URL changed to list
    /// another prefix is refused. The listed keys carry the store's prefix
    /// ([`Self::blob_key`] removes it).
    pub fn presign_list(&self, prefix: &str, ttl: Duration) -> Url {
        self.presign_list_page(prefix, None, ttl, SystemTime::now())
    }

    /// [`Self::presign_list`] for the page after `continuation_token` (from the
    /// previous page's `NextContinuationToken`), signed as of `signed_at`.
    pub fn presign_list_page(
        &self,
        prefix: &str,
        continuation_token: Option<&str>,
        ttl: Duration,
        signed_at: SystemTime,
    ) -> Url {
        let inner = &self.inner;
        let full_prefix = format!("{}{prefix}", inner.prefix);
        let mut action = inner.bucket.list_objects_v2(Some(&inner.credentials));
        action.with_prefix(full_prefix.as_str());
        if let Some(token) = continuation_token {
            action.with_continuation_token(token);
        }
        action.sign_with_time(clamp_presign_ttl(ttl), &timestamp(signed_at))
    }
}

/// A `SystemTime` as rusty-s3's timestamp (now, if out of its range).
fn timestamp(at: SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(at).unwrap_or_else(|_| jiff::Timestamp::now())
}

/// Whether a refusal means the storage is full (`507`, MinIO's and Ceph's
/// quota codes): `452 4.3.1`, not `451`.
fn storage_full(err: &S3Error) -> bool {
    matches!(err, S3Error::Status { status: 507, .. })
        || matches!(err.code(), "XMinioStorageFull" | "QuotaExceeded" | "XMinioAdminBucketQuotaExceeded")
}

impl Inner {
    fn object_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// An S3 failure as a [`BlobError`] naming `s3://bucket/object`.
    fn blob_error(&self, object: &str, err: S3Error) -> BlobError {
        let kind = match &err {
            S3Error::Timeout { .. } => io::ErrorKind::TimedOut,
            S3Error::Status { status: 412, .. } => io::ErrorKind::AlreadyExists,
            S3Error::Status { status: 401 | 403, .. } => io::ErrorKind::PermissionDenied,
            S3Error::Status { status: 404, .. } => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        if storage_full(&err) {
            return BlobError::StorageFull(io::Error::new(kind, err));
        }
        BlobError::Io { path: format!("s3://{}/{object}", self.bucket.name()), err: io::Error::new(kind, err) }
    }

    /// Every item, or nothing: see the module documentation.
    async fn put_all(self: Arc<Self>, items: Vec<(BlobKey, Bytes)>) -> Result<(), BlobError> {
        let permits = Arc::new(Semaphore::new(self.limits.max_parallel_puts));
        let failed = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let mut keys = HashMap::new();
        for (key, bytes) in items {
            let (inner, permits, failed) = (Arc::clone(&self), Arc::clone(&permits), Arc::clone(&failed));
            let object = self.object_key(key.as_str());
            let task = tasks.spawn(async move {
                // The semaphore is never closed.
                let _permit = permits.acquire_owned().await;
                if failed.load(Ordering::Acquire) {
                    return PutOutcome::NotTried;
                }
                match inner.put_object(&object, bytes).await {
                    Ok(()) => PutOutcome::Stored,
                    Err(err) => {
                        failed.store(true, Ordering::Release);
                        PutOutcome::Failed(err)
                    }
                }
            });
            keys.insert(task.id(), self.object_key(key.as_str()));
        }

        let mut undo = Vec::new();
        let mut first_error: Option<(String, S3Error)> = None;
        while let Some(joined) = tasks.join_next_with_id().await {
            let (id, outcome) = match joined {
                Ok((id, outcome)) => (id, outcome),
                Err(err) => {
                    let detail = format!("the PUT task failed: {err}");
                    (
                        err.id(),
                        PutOutcome::Failed(S3Error::Transport {
                            op: "PUT",
                            object: String::new(),
                            detail,
                            attempts: 0,
                        }),
                    )
                }
            };
            let Some(object) = keys.remove(&id) else { continue };
            match outcome {
                PutOutcome::Stored => undo.push(object),
                PutOutcome::NotTried => {}
                PutOutcome::Failed(err) => {
                    if err.outcome_unknown() {
                        undo.push(object.clone());
                    }
                    if first_error.is_none() {
                        first_error = Some((object, err));
                    }
                }
            }
        }
        let Some((object, err)) = first_error else {
            return Ok(());
        };
        for stored in &undo {
            if let Err(undo_err) = self.delete_object(stored).await {
                tracing::warn!(object = %stored, err = %undo_err, "cannot undo a failed put; the next reconciliation finds it");
            }
        }
        Err(self.blob_error(&object, err))
    }

    /// One conditional, checksummed PUT.
    async fn put_object(&self, object: &str, bytes: Bytes) -> Result<(), S3Error> {
        let checksum = BASE64.encode(Sha256::digest(&bytes));
        let headers = [("if-none-match", "*".to_owned()), ("x-amz-checksum-sha256", checksum)];
        let sign = || {
            let mut action = self.bucket.put_object(Some(&self.credentials), object);
            for (name, value) in &headers {
                action.headers_mut().insert(*name, value.as_str());
            }
            action.sign(REQUEST_SIGNATURE_TTL)
        };
        let request = Request {
            op: "PUT",
            object,
            method: Method::PUT,
            sign: &sign,
            headers: &headers,
            body: bytes.clone(),
            max_body: MAX_ERROR_BODY_BYTES,
        };
        let reply = self.transport.send(&request).await?;
        if reply.status.is_success() {
            return Ok(());
        }
        if reply.status == StatusCode::PRECONDITION_FAILED && reply.earlier_attempt_unknown {
            // Our own earlier attempt may have landed before its answer was lost.
            if self.get_object(object).await?.is_some_and(|stored| stored == bytes) {
                return Ok(());
            }
        }
        Err(reply.refusal("PUT", object))
    }

    /// GET one object; `None` if there is no such key.
    async fn get_object(&self, object: &str) -> Result<Option<Bytes>, S3Error> {
        let headers = [("x-amz-checksum-mode", "ENABLED".to_owned())];
        let sign = || {
            let mut action = self.bucket.get_object(Some(&self.credentials), object);
            action.headers_mut().insert(headers[0].0, headers[0].1.as_str());
            action.sign(REQUEST_SIGNATURE_TTL)
        };
        let request = Request {
            op: "GET",
            object,
            method: Method::GET,
            sign: &sign,
            headers: &headers,
            body: Bytes::new(),
            max_body: MAX_BLOB_BYTES,
        };
        let reply = self.transport.send(&request).await?;
        if reply.status == StatusCode::NOT_FOUND {
            let refusal = reply.refusal("GET", object);
            return if matches!(refusal.code(), "NoSuchKey" | "NotFound") { Ok(None) } else { Err(refusal) };
        }
        if !reply.status.is_success() {
            return Err(reply.refusal("GET", object));
        }
        verify_checksum(&reply, object)?;
        Ok(Some(reply.body))
    }

    /// Whether an object exists (HEAD).
    async fn object_exists(&self, object: &str) -> Result<bool, S3Error> {
        let sign = || self.bucket.head_object(Some(&self.credentials), object).sign(REQUEST_SIGNATURE_TTL);
        let request = Request {
            op: "HEAD",
            object,
            method: Method::HEAD,
            sign: &sign,
            headers: &[],
            body: Bytes::new(),
            max_body: 0,
        };
        let reply = self.transport.send(&request).await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(false),
            status if status.is_success() => Ok(true),
            _ => Err(reply.refusal("HEAD", object)),
        }
    }

    /// DELETE one object (S3 answers `204` whether or not it existed).
    async fn delete_object(&self, object: &str) -> Result<(), S3Error> {
        let sign = || self.bucket.delete_object(Some(&self.credentials), object).sign(REQUEST_SIGNATURE_TTL);
        let request = Request {
            op: "DELETE",
            object,
            method: Method::DELETE,
            sign: &sign,
            headers: &[],
            body: Bytes::new(),
            max_body: MAX_ERROR_BODY_BYTES,
        };
        let reply = self.transport.send(&request).await?;
        if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(reply.refusal("DELETE", object))
    }

    /// Every object key under `full_prefix`, page by page.
    async fn list_objects(&self, full_prefix: &str) -> Result<Vec<String>, S3Error> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let sign = || {
                let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
                action.with_prefix(full_prefix);
                action.with_max_keys(self.limits.list_page_size);
                if let Some(token) = &token {
                    action.with_continuation_token(token.as_str());
                }
                action.sign(REQUEST_SIGNATURE_TTL)
            };
            let request = Request {
                op: "LIST",
                object: full_prefix,
                method: Method::GET,
                sign: &sign,
                headers: &[],
                body: Bytes::new(),
                max_body: MAX_LIST_PAGE_BYTES,
            };
            let reply = self.transport.send(&request).await?;
            if !reply.status.is_success() {
                return Err(reply.refusal("LIST", full_prefix));
            }
            let malformed = |detail: String| S3Error::Response { op: "LIST", object: full_prefix.to_owned(), detail };
            let text = std::str::from_utf8(&reply.body).map_err(|e| malformed(format!("not UTF-8: {e}")))?;
            let page = ListObjectsV2::parse_response(text).map_err(|e| malformed(format!("malformed listing: {e}")))?;
            objects.extend(page.contents.into_iter().map(|object| object.key));
            match page.next_continuation_token {
                None => return Ok(objects),
                Some(next) if token.as_deref() == Some(next.as_str()) => {
                    return Err(malformed("the listing does not advance (same continuation token twice)".to_owned()));
                }
                Some(next) => token = Some(next),
            }
        }
    }
}

/// Checks the body against the `x-amz-checksum-sha256` the server returned
/// with it, if any (a multipart object's checksum of checksums, `…-N`, is
/// not the body's and is skipped).
fn verify_checksum(reply: &Reply, object: &str) -> Result<(), S3Error> {
    let Some(expected) = reply.headers.get("x-amz-checksum-sha256").and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    if expected.contains('-') {
        return Ok(());
    }
    let actual = BASE64.encode(Sha256::digest(&reply.body));
    if actual == expected {
        return Ok(());
    }
    Err(S3Error::Response {
        op: "GET",
        object: object.to_owned(),
        detail: format!("SHA-256 mismatch: the server announced {expected}, the body has {actual}"),
    })
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put_durable(&self, items: Vec<(BlobKey, Bytes)>) -> Result<(), BlobError> {
        if items.is_empty() {
            return Ok(());
        }
        // Spawned, so a caller that goes away does not cut the put in half: it
        // still ends stored, or undone.
        let inner = Arc::clone(&self.inner);
        tokio::spawn(inner.put_all(items)).await.unwrap_or_else(|err| {
            Err(BlobError::Io { path: self.location(), err: io::Error::other(format!("the put task failed: {err}")) })
        })
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, BlobError> {
        let object = self.inner.object_key(key.as_str());
        self.inner.get_object(&object).await.map_err(|e| self.inner.blob_error(&object, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobKey>, BlobError> {
        let full_prefix = self.inner.object_key(prefix);
        let objects =
            self.inner.list_objects(&full_prefix).await.map_err(|e| self.inner.blob_error(&full_prefix, e))?;
        let mut keys: Vec<BlobKey> = objects.iter().filter_map(|object| self.blob_key(object)).collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn remove(&self, key: &BlobKey) -> Result<bool, BlobError> {
        let object = self.inner.object_key(key.as_str());
        let error = |e| self.inner.blob_error(&object, e);
        if !self.inner.object_exists(&object).await.map_err(error)? {
            return Ok(false);
        }
        self.inner.delete_object(&object).await.map_err(error)?;
        Ok(true)
    }

    /// Writes [`READINESS_PROBE_BYTES`] under [`READINESS_PREFIX`] (a fresh
    /// key each time), then deletes it: proves the endpoint, the credentials
    /// and the bucket take writes now.
    async fn check_writable(&self) -> Result<(), BlobError> {
        let object = self.inner.object_key(&format!("{READINESS_PREFIX}{}", Ulid::new()));
        let probe = Bytes::from(vec![0u8; READINESS_PROBE_BYTES]);
        let written = self.inner.put_object(&object, probe).await;
        let removed = self.inner.delete_object(&object).await;
        written.and(removed).map_err(|e| self.inner.blob_error(&object, e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn store(prefix: &str) -> S3BlobStore {
        let config = S3Config::from_vars(&format!("s3://mail/{prefix}"), |name| {
            match name {
                ENV_ENDPOINT => Some("http://127.0.0.1:1"),
                ENV_ACCESS_KEY_ID => Some("AKID"),
                ENV_SECRET_ACCESS_KEY => Some("secret"),
                _ => None,
            }
            .map(str::to_owned)
        })
        .unwrap();
        S3BlobStore::open(&config).unwrap()
    }

    #[test]
    fn presign_ttl_is_clamped() {
        assert_eq!(clamp_presign_ttl(Duration::ZERO), MIN_PRESIGN_TTL);
        assert_eq!(clamp_presign_ttl(Duration::from_secs(60)), Duration::from_secs(60));
        assert_eq!(clamp_presign_ttl(Duration::from_secs(7 * 24 * 3600)), MAX_PRESIGN_TTL);
        let store = store("p");
        let key = BlobKey::parse("0xaa/bot@a.test/01A.eml").unwrap();
        let url = store.presign_get(&key, Duration::from_secs(86_400));
        let expires: Vec<_> =
            url.query_pairs().filter(|(k, _)| k == "X-Amz-Expires").map(|(_, v)| v.into_owned()).collect();
        assert_eq!(expires, [MAX_PRESIGN_TTL.as_secs().to_string()]);
    }

    #[test]
    fn presigned_list_fixes_the_prefix_in_the_signed_query() {
        let store = store("prod");
        let url = store.presign_list("0xaa/bot@a.test/", Duration::from_secs(60));
        let pairs: HashMap<_, _> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        assert_eq!(pairs["prefix"], "prod/0xaa/bot@a.test/");
        assert_eq!(pairs["list-type"], "2");
        assert!(pairs.contains_key("X-Amz-Signature"));
        assert_eq!(url.path(), "/mail/");
    }

    #[test]
    fn worst_case_covers_every_attempt() {
        let limits = S3Limits::default();
        let one = limits.connect_timeout + 2 * REQUEST_TIMEOUT;
        assert!(limits.worst_case(0) >= one * MAX_ATTEMPTS);
        assert!(limits.worst_case(10 * 1024 * 1024) > limits.worst_case(0));
    }

    proptest! {
        /// `blob_key` inverts `object_key` for every blob key, and refuses
        /// names outside the prefix.
        #[test]
        fn object_keys_round_trip(components in proptest::collection::vec("[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,8}", 1..4)) {
            let store = store("prod/eu");
            let key = BlobKey::parse(&components.join("/")).unwrap();
            prop_assume!(!key.as_str().starts_with("prod/eu/"));
            let object = store.object_key(&key);
            prop_assert!(object.starts_with("prod/eu/"));
            prop_assert_eq!(store.blob_key(&object), Some(key.clone()));
            prop_assert_eq!(store.blob_key(key.as_str()), None::<BlobKey>);
        }
    }
}
