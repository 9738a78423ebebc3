//! [`NonceRecord`]: the proof an owner-signed request needs from the nonce store.

use crate::ids::OwnerId;

/// Proof that the nonce of one owner-signed request was recorded as used, for
/// the first time, by a nonce store: what
/// `agentkeys_approval::SignatureVerified::finish` consumes to yield the
/// `OwnerVerified` proof that every owner-gated action requires. A "not a
/// replay" answer is therefore this record, never a bare `Ok(())`, and it
/// names its `(owner, nonce)`, so a record of another request does not pass.
///
/// Made only where a nonce is recorded: [`NonceRecord::first_use`] is called by
/// the stores' `OwnerApproval::record_owner_nonce` (SQLite, PostgreSQL) and by
/// `MemoryReplayGuard` (`grep -rn 'NonceRecord::first_use' crates`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonceRecord {
    owner: OwnerId,
    nonce: String,
}

impl NonceRecord {
    /// The record of `owner`'s `nonce`, just stored for the first time. For
    /// nonce stores only (see the type's docs).
    pub fn first_use(owner: &OwnerId, nonce: &str) -> Self {
        Self { owner: owner.clone(), nonce: nonce.to_owned() }
    }

    /// Whether this is the record of `owner`'s `nonce`.
    pub fn is_for(&self, owner: &OwnerId, nonce: &str) -> bool {
        &self.owner == owner && self.nonce == nonce
    }
}
