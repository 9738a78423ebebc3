//! The seam for signed checkpoints (DESIGN.md §7).
//!
//! A hash chain shows that no record was changed, removed or reordered *before*
//! the head, but anyone who can write the database can cut records off the end or
//! rebuild the whole chain. Periodically the token authority signs the current
//! head; keeping those signatures elsewhere pins the chain up to that point.
//!
//! This crate defines what is signed ([`Checkpoint::signing_bytes`]); signing
//! and storing checkpoints belong to the authority (`crates/broker`) and are not
//! wired yet. To verify from a checkpoint, check its signature and then
//! [`Verifier::resume`](crate::Verifier::resume) from its head, or verify from
//! genesis and compare the record at `checkpoint.head.seq`.

use crate::canonical::push_lp;
use crate::record::ChainHead;

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

#[cfg(test)]
mod tests {
    use super::*;

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
