//! The audit log of AgentKeys Mail (DESIGN.md §7): append-only, hash-chained,
//! fail-closed and verifiable.
//!
//! Every record is `{seq, ts, actor, operation, subject, outcome, detail,
//! prev_hash, hash}` with `hash = SHA-256(prev_hash || canonical(record))` over
//! the documented [`canonical`] encoding, and the first record linked to 32 zero
//! bytes. [`verify`] (or a [`Verifier`] page by page) names the first record whose
//! position, link or contents are wrong.
//!
//! This crate does no I/O. Storage (`agentkeys-store`) reads the head, calls
//! [`SealedRecord::seal`], writes the record **in the same transaction** as the
//! side effect it describes, and only after the commit hands out the
//! [`AuditReceipt`] that side-effect APIs require. If the record cannot be
//! written, the operation does not happen.
//!
//! Addresses of third parties go into `detail` only through [`hash_address`].
//! Signed checkpoints ([`ChainedCheckpoint`], checked by [`verify_checkpoints`])
//! pin the chain: the token authority signs them, the store keeps them.
//!
//! ```
//! use agentkeys_audit::{Actor, AuditEvent, ChainHead, SealedRecord, verify};
//! use serde_json::json;
//!
//! let mut chain = Vec::new();
//! let mut head = ChainHead::GENESIS;
//! for subject in ["key_0123456789abcdef", "key_fedcba9876543210"] {
//!     let event = AuditEvent::ok(Actor::Operator, "key.create", subject)
//!         .with_detail(json!({ "agent": "0x00000000000000000000000000000000000000bb" }));
//!     let sealed = SealedRecord::seal(&head, 1_700_000_000, &event).unwrap();
//!     head = sealed.record().head();
//!     chain.push(sealed.record().clone());
//!     let _receipt = sealed.into_receipt(); // once stored
//! }
//! assert_eq!(verify(&chain).unwrap().count, 2);
//!
//! chain[0].subject = "key_forged00000000".into();
//! let broken = verify(&chain).unwrap_err();
//! assert_eq!(broken.seq, 1);
//! ```

mod address;
pub mod canonical;
mod checkpoint;
mod error;
mod event;
mod record;
mod verify;

pub use address::{ADDRESS_KEY_LABEL, address_key, hash_address};
pub use canonical::{FORMAT_TAG, canonical_json};
pub use checkpoint::{
    CHECKPOINT_GENESIS_PREV, CHECKPOINT_TAG, CHECKPOINT_TAG_V2, ChainedCheckpoint, Checkpoint, CheckpointFault,
    CheckpointProblem, CheckpointRules, CheckpointsVerified, SignedCheckpoint, verify_checkpoints,
};
pub use error::AuditError;
pub use event::{Actor, AuditEvent, MAX_DETAIL_LEN, MAX_OPERATION_LEN, MAX_SUBJECT_LEN, Outcome, ops};
pub use record::{
    AuditReceipt, AuditRecord, ChainHead, GENESIS_PREV_HASH, Hash, SealedRecord, hash_from_hex, hash_to_hex,
};
pub use verify::{Broken, BrokenReason, VerifiedChain, Verifier, verify};
