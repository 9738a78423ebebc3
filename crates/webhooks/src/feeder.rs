//! The feeder: turns what the store already records into delivery rows, off
//! the mail acceptance path. Nothing on the SMTP or HTTP path waits for it.
//!
//! - `message.received`: the message index after the stored feed position, in
//!   an order no row can appear behind ([`Webhooks::message_feed`]: `seq` on
//!   SQLite, the writing transaction on PostgreSQL), so none is skipped; each row's
//!   sender, subject and verdict come from the index's header summary (the blob
//!   is read only for subscriptions that ask for the text).
//!   The position moves by compare-and-set together with the inserted rows, so
//!   a crash repeats a batch at worst, and repeats are absorbed by the unique
//!   `(subscription, event key)`.
//! - `message.sent|delivered|deferred|bounced`: outbound rows and attempts not
//!   yet marked fed; marked in the transaction that inserts their deliveries.
//! - `grant.expiring`, `key.expiring`: every [`FeederConfig::expiry_check`], the
//!   unrevoked grants and keys expiring within [`FeederConfig::expiry_notice`],
//!   once per credential and expiry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_core::OwnerId;
use agentkeys_store::{BlobKey, BlobStore, MessageFeed, NewWebhookEvent, OutboundFact, StoreError, WebhookRecord, Webhooks};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::{self, BodyText, HeaderFacts};
use crate::now_ms;

/// Most index rows (or outbound facts) turned into events per transaction.
pub const FEED_BATCH: u32 = 200;
/// How often the feeder looks for new facts.
pub const FEED_INTERVAL: Duration = Duration::from_millis(500);
/// Default: credentials expiring within this raise `*.expiring`.
pub const EXPIRY_NOTICE: Duration = Duration::from_secs(3 * 24 * 3600);
/// Default: how often expiring credentials are looked for.
pub const EXPIRY_CHECK: Duration = Duration::from_secs(600);

/// The feeder's settings.
#[derive(Debug, Clone)]
pub struct FeederConfig {
    /// Our MX host name (the authserv-id of our `Authentication-Results`).
    pub hostname: String,
    /// How far ahead expiring credentials are announced.
    pub expiry_notice: Duration,
    /// How often they are looked for.
    pub expiry_check: Duration,
}

/// Feeds deliveries from the store's facts.
pub struct Feeder {
    store: Arc<dyn Webhooks>,
    blobs: Arc<dyn BlobStore>,
    config: FeederConfig,
    /// Woken when rows were added (the worker).
    added: Arc<Notify>,
}

impl std::fmt::Debug for Feeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Feeder {
    /// A feeder over `store`, reading message text (when asked for) from `blobs`, waking `added`.
    pub fn new(store: Arc<dyn Webhooks>, blobs: Arc<dyn BlobStore>, config: FeederConfig, added: Arc<Notify>) -> Self {
        Self { store, blobs, config, added }
    }

