//! Group commit for stand-alone audit appends (credential mints and refusals).
//!
//! With `synchronous=FULL` every SQLite commit waits for an fsync of the WAL, so
//! one transaction per mint caps mints at the disk's fsync rate. Instead, one
//! writer task per store takes every append that is waiting, seals them onto the
//! chain in arrival order, inserts them in **one** `BEGIN IMMEDIATE` transaction
//! and commits once. Then, and only then, each caller gets the receipt of its own
//! record.
//!
//! - **Order.** The writer reads the head inside the transaction (which holds the
//!   write lock across connections and processes) and seals the batch one record
//!   after the other, so the chain is exactly as if the appends had run one by one.
//! - **Failure.** An event that cannot be sealed (it breaks an event limit) is
//!   refused alone and takes no seq. Any database failure (begin, head, insert,
//!   commit) fails every caller of the batch: nothing of the batch is visible and
//!   no caller gets a receipt (fail-closed).
//! - **Latency.** The writer never waits to fill a batch: what arrived while the
//!   previous commit was running is the next batch, so a lone append costs one
//!   commit, as before.
//!
//! Audited *changes* (`add_grant`, `revoke_key`, …) keep their own transaction:
//! their row change and their record must commit together.

use std::sync::{Arc, Mutex, PoisonError};

use agentkeys_audit::{AuditEvent, AuditReceipt, SealedRecord};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::meta::StoreError;
use crate::sqlite::{Clock, backend, insert_sealed, read_head, seal_event};

/// Most appends one transaction takes. Larger batches amortise the commit further
/// but hold the write lock longer; 256 records are ~100 KB of WAL.
pub const MAX_AUDIT_BATCH: usize = 256;

/// Appends that may wait for the writer before callers wait to enqueue.
pub const AUDIT_QUEUE_DEPTH: usize = 4 * MAX_AUDIT_BATCH;

/// One caller's append and where its answer goes.
struct Job {
    event: AuditEvent,
    reply: oneshot::Sender<Result<AuditReceipt, StoreError>>,
}

/// The handle a store keeps: the channel to its writer task, spawned on first use
/// (in whatever runtime the first append runs in) and again if that runtime went away.
#[derive(Clone, Default)]
pub(crate) struct GroupCommit {
    sender: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
}

impl GroupCommit {
    /// Appends `event` through the writer; returns once the batch holding it committed.
    pub(crate) async fn append(
        &self,
        pool: &SqlitePool,
        clock: &Clock,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        let (reply, answer) = oneshot::channel();
        let mut job = Job { event: event.clone(), reply };
        // At most two tries: a writer whose runtime shut down is replaced once.
        for _ in 0..2 {
            let sender = self.sender(pool, clock);
            match sender.send(job).await {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(StoreError::Backend("the audit writer stopped before answering".to_owned()))
                    });
                }
                Err(mpsc::error::SendError(back)) => {
                    job = back;
                    self.forget(&sender);
                }
            }
        }
        Err(StoreError::Backend("the audit writer is not running".to_owned()))
    }

    fn sender(&self, pool: &SqlitePool, clock: &Clock) -> mpsc::Sender<Job> {
        let mut slot = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(AUDIT_QUEUE_DEPTH);
        // The task holds the pool and the clock, never the sender: when the last
        // store clone is dropped the channel closes and the task ends.
        tokio::spawn(writer(receiver, pool.clone(), clock.clone()));
        *slot = Some(sender.clone());
        sender
    }

    fn forget(&self, dead: &mpsc::Sender<Job>) {
        let mut slot = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|s| s.same_channel(dead)) {
            *slot = None;
        }
    }
}

/// The writer task: one batch at a time, as many waiting appends as fit.
async fn writer(mut receiver: mpsc::Receiver<Job>, pool: SqlitePool, clock: Clock) {
    let mut batch = Vec::with_capacity(MAX_AUDIT_BATCH);
    while receiver.recv_many(&mut batch, MAX_AUDIT_BATCH).await > 0 {
        commit_batch(&pool, &clock, std::mem::take(&mut batch)).await;
    }
}

type Reply = oneshot::Sender<Result<AuditReceipt, StoreError>>;

/// Answers every caller in `replies` with the same backend failure.
fn fail_all(replies: impl IntoIterator<Item = Reply>, why: &str) {
    let mut n = 0usize;
    for reply in replies {
        let _ = reply.send(Err(StoreError::Backend(why.to_owned())));
        n += 1;
    }
    tracing::error!(error = why, records = n, "audit batch failed; none of its records was written");
}

