//! Replay protection for signed owner requests: each `(owner, nonce)` is accepted once.
//!
//! A nonce only has to be remembered while its timestamp is still acceptable
//! (within [`MAX_CLOCK_SKEW`] of the server's clock); after that the timestamp
//! check refuses the request anyway. [`MemoryReplayGuard`] therefore keeps entries
//! for that window only, and never more than a fixed number of them.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use agentkeys_core::{NonceRecord, OwnerId, UnixTime};

use crate::signed_request::{MAX_CLOCK_SKEW, Nonce};

/// Most nonces a [`MemoryReplayGuard`] remembers at once (by default).
///
/// Only requests with a valid owner signature are recorded, so reaching the cap
/// takes an owner key and a sustained rate of over 800 signed requests per second.
pub const MAX_REPLAY_ENTRIES: usize = 100_000;

/// Why a nonce was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    /// This `(owner, nonce)` was already used (or is too old to be told apart from one that was).
    #[error("nonce already used")]
    Seen,
    /// The guard cannot decide (full, or its store is down). Callers fail closed.
    #[error("replay guard unavailable: {reason}")]
    Unavailable {
        /// What went wrong.
        reason: String,
    },
}

/// Records nonces of verified owner requests and refuses a second use.
///
/// [`verify_request`](crate::verify_request) calls it last, after the signature is
/// valid, so a forger cannot burn a victim's nonces.
pub trait ReplayGuard {
    /// Accepts and records `(owner, nonce)` if unseen, answering the record
    /// ([`NonceRecord::first_use`]) that completes the verification; `ts` is the request's signed
    /// timestamp (already checked to be within [`MAX_CLOCK_SKEW`] of `now`).
    fn check_and_record(
        &self,
        owner: &OwnerId,
        nonce: &Nonce,
        ts: UnixTime,
        now: UnixTime,
    ) -> Result<NonceRecord, Replay>;
}

#[derive(Default)]
struct Entries {
    seen: HashSet<(OwnerId, String)>,
    /// The same entries ordered by timestamp, for pruning.
    by_ts: BTreeSet<(UnixTime, OwnerId, String)>,
    /// The latest `now` seen: timestamps older than `horizon - MAX_CLOCK_SKEW` were
    /// (or may have been) pruned, so they are refused even if a caller's clock lags.
    horizon: UnixTime,
}

/// An in-process [`ReplayGuard`]: bounded memory, entries pruned once their
/// timestamp leaves the skew window. For one server process; several processes
/// need a shared store.
pub struct MemoryReplayGuard {
    entries: Mutex<Entries>,
    capacity: usize,
}

impl MemoryReplayGuard {
    /// A guard holding at most [`MAX_REPLAY_ENTRIES`] nonces.
    pub fn new() -> Self {
        Self::with_capacity(MAX_REPLAY_ENTRIES)
    }

