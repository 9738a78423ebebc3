//! Failure counters shared by every process on one store (issue 10 §2): the
//! per-address SMTP AUTH throttle and the HTTP API's refused-key budget count
//! through [`Throttles`], so an attacker spreading his attempts over several
//! nodes gets the budget once, not once per node.
//!
//! **The rule.** A key (a budget name and an address: [`ThrottleKey::address`])
//! has a sliding window ([`FailureWindow`]): the failures recorded for it less
//! than `window` ago count, at most the `limit` newest of them. When `limit` of
//! them are inside the window, the key is *full* until the oldest of those
//! leaves it ([`FailureTally::full_until`]). That is all a backend decides;
//! what "full" means (AUTH refused, 429) is the caller's.
//!
//! **Implementations.** [`SqliteStore`](crate::SqliteStore) (a row per
//! failure, migration `sqlite/0013`) and `PgStore` (a row per key holding its
//! newest failure times, migration `postgres/0003`) share the counts between
//! every process on the database; the conformance suite holds both to the
//! contract, across handles. [`LocalThrottles`] keeps them in this process's
//! memory: a single `serve` on SQLite uses it, because it is the only process
//! that counts (owner commands run the API in-process without a peer address,
//! which is never throttled), so counting in memory answers what the table
//! would, without a synchronous disk write per failure (its tests compare the
//! two over generated histories). [`CachedThrottles`] wraps a shared store for
//! the hot path: a key known to be full is answered from memory until it is not.
//!
//! Times are milliseconds since the Unix epoch on the caller's wall clock.
//! Nodes sharing a store are assumed to keep their clocks in step (NTP); a skew
//! shifts a window by the skew, nothing worse.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::meta::StoreError;

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// Longest [`ThrottleKey`], in bytes.
pub const MAX_THROTTLE_KEY_BYTES: usize = 128;

/// Most keys [`LocalThrottles`] tracks at once; beyond it the key whose last
/// failure is the oldest is forgotten, so memory stays bounded under address
/// spraying.
pub const MAX_LOCAL_THROTTLE_KEYS: usize = 16_384;

/// How often [`LocalThrottles`] drops keys whose window has passed.
pub const LOCAL_SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// Most full keys [`CachedThrottles`] remembers; beyond it a full key is not
/// cached (and is asked from the store again), never forgotten early.
pub const MAX_CACHED_FULL_KEYS: usize = 16_384;

/// What a failure counts against: a budget name and, usually, a client address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThrottleKey(String);

impl ThrottleKey {
    /// The key of `ip` in `budget` (`smtp-auth`, `http-agent-key`, …): IPv4 as
    /// is (an IPv4-mapped IPv6 address counts as its IPv4 address), IPv6 by its
    /// /64 ([`agentkeys_core::peer::address_key`]).
    pub fn address(budget: &str, ip: IpAddr) -> Self {
        Self(format!("{budget}/{}", agentkeys_core::peer::address_key(ip)))
    }

    /// A key of the caller's making. `Invalid` if empty or longer than
    /// [`MAX_THROTTLE_KEY_BYTES`].
    pub fn new(key: impl Into<String>) -> Result<Self, StoreError> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_THROTTLE_KEY_BYTES {
            return Err(StoreError::Invalid(format!(
                "a throttle key has 1 to {MAX_THROTTLE_KEY_BYTES} bytes, not {}",
                key.len()
            )));
        }
        Ok(Self(key))
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ThrottleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key's sliding window: failures less than `window` ago count, at most the
/// `limit` newest; `limit` of them inside the window make the key full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureWindow {
    limit: u32,
    window_ms: i64,
}

impl FailureWindow {
    /// `limit` failures within `window`; `None` when either is zero (a budget
    /// that is switched off records nothing).
    pub fn new(limit: u32, window: Duration) -> Option<Self> {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        (limit > 0 && window_ms > 0).then_some(Self { limit, window_ms })
    }

    /// Failures that make the key full.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window, in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// The first time at which a failure at `at` no longer counts.
    pub fn leaves_at(&self, at: UnixMillis) -> UnixMillis {
        at.saturating_add(self.window_ms)
    }

    /// Whether a failure at `at` counts at `now`: less than the window ago
    /// (a failure stamped after `now`, by a node whose clock is ahead, counts).
    pub fn counts(&self, at: UnixMillis, now: UnixMillis) -> bool {
        self.leaves_at(at) > now
    }
}

