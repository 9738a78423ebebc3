//! The message index on PostgreSQL.
//!
//! **Rows become visible in `seq` order.** The event stream and every waiter
//! rely on this: a reader that has seen `seq` N asks only for rows after N, so
//! a row with a smaller `seq` that becomes visible later is never seen. A plain
//! `SEQUENCE` does not give that: `nextval` hands out numbers at once, but the
//! transactions holding them commit in any order (node A takes 7, node B takes
//! 8 and commits first; a reader sees 8, and 7 appears after it).
//!
//! So `seq` comes from a one-row counter, `message_seq`. An indexing
//! transaction locks the row (`SELECT … FOR UPDATE`), takes the next values,
//! inserts its rows, moves the counter and commits; the lock is released only
//! after the commit has made its rows visible. The next indexer, on any node,
//! waits at the lock and takes its values only then, so every row with a larger
//! `seq` becomes visible after every row with a smaller one. Indexers take
//! turns, but one turn covers a whole batch ([`crate::Mailroom`] commits many
//! messages per transaction).
//!
//! The same transaction notifies [`MAIL_CHANNEL`](super::MAIL_CHANNEL) with one
//! payload per new row. PostgreSQL delivers a transaction's notifications only
//! when it commits, in commit order, so every node's [`PgEvents`](super::PgEvents)
//! hears about rows in `seq` order and never before they are visible.

use std::collections::{HashMap, HashSet};

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::{Address, Domain, OwnerId, UnixTime};
use async_trait::async_trait;
use ulid::Ulid;

use super::audit::commit_audited;
use super::{PgStore, backend};
use crate::index::{summary_from_columns, IndexedMessage, ListOrder, MessageIndex, NewMessage, PageQuery};
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
/// (`pg_notify`), beyond which the whole indexing transaction would fail.
pub const MAX_NOTIFY_PAYLOAD_BYTES: usize = 7999;

