//! The outbound queue on PostgreSQL.
//!
//! **One attempt at a time per (message, recipient), across nodes.**
//! [`OutboundQueue::claim_due`] is one `UPDATE` whose rows come from a
//! `SELECT … FOR UPDATE SKIP LOCKED`: a row another runner is claiming right now
//! is skipped rather than waited for, and a row whose claim committed meanwhile
//! is re-checked against the due condition (PostgreSQL re-reads a locked row
//! before taking it), so it is no longer due. Each claim carries a fresh lease
//! token; only the token's holder can record the attempt, and a row whose lease
//! expired is claimable again.

use agentkeys_core::UnixTime;
use async_trait::async_trait;

use super::{PgStore, backend, insert_error};
use crate::enqueue::Queued;
use crate::meta::{QueueEntry, StoreError};
use crate::sqlite::{QueueRow, queue_entry_from_row};
use crate::queue::{
    AttemptOutcome, AttemptRecord, AttemptToRecord, Claim, ClaimRow, EntryRow, OutboundQueue, QueueDetail,
    QueueStateCount, claim_from_row, entry_from_row,
};

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn not_found(message_id: &str) -> StoreError {
    StoreError::NotFound { what: format!("queued message {message_id}") }
}

/// Queues every recipient row of `message` in one statement (atomic on its
/// own): all recipients or none. A duplicate is a `Conflict`.
pub(crate) async fn insert_outbound(store: &PgStore, message: &Queued) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbound_queue
            (message_id, recipient, sender, owner, state, size, queued_at, next_attempt_at, attempts)
         SELECT $1, r, $2, $3, 'queued', $4, $5, $5, 0 FROM unnest($6::text[]) AS r",
    )
    .bind(&message.message_id)
    .bind(message.sender.as_str())
    .bind(message.owner.as_str())
    .bind(message.size)
    .bind(message.queued_at)
    .bind(&message.recipients)
    .execute(&store.pool)
    .await
    .map_err(|e| insert_error(e, || message.conflict()))?;
    Ok(())
}

#[async_trait]
impl OutboundQueue for PgStore {
    async fn claim_due(&self, now: UnixTime, limit: u32, lease_until: UnixTime) -> Result<Vec<Claim>, StoreError> {
        let lease = ulid::Ulid::new().to_string();
        let rows: Vec<ClaimRow> = sqlx::query_as(
            "UPDATE outbound_queue q
                SET state = 'sending', lease_until = $3, lease_token = $4
               FROM (SELECT message_id, recipient FROM outbound_queue
                      WHERE (state IN ('queued', 'deferred') AND next_attempt_at <= $1)
                         OR (state = 'sending' AND lease_until <= $1)
                      ORDER BY next_attempt_at, message_id, recipient
                      LIMIT $2
                        FOR UPDATE SKIP LOCKED) due
              WHERE q.message_id = due.message_id AND q.recipient = due.recipient
          RETURNING q.message_id, q.recipient, q.sender, q.owner, q.state, q.size, q.queued_at, q.next_attempt_at,
                    q.attempts, q.last_response",
        )
        .bind(now)
        .bind(i64::from(limit))
        .bind(lease_until)
        .bind(&lease)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut claims = rows.into_iter().map(|row| claim_from_row(row, &lease)).collect::<Result<Vec<_>, _>>()?;
        // Oldest due first, as they were chosen (RETURNING has no order).
        claims.sort_by(|a, b| {
            (a.entry.next_attempt_at, &a.entry.message_id, &a.entry.recipient).cmp(&(
                b.entry.next_attempt_at,
                &b.entry.message_id,
                &b.entry.recipient,
            ))
        });
        Ok(claims)
    }

