//! Group commit for outbound queue inserts.
//!
//! Every accepted submission with remote recipients queues its rows before the
//! `250`. One `INSERT` per message is one SQLite commit, one WAL fsync, per
//! message, all taking turns at the write lock. Instead one writer task takes
//! every insert that is waiting and writes them with one multi-row `INSERT` per
//! [`MAX_ENQUEUE_ROWS`] rows: one commit for the lot. Each caller is answered
//! once the statement holding its rows committed.
//!
//! - **Atomicity.** A message's rows are always in one statement (a statement is
//!   atomic on its own), so a message is queued for all its recipients or none.
//! - **Failure.** If a batch statement fails, its messages are retried one
//!   statement each, so every caller gets the answer for its own message (a
//!   duplicate message id is a `Conflict` for that message only).
//! - **Latency.** The writer never waits to fill a batch: what arrived while the
//!   previous statement ran is the next batch.

use std::collections::BTreeSet;

use agentkeys_core::{Address, OwnerId, UnixTime};
use tokio::sync::{mpsc, oneshot};

use crate::group_commit::Writer;
use crate::meta::{NewOutbound, StoreError};
use crate::sqlite::{SqliteStore, insert_error};

/// Most messages one writer round takes.
pub const MAX_ENQUEUE_BATCH: usize = 256;
/// Most rows (recipients) in one `INSERT`: seven bound values each, well below
/// SQLite's limit of 32,766 bound values per statement.
pub const MAX_ENQUEUE_ROWS: usize = 2_000;
/// Inserts that may wait for the writer before callers wait to hand theirs over.
const ENQUEUE_QUEUE_DEPTH: usize = 4 * MAX_ENQUEUE_BATCH;

/// A checked outbound message: recipients deduplicated, size in range.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) message_id: String,
    pub(crate) sender: Address,
    pub(crate) owner: OwnerId,
    pub(crate) recipients: Vec<String>,
    pub(crate) size: i64,
    pub(crate) queued_at: UnixTime,
}

impl Queued {
    /// Checks `message`: at least one recipient (the same one twice is one
    /// delivery), a size that fits the column.
    pub(crate) fn check(message: &NewOutbound) -> Result<Self, StoreError> {
        let recipients: BTreeSet<&str> = message.recipients.iter().map(String::as_str).collect();
        if recipients.is_empty() {
            return Err(StoreError::Invalid(format!("outbound message {} has no recipients", message.message_id)));
        }
        if recipients.len() > MAX_ENQUEUE_ROWS {
            return Err(StoreError::Invalid(format!(
                "outbound message {} has {} recipients; at most {MAX_ENQUEUE_ROWS}",
                message.message_id,
                recipients.len()
            )));
        }
        let size = i64::try_from(message.size).map_err(|_| {
            StoreError::Invalid(format!("outbound message {} is too large to record", message.message_id))
        })?;
        Ok(Self {
            message_id: message.message_id.clone(),
            sender: message.sender.clone(),
            owner: message.owner.clone(),
            recipients: recipients.into_iter().map(str::to_owned).collect(),
            size,
            queued_at: message.queued_at,
        })
    }

    pub(crate) fn conflict(&self) -> String {
        format!("queued message {} for {}", self.message_id, self.recipients.join(", "))
    }
}

struct Job {
    message: Queued,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The handle a store keeps to its enqueue writer.
#[derive(Clone, Default)]
pub(crate) struct Enqueuer {
    writer: Writer<Job>,
}

impl Enqueuer {
    /// Queues `message` through the writer of `store`; returns once it committed.
    pub(crate) async fn enqueue(&self, store: &SqliteStore, message: Queued) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        // The task holds a store without writers, never this handle.
        let spawn = |receiver| {
            tokio::spawn(writer(receiver, store.detached()));
        };
        match self.writer.send(Job { message, reply }, ENQUEUE_QUEUE_DEPTH, spawn).await {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err(StoreError::Backend("the queue writer stopped before answering".to_owned()))),
            Err(_) => Err(StoreError::Backend("the queue writer is not running".to_owned())),
        }
    }
}

async fn writer(mut receiver: mpsc::Receiver<Job>, store: SqliteStore) {
    let mut jobs = Vec::with_capacity(MAX_ENQUEUE_BATCH);
    while receiver.recv_many(&mut jobs, MAX_ENQUEUE_BATCH).await > 0 {
        let mut batch = Vec::new();
        let mut rows = 0;
        for job in jobs.drain(..) {
            if rows + job.message.recipients.len() > MAX_ENQUEUE_ROWS {
                commit(&store, std::mem::take(&mut batch)).await;
                rows = 0;
            }
            rows += job.message.recipients.len();
            batch.push(job);
        }
        commit(&store, batch).await;
    }
}

/// One statement for `batch`; if it fails, one statement per message.
async fn commit(store: &SqliteStore, batch: Vec<Job>) {
    if batch.is_empty() {
        return;
    }
    let messages: Vec<&Queued> = batch.iter().map(|job| &job.message).collect();
    if insert(store, &messages).await.is_ok() {
        for job in batch {
            let _ = job.reply.send(Ok(()));
        }
        return;
    }
    for job in batch {
        let result = insert(store, &[&job.message]).await;
        let _ = job.reply.send(result);
    }
}

/// Every recipient row of `messages` in one `INSERT` (its own transaction).
pub(crate) async fn insert(store: &SqliteStore, messages: &[&Queued]) -> Result<(), StoreError> {
    let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO outbound_queue
            (message_id, recipient, sender, owner, state, size, queued_at, next_attempt_at, attempts) ",
    );
    let rows = messages.iter().flat_map(|m| m.recipients.iter().map(move |r| (*m, r)));
    insert.push_values(rows, |mut row, (m, recipient)| {
        row.push_bind(&m.message_id)
            .push_bind(recipient)
            .push_bind(m.sender.as_str())
            .push_bind(m.owner.as_str())
            .push("'queued'")
            .push_bind(m.size)
            .push_bind(m.queued_at)
            .push_bind(m.queued_at)
            .push("0");
    });
    let mut conn = store.hot_write().await?;
    insert.build().execute(&mut *conn).await.map_err(|e| match messages {
        [one] => insert_error(e, || one.conflict()),
        _ => insert_error(e, || format!("a batch of {} queued messages", messages.len())),
    })?;
    Ok(())
}
