//! [`Mailroom`]: where a message lands in an inbox. The one path that stores an
//! inbox copy, indexes it and tells subscribers, in that order.
//!
//! A `Mailroom` is a [`BlobStore`] wrapping the real one, and the server hands
//! it, never the bare blob store, to everything that writes mail: SMTP local
//! delivery (`store_delivery_signed`), the queue runner's bounces (DSNs) and the
//! HTTP send endpoint. Its `put_durable`:
//!
//! 1. takes each inbox copy's [`HeaderSummary`] (bounded, never failing) and
//!    writes every item durably through the wrapped store (fsync before return);
//! 2. hands the inbox copies among them (keys `<owner>/<inbox>/<ulid>.eml`) to
//!    the **index committer**, one task that drains every request waiting and
//!    writes them in ONE transaction (one WAL fsync for many messages: group
//!    commit, as the blob store groups directory fsyncs), then publishes each
//!    row to [`MailEvents`], in `seq` order;
//! 3. returns `Ok` only then, so the session's `250` follows a durable blob, a
//!    committed index row and a published event.
//!
//! If indexing fails, the put removes what it wrote and fails (`451`): the
//! sender retries and nothing half-visible remains. A crash between 1 and 2
//! leaves a blob without a row; [`Mailroom::reconcile`], run by `serve` at
//! start, indexes it (and drops rows whose blob is gone).
//!
//! Retention: [`Mailroom::sweep_expired`] removes, per domain, the rows older
//! than the domain's retention (audited with a count, in the row deletion's
//! transaction), then their blobs. [`Mailroom::sweep_expired_inboxes`] removes
//! inboxes past their expiry with all their mail (one audit record each).

use std::collections::HashSet;
use std::sync::Arc;

use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::{Address, Domain, OwnerId, UnixTime};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use ulid::Ulid;

use crate::BlobStore;
use crate::blob::{BlobError, BlobKey};
use crate::events::MailEvents;
use crate::header_summary::HeaderSummary;
use crate::index::{MessageIndex, NewMessage};
use crate::meta::{InboxExpiry, InboxRecord, OP_INBOX_EXPIRE, StoreError};

/// Most rows the committer writes in one transaction.
pub const MAX_INDEX_BATCH: usize = 512;
/// Index requests waiting for the committer before writers wait to enqueue.
pub const INDEX_QUEUE: usize = 1024;
/// Most rows one retention transaction removes (and one audit record counts).
pub const SWEEP_BATCH: u32 = 1000;
/// Audit operation of a retention sweep's removals.
pub const OP_MESSAGE_EXPIRE: &str = "message.expire";
/// Audit operation of a domain retention change.
pub const OP_DOMAIN_SET_RETENTION: &str = "domain.set_retention";
/// Most expired inboxes one round of [`Mailroom::sweep_expired_inboxes`] looks at.
pub const INBOX_SWEEP_BATCH: u32 = 100;
/// Rows per transaction when [`Mailroom::reconcile`] re-indexes.
const RECONCILE_BATCH: usize = 1000;

struct IndexRequest {
    rows: Vec<NewMessage>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The blob store, the message index and the event hub, joined so that every
/// inbox copy is stored, then indexed, then announced. Cheap to clone.
#[derive(Clone)]
pub struct Mailroom {
    blobs: Arc<dyn BlobStore>,
    index: Arc<dyn MessageIndex>,
    events: Arc<dyn MailEvents>,
    committer: mpsc::Sender<IndexRequest>,
    /// Our MX's hostname: the authserv-id whose verdicts a summary believes.
    authserv_id: Arc<str>,
}

impl std::fmt::Debug for Mailroom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailroom").finish_non_exhaustive()
    }
}

/// What [`Mailroom::reconcile`] repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Blobs that had no index row and got one.
    pub indexed: u64,
    /// Index rows whose blob was gone, removed.
    pub dropped: u64,
}

