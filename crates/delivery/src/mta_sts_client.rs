//! The sending side of MTA-STS (RFC 8461 §3.3, §5): discover a recipient
//! domain's policy, fetch it over HTTPS, cache it.
//!
//! [`MtaSts::policy_for`] runs on every direct MX delivery attempt:
//!
//! 1. Look up `_mta-sts.<domain>` TXT through the injected [`Resolver`].
//! 2. A valid record whose id equals the cached policy's: use the cache.
//! 3. Another id (or nothing cached): fetch
//!    `https://mta-sts.<domain>/.well-known/mta-sts.txt` ([`PolicyFetcher`];
//!    [`HttpsPolicyFetcher`]: the host resolved through the same resolver, the
//!    certificate validated, no redirects, [`POLICY_FETCH_TIMEOUT`],
//!    [`MAX_POLICY_BYTES`], `text/plain`), parse it strictly and cache it under
//!    the record's id until its `max_age` runs out.
//! 4. No record, a malformed one, a DNS failure, or a fetch that fails: the
//!    cached policy if it has not expired (§5.1: a live policy cannot be found,
//!    the cached one applies), else none: deliver as without MTA-STS (§5).
//!
//! A failed fetch is not repeated for the same id for [`FETCH_RETRY_AFTER`], and
//! one domain's discovery runs one at a time, so a batch of messages to a
//! domain whose policy host is down waits for one fetch, not one each. At most
//! [`MAX_CACHED_DOMAINS`] domains are remembered (expired entries go first).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentkeys_core::UnixTime;
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::mta_sts::{MAX_POLICY_BYTES, StsMode, StsPolicy, parse_sts_record};
use crate::route::{ResolveError, Resolver};

/// The HTTPS port policies are fetched from (RFC 8461 §3.3).
pub const MTA_STS_PORT: u16 = 443;
/// The whole fetch (connect, TLS, request, body) must finish within this (RFC
/// 8461 §3.3 suggests a timeout; one minute is its suggestion for the fetch).
pub const POLICY_FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Addresses of the policy host tried, at most.
pub const MAX_FETCH_ADDRESSES: usize = 3;
/// After a failed fetch (or an invalid policy), the same id is not fetched again
/// for this long; the domain is treated as having no new policy meanwhile.
pub const FETCH_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);
/// Domains whose policy (or failed fetch) is remembered at once.
pub const MAX_CACHED_DOMAINS: usize = 10_000;
/// The policy's path (RFC 8461 §3.2).
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// Why a policy could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The policy host has no address, or DNS failed.
    #[error("cannot resolve mta-sts.{domain}: {why}")]
    Resolve {
        /// The recipient domain.
        domain: String,
        /// The resolver's error.
        why: String,
    },
    /// Connecting, the TLS handshake (including the certificate check) or the
    /// HTTP exchange failed.
    #[error("{0}")]
    Transport(String),
    /// The server answered something other than `200` with a `text/plain` body
    /// of at most [`MAX_POLICY_BYTES`] in UTF-8 (a redirect is not followed).
    #[error("{0}")]
    Response(String),
    /// Nothing within [`POLICY_FETCH_TIMEOUT`].
    #[error("no policy within {} s", POLICY_FETCH_TIMEOUT.as_secs())]
    Timeout,
}

/// Fetches a domain's policy text. Injected so tests can serve any answer.
#[async_trait]
pub trait PolicyFetcher: Send + Sync + 'static {
    /// The body of `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
    async fn fetch(&self, domain: &str) -> Result<String, FetchError>;
}

/// The real fetch: HTTP/1.1 over TLS (validated against the trust anchors)
/// to `mta-sts.<domain>`, resolved through the delivery resolver.
pub struct HttpsPolicyFetcher {
    resolver: Arc<dyn Resolver>,
    tls: TlsConnector,
    port: u16,
    timeout: Duration,
}

impl std::fmt::Debug for HttpsPolicyFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsPolicyFetcher").field("port", &self.port).finish_non_exhaustive()
    }
}