/// The notification payload announcing one indexed row (read back by
/// [`super::events`]). Its summary is bounded (`header_summary`'s limits), so
/// the payload stays far below [`MAX_NOTIFY_PAYLOAD_BYTES`]; should it ever
/// not, the summary is left out (listeners then see an empty summary) rather
/// than fail the transaction that makes the mail durable.
pub(crate) fn payload(m: &IndexedMessage) -> String {
    let full = serde_json::json!({
        "seq": m.seq,
        "owner": m.owner.as_str(),
        "inbox": m.inbox.as_str(),
        "id": m.id.to_string(),
        "size": m.size,
        "from_address": m.summary.header_from.as_ref().map(|f| f.address.as_str()),
        "from_name": m.summary.header_from.as_ref().and_then(|f| f.name.as_deref()),
        "subject": m.summary.subject.as_deref(),
        "authenticated": m.summary.authenticated,
    })
    .to_string();
    if full.len() <= MAX_NOTIFY_PAYLOAD_BYTES {
        return full;
    }
    serde_json::json!({
        "seq": m.seq,
        "owner": m.owner.as_str(),
        "inbox": m.inbox.as_str(),
        "id": m.id.to_string(),
        "size": m.size,
    })
    .to_string()
}

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

        let mut tx = self.begin().await?;
        // The counter row, held until the commit (module docs).
        let (last,): (i64,) = sqlx::query_as("SELECT last FROM message_seq WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        // Rows indexed before keep their seq. Every inserter holds the counter,
        // so none can appear between this read and the insert.
        let existing: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT m.owner, m.inbox, m.id, m.seq
               FROM messages m
               JOIN unnest($1::text[], $2::text[], $3::text[]) AS k (owner, inbox, id)
                 ON m.owner = k.owner AND m.inbox = k.inbox AND m.id = k.id",
        )
        .bind(&owners)
        .bind(&inboxes)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let mut seqs: HashMap<(String, String, String), i64> =
            existing.into_iter().map(|(o, i, id, seq)| ((o, i, id), seq)).collect();
        let mut next = last;
        let mut out = Vec::with_capacity(rows.len());
        let mut new = Vec::new();
        for ((m, id), size) in rows.iter().zip(&ids).zip(&sizes) {
            let key = (m.owner.as_str().to_owned(), m.inbox.as_str().to_owned(), id.clone());
            let seq = match seqs.get(&key) {
                Some(&seq) => seq,
                None => {
                    next += 1;
                    seqs.insert(key, next);
                    new.push((next, m, id, *size));
                    next
                }
            };
            out.push(indexed(m, seq));
        }
        if !new.is_empty() {
            sqlx::query(
                "INSERT INTO messages (seq, owner, inbox, id, received_at, size,
                                   header_from_address, header_from_name, subject, authenticated)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                                      $7::text[], $8::text[], $9::text[], $10::boolean[])",
            )
            .bind(new.iter().map(|(seq, ..)| *seq).collect::<Vec<i64>>())
            .bind(new.iter().map(|(_, m, ..)| m.owner.as_str()).collect::<Vec<&str>>())
            .bind(new.iter().map(|(_, m, ..)| m.inbox.as_str()).collect::<Vec<&str>>())
            .bind(new.iter().map(|(_, _, id, _)| id.as_str()).collect::<Vec<&str>>())
            .bind(new.iter().map(|(_, m, ..)| m.received_at()).collect::<Vec<i64>>())
            .bind(new.iter().map(|(.., size)| *size).collect::<Vec<i64>>())
            .bind(new.iter().map(|(_, m, ..)| m.summary.header_from.as_ref().map(|f| f.address.as_str())).collect::<Vec<Option<&str>>>())
            .bind(new.iter().map(|(_, m, ..)| m.summary.header_from.as_ref().and_then(|f| f.name.as_deref())).collect::<Vec<Option<&str>>>())
            .bind(new.iter().map(|(_, m, ..)| m.summary.subject.as_deref()).collect::<Vec<Option<&str>>>())
            .bind(new.iter().map(|(_, m, ..)| m.summary.authenticated).collect::<Vec<bool>>())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            sqlx::query("UPDATE message_seq SET last = $1 WHERE id = 1").bind(next).execute(&mut *tx).await.map_err(backend)?;
            // In seq order: a function scan over an array yields it in order.
            let payloads: Vec<String> = new.iter().map(|(seq, m, ..)| payload(&indexed(m, *seq))).collect();
            sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .bind(super::MAIL_CHANNEL)
                .bind(&payloads)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
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

    async fn message_seq(&self, owner: &OwnerId, inbox: &Address, id: Ulid) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT seq FROM messages WHERE owner = $1 AND inbox = $2 AND id = $3")
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.map(|(seq,)| seq))
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header_summary::{
        HeaderFrom, HeaderSummary, MAX_SUMMARY_FROM_ADDRESS_CHARS, MAX_SUMMARY_FROM_NAME_CHARS, MAX_SUMMARY_SUBJECT_CHARS,
    };

    /// The largest summary there can be (every character the longest to
    /// escape in JSON) still fits a notification, and travels in it whole.
    #[test]
    fn the_largest_summary_fits_a_notification() {
        let wide = |n: usize| "\u{10FFFF}\"\\".chars().cycle().take(n).collect::<String>();
        let m = IndexedMessage {
            seq: i64::MAX,
            owner: "0x00000000000000000000000000000000000000aa".parse().unwrap(),
            inbox: format!("{}@{}.test", "a".repeat(64), "d".repeat(60)).parse().unwrap(),
            id: Ulid::new(),
            received_at: 0,
            size: u64::MAX,
            summary: HeaderSummary {
                header_from: Some(HeaderFrom {
                    address: wide(MAX_SUMMARY_FROM_ADDRESS_CHARS),
                    name: Some(wide(MAX_SUMMARY_FROM_NAME_CHARS)),
                }),
                subject: Some(wide(MAX_SUMMARY_SUBJECT_CHARS)),
                authenticated: true,
            },
        };
        let p = payload(&m);
        assert!(p.len() <= MAX_NOTIFY_PAYLOAD_BYTES, "{} bytes", p.len());
        let back: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(back["subject"].as_str(), m.summary.subject.as_deref());
    }
}
