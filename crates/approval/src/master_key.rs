//! The owner's master key: an Ed25519 signing key that lives on the owner's machine.
//!
//! Approvals are signatures by this key (DESIGN.md §2, §5). At rest it is kept in an
//! [`EncryptedKeyFile`](crate::EncryptedKeyFile); unlocking that file with the
//! passphrase is the approval gate. The secret is zeroized when the key is dropped
//! and never appears in `Debug` output.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey};
use zeroize::Zeroizing;

use crate::public_key::{PublicKey, Signature};

/// Length of the secret seed an Ed25519 key is expanded from.
pub const SECRET_SEED_LEN: usize = 32;

/// The owner's Ed25519 master key. Not `Clone`: there is one copy in memory per unlock.
pub struct MasterKey {
    // `SigningKey` zeroizes its secret on drop (ed25519-dalek `zeroize` feature).
    signing: SigningKey,
}

impl MasterKey {
    /// Draws a fresh key from a cryptographic random source.
    pub fn generate(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> Self {
        let mut seed = Zeroizing::new([0u8; SECRET_SEED_LEN]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// Rebuilds a key from its 32-byte secret seed (RFC 8032 private key).
    ///
    /// Used when a key file is unlocked, and for fixed test vectors.
    pub fn from_seed(seed: &[u8; SECRET_SEED_LEN]) -> Self {
        Self { signing: SigningKey::from_bytes(seed) }
    }

    /// The public half, registered with the server at enrollment.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_verifying_key(self.signing.verifying_key())
    }

    /// Signs `message` (pure Ed25519, deterministic).
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.signing.sign(message)
    }

    /// A copy of the secret seed, wiped when dropped; only for sealing into a key file.
    pub(crate) fn secret_seed(&self) -> Zeroizing<[u8; SECRET_SEED_LEN]> {
        Zeroizing::new(self.signing.to_bytes())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("public_key", &self.public_key())
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn signs_and_verifies() {
        let key = MasterKey::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
        let sig = key.sign(b"approve");
        assert!(key.public_key().verify_strict(b"approve", &sig));
        assert!(!key.public_key().verify_strict(b"approvE", &sig));
    }

    #[test]
    fn debug_is_redacted() {
        let key = MasterKey::from_seed(&[0x42; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("<redacted>"));
        let seed_hex: String = key.secret_seed().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&seed_hex));
        assert!(!shown.contains("4242"));
    }

    #[test]
    fn rfc8032_test_1() {
        // RFC 8032 §7.1, TEST 1: empty message.
        let seed = hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let key = MasterKey::from_seed(&seed);
        assert_eq!(
            key.public_key().to_bytes(),
            hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let sig: String = key.sign(b"").to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            sig,
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
