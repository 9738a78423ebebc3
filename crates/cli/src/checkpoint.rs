//! Signed audit checkpoints: when to take one, taking one, and the server's loop.
//!
//! The server signs the chain head with the authority's checkpoint key
//! ([`agentkeys_broker::CheckpointKey`]) once [`CHECKPOINT_EVERY_RECORDS`] records
//! were appended since the last checkpoint, or once the head moved and the last
//! checkpoint is [`CHECKPOINT_INTERVAL`] old, looking every [`CHECKPOINT_POLL`];
//! and once more when it shuts down. Local admin commands that change anything
//! sign the head before they exit ([`after_local_command`]), and `agentkeys audit
//! checkpoint` takes one at once. So a record older than [`CHECKPOINT_MAX_AGE`]
//! that no checkpoint covers means checkpoints were deleted, or the server died
//! and has not run since: `audit verify` refuses it.
//!
//! Checkpoints are chained (format v2, [`ChainedCheckpoint`]): each signs the
//! next counter and the previous checkpoint's hash. Before signing, the records
//! since the last checkpoint are checked to extend it, so a checkpoint never
//! vouches for a head that does not follow from the one before. A failure to
//! checkpoint is logged and retried at the next poll: unlike an audit record,
//! a checkpoint gates nothing.

use std::time::Duration;

use agentkeys_audit::{ChainHead, ChainedCheckpoint, SignedCheckpoint, Verifier};
use agentkeys_broker::TokenAuthority;
use agentkeys_core::UnixTime;
use agentkeys_store::roles::*;
use agentkeys_store::{CheckpointRecord, StoreError};
use tokio_util::sync::CancellationToken;

/// Records appended since the last checkpoint that make the next one due.
pub(crate) const CHECKPOINT_EVERY_RECORDS: u64 = 1_000;
/// Age of the last checkpoint that makes the next one due, if the head moved.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// How often the server looks at the head.
pub(crate) const CHECKPOINT_POLL: Duration = Duration::from_secs(5);
/// How old a record may get before `audit verify` requires a checkpoint to
/// cover it: the interval, one poll, and a minute for a slow store.
pub(crate) const CHECKPOINT_MAX_AGE: Duration =
    Duration::from_secs(CHECKPOINT_INTERVAL.as_secs() + CHECKPOINT_POLL.as_secs() + 55);
/// Records read per query while checking the tail before signing it.
const TAIL_PAGE: u32 = 1_000;

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

/// Signs the current head at `now` as the next chained checkpoint and stores it;
/// `None` when the log is empty, the head is already checkpointed, or another
/// process stored the next checkpoint first. Refuses (`Invalid`) when the
/// records since the last checkpoint do not extend it, and, unless
/// `start_over`, to start a chain (no checkpoint at all) over records older
/// than [`CHECKPOINT_MAX_AGE`]: that log had checkpoints once, and signing it
/// now would vouch for whatever happened to it since.
pub(crate) async fn take(
    meta: &dyn MetadataStore,
    authority: &dyn TokenAuthority,
    now: UnixTime,
    start_over: bool,
) -> Result<Option<CheckpointRecord>, StoreError> {
    let head: ChainHead = meta.audit_head().await?;
    if head.seq == 0 {
        return Ok(None);
    }
    let last = meta.last_checkpoint().await?;
    if last.as_ref().is_some_and(|l| l.seq >= head.seq) {
        return Ok(None);
    }
    if last.is_none() && !start_over {
        let max_age = i64::try_from(CHECKPOINT_MAX_AGE.as_secs()).unwrap_or(i64::MAX);
        if let Some(first) = meta.audit_list(0, 1).await?.first()
            && now.saturating_sub(first.ts) > max_age
        {
            return Err(StoreError::Invalid(format!(
                "not starting the audit checkpoint chain over records up to {} s old that no checkpoint covers: \
                 checkpoints may have been deleted. Run `agentkeys audit verify` (with --against an exported \
                 checkpoint if you have one); if you trust the log, `agentkeys audit checkpoint --start-over`",
                now.saturating_sub(first.ts)
            )));
        }
    }
    let from = last.as_ref().map_or(ChainHead::GENESIS, |l| ChainHead { seq: l.seq, hash: l.hash });
    check_tail(meta, from, head).await?;
    let checkpoint = match last.map(|l| l.signed()) {
        Some(SignedCheckpoint::V2 { checkpoint, .. }) => checkpoint
            .next(head, now)
            .ok_or_else(|| StoreError::Invalid("the audit checkpoint counter is exhausted".to_owned()))?,
        // The chain starts here (after format v1 checkpoints, if any).
        Some(SignedCheckpoint::V1 { .. }) | None => ChainedCheckpoint::first(head, now),
    };
    let record = CheckpointRecord::chained(&checkpoint, authority.sign_chained_checkpoint(&checkpoint).to_vec());
    Ok(meta.add_checkpoint(&record).await?.then_some(record))
}

