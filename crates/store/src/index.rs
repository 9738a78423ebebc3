//! The message index: which messages an inbox holds, in an order a page can be
//! cut from without reading the whole inbox.
//!
//! Every column follows from an inbox copy's key `<owner>/<inbox>/<ulid>.eml`
//! and its length, `received_at` being the ULID's time. Rows are written by
//! [`Mailroom`](crate::Mailroom) after the blob is durable, and the row's commit
//! is the message's acknowledgement: a blob without a row was never delivered
//! (a crash before the commit) and [`Mailroom::reconcile`](crate::Mailroom::reconcile)
//! removes it rather than indexing it. Listing is one range scan of the `(owner, inbox, id)` index, so
//! its cost depends on the page size, not on the inbox size.
//!
//! Each row has a `seq`, its commit order within its owner (on SQLite, across
//! the whole index: one writer at a time, and `AUTOINCREMENT` never reuses a
//! value; on PostgreSQL, see its `index` module), so the rows of an inbox a
//! reader has not seen are exactly those after the last `seq` it saw. The
//! event stream replays by it.
//!
//! Retention lives here too: the per-domain setting (`domains.retention`) and
//! the audited expiry of rows ([`MessageIndex::expire_messages`]).

use std::collections::HashSet;

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::{Address, Domain, OwnerId, UnixTime};
use async_trait::async_trait;
use sqlx::Row;
use ulid::Ulid;

use crate::blob::BlobKey;
use crate::header_summary::{HeaderFrom, HeaderSummary};
use crate::message_facts::MessageFacts;
use crate::search::{SearchHit, SearchQuery, ThreadSummary};
use crate::meta::StoreError;
use crate::sqlite::{SqliteStore, backend, commit_audited, require_ok};

/// A message to index: one stored inbox copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The inbox's owner (the blob prefix's first component).
    pub owner: OwnerId,
    /// The inbox.
    pub inbox: Address,
    /// The message id (the blob name without `.eml`).
    pub id: Ulid,
    /// The stored copy's length in bytes.
    pub size: u64,
    /// Its header summary ([`HeaderSummary::of_message`] of the stored copy).
    pub summary: HeaderSummary,
    /// What threads and search need ([`MessageFacts::of_message`] of the stored
    /// copy; `Default` gives a message that threads alone and is found only by
    /// its summary's fields).
    pub facts: MessageFacts,
}

impl NewMessage {
    /// Arrival time: the ULID's time, in Unix seconds.
    pub fn received_at(&self) -> UnixTime {
        received_at(self.id)
    }

    /// The blob key of this copy.
    pub fn key(&self) -> BlobKey {
        BlobKey::message(&self.owner, &self.inbox, self.id)
    }
}

/// The arrival time of a message, from its ULID, in Unix seconds.
pub fn received_at(id: Ulid) -> UnixTime {
    i64::try_from(id.timestamp_ms() / 1000).unwrap_or(i64::MAX)
}

/// One indexed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedMessage {
    /// Commit order of the row (see the module docs).
    pub seq: i64,
    /// The inbox's owner.
    pub owner: OwnerId,
    /// The inbox.
    pub inbox: Address,
    /// The message id.
    pub id: Ulid,
    /// Arrival time, Unix seconds.
    pub received_at: UnixTime,
    /// Size of the stored copy in bytes.
    pub size: u64,
    /// The header summary taken when it was indexed (empty for rows indexed
    /// before summaries existed).
    pub summary: HeaderSummary,
}

impl IndexedMessage {
    /// The blob key of this copy.
    pub fn key(&self) -> BlobKey {
        BlobKey::message(&self.owner, &self.inbox, self.id)
    }
}

/// Listing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListOrder {
    /// Newest first (descending ids).
    #[default]
    NewestFirst,
    /// Oldest first (ascending ids).
    OldestFirst,
}

/// One page request: ids strictly between `after` and `before`, in `order`, at
/// most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    /// Only ids greater than this.
    pub after: Option<Ulid>,
    /// Only ids less than this.
    pub before: Option<Ulid>,
    /// Order of the page.
    pub order: ListOrder,
    /// Most rows returned.
    pub limit: u32,
}

