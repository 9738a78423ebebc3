//! [`ConsoleViews`] on PostgreSQL: the SQLite statements with `$n` parameters.
//! A try is taken by one conditional `UPDATE … RETURNING`, which holds the row
//! lock until commit, so two nodes never hand out more than `limit` tries.

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::{Address, AgentId, InboxStatus, KeyId, OwnerId, UnixTime};
use async_trait::async_trait;

use super::audit::commit_audited;
use super::meta::insert_grant_in;
use super::{PgStore, backend, hex32, insert_error};
use crate::console_views::{
    ConsoleViews, GRANT_REQUEST_COLUMNS, GrantDecision, GrantRequestRecord, GrantRequestRow, KEY_USE_RESOLUTION_SECS,
    SENT_COLUMNS, check_decision, decided, grant_request_from_row, key_uses, tries,
};
use crate::meta::{QueueEntry, StoreError};
use crate::sqlite::{QueueRow, queue_entry_from_row, require_ok};

#[async_trait]
impl ConsoleViews for PgStore {
    async fn take_pairing_try(&self, code_hash: &[u8; 32], limit: u32) -> Result<Option<u32>, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE pairing_requests SET confirm_tries = confirm_tries + 1
              WHERE code_hash = $1 AND status = 'pending' AND confirm_tries < $2
              RETURNING confirm_tries",
        )
        .bind(hex32(code_hash))
        .bind(i64::from(limit))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(tries(row))
    }

    async fn record_key_use(&self, id: &KeyId, now: UnixTime) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE agent_keys SET last_used_at = $1
              WHERE id = $2 AND (last_used_at IS NULL OR last_used_at <= $1 - $3)",
        )
        .bind(now)
        .bind(id.as_str())
        .bind(KEY_USE_RESOLUTION_SECS)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn key_last_uses(&self, owner: &OwnerId, agent: &AgentId) -> Result<Vec<(KeyId, UnixTime)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT k.id, k.last_used_at FROM agent_keys k JOIN agents a ON a.id = k.agent
              WHERE k.agent = $1 AND a.owner = $2 AND k.last_used_at IS NOT NULL ORDER BY k.id",
        )
        .bind(agent.as_str())
        .bind(owner.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        key_uses(rows)
    }

    async fn sent_by_owner(
        &self,
        owner: &OwnerId,
        sender: Option<&Address>,
        limit: u32,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let rows: Vec<QueueRow> = sqlx::query_as(&format!(
            "SELECT {SENT_COLUMNS} FROM outbound_queue
              WHERE owner = $1 AND ($2::text IS NULL OR sender = $2)
              ORDER BY queued_at DESC, message_id DESC, recipient LIMIT $3"
        ))
        .bind(owner.as_str())
        .bind(sender.map(Address::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(queue_entry_from_row).collect()
    }

    async fn add_grant_request(
        &self,
        request: &GrantRequestRecord,
        pending_since: UnixTime,
        max_pending: u32,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        // The agent's row lock serializes its requests across nodes, so the
        // count below cannot be passed by two inserts at once.
        let mine: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM agents WHERE id = $1 AND owner = $2 FOR UPDATE")
            .bind(request.agent.as_str())
            .bind(request.owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if mine.is_none() {
            return Err(StoreError::NotFound { what: format!("agent {}", request.agent) });
        }
        let (pending,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM grant_requests WHERE agent = $1 AND status = 'pending' AND created_at >= $2",
        )
        .bind(request.agent.as_str())
        .bind(pending_since)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        if pending >= i64::from(max_pending) {
            return Err(StoreError::Conflict { what: format!("{max_pending} pending grant requests of agent {}", request.agent) });
        }
        sqlx::query(&format!(
            "INSERT INTO grant_requests ({GRANT_REQUEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', NULL, NULL)"
        ))
        .bind(&request.id)
        .bind(request.owner.as_str())
        .bind(request.agent.as_str())
        .bind(request.pattern.to_string())
        .bind(request.scopes.to_string())
        .bind(request.ttl)
        .bind(request.reason.as_deref())
        .bind(request.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, || format!("grant request {}", request.id)))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn pending_grant_requests(&self, owner: &OwnerId, since: UnixTime) -> Result<Vec<GrantRequestRecord>, StoreError> {
        let rows: Vec<GrantRequestRow> = sqlx::query_as(&format!(
            "SELECT {GRANT_REQUEST_COLUMNS} FROM grant_requests
              WHERE owner = $1 AND status = 'pending' AND created_at >= $2 ORDER BY created_at, id"
        ))
        .bind(owner.as_str())
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(grant_request_from_row).collect()
    }

    async fn decide_grant_request(
        &self,
        owner: &OwnerId,
        id: &str,
        since: UnixTime,
        decision: GrantDecision<'_>,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let (status, grant) = decided(decision);
        let row: Option<GrantRequestRow> = sqlx::query_as(&format!(
            "UPDATE grant_requests SET status = $1, decided_at = $2, grant_id = $3
              WHERE id = $4 AND owner = $5 AND status = 'pending' AND created_at >= $6
              RETURNING {GRANT_REQUEST_COLUMNS}"
        ))
        .bind(status.as_str())
        .bind(now)
        .bind(grant)
        .bind(id)
        .bind(owner.as_str())
        .bind(since)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let request = grant_request_from_row(row.ok_or_else(|| StoreError::NotFound { what: format!("grant request {id}") })?)?;
        check_decision(&request, decision)?;
        if let GrantDecision::Approve(g) = decision {
            insert_grant_in(&mut tx, g).await?;
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn set_owner_inbox_status(
        &self,
        owner: &OwnerId,
        address: &Address,
        status: InboxStatus,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE inboxes SET status = $1 WHERE address = $2 AND owner = $3")
            .bind(status.as_str())
            .bind(address.as_str())
            .bind(owner.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("inbox {address}") });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }
    async fn pairing_tries(&self, code_hash: &[u8; 32]) -> Result<u32, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT confirm_tries FROM pairing_requests WHERE code_hash = $1")
            .bind(hex32(code_hash))
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.map_or(0, |(n,)| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    async fn agent_grant_requests(&self, agent: &AgentId, since: UnixTime, limit: u32) -> Result<Vec<GrantRequestRecord>, StoreError> {
        let rows: Vec<GrantRequestRow> = sqlx::query_as(&format!(
            "SELECT {GRANT_REQUEST_COLUMNS} FROM grant_requests
              WHERE agent = $1 AND created_at >= $2 ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(agent.as_str())
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(grant_request_from_row).collect()
    }
}
