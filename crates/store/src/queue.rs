//! The outbound queue's delivery side: claim leases, the attempt history and the
//! operator's `queue show|retry|delete`.
//!
//! A separate trait from [`MetadataStore`](crate::MetadataStore) (which queues
//! messages and lists the queue) so the delivery runner and the admin CLI depend
//! only on what they use.
//!
//! **One attempt at a time per (message, recipient).** [`OutboundQueue::claim_due`]
//! moves due rows to `sending` in a single `UPDATE … RETURNING` statement, which
//! SQLite runs under its write lock: two workers, in one process or several on
//! the same database file, can never claim the same row. The claim carries a
//! random lease token and an expiry; only the token's holder can record the
//! outcome, and a row whose lease expired (its worker crashed) is claimable again.

use std::fmt;

use agentkeys_core::{Address, OwnerId, UnixTime};
use async_trait::async_trait;
use serde::Serialize;

use crate::meta::{QueueEntry, StoreError};
use crate::sqlite::{QueueRow, SqliteStore, queue_entry_from_row};

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// The destination accepted the message (`2xx` after DATA).
    Delivered,
    /// A temporary failure (`4xx`, connection or DNS failure): try again later.
    Deferred,
    /// A permanent failure (`5xx`, or the maximum age passed): a DSN goes to the sender.
    Bounced,
}

impl AttemptOutcome {
    /// The state the row moves to (and the stored outcome).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Bounced => "bounced",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A queue row claimed for one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The row (state `sending`).
    pub entry: QueueEntry,
    /// The sender inbox's owner: the prefix a DSN goes to.
    pub owner: OwnerId,
    /// The lease token [`OutboundQueue::record_attempt`] requires.
    pub lease: String,
}

/// An attempt to record ([`OutboundQueue::record_attempts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptToRecord {
    /// The claim the attempt was made under.
    pub claim: Claim,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// When to try next (deferred) or the end time.
    pub next_attempt_at: UnixTime,
    /// The remote reply or the local error.
    pub response: Option<String>,
    /// When the attempt ended.
    pub now: UnixTime,
}

/// One recorded delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// The envelope recipient.
    pub recipient: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When the attempt ended.
    pub at: UnixTime,
    /// How it ended.
    pub outcome: String,
    /// The remote reply or the local error.
    pub response: Option<String>,
}

/// A message's queue rows and attempt history (`agentkeys queue show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueDetail {
    /// The message ULID.
    pub message_id: String,
    /// One row per recipient.
    pub recipients: Vec<QueueEntry>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptRecord>,
}

/// How many queue rows are in one state (for the queue-depth gauge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStateCount {
    /// `queued`, `sending`, `delivered`, `deferred` or `bounced`.
    pub state: String,
    /// Rows in that state.
    pub count: u64,
}

