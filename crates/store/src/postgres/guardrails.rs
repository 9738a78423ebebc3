//! [`SendGuardrails`] on PostgreSQL: the statements of `guardrails.rs`, with
//! the agent's lock a transaction-scoped advisory lock
//! (`pg_advisory_xact_lock` on a hash of the agent id), so admissions of one
//! agent on every node run one after the other and each counts every send
//! committed before it.

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::send_limits::{DAY_SECS, HOUR_SECS, SendLimits, SendUsage, Window};
use agentkeys_core::{Address, AgentId, OwnerId, UnixTime};
use async_trait::async_trait;
use sqlx::PgConnection;

use super::audit::commit_audited;
use super::{PgStore, backend, insert_error};
use crate::NewWebhookEvent;
use crate::guardrails::*;
use crate::meta::StoreError;
use crate::sqlite::require_ok;

async fn window_pg(
    tx: &mut PgConnection,
    (count_sql, nth_sql): (&str, &str),
    agent: &str,
    now: UnixTime,
    secs: i64,
    max: Option<u32>,
    asked: u32,
) -> Result<Window, StoreError> {
    let since = now - secs;
    let (count,): (i64,) =
        sqlx::query_as(count_sql).bind(agent).bind(since).fetch_one(&mut *tx).await.map_err(backend)?;
    let count = to_u32(count);
    let mut frees_at = None;
    if let Some(max) = max
        && u64::from(count) + u64::from(asked) > u64::from(max)
        && let Some(position) = SendLimits::freeing_position(max, asked)
    {
        let row: Option<(i64,)> = sqlx::query_as(nth_sql)
            .bind(agent)
            .bind(since)
            .bind(i64::from(position))
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        frees_at = row.map(|(at,)| at + secs);
    }
    Ok(Window { count, frees_at })
}

