//! Idempotency keys of the HTTP send route (`Idempotency-Key`, issue 11 §5): a
//! retried send with the same key and the same request answers the first
//! response instead of mailing again. A separate trait from
//! [`MetadataStore`](crate::MetadataStore): only the send route uses it.

use agentkeys_core::{Address, AgentId, UnixTime};
use async_trait::async_trait;
use ulid::Ulid;

use crate::meta::StoreError;
use crate::sqlite::{SqliteStore, backend};

/// How long a key is kept: a retry within this window is answered from the
/// first response; after it the key is forgotten and may be used again.
pub const IDEMPOTENCY_KEY_TTL_SECS: i64 = 24 * 3600;

/// A claim not finished or released this many seconds after it was made is
/// stale: its node died (or hung) mid-send, and the claim is resolved by what
/// was stored. A live send stores its message well within this: the message
/// index refuses a message older than [`ACK_WINDOW_SECS`](crate::ACK_WINDOW_SECS),
/// and this adds the clock margin [`CLOCK_SKEW_SECS`](crate::CLOCK_SKEW_SECS).
pub const STALE_CLAIM_SECS: i64 = crate::ACK_WINDOW_SECS + crate::CLOCK_SKEW_SECS;

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
    /// The same key and request are being sent now (claimed less than
    /// [`STALE_CLAIM_SECS`] ago, or before claims recorded their message):
    /// nothing is sent again.
    InProgress,
    /// A stale claim (its send died) whose message was stored: it is in the
    /// message index or the outbound queue under id `message`. Nothing is
    /// stored again; the answer is this message's, recorded with
    /// [`SendIdempotency::finish`]. A send that died between its index commit
    /// and queueing its remote recipients left `queued` false: the retry
    /// queues them (the queue copy was written with the inbox copies), under
    /// the same id, which the queue accepts once.
    Stored {
        /// The message the dead send stored.
        message: Ulid,
        /// Whether it is in the outbound queue.
        queued: bool,
    },
    /// The key was used with another request.
    Mismatch,
}