/// Aborts a spawned task when dropped (the HTTP connection driver outlives
/// nothing: a timeout or an early return drops it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HttpsPolicyFetcher {
    /// A fetcher resolving through `resolver`, validating with `tls` (use
    /// [`TlsClients::validating_config`](crate::TlsClients::validating_config)),
    /// on `port` ([`MTA_STS_PORT`]; tests use another).
    pub fn new(resolver: Arc<dyn Resolver>, tls: Arc<ClientConfig>, port: u16) -> Self {
        Self { resolver, tls: TlsConnector::from(tls), port, timeout: POLICY_FETCH_TIMEOUT }
    }

    /// The same fetcher with another overall timeout (tests).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn fetch_from(&self, addr: SocketAddr, host: &str) -> Result<String, FetchError> {
        let transport = |what: &str, e: &dyn std::fmt::Display| FetchError::Transport(format!("{what} {addr} ({host}): {e}"));
        let tcp = TcpStream::connect(addr).await.map_err(|e| transport("cannot connect to", &e))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| transport("bad TLS name for", &e))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| transport("TLS with", &e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| transport("HTTP with", &e))?;
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let authority = if self.port == MTA_STS_PORT { host.to_owned() } else { format!("{host}:{}", self.port) };
        let request = Request::get(POLICY_PATH)
            .header(header::HOST, authority)
            .header(header::USER_AGENT, concat!("agentkeys/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport("cannot build the request for", &e))?;
        let response = sender.send_request(request).await.map_err(|e| transport("HTTP with", &e))?;
        let status = response.status();
        if status != StatusCode::OK {
            let redirect = if status.is_redirection() { " (redirects are not followed, RFC 8461 §3.3)" } else { "" };
            return Err(FetchError::Response(format!("https://{host}{POLICY_PATH} answered HTTP {status}{redirect}")));
        }
        let media_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if media_type.as_deref() != Some("text/plain") {
            return Err(FetchError::Response(format!(
                "https://{host}{POLICY_PATH} is {}, not text/plain",
                media_type.as_deref().unwrap_or("without a Content-Type")
            )));
        }
        let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
                Some(_) => FetchError::Response(format!("https://{host}{POLICY_PATH} is over {MAX_POLICY_BYTES} bytes")),
                None => transport("reading the policy from", &e),
            })?
            .to_bytes();
        String::from_utf8(body.to_vec())
            .map_err(|_| FetchError::Response(format!("https://{host}{POLICY_PATH} is not UTF-8 text")))
    }
}

#[async_trait]
impl PolicyFetcher for HttpsPolicyFetcher {
    async fn fetch(&self, domain: &str) -> Result<String, FetchError> {
        let host = format!("mta-sts.{domain}");
        let attempt = async {
            let ips = self
                .resolver
                .ips(&host)
                .await
                .map_err(|e| FetchError::Resolve { domain: domain.to_owned(), why: e.to_string() })?;
            let mut last = FetchError::Resolve { domain: domain.to_owned(), why: "no address".to_owned() };
            for ip in ips.into_iter().take(MAX_FETCH_ADDRESSES) {
                match self.fetch_from(SocketAddr::new(ip, self.port), &host).await {
                    Ok(text) => return Ok(text),
                    // Another address may be reachable; a server's own answer is final.
                    Err(err @ FetchError::Transport(_)) => last = err,
                    Err(err) => return Err(err),
                }
            }
            Err(last)
        };
        tokio::time::timeout(self.timeout, attempt).await.unwrap_or(Err(FetchError::Timeout))
    }
}

/// A policy in the cache.
#[derive(Debug, Clone)]
struct Cached {
    id: String,
    policy: Arc<StsPolicy>,
    /// Unix seconds after which it no longer applies (fetch time + max_age).
    expires: UnixTime,
}

/// What is remembered about one domain.
#[derive(Debug, Default)]
struct Entry {
    cached: Option<Cached>,
    /// The id whose fetch failed, and when it may be tried again.
    failed: Option<(String, UnixTime)>,
}

impl Entry {
    fn valid(&self, now: UnixTime) -> Option<Arc<StsPolicy>> {
        self.cached.as_ref().filter(|c| c.expires > now).map(|c| Arc::clone(&c.policy))
    }

    fn forgettable(&self, now: UnixTime) -> bool {
        self.valid(now).is_none() && self.failed.as_ref().is_none_or(|(_, until)| *until <= now)
    }
}

type Clock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

fn system_now() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Policy discovery and the per-domain cache (see the module docs).
pub struct MtaSts {
    resolver: Arc<dyn Resolver>,
    fetcher: Arc<dyn PolicyFetcher>,
    clock: Clock,
    domains: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
}

impl std::fmt::Debug for MtaSts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.domains.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("MtaSts").field("domains", &n).finish_non_exhaustive()
    }
}

impl MtaSts {
    /// Discovery through `resolver`, policies from `fetcher`, the system clock.
    pub fn new(resolver: Arc<dyn Resolver>, fetcher: Arc<dyn PolicyFetcher>) -> Self {
        Self { resolver, fetcher, clock: Arc::new(system_now), domains: Mutex::new(HashMap::new()) }
    }