#[async_trait]
impl SendGuardrails for PgStore {
    async fn agent_send_limits(&self, agent: &AgentId) -> Result<SendLimits, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as(SQL_LIMITS).bind(agent.as_str()).fetch_optional(&self.pool).await.map_err(backend)?;
        decode_limits(agent.as_str(), row.map(|(l,)| l))
    }

    async fn owner_agent_send_limits(&self, owner: &OwnerId, agent: &AgentId) -> Result<SendLimits, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(SQL_OWNER_LIMITS)
            .bind(agent.as_str())
            .bind(owner.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        match row {
            None => Err(StoreError::NotFound { what: format!("agent {agent}") }),
            Some((text,)) => decode_limits(agent.as_str(), text),
        }
    }

    async fn set_agent_send_limits(
        &self,
        owner: &OwnerId,
        agent: &AgentId,
        limits: &SendLimits,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let text = encode_limits(limits)?;
        let mut tx = self.begin().await?;
        let done = sqlx::query(SQL_SET_LIMITS)
            .bind(agent.as_str())
            .bind(owner.as_str())
            .bind(&text)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("agent {agent}") });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn admit_send(&self, attempt: &SendAttempt<'_>) -> Result<SendAdmission, StoreError> {
        let sender = attempt.sender;
        let agent = sender.agent().as_str();
        let now = attempt.now;
        // The agent's lock, across nodes, until commit or rollback.
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('agentkeys-send:' || $1, 0))")
            .bind(agent)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let row: Option<(String,)> =
            sqlx::query_as(SQL_LIMITS).bind(agent).fetch_optional(&mut *tx).await.map_err(backend)?;
        let limits = decode_limits(agent, row.map(|(l,)| l))?;
        let mut new = Vec::new();
        for recipient in attempt.recipients {
            let known: Option<(String,)> = sqlx::query_as(SQL_KNOWN)
                .bind(agent)
                .bind(recipient)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            if known.is_none() {
                new.push(recipient.clone());
            }
        }
        let asked = to_u32(i64::try_from(new.len()).unwrap_or(i64::MAX));
        let sends = (SQL_COUNT_SENDS, SQL_NTH_SEND);
        let usage = SendUsage {
            hour: window_pg(&mut tx, sends, agent, now, HOUR_SECS, limits.per_hour, 1).await?,
            day: window_pg(&mut tx, sends, agent, now, DAY_SECS, limits.per_day, 1).await?,
            new_recipients: window_pg(&mut tx, (SQL_COUNT_NEW, SQL_NTH_NEW), agent, now, DAY_SECS, limits.new_recipients_per_day, asked)
                .await?,
            ..SendUsage::default()
        };
        let usage = if limits.max_bounce_percent.is_some() {
            let (bounced, finished): (i64, i64) = sqlx::query_as(SQL_BOUNCES)
                .bind(agent)
                .bind(now - DAY_SECS)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
            SendUsage { bounced: to_u32(bounced), finished: to_u32(finished), ..usage }
        } else {
            usage
        };
        if let Err(refusal) = limits.admit(&usage, asked, now) {
            return Ok(SendAdmission::Refused(refusal));
        }
        let hold = limits.holds(asked);
        sqlx::query(SQL_INSERT_SEND)
            .bind(attempt.message_id)
            .bind(agent)
            .bind(sender.owner().as_str())
            .bind(sender.inbox().as_str())
            .bind(now)
            .bind(encode_list(attempt.recipients))
            .bind(i64::from(asked))
            .bind(hold.is_none().then_some(attempt.message_id))
            .bind(attempt.subject)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("send {}", attempt.message_id)))?;
        for key in attempt.thread_keys {
            sqlx::query(SQL_INSERT_SENT_KEY)
                .bind(sender.owner().as_str())
                .bind(sender.inbox().as_str())
                .bind(key)
                .bind(attempt.message_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for recipient in &new {
            sqlx::query(SQL_INSERT_NEW)
                .bind(attempt.message_id)
                .bind(recipient)
                .bind(agent)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        if hold.is_none() {
            for recipient in &new {
                sqlx::query(SQL_INSERT_KNOWN)
                    .bind(agent)
                    .bind(recipient)
                    .bind(attempt.message_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(hold.map_or(SendAdmission::Send, SendAdmission::Hold))
    }

    async fn cancel_send(&self, message_id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for sql in [SQL_CANCEL_SEND, SQL_CANCEL_NEW, SQL_CANCEL_KNOWN] {
            sqlx::query(sql).bind(message_id).execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn hold_message(&self, held: &HeldRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        sqlx::query(SQL_INSERT_HELD)
            .bind(&held.id)
            .bind(held.owner.as_str())
            .bind(held.agent.as_str())
            .bind(held.inbox.as_str())
            .bind(held.key_id.as_str())
            .bind(held.grant_id.as_str())
            .bind(encode_list(&held.recipients))
            .bind(held.reason.as_str())
            .bind(i64::try_from(held.size).unwrap_or(i64::MAX))
            .bind(held.subject.as_deref())
            .bind(held.held_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("held message {}", held.id)))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn held_messages(&self, owner: &OwnerId, waiting_only: bool, limit: u32) -> Result<Vec<HeldRecord>, StoreError> {
        let rows: Vec<HeldRow> = sqlx::query_as(&format!(
            "SELECT {HELD_COLUMNS} FROM held_messages WHERE owner = $1 AND (NOT $2 OR state = 'held')
              ORDER BY held_at DESC, id DESC LIMIT $3"
        ))
        .bind(owner.as_str())
        .bind(waiting_only)
        .bind(i64::from(limit.min(MAX_LISTED)))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(held_from_row).collect()
    }

    async fn owner_held_message(&self, owner: &OwnerId, id: &str) -> Result<HeldRecord, StoreError> {
        let row: Option<HeldRow> =
            sqlx::query_as(&format!("SELECT {HELD_COLUMNS} FROM held_messages WHERE id = $1 AND owner = $2"))
                .bind(id)
                .bind(owner.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        row.map(held_from_row).transpose()?.ok_or_else(|| StoreError::NotFound { what: format!("held message {id}") })
    }

    async fn decide_held(
        &self,
        owner: &OwnerId,
        id: &str,
        decision: &HeldDecision,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<HeldDecided, StoreError> {
        require_ok(event)?;
        let (state, released_as) = state_for(decision);
        let mut tx = self.begin().await?;
        let done = sqlx::query(SQL_DECIDE)
            .bind(id)
            .bind(owner.as_str())
            .bind(state.as_str())
            .bind(now)
            .bind(released_as)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let row: Option<HeldRow> =
            sqlx::query_as(&format!("SELECT {HELD_COLUMNS} FROM held_messages WHERE id = $1 AND owner = $2"))
                .bind(id)
                .bind(owner.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        let Some(held) = row.map(held_from_row).transpose()? else {
            return Err(StoreError::NotFound { what: format!("held message {id}") });
        };
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict { what: format!("a decision on held message {id}") });
        }
        if let Some(released_as) = released_as {
            sqlx::query(SQL_RELEASED_AS).bind(id).bind(released_as).execute(&mut *tx).await.map_err(backend)?;
            for recipient in &held.recipients {
                sqlx::query(SQL_INSERT_KNOWN)
                    .bind(held.agent.as_str())
                    .bind(recipient)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
        }
        let sealed = self.append_in(&mut tx, event).await?;
        let receipt = commit_audited(tx, sealed).await?;
        let release = release_for(&held);
        Ok(HeldDecided { held, release, receipt })
    }

    async fn record_owner_notice(
        &self,
        notice: &OwnerNotice,
        webhooks: &[NewWebhookEvent],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(SQL_INSERT_NOTICE)
            .bind(&notice.key)
            .bind(notice.owner.as_str())
            .bind(notice.agent.as_str())
            .bind(&notice.kind)
            .bind(&notice.detail)
            .bind(notice.at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let new = done.rows_affected() > 0;
        if new && !webhooks.is_empty() {
            super::webhooks::insert_events(&mut tx, webhooks, now_ms).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(new)
    }

    async fn owner_notices(&self, owner: &OwnerId, after: i64, limit: u32) -> Result<Vec<(i64, OwnerNotice)>, StoreError> {
        let rows: Vec<NoticeRow> = sqlx::query_as(SQL_NOTICES)
            .bind(owner.as_str())
            .bind(after)
            .bind(i64::from(limit.min(MAX_LISTED)))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter().map(notice_from_row).collect()
    }

    async fn sent_messages(
        &self,
        inbox: &Address,
        message_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SentRecord>, StoreError> {
        let rows: Vec<SentRow> = sqlx::query_as(SQL_SENT)
            .bind(inbox.as_str())
            .bind(message_id.unwrap_or(""))
            .bind(i64::from(limit.min(MAX_LISTED)))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        self.with_deliveries(rows).await
    }

    async fn sent_in_thread(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        thread: ulid::Ulid,
        limit: u32,
    ) -> Result<Vec<SentRecord>, StoreError> {
        let rows: Vec<SentRow> = sqlx::query_as(SQL_SENT_IN_THREAD)
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .bind(thread.to_string())
            .bind(i64::from(limit.min(crate::MAX_THREAD_MESSAGES)))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        self.with_deliveries(rows).await
    }
}

impl PgStore {
    /// The sent records of `rows`, each with its queue rows.
    async fn with_deliveries(&self, rows: Vec<SentRow>) -> Result<Vec<SentRecord>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let deliveries: Vec<DeliveryRow> = match &row.3 {
                Some(queue_id) => sqlx::query_as(SQL_SENT_DELIVERIES)
                    .bind(queue_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?,
                None => Vec::new(),
            };
            out.push(sent_from_rows(row, deliveries)?);
        }
        Ok(out)
    }
}

