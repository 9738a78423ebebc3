//! What the owner's console reads and changes beyond sign-in (issue 12, second
//! part; migrations `sqlite/0024_console_views.sql`, `postgres/0014_console_views.sql`):
//! the tries of a pairing request's 6 digits, when each agent key last minted,
//! the owner's sent mail (outbound queue rows), an inbox's status changed by
//! its owner, and the grants agents ask their owner for.
//!
//! The contracts (`conformance/console_views.rs`): a pairing request gives out
//! at most `limit` tries in total, across every handle, and only while it is
//! pending; a key's use is written at most once per [`KEY_USE_RESOLUTION_SECS`];
//! one owner never sees another's keys' uses or sent mail, nor changes another's
//! inbox or decides another's grant request (answered like a missing one); a
//! grant request is decided once, and an approval inserts its grant in the same
//! transaction, under the checks every grant passes.

use agentkeys_audit::{AuditEvent, AuditReceipt, hash_to_hex};
use agentkeys_core::{Address, AgentId, Grant, GrantId, InboxPattern, InboxStatus, KeyId, OwnerId, Scopes, UnixTime};
use async_trait::async_trait;

use crate::meta::{QueueEntry, StoreError};
use crate::sqlite::{QueueRow, SqliteStore, backend, commit_audited, insert_error, insert_grant_in, queue_entry_from_row, require_ok, stored};

/// A key's last use is recorded at this resolution: a use within this many
/// seconds of the recorded one writes nothing.
pub const KEY_USE_RESOLUTION_SECS: i64 = 60;

/// Where a grant request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRequestStatus {
    /// Waiting for the owner.
    Pending,
    /// The owner approved it; its grant exists.
    Approved,
    /// The owner denied it.
    Denied,
}

impl GrantRequestStatus {
    /// The stored text: `pending`, `approved`, `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "pending" => Ok(Self::Pending),
            "approved" => Ok(Self::Approved),
            "denied" => Ok(Self::Denied),
            other => Err(StoreError::Backend(format!("stored grant request status {other:?} is not one we write"))),
        }
    }
}

/// A grant an agent asked its owner for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequestRecord {
    /// `ar_` + 16 base62 characters.
    pub id: String,
    /// The agent's owner, who decides.
    pub owner: OwnerId,
    /// The asking agent.
    pub agent: AgentId,
    /// The inboxes asked for.
    pub pattern: InboxPattern,
    /// The scopes asked for.
    pub scopes: Scopes,
    /// The lifetime asked for, in seconds.
    pub ttl: i64,
    /// Why, in the agent's words (shown to the owner as text).
    pub reason: Option<String>,
    /// When it was asked.
    pub created_at: UnixTime,
    /// Where it stands.
    pub status: GrantRequestStatus,
    /// When the owner decided.
    pub decided_at: Option<UnixTime>,
    /// The grant an approval created.
    pub grant: Option<GrantId>,
}

/// What the owner decided about a grant request.
#[derive(Debug, Clone, Copy)]
pub enum GrantDecision<'g> {
    /// Approved: this grant (the request's agent, owner, pattern and scopes) is created.
    Approve(&'g Grant),
    /// Denied: nothing is created.
    Deny,
}