/// Delivery operations on the outbound queue.
#[async_trait]
pub trait OutboundQueue: Send + Sync + 'static {
    /// Atomically claims up to `limit` rows that are due at `now` (`queued` or
    /// `deferred` with `next_attempt_at <= now`, or `sending` with an expired
    /// lease), moving them to `sending` leased until `lease_until`. Oldest due first.
    async fn claim_due(
        &self,
        now: UnixTime,
        limit: u32,
        lease_until: UnixTime,
    ) -> Result<Vec<Claim>, StoreError>;
    /// Records the outcome of the attempt the `claim` was for: the row moves to the
    /// outcome's state with `next_attempt_at`, one more attempt and `response`, and
    /// the attempt is added to the history, in one transaction. Returns how many
    /// of the message's rows are still unfinished afterwards (as
    /// [`unfinished`](Self::unfinished)): at zero its blob can go. `Conflict` if
    /// the lease was lost (expired and claimed by another worker): nothing is written.
    async fn record_attempt(
        &self,
        claim: &Claim,
        outcome: AttemptOutcome,
        next_attempt_at: UnixTime,
        response: Option<&str>,
        now: UnixTime,
    ) -> Result<u64, StoreError>;
    /// [`record_attempt`](Self::record_attempt) for many attempts in one
    /// transaction (one commit, one fsync): each gets its own result, a lost
    /// lease (`Conflict`) affecting only its row. `Err` only when the
    /// transaction itself fails (then nothing is written).
    async fn record_attempts(&self, batch: &[AttemptToRecord]) -> Result<Vec<Result<u64, StoreError>>, StoreError>;
    /// Extends the lease of every row still `sending` under `lease` (a claim's
    /// token) to `lease_until`, while their attempts run. Returns how many rows.
    async fn renew_lease(&self, lease: &str, lease_until: UnixTime) -> Result<u64, StoreError>;
    /// A message's rows and attempts; `NotFound` if it has no rows.
    async fn queue_show(&self, message_id: &str) -> Result<QueueDetail, StoreError>;
    /// Makes a message's `queued`/`deferred` rows due at `now`; returns how many.
    /// `NotFound` if the message has no rows.
    async fn queue_retry(&self, message_id: &str, now: UnixTime) -> Result<u64, StoreError>;
    /// Deletes a message's rows that are not being sent right now, with their
    /// history. Returns `(deleted, remaining)`; the caller removes the blob when
    /// nothing remains. `NotFound` if the message has no rows.
    async fn queue_delete(&self, message_id: &str) -> Result<(u64, u64), StoreError>;
    /// How many of a message's rows still wait for delivery (`queued`,
    /// `sending`, `deferred`): at zero its blob is no longer needed.
    async fn unfinished(&self, message_id: &str) -> Result<u64, StoreError>;
    /// Row counts per state, for metrics.
    async fn queue_counts(&self) -> Result<Vec<QueueStateCount>, StoreError>;
    /// Lists the outbound queue, oldest first.
    async fn list_queue(&self) -> Result<Vec<QueueEntry>, StoreError>;
}

fn backend(err: sqlx::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A claimed row as `claim_due` returns it.
pub(crate) type ClaimRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<String>,
);

pub(crate) fn claim_from_row(
    (
        message_id,
        recipient,
        sender,
        owner,
        state,
        size,
        queued_at,
        next_attempt_at,
        attempts,
        last_response,
    ): ClaimRow,
    lease: &str,
) -> Result<Claim, StoreError> {
    let sender: Address = sender.parse().map_err(|e| {
        StoreError::Backend(format!("stored sender address {sender:?} is invalid: {e}"))
    })?;
    let owner: OwnerId = owner
        .parse()
        .map_err(|e| StoreError::Backend(format!("stored owner {owner:?} is invalid: {e}")))?;
    Ok(Claim {
        entry: QueueEntry {
            message_id,
            sender,
            recipient,
            state,
            size: count(size),
            queued_at,
            next_attempt_at,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            last_response,
        },
        owner,
        lease: lease.to_owned(),
    })
}

pub(crate) type EntryRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<String>,
);

pub(crate) fn entry_from_row(
    (
        message_id,
        recipient,
        sender,
        state,
        size,
        queued_at,
        next_attempt_at,
        attempts,
        last_response,
    ): EntryRow,
) -> Result<QueueEntry, StoreError> {
    Ok(QueueEntry {
        sender: sender.parse().map_err(|e| {
            StoreError::Backend(format!("stored sender address {sender:?} is invalid: {e}"))
        })?,
        message_id,
        recipient,
        state,
        size: count(size),
        queued_at,
        next_attempt_at,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_response,
    })
}

fn not_found(message_id: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("queued message {message_id}"),
    }
}

