//! The owner's approval gate: the cryptographic core of owner approvals and pairing.
//!
//! Pure logic plus local file I/O (the key file, the passphrase file); no network,
//! no database, no clock: callers pass `now` and a random source in.
//!
//! - [`MasterKey`]: the owner's Ed25519 key; at rest an [`EncryptedKeyFile`]
//!   (Argon2id + XChaCha20-Poly1305, mode 0600) unlocked with a [`Passphrase`].
//!   Unlocking the key is the approval (DESIGN.md §2).
//! - [`signed_request`]: the canonical string an owner signs for every request,
//!   the `Authorization: AgentKeys-Owner …` header, and [`verify_request`], whose
//!   [`OwnerVerified`] proof owner-gated handlers require.
//! - [`codes`], [`enrollment`], [`pairing`]: single-use enrollment codes, pair codes
//!   with their 6-digit confirmation codes, the agent's [`DeviceKey`] and the
//!   pairing state machine (DESIGN.md §5).
//!
//! ```
//! use agentkeys_approval::{
//!     EncryptedKeyFile, KdfParams, MasterKey, MemoryReplayGuard, Nonce, Passphrase,
//!     sign_request, verify_request,
//! };
//! use agentkeys_core::OwnerId;
//!
//! let mut rng = rand::rngs::OsRng;
//! let owner: OwnerId = "0x00000000000000000000000000000000000000aa".parse().unwrap();
//!
//! // Owner side: generate, seal (cheap parameters here; use KdfParams::PRODUCTION), unlock.
//! let key = MasterKey::generate(&mut rng);
//! let passphrase = Passphrase::new("correct horse battery staple".into()).unwrap();
//! let params = KdfParams::new(8, 1, 1).unwrap();
//! let file = EncryptedKeyFile::seal(&key, &owner, &passphrase, params, &mut rng).unwrap();
//! let key = file.unlock(&passphrase).unwrap();
//!
//! // Sign one request.
//! let body = br#"{"confirmation":"123456"}"#;
//! let now = 1_767_225_600;
//! let path = "/v1/pairings/ABCD-EFGH/approve";
//! let nonce = Nonce::generate(&mut rng);
//! let sig = sign_request(&key, &owner, "POST", path, body, now, &nonce).unwrap();
//! let header = sig.header_value();
//!
//! // Server side: verify against the registered public key; a replay is refused.
//! let registered = *file.public_key();
//! let guard = MemoryReplayGuard::new();
//! let lookup = |_: &OwnerId| Some(registered);
//! let verified = verify_request(&header, "POST", path, body, now + 2, lookup, &guard).unwrap();
//! assert_eq!(verified.owner(), &owner);
//! let replay = verify_request(&header, "POST", path, body, now + 3, lookup, &guard);
//! assert_eq!(replay.unwrap_err().code(), "REPLAYED_NONCE");
//! ```

pub mod codes;
pub mod device_key;
pub mod enrollment;
pub mod key_file;
pub mod master_key;
pub mod pairing;
pub mod passkey;
pub mod passphrase;
pub mod public_key;
pub mod replay;
pub mod signed_request;

pub use codes::{
    CodeError, CodeHash, ConfirmationCode, ENROLLMENT_CODE_TTL, EnrollmentCode, MAX_CONFIRMATION_TRIES, PAIRING_TTL, PairCode,
};
pub use device_key::{DeviceKey, agent_id_from_device_key};
pub use enrollment::{EnrollmentError, EnrollmentRedeemed, EnrollmentTicket};
pub use key_file::{EncryptedKeyFile, KdfParams, KeyFileError, SaveMode, default_path};
pub use master_key::MasterKey;
pub use pairing::{PairingCollected, PairingError, PairingRequest, PairingState, PairingView};
pub use passkey::{ActionHash, Gate, OwnerGate, PasskeyError, PasskeyGate, PasskeyVerified};
pub use passphrase::{Confirm, Passphrase, PassphraseError, prompt_passphrase, resolve_passphrase};
pub use public_key::{PublicKey, PublicKeyError, Signature};
pub use replay::{MemoryReplayGuard, Replay, ReplayGuard};
pub use signed_request::{
    ApprovalError, HeaderError, MAX_CLOCK_SKEW, Nonce, OwnerSignature, OwnerVerified, SignatureVerified,
    sign_request, verify_request,
};

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses exactly `N` bytes of hex (either case).
pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