/// The message index and retention settings.
#[async_trait]
pub trait MessageIndex: Send + Sync + 'static {
    /// Indexes `rows` in one transaction (one commit for the whole batch) and
    /// returns them with their `seq`, in input order. Idempotent: a row already
    /// indexed keeps its `seq`.
    async fn index_messages(&self, rows: &[NewMessage]) -> Result<Vec<IndexedMessage>, StoreError>;
    /// One page of an inbox's messages.
    async fn list_messages(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        page: &PageQuery,
    ) -> Result<Vec<IndexedMessage>, StoreError>;
    /// One message's row (its `seq`, header summary, …), `None` if it is not indexed.
    async fn indexed_message(&self, owner: &OwnerId, inbox: &Address, id: Ulid) -> Result<Option<IndexedMessage>, StoreError>;
    /// Up to `limit` messages of the inbox with `seq > after_seq` (and, if
    /// given, `id > after_id`), by `seq`: what a reader who saw `after_seq` missed.
    async fn messages_since(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        after_seq: i64,
        after_id: Option<Ulid>,
        limit: u32,
    ) -> Result<Vec<IndexedMessage>, StoreError>;
    /// Every indexed id of an inbox (for [`Mailroom::reconcile`](crate::Mailroom::reconcile)).
    async fn indexed_ids(&self, owner: &OwnerId, inbox: &Address) -> Result<HashSet<Ulid>, StoreError>;
    /// Removes rows (their blobs are gone); returns how many existed.
    async fn unindex(&self, owner: &OwnerId, inbox: &Address, ids: &[Ulid]) -> Result<u64, StoreError>;

    /// Every hosted domain with its retention in seconds (`None`: the server default).
    async fn domain_retentions(&self) -> Result<Vec<(Domain, Option<i64>)>, StoreError>;
    /// Sets (or, with `None`, clears) a domain's retention, audited. `NotFound`
    /// if the domain is not hosted; `Invalid` for a non-positive retention.
    async fn set_domain_retention(
        &self,
        domain: &Domain,
        retention: Option<i64>,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Removes up to `limit` rows of `domain`'s inboxes received before `cutoff`,
    /// oldest first, and, if any, appends `event(count)` in the same transaction.
    /// Returns the removed rows (their blobs are the caller's to remove).
    async fn expire_messages(
        &self,
        domain: &Domain,
        cutoff: UnixTime,
        limit: u32,
        event: &(dyn Fn(u64) -> AuditEvent + Send + Sync),
    ) -> Result<Vec<IndexedMessage>, StoreError>;

    /// The inbox's threads, the one with the newest message first, only those
    /// whose newest message id is below `before`; at most `limit`.
    async fn list_threads(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        before: Option<Ulid>,
        limit: u32,
    ) -> Result<Vec<ThreadSummary>, StoreError>;
    /// The messages of one thread of the inbox, oldest first, at most `limit`
    /// (and [`MAX_THREAD_MESSAGES`](crate::search::MAX_THREAD_MESSAGES)).
    /// Empty when the inbox has no such thread (another inbox's, another owner's).
    async fn thread_messages(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        thread: Ulid,
        limit: u32,
    ) -> Result<Vec<IndexedMessage>, StoreError>;
    /// The inbox's messages matching `query`, newest first (by `seq`).
    async fn search_messages(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        query: &SearchQuery,
    ) -> Result<Vec<SearchHit>, StoreError>;

    /// Up to `limit` rows of any inbox whose thread keys and words are older
    /// than [`FACTS_VERSION`](crate::search::FACTS_VERSION) (indexed before
    /// threads and search, or before the attachment word), with
    /// `seq > after_seq`, by `seq`: what [`Mailroom::backfill_facts`](crate::Mailroom::backfill_facts)
    /// has left to do.
    async fn facts_pending(&self, after_seq: i64, limit: u32) -> Result<Vec<IndexedMessage>, StoreError>;
    /// For each row of `rows` (by owner, inbox and id) still older than
    /// [`FACTS_VERSION`](crate::search::FACTS_VERSION), in one transaction:
    /// writes its thread keys, words, attachment flag and recipients from the
    /// given facts (taken from its stored copy), joins it to the oldest thread
    /// its lookup keys reach, merging the threads it bridges (as indexing
    /// does), and marks it current. Rows missing or current already are
    /// skipped, so running it twice, or on two nodes, changes nothing more.
    /// Returns how many rows it wrote. Rows' `seq`, summary and listing are
    /// untouched.
    async fn refresh_facts(&self, rows: &[NewMessage]) -> Result<u64, StoreError>;
}

