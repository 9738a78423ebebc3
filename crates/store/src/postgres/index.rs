//! The message index on PostgreSQL.
//!
//! **An owner's rows become visible in `seq` order.** The event stream and
//! every waiter rely on this: a reader that has seen `seq` N of an inbox asks
//! only for its rows after N, so a row with a smaller `seq` that becomes
//! visible later is never seen. A plain `SEQUENCE` alone does not give that:
//! `nextval` hands out numbers at once, but the transactions holding them
//! commit in any order (node A takes 7, node B takes 8 and commits first; a
//! reader sees 8, and 7 appears after it).
//!
//! So an indexing transaction first takes a transaction-scoped advisory lock
//! for each owner it writes for (`agentkeys_lock_owners_for_index`, in sorted
//! order), then its values from the sequence `message_seq_values`, inserts its
//! rows and commits; the locks are released only after the commit has made its
//! rows visible. The transaction is one statement, `agentkeys_index_messages`
//! (migration 0022), so the locks are held for the server's work and the
//! commit, not across the node's round trips. The owner's next indexer, on any
//! node, waits at the lock and takes its values only then, so every row of
//! that owner with a larger `seq` becomes visible after every one with a
//! smaller `seq`. Indexers for different owners do not wait for each other
//! (until migration 0022 one counter row serialized them all); one turn covers
//! a whole batch ([`crate::Mailroom`] commits many messages per transaction).
//! The one reader across owners, the webhook feeder, follows the writing
//! transactions instead (`xact`, see `message_feed`).
//!
//! The same transaction notifies [`MAIL_CHANNEL`](super::MAIL_CHANNEL) with one
//! payload per new row. PostgreSQL delivers a transaction's notifications only
//! when it commits, in commit order, so every node's [`PgEvents`](super::PgEvents)
//! hears about each owner's rows in `seq` order and never before they are visible.

use std::collections::HashSet;

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::{Address, Domain, OwnerId, UnixTime};
use async_trait::async_trait;
use ulid::Ulid;

use super::audit::commit_audited;
use super::{PgStore, backend};
use crate::index::{summary_from_columns, IndexedMessage, ListOrder, MessageIndex, NewMessage, PageQuery};
use crate::search::{
    Bind, FACTS_VERSION, MAX_THREAD_MESSAGES, SEARCH_COLUMNS, SearchDialect, SearchHit, SearchQuery, ThreadSummary, pg_terms,
    pg_tsquery, search_statement,
};
use crate::meta::StoreError;
use crate::sqlite::require_ok;

const COLUMNS: &str =
    "seq, owner, inbox, id, received_at, size, header_from_address, header_from_name, subject, authenticated";

/// A row of [`COLUMNS`].
type MessageRow = (i64, String, String, String, i64, i64, Option<String>, Option<String>, Option<String>, bool);

fn from_row(
    (seq, owner, inbox, id, received_at, size, from_address, from_name, subject, authenticated): MessageRow,
) -> Result<IndexedMessage, StoreError> {
    let bad = |what: &str, v: &str| StoreError::Backend(format!("stored message {what} {v:?} is invalid"));
    Ok(IndexedMessage {
        seq,
        owner: owner.parse().map_err(|_| bad("owner", &owner))?,
        inbox: inbox.parse().map_err(|_| bad("inbox", &inbox))?,
        id: Ulid::from_string(&id).map_err(|_| bad("id", &id))?,
        received_at,
        size: u64::try_from(size).map_err(|_| bad("size", &size.to_string()))?,
        summary: summary_from_columns(from_address, from_name, subject, authenticated),
    })
}

fn indexed(m: &NewMessage, seq: i64) -> IndexedMessage {
    IndexedMessage {
        seq,
        owner: m.owner.clone(),
        inbox: m.inbox.clone(),
        id: m.id,
        received_at: m.received_at(),
        size: m.size,
        summary: m.summary.clone(),
    }
}

