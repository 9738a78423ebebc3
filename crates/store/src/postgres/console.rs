//! [`Console`] on PostgreSQL: the SQLite statements with `$n` parameters. A
//! challenge is taken by one `DELETE … RETURNING`, so of two nodes taking the
//! same challenge at once exactly one gets it (the other's statement waits for
//! the row lock and then finds no row).

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::{AgentId, OwnerId, UnixTime};
use async_trait::async_trait;

use super::audit::commit_audited;
use super::{PgStore, backend, hex32, insert_error};
use crate::console::{
    CHALLENGE_COLUMNS, ChallengeRecord, ChallengeRow, Console, PASSKEY_COLUMNS, PasskeyLinkRecord, PasskeyRecord,
    PasskeyRow, SESSION_COLUMNS, SessionRecord, SessionRow, challenge_from_row, owner_from, passkey_from_row,
    session_from_row, PAIRING_COLUMNS,
};
use crate::meta::{PairingRecord, StoreError};
use crate::sqlite::{PairingRow, pairing_from_row, require_ok};

#[async_trait]
impl Console for PgStore {
    async fn issue_passkey_link(&self, link: &PasskeyLinkRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let known: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = $1")
            .bind(link.owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if known.is_none() {
            return Err(StoreError::NotFound { what: format!("owner {}", link.owner) });
        }
        sqlx::query("INSERT INTO console_passkey_links (token_hash, owner, expires_at) VALUES ($1, $2, $3)")
            .bind(hex32(&link.token_hash))
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
            "SELECT owner FROM console_passkey_links WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(hex32(token_hash))
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
        let mut tx = self.begin().await?;
        let spent = sqlx::query(
            "UPDATE console_passkey_links SET used_at = $1
              WHERE token_hash = $2 AND owner = $3 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(hex32(token_hash))
        .bind(passkey.owner.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if spent.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "passkey link".to_owned() });
        }
        sqlx::query(
            "INSERT INTO console_passkeys (credential_id, owner, name, passkey, created_at) VALUES ($1, $2, $3, $4, $5)",
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
            "SELECT {PASSKEY_COLUMNS} FROM console_passkeys WHERE owner = $1 ORDER BY created_at, credential_id"
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
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE console_passkeys SET passkey = $1, last_used_at = $2 WHERE credential_id = $3 AND owner = $4",
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
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM console_challenges WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(&format!("INSERT INTO console_challenges ({CHALLENGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"))
            .bind(&challenge.id)
            .bind(challenge.owner.as_ref().map(OwnerId::as_str))
            .bind(&challenge.purpose)
            .bind(hex32(&challenge.bound_to))
            .bind(&challenge.state)
            .bind(challenge.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || "a challenge with this id".to_owned()))?;
        tx.commit().await.map_err(backend)
    }

    async fn take_challenge(&self, id: &str, now: UnixTime) -> Result<Option<ChallengeRecord>, StoreError> {
        let mut tx = self.begin().await?;
        let row: Option<ChallengeRow> =
            sqlx::query_as(&format!("DELETE FROM console_challenges WHERE id = $1 RETURNING {CHALLENGE_COLUMNS}"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let found = row.map(challenge_from_row).transpose()?;
        Ok(found.filter(|c| c.expires_at > now))
    }

    async fn create_session(&self, session: &SessionRecord, now: UnixTime) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(&format!("INSERT INTO console_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"))
            .bind(hex32(&session.token_hash))
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
        let mut tx = self.begin().await?;
        let hash = hex32(token_hash);
        let row: Option<SessionRow> = sqlx::query_as(&format!(
            "UPDATE console_sessions SET last_seen_at = $1
              WHERE token_hash = $2 AND expires_at > $1 AND last_seen_at >= $3
              RETURNING {SESSION_COLUMNS}"
        ))
        .bind(now)
        .bind(&hash)
        .bind(idle_since)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if row.is_none() {
            sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1").bind(&hash).execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        row.map(session_from_row).transpose()
    }

    async fn end_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(hex32(token_hash))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn pending_pairings_for(&self, owner: &OwnerId, opened_since: UnixTime) -> Result<Vec<PairingRecord>, StoreError> {
        let rows: Vec<PairingRow> = sqlx::query_as(&format!(
            "SELECT {PAIRING_COLUMNS} FROM pairing_requests
              WHERE addressed_to = $1 AND status = 'pending' AND opened_at >= $2 ORDER BY opened_at, code_hash"
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
        let mut tx = self.begin().await?;
        let mine: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM agents WHERE id = $1 AND owner = $2")
            .bind(agent.as_str())
            .bind(owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if mine.is_none() {
            return Err(StoreError::NotFound { what: format!("agent {agent}") });
        }
        let keys = sqlx::query("UPDATE agent_keys SET revoked_at = $1 WHERE agent = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(agent.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        let grants = sqlx::query("UPDATE grants SET revoked_at = $1 WHERE agent = $2 AND owner = $3 AND revoked_at IS NULL")
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
