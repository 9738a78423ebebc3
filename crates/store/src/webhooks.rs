//! Webhooks (issue 13 §1): an owner's subscriptions and the delivery outbox.
//!
//! A delivery is a row ([`Webhooks::claim_webhook_deliveries`] hands it to one
//! worker at a time, across processes and nodes, under a lease), so a killed
//! node loses none: its leases run out and another worker claims the rows.
//! Events are turned into rows off the mail acceptance path by a feeder that
//! follows the message index in commit order (a stored position moved by
//! compare-and-set) and marks outbound rows and attempts it has turned into
//! events. `(subscription, event key)` is unique: feeding an event twice never
//! makes a second delivery.
//!
//! Every read and change of a subscription is scoped to its owner: another
//! owner's subscription or delivery is `NotFound`, exactly like a missing one.
//! Secrets are stored sealed (the caller seals them under a seed-derived key).

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::{Address, AgentId, GrantId, OwnerId, UnixTime};
use async_trait::async_trait;
use serde::Serialize;

use crate::meta::StoreError;
use crate::sqlite::{SqliteStore, backend, commit_audited, require_ok};

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// `wh_<ulid>`.
    pub id: String,
    /// Its owner.
    pub owner: OwnerId,
    /// The target URL (`https://` or `http://`).
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// Only events of this inbox; `None`: every inbox of the owner (and the
    /// owner-wide events, `grant.expiring` and `key.expiring`).
    pub inbox: Option<Address>,
    /// The signing secret, sealed.
    pub secret_sealed: Vec<u8>,
    /// The secret before the last rotation, sealed; it signs too until `previous_until`.
    pub previous_secret_sealed: Option<Vec<u8>>,
    /// When the previous secret stops signing (Unix seconds).
    pub previous_until: Option<UnixTime>,
    /// Creation time.
    pub created_at: UnixTime,
    /// Made by one of the owner's agents under its grants; `None`: by the owner.
    pub agent: Option<AgentSubscriber>,
    /// `message.received` carries the message's text.
    pub include_body: bool,
}

/// The agent behind a subscription and the grants it lives under: each kind
/// of event is recorded only while the grant that allowed it is active
/// (neither revoked nor expired), so revoking the grant silences it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSubscriber {
    /// The agent.
    pub agent: AgentId,
    /// The grant with the `read` scope on the inbox (for `message.received`).
    pub read_grant: Option<GrantId>,
    /// The grant with the `send` scope on the inbox (for the outbound events).
    pub send_grant: Option<GrantId>,
}

/// An event to deliver to every matching subscription of `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhookEvent {
    /// Whose subscriptions it goes to.
    pub owner: OwnerId,
    /// The inbox it concerns (`None`: owner-wide; only subscriptions without an
    /// inbox filter receive it).
    pub inbox: Option<Address>,
    /// `message.received`, …
    pub event_type: String,
    /// What makes it unique per subscription, e.g. `message.received:<inbox>:<id>`.
    pub event_key: String,
    /// The JSON body to send, fixed at feed time (every attempt sends the same bytes).
    pub payload: String,
    /// The body for subscriptions with `include_body` (`message.received`
    /// with the message's text); `None`: they get `payload` too.
    pub payload_with_body: Option<String>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt is running under a lease.
    Sending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up (past the retry period).
    Failed,
}

impl DeliveryState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(Self::Pending),
            "sending" => Ok(Self::Sending),
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            other => Err(StoreError::Backend(format!("unknown webhook delivery state {other:?}"))),
        }
    }
}

/// One delivery as its owner sees it in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    /// `msg_<ulid>`: the `webhook-id` header, the same on every attempt.
    pub id: String,
    /// The subscription.
    pub subscription_id: String,
    /// The event type.
    pub event_type: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// When the event was recorded (Unix seconds).
    pub created_at: UnixTime,
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt (Unix ms) while pending.
    pub next_attempt_ms: i64,
    /// When the last attempt ended (Unix seconds).
    pub last_attempt_at: Option<UnixTime>,
    /// The receiver's last HTTP status, if it answered.
    pub last_status: Option<u16>,
    /// Why the last attempt failed (connection, refusal, timeout), if it did.
    pub last_error: Option<String>,
}