/// How many recipients of `message_id` the queue holds (inside `tx`, so the
/// answer holds until the commit); `NotFound` for none.
async fn queued_rows(tx: &mut sqlx::SqliteConnection, message_id: &str) -> Result<i64, StoreError> {
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbound_queue WHERE message_id = ?1")
        .bind(message_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
    if rows == 0 {
        return Err(not_found(message_id));
    }
    Ok(rows)
}

#[async_trait]
impl OutboundQueue for SqliteStore {
    async fn claim_due(
        &self,
        now: UnixTime,
        limit: u32,
        lease_until: UnixTime,
    ) -> Result<Vec<Claim>, StoreError> {
        let lease = ulid::Ulid::new().to_string();
        // One statement: SQLite runs it under the write lock, so no other
        // connection or process can claim the same rows in between.
        let rows: Vec<ClaimRow> = sqlx::query_as(
            "UPDATE outbound_queue
                SET state = 'sending', lease_until = ?3, lease_token = ?4
              WHERE (message_id, recipient) IN (
                    SELECT message_id, recipient FROM outbound_queue
                     WHERE (state IN ('queued', 'deferred') AND next_attempt_at <= ?1)
                        OR (state = 'sending' AND lease_until <= ?1)
                     ORDER BY next_attempt_at, message_id, recipient
                     LIMIT ?2)
          RETURNING message_id, recipient, sender, owner, state, size, queued_at, next_attempt_at, attempts,
                    last_response",
        )
        .bind(now)
        .bind(i64::from(limit))
        .bind(lease_until)
        .bind(&lease)
        .fetch_all(&mut *self.hot_write().await?)
        .await
        .map_err(backend)?;
        rows.into_iter()
            .map(|row| claim_from_row(row, &lease))
            .collect()
    }

    async fn record_attempt(
        &self,
        claim: &Claim,
        outcome: AttemptOutcome,
        next_attempt_at: UnixTime,
        response: Option<&str>,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        let one = AttemptToRecord {
            claim: claim.clone(),
            outcome,
            next_attempt_at,
            response: response.map(str::to_owned),
            now,
        };
        self.record_attempts(std::slice::from_ref(&one))
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Backend("no result for the recorded attempt".to_owned())))
    }

    async fn record_attempts(&self, batch: &[AttemptToRecord]) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut results = Vec::with_capacity(batch.len());
        for item in batch {
            let entry = &item.claim.entry;
            let attempts: Option<(i64,)> = sqlx::query_as(
                "UPDATE outbound_queue
                    SET state = ?3, next_attempt_at = ?4, last_response = ?5, attempts = attempts + 1,
                        lease_until = NULL, lease_token = NULL
                  WHERE message_id = ?1 AND recipient = ?2 AND state = 'sending' AND lease_token = ?6
              RETURNING attempts",
            )
            .bind(&entry.message_id)
            .bind(&entry.recipient)
            .bind(item.outcome.as_str())
            .bind(item.next_attempt_at)
            .bind(item.response.as_deref())
            .bind(&item.claim.lease)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            let Some((attempt,)) = attempts else {
                results.push(Err(StoreError::Conflict {
                    what: format!(
                        "a newer lease on message {} for {}",
                        entry.message_id, entry.recipient
                    ),
                }));
                continue;
            };
            sqlx::query(
                "INSERT INTO outbound_attempts (message_id, recipient, attempt, at, outcome, response)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(&entry.message_id)
            .bind(&entry.recipient)
            .bind(attempt)
            .bind(item.now)
            .bind(item.outcome.as_str())
            .bind(item.response.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            results.push(Ok(0));
        }
        // What is left of each message, after every row of the batch moved.
        for (item, result) in batch.iter().zip(results.iter_mut()) {
            if let Ok(left) = result {
                let (unfinished,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM outbound_queue
                      WHERE message_id = ?1 AND state IN ('queued', 'sending', 'deferred')",
                )
                .bind(&item.claim.entry.message_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
                *left = count(unfinished);
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(results)
    }

    async fn renew_lease(&self, lease: &str, lease_until: UnixTime) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE outbound_queue SET lease_until = ?2 WHERE lease_token = ?1 AND state = 'sending'",
        )
        .bind(lease)
        .bind(lease_until)
        .execute(&mut *self.hot_write().await?)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn queue_show(&self, message_id: &str) -> Result<QueueDetail, StoreError> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT message_id, recipient, sender, state, size, queued_at, next_attempt_at, attempts, last_response
               FROM outbound_queue WHERE message_id = ?1 ORDER BY recipient",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        if rows.is_empty() {
            return Err(not_found(message_id));
        }
        let attempts: Vec<(String, i64, i64, String, Option<String>)> = sqlx::query_as(
            "SELECT recipient, attempt, at, outcome, response FROM outbound_attempts
              WHERE message_id = ?1 ORDER BY at, recipient, attempt",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(QueueDetail {
            message_id: message_id.to_owned(),
            recipients: rows
                .into_iter()
                .map(entry_from_row)
                .collect::<Result<_, _>>()?,
            attempts: attempts
                .into_iter()
                .map(
                    |(recipient, attempt, at, outcome, response)| AttemptRecord {
                        recipient,
                        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                        at,
                        outcome,
                        response,
                    },
                )
                .collect(),
        })
    }

    async fn queue_retry(&self, message_id: &str, now: UnixTime) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        queued_rows(&mut tx, message_id).await?;
        let done = sqlx::query(
            "UPDATE outbound_queue SET state = 'queued', next_attempt_at = ?2
              WHERE message_id = ?1 AND state IN ('queued', 'deferred')",
        )
        .bind(message_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn queue_delete(&self, message_id: &str) -> Result<(u64, u64), StoreError> {
        let mut tx = self.write_tx().await?;
        let rows = queued_rows(&mut tx, message_id).await?;
        let deleted =
            sqlx::query("DELETE FROM outbound_queue WHERE message_id = ?1 AND state <> 'sending'")
                .bind(message_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected();
        let remaining = count(rows).saturating_sub(deleted);
        if remaining == 0 {
            sqlx::query("DELETE FROM outbound_attempts WHERE message_id = ?1")
                .bind(message_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok((deleted, remaining))
    }

    async fn unfinished(&self, message_id: &str) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM outbound_queue
              WHERE message_id = ?1 AND state IN ('queued', 'sending', 'deferred')",
        )
        .bind(message_id)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(count(n))
    }

    async fn queue_counts(&self) -> Result<Vec<QueueStateCount>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM outbound_queue GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(state, n)| QueueStateCount {
                state,
                count: count(n),
            })
            .collect())
    }

    async fn list_queue(&self) -> Result<Vec<QueueEntry>, StoreError> {
        let rows: Vec<QueueRow> = sqlx::query_as(
            "SELECT message_id, recipient, sender, state, size, queued_at, next_attempt_at, attempts, last_response
               FROM outbound_queue
              ORDER BY queued_at, message_id, recipient",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(queue_entry_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::meta::NewOutbound;
    use crate::roles::*;

    async fn store_with_message(recipients: &[&str]) -> SqliteStore {
        let store = SqliteStore::open_in_memory().await.unwrap();
        store
            .enqueue_outbound(&NewOutbound {
                message_id: "01HMSG".into(),
                sender: "bot@agents.localhost".parse().unwrap(),
                owner: "0x00000000000000000000000000000000000000aa"
                    .parse()
                    .unwrap(),
                recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
                size: 10,
                queued_at: 100,
            })
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn a_claimed_row_is_not_claimed_again_until_its_lease_expires() {
        let store = store_with_message(&["a@example.com"]).await;
        assert!(
            store.claim_due(99, 10, 200).await.unwrap().is_empty(),
            "not due yet"
        );
        let first = store.claim_due(100, 10, 200).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].entry.state, "sending");
        assert!(
            store.claim_due(150, 10, 300).await.unwrap().is_empty(),
            "leased"
        );
        // The worker crashed: at the lease's end another claims it, and the old
        // lease can no longer record anything.
        let second = store.claim_due(200, 10, 400).await.unwrap();
        assert_eq!(second.len(), 1);
        let lost = store
            .record_attempt(&first[0], AttemptOutcome::Delivered, 0, Some("250 ok"), 201)
            .await;
        assert!(matches!(lost, Err(StoreError::Conflict { .. })), "{lost:?}");
        store
            .record_attempt(
                &second[0],
                AttemptOutcome::Delivered,
                0,
                Some("250 ok"),
                201,
            )
            .await
            .unwrap();
        let detail = store.queue_show("01HMSG").await.unwrap();
        assert_eq!(detail.recipients[0].state, "delivered");
        assert_eq!(detail.recipients[0].attempts, 1);
        assert_eq!(detail.attempts.len(), 1);
        assert_eq!(store.unfinished("01HMSG").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_renewed_lease_keeps_the_row_and_recording_counts_what_is_left() {
        let store = store_with_message(&["a@example.com", "b@example.com"]).await;
        let claims = store.claim_due(100, 1, 200).await.unwrap();
        assert_eq!(store.renew_lease(&claims[0].lease, 400).await.unwrap(), 1);
        assert_eq!(store.renew_lease("not-a-lease", 400).await.unwrap(), 0);
        let others = store.claim_due(250, 10, 500).await.unwrap();
        assert_eq!(others.len(), 1, "past the first lease, only the unclaimed row");
        assert_ne!(others[0].entry.recipient, claims[0].entry.recipient);
        let left = store
            .record_attempt(&claims[0], AttemptOutcome::Delivered, 0, Some("250 ok"), 260)
            .await
            .unwrap();
        assert_eq!(left, 1, "the other recipient is still being sent");
        let left = store
            .record_attempt(&others[0], AttemptOutcome::Bounced, 0, Some("550 no"), 261)
            .await
            .unwrap();
        assert_eq!(left, 0);
        assert_eq!(store.renew_lease(&claims[0].lease, 900).await.unwrap(), 0, "finished rows are not leased");
    }

    #[tokio::test]
    async fn deferred_rows_come_back_when_due_and_retry_makes_them_due_now() {
        let store = store_with_message(&["a@example.com", "b@example.com"]).await;
        let claims = store.claim_due(100, 1, 200).await.unwrap();
        assert_eq!(claims.len(), 1, "limit");
        store
            .record_attempt(
                &claims[0],
                AttemptOutcome::Deferred,
                500,
                Some("451 later"),
                101,
            )
            .await
            .unwrap();
        let other = store.claim_due(101, 10, 200).await.unwrap();
        assert_eq!(other.len(), 1);
        assert_ne!(other[0].entry.recipient, claims[0].entry.recipient);
        store
            .record_attempt(&other[0], AttemptOutcome::Bounced, 101, Some("550 no"), 101)
            .await
            .unwrap();
        assert!(store.claim_due(102, 10, 200).await.unwrap().is_empty());
        assert_eq!(
            store.queue_retry("01HMSG", 102).await.unwrap(),
            1,
            "bounced rows stay bounced"
        );
        let again = store.claim_due(102, 10, 200).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].entry.attempts, 1);
        let counts = store.queue_counts().await.unwrap();
        assert!(
            counts.contains(&QueueStateCount {
                state: "sending".into(),
                count: 1
            }),
            "{counts:?}"
        );
        assert!(matches!(
            store.queue_retry("nope", 1).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn delete_keeps_rows_being_sent() {
        let store = store_with_message(&["a@example.com", "b@example.com"]).await;
        let claims = store.claim_due(100, 1, 200).await.unwrap();
        assert_eq!(store.queue_delete("01HMSG").await.unwrap(), (1, 1));
        store
            .record_attempt(&claims[0], AttemptOutcome::Delivered, 0, None, 101)
            .await
            .unwrap();
        assert_eq!(store.queue_delete("01HMSG").await.unwrap(), (1, 0));
        assert!(matches!(
            store.queue_show("01HMSG").await,
            Err(StoreError::NotFound { .. })
        ));
    }
}
