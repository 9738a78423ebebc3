//! Signed checkpoints of the audit chain (DESIGN.md §7).
//!
//! A hash chain shows that no record was changed, removed or reordered *before*
//! the head, but anyone who can write the database can cut records off the end or
//! rebuild the whole chain. Periodically the token authority signs the current
//! head; keeping those signatures (and a copy elsewhere) pins the chain up to
//! that point.
//!
//! Checkpoints are chained themselves (format v2, [`ChainedCheckpoint`]): each
//! signs a counter (1, 2, 3, … without gaps), the hash of the checkpoint before
//! it and the audit head it covers. Deleting, reordering or replacing a
//! checkpoint breaks the counter or the link, and [`verify_checkpoints`] names
//! it; the store also keeps a copy of checkpoint 1 (the chain's start), so
//! deleting every checkpoint is caught too, and records the latest checkpoint
//! does not cover are refused once they are older than the allowed age (an
//! overdue tail: the checkpoints after them are missing, or nothing has signed
//! them). Format v1 checkpoints ([`Checkpoint`], unchained) written before v2
//! are still read and checked; the v2 chain starts after them.
//!
//! This crate defines what is signed and the rules; signing belongs to the
//! authority (`crates/broker`), so the rules take a signature check as a function.

use sha2::{Digest, Sha256};

use crate::canonical::push_lp;
use crate::record::{ChainHead, Hash};

/// Domain-separation tag of the checkpoint message.
pub const CHECKPOINT_TAG: &str = "agentkeys-audit-checkpoint/v1";

/// A statement "the audit chain had this head at this time", to be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The head being vouched for.
    pub head: ChainHead,
    /// When the checkpoint was taken, Unix seconds.
    pub ts: i64,
}

impl Checkpoint {
    /// The exact bytes the authority signs:
    /// `lp(CHECKPOINT_TAG) || u64be(head.seq) || head.hash || i64be(ts)`
    /// (`lp` as in the record encoding: a big-endian u32 length, then the bytes).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + CHECKPOINT_TAG.len() + 8 + 32 + 8);
        // The tag is a short constant, so its length prefix cannot overflow.
        if push_lp(&mut out, CHECKPOINT_TAG).is_err() {
            unreachable!("the checkpoint tag fits a u32 length");
        }
        out.extend_from_slice(&self.head.seq.to_be_bytes());
        out.extend_from_slice(&self.head.hash);
        out.extend_from_slice(&self.ts.to_be_bytes());
        out
    }
}

/// Domain-separation tag of the chained checkpoint message (format v2).
pub const CHECKPOINT_TAG_V2: &str = "agentkeys-audit-checkpoint/v2";

/// The `prev` of checkpoint 1: 32 zero bytes.
pub const CHECKPOINT_GENESIS_PREV: Hash = [0; 32];

/// A statement "checkpoint number `counter`, following the checkpoint whose hash
/// is `prev`, vouches that the audit chain had this head at this time", to be
/// signed (format v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainedCheckpoint {
    /// Position in the checkpoint chain, from 1, without gaps.
    pub counter: u64,
    /// [`hash`](Self::hash) of checkpoint `counter - 1`; [`CHECKPOINT_GENESIS_PREV`] for 1.
    pub prev: Hash,
    /// The audit head being vouched for.
    pub head: ChainHead,
    /// When the checkpoint was taken, Unix seconds.
    pub ts: i64,
}

impl ChainedCheckpoint {
    /// Checkpoint 1, the start of a chain.
    pub fn first(head: ChainHead, ts: i64) -> Self {
        Self { counter: 1, prev: CHECKPOINT_GENESIS_PREV, head, ts }
    }

    /// The checkpoint after `self`; `None` when the counter is exhausted.
    pub fn next(&self, head: ChainHead, ts: i64) -> Option<Self> {
        Some(Self { counter: self.counter.checked_add(1)?, prev: self.hash(), head, ts })
    }

    /// The exact bytes the authority signs:
    /// `lp(CHECKPOINT_TAG_V2) || u64be(counter) || prev || u64be(head.seq) || head.hash || i64be(ts)`.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + CHECKPOINT_TAG_V2.len() + 8 + 32 + 8 + 32 + 8);
        if push_lp(&mut out, CHECKPOINT_TAG_V2).is_err() {
            unreachable!("the checkpoint tag fits a u32 length");
        }
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.prev);
        out.extend_from_slice(&self.head.seq.to_be_bytes());
        out.extend_from_slice(&self.head.hash);
        out.extend_from_slice(&self.ts.to_be_bytes());
        out
    }

    /// `SHA-256(signing_bytes)`: what the next checkpoint's `prev` must be.
    pub fn hash(&self) -> Hash {
        Sha256::digest(self.signing_bytes()).into()
    }
}