/// A delivery claimed for one attempt: what to send, where, signed with which secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryClaim {
    /// The delivery.
    pub delivery: DeliveryRecord,
    /// The body.
    pub payload: String,
    /// The target.
    pub url: String,
    /// The current secret, sealed.
    pub secret_sealed: Vec<u8>,
    /// The previous secret, sealed, while it still signs.
    pub previous_secret_sealed: Option<Vec<u8>>,
    /// The lease token [`Webhooks::record_webhook_attempts`] requires.
    pub lease: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The delivery id.
    pub id: String,
    /// The claim's lease.
    pub lease: String,
    /// Whether the receiver took it (2xx).
    pub delivered: bool,
    /// When to try again; `None` after a failure: give up (`failed`).
    pub retry_at_ms: Option<i64>,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// When the attempt ended (Unix seconds).
    pub now: UnixTime,
}

/// One index row the feeder turns into `message.received`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FedMessage {
    /// Commit order.
    pub seq: i64,
    /// Owner.
    pub owner: OwnerId,
    /// Inbox.
    pub inbox: Address,
    /// Message ULID.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// Unix seconds.
    pub received_at: UnixTime,
    /// Sender, subject and verdict, as indexed (no blob read needed).
    pub summary: crate::HeaderSummary,
}

/// One read of the message feed: the rows after its position, and the
/// position that covers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFeed {
    /// The stored position the rows follow.
    pub from: i64,
    /// The position once they are fed ([`Webhooks::commit_message_feed`]'s `to`).
    pub to: i64,
    /// The rows, in feed order.
    pub messages: Vec<FedMessage>,
    /// Whether more rows may follow at once (the read was cut at its limit).
    pub more: bool,
}

/// A `message_feed` row: seq, owner, inbox, id, size, received_at and the
/// summary columns (from address, from name, subject, authenticated).
pub(crate) type FeedRow = (i64, String, String, String, i64, i64, Option<String>, Option<String>, Option<String>, bool);

/// The SQL of a feed read after a position (`$1`/`?1`) with a limit (`$2`/`?2`).
pub(crate) const FEED_COLUMNS: &str =
    "seq, owner, inbox, id, size, received_at, header_from_address, header_from_name, subject, authenticated";

/// A feed row as a [`FedMessage`].
pub(crate) fn fed_message(row: FeedRow) -> Result<FedMessage, StoreError> {
    let (seq, owner, inbox, id, size, received_at, from_address, from_name, subject, authenticated) = row;
    Ok(FedMessage {
        seq,
        owner: crate::sqlite::stored("owner", &owner)?,
        inbox: crate::sqlite::stored("inbox", &inbox)?,
        id,
        size: u64::try_from(size).unwrap_or(0),
        received_at,
        summary: crate::index::summary_from_columns(from_address, from_name, subject, authenticated),
    })
}

/// An outbound fact not yet turned into events: a queued message (`attempt`
/// `None`, with `message.sent`) or a recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundFact {
    /// The message ULID.
    pub message_id: String,
    /// The envelope recipient.
    pub recipient: String,
    /// The sending inbox.
    pub sender: Address,
    /// Its owner.
    pub owner: OwnerId,
    /// `None`: the queueing; `Some(n)`: attempt n.
    pub attempt: Option<u32>,
    /// The attempt's outcome (`delivered`, `deferred`, `bounced`).
    pub outcome: Option<String>,
    /// The remote reply.
    pub response: Option<String>,
    /// Size of the message (queueing only; 0 for attempts).
    pub size: u64,
    /// When it happened (Unix seconds).
    pub at: UnixTime,
}

/// A grant or agent key that expires soon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringCredential {
    /// `grant` or `key`.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// The owner.
    pub owner: OwnerId,
    /// The agent.
    pub agent: String,
    /// The grant's inbox pattern (grants only).
    pub pattern: Option<String>,
    /// When it expires (Unix seconds).
    pub expires_at: UnixTime,
}

/// The name of the message feed's position.
pub const MESSAGE_FEED: &str = "messages";

