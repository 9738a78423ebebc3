//! Signed audit checkpoints: when to take one, taking one, and the server's loop.
//!
//! The server signs the chain head with the authority's checkpoint key
//! ([`agentkeys_broker::CheckpointKey`]) once [`CHECKPOINT_EVERY_RECORDS`] records
//! were appended since the last checkpoint, or once the head moved and the last
//! checkpoint is [`CHECKPOINT_INTERVAL`] old, looking every [`CHECKPOINT_POLL`];
//! and once more when it shuts down. `agentkeys audit checkpoint` takes one at
//! once. A failure to checkpoint is logged and retried at the next poll: unlike
//! an audit record, a checkpoint gates nothing.

use std::time::Duration;

use agentkeys_audit::{ChainHead, Checkpoint};
use agentkeys_broker::TokenAuthority;
use agentkeys_core::UnixTime;
use agentkeys_store::{CheckpointRecord, MetadataStore, StoreError};
use tokio_util::sync::CancellationToken;

/// Records appended since the last checkpoint that make the next one due.
pub(crate) const CHECKPOINT_EVERY_RECORDS: u64 = 1_000;
/// Age of the last checkpoint that makes the next one due, if the head moved.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// How often the server looks at the head.
pub(crate) const CHECKPOINT_POLL: Duration = Duration::from_secs(5);

/// Whether a checkpoint of `head_seq` is due at `now`, after `last` (seq, ts).
pub(crate) fn due(last: Option<(u64, UnixTime)>, head_seq: u64, now: UnixTime) -> bool {
    let interval = i64::try_from(CHECKPOINT_INTERVAL.as_secs()).unwrap_or(i64::MAX);
    match last {
        _ if head_seq == 0 => false,
        None => true,
        Some((seq, _)) if head_seq <= seq => false,
        Some((seq, _)) if head_seq - seq >= CHECKPOINT_EVERY_RECORDS => true,
        Some((_, ts)) => now.saturating_sub(ts) >= interval,
    }
}

/// Signs the current head at `now` and stores the checkpoint; `None` when the log
/// is empty or the head is already checkpointed.
pub(crate) async fn take(
    meta: &dyn MetadataStore,
    authority: &dyn TokenAuthority,
    now: UnixTime,
) -> Result<Option<CheckpointRecord>, StoreError> {
    let head: ChainHead = meta.audit_head().await?;
    if head.seq == 0 {
        return Ok(None);
    }
    let checkpoint = Checkpoint { head, ts: now };
    let record = CheckpointRecord {
        seq: head.seq,
        hash: head.hash,
        ts: now,
        signature: authority.sign_checkpoint(&checkpoint).to_vec(),
    };
    Ok(meta.add_checkpoint(&record).await?.then_some(record))
}

/// Takes the checkpoint if one is due; logs failures.
async fn tick(meta: &dyn MetadataStore, authority: &dyn TokenAuthority, force: bool) {
    let now = crate::now();
    let state = async {
        let head = meta.audit_head().await?;
        let last = meta.last_checkpoint().await?;
        Ok::<_, StoreError>((head, last))
    };
    match state.await {
        Ok((head, last)) => {
            let last = last.map(|c| (c.seq, c.ts));
            let moved = last.is_none_or(|(seq, _)| head.seq > seq) && head.seq > 0;
            if (force && moved) || due(last, head.seq, now) {
                match take(meta, authority, now).await {
                    Ok(Some(c)) => tracing::info!(seq = c.seq, "audit checkpoint signed"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot store an audit checkpoint; retrying later"),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the audit head for a checkpoint; retrying later"),
    }
}

/// The server's checkpoint loop: until `shutdown`, then one last checkpoint of
/// whatever the head is by then.
pub(crate) async fn run(
    meta: std::sync::Arc<dyn MetadataStore>,
    authority: std::sync::Arc<dyn TokenAuthority>,
    shutdown: CancellationToken,
) {
    let mut poll = tokio::time::interval(CHECKPOINT_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => tick(meta.as_ref(), authority.as_ref(), false).await,
            () = shutdown.cancelled() => break,
        }
    }
    tick(meta.as_ref(), authority.as_ref(), true).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_after_every_n_records_or_the_interval() {
        let interval = CHECKPOINT_INTERVAL.as_secs() as i64;
        let n = CHECKPOINT_EVERY_RECORDS;
        // Nothing to vouch for.
        assert!(!due(None, 0, 100));
        // The first record is worth a checkpoint.
        assert!(due(None, 1, 100));
        // N records after the last: due at once, whatever its age.
        assert!(!due(Some((10, 100)), 10 + n - 1, 101));
        assert!(due(Some((10, 100)), 10 + n, 101));
        // Fewer: due once the last one is INTERVAL old and the head moved.
        assert!(!due(Some((10, 100)), 11, 100 + interval - 1));
        assert!(due(Some((10, 100)), 11, 100 + interval));
        assert!(!due(Some((10, 100)), 10, 100 + 10 * interval), "the head did not move");
    }
}
