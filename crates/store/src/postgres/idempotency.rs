//! [`SendIdempotency`] on PostgreSQL: a key is claimed by one `INSERT … ON
//! CONFLICT DO NOTHING`, so of two nodes claiming the same key at once exactly
//! one gets [`IdempotencyClaim::Claimed`] (the other waits for its row, then
//! reads it).

use agentkeys_core::UnixTime;
use async_trait::async_trait;

use super::meta::prune;
use super::{PgStore, backend, hex32};
use crate::idempotency::{IDEMPOTENCY_KEY_TTL_SECS, IdempotencyClaim, IdempotencyScope, SendIdempotency};
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
        now: UnixTime,
    ) -> Result<IdempotencyClaim, StoreError> {
        prune(&self.pool, "send_idempotency", "created_at <= $1", now.saturating_sub(IDEMPOTENCY_KEY_TTL_SECS)).await?;
        let (inbox, agent, key) = (scope.inbox.as_str(), scope.agent.as_str(), hex32(scope.key_hash));
        let body = hex32(body_hash);
        for _ in 0..CLAIM_ATTEMPTS {
            let inserted: Option<(i32,)> = sqlx::query_as(
                "INSERT INTO send_idempotency (inbox, agent, key_hash, body_hash, response, created_at)
                 VALUES ($1, $2, $3, $4, NULL, $5)
                 ON CONFLICT (inbox, agent, key_hash) DO NOTHING RETURNING 1",
            )
            .bind(inbox)
            .bind(agent)
            .bind(&key)
            .bind(&body)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            if inserted.is_some() {
                return Ok(IdempotencyClaim::Claimed);
            }
            let found: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT body_hash, response FROM send_idempotency WHERE inbox = $1 AND agent = $2 AND key_hash = $3",
            )
            .bind(inbox)
            .bind(agent)
            .bind(&key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            match found {
                Some((stored, _)) if stored != body => return Ok(IdempotencyClaim::Mismatch),
                Some((_, Some(response))) => return Ok(IdempotencyClaim::Replay(response)),
                Some((_, None)) => return Ok(IdempotencyClaim::InProgress),
                // Released between the two statements: claim again.
                None => {}
            }
        }
        // Claimed and released over and over by others: as good as running now.
        Ok(IdempotencyClaim::InProgress)
    }

    async fn finish(&self, scope: IdempotencyScope<'_>, response: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE send_idempotency SET response = $4 WHERE inbox = $1 AND agent = $2 AND key_hash = $3")
            .bind(scope.inbox.as_str())
            .bind(scope.agent.as_str())
            .bind(hex32(scope.key_hash))
            .bind(response)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn release(&self, scope: IdempotencyScope<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM send_idempotency WHERE inbox = $1 AND agent = $2 AND key_hash = $3 AND response IS NULL",
        )
        .bind(scope.inbox.as_str())
        .bind(scope.agent.as_str())
        .bind(hex32(scope.key_hash))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }
}
