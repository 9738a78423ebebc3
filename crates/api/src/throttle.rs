//! Per-address rate limits of the HTTP API, answered as 429 `RATE_LIMITED`
//! problem JSON with `Retry-After`.
//!
//! - **Refused agent keys.** Every answer on an agent-key route (the credential
//!   mints, the inbox listing, the send door) that refused the key itself
//!   (missing, malformed, unknown, revoked or expired: the response carries
//!   [`KeyRefused`]) counts against the client address: up to
//!   [`AUTH_FAILURES_PER_IP`] within a sliding [`AUTH_FAILURE_WINDOW`] are
//!   answered as they are; the next one within the window is answered 429
//!   instead, and from then every request on those routes from that address
//!   answers 429 **before the key is looked at** until the oldest of the
//!   counted refusals leaves the window, so a valid key cannot be told from a
//!   wrong one by a throttled prober. A valid key refused for an inbox its
//!   grants do not cover (403 `NO_GRANT`, or the send door's one 401) counts
//!   nothing, so a misconfigured agent does not throttle its own address;
//!   successful requests count nothing either. The refusals are counted in the
//!   store's failure counters ([`Throttles`], budget [`AGENT_KEY_BUDGET`]): in
//!   this process's memory by default, or shared by every node on PostgreSQL
//!   ([`HttpThrottle::with_failure_counters`]), so an address gets the budget
//!   once however many nodes it spreads its attempts over.
//! - **Pairing opens.** `POST /v1/pairings` is public: each address may open
//!   [`PAIRINGS_PER_IP`] per [`PAIRING_WINDOW`], as a burst (governor, GCRA, per
//!   process).
//!
//! Addresses are counted as the SMTP throttle counts them: IPv4 as is (also
//! IPv4-mapped), IPv6 by its /64. Memory stays bounded: the failure counters
//! bound themselves (`LocalThrottles`, or rows pruned by their window); the
//! pairing budgets are pruned every [`PRUNE_EVERY`] decisions and whenever more
//! than [`MAX_TRACKED_ADDRESSES`] are tracked (`retain_recent` +
//! `shrink_to_fit`). Requests without a peer address (the in-process router the
//! CLI uses) are not limited.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use agentkeys_store::{FailureWindow, LocalThrottles, ThrottleKey, Throttles, UnixMillis, unix_millis};
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::error::ApiError;

/// Refused agent keys an address may present per [`AUTH_FAILURE_WINDOW`]; the
/// next one is answered 429.
pub const AUTH_FAILURES_PER_IP: u32 = 20;
/// The sliding window of [`AUTH_FAILURES_PER_IP`].
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The budget name of refused agent keys in the failure counters
/// (`http-agent-key/<address>`).
pub const AGENT_KEY_BUDGET: &str = "http-agent-key";
/// Pairing requests an address may open per [`PAIRING_WINDOW`].
pub const PAIRINGS_PER_IP: u32 = 10;
/// The window of [`PAIRINGS_PER_IP`].
pub const PAIRING_WINDOW: Duration = Duration::from_secs(60);
/// Tracked addresses above which the pairing budgets are pruned at once.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;
/// Decisions between two routine prunes of the pairing budgets.
pub const PRUNE_EVERY: u64 = 1_024;

/// Marks a response that refused the presented agent key itself (set by
/// [`ApiError`]'s `IntoResponse`); the router's rate-limit layer charges the
/// address's failure budget for exactly these responses. Never sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRefused;

pub use agentkeys_core::peer::address_key;

type Keyed<C> = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The API's rate limits, shared by every request (`Arc` in the state).
pub struct HttpThrottle<C: Clock + Clone = DefaultClock> {
    clock: C,
    /// Where refused keys are counted.
    failures: Arc<dyn Throttles>,
    /// The counters of [`HttpThrottle::new`], while they are the ones in use (for [`HttpThrottle::tracked`]).
    local: Option<Arc<LocalThrottles>>,
    /// The budget plus the refusal that finds it spent; `None`: switched off.
    failure_rule: Option<FailureWindow>,
    pairings: Keyed<C>,
    decisions: AtomicU64,
}

impl<C: Clock + Clone> std::fmt::Debug for HttpThrottle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpThrottle")
            .field("failure_rule", &self.failure_rule)
            .field("pairing_keys", &self.pairings.len())
            .finish_non_exhaustive()
    }
}

