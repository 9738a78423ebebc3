//! Checking a chain: every record in place, linked to the one before, and
//! hashing to what it says.

use std::fmt;

use crate::record::{AuditRecord, ChainHead, Hash};

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// How many records were checked.
    pub count: u64,
    /// Sequence number of the last record (0 for an empty chain from genesis).
    pub head_seq: u64,
    /// Hash of the last record (the starting hash if none were checked).
    pub head_hash: Hash,
}

/// The first record that does not verify, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq} is broken: {reason}")]
pub struct Broken {
    /// Sequence number of the record as found (for a gap, the record found where
    /// another was expected).
    pub seq: u64,
    /// What is wrong with it.
    pub reason: BrokenReason,
}

/// What is wrong with a broken record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokenReason {
    /// Its sequence number is past the expected one: records were deleted.
    Gap {
        /// The sequence number that should have come next.
        expected: u64,
    },
    /// Its sequence number is before the expected one: records were reordered or
    /// duplicated.
    OutOfOrder {
        /// The sequence number that should have come next.
        expected: u64,
    },
    /// Its `prev_hash` is not the hash of the record before it: a record before
    /// it was replaced, or this one was moved.
    PrevHashMismatch,
    /// Its hash does not match its fields: a field (or the hash) was edited.
    HashMismatch,
    /// Its fields cannot be encoded or read back (for example a float in the
    /// detail, or a stored value that does not parse).
    Unreadable(String),
}

impl fmt::Display for BrokenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gap { expected } => write!(f, "expected record {expected} next; the records before it are missing"),
            Self::OutOfOrder { expected } => {
                write!(f, "expected record {expected} next; records are out of order or duplicated")
            }
            Self::PrevHashMismatch => f.write_str("prev_hash does not match the hash of the record before it"),
            Self::HashMismatch => f.write_str("hash does not match the record's contents (a field was edited)"),
            Self::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

/// Checks records one at a time, so a long chain can be verified page by page
/// without holding it in memory.
///
/// ```
/// use agentkeys_audit::{Actor, AuditEvent, ChainHead, SealedRecord, Verifier};
///
/// let event = AuditEvent::ok(Actor::System, "example.op", "subject");
/// let r1 = SealedRecord::seal(&ChainHead::GENESIS, 1, &event).unwrap().record().clone();
/// let r2 = SealedRecord::seal(&r1.head(), 2, &event).unwrap().record().clone();
/// let mut v = Verifier::new();
/// v.push(&r1).unwrap();
/// v.push(&r2).unwrap();
/// assert_eq!(v.finish().count, 2);
/// ```
#[derive(Debug, Clone)]
pub struct Verifier {
    head: ChainHead,
    count: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    /// Starts at the empty chain: the first record must be seq 1 linked to 32 zero bytes.
    pub fn new() -> Self {
        Self::resume(ChainHead::GENESIS)
    }

    /// Starts after a head already trusted, for example one a signed checkpoint
    /// vouches for: the first record must be `head.seq + 1` linked to `head.hash`.
    pub fn resume(head: ChainHead) -> Self {
        Self { head, count: 0 }
    }

    /// The head after the records checked so far.
    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// Checks the next record. After an error the verifier keeps its state, so
    /// the caller reports the first break and stops.
    pub fn push(&mut self, record: &AuditRecord) -> Result<(), Broken> {
        let broken = |reason| Broken { seq: record.seq, reason };
        let expected = self.head.seq.saturating_add(1);
        if record.seq > expected {
            return Err(broken(BrokenReason::Gap { expected }));
        }
        if record.seq < expected {
            return Err(broken(BrokenReason::OutOfOrder { expected }));
        }
        if record.prev_hash != self.head.hash {
            return Err(broken(BrokenReason::PrevHashMismatch));
        }
        let computed = record.compute_hash().map_err(|e| broken(BrokenReason::Unreadable(e.to_string())))?;
        if computed != record.hash {
            return Err(broken(BrokenReason::HashMismatch));
        }
        self.head = record.head();
        self.count += 1;
        Ok(())
    }

    /// What was verified.
    pub fn finish(self) -> VerifiedChain {
        VerifiedChain { count: self.count, head_seq: self.head.seq, head_hash: self.head.hash }
    }
}

/// Verifies a whole chain from genesis, records in seq order; names the first
/// broken record.
///
/// A chain is only as complete as what is checked: records cut off the end leave
/// a shorter valid chain. Signed checkpoints of the head (see
/// [`Checkpoint`](crate::Checkpoint)) are what catch that.
pub fn verify<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> Result<VerifiedChain, Broken> {
    let mut v = Verifier::new();
    for record in records {
        v.push(record)?;
    }
    Ok(v.finish())
}
