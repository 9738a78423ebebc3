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
//!   [`PAIRINGS_PER_IP`] per sliding [`PAIRING_WINDOW`]; the next is answered
//!   429 until the oldest counted open leaves the window. Opens are counted
//!   in the same counters (budget [`PAIRING_BUDGET`]), with the decision and
//!   the count one atomic step ([`Throttles::record_unless_full`]): concurrent
//!   opens on several nodes get the budget once, and refused ones count
//!   nothing, so `Retry-After` is when an open will be admitted.
//!
//! Addresses are counted as the SMTP throttle counts them: IPv4 as is (also
//! IPv4-mapped), IPv6 by its /64. Memory stays bounded: the counters bound
//! themselves (`LocalThrottles`, or rows pruned by their window). Requests
//! without a peer address (the in-process router the CLI uses) are not limited.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentkeys_store::{FailureWindow, LocalThrottles, ThrottleKey, Throttles, UnixMillis, unix_millis};

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
/// The sliding window of [`PAIRINGS_PER_IP`].
pub const PAIRING_WINDOW: Duration = Duration::from_secs(60);
/// The budget name of pairing opens in the counters (`http-pairing-open/<address>`).
pub const PAIRING_BUDGET: &str = "http-pairing-open";

/// Marks a response that refused the presented agent key itself (set by
/// [`ApiError`]'s `IntoResponse`); the router's rate-limit layer charges the
/// address's failure budget for exactly these responses. Never sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRefused;

pub use agentkeys_core::peer::address_key;

/// The API's rate limits, shared by every request (`Arc` in the state).
pub struct HttpThrottle {
    /// Where refused keys and pairing opens are counted.
    counters: Arc<dyn Throttles>,
    /// The counters of [`HttpThrottle::new`], while they are the ones in use (for [`HttpThrottle::tracked`]).
    local: Option<Arc<LocalThrottles>>,
    /// The budget plus the refusal that finds it spent; `None`: switched off.
    failure_rule: Option<FailureWindow>,
    /// Pairing opens per window; `None`: switched off.
    pairing_rule: Option<FailureWindow>,
}

impl std::fmt::Debug for HttpThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpThrottle")
            .field("failure_rule", &self.failure_rule)
            .field("pairing_rule", &self.pairing_rule)
            .finish_non_exhaustive()
    }
}

impl Default for HttpThrottle {
    fn default() -> Self {
        Self::new(AUTH_FAILURES_PER_IP, AUTH_FAILURE_WINDOW, PAIRINGS_PER_IP, PAIRING_WINDOW)
    }
}

/// 429 with `Retry-After` rounded up to whole seconds (a client that waits
/// that long finds the budget back), at least 1.
fn retry_after_millis(wait_ms: i64) -> ApiError {
    let wait_ms = u64::try_from(wait_ms).unwrap_or(0);
    ApiError::RateLimited { retry_after_secs: wait_ms.div_ceil(1000).max(1) }
}

/// 503: the counters cannot be read, so whether the address may go on is not known.
fn counters_down(err: &agentkeys_store::StoreError, which: &str) -> ApiError {
    tracing::error!(%err, "cannot read the {which} counters; answering 503");
    ApiError::Unavailable { code: "BACKEND_UNAVAILABLE" }
}

impl HttpThrottle {
    /// A throttle allowing `auth_failures` refused keys per sliding
    /// `auth_window` and `pairings` pairing opens per sliding `pairing_window`
    /// per address, counted in this process's memory. A zero count or window
    /// switches that limit off.
    pub fn new(auth_failures: u32, auth_window: Duration, pairings: u32, pairing_window: Duration) -> Self {
        let local = Arc::new(LocalThrottles::new());
        Self {
            counters: local.clone(),
            local: Some(local),
            failure_rule: FailureWindow::new(auth_failures.saturating_add(1), auth_window),
            pairing_rule: FailureWindow::new(pairings, pairing_window),
        }
    }

    /// The same throttle counting refused keys and pairing opens in `counters`
    /// (the store's, shared by every node on it) instead of this process's memory.
    #[must_use]
    pub fn with_shared_counters(self, counters: Arc<dyn Throttles>) -> Self {
        Self { counters, local: None, ..self }
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
        let tally =
            self.counters.failures(&Self::failure_key(ip), now, rule).await.map_err(|err| counters_down(&err, "refused-key"))?;
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
        let tally = match self.counters.record_failure(&key, now, rule).await {
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

    /// Before a pairing request is opened: counts the open against `ip`, or
    /// 429 (nothing counted) when `ip` opened its budget within the window; 503
    /// when the counters cannot be written.
    pub async fn check_pairing(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check_pairing_at(ip, unix_millis(SystemTime::now())).await
    }

    /// [`HttpThrottle::check_pairing`] at `now` (tests drive the clock).
    pub async fn check_pairing_at(&self, ip: IpAddr, now: UnixMillis) -> Result<(), ApiError> {
        let Some(rule) = self.pairing_rule else {
            return Ok(());
        };
        let key = ThrottleKey::address(PAIRING_BUDGET, ip);
        let admission = self.counters.record_unless_full(&key, now, rule).await.map_err(|err| counters_down(&err, "pairing"))?;
        if admission.recorded {
            return Ok(());
        }
        let until = admission.tally.full_until.unwrap_or_else(|| rule.leaves_at(now));
        Err(retry_after_millis(until - now))
    }

    /// Addresses tracked in this process's memory (0 when the counters are
    /// shared), for tests and metrics.
    pub fn tracked(&self) -> usize {
        self.local.as_ref().map_or(0, |l| l.tracked())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const T0: UnixMillis = 1_700_000_000_000;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, n))
    }

