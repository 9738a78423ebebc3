//! [`Webhooks`] on PostgreSQL. Deliveries are claimed like the outbound queue:
//! one `UPDATE` over a `SELECT … FOR UPDATE SKIP LOCKED`, with a lease token,
//! so no delivery is held by two nodes at once and a dead node's claims are
//! taken over when their lease runs out. The message feed's position moves by
//! compare-and-set; duplicate events are absorbed by the unique
//! `(subscription_id, event_key)`.

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::{Address, GrantId, OwnerId, UnixTime};
use async_trait::async_trait;
use sqlx::PgConnection;

use super::audit::commit_audited;
use super::{PgStore, backend, insert_error};
use crate::meta::StoreError;
use crate::sqlite::require_ok;
use crate::webhooks::{
    ClaimRow, DELIVERY_COLUMNS, DeliveryAttempt, DeliveryClaim, DeliveryRecord, DeliveryRow, DeliveryState,
    ExpiringCredential, FEED_COLUMNS, MESSAGE_FEED, MessageFeed, fed_message, NewWebhookEvent, OutboundFact, OutboundFactRow, WebhookRecord,
    WEBHOOK_COLUMNS, WebhookRow, Webhooks, attempt_state, claim_from_row, delivery_from_row, delivery_id, events_column,
    expiring_from_rows, fact_from_row, lease_token, not_found, webhook_from_row,
};

/// A feed row after its writing transaction's id.
type XactFeedRow = (i64, i64, String, String, String, i64, i64, Option<String>, Option<String>, Option<String>, bool);

pub(crate) async fn insert_events(tx: &mut PgConnection, events: &[NewWebhookEvent], now_ms: i64) -> Result<u64, StoreError> {
    let mut added = 0;
    for e in events {
        // An agent's subscription only while the grant behind this kind of event is active.
        let subs: Vec<(String, bool)> = sqlx::query_as(
            "SELECT s.id, s.include_body FROM webhook_subscriptions s
              WHERE s.owner = $1 AND (s.inbox IS NULL OR s.inbox = $2) AND strpos(s.events, ',' || $3 || ',') > 0
                AND (s.agent IS NULL OR EXISTS (
                      SELECT 1 FROM grants g
                       WHERE g.id = CASE WHEN $3 = 'message.received' THEN s.read_grant ELSE s.send_grant END
                         AND g.agent = s.agent AND g.revoked_at IS NULL AND g.expires_at > $4
                         AND strpos(',' || g.scopes || ',', CASE WHEN $3 = 'message.received' THEN ',read,' ELSE ',send,' END) > 0))",
        )
        .bind(e.owner.as_str())
        .bind(e.inbox.as_ref().map(Address::as_str))
        .bind(&e.event_type)
        .bind(now_ms / 1000)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        for (sub, include_body) in subs {
            let payload = if include_body { e.payload_with_body.as_ref().unwrap_or(&e.payload) } else { &e.payload };
            let done = sqlx::query(
                "INSERT INTO webhook_deliveries
                    (id, subscription_id, owner, event_type, event_key, payload, state, created_at, next_attempt_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)
                 ON CONFLICT (subscription_id, event_key) DO NOTHING",
            )
            .bind(delivery_id())
            .bind(&sub)
            .bind(e.owner.as_str())
            .bind(&e.event_type)
            .bind(&e.event_key)
            .bind(payload)
            .bind(now_ms / 1000)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            added += done.rows_affected();
        }
    }
    Ok(added)
}

