//! Per-address AUTH failure throttling: a sliding window per address (an IPv4
//! address, or the /64 of an IPv6 address) over the store's failure counters
//! ([`Throttles`]).
//!
//! An address with `max_failures` failures inside the window is refused AUTH
//! without its credentials being checked until the oldest of them leaves the
//! window. The counters are this process's memory ([`LocalThrottles`],
//! bounded) unless the server is given shared ones
//! ([`SmtpServer::with_auth_counters`](crate::SmtpServer::with_auth_counters)):
//! nodes sharing PostgreSQL count together, so spreading attempts over the
//! nodes buys nothing. The session asks through its shell
//! ([`Step::CheckThrottle`](crate::Step::CheckThrottle),
//! [`Step::RecordFailure`](crate::Step::RecordFailure)); time is passed in, so
//! tests drive it explicitly.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentkeys_store::{FailureWindow, LocalThrottles, StoreError, ThrottleKey, Throttles, unix_millis};

pub use agentkeys_core::peer::address_key;

/// The budget name of SMTP AUTH failures in the shared counters
/// (`smtp-auth/<address>`).
pub const AUTH_THROTTLE_BUDGET: &str = "smtp-auth";

/// Counts AUTH failures per address over a sliding window. Shared by all
/// sessions of a server; cheap to clone.
#[derive(Clone)]
pub struct AuthThrottle {
    counters: Arc<dyn Throttles>,
    /// `None`: switched off (`max_failures == 0`).
    rule: Option<FailureWindow>,
}

impl std::fmt::Debug for AuthThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthThrottle").field("rule", &self.rule).finish_non_exhaustive()
    }
}

impl AuthThrottle {
    /// A throttle refusing an address after `max_failures` failures within
    /// `window`, counting in this process's memory. `max_failures == 0`
    /// switches it off.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self::over(Arc::new(LocalThrottles::new()), max_failures, window)
    }

    /// The same throttle counting in `counters` (shared by every node on the store).
    pub fn over(counters: Arc<dyn Throttles>, max_failures: u32, window: Duration) -> Self {
        Self { counters, rule: FailureWindow::new(max_failures, window) }
    }

    /// The same rule, counting in `counters`.
    #[must_use]
    pub fn with_counters(self, counters: Arc<dyn Throttles>) -> Self {
        Self { counters, ..self }
    }

    /// Whether AUTH from `ip` must be refused without checking credentials.
    pub async fn is_blocked(&self, ip: IpAddr, now: SystemTime) -> Result<bool, StoreError> {
        let Some(rule) = self.rule else {
            return Ok(false);
        };
        let now = unix_millis(now);
        let tally = self.counters.failures(&ThrottleKey::address(AUTH_THROTTLE_BUDGET, ip), now, rule).await?;
        Ok(tally.is_full_at(now))
    }

    /// Records one failed AUTH from `ip`.
    pub async fn record_failure(&self, ip: IpAddr, now: SystemTime) -> Result<(), StoreError> {
        let Some(rule) = self.rule else {
            return Ok(());
        };
        let key = ThrottleKey::address(AUTH_THROTTLE_BUDGET, ip);
        self.counters.record_failure(&key, unix_millis(now), rule).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{DEFAULT_AUTH_THROTTLE_FAILURES, DEFAULT_AUTH_THROTTLE_WINDOW};
    use std::time::UNIX_EPOCH;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
    }

    #[tokio::test]
    async fn default_auth_throttle_blocks_after_ten_failures_in_ten_minutes() {
        let t = AuthThrottle::new(DEFAULT_AUTH_THROTTLE_FAILURES, DEFAULT_AUTH_THROTTLE_WINDOW);
        let a = ip("192.0.2.7");
        for i in 0..DEFAULT_AUTH_THROTTLE_FAILURES {
            let now = at(u64::from(i) * 1000);
            assert!(!t.is_blocked(a, now).await.unwrap(), "blocked after {i} failures");
            t.record_failure(a, now).await.unwrap();
        }
        let last = at(u64::from(DEFAULT_AUTH_THROTTLE_FAILURES - 1) * 1000);
        assert!(t.is_blocked(a, last).await.unwrap());
        assert!(!t.is_blocked(ip("192.0.2.8"), last).await.unwrap(), "another address is unaffected");
        let window = u64::try_from(DEFAULT_AUTH_THROTTLE_WINDOW.as_millis()).unwrap();
        assert!(t.is_blocked(a, at(window - 1)).await.unwrap(), "still blocked just before the first failure leaves");
        assert!(!t.is_blocked(a, at(window)).await.unwrap(), "free once it has");
    }

    #[tokio::test]
    async fn sliding_window_counts_only_recent_failures() {
        let t = AuthThrottle::new(3, Duration::from_secs(60));
        let a = ip("198.51.100.1");
        t.record_failure(a, at(0)).await.unwrap();
        t.record_failure(a, at(50_000)).await.unwrap();
        // The first failure expired before the third arrives.
        t.record_failure(a, at(70_000)).await.unwrap();
        assert!(!t.is_blocked(a, at(70_000)).await.unwrap());
        t.record_failure(a, at(71_000)).await.unwrap();
        assert!(t.is_blocked(a, at(71_000)).await.unwrap());
    }

    #[tokio::test]
    async fn ipv6_is_counted_per_64_and_mapped_v4_as_v4() {
        let t = AuthThrottle::new(2, Duration::from_secs(60));
        t.record_failure(ip("2001:db8:1:2::1"), at(0)).await.unwrap();
        t.record_failure(ip("2001:db8:1:2:ffff::9"), at(0)).await.unwrap();
        assert!(t.is_blocked(ip("2001:db8:1:2::77"), at(0)).await.unwrap());
        assert!(!t.is_blocked(ip("2001:db8:1:3::1"), at(0)).await.unwrap());
        t.record_failure(ip("::ffff:192.0.2.1"), at(0)).await.unwrap();
        t.record_failure(ip("192.0.2.1"), at(0)).await.unwrap();
        assert!(t.is_blocked(ip("192.0.2.1"), at(0)).await.unwrap());
    }

    #[tokio::test]
    async fn zero_disables_and_records_nothing() {
        let counters = Arc::new(LocalThrottles::new());
        let t = AuthThrottle::over(counters.clone(), 0, Duration::from_secs(60));
        t.record_failure(ip("192.0.2.1"), at(0)).await.unwrap();
        assert!(!t.is_blocked(ip("192.0.2.1"), at(0)).await.unwrap());
        assert_eq!(counters.tracked(), 0);
    }

    /// Two servers' throttles over one set of counters (two nodes on one
    /// store) refuse the address at the limit in total, not per node.
    #[tokio::test]
    async fn throttles_sharing_counters_block_at_the_limit_in_total() {
        let shared: Arc<dyn Throttles> = Arc::new(LocalThrottles::new());
        let nodes = [AuthThrottle::over(shared.clone(), 4, Duration::from_secs(600)), AuthThrottle::new(4, Duration::from_secs(600))
            .with_counters(shared)];
        let a = ip("203.0.113.9");
        for i in 0..4u64 {
            let node = &nodes[usize::try_from(i % 2).unwrap()];
            assert!(!node.is_blocked(a, at(i)).await.unwrap(), "blocked after {i}");
            node.record_failure(a, at(i)).await.unwrap();
        }
        for node in &nodes {
            assert!(node.is_blocked(a, at(10)).await.unwrap());
        }
    }
}
