//! Removal of finished messages' queue copies, off the delivery path.
//!
//! Removing a file frees its blocks, and on a filesystem mounted with `discard`
//! (this project's CI machine: ext4 without a journal) the removal waits for the
//! device to discard them, while every fsync issued meanwhile waits behind the
//! discard. Removing each queue copy right after its delivery held every
//! submission's fsyncs up: `bench/run.sh`'s outbound part measured 737 signed
//! and delivered messages/s with inline removals against 2,402/s with none.
//! So the runner hands the key of each message that has no unfinished row left
//! to one reaper task, which removes them one at a time, in the background.
//!
//! Nothing is lost if a removal never happens: the row states, not the blobs,
//! drive delivery. What the reaper had not reached at a crash is found by the
//! sweep at the next start: every `queue/` blob older than [`REAP_GRACE`] whose
//! message has no unfinished row. (A younger blob may belong to a submission
//! that has written its copy and not yet its rows.)

use std::sync::Arc;
use std::time::Duration;

use agentkeys_core::UnixTime;
use agentkeys_store::{BlobKey, BlobStore, OutboundQueue};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Queue copies younger than this are never removed by the start-up sweep.
pub const REAP_GRACE: Duration = Duration::from_secs(3600);

/// Prefix of the outbound queue's blobs.
const QUEUE_PREFIX: &str = "queue/";

/// Removes the keys it receives, one at a time, after sweeping what an earlier
/// run left. When `drain` is cancelled it removes what is already waiting and
/// returns.
pub(crate) async fn reaper(
    blobs: Arc<dyn BlobStore>,
    queue: Arc<dyn OutboundQueue>,
    now: UnixTime,
    mut keys: mpsc::UnboundedReceiver<BlobKey>,
    drain: CancellationToken,
) {
    sweep(blobs.as_ref(), queue.as_ref(), now).await;
    loop {
        tokio::select! {
            biased;
            key = keys.recv() => match key {
                Some(key) => remove(blobs.as_ref(), &key).await,
                None => return,
            },
            () = drain.cancelled() => break,
        }
    }
    while let Ok(key) = keys.try_recv() {
        remove(blobs.as_ref(), &key).await;
    }
}

async fn remove(blobs: &dyn BlobStore, key: &BlobKey) {
    if let Err(err) = blobs.remove(key).await {
        tracing::warn!(%key, %err, "cannot remove a finished message's queue copy");
    }
}

/// Removes the queue copies of finished messages older than [`REAP_GRACE`].
async fn sweep(blobs: &dyn BlobStore, queue: &dyn OutboundQueue, now: UnixTime) {
    let keys = match blobs.list(QUEUE_PREFIX).await {
        Ok(keys) => keys,
        Err(err) => {
            tracing::warn!(%err, "cannot list the queue copies to sweep");
            return;
        }
    };
    let grace = i64::try_from(REAP_GRACE.as_secs()).unwrap_or(i64::MAX);
    let mut removed = 0u64;
    for key in keys {
        let Some(id) = key.queued_id() else { continue };
        let written = i64::try_from(id.timestamp_ms() / 1000).unwrap_or(i64::MAX);
        if now.saturating_sub(written) < grace {
            continue;
        }
        match queue.unfinished(&id.to_string()).await {
            Ok(0) => {
                remove(blobs, &key).await;
                removed += 1;
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%key, %err, "cannot tell whether a queue copy is still needed");
                return;
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed the queue copies of finished messages left by an earlier run");
    }
}
