//! Ed25519 public keys and signatures, shared by owner master keys and agent device keys.
//!
//! A [`PublicKey`] is checked once, when it is built: it must decode to a curve point
//! and must not be of small order (such "weak" keys would let one signature verify
//! for many messages). Verification is always `verify_strict`, which also refuses
//! non-canonical signatures.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

pub use ed25519_dalek::Signature;

/// Length of an Ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// Why bytes or text were refused as an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// The text is not standard base64 (with padding) of exactly 32 bytes.
    #[error("invalid public key: expected standard base64 of 32 bytes")]
    Encoding,
    /// The bytes are not a point on the curve, or a small-order (weak) point.
    #[error("invalid public key: {reason}")]
    NotAKey {
        /// What is wrong with the point.
        reason: &'static str,
    },
}

impl PublicKeyError {
    /// Stable machine-readable code: `INVALID_PUBLIC_KEY`.
    pub fn code(&self) -> &'static str {
        "INVALID_PUBLIC_KEY"
    }
}

/// An Ed25519 public key: an owner's master key or an agent's device key.
///
/// Text form: standard base64 with padding (44 characters), as stored in key files
/// and sent when a key is registered.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Checks `bytes` as a compressed Edwards point that is not of small order.
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<Self, PublicKeyError> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_| PublicKeyError::NotAKey { reason: "not a point on Curve25519" })?;
        if key.is_weak() {
            return Err(PublicKeyError::NotAKey { reason: "small-order point" });
        }
        Ok(Self(key))
    }

    /// Parses the standard-base64 text form.
    pub fn from_base64(text: &str) -> Result<Self, PublicKeyError> {
        let bytes = STANDARD.decode(text).map_err(|_| PublicKeyError::Encoding)?;
        let bytes: [u8; PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| PublicKeyError::Encoding)?;
        Self::from_bytes(&bytes)
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0.to_bytes()
    }

    /// The standard-base64 text form.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    /// `true` when `signature` is a valid, canonical signature of `message` by this key
    /// (Ed25519 `verify_strict`).
    pub fn verify_strict(&self, message: &[u8], signature: &Signature) -> bool {
        self.0.verify_strict(message, signature).is_ok()
    }

    pub(crate) fn from_verifying_key(key: VerifyingKey) -> Self {
        Self(key)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = PublicKeyError;
    fn from_str(s: &str) -> Result<Self, PublicKeyError> {
        Self::from_base64(s)
    }
}

impl TryFrom<String> for PublicKey {
    type Error = PublicKeyError;
    fn try_from(s: String) -> Result<Self, PublicKeyError> {
        Self::from_base64(&s)
    }
}

impl From<PublicKey> for String {
    fn from(key: PublicKey) -> String {
        key.to_base64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_is_strict() {
        let key = crate::MasterKey::from_seed(&[9; 32]).public_key();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        assert_eq!(PublicKey::from_str(text.trim_end_matches('=')), Err(PublicKeyError::Encoding));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(PublicKeyError::Encoding));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), key);
    }

    #[test]
    fn weak_keys_are_refused() {
        // The identity point (y = 1) has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(PublicKey::from_bytes(&identity), Err(PublicKeyError::NotAKey { .. })));
    }
}
