//! [`SendGuardrails`]: per-agent send limits, the counting behind them, held
//! messages and the owner's notices (issue 13 §3; the rules are
//! `agentkeys_core::send_limits`). SQLite here, PostgreSQL in
//! `postgres/guardrails.rs`; both run the same statements (this file writes
//! them with `$n` placeholders, SQLite reads them as `?n`).
//!
//! **Counting is one transaction per send, under the agent's lock**: SQLite's
//! write lock (`BEGIN IMMEDIATE`, shared by every process), a transaction-scoped
//! advisory lock per agent on PostgreSQL (every node). The admission reads the
//! limits, counts the windows, decides with `SendLimits::admit` and records the
//! send before the lock is released, so two nodes racing never let more than
//! the limit through.

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::send_limits::{
    DAY_SECS, HOUR_SECS, HoldReason, LimitRefusal, ReleaseApproved, SendLimits, SendUsage, Window,
};
use agentkeys_core::{Address, AgentId, GrantId, KeyId, OwnerId, SendAuthorized, UnixTime};
use async_trait::async_trait;
use sqlx::SqliteConnection;

use crate::NewWebhookEvent;
use crate::meta::StoreError;
use crate::sqlite::{SqliteStore, backend, commit_audited, require_ok, stored};

/// Most rows [`SendGuardrails::sent_messages`] and
/// [`SendGuardrails::held_messages`] return at once.
pub const MAX_LISTED: u32 = 200;

/// One send asking to be admitted.
#[derive(Debug, Clone, Copy)]
pub struct SendAttempt<'a> {
    /// Who sends, as what.
    pub sender: &'a SendAuthorized,
    /// The submitted message's id.
    pub message_id: &'a str,
    /// Every envelope recipient, lowercased, without repeats.
    pub recipients: &'a [String],
    /// Its `Subject:`, for the thread view.
    pub subject: Option<&'a str>,
    /// Its thread keys
    /// ([`crate::message_facts::sent_thread_keys`]): the inbox's threads
    /// whose messages registered one of them show it.
    pub thread_keys: &'a [String],
    /// Now (the windows end here).
    pub now: UnixTime,
}

/// The answer to a [`SendAttempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendAdmission {
    /// Recorded; store and queue it.
    Send,
    /// Recorded; hold it for the owner's review.
    Hold(HoldReason),
    /// A limit refused it; nothing recorded.
    Refused(LimitRefusal),
}

/// Where a held message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldState {
    /// Waiting for the owner.
    Held,
    /// Approved and released (signed and queued as `released_as`).
    Approved,
    /// Rejected: never sent.
    Rejected,
}

impl HeldState {
    /// `held`, `approved` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "held" => Ok(Self::Held),
            "approved" => Ok(Self::Approved),
            "rejected" => Ok(Self::Rejected),
            other => Err(StoreError::Backend(format!("stored held state {other:?} is invalid"))),
        }
    }
}

/// A held message as stored (its bytes are the blob `held/<id>.eml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRecord {
    /// The submitted message's id (a ULID).
    pub id: String,
    /// The inbox's owner, who decides.
    pub owner: OwnerId,
    /// The sending agent.
    pub agent: AgentId,
    /// The sending inbox.
    pub inbox: Address,
    /// The key it authenticated with.
    pub key_id: KeyId,
    /// The grant that let it send.
    pub grant_id: GrantId,
    /// Every envelope recipient.
    pub recipients: Vec<String>,
    /// Why it was held.
    pub reason: HoldReason,
    /// Its size in bytes.
    pub size: u64,
    /// Its `Subject:`, for the owner's list.
    pub subject: Option<String>,
    /// When it was held.
    pub held_at: UnixTime,
    /// Where it stands.
    pub state: HeldState,
    /// When the owner decided.
    pub decided_at: Option<UnixTime>,
    /// The id it was released (stored and queued) under.
    pub released_as: Option<String>,
}

/// The owner's decision on a held message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldDecision {
    /// Release it, stored and queued under this new id.
    Approve {
        /// The id of the released copy (a fresh ULID: the held id may be past
        /// the acknowledgement window).
        released_as: String,
    },
    /// Never send it.
    Reject,
}

