//! Network peers as the servers count them: the key an address is counted
//! under, and the caps on concurrent connections in total and per address that
//! the SMTP and HTTP listeners enforce.
//!
//! ```
//! use agentkeys_core::peer::ConnectionLimiter;
//!
//! let limiter = ConnectionLimiter::new(10, 1);
//! let ip = "192.0.2.1".parse().unwrap();
//! let first = limiter.try_acquire(ip).expect("a free slot");
//! assert!(limiter.try_acquire(ip).is_none(), "one connection per address");
//! drop(first);
//! assert!(limiter.try_acquire(ip).is_some(), "dropping the permit frees the slot");
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long an accept loop waits after a failed `accept` (out of descriptors,
/// `EMFILE`, …) before trying again: the connection waits in the listen backlog
/// meanwhile, and the loop neither spins nor ends.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The key an address is counted under: IPv4 as is (also when IPv4-mapped), IPv6
/// by its /64, since one host usually holds a whole /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Counts open connections, in total and per address ([`address_key`]). Shared
/// by a listener's accept loop (`Arc`); each method takes the lock once.
#[derive(Debug)]
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    /// Told the number of open connections after every change (a metrics gauge).
    observer: Option<fn(usize)>,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One open connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    key: IpAddr,
}

impl ConnectionLimiter {
    /// At most `max_total` connections at once, `max_per_ip` of them from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Self::observed(max_total, max_per_ip, None)
    }

    /// The same, calling `observer` with the number of open connections after
    /// every acquire and release (e.g. to set a gauge).
    pub fn observed(max_total: usize, max_per_ip: usize, observer: Option<fn(usize)>) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_ip, observer, state: Mutex::new(LimiterState::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, LimiterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`, or `None` when the total or the
    /// address's cap is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let key = address_key(ip);
        let open = {
            let mut state = self.lock();
            let current = state.per_ip.get(&key).copied().unwrap_or(0);
            if state.total >= self.max_total || current >= self.max_per_ip {
                return None;
            }
            state.total += 1;
            state.per_ip.insert(key, current + 1);
            state.total
        };
        if let Some(observe) = self.observer {
            observe(open);
        }
        Some(ConnectionPermit { limiter: Arc::clone(self), key })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Addresses with an open connection now.
    pub fn addresses(&self) -> usize {
        self.lock().per_ip.len()
    }

    /// The total cap.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// The per-address cap.
    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let open = {
            let mut state = self.limiter.lock();
            state.total = state.total.saturating_sub(1);
            if let Some(n) = state.per_ip.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    state.per_ip.remove(&self.key);
                }
            }
            state.total
        };
        if let Some(observe) = self.limiter.observer {
            observe(open);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_is_counted_by_its_slash_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(address_key(ip("2001:db8:1:2::1")), address_key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(address_key(ip("2001:db8:1:2::1")), address_key(ip("2001:db8:1:3::1")));
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(address_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn connection_limiter_frees_slots_and_forgets_idle_addresses() {
        let limiter = ConnectionLimiter::new(3, 2);
        let (a, b, b_same_64) = (ip("192.0.2.1"), ip("2001:db8::1"), ip("2001:db8::2"));
        let p1 = limiter.try_acquire(a).unwrap();
        let p2 = limiter.try_acquire(a).unwrap();
        assert!(limiter.try_acquire(a).is_none(), "per-address cap");
        let p3 = limiter.try_acquire(b).unwrap();
        assert!(limiter.try_acquire(b_same_64).is_none(), "total cap");
        drop(p1);
        let p4 = limiter.try_acquire(b_same_64).unwrap();
        assert!(limiter.try_acquire(b).is_none(), "a /64 counts as one address");
        assert_eq!((limiter.open(), limiter.addresses()), (3, 2));
        drop((p2, p3, p4));
        assert_eq!((limiter.open(), limiter.addresses()), (0, 0));
    }

    /// Over generated sequences of acquires and releases from a few addresses,
    /// the limiter agrees with a plain count: never more than the caps, every
    /// refusal explained by one of them, and all slots back at the end.
    #[test]
    fn the_caps_hold_over_generated_sequences() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        for _ in 0..200 {
            let (max_total, max_per_ip) = (rng.gen_range(1..8), rng.gen_range(1..4));
            let limiter = ConnectionLimiter::new(max_total, max_per_ip);
            let mut held: Vec<(IpAddr, ConnectionPermit)> = Vec::new();
            for _ in 0..50 {
                if rng.gen_bool(0.6) {
                    let who = ip(&format!("192.0.2.{}", rng.gen_range(1..4)));
                    let from_who = held.iter().filter(|(h, _)| *h == who).count();
                    match limiter.try_acquire(who) {
                        Some(permit) => {
                            assert!(held.len() < max_total && from_who < max_per_ip);
                            held.push((who, permit));
                        }
                        None => assert!(held.len() >= max_total || from_who >= max_per_ip),
                    }
                } else if !held.is_empty() {
                    let i = rng.gen_range(0..held.len());
                    held.swap_remove(i);
                }
                assert_eq!(limiter.open(), held.len());
            }
            held.clear();
            assert_eq!((limiter.open(), limiter.addresses()), (0, 0));
        }
    }

    #[test]
    fn the_observer_sees_every_change() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static LAST: AtomicUsize = AtomicUsize::new(usize::MAX);
        let limiter = ConnectionLimiter::observed(2, 2, Some(|n| LAST.store(n, Ordering::SeqCst)));
        let p = limiter.try_acquire(ip("192.0.2.9")).unwrap();
        assert_eq!(LAST.load(Ordering::SeqCst), 1);
        let q = limiter.try_acquire(ip("192.0.2.9")).unwrap();
        assert_eq!(LAST.load(Ordering::SeqCst), 2);
        drop((p, q));
        assert_eq!(LAST.load(Ordering::SeqCst), 0);
    }
}
