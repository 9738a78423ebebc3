//! Signed audit checkpoints (DESIGN.md §7): the authority's Ed25519 signature over
//! [`Checkpoint::signing_bytes`], with a key derived from the master seed under
//! [`CHECKPOINT_KEY_LABEL`].
//!
//! A hash chain shows that nothing before its head was changed, but not that
//! records were cut off the end or that the whole chain was rebuilt by someone
//! with the database. A checkpoint signed by a key that never leaves the
//! authority pins the chain up to its head: `agentkeys audit verify` checks every
//! signature and that the chain still has the record the checkpoint names, with
//! the same hash.
//!
//! ```
//! use agentkeys_audit::{ChainHead, Checkpoint};
//! use agentkeys_broker::CheckpointKey;
//! use agentkeys_core::MasterSeed;
//!
//! let key = CheckpointKey::derive(&MasterSeed::from_bytes([7; 32]));
//! let checkpoint = Checkpoint { head: ChainHead { seq: 42, hash: [1; 32] }, ts: 1_700_000_000 };
//! let signature = key.sign(&checkpoint);
//! assert!(key.public().verify(&checkpoint, &signature));
//! let moved = Checkpoint { head: ChainHead { seq: 41, hash: [1; 32] }, ..checkpoint };
//! assert!(!key.public().verify(&moved, &signature));
//! ```

use std::fmt;

use agentkeys_audit::{ChainedCheckpoint, Checkpoint, SignedCheckpoint};
use agentkeys_core::MasterSeed;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

/// HKDF label of the checkpoint signing key (DESIGN.md §6).
pub const CHECKPOINT_KEY_LABEL: &str = "audit-checkpoint/v1";

/// Length of a checkpoint signature (Ed25519).
pub const CHECKPOINT_SIGNATURE_LEN: usize = 64;

/// The authority's checkpoint signing key. `Debug` shows only the public half.
pub struct CheckpointKey {
    signing: SigningKey,
}

impl CheckpointKey {
    /// Derives the key from the master seed.
    pub fn derive(seed: &MasterSeed) -> Self {
        let mut bytes = seed.derive(CHECKPOINT_KEY_LABEL);
        let signing = SigningKey::from_bytes(&bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        Self { signing }
    }

    /// Signs `checkpoint`'s [`signing_bytes`](Checkpoint::signing_bytes).
    pub fn sign(&self, checkpoint: &Checkpoint) -> [u8; CHECKPOINT_SIGNATURE_LEN] {
        self.signing.sign(&checkpoint.signing_bytes()).to_bytes()
    }

    /// Signs a chained (format v2) checkpoint's [`signing_bytes`](ChainedCheckpoint::signing_bytes).
    pub fn sign_chained(&self, checkpoint: &ChainedCheckpoint) -> [u8; CHECKPOINT_SIGNATURE_LEN] {
        self.signing.sign(&checkpoint.signing_bytes()).to_bytes()
    }

    /// The public key verifiers use.
    pub fn public(&self) -> CheckpointPublicKey {
        CheckpointPublicKey(self.signing.verifying_key())
    }
}

impl fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointKey").field("public", &self.public()).finish_non_exhaustive()
    }
}

/// The public half of the checkpoint key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPublicKey(VerifyingKey);

impl CheckpointPublicKey {
    /// Whether `signature` is this key's signature over `checkpoint` (strict
    /// Ed25519 verification: no malleable or small-order forms).
    pub fn verify(&self, checkpoint: &Checkpoint, signature: &[u8]) -> bool {
        self.verify_bytes(&checkpoint.signing_bytes(), signature)
    }

    /// Whether a stored checkpoint of either format carries this key's signature.
    pub fn verify_signed(&self, checkpoint: &SignedCheckpoint) -> bool {
        self.verify_bytes(&checkpoint.signing_bytes(), checkpoint.signature())
    }

    /// Whether `signature` is this key's strict Ed25519 signature over `message`
    /// (the form [`agentkeys_audit::verify_checkpoints`] takes).
    pub fn verify_bytes(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; CHECKPOINT_SIGNATURE_LEN]>::try_from(signature) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        self.0.verify_strict(message, &signature).is_ok()
    }

    /// Parses 32 public key bytes; `None` if they are not a valid Ed25519 point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        VerifyingKey::from_bytes(bytes).ok().map(Self)
    }

    /// The 32 public key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
}

impl fmt::Debug for CheckpointPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.0.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "CheckpointPublicKey({hex})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkeys_audit::ChainHead;

    fn checkpoint() -> Checkpoint {
        Checkpoint { head: ChainHead { seq: 9, hash: [3; 32] }, ts: 1_700_000_000 }
    }

    #[test]
    fn deterministic_per_seed_and_bound_to_every_field() {
        let a = CheckpointKey::derive(&MasterSeed::from_bytes([1; 32]));
        let b = CheckpointKey::derive(&MasterSeed::from_bytes([1; 32]));
        let other = CheckpointKey::derive(&MasterSeed::from_bytes([2; 32]));
        assert_eq!(a.public(), b.public());
        assert_ne!(a.public(), other.public());
        let sig = a.sign(&checkpoint());
        assert!(b.public().verify(&checkpoint(), &sig));
        assert!(!other.public().verify(&checkpoint(), &sig));
        let c = checkpoint();
        for changed in [
            Checkpoint { head: ChainHead { seq: 10, ..c.head }, ..c },
            Checkpoint { head: ChainHead { hash: [4; 32], ..c.head }, ..c },
            Checkpoint { ts: c.ts + 1, ..c },
        ] {
            assert!(!a.public().verify(&changed, &sig));
        }
        let mut flipped = sig;
        flipped[0] ^= 1;
        assert!(!a.public().verify(&c, &flipped));
        assert!(!a.public().verify(&c, &sig[..63]));
    }

    #[test]
    fn chained_signatures_bind_every_field() {
        let key = CheckpointKey::derive(&MasterSeed::from_bytes([1; 32]));
        let first = ChainedCheckpoint::first(ChainHead { seq: 3, hash: [7; 32] }, 1_700_000_000);
        let sig = key.sign_chained(&first).to_vec();
        let signed = SignedCheckpoint::V2 { checkpoint: first, signature: sig.clone() };
        assert!(key.public().verify_signed(&signed));
        let next = first.next(first.head, first.ts).unwrap();
        assert!(!key.public().verify_signed(&SignedCheckpoint::V2 { checkpoint: next, signature: sig.clone() }));
        let v1 = Checkpoint { head: first.head, ts: first.ts };
        assert!(!key.public().verify_signed(&SignedCheckpoint::V1 { checkpoint: v1, signature: sig }), "v2 bytes are not v1 bytes");
        assert_eq!(CheckpointPublicKey::from_bytes(&key.public().to_bytes()), Some(key.public()));
    }

    #[test]
    fn debug_shows_no_secret() {
        let key = CheckpointKey::derive(&MasterSeed::from_bytes([5; 32]));
        let shown = format!("{key:?}");
        assert!(shown.contains("CheckpointPublicKey("));
        let secret: String = MasterSeed::from_bytes([5; 32]).derive(CHECKPOINT_KEY_LABEL).iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&secret));
    }
}
