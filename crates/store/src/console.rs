//! What the owner's web console keeps (issue 12): passkeys, one-time passkey
//! registration links, WebAuthn challenges and sign-in sessions
//! (migrations `sqlite/0019_console.sql`, `postgres/0009_console.sql`).
//!
//! The store knows no WebAuthn: a passkey and a challenge's state are the
//! relying-party library's JSON, opaque here. Secrets (a link's token, a
//! session's token) arrive already hashed (SHA-256) and are never stored in
//! clear. The contracts (`conformance.rs`): a challenge is taken once across
//! every handle on the store, a registration link registers one passkey, and
//! one owner never sees another's passkeys or sessions.

use agentkeys_audit::{AuditEvent, AuditReceipt, hash_to_hex};
use agentkeys_core::{AgentId, OwnerId, UnixTime};
use async_trait::async_trait;

use crate::meta::{PairingRecord, StoreError};
use crate::sqlite::{PairingRow, SqliteStore, backend, commit_audited, insert_error, pairing_from_row, require_ok};

/// A one-time passkey registration link as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyLinkRecord {
    /// SHA-256 of the link's token.
    pub token_hash: [u8; 32],
    /// The owner the passkey will sign in as.
    pub owner: OwnerId,
    /// From this second on the link is refused.
    pub expires_at: UnixTime,
}

/// A registered passkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyRecord {
    /// The credential id (base64url, as the relying-party library prints it).
    pub credential_id: String,
    /// Whose it is.
    pub owner: OwnerId,
    /// The owner's name for it.
    pub name: String,
    /// The relying-party library's serialized passkey (public key, counter).
    pub passkey: String,
    /// When it was registered.
    pub created_at: UnixTime,
    /// When it last signed an assertion.
    pub last_used_at: Option<UnixTime>,
}

/// A WebAuthn challenge waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRecord {
    /// Random id the browser sends back (not a secret: it is bound below).
    pub id: String,
    /// The owner it was issued to (`None` for a registration, which names its link).
    pub owner: Option<OwnerId>,
    /// What it is for: `register`, `sign-in` or `action`.
    pub purpose: String,
    /// What the answer must come with: the canonical hash of the gated action,
    /// or of the registration link (hex SHA-256).
    pub bound_to: [u8; 32],
    /// The relying-party library's serialized ceremony state.
    pub state: String,
    /// From this second on it cannot be taken.
    pub expires_at: UnixTime,
}

/// A signed-in console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the cookie's token.
    pub token_hash: [u8; 32],
    /// The signed-in owner.
    pub owner: OwnerId,
    /// When it was created.
    pub created_at: UnixTime,
    /// Last request seen; idle past the caller's timeout ends it.
    pub last_seen_at: UnixTime,
    /// Absolute end, whatever the activity.
    pub expires_at: UnixTime,
}