impl ChainedCheckpoint {
    /// Whether `self` may be stored as the next link of the checkpoint chain,
    /// whose last chained checkpoint is `last` (`None`: the chain has not
    /// started) and whose highest checkpointed head seq is `highest_seq` (any
    /// format): checkpoint 1 with [`CHECKPOINT_GENESIS_PREV`] on an empty
    /// chain, else `last.counter + 1` linked to `last`'s hash; in both cases
    /// for a head past every checkpointed one. A v1 checkpoint is never
    /// extended. The one rule every store applies under its lock; anything
    /// else lost a race with another writer (or the chain was tampered with:
    /// [`verify_checkpoints`] says which).
    pub fn extends(&self, last: Option<&SignedCheckpoint>, highest_seq: Option<u64>) -> bool {
        let linked = match last {
            None => self.counter == 1 && self.prev == CHECKPOINT_GENESIS_PREV,
            Some(SignedCheckpoint::V2 { checkpoint: last, .. }) => {
                Some(self.counter) == last.counter.checked_add(1) && self.prev == last.hash()
            }
            Some(SignedCheckpoint::V1 { .. }) => false,
        };
        linked && highest_seq.is_none_or(|highest| self.head.seq > highest)
    }
}

/// A checkpoint as read back from storage (or an export), either format, with
/// its signature. Whether it is genuine is what [`verify_checkpoints`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedCheckpoint {
    /// Format v1: unchained (written before v2).
    V1 {
        /// What was signed.
        checkpoint: Checkpoint,
        /// The signature bytes.
        signature: Vec<u8>,
    },
    /// Format v2: chained.
    V2 {
        /// What was signed.
        checkpoint: ChainedCheckpoint,
        /// The signature bytes.
        signature: Vec<u8>,
    },
}

impl SignedCheckpoint {
    /// The audit head it vouches for.
    pub fn head(&self) -> ChainHead {
        match self {
            Self::V1 { checkpoint, .. } => checkpoint.head,
            Self::V2 { checkpoint, .. } => checkpoint.head,
        }
    }

    /// When it was taken.
    pub fn ts(&self) -> i64 {
        match self {
            Self::V1 { checkpoint, .. } => checkpoint.ts,
            Self::V2 { checkpoint, .. } => checkpoint.ts,
        }
    }

    /// Its counter (v2 only).
    pub fn counter(&self) -> Option<u64> {
        match self {
            Self::V1 { .. } => None,
            Self::V2 { checkpoint, .. } => Some(checkpoint.counter),
        }
    }

    /// The bytes its signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        match self {
            Self::V1 { checkpoint, .. } => checkpoint.signing_bytes(),
            Self::V2 { checkpoint, .. } => checkpoint.signing_bytes(),
        }
    }

    /// The signature bytes.
    pub fn signature(&self) -> &[u8] {
        match self {
            Self::V1 { signature, .. } | Self::V2 { signature, .. } => signature,
        }
    }
}

/// Checkpoints that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointsVerified {
    /// How many checkpoints (both formats) were checked.
    pub count: usize,
    /// How many of them are chained (v2).
    pub chained: usize,
    /// The latest one: the audit head it covers and when it was signed.
    pub last: Option<(ChainHead, i64)>,
}

/// The first checkpoint problem found, with the checkpoint's head seq (`None`
/// when the problem is about the chain as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .seq { Some(seq) => format!("audit checkpoint at record {seq} is bad: {}", .reason), None => format!("audit checkpoints do not vouch for the log: {}", .reason) })]
pub struct CheckpointProblem {
    /// The head seq of the checkpoint at fault, if one is.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: CheckpointFault,
}