/// A decision, recorded.
#[derive(Debug)]
pub struct HeldDecided {
    /// The message after the decision.
    pub held: HeldRecord,
    /// The approval releasing requires (`None` for a rejection).
    pub release: Option<ReleaseApproved>,
    /// The decision's audit record.
    pub receipt: AuditReceipt,
}

/// One delivery of a sent message to one remote recipient, as the queue has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentDelivery {
    /// The recipient.
    pub recipient: String,
    /// `queued`, `sending`, `delivered`, `deferred` or `bounced`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last remote response (or our reason).
    pub last_response: Option<String>,
}

/// A message an inbox sent (or tried to), for the agent: `list_sent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    /// The submitted message's id.
    pub message_id: String,
    /// When it was accepted.
    pub at: UnixTime,
    /// Every envelope recipient.
    pub recipients: Vec<String>,
    /// Its `Subject:` (sends admitted before sqlite 0033 / postgres 0024: none).
    pub subject: Option<String>,
    /// `Some` when it was held for review: where that stands.
    pub held: Option<HeldState>,
    /// The id its copies were stored and queued under (`None` while held or
    /// when rejected).
    pub queue_id: Option<String>,
    /// The queue's rows for its remote recipients.
    pub deliveries: Vec<SentDelivery>,
}

/// Something the owner should hear about: the seam of owner notification
/// channels. Recorded once per `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerNotice {
    /// What makes it unique (e.g. one per agent, limit and hour).
    pub key: String,
    /// Whom it is for.
    pub owner: OwnerId,
    /// The agent it concerns.
    pub agent: AgentId,
    /// `send.limited` or `message.held`.
    pub kind: String,
    /// JSON details (no message content).
    pub detail: String,
    /// When.
    pub at: UnixTime,
}

