//! Agent keys: the bearer secret an agent uses as SMTP password and HTTP bearer.
//!
//! Format `ak_` + 43 base62 characters (≥ 256 bits). The server never stores a key:
//! it stores `HMAC-SHA256(k, key)` with `k` derived from the master seed, looks keys
//! up by that value and re-checks the match in constant time.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ids::random_base62;
use crate::seed::MasterSeed;

/// Prefix of every agent key.
pub const AGENT_KEY_PREFIX: &str = "ak_";
/// Number of base62 characters after the prefix (43 × log2(62) ≈ 256 bits).
pub const AGENT_KEY_BODY_LEN: usize = 43;
/// HKDF label of the key-hashing key.
pub const KEY_HASH_LABEL: &str = "agent-key-hash/v1";

/// A well-formed agent key. `Debug` is redacted; `expose` is the only way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentKey(String);

impl AgentKey {
    /// Checks the format only (`ak_` + 43 base62); `None` if it does not match.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix(AGENT_KEY_PREFIX)?;
        (body.len() == AGENT_KEY_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| Self(s.to_owned()))
    }

    /// A fresh random key.
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        Self(format!("{AGENT_KEY_PREFIX}{}", random_base62(rng, AGENT_KEY_BODY_LEN)))
    }

    /// The secret text, to show once to its holder.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentKey(<redacted>)")
    }
}

/// The stored form of an agent key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Lowercase hex, the form kept in the metadata store.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the stored hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// Hashes agent keys under a key derived from the master seed.
#[derive(Clone)]
pub struct KeyHasher {
    key: [u8; 32],
}

impl KeyHasher {
    /// Derives the hashing key from the master seed.
    pub fn new(seed: &MasterSeed) -> Self {
        Self { key: seed.derive(KEY_HASH_LABEL) }
    }

    /// `HMAC-SHA256(k, key)`.
    pub fn hash(&self, key: &AgentKey) -> KeyHash {
        // HMAC accepts keys of any length, so construction cannot fail.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(key.expose().as_bytes());
        KeyHash(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format() {
        let k = AgentKey::generate(&mut rand::thread_rng());
        assert_eq!(k.expose().len(), 3 + AGENT_KEY_BODY_LEN);
        assert!(AgentKey::parse(k.expose()).is_some());
        assert!(AgentKey::parse("ak_short").is_none());
        assert!(AgentKey::parse(&format!("am_{}", "a".repeat(43))).is_none());
        assert!(AgentKey::parse(&format!("ak_{}!", "a".repeat(42))).is_none());
        assert_eq!(format!("{k:?}"), "AgentKey(<redacted>)");
    }

    #[test]
    fn hashing_is_keyed() {
        let k = AgentKey::parse(&format!("ak_{}", "a".repeat(43))).unwrap();
        let h1 = KeyHasher::new(&MasterSeed::from_bytes([1; 32])).hash(&k);
        let h2 = KeyHasher::new(&MasterSeed::from_bytes([2; 32])).hash(&k);
        assert!(!h1.ct_eq(&h2));
        assert!(h1.ct_eq(&KeyHash::from_hex(&h1.to_hex()).unwrap()));
    }
}