/// The console's storage. Every method is scoped: another owner's objects answer
/// exactly like missing ones.
#[async_trait]
pub trait Console: Send + Sync + 'static {
    /// Stores a registration link for `link.owner`, audited. `NotFound` if the
    /// owner is unknown.
    async fn issue_passkey_link(&self, link: &PasskeyLinkRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// The owner of an unused link that is not expired at `now`; `None` otherwise.
    async fn passkey_link_owner(&self, token_hash: &[u8; 32], now: UnixTime) -> Result<Option<OwnerId>, StoreError>;
    /// Spends the link (unused, unexpired at `now`, of `passkey.owner`) and
    /// stores the passkey, audited, in one transaction. `NotFound` (nothing
    /// changes) if the link is spent, expired, unknown or another owner's;
    /// `Conflict` if the credential is registered already.
    async fn add_passkey(
        &self,
        token_hash: &[u8; 32],
        passkey: &PasskeyRecord,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// The owner's passkeys, oldest first.
    async fn list_passkeys(&self, owner: &OwnerId) -> Result<Vec<PasskeyRecord>, StoreError>;
    /// Replaces a passkey's serialized state (its counter moved) and marks it
    /// used at `now`. `NotFound` if it is not one of `owner`'s.
    async fn update_passkey(
        &self,
        owner: &OwnerId,
        credential_id: &str,
        passkey: &str,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Stores a challenge; first deletes every challenge expired at `now`.
    /// `Conflict` if the id is taken.
    async fn put_challenge(&self, challenge: &ChallengeRecord, now: UnixTime) -> Result<(), StoreError>;
    /// Takes (deletes and returns) the challenge, once across every handle;
    /// `None` if unknown, taken before, or expired at `now`.
    async fn take_challenge(&self, id: &str, now: UnixTime) -> Result<Option<ChallengeRecord>, StoreError>;
    /// Stores a new session; first deletes every session expired at `now`.
    async fn create_session(&self, session: &SessionRecord, now: UnixTime) -> Result<(), StoreError>;
    /// The live session with this token hash, its `last_seen_at` moved to `now`:
    /// `None` if unknown, past its absolute end, or idle since before
    /// `idle_since` (then it is deleted).
    async fn touch_session(
        &self,
        token_hash: &[u8; 32],
        now: UnixTime,
        idle_since: UnixTime,
    ) -> Result<Option<SessionRecord>, StoreError>;
    /// Ends a session (signing out). Unknown tokens are not an error.
    async fn end_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError>;
    /// The pending pairing requests addressed to `owner` opened at or after
    /// `opened_since` (the caller's approval window), oldest first.
    async fn pending_pairings_for(&self, owner: &OwnerId, opened_since: UnixTime) -> Result<Vec<PairingRecord>, StoreError>;
    /// "Stop this agent": revokes every key and grant of `owner`'s `agent` at
    /// `now` (earlier revocations keep their time), audited, in one
    /// transaction; returns how many keys and grants this revoked. `NotFound`
    /// if the agent is not one of `owner`'s.
    async fn stop_owner_agent(
        &self,
        owner: &OwnerId,
        agent: &AgentId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<(AuditReceipt, u64, u64), StoreError>;
}

pub(crate) type PasskeyRow = (String, String, String, String, i64, Option<i64>);
pub(crate) type ChallengeRow = (String, Option<String>, String, String, String, i64);
pub(crate) type SessionRow = (String, String, i64, i64, i64);

pub(crate) const PASSKEY_COLUMNS: &str = "credential_id, owner, name, passkey, created_at, last_used_at";
pub(crate) const CHALLENGE_COLUMNS: &str = "id, owner, purpose, bound_to, state, expires_at";
/// The columns of a pairing request, in [`PairingRow`] order.
pub(crate) const PAIRING_COLUMNS: &str = "code_hash, device_key, agent, name, opened_at, status, owner, approved_at, addressed_to";
pub(crate) const SESSION_COLUMNS: &str = "token_hash, owner, created_at, last_seen_at, expires_at";

pub(crate) fn owner_from(s: &str) -> Result<OwnerId, StoreError> {
    s.parse().map_err(|_| StoreError::Backend(format!("stored console owner {s:?} is not an owner id")))
}

fn hash_from(s: &str) -> Result<[u8; 32], StoreError> {
    agentkeys_audit::hash_from_hex(s).ok_or_else(|| StoreError::Backend("stored console hash is not 64 hex digits".to_owned()))
}

pub(crate) fn passkey_from_row((credential_id, owner, name, passkey, created_at, last_used_at): PasskeyRow) -> Result<PasskeyRecord, StoreError> {
    Ok(PasskeyRecord { credential_id, owner: owner_from(&owner)?, name, passkey, created_at, last_used_at })
}

pub(crate) fn challenge_from_row((id, owner, purpose, bound_to, state, expires_at): ChallengeRow) -> Result<ChallengeRecord, StoreError> {
    Ok(ChallengeRecord {
        id,
        owner: owner.as_deref().map(owner_from).transpose()?,
        purpose,
        bound_to: hash_from(&bound_to)?,
        state,
        expires_at,
    })
}

pub(crate) fn session_from_row((token_hash, owner, created_at, last_seen_at, expires_at): SessionRow) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord { token_hash: hash_from(&token_hash)?, owner: owner_from(&owner)?, created_at, last_seen_at, expires_at })
}

#[async_trait]
impl Console for SqliteStore {
    async fn issue_passkey_link(&self, link: &PasskeyLinkRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let known: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = ?1")
            .bind(link.owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if known.is_none() {
            return Err(StoreError::NotFound { what: format!("owner {}", link.owner) });
        }
        sqlx::query("INSERT INTO console_passkey_links (token_hash, owner, expires_at) VALUES (?1, ?2, ?3)")
            .bind(hash_to_hex(&link.token_hash))
            .bind(link.owner.as_str())
            .bind(link.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || "a passkey link with this token".to_owned()))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn passkey_link_owner(&self, token_hash: &[u8; 32], now: UnixTime) -> Result<Option<OwnerId>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT owner FROM console_passkey_links WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2",
        )
        .bind(hash_to_hex(token_hash))
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|(o,)| owner_from(&o)).transpose()
    }

    async fn add_passkey(
        &self,
        token_hash: &[u8; 32],
        passkey: &PasskeyRecord,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let spent = sqlx::query(
            "UPDATE console_passkey_links SET used_at = ?1
              WHERE token_hash = ?2 AND owner = ?3 AND used_at IS NULL AND expires_at > ?1",
        )
        .bind(now)
        .bind(hash_to_hex(token_hash))
        .bind(passkey.owner.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if spent.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "passkey link".to_owned() });
        }
        sqlx::query(
            "INSERT INTO console_passkeys (credential_id, owner, name, passkey, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&passkey.credential_id)
        .bind(passkey.owner.as_str())
        .bind(&passkey.name)
        .bind(&passkey.passkey)
        .bind(passkey.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, || "this passkey".to_owned()))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn list_passkeys(&self, owner: &OwnerId) -> Result<Vec<PasskeyRecord>, StoreError> {
        let rows: Vec<PasskeyRow> = sqlx::query_as(&format!(
            "SELECT {PASSKEY_COLUMNS} FROM console_passkeys WHERE owner = ?1 ORDER BY created_at, credential_id"
        ))
        .bind(owner.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(passkey_from_row).collect()
    }

    async fn update_passkey(
        &self,
        owner: &OwnerId,
        credential_id: &str,
        passkey: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE console_passkeys SET passkey = ?1, last_used_at = ?2 WHERE credential_id = ?3 AND owner = ?4",
        )
        .bind(passkey)
        .bind(now)
        .bind(credential_id)
        .bind(owner.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "passkey".to_owned() });
        }
        tx.commit().await.map_err(backend)
    }

    async fn put_challenge(&self, challenge: &ChallengeRecord, now: UnixTime) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM console_challenges WHERE expires_at <= ?1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(&format!("INSERT INTO console_challenges ({CHALLENGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"))
            .bind(&challenge.id)
            .bind(challenge.owner.as_ref().map(OwnerId::as_str))
            .bind(&challenge.purpose)
            .bind(hash_to_hex(&challenge.bound_to))
            .bind(&challenge.state)
            .bind(challenge.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || "a challenge with this id".to_owned()))?;
        tx.commit().await.map_err(backend)
    }

    async fn take_challenge(&self, id: &str, now: UnixTime) -> Result<Option<ChallengeRecord>, StoreError> {
        let mut tx = self.write_tx().await?;
        let row: Option<ChallengeRow> =
            sqlx::query_as(&format!("DELETE FROM console_challenges WHERE id = ?1 RETURNING {CHALLENGE_COLUMNS}"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let found = row.map(challenge_from_row).transpose()?;
        Ok(found.filter(|c| c.expires_at > now))
    }

    async fn create_session(&self, session: &SessionRecord, now: UnixTime) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= ?1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(&format!("INSERT INTO console_sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"))
            .bind(hash_to_hex(&session.token_hash))
            .bind(session.owner.as_str())
            .bind(session.created_at)
            .bind(session.last_seen_at)
            .bind(session.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || "a session with this token".to_owned()))?;
        tx.commit().await.map_err(backend)
    }

    async fn touch_session(
        &self,
        token_hash: &[u8; 32],
        now: UnixTime,
        idle_since: UnixTime,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut tx = self.write_tx().await?;
        let hash = hash_to_hex(token_hash);
        let row: Option<SessionRow> = sqlx::query_as(&format!(
            "UPDATE console_sessions SET last_seen_at = ?1
              WHERE token_hash = ?2 AND expires_at > ?1 AND last_seen_at >= ?3
              RETURNING {SESSION_COLUMNS}"
        ))
        .bind(now)
        .bind(&hash)
        .bind(idle_since)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if row.is_none() {
            sqlx::query("DELETE FROM console_sessions WHERE token_hash = ?1").bind(&hash).execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        row.map(session_from_row).transpose()
    }

    async fn end_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = ?1")
            .bind(hash_to_hex(token_hash))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn pending_pairings_for(&self, owner: &OwnerId, opened_since: UnixTime) -> Result<Vec<PairingRecord>, StoreError> {
        let rows: Vec<PairingRow> = sqlx::query_as(&format!(
            "SELECT {PAIRING_COLUMNS} FROM pairing_requests
              WHERE addressed_to = ?1 AND status = 'pending' AND opened_at >= ?2 ORDER BY opened_at, code_hash"
        ))
        .bind(owner.as_str())
        .bind(opened_since)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(pairing_from_row).collect()
    }

    async fn stop_owner_agent(
        &self,
        owner: &OwnerId,
        agent: &AgentId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<(AuditReceipt, u64, u64), StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let mine: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM agents WHERE id = ?1 AND owner = ?2")
            .bind(agent.as_str())
            .bind(owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if mine.is_none() {
            return Err(StoreError::NotFound { what: format!("agent {agent}") });
        }
        let keys = sqlx::query("UPDATE agent_keys SET revoked_at = ?1 WHERE agent = ?2 AND revoked_at IS NULL")
            .bind(now)
            .bind(agent.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        let grants = sqlx::query("UPDATE grants SET revoked_at = ?1 WHERE agent = ?2 AND owner = ?3 AND revoked_at IS NULL")
            .bind(now)
            .bind(agent.as_str())
            .bind(owner.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        let sealed = self.append_in(&mut tx, event).await?;
        Ok((commit_audited(tx, sealed).await?, keys, grants))
    }
}
