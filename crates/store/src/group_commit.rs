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
use crate::sqlite::{Clock, WriteGate, backend, insert_sealed_many, read_head, seal_event};
use crate::write_tx::WriteTx;

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

/// What the writer takes: appends, or a readiness probe
/// ([`GroupCommit::probe`]).
enum Work {
    Append(Job),
    Probe(oneshot::Sender<Result<(), StoreError>>),
}

/// A channel to one writer task, spawned on first use (in whatever runtime the
/// first use runs in) and again if that runtime went away. The task must hold
/// neither this handle nor a store that holds it: when the last handle is
/// dropped the channel closes and the task ends.
pub(crate) struct Writer<J> {
    sender: Arc<Mutex<Option<mpsc::Sender<J>>>>,
}

impl<J> Clone for Writer<J> {
    fn clone(&self) -> Self {
        Self { sender: Arc::clone(&self.sender) }
    }
}

impl<J> Default for Writer<J> {
    fn default() -> Self {
        Self { sender: Arc::new(Mutex::new(None)) }
    }
}

impl<J: Send + 'static> Writer<J> {
    /// Hands `job` to the writer, spawning one with `spawn` (given the receiving
    /// end of a channel of `depth` jobs) if none is running. `Err(job)` if no
    /// writer took it.
    pub(crate) async fn send(&self, mut job: J, depth: usize, spawn: impl Fn(mpsc::Receiver<J>)) -> Result<(), J> {
        // At most two tries: a writer whose runtime shut down is replaced once.
        for _ in 0..2 {
            let sender = self.sender(depth, &spawn);
            match sender.send(job).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => {
                    job = back;
                    self.forget(&sender);
                }
            }
        }
        Err(job)
    }

    fn sender(&self, depth: usize, spawn: &impl Fn(mpsc::Receiver<J>)) -> mpsc::Sender<J> {
        let mut slot = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(depth);
        spawn(receiver);
        *slot = Some(sender.clone());
        sender
    }

    fn forget(&self, dead: &mpsc::Sender<J>) {
        let mut slot = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|s| s.same_channel(dead)) {
            *slot = None;
        }
    }
}

/// The handle a store keeps to its audit writer.
#[derive(Clone, Default)]
pub(crate) struct GroupCommit {
    writer: Writer<Work>,
}

impl GroupCommit {
    /// Appends `event` through the writer; returns once the batch holding it committed.
    pub(crate) async fn append(
        &self,
        pool: &SqlitePool,
        gate: &WriteGate,
        clock: &Clock,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Work::Append(Job { event: event.clone(), reply });
        self.submit(job, answer, pool, gate, clock).await
    }

    /// Readiness of the audit log: the writer takes a job and commits a write
    /// transaction on its own path (begin, read the chain head, write, commit)
    /// without appending a record. A batch of appends committed with the probe
    /// answers it too.
    pub(crate) async fn probe(&self, pool: &SqlitePool, gate: &WriteGate, clock: &Clock) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Work::Probe(reply), answer, pool, gate, clock).await
    }

    async fn submit<T>(
        &self,
        work: Work,
        answer: oneshot::Receiver<Result<T, StoreError>>,
        pool: &SqlitePool,
        gate: &WriteGate,
        clock: &Clock,
    ) -> Result<T, StoreError> {
        // The task holds the pool, the gate and the clock, never the sender.
        let spawn = |receiver| {
            tokio::spawn(writer(receiver, pool.clone(), gate.clone(), clock.clone()));
        };
        match self.writer.send(work, AUDIT_QUEUE_DEPTH, spawn).await {
            Ok(()) => answer.await.unwrap_or_else(|_| {
                Err(StoreError::Backend("the audit writer stopped before answering".to_owned()))
            }),
            Err(_) => Err(StoreError::Backend("the audit writer is not running".to_owned())),
        }
    }
}