    /// The same, with an injected clock (Unix seconds).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn entry(&self, domain: &str, now: UnixTime) -> Arc<tokio::sync::Mutex<Entry>> {
        let mut domains = self.domains.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = domains.get(domain) {
            return Arc::clone(entry);
        }
        if domains.len() >= MAX_CACHED_DOMAINS {
            // Forget what no longer matters; entries in use (locked) stay.
            domains.retain(|_, e| e.try_lock().map_or(true, |e| !e.forgettable(now)));
            if domains.len() >= MAX_CACHED_DOMAINS {
                let soonest = domains
                    .iter()
                    .filter_map(|(d, e)| e.try_lock().ok().map(|e| (e.cached.as_ref().map_or(0, |c| c.expires), d.clone())))
                    .min();
                if let Some((_, d)) = soonest {
                    domains.remove(&d);
                }
            }
        }
        Arc::clone(domains.entry(domain.to_owned()).or_default())
    }

    /// The cached policy of `domain` that has not expired (no live one could
    /// be had).
    async fn cached(&self, domain: &str, now: UnixTime) -> Option<Arc<StsPolicy>> {
        let entry = self.domains.lock().unwrap_or_else(PoisonError::into_inner).get(domain).map(Arc::clone)?;
        let entry = entry.lock().await;
        entry.valid(now)
    }

    /// The policy that applies to mail for `domain` now, if any (a policy in
    /// mode `none` is returned too: the caller treats it as no policy).
    pub async fn policy_for(&self, domain: &str) -> Option<Arc<StsPolicy>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let record = self.resolver.txt(&format!("_mta-sts.{domain}")).await;
        let now = (self.clock)();
        let id = match record {
            Ok(records) => match parse_sts_record(&records) {
                Ok(Some(id)) => id,
                Ok(None) => return self.cached(&domain, now).await,
                Err(err) => {
                    tracing::warn!(%domain, %err, "MTA-STS: unusable _mta-sts record; the cached policy (if any) applies");
                    return self.cached(&domain, now).await;
                }
            },
            // NXDOMAIN: no record. A DNS failure: nothing live can be learnt.
            Err(ResolveError::Permanent(_)) => return self.cached(&domain, now).await,
            Err(ResolveError::Temporary(why)) => {
                tracing::debug!(%domain, %why, "MTA-STS: _mta-sts lookup failed; the cached policy (if any) applies");
                return self.cached(&domain, now).await;
            }
        };
        let entry = self.entry(&domain, now);
        let mut entry = entry.lock().await;
        if let Some(cached) = entry.cached.as_ref().filter(|c| c.id == id && c.expires > now) {
            return Some(Arc::clone(&cached.policy));
        }
        if entry.failed.as_ref().is_some_and(|(failed, until)| *failed == id && *until > now) {
            return entry.valid(now);
        }
        let fetched = self.fetcher.fetch(&domain).await.and_then(|text| {
            StsPolicy::parse(&text).map_err(|e| FetchError::Response(format!("invalid policy: {e}")))
        });
        let now = (self.clock)();
        match fetched {
            Ok(policy) => {
                metrics::counter!("agentkeys_mta_sts_policy_fetches_total", "result" => "ok").increment(1);
                tracing::info!(%domain, %id, mode = %policy.mode, mx = %policy.mx_list(), max_age = policy.max_age, "MTA-STS policy fetched");
                let policy = Arc::new(policy);
                entry.cached = Some(Cached {
                    id,
                    policy: Arc::clone(&policy),
                    expires: now.saturating_add(i64::from(policy.max_age)),
                });
                entry.failed = None;
                Some(policy)
            }
            Err(err) => {
                metrics::counter!("agentkeys_mta_sts_policy_fetches_total", "result" => "error").increment(1);
                tracing::warn!(%domain, %id, %err, "MTA-STS: cannot fetch the policy; the cached policy (if any) applies, else none");
                entry.failed = Some((id, now.saturating_add(secs(FETCH_RETRY_AFTER))));
                entry.valid(now)
            }
        }
    }
}

/// How an attempt must treat a domain's policy.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) domain: String,
    pub(crate) policy: Arc<StsPolicy>,
}

impl Applied {
    /// The policy when it asks for something (`enforce` or `testing`).
    pub(crate) fn active(domain: &str, policy: Option<Arc<StsPolicy>>) -> Option<Self> {
        policy.filter(|p| p.mode != StsMode::None).map(|policy| Self { domain: domain.to_owned(), policy })
    }

