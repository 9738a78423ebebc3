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
//! sender retries and nothing half-visible remains.
//!
//! **The index commit is the acknowledgement.** A message was delivered if and
//! only if its index row committed: the `250` (or the HTTP `202`) follows that
//! commit, nothing before it. A crash between 1 and 2 therefore leaves a blob
//! that nobody acknowledged, and the sender, who got no answer, sends again; a
//! blob without a row is such a crashed write, or the leftover of a removal
//! (row first, then blob), never mail that must be kept. [`Mailroom::reconcile`]
//! removes it rather than indexing it, which would store the retried message
//! twice. Other nodes may be between 1 and 2 at that moment, so a blob is
//! removed only once no commit can ever index it: the committer refuses a row
//! whose id (a ULID, stamped with the time the message was received) is older
//! than [`ACK_WINDOW_SECS`], and reconcile removes only blobs older than that
//! plus [`CLOCK_SKEW_SECS`] (younger ones are left, unlisted, for a later pass).
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
/// Seconds after its expiry before an expired inbox is swept. The MX's recipient
/// cache ([`RECIPIENT_CACHE_TTL`](crate::RECIPIENT_CACHE_TTL)) may still let
/// mail in for a moment after the expiry; swept at once, such a message would
/// be stored after its inbox's blobs were removed and stay behind, unlisted.
/// (A DATA phase longer than this grace can still leave one: known gap.)
pub const INBOX_SWEEP_GRACE_SECS: i64 = 5;

/// Most expired inboxes one round of [`Mailroom::sweep_expired_inboxes`] looks at.
pub const INBOX_SWEEP_BATCH: u32 = 100;
/// Longest time, in seconds, from a message's id (the ULID's timestamp, taken
/// when the message was received) to its index commit. The committer refuses a
/// row older than this (the put fails: `451`, the sender retries), so a blob
/// without a row older than this (plus [`CLOCK_SKEW_SECS`]) can never become a
/// delivered message and [`Mailroom::reconcile`] may remove it.
pub const ACK_WINDOW_SECS: i64 = 10 * 60;
/// How far apart the clocks of nodes sharing the blobs may be (NTP keeps them
/// within milliseconds; this is the margin reconcile adds to [`ACK_WINDOW_SECS`]).
pub const CLOCK_SKEW_SECS: i64 = 5 * 60;

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
    /// Test hook ([`Mailroom::crash_before_indexing`]).
    crash_before_indexing: bool,
}

impl std::fmt::Debug for Mailroom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailroom").finish_non_exhaustive()
    }
}

/// What [`Mailroom::reconcile`] repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Blobs without an index row, old enough that no commit can index them
    /// (crashed, never acknowledged writes; leftovers of removals), removed.
    pub removed: u64,
    /// Blobs without an index row still young enough that a node may be about
    /// to commit it: left in place (nothing lists them) for a later pass.
    pub pending: u64,
    /// Index rows whose blob was gone, removed.
    pub dropped: u64,
}

/// Rows one batch of [`Mailroom::backfill_facts`] reads from the index (and
/// whose stored copies it reads) before writing them in one transaction.
pub const BACKFILL_BATCH: u32 = 256;

/// What [`Mailroom::backfill_facts`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backfilled {
    /// Rows given their thread keys and words.
    pub refreshed: u64,
    /// Rows whose stored copy was gone (reconcile drops such rows); left as
    /// they were.
    pub missing: u64,
}

/// Whether no index commit can make message `id` visible any more at `now`
/// (Unix seconds, on a clock at most [`CLOCK_SKEW_SECS`] from the writer's).
pub fn never_acknowledged(id: Ulid, now: UnixTime) -> bool {
    crate::index::received_at(id) < now.saturating_sub(ACK_WINDOW_SECS + CLOCK_SKEW_SECS)
}

/// Whether the committer refuses to index message `id` at `now_ms` (Unix
/// milliseconds): received more than [`ACK_WINDOW_SECS`] ago.
fn too_late_to_acknowledge(id: Ulid, now_ms: u64) -> bool {
    id.timestamp_ms().saturating_add(ACK_WINDOW_SECS as u64 * 1000) < now_ms
}