const COLUMNS: &str = "seq, owner, inbox, id, received_at, size, header_from_address, header_from_name, subject, authenticated";

/// The summary read back from its columns (an address-less name is dropped,
/// as [`HeaderSummary::of_message`] never writes one).
pub(crate) fn summary_from_columns(
    address: Option<String>,
    name: Option<String>,
    subject: Option<String>,
    authenticated: bool,
) -> HeaderSummary {
    HeaderSummary { header_from: address.map(|address| HeaderFrom { address, name }), subject, authenticated }
}

pub(crate) fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<IndexedMessage, StoreError> {
    let text = |i: usize| row.try_get::<String, _>(i).map_err(backend);
    let owner = text(1)?;
    let inbox = text(2)?;
    let id = text(3)?;
    let bad = |what: &str, v: &str| StoreError::Backend(format!("stored message {what} {v:?} is invalid"));
    let size: i64 = row.try_get(5).map_err(backend)?;
    let opt = |i: usize| row.try_get::<Option<String>, _>(i).map_err(backend);
    let summary = summary_from_columns(opt(6)?, opt(7)?, opt(8)?, row.try_get(9).map_err(backend)?);
    Ok(IndexedMessage {
        seq: row.try_get(0).map_err(backend)?,
        owner: owner.parse().map_err(|_| bad("owner", &owner))?,
        inbox: inbox.parse().map_err(|_| bad("inbox", &inbox))?,
        id: Ulid::from_string(&id).map_err(|_| bad("id", &id))?,
        received_at: row.try_get(4).map_err(backend)?,
        size: u64::try_from(size).map_err(|_| bad("size", &size.to_string()))?,
        summary,
    })
}

impl NewMessage {
    pub(crate) fn indexed(&self, seq: i64) -> IndexedMessage {
        IndexedMessage {
            seq,
            owner: self.owner.clone(),
            inbox: self.inbox.clone(),
            id: self.id,
            received_at: self.received_at(),
            size: self.size,
            summary: self.summary.clone(),
        }
    }
}

#[async_trait]
impl MessageIndex for SqliteStore {
    async fn index_messages(&self, rows: &[NewMessage]) -> Result<Vec<IndexedMessage>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction for the batch: each new row with its thread (found
        // among rows committed or written earlier in it), thread keys and words
        // (search.rs); a row already indexed keeps its seq.
        let mut tx = self.write_tx().await?;
        let mut out = Vec::with_capacity(rows.len());
        for m in rows {
            let seq = match crate::search::row_seq(&mut tx, m, false).await? {
                Some(seq) => seq,
                None => crate::search::insert_message(&mut tx, m).await?,
            };
            out.push(m.indexed(seq));
        }
        tx.commit().await.map_err(backend)?;
        Ok(out)
    }