/// Seals and inserts `jobs` in one transaction, commits, answers every caller.
async fn commit_batch(pool: &SqlitePool, clock: &Clock, jobs: Vec<Job>) {
    let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => return fail_all(jobs.into_iter().map(|j| j.reply), &backend(e).to_string()),
    };
    let mut head = match read_head(&mut tx).await {
        Ok(head) => head,
        Err(e) => return fail_all(jobs.into_iter().map(|j| j.reply), &e.to_string()),
    };
    let ts = clock();
    let mut sealed: Vec<(Reply, SealedRecord)> = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter();
    while let Some(job) = jobs.next() {
        let record = match seal_event(&head, ts, &job.event) {
            Ok(record) => record,
            Err(e) => {
                // This caller's event is at fault; it takes no seq and the rest go on.
                let _ = job.reply.send(Err(e));
                continue;
            }
        };
        if let Err(e) = insert_sealed(&mut tx, &record).await {
            let replies = sealed.into_iter().map(|(r, _)| r).chain(std::iter::once(job.reply));
            return fail_all(replies.chain(jobs.map(|j| j.reply)), &e.to_string());
        }
        head = record.record().head();
        sealed.push((job.reply, record));
    }
    if sealed.is_empty() {
        return;
    }
    if let Err(e) = tx.commit().await {
        return fail_all(sealed.into_iter().map(|(r, _)| r), &backend(e).to_string());
    }
    for (reply, record) in sealed {
        let _ = reply.send(Ok(record.into_receipt()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::SqliteStore;
    use crate::meta::MetadataStore;
    use agentkeys_audit::{Actor, verify};

    fn event(subject: &str) -> AuditEvent {
        AuditEvent::ok(Actor::System, "test.append", subject)
    }

    /// Runs one batch of `events` directly; answers each caller's result in order.
    async fn batch(store: &SqliteStore, events: Vec<AuditEvent>) -> Vec<Result<AuditReceipt, StoreError>> {
        let mut answers = Vec::new();
        let mut jobs = Vec::new();
        for event in events {
            let (reply, answer) = oneshot::channel();
            jobs.push(Job { event, reply });
            answers.push(answer);
        }
        commit_batch(&store.pool, &store.clock, jobs).await;
        let mut out = Vec::new();
        for a in answers {
            out.push(a.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn one_batch_is_one_transaction_in_arrival_order() {
        let store = SqliteStore::open_in_memory().await.unwrap().with_clock(|| 7);
        let answers = batch(&store, vec![event("a"), event("b"), event("c")]).await;
        let seqs: Vec<u64> = answers.into_iter().map(|a| a.unwrap().seq()).collect();
        assert_eq!(seqs, [1, 2, 3]);
        let records = store.audit_all().await.unwrap();
        assert_eq!(records.iter().map(|r| r.subject.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(verify(&records).unwrap().count, 3);
        // The next batch links onto the head the last one left.
        let answers = batch(&store, vec![event("d")]).await;
        assert_eq!(answers[0].as_ref().unwrap().seq(), 4);
        verify(&store.audit_all().await.unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_database_failure_fails_every_caller_of_the_batch() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        batch(&store, vec![event("before")]).await[0].as_ref().unwrap();
        sqlx::raw_sql(
            "CREATE TRIGGER poison BEFORE INSERT ON audit_log WHEN NEW.subject = 'poison'
             BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END;",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let answers = batch(&store, vec![event("x1"), event("x2"), event("poison"), event("x3")]).await;
        for a in &answers {
            match a {
                Err(StoreError::Backend(text)) => assert!(text.contains("injected audit failure"), "{text}"),
                other => panic!("every caller of the batch must fail, got {other:?}"),
            }
        }
        // Nothing of the batch is visible; the chain goes on from the old head.
        let records = store.audit_all().await.unwrap();
        assert_eq!(records.iter().map(|r| r.subject.as_str()).collect::<Vec<_>>(), ["before"]);
        assert_eq!(batch(&store, vec![event("after")]).await[0].as_ref().unwrap().seq(), 2);
        verify(&store.audit_all().await.unwrap()).unwrap();
    }

    #[tokio::test]
    async fn an_invalid_event_is_refused_alone_and_takes_no_seq() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let bad = AuditEvent::ok(Actor::System, "Not An Op", "s");
        let answers = batch(&store, vec![event("a"), bad, event("b")]).await;
        assert_eq!(answers[0].as_ref().unwrap().seq(), 1);
        assert!(matches!(answers[1], Err(StoreError::Invalid(_))), "{:?}", answers[1]);
        assert_eq!(answers[2].as_ref().unwrap().seq(), 2);
        assert_eq!(verify(&store.audit_all().await.unwrap()).unwrap().count, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_is_replaced_after_its_runtime_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap();
        let first = store.clone();
        // A writer spawned in a runtime that then shuts down.
        tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { first.audit_append(&event("one")).await.unwrap() });
        })
        .await
        .unwrap();
        assert_eq!(store.audit_append(&event("two")).await.unwrap().seq(), 2);
    }
}
