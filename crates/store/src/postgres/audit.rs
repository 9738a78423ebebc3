//! The audit log on PostgreSQL: one hash chain for every node.
//!
//! **One statement per append.** The chain head lives in a one-row table,
//! `audit_chain`. An append is one call of the server-side function
//! `agentkeys_audit_append` (migration 0017): it locks the head row
//! (`FOR UPDATE`), seals each record onto it, inserts them and moves the head,
//! all inside the server. A second appender (this process or another node)
//! waits at that lock until the first's transaction ends and then reads the
//! head the first one left (PostgreSQL re-reads a row it waited for). So two
//! appenders never seal onto the same head, seq has no gaps, and the head is
//! never held across one of a node's round trips: a stand-alone append is one
//! statement in its own transaction; an audited write holds the head from its
//! last statement to its `COMMIT` only.
//!
//! **The hash stays `agentkeys_audit`'s.** The function computes
//! `SHA-256(prev_hash || canonical(record))` in SQL over the same encoding
//! (`agentkeys_audit_hash`), from the format tag and the canonical detail JSON
//! this node makes with [`agentkeys_audit`]. Every record the function returns
//! is sealed again here in Rust onto the head it reports (its seq − 1 and
//! prev_hash) and must come out with the same hash, or the append fails
//! ([`seal_returned`]): no receipt is handed out for a record Rust would not
//! have written. Inside an audited transaction that failure rolls the change
//! back; for a stand-alone append (already committed) it refuses the receipt,
//! and `audit verify` reports the record. Equality over generated records,
//! the committed test vectors and the extremes of seq and ts is pinned in
//! `tests/postgres.rs` and by the conformance suite's chains.
//!
//! The head lock is always the last lock an audited transaction takes (its row
//! change comes first), so waiting for it cannot close a deadlock cycle.
//!
//! **Group commit.** Stand-alone appends ([`MetadataStore::audit_append`]) go to
//! one writer task per store that appends every event waiting in one statement;
//! each caller gets its receipt only after that statement committed (as in
//! [`crate::group_commit`]). Any database failure fails every caller of the
//! batch; an event that cannot be sealed is refused alone and takes no seq.
//!
//! [`MetadataStore::audit_append`]: crate::MetadataStore::audit_append

use agentkeys_audit::{AuditEvent, AuditReceipt, ChainHead, FORMAT_TAG, SealedRecord, canonical_json, hash_from_hex, hash_to_hex};
use sqlx::PgExecutor;
use tokio::sync::{mpsc, oneshot};

use super::{PgStore, backend};
use crate::group_commit::Writer;
use crate::meta::StoreError;
use crate::sqlite::{Clock, seal_event};

/// Most appends one writer transaction takes.
pub(crate) const MAX_AUDIT_BATCH: usize = 256;
/// Appends that may wait for the writer before callers wait to hand theirs over.
const AUDIT_QUEUE_DEPTH: usize = 4 * MAX_AUDIT_BATCH;

/// An event checked for the chain's limits, with the columns the append
/// function takes. Made before the statement, so a bad event is refused alone.
struct Prepared<'a> {
    event: &'a AuditEvent,
    detail: String,
    detail_owner: Option<String>,
    detail_agent: Option<String>,
}

fn prepare(event: &AuditEvent) -> Result<Prepared<'_>, StoreError> {
    let invalid = |e: agentkeys_audit::AuditError| StoreError::Invalid(format!("cannot audit {}: {e}", event.operation));
    event.validate().map_err(invalid)?;
    let detail = canonical_json(&event.detail).map_err(invalid)?;
    // Copied for the owner's listing (`audit_list_for_owner`); strings only,
    // as SQLite's json_extract compared to an id matches only strings.
    let field = |name: &str| event.detail.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Prepared { event, detail, detail_owner: field("owner"), detail_agent: field("agent") })
}

