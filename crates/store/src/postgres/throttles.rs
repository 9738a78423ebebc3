//! [`Throttles`] on PostgreSQL: a row per key with its newest failure times
//! (migration `0003_throttles.sql`). A failure is one `INSERT … ON CONFLICT DO
//! UPDATE`: the first failure of a key inserts its row, every later one rewrites
//! the row under its row lock, keeping the `limit` newest times inside the
//! window. Concurrent failures from any nodes therefore apply one after the
//! other (a statement that waited for the lock re-reads the row it waited for),
//! none is lost, and each answers the count with itself and those before it.
//! Rows whose window ended are pruned by whichever node records a failure after
//! [`THROTTLE_PRUNE_INTERVAL`] has passed since its last prune.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;

use super::meta::prune;
use super::{PgStore, backend};
use crate::meta::StoreError;
use crate::throttles::{Admission, FailureTally, FailureWindow, ThrottleKey, Throttles, UnixMillis, tally};

/// How often a node deletes the rows of keys whose window has ended.
pub const THROTTLE_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The upsert of one failure of key $1 at $2 (window $3 ms, limit $4): the
/// first inserts the key's row, every later one rewrites it under its row
/// lock, keeping the `limit` newest times inside the window.
macro_rules! upsert_failure {
    () => {
        "INSERT INTO throttle_failures AS f (key, times, expires_ms) VALUES ($1, ARRAY[$2::bigint], $2 + $3)
         ON CONFLICT (key) DO UPDATE SET
             times = ARRAY(SELECT t FROM unnest(f.times || $2::bigint) AS t WHERE t > $2 - $3 ORDER BY t DESC LIMIT $4),
             expires_ms = GREATEST(f.expires_ms, $2 + $3)"
    };
}
const RECORD_FAILURE: &str = concat!(upsert_failure!(), " RETURNING times");
/// The same, updating only while fewer than `limit` kept times are inside the window.
const RECORD_UNLESS_FULL: &str =
    concat!(upsert_failure!(), " WHERE (SELECT count(*) FROM unnest(f.times) AS t WHERE t > $2 - $3) < $4 RETURNING times");

impl PgStore {
    /// Deletes expired rows if this handle has not done so for
    /// [`THROTTLE_PRUNE_INTERVAL`]. A failed prune is logged: it is retried at
    /// the next interval and never fails the failure being recorded.
    async fn prune_throttles_if_due(&self, now: UnixMillis) {
        let interval = i64::try_from(THROTTLE_PRUNE_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        let last = self.throttles_pruned.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= interval || now < last;
        if !due || self.throttles_pruned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        if let Err(err) = prune(&self.pool, "throttle_failures", "expires_ms <= $1", now).await {
            tracing::warn!(%err, "cannot prune expired throttle counters; retrying later");
        }
    }
}

#[async_trait]
impl Throttles for PgStore {
    async fn record_failure(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError> {
        self.prune_throttles_if_due(now).await;
        let (times,): (Vec<i64>,) = sqlx::query_as(
            RECORD_FAILURE,
        )
        .bind(key.as_str())
        .bind(now)
        .bind(rule.window_ms())
        .bind(i64::from(rule.limit()))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(tally(times, now, rule))
    }

    async fn failures(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<FailureTally, StoreError> {
        let found: Option<(Vec<i64>,)> = sqlx::query_as("SELECT times FROM throttle_failures WHERE key = $1")
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(tally(found.map(|(times,)| times).unwrap_or_default(), now, rule))
    }

    /// One statement: the upsert of [`record_failure`](Throttles::record_failure)
    /// whose update applies only while fewer than `limit` kept times are inside
    /// the window, decided under the row lock (a statement that waited for it
    /// re-checks the row it waited for). A full key returns no row; its tally
    /// is then read.
    async fn record_unless_full(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        rule: FailureWindow,
    ) -> Result<Admission, StoreError> {
        self.prune_throttles_if_due(now).await;
        let recorded: Option<(Vec<i64>,)> = sqlx::query_as(
            RECORD_UNLESS_FULL,
        )
        .bind(key.as_str())
        .bind(now)
        .bind(rule.window_ms())
        .bind(i64::from(rule.limit()))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        match recorded {
            Some((times,)) => Ok(Admission { recorded: true, tally: tally(times, now, rule) }),
            None => Ok(Admission { recorded: false, tally: self.failures(key, now, rule).await? }),
        }
    }
}