impl Default for HttpThrottle<DefaultClock> {
    fn default() -> Self {
        Self::new(AUTH_FAILURES_PER_IP, AUTH_FAILURE_WINDOW, PAIRINGS_PER_IP, PAIRING_WINDOW, DefaultClock::default())
    }
}

fn quota(count: u32, window: Duration) -> Quota {
    let count = NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN);
    // `window / count` is never zero for the windows above; fall back to 1 ns.
    let period = (window / count.get()).max(Duration::from_nanos(1));
    Quota::with_period(period).unwrap_or_else(|| Quota::per_second(count)).allow_burst(count)
}

/// 429 with `Retry-After` rounded up to whole seconds (a client that waits
/// that long finds the budget back), at least 1.
fn retry_after_millis(wait_ms: i64) -> ApiError {
    let wait_ms = u64::try_from(wait_ms).unwrap_or(0);
    ApiError::RateLimited { retry_after_secs: wait_ms.div_ceil(1000).max(1) }
}

impl<C: Clock + Clone> HttpThrottle<C> {
    /// A throttle allowing `auth_failures` refused keys per sliding
    /// `auth_window` (counted in this process's memory) and `pairings` pairing
    /// opens per `pairing_window` per address, on `clock` (pairings).
    pub fn new(auth_failures: u32, auth_window: Duration, pairings: u32, pairing_window: Duration, clock: C) -> Self {
        let local = Arc::new(LocalThrottles::new());
        Self {
            failures: local.clone(),
            local: Some(local),
            failure_rule: FailureWindow::new(auth_failures.saturating_add(1), auth_window),
            pairings: RateLimiter::new(quota(pairings, pairing_window), DefaultKeyedStateStore::default(), clock.clone()),
            decisions: AtomicU64::new(0),
            clock,
        }
    }

    /// The same throttle counting refused keys in `counters` (the store's,
    /// shared by every node on it) instead of this process's memory.
    #[must_use]
    pub fn with_failure_counters(self, counters: Arc<dyn Throttles>) -> Self {
        Self { failures: counters, local: None, ..self }
    }

    fn failure_key(ip: IpAddr) -> ThrottleKey {
        ThrottleKey::address(AGENT_KEY_BUDGET, ip)
    }

    /// Before an agent key is looked at: 429 if `ip` spent its failure budget;
    /// 503 if the counters cannot be read (whether the address may try is not
    /// known).
    pub async fn check_agent_key(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check_agent_key_at(ip, unix_millis(SystemTime::now())).await
    }

    /// [`HttpThrottle::check_agent_key`] at `now` (tests drive the clock).
    pub async fn check_agent_key_at(&self, ip: IpAddr, now: UnixMillis) -> Result<(), ApiError> {
        let Some(rule) = self.failure_rule else {
            return Ok(());
        };
        let tally = self.failures.failures(&Self::failure_key(ip), now, rule).await.map_err(|err| {
            tracing::error!(%err, "cannot read the refused-key counters; answering 503");
            ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
        })?;
        match tally.full_until {
            Some(until) if until > now => Err(retry_after_millis(until - now)),
            _ => Ok(()),
        }
    }

    /// After a refused key ([`KeyRefused`]): counts it against `ip`; `Some(429)`
    /// (to answer instead of the refusal) when it is the one past the budget.
    /// A count that cannot be written is logged and the refusal stands.
    pub async fn record_agent_key_failure(&self, ip: IpAddr) -> Option<ApiError> {
        self.record_agent_key_failure_at(ip, unix_millis(SystemTime::now())).await
    }

    /// [`HttpThrottle::record_agent_key_failure`] at `now` (tests drive the clock).
    pub async fn record_agent_key_failure_at(&self, ip: IpAddr, now: UnixMillis) -> Option<ApiError> {
        let rule = self.failure_rule?;
        let key = Self::failure_key(ip);
        let tally = match self.failures.record_failure(&key, now, rule).await {
            Ok(tally) => tally,
            Err(err) => {
                tracing::error!(%err, address = %address_key(ip), "a refused agent key could not be counted");
                return None;
            }
        };
        let until = tally.full_until.filter(|until| *until > now)?;
        tracing::warn!(address = %address_key(ip), "too many refused agent keys; address throttled");
        Some(retry_after_millis(until - now))
    }