/// Checks that the records after `from` link up to `head`, page by page.
async fn check_tail(meta: &dyn MetadataStore, from: ChainHead, head: ChainHead) -> Result<(), StoreError> {
    let mut verifier = Verifier::resume(from);
    while verifier.head().seq < head.seq {
        let page = meta.audit_list(verifier.head().seq, TAIL_PAGE).await?;
        if page.is_empty() {
            break;
        }
        for record in page.iter().take_while(|r| r.seq <= head.seq) {
            verifier.push(record).map_err(|broken| {
                StoreError::Invalid(format!(
                    "not signing an audit checkpoint: {broken}, after the last checkpoint (record {}); run `agentkeys audit verify`",
                    from.seq
                ))
            })?;
        }
    }
    if verifier.head() != head {
        return Err(StoreError::Invalid(format!(
            "not signing an audit checkpoint: the records after the last checkpoint (record {}) do not lead to the head {}",
            from.seq, head.seq
        )));
    }
    Ok(())
}

/// Takes the checkpoint if one is due (or, with `force`, whenever the head
/// moved); logs failures.
async fn tick(meta: &dyn MetadataStore, authority: &dyn TokenAuthority, force: bool) -> Result<(), StoreError> {
    let now = crate::now();
    let head = meta.audit_head().await?;
    let last = meta.last_checkpoint().await?.map(|c| (c.seq, c.ts));
    let moved = last.is_none_or(|(seq, _)| head.seq > seq) && head.seq > 0;
    if ((force && moved) || due(last, head.seq, now))
        && let Some(c) = take(meta, authority, now, false).await?
    {
        tracing::info!(seq = c.seq, counter = c.counter, "audit checkpoint signed");
    }
    Ok(())
}

/// After a local command that may have written audit records: sign the head if
/// it moved, so the records never wait for a server to cover them. Only when
/// the data directory exists (nothing is created for a command that
/// failed before touching it); a failure is a warning on stderr, not the
/// command's failure.
pub(crate) async fn after_local_command(config: &crate::config::Config) {
    if !crate::datadir::DataDir::exists(config) {
        return;
    }
    let result = async {
        let dir = crate::datadir::DataDir::open(config).await?;
        let authority = dir.token_authority()?;
        tick(dir.meta.as_ref(), &authority, true).await?;
        Ok::<_, anyhow::Error>(())
    };
    if let Err(e) = result.await {
        eprintln!("warning: cannot sign an audit checkpoint: {e:#}");
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
            _ = poll.tick() => log_failure(tick(meta.as_ref(), authority.as_ref(), false).await),
            () = shutdown.cancelled() => break,
        }
    }
    log_failure(tick(meta.as_ref(), authority.as_ref(), true).await);
}

fn log_failure(result: Result<(), StoreError>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot sign an audit checkpoint; retrying later");
    }
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

    #[tokio::test]
    async fn take_extends_the_chain_and_will_not_restart_over_old_records() {
        use agentkeys_audit::{Actor, AuditEvent};
        use agentkeys_broker::{AuthorityConfig, SoftwareAuthority};
        use agentkeys_core::MasterSeed;
        use agentkeys_store::SqliteStore;

        let meta = SqliteStore::open_in_memory().await.unwrap();
        let authority = SoftwareAuthority::new(&MasterSeed::from_bytes([4; 32]), AuthorityConfig::default()).unwrap();
        let event = AuditEvent::ok(Actor::System, "test.op", "x");
        let now = crate::now();
        assert_eq!(take(&meta, &authority, now, false).await.unwrap(), None, "nothing to sign");
        meta.audit_append(&event).await.unwrap();
        // Much later, with no checkpoint ever: refused unless told to start over.
        let later = now + 10 * CHECKPOINT_MAX_AGE.as_secs() as i64;
        match take(&meta, &authority, later, false).await {
            Err(StoreError::Invalid(m)) => assert!(m.contains("--start-over"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let first = take(&meta, &authority, later, true).await.unwrap().unwrap();
        assert_eq!((first.counter, first.seq, first.prev), (Some(1), 1, Some([0; 32])));
        assert_eq!(meta.checkpoint_start().await.unwrap(), Some(first.clone()));
        assert_eq!(take(&meta, &authority, later, false).await.unwrap(), None, "the head did not move");
        meta.audit_append(&event).await.unwrap();
        meta.audit_append(&event).await.unwrap();
        // Once a chain exists, an old tail is signed (the server was only down).
        let second = take(&meta, &authority, later + 1, false).await.unwrap().unwrap();
        assert_eq!((second.counter, second.seq), (Some(2), 3));
        let (SignedCheckpoint::V2 { checkpoint: a, .. }, SignedCheckpoint::V2 { checkpoint: b, .. }) = (first.signed(), second.signed())
        else {
            panic!("chained checkpoints expected")
        };
        assert_eq!(b.prev, a.hash());
        let key = authority.checkpoint_public_key();
        assert!(key.verify_signed(&first.signed()) && key.verify_signed(&second.signed()));
        // A stale signer (it read the chain before `second`) loses the race quietly.
        let stale = CheckpointRecord::chained(&a.next(b.head, later).unwrap(), vec![0; 64]);
        assert!(!meta.add_checkpoint(&stale).await.unwrap());
        assert_eq!(meta.list_checkpoints().await.unwrap(), vec![first, second]);
    }

    #[test]
    fn a_record_may_wait_for_the_interval_and_one_poll_but_no_longer() {
        assert!(CHECKPOINT_MAX_AGE > CHECKPOINT_INTERVAL + CHECKPOINT_POLL);
        assert!(CHECKPOINT_MAX_AGE <= CHECKPOINT_INTERVAL + Duration::from_secs(120));
    }
}