/// Stores idempotency keys of the send route.
#[async_trait]
pub trait SendIdempotency: Send + Sync + 'static {
    /// Claims `scope`'s key for a request hashing to `body_hash`, whose send
    /// will store message `message_id`, first deleting every key older than
    /// [`IDEMPOTENCY_KEY_TTL_SECS`] before `now`. Atomic across processes
    /// sharing the database.
    ///
    /// A claim of the same request left unfinished for [`STALE_CLAIM_SECS`] is
    /// resolved by what was stored: [`IdempotencyClaim::Stored`] with its
    /// message id if that id is in the message index or the outbound queue,
    /// else the claim passes to this request ([`IdempotencyClaim::Claimed`],
    /// now with `message_id`), once across processes.
    async fn claim(
        &self,
        scope: IdempotencyScope<'_>,
        body_hash: &[u8; 32],
        message_id: Ulid,
        now: UnixTime,
    ) -> Result<IdempotencyClaim, StoreError>;
    /// Records the answer of `scope`'s claim for message `message_id` (a claim
    /// taken over by a retry, now for another message, is left alone).
    async fn finish(&self, scope: IdempotencyScope<'_>, message_id: Ulid, response: &str) -> Result<(), StoreError>;
    /// Forgets `scope`'s unfinished claim for message `message_id` whose request
    /// failed, so a corrected retry may use it, unless that message was stored
    /// (indexed or queued, even in part: a retry must get `Stored`, never send
    /// it again) or the claim was taken over for another message. Atomic with
    /// that check across processes.
    async fn release(&self, scope: IdempotencyScope<'_>, message_id: Ulid) -> Result<(), StoreError>;
}

/// Whether a claim made at `created_at` is stale at `now` ([`STALE_CLAIM_SECS`]).
pub(crate) fn is_stale(created_at: UnixTime, now: UnixTime) -> bool {
    created_at <= now.saturating_sub(STALE_CLAIM_SECS)
}

/// Whether message `$1` was indexed (in any inbox), and whether it was queued.
pub(crate) const STORED_SQL: &str = "SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1),
     EXISTS (SELECT 1 FROM outbound_queue WHERE message_id = $1)";

/// The claim of a stale send whose message was (`indexed`, `queued`) stored, if any part was.
pub(crate) fn stored(message: &str, (indexed, queued): (bool, bool)) -> Result<Option<IdempotencyClaim>, StoreError> {
    Ok(if indexed || queued { Some(IdempotencyClaim::Stored { message: parse_id(message)?, queued }) } else { None })
}

/// [`SendIdempotency::finish`] on both backends (`$1`-`$3` the scope, `$4` the
/// message id, `$5` the answer).
pub(crate) const FINISH_SQL: &str = "UPDATE send_idempotency SET response = $5
     WHERE inbox = $1 AND agent = $2 AND key_hash = $3 AND message_id = $4";

/// [`SendIdempotency::release`] on both backends (`$1`-`$3` the scope, `$4` the
/// message id): one statement, so the "not stored" check and the removal are
/// one atomic step.
pub(crate) const RELEASE_SQL: &str = "DELETE FROM send_idempotency
     WHERE inbox = $1 AND agent = $2 AND key_hash = $3 AND message_id = $4 AND response IS NULL
       AND NOT EXISTS (SELECT 1 FROM messages WHERE id = $4)
       AND NOT EXISTS (SELECT 1 FROM outbound_queue WHERE message_id = $4)";

/// A stored claim's message id.
fn parse_id(text: &str) -> Result<Ulid, StoreError> {
    text.parse().map_err(|e| StoreError::Backend(format!("idempotency claim with message id {text:?}: {e}")))
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
        message_id: Ulid,
        now: UnixTime,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM send_idempotency WHERE created_at <= ?1")
            .bind(now.saturating_sub(IDEMPOTENCY_KEY_TTL_SECS))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let found: Option<(String, Option<String>, Option<String>, i64)> = sqlx::query_as(
            "SELECT body_hash, response, message_id, created_at FROM send_idempotency
             WHERE inbox = ?1 AND agent = ?2 AND key_hash = ?3",
        )
        .bind(scope.inbox.as_str())
        .bind(scope.agent.as_str())
        .bind(hex(scope.key_hash))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let claim = match found {
            Some((stored, _, _, _)) if stored != hex(body_hash) => IdempotencyClaim::Mismatch,
            Some((_, Some(response), _, _)) => IdempotencyClaim::Replay(response),
            Some((_, None, Some(earlier), created_at)) if is_stale(created_at, now) => {
                // SQLite's one writer: nothing stores or takes over meanwhile.
                let found = sqlx::query_as(STORED_SQL).bind(&earlier).fetch_one(&mut *tx).await.map_err(backend)?;
                if let Some(claim) = stored(&earlier, found)? {
                    claim
                } else {
                    sqlx::query(
                        "UPDATE send_idempotency SET message_id = ?4, created_at = ?5
                         WHERE inbox = ?1 AND agent = ?2 AND key_hash = ?3",
                    )
                    .bind(scope.inbox.as_str())
                    .bind(scope.agent.as_str())
                    .bind(hex(scope.key_hash))
                    .bind(message_id.to_string())
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                    IdempotencyClaim::Claimed
                }
            }
            Some((_, None, _, _)) => IdempotencyClaim::InProgress,
            None => {
                sqlx::query(
                    "INSERT INTO send_idempotency (inbox, agent, key_hash, body_hash, response, message_id, created_at)
                     VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6)",
                )
                .bind(scope.inbox.as_str())
                .bind(scope.agent.as_str())
                .bind(hex(scope.key_hash))
                .bind(hex(body_hash))
                .bind(message_id.to_string())
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

    async fn finish(&self, scope: IdempotencyScope<'_>, message_id: Ulid, response: &str) -> Result<(), StoreError> {
        sqlx::query(FINISH_SQL)
            .bind(scope.inbox.as_str())
            .bind(scope.agent.as_str())
            .bind(hex(scope.key_hash))
            .bind(message_id.to_string())
            .bind(response)
            .execute(&mut *self.hot_write().await?)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn release(&self, scope: IdempotencyScope<'_>, message_id: Ulid) -> Result<(), StoreError> {
        sqlx::query(RELEASE_SQL)
            .bind(scope.inbox.as_str())
            .bind(scope.agent.as_str())
            .bind(hex(scope.key_hash))
            .bind(message_id.to_string())
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
        let id = Ulid::new();
        assert_eq!(store.claim(scope, &body, id, t0).await.unwrap(), IdempotencyClaim::Claimed);
        assert_eq!(store.claim(scope, &body, id, t0).await.unwrap(), IdempotencyClaim::InProgress);
        assert_eq!(store.claim(scope, &other_body, id, t0).await.unwrap(), IdempotencyClaim::Mismatch);
        // Another inbox's key space is its own.
        let elsewhere = IdempotencyScope { inbox: &other_inbox, ..scope };
        assert_eq!(store.claim(elsewhere, &other_body, id, t0).await.unwrap(), IdempotencyClaim::Claimed);
        store.finish(scope, id, "{\"message_id\":\"x\"}").await.unwrap();
        // Release never forgets a finished key.
        store.release(scope, id).await.unwrap();
        let replay = IdempotencyClaim::Replay("{\"message_id\":\"x\"}".to_owned());
        assert_eq!(store.claim(scope, &body, id, t0 + IDEMPOTENCY_KEY_TTL_SECS - 1).await.unwrap(), replay);
        assert_eq!(store.claim(scope, &body, id, t0 + IDEMPOTENCY_KEY_TTL_SECS).await.unwrap(), IdempotencyClaim::Claimed);
        // A released claim may be claimed again, with another body.
        store.release(scope, id).await.unwrap();
        assert_eq!(store.claim(scope, &other_body, id, t0 + IDEMPOTENCY_KEY_TTL_SECS).await.unwrap(), IdempotencyClaim::Claimed);
    }
}
