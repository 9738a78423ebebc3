//! The audit log on PostgreSQL: one hash chain for every node.
//!
//! **Serialization.** The chain head lives in a one-row table, `audit_chain`.
//! Every append, in whatever transaction it runs, first takes that row with
//! `SELECT seq, hash … FOR UPDATE`: a second appender (this process or another
//! node) waits there until the first commits or rolls back, and then reads the
//! head the first one left (PostgreSQL re-reads a row it waited for). The
//! appender seals its records onto that head with [`agentkeys_audit`], exactly
//! as the SQLite backend does, inserts them and moves the head, all before its
//! commit. So two appenders never seal onto the same head, and seq has no gaps.
//!
//! The head lock is always the last lock an audited transaction takes (its row
//! change comes first), so waiting for it cannot close a deadlock cycle, and it
//! is held only from the append to the commit.
//!
//! **Group commit.** Stand-alone appends ([`MetadataStore::audit_append`]) go to
//! one writer task per store that seals every append waiting in one transaction
//! and commits once; each caller gets its receipt only after that commit (as in
//! [`crate::group_commit`]). Any database failure fails every caller of the
//! batch; an event that cannot be sealed is refused alone and takes no seq.
//!
//! [`MetadataStore::audit_append`]: crate::MetadataStore::audit_append

use agentkeys_audit::{AuditEvent, AuditReceipt, ChainHead, SealedRecord, canonical_json, hash_to_hex};
use sqlx::PgConnection;
use tokio::sync::{mpsc, oneshot};

use super::{PgStore, backend, to_i64};
use crate::group_commit::Writer;
use crate::meta::StoreError;
use crate::sqlite::{Clock, head_from_row, seal_event};

/// Most appends one writer transaction takes.
pub(crate) const MAX_AUDIT_BATCH: usize = 256;
/// Appends that may wait for the writer before callers wait to hand theirs over.
const AUDIT_QUEUE_DEPTH: usize = 4 * MAX_AUDIT_BATCH;

/// Locks the chain head inside `tx` until its end and returns it.
pub(crate) async fn lock_head(tx: &mut PgConnection) -> Result<ChainHead, StoreError> {
    let row: (i64, String) = sqlx::query_as("SELECT seq, hash FROM audit_chain WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
    head_from_row(Some(row))
}

/// Inserts sealed records (in chain order) inside `tx` with one statement and
/// moves the chain head to the last. The head must be locked ([`lock_head`]).
pub(crate) async fn insert_sealed(tx: &mut PgConnection, records: &[&SealedRecord]) -> Result<(), StoreError> {
    let Some(last) = records.last() else { return Ok(()) };
    let n = records.len();
    let (mut seq, mut ts, mut actor, mut operation, mut subject, mut outcome, mut detail, mut prev, mut hash) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut detail_owner, mut detail_agent) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for sealed in records {
        let r = sealed.record();
        seq.push(to_i64(r.seq, "audit seq")?);
        ts.push(r.ts);
        actor.push(r.actor.to_string());
        operation.push(r.operation.clone());
        subject.push(r.subject.clone());
        outcome.push(r.outcome.as_str().to_owned());
        detail.push(canonical_json(&r.detail).map_err(|e| StoreError::Invalid(format!("cannot audit {}: {e}", r.operation)))?);
        prev.push(hash_to_hex(&r.prev_hash));
        hash.push(hash_to_hex(&r.hash));
        // Copied for the owner's listing (`audit_list_for_owner`); strings only,
        // as SQLite's json_extract compared to an id matches only strings.
        let field = |name: &str| r.detail.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        detail_owner.push(field("owner"));
        detail_agent.push(field("agent"));
    }
    sqlx::query(
        "INSERT INTO audit_log (seq, ts, actor, operation, subject, outcome, detail, prev_hash, hash, detail_owner, detail_agent)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                              $8::text[], $9::text[], $10::text[], $11::text[])",
    )
    .bind(&seq)
    .bind(&ts)
    .bind(&actor)
    .bind(&operation)
    .bind(&subject)
    .bind(&outcome)
    .bind(&detail)
    .bind(&prev)
    .bind(&hash)
    .bind(&detail_owner)
    .bind(&detail_agent)
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        let first = records.first().map_or(0, |r| r.record().seq);
        StoreError::Backend(format!("cannot write audit records from {first}: {}", backend(e)))
    })?;
    let head = last.record().head();
    sqlx::query("UPDATE audit_chain SET seq = $1, hash = $2 WHERE id = 1")
        .bind(to_i64(head.seq, "audit seq")?)
        .bind(hash_to_hex(&head.hash))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(())
}

impl PgStore {
    /// Appends `event` to the audit log inside `tx`, after the transaction's row
    /// change. The caller commits, then turns the sealed record into its receipt.
    pub(crate) async fn append_in(&self, tx: &mut PgConnection, event: &AuditEvent) -> Result<SealedRecord, StoreError> {
        let head = lock_head(tx).await?;
        let sealed = seal_event(&head, (self.clock)(), event)?;
        insert_sealed(tx, &[&sealed]).await?;
        Ok(sealed)
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

/// Seals and inserts `jobs` in one transaction, commits, answers every caller.
/// With `probing`, commits even when no record was sealed. `Err` with the
/// reason if the transaction failed.
async fn commit_batch(pool: &sqlx::PgPool, clock: &Clock, jobs: Vec<(AuditEvent, Reply)>, probing: bool) -> Result<(), String> {
    let mut replies = Vec::with_capacity(jobs.len());
    let attempt = async {
        let mut tx = pool.begin().await.map_err(backend)?;
        let mut head = lock_head(&mut tx).await?;
        let ts = clock();
        let mut sealed = Vec::with_capacity(jobs.len());
        for (event, reply) in jobs {
            match seal_event(&head, ts, &event) {
                Ok(record) => {
                    head = record.record().head();
                    sealed.push(record);
                    replies.push(reply);
                }
                // This caller's event is at fault; it takes no seq and the rest go on.
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if sealed.is_empty() && !probing {
            return Ok(sealed);
        }
        insert_sealed(&mut tx, &sealed.iter().collect::<Vec<_>>()).await?;
        tx.commit().await.map_err(backend)?;
        Ok::<_, StoreError>(sealed)
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
            tracing::error!(error = why, records = replies.len(), "audit batch failed; none of its records was written");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend(why.clone())));
            }
            Err(why)
        }
    }
}