/// The writer task: one batch at a time, as many waiting appends as fit.
async fn writer(mut receiver: mpsc::Receiver<Work>, pool: SqlitePool, gate: WriteGate, clock: Clock) {
    let mut batch = Vec::with_capacity(MAX_AUDIT_BATCH);
    while receiver.recv_many(&mut batch, MAX_AUDIT_BATCH).await > 0 {
        let mut jobs = Vec::with_capacity(batch.len());
        let mut probes = Vec::new();
        for work in batch.drain(..) {
            match work {
                Work::Append(job) => jobs.push(job),
                Work::Probe(reply) => probes.push(reply),
            }
        }
        let committed = if jobs.is_empty() { Ok(false) } else { commit_batch(&pool, &gate, &clock, jobs).await };
        // A probe is answered by a commit: the batch's, or its own.
        let outcome = match committed {
            Ok(false) if !probes.is_empty() => probe_tx(&pool, &gate).await,
            other => other.map(drop),
        };
        for reply in probes {
            let _ = reply.send(outcome.clone().map_err(StoreError::Backend));
        }
    }
}

/// The probe's transaction: the batch's steps without a record.
async fn probe_tx(pool: &SqlitePool, gate: &WriteGate) -> Result<(), String> {
    let mut tx = WriteTx::begin(pool, gate.enter().await).await.map_err(reason)?;
    read_head(&mut tx).await.map_err(reason)?;
    crate::sqlite::probe_write(&mut tx).await.map_err(reason)?;
    tx.commit().await.map_err(|e| reason(backend(e)))
}

type Reply = oneshot::Sender<Result<AuditReceipt, StoreError>>;

/// The text of a failure, without a second "metadata store error" prefix.
fn reason(e: StoreError) -> String {
    match e {
        StoreError::Backend(text) => text,
        other => other.to_string(),
    }
}

/// Answers every caller in `replies` with the same backend failure; `Err(why)`.
fn fail_all(replies: impl IntoIterator<Item = Reply>, why: String) -> Result<bool, String> {
    let mut n = 0usize;
    for reply in replies {
        let _ = reply.send(Err(StoreError::Backend(why.clone())));
        n += 1;
    }
    tracing::error!(error = why, records = n, "audit batch failed; none of its records was written");
    Err(why)
}

/// Seals and inserts `jobs` in one transaction, commits, answers every caller.
/// `Ok(true)` if it committed, `Ok(false)` if there was nothing to commit (every
/// event refused alone), `Err` with the reason if the transaction failed.
async fn commit_batch(pool: &SqlitePool, gate: &WriteGate, clock: &Clock, jobs: Vec<Job>) -> Result<bool, String> {
    // Every failure below drops or fails `tx`, which settles it (crate::write_tx):
    // the connection goes back to the pool clean or not at all.
    let mut tx = match WriteTx::begin(pool, gate.enter().await).await {
        Ok(tx) => tx,
        Err(e) => return fail_all(jobs.into_iter().map(|j| j.reply), reason(e)),
    };
    let mut head = match read_head(&mut tx).await {
        Ok(head) => head,
        Err(e) => return fail_all(jobs.into_iter().map(|j| j.reply), reason(e)),
    };
    let ts = clock();
    let mut sealed: Vec<(Reply, SealedRecord)> = Vec::with_capacity(jobs.len());
    for job in jobs {
        match seal_event(&head, ts, &job.event) {
            Ok(record) => {
                head = record.record().head();
                sealed.push((job.reply, record));
            }
            // This caller's event is at fault; it takes no seq and the rest go on.
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    // One multi-row INSERT per batch: one round trip to SQLite's worker thread,
    // not one per record.
    let records: Vec<&SealedRecord> = sealed.iter().map(|(_, r)| r).collect();
    if let Err(e) = insert_sealed_many(&mut tx, &records).await {
        return fail_all(sealed.into_iter().map(|(r, _)| r), reason(e));
    }
    if sealed.is_empty() {
        return Ok(false);
    }
    if let Err(e) = tx.commit().await {
        return fail_all(sealed.into_iter().map(|(r, _)| r), reason(backend(e)));
    }
    for (reply, record) in sealed {
        let _ = reply.send(Ok(record.into_receipt()));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::SqliteStore;
    use crate::roles::*;
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
        let _ = commit_batch(&store.pool, &store.gate, &store.clock, jobs).await;
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
