//! The master seed: 32 random bytes from which every server-side key is derived.

use hkdf::Hkdf;
use sha2::Sha256;

/// Length of the master seed in bytes.
pub const MASTER_SEED_LEN: usize = 32;

/// The root secret of a deployment (DESIGN.md §6). Never printed: `Debug` is redacted.
#[derive(Clone)]
pub struct MasterSeed([u8; MASTER_SEED_LEN]);

impl MasterSeed {
    /// Wraps raw seed bytes.
    pub fn from_bytes(bytes: [u8; MASTER_SEED_LEN]) -> Self {
        Self(bytes)
    }

    /// Draws a fresh seed from `rng`.
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut bytes = [0u8; MASTER_SEED_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The raw bytes, for persisting the seed to its 0600 file.
    pub fn as_bytes(&self) -> &[u8; MASTER_SEED_LEN] {
        &self.0
    }

    /// Derives 32 bytes of key material for `label` (HKDF-SHA256, label as info).
    ///
    /// Labels are path-like and versioned (`agent-key-hash/v1`, `oidc/issuer/v1`);
    /// a rotation is a new label.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"agentkeys-mail"), &self.0);
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 255*32 output limit, so expand cannot fail.
        if hk.expand(label.as_bytes(), &mut out).is_err() {
            unreachable!("HKDF output length is fixed at 32 bytes");
        }
        out
    }
}

impl std::fmt::Debug for MasterSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSeed(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_label_separated() {
        let seed = MasterSeed::from_bytes([7u8; 32]);
        assert_eq!(seed.derive("a/v1"), seed.derive("a/v1"));
        assert_ne!(seed.derive("a/v1"), seed.derive("a/v2"));
        assert_ne!(MasterSeed::from_bytes([8u8; 32]).derive("a/v1"), seed.derive("a/v1"));
    }

    #[test]
    fn debug_never_shows_bytes() {
        let seed = MasterSeed::from_bytes([0xab; 32]);
        assert_eq!(format!("{seed:?}"), "MasterSeed(<redacted>)");
    }
}