/// The console's reads and owner-scoped changes that [`Console`](crate::Console)
/// does not cover. Every method is scoped to one owner where an owner is named:
/// another owner's objects answer exactly like missing ones.
#[async_trait]
pub trait ConsoleViews: Send + Sync + 'static {
    /// Takes one try of a pending pairing request's 6 digits, if fewer than
    /// `limit` were taken: the number of tries taken now (1 for the first).
    /// `None` (nothing changes) if the request is not pending, unknown, or its
    /// `limit` tries are spent. Across handles, at most `limit` tries are ever
    /// given out.
    async fn take_pairing_try(&self, code_hash: &[u8; 32], limit: u32) -> Result<Option<u32>, StoreError>;
    /// Records that key `id` minted at `now`, unless a use after
    /// `now - KEY_USE_RESOLUTION_SECS` is recorded already; whether it wrote.
    /// An unknown key is not an error (false).
    async fn record_key_use(&self, id: &KeyId, now: UnixTime) -> Result<bool, StoreError>;
    /// The last recorded use of each key of `owner`'s `agent` that has one
    /// (empty for another owner's agent).
    async fn key_last_uses(&self, owner: &OwnerId, agent: &AgentId) -> Result<Vec<(KeyId, UnixTime)>, StoreError>;
    /// `owner`'s outbound queue rows (the mail their agents sent to other
    /// servers, with delivery state and last reply), newest first, at most
    /// `limit`; only those of `sender` when given.
    async fn sent_by_owner(
        &self,
        owner: &OwnerId,
        sender: Option<&Address>,
        limit: u32,
    ) -> Result<Vec<QueueEntry>, StoreError>;
    /// Stores a pending grant request of `request.agent`, audited. `NotFound`
    /// if the agent is not `request.owner`'s; `Conflict` (nothing stored) if
    /// the agent has `max_pending` pending requests made at or after
    /// `pending_since` already, or the id is taken.
    async fn add_grant_request(
        &self,
        request: &GrantRequestRecord,
        pending_since: UnixTime,
        max_pending: u32,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// `owner`'s pending grant requests made at or after `since`, oldest first.
    async fn pending_grant_requests(&self, owner: &OwnerId, since: UnixTime) -> Result<Vec<GrantRequestRecord>, StoreError>;
    /// Decides `owner`'s pending request `id` (made at or after `since`) at
    /// `now`, audited, in one transaction: compare-and-set from pending, so of
    /// two decisions one wins; the other, another owner's request, a decided,
    /// old or unknown one is `NotFound` and nothing changes. An approval
    /// inserts its grant (which must be the request's agent, owner, pattern and
    /// scopes, else `Invalid`) with the checks of
    /// [`add_grant`](crate::KeysAndGrants::add_grant): a refusal there
    /// rolls the decision back too.
    async fn decide_grant_request(
        &self,
        owner: &OwnerId,
        id: &str,
        since: UnixTime,
        decision: GrantDecision<'_>,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Sets the status of `owner`'s inbox, audited. `NotFound` (nothing
    /// changes) if the inbox is not one of `owner`'s.
    async fn set_owner_inbox_status(
        &self,
        owner: &OwnerId,
        address: &Address,
        status: InboxStatus,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// How many tries of a pairing request's 6 digits are taken (0 for an
    /// unknown request): a collecting agent learns its request is locked.
    async fn pairing_tries(&self, code_hash: &[u8; 32]) -> Result<u32, StoreError>;
    /// `agent`'s own grant requests made at or after `since`, whatever their
    /// status, newest first, at most `limit` (what the agent sees of its asks).
    async fn agent_grant_requests(&self, agent: &AgentId, since: UnixTime, limit: u32) -> Result<Vec<GrantRequestRecord>, StoreError>;
}

pub(crate) const SENT_COLUMNS: &str =
    "message_id, recipient, sender, state, size, queued_at, next_attempt_at, attempts, last_response";

pub(crate) fn key_uses(rows: Vec<(String, i64)>) -> Result<Vec<(KeyId, UnixTime)>, StoreError> {
    rows.into_iter().map(|(id, at)| Ok((stored("key id", &id)?, at))).collect()
}

pub(crate) const GRANT_REQUEST_COLUMNS: &str =
    "id, owner, agent, pattern, scopes, ttl, reason, created_at, status, decided_at, grant_id";

pub(crate) type GrantRequestRow =
    (String, String, String, String, String, i64, Option<String>, i64, String, Option<i64>, Option<String>);

pub(crate) fn grant_request_from_row(
    (id, owner, agent, pattern, scopes, ttl, reason, created_at, status, decided_at, grant): GrantRequestRow,
) -> Result<GrantRequestRecord, StoreError> {
    Ok(GrantRequestRecord {
        owner: stored("owner id", &owner)?,
        agent: stored("agent id", &agent)?,
        pattern: stored("inbox pattern", &pattern)?,
        scopes: stored("scopes", &scopes)?,
        status: GrantRequestStatus::parse(&status)?,
        grant: grant.map(|g| stored("grant id", &g)).transpose()?,
        id,
        ttl,
        reason,
        created_at,
        decided_at,
    })
}

/// The grant an approval inserts must be the request's.
pub(crate) fn check_decision(request: &GrantRequestRecord, decision: GrantDecision<'_>) -> Result<(), StoreError> {
    if let GrantDecision::Approve(g) = decision
        && (g.owner != request.owner || g.agent != request.agent || g.pattern != request.pattern || g.scopes != request.scopes)
    {
        return Err(StoreError::Invalid(format!("grant {} is not what grant request {} asked for", g.id, request.id)));
    }
    Ok(())
}

pub(crate) fn decided(decision: GrantDecision<'_>) -> (GrantRequestStatus, Option<String>) {
    match decision {
        GrantDecision::Approve(g) => (GrantRequestStatus::Approved, Some(g.id.to_string())),
        GrantDecision::Deny => (GrantRequestStatus::Denied, None),
    }
}

pub(crate) fn tries(row: Option<(i64,)>) -> Option<u32> {
    row.map(|(n,)| u32::try_from(n).unwrap_or(u32::MAX))
}

#[async_trait]
impl ConsoleViews for SqliteStore {
    async fn take_pairing_try(&self, code_hash: &[u8; 32], limit: u32) -> Result<Option<u32>, StoreError> {
        let mut tx = self.write_tx().await?;
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE pairing_requests SET confirm_tries = confirm_tries + 1
              WHERE code_hash = ?1 AND status = 'pending' AND confirm_tries < ?2
              RETURNING confirm_tries",
        )
        .bind(hash_to_hex(code_hash))
        .bind(i64::from(limit))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(tries(row))
    }

    async fn record_key_use(&self, id: &KeyId, now: UnixTime) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE agent_keys SET last_used_at = ?1
              WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at <= ?1 - ?3)",
        )
        .bind(now)
        .bind(id.as_str())
        .bind(KEY_USE_RESOLUTION_SECS)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn key_last_uses(&self, owner: &OwnerId, agent: &AgentId) -> Result<Vec<(KeyId, UnixTime)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT k.id, k.last_used_at FROM agent_keys k JOIN agents a ON a.id = k.agent
              WHERE k.agent = ?1 AND a.owner = ?2 AND k.last_used_at IS NOT NULL ORDER BY k.id",
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
              WHERE owner = ?1 AND (?2 IS NULL OR sender = ?2)
              ORDER BY queued_at DESC, message_id DESC, recipient LIMIT ?3"
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
        let mut tx = self.write_tx().await?;
        let mine: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM agents WHERE id = ?1 AND owner = ?2")
            .bind(request.agent.as_str())
            .bind(request.owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if mine.is_none() {
            return Err(StoreError::NotFound { what: format!("agent {}", request.agent) });
        }
        let (pending,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM grant_requests WHERE agent = ?1 AND status = 'pending' AND created_at >= ?2",
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
            "INSERT INTO grant_requests ({GRANT_REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', NULL, NULL)"
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
              WHERE owner = ?1 AND status = 'pending' AND created_at >= ?2 ORDER BY created_at, id"
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
        let mut tx = self.write_tx().await?;
        let (status, grant) = decided(decision);
        let row: Option<GrantRequestRow> = sqlx::query_as(&format!(
            "UPDATE grant_requests SET status = ?1, decided_at = ?2, grant_id = ?3
              WHERE id = ?4 AND owner = ?5 AND status = 'pending' AND created_at >= ?6
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
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("UPDATE inboxes SET status = ?1 WHERE address = ?2 AND owner = ?3")
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
        let row: Option<(i64,)> = sqlx::query_as("SELECT confirm_tries FROM pairing_requests WHERE code_hash = ?1")
            .bind(hash_to_hex(code_hash))
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.map_or(0, |(n,)| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    async fn agent_grant_requests(&self, agent: &AgentId, since: UnixTime, limit: u32) -> Result<Vec<GrantRequestRecord>, StoreError> {
        let rows: Vec<GrantRequestRow> = sqlx::query_as(&format!(
            "SELECT {GRANT_REQUEST_COLUMNS} FROM grant_requests
              WHERE agent = ?1 AND created_at >= ?2 ORDER BY created_at DESC, id DESC LIMIT ?3"
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
