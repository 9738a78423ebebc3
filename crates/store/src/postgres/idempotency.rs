//! [`SendIdempotency`] on PostgreSQL: a key is claimed by one `INSERT … ON
//! CONFLICT DO NOTHING`, so of two nodes claiming the same key at once exactly
//! one gets [`IdempotencyClaim::Claimed`] (the other waits for its row, then
//! reads it). A stale claim passes to a retry by one conditional `UPDATE`
//! (compare-and-set on the claim's message id, and only if that message was
//! not stored), so of two retries at once exactly one takes it over.

use agentkeys_core::UnixTime;
use async_trait::async_trait;

use super::meta::prune;
use super::{PgStore, backend, hex32};
use crate::idempotency::{
    FINISH_SQL, IDEMPOTENCY_KEY_TTL_SECS, IdempotencyClaim, IdempotencyScope, RELEASE_SQL, STORED_SQL, SendIdempotency, is_stale,
    stored,
};
use ulid::Ulid;
use crate::meta::StoreError;

/// How many times a claim retries when the row it collided with was released
/// (deleted) before it could be read.
const CLAIM_ATTEMPTS: u32 = 3;

#[async_trait]
impl SendIdempotency for PgStore {
    async fn claim(
        &self,
        scope: IdempotencyScope<'_>,
        body_hash: &[u8; 32],
        message_id: Ulid,
        now: UnixTime,
    ) -> Result<IdempotencyClaim, StoreError> {
        prune(&self.pool, "send_idempotency", "created_at <= $1", now.saturating_sub(IDEMPOTENCY_KEY_TTL_SECS)).await?;
        let (inbox, agent, key) = (scope.inbox.as_str(), scope.agent.as_str(), hex32(scope.key_hash));
        let body = hex32(body_hash);
        for _ in 0..CLAIM_ATTEMPTS {
            let inserted: Option<(i32,)> = sqlx::query_as(
                "INSERT INTO send_idempotency (inbox, agent, key_hash, body_hash, response, message_id, created_at)
                 VALUES ($1, $2, $3, $4, NULL, $5, $6)
                 ON CONFLICT (inbox, agent, key_hash) DO NOTHING RETURNING 1",
            )
            .bind(inbox)
            .bind(agent)
            .bind(&key)
            .bind(&body)
            .bind(message_id.to_string())
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            if inserted.is_some() {
                return Ok(IdempotencyClaim::Claimed);
            }
            let found: Option<(String, Option<String>, Option<String>, i64)> = sqlx::query_as(
                "SELECT body_hash, response, message_id, created_at FROM send_idempotency
                 WHERE inbox = $1 AND agent = $2 AND key_hash = $3",
            )
            .bind(inbox)
            .bind(agent)
            .bind(&key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            match found {
                Some((stored, _, _, _)) if stored != body => return Ok(IdempotencyClaim::Mismatch),
                Some((_, Some(response), _, _)) => return Ok(IdempotencyClaim::Replay(response)),
                Some((_, None, Some(earlier), created_at)) if is_stale(created_at, now) => {
                    let found =
                        sqlx::query_as(STORED_SQL).bind(&earlier).fetch_one(&self.pool).await.map_err(backend)?;
                    if let Some(claim) = stored(&earlier, found)? {
                        return Ok(claim);
                    }
                    // Take the claim over unless another retry did, or the
                    // message got stored after all (checked again, atomically).
                    let taken: Option<(i32,)> = sqlx::query_as(
                        "UPDATE send_idempotency SET message_id = $5, created_at = $6
                         WHERE inbox = $1 AND agent = $2 AND key_hash = $3 AND response IS NULL
                           AND message_id = $4 AND created_at = $7
                           AND NOT EXISTS (SELECT 1 FROM messages WHERE id = $4)
                           AND NOT EXISTS (SELECT 1 FROM outbound_queue WHERE message_id = $4)
                         RETURNING 1",
                    )
                    .bind(inbox)
                    .bind(agent)
                    .bind(&key)
                    .bind(&earlier)
                    .bind(message_id.to_string())
                    .bind(now)
                    .bind(created_at)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                    if taken.is_some() {
                        return Ok(IdempotencyClaim::Claimed);
                    }
                    // Someone else changed it: look again.
                }
                Some((_, None, _, _)) => return Ok(IdempotencyClaim::InProgress),
                // Released between the two statements: claim again.
                None => {}
            }
        }
        // Claimed and released over and over by others: as good as running now.
        Ok(IdempotencyClaim::InProgress)
    }

    async fn finish(&self, scope: IdempotencyScope<'_>, message_id: Ulid, response: &str) -> Result<(), StoreError> {
        sqlx::query(FINISH_SQL)
            .bind(scope.inbox.as_str())
            .bind(scope.agent.as_str())
            .bind(hex32(scope.key_hash))
            .bind(message_id.to_string())
            .bind(response)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn release(&self, scope: IdempotencyScope<'_>, message_id: Ulid) -> Result<(), StoreError> {
        sqlx::query(RELEASE_SQL)
        .bind(scope.inbox.as_str())
        .bind(scope.agent.as_str())
        .bind(hex32(scope.key_hash))
        .bind(message_id.to_string())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }
}