    async fn record_attempt(
        &self,
        claim: &Claim,
        outcome: AttemptOutcome,
        next_attempt_at: UnixTime,
        response: Option<&str>,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        let one = AttemptToRecord { claim: claim.clone(), outcome, next_attempt_at, response: response.map(str::to_owned), now };
        self.record_attempts(std::slice::from_ref(&one))
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Backend("no result for the recorded attempt".to_owned())))
    }

    async fn record_attempts(&self, batch: &[AttemptToRecord]) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        let mut tx = self.begin().await?;
        let mut results = Vec::with_capacity(batch.len());
        for item in batch {
            let entry = &item.claim.entry;
            let attempts: Option<(i64,)> = sqlx::query_as(
                "UPDATE outbound_queue
                    SET state = $3, next_attempt_at = $4, last_response = $5, attempts = attempts + 1,
                        lease_until = NULL, lease_token = NULL
                  WHERE message_id = $1 AND recipient = $2 AND state = 'sending' AND lease_token = $6
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
                    what: format!("a newer lease on message {} for {}", entry.message_id, entry.recipient),
                }));
                continue;
            };
            sqlx::query(
                "INSERT INTO outbound_attempts (message_id, recipient, attempt, at, outcome, response)
                 VALUES ($1, $2, $3, $4, $5, $6)",
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
                      WHERE message_id = $1 AND state IN ('queued', 'sending', 'deferred')",
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
        let done = sqlx::query("UPDATE outbound_queue SET lease_until = $2 WHERE lease_token = $1 AND state = 'sending'")
            .bind(lease)
            .bind(lease_until)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn queue_show(&self, message_id: &str) -> Result<QueueDetail, StoreError> {
        // One transaction, one snapshot: the rows and the attempts agree.
        let mut tx = self.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT message_id, recipient, sender, state, size, queued_at, next_attempt_at, attempts, last_response
               FROM outbound_queue WHERE message_id = $1 ORDER BY recipient",
        )
        .bind(message_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        if rows.is_empty() {
            return Err(not_found(message_id));
        }
        let attempts: Vec<(String, i64, i64, String, Option<String>)> = sqlx::query_as(
            "SELECT recipient, attempt, at, outcome, response FROM outbound_attempts
              WHERE message_id = $1 ORDER BY at, recipient, attempt",
        )
        .bind(message_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(QueueDetail {
            message_id: message_id.to_owned(),
            recipients: rows.into_iter().map(entry_from_row).collect::<Result<_, _>>()?,
            attempts: attempts
                .into_iter()
                .map(|(recipient, attempt, at, outcome, response)| AttemptRecord {
                    recipient,
                    attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                    at,
                    outcome,
                    response,
                })
                .collect(),
        })
    }

    async fn queue_retry(&self, message_id: &str, now: UnixTime) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbound_queue WHERE message_id = $1")
            .bind(message_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if rows == 0 {
            return Err(not_found(message_id));
        }
        let done = sqlx::query(
            "UPDATE outbound_queue SET state = 'queued', next_attempt_at = $2
              WHERE message_id = $1 AND state IN ('queued', 'deferred')",
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
        let mut tx = self.begin().await?;
        // Rows being claimed by a runner right now are left alone, like rows
        // being sent; `remaining` counts what is left after this statement.
        let deleted = sqlx::query(
            "DELETE FROM outbound_queue WHERE message_id = $1 AND state <> 'sending'
                AND ctid = ANY (ARRAY(SELECT ctid FROM outbound_queue WHERE message_id = $1 FOR UPDATE SKIP LOCKED))",
        )
        .bind(message_id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        let (remaining,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbound_queue WHERE message_id = $1")
            .bind(message_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let remaining = count(remaining);
        if deleted == 0 && remaining == 0 {
            return Err(not_found(message_id));
        }
        if remaining == 0 {
            sqlx::query("DELETE FROM outbound_attempts WHERE message_id = $1")
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
            "SELECT COUNT(*) FROM outbound_queue WHERE message_id = $1 AND state IN ('queued', 'sending', 'deferred')",
        )
        .bind(message_id)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(count(n))
    }

    async fn queue_counts(&self) -> Result<Vec<QueueStateCount>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM outbound_queue GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        Ok(rows.into_iter().map(|(state, n)| QueueStateCount { state, count: count(n) }).collect())
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