/// What is wrong with the checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointFault {
    /// The signature does not verify with the authority's checkpoint key.
    BadSignature,
    /// It vouches for a record past the end of the chain.
    PastHead {
        /// Where the chain ends.
        chain_head: u64,
    },
    /// The chain's record at its seq has another hash.
    Rewritten,
    /// A v1 checkpoint after a v2 one, or checkpoints out of seq order.
    OutOfOrder,
    /// The v2 counter is not the next one: checkpoints before it were deleted.
    Missing {
        /// The counter that should have come next.
        expected: u64,
        /// The counter found.
        found: u64,
    },
    /// Its `prev` is not the hash of the checkpoint before it: that one was
    /// replaced, or this one moved.
    PrevMismatch,
    /// The recorded chain start is not the first checkpoint found, or every
    /// checkpoint after a recorded start is gone.
    StartMissing {
        /// When the chain started.
        started: i64,
    },
    /// Records past the latest checkpoint are older than the allowed age.
    Overdue {
        /// The first record no checkpoint covers.
        first_uncovered: u64,
        /// The chain's last record.
        head: u64,
        /// The time of the first uncovered record.
        since: i64,
        /// The allowed age, seconds.
        max_age: i64,
    },
    /// A stored value does not decode.
    Unreadable(String),
}

impl std::fmt::Display for CheckpointFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadSignature => f.write_str("its signature does not verify with the authority's checkpoint key"),
            Self::PastHead { chain_head } => write!(
                f,
                "it vouches for a record past the end of the chain (which ends at record {chain_head}): records were removed from the end"
            ),
            Self::Rewritten => f.write_str("the record it vouches for no longer has the signed hash: the chain was rewritten up to it"),
            Self::OutOfOrder => f.write_str("checkpoints are out of order"),
            Self::Missing { expected, found } => write!(
                f,
                "it is checkpoint {found} but checkpoint {expected} should come next: checkpoints were deleted"
            ),
            Self::PrevMismatch => f.write_str(
                "it does not link to the checkpoint before it (prev hash mismatch): a checkpoint was replaced or moved",
            ),
            Self::StartMissing { started } => write!(
                f,
                "the checkpoint chain started at Unix time {started} but its first checkpoints are gone: checkpoints were deleted"
            ),
            Self::Overdue { first_uncovered, head, since, max_age } => write!(
                f,
                "records {first_uncovered}..={head} are not covered by a signed checkpoint and the oldest (Unix time {since}) is more than {max_age} s old: \
                 checkpoints were deleted, or nothing has signed the log since (if the server was only stopped and you trust the database, \
                 `agentkeys audit checkpoint` signs the head; a copy kept with `--export` checks what came before)"
            ),
            Self::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

/// What the checkpoint rules need to know besides the checkpoints.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointRules {
    /// The time of the check, Unix seconds.
    pub now: i64,
    /// How old a record may get before a checkpoint must cover it, seconds.
    pub max_age: i64,
}

