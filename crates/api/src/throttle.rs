//! Per-address rate limits of the HTTP API (governor, GCRA), answered as 429
//! `RATE_LIMITED` problem JSON with `Retry-After`.
//!
//! - **Refused agent keys.** Every answer on an agent-key route (the credential
//!   mints, the inbox listing, the send door) that refused the key itself
//!   (missing, malformed, unknown, revoked or expired: the response carries
//!   [`KeyRefused`]) spends one cell of the client address's failure budget:
//!   [`AUTH_FAILURES_PER_IP`] per [`AUTH_FAILURE_WINDOW`], as a burst. A valid key
//!   refused for an inbox its grants do not cover (403 `NO_GRANT`, or the send
//!   door's one 401) spends nothing, so a misconfigured agent does not throttle
//!   its own address. The request
//!   that finds the budget spent answers 429 instead of 401, and every request on
//!   those routes from that address answers 429 **before the key is looked at**
//!   until the budget has a cell again, so a valid key cannot be told from a
//!   wrong one by a throttled prober. Successful requests spend nothing: a busy
//!   agent is never slowed down by this.
//! - **Pairing opens.** `POST /v1/pairings` is public: each address may open
//!   [`PAIRINGS_PER_IP`] per [`PAIRING_WINDOW`], as a burst.
//!
//! Addresses are counted as the SMTP throttle counts them: IPv4 as is (also
//! IPv4-mapped), IPv6 by its /64. Memory stays bounded: every
//! [`PRUNE_EVERY`] decisions, and whenever more than [`MAX_TRACKED_ADDRESSES`]
//! are tracked, the keyed states that are back to "fresh" are dropped
//! (`retain_recent` + `shrink_to_fit`) together with expired blocks. Requests
//! without a peer address (the in-process router the CLI uses) are not limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::error::ApiError;

/// Refused agent keys an address may present per [`AUTH_FAILURE_WINDOW`].
pub const AUTH_FAILURES_PER_IP: u32 = 20;
/// The window of [`AUTH_FAILURES_PER_IP`]: one more failure is allowed every
/// `window / count` once the burst is spent.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Pairing requests an address may open per [`PAIRING_WINDOW`].
pub const PAIRINGS_PER_IP: u32 = 10;
/// The window of [`PAIRINGS_PER_IP`].
pub const PAIRING_WINDOW: Duration = Duration::from_secs(60);
/// Tracked addresses above which the keyed state is pruned at once.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;
/// Decisions between two routine prunes.
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
    failures: Keyed<C>,
    /// Addresses whose failure budget is spent, until when.
    blocked: Mutex<HashMap<IpAddr, C::Instant>>,
    pairings: Keyed<C>,
    decisions: AtomicU64,
}

impl<C: Clock + Clone> std::fmt::Debug for HttpThrottle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpThrottle")
            .field("failure_keys", &self.failures.len())
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

impl<C: Clock + Clone> HttpThrottle<C> {
    /// A throttle allowing `auth_failures` refused keys per `auth_window` and
    /// `pairings` pairing opens per `pairing_window` per address, on `clock`.
    pub fn new(auth_failures: u32, auth_window: Duration, pairings: u32, pairing_window: Duration, clock: C) -> Self {
        Self {
            failures: RateLimiter::new(quota(auth_failures, auth_window), DefaultKeyedStateStore::default(), clock.clone()),
            pairings: RateLimiter::new(quota(pairings, pairing_window), DefaultKeyedStateStore::default(), clock.clone()),
            blocked: Mutex::new(HashMap::new()),
            decisions: AtomicU64::new(0),
            clock,
        }
    }

    fn retry_after(&self, until: C::Instant) -> ApiError {
        let wait: Duration = until.duration_since(self.clock.now()).into();
        // Round up: a client that waits Retry-After seconds must find a cell.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::RateLimited { retry_after_secs: secs.max(1) }
    }

    /// Before an agent key is looked at: 429 if `ip` spent its failure budget.
    pub fn check_agent_key(&self, ip: IpAddr) -> Result<(), ApiError> {
        let key = address_key(ip);
        let now = self.clock.now();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        match blocked.get(&key) {
            Some(until) if *until > now => Err(self.retry_after(*until)),
            Some(_) => {
                blocked.remove(&key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// After a refused key ([`KeyRefused`]): spends a cell of `ip`'s failure
    /// budget; `Some(429)` (to answer instead of the refusal) when the budget is
    /// spent, and `ip` is blocked until a cell is back.
    pub fn record_agent_key_failure(&self, ip: IpAddr) -> Option<ApiError> {
        let key = address_key(ip);
        let outcome = self.failures.check_key(&key);
        self.after_decision();
        let not_until = outcome.err()?;
        let until = not_until.earliest_possible();
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner).insert(key, until);
        tracing::warn!(address = %key, "too many refused agent keys; address throttled");
        Some(self.retry_after(until))
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
        let crowded = self.failures.len() + self.pairings.len() > MAX_TRACKED_ADDRESSES;
        if n.is_multiple_of(PRUNE_EVERY) || crowded {
            self.prune();
        }
    }

    /// Drops the state of addresses that are back to a fresh budget and blocks
    /// that ended.
    pub fn prune(&self) {
        for limiter in [&self.failures, &self.pairings] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let now = self.clock.now();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
    }

    /// Addresses tracked (failure budgets, pairing budgets, blocks), for tests and metrics.
    pub fn tracked(&self) -> (usize, usize, usize) {
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner).len();
        (self.failures.len(), self.pairings.len(), blocked)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use governor::clock::FakeRelativeClock;

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

    #[test]
    fn the_failure_budget_blocks_the_address_then_refills() {
        let clock = FakeRelativeClock::default();
        let t = throttle(&clock);
        for _ in 0..AUTH_FAILURES_PER_IP {
            t.check_agent_key(ip(1)).unwrap();
            assert!(t.record_agent_key_failure(ip(1)).is_none());
        }
        // The next failure is answered 429, and the address is blocked before any key check.
        let e = t.record_agent_key_failure(ip(1)).unwrap();
        let step = AUTH_FAILURE_WINDOW.as_secs() / u64::from(AUTH_FAILURES_PER_IP);
        assert_eq!(retry(&e), step);
        assert_eq!(retry(&t.check_agent_key(ip(1)).unwrap_err()), step);
        // Another address, and the same host's IPv4-mapped form, are counted as they should.
        t.check_agent_key(ip(2)).unwrap();
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert!(t.check_agent_key(mapped).is_err());
        // One cell comes back after window / count.
        clock.advance(Duration::from_secs(step));
        t.check_agent_key(ip(1)).unwrap();
        assert!(t.record_agent_key_failure(ip(1)).is_none());
        assert!(t.record_agent_key_failure(ip(1)).is_some());
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

    #[test]
    fn state_is_pruned_once_addresses_are_fresh_again() {
        let clock = FakeRelativeClock::default();
        let t = throttle(&clock);
        for n in 0..50 {
            t.check_pairing(ip(n)).unwrap();
            for _ in 0..=AUTH_FAILURES_PER_IP {
                t.record_agent_key_failure(ip(n));
            }
        }
        assert_eq!(t.tracked(), (50, 50, 50));
        t.prune();
        assert_eq!(t.tracked(), (50, 50, 50), "nothing is fresh yet");
        clock.advance(AUTH_FAILURE_WINDOW.max(PAIRING_WINDOW) * 2);
        t.prune();
        assert_eq!(t.tracked(), (0, 0, 0));
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
        let (_, pairings, _) = t.tracked();
        assert_eq!(pairings, usize::try_from(PRUNE_EVERY - 1).unwrap());
    }
}