/// Appends `events` (in order, all stamped `ts`) with one call of
/// `agentkeys_audit_append` on `executor` (a transaction, or the pool for a
/// statement of its own) and returns their records, each checked by
/// [`seal_returned`]. With no events it locks the head and writes nothing.
async fn append_prepared<'e>(
    executor: impl PgExecutor<'e>,
    ts: i64,
    events: &[Prepared<'_>],
) -> Result<Vec<SealedRecord>, StoreError> {
    let n = events.len();
    let (mut actor, mut operation, mut subject, mut outcome, mut detail, mut owner, mut agent) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for p in events {
        actor.push(p.event.actor.to_string());
        operation.push(p.event.operation.as_str());
        subject.push(p.event.subject.as_str());
        outcome.push(p.event.outcome.as_str());
        detail.push(p.detail.as_str());
        owner.push(p.detail_owner.as_deref());
        agent.push(p.detail_agent.as_deref());
    }
    let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "SELECT r_n, r_seq, r_prev_hash, r_hash
           FROM agentkeys_audit_append($1, $2, $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
          ORDER BY r_n",
    )
    .bind(FORMAT_TAG)
    .bind(ts)
    .bind(&actor)
    .bind(&operation)
    .bind(&subject)
    .bind(&outcome)
    .bind(&detail)
    .bind(&owner)
    .bind(&agent)
    .fetch_all(executor)
    .await
    .map_err(|e| StoreError::Backend(format!("cannot append {n} audit record(s): {}", backend(e))))?;
    if rows.len() != n {
        return Err(StoreError::Backend(format!("the audit append returned {} records for {n} events", rows.len())));
    }
    rows.into_iter().zip(events).map(|((_, seq, prev, hash), p)| seal_returned(p.event, ts, seq, &prev, &hash)).collect()
}

/// The record the database appended for `event` at `seq`, after `prev_hash`,
/// sealed again by [`agentkeys_audit`]: `Err` unless the database's `hash` is
/// the one Rust computes. This is what keeps `crates/audit` the one definition
/// of a record's hash.
fn seal_returned(event: &AuditEvent, ts: i64, seq: i64, prev_hash: &str, hash: &str) -> Result<SealedRecord, StoreError> {
    let bad = |what: String| StoreError::Backend(format!("audit record {seq} as appended by the database: {what}"));
    let head_seq = u64::try_from(seq).ok().and_then(|s| s.checked_sub(1)).ok_or_else(|| bad("seq below 1".to_owned()))?;
    let prev = hash_from_hex(prev_hash).ok_or_else(|| bad("prev_hash is not 64 hex digits".to_owned()))?;
    let sealed = seal_event(&ChainHead { seq: head_seq, hash: prev }, ts, event)?;
    if hash_from_hex(hash) != Some(sealed.record().hash) {
        tracing::error!(seq, database = hash, audit_crate = hash_to_hex(&sealed.record().hash), "audit hash mismatch");
        return Err(bad(format!(
            "its hash {hash} is not the {} the audit crate computes; refusing the receipt (run `agentkeys audit verify`)",
            hash_to_hex(&sealed.record().hash)
        )));
    }
    Ok(sealed)
}

impl PgStore {
    /// Appends `event` to the audit log inside `tx`, after the transaction's row
    /// change: one statement, which locks the chain head until `tx` ends. The
    /// caller commits, then turns the sealed record into its receipt.
    pub(crate) async fn append_in(&self, tx: &mut sqlx::PgConnection, event: &AuditEvent) -> Result<SealedRecord, StoreError> {
        let prepared = prepare(event)?;
        let mut sealed = append_prepared(&mut *tx, (self.clock)(), std::slice::from_ref(&prepared)).await?;
        sealed.pop().ok_or_else(|| StoreError::Backend("the audit append returned no record".to_owned()))
    }
}

/// Commits `tx` and only then hands out the receipt of `sealed`.
pub(crate) async fn commit_audited(
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    sealed: SealedRecord,
) -> Result<AuditReceipt, StoreError> {
    tx.commit().await.map_err(backend)?;
    Ok(sealed.into_receipt())
}

