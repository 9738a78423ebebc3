//! The queue runner's heartbeat, for readiness (`/readyz`): the runner loop
//! beats once per round (at least every [`POLL_INTERVAL`](crate::POLL_INTERVAL)
//! while it runs); a heartbeat older than [`HEARTBEAT_STALE`] means the loop is
//! stuck or has ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How old the last beat may be before the runner counts as not alive: many
/// rounds, so a round slowed by a busy database (up to its busy timeout) is not
/// mistaken for a dead loop.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(15);

/// Milliseconds since `start` of the last beat; this value for none yet.
const NEVER: u64 = u64::MAX;

/// A shared heartbeat. Cheap to clone; clones see the same beats.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    last: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self { start: Instant::now(), last: Arc::new(AtomicU64::new(NEVER)) }
    }
}

impl Heartbeat {
    /// Records a beat now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NEVER - 1);
        self.last.store(ms, Ordering::Release);
    }

    /// Time since the last beat; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        match self.last.load(Ordering::Acquire) {
            NEVER => None,
            ms => Some(self.start.elapsed().saturating_sub(Duration::from_millis(ms))),
        }
    }

    /// Whether the last beat is at most [`HEARTBEAT_STALE`] old.
    pub fn is_alive(&self) -> bool {
        self.age().is_some_and(|age| age <= HEARTBEAT_STALE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_only_after_a_recent_beat() {
        let beat = Heartbeat::default();
        assert_eq!(beat.age(), None);
        assert!(!beat.is_alive());
        let seen = beat.clone();
        beat.beat();
        assert!(seen.is_alive());
        assert!(seen.age().is_some_and(|a| a <= HEARTBEAT_STALE));
        // A beat long ago (the start moved back) is stale.
        let old = Heartbeat { start: Instant::now() - 2 * HEARTBEAT_STALE, last: Arc::new(AtomicU64::new(0)) };
        assert!(!old.is_alive());
        assert!(old.age().is_some_and(|a| a >= 2 * HEARTBEAT_STALE));
    }
}