/// A key's failures as a backend counts them at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureTally {
    /// Failures inside the window, at most the window's limit.
    pub count: u32,
    /// When the key is full (`count` is the limit): the time the oldest of the
    /// counted failures leaves the window, after `now`. `None` otherwise.
    pub full_until: Option<UnixMillis>,
}

impl FailureTally {
    /// Whether the key is full at `now`.
    pub fn is_full_at(&self, now: UnixMillis) -> bool {
        self.full_until.is_some_and(|until| until > now)
    }
}

/// What [`Throttles::record_unless_full`] did: recorded the use (the tally
/// counts it) or found the key full (the tally says until when) and recorded
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Whether the use was recorded.
    pub recorded: bool,
    /// The key's tally after the call.
    pub tally: FailureTally,
}

/// The tally of the failure times `times` (any order, any number) at `now`
/// under `rule`: the rule itself, which every backend answers with.
pub fn tally(times: impl IntoIterator<Item = UnixMillis>, now: UnixMillis, rule: FailureWindow) -> FailureTally {
    let mut counted: Vec<UnixMillis> = times.into_iter().filter(|t| rule.counts(*t, now)).collect();
    counted.sort_unstable_by(|a, b| b.cmp(a));
    counted.truncate(rule.limit as usize);
    let count = u32::try_from(counted.len()).unwrap_or(u32::MAX);
    let full_until = (count >= rule.limit).then(|| counted.last().map(|oldest| rule.leaves_at(*oldest))).flatten();
    FailureTally { count, full_until }
}