    async fn list_messages(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        page: &PageQuery,
    ) -> Result<Vec<IndexedMessage>, StoreError> {
        let direction = match page.order {
            ListOrder::NewestFirst => "DESC",
            ListOrder::OldestFirst => "ASC",
        };
        // `''` sorts before and `'~'` after every ULID (Crockford base32, upper case).
        let sql = format!(
            "SELECT {COLUMNS} FROM messages
              WHERE owner = ?1 AND inbox = ?2 AND id > ?3 AND id < ?4
              ORDER BY id {direction} LIMIT ?5"
        );
        let rows = sqlx::query(&sql)
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .bind(page.after.map_or_else(String::new, |u| u.to_string()))
            .bind(page.before.map_or_else(|| "~".to_owned(), |u| u.to_string()))
            .bind(i64::from(page.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(from_row).collect()
    }

    async fn indexed_message(&self, owner: &OwnerId, inbox: &Address, id: Ulid) -> Result<Option<IndexedMessage>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM messages WHERE owner = ?1 AND inbox = ?2 AND id = ?3");
        let row = sqlx::query(&sql)
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(from_row).transpose()
    }

    async fn messages_since(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        after_seq: i64,
        after_id: Option<Ulid>,
        limit: u32,
    ) -> Result<Vec<IndexedMessage>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM messages INDEXED BY messages_by_inbox_seq
              WHERE owner = ?1 AND inbox = ?2 AND seq > ?3 AND id > ?4
              ORDER BY seq LIMIT ?5"
        ))
        .bind(owner.as_str())
        .bind(inbox.as_str())
        .bind(after_seq)
        .bind(after_id.map_or_else(String::new, |u| u.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(from_row).collect()
    }

    async fn indexed_ids(&self, owner: &OwnerId, inbox: &Address) -> Result<HashSet<Ulid>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM messages WHERE owner = ?1 AND inbox = ?2")
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|(id,)| Ulid::from_string(id).map_err(|_| StoreError::Backend(format!("stored message id {id:?} is invalid"))))
            .collect()
    }

    async fn unindex(&self, owner: &OwnerId, inbox: &Address, ids: &[Ulid]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write_tx().await?;
        let mut removed = 0;
        for id in ids {
            let done = sqlx::query("DELETE FROM messages WHERE owner = ?1 AND inbox = ?2 AND id = ?3")
                .bind(owner.as_str())
                .bind(inbox.as_str())
                .bind(id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            removed += done.rows_affected();
        }
        tx.commit().await.map_err(backend)?;
        Ok(removed)
    }

    async fn domain_retentions(&self) -> Result<Vec<(Domain, Option<i64>)>, StoreError> {
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as("SELECT name, retention FROM domains ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter()
            .map(|(name, retention)| {
                let domain = name.parse().map_err(|_| StoreError::Backend(format!("stored domain {name:?} is invalid")))?;
                Ok((domain, retention))
            })
            .collect()
    }

    async fn set_domain_retention(
        &self,
        domain: &Domain,
        retention: Option<i64>,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        if let Some(secs) = retention
            && secs <= 0
        {
            return Err(StoreError::Invalid(format!("retention {secs} s is not positive")));
        }
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("UPDATE domains SET retention = ?1 WHERE name = ?2")
            .bind(retention)
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("domain {domain}") });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn expire_messages(
        &self,
        domain: &Domain,
        cutoff: UnixTime,
        limit: u32,
        event: &(dyn Fn(u64) -> AuditEvent + Send + Sync),
    ) -> Result<Vec<IndexedMessage>, StoreError> {
        let mut tx = self.write_tx().await?;
        // Domain names are `[a-z0-9.-]`, none of them a GLOB wildcard; GLOB is
        // exact about case, where LIKE is not.
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM messages INDEXED BY messages_by_time
              WHERE received_at < ?1 AND inbox GLOB ?2
              ORDER BY received_at LIMIT ?3"
        ))
        .bind(cutoff)
        .bind(format!("*@{domain}"))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let expired = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        if expired.is_empty() {
            return Ok(expired);
        }
        for m in &expired {
            sqlx::query("DELETE FROM messages WHERE seq = ?1").bind(m.seq).execute(&mut *tx).await.map_err(backend)?;
        }
        let audit = event(expired.len() as u64);
        require_ok(&audit)?;
        let sealed = self.append_in(&mut tx, &audit).await?;
        tx.commit().await.map_err(backend)?;
        let _receipt = sealed.into_receipt();
        Ok(expired)
    }

    async fn list_threads(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        before: Option<Ulid>,
        limit: u32,
    ) -> Result<Vec<ThreadSummary>, StoreError> {
        self.list_threads_sqlite(owner, inbox, before, limit).await
    }

    async fn thread_messages(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        thread: Ulid,
        limit: u32,
    ) -> Result<Vec<IndexedMessage>, StoreError> {
        self.thread_messages_sqlite(owner, inbox, thread, limit).await
    }

    async fn search_messages(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        query: &SearchQuery,
    ) -> Result<Vec<SearchHit>, StoreError> {
        self.search_sqlite(owner, inbox, query).await
    }

    async fn facts_pending(&self, after_seq: i64, limit: u32) -> Result<Vec<IndexedMessage>, StoreError> {
        self.facts_pending_sqlite(after_seq, limit).await
    }

    async fn refresh_facts(&self, rows: &[NewMessage]) -> Result<u64, StoreError> {
        self.refresh_facts_sqlite(rows).await
    }
}
