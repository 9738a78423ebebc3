//! Idempotency keys of the HTTP send route (`Idempotency-Key`, issue 11 §5): a
//! retried send with the same key and the same request answers the first
//! response instead of mailing again. A separate trait from
//! [`MetadataStore`](crate::MetadataStore): only the send route uses it.

use agentkeys_core::{Address, AgentId, UnixTime};
use async_trait::async_trait;

use crate::meta::StoreError;
use crate::sqlite::{SqliteStore, backend};

/// How long a key is kept: a retry within this window is answered from the
/// first response; after it the key is forgotten and may be used again.
pub const IDEMPOTENCY_KEY_TTL_SECS: i64 = 24 * 3600;

/// One key, scoped to the inbox and the agent sending from it; hashes only.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyScope<'a> {
    /// The inbox sending.
    pub inbox: &'a Address,
    /// The agent whose key was presented.
    pub agent: &'a AgentId,
    /// SHA-256 of the client's key.
    pub key_hash: &'a [u8; 32],
}

/// What [`SendIdempotency::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// First use: recorded as running; send, then [`SendIdempotency::finish`]
    /// (or [`SendIdempotency::release`] when nothing was sent).
    Claimed,
    /// The same key and request were answered before: this is that answer.
    Replay(String),
    /// The same key and request are being sent now, or a server failure left
    /// the outcome unknown: nothing is sent again.
    InProgress,
    /// The key was used with another request.
    Mismatch,
}

/// Stores idempotency keys of the send route.
#[async_trait]
pub trait SendIdempotency: Send + Sync + 'static {
    /// Claims `scope`'s key for a request hashing to `body_hash`, first deleting
    /// every key older than [`IDEMPOTENCY_KEY_TTL_SECS`] before `now`. Atomic
    /// across processes sharing the database.
    async fn claim(
        &self,
        scope: IdempotencyScope<'_>,
        body_hash: &[u8; 32],
        now: UnixTime,
    ) -> Result<IdempotencyClaim, StoreError>;
    /// Records the answer of a claimed key.
    async fn finish(&self, scope: IdempotencyScope<'_>, response: &str) -> Result<(), StoreError>;
    /// Forgets a claimed key whose request sent nothing (refused or failed), so
    /// a corrected retry may use it.
    async fn release(&self, scope: IdempotencyScope<'_>) -> Result<(), StoreError>;
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl SendIdempotency for SqliteStore {
    async fn claim(
        &self,
        scope: IdempotencyScope<'_>,
        body_hash: &[u8; 32],
        now: UnixTime,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM send_idempotency WHERE created_at <= ?1")
            .bind(now.saturating_sub(IDEMPOTENCY_KEY_TTL_SECS))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let found: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT body_hash, response FROM send_idempotency WHERE inbox = ?1 AND agent = ?2 AND key_hash = ?3",
        )
        .bind(scope.inbox.as_str())
        .bind(scope.agent.as_str())
        .bind(hex(scope.key_hash))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let claim = match found {
            Some((stored, _)) if stored != hex(body_hash) => IdempotencyClaim::Mismatch,
            Some((_, Some(response))) => IdempotencyClaim::Replay(response),
            Some((_, None)) => IdempotencyClaim::InProgress,
            None => {
                sqlx::query(
                    "INSERT INTO send_idempotency (inbox, agent, key_hash, body_hash, response, created_at)
                     VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
                )
                .bind(scope.inbox.as_str())
                .bind(scope.agent.as_str())
                .bind(hex(scope.key_hash))
                .bind(hex(body_hash))
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                IdempotencyClaim::Claimed
            }
        };
        tx.commit().await.map_err(backend)?;
        Ok(claim)
    }

    async fn finish(&self, scope: IdempotencyScope<'_>, response: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE send_idempotency SET response = ?4 WHERE inbox = ?1 AND agent = ?2 AND key_hash = ?3")
            .bind(scope.inbox.as_str())
            .bind(scope.agent.as_str())
            .bind(hex(scope.key_hash))
            .bind(response)
            .execute(&mut *self.hot_write().await?)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn release(&self, scope: IdempotencyScope<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM send_idempotency WHERE inbox = ?1 AND agent = ?2 AND key_hash = ?3 AND response IS NULL",
        )
        .bind(scope.inbox.as_str())
        .bind(scope.agent.as_str())
        .bind(hex(scope.key_hash))
        .execute(&mut *self.hot_write().await?)
        .await
        .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_key_is_claimed_once_replayed_refused_for_another_body_and_forgotten_after_a_day() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let inbox: Address = "bot@agents.localhost".parse().unwrap();
        let other_inbox: Address = "other@agents.localhost".parse().unwrap();
        let agent: AgentId = "0xa100000000000000000000000000000000000001".parse().unwrap();
        let key = [1u8; 32];
        let scope = IdempotencyScope { inbox: &inbox, agent: &agent, key_hash: &key };
        let (body, other_body) = ([2u8; 32], [3u8; 32]);
        let t0 = 1_000_000;
        assert_eq!(store.claim(scope, &body, t0).await.unwrap(), IdempotencyClaim::Claimed);
        assert_eq!(store.claim(scope, &body, t0).await.unwrap(), IdempotencyClaim::InProgress);
        assert_eq!(store.claim(scope, &other_body, t0).await.unwrap(), IdempotencyClaim::Mismatch);
        // Another inbox's key space is its own.
        let elsewhere = IdempotencyScope { inbox: &other_inbox, ..scope };
        assert_eq!(store.claim(elsewhere, &other_body, t0).await.unwrap(), IdempotencyClaim::Claimed);
        store.finish(scope, "{\"message_id\":\"x\"}").await.unwrap();
        // Release never forgets a finished key.
        store.release(scope).await.unwrap();
        let replay = IdempotencyClaim::Replay("{\"message_id\":\"x\"}".to_owned());
        assert_eq!(store.claim(scope, &body, t0 + IDEMPOTENCY_KEY_TTL_SECS - 1).await.unwrap(), replay);
        assert_eq!(store.claim(scope, &body, t0 + IDEMPOTENCY_KEY_TTL_SECS).await.unwrap(), IdempotencyClaim::Claimed);
        // A released claim may be claimed again, with another body.
        store.release(scope).await.unwrap();
        assert_eq!(store.claim(scope, &other_body, t0 + IDEMPOTENCY_KEY_TTL_SECS).await.unwrap(), IdempotencyClaim::Claimed);
    }
}
