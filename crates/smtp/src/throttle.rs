//! Per-address AUTH failure throttling: a keyed sliding-window counter.
//!
//! Each address (an IPv4 address, or the /64 of an IPv6 address) keeps the times
//! of its most recent failures, at most `max_failures` of them. An address with
//! `max_failures` failures inside the window is blocked until the oldest of them
//! leaves the window. Expired entries are swept regularly and the number of tracked
//! addresses is capped ([`MAX_THROTTLE_KEYS`]), so memory stays bounded whatever
//! the clients do. Time is passed in, so tests drive it explicitly.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::limits::MAX_THROTTLE_KEYS;

pub use agentkeys_core::peer::address_key;

/// Counts AUTH failures per address over a sliding window. Shared by all sessions
/// of a server (`Arc`); every method is short and takes the lock once.
#[derive(Debug)]
pub struct AuthThrottle {
    max_failures: usize,
    window: Duration,
    max_keys: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<IpAddr, VecDeque<Instant>>,
    last_sweep: Option<Instant>,
}

impl AuthThrottle {
    /// A throttle blocking an address after `max_failures` failures within `window`.
    /// `max_failures == 0` disables it.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self::with_capacity(max_failures, window, MAX_THROTTLE_KEYS)
    }

    fn with_capacity(max_failures: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            max_failures: max_failures as usize,
            window,
            max_keys: max_keys.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a
        // single push or retain.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn in_window(&self, t: Instant, now: Instant) -> bool {
        now.saturating_duration_since(t) < self.window
    }

    fn sweep(&self, state: &mut State, now: Instant) {
        state.entries.retain(|_, times| {
            while times.front().is_some_and(|t| !self.in_window(*t, now)) {
                times.pop_front();
            }
            !times.is_empty()
        });
        state.last_sweep = Some(now);
    }

    fn sweep_if_due(&self, state: &mut State, now: Instant) {
        let due = state
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= self.window / 4);
        if due {
            self.sweep(state, now);
        }
    }

    /// Whether AUTH from `ip` must be refused without checking credentials.
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let mut state = self.lock();
        self.sweep_if_due(&mut state, now);
        let Some(times) = state.entries.get_mut(&address_key(ip)) else {
            return false;
        };
        while times.front().is_some_and(|t| !self.in_window(*t, now)) {
            times.pop_front();
        }
        times.len() >= self.max_failures
    }

    /// Records one failed AUTH from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        let key = address_key(ip);
        let mut state = self.lock();
        self.sweep_if_due(&mut state, now);
        if !state.entries.contains_key(&key) && state.entries.len() >= self.max_keys {
            self.sweep(&mut state, now);
            if state.entries.len() >= self.max_keys {
                // Forget the address whose last failure is the oldest.
                let oldest = state
                    .entries
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    state.entries.remove(&k);
                }
            }
        }
        let times = state.entries.entry(key).or_default();
        times.push_back(now);
        while times.len() > self.max_failures {
            times.pop_front();
        }
    }

    /// Number of addresses currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{DEFAULT_AUTH_THROTTLE_FAILURES, DEFAULT_AUTH_THROTTLE_WINDOW};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_auth_throttle_blocks_after_ten_failures_in_ten_minutes() {
        let t = AuthThrottle::new(DEFAULT_AUTH_THROTTLE_FAILURES, DEFAULT_AUTH_THROTTLE_WINDOW);
        let start = Instant::now();
        let a = ip("192.0.2.7");
        for i in 0..DEFAULT_AUTH_THROTTLE_FAILURES {
            assert!(!t.is_blocked(a, start), "blocked after {i} failures");
            t.record_failure(a, start + Duration::from_secs(u64::from(i)));
        }
        let last = start + Duration::from_secs(u64::from(DEFAULT_AUTH_THROTTLE_FAILURES - 1));
        assert!(t.is_blocked(a, last));
        // Another address is unaffected.
        assert!(!t.is_blocked(ip("192.0.2.8"), last));
        // Still blocked just before the first failure leaves the window…
        assert!(t.is_blocked(
            a,
            start + DEFAULT_AUTH_THROTTLE_WINDOW - Duration::from_millis(1)
        ));
        // …and free once it has.
        assert!(!t.is_blocked(a, start + DEFAULT_AUTH_THROTTLE_WINDOW));
    }

    #[test]
    fn sliding_window_counts_only_recent_failures() {
        let t = AuthThrottle::new(3, Duration::from_secs(60));
        let s = Instant::now();
        let a = ip("198.51.100.1");
        t.record_failure(a, s);
        t.record_failure(a, s + Duration::from_secs(50));
        // The first failure expired before the third arrives.
        t.record_failure(a, s + Duration::from_secs(70));
        assert!(!t.is_blocked(a, s + Duration::from_secs(70)));
        t.record_failure(a, s + Duration::from_secs(71));
        assert!(t.is_blocked(a, s + Duration::from_secs(71)));
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_v4_as_v4() {
        let t = AuthThrottle::new(2, Duration::from_secs(60));
        let s = Instant::now();
        t.record_failure(ip("2001:db8:1:2::1"), s);
        t.record_failure(ip("2001:db8:1:2:ffff::9"), s);
        assert!(t.is_blocked(ip("2001:db8:1:2::77"), s));
        assert!(!t.is_blocked(ip("2001:db8:1:3::1"), s));
        t.record_failure(ip("::ffff:192.0.2.1"), s);
        t.record_failure(ip("192.0.2.1"), s);
        assert!(t.is_blocked(ip("192.0.2.1"), s));
    }

    #[test]
    fn max_throttle_keys_bounds_memory_and_expired_entries_are_pruned() {
        let t = AuthThrottle::with_capacity(5, Duration::from_secs(60), 100);
        let s = Instant::now();
        for i in 0..1000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.record_failure(a, s + Duration::from_millis(u64::from(i)));
            assert!(t.tracked() <= 100);
        }
        // The most recent offender is still tracked.
        assert!(
            t.lock()
                .entries
                .contains_key(&IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 999)))
        );
        // After the window everything is swept on the next use.
        t.record_failure(ip("192.0.2.200"), s + Duration::from_secs(120));
        assert_eq!(t.tracked(), 1);
        // The real cap is the named constant.
        assert_eq!(
            AuthThrottle::new(1, Duration::from_secs(1)).max_keys,
            MAX_THROTTLE_KEYS
        );
    }

    #[test]
    fn zero_disables() {
        let t = AuthThrottle::new(0, Duration::from_secs(60));
        let s = Instant::now();
        t.record_failure(ip("192.0.2.1"), s);
        assert!(!t.is_blocked(ip("192.0.2.1"), s));
        assert_eq!(t.tracked(), 0);
    }
}