    /// Feeds until `shutdown`. Failures are logged and retried at the next turn.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(FEED_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_expiry_check: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.feed_once().await {
                Ok(0) => {}
                Ok(_) => self.added.notify_one(),
                Err(err) => tracing::error!(%err, "webhook feed failed; retrying"),
            }
            if last_expiry_check.is_none_or(|t| t.elapsed() >= self.config.expiry_check) {
                last_expiry_check = Some(tokio::time::Instant::now());
                match self.feed_expiring().await {
                    Ok(0) => {}
                    Ok(_) => self.added.notify_one(),
                    Err(err) => tracing::error!(%err, "webhook expiry check failed; retrying"),
                }
            }
        }
    }

    /// One pass over messages and outbound facts until both are caught up;
    /// how many facts were fed.
    pub async fn feed_once(&self) -> Result<usize, StoreError> {
        let mut fed = 0;
        loop {
            let (messages, more) = self.feed_messages().await?;
            let outbound = self.feed_outbound().await?;
            fed += messages + outbound;
            if !more && outbound < FEED_BATCH as usize {
                return Ok(fed);
            }
        }
    }

    /// How many index rows were read, and whether more may follow at once.
    async fn feed_messages(&self) -> Result<(usize, bool), StoreError> {
        let MessageFeed { from, to, messages, more } = self.store.message_feed(FEED_BATCH).await?;
        if messages.is_empty() {
            return Ok((0, more));
        }
        // Only messages someone subscribed to are read and recorded (a
        // subscription applies from its creation on, not to mail before it).
        let mut wanted: BTreeMap<&OwnerId, Vec<WebhookRecord>> = BTreeMap::new();
        for m in &messages {
            if !wanted.contains_key(&m.owner) {
                let hooks = self.store.list_webhooks(&m.owner).await?;
                let hooks = hooks.into_iter().filter(|w| w.events.iter().any(|e| e == events::MESSAGE_RECEIVED)).collect();
                wanted.insert(&m.owner, hooks);
            }
        }
        let mut events = Vec::with_capacity(messages.len());
        for m in &messages {
            let matching: Vec<&WebhookRecord> = wanted
                .get(&m.owner)
                .map(|hooks| hooks.iter().filter(|w| w.inbox.as_ref().is_none_or(|i| i == &m.inbox)).collect())
                .unwrap_or_default();
            if matching.is_empty() {
                continue;
            }
            // Sender, subject and verdict come from the index; the blob is read
            // (and the whole message parsed) only when a subscription asks for its text.
            let facts = HeaderFacts::from(&m.summary);
            let body = if matching.iter().any(|w| w.include_body) {
                match ulid::Ulid::from_string(&m.id) {
                    Ok(id) => match self.blobs.get(&BlobKey::message(&m.owner, &m.inbox, id)).await {
                        Ok(Some(raw)) => BodyText::read(&m.id, &raw, &self.config.hostname),
                        // Removed meanwhile (retention, expiry): the event goes without it.
                        Ok(None) => None,
                        Err(err) => return Err(StoreError::Backend(format!("cannot read message {}: {err}", m.id))),
                    },
                    Err(_) => None,
                }
            } else {
                None
            };
            events.push(events::message_received(m, &facts, body.as_ref()));
        }
        // Another feeder (node) may have moved the position first: then its
        // rows stand and ours are dropped.
        self.store.commit_message_feed(from, to, &events, now_ms()).await?;
        Ok((messages.len(), more))
    }

    async fn feed_outbound(&self) -> Result<usize, StoreError> {
        let facts = self.store.outbound_unfed(FEED_BATCH).await?;
        if facts.is_empty() {
            return Ok(0);
        }
        let mut events: Vec<NewWebhookEvent> = Vec::new();
        // One message.sent per message, with all its recipients (they are
        // queued together, in one statement).
        let mut sent: BTreeMap<&str, Vec<&OutboundFact>> = BTreeMap::new();
        for f in &facts {
            match f.attempt {
                None => sent.entry(f.message_id.as_str()).or_default().push(f),
                Some(_) => events.extend(events::message_attempt(f)),
            }
        }
        for (message_id, rows) in sent {
            let first = rows[0];
            let recipients: Vec<String> = rows.iter().map(|r| r.recipient.clone()).collect();
            events.push(events::message_sent(&first.owner, &first.sender, message_id, &recipients, first.size, first.at));
        }
        self.store.commit_outbound_feed(&facts, &events, now_ms()).await?;
        Ok(facts.len())
    }

    /// Enqueues `*.expiring` for credentials expiring within the notice; how many rows were added.
    pub async fn feed_expiring(&self) -> Result<u64, StoreError> {
        let now = now_ms() / 1000;
        let notice = i64::try_from(self.config.expiry_notice.as_secs()).unwrap_or(i64::MAX);
        let expiring = self.store.expiring_credentials(now, now.saturating_add(notice)).await?;
        let events: Vec<NewWebhookEvent> = expiring.iter().map(|c| events::expiring(c, now)).collect();
        self.store.enqueue_webhook_events(&events, now_ms()).await
    }
}