/// Subscriptions and their delivery outbox.
#[async_trait]
pub trait Webhooks: Send + Sync + 'static {
    /// Stores a subscription, audited. `Conflict` if the id exists.
    async fn create_webhook(&self, webhook: &WebhookRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// The owner's subscriptions, oldest first.
    async fn list_webhooks(&self, owner: &OwnerId) -> Result<Vec<WebhookRecord>, StoreError>;
    /// Deletes one of the owner's subscriptions and its deliveries, audited;
    /// another owner's is `NotFound` like a missing one.
    async fn delete_webhook(&self, owner: &OwnerId, id: &str, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// Replaces the secret of one of the owner's subscriptions with `secret_sealed`;
    /// the current one becomes the previous one, signing until `previous_until`.
    /// Audited; `NotFound` like [`delete_webhook`](Self::delete_webhook).
    async fn rotate_webhook_secret(
        &self,
        owner: &OwnerId,
        id: &str,
        secret_sealed: &[u8],
        previous_until: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Inserts one delivery of each event for every matching subscription
    /// (owner, event type, inbox filter), due at `now_ms`; an event already
    /// recorded for a subscription is skipped. Returns how many rows were added.
    async fn enqueue_webhook_events(&self, events: &[NewWebhookEvent], now_ms: i64) -> Result<u64, StoreError>;
    /// Up to `limit` index rows after the message feed's position, in an order
    /// in which no row becomes visible behind one already read (on SQLite,
    /// `seq`; on PostgreSQL, the writing transaction's id, see its
    /// migration 0022), with the position that covers them. Every indexed row
    /// is returned by exactly one read whose commit wins.
    async fn message_feed(&self, limit: u32) -> Result<MessageFeed, StoreError>;
    /// Moves the message feed from `from` to `to` and enqueues `events`, in one
    /// transaction, only if the position is still `from` (`false`: another
    /// handle moved it first, nothing written).
    async fn commit_message_feed(
        &self,
        from: i64,
        to: i64,
        events: &[NewWebhookEvent],
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Up to `limit` outbound queueings and attempts not yet fed, oldest first.
    async fn outbound_unfed(&self, limit: u32) -> Result<Vec<OutboundFact>, StoreError>;
    /// Marks `facts` fed and enqueues `events`, in one transaction.
    async fn commit_outbound_feed(
        &self,
        facts: &[OutboundFact],
        events: &[NewWebhookEvent],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Unrevoked grants and keys that expire after `now` and at or before `until`.
    async fn expiring_credentials(&self, now: UnixTime, until: UnixTime) -> Result<Vec<ExpiringCredential>, StoreError>;
    /// Claims up to `limit` due deliveries (`pending` with `next_attempt_ms <=
    /// now_ms`, or `sending` with an expired lease) for one attempt each, leased
    /// until `lease_until_ms`. No delivery is held by two claims at once, in any
    /// number of processes. Previous secrets past their overlap are not handed out.
    async fn claim_webhook_deliveries(
        &self,
        now_ms: i64,
        limit: u32,
        lease_until_ms: i64,
    ) -> Result<Vec<DeliveryClaim>, StoreError>;
    /// Records attempts: each only under its claim's lease (a lost lease writes
    /// nothing for that row). One transaction.
    async fn record_webhook_attempts(&self, attempts: &[DeliveryAttempt]) -> Result<(), StoreError>;
    /// The delivery log of one of the owner's subscriptions, newest first;
    /// `NotFound` for another owner's or a missing subscription.
    async fn list_webhook_deliveries(
        &self,
        owner: &OwnerId,
        subscription: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// Makes one of the owner's deliveries due again at `now_ms` (same id,
    /// attempts counted on); `NotFound` for another owner's or a missing one,
    /// and, with `subscription`, for a delivery of any other subscription (an
    /// agent redelivers only its own subscriptions' deliveries). A delivery
    /// being sent right now is left to its attempt (`Conflict`).
    async fn redeliver_webhook(
        &self,
        owner: &OwnerId,
        subscription: Option<&str>,
        delivery: &str,
        now_ms: i64,
    ) -> Result<DeliveryRecord, StoreError>;
}

/// `events` as stored: `,a,b,`.
pub(crate) fn events_column(events: &[String]) -> String {
    format!(",{},", events.join(","))
}

pub(crate) fn events_from_column(column: &str) -> Vec<String> {
    column.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The columns of a [`WebhookRow`].
pub(crate) const WEBHOOK_COLUMNS: &str = "id, owner, url, events, inbox, secret_sealed, previous_secret_sealed, previous_until, created_at, agent, read_grant, send_grant, include_body";

pub(crate) type WebhookRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<i64>,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
);

pub(crate) fn webhook_from_row(
    (id, owner, url, events, inbox, secret_sealed, previous_secret_sealed, previous_until, created_at, agent, read_grant, send_grant, include_body): WebhookRow,
) -> Result<WebhookRecord, StoreError> {
    let agent = match agent {
        Some(agent) => Some(AgentSubscriber {
            agent: crate::sqlite::stored("agent", &agent)?,
            read_grant: read_grant.map(|g| crate::sqlite::stored("grant", &g)).transpose()?,
            send_grant: send_grant.map(|g| crate::sqlite::stored("grant", &g)).transpose()?,
        }),
        None => None,
    };
    Ok(WebhookRecord {
        id,
        owner: crate::sqlite::stored("owner", &owner)?,
        url,
        events: events_from_column(&events),
        inbox: inbox.map(|i| crate::sqlite::stored("inbox", &i)).transpose()?,
        secret_sealed,
        previous_secret_sealed,
        previous_until,
        created_at,
        agent,
        include_body,
    })
}

pub(crate) const DELIVERY_COLUMNS: &str = "d.id, d.subscription_id, d.event_type, d.state, d.created_at, d.attempts, d.next_attempt_ms, d.last_attempt_at, d.last_status, d.last_error";

pub(crate) type DeliveryRow = (String, String, String, String, i64, i64, i64, Option<i64>, Option<i64>, Option<String>);

pub(crate) fn delivery_from_row(
    (id, subscription_id, event_type, state, created_at, attempts, next_attempt_ms, last_attempt_at, last_status, last_error): DeliveryRow,
) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        id,
        subscription_id,
        event_type,
        state: DeliveryState::parse(&state)?,
        created_at,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_ms,
        last_attempt_at,
        last_status: last_status.and_then(|s| u16::try_from(s).ok()),
        last_error,
    })
}

pub(crate) type OutboundFactRow = (String, String, String, String, Option<i64>, Option<String>, Option<String>, i64, i64);

pub(crate) fn fact_from_row(
    (message_id, recipient, sender, owner, attempt, outcome, response, size, at): OutboundFactRow,
) -> Result<OutboundFact, StoreError> {
    Ok(OutboundFact {
        message_id,
        recipient,
        sender: crate::sqlite::stored("sender", &sender)?,
        owner: crate::sqlite::stored("owner", &owner)?,
        attempt: attempt.map(|a| u32::try_from(a).unwrap_or(u32::MAX)),
        outcome,
        response,
        size: u64::try_from(size).unwrap_or(0),
        at,
    })
}

pub(crate) fn not_found(what: &str, id: &str) -> StoreError {
    StoreError::NotFound { what: format!("{what} {id}") }
}

/// A new delivery id: `msg_<ulid>`.
pub(crate) fn delivery_id() -> String {
    format!("msg_{}", ulid::Ulid::new())
}

pub(crate) fn lease_token() -> String {
    ulid::Ulid::new().to_string()
}

pub(crate) async fn insert_events_sqlite(
    tx: &mut sqlx::SqliteConnection,
    events: &[NewWebhookEvent],
    now_ms: i64,
) -> Result<u64, StoreError> {
    let mut added = 0;
    for e in events {
        // An agent's subscription only while the grant behind this kind of event is active.
        let subs: Vec<(String, bool)> = sqlx::query_as(
            "SELECT s.id, s.include_body FROM webhook_subscriptions s
              WHERE s.owner = ?1 AND (s.inbox IS NULL OR s.inbox = ?2) AND instr(s.events, ',' || ?3 || ',') > 0
                AND (s.agent IS NULL OR EXISTS (
                      SELECT 1 FROM grants g
                       WHERE g.id = CASE WHEN ?3 = 'message.received' THEN s.read_grant ELSE s.send_grant END
                         AND g.agent = s.agent AND g.revoked_at IS NULL AND g.expires_at > ?4
                         AND instr(',' || g.scopes || ',', CASE WHEN ?3 = 'message.received' THEN ',read,' ELSE ',send,' END) > 0))",
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
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8)
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
impl Webhooks for SqliteStore {
    async fn create_webhook(&self, webhook: &WebhookRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO webhook_subscriptions
                (id, owner, url, events, inbox, secret_sealed, previous_secret_sealed, previous_until, created_at,
                 agent, read_grant, send_grant, include_body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
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
        .map_err(|e| crate::sqlite::insert_error(e, || format!("webhook {}", webhook.id)))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn list_webhooks(&self, owner: &OwnerId) -> Result<Vec<WebhookRecord>, StoreError> {
        let rows: Vec<WebhookRow> = sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhook_subscriptions WHERE owner = ?1 ORDER BY created_at, id"
        ))
        .bind(owner.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(webhook_from_row).collect()
    }

    async fn delete_webhook(&self, owner: &OwnerId, id: &str, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM webhook_subscriptions WHERE id = ?1 AND owner = ?2")
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
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE webhook_subscriptions
                SET previous_secret_sealed = secret_sealed, previous_until = ?3, secret_sealed = ?4
              WHERE id = ?1 AND owner = ?2",
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
        let mut tx = self.write_tx().await?;
        let added = insert_events_sqlite(&mut tx, events, now_ms).await?;
        tx.commit().await.map_err(backend)?;
        Ok(added)
    }

    async fn message_feed(&self, limit: u32) -> Result<MessageFeed, StoreError> {
        // One writer: `seq` is commit order here.
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        let (position,): (i64,) = sqlx::query_as("SELECT position FROM webhook_feed WHERE name = ?1")
            .bind(MESSAGE_FEED)
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        let rows: Vec<FeedRow> =
            sqlx::query_as(&format!("SELECT {FEED_COLUMNS} FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2"))
                .bind(position)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await
                .map_err(backend)?;
        let more = rows.len() == limit as usize;
        let messages = rows.into_iter().map(fed_message).collect::<Result<Vec<_>, StoreError>>()?;
        let to = messages.last().map_or(position, |m| m.seq);
        Ok(MessageFeed { from: position, to, messages, more })
    }

    async fn commit_message_feed(
        &self,
        from: i64,
        to: i64,
        events: &[NewWebhookEvent],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let moved = sqlx::query("UPDATE webhook_feed SET position = ?3 WHERE name = ?1 AND position = ?2")
            .bind(MESSAGE_FEED)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        insert_events_sqlite(&mut tx, events, now_ms).await?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn outbound_unfed(&self, limit: u32) -> Result<Vec<OutboundFact>, StoreError> {
        let rows: Vec<OutboundFactRow> = sqlx::query_as(
            "SELECT * FROM (
                SELECT message_id, recipient, sender, owner, NULL AS attempt, NULL AS outcome, NULL AS response,
                       size, queued_at AS at
                  FROM outbound_queue WHERE webhook_fed = 0
                UNION ALL
                SELECT a.message_id, a.recipient, q.sender, q.owner, a.attempt, a.outcome, a.response, 0, a.at
                  FROM outbound_attempts a
                  JOIN outbound_queue q ON q.message_id = a.message_id AND q.recipient = a.recipient
                 WHERE a.webhook_fed = 0)
             ORDER BY at, message_id, recipient, attempt LIMIT ?1",
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
        let mut tx = self.write_tx().await?;
        for f in facts {
            let statement = match f.attempt {
                None => sqlx::query("UPDATE outbound_queue SET webhook_fed = 1 WHERE message_id = ?1 AND recipient = ?2")
                    .bind(&f.message_id)
                    .bind(&f.recipient),
                Some(n) => sqlx::query(
                    "UPDATE outbound_attempts SET webhook_fed = 1 WHERE message_id = ?1 AND recipient = ?2 AND attempt = ?3",
                )
                .bind(&f.message_id)
                .bind(&f.recipient)
                .bind(i64::from(n)),
            };
            statement.execute(&mut *tx).await.map_err(backend)?;
        }
        insert_events_sqlite(&mut tx, events, now_ms).await?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn expiring_credentials(&self, now: UnixTime, until: UnixTime) -> Result<Vec<ExpiringCredential>, StoreError> {
        let rows: Vec<(String, String, String, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT 'grant', g.id, g.owner, g.agent, g.pattern, g.expires_at FROM grants g
              WHERE g.revoked_at IS NULL AND g.expires_at > ?1 AND g.expires_at <= ?2
             UNION ALL
             SELECT 'key', k.id, a.owner, k.agent, NULL, k.expires_at FROM agent_keys k JOIN agents a ON a.id = k.agent
              WHERE k.revoked_at IS NULL AND k.expires_at > ?1 AND k.expires_at <= ?2",
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
        // A read first: an idle outbox never takes the write lock.
        let due: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM webhook_deliveries
              WHERE state IN ('pending', 'sending')
                AND ((state = 'pending' AND next_attempt_ms <= ?1) OR (state = 'sending' AND lease_until_ms <= ?1))
              LIMIT 1",
        )
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let lease = lease_token();
        let mut tx = self.write_tx().await?;
        // One statement under SQLite's write lock: no row is claimed twice. The
        // `state IN (…)` term is the partial index's own, so SQLite walks
        // `webhook_deliveries_due` in order and stops at the limit (without it,
        // every claim scanned and sorted the whole outbox under the lock).
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'sending', lease_until_ms = ?3, lease_token = ?4
              WHERE id IN (SELECT id FROM webhook_deliveries
                            WHERE state IN ('pending', 'sending')
                              AND ((state = 'pending' AND next_attempt_ms <= ?1)
                                OR (state = 'sending' AND lease_until_ms <= ?1))
                            ORDER BY next_attempt_ms, id LIMIT ?2)",
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
                    CASE WHEN s.previous_until > ?2 THEN s.previous_secret_sealed END
               FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.id = d.subscription_id
              WHERE d.lease_token = ?1 ORDER BY d.next_attempt_ms, d.id"
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
        let mut tx = self.write_tx().await?;
        for a in attempts {
            let (state, next) = attempt_state(a);
            sqlx::query(
                "UPDATE webhook_deliveries
                    SET state = ?3, next_attempt_ms = COALESCE(?4, next_attempt_ms), attempts = attempts + 1,
                        last_attempt_at = ?5, last_status = ?6, last_error = ?7, lease_until_ms = NULL, lease_token = NULL
                  WHERE id = ?1 AND lease_token = ?2 AND state = 'sending'",
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
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        let found: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM webhook_subscriptions WHERE id = ?1 AND owner = ?2")
            .bind(subscription)
            .bind(owner.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
        if found.is_none() {
            return Err(not_found("webhook", subscription));
        }
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
              WHERE d.subscription_id = ?1 AND d.owner = ?2 ORDER BY d.created_at DESC, d.id DESC LIMIT ?3"
        ))
        .bind(subscription)
        .bind(owner.as_str())
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
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
        let mut tx = self.write_tx().await?;
        let row: Option<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
              WHERE d.id = ?1 AND d.owner = ?2 AND (?3 IS NULL OR d.subscription_id = ?3)"
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
        sqlx::query("UPDATE webhook_deliveries SET state = 'pending', next_attempt_ms = ?2 WHERE id = ?1")
            .bind(delivery)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(DeliveryRecord { state: DeliveryState::Pending, next_attempt_ms: now_ms, ..record })
    }
}

pub(crate) type ClaimRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    String,
    String,
    Vec<u8>,
    Option<Vec<u8>>,
);

pub(crate) fn claim_from_row(
    (id, sub, event_type, state, created_at, attempts, next, last_at, last_status, last_error, payload, url, secret, previous): ClaimRow,
    lease: &str,
) -> Result<DeliveryClaim, StoreError> {
    let delivery =
        delivery_from_row((id, sub, event_type, state, created_at, attempts, next, last_at, last_status, last_error))?;
    Ok(DeliveryClaim {
        delivery,
        payload,
        url,
        secret_sealed: secret,
        previous_secret_sealed: previous,
        lease: lease.to_owned(),
    })
}

/// The state and next attempt an attempt leads to.
pub(crate) fn attempt_state(a: &DeliveryAttempt) -> (DeliveryState, Option<i64>) {
    if a.delivered {
        (DeliveryState::Delivered, None)
    } else if let Some(at) = a.retry_at_ms {
        (DeliveryState::Pending, Some(at))
    } else {
        (DeliveryState::Failed, None)
    }
}

pub(crate) fn expiring_from_rows(
    rows: Vec<(String, String, String, String, Option<String>, i64)>,
) -> Result<Vec<ExpiringCredential>, StoreError> {
    rows.into_iter()
        .map(|(kind, id, owner, agent, pattern, expires_at)| {
            Ok(ExpiringCredential {
                kind: if kind == "grant" { "grant" } else { "key" },
                id,
                owner: crate::sqlite::stored("owner", &owner)?,
                agent,
                pattern,
                expires_at,
            })
        })
        .collect()
}