/// Longest notification payload PostgreSQL accepts: "shorter than 8000 bytes"
/// (`pg_notify`). `agentkeys_index_messages` (migration 0006) leaves the
/// summary out of a payload that would be longer, rather than fail the
/// transaction that makes the mail durable; the summary's own limits
/// (`header_summary`) keep every real payload far below it.
pub const MAX_NOTIFY_PAYLOAD_BYTES: usize = 7999;

#[async_trait]
impl MessageIndex for PgStore {
    async fn index_messages(&self, rows: &[NewMessage]) -> Result<Vec<IndexedMessage>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut sizes = Vec::with_capacity(rows.len());
        for m in rows {
            sizes.push(i64::try_from(m.size).map_err(|_| StoreError::Invalid(format!("message size {} is too large", m.size)))?);
        }
        let owners: Vec<&str> = rows.iter().map(|m| m.owner.as_str()).collect();
        let inboxes: Vec<&str> = rows.iter().map(|m| m.inbox.as_str()).collect();
        let ids: Vec<String> = rows.iter().map(|m| m.id.to_string()).collect();
        let received: Vec<i64> = rows.iter().map(NewMessage::received_at).collect();
        let from_address: Vec<Option<&str>> =
            rows.iter().map(|m| m.summary.header_from.as_ref().map(|f| f.address.as_str())).collect();
        let from_name: Vec<Option<&str>> =
            rows.iter().map(|m| m.summary.header_from.as_ref().and_then(|f| f.name.as_deref())).collect();
        let subject: Vec<Option<&str>> = rows.iter().map(|m| m.summary.subject.as_deref()).collect();
        let authenticated: Vec<bool> = rows.iter().map(|m| m.summary.authenticated).collect();
        let has_attachment: Vec<bool> = rows.iter().map(|m| m.facts.has_attachment).collect();
        let recipients: Vec<String> = rows.iter().map(|m| m.facts.recipients.join(" ")).collect();
        let terms: Vec<String> = rows.iter().map(pg_terms).collect();
        // Thread keys, flat: the input position (from 1) of each, the key, and
        // whether the row looks it up (MessageFacts::thread_lookup_keys).
        let (mut key_n, mut key, mut key_lookup) = (Vec::<i64>::new(), Vec::<String>::new(), Vec::<bool>::new());
        for (i, m) in rows.iter().enumerate() {
            let lookup = m.facts.thread_lookup_keys();
            let mut keys = m.facts.thread_keys();
            keys.extend(lookup.iter().filter(|k| !keys.contains(k)).cloned().collect::<Vec<_>>());
            for k in keys {
                key_n.push(i as i64 + 1);
                key_lookup.push(lookup.contains(&k));
                key.push(k);
            }
        }
        // One statement, in its own transaction: the server locks the rows'
        // owners, skips rows indexed before (they keep their seq), numbers and
        // inserts the new ones and notifies, then commits (module docs;
        // migration 0022).
        let seqs: Vec<(i64, i64)> = sqlx::query_as("SELECT n, seq FROM agentkeys_index_messages($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)")
            .bind(&owners)
            .bind(&inboxes)
            .bind(&ids)
            .bind(&received)
            .bind(&sizes)
            .bind(&from_address)
            .bind(&from_name)
            .bind(&subject)
            .bind(&authenticated)
            .bind(&has_attachment)
            .bind(&recipients)
            .bind(&terms)
            .bind(&key_n)
            .bind(&key)
            .bind(&key_lookup)
            .bind(super::MAIL_CHANNEL)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        if seqs.len() != rows.len() || seqs.iter().enumerate().any(|(i, (n, _))| usize::try_from(*n) != Ok(i + 1)) {
            return Err(StoreError::Backend(format!("indexing {} rows answered {} seqs", rows.len(), seqs.len())));
        }
        Ok(rows.iter().zip(&seqs).map(|(m, (_, seq))| indexed(m, *seq)).collect())
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
        let rows: Vec<MessageRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM messages
              WHERE owner = $1 AND inbox = $2 AND ($3::text IS NULL OR id > $3) AND ($4::text IS NULL OR id < $4)
              ORDER BY id {direction} LIMIT $5"
        ))
        .bind(owner.as_str())
        .bind(inbox.as_str())
        .bind(page.after.map(|u| u.to_string()))
        .bind(page.before.map(|u| u.to_string()))
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(from_row).collect()
    }

    async fn indexed_message(&self, owner: &OwnerId, inbox: &Address, id: Ulid) -> Result<Option<IndexedMessage>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM messages WHERE owner = $1 AND inbox = $2 AND id = $3");
        let row: Option<MessageRow> = sqlx::query_as(&sql)
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(from_row).transpose()
    }

    async fn messages_since(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        after_seq: i64,
        after_id: Option<Ulid>,
        limit: u32,
    ) -> Result<Vec<IndexedMessage>, StoreError> {
        let rows: Vec<MessageRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM messages
              WHERE owner = $1 AND inbox = $2 AND seq > $3 AND ($4::text IS NULL OR id > $4)
              ORDER BY seq LIMIT $5"
        ))
        .bind(owner.as_str())
        .bind(inbox.as_str())
        .bind(after_seq)
        .bind(after_id.map(|u| u.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(from_row).collect()
    }

    async fn indexed_ids(&self, owner: &OwnerId, inbox: &Address) -> Result<HashSet<Ulid>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM messages WHERE owner = $1 AND inbox = $2")
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
        let ids: Vec<String> = ids.iter().map(Ulid::to_string).collect();
        let done = sqlx::query("DELETE FROM messages WHERE owner = $1 AND inbox = $2 AND id = ANY($3::text[])")
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .bind(&ids)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
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
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE domains SET retention = $1 WHERE name = $2")
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
        let mut tx = self.begin().await?;
        // Rows another node's sweep is removing right now are skipped (it
        // removes and counts them), so two sweeps never count a row twice.
        let rows: Vec<MessageRow> = sqlx::query_as(&format!(
            "DELETE FROM messages WHERE seq = ANY (ARRAY(
                 SELECT seq FROM messages
                  WHERE received_at < $1 AND right(inbox, length($2) + 1) = '@' || $2
                  ORDER BY received_at, seq LIMIT $3
                    FOR UPDATE SKIP LOCKED))
             RETURNING {COLUMNS}"
        ))
        .bind(cutoff)
        .bind(domain.as_str())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let mut expired = rows.into_iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        if expired.is_empty() {
            return Ok(expired);
        }
        expired.sort_by_key(|m| (m.received_at, m.seq));
        let audit = event(expired.len() as u64);
        require_ok(&audit)?;
        let sealed = self.append_in(&mut tx, &audit).await?;
        let _receipt = commit_audited(tx, sealed).await?;
        Ok(expired)
    }

    async fn list_threads(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        before: Option<Ulid>,
        limit: u32,
    ) -> Result<Vec<ThreadSummary>, StoreError> {
        let rows: Vec<ThreadRow> = sqlx::query_as(&format!(
            "SELECT {SEARCH_COLUMNS}, t.n FROM
               (SELECT thread_id, count(*) AS n, max(id) AS last_id FROM messages
                 WHERE owner = $1 AND inbox = $2 GROUP BY thread_id
                HAVING ($3::text IS NULL OR max(id) < $3)
                 ORDER BY last_id DESC LIMIT $4) t
               JOIN messages m ON m.owner = $1 AND m.inbox = $2 AND m.id = t.last_id
              ORDER BY t.last_id DESC"
        ))
        .bind(owner.as_str())
        .bind(inbox.as_str())
        .bind(before.map(|u| u.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter()
            .map(|(a, b, c, d, e, f, g, h, i, j, k, n)| {
                let (latest, thread_id) = hit_from_row((a, b, c, d, e, f, g, h, i, j, k))?;
                Ok(ThreadSummary { thread_id, message_count: u64::try_from(n).unwrap_or(0), latest })
            })
            .collect()
    }

    async fn thread_messages(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        thread: Ulid,
        limit: u32,
    ) -> Result<Vec<IndexedMessage>, StoreError> {
        let rows: Vec<MessageRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM messages WHERE owner = $1 AND inbox = $2 AND thread_id = $3 ORDER BY id LIMIT $4"
        ))
        .bind(owner.as_str())
        .bind(inbox.as_str())
        .bind(thread.to_string())
        .bind(i64::from(limit.min(MAX_THREAD_MESSAGES)))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(from_row).collect()
    }

    async fn search_messages(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        query: &SearchQuery,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let Some((sql, binds)) = search_statement(&PG_SEARCH, owner, inbox, query) else {
            return Ok(Vec::new());
        };
        // Not a cached prepared statement: after five runs of one, PostgreSQL
        // may switch to a generic plan, made without the tsquery's value, which
        // cannot tell a word no message has from a common one. An unnamed
        // statement is planned with its values every time (PG_SEARCH).
        let rows = bind_all(sqlx::query_as::<_, HitRow>(&sql).persistent(false), binds)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter()
            .map(|row| {
                let (message, thread_id) = hit_from_row(row)?;
                Ok(SearchHit { message, thread_id })
            })
            .collect()
    }

    async fn facts_pending(&self, after_seq: i64, limit: u32) -> Result<Vec<IndexedMessage>, StoreError> {
        // The literal bound matches the partial index `messages_facts_pending`.
        let rows: Vec<MessageRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM messages WHERE facts_version < {FACTS_VERSION} AND seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(from_row).collect()
    }

    async fn refresh_facts(&self, rows: &[NewMessage]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // The indexing statement's locks (module docs): an owner's threads are
        // read and merged by one writer at a time, here as there.
        let owners: Vec<&str> = rows.iter().map(|m| m.owner.as_str()).collect();
        sqlx::query("SELECT agentkeys_lock_owners_for_index($1)").bind(&owners).execute(&mut *tx).await.map_err(backend)?;
        let mut written = 0;
        for m in rows {
            let terms = pg_terms(m);
            let row: Option<(i64,)> = sqlx::query_as(&format!(
                "UPDATE messages SET has_attachment = $4, recipients = $5, facts_version = {FACTS_VERSION},
                        search = CASE WHEN $6 = '' THEN ''::tsvector
                                      ELSE array_to_tsvector(array_remove(string_to_array($6, ' '), '')) END
                  WHERE owner = $1 AND inbox = $2 AND id = $3 AND facts_version < {FACTS_VERSION}
                 RETURNING seq"
            ))
            .bind(m.owner.as_str())
            .bind(m.inbox.as_str())
            .bind(m.id.to_string())
            .bind(m.facts.has_attachment)
            .bind(m.facts.recipients.join(" "))
            .bind(&terms)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            let Some((seq,)) = row else { continue };
            written += 1;
            // Its keys first: the lookup then reaches its own thread too, and
            // the threads of later rows that link to it.
            sqlx::query(
                "INSERT INTO message_thread_keys (owner, inbox, key, seq)
                 SELECT DISTINCT $1, $2, k, $4 FROM unnest($3::text[]) AS k ON CONFLICT DO NOTHING",
            )
            .bind(m.owner.as_str())
            .bind(m.inbox.as_str())
            .bind(m.facts.thread_keys())
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            let (threads,): (Option<Vec<String>>,) = sqlx::query_as(
                "SELECT array_agg(DISTINCT m.thread_id ORDER BY m.thread_id)
                   FROM message_thread_keys t JOIN messages m ON m.seq = t.seq
                  WHERE t.owner = $1 AND t.inbox = $2 AND t.key = ANY ($3) AND m.thread_id IS NOT NULL",
            )
            .bind(m.owner.as_str())
            .bind(m.inbox.as_str())
            .bind(m.facts.thread_lookup_keys())
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
            if let Some((first, rest)) = threads.as_deref().and_then(<[String]>::split_first) {
                sqlx::query(
                    "UPDATE messages SET thread_id = $3
                      WHERE owner = $1 AND inbox = $2 AND (thread_id = ANY ($4) OR seq = $5)",
                )
                .bind(m.owner.as_str())
                .bind(m.inbox.as_str())
                .bind(first)
                .bind(rest)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(written)
    }
}

fn pg_placeholder(n: usize) -> String {
    format!("${n}")
}

/// PostgreSQL: the GIN index's candidates (or a walk by `seq`, as the planner
/// judges), newest first. The planner judges well only with the tsquery's
/// value (the statement is not cached: `search_messages`), with statistics on
/// enough lexemes (migration 0024) and without a made-up selectivity for the
/// domain rule (`exact_rules`); BENCHMARKS.md, "Search", has the plans.
const PG_SEARCH: SearchDialect = SearchDialect {
    placeholder: pg_placeholder,
    strpos: "strpos(",
    from: "messages m",
    full_text: "m.search @@ $1::tsquery",
    order: "m.seq",
    match_text: pg_tsquery,
};

impl PgStore {
    /// PostgreSQL's plan of the statement
    /// [`MessageIndex::search_messages`] runs for `query`, run for real
    /// (`EXPLAIN (ANALYZE, BUFFERS)`, one line per row); empty when it runs
    /// none. For the search bench.
    pub async fn search_plan(&self, owner: &OwnerId, inbox: &Address, query: &SearchQuery) -> Result<Vec<String>, StoreError> {
        let Some((sql, binds)) = search_statement(&PG_SEARCH, owner, inbox, query) else {
            return Ok(Vec::new());
        };
        let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
        let lines = bind_all(sqlx::query_as::<_, (String,)>(&sql), binds).fetch_all(&self.pool).await.map_err(backend)?;
        Ok(lines.into_iter().map(|(line,)| line).collect())
    }

    /// Test support: makes the rows of these message ids look as rows indexed
    /// before threads and search look after the migrations (no words, no
    /// thread keys, no attachment flag or recipients, a thread of their own,
    /// `facts_version` 0).
    #[cfg(feature = "conformance")]
    #[doc(hidden)]
    pub async fn forget_facts(&self, ids: &[Ulid]) -> Result<(), StoreError> {
        let ids: Vec<String> = ids.iter().map(Ulid::to_string).collect();
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("DELETE FROM message_thread_keys WHERE seq IN (SELECT seq FROM messages WHERE id = ANY ($1))")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(
            "UPDATE messages SET facts_version = 0, has_attachment = false, recipients = '', thread_id = id,
                    search = ''::tsvector WHERE id = ANY ($1)",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }
}

/// Binds `binds` in order.
fn bind_all<'q, O>(
    mut q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    binds: Vec<Bind>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s),
            Bind::Int(i) => q.bind(i),
            Bind::Bool(v) => q.bind(v),
        };
    }
    q
}

/// A row of [`SEARCH_COLUMNS`].
type HitRow = (i64, String, String, String, i64, i64, Option<String>, Option<String>, Option<String>, bool, Option<String>);
/// A row of [`SEARCH_COLUMNS`] and a count.
type ThreadRow = (i64, String, String, String, i64, i64, Option<String>, Option<String>, Option<String>, bool, Option<String>, i64);

fn hit_from_row(
    (seq, owner, inbox, id, received_at, size, from_address, from_name, subject, authenticated, thread): HitRow,
) -> Result<(IndexedMessage, Ulid), StoreError> {
    let message = from_row((seq, owner, inbox, id, received_at, size, from_address, from_name, subject, authenticated))?;
    let thread_id = match thread {
        None => message.id,
        Some(t) => Ulid::from_string(&t).map_err(|_| StoreError::Backend(format!("stored thread id {t:?} is invalid")))?,
    };
    Ok((message, thread_id))
}