impl Mailroom {
    /// Joins the three and starts the index committer (a Tokio task that ends
    /// when the last clone is dropped). Must be called inside a Tokio runtime.
    /// `authserv_id` is our MX's hostname: each message's [`HeaderSummary`]
    /// believes only the `Authentication-Results` field with that id.
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        index: Arc<dyn MessageIndex>,
        events: Arc<dyn MailEvents>,
        authserv_id: &str,
    ) -> Self {
        let (committer, requests) = mpsc::channel(INDEX_QUEUE);
        tokio::spawn(commit_loop(requests, Arc::clone(&index), Arc::clone(&events)));
        Self { blobs, index, events, committer, authserv_id: Arc::from(authserv_id) }
    }

    /// The index row of a stored inbox copy, summary included.
    fn new_message(&self, owner: OwnerId, inbox: Address, id: Ulid, bytes: &[u8]) -> NewMessage {
        let summary = HeaderSummary::of_message(bytes, &self.authserv_id);
        NewMessage { owner, inbox, id, size: bytes.len() as u64, summary }
    }

    /// [`BlobStore::check_writable`](crate::BlobStore::check_writable) of the
    /// blob store behind (readiness).
    pub async fn check_blobs_writable(&self) -> Result<(), crate::BlobError> {
        self.blobs.check_writable().await
    }

    /// The message index (listing, replay).
    pub fn index(&self) -> &Arc<dyn MessageIndex> {
        &self.index
    }

    /// The event hub (subscriptions).
    pub fn events(&self) -> &Arc<dyn MailEvents> {
        &self.events
    }

    /// Indexes rows through the committer and waits for their commit and events.
    async fn index_and_publish(&self, rows: Vec<NewMessage>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.committer
            .send(IndexRequest { rows, done })
            .await
            .map_err(|_| "the index committer has stopped".to_owned())?;
        wait.await.map_err(|_| "the index committer has stopped".to_owned())?
    }

    /// Makes the index match the blobs of `inboxes`: indexes every inbox copy
    /// without a row (a crash between the blob write and the index commit) and
    /// drops rows whose blob is gone. Publishes nothing. Run at start, before
    /// this node's listeners accept mail, while other nodes sharing the
    /// metadata and blobs may be storing mail.
    ///
    /// The index is read **before** the blobs are listed. A row is committed
    /// only after its blob is durable, so every row read first has its blob in
    /// the later listing, unless it was removed meanwhile (row first, then
    /// blob: dropping that row again is a no-op). Listed first, a blob another
    /// node stored between the two reads would look gone while its row is
    /// there, and the message, acknowledged already, would be dropped from the
    /// index. A blob stored between the reads is indexed here as well, which
    /// is harmless: indexing is idempotent and keeps the first `seq`.
    pub async fn reconcile(&self, inboxes: &[(OwnerId, Address)]) -> Result<Reconciled, StoreError> {
        let mut report = Reconciled::default();
        for (owner, inbox) in inboxes {
            let indexed = self.index.indexed_ids(owner, inbox).await?;
            let prefix = format!("{owner}/{inbox}/");
            let stored: Vec<(Ulid, BlobKey)> = self
                .blobs
                .list(&prefix)
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))?
                .into_iter()
                .filter_map(|key| key.message_parts().map(|(_, _, id)| (id, key)))
                .collect();
            let mut missing = Vec::new();
            for (id, key) in &stored {
                if indexed.contains(id) {
                    continue;
                }
                // Rare (crash recovery): read the blob for its size and summary.
                let Some(bytes) = self.blobs.get(key).await.map_err(|e| StoreError::Backend(e.to_string()))? else {
                    continue;
                };
                missing.push(self.new_message(owner.clone(), inbox.clone(), *id, &bytes));
            }
            for chunk in missing.chunks(RECONCILE_BATCH) {
                self.index.index_messages(chunk).await?;
                report.indexed += chunk.len() as u64;
            }
            let on_disk: HashSet<Ulid> = stored.iter().map(|(id, _)| *id).collect();
            let gone: Vec<Ulid> = indexed.difference(&on_disk).copied().collect();
            report.dropped += self.index.unindex(owner, inbox, &gone).await?;
        }
        Ok(report)
    }

    /// Removes every message older than its domain's retention (`default_retention`
    /// seconds where the domain sets none) at `now`: index rows first, in batches
    /// of [`SWEEP_BATCH`], each batch audited (`message.expire`, actor `system`,
    /// subject the domain, detail `{count, retention, cutoff}`) in its own
    /// transaction, then the blobs. Returns how many messages were removed.
    ///
    /// A crash after a batch's commit leaves blobs without rows; the next start's
    /// [`reconcile`](Self::reconcile) indexes them again and the next sweep
    /// removes them.
    pub async fn sweep_expired(&self, now: UnixTime, default_retention: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        for (domain, retention) in self.index.domain_retentions().await? {
            let retention = retention.unwrap_or(default_retention);
            let cutoff = now.saturating_sub(retention);
            loop {
                let event = |count: u64| expire_event(&domain, count, retention, cutoff);
                let expired = self.index.expire_messages(&domain, cutoff, SWEEP_BATCH, &event).await?;
                for m in &expired {
                    if let Err(err) = self.blobs.remove(&m.key()).await {
                        // Unindexed but still on disk: the next start re-indexes it and
                        // a later sweep tries again.
                        tracing::warn!(key = %m.key(), %err, "cannot remove an expired message");
                    }
                }
                total += expired.len() as u64;
                if expired.len() < SWEEP_BATCH as usize {
                    break;
                }
            }
        }
        Ok(total)
    }
}