    /// `MTA-STS policy of example.com (enforce)`: the context of a failure.
    pub(crate) fn because(&self) -> String {
        format!("MTA-STS policy of {} ({})", self.domain, self.policy.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

    use crate::route::{Mx, StaticResolver};

    /// A resolver whose records the test changes between calls.
    #[derive(Default)]
    struct Dns(Mutex<StaticResolver>);

    impl Dns {
        fn set(&self, r: StaticResolver) {
            *self.0.lock().unwrap() = r;
        }
        fn get(&self) -> StaticResolver {
            self.0.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Resolver for Dns {
        async fn mx(&self, domain: &str) -> Result<Vec<Mx>, ResolveError> {
            self.get().mx(domain).await
        }
        async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
            self.get().ips(host).await
        }
        async fn txt(&self, name: &str) -> Result<Vec<String>, ResolveError> {
            self.get().txt(name).await
        }
    }

    /// Serves whatever the test put in, counting fetches.
    struct Served {
        answer: Mutex<Result<String, FetchError>>,
        fetches: AtomicUsize,
    }

    #[async_trait]
    impl PolicyFetcher for Served {
        async fn fetch(&self, domain: &str) -> Result<String, FetchError> {
            assert_eq!(domain, "example.com", "lowercase, no trailing dot");
            self.fetches.fetch_add(1, Ordering::SeqCst);
            self.answer.lock().unwrap().clone()
        }
    }

    const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 86400\r\n";
    const TESTING: &str = "version: STSv1\r\nmode: testing\r\nmx: *.example.com\r\nmax_age: 600\r\n";

    struct World {
        sts: MtaSts,
        dns: Arc<Dns>,
        served: Arc<Served>,
        clock: Arc<AtomicI64>,
    }

    impl World {
        fn new() -> Self {
            let dns = Arc::new(Dns::default());
            let served = Arc::new(Served { answer: Mutex::new(Err(FetchError::Timeout)), fetches: AtomicUsize::new(0) });
            let clock = Arc::new(AtomicI64::new(1_000_000));
            let c = Arc::clone(&clock);
            let sts = MtaSts::new(Arc::clone(&dns) as Arc<dyn Resolver>, Arc::clone(&served) as Arc<dyn PolicyFetcher>)
                .with_clock(move || c.load(Ordering::SeqCst));
            Self { sts, dns, served, clock }
        }
        fn publish(&self, id: Option<&str>) {
            self.dns.set(match id {
                Some(id) => StaticResolver::new().with_txt("_mta-sts.example.com", &format!("v=STSv1; id={id}")),
                None => StaticResolver::new(),
            });
        }
        fn serve(&self, answer: Result<&str, FetchError>) {
            *self.served.answer.lock().unwrap() = answer.map(str::to_owned);
        }
        fn fetches(&self) -> usize {
            self.served.fetches.load(Ordering::SeqCst)
        }
        fn advance(&self, d: Duration) {
            self.clock.fetch_add(secs(d), Ordering::SeqCst);
        }
        async fn mode(&self) -> Option<StsMode> {
            self.sts.policy_for("Example.COM.").await.map(|p| p.mode)
        }
    }

    #[tokio::test]
    async fn a_record_leads_to_a_fetched_policy_cached_by_its_id() {
        let w = World::new();
        w.publish(Some("one"));
        w.serve(Ok(ENFORCE));
        let p = w.sts.policy_for("example.com").await.unwrap();
        assert_eq!((p.mode, p.mx_list()), (StsMode::Enforce, "mx.example.com".to_owned()));
        assert_eq!(w.mode().await, Some(StsMode::Enforce));
        assert_eq!(w.fetches(), 1, "the same id is served from the cache");
    }

    #[tokio::test]
    async fn a_new_id_or_an_expired_policy_is_fetched_again() {
        let w = World::new();
        w.publish(Some("one"));
        w.serve(Ok(ENFORCE));
        assert_eq!(w.mode().await, Some(StsMode::Enforce));
        w.publish(Some("two"));
        w.serve(Ok(TESTING));
        assert_eq!(w.mode().await, Some(StsMode::Testing), "a new id: the new policy");
        assert_eq!(w.fetches(), 2);
        w.advance(Duration::from_secs(599));
        assert_eq!(w.mode().await, Some(StsMode::Testing));
        assert_eq!(w.fetches(), 2, "within max_age (600 s)");
        w.advance(Duration::from_secs(1));
        w.serve(Ok(ENFORCE));
        assert_eq!(w.mode().await, Some(StsMode::Enforce), "expired: fetched again under the same id");
        assert_eq!(w.fetches(), 3);
    }

    #[tokio::test]
    async fn without_a_record_or_a_policy_there_is_none_rfc_8461_section_5() {
        let w = World::new();
        w.publish(None);
        w.serve(Ok(ENFORCE));
        assert_eq!(w.mode().await, None, "no record: no fetch, no policy");
        assert_eq!(w.fetches(), 0);
        w.publish(Some("one"));
        w.serve(Err(FetchError::Transport("connection refused".into())));
        assert_eq!(w.mode().await, None, "a record but no policy to fetch: deliver as before");
        w.serve(Ok("version: STSv1\r\nmode: enforce\r\nmax_age: 1\r\n"));
        w.advance(FETCH_RETRY_AFTER);
        assert_eq!(w.mode().await, None, "an invalid policy (no mx) is no policy");
        assert_eq!(w.fetches(), 2);
        let several = StaticResolver::new()
            .with_txt("_mta-sts.example.com", "v=STSv1; id=a")
            .with_txt("_mta-sts.example.com", "v=STSv1; id=b");
        w.dns.set(several);
        assert_eq!(w.mode().await, None, "two records: no policy");
        assert_eq!(w.fetches(), 2);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_repeated_at_once() {
        let w = World::new();
        w.publish(Some("one"));
        w.serve(Err(FetchError::Timeout));
        for _ in 0..5 {
            assert_eq!(w.mode().await, None);
        }
        assert_eq!(w.fetches(), 1, "one fetch per FETCH_RETRY_AFTER, not one per message");
        w.advance(FETCH_RETRY_AFTER);
        w.serve(Ok(ENFORCE));
        assert_eq!(w.mode().await, Some(StsMode::Enforce));
        assert_eq!(w.fetches(), 2);
    }

    #[tokio::test]
    async fn the_cached_policy_applies_while_no_live_one_can_be_had() {
        let w = World::new();
        w.publish(Some("one"));
        w.serve(Ok(ENFORCE));
        assert_eq!(w.mode().await, Some(StsMode::Enforce));
        // The record goes away, DNS fails, or a new id cannot be fetched: still enforced.
        w.publish(None);
        assert_eq!(w.mode().await, Some(StsMode::Enforce), "record removed");
        w.dns.set(StaticResolver::new().with_failure("_mta-sts.example.com"));
        assert_eq!(w.mode().await, Some(StsMode::Enforce), "SERVFAIL");
        w.publish(Some("two"));
        w.serve(Err(FetchError::Response("HTTP 500".into())));
        assert_eq!(w.mode().await, Some(StsMode::Enforce), "new id, fetch failed");
        // Until max_age (86400 s) runs out.
        w.publish(None);
        w.advance(Duration::from_secs(86_400));
        assert_eq!(w.mode().await, None);
    }

    /// Every domain publishes a record; every fetch fails.
    struct Everywhere;

    #[async_trait]
    impl Resolver for Everywhere {
        async fn mx(&self, _: &str) -> Result<Vec<Mx>, ResolveError> {
            Ok(Vec::new())
        }
        async fn ips(&self, _: &str) -> Result<Vec<IpAddr>, ResolveError> {
            Ok(Vec::new())
        }
        async fn txt(&self, _: &str) -> Result<Vec<String>, ResolveError> {
            Ok(vec!["v=STSv1; id=x".to_owned()])
        }
    }

    #[async_trait]
    impl PolicyFetcher for Everywhere {
        async fn fetch(&self, _: &str) -> Result<String, FetchError> {
            Err(FetchError::Timeout)
        }
    }

    #[tokio::test]
    async fn at_most_max_cached_domains_are_remembered() {
        let sts = MtaSts::new(Arc::new(Everywhere), Arc::new(Everywhere));
        for i in 0..MAX_CACHED_DOMAINS + 10 {
            assert!(sts.policy_for(&format!("d{i}.example")).await.is_none());
        }
        let n = sts.domains.lock().unwrap().len();
        assert_eq!(n, MAX_CACHED_DOMAINS, "failed fetches are remembered, up to the limit");
        let w = World::new();
        w.publish(None);
        assert_eq!(w.mode().await, None);
        assert!(w.sts.domains.lock().unwrap().is_empty(), "a domain without a record takes no room");
    }

    #[test]
    fn limits_are_named() {
        assert_eq!(MTA_STS_PORT, 443);
        assert_eq!(POLICY_FETCH_TIMEOUT, Duration::from_secs(60));
        assert_eq!(FETCH_RETRY_AFTER, Duration::from_secs(300));
        assert_eq!(MAX_FETCH_ADDRESSES, 3);
        assert_eq!(MAX_CACHED_DOMAINS, 10_000);
    }
}