/// Whether message `id` is past its acknowledgement window now (received more
/// than [`ACK_WINDOW_SECS`] ago, by this node's clock): the index committer
/// refuses it, and so must every other first write of it (the sender queueing
/// its remote recipients), so that a send stuck that long can no longer store
/// anything that a retry, taking over its idempotency claim, stores as well.
pub fn acknowledgement_closed(id: Ulid) -> bool {
    too_late_to_acknowledge(id, unix_millis())
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
        Self { blobs, index, events, committer, authserv_id: Arc::from(authserv_id), crash_before_indexing: false }
    }

    /// The index row of a stored inbox copy, summary included.
    fn new_message(&self, owner: OwnerId, inbox: Address, id: Ulid, bytes: &[u8]) -> NewMessage {
        let summary = HeaderSummary::of_message(bytes, &self.authserv_id);
        let facts = crate::message_facts::MessageFacts::of_message(bytes, &summary);
        NewMessage { owner, inbox, id, size: bytes.len() as u64, summary, facts }
    }

    /// Fault injection for crash tests (`serve` sets it from
    /// `AGENTKEYS_TEST_CRASH_BEFORE_INDEX`): every put that stores an inbox copy
    /// aborts the process once the blobs are durable, before the index commit,
    /// the window in which a crash leaves an unacknowledged blob.
    pub fn crash_before_indexing(mut self) -> Self {
        self.crash_before_indexing = true;
        self
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

    /// Makes the blobs of `inboxes` match the index, at `now` (Unix seconds):
    /// removes every inbox copy without a row that no commit can index any more
    /// ([`never_acknowledged`]: a crashed write, whose sender got no `250` and
    /// sent again, or the blob of a removed row), leaves younger ones (counted
    /// as `pending`; nothing lists them) and drops rows whose blob is gone.
    /// Publishes nothing. Safe while this node and others sharing the metadata
    /// and blobs store mail, so `serve` runs it after it is ready.
    ///
    /// The index is read **before** the blobs are listed. A row is committed
    /// only after its blob is durable, so every row read first has its blob in
    /// the later listing, unless it was removed meanwhile (row first, then
    /// blob: dropping that row again is a no-op). Listed first, a blob another
    /// node stored between the two reads would look gone while its row is
    /// there, and the message, acknowledged already, would be dropped from the
    /// index. A blob stored between the reads has no row in the first read; it
    /// is young, so it is left alone.
    pub async fn reconcile(&self, inboxes: &[(OwnerId, Address)], now: UnixTime) -> Result<Reconciled, StoreError> {
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
            for (id, key) in &stored {
                if indexed.contains(id) {
                    continue;
                }
                if never_acknowledged(*id, now) {
                    self.blobs.remove(key).await.map_err(|e| StoreError::Backend(e.to_string()))?;
                    report.removed += 1;
                } else {
                    report.pending += 1;
                }
            }
            let on_disk: HashSet<Ulid> = stored.iter().map(|(id, _)| *id).collect();
            let gone: Vec<Ulid> = indexed.difference(&on_disk).copied().collect();
            report.dropped += self.index.unindex(owner, inbox, &gone).await?;
        }
        Ok(report)
    }

    /// Gives the rows indexed before threads and search existed (or before
    /// their current words, [`FACTS_VERSION`](crate::search::FACTS_VERSION))
    /// their thread keys and words: batches of `batch` rows in `seq` order
    /// ([`MessageIndex::facts_pending`]), facts taken from each row's stored
    /// copy exactly as at acceptance, written in one transaction per batch
    /// ([`MessageIndex::refresh_facts`]: the row joins the threads its keys
    /// reach). **Resumable**: a row is marked done in the transaction that
    /// writes it, so after a crash the next run starts with what is left.
    /// **Idempotent**: a row done already (by this node or another) is
    /// skipped. A row whose blob is gone is left for reconcile. Safe while
    /// mail arrives: `serve` runs it in the background after it is ready.
    pub async fn backfill_facts(&self, batch: u32) -> Result<Backfilled, StoreError> {
        let batch = batch.max(1);
        let mut report = Backfilled::default();
        let mut after = 0;
        loop {
            let pending = self.index.facts_pending(after, batch).await?;
            let Some(last) = pending.last() else {
                return Ok(report);
            };
            after = last.seq;
            let mut rows = Vec::with_capacity(pending.len());
            for m in &pending {
                match self.blobs.get(&m.key()).await.map_err(|e| StoreError::Backend(e.to_string()))? {
                    Some(bytes) => rows.push(self.new_message(m.owner.clone(), m.inbox.clone(), m.id, &bytes)),
                    None => report.missing += 1,
                }
            }
            report.refreshed += self.index.refresh_facts(&rows).await?;
            if pending.len() < batch as usize {
                return Ok(report);
            }
        }
    }

    /// Removes every message older than its domain's retention (`default_retention`
    /// seconds where the domain sets none) at `now`: index rows first, in batches
    /// of [`SWEEP_BATCH`], each batch audited (`message.expire`, actor `system`,
    /// subject the domain, detail `{count, retention, cutoff}`) in its own
    /// transaction, then the blobs. Returns how many messages were removed.
    ///
    /// A crash after a batch's commit leaves blobs without rows; the next
    /// [`reconcile`](Self::reconcile) removes them.
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
                        // Unindexed but still stored: the next reconcile removes it.
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
        let mut rows = Vec::new();
        let mut waiting = Vec::new();
        let mut next = Some(first);
        let now_ms = unix_millis();
        while let Some(request) = next.take() {
            // Past the acknowledgement window, reconcile may have removed the
            // blob already (or may at any moment): refuse, the sender retries.
            if request.rows.iter().any(|row| too_late_to_acknowledge(row.id, now_ms)) {
                let _ = request.done.send(Err(format!(
                    "the message was received more than {ACK_WINDOW_SECS} s ago; not indexed"
                )));
            } else {
                rows.extend(request.rows);
                waiting.push(request.done);
            }
            if rows.len() < MAX_INDEX_BATCH {
                next = requests.try_recv().ok();
            }
        }
        if rows.is_empty() {
            continue;
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
        if self.crash_before_indexing {
            tracing::error!("AGENTKEYS_TEST_CRASH_BEFORE_INDEX: aborting after the blob write, before the index commit");
            std::process::abort();
        }
        if let Err(err) = self.index_and_publish(rows).await {
            // Not indexed, so not delivered: take the blobs back (best effort; a
            // leftover is removed by a later reconcile) and fail the put.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The two halves of "the index commit is the acknowledgement" agree:
        /// a row the committer accepts at `commit` (its clock) is never judged
        /// unacknowledged by a reconcile at the same moment on a node whose
        /// clock is off by at most CLOCK_SKEW_SECS; and once a message is that
        /// old everywhere, the committer refuses it.
        #[test]
        fn no_reconcile_removes_a_blob_the_committer_may_still_index(
            received_ms in 1_000_000_000_000u64..3_000_000_000_000,
            delay_ms in 0u64..2 * ACK_WINDOW_SECS as u64 * 1000,
            skew_ms in -CLOCK_SKEW_SECS * 1000..=CLOCK_SKEW_SECS * 1000,
        ) {
            let id = Ulid::from_parts(received_ms, 7);
            let commit_ms = received_ms + delay_ms;
            let reconcile_secs = i64::try_from(commit_ms).unwrap_or(i64::MAX).saturating_add(skew_ms) / 1000;
            if !too_late_to_acknowledge(id, commit_ms) {
                prop_assert!(!never_acknowledged(id, reconcile_secs));
            }
            if never_acknowledged(id, reconcile_secs) {
                prop_assert!(too_late_to_acknowledge(id, commit_ms));
            }
        }
    }
}