    fn throttle() -> HttpThrottle {
        HttpThrottle::default()
    }

    fn retry(e: &ApiError) -> u64 {
        match e {
            ApiError::RateLimited { retry_after_secs } => *retry_after_secs,
            other => panic!("expected 429, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_failure_budget_blocks_the_address_until_the_oldest_refusal_leaves_the_window() {
        let t = throttle();
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
        let shared: Arc<dyn Throttles> = Arc::new(LocalThrottles::new());
        let nodes = [throttle().with_shared_counters(shared.clone()), throttle().with_shared_counters(shared)];
        for i in 0..AUTH_FAILURES_PER_IP {
            let node = &nodes[usize::try_from(i % 2).unwrap()];
            node.check_agent_key_at(ip(3), T0).await.unwrap();
            assert!(node.record_agent_key_failure_at(ip(3), T0).await.is_none());
        }
        assert!(nodes[0].record_agent_key_failure_at(ip(3), T0 + 1).await.is_some(), "the 21st in total is 429");
        for node in &nodes {
            assert!(node.check_agent_key_at(ip(3), T0 + 2).await.is_err());
        }
        assert_eq!(nodes[0].tracked(), 0, "nothing counted in this process's memory");
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
            async fn record_unless_full(
                &self,
                _: &ThrottleKey,
                _: UnixMillis,
                _: FailureWindow,
            ) -> Result<agentkeys_store::Admission, agentkeys_store::StoreError> {
                Err(agentkeys_store::StoreError::Backend("down".into()))
            }
        }
        let t = throttle().with_shared_counters(Arc::new(Down));
        assert!(matches!(t.check_agent_key_at(ip(1), T0).await, Err(ApiError::Unavailable { .. })));
        assert!(t.record_agent_key_failure_at(ip(1), T0).await.is_none());
        assert!(matches!(t.check_pairing_at(ip(1), T0).await, Err(ApiError::Unavailable { .. })), "pairing: 503 too");
    }

    #[tokio::test]
    async fn pairing_opens_are_limited_per_address_and_refusals_count_nothing() {
        let t = throttle();
        let step = 1000;
        for i in 0..i64::from(PAIRINGS_PER_IP) {
            t.check_pairing_at(ip(1), T0 + i * step).await.unwrap();
        }
        let window = i64::try_from(PAIRING_WINDOW.as_millis()).unwrap();
        // Refused until the first open leaves the window, however often it is tried.
        for at in [10 * step, 30 * step, window - 1] {
            let e = t.check_pairing_at(ip(1), T0 + at).await.unwrap_err();
            assert_eq!(retry(&e), u64::try_from(window - at).unwrap().div_ceil(1000), "at +{at} ms");
        }
        t.check_pairing_at(ip(2), T0 + 10 * step).await.unwrap();
        // Retry-After was true: at the first open's end one more is admitted, then refused again.
        t.check_pairing_at(ip(1), T0 + window).await.unwrap();
        assert!(t.check_pairing_at(ip(1), T0 + window).await.is_err());
        // Switched off with a zero budget.
        let off = HttpThrottle::new(AUTH_FAILURES_PER_IP, AUTH_FAILURE_WINDOW, 0, PAIRING_WINDOW);
        for _ in 0..100 {
            off.check_pairing_at(ip(1), T0).await.unwrap();
        }
    }

    /// Two nodes' throttles over one set of counters: concurrent opens from
    /// one address spread over both are admitted [`PAIRINGS_PER_IP`] times in
    /// all, not per node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pairing_opens_spread_over_nodes_spend_one_budget() {
        let shared: Arc<dyn Throttles> = Arc::new(LocalThrottles::new());
        let nodes = [Arc::new(throttle().with_shared_counters(shared.clone())), Arc::new(throttle().with_shared_counters(shared))];
        let tries: Vec<_> = (0..64usize)
            .map(|i| {
                let node = nodes[i % 2].clone();
                tokio::spawn(async move { node.check_pairing_at(ip(4), T0).await.is_ok() })
            })
            .collect();
        let mut admitted = 0;
        for attempt in tries {
            admitted += u32::from(attempt.await.unwrap());
        }
        assert_eq!(admitted, PAIRINGS_PER_IP);
    }

    #[tokio::test]
    async fn state_is_dropped_once_addresses_are_fresh_again() {
        let t = throttle();
        for n in 0..50 {
            t.check_pairing_at(ip(n), T0).await.unwrap();
            for _ in 0..=AUTH_FAILURES_PER_IP {
                t.record_agent_key_failure_at(ip(n), T0).await;
            }
        }
        assert_eq!(t.tracked(), 100, "two budgets of 50 addresses");
        // The counters sweep themselves at their next use past the windows.
        let later = T0
            + i64::try_from((AUTH_FAILURE_WINDOW.max(PAIRING_WINDOW) + agentkeys_store::LOCAL_SWEEP_INTERVAL).as_millis())
                .unwrap();
        t.check_agent_key_at(ip(200), later).await.unwrap();
        assert_eq!(t.tracked(), 0);
    }
}