impl Mailroom {
    /// Removes every inbox whose expiry is at or before `now` ([`InboxExpiry`]),
    /// with its mail: for each, its blobs first, then in one transaction the
    /// inbox, its index rows and one `inbox.expire` record (actor `system`,
    /// subject the address, detail `{owner, agent, expires_at, messages}`), then
    /// any blob that arrived meanwhile (a session that passed RCPT before the
    /// expiry). Returns how many inboxes this call removed; sweepers on several
    /// nodes remove and record each inbox once.
    ///
    /// A crash before the transaction leaves the expired inbox in place (absent
    /// to every lookup) and the next sweep finishes it; one between the
    /// transaction and the last blob removal can leave a late blob under the
    /// removed inbox's prefix, which nothing lists or serves.
    pub async fn sweep_expired_inboxes(&self, inboxes: &dyn InboxExpiry, now: UnixTime) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let batch = inboxes.expired_inboxes(now, INBOX_SWEEP_BATCH).await?;
            let mut removed_now = 0;
            for inbox in &batch {
                self.remove_inbox_blobs(inbox).await?;
                let event = |messages: u64| inbox_expire_event(inbox, messages);
                if inboxes.remove_expired_inbox(&inbox.address, now, &event).await?.is_some() {
                    removed_now += 1;
                }
                self.remove_inbox_blobs(inbox).await?;
            }
            removed += removed_now;
            // Stop when the batch was the last one, or another sweeper took it.
            if batch.len() < INBOX_SWEEP_BATCH as usize || removed_now == 0 {
                return Ok(removed);
            }
        }
    }

    /// Removes every blob under the inbox's prefix (not its index rows).
    async fn remove_inbox_blobs(&self, inbox: &InboxRecord) -> Result<(), StoreError> {
        let prefix = format!("{}/{}/", inbox.owner, inbox.address);
        let keys = self.blobs.list(&prefix).await.map_err(|e| StoreError::Backend(e.to_string()))?;
        for key in keys {
            self.blobs.remove(&key).await.map_err(|e| StoreError::Backend(e.to_string()))?;
        }
        Ok(())
    }
}

/// The audit event of an expired inbox's removal: actor `system`, operation
/// [`inbox.expire`](OP_INBOX_EXPIRE), subject the address, detail the owner
/// (so the owner's audit view shows it), the agent, the expiry and how many
/// messages went with it.
pub fn inbox_expire_event(inbox: &InboxRecord, messages: u64) -> AuditEvent {
    AuditEvent::ok(Actor::System, OP_INBOX_EXPIRE, inbox.address.as_str()).with_detail(json!({
        "owner": inbox.owner,
        "agent": inbox.agent,
        "expires_at": inbox.expires_at,
        "messages": messages,
    }))
}

/// The audit event of one retention batch.
pub fn expire_event(domain: &Domain, count: u64, retention: i64, cutoff: UnixTime) -> AuditEvent {
    AuditEvent::ok(Actor::System, OP_MESSAGE_EXPIRE, domain.as_str())
        .with_detail(json!({ "count": count, "retention": retention, "cutoff": cutoff }))
}

/// The committer: takes every request waiting (up to [`MAX_INDEX_BATCH`] rows),
/// commits them in one transaction, publishes each row in order, answers all.
async fn commit_loop(
    mut requests: mpsc::Receiver<IndexRequest>,
    index: Arc<dyn MessageIndex>,
    events: Arc<dyn MailEvents>,
) {
    while let Some(first) = requests.recv().await {
        let mut rows = first.rows;
        let mut waiting = vec![first.done];
        while rows.len() < MAX_INDEX_BATCH {
            let Ok(next) = requests.try_recv() else { break };
            rows.extend(next.rows);
            waiting.push(next.done);
        }
        let outcome = match index.index_messages(&rows).await {
            Ok(indexed) => {
                for message in &indexed {
                    events.publish(message);
                }
                Ok(())
            }
            Err(err) => {
                tracing::error!(%err, rows = rows.len(), "cannot index messages");
                Err(err.to_string())
            }
        };
        for done in waiting {
            let _ = done.send(outcome.clone());
        }
    }
}

#[async_trait]
impl BlobStore for Mailroom {
    async fn put_durable(&self, items: Vec<(BlobKey, Bytes)>) -> Result<(), BlobError> {
        let rows: Vec<NewMessage> = items
            .iter()
            .filter_map(|(key, bytes)| {
                key.message_parts().map(|(owner, inbox, id)| self.new_message(owner, inbox, id, bytes))
            })
            .collect();
        let keys: Vec<BlobKey> = items.iter().map(|(key, _)| key.clone()).collect();
        self.blobs.put_durable(items).await?;
        if rows.is_empty() {
            return Ok(());
        }
        if let Err(err) = self.index_and_publish(rows).await {
            // Not indexed, so not delivered: take the blobs back (best effort; a
            // leftover is re-indexed at the next start) and fail the put.
            for key in &keys {
                let _ = self.blobs.remove(key).await;
            }
            return Err(BlobError::Io {
                path: "message index".to_owned(),
                err: std::io::Error::other(err),
            });
        }
        Ok(())
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, BlobError> {
        self.blobs.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobKey>, BlobError> {
        self.blobs.list(prefix).await
    }

    /// Removes an inbox copy's index row, then the blob; other keys, the blob only.
    async fn remove(&self, key: &BlobKey) -> Result<bool, BlobError> {
        if let Some((owner, inbox, id)) = key.message_parts() {
            self.index.unindex(&owner, &inbox, &[id]).await.map_err(|e| BlobError::Io {
                path: "message index".to_owned(),
                err: std::io::Error::other(e.to_string()),
            })?;
        }
        self.blobs.remove(key).await
    }
}