    fn retry_after(&self, until: C::Instant) -> ApiError {
        let wait: Duration = until.duration_since(self.clock.now()).into();
        // Round up: a client that waits Retry-After seconds must find a cell.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::RateLimited { retry_after_secs: secs.max(1) }
    }

    /// Before a pairing request is opened: spends a cell of `ip`'s pairing
    /// budget, or 429.
    pub fn check_pairing(&self, ip: IpAddr) -> Result<(), ApiError> {
        let outcome = self.pairings.check_key(&address_key(ip));
        self.after_decision();
        outcome.map_err(|not_until| self.retry_after(not_until.earliest_possible()))
    }

    fn after_decision(&self) {
        let n = self.decisions.fetch_add(1, Ordering::Relaxed) + 1;
        let crowded = self.pairings.len() > MAX_TRACKED_ADDRESSES;
        if n.is_multiple_of(PRUNE_EVERY) || crowded {
            self.prune();
        }
    }

    /// Drops the pairing budgets of addresses that are back to a fresh budget.
    pub fn prune(&self) {
        self.pairings.retain_recent();
        self.pairings.shrink_to_fit();
    }

    /// Addresses tracked (refused-key counters when they are this process's,
    /// else 0; pairing budgets), for tests and metrics.
    pub fn tracked(&self) -> (usize, usize) {
        (self.local.as_ref().map_or(0, |l| l.tracked()), self.pairings.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use governor::clock::FakeRelativeClock;

    const T0: UnixMillis = 1_700_000_000_000;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, n))
    }

    fn throttle(clock: &FakeRelativeClock) -> HttpThrottle<FakeRelativeClock> {
        HttpThrottle::new(AUTH_FAILURES_PER_IP, AUTH_FAILURE_WINDOW, PAIRINGS_PER_IP, PAIRING_WINDOW, clock.clone())
    }

    fn retry(e: &ApiError) -> u64 {
        match e {
            ApiError::RateLimited { retry_after_secs } => *retry_after_secs,
            other => panic!("expected 429, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_failure_budget_blocks_the_address_until_the_oldest_refusal_leaves_the_window() {
        let t = throttle(&FakeRelativeClock::default());
        let step = 1000;
        for i in 0..i64::from(AUTH_FAILURES_PER_IP) {
            t.check_agent_key_at(ip(1), T0 + i * step).await.unwrap();
            assert!(t.record_agent_key_failure_at(ip(1), T0 + i * step).await.is_none(), "refusal {i} answered as is");
        }
        // The next refusal within the window is answered 429, and the address is
        // refused before any key check until the first refusal leaves the window.
        let now = T0 + i64::from(AUTH_FAILURES_PER_IP) * step;
        let e = t.record_agent_key_failure_at(ip(1), now).await.unwrap();
        let window = i64::try_from(AUTH_FAILURE_WINDOW.as_millis()).unwrap();
        let wait = u64::try_from((T0 + window - now) / 1000).unwrap();
        assert_eq!(retry(&e), wait);
        assert_eq!(retry(&t.check_agent_key_at(ip(1), now).await.unwrap_err()), wait);
        assert_eq!(retry(&t.check_agent_key_at(ip(1), now + 1).await.unwrap_err()), wait, "rounded up");
        // Another address, and the same host's IPv4-mapped form, are counted as they should.
        t.check_agent_key_at(ip(2), now).await.unwrap();
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert!(t.check_agent_key_at(mapped, now).await.is_err());
        // Still refused a millisecond before the first refusal leaves; free at it.
        assert!(t.check_agent_key_at(ip(1), T0 + window - 1).await.is_err());
        t.check_agent_key_at(ip(1), T0 + window).await.unwrap();
    }

    /// Two nodes' throttles over one set of counters (the store's): refusals
    /// spread over both are counted once, and both refuse the address.
    #[tokio::test]
    async fn throttles_sharing_failure_counters_spend_one_budget() {
        let clock = FakeRelativeClock::default();
        let shared: Arc<dyn Throttles> = Arc::new(LocalThrottles::new());
        let nodes = [throttle(&clock).with_failure_counters(shared.clone()), throttle(&clock).with_failure_counters(shared)];
        for i in 0..AUTH_FAILURES_PER_IP {
            let node = &nodes[usize::try_from(i % 2).unwrap()];
            node.check_agent_key_at(ip(3), T0).await.unwrap();
            assert!(node.record_agent_key_failure_at(ip(3), T0).await.is_none());
        }
        assert!(nodes[0].record_agent_key_failure_at(ip(3), T0 + 1).await.is_some(), "the 21st in total is 429");
        for node in &nodes {
            assert!(node.check_agent_key_at(ip(3), T0 + 2).await.is_err());
        }
        assert_eq!(nodes[0].tracked().0, 0, "nothing counted in this process's memory");
    }

    /// Counters that cannot be read refuse the agent-key routes with 503; a
    /// refusal that cannot be counted stands as it is.
    #[tokio::test]
    async fn failure_counters_that_fail_answer_503_before_the_key_and_keep_the_refusal() {
        struct Down;
        #[async_trait::async_trait]
        impl Throttles for Down {
            async fn record_failure(
                &self,
                _: &ThrottleKey,
                _: UnixMillis,
                _: FailureWindow,
            ) -> Result<agentkeys_store::FailureTally, agentkeys_store::StoreError> {
                Err(agentkeys_store::StoreError::Backend("down".into()))
            }
            async fn failures(
                &self,
                _: &ThrottleKey,
                _: UnixMillis,
                _: FailureWindow,
            ) -> Result<agentkeys_store::FailureTally, agentkeys_store::StoreError> {
                Err(agentkeys_store::StoreError::Backend("down".into()))
            }
        }
        let t = throttle(&FakeRelativeClock::default()).with_failure_counters(Arc::new(Down));
        assert!(matches!(t.check_agent_key_at(ip(1), T0).await, Err(ApiError::Unavailable { .. })));
        assert!(t.record_agent_key_failure_at(ip(1), T0).await.is_none());
    }

    #[test]
    fn pairing_opens_are_limited_per_address() {
        let clock = FakeRelativeClock::default();
        let t = throttle(&clock);
        for _ in 0..PAIRINGS_PER_IP {
            t.check_pairing(ip(1)).unwrap();
        }
        let e = t.check_pairing(ip(1)).unwrap_err();
        assert_eq!(retry(&e), PAIRING_WINDOW.as_secs() / u64::from(PAIRINGS_PER_IP));
        t.check_pairing(ip(2)).unwrap();
        clock.advance(PAIRING_WINDOW);
        for _ in 0..PAIRINGS_PER_IP {
            t.check_pairing(ip(1)).unwrap();
        }
    }

    #[tokio::test]
    async fn state_is_pruned_once_addresses_are_fresh_again() {
        let clock = FakeRelativeClock::default();
        let t = throttle(&clock);
        for n in 0..50 {
            t.check_pairing(ip(n)).unwrap();
            for _ in 0..=AUTH_FAILURES_PER_IP {
                t.record_agent_key_failure_at(ip(n), T0).await;
            }
        }
        assert_eq!(t.tracked(), (50, 50));
        t.prune();
        assert_eq!(t.tracked(), (50, 50), "nothing is fresh yet");
        clock.advance(PAIRING_WINDOW * 2);
        t.prune();
        // The refused-key counters sweep themselves at their next use past the window.
        let later = T0 + i64::try_from((AUTH_FAILURE_WINDOW + agentkeys_store::LOCAL_SWEEP_INTERVAL).as_millis()).unwrap();
        t.check_agent_key_at(ip(200), later).await.unwrap();
        assert_eq!(t.tracked(), (0, 0));
    }

    #[test]
    fn pruning_runs_by_itself_every_prune_every_decisions() {
        let clock = FakeRelativeClock::default();
        let t = throttle(&clock);
        t.check_pairing(ip(1)).unwrap();
        clock.advance(PAIRING_WINDOW * 2);
        for n in 1..PRUNE_EVERY {
            // Distinct addresses (not 10.0.0.1), one decision each.
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + u32::try_from(n).unwrap()));
            let _ = t.check_pairing(addr);
        }
        // The PRUNE_EVERY-th decision pruned 10.0.0.1 (fresh again); the others are recent.
        let (_, pairings) = t.tracked();
        assert_eq!(pairings, usize::try_from(PRUNE_EVERY - 1).unwrap());
    }
}