#[async_trait]
impl Webhooks for PgStore {
    async fn create_webhook(&self, webhook: &WebhookRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_subscriptions
                (id, owner, url, events, inbox, secret_sealed, previous_secret_sealed, previous_until, created_at,
                 agent, read_grant, send_grant, include_body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&webhook.id)
        .bind(webhook.owner.as_str())
        .bind(&webhook.url)
        .bind(events_column(&webhook.events))
        .bind(webhook.inbox.as_ref().map(Address::as_str))
        .bind(&webhook.secret_sealed)
        .bind(webhook.previous_secret_sealed.as_deref())
        .bind(webhook.previous_until)
        .bind(webhook.created_at)
        .bind(webhook.agent.as_ref().map(|a| a.agent.as_str()))
        .bind(webhook.agent.as_ref().and_then(|a| a.read_grant.as_ref()).map(GrantId::as_str))
        .bind(webhook.agent.as_ref().and_then(|a| a.send_grant.as_ref()).map(GrantId::as_str))
        .bind(webhook.include_body)
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, || format!("webhook {}", webhook.id)))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn list_webhooks(&self, owner: &OwnerId) -> Result<Vec<WebhookRecord>, StoreError> {
        let rows: Vec<WebhookRow> = sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhook_subscriptions WHERE owner = $1 ORDER BY created_at, id"
        ))
        .bind(owner.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(webhook_from_row).collect()
    }

    async fn delete_webhook(&self, owner: &OwnerId, id: &str, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM webhook_subscriptions WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(not_found("webhook", id));
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn rotate_webhook_secret(
        &self,
        owner: &OwnerId,
        id: &str,
        secret_sealed: &[u8],
        previous_until: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE webhook_subscriptions
                SET previous_secret_sealed = secret_sealed, previous_until = $3, secret_sealed = $4
              WHERE id = $1 AND owner = $2",
        )
        .bind(id)
        .bind(owner.as_str())
        .bind(previous_until)
        .bind(secret_sealed)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(not_found("webhook", id));
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn enqueue_webhook_events(&self, events: &[NewWebhookEvent], now_ms: i64) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let added = insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await.map_err(backend)?;
        Ok(added)
    }

    async fn message_feed(&self, limit: u32) -> Result<MessageFeed, StoreError> {
        let (position,): (i64,) = sqlx::query_as("SELECT position FROM webhook_feed WHERE name = $1")
            .bind(MESSAGE_FEED)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        // Rows of transactions that have all ended (migration 0022), in the
        // order of their transaction ids: nothing can appear behind them any more.
        let mut rows: Vec<XactFeedRow> = sqlx::query_as(&format!(
            "SELECT xact::text::bigint, {FEED_COLUMNS} FROM messages
              WHERE xact > $1::text::xid8 AND xact < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY xact, seq LIMIT $2"
        ))
        .bind(position)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let more = rows.len() == limit as usize;
        if more && let Some(&(last, ..)) = rows.last() {
            if rows.iter().any(|r| r.0 != last) {
                // The position names whole transactions: the last one's rest comes next time.
                rows.retain(|r| r.0 != last);
            } else {
                // One transaction beyond the limit (an indexing batch is bounded): all of it.
                rows = sqlx::query_as(&format!(
                    "SELECT xact::text::bigint, {FEED_COLUMNS} FROM messages WHERE xact = $1::text::xid8 ORDER BY seq"
                ))
                .bind(last)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
            }
        }
        let to = rows.last().map_or(position, |r| r.0);
        let messages = rows
            .into_iter()
            .map(|(_, seq, owner, inbox, id, size, received_at, from_address, from_name, subject, authenticated)| {
                fed_message((seq, owner, inbox, id, size, received_at, from_address, from_name, subject, authenticated))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(MessageFeed { from: position, to, messages, more })
    }

    async fn commit_message_feed(
        &self,
        from: i64,
        to: i64,
        events: &[NewWebhookEvent],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // The row lock serializes feeders; one that waited re-reads the row
        // and finds the position moved.
        let moved = sqlx::query("UPDATE webhook_feed SET position = $3 WHERE name = $1 AND position = $2")
            .bind(MESSAGE_FEED)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn outbound_unfed(&self, limit: u32) -> Result<Vec<OutboundFact>, StoreError> {
        let rows: Vec<OutboundFactRow> = sqlx::query_as(
            "SELECT * FROM (
                SELECT message_id, recipient, sender, owner, NULL::BIGINT AS attempt, NULL::TEXT AS outcome,
                       NULL::TEXT AS response, size, queued_at AS at
                  FROM outbound_queue WHERE NOT webhook_fed
                UNION ALL
                SELECT a.message_id, a.recipient, q.sender, q.owner, a.attempt, a.outcome::TEXT, a.response::TEXT,
                       0::BIGINT, a.at
                  FROM outbound_attempts a
                  JOIN outbound_queue q ON q.message_id = a.message_id AND q.recipient = a.recipient
                 WHERE NOT a.webhook_fed) f
             ORDER BY at, message_id, recipient, attempt NULLS FIRST LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(fact_from_row).collect()
    }

    async fn commit_outbound_feed(
        &self,
        facts: &[OutboundFact],
        events: &[NewWebhookEvent],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for f in facts {
            let statement = match f.attempt {
                None => sqlx::query("UPDATE outbound_queue SET webhook_fed = TRUE WHERE message_id = $1 AND recipient = $2")
                    .bind(&f.message_id)
                    .bind(&f.recipient),
                Some(n) => sqlx::query(
                    "UPDATE outbound_attempts SET webhook_fed = TRUE WHERE message_id = $1 AND recipient = $2 AND attempt = $3",
                )
                .bind(&f.message_id)
                .bind(&f.recipient)
                .bind(i64::from(n)),
            };
            statement.execute(&mut *tx).await.map_err(backend)?;
        }
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn expiring_credentials(&self, now: UnixTime, until: UnixTime) -> Result<Vec<ExpiringCredential>, StoreError> {
        let rows: Vec<(String, String, String, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT 'grant'::TEXT, g.id, g.owner, g.agent, g.pattern, g.expires_at FROM grants g
              WHERE g.revoked_at IS NULL AND g.expires_at > $1 AND g.expires_at <= $2
             UNION ALL
             SELECT 'key'::TEXT, k.id, a.owner, k.agent, NULL::TEXT, k.expires_at FROM agent_keys k JOIN agents a ON a.id = k.agent
              WHERE k.revoked_at IS NULL AND k.expires_at > $1 AND k.expires_at <= $2",
        )
        .bind(now)
        .bind(until)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        expiring_from_rows(rows)
    }

    async fn claim_webhook_deliveries(
        &self,
        now_ms: i64,
        limit: u32,
        lease_until_ms: i64,
    ) -> Result<Vec<DeliveryClaim>, StoreError> {
        let lease = lease_token();
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE webhook_deliveries d SET state = 'sending', lease_until_ms = $3, lease_token = $4
               FROM (SELECT id FROM webhook_deliveries
                      WHERE state IN ('pending', 'sending')
                        AND ((state = 'pending' AND next_attempt_ms <= $1)
                          OR (state = 'sending' AND lease_until_ms <= $1))
                      ORDER BY next_attempt_ms, id
                      LIMIT $2
                        FOR UPDATE SKIP LOCKED) due
              WHERE d.id = due.id",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .bind(lease_until_ms)
        .bind(&lease)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let rows: Vec<ClaimRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS}, d.payload, s.url, s.secret_sealed,
                    CASE WHEN s.previous_until > $2 THEN s.previous_secret_sealed END
               FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.id = d.subscription_id
              WHERE d.lease_token = $1 ORDER BY d.next_attempt_ms, d.id"
        ))
        .bind(&lease)
        .bind(now_ms / 1000)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        rows.into_iter().map(|row| claim_from_row(row, &lease)).collect()
    }

    async fn record_webhook_attempts(&self, attempts: &[DeliveryAttempt]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for a in attempts {
            let (state, next) = attempt_state(a);
            sqlx::query(
                "UPDATE webhook_deliveries
                    SET state = $3, next_attempt_ms = COALESCE($4, next_attempt_ms), attempts = attempts + 1,
                        last_attempt_at = $5, last_status = $6, last_error = $7, lease_until_ms = NULL, lease_token = NULL
                  WHERE id = $1 AND lease_token = $2 AND state = 'sending'",
            )
            .bind(&a.id)
            .bind(&a.lease)
            .bind(state.as_str())
            .bind(next)
            .bind(a.now)
            .bind(a.status.map(i64::from))
            .bind(a.error.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn list_webhook_deliveries(
        &self,
        owner: &OwnerId,
        subscription: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let found: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM webhook_subscriptions WHERE id = $1 AND owner = $2")
            .bind(subscription)
            .bind(owner.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        if found.is_none() {
            return Err(not_found("webhook", subscription));
        }
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
              WHERE d.subscription_id = $1 AND d.owner = $2 ORDER BY d.created_at DESC, d.id DESC LIMIT $3"
        ))
        .bind(subscription)
        .bind(owner.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(delivery_from_row).collect()
    }

    async fn redeliver_webhook(
        &self,
        owner: &OwnerId,
        subscription: Option<&str>,
        delivery: &str,
        now_ms: i64,
    ) -> Result<DeliveryRecord, StoreError> {
        let mut tx = self.begin().await?;
        let row: Option<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
              WHERE d.id = $1 AND d.owner = $2 AND ($3::text IS NULL OR d.subscription_id = $3) FOR UPDATE"
        ))
        .bind(delivery)
        .bind(owner.as_str())
        .bind(subscription)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(row) = row else { return Err(not_found("webhook delivery", delivery)) };
        let record = delivery_from_row(row)?;
        if record.state == DeliveryState::Sending {
            return Err(StoreError::Conflict { what: format!("an attempt of webhook delivery {delivery} in progress") });
        }
        sqlx::query("UPDATE webhook_deliveries SET state = 'pending', next_attempt_ms = $2 WHERE id = $1")
            .bind(delivery)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(DeliveryRecord { state: DeliveryState::Pending, next_attempt_ms: now_ms, ..record })
    }
}