/// The wall clock in milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(at: SystemTime) -> UnixMillis {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Failure counters shared by every handle on the same data (module docs).
///
/// Contract, for any backend:
/// - a failure recorded at `t` through any handle counts for the key at `now`
///   while `now < t + window`; the answer is [`tally`] of every failure
///   recorded for the key (the `limit` newest count; older ones may be
///   forgotten);
/// - recording is atomic: concurrent records through any handles lose none,
///   and each answers a tally that includes itself and every record that
///   finished before it started (so `n` concurrent records of a fresh key,
///   `n` at most the limit, answer the counts 1 to `n`, each once);
/// - [`record_unless_full`](Throttles::record_unless_full) decides and records
///   in the same atomic step: through any handles, concurrently, a fresh key
///   admits exactly `limit` uses within a window, never more (a budget of uses,
///   such as pairing opens, is a key whose refusals are not counted);
/// - [`failures`](Throttles::failures) records nothing;
/// - storage stays bounded: a key keeps at most `limit` failure times, and a
///   key whose newest failure left its window is removed in time.
///
/// A key is used with one rule. `now` passed for one key does not go
/// backwards by more than the clock skew between nodes.
#[async_trait]
pub trait Throttles: Send + Sync + 'static {
    /// Records one failure of `key` at `now` and answers the key's tally with it.
    async fn record_failure(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError>;
    /// The key's tally at `now`, recording nothing.
    async fn failures(&self, key: &ThrottleKey, now: UnixMillis, rule: FailureWindow)
    -> Result<FailureTally, StoreError>;
    /// Records one use of `key` at `now` unless the key is full at `now`, in
    /// one atomic step; a full key keeps its tally.
    async fn record_unless_full(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<Admission, StoreError>;
}

#[async_trait]
impl<T: Throttles + ?Sized> Throttles for Arc<T> {
    async fn record_failure(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError> {
        (**self).record_failure(key, now, rule).await
    }

    async fn failures(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError> {
        (**self).failures(key, now, rule).await
    }

    async fn record_unless_full(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<Admission, StoreError> {
        (**self).record_unless_full(key, now, rule).await
    }
}

// ---------------------------------------------------------------------------
// In memory, for one process.

/// [`Throttles`] in this process's memory: for a deployment where one process
/// does all the counting (module docs). Every call takes the lock once.
/// Memory is bounded by [`MAX_LOCAL_THROTTLE_KEYS`] keys of at most `limit`
/// times each; keys whose window passed are swept every
/// [`LOCAL_SWEEP_INTERVAL`].
#[derive(Debug)]
pub struct LocalThrottles {
    max_keys: usize,
    state: Mutex<LocalState>,
}

#[derive(Debug, Default)]
struct LocalState {
    keys: HashMap<String, LocalKey>,
    last_sweep: Option<UnixMillis>,
}

#[derive(Debug, Default)]
struct LocalKey {
    /// The newest failure times, oldest first, at most the limit.
    times: VecDeque<UnixMillis>,
    /// When every kept failure has left its window.
    expires: UnixMillis,
}

impl Default for LocalThrottles {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalThrottles {
    /// Empty counters tracking up to [`MAX_LOCAL_THROTTLE_KEYS`] keys.
    pub fn new() -> Self {
        Self::with_capacity(MAX_LOCAL_THROTTLE_KEYS)
    }

    /// Empty counters tracking up to `max_keys` keys (tests).
    pub fn with_capacity(max_keys: usize) -> Self {
        Self { max_keys: max_keys.max(1), state: Mutex::new(LocalState::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, LocalState> {
        // Every update leaves the state consistent: a panicking holder changes nothing half-way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keys tracked now (tests, metrics).
    pub fn tracked(&self) -> usize {
        self.lock().keys.len()
    }

    fn sweep(state: &mut LocalState, now: UnixMillis) {
        state.keys.retain(|_, key| key.expires > now);
        state.last_sweep = Some(now);
    }

    fn sweep_if_due(state: &mut LocalState, now: UnixMillis) {
        let interval = i64::try_from(LOCAL_SWEEP_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        if state.last_sweep.is_none_or(|last| now.saturating_sub(last) >= interval || now < last) {
            Self::sweep(state, now);
        }
    }

    /// Records a failure without an `await` (the SMTP and HTTP fronts call this
    /// through the trait; it is here for callers that hold the concrete type).
    pub fn record_now(&self, key: &ThrottleKey, now: UnixMillis, rule: FailureWindow) -> FailureTally {
        let mut state = self.lock();
        Self::sweep_if_due(&mut state, now);
        self.record_locked(&mut state, key, now, rule)
    }

    /// [`Throttles::record_unless_full`] without an `await`: one lock for the
    /// decision and the record.
    pub fn record_unless_full_now(&self, key: &ThrottleKey, now: UnixMillis, rule: FailureWindow) -> Admission {
        let mut state = self.lock();
        Self::sweep_if_due(&mut state, now);
        let before = state.keys.get(key.as_str()).map_or_else(
            || tally([], now, rule),
            |entry| tally(entry.times.iter().copied(), now, rule),
        );
        if before.is_full_at(now) {
            return Admission { recorded: false, tally: before };
        }
        Admission { recorded: true, tally: self.record_locked(&mut state, key, now, rule) }
    }

    fn record_locked(&self, state: &mut LocalState, key: &ThrottleKey, now: UnixMillis, rule: FailureWindow) -> FailureTally {
        if !state.keys.contains_key(key.as_str()) && state.keys.len() >= self.max_keys {
            Self::sweep(state, now);
            if state.keys.len() >= self.max_keys {
                let oldest = state
                    .keys
                    .iter()
                    .min_by_key(|(_, k)| k.times.back().copied())
                    .map(|(name, _)| name.clone());
                if let Some(name) = oldest {
                    state.keys.remove(&name);
                }
            }
        }
        let entry = state.keys.entry(key.as_str().to_owned()).or_default();
        // Kept sorted: a failure stamped before the newest goes in its place.
        let at = entry.times.partition_point(|t| *t <= now);
        entry.times.insert(at, now);
        entry.times.retain(|t| rule.counts(*t, now));
        while entry.times.len() > rule.limit() as usize {
            entry.times.pop_front();
        }
        entry.expires = entry.expires.max(rule.leaves_at(now));
        tally(entry.times.iter().copied(), now, rule)
    }

    /// The tally without an `await`.
    pub fn failures_now(&self, key: &ThrottleKey, now: UnixMillis, rule: FailureWindow) -> FailureTally {
        let mut state = self.lock();
        Self::sweep_if_due(&mut state, now);
        match state.keys.get(key.as_str()) {
            Some(entry) => tally(entry.times.iter().copied(), now, rule),
            None => tally([], now, rule),
        }
    }
}

#[async_trait]
impl Throttles for LocalThrottles {
    async fn record_failure(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError> {
        Ok(self.record_now(key, now, rule))
    }

    async fn failures(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError> {
        Ok(self.failures_now(key, now, rule))
    }

    async fn record_unless_full(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<Admission, StoreError> {
        Ok(self.record_unless_full_now(key, now, rule))
    }
}

// ---------------------------------------------------------------------------
// A shared store behind a cache of full keys.

/// A shared [`Throttles`] with the hot path kept in memory: a key this process
/// saw full is answered full from memory until its `full_until`, without asking
/// the store; everything else goes to the store, and every failure is written.
///
/// No staleness in what matters: a full key cannot stop being full before
/// `full_until`, because its counted failures stay in the window until then
/// (only new failures can be added), so "full" from the cache is exactly the
/// store's answer and needs no TTL of its own. Its `full_until` is a lower
/// bound: failures other nodes recorded since may keep the key full longer,
/// which the store tells once the cached time has passed.
pub struct CachedThrottles {
    inner: Arc<dyn Throttles>,
    full: Mutex<HashMap<String, UnixMillis>>,
}

impl std::fmt::Debug for CachedThrottles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedThrottles").field("cached", &self.cached()).finish_non_exhaustive()
    }
}

impl CachedThrottles {
    /// `inner` behind the cache.
    pub fn new(inner: Arc<dyn Throttles>) -> Self {
        Self { inner, full: Mutex::new(HashMap::new()) }
    }

    /// Full keys remembered now (tests, metrics).
    pub fn cached(&self) -> usize {
        self.full.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn cached_until(&self, key: &ThrottleKey, now: UnixMillis) -> Option<UnixMillis> {
        let mut full = self.full.lock().unwrap_or_else(PoisonError::into_inner);
        match full.get(key.as_str()) {
            Some(until) if *until > now => Some(*until),
            Some(_) => {
                full.remove(key.as_str());
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: &ThrottleKey, tally: FailureTally, now: UnixMillis) {
        let Some(until) = tally.full_until.filter(|until| *until > now) else {
            return;
        };
        let mut full = self.full.lock().unwrap_or_else(PoisonError::into_inner);
        if !full.contains_key(key.as_str()) && full.len() >= MAX_CACHED_FULL_KEYS {
            full.retain(|_, until| *until > now);
            if full.len() >= MAX_CACHED_FULL_KEYS {
                return;
            }
        }
        let entry = full.entry(key.as_str().to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }
}

#[async_trait]
impl Throttles for CachedThrottles {
    async fn record_failure(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError> {
        let tally = self.inner.record_failure(key, now, rule).await?;
        self.remember(key, tally, now);
        Ok(tally)
    }

    async fn failures(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError> {
        if let Some(until) = self.cached_until(key, now) {
            return Ok(FailureTally { count: rule.limit(), full_until: Some(until) });
        }
        let tally = self.inner.failures(key, now, rule).await?;
        self.remember(key, tally, now);
        Ok(tally)
    }

    async fn record_unless_full(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<Admission, StoreError> {
        if let Some(until) = self.cached_until(key, now) {
            return Ok(Admission { recorded: false, tally: FailureTally { count: rule.limit(), full_until: Some(until) } });
        }
        let admission = self.inner.record_unless_full(key, now, rule).await?;
        self.remember(key, admission.tally, now);
        Ok(admission)
    }
}

// ---------------------------------------------------------------------------
// SQLite: a row per failure.

/// Forgets every failure whose window passed (all keys: few rows, an index range).
async fn sqlite_forget_expired(tx: &mut crate::write_tx::WriteTx, now: UnixMillis) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM throttle_failures WHERE expires_ms <= ?1")
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(crate::sqlite::backend)?;
    Ok(())
}

/// The failure times stored for `key`, any age.
async fn sqlite_key_times(conn: &mut sqlx::SqliteConnection, key: &ThrottleKey) -> Result<Vec<UnixMillis>, StoreError> {
    let times: Vec<(i64,)> = sqlx::query_as("SELECT at_ms FROM throttle_failures WHERE key = ?1")
        .bind(key.as_str())
        .fetch_all(conn)
        .await
        .map_err(crate::sqlite::backend)?;
    Ok(times.into_iter().map(|(t,)| t).collect())
}

async fn sqlite_insert_failure(tx: &mut crate::write_tx::WriteTx, key: &ThrottleKey, now: UnixMillis, rule: FailureWindow) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO throttle_failures (key, at_ms, expires_ms) VALUES (?1, ?2, ?3)")
        .bind(key.as_str())
        .bind(now)
        .bind(rule.leaves_at(now))
        .execute(&mut **tx)
        .await
        .map_err(crate::sqlite::backend)?;
    Ok(())
}

#[async_trait]
impl Throttles for crate::SqliteStore {
    /// One write transaction: forgets every failure whose window passed (all
    /// keys: few rows, an index range), inserts this one, keeps the key's
    /// `limit` newest inside the window, reads the key back.
    async fn record_failure(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError> {
        use crate::sqlite::backend;
        let mut tx = self.write_tx().await?;
        sqlite_forget_expired(&mut tx, now).await?;
        sqlite_insert_failure(&mut tx, key, now, rule).await?;
        sqlx::query(
            "DELETE FROM throttle_failures WHERE key = ?1 AND rowid NOT IN (
                 SELECT rowid FROM throttle_failures WHERE key = ?1 AND at_ms > ?2 ORDER BY at_ms DESC LIMIT ?3)",
        )
        .bind(key.as_str())
        .bind(now.saturating_sub(rule.window_ms()))
        .bind(i64::from(rule.limit()))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let times = sqlite_key_times(&mut tx, key).await?;
        tx.commit().await.map_err(backend)?;
        Ok(tally(times, now, rule))
    }

    async fn failures(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError> {
        let times = sqlite_key_times(&mut *self.hot().await?, key).await?;
        Ok(tally(times, now, rule))
    }

    /// One write transaction (SQLite's one writer makes the read and the
    /// insert one step): forgets expired failures, reads the key's times; full,
    /// it records nothing; else inserts this use (the key then holds at most
    /// `limit` times inside the window).
    async fn record_unless_full(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<Admission, StoreError> {
        use crate::sqlite::backend;
        let mut tx = self.write_tx().await?;
        sqlite_forget_expired(&mut tx, now).await?;
        let times = sqlite_key_times(&mut tx, key).await?;
        let before = tally(times.iter().copied(), now, rule);
        if before.is_full_at(now) {
            return Ok(Admission { recorded: false, tally: before });
        }
        sqlite_insert_failure(&mut tx, key, now, rule).await?;
        tx.commit().await.map_err(backend)?;
        let after = tally(times.into_iter().chain([now]), now, rule);
        Ok(Admission { recorded: true, tally: after })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;
    use crate::SqliteStore;

    const T0: UnixMillis = 1_700_000_000_000;

    fn rule(limit: u32, secs: u64) -> FailureWindow {
        FailureWindow::new(limit, Duration::from_secs(secs)).unwrap()
    }

    fn key(n: u8) -> ThrottleKey {
        ThrottleKey::address("test", IpAddr::from([192, 0, 2, n]))
    }

    #[test]
    fn a_window_of_nothing_is_switched_off() {
        assert!(FailureWindow::new(0, Duration::from_secs(60)).is_none());
        assert!(FailureWindow::new(3, Duration::ZERO).is_none());
        assert!(FailureWindow::new(3, Duration::from_micros(10)).is_none(), "below a millisecond");
    }

    #[test]
    fn keys_count_ipv6_per_64_and_mapped_ipv4_as_ipv4() {
        let a = ThrottleKey::address("smtp-auth", "2001:db8:1:2::1".parse().unwrap());
        let b = ThrottleKey::address("smtp-auth", "2001:db8:1:2:ffff::9".parse().unwrap());
        let c = ThrottleKey::address("smtp-auth", "2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = ThrottleKey::address("smtp-auth", "::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(mapped, ThrottleKey::address("smtp-auth", "192.0.2.1".parse().unwrap()));
        assert_ne!(mapped, ThrottleKey::address("http-agent-key", "192.0.2.1".parse().unwrap()));
        assert!(ThrottleKey::new("").is_err());
        assert!(ThrottleKey::new("x".repeat(MAX_THROTTLE_KEY_BYTES + 1)).is_err());
        assert!(ThrottleKey::new("x".repeat(MAX_THROTTLE_KEY_BYTES)).is_ok());
    }

    #[test]
    fn the_tally_counts_the_newest_inside_the_window() {
        let r = rule(3, 60);
        assert_eq!(tally([], T0, r), FailureTally { count: 0, full_until: None });
        assert_eq!(tally([T0, T0 + 1000], T0 + 1000, r), FailureTally { count: 2, full_until: None });
        // Full: until the oldest of the three newest leaves.
        let full = tally([T0 - 5000, T0, T0 + 1000, T0 + 2000], T0 + 2000, r);
        assert_eq!(full, FailureTally { count: 3, full_until: Some(T0 + 60_000) });
        assert!(full.is_full_at(T0 + 59_999));
        assert!(!full.is_full_at(T0 + 60_000));
        // A failure exactly one window ago no longer counts.
        assert_eq!(tally([T0], T0 + 60_000, r).count, 0);
        assert_eq!(tally([T0], T0 + 59_999, r).count, 1);
    }

    #[test]
    fn local_counters_block_at_the_limit_and_free_when_the_oldest_leaves() {
        let t = LocalThrottles::new();
        let r = rule(10, 600);
        for i in 0..10 {
            assert!(!t.failures_now(&key(7), T0 + i, r).is_full_at(T0 + i), "full after {i}");
            t.record_now(&key(7), T0 + i, r);
        }
        assert!(t.failures_now(&key(7), T0 + 9, r).is_full_at(T0 + 9));
        assert_eq!(t.failures_now(&key(8), T0 + 9, r).count, 0, "another address is unaffected");
        let before = T0 + 600_000 - 1;
        assert!(t.failures_now(&key(7), before, r).is_full_at(before));
        let after = T0 + 600_000;
        assert!(!t.failures_now(&key(7), after, r).is_full_at(after));
    }

    #[test]
    fn max_local_throttle_keys_bounds_memory_and_expired_keys_are_swept() {
        let t = LocalThrottles::with_capacity(100);
        let r = rule(5, 60);
        for i in 0..1000u32 {
            let k = ThrottleKey::address("test", IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
            t.record_now(&k, T0 + i64::from(i), r);
            assert!(t.tracked() <= 100);
        }
        let newest = ThrottleKey::address("test", IpAddr::from((0x0a00_0000u32 + 999).to_be_bytes()));
        assert_eq!(t.failures_now(&newest, T0 + 999, r).count, 1, "the most recent offender is kept");
        // After the window, the next use sweeps everything else.
        t.record_now(&key(200), T0 + 120_000, r);
        assert_eq!(t.tracked(), 1);
        assert_eq!(LocalThrottles::new().max_keys, MAX_LOCAL_THROTTLE_KEYS);
    }

    /// What the contract cannot see, the table's bound: a key keeps at most
    /// `limit` rows however many failures are recorded, and a failure recorded
    /// after a key's window deletes that key's rows.
    #[tokio::test]
    async fn the_sqlite_table_keeps_at_most_the_limit_per_key_and_forgets_expired_keys() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let rows = |store: SqliteStore| async move {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT key, count(*) FROM throttle_failures GROUP BY key ORDER BY key")
                    .fetch_all(&store.pool)
                    .await
                    .unwrap();
            rows
        };
        let r = rule(3, 60);
        for i in 0..50 {
            store.record_failure(&key(1), T0 + i, r).await.unwrap();
        }
        assert_eq!(rows(store.clone()).await, [(key(1).to_string(), 3)]);
        store.record_failure(&key(2), T0 + 50 + 60_000, r).await.unwrap();
        assert_eq!(rows(store.clone()).await, [(key(2).to_string(), 1)]);
    }

    /// A store that counts how often it is asked, over [`LocalThrottles`].
    #[derive(Default)]
    struct Counting {
        inner: LocalThrottles,
        reads: AtomicUsize,
        writes: AtomicUsize,
    }

    #[async_trait]
    impl Throttles for Counting {
        async fn record_failure(&self, key: &ThrottleKey, now: UnixMillis, rule: FailureWindow) -> Result<FailureTally, StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            Ok(self.inner.record_now(key, now, rule))
        }
        async fn failures(&self, key: &ThrottleKey, now: UnixMillis, rule: FailureWindow) -> Result<FailureTally, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.inner.failures_now(key, now, rule))
        }
        async fn record_unless_full(&self, key: &ThrottleKey, now: UnixMillis, rule: FailureWindow) -> Result<Admission, StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            Ok(self.inner.record_unless_full_now(key, now, rule))
        }
    }

    /// A use refused by a key the cache knows is full never reaches the store;
    /// one admitted is recorded there.
    #[tokio::test]
    async fn uses_of_a_full_key_are_refused_from_memory() {
        let store = Arc::new(Counting::default());
        let cached = CachedThrottles::new(store.clone());
        let r = rule(2, 60);
        for i in 0..2 {
            assert!(cached.record_unless_full(&key(2), T0 + i, r).await.unwrap().recorded);
        }
        assert_eq!(store.writes.load(Ordering::SeqCst), 2);
        for i in 0..5 {
            let refused = cached.record_unless_full(&key(2), T0 + 10 + i, r).await.unwrap();
            assert_eq!(refused, Admission { recorded: false, tally: FailureTally { count: 2, full_until: Some(T0 + 60_000) } });
        }
        assert_eq!(store.writes.load(Ordering::SeqCst), 2, "answered from memory");
        assert!(cached.record_unless_full(&key(2), T0 + 60_000, r).await.unwrap().recorded, "free again when the oldest leaves");
        assert_eq!(store.writes.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_full_key_is_answered_from_memory_until_it_frees_and_failures_are_always_written() {
        let store = Arc::new(Counting::default());
        let cached = CachedThrottles::new(store.clone());
        let r = rule(3, 60);
        for i in 0..3 {
            cached.failures(&key(1), T0 + i, r).await.unwrap();
            cached.record_failure(&key(1), T0 + i, r).await.unwrap();
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 3);
        assert_eq!(cached.cached(), 1);
        for i in 0..10 {
            let tally = cached.failures(&key(1), T0 + 1000 + i, r).await.unwrap();
            assert_eq!(tally, FailureTally { count: 3, full_until: Some(T0 + 60_000) });
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 3, "answered from memory");
        cached.record_failure(&key(1), T0 + 2000, r).await.unwrap();
        assert_eq!(store.writes.load(Ordering::SeqCst), 4, "failures are always written");
        // Once the oldest counted failure leaves, the store is asked again, and agrees.
        let later = T0 + 60_001;
        let tally = cached.failures(&key(1), later, r).await.unwrap();
        assert_eq!(store.reads.load(Ordering::SeqCst), 4);
        assert_eq!(tally, store.inner.failures_now(&key(1), later, r));
    }

    /// One step of a generated history: (key, milliseconds later, record or read).
    fn history() -> impl Strategy<Value = (u32, u64, Vec<(u8, u16, bool)>)> {
        (1u32..6, 1u64..40, prop::collection::vec((0u8..3, 0u16..20_000, any::<bool>()), 1..60))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        /// One process counting in memory answers exactly what the shared table
        /// answers (why a single `serve` on SQLite may count in memory), and
        /// both answer the rule ([`tally`] over every failure), whatever the
        /// history; the cached front over the table, which hears of none of
        /// these records (as if another node made them), agrees on the count
        /// and on fullness.
        #[test]
        fn local_counters_answer_what_the_table_and_the_rule_answer((limit, secs, steps) in history()) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let table = Arc::new(SqliteStore::open_in_memory().await.unwrap());
                let cached = CachedThrottles::new(table.clone());
                let local = LocalThrottles::new();
                let r = rule(limit, secs);
                let mut all: HashMap<u8, Vec<UnixMillis>> = HashMap::new();
                let mut now = T0;
                for (k, later, record) in steps {
                    now += i64::from(later);
                    let (from_table, from_cache, from_local) = if record {
                        all.entry(k).or_default().push(now);
                        (
                            table.record_failure(&key(k), now, r).await.unwrap(),
                            cached.failures(&key(k), now, r).await.unwrap(),
                            local.record_failure(&key(k), now, r).await.unwrap(),
                        )
                    } else {
                        (
                            table.failures(&key(k), now, r).await.unwrap(),
                            cached.failures(&key(k), now, r).await.unwrap(),
                            local.failures(&key(k), now, r).await.unwrap(),
                        )
                    };
                    let expected = tally(all.get(&k).cloned().unwrap_or_default(), now, r);
                    assert_eq!(from_table, expected, "table at {now}");
                    assert_eq!(from_local, expected, "memory at {now}");
                    // The cache (told of no record here, as on another node) is
                    // right about fullness; its end of it may be earlier.
                    assert_eq!(from_cache.count, expected.count, "cached table at {now}");
                    assert_eq!(from_cache.is_full_at(now), expected.is_full_at(now), "cached table at {now}");
                    assert!(from_cache.full_until <= expected.full_until, "cached table at {now}");
                }
            });
        }
    }
}