/// What the writer takes: appends, or a readiness probe.
enum Work {
    Append(AuditEvent, Reply),
    Probe(oneshot::Sender<Result<(), StoreError>>),
}

type Reply = oneshot::Sender<Result<AuditReceipt, StoreError>>;

/// The handle a store keeps to its audit writer (spawned on first use).
#[derive(Clone, Default)]
pub(crate) struct AuditWriter {
    writer: Writer<Work>,
}

impl AuditWriter {
    /// Appends `event` through the writer; returns once the batch holding it committed.
    pub(crate) async fn append(&self, store: &PgStore, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(store, Work::Append(event.clone(), reply), answer).await
    }

    /// The writer commits a transaction on its path (lock the head, commit)
    /// without a record; a batch committed with the probe answers it too.
    pub(crate) async fn probe(&self, store: &PgStore) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(store, Work::Probe(reply), answer).await
    }

    async fn submit<T>(
        &self,
        store: &PgStore,
        work: Work,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // The task holds the pool and the clock, never this handle.
        let spawn = |receiver| {
            tokio::spawn(writer(receiver, store.pool.clone(), store.clock.clone()));
        };
        match self.writer.send(work, AUDIT_QUEUE_DEPTH, spawn).await {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err(StoreError::Backend("the audit writer stopped before answering".to_owned()))),
            Err(_) => Err(StoreError::Backend("the audit writer is not running".to_owned())),
        }
    }
}

/// The writer task: one batch at a time, as many waiting appends as fit.
async fn writer(mut receiver: mpsc::Receiver<Work>, pool: sqlx::PgPool, clock: Clock) {
    let mut batch = Vec::with_capacity(MAX_AUDIT_BATCH);
    while receiver.recv_many(&mut batch, MAX_AUDIT_BATCH).await > 0 {
        let mut jobs = Vec::with_capacity(batch.len());
        let mut probes = Vec::new();
        for work in batch.drain(..) {
            match work {
                Work::Append(event, reply) => jobs.push((event, reply)),
                Work::Probe(reply) => probes.push(reply),
            }
        }
        let outcome = commit_batch(&pool, &clock, jobs, !probes.is_empty()).await;
        for reply in probes {
            let _ = reply.send(outcome.clone().map_err(StoreError::Backend));
        }
    }
}

/// Appends `jobs` with one statement (its own transaction), answers every
/// caller. With `probing`, runs the statement (locking the head) even when no
/// record is to be written. `Err` with the reason if the statement failed.
async fn commit_batch(pool: &sqlx::PgPool, clock: &Clock, jobs: Vec<(AuditEvent, Reply)>, probing: bool) -> Result<(), String> {
    let (events, all_replies): (Vec<AuditEvent>, Vec<Reply>) = jobs.into_iter().unzip();
    let mut accepted = Vec::with_capacity(events.len());
    let mut replies = Vec::with_capacity(events.len());
    for (event, reply) in events.iter().zip(all_replies) {
        match prepare(event) {
            Ok(prepared) => {
                accepted.push(prepared);
                replies.push(reply);
            }
            // This caller's event is at fault; it takes no seq and the rest go on.
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
    let attempt = async {
        if accepted.is_empty() && !probing {
            return Ok(Vec::new());
        }
        append_prepared(pool, clock(), &accepted).await
    };
    let result = attempt.await;
    match result {
        Ok(sealed) => {
            for (reply, record) in replies.into_iter().zip(sealed) {
                let _ = reply.send(Ok(record.into_receipt()));
            }
            Ok(())
        }
        Err(e) => {
            let why = match e {
                StoreError::Backend(text) => text,
                other => other.to_string(),
            };
            tracing::error!(error = why, records = replies.len(), "audit batch failed; no receipt was handed out for its records");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend(why.clone())));
            }
            Err(why)
        }
    }
}