    /// A guard holding at most `capacity` nonces; when full it answers
    /// [`Replay::Unavailable`] (fail closed) rather than forget a live nonce.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { entries: Mutex::new(Entries { horizon: UnixTime::MIN, ..Entries::default() }), capacity }
    }

    /// Number of nonces currently remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.seen.len())
    }

    /// `true` when no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryReplayGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplayGuard")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ReplayGuard for MemoryReplayGuard {
    fn check_and_record(
        &self,
        owner: &OwnerId,
        nonce: &Nonce,
        ts: UnixTime,
        now: UnixTime,
    ) -> Result<NonceRecord, Replay> {
        let mut entries =
            self.entries.lock().map_err(|_| Replay::Unavailable { reason: "lock poisoned".to_owned() })?;
        entries.horizon = entries.horizon.max(now);
        let oldest_live = entries.horizon.saturating_sub(MAX_CLOCK_SKEW);
        while let Some(first) = entries.by_ts.first() {
            if first.0 >= oldest_live {
                break;
            }
            if let Some((_, o, n)) = entries.by_ts.pop_first() {
                entries.seen.remove(&(o, n));
            }
        }
        if ts < oldest_live {
            // Its entry may have been pruned already: refuse rather than risk a replay.
            return Err(Replay::Seen);
        }
        let key = (owner.clone(), nonce.as_str().to_owned());
        if entries.seen.contains(&key) {
            return Err(Replay::Seen);
        }
        if entries.seen.len() >= self.capacity {
            return Err(Replay::Unavailable { reason: format!("more than {} live nonces", self.capacity) });
        }
        entries.by_ts.insert((ts, key.0.clone(), key.1.clone()));
        entries.seen.insert(key);
        Ok(NonceRecord::first_use(owner, nonce.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(n: u8) -> OwnerId {
        format!("0x{:040x}", n).parse().unwrap()
    }

    fn nonce(s: &str) -> Nonce {
        s.parse().unwrap()
    }

    #[test]
    fn second_use_is_refused_per_owner() {
        let guard = MemoryReplayGuard::new();
        let n = nonce("nonce-0000000000001");
        assert_eq!(guard.check_and_record(&owner(1), &n, 1000, 1000), Ok(NonceRecord::first_use(&owner(1), n.as_str())));
        assert_eq!(guard.check_and_record(&owner(1), &n, 1000, 1001), Err(Replay::Seen));
        // Nonces are per owner.
        assert_eq!(guard.check_and_record(&owner(2), &n, 1000, 1001), Ok(NonceRecord::first_use(&owner(2), n.as_str())));
    }

    #[test]
    fn entries_are_pruned_after_the_skew_window() {
        let guard = MemoryReplayGuard::new();
        guard.check_and_record(&owner(1), &nonce("aaaaaaaaaaaaaaaa"), 1000, 1000).unwrap();
        guard.check_and_record(&owner(1), &nonce("bbbbbbbbbbbbbbbb"), 1030, 1030).unwrap();
        assert_eq!(guard.len(), 2);
        // At 1060 the first is still live (1000 + 60 = 1060).
        guard.check_and_record(&owner(1), &nonce("cccccccccccccccc"), 1060, 1060).unwrap();
        assert_eq!(guard.len(), 3);
        guard.check_and_record(&owner(1), &nonce("dddddddddddddddd"), 1061, 1061).unwrap();
        assert_eq!(guard.len(), 3, "the entry from 1000 is gone");
    }

    #[test]
    fn a_lagging_clock_cannot_replay_a_pruned_nonce() {
        let guard = MemoryReplayGuard::new();
        let n = nonce("aaaaaaaaaaaaaaaa");
        guard.check_and_record(&owner(1), &n, 1000, 1000).unwrap();
        // Another request at 1061 prunes it...
        guard.check_and_record(&owner(1), &nonce("bbbbbbbbbbbbbbbb"), 1061, 1061).unwrap();
        // ...and a caller whose `now` lags (1060, so ts 1000 passes its skew check) is still refused.
        assert_eq!(guard.check_and_record(&owner(1), &n, 1000, 1060), Err(Replay::Seen));
    }

    #[test]
    fn full_guard_fails_closed_until_entries_expire() {
        let guard = MemoryReplayGuard::with_capacity(2);
        guard.check_and_record(&owner(1), &nonce("aaaaaaaaaaaaaaaa"), 1000, 1000).unwrap();
        guard.check_and_record(&owner(1), &nonce("bbbbbbbbbbbbbbbb"), 1000, 1000).unwrap();
        let err = guard.check_and_record(&owner(1), &nonce("cccccccccccccccc"), 1000, 1000).unwrap_err();
        assert!(matches!(err, Replay::Unavailable { .. }), "{err:?}");
        guard.check_and_record(&owner(1), &nonce("cccccccccccccccc"), 1061, 1061).unwrap();
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn default_cap_is_the_named_constant() {
        assert_eq!(MemoryReplayGuard::new().capacity, MAX_REPLAY_ENTRIES);
        assert_eq!(MAX_REPLAY_ENTRIES, 100_000);
    }
}