/// The stored guardrails of agents' sending.
#[async_trait]
pub trait SendGuardrails: Send + Sync + 'static {
    /// The limits of `agent` as its current owner set them; open when none
    /// are set or the agent does not exist.
    async fn agent_send_limits(&self, agent: &AgentId) -> Result<SendLimits, StoreError>;
    /// The limits of one of `owner`'s agents. `NotFound` when the agent is
    /// missing or another owner's.
    async fn owner_agent_send_limits(&self, owner: &OwnerId, agent: &AgentId) -> Result<SendLimits, StoreError>;
    /// Replaces the limits of one of `owner`'s agents, with `event` in the
    /// same transaction. `NotFound` as above (nothing written or recorded);
    /// `Invalid` when a value is out of bounds.
    async fn set_agent_send_limits(
        &self,
        owner: &OwnerId,
        agent: &AgentId,
        limits: &SendLimits,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Decides one send under the agent's lock and, unless refused, records it
    /// (it counts from now on): with its new recipients, and when it is sent
    /// directly, its recipients as known. `Conflict` when the id was recorded
    /// already.
    async fn admit_send(&self, attempt: &SendAttempt<'_>) -> Result<SendAdmission, StoreError>;
    /// Forgets an admitted send whose storing failed (it was never accepted).
    async fn cancel_send(&self, message_id: &str) -> Result<(), StoreError>;
    /// Records an admitted message as held, with `event`. Its bytes must be
    /// stored first.
    async fn hold_message(&self, held: &HeldRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// The owner's held messages, newest first: only those waiting, or all.
    async fn held_messages(&self, owner: &OwnerId, waiting_only: bool, limit: u32) -> Result<Vec<HeldRecord>, StoreError>;
    /// One of the owner's held messages; `NotFound` for a missing one or
    /// another owner's.
    async fn owner_held_message(&self, owner: &OwnerId, id: &str) -> Result<HeldRecord, StoreError>;
    /// The owner's decision, compare-and-set from `held`, with `event` in the
    /// same transaction; an approval makes the [`ReleaseApproved`] proof
    /// releasing requires, and the recipients known. `NotFound` as above,
    /// `Conflict` when it was decided already (nothing written or recorded).
    async fn decide_held(
        &self,
        owner: &OwnerId,
        id: &str,
        decision: &HeldDecision,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<HeldDecided, StoreError>;
    /// Records a notice once per key, enqueuing `webhooks` in the same
    /// transaction; `false` when the key was recorded before (nothing written).
    async fn record_owner_notice(
        &self,
        notice: &OwnerNotice,
        webhooks: &[NewWebhookEvent],
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// The owner's notices after position `after`, oldest first, with their positions.
    async fn owner_notices(&self, owner: &OwnerId, after: i64, limit: u32) -> Result<Vec<(i64, OwnerNotice)>, StoreError>;
    /// What `inbox` sent (while it belongs to the owner it sent for), newest
    /// first; only `message_id` when given.
    async fn sent_messages(
        &self,
        inbox: &Address,
        message_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SentRecord>, StoreError>;
    /// What `inbox` sent (while it belongs to `owner`) into the inbox's thread
    /// `thread`: the sends whose thread keys one of the thread's messages
    /// registered (its `Message-ID`, `In-Reply-To` or `References` names one
    /// of them, or one of them names it), oldest first, at most `limit`.
    async fn sent_in_thread(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        thread: ulid::Ulid,
        limit: u32,
    ) -> Result<Vec<SentRecord>, StoreError>;
}

// ---------------------------------------------------------------------------
// The statements, shared by both backends.

pub(crate) const SQL_LIMITS: &str = "SELECT l.limits FROM agent_send_limits l JOIN agents a ON a.id = l.agent AND a.owner = l.owner
      WHERE l.agent = $1";
pub(crate) const SQL_OWNER_LIMITS: &str = "SELECT l.limits FROM agents a LEFT JOIN agent_send_limits l ON l.agent = a.id AND l.owner = a.owner
      WHERE a.id = $1 AND a.owner = $2";
pub(crate) const SQL_SET_LIMITS: &str = "INSERT INTO agent_send_limits (agent, owner, limits, updated_at)
     SELECT id, owner, $3, $4 FROM agents WHERE id = $1 AND owner = $2
     ON CONFLICT (agent) DO UPDATE SET owner = excluded.owner, limits = excluded.limits, updated_at = excluded.updated_at";
pub(crate) const SQL_COUNT_SENDS: &str = "SELECT COUNT(*) FROM agent_sends WHERE agent = $1 AND at > $2";
pub(crate) const SQL_NTH_SEND: &str = "SELECT at FROM agent_sends WHERE agent = $1 AND at > $2 ORDER BY at DESC LIMIT 1 OFFSET $3";
pub(crate) const SQL_COUNT_NEW: &str = "SELECT COUNT(*) FROM agent_new_recipients WHERE agent = $1 AND at > $2";
pub(crate) const SQL_NTH_NEW: &str =
    "SELECT at FROM agent_new_recipients WHERE agent = $1 AND at > $2 ORDER BY at DESC LIMIT 1 OFFSET $3";
pub(crate) const SQL_BOUNCES: &str = "SELECT COALESCE(SUM(CASE WHEN q.state = 'bounced' THEN 1 ELSE 0 END), 0),
            COALESCE(SUM(CASE WHEN q.state IN ('delivered', 'bounced') THEN 1 ELSE 0 END), 0)
       FROM agent_sends s JOIN outbound_queue q ON q.message_id = s.queue_id
      WHERE s.agent = $1 AND s.at > $2";
pub(crate) const SQL_KNOWN: &str = "SELECT recipient FROM agent_known_recipients WHERE agent = $1 AND recipient = $2";
pub(crate) const SQL_INSERT_SEND: &str = "INSERT INTO agent_sends (message_id, agent, owner, inbox, at, recipients, new_recipients, queue_id, subject)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub(crate) const SQL_INSERT_SENT_KEY: &str =
    "INSERT INTO sent_thread_keys (owner, inbox, key, message_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
pub(crate) const SQL_INSERT_NEW: &str =
    "INSERT INTO agent_new_recipients (message_id, recipient, agent, at) VALUES ($1, $2, $3, $4)";
pub(crate) const SQL_INSERT_KNOWN: &str = "INSERT INTO agent_known_recipients (agent, recipient, first_message, first_at)
     VALUES ($1, $2, $3, $4) ON CONFLICT (agent, recipient) DO NOTHING";
pub(crate) const SQL_CANCEL_SEND: &str = "DELETE FROM agent_sends WHERE message_id = $1";
pub(crate) const SQL_CANCEL_NEW: &str = "DELETE FROM agent_new_recipients WHERE message_id = $1";
pub(crate) const SQL_CANCEL_KNOWN: &str = "DELETE FROM agent_known_recipients WHERE first_message = $1";
pub(crate) const SQL_INSERT_HELD: &str = "INSERT INTO held_messages
       (id, owner, agent, inbox, key_id, grant_id, recipients, reason, size, subject, held_at, state)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'held')";
pub(crate) const HELD_COLUMNS: &str = "id, owner, agent, inbox, key_id, grant_id, recipients, reason, size, subject, held_at, state, decided_at, released_as";
pub(crate) const SQL_DECIDE: &str = "UPDATE held_messages SET state = $3, decided_at = $4, released_as = $5
      WHERE id = $1 AND owner = $2 AND state = 'held'";
pub(crate) const SQL_RELEASED_AS: &str = "UPDATE agent_sends SET queue_id = $2 WHERE message_id = $1";
pub(crate) const SQL_INSERT_NOTICE: &str = "INSERT INTO owner_notices (notice_key, owner, agent, kind, detail, at)
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (notice_key) DO NOTHING";
pub(crate) const SQL_NOTICES: &str = "SELECT id, notice_key, owner, agent, kind, detail, at FROM owner_notices
      WHERE owner = $1 AND id > $2 ORDER BY id LIMIT $3";
pub(crate) const SQL_SENT: &str = "SELECT s.message_id, s.at, s.recipients, s.queue_id, h.state, s.subject
       FROM agent_sends s JOIN inboxes i ON i.address = s.inbox AND i.owner = s.owner
       LEFT JOIN held_messages h ON h.id = s.message_id
      WHERE s.inbox = $1 AND ($2 = '' OR s.message_id = $2)
      ORDER BY s.at DESC, s.message_id DESC LIMIT $3";
/// The sends of an inbox into one of its threads: the thread's rows (index
/// `messages_by_thread`), their keys (`message_thread_keys_by_seq`), the sends
/// that recorded one of those keys (`sent_thread_keys`' primary key), each
/// reachable by an index on both backends.
pub(crate) const SQL_SENT_IN_THREAD: &str = "SELECT s.message_id, s.at, s.recipients, s.queue_id, h.state, s.subject
       FROM agent_sends s JOIN inboxes i ON i.address = s.inbox AND i.owner = s.owner
       LEFT JOIN held_messages h ON h.id = s.message_id
      WHERE s.owner = $1 AND s.inbox = $2 AND s.message_id IN
            (SELECT k.message_id FROM messages m
               JOIN message_thread_keys t ON t.seq = m.seq
               JOIN sent_thread_keys k ON k.owner = t.owner AND k.inbox = t.inbox AND k.key = t.key
              WHERE m.owner = $1 AND m.inbox = $2 AND m.thread_id = $3)
      ORDER BY s.at, s.message_id LIMIT $4";
pub(crate) const SQL_SENT_DELIVERIES: &str =
    "SELECT recipient, state, attempts, last_response FROM outbound_queue WHERE message_id = $1 ORDER BY recipient";

/// `$n` placeholders as SQLite's `?n`.
fn lite(sql: &str) -> String {
    sql.replace('$', "?")
}

pub(crate) type HeldRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    i64,
    String,
    Option<i64>,
    Option<String>,
);

pub(crate) fn held_from_row(row: HeldRow) -> Result<HeldRecord, StoreError> {
    let (id, owner, agent, inbox, key_id, grant_id, recipients, reason, size, subject, held_at, state, decided_at, released_as) =
        row;
    Ok(HeldRecord {
        owner: stored("held message owner", &owner)?,
        agent: stored("held message agent", &agent)?,
        inbox: stored("held message inbox", &inbox)?,
        key_id: stored("held message key", &key_id)?,
        grant_id: stored("held message grant", &grant_id)?,
        recipients: decode_list(&recipients)?,
        reason: stored("hold reason", &reason)?,
        size: u64::try_from(size).map_err(|_| StoreError::Backend(format!("held message {id} has a negative size")))?,
        subject,
        held_at,
        state: HeldState::parse(&state)?,
        decided_at,
        released_as,
        id,
    })
}

pub(crate) fn encode_limits(limits: &SendLimits) -> Result<String, StoreError> {
    limits.validate().map_err(StoreError::Invalid)?;
    serde_json::to_string(limits).map_err(|e| StoreError::Invalid(format!("cannot encode the limits: {e}")))
}

pub(crate) fn decode_limits(agent: &str, text: Option<String>) -> Result<SendLimits, StoreError> {
    match text {
        None => Ok(SendLimits::default()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| StoreError::Backend(format!("stored send limits of {agent} are invalid: {e}"))),
    }
}

pub(crate) fn encode_list(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

pub(crate) fn decode_list(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("stored recipient list is invalid: {e}")))
}

pub(crate) fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

pub(crate) fn state_for(decision: &HeldDecision) -> (HeldState, Option<&str>) {
    match decision {
        HeldDecision::Approve { released_as } => (HeldState::Approved, Some(released_as.as_str())),
        HeldDecision::Reject => (HeldState::Rejected, None),
    }
}

/// The decision's proof: an approval of `held` (as it is after the update).
pub(crate) fn release_for(held: &HeldRecord) -> Option<ReleaseApproved> {
    (held.state == HeldState::Approved).then(|| {
        ReleaseApproved::recorded(
            &held.id,
            held.inbox.clone(),
            held.owner.clone(),
            held.agent.clone(),
            held.key_id.clone(),
            held.grant_id.clone(),
        )
    })
}

// ---------------------------------------------------------------------------
// SQLite.

async fn window_lite(
    tx: &mut SqliteConnection,
    (count_sql, nth_sql): (&str, &str),
    agent: &str,
    now: UnixTime,
    secs: i64,
    max: Option<u32>,
    asked: u32,
) -> Result<Window, StoreError> {
    let since = now - secs;
    let (count,): (i64,) =
        sqlx::query_as(&lite(count_sql)).bind(agent).bind(since).fetch_one(&mut *tx).await.map_err(backend)?;
    let count = to_u32(count);
    let mut frees_at = None;
    if let Some(max) = max
        && u64::from(count) + u64::from(asked) > u64::from(max)
        && let Some(position) = SendLimits::freeing_position(max, asked)
    {
        let row: Option<(i64,)> = sqlx::query_as(&lite(nth_sql))
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
impl SendGuardrails for SqliteStore {
    async fn agent_send_limits(&self, agent: &AgentId) -> Result<SendLimits, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as(&lite(SQL_LIMITS)).bind(agent.as_str()).fetch_optional(&self.pool).await.map_err(backend)?;
        decode_limits(agent.as_str(), row.map(|(l,)| l))
    }

    async fn owner_agent_send_limits(&self, owner: &OwnerId, agent: &AgentId) -> Result<SendLimits, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(&lite(SQL_OWNER_LIMITS))
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
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(&lite(SQL_SET_LIMITS))
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
        // BEGIN IMMEDIATE: the write lock is the agent's lock, across processes.
        let mut tx = self.write_tx().await?;
        let row: Option<(String,)> =
            sqlx::query_as(&lite(SQL_LIMITS)).bind(agent).fetch_optional(&mut *tx).await.map_err(backend)?;
        let limits = decode_limits(agent, row.map(|(l,)| l))?;
        let mut new = Vec::new();
        for recipient in attempt.recipients {
            let known: Option<(String,)> = sqlx::query_as(&lite(SQL_KNOWN))
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
            hour: window_lite(&mut tx, sends, agent, now, HOUR_SECS, limits.per_hour, 1).await?,
            day: window_lite(&mut tx, sends, agent, now, DAY_SECS, limits.per_day, 1).await?,
            new_recipients: window_lite(&mut tx, (SQL_COUNT_NEW, SQL_NTH_NEW), agent, now, DAY_SECS, limits.new_recipients_per_day, asked)
                .await?,
            ..SendUsage::default()
        };
        let usage = if limits.max_bounce_percent.is_some() {
            let (bounced, finished): (i64, i64) = sqlx::query_as(&lite(SQL_BOUNCES))
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
        sqlx::query(&lite(SQL_INSERT_SEND))
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
            .map_err(|e| crate::sqlite::insert_error(e, || format!("send {}", attempt.message_id)))?;
        for key in attempt.thread_keys {
            sqlx::query(&lite(SQL_INSERT_SENT_KEY))
                .bind(sender.owner().as_str())
                .bind(sender.inbox().as_str())
                .bind(key)
                .bind(attempt.message_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for recipient in &new {
            sqlx::query(&lite(SQL_INSERT_NEW))
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
                sqlx::query(&lite(SQL_INSERT_KNOWN))
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
        let mut tx = self.write_tx().await?;
        for sql in [SQL_CANCEL_SEND, SQL_CANCEL_NEW, SQL_CANCEL_KNOWN] {
            sqlx::query(&lite(sql)).bind(message_id).execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn hold_message(&self, held: &HeldRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        sqlx::query(&lite(SQL_INSERT_HELD))
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
            .map_err(|e| crate::sqlite::insert_error(e, || format!("held message {}", held.id)))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn held_messages(&self, owner: &OwnerId, waiting_only: bool, limit: u32) -> Result<Vec<HeldRecord>, StoreError> {
        let rows: Vec<HeldRow> = sqlx::query_as(&format!(
            "SELECT {HELD_COLUMNS} FROM held_messages WHERE owner = ?1 AND (?2 = 0 OR state = 'held')
              ORDER BY held_at DESC, id DESC LIMIT ?3"
        ))
        .bind(owner.as_str())
        .bind(i64::from(waiting_only))
        .bind(i64::from(limit.min(MAX_LISTED)))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(held_from_row).collect()
    }

    async fn owner_held_message(&self, owner: &OwnerId, id: &str) -> Result<HeldRecord, StoreError> {
        let row: Option<HeldRow> =
            sqlx::query_as(&format!("SELECT {HELD_COLUMNS} FROM held_messages WHERE id = ?1 AND owner = ?2"))
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
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(&lite(SQL_DECIDE))
            .bind(id)
            .bind(owner.as_str())
            .bind(state.as_str())
            .bind(now)
            .bind(released_as)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let row: Option<HeldRow> =
            sqlx::query_as(&format!("SELECT {HELD_COLUMNS} FROM held_messages WHERE id = ?1 AND owner = ?2"))
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
            sqlx::query(&lite(SQL_RELEASED_AS)).bind(id).bind(released_as).execute(&mut *tx).await.map_err(backend)?;
            for recipient in &held.recipients {
                sqlx::query(&lite(SQL_INSERT_KNOWN))
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
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(&lite(SQL_INSERT_NOTICE))
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
            crate::webhooks::insert_events_sqlite(&mut tx, webhooks, now_ms).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(new)
    }

    async fn owner_notices(&self, owner: &OwnerId, after: i64, limit: u32) -> Result<Vec<(i64, OwnerNotice)>, StoreError> {
        let rows: Vec<NoticeRow> = sqlx::query_as(&lite(SQL_NOTICES))
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
        let rows: Vec<SentRow> = sqlx::query_as(&lite(SQL_SENT))
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
        let rows: Vec<SentRow> = sqlx::query_as(&lite(SQL_SENT_IN_THREAD))
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

impl SqliteStore {
    /// The sent records of `rows`, each with its queue rows.
    async fn with_deliveries(&self, rows: Vec<SentRow>) -> Result<Vec<SentRecord>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let deliveries: Vec<DeliveryRow> = match &row.3 {
                Some(queue_id) => sqlx::query_as(&lite(SQL_SENT_DELIVERIES))
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

pub(crate) type NoticeRow = (i64, String, String, String, String, String, i64);
pub(crate) type SentRow = (String, i64, String, Option<String>, Option<String>, Option<String>);
pub(crate) type DeliveryRow = (String, String, i64, Option<String>);

pub(crate) fn notice_from_row(row: NoticeRow) -> Result<(i64, OwnerNotice), StoreError> {
    let (id, key, owner, agent, kind, detail, at) = row;
    Ok((
        id,
        OwnerNotice {
            key,
            owner: stored("notice owner", &owner)?,
            agent: stored("notice agent", &agent)?,
            kind,
            detail,
            at,
        },
    ))
}

pub(crate) fn sent_from_rows(row: SentRow, deliveries: Vec<DeliveryRow>) -> Result<SentRecord, StoreError> {
    let (message_id, at, recipients, queue_id, held, subject) = row;
    Ok(SentRecord {
        message_id,
        at,
        recipients: decode_list(&recipients)?,
        subject,
        held: held.as_deref().map(HeldState::parse).transpose()?,
        queue_id,
        deliveries: deliveries
            .into_iter()
            .map(|(recipient, state, attempts, last_response)| SentDelivery {
                recipient,
                state,
                attempts: to_u32(attempts),
                last_response,
            })
            .collect(),
    })
}