/// Checks stored checkpoints (in seq order) against a verified chain ending at
/// `chain_head`: every signature (`signature_ok(bytes, signature)`), that the
/// chain still holds each vouched-for record with the signed hash
/// (`record_at(seq)` gives the verified chain's record hash and time), that v2
/// checkpoints follow v1 ones and run 1, 2, 3, … each linked to the one before,
/// that the recorded `start` (a copy of checkpoint 1, if any) is still the
/// first, and that no record past the last checkpoint is older than
/// `rules.max_age`. Names the first problem.
pub fn verify_checkpoints(
    checkpoints: &[SignedCheckpoint],
    start: Option<&SignedCheckpoint>,
    chain_head: ChainHead,
    record_at: impl Fn(u64) -> Option<(Hash, i64)>,
    signature_ok: impl Fn(&[u8], &[u8]) -> bool,
    rules: CheckpointRules,
) -> Result<CheckpointsVerified, CheckpointProblem> {
    let fault = |seq: Option<u64>, reason| Err(CheckpointProblem { seq, reason });
    if let Some(start) = start {
        let seq = Some(start.head().seq);
        if !signature_ok(&start.signing_bytes(), start.signature()) {
            return fault(seq, CheckpointFault::BadSignature);
        }
        if start.counter() != Some(1) {
            return fault(seq, CheckpointFault::Unreadable("the recorded chain start is not checkpoint 1".to_owned()));
        }
        let first_v2 = checkpoints.iter().find(|c| c.counter().is_some());
        if first_v2 != Some(start) {
            return fault(first_v2.map(|c| c.head().seq), CheckpointFault::StartMissing { started: start.ts() });
        }
    }
    let mut prev_v2: Option<ChainedCheckpoint> = None;
    let mut last_seq: Option<u64> = None;
    let mut chained = 0;
    for c in checkpoints {
        let head = c.head();
        let seq = Some(head.seq);
        if !signature_ok(&c.signing_bytes(), c.signature()) {
            return fault(seq, CheckpointFault::BadSignature);
        }
        if last_seq.is_some_and(|last| head.seq <= last) {
            return fault(seq, CheckpointFault::OutOfOrder);
        }
        last_seq = Some(head.seq);
        match c {
            SignedCheckpoint::V1 { .. } if prev_v2.is_some() => return fault(seq, CheckpointFault::OutOfOrder),
            SignedCheckpoint::V1 { .. } => {}
            SignedCheckpoint::V2 { checkpoint, .. } => {
                let expected = prev_v2.map_or(1, |p| p.counter.saturating_add(1));
                if checkpoint.counter != expected {
                    return fault(seq, CheckpointFault::Missing { expected, found: checkpoint.counter });
                }
                let link = prev_v2.map_or(CHECKPOINT_GENESIS_PREV, |p| p.hash());
                if checkpoint.prev != link {
                    return fault(seq, CheckpointFault::PrevMismatch);
                }
                prev_v2 = Some(*checkpoint);
                chained += 1;
            }
        }
        if head.seq > chain_head.seq {
            return fault(seq, CheckpointFault::PastHead { chain_head: chain_head.seq });
        }
        if record_at(head.seq).is_none_or(|(hash, _)| hash != head.hash) {
            return fault(seq, CheckpointFault::Rewritten);
        }
    }
    let last = checkpoints.last().map(|c| (c.head(), c.ts()));
    let covered = last.map_or(0, |(h, _)| h.seq);
    if chain_head.seq > covered {
        let first_uncovered = covered + 1;
        // The chain verified, so the record exists; an unknown time counts as overdue.
        let since = record_at(first_uncovered).map_or(i64::MIN, |(_, ts)| ts);
        if rules.now.saturating_sub(since) > rules.max_age {
            return fault(
                None,
                CheckpointFault::Overdue { first_uncovered, head: chain_head.seq, since, max_age: rules.max_age },
            );
        }
    }
    Ok(CheckpointsVerified { count: checkpoints.len(), chained, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_extends_only_the_last_link_past_its_head() {
        let head = |seq: u64| ChainHead { seq, hash: [seq as u8; 32] };
        let v2 = |c: ChainedCheckpoint| SignedCheckpoint::V2 { checkpoint: c, signature: vec![1; 64] };
        let first = ChainedCheckpoint::first(head(5), 100);
        assert!(first.extends(None, None), "checkpoint 1 starts an empty chain");
        assert!(!ChainedCheckpoint { counter: 2, ..first }.extends(None, None), "a chain starts at 1");
        assert!(!ChainedCheckpoint { prev: [1; 32], ..first }.extends(None, None), "1 links to the genesis prev");
        assert!(!first.extends(None, Some(5)), "a v1 checkpoint of that head exists");
        let second = first.next(head(9), 200).unwrap();
        assert!(second.extends(Some(&v2(first)), Some(5)));
        assert!(!second.extends(Some(&v2(first)), Some(9)), "not past the highest checkpointed head");
        assert!(!first.extends(Some(&v2(first)), Some(5)), "the same link twice");
        assert!(!second.next(head(12), 300).unwrap().extends(Some(&v2(first)), Some(5)), "a gap");
        assert!(!ChainedCheckpoint { prev: [7; 32], ..second }.extends(Some(&v2(first)), Some(5)), "another prev");
        let v1 = SignedCheckpoint::V1 { checkpoint: Checkpoint { head: head(5), ts: 100 }, signature: vec![1; 64] };
        assert!(!second.extends(Some(&v1), Some(5)), "v1 is never extended");
    }

    #[test]
    fn signing_bytes_layout() {
        let c = Checkpoint { head: ChainHead { seq: 7, hash: [0xab; 32] }, ts: 1_700_000_000 };
        let b = c.signing_bytes();
        assert_eq!(&b[..4], &(CHECKPOINT_TAG.len() as u32).to_be_bytes());
        assert_eq!(&b[4..4 + CHECKPOINT_TAG.len()], CHECKPOINT_TAG.as_bytes());
        let rest = &b[4 + CHECKPOINT_TAG.len()..];
        assert_eq!(&rest[..8], &7u64.to_be_bytes());
        assert_eq!(&rest[8..40], &[0xab; 32]);
        assert_eq!(&rest[40..], &1_700_000_000i64.to_be_bytes());
    }
}
